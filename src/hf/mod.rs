//! Hugging Face folders (`config.json` + `model.safetensors`) of known families, built straight
//! into MIL in the ANE layout ((B, C, 1, S) activations, 1×1 `conv`, per-head attention) through
//! the [`Builder`](crate::mil::builder::Builder). A safetensors file holds weights, not a graph,
//! so each family (one file, one line in [`FAMILIES`]) writes its forward pass by hand,
//! mirroring the upstream module tree over the shared layer kit [`nn`]. Called by `convert` when
//! MODEL is a directory. Every size read from `config.json` is bounded ([`Folder::usize`]) before
//! it sizes anything, and every file is read through [`crate::files`] (regular files only,
//! capped, side files inside the folder). Uses `mil` and `files` only.

pub mod bert;
pub mod nn;
pub mod weights;
pub mod whisper;

use std::path::{Path, PathBuf};

use crate::files;
use crate::mil::{DType, Model, Opset};
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
    /// `found` is already [`files::shown`] (it comes from the file).
    #[error("{}: model_type `{found}` is not supported; supported: {}", path.display(), supported_model_types().join(", "))]
    UnknownModelType { path: PathBuf, found: String },
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    #[error(transparent)]
    Build(#[from] crate::mil::ops::TypeError),
    /// A file of the folder refused by [`crate::files`] (not regular, too large, outside the
    /// folder, unreadable); the message names it.
    #[error(transparent)]
    Input(#[from] files::Error),
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

/// Largest `config.json` (or other JSON side config: `modules.json`, `preprocessor_config.json`)
/// read: real ones are a few KiB; the cap refuses a huge file before it is read whole.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Most layers a config may declare: published transformers have at most a few hundred, and the
/// bound keeps per-layer loops and `Vec::with_capacity` small before any weight is checked.
pub const MAX_LAYERS: usize = 1024;

/// Most attention heads: published models use at most 128; the bound keeps per-head op counts
/// (layers × heads split outputs in a decoder) small.
pub const MAX_HEADS: usize = 1024;

/// Widest channel count (hidden size, feed-forward width): published models stay below 2^16;
/// the bound keeps every shape, and products of two of them, inside MIL's i32 shape values.
pub const MAX_DIM: usize = 1 << 20;

/// Most rows of an embedding table (vocabulary, positions, token types) or a token id: the
/// largest vocabularies are about 2^18; the bound keeps ids and shapes inside i32.
pub const MAX_ROWS: usize = 1 << 20;

impl Folder {
    /// The path of `config.json`, for messages.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join(CONFIG_FILE)
    }

    /// `config[key]` as an unsigned integer of at most `max` (one of the named ceilings above,
    /// or a family's), or a [`HfError::Config`] naming the key. Checked before the value sizes
    /// anything, so a hostile `num_hidden_layers: 1e18` is one error line, not an allocation.
    pub fn usize(&self, key: &str, max: usize) -> Result<usize, HfError> {
        let v = self
            .config
            .get(key)
            .and_then(|v| v.as_u64())
            .ok_or_else(|| self.config_error(format!("`{key}` is missing or not a non-negative integer")))?;
        match usize::try_from(v) {
            Ok(v) if v <= max => Ok(v),
            _ => Err(self.config_error(format!("`{key}` is {v}, more than the {max} this converter accepts (corrupt config?)"))),
        }
    }

    /// `config[key]` as a float, or a [`HfError::Config`] naming the key.
    pub fn f64(&self, key: &str) -> Result<f64, HfError> {
        self.config.get(key).and_then(|v| v.as_f64()).ok_or_else(|| self.config_error(format!("`{key}` is missing or not a number")))
    }

    /// `config[key]` as a string, if present.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.config.get(key).and_then(|v| v.as_str())
    }

    /// Checks that the weights hold layer `n − 1` under `layers` (probing its tensor `probe`),
    /// so a config declaring more layers than the file has is one error naming `key` before
    /// anything is built per layer. More layers in the file than declared show up as unused
    /// tensors.
    pub fn check_layer_count(&self, key: &str, n: usize, layers: &Scope, probe: &str) -> Result<(), HfError> {
        let Some(last) = n.checked_sub(1) else { return Ok(()) };
        let layer = layers.at(&last.to_string());
        if layer.contains(probe) {
            return Ok(());
        }
        Err(self.config_error(format!("`{key}` is {n}, but the weights have no tensor `{}`", layer.path(probe))))
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
/// (tokenizer, configs) so an app can load the set, as canonical paths checked to lie inside
/// the folder and to be regular files ([`side_files`]).
pub struct Output {
    pub packages: Vec<Built>,
    pub side_files: Vec<PathBuf>,
}

/// A known family: its name, the `model_type` values it accepts and its builder.
pub struct Family {
    /// Short name (`bert`, `whisper`): names the family's reference runner (`reference::<name>`,
    /// dispatched by `cli::validate`) and its tests.
    pub name: &'static str,
    pub model_types: &'static [&'static str],
    pub build: fn(&Folder, &Options) -> Result<Output, HfError>,
}

/// Every family, one line each.
pub const FAMILIES: &[Family] = &[bert::FAMILY, whisper::FAMILY];

/// Every `model_type` some family accepts, for the unknown-type message.
pub fn supported_model_types() -> Vec<&'static str> {
    FAMILIES.iter().flat_map(|f| f.model_types.iter().copied()).collect()
}

