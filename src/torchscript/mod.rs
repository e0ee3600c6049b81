//! TorchScript `.pt` archives (`torch.jit.save`), first layer: [`read`] opens the zip
//! ([`zip`]), runs `data.pkl` and `constants.pkl` through a pickle VM that never executes code
//! ([`pickle`]), and returns an [`Archive`]: the root module's object tree with its parameters
//! and buffers as zero-copy tensors over the mapped file, the constants table, and the source
//! text of every `code/**.py` entry. Parsing that code and lowering it to MIL happen later
//! (`code.rs`, `lower/`), on top of this. Uses only `mil` (for `Tensor` and `DType`).
//! Called by the TorchScript front end (`code.rs` parses [`Archive::code`], `lower/` reads
//! [`Archive::root`] and [`Archive::tensors`]). Format facts: shared/docs/torchscript-format.md.

pub mod code;
pub mod export;
pub mod graph;
pub mod lower;
pub mod pickle;
pub mod source_ranges;
pub mod zip;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::mil::{DType, Tensor};
pub use pickle::{ClassName, Object, PyObject, StorageId};
use zip::Zip;

/// Oldest file-format version we read: torch writes `max(3, bumps of the ops used)`.
const MIN_VERSION: u32 = 3;
/// Newest version we know: 10 is the `aten::gelu` bump (torch `version_map.cpp`); a later one
/// means an op whose semantics changed in a way we have not checked.
const MAX_VERSION: u32 = 10;
/// Entries holding the version: torch writes values ≥ 6 to `.data/version`, older ones to
/// `version` (`inline_container.cc`).
const VERSION_ENTRIES: [&str; 2] = [".data/version", "version"];
/// Entry naming the byte order of the storages; only `little` is what we can map.
const BYTEORDER_ENTRY: &str = "byteorder";
/// The pickle of the root module object.
const DATA_PICKLE: &str = "data.pkl";
/// Folder of the storages that `data.pkl` references by key.
const DATA_DIR: &str = "data";
/// The pickle of the tuple that code reads as `CONSTANTS.cN`; absent in some old files.
const CONSTANTS_PICKLE: &str = "constants.pkl";
/// Folder of the storages that `constants.pkl` references by key.
const CONSTANTS_DIR: &str = "constants";
/// Folder of the TorchScript source, one file per module class path.
const CODE_DIR: &str = "code/";
/// Extension of source entries; `.py.debug_pkl` entries next to them are not source.
const CODE_EXTENSION: &str = ".py";
/// Suffix of the entry next to `code/<file>.py` that maps its bytes to the original Python.
const DEBUG_PKL_SUFFIX: &str = ".debug_pkl";
/// How much of a bad version or byte-order record an error message quotes.
const MAX_QUOTED_CHARS: usize = 20;
/// Bound on attribute paths walked to list tensors; a real model has thousands. A crafted
/// pickle that shares submodules at every level could otherwise make exponentially many.
const MAX_ATTRIBUTE_PATHS: usize = 1 << 20;

