//! The fuzz entry points: one function per input reader, taking raw bytes, writing them where the
//! reader expects a file (a temporary folder; the readers take paths), running the reader, and
//! panicking if the outcome breaks the promise made for hostile input: an error, never a panic,
//! whose message names a file in the input folder and stays short. Shared, unchanged, by the
//! libFuzzer targets in `fuzz/fuzz_targets/` (this file is the `torch2coreml_fuzz` library) and by
//! the replay test `tests/fuzz_corpus.rs` (through `#[path]`), so both run the same harness.
//! Uses only the public API of `torch2coreml`, `tempfile` and std.
//!
//! Multi-file inputs (a Hugging Face folder, an `.mlpackage`) are one byte string cut at
//! [`SPLIT`]: part *i* becomes the *i*-th file of the entry's file table ([`HF_FILES`],
//! [`PACKAGE_FILES`]); an empty or missing part writes no file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use torch2coreml::mil::{DType, Opset, TensorType};
use torch2coreml::torchscript::{self, code, graph, pickle, source_ranges, zip, Storage, StorageId};
use torch2coreml::{hf, package, validate};

/// Cuts a multi-file fuzz input into its files. Chosen to be text no real file contains, and
/// short enough that the fuzzer's dictionary-free mutations keep it intact most of the time.
pub const SPLIT: &[u8] = b"\n--t2c-fuzz-file--\n";

/// Longest error message accepted: a message quotes bounded excerpts of a file, never the file
/// (the CLI edge truncates too, but a library must not build multi-megabyte strings).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The files of a Hugging Face folder, in the order the parts of an `hf` input fill them: the
/// config, a single weights file, a shard index with the one shard it may name, and the
/// sentence-transformers module list that BERT-family builds read.
pub const HF_FILES: &[&str] = &[
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "shard.safetensors",
    "modules.json",
];

/// The files of an `.mlpackage`, in the order the parts of a `package` input fill them, at the
/// paths coremltools writes (`Manifest.json` names the other two).
pub const PACKAGE_FILES: &[&str] = &[
    "Manifest.json",
    "Data/com.apple.CoreML/model.mlmodel",
    "Data/com.apple.CoreML/weights/weight.bin",
];

/// Start of the name of every temporary folder an input is written into.
const FOLDER_PREFIX: &str = "t2c-fuzz-";

/// Name given to single-file inputs inside their temporary folder.
const INPUT_FILE: &str = "input";

/// Sequence length for BERT-family builds: small, so a seed builds in milliseconds.
const HF_SEQ_LEN: usize = 8;

/// Image-like input shape offered to a TorchScript `forward` (the fixtures' `convnet` takes it).
const IMAGE_INPUT: [usize; 4] = [1, 3, 6, 6];

/// A valid archive whose storages the `pickle` target hands to `persistent_load`, so the VM's
/// tensor rebuilds run against real mapped storages.
const STORAGE_DONOR: &[u8] = include_bytes!("../fixtures/torchscript/mlp.pt");

/// Every fuzz target: its name (the corpus folder `fuzz/corpus/<name>` and the binary
/// `fuzz/fuzz_targets/<name>.rs`) and its entry function. The replay test walks this table.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("zip", zip_entries),
    ("pickle", unpickle),
    ("code", code_parse),
    ("torchscript", torchscript_to_mil),
    ("hf", hf_build),
    ("package", package_read),
    ("npz", npz_read),
];

/// `torchscript::zip`: the directory, then every entry read (stored or inflated) and, for stored
/// entries, the zero-copy range.
pub fn zip_entries(data: &[u8]) {
    let dir = folder();
    let path = write(dir.path(), INPUT_FILE, data);
    let z = match zip::Zip::open(&path) {
        Ok(z) => z,
        Err(e) => return check(&e),
    };
    for entry in z.entries() {
        if let Err(e) = z.read(entry) {
            check(&e);
        }
        if entry.method == zip::METHOD_STORED {
            if let Err(e) = z.stored_range(entry) {
                check(&e);
            }
        }
    }
}

/// `torchscript::pickle::unpickle` on the bytes as `data.pkl`, with storages lent by a real
/// archive (matched by key, dtype and size, as `torchscript::read` does), then the same bytes as
/// a `.debug_pkl` source-range table (best-effort: only a panic counts there).
pub fn unpickle(data: &[u8]) {
    let dir = folder();
    let path = dir.path().join(INPUT_FILE);
    let storages = donor_storages();
    let mut load = |id: &StorageId| -> Result<Arc<Storage>, torchscript::Error> {
        storages
            .iter()
            .find(|s| s.entry.rsplit('/').next() == Some(id.key.as_str()) && s.dtype == id.dtype && s.numel == id.numel)
            .cloned()
            .ok_or_else(|| torchscript::Error::MissingEntry { path: path.clone(), entry: format!("data/{}", id.key) })
    };
    if let Err(e) = pickle::unpickle(&path, "data.pkl", data, &mut load) {
        check(&e);
    }
    let _ = source_ranges::SourceRanges::parse(&path, "code/__torch__.py.debug_pkl", data);
}

/// `torchscript::code::parse` on the bytes as text (invalid UTF-8 replaced, as a reader of a
/// corrupt entry would see it), then the class queries `graph` makes.
pub fn code_parse(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let stmts = match code::parse(&text) {
        Ok(s) => s,
        Err(e) => return check_len(&e.to_string()),
    };
    for class in code::classes(&stmts) {
        let _ = class.method("forward");
        let _ = class.string_list("__parameters__");
    }
}

