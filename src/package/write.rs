//! Writes a [`Model`] as an `.mlpackage` directory. Everything goes into a temporary directory
//! beside the destination, which is renamed into place only when complete: a failure leaves
//! nothing behind, and an existing package at the destination is replaced whole.
//! Called by `convert` (and by tests through the Builder).

use std::fs;
use std::path::{Path, PathBuf};

use prost::Message;

use super::manifest::Manifest;
use super::proto::{model_to_proto, Emitter};
use super::{Error, COREML_DIR, MODEL_FILE, PACKAGE_EXTENSION, WEIGHTS_DIR};
use crate::mil::builder::check_function;
use crate::mil::Model;

/// What `write` produced, for the CLI's summary.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteSummary {
    pub path: PathBuf,
    /// Size of model.mlmodel.
    pub model_bytes: u64,
    /// Size of weights/weight.bin (0 when every const is inline).
    pub weight_bytes: u64,
}

/// Type-checks `model` and writes it to `path` (which must end in `.mlpackage`).
pub fn write(model: &Model, path: &Path) -> Result<WriteSummary, Error> {
    let invalid = |reason: String| Error::Invalid { path: path.to_path_buf(), reason };
    if path.extension().and_then(|e| e.to_str()) != Some(PACKAGE_EXTENSION) {
        return Err(invalid(format!("a Core ML package path must end in .{PACKAGE_EXTENSION}")));
    }
    for f in model.program.functions.values() {
        check_function(f).map_err(|error| Error::Check { path: path.to_path_buf(), error })?;
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("model.mlpackage");
    let tmp = tempfile::Builder::new().prefix(&format!(".{file_name}.")).tempdir_in(&parent).map_err(Error::io(&parent))?;

    let data = tmp.path().join("Data").join(COREML_DIR);
    let weights = data.join(WEIGHTS_DIR);
    fs::create_dir_all(&weights).map_err(Error::io(&weights))?;
    let main = model.program.main().ok_or_else(|| invalid("the program has no `main` function".into()))?;
    let mut emit = Emitter::new(main.opset, &weights);
    let proto = model_to_proto(model, &mut emit).map_err(invalid)?;
    let weight_bytes = emit.finish()?;
    let bytes = proto.encode_to_vec();
    fs::write(data.join(MODEL_FILE), &bytes).map_err(Error::io(data.join(MODEL_FILE)))?;
    fs::write(tmp.path().join("Manifest.json"), Manifest::ours().to_json()).map_err(Error::io(tmp.path()))?;

    if path.exists() {
        let old = tempfile::Builder::new().prefix(&format!(".{file_name}.old.")).tempdir_in(&parent).map_err(Error::io(&parent))?;
        let old_pkg = old.path().join("pkg");
        fs::rename(path, &old_pkg).map_err(Error::io(path))?;
        fs::rename(tmp.keep(), path).map_err(Error::io(path))?;
    } else {
        fs::rename(tmp.keep(), path).map_err(Error::io(path))?;
    }
    Ok(WriteSummary { path: path.to_path_buf(), model_bytes: bytes.len() as u64, weight_bytes })
}