/// What can go wrong reading a TorchScript archive. Each message names the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a zip archive (a TorchScript .pt is the zip written by torch.jit.save)")]
    NotZip { path: PathBuf },
    #[error("{path}: truncated: {reason}")]
    Truncated { path: PathBuf, reason: String },
    #[error("{path}: corrupt archive: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: not a TorchScript archive: {reason}")]
    NotTorchScript { path: PathBuf, reason: String },
    /// A `.pt2` archive (`export`) this reader cannot take: what is missing or unknown.
    #[error("{path}: torch.export archive: {reason}")]
    Export { path: PathBuf, reason: String },
    #[error("{path}: entry `{entry}` is missing")]
    MissingEntry { path: PathBuf, entry: String },
    #[error(
        "{path}: entry `{entry}` is compressed (zip method {method}); tensor storages must be \
         stored uncompressed, as torch.jit.save writes them, so they can be memory-mapped"
    )]
    Compressed {
        path: PathBuf,
        entry: String,
        method: u16,
    },
    #[error("{path}: entry `{entry}` uses zip compression method {method}; only stored (0) and deflate (8) are read")]
    UnsupportedCompression {
        path: PathBuf,
        entry: String,
        method: u16,
    },
    #[error("{path}: entry `{entry}` does not inflate: {reason}")]
    Inflate {
        path: PathBuf,
        entry: String,
        reason: String,
    },
    #[error("{path}: TorchScript format version {version} is not supported (this reader knows {MIN_VERSION}..={MAX_VERSION})")]
    Version { path: PathBuf, version: String },
    #[error(
        "{path}: tensor storages are `{found}`-endian; only little-endian archives are supported"
    )]
    ByteOrder { path: PathBuf, found: String },
    #[error("{path}: {entry}: bad pickle at byte {offset}: {reason}")]
    Pickle {
        path: PathBuf,
        entry: String,
        offset: usize,
        reason: String,
    },
    #[error("{path}: pickle calls `{module}.{name}`, which is not allowed; {hint}", hint = global_hint(module, name))]
    GlobalNotAllowed {
        path: PathBuf,
        module: String,
        name: String,
    },
    #[error("{path}: tensor storage `{entry}`: {reason}")]
    BadTensor {
        path: PathBuf,
        entry: String,
        reason: String,
    },
    #[error("{path}: {file}:{source}")]
    Parse {
        path: PathBuf,
        file: String,
        source: code::ParseError,
    },
    #[error("{path}: {} unsupported torch op kind(s): {}", ops.len(), graph::describe_unsupported(ops))]
    Unsupported { path: PathBuf, ops: Vec<graph::UnsupportedOp> },
    #[error(
        "{path}: `{keyword}` at {location} is scripted control flow or a statement no trace \
         holds; convert a model made with torch.jit.trace, not torch.jit.script"
    )]
    ControlFlow {
        path: PathBuf,
        keyword: &'static str,
        location: String,
    },
    #[error("{path}: {location}: {message}")]
    Lower {
        path: PathBuf,
        location: String,
        message: String,
    },
    #[error("{path}: {message}")]
    Inputs { path: PathBuf, message: String },
}

/// The likely cause behind a refused pickle global, for [`Error::GlobalNotAllowed`].
fn global_hint(module: &str, name: &str) -> &'static str {
    if name.contains("qtensor") || module.contains("quantized") {
        "quantized models are not supported; convert the float model"
    } else if module == "torch" && name.ends_with("Storage") {
        "tensors of this storage type are not supported"
    } else {
        "a TorchScript archive names only tensor rebuilds and `__torch__` classes; was this file \
         written by torch.save(model) instead of torch.jit.trace + torch.jit.save?"
    }
}

/// One tensor storage: a stored zip entry of `numel` little-endian elements, kept as a range
/// of the mapped file (never copied). Made by [`read`]'s persistent-id loader.
#[derive(Clone)]
pub struct Storage {
    /// Zip entry name, e.g. `mlp/data/0`.
    pub entry: String,
    /// Element type, from the storage class (`torch.FloatStorage` → fp32).
    pub dtype: DType,
    /// Size in elements.
    pub numel: usize,
    path: PathBuf,
    map: Arc<Mmap>,
    start: usize,
    len: usize,
}

impl Storage {
    /// The storage's bytes, a slice of the mapped file.
    pub fn bytes(&self) -> &[u8] {
        self.map
            .get(self.start..self.start + self.len)
            .unwrap_or_default()
    }

    fn bad(&self, reason: String) -> Error {
        Error::BadTensor {
            path: self.path.clone(),
            entry: self.entry.clone(),
            reason,
        }
    }
}

impl PartialEq for Storage {
    /// Same file, same entry, same type: the map itself is not compared.
    fn eq(&self, other: &Storage) -> bool {
        (&self.path, &self.entry, self.dtype, self.numel, self.start)
            == (
                &other.path,
                &other.entry,
                other.dtype,
                other.numel,
                other.start,
            )
    }
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Storage({} {} x{})", self.entry, self.dtype, self.numel)
    }
}

/// A tensor as torch stores it: a strided view (`offset`, `shape`, `strides`, all in elements)
/// of a [`Storage`]. Built by the pickle VM from `_rebuild_tensor_v2`, which checks that every
/// element lies inside the storage. Parameters have `requires_grad` set, buffers do not.
#[derive(Clone, Debug, PartialEq)]
pub struct TorchTensor {
    /// The storage this tensor views; tensors sharing one hold the same `Arc`.
    pub storage: Arc<Storage>,
    /// Storage offset of element `[0, 0, …]`, in elements.
    pub offset: usize,
    /// Size of each axis.
    pub shape: Vec<usize>,
    /// Step in elements between neighbours along each axis.
    pub strides: Vec<usize>,
    /// True for parameters (`nn.Parameter`), false for buffers and constants.
    pub requires_grad: bool,
    mapped: Option<Tensor>,
}

