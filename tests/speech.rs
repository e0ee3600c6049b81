//! Speech validation (issue 8) on the Whisper test bed `make setup` builds
//! (`fixtures/whisper/`): real tiny.en weights (`$T2C_WHISPER_DIR`), espeak/flite and
//! one human recording (`$T2C_WHISPER_AUDIO`, with `refs.tsv`), and beside the audio folder what
//! transformers computed: `results.json` (run_testbed.py --json: greedy tokens and jiwer WER per
//! file) and `probes.npz` (fixtures/whisper/make.py: features, encoder output, first logits).
//! WAV/resample and WER checks run on real files; the PyTorch reference (`reference::whisper`,
//! feature `torch`) must give transformers' greedy tokens exactly.

use std::path::{Path, PathBuf};

use serde_json::Value;
use torch2coreml::speech::{resample, wav, wer::Score};

fn cache_path(var: &str, default: &str) -> PathBuf {
    let dir = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| Path::new(&std::env::var_os("HOME").unwrap_or_default()).join(".cache/torch2coreml/whisper").join(default));
    assert!(dir.exists(), "{} is missing: run `make setup` (make test does)", dir.display());
    dir
}

fn audio_dir() -> PathBuf {
    cache_path("T2C_WHISPER_AUDIO", "audio")
}

/// run_testbed.py's rows: id, ref, hyp, wer, hf_tokens.
fn testbed_rows() -> Vec<Value> {
    let path = audio_dir().parent().unwrap().join("results.json");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}; run `make setup`", path.display()))).unwrap();
    json["rows"].as_array().unwrap().clone()
}

/// Signal-to-noise ratio of `got` against `want`, in dB.
fn snr_db(want: &[f32], got: &[f32]) -> f64 {
    let (mut signal, mut noise) = (0f64, 0f64);
    for (&w, &g) in want.iter().zip(got) {
        signal += f64::from(w).powi(2);
        noise += f64::from(w - g).powi(2);
    }
    10.0 * (signal / noise.max(1e-30)).log10()
}

#[test]
#[ignore = "needs the Whisper test bed from `make setup`; `make test` runs it"]
fn test_bed_wavs_read_as_16k_mono_and_survive_other_formats() {
    let audio = audio_dir();
    let rows = testbed_rows();
    assert!(rows.len() >= 3);
    for row in &rows {
        let path = audio.join(format!("{}.wav", row["id"].as_str().unwrap()));
        let a = wav::read(&path).unwrap();
        assert_eq!(a.sample_rate, 16_000, "{}", path.display());
        assert!((a.samples.len() as f64 / 16_000.0 - row["seconds"].as_f64().unwrap()).abs() < 0.01, "{}", path.display());
    }
    // The real recording written as 44.1 kHz stereo 24-bit (resampled by us), then read back and
    // brought to 16 kHz, must match the original closely; speech sits well inside the passband.
    let original = wav::read_16k(&audio.join("real_arctic_a0007.wav")).unwrap();
    let up = resample::resample(&original, 16_000, 44_100);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stereo24.wav");
    let spec = hound::WavSpec { channels: 2, sample_rate: 44_100, bits_per_sample: 24, sample_format: hound::SampleFormat::Int };
    let mut w = hound::WavWriter::create(&path, spec).unwrap();
    for &x in &up {
        let s = (f64::from(x) * f64::from(1 << 23)).round() as i32;
        w.write_sample(s).unwrap();
        w.write_sample(s).unwrap();
    }
    w.finalize().unwrap();
    let back = wav::read_16k(&path).unwrap();
    assert_eq!(back.len(), original.len());
    let snr = snr_db(&original, &back);
    assert!(snr > 30.0, "round trip through 44.1 kHz stereo 24-bit: SNR {snr:.1} dB");
}

#[test]
#[ignore = "needs the Whisper test bed from `make setup`; `make test` runs it"]
fn wer_matches_jiwer_on_the_test_bed() {
    let rows = testbed_rows();
    let mut corpus = Score::default();
    for row in &rows {
        let s = Score::new(row["ref"].as_str().unwrap(), row["hyp"].as_str().unwrap());
        assert!((s.rate() - row["wer"].as_f64().unwrap()).abs() < 1e-12, "{}: ours {} jiwer {}", row["id"], s.rate(), row["wer"]);
        corpus = corpus + s;
    }
    let path = audio_dir().parent().unwrap().join("results.json");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!((corpus.rate() - json["corpus_wer"]["ALL"].as_f64().unwrap()).abs() < 1e-12);
}

