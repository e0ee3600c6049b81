//! What an interpreter kernel ([`EvalFn`], the `eval` of every `OpDef`) sees and returns: the
//! runtime value [`Array`] and the bound arguments [`EvalArgs`]. It lives beside the op table,
//! not in `interp`, because kernels sit with their declarations and `mil` may not depend on
//! `interp`; `interp` re-exports these types. Heavy math is in `crate::numeric`.
//!
//! Values: floats are held as f32 whatever the declared dtype (fp16 included; `interp::run`
//! rounds fp16 outputs after each op), integers of every width as i32, bools as bool.

use std::collections::BTreeMap;

use crate::mil::types::DType;
use crate::mil::{Opset, Tensor};

/// Element storage of an [`Array`].
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    /// fp16 and fp32 tensors (fp16 already rounded to representable values).
    F32(Vec<f32>),
    /// int32 and the narrower integer dtypes (int8/uint8/int16/uint16).
    I32(Vec<i32>),
    Bool(Vec<bool>),
    /// String tensors (`const` parameters like `pad_type`).
    Str(Vec<String>),
}

/// A runtime tensor value: declared MIL dtype, concrete shape, row-major data.
/// Produced by kernels and by `interp::run` from the caller's inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Data,
}

/// Why a kernel cannot run on the values it was given. `interp::Error` wraps it with the op name.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EvalError {
    #[error("{op}: missing parameter `{param}`")]
    Missing { op: String, param: String },
    #[error("{op}: parameter `{param}` holds {got} values, the kernel needs {want}")]
    DType { op: String, param: String, got: DType, want: &'static str },
    #[error("{op}: {message}")]
    Invalid { op: String, message: String },
}

/// An interpreter kernel: computes an op's outputs from its bound argument values.
pub type EvalFn = fn(&EvalArgs) -> Result<Vec<Array>, EvalError>;

impl Array {
    /// A float array of declared dtype `dtype` (fp16 or fp32).
    pub fn float(dtype: DType, shape: Vec<usize>, values: Vec<f32>) -> Array {
        Array { dtype, shape, data: Data::F32(values) }
    }

    /// An int32 array.
    pub fn int(shape: Vec<usize>, values: Vec<i32>) -> Array {
        Array { dtype: DType::I32, shape, data: Data::I32(values) }
    }