/// How much larger than its storage a gathered copy of a strided view may be (256 MiB): enough
/// for broadcast buffers real models save, far below what a crafted stride-0 view can claim.
pub const MAX_VIEW_GROWTH_BYTES: usize = 256 << 20;

impl TorchTensor {
    /// Checks the view against its storage; a contiguous view also gets its zero-copy `Tensor`.
    pub(crate) fn new(
        storage: Arc<Storage>,
        offset: usize,
        shape: Vec<usize>,
        strides: Vec<usize>,
        requires_grad: bool,
    ) -> Result<TorchTensor, Error> {
        if shape.len() != strides.len() {
            return Err(storage.bad(format!(
                "size {shape:?} and stride {strides:?} differ in rank"
            )));
        }
        let too_large = || {
            storage.bad(format!(
                "view (offset {offset}, size {shape:?}, stride {strides:?}) overflows"
            ))
        };
        let count = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(too_large)?;
        // Index of the last element the view touches; an empty view touches none.
        let last = shape
            .iter()
            .zip(&strides)
            .try_fold(offset, |a, (&d, &s)| {
                d.saturating_sub(1)
                    .checked_mul(s)
                    .and_then(|x| a.checked_add(x))
            })
            .ok_or_else(too_large)?;
        let inside = if count == 0 {
            offset <= storage.numel
        } else {
            last < storage.numel
        };
        if !inside {
            return Err(storage.bad(format!(
                "view (offset {offset}, size {shape:?}, stride {strides:?}) reaches past its {} elements",
                storage.numel
            )));
        }
        let mapped = if is_row_major(&shape, &strides) {
            let elem = storage.dtype.storage_bytes(1).ok_or_else(too_large)?;
            let start = offset
                .checked_mul(elem)
                .and_then(|b| b.checked_add(storage.start))
                .ok_or_else(too_large)?;
            let tensor = Tensor::from_mapped(storage.dtype, &shape, storage.map.clone(), start);
            Some(tensor.map_err(|e| storage.bad(e.to_string()))?)
        } else {
            None
        };
        Ok(TorchTensor {
            storage,
            offset,
            shape,
            strides,
            requires_grad,
            mapped,
        })
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.storage.dtype
    }

    /// True when the elements are one row-major byte range of the storage.
    pub fn is_contiguous(&self) -> bool {
        self.mapped.is_some()
    }

    /// The zero-copy tensor over the mapped file, for contiguous views; `None` otherwise
    /// (use [`TorchTensor::to_tensor`]).
    pub fn mapped(&self) -> Option<&Tensor> {
        self.mapped.as_ref()
    }

    /// The tensor's values in row-major order: the mapped tensor when contiguous (no copy),
    /// else an owned copy gathered through the strides (a transposed or sliced buffer).
    pub fn to_tensor(&self) -> Result<Tensor, Error> {
        if let Some(t) = &self.mapped {
            return Ok(t.clone());
        }
        let storage = &self.storage;
        let too_large = || storage.bad(format!("{:?} elements are too many to copy", self.shape));
        let elem = storage.dtype.storage_bytes(1).ok_or_else(too_large)?;
        let count = self
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(too_large)?;
        let copy_bytes = count.checked_mul(elem).ok_or_else(too_large)?;
        let bytes = storage.bytes();
        // A strided view (stride 0 repeats elements) may claim far more elements than its
        // storage holds; its copy may outgrow the storage by at most MAX_VIEW_GROWTH_BYTES.
        if copy_bytes > bytes.len().saturating_add(MAX_VIEW_GROWTH_BYTES) {
            return Err(storage.bad(format!(
                "view of size {:?} (stride {:?}) would expand {} stored bytes into {copy_bytes}; refusing views that grow by more than {MAX_VIEW_GROWTH_BYTES} bytes",
                self.shape,
                self.strides,
                bytes.len()
            )));
        }
        let mut out = Vec::with_capacity(copy_bytes);
        let mut index = vec![0usize; self.shape.len()];
        for _ in 0..count {
            let at = index
                .iter()
                .zip(&self.strides)
                .fold(self.offset, |a, (&i, &s)| a + i * s);
            let element = bytes.get(at * elem..(at + 1) * elem);
            out.extend_from_slice(
                element
                    .ok_or_else(|| storage.bad(format!("element {at} is outside the storage")))?,
            );
            for (i, &d) in index.iter_mut().zip(&self.shape).rev() {
                *i += 1;
                if *i < d {
                    break;
                }
                *i = 0;
            }
        }
        Tensor::from_bytes(storage.dtype, &self.shape, out).map_err(|e| storage.bad(e.to_string()))
    }
}

