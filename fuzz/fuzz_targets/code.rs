//! libFuzzer target `code`: runs [`torch2coreml_fuzz::code_parse`] on each input (seeds in
//! `fuzz/corpus/code/`). Run with `make fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| torch2coreml_fuzz::code_parse(data));
