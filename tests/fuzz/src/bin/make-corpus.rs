//! Writes the seed inputs (`gpu_fuzz::seeds`) into `corpus/<target>/`.
//! `cargo run --manifest-path tests/fuzz/Cargo.toml --bin make-corpus`.

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, name, bytes) in gpu_fuzz::seeds::all() {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("seed");
    }
}
