//! libFuzzer target `hf`: runs [`torch2coreml_fuzz::hf_build`] on each input (seeds in
//! `fuzz/corpus/hf/`). Run with `make fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| torch2coreml_fuzz::hf_build(data));