#[cfg(feature = "torch")]
mod torch {
    use super::*;
    use std::process::Command;
    use torch2coreml::reference::whisper::Whisper;
    use torch2coreml::speech::greedy::{self, Backend, Generation};
    use torch2coreml::speech::text::Text;
    use torch2coreml::speech::{windows, WINDOW_SAMPLES};
    use torch2coreml::validate::{metrics, npz};

    /// How far our tch log-mel may be from WhisperFeatureExtractor's: the same torch ops and the
    /// filter bank computed in f64 by both, then rounded to f32 (bit-identical when written).
    const FEATURES_ATOL: f64 = 1e-6;
    /// How far tch's encoder output and first logits may be from transformers' (same libtorch,
    /// fp32; attention through sdpa there, matmul + softmax here: 8e-5 seen on the encoder).
    const MODEL_ATOL: f64 = 5e-4;

    fn whisper_dir() -> PathBuf {
        cache_path("T2C_WHISPER_DIR", "whisper-tiny.en")
    }

    fn probes() -> Vec<(String, Vec<f64>)> {
        let path = audio_dir().parent().unwrap().join("probes.npz");
        npz::read(&path)
            .unwrap_or_else(|e| panic!("{e}; run `make setup`"))
            .into_iter()
            .map(|(n, t)| (n, torch2coreml::interp::Array::from_tensor(&t).unwrap().to_f32_vec().unwrap().into_iter().map(f64::from).collect()))
            .collect()
    }

