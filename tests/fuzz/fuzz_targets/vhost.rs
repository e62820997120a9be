#![no_main]
//! The vhost-user message layer (`gpu_fuzz::vhost`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| gpu_fuzz::vhost::run(data));
