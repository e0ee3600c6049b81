//! `torchscript::read` on archives torch 2.13 wrote (`fixtures/torchscript/make.py`): every
//! parameter and buffer has the path, dtype, shape, strides, offset and bytes that
//! `torch.jit.load` reports (the `.json` next to each `.pt`); constants and code text match;
//! and broken archives (truncated, not a zip, a pickle calling `os.system`, deflated storages,
//! every prefix of a real file) give typed errors, never a panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use torch2coreml::mil::DType;
use torch2coreml::torchscript::{self, Attribute, Error, PyObject, TorchTensor};

/// Fixtures with a `.json` of what torch reports.
const MODELS: [&str; 3] = ["mlp", "convnet", "zoo"];

#[derive(Deserialize)]
struct Expected {
    root_class: String,
    tensors: BTreeMap<String, ExpectedTensor>,
    constants: Vec<ExpectedTensor>,
    code: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct ExpectedTensor {
    dtype: String,
    shape: Vec<usize>,
    stride: Vec<usize>,
    storage_offset: usize,
    requires_grad: bool,
    hex: String,
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/torchscript")
        .join(name)
}

fn expected(model: &str) -> Expected {
    let text = std::fs::read_to_string(fixture(&format!("{model}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// torch's dtype names (`str(t.dtype)` without `torch.`) for the dtypes the fixtures use.
fn torch_dtype(name: &str) -> DType {
    match name {
        "float32" => DType::F32,
        "float16" => DType::F16,
        "bfloat16" => DType::BF16,
        "float64" => DType::F64,
        "int64" => DType::I64,
        "int32" => DType::I32,
        "int16" => DType::I16,
        "int8" => DType::I8,
        "uint8" => DType::U8,
        "bool" => DType::Bool,
        other => panic!("fixture uses dtype {other}; add it here"),
    }
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn check_tensor(what: &str, t: &TorchTensor, want: &ExpectedTensor) {
    assert_eq!(t.dtype(), torch_dtype(&want.dtype), "{what} dtype");
    assert_eq!(t.shape, want.shape, "{what} shape");
    assert_eq!(t.strides, want.stride, "{what} stride");
    assert_eq!(t.offset, want.storage_offset, "{what} storage offset");
    assert_eq!(t.requires_grad, want.requires_grad, "{what} requires_grad");
    let values = t.to_tensor().unwrap();
    assert_eq!(values.shape(), want.shape.as_slice(), "{what}");
    assert_eq!(values.bytes(), unhex(&want.hex), "{what} bytes");
}

#[test]
fn tensors_match_what_torch_reports() {
    for model in MODELS {
        let archive =
            torchscript::read(&fixture(&format!("{model}.pt"))).unwrap_or_else(|e| panic!("{e}"));
        let want = expected(model);
        assert_eq!(archive.folder, model);
        assert!((3..=10).contains(&archive.version));
        assert_eq!(archive.root.class.to_string(), want.root_class);
        let names: Vec<&str> = archive.tensors.iter().map(|(n, _)| n.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            want.tensors.keys().map(String::as_str).collect::<Vec<_>>(),
            "{model}: tensor paths"
        );
        for (name, t) in &archive.tensors {
            check_tensor(&format!("{model}:{name}"), t, &want.tensors[name]);
        }
        assert_eq!(
            archive.constants.len(),
            want.constants.len(),
            "{model}: constants"
        );
        for (i, (c, w)) in archive.constants.iter().zip(&want.constants).enumerate() {
            let PyObject::Tensor(t) = c else {
                panic!("{model}: constant {i} is {c:?}")
            };
            check_tensor(&format!("{model}:CONSTANTS.c{i}"), t, w);
        }
        assert_eq!(archive.code, want.code, "{model}: code text");
    }
}

#[test]
fn contiguous_tensors_are_slices_of_the_file() {
    let path = fixture("mlp.pt");
    let file = std::fs::read(&path).unwrap();
    let archive = torchscript::read(&path).unwrap();
    for (name, t) in &archive.tensors {
        let mapped = t
            .mapped()
            .unwrap_or_else(|| panic!("{name} is contiguous in torch"));
        let start = mapped.bytes().as_ptr() as usize - t.storage.bytes().as_ptr() as usize;
        assert_eq!(start, 0, "{name} starts at its storage");
        // The storage is the zip entry's bytes, 64-byte aligned as torch writes it.
        let entry = archive.zip().find(&t.storage.entry).unwrap();
        assert_eq!(entry.data_offset % 64, 0, "{name}");
        let offset = entry.data_offset as usize;
        assert_eq!(
            &file[offset..offset + t.storage.bytes().len()],
            t.storage.bytes(),
            "{name}"
        );
    }
}

#[test]
fn module_tree_views_and_tied_weights() {
    let archive = torchscript::read(&fixture("zoo.pt")).unwrap();
    let root = &archive.root;
    assert_eq!(
        root.get("training"),
        Some(&Attribute::Value(PyObject::Bool(false)))
    );
    let emb = root.submodule("emb").unwrap();
    let head = root.submodule("head").unwrap();
    assert!(
        emb.class
            .module
            .starts_with("__torch__.torch.nn.modules.linear"),
        "{}",
        emb.class
    );
    assert!(
        Arc::ptr_eq(
            emb.tensor("weight").unwrap(),
            head.tensor("weight").unwrap()
        ),
        "tied weight is one tensor"
    );
    let tview = archive.tensor("tview").unwrap();
    let window = archive.tensor("window").unwrap();
    assert!(
        Arc::ptr_eq(&tview.storage, &window.storage),
        "one storage, two views"
    );
    assert!(tview.mapped().is_none() && !tview.is_contiguous());
    assert!(
        window.mapped().is_some(),
        "a row slice at an offset is still one byte range"
    );
    let mlp = torchscript::read(&fixture("mlp.pt")).unwrap();
    let classes: Vec<String> = mlp
        .root
        .attributes
        .iter()
        .filter_map(|(_, a)| match a {
            Attribute::Module(m) => Some(m.class.name.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(classes, ["Linear", "GELU", "Linear"]);
}

#[test]
fn a_pickle_calling_os_system_is_refused() {
    let e = torchscript::read(&fixture("evil.pt")).unwrap_err();
    assert!(
        matches!(&e, Error::GlobalNotAllowed { module, name, .. } if module == "os" && name == "system"),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("evil.pt") && msg.contains("`os.system`"),
        "{msg}"
    );
}

#[test]
fn deflated_storages_are_refused() {
    let e = torchscript::read(&fixture("compressed.pt")).unwrap_err();
    assert!(
        matches!(&e, Error::Compressed { entry, method: 8, .. } if entry.starts_with("mlp/data/")),
        "{e}"
    );
}

#[test]
fn truncated_and_non_zip_files_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("mlp.pt")).unwrap();
    let half = dir.path().join("half.pt");
    std::fs::write(&half, &bytes[..bytes.len() / 2]).unwrap();
    let e = torchscript::read(&half).unwrap_err();
    assert!(matches!(e, Error::Truncated { .. }), "{e}");
    assert!(e.to_string().contains("half.pt"), "{e}");
    let text = dir.path().join("notes.pt");
    std::fs::write(&text, "not a model\n").unwrap();
    assert!(matches!(
        torchscript::read(&text),
        Err(Error::NotZip { .. })
    ));
    assert!(matches!(
        torchscript::read(&dir.path().join("missing.pt")),
        Err(Error::Io { .. })
    ));
}

#[test]
fn every_prefix_of_a_real_archive_is_an_error_not_a_panic() {
    let bytes = std::fs::read(fixture("mlp.pt")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.pt");
    for cut in 0..bytes.len() {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        assert!(
            torchscript::read(&path).is_err(),
            "prefix of {cut} bytes read fine"
        );
    }
}

#[test]
fn every_byte_flip_of_a_real_archive_is_handled_without_a_panic() {
    let bytes = std::fs::read(fixture("mlp.pt")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flipped.pt");
    for at in 0..bytes.len() {
        let mut flipped = bytes.clone();
        flipped[at] ^= 0xff;
        std::fs::write(&path, &flipped).unwrap();
        if let Ok(archive) = torchscript::read(&path) {
            for (_, t) in &archive.tensors {
                let _ = t.to_tensor();
            }
        }
    }
}
