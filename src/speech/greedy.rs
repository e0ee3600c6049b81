//! The one greedy decoder loop for Whisper, written once and driven by two backends: the
//! converted packages in our interpreter ([`Packages`](super::packages::Packages)) and PyTorch
//! (`reference::whisper`). It reproduces transformers' `WhisperForConditionalGeneration.generate`
//! with `num_beams=1, do_sample=False, return_timestamps=False` on one 30 s window
//! (transformers 5.23 `models/whisper/generation_whisper.py`):
//!
//! - prompt (`_retrieve_init_tokens`): `decoder_start_token_id`; then the `forced_decoder_ids`
//!   of the generation config, if any; for a multilingual model (`lang_to_id` present) the
//!   `<|en|>` and `transcribe` tokens, as `generate(language="en")`; then `no_timestamps_token_id`;
//! - `SuppressTokensLogitsProcessor`: the `suppress_tokens` get −∞ at every step;
//! - `SuppressTokensAtBeginLogitsProcessor`: the `begin_suppress_tokens` get −∞ at the first
//!   generated position only (`begin_index` = prompt length);
//! - the next token is the argmax (first maximum); decoding stops after `eos_token_id` or when the
//!   sequence, prompt included, reaches `max_length` (`_set_max_new_tokens_and_length`:
//!   `min(max_length + prompt length, max_target_positions)`).
//!
//! The tokens returned exclude the prompt and the end-of-text token, as `generate` returns them.
//! Audio longer than 30 s is cut into windows ([`windows`](super::windows)) decoded one by one,
//! tokens concatenated (not transformers' long-form timestamp algorithm). Called by
//! `cli::validate_speech` and by tests.

use std::path::Path;

use serde_json::Value;

use super::{windows, Error};

/// The generation config written beside the model.
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";
/// The model config; gives `max_target_positions`.
pub const CONFIG_FILE: &str = "config.json";
/// Largest `generation_config.json` or `config.json` read: Whisper's are 2–4 KB (the generation
/// config lists its suppressed tokens and alignment heads); 1 MiB is hundreds of times that.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Token transformers prepends for English with a multilingual model (`generate(language="en")`).
const ENGLISH_TOKEN: &str = "<|en|>";
/// Task token key for plain transcription in `task_to_id`.
const TRANSCRIBE_TASK: &str = "transcribe";

/// What steers greedy decoding, read from `generation_config.json` and `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// Tokens fed before the first generated one.
    pub prompt: Vec<u32>,
    /// End of text: decoding stops when it is chosen; ids from it up are not text.
    pub eos: u32,
    /// Never generated (`suppress_tokens`).
    pub suppress: Vec<u32>,
    /// Not generated as the first token (`begin_suppress_tokens`).
    pub begin_suppress: Vec<u32>,
    /// Longest sequence, prompt included; also the decoder's position limit.
    pub max_length: usize,
}

impl Generation {
    /// Reads `dir/generation_config.json` and `dir/config.json` (a Hugging Face folder, or the
    /// folder `convert` writes the Whisper packages into).
    pub fn open(dir: &Path) -> Result<Generation, Error> {
        let read = |name: &str| -> Result<(std::path::PathBuf, Value), Error> {
            let path = dir.join(name);
            let text = crate::files::read_text_capped(&path, MAX_CONFIG_BYTES)?;
            let value = serde_json::from_str(&text).map_err(|e| Error::file(&path, format!("not valid JSON: {e}")))?;
            Ok((path, value))
        };
        let (gen_path, gen) = read(GENERATION_CONFIG_FILE)?;
        let (config_path, config) = read(CONFIG_FILE)?;
        let id = |key: &str| -> Result<u32, Error> {
            gen.get(key).and_then(Value::as_u64).and_then(|v| u32::try_from(v).ok()).ok_or_else(|| Error::file(&gen_path, format!("`{key}` is missing or not a token id")))
        };
        let ids = |key: &str| -> Result<Vec<u32>, Error> {
            match gen.get(key) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| v.as_u64().and_then(|v| u32::try_from(v).ok()).ok_or_else(|| Error::file(&gen_path, format!("`{key}` holds a non-id {}", crate::files::shown(&v.to_string())))))
                    .collect(),
                Some(other) => Err(Error::file(&gen_path, format!("`{key}` is {}, not a list of token ids", crate::files::shown(&other.to_string())))),
            }
        };
        let mut prompt = vec![id("decoder_start_token_id")?];
        if let Some(Value::Array(forced)) = gen.get("forced_decoder_ids") {
            for pair in forced {
                if let Some(t) = pair.get(1).and_then(Value::as_u64).and_then(|v| u32::try_from(v).ok()) {
                    prompt.push(t);
                }
            }
        }
        if let (Some(langs), Some(tasks)) = (gen.get("lang_to_id"), gen.get("task_to_id")) {
            for (map, key) in [(langs, ENGLISH_TOKEN), (tasks, TRANSCRIBE_TASK)] {
                let t = map.get(key).and_then(Value::as_u64).and_then(|v| u32::try_from(v).ok());
                let t = t.ok_or_else(|| Error::file(&gen_path, format!("multilingual model without a `{key}` token id")))?;
                if !prompt.contains(&t) {
                    prompt.push(t);
                }
            }
        }
        let no_timestamps = id("no_timestamps_token_id")?;
        if prompt.last() != Some(&no_timestamps) {
            prompt.push(no_timestamps);
        }
        let positions = config
            .get("max_target_positions")
            .and_then(Value::as_u64)
            .ok_or_else(|| Error::file(&config_path, "`max_target_positions` is missing"))?;
        let positions = usize::try_from(positions).unwrap_or(usize::MAX);
        let max_length = gen
            .get("max_length")
            .and_then(Value::as_u64)
            .map_or(positions, |m| usize::try_from(m).unwrap_or(usize::MAX).saturating_add(prompt.len()).min(positions));
        if max_length <= prompt.len() {
            return Err(Error::file(&config_path, format!("`max_target_positions` {positions} leaves no room after a {}-token prompt", prompt.len())));
        }
        Ok(Generation { prompt, eos: id("eos_token_id")?, suppress: ids("suppress_tokens")?, begin_suppress: ids("begin_suppress_tokens")?, max_length })
    }
}

