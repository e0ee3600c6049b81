//! `torch2coreml validate OUT_DIR --reference HF_DIR --audio A.wav [B.wav …]`: validates the
//! Whisper packages `convert WHISPER_DIR -o OUT_DIR` writes by transcribing real audio with them
//! (our interpreter, `speech::packages`) and with the source model in PyTorch
//! (`reference::whisper`), through the same greedy loop (`speech::greedy`). Reports per file both
//! transcripts and their word error rates (converted vs reference; each vs `--text`), and a drift
//! table of the first window's log-mel features, encoder output and first-step logits. Exit 1
//! when the corpus WER of converted vs reference exceeds `--max-wer`. Reached from
//! `cli::validate` when its target is a folder holding the three Whisper packages.

use anyhow::bail;

use super::validate::Args;
use super::ExitStatus;

/// Runs speech validation; without the `torch` feature there is no reference to run.
#[cfg(not(feature = "torch"))]
pub fn run(args: &Args) -> anyhow::Result<ExitStatus> {
    bail!(
        "{}: validating Whisper packages transcribes with PyTorch as the reference, and this build has no \
         `torch` feature; rebuild with `LIBTORCH_USE_PYTORCH=1 cargo build --features torch` (`make` does this)",
        args.package.display()
    )
}

#[cfg(feature = "torch")]
pub use with_torch::run;

#[cfg(feature = "torch")]
mod with_torch {
    use std::collections::HashMap;
    use std::path::Path;

    use anyhow::Context;
    use serde_json::json;

    use super::super::output::{self, Format};
    use super::super::progress::Progress;
    use super::*;
    use torch2coreml::reference::whisper::Whisper;
    use torch2coreml::speech::greedy::{self, Generation, Probe, Transcript};
    use torch2coreml::speech::packages::Packages;
    use torch2coreml::speech::text::Text;
    use torch2coreml::speech::wer::Score;
    use torch2coreml::speech::wav;
    use torch2coreml::validate::{self, metrics};

    /// Columns of a `--text` file: id, wav file name, spoken text (make_audio.sh's refs.tsv).
    const REFS_COLUMNS: usize = 3;

    /// One audio file's results.
    struct FileResult {
        file: String,
        reference: (Transcript, String),
        converted: (Transcript, String),
        spoken: Option<String>,
    }

