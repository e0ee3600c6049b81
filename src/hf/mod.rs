//! Hugging Face folders (`config.json` + `model.safetensors`) of known families, built straight
//! into MIL in the ANE layout ((B, C, 1, S) activations, 1×1 `conv`, per-head attention) through
//! the [`Builder`](crate::mil::builder::Builder). A safetensors file holds weights, not a graph,
//! so each family (one file, one line in [`FAMILIES`]) writes its forward pass by hand,
//! mirroring the upstream module tree. Called by `convert` when MODEL is a directory.
//! Uses `mil` only.

pub mod bert;
pub mod weights;
pub mod whisper;

use std::path::{Path, PathBuf};

use crate::mil::builder::{Builder, Var};
use crate::mil::ops::{norm, TypeError};
use crate::mil::{DType, Model, Opset, Tensor};
pub use weights::{Scope, Weights};

/// Why a folder could not be built. Every variant names the file or tensor at fault.
#[derive(Debug, thiserror::Error)]
pub enum HfError {
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("{}: tensor `{name}` is missing", dir.display())]
    MissingTensor { dir: PathBuf, name: String },
    #[error("{}: tensor `{name}` has shape {got:?}, expected {expected:?}", file.display())]
    WrongShape { file: PathBuf, name: String, expected: Vec<usize>, got: Vec<usize> },
    #[error("{}: {} unexpected tensor(s), e.g. `{}`; is this the model `config.json` describes?", dir.display(), names.len(), names[0])]
    ExtraTensors { dir: PathBuf, names: Vec<String> },
    #[error("{}: model_type `{found}` is not supported; supported: {}", path.display(), supported_model_types().join(", "))]
    UnknownModelType { path: PathBuf, found: String },
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    #[error(transparent)]
    Build(#[from] crate::mil::ops::TypeError),
}

impl HfError {
    /// An error about `path` in general (unreadable, corrupt, unsupported content).
    pub fn file(path: &Path, message: impl Into<String>) -> HfError {
        HfError::File { path: path.to_path_buf(), message: message.into() }
    }

    /// An I/O error reading `path`.
    pub fn io(path: &Path, e: std::io::Error) -> HfError {
        HfError::file(path, e.to_string())
    }
}

/// A folder opened for building: its parsed `config.json` and its weights.
pub struct Folder {
    pub dir: PathBuf,
    pub config: serde_json::Value,
    pub weights: Weights,
}

/// The `config.json` file name.
pub const CONFIG_FILE: &str = "config.json";

impl Folder {
    /// The path of `config.json`, for messages.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join(CONFIG_FILE)
    }

    /// `config[key]` as an unsigned integer, or a [`HfError::Config`] naming the key.
    pub fn usize(&self, key: &str) -> Result<usize, HfError> {
        self.config
            .get(key)
            .and_then(|v| v.as_u64())
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| self.config_error(format!("`{key}` is missing or not a non-negative integer")))
    }

    /// `config[key]` as a float, or a [`HfError::Config`] naming the key.
    pub fn f64(&self, key: &str) -> Result<f64, HfError> {
        self.config.get(key).and_then(|v| v.as_f64()).ok_or_else(|| self.config_error(format!("`{key}` is missing or not a number")))
    }

    /// `config[key]` as a string, if present.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.config.get(key).and_then(|v| v.as_str())
    }

    /// A [`HfError::Config`] about this folder's `config.json`.
    pub fn config_error(&self, message: impl Into<String>) -> HfError {
        HfError::Config { path: self.config_path(), message: message.into() }
    }
}

/// What the caller asks of a build.
#[derive(Clone, Debug)]
pub struct Options {
    pub opset: Opset,
    /// Compute and weight precision (fp16 or fp32).
    pub precision: DType,
    /// Sequence length of text inputs, when the family takes text (BERT: default 128).
    pub seq_len: Option<usize>,
}

/// One package a family produces: its file stem (`AudioEncoder`) and model.
pub struct Built {
    pub name: String,
    pub model: Model,
}

/// What a build returns: the packages, and the folder's files to copy beside them
/// (tokenizer, configs) so an app can load the set.
pub struct Output {
    pub packages: Vec<Built>,
    pub side_files: Vec<PathBuf>,
}

/// A known family: the `model_type` values it accepts and its builder.
pub struct Family {
    /// The family's name, which also names its reference runner (`reference::FOLDER_RUNNERS`).
    pub name: &'static str,
    pub model_types: &'static [&'static str],
    pub build: fn(&Folder, &Options) -> Result<Output, HfError>,
}

/// Every family, one line each.
pub const FAMILIES: &[Family] = &[
    bert::FAMILY,
    Family { name: "whisper", model_types: whisper::MODEL_TYPES, build: whisper::build },
];

/// Every `model_type` some family accepts, for the unknown-type message.
pub fn supported_model_types() -> Vec<&'static str> {
    FAMILIES.iter().flat_map(|f| f.model_types.iter().copied()).collect()
}

/// Whether `dir` looks like a Hugging Face folder (has `config.json`).
pub fn is_folder(dir: &Path) -> bool {
    dir.is_dir() && dir.join(CONFIG_FILE).is_file()
}

/// Reads and parses `dir/config.json`; returns it with its `model_type`.
fn read_config(dir: &Path) -> Result<(serde_json::Value, String), HfError> {
    let config_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).map_err(|e| HfError::io(&config_path, e))?;
    let config: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| HfError::file(&config_path, format!("not valid JSON: {e}")))?;
    let model_type = config
        .get("model_type")
        .and_then(|v| v.as_str())
        .ok_or_else(|| HfError::Config { path: config_path.clone(), message: "has no `model_type`".into() })?
        .to_string();
    Ok((config, model_type))
}

/// The family of the folder `dir`, by its config's `model_type`.
pub fn family_for(dir: &Path) -> Result<&'static Family, HfError> {
    let (_, model_type) = read_config(dir)?;
    FAMILIES.iter().find(|f| f.model_types.contains(&model_type.as_str())).ok_or_else(|| HfError::UnknownModelType { path: dir.join(CONFIG_FILE), found: model_type })
}

/// Reads `dir/config.json`, picks the family by `model_type`, opens the weights and builds.
pub fn build(dir: &Path, options: &Options) -> Result<Output, HfError> {
    let family = family_for(dir)?;
    let (config, _) = read_config(dir)?;
    let weights = Weights::open(dir)?;
    let folder = Folder { dir: dir.to_path_buf(), config, weights };
    (family.build)(&folder, options)
}

/// Opens `dir` (config and weights) without building, for `reference` (the tch forward of the
/// same safetensors).
pub fn open(dir: &Path) -> Result<Folder, HfError> {
    let (config, _) = read_config(dir)?;
    let weights = Weights::open(dir)?;
    Ok(Folder { dir: dir.to_path_buf(), config, weights })
}

/// LayerNorm over the channel axis of a (B, C, 1, S) activation, `gamma`/`beta` already consts
/// and `epsilon` in the compute dtype: the one layer norm both families build (`bert`, `whisper`).
fn channel_layer_norm(b: &mut Builder, hint: &str, x: &Var, gamma: &Var, beta: &Var, epsilon: Tensor) -> Result<Var, TypeError> {
    b.op(&norm::LAYER_NORM, hint)
        .arg("x", x)
        .konst("axes", Tensor::i32_vec(&[1]))
        .arg("gamma", gamma)
        .arg("beta", beta)
        .konst("epsilon", epsilon)
        .build1()
}
