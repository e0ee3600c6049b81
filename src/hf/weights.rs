//! The tensors of a Hugging Face folder: `model.safetensors`, or the shards listed by
//! `model.safetensors.index.json`, memory-mapped (nothing is copied until a package is written).
//! Family builders (`hf::bert`, `hf::whisper`) look tensors up by module path through
//! [`Weights::at`], mirroring the upstream module tree; every lookup checks the shape, and
//! [`Weights::unused`] lists what no lookup touched so a family can refuse extra tensors.
//!
//! Hostile folders: files are opened through `crate::files` (regular files only; the index read
//! with a size cap); shard names from the index must resolve inside the folder (no `..`, no
//! absolute paths, no symlinks out); a safetensors header is capped at [`MAX_HEADER_BYTES`]
//! before it is parsed, and the `safetensors` crate then checks what the header claims: offsets
//! contiguous from 0, each tensor's byte span equal to its dtype × shape (checked arithmetic),
//! and the last span ending exactly at the end of the file.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use safetensors::{Dtype, SafeTensors};

use super::HfError;
use crate::files::{self, shown};
use crate::mil::{DType, Tensor};

/// The single-file weights name `save_pretrained` writes.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The index `save_pretrained` writes instead when it shards the weights.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Largest index read. An index maps each tensor name to a shard (about 80 bytes a tensor): a
/// 70B-parameter Llama's is 60 KB; 16 MiB is 250× that.
pub const MAX_INDEX_BYTES: u64 = 16 << 20;
/// Largest safetensors JSON header parsed (the crate itself allows 100 MB). A header entry takes
/// about 100 bytes, so 16 MiB describes 160k tensors, 100× the largest checkpoints we convert,
/// while parsing it stays far under 1 GB.
pub const MAX_HEADER_BYTES: u64 = 16 << 20;

/// Where one tensor lives.
struct Entry {
    /// Index into `Weights::files`.
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    /// Byte offset of the payload within the mapped file.
    start: usize,
}

/// All tensors of one folder, by full name (`encoder.layers.0.fc1.weight`).
pub struct Weights {
    files: Vec<(PathBuf, Arc<memmap2::Mmap>)>,
    entries: BTreeMap<String, Entry>,
    /// Names handed out by [`Weights::get`], for [`Weights::unused`].
    used: RefCell<BTreeSet<String>>,
}

