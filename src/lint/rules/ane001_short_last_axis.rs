//! ANE001 `short-last-axis`: an activation whose last axis is shorter than one 64-byte ANE row,
//! so most of every row is padding (channel-last tensors, per-head (…, S, D) tensors). Listed in
//! `lint::RULES`.

use crate::lint::{is_const_op, Graph, Hit, Rule, Severity};
use crate::mil::Dim;

/// The ANE stores the last axis of every tensor in 64-byte rows; a shorter axis wastes the rest
/// (Apple, "Deploying Transformers on the Apple Neural Engine", principle 1).
pub const ANE_ROW_BYTES: usize = 64;

/// Smallest tensor flagged: below this many elements the padded copy is a few KiB, not worth a
/// layout change (and shape vectors and scalars stay quiet).
pub const MIN_FLAGGED_ELEMENTS: usize = 256;

/// Batch axis of rank-3 and rank-4 activations; never a candidate for the last axis.
const BATCH_AXIS: usize = 0;

/// Channel axis of the ANE's native (B, C, H, W) / (B, C, 1, S) layout: it belongs where it is,
/// so a short W under many channels is not flagged.
const ANE_CHANNEL_AXIS: usize = 1;

/// Ops that only move data between layouts: the compute ops around them are what ANE001 judges
/// (a (B, C, 1, S) activation viewed as (B, C, S) for a `matmul` is not channel-last), and
/// chains of them are ANE011's.
const LAYOUT_OPS: &[&str] = &["reshape", "transpose", "expand_dims", "squeeze"];

/// The rule.
pub const RULE: Rule = Rule {
    code: "ANE001",
    name: "short-last-axis",
    severity: Severity::Warning,
    summary: "last axis shorter than the ANE's 64-byte row, so most of each row is padding",
    explanation: EXPLANATION,
    check,
};

const EXPLANATION: &str = r#"## What it finds
A compute op (not a reshape, transpose, expand_dims or squeeze: those only move data, and
ANE011 covers chains of them) whose output has rank 2 or more, at least 256 elements, a last axis that takes fewer than
64 bytes (under 32 fp16 values), and another axis longer than the last one that could take its
place (not the batch axis, nor the channel axis of a rank-4 (B, C, H, W) tensor): channel-last activations such as (B, H, W, C) with a small C, per-head tensors
(B, H, S, D) with D < S, or reductions that keep a size-1 last axis. Channel-first feature maps
(a 512×7×7 map) stay quiet: their layout is already the ANE's.

## Why it matters
The ANE lays out the last axis of every tensor in 64-byte rows. A last axis of 8 fp16 values uses
16 bytes of each row and pads the other 48, so the tensor takes 4× the memory and bandwidth, and
ops on it run at a quarter of the speed.

## Example
```text
x: (1, 64, 8, fp16)
y = relu(x)            # last axis 8 × 2 bytes = 16 bytes: 75% padding
```

## Fix
Put a long axis last. For transformers keep activations as (B, C, 1, S) so the sequence is the
last axis; for images keep (B, C, H, W) rather than channel-last; for attention keep heads in
the channel axis instead of a trailing head dimension.
"#;

/// True when `name` is a (B, C, S) value read only as (B, C, 1, S): the ANE layout in the rank-3
/// view a `matmul` works in (per-head attention), so its last axis is the sequence, not channels.
fn viewed_as_ane_layout(g: &Graph, name: &str) -> bool {
    let Some(Some([b, c, s])) = g.ty(name).map(|t| t.fixed_shape().and_then(|v| <[usize; 3]>::try_from(v).ok())) else { return false };
    let consumers = g.consumers(name);
    !consumers.is_empty()
        && consumers.iter().all(|op| {
            op.op_type == "reshape" && op.outputs.first().and_then(|o| o.ty.tensor().fixed_shape()).as_deref() == Some(&[b, c, 1, s][..])
        })
}

fn check(g: &Graph) -> Vec<Hit> {
    let mut hits = Vec::new();
    for op in g.ops.iter().filter(|o| !is_const_op(o) && !LAYOUT_OPS.contains(&o.op_type.as_str())) {
        let Some(out) = op.outputs.first() else { continue };
        let ty = out.ty.tensor();
        if viewed_as_ane_layout(g, &out.name) {
            continue;
        }
        let (Some(Dim::Fixed(last)), Some(bits)) = (ty.shape.last(), ty.dtype.bits()) else { continue };
        let row_bytes = last * bits / 8;
        let big = ty.num_elements().is_some_and(|n| n >= MIN_FLAGGED_ELEMENTS);
        let stays_put = |i: usize| (ty.rank() >= 3 && i == BATCH_AXIS) || (ty.rank() == 4 && i == ANE_CHANNEL_AXIS);
        let longer_elsewhere = ty
            .shape
            .iter()
            .enumerate()
            .take(ty.rank().saturating_sub(1))
            .filter(|(i, _)| !stays_put(*i))
            .any(|(_, d)| matches!(d, Dim::Fixed(n) if n > last));
        if ty.rank() < 2 || !big || !longer_elsewhere || row_bytes == 0 || row_bytes >= ANE_ROW_BYTES {
            continue;
        }
        hits.push(Hit::on(
            op,
            format!(
                "`{}` output {ty} has a {row_bytes}-byte last axis; the ANE pads it to {ANE_ROW_BYTES} bytes ({}% padding)",
                op.op_type,
                100 - row_bytes * 100 / ANE_ROW_BYTES
            ),
            "put a long axis last: (B, C, 1, S) for sequences, (B, C, H, W) for images, heads in the channel axis".into(),
        ));
    }
    hits
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lint::rules::testing::{hits, relu_on};

    #[test]
    fn fires_on_channel_last_activation() {
        let h = hits(&RULE, &relu_on(&[1, 64, 8]));
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h[0].op_name, "y");
        assert!(h[0].message.contains("16-byte last axis"), "{}", h[0].message);
    }

    #[test]
    fn quiet_on_long_last_axis_and_small_tensors() {
        assert!(hits(&RULE, &relu_on(&[1, 8, 64])).is_empty());
        assert!(hits(&RULE, &relu_on(&[4, 8])).is_empty());
        assert!(hits(&RULE, &relu_on(&[1, 512, 7, 7])).is_empty(), "channel-first feature map");
    }
}