    /// A bool array.
    pub fn bools(shape: Vec<usize>, values: Vec<bool>) -> Array {
        Array { dtype: DType::Bool, shape, data: Data::Bool(values) }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len(),
            Data::I32(v) => v.len(),
            Data::Bool(v) => v.len(),
            Data::Str(v) => v.len(),
        }
    }

    /// True when the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The float values, `None` for other storage.
    pub fn floats(&self) -> Option<&[f32]> {
        match &self.data {
            Data::F32(v) => Some(v),
            _ => None,
        }
    }

    /// The integer values, `None` for other storage.
    pub fn ints(&self) -> Option<&[i32]> {
        match &self.data {
            Data::I32(v) => Some(v),
            _ => None,
        }
    }

    /// Values as i64 for integer and bool arrays (axes, shapes, masks); `None` otherwise.
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        match &self.data {
            Data::I32(v) => Some(v.iter().map(|&x| i64::from(x)).collect()),
            Data::Bool(v) => Some(v.iter().map(|&x| i64::from(x)).collect()),
            _ => None,
        }
    }

    /// Values as f32 for float, integer and bool arrays; `None` for strings.
    pub fn to_f32_vec(&self) -> Option<Vec<f32>> {
        match &self.data {
            Data::F32(v) => Some(v.clone()),
            Data::I32(v) => Some(v.iter().map(|&x| x as f32).collect()),
            Data::Bool(v) => Some(v.iter().map(|&x| f32::from(u8::from(x))).collect()),
            Data::Str(_) => None,
        }
    }

    /// Reads a const tensor (a `const.val`, an inline argument) into an array. fp64 is narrowed
    /// to fp32 storage; int64/uint32 to i32 with wrapping. Sub-byte, bf16 and fp8 payloads
    /// (only found inside constexpr ops, which the interpreter does not run) are an error.
    pub fn from_tensor(t: &Tensor) -> Result<Array, String> {
        let shape = t.shape().to_vec();
        let unsupported = || format!("{} constants are not supported by the interpreter", t.dtype());
        let data = match t.dtype() {
            // A lazy fp16 cast gives its exact fp32 values: a run at fp16 rounds them like any
            // fp16 output, and an fp32 run (`validate --per-op`'s baseline) keeps them.
            DType::F16 | DType::F32 | DType::F64 => Data::F32(t.to_f32_vec_exact().ok_or_else(unsupported)?),
            DType::Bool => Data::Bool(t.to_i64_vec().ok_or_else(unsupported)?.into_iter().map(|v| v != 0).collect()),
            DType::I8 | DType::U8 | DType::I16 | DType::U16 | DType::I32 | DType::I64 | DType::U32 | DType::U64 => {
                Data::I32(t.to_i64_vec().ok_or_else(unsupported)?.into_iter().map(|v| v as i32).collect())
            }
            DType::String => Data::Str(t.strings().to_vec()),
            _ => return Err(unsupported()),
        };
        let dtype = match t.dtype() {
            DType::F64 => DType::F32,
            // uint32 stays itself (`pixel_unshuffle.downscale_factor` is typed so), held as i32.
            DType::I64 | DType::U64 => DType::I32,
            d => d,
        };
        Ok(Array { dtype, shape, data })
    }

    /// This value as a const tensor of its dtype (fp16 rounded to nearest even; narrow integer
    /// dtypes truncated to their width). Used to fold values back into the IR and by tests.
    pub fn to_tensor(&self) -> Tensor {
        let shape = &self.shape;
        match &self.data {
            Data::F32(v) if self.dtype == DType::F16 => Tensor::from_f32_as_f16(shape, v),
            Data::F32(v) => Tensor::from_f32(shape, v),
            Data::I32(v) => {
                let bytes: Vec<u8> = match self.dtype {
                    DType::I8 | DType::U8 => v.iter().map(|&x| x as u8).collect(),
                    DType::I16 | DType::U16 => v.iter().flat_map(|&x| (x as u16).to_le_bytes()).collect(),
                    DType::U32 => v.iter().flat_map(|&x| (x as u32).to_le_bytes()).collect(),
                    _ => return Tensor::from_i32(shape, v),
                };
                Tensor::from_bytes(self.dtype, shape, bytes).unwrap_or_else(|_| Tensor::from_i32(shape, v))
            }
            Data::Bool(v) => Tensor::from_bools(shape, v),
            Data::Str(v) => Tensor::from_strings(shape, v.clone()).unwrap_or_else(|| Tensor::string("")),
        }
    }
}

/// The bound argument values of one op, by parameter, as a kernel sees them.
/// Built by `interp::run` for each op it executes.
pub struct EvalArgs<'a> {
    /// MIL op type (for error messages).
    pub op: &'a str,
    /// The function's op set (some kernels differ by op set, e.g. `reshape`'s `0`).
    pub opset: Opset,
    pub args: Vec<(&'a str, Vec<&'a Array>)>,
    /// Literal attributes (`const.val`).
    pub attributes: &'a BTreeMap<String, Tensor>,
}

impl<'a> EvalArgs<'a> {
    /// An `Invalid` error for this op.
    pub fn invalid(&self, message: impl Into<String>) -> EvalError {
        EvalError::Invalid { op: self.op.to_string(), message: message.into() }
    }

