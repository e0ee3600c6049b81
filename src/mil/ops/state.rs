//! iOS18 state ops: `read_state` and `write_state`, the on-disk pair through which a function
//! reads and updates its state inputs (Core ML `MLState` buffers that persist across
//! predictions). Semantics: coremltools `defs/iOS18/states.py` (`read_state`) and
//! `defs/coreml_dialect/ops.py` (`coreml_update_state`), coremltools 9.0.
//!
//! pymil's `coreml_update_state(state, value)` never reaches a package: coremltools' backend
//! (`backend/mil/load.py`, `translate_coreml_update_state_op`) writes it as
//! `write_state(input=state, data=value)` (no outputs) followed by `read_state(input=state)` when
//! the result is used, and its milproto loader merges that pair back. Our IR is the wire form, so
//! the table holds those two ops and builders emit the pair (`hf::whisper` does).
//! coreml-format.md §6 and §10 item 10.

use super::{Array, EvalArgs, EvalError, OpArgs, OpDef, Param, TypeError, ANY_TENSOR};
use crate::mil::types::TensorType;
use crate::mil::Opset;

/// The dtype of Core ML states: coremltools accepts only fp16 ones (coreml-format.md §7). Used by
/// every builder that makes a state (`hf::whisper`, the `.pt2` front end's mutated buffers).
pub const STATE_DTYPE: crate::mil::DType = crate::mil::DType::F16;

/// `read_state`: a copy of the current value of state `input` (the wrapped tensor type).
pub const READ_STATE: OpDef = OpDef {
    name: "read_state",
    since: Opset::Ios18,
    params: &[Param::state("input", ANY_TENSOR)],
    infer: infer_read_state,
    eval: eval_read_state,
};

/// `write_state`: stores `data` (exactly the state's wrapped type) into state `input`; no
/// outputs. Later `read_state`s of the same state see `data`, and so does the next prediction.
pub const WRITE_STATE: OpDef = OpDef {
    name: "write_state",
    since: Opset::Ios18,
    params: &[Param::state("input", ANY_TENSOR).written(), Param::new("data", ANY_TENSOR)],
    infer: infer_write_state,
    eval: eval_write_state,
};

fn infer_read_state(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    Ok(vec![a.tensor("input")?.clone()])
}

fn infer_write_state(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let (state, data) = (a.tensor("input")?, a.tensor("data")?);
    if state != data {
        return Err(a.invalid(format!("data {data} does not match the state's type {state}")));
    }
    Ok(Vec::new())
}

fn eval_read_state(a: &EvalArgs) -> Result<Vec<Array>, EvalError> {
    Ok(vec![a.array("input")?.clone()])
}

/// Returns the state's new value (the `written` param's convention), after the op's zero outputs.
fn eval_write_state(a: &EvalArgs) -> Result<Vec<Array>, EvalError> {
    let (state, data) = (a.array("input")?, a.array("data")?);
    if state.shape != data.shape || state.dtype != data.dtype {
        return Err(a.shape_error("data does not match the state"));
    }
    Ok(vec![data.clone()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::mil::builder::{check_function, Builder};
    use crate::mil::ops::{check, Arg};
    use crate::mil::types::DType;

    fn args<'a>(op: &'a str, bound: Vec<(&'a str, TensorType, bool)>, attrs: &'a BTreeMap<String, crate::mil::Tensor>) -> OpArgs<'a> {
        OpArgs {
            op,
            opset: Opset::Ios18,
            args: bound.into_iter().map(|(p, ty, state)| (p, vec![Arg { ty, value: None, state, constexpr: false }])).collect(),
            attributes: attrs,
        }
    }

    #[test]
    fn state_params_take_states_and_tensor_params_do_not() {
        let attrs = BTreeMap::new();
        let ty = TensorType::new(DType::F16, &[2, 3]);
        assert_eq!(check(&READ_STATE, &args("read_state", vec![("input", ty.clone(), true)], &attrs)), Ok(vec![ty.clone()]));
        let tensor = check(&READ_STATE, &args("read_state", vec![("input", ty.clone(), false)], &attrs));
        assert!(matches!(tensor, Err(TypeError::State { expected: true, .. })), "{tensor:?}");
        let ok = args("write_state", vec![("input", ty.clone(), true), ("data", ty.clone(), false)], &attrs);
        assert_eq!(check(&WRITE_STATE, &ok), Ok(vec![]));
        let wrong = args("write_state", vec![("input", ty.clone(), true), ("data", TensorType::new(DType::F16, &[2, 4]), false)], &attrs);
        assert!(matches!(check(&WRITE_STATE, &wrong), Err(TypeError::Invalid { .. })));
        let state_as_data = args("write_state", vec![("input", ty.clone(), true), ("data", ty, true)], &attrs);
        assert!(matches!(check(&WRITE_STATE, &state_as_data), Err(TypeError::State { expected: false, .. })));
    }

    #[test]
    fn builder_and_package_check_type_state_ops() {
        let mut b = Builder::new(Opset::Ios18);
        let ty = TensorType::new(DType::F16, &[1, 4]);
        let s = b.state_input("acc", ty.clone());
        let v = b.op(&READ_STATE, "acc_read").arg("input", &s).build1().unwrap();
        assert_eq!(b.ty(&v), Some(&ty));
        let bad = b.op(&crate::mil::ops::elementwise::RELU, "r").arg("x", &s).build1();
        assert!(matches!(bad, Err(TypeError::State { expected: false, .. })), "{bad:?}");
        assert!(b.op(&WRITE_STATE, "acc_write").arg("input", &s).arg("data", &v).build().unwrap().is_empty());
        let f = b.finish(&[v]);
        check_function(&f).unwrap();

        let mut old = Builder::new(Opset::Ios17);
        let s = old.state_input("acc", ty);
        assert!(matches!(old.op(&READ_STATE, "r").arg("input", &s).build1(), Err(TypeError::TooNew { .. })));
    }
}
