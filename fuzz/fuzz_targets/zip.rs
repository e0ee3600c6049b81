//! libFuzzer target `zip`: runs [`torch2coreml_fuzz::zip_entries`] on each input (seeds in
//! `fuzz/corpus/zip/`). Run with `make fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| torch2coreml_fuzz::zip_entries(data));
