//! Word error rate: (substitutions + deletions + insertions) / reference words, from a word-level
//! Levenshtein alignment of normalized text, as jiwer computes it. The normalization is the one
//! `fixtures/whisper/run_testbed.py` (`normalize`) applies before jiwer, so our figures match the
//! test bed's: lowercase; `’` becomes `'`; every character other than `a-z`, `0-9`, `'` and space
//! becomes a space; an apostrophe not between two letters becomes a space (`don't` stays,
//! `'quoted'` loses its quotes); words are split on whitespace. Called by `cli::validate_speech`.

/// Errors and reference length of one comparison; sums over files give corpus WER (jiwer's
/// list form: total errors over total reference words).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Score {
    /// Substitutions + deletions + insertions of the best alignment.
    pub errors: usize,
    /// Words in the normalized reference.
    pub words: usize,
}

impl Score {
    /// Scores `hypothesis` against `reference` (both raw text; normalized here).
    pub fn new(reference: &str, hypothesis: &str) -> Score {
        let (r, h) = (normalize(reference), normalize(hypothesis));
        let (r, h): (Vec<&str>, Vec<&str>) = (r.split_whitespace().collect(), h.split_whitespace().collect());
        Score { errors: edit_distance(&r, &h), words: r.len() }
    }

    /// The rate. With an empty reference it is 0 when the hypothesis is empty too, else 1 (every
    /// word inserted; jiwer refuses empty references).
    pub fn rate(&self) -> f64 {
        match (self.errors, self.words) {
            (0, _) => 0.0,
            (_, 0) => 1.0,
            (e, w) => e as f64 / w as f64,
        }
    }

}

/// The corpus score over both comparisons.
impl std::ops::Add for Score {
    type Output = Score;
    fn add(self, other: Score) -> Score {
        Score { errors: self.errors + other.errors, words: self.words + other.words }
    }
}

/// The normalized form of `text` described in the module docs.
pub fn normalize(text: &str) -> String {
    let chars: Vec<char> = text
        .to_lowercase()
        .chars()
        .map(|c| match c {
            '\u{2019}' => '\'',
            'a'..='z' | '0'..='9' | '\'' | ' ' => c,
            _ => ' ',
        })
        .collect();
    let letter = |i: Option<&char>| i.is_some_and(|c| c.is_ascii_lowercase());
    let kept: String = chars
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let inside_word = i > 0 && letter(chars.get(i - 1)) && letter(chars.get(i + 1));
            if c == '\'' && !inside_word {
                ' '
            } else {
                c
            }
        })
        .collect();
    kept.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Levenshtein distance between word sequences (unit costs), one row at a time.
fn edit_distance(reference: &[&str], hypothesis: &[&str]) -> usize {
    let mut row: Vec<usize> = (0..=hypothesis.len()).collect();
    for (i, r) in reference.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, h) in hypothesis.iter().enumerate() {
            let substitute = diagonal + usize::from(r != h);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[hypothesis.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_matches_the_test_bed() {
        assert_eq!(normalize("The birch canoe, slid!"), "the birch canoe slid");
        assert_eq!(normalize("It\u{2019}s 'quoted' rock'n'roll"), "it's quoted rock'n'roll");
        assert_eq!(normalize("  Café—costs $5.  "), "caf costs 5");
        assert_eq!(normalize("'' a'' 9'b"), "a 9 b");
    }

    #[test]
    fn substitutions_deletions_and_insertions_each_count_one() {
        assert_eq!(Score::new("a b c d", "a b c d"), Score { errors: 0, words: 4 });
        assert_eq!(Score::new("a b c d", "a x c d").errors, 1);
        assert_eq!(Score::new("a b c d", "a c d").errors, 1);
        assert_eq!(Score::new("a b c d", "a b y c d").errors, 1);
        assert_eq!(Score::new("a b c d", "").errors, 4);
        assert!((Score::new("The birch canoe slid on the smooth planks.", "The merch can be laid on the smooth planks.").rate() - 4.0 / 8.0).abs() < 1e-12);
    }

    #[test]
    fn rates_of_empty_texts_and_corpus_sums() {
        assert_eq!(Score::new("", "").rate(), 0.0);
        assert_eq!(Score::new("", "hello").rate(), 1.0);
        let corpus = Score::new("a b", "a") + Score::new("c d e f", "c d e f");
        assert_eq!((corpus.errors, corpus.words), (1, 6));
    }
}
