//! ANE013 `small-palette-groups`: a weight palettized with one look-up table per fewer than
//! [`MIN_ROWS_PER_TABLE`] output channels (iOS18 grouped-channel palettization), which
//! coremltools' performance guide says can cost runtime speed. Listed in `lint::RULES`.

use crate::lint::{Graph, Hit, Rule, Severity};

/// Smallest group of output channels per table that keeps palettization's speed-up: coremltools'
/// palettization performance guide names group sizes of 8 or 16 as the usual good choice.
pub const MIN_ROWS_PER_TABLE: usize = 8;

/// The rule.
pub const RULE: Rule = Rule {
    code: "ANE013",
    name: "small-palette-groups",
    severity: Severity::Warning,
    summary: "weight palettized with a table per fewer than 8 output channels",
    explanation: EXPLANATION,
    check,
};

const EXPLANATION: &str = r#"## What it finds
Weights stored as iOS18 grouped-channel look-up tables (`constexpr_lut_to_dense` with a table per
block of output channels) where a table serves fewer than 8 output channels.

## Why it matters
Core ML decompresses palettized weights "just in time" on the Neural Engine, where the smaller
weights save memory traffic. coremltools' palettization performance guide
(apple.github.io/coremltools/docs-guides/source/opt-palettization-perf.html) warns that with
`per_grouped_channel` palettization "you may see a drop in runtime performance as the number of
LUTs used to represent a weight tensor increases", and that "typically, a group size of 8 or 16
gives good accuracy while still increasing speed over an uncompressed model".

## Example
```text
w = constexpr_lut_to_dense(indices=uint4[768, 768], lut=fp16[384, 1, 16, 1])  # 2 rows per table
```

## Fix
Palettize with larger groups (`--compress palettize:4:group=16`), or per tensor; for a channel
count with no divisor between 8 and the group asked for, pick a group size that divides it.
"#;

fn check(g: &Graph) -> Vec<Hit> {
    g.compressed
        .iter()
        .filter_map(|c| {
            let rows = c.rows_per_table.filter(|&r| r < MIN_ROWS_PER_TABLE)?;
            let op = g.producer(&c.name)?;
            Some(Hit::on(
                op,
                format!("`{}` has a look-up table per {rows} output channel(s); fewer than {MIN_ROWS_PER_TABLE} may slow it down", c.name),
                format!("palettize with groups of {MIN_ROWS_PER_TABLE} or 16 output channels, or one table per tensor"),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mil::constexpr::Compressed;
    use crate::mil::builder::Builder;
    use crate::mil::{Opset, Tensor};

    fn with_rows(rows: Option<usize>) -> Vec<Hit> {
        let mut b = Builder::new(Opset::Ios18);
        let w = b.konst("w", Tensor::from_f32(&[16, 4], &[0.5; 64]));
        let f = b.finish(&[w]);
        let compressed = [Compressed { name: "w".into(), kind: "palettized", stored_bytes: 64, dense_bytes: 256, rows_per_table: rows, blocks_per_row: None }];
        let mut g = Graph::new(&f);
        g.compressed = &compressed;
        check(&g)
    }

    #[test]
    fn fires_on_tables_of_two_rows() {
        let h = with_rows(Some(2));
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h[0].message.contains("per 2 output channel"), "{h:?}");
    }

    #[test]
    fn quiet_on_groups_of_sixteen_and_per_tensor_tables() {
        assert!(with_rows(Some(16)).is_empty());
        assert!(with_rows(None).is_empty());
    }
}