/// Whether `dir` looks like a Hugging Face folder (has a `config.json` entry). Any kind of entry
/// counts, so a FIFO or a dangling link there reaches [`build`] and its one-line error instead of
/// being taken for another kind of model.
pub fn is_folder(dir: &Path) -> bool {
    dir.is_dir() && std::fs::symlink_metadata(dir.join(CONFIG_FILE)).is_ok()
}

/// Reads a JSON side file of a folder (`config.json`, `modules.json`, …): a regular file of at
/// most [`MAX_CONFIG_BYTES`], parsed. Errors name the file.
pub fn read_json(path: &Path) -> Result<serde_json::Value, HfError> {
    let text = files::read_text_capped(path, MAX_CONFIG_BYTES)?;
    serde_json::from_str(&text).map_err(|e| HfError::file(path, format!("not valid JSON: {e}")))
}

/// Reads and parses `dir/config.json`; returns it with the family its `model_type` picks.
fn read_config(dir: &Path) -> Result<(serde_json::Value, &'static Family), HfError> {
    let config_path = dir.join(CONFIG_FILE);
    let config = read_json(&config_path)?;
    let model_type = config
        .get("model_type")
        .and_then(|v| v.as_str())
        .ok_or_else(|| HfError::Config { path: config_path.clone(), message: "has no `model_type` string".into() })?;
    let family = FAMILIES
        .iter()
        .find(|f| f.model_types.contains(&model_type))
        .ok_or_else(|| HfError::UnknownModelType { path: config_path.clone(), found: files::shown(model_type) })?;
    Ok((config, family))
}

/// The family of the folder `dir`, from the `model_type` of its `config.json`. Used by
/// [`build`] and by callers that dispatch on [`Family::name`] (reference runners).
pub fn family_for(dir: &Path) -> Result<&'static Family, HfError> {
    read_config(dir).map(|(_, family)| family)
}

