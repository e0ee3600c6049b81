//! libFuzzer target `npz`: runs [`torch2coreml_fuzz::npz_read`] on each input (seeds in
//! `fuzz/corpus/npz/`). Run with `make fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| torch2coreml_fuzz::npz_read(data));
