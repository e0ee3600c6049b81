//! Prints a MIL function in the text form coremltools' milproto loader prints
//! (`%y: (1, 3, fp16)(Tensor) = relu(x=%x, name="r")`). Used by `inspect --mil` and snapshot tests.

use std::fmt;

use super::{Argument, Block, Function, Tensor};

fn write_arg(f: &mut fmt::Formatter<'_>, a: &Argument) -> fmt::Result {
    match a {
        Argument::Name(n) => write!(f, "%{n}"),
        Argument::Value(t) => write_tensor(f, t),
    }
}

fn write_tensor(f: &mut fmt::Formatter<'_>, t: &Tensor) -> fmt::Result {
    if let Some(s) = t.as_str() {
        return write!(f, "{s:?}");
    }
    if t.len() > 16 {
        return write!(f, "<{}>", t.tensor_type());
    }
    let vals: Vec<String> = match (t.to_f32_vec(), t.to_i64_vec()) {
        (Some(v), _) => v.iter().map(|x| format!("{x}")).collect(),
        (None, Some(v)) => v.iter().map(|x| format!("{x}")).collect(),
        _ => return write!(f, "<{}>", t.tensor_type()),
    };
    if t.shape().is_empty() {
        write!(f, "{}", vals.join(""))
    } else {
        write!(f, "[{}]", vals.join(", "))
    }
}

fn write_block(f: &mut fmt::Formatter<'_>, b: &Block, indent: &str) -> fmt::Result {
    for op in &b.operations {
        write!(f, "{indent}")?;
        for (i, o) in op.outputs.iter().enumerate() {
            write!(f, "{}%{}: {}(Tensor)", if i > 0 { ", " } else { "" }, o.name, o.ty)?;
        }
        write!(f, " = {}(", op.op_type)?;
        for (param, args) in &op.inputs {
            write!(f, "{param}=")?;
            if let [a] = args.as_slice() {
                write_arg(f, a)?;
            } else {
                f.write_str("(")?;
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write_arg(f, a)?;
                }
                f.write_str(")")?;
            }
            f.write_str(", ")?;
        }
        for (k, v) in &op.attributes {
            write!(f, "{k}=")?;
            write_tensor(f, v)?;
            f.write_str(", ")?;
        }
        writeln!(f, "name={:?})", op.name)?;
        for nested in &op.blocks {
            write_block(f, nested, &format!("{indent}  "))?;
        }
    }
    Ok(())
}

impl fmt::Display for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "main[{}](", self.opset)?;
        for (i, inp) in self.inputs.iter().enumerate() {
            write!(f, "{}%{}: {}", if i > 0 { ", " } else { "" }, inp.name, inp.ty)?;
        }
        writeln!(f, ") {{")?;
        writeln!(f, "  block0() {{")?;
        write_block(f, &self.block, "    ")?;
        let outs: Vec<String> = self.block.outputs.iter().map(|o| format!("%{o}")).collect();
        writeln!(f, "  }} -> ({})", outs.join(", "))?;
        writeln!(f, "}}")
    }
}
