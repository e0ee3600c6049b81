//! ANE014 `blockwise-quantized`: a weight quantized with scales per block of input channels
//! (iOS18 `constexpr_blockwise_shift_scale`, as `--compress int4` and coremltools' `per_block`
//! write it), whose speed-up coremltools documents for the GPU. Listed in `lint::RULES`.

use crate::lint::{Graph, Hit, Rule, Severity};

/// The rule.
pub const RULE: Rule = Rule {
    code: "ANE014",
    name: "blockwise-quantized",
    severity: Severity::Note,
    summary: "weight quantized per block of input channels, a form documented to pay off on the GPU",
    explanation: EXPLANATION,
    check,
};

const EXPLANATION: &str = r#"## What it finds
Weights stored with a scale per block of input channels of each output channel (iOS18
`constexpr_blockwise_shift_scale` with more than one block per row): `--compress int4`, or
coremltools' `OpLinearQuantizerConfig(granularity="per_block")`.

## Why it matters
coremltools' quantization performance guide
(apple.github.io/coremltools/docs-guides/source/opt-quantization-perf.html) says of the
`per-block` option added in iOS18, "especially useful when employing quantization to 4-bits",
that "one can expect to see great runtime memory gains, as well as latency gains depending on
the model, when it is running on the GPU". For a model meant for the Neural Engine, that gain is
not documented; the package is still smaller on disk.

## Example
```text
w = constexpr_blockwise_shift_scale(data=int4[768, 768], scale=fp16[768, 24])  # 24 blocks of 32
```

## Fix
For the Neural Engine prefer per-channel int8 (`--compress int8`) or palettization
(`--compress palettize:N`, groups of 8 or 16 channels from iOS18), and measure on a device.
"#;

fn check(g: &Graph) -> Vec<Hit> {
    g.compressed
        .iter()
        .filter_map(|c| {
            let blocks = c.blocks_per_row?;
            let op = g.producer(&c.name)?;
            Some(Hit::on(
                op,
                format!("`{}` is quantized with {blocks} scale blocks per output channel; coremltools documents that form's gains for the GPU", c.name),
                "for the Neural Engine prefer --compress int8 or palettize:N".into(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mil::builder::Builder;
    use crate::mil::constexpr::Compressed;
    use crate::mil::{Opset, Tensor};

    fn with_blocks(blocks: Option<usize>) -> Vec<Hit> {
        let mut b = Builder::new(Opset::Ios18);
        let w = b.konst("w", Tensor::from_f32(&[16, 64], &[0.5; 1024]));
        let f = b.finish(&[w]);
        let compressed = [Compressed { name: "w".into(), kind: "quantized", stored_bytes: 600, dense_bytes: 2048, rows_per_table: None, blocks_per_row: blocks }];
        let mut g = Graph::new(&f);
        g.compressed = &compressed;
        check(&g)
    }

    #[test]
    fn fires_on_per_block_scales() {
        let h = with_blocks(Some(2));
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h[0].message.contains("2 scale blocks"), "{h:?}");
    }

    #[test]
    fn quiet_on_per_channel_scales() {
        assert!(with_blocks(None).is_empty());
    }
}
