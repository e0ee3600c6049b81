//! Token ids to text with the model's own `tokenizer.json` (the `tokenizers` crate, pure Rust
//! build). Decoding follows `run_testbed.py`: ids at or above the end-of-text id (every special
//! and timestamp token of Whisper's vocabulary) are dropped, the rest decoded with
//! `skip_special_tokens`, and the result trimmed. Called by `cli::validate_speech`.

use std::path::{Path, PathBuf};

use super::Error;

/// The tokenizer file beside the packages and in the Hugging Face folder.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// A loaded `tokenizer.json`.
pub struct Text {
    tokenizer: tokenizers::Tokenizer,
    path: PathBuf,
}

impl Text {
    /// Loads `dir/tokenizer.json`.
    pub fn open(dir: &Path) -> Result<Text, Error> {
        let path = dir.join(TOKENIZER_FILE);
        if !path.is_file() {
            return Err(Error::file(&path, "no such file (the tokenizer is needed to turn tokens into text)"));
        }
        let tokenizer = tokenizers::Tokenizer::from_file(&path).map_err(|e| Error::file(&path, format!("not a valid tokenizer file: {e}")))?;
        Ok(Text { tokenizer, path })
    }

    /// The text of `tokens`, ignoring ids `>= end_of_text`.
    pub fn decode(&self, tokens: &[u32], end_of_text: u32) -> Result<String, Error> {
        let ids: Vec<u32> = tokens.iter().copied().filter(|&t| t < end_of_text).collect();
        let text = self.tokenizer.decode(&ids, true).map_err(|e| Error::file(&self.path, format!("cannot decode tokens: {e}")))?;
        Ok(text.trim().to_string())
    }
}