impl Weights {
    /// Opens the weights of `dir`: `model.safetensors`, else the shards named by
    /// `model.safetensors.index.json`. Errors name the file (missing, truncated, bad header,
    /// unsupported dtype).
    pub fn open(dir: &Path) -> Result<Weights, HfError> {
        let single = dir.join(SINGLE_FILE);
        let index = dir.join(INDEX_FILE);
        // Present at all (a FIFO or a dangling link too: opening it then says what is wrong).
        let exists = |p: &Path| std::fs::symlink_metadata(p).is_ok();
        let shards: Vec<PathBuf> = if exists(&single) {
            vec![single]
        } else if exists(&index) {
            let text = files::read_text_capped(&index, MAX_INDEX_BYTES).map_err(file_error)?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| HfError::file(&index, format!("not valid JSON: {e}")))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| HfError::file(&index, "has no `weight_map` object"))?;
            let mut names = BTreeSet::new();
            for v in map.values() {
                let name = v.as_str().ok_or_else(|| HfError::file(&index, format!("`weight_map` holds {}, not a file name", shown(&v.to_string()))))?;
                names.insert(name);
            }
            if names.is_empty() {
                return Err(HfError::file(&index, "`weight_map` names no shard files"));
            }
            let mut shards = Vec::with_capacity(names.len());
            for n in names {
                // The shard must lie in this folder: an index naming `../x`, `/etc/passwd` or a
                // link leading out is refused before anything is opened.
                files::inside(dir, Path::new(n)).map_err(|e| match e {
                    files::Error::OutsideFolder { .. } => HfError::file(
                        &index,
                        format!("`weight_map` names `{}`, which resolves outside the folder; shards must be files inside it", shown(n)),
                    ),
                    other => file_error(other),
                })?;
                shards.push(dir.join(n));
            }
            shards
        } else {
            return Err(HfError::file(dir, format!("has neither {SINGLE_FILE} nor {INDEX_FILE}")));
        };
        let mut weights = Weights { files: Vec::new(), entries: BTreeMap::new(), used: RefCell::default() };
        for path in shards {
            weights.add_file(path)?;
        }
        Ok(weights)
    }

    fn add_file(&mut self, path: PathBuf) -> Result<(), HfError> {
        // A changed file under us while converting can give wrong values but not unsafety in
        // our code (we only read bytes); see `files::map_regular`.
        let map = files::map_regular(&path).map_err(file_error)?;
        let declared = map.get(..HEADER_LEN_BYTES).map(|b| b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)));
        if let Some(len) = declared.filter(|&len| len > MAX_HEADER_BYTES) {
            return Err(HfError::file(
                &path,
                format!("safetensors header claims {len} bytes, more than the {MAX_HEADER_BYTES} allowed; not a safetensors file, or corrupt"),
            ));
        }
        let (header_len, metadata) = SafeTensors::read_metadata(&map)
            .map_err(|e| HfError::file(&path, format!("not a valid safetensors file ({}); truncated or corrupt?", shown(&e.to_string()))))?;
        let file_index = self.files.len();
        for (name, info) in metadata.tensors() {
            let dtype = dtype_of(info.dtype).ok_or_else(|| {
                HfError::file(&path, format!("tensor `{}` has dtype {:?}, which is not supported", shown(&name), info.dtype))
            })?;
            // The crate checked that every span lies in the file, so these sums fit.
            let start = (HEADER_LEN_BYTES + header_len)
                .checked_add(info.data_offsets.0)
                .ok_or_else(|| HfError::file(&path, format!("tensor `{}` has an offset past the end of memory", shown(&name))))?;
            let entry = Entry { file: file_index, dtype, shape: info.shape.clone(), start };
            if self.entries.insert(name.clone(), entry).is_some() {
                return Err(HfError::file(&path, format!("tensor `{}` appears in more than one shard", shown(&name))));
            }
        }
        self.files.push((path, Arc::new(map)));
        Ok(())
    }

    /// A view of the tensors under `prefix` (a module path such as `encoder.layers.0`; empty
    /// for the root).
    pub fn at(&self, prefix: &str) -> Scope<'_> {
        Scope { weights: self, prefix: prefix.to_string() }
    }

    /// Whether a tensor called `name` exists (does not mark it used).
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The tensor `name`, checked to have `shape`, viewing the mapped file. A missing or
    /// mis-shaped tensor, or one holding NaN or infinity, is an error naming it and its file.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, HfError> {
        let Some(e) = self.entries.get(name) else {
            return Err(HfError::MissingTensor { dir: self.dir(), name: name.to_string() });
        };
        let Some((path, map)) = self.files.get(e.file) else {
            return Err(HfError::MissingTensor { dir: self.dir(), name: name.to_string() });
        };
        if e.shape != shape {
            return Err(HfError::WrongShape { file: path.clone(), name: name.into(), expected: shape.to_vec(), got: e.shape.clone() });
        }
        let t = Tensor::from_mapped(e.dtype, &e.shape, map.clone(), e.start)
            .map_err(|err| HfError::file(path, format!("tensor `{}`: {err}", shown(name))))?;
        if let Some(values) = t.dtype().is_float().then(|| t.to_f32_vec()).flatten() {
            if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(HfError::file(path, format!("tensor `{}` holds {v} at element {i}", shown(name))));
            }
        }
        self.used.borrow_mut().insert(name.to_string());
        Ok(t)
    }

    /// Names no [`Weights::get`] has asked for, sorted; families call it after building to
    /// report extra tensors (skipping prefixes they knowingly ignore, such as training heads).
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.borrow();
        self.entries.keys().filter(|n| !used.contains(*n)).cloned().collect()
    }

    /// The folder the weights came from, for error messages.
    pub fn dir(&self) -> PathBuf {
        self.files.first().and_then(|(p, _)| p.parent()).map(Path::to_path_buf).unwrap_or_default()
    }
}