    fn probe(all: &[(String, Vec<f64>)], name: &str) -> Vec<f64> {
        all.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("probes.npz has no `{name}`")).1.clone()
    }

    fn f64s(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&x| f64::from(x)).collect()
    }

    #[test]
    #[ignore = "needs the Whisper test bed from `make setup`; `make test` runs it"]
    fn tch_log_mel_encoder_and_first_logits_match_transformers() {
        let mut model = Whisper::open(&whisper_dir()).unwrap();
        let generation = Generation::open(&whisper_dir()).unwrap();
        let all = probes();
        for id in ["espeak_harvard01", "flite_long01", "real_arctic_a0007"] {
            let audio = wav::read_16k(&audio_dir().join(format!("{id}.wav"))).unwrap();
            let window = &windows(&audio)[0];
            assert_eq!(window.len(), WINDOW_SAMPLES);
            let features = model.features(window).unwrap();
            let d = metrics::compare(&probe(&all, &format!("features_{id}")), &f64s(&features), FEATURES_ATOL, 0.0);
            assert!(d.pass, "{id} log-mel: {d:?}");
            // Encoder on transformers' own features, so each stage is checked on its own.
            let encoder = model.encode(&probe(&all, &format!("features_{id}")).iter().map(|&x| x as f32).collect::<Vec<_>>()).unwrap();
            let want = probe(&all, &format!("encoder_{id}"));
            let d_model = encoder.len() / 1500;
            // transformers: (1, 1500, d); ours channel-major (d, 1500).
            let ours: Vec<f64> = (0..1500).flat_map(|s| (0..d_model).map(move |c| (s, c))).map(|(s, c)| f64::from(encoder[c * 1500 + s])).collect();
            let d = metrics::compare(&want, &ours, MODEL_ATOL, 0.0);
            assert!(d.pass, "{id} encoder: {d:?}");
            let mut logits = Vec::new();
            for (position, &t) in generation.prompt.iter().enumerate() {
                logits = model.logits(t, position).unwrap();
            }
            let d = metrics::compare(&probe(&all, &format!("logits_{id}")), &f64s(&logits), MODEL_ATOL, 0.0);
            assert!(d.pass, "{id} first logits: {d:?}");
        }
    }

    #[test]
    #[ignore = "needs the Whisper test bed from `make setup`; `make test` runs it"]
    fn tch_greedy_tokens_equal_transformers_generate_on_the_test_bed() {
        let dir = whisper_dir();
        let mut model = Whisper::open(&dir).unwrap();
        let generation = Generation::open(&dir).unwrap();
        let text = Text::open(&dir).unwrap();
        let mut mismatches = Vec::new();
        for row in testbed_rows() {
            let id = row["id"].as_str().unwrap();
            let audio = wav::read_16k(&audio_dir().join(format!("{id}.wav"))).unwrap();
            let t = greedy::transcribe(&mut model, &generation, &audio).unwrap();
            let want: Vec<u32> = row["hf_tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            if t.tokens != want {
                mismatches.push(format!("{id}: ours {:?}\n  transformers {want:?}", t.tokens));
            }
            assert_eq!(text.decode(&t.tokens, generation.eos).unwrap(), row["hyp"].as_str().unwrap(), "{id}");
        }
        assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    }

    /// End to end, as a user runs it: `convert WHISPER_DIR` (safetensors, fp16, ANE layout) then
    /// `validate OUT_DIR --reference WHISPER_DIR --audio …`: the real recording and an espeak
    /// file transcribe with transformers' exact greedy tokens, and WER(converted vs PyTorch) is 0.
    #[test]
    #[ignore = "needs the Whisper test bed from `make setup`; `make test` runs it"]
    fn validate_transcribes_converted_packages_with_the_reference_tokens() {
        let out = tempfile::tempdir().unwrap();
        let out = out.path().join("whisper");
        let o = bin().arg("convert").arg(whisper_dir()).arg("-o").arg(&out).output().unwrap();
        assert!(o.status.success(), "convert: {}", String::from_utf8_lossy(&o.stderr));
        let ids = ["real_arctic_a0007", "espeak_harvard05"];
        let refs = audio_dir().join("refs.tsv");
        let o = validate(&out, &whisper_dir(), &ids, &["--text", refs.to_str().unwrap(), "--format", "json"]);
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        let report: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!((report["pass"].as_bool(), report["wer_converted_vs_reference"].as_f64()), (Some(true), Some(0.0)));
        let rows = testbed_rows();
        for (id, file) in ids.iter().zip(report["files"].as_array().unwrap()) {
            let row = rows.iter().find(|r| r["id"] == *id).unwrap();
            assert_eq!(file["reference_tokens"], row["hf_tokens"], "{id}");
            assert_eq!(file["converted_tokens"], row["hf_tokens"], "{id}");
            assert!((file["wer_reference_vs_text"].as_f64().unwrap() - row["wer"].as_f64().unwrap()).abs() < 1e-12, "{id}");
        }
        let drift = report["drift"].as_array().unwrap();
        assert_eq!(drift.len(), 3 * ids.len());
        assert!(drift.iter().all(|d| d["cosine"].as_f64().unwrap() > 0.9999), "{drift:?}");

        // A reference that may not use any token of the recording's transcript says something
        // else: WER above --max-wer, exit 1, `pass` false.
        let tokens = rows.iter().find(|r| r["id"] == ids[0]).unwrap()["hf_tokens"].as_array().unwrap().clone();
        let other = tempfile::tempdir().unwrap();
        for file in ["config.json", "tokenizer.json", "model.safetensors"] {
            std::os::unix::fs::symlink(whisper_dir().join(file), other.path().join(file)).unwrap();
        }
        let mut gen: Value = serde_json::from_str(&std::fs::read_to_string(whisper_dir().join("generation_config.json")).unwrap()).unwrap();
        gen["suppress_tokens"].as_array_mut().unwrap().extend(tokens);
        std::fs::write(other.path().join("generation_config.json"), gen.to_string()).unwrap();
        let o = validate(&out, other.path(), &ids[..1], &["--max-wer", "0.05", "--format", "json"]);
        assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
        let report: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(report["pass"], false);
        assert!(report["wer_converted_vs_reference"].as_f64().unwrap() > 0.05, "{report}");
    }

    /// Issue 8, iOS18: `convert --target iOS18` (TextDecoder KV cache in Core ML states) then
    /// `validate`: the real recording transcribes with transformers' exact greedy tokens.
    #[test]
    #[ignore = "needs the Whisper test bed from `make setup`; `make test` runs it"]
    fn validate_transcribes_ios18_stateful_packages_with_the_reference_tokens() {
        let out = tempfile::tempdir().unwrap();
        let out = out.path().join("whisper");
        let o = bin().arg("convert").arg(whisper_dir()).arg("-o").arg(&out).args(["--target", "iOS18"]).output().unwrap();
        assert!(o.status.success(), "convert: {}", String::from_utf8_lossy(&o.stderr));
        let id = "real_arctic_a0007";
        let o = validate(&out, &whisper_dir(), &[id], &["--format", "json"]);
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        let report: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!((report["pass"].as_bool(), report["wer_converted_vs_reference"].as_f64()), (Some(true), Some(0.0)));
        let rows = testbed_rows();
        let row = rows.iter().find(|r| r["id"] == id).unwrap();
        assert_eq!(report["files"][0]["converted_tokens"], row["hf_tokens"]);
    }

    /// Audio longer than one window: the real recording padded to exactly 30 s, then an espeak
    /// file. Each window is then the same input transformers saw for that file alone, so the
    /// tokens are the two files' `generate` tokens in order.
    #[test]
    #[ignore = "needs the Whisper test bed from `make setup`; `make test` runs it"]
    fn long_audio_is_decoded_window_by_window() {
        let dir = whisper_dir();
        let mut model = Whisper::open(&dir).unwrap();
        let generation = Generation::open(&dir).unwrap();
        let ids = ["real_arctic_a0007", "espeak_harvard02"];
        let mut audio = wav::read_16k(&audio_dir().join(format!("{}.wav", ids[0]))).unwrap();
        audio.resize(WINDOW_SAMPLES, 0.0);
        audio.extend(wav::read_16k(&audio_dir().join(format!("{}.wav", ids[1]))).unwrap());
        let rows = testbed_rows();
        let want: Vec<u32> = ids
            .iter()
            .flat_map(|id| rows.iter().find(|r| r["id"] == *id).unwrap()["hf_tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32))
            .collect();
        assert_eq!(greedy::transcribe(&mut model, &generation, &audio).unwrap().tokens, want);
    }

    fn bin() -> Command {
        Command::new(env!("CARGO_BIN_EXE_torch2coreml"))
    }

    /// `validate OUT --reference REFERENCE --audio <test-bed file per id> EXTRA…`.
    fn validate(out: &Path, reference: &Path, ids: &[&str], extra: &[&str]) -> std::process::Output {
        let wavs = ids.iter().map(|id| audio_dir().join(format!("{id}.wav")));
        bin().arg("validate").arg(out).arg("--reference").arg(reference).arg("--audio").args(wavs).args(extra).output().unwrap()
    }

    /// A folder that looks like `convert WHISPER_DIR`'s output by name only.
    fn fake_package_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for p in ["MelSpectrogram.mlpackage", "AudioEncoder.mlpackage", "TextDecoder.mlpackage"] {
            std::fs::create_dir(dir.path().join(p)).unwrap();
        }
        dir
    }

    #[test]
    fn a_missing_wav_is_one_error_line_and_exit_2() {
        let dir = fake_package_dir();
        let missing = dir.path().join("nothing.wav");
        let out = bin().arg("validate").arg(dir.path()).arg("--reference").arg(dir.path()).arg("--audio").arg(&missing).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(&format!("{}: no such file", missing.display())), "{stderr}");
    }

    #[test]
    fn a_corrupt_wav_and_broken_packages_are_one_error_line_and_exit_2() {
        let dir = fake_package_dir();
        let junk = dir.path().join("junk.wav");
        std::fs::write(&junk, b"RIFF\x10\x00\x00\x00WAVEfmt ").unwrap();
        let out = bin().arg("validate").arg(dir.path()).arg("--reference").arg(dir.path()).arg("--audio").arg(&junk).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!((out.status.code(), stderr.trim().lines().count()), (Some(2), 1), "{stderr}");
        assert!(stderr.contains(&junk.display().to_string()), "{stderr}");
        // A good WAV reaches the package loader, which names the broken package.
        let good = dir.path().join("good.wav");
        let spec = hound::WavSpec { channels: 1, sample_rate: 16_000, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
        let mut w = hound::WavWriter::create(&good, spec).unwrap();
        for i in 0..1600 {
            w.write_sample((i % 100) as i16).unwrap();
        }
        w.finalize().unwrap();
        let out = bin().arg("validate").arg(dir.path()).arg("--reference").arg(dir.path()).arg("--audio").arg(&good).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!((out.status.code(), stderr.trim().lines().count()), (Some(2), 1), "{stderr}");
        assert!(stderr.contains("TextDecoder.mlpackage") && stderr.contains("Manifest.json"), "{stderr}");
    }
}