/// True when `strides` are the row-major strides of `shape` (axes of size 1 may have any
/// stride, and an empty tensor is trivially contiguous).
fn is_row_major(shape: &[usize], strides: &[usize]) -> bool {
    if shape.contains(&0) {
        return true;
    }
    let mut expected = 1usize;
    for (&d, &s) in shape.iter().zip(strides).rev() {
        if d != 1 && s != expected {
            return false;
        }
        expected = expected.saturating_mul(d);
    }
    true
}

/// A TorchScript object with named attributes: an `nn.Module` (or a scripted class instance).
/// Attributes are in the class's slot order: for traced modules `training`,
/// `_is_full_backward_hook`, then parameters, buffers and submodules by name.
#[derive(Debug, PartialEq)]
pub struct Module {
    /// The TorchScript class, e.g. `__torch__.torch.nn.modules.linear.Linear`; its code is in
    /// `code/__torch__/torch/nn/modules/linear.py`.
    pub class: ClassName,
    /// Attribute name → value, as the pickle wrote them.
    pub attributes: Vec<(String, Attribute)>,
}

/// One attribute of a [`Module`].
#[derive(Debug, PartialEq)]
pub enum Attribute {
    /// A submodule; shared when the model ties a submodule at two places.
    Module(Arc<Module>),
    /// A parameter or buffer.
    Tensor(Arc<TorchTensor>),
    /// Anything else: `training`, scripted `int`/`float` attributes, lists, `None`.
    Value(PyObject),
}

impl Module {
    /// The attribute called `name`.
    pub fn get(&self, name: &str) -> Option<&Attribute> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a)
    }

    /// The submodule called `name`.
    pub fn submodule(&self, name: &str) -> Option<&Arc<Module>> {
        match self.get(name)? {
            Attribute::Module(m) => Some(m),
            _ => None,
        }
    }

    /// The tensor attribute called `name`.
    pub fn tensor(&self, name: &str) -> Option<&Arc<TorchTensor>> {
        match self.get(name)? {
            Attribute::Tensor(t) => Some(t),
            _ => None,
        }
    }
}

/// A read TorchScript archive. Holds the memory map, so its tensors stay valid as long as
/// any of them is alive.
#[derive(Debug)]
pub struct Archive {
    /// The file it was read from.
    pub path: PathBuf,
    /// Top-level folder of every entry: the file stem at save time (`mlp`, or `archive`).
    pub folder: String,
    /// File-format version (3..=10).
    pub version: u32,
    /// The root module object from `data.pkl`.
    pub root: Arc<Module>,
    /// Every tensor attribute reachable from the root, by dotted path (`fc1.weight`), depth
    /// first in slot order. The paths are torch's `state_dict` keys; a tied tensor is listed
    /// under each of its paths and is the same `Arc`.
    pub tensors: Vec<(String, Arc<TorchTensor>)>,
    /// The items of `constants.pkl`, which code reads as `CONSTANTS.c0`, `CONSTANTS.c1`, ….
    pub constants: Vec<PyObject>,
    /// Source text of each `code/**.py` entry, keyed by its path under the folder
    /// (`code/__torch__.py`, `code/__torch__/torch/nn/modules/linear.py`).
    pub code: BTreeMap<String, String>,
    zip: Zip,
}

impl Archive {
    /// The tensor at a dotted path, e.g. `features.0.weight`.
    pub fn tensor(&self, path: &str) -> Option<&Arc<TorchTensor>> {
        self.tensors.iter().find(|(p, _)| p == path).map(|(_, t)| t)
    }

    /// The underlying zip, for entries this reader does not interpret (`extra/`, `*.debug_pkl`).
    pub fn zip(&self) -> &Zip {
        &self.zip
    }

    /// The source ranges of code file `file` (a key of [`Archive::code`]) from its `.debug_pkl`:
    /// `None` when the archive has none, or it does not read or parse (provenance is
    /// best-effort). Called by `graph` once per code file it lowers statements from.
    pub fn source_ranges(&self, file: &str) -> Option<source_ranges::SourceRanges> {
        let name = format!("{}/{file}{DEBUG_PKL_SUFFIX}", self.folder);
        let bytes = self.zip.read(self.zip.find(&name)?).ok()?;
        source_ranges::SourceRanges::parse(&self.path, &name, &bytes)
    }
}

