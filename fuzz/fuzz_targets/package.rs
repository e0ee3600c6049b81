//! libFuzzer target `package`: runs [`torch2coreml_fuzz::package_read`] on each input (seeds in
//! `fuzz/corpus/package/`). Run with `make fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| torch2coreml_fuzz::package_read(data));
