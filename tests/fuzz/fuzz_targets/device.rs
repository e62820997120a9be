#![no_main]
//! The device through its virtqueues (`gpu_fuzz::device`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| gpu_fuzz::device::run(data));
