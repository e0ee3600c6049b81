//! Writes a [`Model`] as an `.mlpackage` directory, through [`crate::staging`]: everything goes
//! into a temporary directory beside the destination, renamed into place only when complete (a
//! failure leaves nothing behind). An existing destination is replaced only if it is a package we
//! wrote ([`is_ours`]) or the caller forces it. Called by `pipeline::write` (and by tests).

use std::fs;
use std::path::{Path, PathBuf};

use prost::Message;

use super::manifest::Manifest;
use super::proto::{model_to_proto, Emitter};
use super::{Error, COREML_DIR, MODEL_FILE, PACKAGE_EXTENSION, WEIGHTS_DIR};
use crate::mil::builder::check_function;
use crate::mil::Model;
use crate::staging::{Replace, Staged};

/// The top-level entries of a package we write; a directory with anything else is not ours.
const OUR_ENTRIES: &[&str] = &[MANIFEST_FILE, "Data"];
/// The package manifest's file name.
const MANIFEST_FILE: &str = "Manifest.json";
/// Largest Manifest.json read to decide ownership (ours is under 1 KB).
const MAX_MANIFEST_BYTES: u64 = 1 << 16;

/// Whether `path` is a package torch2coreml wrote, which `write` may replace: a directory holding
/// only `Manifest.json` and `Data/`, whose manifest is exactly ours (our fixed item identifiers;
/// coremltools draws random ones). Called by `write` and `pipeline::write`.
pub fn is_ours(path: &Path) -> bool {
    let Ok(meta) = fs::symlink_metadata(path) else { return false };
    if !meta.is_dir() {
        return false;
    }
    let Ok(entries) = fs::read_dir(path) else { return false };
    for e in entries {
        let Ok(e) = e else { return false };
        if !OUR_ENTRIES.iter().any(|n| e.file_name() == *n) {
            return false;
        }
    }
    let Ok(text) = crate::files::read_text_capped(&path.join(MANIFEST_FILE), MAX_MANIFEST_BYTES) else { return false };
    serde_json::from_str::<Manifest>(&text).is_ok_and(|m| m == Manifest::ours())
}

/// What `write` produced, for the CLI's summary.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteSummary {
    pub path: PathBuf,
    /// Size of model.mlmodel.
    pub model_bytes: u64,
    /// Size of weights/weight.bin (0 when every const is inline).
    pub weight_bytes: u64,
}

/// Type-checks `model` and writes it to `path` (which must end in `.mlpackage`), replacing an
/// existing package only if we wrote it ([`is_ours`]).
pub fn write(model: &Model, path: &Path) -> Result<WriteSummary, Error> {
    write_replacing(model, path, Replace::OursOnly)
}

/// [`write`], with the caller's rule for an existing destination (`--force`: anything).
pub fn write_replacing(model: &Model, path: &Path, replace: Replace) -> Result<WriteSummary, Error> {
    let invalid = |reason: String| Error::Invalid { path: path.to_path_buf(), reason };
    if path.extension().and_then(|e| e.to_str()) != Some(PACKAGE_EXTENSION) {
        return Err(invalid(format!("a Core ML package path must end in .{PACKAGE_EXTENSION}")));
    }
    for f in model.program.functions.values() {
        check_function(f).map_err(|error| Error::Check { path: path.to_path_buf(), error })?;
    }
    let staged = Staged::begin(path, replace, is_ours)?;
    let summary = write_into(model, staged.path(), path)?;
    staged.commit()?;
    Ok(summary)
}

/// Writes the package files into the empty directory `dir`; `path` is its final name, for
/// messages and the summary.
fn write_into(model: &Model, dir: &Path, path: &Path) -> Result<WriteSummary, Error> {
    let invalid = |reason: String| Error::Invalid { path: path.to_path_buf(), reason };
    let data = dir.join("Data").join(COREML_DIR);
    let weights = data.join(WEIGHTS_DIR);
    fs::create_dir_all(&weights).map_err(Error::io(&weights))?;
    let opset = model.program.functions.values().map(|f| f.opset).max().ok_or_else(|| invalid("the program has no function".into()))?;
    let mut emit = Emitter::new(opset, &weights);
    let proto = model_to_proto(model, &mut emit).map_err(invalid)?;
    let (weight_bytes, infinite) = emit.finish()?;
    if !infinite.is_empty() {
        return Err(Error::Fp16Infinity { path: path.to_path_buf(), consts: infinite });
    }
    let bytes = proto.encode_to_vec();
    fs::write(data.join(MODEL_FILE), &bytes).map_err(Error::io(data.join(MODEL_FILE)))?;
    fs::write(dir.join(MANIFEST_FILE), Manifest::ours().to_json()).map_err(Error::io(dir))?;
    Ok(WriteSummary { path: path.to_path_buf(), model_bytes: bytes.len() as u64, weight_bytes })
}
