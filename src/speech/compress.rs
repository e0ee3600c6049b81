//! `convert WHISPER_DIR --compress auto --max-wer W --audio A.wav …`: table sizes per weight of
//! the AudioEncoder and TextDecoder chosen by the task metric, transcripts, rather than by
//! element-wise drift. Each weight's sensitivity is measured alone at 4 bits on calibration
//! inputs (`passes::compress::Ladder`); from the dense packages, weights step to 8-bit tables
//! and then down (6, 4, 2 bits), least sensitive first across both packages, level by level;
//! the longest prefix of those steps whose transcripts of the given audio stay within
//! `max_wer` of the uncompressed packages' is found by bisection, each probe transcribing every
//! file in our interpreter
//! (`speech::greedy`, the loop `validate` uses). Called by `pipeline` before the packages are
//! written.

use std::path::{Path, PathBuf};

use super::greedy::{self, Generation};
use super::packages::{Packages, DECODER_PACKAGE, ENCODER_PACKAGE, MEL_PACKAGE};
use super::text::Text;
use super::wer::Score;
use crate::interp::Array;
use crate::mil::Function;
use crate::passes::compress::{Compressed, Ladder, AUTO_BITS};

/// What the transcripts must keep: `--max-wer` (corpus word error rate against the
/// uncompressed packages' transcripts, 0 = identical words) on `--audio` files.
#[derive(Clone, Debug)]
pub struct WerGate {
    pub max_wer: f64,
    pub audio: Vec<PathBuf>,
}

/// Tokens a compressed candidate may generate per window beyond twice the uncompressed
/// transcript's: a transcript that long already misses the gate, and a broken decoder would
/// otherwise run to the 448-position limit on every probe.
const EXTRA_TOKENS: usize = 10;

/// The result: what each package stored compressed, and the report line.
pub struct Chosen {
    pub encoder: Vec<Compressed>,
    pub decoder: Vec<Compressed>,
    pub summary: String,
}

/// Chooses and applies the tables of `encoder` and `decoder` (the `main` functions about to be
/// written; `mel` runs as is) under `gate`. `calibration` holds each one's inputs for the
/// sensitivity probes; `hf_dir` gives the generation config and tokenizer.
pub fn auto(mel: &Function, encoder: &mut Function, decoder: &mut Function, calibration: [&[(String, Array)]; 2], hf_dir: &Path, gate: &WerGate) -> Result<Chosen, String> {
    let audio = gate.audio.iter().map(|p| super::wav::read_16k(p).map_err(|e| e.to_string())).collect::<Result<Vec<_>, _>>()?;
    let generation = Generation::open(hf_dir).map_err(|e| e.to_string())?;
    let text = Text::open(hf_dir).map_err(|e| e.to_string())?;
    // Transcripts of every file with the given (dense) encoder and decoder.
    let transcribe = |enc: Function, dec: Function, generation: &Generation| -> Result<Vec<(usize, String)>, String> {
        let mut packages = Packages::new((hf_dir.join(MEL_PACKAGE), mel.clone()), (hf_dir.join(ENCODER_PACKAGE), enc), (hf_dir.join(DECODER_PACKAGE), dec)).map_err(|e| e.to_string())?;
        audio
            .iter()
            .map(|a| {
                let t = greedy::transcribe(&mut packages, generation, a).map_err(|e| e.to_string())?;
                Ok((t.tokens.len(), text.decode(&t.tokens, generation.eos).map_err(|e| e.to_string())?))
            })
            .collect()
    };
    let reference = transcribe(encoder.clone(), decoder.clone(), &generation)?;
    let mut capped = generation.clone();
    let longest = reference.iter().map(|r| r.0).max().unwrap_or(0);
    capped.max_length = capped.max_length.min(generation.prompt.len() + 2 * longest + EXTRA_TOKENS);
    let mut ladders = Vec::with_capacity(2);
    for (f, inputs) in [(&*encoder, calibration[0]), (&*decoder, calibration[1])] {
        let outputs = crate::interp::run_from_zero_states(f, inputs).map_err(|e| e.to_string())?;
        ladders.push(Ladder::measure(f, inputs, &outputs)?);
    }
    // Steps from dense: each weight to 8 bits, then per level down, least sensitive weights
    // first, both packages together.
    let mut order: Vec<(usize, usize)> = (0..2).flat_map(|p| (0..ladders[p].len()).map(move |w| (p, w))).collect();
    order.sort_by(|a, b| ladders[b.0].sensitivity[b.1].total_cmp(&ladders[a.0].sensitivity[a.1]));
    let steps: Vec<(usize, usize, usize)> = (0..AUTO_BITS.len()).flat_map(|level| order.iter().map(move |&(p, w)| (p, w, level))).collect();
    let choice = |m: usize| {
        let mut c: Vec<Vec<Option<usize>>> = ladders.iter().map(|l| vec![None; l.len()]).collect();
        for &(p, w, level) in &steps[..m] {
            c[p][w] = Some(level);
        }
        c
    };
    let mut probes = 0;
    let mut wer_of = |m: usize| -> Result<f64, String> {
        probes += 1;
        let c = choice(m);
        let mut fs = [ladders[0].with(encoder, &c[0]), ladders[1].with(decoder, &c[1])];
        for f in &mut fs {
            crate::mil::constexpr::fold(f)?;
        }
        let [enc, dec] = fs;
        let got = transcribe(enc, dec, &capped)?;
        let score = reference.iter().zip(&got).fold(Score::default(), |s, (r, g)| s + Score::new(&r.1, &g.1));
        Ok(score.rate())
    };
    // Bisection for the longest passing prefix: `lo` passes (no steps: the dense packages
    // themselves), `hi` fails (or is past the end).
    let (mut lo, mut hi, mut wer) = (0, steps.len() + 1, 0.0);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        let w = wer_of(mid)?;
        if w <= gate.max_wer {
            (lo, wer) = (mid, w);
        } else {
            hi = mid;
        }
    }
    let c = choice(lo);
    let enc = ladders[0].apply(encoder, &c[0]);
    let dec = ladders[1].apply(decoder, &c[1]);
    let summary = format!(
        "transcripts of {} file(s) at WER {:.1}% against the uncompressed packages (max {:.1}%): {lo} of {} steps (each weight to 8 bits, then down) taken, {probes} transcription rounds",
        audio.len(),
        100.0 * wer,
        100.0 * gate.max_wer,
        steps.len()
    );
    Ok(Chosen { encoder: enc, decoder: dec, summary })
}