/// Tensors under one module path; what family code passes down the module tree.
#[derive(Clone)]
pub struct Scope<'w> {
    weights: &'w Weights,
    prefix: String,
}

impl<'w> Scope<'w> {
    /// The sub-module `name` (`scope.at("layers.3")`).
    pub fn at(&self, name: &str) -> Scope<'w> {
        Scope { weights: self.weights, prefix: self.path(name) }
    }

    /// The tensor `name` of this module (`weight`, `bias`), checked to have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, HfError> {
        self.weights.get(&self.path(name), shape)
    }

    /// Whether this module has a tensor `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.weights.contains(&self.path(name))
    }

    /// The folder the weights came from, for error messages.
    pub fn dir(&self) -> PathBuf {
        self.weights.dir()
    }

    /// The full name of `name` under this module.
    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }
}

/// The 8-byte little-endian header length that starts every safetensors file.
const HEADER_LEN_BYTES: usize = 8;

/// A refused file as an [`HfError`] (the message already names the path).
fn file_error(e: files::Error) -> HfError {
    let path = e.path().to_path_buf();
    let message = e.to_string();
    let prefix = format!("{}: ", path.display());
    HfError::file(&path, message.strip_prefix(&prefix).unwrap_or(&message))
}

/// Our dtype for a safetensors dtype, for the ones Core ML weights can hold.
fn dtype_of(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::I64 => DType::I64,
        Dtype::I32 => DType::I32,
        Dtype::I8 => DType::I8,
        Dtype::U8 => DType::U8,
        Dtype::BOOL => DType::Bool,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file with the given (name, shape, f32 values), written by hand per the
    /// format: u64 header length, JSON header, payload.
    pub(crate) fn write_safetensors(path: &Path, tensors: &[(&str, &[usize], &[f32])]) {
        let mut header = serde_json::Map::new();
        let mut payload = Vec::new();
        for (name, shape, values) in tensors {
            let start = payload.len();
            payload.extend(values.iter().flat_map(|v| v.to_le_bytes()));
            header.insert(
                name.to_string(),
                serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, payload.len()]}),
            );
        }
        let header = serde_json::to_vec(&header).unwrap();
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header);
        bytes.extend(payload);
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn lookups_check_shape_and_track_use() {
        let dir = tempfile::tempdir().unwrap();
        write_safetensors(&dir.path().join(SINGLE_FILE), &[("a.weight", &[2, 2], &[1., 2., 3., 4.]), ("a.bias", &[2], &[5., 6.])]);
        let w = Weights::open(dir.path()).unwrap();
        let a = w.at("a");
        assert_eq!(a.get("weight", &[2, 2]).unwrap().to_f32_vec().unwrap(), vec![1., 2., 3., 4.]);
        assert_eq!(w.unused(), vec!["a.bias".to_string()]);
        let err = a.get("bias", &[3]).unwrap_err().to_string();
        assert!(err.contains("a.bias") && err.contains("[3]") && err.contains("[2]"), "{err}");
        let err = a.get("gamma", &[2]).unwrap_err().to_string();
        assert!(err.contains("a.gamma") && err.contains("missing"), "{err}");
    }

    #[test]
    fn truncated_and_nan_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SINGLE_FILE);
        write_safetensors(&path, &[("x", &[2], &[1., f32::NAN])]);
        let w = Weights::open(dir.path()).unwrap();
        assert!(w.get("x", &[2]).unwrap_err().to_string().contains("NaN"));
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let err = Weights::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("model.safetensors") && err.contains("truncated"), "{err}");
    }

    /// A safetensors file with a raw JSON header and `payload` bytes, whatever they claim.
    fn write_raw(path: &Path, header: &str, payload: &[u8]) {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header.as_bytes());
        bytes.extend(payload);
        std::fs::write(path, bytes).unwrap();
    }

    fn open_err(dir: &Path) -> String {
        Weights::open(dir).err().expect("the folder should be refused").to_string()
    }

    #[test]
    fn issue_hostile_index_shards_must_stay_in_the_folder() {
        let outer = tempfile::tempdir().unwrap();
        let dir = outer.path().join("model");
        std::fs::create_dir(&dir).unwrap();
        write_safetensors(&outer.path().join("x.safetensors"), &[("a", &[1], &[1.])]);
        std::os::unix::fs::symlink(outer.path().join("x.safetensors"), dir.join("link.safetensors")).unwrap();
        let abs = outer.path().join("x.safetensors");
        for shard in ["../x.safetensors", abs.to_str().unwrap(), "link.safetensors"] {
            let index = serde_json::json!({"weight_map": {"a": shard}});
            std::fs::write(dir.join(INDEX_FILE), index.to_string()).unwrap();
            let e = open_err(&dir);
            assert!(e.contains(INDEX_FILE) && e.contains("resolves outside the folder") && e.contains(shard), "{shard}: {e}");
        }
        std::fs::write(dir.join(INDEX_FILE), r#"{"weight_map": {"a": 7}}"#).unwrap();
        assert!(open_err(&dir).contains("`weight_map` holds 7, not a file name"));
        // An index larger than the cap is refused before it is parsed.
        std::fs::File::create(dir.join(INDEX_FILE)).unwrap().set_len(MAX_INDEX_BYTES + 1).unwrap();
        assert!(open_err(&dir).contains("bytes allowed for this kind of file"));
    }

    #[test]
    fn issue_hostile_fifo_weights_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mkfifo").arg(dir.path().join(SINGLE_FILE)).status().unwrap();
        assert!(status.success());
        let e = open_err(dir.path());
        assert!(e.contains(SINGLE_FILE) && e.ends_with("is a FIFO, not a regular file"), "{e}");
    }

    #[test]
    fn issue_hostile_headers_that_lie_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SINGLE_FILE);
        // A header length of 2^63 in a tiny file.
        let mut bytes = (1u64 << 63).to_le_bytes().to_vec();
        bytes.extend(b"{}");
        std::fs::write(&path, bytes).unwrap();
        assert!(open_err(dir.path()).contains("header claims 9223372036854775808 bytes"));
        // Just over our cap (the crate alone would accept up to 100 MB).
        let mut bytes = (MAX_HEADER_BYTES + 1).to_le_bytes().to_vec();
        bytes.extend(b"{}");
        std::fs::write(&path, bytes).unwrap();
        assert!(open_err(dir.path()).contains("more than the 16777216 allowed"));
        let cases = [
            // Overlapping spans.
            (r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#, 12),
            // A span past the end of the file.
            (r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, 4),
            // A span that does not match dtype × shape.
            (r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, 8),
            // A shape whose byte count overflows.
            (r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,8]}}"#, 8),
            // Offsets near 2^64.
            (r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[18446744073709551608,0]}}"#, 8),
        ];
        for (header, payload) in cases {
            write_raw(&path, header, &vec![0u8; payload]);
            let e = open_err(dir.path());
            assert!(e.contains(SINGLE_FILE) && e.contains("not a valid safetensors file"), "{header}: {e}");
        }
    }

    #[test]
    fn shards_come_from_the_index() {
        let dir = tempfile::tempdir().unwrap();
        write_safetensors(&dir.path().join("m-1.safetensors"), &[("a", &[1], &[1.])]);
        write_safetensors(&dir.path().join("m-2.safetensors"), &[("b", &[1], &[2.])]);
        std::fs::write(dir.path().join(INDEX_FILE), r#"{"weight_map": {"a": "m-1.safetensors", "b": "m-2.safetensors"}}"#).unwrap();
        let w = Weights::open(dir.path()).unwrap();
        assert_eq!(w.names().collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(w.get("b", &[1]).unwrap().to_f32_vec().unwrap(), vec![2.]);
    }
}
