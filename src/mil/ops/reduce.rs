//! Reductions: `reduce_mean`, `reduce_sum`, `reduce_max`. Semantics: coremltools
//! `defs/iOS15/reduction.py` (axes default to all; `keep_dims` keeps size-1 axes).

use super::{OpArgs, OpDef, Param, TypeError, BOOL, INT32, NUMERIC};
use crate::mil::types::{Dim, TensorType};
use crate::mil::Opset;

const REDUCE: &[Param] =
    &[Param::new("x", NUMERIC), Param::new("axes", INT32).konst().optional(), Param::new("keep_dims", BOOL).konst().optional()];

/// `reduce_mean`: mean over `axes`.
pub const REDUCE_MEAN: OpDef = OpDef { name: "reduce_mean", since: Opset::Ios15, params: REDUCE, infer: infer_reduce };
/// `reduce_sum`: sum over `axes`.
pub const REDUCE_SUM: OpDef = OpDef { name: "reduce_sum", since: Opset::Ios15, params: REDUCE, infer: infer_reduce };
/// `reduce_max`: maximum over `axes`.
pub const REDUCE_MAX: OpDef = OpDef { name: "reduce_max", since: Opset::Ios15, params: REDUCE, infer: infer_reduce };

fn infer_reduce(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let x = a.tensor("x")?;
    let axes = match a.ints("axes")? {
        Some(v) => v.iter().map(|&ax| a.axis(ax, x.rank())).collect::<Result<Vec<_>, _>>()?,
        None => (0..x.rank()).collect(),
    };
    let keep = a.bool_or("keep_dims", false)?;
    let shape = (0..x.rank())
        .filter_map(|i| match (axes.contains(&i), keep) {
            (false, _) => Some(x.shape[i]),
            (true, true) => Some(Dim::Fixed(1)),
            (true, false) => None,
        })
        .collect();
    Ok(vec![TensorType { dtype: x.dtype, shape }])
}