/// One way of running Whisper: features, encoder, then one decoder step at a time. The loop in
/// [`transcribe`] calls `features` and `encode` once per 30 s window, then `logits` for each
/// token in order from position 0; a call at position 0 starts a new sequence (clears the
/// self-attention cache).
pub trait Backend {
    /// What a failed step reports (package or libtorch trouble).
    type Error;
    /// Log-mel features of one window of [`WINDOW_SAMPLES`](super::WINDOW_SAMPLES) samples,
    /// (80, 3000) row-major (mel bin, frame).
    fn features(&mut self, window: &[f32]) -> Result<Vec<f32>, Self::Error>;
    /// Runs the encoder on `features` and keeps what the decoder attends to. Returns the encoder
    /// output channel-major, (d_model, 1500): the packages' (1, C, 1, S) layout.
    fn encode(&mut self, features: &[f32]) -> Result<Vec<f32>, Self::Error>;
    /// Feeds `token` at `position` and returns the next-token logits (vocabulary size).
    fn logits(&mut self, token: u32, position: usize) -> Result<Vec<f32>, Self::Error>;
}

/// What the first window looked like inside the model, for the drift table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Probe {
    /// Log-mel features, (80, 3000).
    pub features: Vec<f32>,
    /// Encoder output, (d_model, 1500).
    pub encoder: Vec<f32>,
    /// Logits after the whole prompt: the scores of the first generated token (before suppression).
    pub first_logits: Vec<f32>,
}

/// A transcription: generated tokens of every window, and the first window's probe.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Transcript {
    /// Generated tokens of all windows in order, without prompts or end-of-text tokens.
    pub tokens: Vec<u32>,
    /// The first window's intermediate values.
    pub probe: Probe,
}

/// Transcribes `audio` (16 kHz mono) greedily with `backend`, window by window.
pub fn transcribe<B: Backend>(backend: &mut B, generation: &Generation, audio: &[f32]) -> Result<Transcript, B::Error> {
    let mut out = Transcript::default();
    for (w, window) in windows(audio).iter().enumerate() {
        let features = backend.features(window)?;
        let encoder = backend.encode(&features)?;
        let mut logits = Vec::new();
        for (position, &t) in generation.prompt.iter().enumerate() {
            logits = backend.logits(t, position)?;
        }
        if w == 0 {
            out.probe = Probe { features, encoder, first_logits: logits.clone() };
        }
        let mut length = generation.prompt.len();
        while length < generation.max_length {
            let token = next_token(&mut logits, generation, length == generation.prompt.len());
            if token == generation.eos {
                break;
            }
            out.tokens.push(token);
            length += 1;
            if length < generation.max_length {
                logits = backend.logits(token, length - 1)?;
            }
        }
    }
    Ok(out)
}