/// Reads `dir/config.json`, picks the family by `model_type`, opens the weights and builds.
pub fn build(dir: &Path, options: &Options) -> Result<Output, HfError> {
    let (config, family) = read_config(dir)?;
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

/// The files among `names` that `dir` has, to copy beside the packages (tokenizer, configs).
/// An absent name is skipped; a present one must resolve inside `dir` and be a regular file
/// (a `tokenizer.json` linking to `/etc/passwd`, or a FIFO, is an error naming it). Returns the
/// resolved paths. Called by each family's build.
pub fn side_files(dir: &Path, names: &[&str]) -> Result<Vec<PathBuf>, HfError> {
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let path = dir.join(name);
        match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(HfError::io(&path, e)),
            Ok(_) => {}
        }
        let real = files::inside(dir, Path::new(name))?;
        files::open_regular(&real)?;
        out.push(real);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    use serde_json::json;

    /// A folder with `config` and a one-tensor `model.safetensors` (enough for `Weights::open`).
    fn folder(config: &serde_json::Value) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), config.to_string()).unwrap();
        let bytes = 1f32.to_le_bytes();
        let view = TensorView::new(Dtype::F32, vec![1], &bytes).unwrap();
        safetensors::serialize_to_file([("unused", view)], None, &dir.path().join(weights::SINGLE_FILE)).unwrap();
        dir
    }

    fn options() -> Options {
        Options { opset: Opset::Ios16, precision: DType::F32, seq_len: Some(4) }
    }

    fn bert_config() -> serde_json::Value {
        json!({"model_type": "bert", "hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1,
            "intermediate_size": 16, "vocab_size": 20, "max_position_embeddings": 6, "type_vocab_size": 2,
            "layer_norm_eps": 1e-12, "hidden_act": "gelu"})
    }

    fn whisper_config() -> serde_json::Value {
        json!({"model_type": "whisper", "d_model": 8, "encoder_layers": 1, "decoder_layers": 1,
            "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 16, "decoder_ffn_dim": 16,
            "num_mel_bins": 4, "vocab_size": 20, "max_source_positions": 3, "max_target_positions": 5})
    }

    /// Builds `base` with `key` set to `value`; the error must be one `config.json` line naming `key`.
    fn refused(base: serde_json::Value, key: &str, value: serde_json::Value) -> String {
        let mut config = base;
        config[key] = value.clone();
        let dir = folder(&config);
        let start = std::time::Instant::now();
        let err = build(dir.path(), &options()).err().unwrap_or_else(|| panic!("{key} = {value} was accepted"));
        assert!(start.elapsed().as_secs() < 2, "{key} = {value} took {:?}", start.elapsed());
        let msg = err.to_string();
        assert!(matches!(err, HfError::Config { .. }), "{key} = {value}: {msg}");
        assert!(msg.contains(CONFIG_FILE) && msg.contains(&format!("`{key}`")) && !msg.contains('\n'), "{key} = {value}: {msg}");
        msg
    }

    #[test]
    fn hostile_sizes_are_one_config_error_naming_the_key() {
        let huge = [json!(1_000_000_000u64), json!(1u64 << 63), json!(u64::MAX), json!(-1), json!(1e300), json!("12")];
        for key in ["num_hidden_layers", "hidden_size", "vocab_size", "max_position_embeddings", "num_attention_heads", "intermediate_size", "type_vocab_size"] {
            for v in &huge {
                refused(bert_config(), key, v.clone());
            }
        }
        for key in ["encoder_layers", "decoder_layers", "d_model", "num_mel_bins", "vocab_size", "encoder_ffn_dim", "max_source_positions", "max_target_positions", "decoder_attention_heads"] {
            for v in &huge {
                refused(whisper_config(), key, v.clone());
            }
        }
        let msg = refused(whisper_config(), "num_mel_bins", json!(1_000_000));
        assert!(msg.contains("1000000") && msg.contains("1024"), "{msg}");
        let mut roberta = bert_config();
        roberta["model_type"] = json!("roberta");
        refused(roberta, "pad_token_id", json!(1u64 << 40));
        refused(bert_config(), "layer_norm_eps", json!(1e300));
    }

    #[test]
    fn zero_or_indivisible_heads_and_missing_layers_are_config_errors() {
        refused(bert_config(), "num_attention_heads", json!(0));
        refused(bert_config(), "num_attention_heads", json!(3));
        refused(whisper_config(), "encoder_attention_heads", json!(0));
        refused(whisper_config(), "decoder_attention_heads", json!(3));
        // In range, but the weights hold no such layer: refused before anything per layer is built.
        let mut no_encoder_layers = whisper_config();
        no_encoder_layers["encoder_layers"] = json!(0);
        let msg = refused(no_encoder_layers, "decoder_layers", json!(MAX_LAYERS));
        assert!(msg.contains("model.decoder.layers.1023"), "{msg}");
    }

    #[test]
    fn config_must_be_a_small_regular_file() {
        let dir = folder(&bert_config());
        let config = dir.path().join(CONFIG_FILE);
        std::fs::remove_file(&config).unwrap();
        assert!(std::process::Command::new("mkfifo").arg(&config).status().unwrap().success());
        let msg = build(dir.path(), &options()).err().unwrap().to_string();
        assert!(msg.contains("config.json") && msg.contains("FIFO"), "{msg}");
        std::fs::remove_file(&config).unwrap();
        std::fs::File::create(&config).unwrap().set_len(MAX_CONFIG_BYTES + 1).unwrap();
        let msg = family_for(dir.path()).err().unwrap().to_string();
        assert!(msg.contains("config.json") && msg.contains("more than"), "{msg}");
    }

    #[test]
    fn model_type_is_shown_escaped_and_bounded() {
        let mut config = bert_config();
        config["model_type"] = json!(format!("\u{1b}[2J{}", "x".repeat(100_000)));
        let dir = folder(&config);
        let msg = family_for(dir.path()).err().unwrap().to_string();
        assert!(!msg.contains('\u{1b}') && msg.len() < 1000 && msg.contains("not supported"), "{msg}");
        config["model_type"] = json!(7);
        let dir = folder(&config);
        let msg = family_for(dir.path()).err().unwrap().to_string();
        assert!(msg.contains("config.json") && msg.contains("model_type"), "{msg}");
    }

    #[test]
    fn family_for_names_the_family() {
        assert_eq!(family_for(folder(&bert_config()).path()).unwrap().name, "bert");
        assert_eq!(family_for(folder(&whisper_config()).path()).unwrap().name, "whisper");
    }

    #[test]
    fn families_are_unique() {
        let mut names: Vec<&str> = FAMILIES.iter().map(|f| f.name).collect();
        let mut types = supported_model_types();
        let (n, t) = (names.len(), types.len());
        names.sort_unstable();
        names.dedup();
        types.sort_unstable();
        types.dedup();
        assert_eq!((names.len(), types.len()), (n, t));
    }

    #[test]
    fn side_files_stay_inside_the_folder() {
        let outer = tempfile::tempdir().unwrap();
        let dir = outer.path().join("model");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(outer.path().join("secret"), b"x").unwrap();
        std::fs::write(dir.join("vocab.txt"), b"a\nb\n").unwrap();
        let got = side_files(&dir, &["vocab.txt", "merges.txt"]).unwrap();
        assert_eq!(got, vec![dir.canonicalize().unwrap().join("vocab.txt")]);
        std::os::unix::fs::symlink(outer.path().join("secret"), dir.join("tokenizer.json")).unwrap();
        let msg = side_files(&dir, &["vocab.txt", "tokenizer.json"]).unwrap_err().to_string();
        assert!(msg.contains("tokenizer.json") && msg.contains("outside"), "{msg}");
        std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
        assert!(std::process::Command::new("mkfifo").arg(dir.join("tokenizer.json")).status().unwrap().success());
        let msg = side_files(&dir, &["tokenizer.json"]).unwrap_err().to_string();
        assert!(msg.contains("tokenizer.json") && msg.contains("FIFO"), "{msg}");
    }
}
