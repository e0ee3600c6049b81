//! Runs the source TorchScript model (`.pt`) in PyTorch itself, through libtorch and the `tch`
//! crate, so `validate --reference MODEL.pt` compares a package with what torch computes on the
//! same inputs. Compiled only with the cargo feature `torch` (off by default: a plain
//! `cargo install` stays pure Rust; `make` turns it on). libtorch is the pip `torch==2.13.0` of the
//! venv (`LIBTORCH_USE_PYTORCH=1`, shared/docs/torchscript-format.md §6); `build.rs` writes its
//! `torch/lib` into the binary as an rpath, so no `LD_LIBRARY_PATH` is needed at run time.
//!
//! Uses `interp::Array` as the value type on both sides; called by `cli::validate` and by
//! `tests/reference.rs`. tch is a run-only oracle: it cannot list the graph, so it never replaces
//! `torchscript::read`.

pub mod bert;
pub mod whisper;

use std::path::{Path, PathBuf};

use tch::{CModule, Device, IValue, Kind, Tensor};

use crate::interp::{Array, Data};
use crate::mil::DType;

/// Why the reference could not run. libtorch's own messages (C++ exceptions with a backtrace,
/// TorchScript tracebacks) are cut to the one line that names the cause (`torch_message`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: libtorch cannot load it as TorchScript: {message}")]
    Load { path: PathBuf, message: String },
    #[error("input `{name}`: {reason}")]
    Input { name: String, reason: String },
    #[error("{path}: forward failed in libtorch: {message}")]
    Forward { path: PathBuf, message: String },
    #[error("{path}: output {index}: {reason}")]
    Output { path: PathBuf, index: usize, reason: String },
    /// A Hugging Face folder given as the reference could not be read (`bert::run`).
    #[error(transparent)]
    Folder(#[from] crate::hf::HfError),
    #[error("{path}: the {family} family has no single-package reference; a Whisper conversion is validated as the folder convert wrote, with --audio")]
    NoRunner { path: PathBuf, family: &'static str },
}

/// A family's reference runner: the PyTorch forward of a Hugging Face folder on the arrays the
/// package gets, outputs named as the package names them.
pub type FolderRunner = fn(&Path, &[(String, Array)]) -> Result<Vec<(String, Array)>, Error>;

/// The reference runner of each built family, by `hf::Family::name`, one line each. Whisper has
/// none here: its packages are validated together, by transcripts (`speech`).
pub const FOLDER_RUNNERS: &[(&str, FolderRunner)] = &[("bert", bert::run)];

/// Runs the reference of the Hugging Face folder `dir`: its family's runner from
/// [`FOLDER_RUNNERS`]. Called by `validate --reference HF_DIR`.
pub fn run_folder(dir: &Path, inputs: &[(String, Array)]) -> Result<Vec<(String, Array)>, Error> {
    let family = crate::hf::family_for(dir)?;
    let Some((_, runner)) = FOLDER_RUNNERS.iter().find(|(name, _)| *name == family.name) else {
        return Err(Error::NoRunner { path: dir.to_path_buf(), family: family.name });
    };
    runner(dir, inputs)
}

/// Runs `model`'s `forward` on CPU, in eval mode and without autograd, on `inputs` (in the
/// model's argument order), and returns its outputs flattened in order, named `output_0`,
/// `output_1`, … (the names `fixtures/zoo/make.py` gives torch's saved outputs).
///
/// `inputs` are the arrays the package gets, but the tensors are built with the source model's
/// dtypes: float inputs as float32 even when the package takes fp16, integer inputs as int64
/// (torch's token ids and masks) where the package takes int32. Outputs are tensors, or tuples,
/// lists and dicts (values in order) of them, recursively; they come back as float32 (any float
/// kind), int32 (any integer kind; values must fit) or bool arrays.
pub fn run(model: &Path, inputs: &[(String, Array)]) -> Result<Vec<(String, Array)>, Error> {
    let load_error = |e: tch::TchError| Error::Load { path: model.to_path_buf(), message: torch_message(&e) };
    let mut module = CModule::load_on_device(model, Device::Cpu).map_err(load_error)?;
    module.f_set_eval().map_err(load_error)?;
    let args = inputs.iter().map(|(name, a)| to_tensor(name, a).map(IValue::Tensor)).collect::<Result<Vec<_>, _>>()?;
    let result = tch::no_grad(|| module.forward_is(&args))
        .map_err(|e| Error::Forward { path: model.to_path_buf(), message: torch_message(&e) })?;
    let mut tensors = Vec::new();
    flatten(result, &mut tensors).map_err(|reason| Error::Output { path: model.to_path_buf(), index: tensors.len(), reason })?;
    tensors
        .iter()
        .enumerate()
        .map(|(index, t)| {
            let a = to_array(t).map_err(|reason| Error::Output { path: model.to_path_buf(), index, reason })?;
            Ok((format!("output_{index}"), a))
        })
        .collect()
}

/// A CPU tensor with `a`'s shape, in the dtype the traced torch model takes (see [`run`]).
fn to_tensor(name: &str, a: &Array) -> Result<Tensor, Error> {
    let err = |e: tch::TchError| Error::Input { name: name.to_string(), reason: torch_message(&e) };
    let shape: Vec<i64> = a.shape.iter().map(|&d| d as i64).collect();
    let flat = match &a.data {
        Data::F32(v) => Tensor::f_from_slice(v),
        Data::I32(v) => Tensor::f_from_slice(&v.iter().map(|&x| i64::from(x)).collect::<Vec<i64>>()),
        Data::Bool(v) => Tensor::f_from_slice(v),
        Data::Str(_) => return Err(Error::Input { name: name.to_string(), reason: "string tensors cannot be torch inputs".into() }),
    };
    flat.map_err(err)?.f_reshape(shape.as_slice()).map_err(err)
}

/// Appends the tensors of `value` to `out`, depth first in order.
fn flatten(value: IValue, out: &mut Vec<Tensor>) -> Result<(), String> {
    match value {
        IValue::Tensor(t) => out.push(t),
        IValue::TensorList(ts) => out.extend(ts),
        IValue::Tuple(vs) | IValue::GenericList(vs) => {
            for v in vs {
                flatten(v, out)?;
            }
        }
        IValue::GenericDict(kvs) => {
            for (_, v) in kvs {
                flatten(v, out)?;
            }
        }
        other => return Err(format!("the model returns {other:?}, not a tensor (nor a tuple, list or dict of tensors)")),
    }
    Ok(())
}

/// The array for one output tensor: float kinds as float32, integer kinds as int32, bool as bool.
fn to_array(t: &Tensor) -> Result<Array, String> {
    let err = |e: tch::TchError| torch_message(&e);
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let n: usize = shape.iter().product();
    let kind = t.f_kind().map_err(err)?;
    match kind {
        Kind::Half | Kind::Float | Kind::Double | Kind::BFloat16 => {
            let t = t.f_to_kind(Kind::Float).map_err(err)?;
            let mut v = vec![0f32; n];
            t.f_copy_data(&mut v, n).map_err(err)?;
            Ok(Array::float(DType::F32, shape, v))
        }
        Kind::Uint8 | Kind::Int8 | Kind::Int16 | Kind::Int | Kind::Int64 => {
            let t = t.f_to_kind(Kind::Int64).map_err(err)?;
            let mut v = vec![0i64; n];
            t.f_copy_data(&mut v, n).map_err(err)?;
            let v = v.into_iter().map(i32::try_from).collect::<Result<Vec<i32>, _>>().map_err(|_| format!("{kind:?} values outside int32"))?;
            Ok(Array::int(shape, v))
        }
        Kind::Bool => {
            let mut v = vec![false; n];
            t.f_copy_data(&mut v, n).map_err(err)?;
            Ok(Array::bools(shape, v))
        }
        other => Err(format!("tensor of kind {other:?}, which Core ML has no type for")),
    }
}

/// The one line of a tch error that says what went wrong. libtorch's C++ errors put it first and
/// append "Exception raised from …" with stack frames; TorchScript interpreter errors start with
/// "The following operation failed" and a TorchScript traceback, and end with the cause
/// (`RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x16 and 8x16)`).
fn torch_message(e: &tch::TchError) -> String {
    let text = match e {
        tch::TchError::Torch(s) => s.clone(),
        other => other.to_string(),
    };
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let line = if text.contains("Traceback of TorchScript") { lines.next_back() } else { lines.take_while(|l| !l.starts_with("Exception raised from")).next() };
    line.unwrap_or(text.as_str()).to_string()
}