/// Applies the suppression rules to `logits` and returns the greedy choice (first maximum, as
/// `torch.argmax`). `first` marks the first generated position.
fn next_token(logits: &mut [f32], generation: &Generation, first: bool) -> u32 {
    let rules = if first { [&generation.suppress, &generation.begin_suppress] } else { [&generation.suppress, &Vec::new()] };
    for list in rules {
        for &t in list.iter() {
            if let Some(x) = logits.get_mut(t as usize) {
                *x = f32::NEG_INFINITY;
            }
        }
    }
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend whose logits favour a scripted token per fed position; every other token
    /// scores lower the higher its id, so token 0 is always the runner-up.
    struct Scripted {
        favourite: Vec<u32>,
        fed: Vec<(u32, usize)>,
    }

    /// Vocabulary of the scripted backend.
    const VOCAB: usize = 10;

    impl Backend for Scripted {
        type Error = ();
        fn features(&mut self, window: &[f32]) -> Result<Vec<f32>, ()> {
            Ok(window[..2].to_vec())
        }
        fn encode(&mut self, features: &[f32]) -> Result<Vec<f32>, ()> {
            Ok(features.to_vec())
        }
        fn logits(&mut self, token: u32, position: usize) -> Result<Vec<f32>, ()> {
            self.fed.push((token, position));
            let mut l: Vec<f32> = (0..VOCAB).map(|i| -(i as f32) * 0.01).collect();
            if let Some(&f) = self.favourite.get(position) {
                l[f as usize] = 10.0;
            }
            Ok(l)
        }
    }

    fn generation(max_length: usize) -> Generation {
        Generation { prompt: vec![7, 8], eos: 9, suppress: vec![5], begin_suppress: vec![3], max_length }
    }

    fn run(favourite: Vec<u32>, max_length: usize) -> (Vec<u32>, Vec<(u32, usize)>) {
        let mut b = Scripted { favourite, fed: Vec::new() };
        let t = transcribe(&mut b, &generation(max_length), &[0.0; 10]).unwrap();
        (t.tokens, b.fed)
    }

    #[test]
    fn prompt_is_fed_then_greedy_tokens_until_end_of_text() {
        let (tokens, fed) = run(vec![0, 4, 2, 9], 448);
        assert_eq!(tokens, vec![4, 2]);
        assert_eq!(fed, vec![(7, 0), (8, 1), (4, 2), (2, 3)]);
    }

    #[test]
    fn suppressed_tokens_never_win_and_begin_suppressed_only_lose_first() {
        // Position 1's favourite 3 is begin-suppressed (runner-up 0 wins); 5 is always
        // suppressed; 3 wins later; 9 ends.
        let (tokens, _) = run(vec![0, 3, 5, 3, 9], 448);
        assert_eq!(tokens, vec![0, 0, 3]);
    }

    #[test]
    fn max_length_counts_the_prompt() {
        let (tokens, fed) = run(vec![1; 8], 5);
        assert_eq!(tokens, vec![1, 1, 1]);
        assert_eq!(fed.last(), Some(&(1, 3)), "the last token is never fed: no position is left");
    }

    #[test]
    fn english_only_prompt_and_limits_come_from_the_configs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), r#"{"max_target_positions": 448}"#).unwrap();
        std::fs::write(
            dir.path().join(GENERATION_CONFIG_FILE),
            r#"{"decoder_start_token_id": 50257, "no_timestamps_token_id": 50362, "eos_token_id": 50256,
               "suppress_tokens": [1, 2], "begin_suppress_tokens": [220, 50256], "max_length": 448}"#,
        )
        .unwrap();
        let g = Generation::open(dir.path()).unwrap();
        assert_eq!(g, Generation { prompt: vec![50257, 50362], eos: 50256, suppress: vec![1, 2], begin_suppress: vec![220, 50256], max_length: 448 });
        // A multilingual model gets `<|en|>` and `transcribe` after the forced ids, as
        // generate(language="en") does.
        std::fs::write(
            dir.path().join(GENERATION_CONFIG_FILE),
            r#"{"decoder_start_token_id": 50258, "no_timestamps_token_id": 50363, "eos_token_id": 50257,
               "lang_to_id": {"<|en|>": 50259, "<|fr|>": 50265}, "task_to_id": {"transcribe": 50359, "translate": 50358},
               "max_length": 100}"#,
        )
        .unwrap();
        let g = Generation::open(dir.path()).unwrap();
        assert_eq!((g.prompt, g.max_length, g.suppress.len()), (vec![50258, 50259, 50359, 50363], 104, 0));
        std::fs::write(dir.path().join(GENERATION_CONFIG_FILE), "{").unwrap();
        assert!(Generation::open(dir.path()).unwrap_err().to_string().contains("generation_config.json: not valid JSON"));
    }
}
