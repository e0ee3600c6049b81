//! Reads any ML Program `.mlpackage` (ours or coremltools') into a [`Model`]: Manifest.json →
//! root model item → `Model` protobuf → IR, weights memory-mapped (a tensor read from weight.bin
//! is a view of the mapping, so the file must not be truncated while the model is alive). Every
//! op we know is re-typed through its `OpDef`. Called by `inspect` and later by `validate`/`lint-ane`.

use std::fs;
use std::path::Path;

use prost::Message;

use super::manifest::Manifest;
use super::proto::{core_ml::specification as spec, Reader};
use super::Error;
use crate::mil::builder::check_function;
use crate::mil::Model;

/// Reads the package at `path`. Errors name the file at fault and what is wrong with it.
pub fn read(path: &Path) -> Result<Model, Error> {
    let not_pkg = |reason: &str| Error::NotAPackage { path: path.to_path_buf(), reason: reason.to_string() };
    let meta = fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => not_pkg("no such file or directory"),
        _ => Error::Io { path: path.to_path_buf(), source: e },
    })?;
    if !meta.is_dir() {
        return Err(not_pkg("not an .mlpackage (a package is a directory with Manifest.json)"));
    }
    let manifest_path = path.join("Manifest.json");
    let text = match fs::read_to_string(&manifest_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_pkg("not an .mlpackage: no Manifest.json")),
        Err(e) => return Err(Error::Io { path: manifest_path, source: e }),
    };
    let bad_manifest = |reason: String| Error::Manifest { path: manifest_path.clone(), reason };
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| bad_manifest(e.to_string()))?;
    let root = manifest.root().ok_or_else(|| bad_manifest(format!("rootModelIdentifier `{}` is not an item", manifest.root_model_identifier)))?;
    if Path::new(&root.path).components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
        return Err(bad_manifest(format!("item path `{}` leaves the package", root.path)));
    }
    let model_path = path.join("Data").join(&root.path);
    let bytes = fs::read(&model_path).map_err(Error::io(&model_path))?;
    let proto = spec::Model::decode(bytes.as_slice()).map_err(|source| Error::Decode { path: model_path.clone(), source })?;
    let model = Reader::new(&model_path).model(&proto)?;
    for f in model.program.functions.values() {
        check_function(f).map_err(|source| Error::Check { path: model_path.clone(), source })?;
    }
    Ok(model)
}