/// Reads the TorchScript archive at `path`: checks version and byte order, unpickles
/// `data.pkl` into the module tree (tensors mapped, not copied) and `constants.pkl`, and
/// inflates the code text. Corrupt, truncated or unsafe input is an [`Error`], never a panic.
pub fn read(path: &Path) -> Result<Archive, Error> {
    let zip = Zip::open(path)?;
    let not_ts = |reason: String| Error::NotTorchScript {
        path: path.to_path_buf(),
        reason,
    };
    let folder = find_folder(&zip).map_err(not_ts)?;
    let entry = |name: &str| zip.find(&format!("{folder}/{name}"));

    let version_entry = VERSION_ENTRIES.iter().find_map(|name| entry(name));
    let version_entry = version_entry.ok_or_else(|| {
        not_ts(format!(
            "no `{folder}/.data/version` or `{folder}/version` entry"
        ))
    })?;
    let text = zip.read(version_entry)?;
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let version = text
        .parse::<u32>()
        .ok()
        .filter(|v| (MIN_VERSION..=MAX_VERSION).contains(v))
        .ok_or_else(|| Error::Version {
            path: path.to_path_buf(),
            version: text.chars().take(MAX_QUOTED_CHARS).collect(),
        })?;
    if let Some(e) = entry(BYTEORDER_ENTRY) {
        let found: String = String::from_utf8_lossy(&zip.read(e)?)
            .trim()
            .chars()
            .take(MAX_QUOTED_CHARS)
            .collect();
        if found != "little" {
            return Err(Error::ByteOrder {
                path: path.to_path_buf(),
                found,
            });
        }
    }

    let data = entry(DATA_PICKLE).ok_or_else(|| not_ts(format!("no `{folder}/{DATA_PICKLE}`")))?;
    let mut storages = HashMap::new();
    let bytes = zip.read(data)?;
    let mut load = |id: &StorageId| load_storage(&zip, &folder, DATA_DIR, id, &mut storages);
    let root = pickle::unpickle(path, &data.name, &bytes, &mut load)?;

    let constants = match entry(CONSTANTS_PICKLE) {
        None => Vec::new(),
        Some(e) => {
            let mut storages = HashMap::new();
            let bytes = zip.read(e)?;
            let mut load =
                |id: &StorageId| load_storage(&zip, &folder, CONSTANTS_DIR, id, &mut storages);
            match pickle::unpickle(path, &e.name, &bytes, &mut load)? {
                PyObject::Tuple(items) => items.to_vec(),
                other => {
                    return Err(not_ts(format!(
                        "`{}` holds {} instead of a tuple",
                        e.name,
                        kind(&other)
                    )))
                }
            }
        }
    };

    let mut code = BTreeMap::new();
    let code_prefix = format!("{folder}/{CODE_DIR}");
    for e in zip
        .entries()
        .iter()
        .filter(|e| e.name.starts_with(&code_prefix) && e.name.ends_with(CODE_EXTENSION))
    {
        let text = String::from_utf8(zip.read(e)?.into_owned()).map_err(|_| Error::Corrupt {
            path: path.to_path_buf(),
            reason: format!("`{}` is not UTF-8 text", e.name),
        })?;
        let key = e
            .name
            .strip_prefix(&format!("{folder}/"))
            .unwrap_or(&e.name)
            .to_string();
        code.insert(key, text);
    }

    let PyObject::Object(object) = &root else {
        return Err(not_ts(format!(
            "`{}` holds {}, not a TorchScript module",
            data.name,
            kind(&root)
        )));
    };
    let mut cache = HashMap::new();
    let Some(root) = module_from(path, object, &mut cache)? else {
        return Err(not_ts(format!(
            "the root object `{}` has no attribute dict",
            object.class
        )));
    };
    let mut tensors = Vec::new();
    let mut budget = MAX_ATTRIBUTE_PATHS;
    collect_tensors(path, &root, "", &mut tensors, &mut budget)?;
    Ok(Archive {
        path: path.to_path_buf(),
        folder,
        version,
        root,
        tensors,
        constants,
        code,
        zip,
    })
}

