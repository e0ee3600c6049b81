//! Times Whisper transcription by converted packages in the MIL interpreter: reads a WAV, runs
//! the greedy loop (`speech::greedy::transcribe`) over `speech::packages::Packages` with each
//! backend call timed, and prints one JSON line: `{"audio_s", "tokens", "mel_s", "encoder_s",
//! "decode_s", "total_s", "ms_per_token", "load_s", "threads", "text"}` (seconds; `load_s` is reading the
//! three packages, which `total_s` excludes; `decode_s` covers every decoder step, prompt
//! included; `ms_per_token` divides it by the generated tokens plus the prompt; `threads` is what
//! the kernels may use, `numeric::par::threads`). Called by
//! `bench/speech_bench.py` (`make bench`); build with `cargo build --release --example bench_speech`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde_json::json;
use torch2coreml::speech::greedy::{self, Backend, Generation};
use torch2coreml::speech::packages::Packages;
use torch2coreml::speech::text::Text;
use torch2coreml::speech::{wav, SAMPLE_RATE};

/// Arguments: the package folder and the audio.
#[derive(Parser, Debug)]
#[command(name = "bench_speech", about = "Wall time of Whisper packages transcribing a WAV in the MIL interpreter")]
struct Args {
    /// Folder with MelSpectrogram/AudioEncoder/TextDecoder.mlpackage, tokenizer.json and the configs.
    packages: PathBuf,
    /// The WAV file to transcribe.
    audio: PathBuf,
}

/// A backend that adds up the wall time spent in each of its calls.
struct Timed<B> {
    inner: B,
    features: Duration,
    encode: Duration,
    logits: Duration,
    steps: usize,
}

impl<B: Backend> Backend for Timed<B> {
    type Error = B::Error;
    fn features(&mut self, window: &[f32]) -> Result<Vec<f32>, B::Error> {
        let t = Instant::now();
        let out = self.inner.features(window);
        self.features += t.elapsed();
        out
    }
    fn encode(&mut self, features: &[f32]) -> Result<Vec<f32>, B::Error> {
        let t = Instant::now();
        let out = self.inner.encode(features);
        self.encode += t.elapsed();
        out
    }
    fn logits(&mut self, token: u32, position: usize) -> Result<Vec<f32>, B::Error> {
        let t = Instant::now();
        let out = self.inner.logits(token, position);
        self.logits += t.elapsed();
        self.steps += 1;
        out
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let audio = wav::read_16k(&args.audio)?;
    let t0 = Instant::now();
    let packages = Packages::open(&args.packages)?;
    let load_s = t0.elapsed().as_secs_f64();
    let generation = Generation::open(&args.packages)?;
    let text = Text::open(&args.packages)?;
    let mut timed = Timed { inner: packages, features: Duration::ZERO, encode: Duration::ZERO, logits: Duration::ZERO, steps: 0 };
    let t1 = Instant::now();
    let transcript = greedy::transcribe(&mut timed, &generation, &audio).with_context(|| format!("{}", args.packages.display()))?;
    let total_s = t1.elapsed().as_secs_f64();
    let decode_s = timed.logits.as_secs_f64();
    let line = json!({
        "audio_s": audio.len() as f64 / f64::from(SAMPLE_RATE),
        "tokens": transcript.tokens.len(),
        "mel_s": timed.features.as_secs_f64(),
        "encoder_s": timed.encode.as_secs_f64(),
        "decode_s": decode_s,
        "total_s": total_s,
        "ms_per_token": 1000.0 * decode_s / timed.steps.max(1) as f64,
        "load_s": load_s,
        "threads": torch2coreml::numeric::par::threads(),
        "text": text.decode(&transcript.tokens, generation.eos)?,
    });
    println!("{line}");
    Ok(())
}
