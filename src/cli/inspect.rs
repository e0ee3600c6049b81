//! `torch2coreml inspect PACKAGE`: what a package contains — inputs, outputs, states (name,
//! shape, dtype), specification version, opset, op histogram, weights, metadata. Works on any
//! ML Program package, not only ours.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use serde_json::json;

use super::output::{self, Format};
use super::ExitStatus;
use torch2coreml::mil::{Dim, Model, TensorType, ValueType};
use torch2coreml::package::blob;
use torch2coreml::pipeline;

/// Arguments of `inspect`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The .mlpackage directory to inspect.
    pub package: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// Also print the MIL program (text format only).
    #[arg(long)]
    pub mil: bool,
    /// For a multifunction package: show only this function (default: every function).
    #[arg(long, value_name = "NAME")]
    pub function: Option<String>,
}

/// What `inspect` reports; one struct feeds both the text and the JSON renderer.
struct Report {
    inputs: Vec<(String, TensorType)>,
    states: Vec<(String, TensorType)>,
    outputs: Vec<(String, TensorType)>,
    spec_version: i32,
    opset: String,
    target: String,
    ops: BTreeMap<String, usize>,
    weights: usize,
    weight_bytes: usize,
}

fn report(model: &Model) -> anyhow::Result<Report> {
    let main = model.program.main().context("the program has no `main` function")?;
    let mut inputs = Vec::new();
    let mut states = Vec::new();
    for i in &main.inputs {
        match &i.ty {
            ValueType::Tensor(t) => inputs.push((i.name.clone(), t.clone())),
            ValueType::State(t) => states.push((i.name.clone(), t.clone())),
        }
    }
    let all_ops = main.block.walk_ops();
    let mut types = BTreeMap::new();
    let mut ops = BTreeMap::new();
    let (mut weights, mut weight_bytes) = (0, 0);
    for op in &all_ops {
        *ops.entry(op.op_type.clone()).or_insert(0) += 1;
        for o in &op.outputs {
            types.insert(o.name.as_str(), o.ty.tensor().clone());
        }
        for t in op.attributes.values() {
            if blob::stored_in_blob(t.dtype(), t.len(), main.opset) {
                weights += 1;
                weight_bytes += t.byte_len();
            }
        }
    }
    let outputs = main
        .block
        .outputs
        .iter()
        .map(|o| (o.clone(), types.get(o.as_str()).cloned().unwrap_or_else(|| TensorType::scalar(torch2coreml::mil::DType::F32))))
        .collect();
    Ok(Report {
        inputs,
        states,
        outputs,
        spec_version: main.opset.spec_version(),
        opset: main.opset.opset_name().to_string(),
        target: main.opset.target_name().to_string(),
        ops,
        weights,
        weight_bytes,
    })
}

fn shape_json(t: &TensorType) -> serde_json::Value {
    t.shape
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => json!(n),
            Dim::Unknown => serde_json::Value::Null,
        })
        .collect()
}

fn features_json(list: &[(String, TensorType)], model: &Model) -> serde_json::Value {
    list.iter()
        .map(|(n, t)| {
            let mut f = json!({"name": n, "shape": shape_json(t), "dtype": t.dtype.name()});
            if let Some(space) = model.images.get(n) {
                f["image"] = json!({"color_space": space.name()});
            }
            match model.flexible.get(n) {
                Some(torch2coreml::mil::ShapeSet::Range(r)) => f["flexible"] = json!({"range": r.iter().map(|&(lo, hi)| json!([lo, hi])).collect::<Vec<_>>()}),
                Some(torch2coreml::mil::ShapeSet::Enumerated(e)) => f["flexible"] = json!({"enumerated": e}),
                None => {}
            }
            if let Some(d) = model.feature_descriptions.get(n) {
                f["description"] = json!(d);
            }
            f
        })
        .collect()
}

