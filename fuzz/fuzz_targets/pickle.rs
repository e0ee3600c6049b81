//! libFuzzer target `pickle`: runs [`torch2coreml_fuzz::unpickle`] on each input (seeds in
//! `fuzz/corpus/pickle/`). Run with `make fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| torch2coreml_fuzz::unpickle(data));
