//! Reads any ML Program `.mlpackage` (ours or coremltools') into a [`Model`]: Manifest.json →
//! root model item → `Model` protobuf → IR, weights memory-mapped (a tensor read from weight.bin
//! is a view of the mapping, so the file must not be truncated while the model is alive). Every
//! op we know is re-typed through its `OpDef`. Called by `inspect`, `validate`, `lint-ane` and
//! `speech::packages`.
//!
//! Hostile packages: every file is opened through `crate::files` (regular files only, so a FIFO
//! cannot block us; Manifest.json and model.mlmodel read with the size caps below), and the
//! model file, like every weight file (`proto::Reader`), must resolve inside the package after
//! symlinks are followed.

use std::path::{Component, Path};

use prost::Message;

use super::manifest::Manifest;
use super::proto::{core_ml::specification as spec, Reader};
use super::Error;
use crate::files;
use crate::mil::builder::check_function;
use crate::mil::Model;

/// The manifest file at the root of every package.
pub const MANIFEST_FILE: &str = "Manifest.json";
/// The directory under the package root that Manifest item paths are relative to.
pub const DATA_DIR: &str = "Data";
/// Largest Manifest.json read. coremltools writes two items in under 1 KB; 1 MiB leaves room
/// for thousands of items while a hostile manifest cannot make us parse gigabytes of JSON.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// Largest model.mlmodel read. An ML Program's spec holds the graph and only small inline
/// consts (coremltools and we move every const of 10+ elements into weight.bin): a MiniLM spec
/// is 330 KB, whisper-medium's a few MB. 256 MiB is 50× that, and keeps the decoded protobuf
/// plus the IR built from it (about 3× the file) under the 1 GB a hostile input may cost us.
pub const MAX_MODEL_SPEC_BYTES: u64 = 256 << 20;

/// Reads the package at `path`. Errors name the file at fault and what is wrong with it.
pub fn read(path: &Path) -> Result<Model, Error> {
    let not_pkg = |reason: &str| Error::NotAPackage { path: path.to_path_buf(), reason: reason.to_string() };
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => not_pkg("no such file or directory"),
        _ => Error::Io { path: path.to_path_buf(), error: e },
    })?;
    if !meta.is_dir() {
        return Err(not_pkg("not an .mlpackage (a package is a directory with Manifest.json)"));
    }
    let manifest_path = path.join(MANIFEST_FILE);
    if std::fs::symlink_metadata(&manifest_path).is_err() {
        return Err(not_pkg("not an .mlpackage: no Manifest.json"));
    }
    files::inside(path, Path::new(MANIFEST_FILE))?;
    let text = files::read_text_capped(&manifest_path, MAX_MANIFEST_BYTES)?;
    let bad_manifest = |reason: String| Error::Manifest { path: manifest_path.clone(), reason };
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| bad_manifest(e.to_string()))?;
    let root = manifest.root().ok_or_else(|| {
        bad_manifest(format!("rootModelIdentifier `{}` is not an item", files::shown(&manifest.root_model_identifier)))
    })?;
    let item = Path::new(&root.path);
    if root.path.is_empty() || item.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(bad_manifest(format!("item path `{}` leaves the package", files::shown(&root.path))));
    }
    let model_path = path.join(DATA_DIR).join(item);
    // Symlinks may not lead out of the package either (the resolved path is only checked here;
    // errors keep naming the path as the package spells it).
    files::inside(path, &Path::new(DATA_DIR).join(item))?;
    let bytes = files::read_capped(&model_path, MAX_MODEL_SPEC_BYTES)?;
    let proto = spec::Model::decode(bytes.as_slice()).map_err(|error| Error::Decode { path: model_path.clone(), error })?;
    drop(bytes);
    let mut model = Reader::new(&model_path, path).model(&proto)?;
    for f in model.program.functions.values_mut() {
        let found = crate::mil::constexpr::fold(f).map_err(|reason| Error::Unsupported { path: model_path.clone(), reason })?;
        model.compressed.extend(found);
    }
    for f in model.program.functions.values() {
        check_function(f).map_err(|error| Error::Check { path: model_path.clone(), error })?;
    }
    Ok(model)
}