/// The one top-level folder that holds `data.pkl`; the reason as text when there is not exactly one.
fn find_folder(zip: &Zip) -> Result<String, String> {
    let mut folders = zip.entries().iter().filter_map(|e| {
        let (folder, rest) = e.name.split_once('/')?;
        (rest == DATA_PICKLE && !folder.is_empty()).then_some(folder)
    });
    match (folders.next(), folders.next()) {
        (Some(folder), None) => Ok(folder.to_string()),
        (None, _) => Err(format!(
            "no `<folder>/{DATA_PICKLE}` entry (torch.jit.save writes one)"
        )),
        (Some(a), Some(b)) => Err(format!("both `{a}/` and `{b}/` hold a {DATA_PICKLE}")),
    }
}

/// The persistent-id loader: maps `<folder>/<dir>/<key>`, which must be stored and exactly
/// `numel` elements long. `cache` makes every reference to one key the same `Arc`.
fn load_storage(
    zip: &Zip,
    folder: &str,
    dir: &str,
    id: &StorageId,
    cache: &mut HashMap<String, Arc<Storage>>,
) -> Result<Arc<Storage>, Error> {
    let name = format!("{folder}/{dir}/{}", id.key);
    let bad = |reason: String| Error::BadTensor {
        path: zip.path().to_path_buf(),
        entry: name.clone(),
        reason,
    };
    if id.key.is_empty()
        || !id
            .key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(bad(format!("storage key {:?} is not a plain name", id.key)));
    }
    if let Some(s) = cache.get(&id.key) {
        if s.dtype != id.dtype || s.numel != id.numel {
            return Err(bad(format!(
                "referenced as {} x{} and as {} x{}",
                s.dtype, s.numel, id.dtype, id.numel
            )));
        }
        return Ok(s.clone());
    }
    let entry = zip.find(&name).ok_or_else(|| Error::MissingEntry {
        path: zip.path().to_path_buf(),
        entry: name.clone(),
    })?;
    let range = zip.stored_range(entry)?;
    let len = id
        .dtype
        .storage_bytes(id.numel)
        .ok_or_else(|| bad(format!("{} x{} is too large", id.dtype, id.numel)))?;
    if range.len() != len {
        return Err(bad(format!(
            "holds {} bytes, but {} {} elements need {len}",
            range.len(),
            id.numel,
            id.dtype
        )));
    }
    let storage = Arc::new(Storage {
        entry: name.clone(),
        dtype: id.dtype,
        numel: id.numel,
        path: zip.path().to_path_buf(),
        map: zip.map().clone(),
        start: range.start,
        len,
    });
    cache.insert(id.key.clone(), storage.clone());
    Ok(storage)
}

/// The module view of a `__torch__` object whose state is a dict of string keys; `None` for
/// other objects (they stay [`Attribute::Value`]). `cache` keeps shared submodules shared.
fn module_from(
    path: &Path,
    object: &Arc<Object>,
    cache: &mut HashMap<*const Object, Arc<Module>>,
) -> Result<Option<Arc<Module>>, Error> {
    if let Some(m) = cache.get(&Arc::as_ptr(object)) {
        return Ok(Some(m.clone()));
    }
    let PyObject::Dict(state) = &object.state else {
        return Ok(None);
    };
    if state.iter().any(|(k, _)| k.as_str().is_none()) {
        return Ok(None);
    }
    let mut attributes: Vec<(String, Attribute)> = Vec::with_capacity(state.len());
    for (key, value) in state.iter() {
        let name = key.as_str().unwrap_or_default().to_string();
        if attributes.iter().any(|(n, _)| *n == name) {
            let reason = format!("`{}` has attribute `{name}` twice", object.class);
            return Err(Error::Corrupt {
                path: path.to_path_buf(),
                reason,
            });
        }
        let attribute = match value {
            PyObject::Tensor(t) => Attribute::Tensor(t.clone()),
            PyObject::Object(o) => match module_from(path, o, cache)? {
                Some(m) => Attribute::Module(m),
                None => Attribute::Value(value.clone()),
            },
            other => Attribute::Value(other.clone()),
        };
        attributes.push((name, attribute));
    }
    let module = Arc::new(Module {
        class: object.class.clone(),
        attributes,
    });
    cache.insert(Arc::as_ptr(object), module.clone());
    Ok(Some(module))
}

