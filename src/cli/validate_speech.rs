//! `torch2coreml validate OUT_DIR (--reference HF_DIR | --against OTHER_DIR) --audio A.wav [B.wav …]`:
//! validates the Whisper packages `convert WHISPER_DIR -o OUT_DIR` writes by transcribing real
//! audio with them (our interpreter, `speech::packages`) and with a reference through the same
//! greedy loop (`speech::greedy`): the source model in PyTorch (`reference::whisper`, cargo
//! feature `torch`), or another folder of Whisper packages in our interpreter (a compressed
//! conversion against the uncompressed one). Reports per file both transcripts and their word
//! error rates (converted vs reference; each vs `--text`), and a drift table of the first
//! window's log-mel features, encoder output and first-step logits. Exit 1 when the corpus WER
//! of converted vs reference exceeds `--max-wer`. Reached from `cli::validate` when its target
//! is a folder holding the three Whisper packages.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context};
use serde_json::json;

use super::output::{self, Format};
use super::progress::Progress;
use super::validate::Args;
use super::ExitStatus;
use torch2coreml::speech::greedy::{self, Backend, Generation, Probe, Transcript};
use torch2coreml::speech::packages::Packages;
use torch2coreml::speech::text::Text;
use torch2coreml::speech::wav;
use torch2coreml::speech::wer::Score;
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

/// Transcribes each of `audio` (named by `paths`) with `backend`, decoded with `dir`'s
/// generation config and tokenizer; `what` names the side in progress and errors.
fn transcribe_all<B: Backend>(backend: &mut B, dir: &Path, what: &str, paths: &[std::path::PathBuf], audio: &[Vec<f32>], progress: &Progress) -> anyhow::Result<Vec<(Transcript, String)>>
where
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let generation = Generation::open(dir)?;
    let text = Text::open(dir)?;
    let mut out = Vec::with_capacity(audio.len());
    for (i, (path, samples)) in paths.iter().zip(audio).enumerate() {
        progress.stage(&format!("{}/{} {}: {what}", i + 1, audio.len(), file_name(path)));
        let t = greedy::transcribe(backend, &generation, samples).with_context(|| format!("{}: {what}", path.display()))?;
        let decoded = text.decode(&t.tokens, generation.eos)?;
        out.push((t, decoded));
    }
    Ok(out)
}

/// Runs speech validation of the package folder `args.package`.
pub fn run(args: &Args) -> anyhow::Result<ExitStatus> {
    let dir = &args.package;
    if args.reference.is_none() && args.against.is_none() {
        bail!("{}: Whisper packages are validated against their source folder (--reference WHISPER_DIR) or another folder of Whisper packages (--against DIR), with --audio FILE.wav", dir.display());
    }
    if let Some(other) = args.against.as_ref().filter(|o| !torch2coreml::speech::packages::is_whisper_dir(o)) {
        bail!("{}: --against for Whisper packages takes a folder of Whisper packages (MelSpectrogram, AudioEncoder, TextDecoder.mlpackage)", other.display());
    }
    #[cfg(not(feature = "torch"))]
    if args.against.is_none() {
        bail!(
            "{}: validating Whisper packages against their source folder transcribes with PyTorch, and this build has no \
             `torch` feature; rebuild with `LIBTORCH_USE_PYTORCH=1 cargo build --features torch` (`make` does this), or compare \
             with another folder of packages (--against DIR)",
            dir.display()
        );
    }
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
    progress.stage("loading packages");
    let mut converted = Packages::open(dir)?;
    let (reference_dir, references) = match (&args.against, &args.reference) {
        (Some(other), _) => {
            let mut packages = Packages::open(other)?;
            (other.clone(), transcribe_all(&mut packages, other, "reference packages", &args.audio, &audio, &progress)?)
        }
        #[cfg(feature = "torch")]
        (None, Some(hf_dir)) => {
            progress.stage("loading the PyTorch reference");
            let mut reference = torch2coreml::reference::whisper::Whisper::open(hf_dir)?;
            (hf_dir.clone(), transcribe_all(&mut reference, hf_dir, "PyTorch", &args.audio, &audio, &progress)?)
        }
        _ => unreachable!("checked above: --against, or --reference with the torch feature"),
    };
    let converted_all = transcribe_all(&mut converted, dir, "converted packages", &args.audio, &audio, &progress)?;
    let results: Vec<FileResult> = args
        .audio
        .iter()
        .zip(references)
        .zip(converted_all)
        .zip(spoken)
        .map(|(((path, reference), converted), spoken)| FileResult { file: path.display().to_string(), reference, converted, spoken })
        .collect();
    progress.finish();
    report(args, &reference_dir, &results)
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
            let side = if args.against.is_some() { "packages" } else { "PyTorch" };
            let mut s = format!("{} vs {} ({side}), greedy, English, no timestamps\n", args.package.display(), hf_dir.display());
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
