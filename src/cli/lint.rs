//! `torch2coreml lint-ane MODEL.pt|HF_DIR|PACKAGE`: loads the model through `pipeline::load` (a
//! traced TorchScript file lowered as `convert --no-ane` would, fp16, iOS16; a Hugging Face
//! folder built by its family; any `.mlpackage`, ours or third-party), runs the ANE lint
//! rules (`torch2coreml::lint::RULES`), prints the findings as text, JSON or SARIF 2.1.0, and
//! exits 1 when a finding is at or above `--deny` (default: error), 0 otherwise, 2 on bad input.
//! `--explain CODE` prints one rule's explanation instead.

use std::path::PathBuf;

use anyhow::{bail, Context};

use super::output;
use super::ExitStatus;
use torch2coreml::lint::{self, render, Rule, Severity};
use torch2coreml::mil::{DType, Opset};
use torch2coreml::pipeline;

/// Arguments of `lint-ane`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A traced TorchScript file (.pt), a Hugging Face folder, or a Core ML package (.mlpackage).
    #[arg(required_unless_present = "explain")]
    pub model: Option<PathBuf>,
    /// For a .pt: a model input as NAME:DIMS:DTYPE, as in `convert`.
    #[arg(long = "input", value_name = "NAME:DIMS:DTYPE")]
    pub inputs: Vec<String>,
    /// For a .pt: take input names, shapes and dtypes from an example .npz instead.
    #[arg(long, value_name = "INPUTS.npz", conflicts_with = "inputs")]
    pub example: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: LintFormat,
    /// Exit 1 when a finding has this severity or higher.
    #[arg(long, value_enum, default_value_t = Level::Error)]
    pub deny: Level,
    /// Turn a rule off, by code (ANE011) or name (reshape-transpose-chain); repeatable.
    #[arg(long, value_name = "CODE")]
    pub allow: Vec<String>,
    /// Print the explanation of one rule (code or name) and exit.
    #[arg(long, value_name = "CODE")]
    pub explain: Option<String>,
    /// For a multifunction package: check only this function (default: every function).
    #[arg(long, value_name = "NAME")]
    pub function: Option<String>,
}

/// `--format` of `lint-ane`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LintFormat {
    /// rustc-style diagnostics and a summary count.
    #[default]
    Text,
    /// `{"findings": [...], "counts": {...}}`.
    Json,
    /// SARIF 2.1.0, for code-scanning tools.
    Sarif,
}

/// `--deny` levels (the library's `Severity` stays free of clap).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Note,
    Warning,
    Error,
}

impl Level {
    fn severity(self) -> Severity {
        match self {
            Level::Note => Severity::Note,
            Level::Warning => Severity::Warning,
            Level::Error => Severity::Error,
        }
    }
}

/// Runs `lint-ane`.
pub fn run(args: &Args) -> anyhow::Result<ExitStatus> {
    if let Some(code) = &args.explain {
        let rule = lint::find_rule(code).with_context(|| {
            let codes: Vec<&str> = lint::RULES.iter().map(|r| r.code).collect();
            format!("--explain `{code}`: no such rule (known: {})", codes.join(", "))
        })?;
        output::print(&format!("{} {} ({}): {}\n\n{}", rule.code, rule.name, rule.severity, rule.summary, rule.explanation))?;
        return Ok(ExitStatus::Success);
    }
    let allowed = args
        .allow
        .iter()
        .map(|c| lint::find_rule(c).with_context(|| format!("--allow `{c}`: no such rule")))
        .collect::<anyhow::Result<Vec<&Rule>>>()?;
    let Some(path) = &args.model else { bail!("no model given") };
    // Cleanup passes only: the findings describe the model as traced, which is what
    // `convert --no-ane` would write and what the ANE passes fix. Built families (Hugging Face
    // folders) are built in the ANE layout already.
    let options = pipeline::Options {
        opset: Opset::Ios16,
        precision: DType::F16,
        ane: false,
        inputs: super::convert::input_specs(&args.inputs, args.example.as_deref())?,
        ..pipeline::Options::default()
    };
    let loading = pipeline::load(path, &options)?;
    let several = loading.packages.len() > 1;
    let mut findings = Vec::new();
    for p in &loading.packages {
        let label = if several { format!("{}/{}", path.display(), p.name) } else { path.display().to_string() };
        match &args.function {
            Some(name) => {
                let names = p.model.functions_to_check(Some(name)).map_err(|m| anyhow::anyhow!("{}: --function: {m}", path.display()))?;
                let one = p.model.select(&names[0]).context("a listed function")?;
                let mut found = lint::check(&one, &label, &allowed);
                // Findings name the function as the package does.
                found.iter_mut().for_each(|f| f.location.function.clone_from(name));
                findings.extend(found);
            }
            None => findings.extend(lint::check(&p.model, &label, &allowed)),
        }
    }
    let text = match args.format {
        LintFormat::Text => render::text::render(&findings),
        LintFormat::Json => output::json(&render::json::render(&findings)),
        LintFormat::Sarif => output::json(&render::sarif::render(&findings, env!("CARGO_PKG_VERSION"))),
    };
    output::print(&text)?;
    let deny = args.deny.severity();
    Ok(if findings.iter().any(|f| f.severity >= deny) { ExitStatus::Failure } else { ExitStatus::Success })
}
