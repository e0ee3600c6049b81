//! `dead-code`: removes every op none of whose outputs is read (by a later op, a nested block,
//! or the function's outputs). One backward sweep suffices because ops are in topological order.

use foldhash::HashSet;

use super::{Changes, Pass, PassError};
use crate::mil::{Argument, Function, Operation};

/// The pass, for `PIPELINE`.
pub const PASS: Pass = Pass { name: "dead-code", ane: false, run };

/// Marks every value `op` reads (its arguments, and what its nested blocks read or return) live.
fn uses<'a>(op: &'a Operation, live: &mut HashSet<&'a str>) {
    for (_, args) in &op.inputs {
        for a in args {
            if let Argument::Name(n) = a {
                live.insert(n);
            }
        }
    }
    for b in &op.blocks {
        for inner in &b.operations {
            uses(inner, live);
        }
        live.extend(b.outputs.iter().map(String::as_str));
    }
}

fn run(f: &mut Function) -> Result<Changes, PassError> {
    let before = f.block.operations.len();
    let removed = sweep(f);
    Ok(Changes::new(before, f.block.operations.len()).with([("removed", removed)]))
}

/// Removes the ops nothing reads and returns how many; rewriting passes call it last so their
/// op counts mean something.
pub fn sweep(f: &mut Function) -> usize {
    let before = f.block.operations.len();
    let mut live: HashSet<&str> = f.block.outputs.iter().map(String::as_str).collect();
    let mut keep = vec![false; before];
    for (i, op) in f.block.operations.iter().enumerate().rev() {
        // `write_state` has no outputs and exists for its effect.
        let effect = op.outputs.is_empty();
        if effect || op.outputs.iter().any(|o| live.contains(o.name.as_str())) {
            keep[i] = true;
            uses(op, &mut live);
        }
    }
    drop(live);
    let mut k = keep.into_iter();
    f.block.operations.retain(|_| k.next().unwrap_or(true));
    before - f.block.operations.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interp;
    use crate::mil::builder::{check_function, Builder};
    use crate::mil::ops::{elementwise as ew, shape};
    use crate::mil::{DType, Opset, Tensor, TensorType};

    #[test]
    fn removes_unused_chains_and_keeps_results_identical() {
        let mut b = Builder::new(Opset::Ios16);
        let x = b.input("x", TensorType::new(DType::F32, &[2, 3]));
        let unused = b.op(&ew::EXP, "unused").arg("x", &x).build1().unwrap();
        b.op(&shape::TRANSPOSE, "unused_t").arg("x", &unused).konst("perm", Tensor::i32_vec(&[1, 0])).build1().unwrap();
        let y = b.op(&ew::RELU, "y").arg("x", &x).build1().unwrap();
        let mut f = b.finish(&[y]);
        let inputs = vec![("x".to_string(), interp::Array::float(DType::F32, vec![2, 3], vec![-1.0, 2.0, -3.0, 4.0, 0.5, -0.5]))];
        let before = interp::run(&f, &inputs).unwrap();
        let c = run(&mut f).unwrap();
        // exp, transpose and its perm const go; relu stays.
        assert_eq!((c.ops_before, c.ops_after, c.count("removed")), (4, 1, 3));
        assert_eq!(f.block.operations[0].op_type, "relu");
        check_function(&f).unwrap();
        assert_eq!(interp::run(&f, &inputs).unwrap(), before);
    }
}