/// `torchscript::read` on the bytes as a `.pt`, then `graph::to_mil` with one input per
/// `forward` parameter, tried as an image and as a row of the first matrix's width.
pub fn torchscript_to_mil(data: &[u8]) {
    let dir = folder();
    let path = write(dir.path(), "model.pt", data);
    let archive = match torchscript::read(&path) {
        Ok(a) => a,
        Err(e) => return check(&e),
    };
    let Some(params) = forward_params(&archive) else { return };
    let width = archive.tensors.iter().find_map(|(_, t)| match t.shape.as_slice() {
        [_, w] => Some(*w),
        _ => None,
    });
    let mut shapes = vec![IMAGE_INPUT.to_vec()];
    shapes.extend(width.map(|w| vec![1, w]));
    for shape in shapes {
        let inputs: Vec<graph::InputSpec> =
            (0..params).map(|_| graph::InputSpec::new(None, TensorType::new(DType::F32, &shape))).collect();
        let opts = graph::Options { opset: Opset::Ios16, precision: DType::F16, fp32_outputs: false };
        if let Err(e) = graph::to_mil(&archive, &inputs, &opts) {
            check(&e);
        }
    }
}

/// `hf::build` (which opens config and weights as `hf::open` does) on a folder made from the
/// parts in [`HF_FILES`] order.
pub fn hf_build(data: &[u8]) {
    let dir = folder();
    write_parts(dir.path(), HF_FILES, data);
    let options = hf::Options { opset: Opset::Ios16, precision: DType::F16, seq_len: Some(HF_SEQ_LEN) };
    if let Err(e) = hf::build(dir.path(), &options) {
        check(&e);
    }
}

/// `package::read` on an `.mlpackage` folder made from the parts in [`PACKAGE_FILES`] order.
pub fn package_read(data: &[u8]) {
    let dir = folder();
    let pkg = dir.path().join("Model.mlpackage");
    write_parts(&pkg, PACKAGE_FILES, data);
    if let Err(e) = package::read(&pkg) {
        check(&e);
    }
}

/// `validate::npz::read` on the bytes as an `.npz`, then `parse_npy` on them as one `.npy`.
pub fn npz_read(data: &[u8]) {
    let dir = folder();
    let path = write(dir.path(), "inputs.npz", data);
    if let Err(e) = validate::npz::read(&path) {
        check(&e);
    }
    if let Err(e) = validate::npz::parse_npy(data) {
        check_len(&e);
    }
}

/// Cuts `data` at every [`SPLIT`]; `join_parts` is its inverse (the seed corpus is made with it).
pub fn split_parts(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(SPLIT.len()).position(|w| w == SPLIT) {
        parts.push(&rest[..at]);
        rest = &rest[at + SPLIT.len()..];
    }
    parts.push(rest);
    parts
}

/// Joins files into one multi-file fuzz input (the inverse of [`split_parts`]).
pub fn join_parts(parts: &[&[u8]]) -> Vec<u8> {
    parts.join(SPLIT)
}

/// Panics unless `error`'s message names a path in a fuzz input folder (every file of an input
/// lives in one, as does the archive lending the `pickle` target its storages) and is at most
/// [`MAX_MESSAGE_BYTES`].
pub fn check(error: &dyn std::error::Error) {
    let message = error.to_string();
    check_len(&message);
    let folders = std::env::temp_dir().join(FOLDER_PREFIX).display().to_string();
    assert!(message.contains(&folders), "error does not name the input file ({folders}…): {}", excerpt(&message));
}

/// Panics if `message` is longer than [`MAX_MESSAGE_BYTES`].
pub fn check_len(message: &str) {
    assert!(message.len() <= MAX_MESSAGE_BYTES, "error message of {} bytes: {}…", message.len(), excerpt(message));
}

/// The first few hundred characters of a message, for assertion output.
fn excerpt(message: &str) -> String {
    message.chars().take(300).collect()
}

/// A fresh temporary folder for one input.
fn folder() -> tempfile::TempDir {
    tempfile::Builder::new().prefix(FOLDER_PREFIX).tempdir().expect("creating a temporary folder")
}

/// Writes `bytes` to `dir/name` (creating parent folders) and returns the path.
fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("creating a temporary folder");
    }
    std::fs::write(&path, bytes).expect("writing a temporary file");
    path
}

/// Writes the non-empty parts of `data` under `dir` as `files` (extra parts are dropped); `dir`
/// itself always exists.
fn write_parts(dir: &Path, files: &[&str], data: &[u8]) {
    std::fs::create_dir_all(dir).expect("creating a temporary folder");
    for (name, part) in files.iter().zip(split_parts(data)) {
        if !part.is_empty() {
            write(dir, name, part);
        }
    }
}

/// The number of parameters (after `self`) of the root class's `forward`, if its code parses.
fn forward_params(archive: &torchscript::Archive) -> Option<usize> {
    archive.code.values().find_map(|text| {
        let stmts = code::parse(text).ok()?;
        let class = code::classes(&stmts).find(|c| c.name == archive.root.class.name)?;
        Some(class.method("forward")?.params.len().saturating_sub(1))
    })
}

/// The storages of [`STORAGE_DONOR`], read once per process. Its temporary file is removed at
/// once; the storages keep the mapping, which outlives the name.
fn donor_storages() -> &'static [Arc<Storage>] {
    static DONOR: OnceLock<Vec<Arc<Storage>>> = OnceLock::new();
    DONOR.get_or_init(|| {
        let dir = folder();
        let path = write(dir.path(), "donor.pt", STORAGE_DONOR);
        let archive = torchscript::read(&path).expect("the storage donor fixture reads");
        archive.tensors.iter().map(|(_, t)| t.storage.clone()).collect()
    })
}
