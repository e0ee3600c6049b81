//! `torch2coreml lint-ane MODEL.pt|PACKAGE`: reads a traced TorchScript file (lowered to MIL as
//! `convert` would, fp16, iOS16) or any `.mlpackage` (ours or third-party), runs the ANE lint
//! rules (`torch2coreml::lint::RULES`), prints the findings as text, JSON or SARIF 2.1.0, and
//! exits 1 when a finding is at or above `--deny` (default: error), 0 otherwise, 2 on bad input.
//! `--explain CODE` prints one rule's explanation instead.

use std::path::PathBuf;

use anyhow::{bail, Context};

use super::convert::parse_input;
use super::output;
use super::ExitStatus;
use torch2coreml::lint::{self, render, Rule, Severity};
use torch2coreml::mil::{DType, Opset, Program};
use torch2coreml::package;
use torch2coreml::passes;
use torch2coreml::torchscript::{self, graph};
use torch2coreml::validate::npz;

/// Arguments of `lint-ane`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A traced TorchScript file (.pt) or a Core ML package (.mlpackage).
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
    let program = read(path, args)?;
    let findings = lint::check(&program, &path.display().to_string(), &allowed);
    let text = match args.format {
        LintFormat::Text => render::text::render(&findings),
        LintFormat::Json => output::json(&render::json::render(&findings)),
        LintFormat::Sarif => output::json(&render::sarif::render(&findings, env!("CARGO_PKG_VERSION"))),
    };
    output::print(&text)?;
    let deny = args.deny.severity();
    Ok(if findings.iter().any(|f| f.severity >= deny) { ExitStatus::Failure } else { ExitStatus::Success })
}

/// Reads `path` as a package (a directory) or a TorchScript file lowered like `convert` does.
fn read(path: &std::path::Path, args: &Args) -> anyhow::Result<Program> {
    if !path.exists() {
        bail!("{}: no such file or directory", path.display());
    }
    if path.is_dir() {
        if !args.inputs.is_empty() || args.example.is_some() {
            bail!("{}: --input and --example apply to .pt files only; a package has its own input shapes", path.display());
        }
        return Ok(package::read(path)?.program);
    }
    let inputs = match &args.example {
        Some(npz) => npz::read(npz)?.into_iter().map(|(name, t)| graph::InputSpec { name: Some(name), ty: t.tensor_type() }).collect(),
        None => args.inputs.iter().map(|s| parse_input(s)).collect::<anyhow::Result<Vec<_>>>()?,
    };
    if inputs.is_empty() {
        bail!("{}: a TorchScript model needs its input shapes: --input NAME:DIMS:DTYPE or --example INPUTS.npz", path.display());
    }
    let archive = torchscript::read(path)?;
    let mut main = graph::to_mil(&archive, &inputs, &graph::Options { opset: Opset::Ios16, precision: DType::F16 })?;
    // Cleanup only: the findings describe the model as traced, which is what `convert --no-ane`
    // would write and what the ANE passes fix.
    passes::run(&mut main, false)?;
    Ok(Program::with_main(main))
}
