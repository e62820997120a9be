#!/usr/bin/env bash
# Builds the fuzz targets with SanitizerCoverage on stable Rust (what
# cargo-fuzz passes with no sanitizer), into target/fuzz so the
# workspace's own builds are not invalidated. An explicit --target keeps
# RUSTFLAGS off build scripts and proc macros (they would need libFuzzer's
# coverage callbacks to link). Arguments go to cargo build.
set -euo pipefail
cd "$(dirname "$0")"
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
exec cargo build --release --target-dir ../../target/fuzz --target "$(rustc -vV | sed -n 's/^host: //p')" --bin device --bin vhost "$@"
