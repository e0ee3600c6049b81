//! `.mlpackage` on disk: [`write`] serializes a [`Model`](crate::mil::Model) (Manifest.json,
//! `Data/com.apple.CoreML/model.mlmodel`, `weights/weight.bin`), [`read`] reads any ML Program
//! package (ours or coremltools') back into the IR. The only module that sees protobuf types.
//! Layout and rules: shared/docs/coreml-format.md §1–§5, §7.

pub mod blob;
pub mod manifest;
mod classify;
mod proto;
mod read;
mod write;

use std::path::PathBuf;

pub use read::{read, MAX_MANIFEST_BYTES, MAX_MODEL_SPEC_BYTES};
pub use write::{is_ours, write, write_replacing, WriteSummary};

/// Directory inside `Data/` that holds the model and its weights (the Manifest item author).
pub const COREML_DIR: &str = "com.apple.CoreML";
/// File name of the serialized `Model` protobuf.
pub const MODEL_FILE: &str = "model.mlmodel";
/// Directory of weight files, next to the model file.
pub const WEIGHTS_DIR: &str = "weights";
/// The one weight file coremltools writes and we write.
pub const WEIGHT_FILE: &str = "weight.bin";
/// How a program refers to a weight file: `@model_path` is the directory holding model.mlmodel.
pub const BLOB_PATH_PREFIX: &str = "@model_path/";
/// Extension Core ML requires of a package directory.
pub const PACKAGE_EXTENSION: &str = "mlpackage";

/// What can go wrong reading or writing a package. Each message names the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {reason}")]
    NotAPackage { path: PathBuf, reason: String },
    #[error("{path}: bad Manifest.json: {reason}")]
    Manifest { path: PathBuf, reason: String },
    #[error("{path}: not a valid Core ML model protobuf (truncated or corrupt?): {error}")]
    Decode { path: PathBuf, error: prost::DecodeError },
    #[error("{path}: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("{path}: malformed model: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("{path}: bad weight blob at offset {offset}: {reason}")]
    BadBlob { path: PathBuf, offset: u64, reason: String },
    #[error("{path}: program does not type-check: {error}")]
    Check { path: PathBuf, error: crate::mil::builder::CheckError },
    #[error("{path}: cannot write this model: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    /// A package file that is not a regular file, too large, or resolves outside the package.
    #[error("{0}")]
    File(crate::files::Error),
    #[error("{0}")]
    Output(#[from] crate::staging::Error),
    /// Constants (op names) whose lazy fp16 cast wrote an infinity: nothing was kept, and
    /// `pipeline::write` writes again with them in fp32 (`passes::fp16_range`).
    #[error("{path}: fp16 cannot hold constant(s) {}", consts.join(", "))]
    Fp16Infinity { path: PathBuf, consts: Vec<String> },
}

// Causes are part of each message, not chained `source`s, so `{:#}` prints them once.

impl From<crate::files::Error> for Error {
    fn from(e: crate::files::Error) -> Error {
        Error::File(e)
    }
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |error| Error::Io { path, error }
    }
}