fn render_text(path: &std::path::Path, r: &Report, model: &Model) -> String {
    let mut s = format!("{}\n", path.display());
    s += &format!("  specification version {} ({}), opset {}\n", r.spec_version, r.target, r.opset);
    let shape = |t: &TensorType| t.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
    for (title, list) in [("inputs", &r.inputs), ("states", &r.states), ("outputs", &r.outputs)] {
        if list.is_empty() && title == "states" {
            continue;
        }
        s += &format!("  {title}:\n");
        for (n, t) in list.iter() {
            s += &format!("    {n}: {} [{}]", t.dtype, shape(t));
            if let Some(space) = model.images.get(n) {
                s += &format!(" image {}", space.name());
            }
            match model.flexible.get(n) {
                Some(set @ torch2coreml::mil::ShapeSet::Range(_)) => s += &format!(" range {}", set.describe()),
                Some(set @ torch2coreml::mil::ShapeSet::Enumerated(_)) => s += &format!(" shapes {}", set.describe()),
                None => {}
            }
            if let Some(d) = model.feature_descriptions.get(n) {
                s += &format!(" ({d})");
            }
            s += "\n";
        }
    }
    s += &format!("  weights: {} tensors, {}\n", r.weights, output::human_bytes(r.weight_bytes as u64));
    let total: usize = r.ops.values().sum();
    s += &format!("  ops ({total}):\n");
    let mut hist: Vec<_> = r.ops.iter().collect();
    hist.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (op, n) in hist {
        s += &format!("    {n:>6}  {op}\n");
    }
    if let Some(c) = &model.classifier {
        let first: Vec<String> = (0..c.labels.len().min(5)).filter_map(|i| c.labels.get(i)).collect();
        let more = if c.labels.len() > first.len() { ", …" } else { "" };
        s += &format!(
            "  classifier: {} labels ({}{more}) from `{}` → `{}` (top label), `{}_probs` (probabilities)\n",
            c.labels.len(),
            first.join(", "),
            c.probabilities,
            c.predicted,
            c.predicted
        );
    }
    if !model.compressed.is_empty() {
        let (stored, dense): (usize, usize) = model.compressed.iter().fold((0, 0), |(s, d), c| (s + c.stored_bytes, d + c.dense_bytes));
        let mut kinds: Vec<&str> = model.compressed.iter().map(|c| c.kind).collect();
        kinds.sort_unstable();
        kinds.dedup();
        s += &format!(
            "  compressed weights: {} ({}), {} stored for {} dense\n",
            model.compressed.len(),
            kinds.join(", "),
            output::human_bytes(stored as u64),
            output::human_bytes(dense as u64)
        );
    }
    let md = &model.metadata;
    for (k, v) in [("description", &md.short_description), ("author", &md.author), ("license", &md.license), ("version", &md.version)] {
        if !v.is_empty() {
            s += &format!("  {k}: {v}\n");
        }
    }
    for (k, v) in &md.user_defined {
        s += &format!("  {k}: {v}\n");
    }
    s
}

/// Runs `inspect`. Errors (missing, truncated, not a package) come back with the path in them.
pub fn run(args: &Args) -> anyhow::Result<ExitStatus> {
    let package = pipeline::read_package(&args.package)?;
    let names = package.functions_to_check(args.function.as_deref()).map_err(|m| anyhow::anyhow!("{}: --function: {m}", args.package.display()))?;
    // The first function listed (the default one) is reported in full; the others by signature.
    let model = package.select(&names[0]).context("a listed function")?;
    let r = report(&model)?;
    let others = names[1..].iter().map(|n| Ok((n.clone(), report(&package.select(n).context("a listed function")?)?))).collect::<anyhow::Result<Vec<_>>>()?;
    let multifunction = package.default_function.as_ref().map(|d| (d, &names));
    let text = match args.format {
        Format::Json => {
            let md = &model.metadata;
            output::json(&json!({
                "path": args.package,
                "inputs": features_json(&r.inputs, &model),
                "outputs": features_json(&r.outputs, &model),
                "states": features_json(&r.states, &model),
                "spec_version": r.spec_version,
                "opset": r.opset,
                "target": r.target,
                "ops": r.ops,
                "weights": r.weights,
                "weight_bytes": r.weight_bytes,
                "classifier": model.classifier.as_ref().map(|c| json!({
                    "labels": (0..c.labels.len()).filter_map(|i| c.labels.get(i)).collect::<Vec<_>>(),
                    "probabilities": c.probabilities,
                    "predicted_feature": c.predicted,
                    "probabilities_feature": format!("{}_probs", c.predicted),
                })),
                "compressed": model.compressed.iter().map(|c| json!({"name": c.name, "kind": c.kind, "stored_bytes": c.stored_bytes, "dense_bytes": c.dense_bytes})).collect::<Vec<_>>(),
                "functions": multifunction.map(|(default, _)| {
                    std::iter::once((&names[0], &r)).chain(others.iter().map(|(n, r)| (n, r))).map(|(n, r)| json!({
                        "name": n,
                        "default": n == default,
                        "inputs": features_json(&r.inputs, &model),
                        "outputs": features_json(&r.outputs, &model),
                        "states": features_json(&r.states, &model),
                        "ops": r.ops,
                    })).collect::<Vec<_>>()
                }),
                "metadata": {
                    "short_description": md.short_description,
                    "author": md.author,
                    "license": md.license,
                    "version": md.version,
                    "user_defined": md.user_defined,
                },
            }))
        }
        Format::Text => {
            let mut t = render_text(&args.package, &r, &model);
            if let Some((default, names)) = multifunction {
                let shape = |t: &TensorType| t.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
                let sig = |r: &Report| {
                    let list = |l: &[(String, TensorType)]| l.iter().map(|(n, t)| format!("{n} {} [{}]", t.dtype, shape(t))).collect::<Vec<_>>().join(", ");
                    format!("({}) -> ({}), {} ops", list(&r.inputs), list(&r.outputs), r.ops.values().sum::<usize>())
                };
                t += &format!("  functions ({}; above: {}; default: {default}):\n", names.len(), names[0]);
                t += &format!("    {}: {}\n", names[0], sig(&r));
                for (n, r) in &others {
                    t += &format!("    {n}: {}\n", sig(r));
                }
            }
            if args.mil {
                if let Some(f) = model.program.main() {
                    t += &format!("\n{f}");
                }
            }
            t
        }
    };
    output::print(&text)?;
    Ok(ExitStatus::Success)
}