    /// The value of an optional (single-valued) parameter.
    pub fn get(&self, param: &str) -> Option<&'a Array> {
        self.args.iter().find(|(p, _)| *p == param).and_then(|(_, a)| a.first().copied())
    }

    /// The value of a required parameter.
    pub fn array(&self, param: &str) -> Result<&'a Array, EvalError> {
        self.get(param).ok_or_else(|| EvalError::Missing { op: self.op.to_string(), param: param.to_string() })
    }

    /// Every value of a variadic parameter (`concat.values`).
    pub fn variadic(&self, param: &str) -> &[&'a Array] {
        self.args.iter().find(|(p, _)| *p == param).map(|(_, a)| a.as_slice()).unwrap_or(&[])
    }

    /// The float values of a required parameter; an error if it holds ints or bools.
    pub fn floats(&self, param: &str) -> Result<&'a [f32], EvalError> {
        let a = self.array(param)?;
        a.floats().ok_or_else(|| EvalError::DType {
            op: self.op.to_string(),
            param: param.to_string(),
            got: a.dtype,
            want: "float",
        })
    }

    /// The float values of an optional parameter.
    pub fn opt_floats(&self, param: &str) -> Result<Option<&'a [f32]>, EvalError> {
        match self.get(param) {
            None => Ok(None),
            Some(_) => self.floats(param).map(Some),
        }
    }

    /// An integer-vector parameter (axes, perm, shape…), `None` when absent.
    pub fn ints(&self, param: &str) -> Result<Option<Vec<i64>>, EvalError> {
        match self.get(param) {
            None => Ok(None),
            Some(a) => a.to_i64_vec().map(Some).ok_or_else(|| EvalError::DType {
                op: self.op.to_string(),
                param: param.to_string(),
                got: a.dtype,
                want: "integer",
            }),
        }
    }

    /// An integer scalar parameter, or `default` when absent.
    pub fn int_or(&self, param: &str, default: i64) -> Result<i64, EvalError> {
        match self.ints(param)?.as_deref() {
            None => Ok(default),
            Some([v]) => Ok(*v),
            Some(_) => Err(self.invalid(format!("`{param}` must be a scalar"))),
        }
    }

    /// A bool scalar parameter, or `default` when absent.
    pub fn bool_or(&self, param: &str, default: bool) -> Result<bool, EvalError> {
        Ok(self.int_or(param, i64::from(default))? != 0)
    }

    /// A float scalar parameter (epsilon, alpha…), or `default` when absent.
    pub fn float_or(&self, param: &str, default: f32) -> Result<f32, EvalError> {
        match self.opt_floats(param)? {
            None => Ok(default),
            Some([v]) => Ok(*v),
            Some(_) => Err(self.invalid(format!("`{param}` must be a scalar"))),
        }
    }

    /// A numeric scalar parameter held as float or int (scale factors), or `default` when absent.
    pub fn number_or(&self, param: &str, default: f32) -> Result<f32, EvalError> {
        match self.get(param) {
            None => Ok(default),
            Some(v) => match v.to_f32_vec().as_deref() {
                Some([x]) => Ok(*x),
                _ => Err(self.invalid(format!("`{param}` must be a numeric scalar"))),
            },
        }
    }

    /// A string scalar parameter, `None` when absent.
    pub fn string(&self, param: &str) -> Option<&'a str> {
        match self.get(param).map(|a| &a.data) {
            Some(Data::Str(s)) => s.first().map(String::as_str),
            _ => None,
        }
    }

    /// Resolves a possibly negative `axis` against `rank`.
    pub fn axis(&self, axis: i64, rank: usize) -> Result<usize, EvalError> {
        crate::numeric::axis(axis, rank)
            .ok_or_else(|| self.invalid(format!("axis {axis} out of range for rank {rank}")))
    }

    /// Resolves a list of axes (default: all axes when `None`), sorted and deduplicated.
    pub fn axes(&self, axes: Option<Vec<i64>>, rank: usize) -> Result<Vec<usize>, EvalError> {
        let mut out = match axes {
            None => (0..rank).collect(),
            Some(v) => v.iter().map(|&a| self.axis(a, rank)).collect::<Result<Vec<_>, _>>()?,
        };
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// A "shapes do not fit" error naming the parameters' shapes.
    pub fn shape_error(&self, what: &str) -> EvalError {
        let shapes: Vec<String> =
            self.args.iter().filter_map(|(p, a)| a.first().map(|a| format!("{p}{:?}", a.shape))).collect();
        self.invalid(format!("{what} ({})", shapes.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_round_trip_through_arrays() {
        for t in [
            Tensor::from_f32(&[2], &[1.5, -2.0]),
            Tensor::from_f32_as_f16(&[1], &[0.1]),
            Tensor::from_i32(&[2, 1], &[3, -4]),
            Tensor::from_bools(&[2], &[true, false]),
            Tensor::string("same"),
            Tensor::from_bytes(DType::I8, &[2], vec![0xff, 7]).unwrap(),
        ] {
            assert_eq!(Array::from_tensor(&t).unwrap().to_tensor(), t);
        }
        assert_eq!(
            Array::from_tensor(&Tensor::from_bytes(DType::I8, &[1], vec![0xff]).unwrap()).unwrap().ints(),
            Some(&[-1][..])
        );
    }
}