    /// Reads `--text`: wav file name → spoken text.
    fn read_refs(path: &Path) -> anyhow::Result<HashMap<String, String>> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
        let mut refs = HashMap::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let cols: Vec<&str> = line.split('\t').collect();
            if cols.len() != REFS_COLUMNS {
                bail!("{}:{}: expected {REFS_COLUMNS} tab-separated columns (id, wav, text), found {}", path.display(), i + 1, cols.len());
            }
            refs.insert(cols[1].to_string(), cols[2].to_string());
        }
        Ok(refs)
    }

    /// The file name of `path`, as `--text` rows name WAV files.
    fn file_name(path: &Path) -> String {
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
    }

    /// Runs speech validation of the package folder `args.package`.
    pub fn run(args: &Args) -> anyhow::Result<ExitStatus> {
        let dir = &args.package;
        let Some(hf_dir) = &args.reference else {
            bail!("{}: Whisper packages are validated against their source folder: give --reference WHISPER_DIR and --audio FILE.wav", dir.display());
        };
        if args.audio.is_empty() {
            bail!("{}: give at least one --audio FILE.wav to transcribe", dir.display());
        }
        // Every input is read and matched before the models load, so bad input fails at once.
        let audio = args.audio.iter().map(|p| wav::read_16k(p)).collect::<Result<Vec<_>, _>>()?;
        let spoken: Vec<Option<String>> = match &args.text {
            Some(tsv) => {
                let refs = read_refs(tsv)?;
                let rows = args.audio.iter().map(|p| refs.get(&file_name(p)).cloned().with_context(|| format!("{}: no row for `{}`", tsv.display(), file_name(p))));
                rows.map(|r| r.map(Some)).collect::<anyhow::Result<_>>()?
            }
            None => vec![None; args.audio.len()],
        };
        let progress = Progress::new();
        progress.stage("loading packages and the PyTorch reference");
        let mut converted = Packages::open(dir)?;
        let converted_gen = Generation::open(dir)?;
        let converted_text = Text::open(dir)?;
        let mut reference = Whisper::open(hf_dir)?;
        let reference_gen = Generation::open(hf_dir)?;
        let reference_text = Text::open(hf_dir)?;

        let mut results = Vec::new();
        for (i, ((path, audio), spoken)) in args.audio.iter().zip(&audio).zip(spoken).enumerate() {
            let name = file_name(path);
            progress.stage(&format!("{}/{} {name}: PyTorch", i + 1, args.audio.len()));
            let r = greedy::transcribe(&mut reference, &reference_gen, audio).with_context(|| format!("{}: reference", path.display()))?;
            let r_text = reference_text.decode(&r.tokens, reference_gen.eos)?;
            progress.stage(&format!("{}/{} {name}: converted packages", i + 1, args.audio.len()));
            let c = greedy::transcribe(&mut converted, &converted_gen, audio).with_context(|| format!("{}: converted packages", path.display()))?;
            let c_text = converted_text.decode(&c.tokens, converted_gen.eos)?;
            results.push(FileResult { file: path.display().to_string(), reference: (r, r_text), converted: (c, c_text), spoken });
        }
        progress.finish();
        report(args, hf_dir, &results)
    }

    /// Drift rows of one file: (stage, reference values, converted values).
    fn stages<'a>(r: &'a Probe, c: &'a Probe) -> [(&'static str, &'a [f32], &'a [f32]); 3] {
        [("mel_features", &r.features, &c.features), ("encoder_output", &r.encoder, &c.encoder), ("first_step_logits", &r.first_logits, &c.first_logits)]
    }

    /// Prints the report and decides the exit status.
    fn report(args: &Args, hf_dir: &Path, results: &[FileResult]) -> anyhow::Result<ExitStatus> {
        let (mut vs_reference, mut ref_vs_text, mut conv_vs_text) = (Score::default(), Score::default(), Score::default());
        let mut files = Vec::new();
        let mut drift = Vec::new();
        for f in results {
            let score = Score::new(&f.reference.1, &f.converted.1);
            vs_reference = vs_reference + score;
            let (rt, ct) = match &f.spoken {
                Some(s) => (Some(Score::new(s, &f.reference.1)), Some(Score::new(s, &f.converted.1))),
                None => (None, None),
            };
            ref_vs_text = ref_vs_text + rt.unwrap_or_default();
            conv_vs_text = conv_vs_text + ct.unwrap_or_default();
            files.push(json!({
                "file": f.file,
                "reference_text": f.reference.1,
                "converted_text": f.converted.1,
                "reference_tokens": f.reference.0.tokens,
                "converted_tokens": f.converted.0.tokens,
                "wer_converted_vs_reference": score.rate(),
                "wer_reference_vs_text": rt.map(|s| s.rate()),
                "wer_converted_vs_text": ct.map(|s| s.rate()),
            }));
            for (stage, r, c) in stages(&f.reference.0.probe, &f.converted.0.probe) {
                let (r, c): (Vec<f64>, Vec<f64>) = (r.iter().map(|&x| f64::from(x)).collect(), c.iter().map(|&x| f64::from(x)).collect());
                if r.len() != c.len() {
                    bail!("{}: {stage} has {} values in the packages but {} in the reference", f.file, c.len(), r.len());
                }
                let d = metrics::compare(&r, &c, validate::FP16_ATOL, validate::FP16_RTOL);
                drift.push(json!({ "file": f.file, "stage": stage, "max_abs": d.max_abs, "cosine": d.cosine, "psnr_db": d.psnr_db }));
            }
        }
        let wer = vs_reference.rate();
        let pass = wer <= args.max_wer;
        let with_text = results.iter().any(|f| f.spoken.is_some());
        let text = match args.format {
            Format::Json => output::json(&json!({
                "files": files,
                "drift": drift,
                "wer_converted_vs_reference": wer,
                "wer_reference_vs_text": with_text.then(|| ref_vs_text.rate()),
                "wer_converted_vs_text": with_text.then(|| conv_vs_text.rate()),
                "max_wer": args.max_wer,
                "pass": pass,
            })),
            Format::Text => {
                let pct = |x: f64| format!("{:.1}%", 100.0 * x);
                let mut s = format!("{} vs {} (PyTorch), greedy, English, no timestamps\n", args.package.display(), hf_dir.display());
                for f in &files {
                    let name = file_name(Path::new(f["file"].as_str().unwrap_or_default()));
                    s += &format!("{name}\n  reference: {}\n  converted: {}\n", f["reference_text"].as_str().unwrap_or_default(), f["converted_text"].as_str().unwrap_or_default());
                    s += &format!("  WER converted vs reference {}", pct(f["wer_converted_vs_reference"].as_f64().unwrap_or_default()));
                    if let (Some(r), Some(c)) = (f["wer_reference_vs_text"].as_f64(), f["wer_converted_vs_text"].as_f64()) {
                        s += &format!(", vs text: reference {}, converted {}", pct(r), pct(c));
                    }
                    s += "\n";
                }
                s += &format!("drift, first window (reference vs converted)\n  {:<28} {:<18} {:>10} {:>9} {:>8}\n", "file", "stage", "max_abs", "cosine", "psnr_db");
                for d in &drift {
                    s += &format!(
                        "  {:<28} {:<18} {:>10.3e} {:>9.6} {:>8.1}\n",
                        file_name(Path::new(d["file"].as_str().unwrap_or_default())),
                        d["stage"].as_str().unwrap_or_default(),
                        d["max_abs"].as_f64().unwrap_or_default(),
                        d["cosine"].as_f64().unwrap_or_default(),
                        d["psnr_db"].as_f64().unwrap_or_default()
                    );
                }
                if with_text {
                    s += &format!("WER vs text: reference {}, converted {}\n", pct(ref_vs_text.rate()), pct(conv_vs_text.rate()));
                }
                let verdict = if pass { "pass" } else { "FAIL" };
                s += &format!("WER converted vs reference: {} over {} words (max {}): {verdict}\n", pct(wer), vs_reference.words, pct(args.max_wer));
                s
            }
        };
        output::print(&text)?;
        Ok(if pass { ExitStatus::Success } else { ExitStatus::Failure })
    }
}
