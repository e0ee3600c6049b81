//! libFuzzer target `torchscript`: runs [`torch2coreml_fuzz::torchscript_to_mil`] on each input (seeds in
//! `fuzz/corpus/torchscript/`). Run with `make fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| torch2coreml_fuzz::torchscript_to_mil(data));