/// Appends `prefix + name` for every tensor under `module`, depth first in slot order.
fn collect_tensors(
    path: &Path,
    module: &Module,
    prefix: &str,
    out: &mut Vec<(String, Arc<TorchTensor>)>,
    budget: &mut usize,
) -> Result<(), Error> {
    for (name, attribute) in &module.attributes {
        let Some(left) = budget.checked_sub(1) else {
            let reason =
                format!("the module tree has more than {MAX_ATTRIBUTE_PATHS} attribute paths");
            return Err(Error::Corrupt {
                path: path.to_path_buf(),
                reason,
            });
        };
        *budget = left;
        match attribute {
            Attribute::Tensor(t) => out.push((format!("{prefix}{name}"), t.clone())),
            Attribute::Module(m) => {
                collect_tensors(path, m, &format!("{prefix}{name}."), out, budget)?
            }
            Attribute::Value(_) => {}
        }
    }
    Ok(())
}

/// A short name of a value's kind, for messages.
fn kind(value: &PyObject) -> &'static str {
    match value {
        PyObject::None => "None",
        PyObject::Bool(_) => "a bool",
        PyObject::Int(_) => "an int",
        PyObject::Float(_) => "a float",
        PyObject::Str(_) => "a string",
        PyObject::Tuple(_) => "a tuple",
        PyObject::List(_) => "a list",
        PyObject::Dict(_) => "a dict",
        PyObject::Object(_) => "an object",
        PyObject::Tensor(_) => "a tensor",
        PyObject::Storage(_) => "a storage",
        PyObject::Device(_) => "a device",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(dtype: DType, values: &[u8]) -> Arc<Storage> {
        let mut map = memmap2::MmapMut::map_anon(values.len().max(1)).unwrap();
        map[..values.len()].copy_from_slice(values);
        let elem = dtype.storage_bytes(1).unwrap();
        Arc::new(Storage {
            entry: "t/data/0".to_string(),
            dtype,
            numel: values.len() / elem,
            path: PathBuf::from("t.pt"),
            map: Arc::new(map.make_read_only().unwrap()),
            start: 0,
            len: values.len(),
        })
    }

    #[test]
    fn row_major_detection() {
        assert!(is_row_major(&[2, 3], &[3, 1]));
        assert!(is_row_major(&[], &[]));
        assert!(
            is_row_major(&[1, 3], &[99, 1]),
            "size-1 axes may have any stride"
        );
        assert!(
            is_row_major(&[0, 3], &[1, 7]),
            "empty tensors are contiguous"
        );
        assert!(!is_row_major(&[3, 2], &[1, 3]));
        assert!(
            !is_row_major(&[2, 2], &[4, 1]),
            "a row slice of a wider matrix"
        );
    }

    #[test]
    fn a_transposed_view_materializes_in_row_major_order() {
        let s = storage(DType::U8, &[0, 1, 2, 3, 4, 5]);
        // The storage is a 2x3 row-major matrix; the view is its 3x2 transpose.
        let t = TorchTensor::new(s, 0, vec![3, 2], vec![1, 3], false).unwrap();
        assert!(t.mapped().is_none());
        let owned = t.to_tensor().unwrap();
        assert_eq!(owned.shape(), [3, 2]);
        assert_eq!(owned.bytes().as_ref(), [0, 3, 1, 4, 2, 5]);
    }

    #[test]
    fn a_contiguous_view_at_an_offset_is_zero_copy() {
        let s = storage(DType::I16, &[1, 0, 2, 0, 3, 0, 4, 0]);
        let t = TorchTensor::new(s, 1, vec![2], vec![1], false).unwrap();
        assert_eq!(t.mapped().unwrap().to_i64_vec().unwrap(), [2, 3]);
        assert_eq!(t.to_tensor().unwrap(), *t.mapped().unwrap());
    }

    #[test]
    fn views_past_the_storage_are_errors() {
        let s = storage(DType::F32, &[0; 16]);
        for (offset, shape, strides) in [
            (1, vec![4], vec![1]),
            (0, vec![2, 2], vec![3, 1]),
            (0, vec![2], vec![usize::MAX]),
            (5, vec![0], vec![1]),
            (0, vec![2], vec![]),
        ] {
            let r = TorchTensor::new(s.clone(), offset, shape.clone(), strides, false);
            assert!(
                matches!(r, Err(Error::BadTensor { .. })),
                "offset {offset} shape {shape:?}"
            );
        }
        assert!(
            TorchTensor::new(s, 4, vec![0], vec![1], false).is_ok(),
            "an empty view at the end"
        );
    }
}
