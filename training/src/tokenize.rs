//! Text tokenization as transformers does it, through the `tokenizers` crate and the checkpoint's
//! `tokenizer.json` (special tokens and post-processing included), truncated to the model's
//! maximum length and optionally padded to it.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A tokenizer bound to one checkpoint's rules.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    max_length: usize,
    /// Pad every sequence to `max_length` with this id (SigLIP was trained that way); `None`
    /// leaves sequences at their own length (CLIP pools at the end token).
    pad_to_max: Option<u32>,
    /// Pad on the left (transformers' `Siglip2Tokenizer` default) instead of the right.
    pad_left: bool,
    /// Text rewriting the reference tokenizer does in Python before its tokenizer runs.
    canonicalize: Canonicalize,
}

/// Python-side text rewriting of a reference tokenizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Canonicalize {
    None,
    /// `SiglipTokenizer.canonicalize_text` (with or without lowercasing).
    Siglip {
        lowercase: bool,
    },
}

/// Token ids of one text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    pub ids: Vec<u32>,
}

impl TextTokenizer {
    /// Loads `tokenizer.json`, truncating to `max_length` tokens (special tokens included).
    pub fn from_file(path: &Path, max_length: usize, pad_to_max: Option<u32>) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::MissingFile {
                path: path.to_path_buf(),
                detail: "the checkpoint needs a tokenizer.json".into(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| Error::Tokenizer {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        Self::new(inner, path, max_length, pad_to_max, Canonicalize::None)
    }

    /// Wraps a built tokenizer (e.g. converted from `spiece.model`).
    pub fn new(
        mut inner: tokenizers::Tokenizer,
        path: &Path,
        max_length: usize,
        pad_to_max: Option<u32>,
        canonicalize: Canonicalize,
    ) -> Result<Self> {
        inner
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length,
                ..Default::default()
            }))
            .map_err(|e| Error::Tokenizer {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?;
        inner.with_padding(None);
        Ok(TextTokenizer {
            inner,
            path: path.to_path_buf(),
            max_length,
            pad_to_max,
            pad_left: false,
            canonicalize,
        })
    }

    /// Pads on the left instead of the right.
    pub fn with_left_padding(mut self, left: bool) -> Self {
        self.pad_left = left;
        self
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Id of a token in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Tokenizes `text` with the checkpoint's special tokens. Only its first
    /// [`MAX_TEXT_BYTES`] bytes are read.
    pub fn encode(&self, text: &str) -> Result<Tokens> {
        let text = prefix(text, MAX_TEXT_BYTES);
        let text = match self.canonicalize {
            Canonicalize::None => text.to_string(),
            Canonicalize::Siglip { lowercase } => crate::spm::siglip_canonicalize(text, lowercase),
        };
        let enc = self
            .inner
            .encode(text.as_str(), true)
            .map_err(|e| Error::Tokenizer {
                path: self.path.clone(),
                detail: format!("encoding '{}': {e}", prefix(&text, 80)),
            })?;
        let mut ids = enc.get_ids().to_vec();
        if let Some(pad) = self.pad_to_max {
            let missing = self.max_length.saturating_sub(ids.len());
            if self.pad_left {
                ids.splice(0..0, std::iter::repeat_n(pad, missing));
            } else {
                ids.resize(self.max_length, pad);
            }
        }
        Ok(Tokens { ids })
    }
}

/// The bytes of a text the tokenizer reads. Models read at most a few hundred tokens and every
/// token covers at least one byte, so the cut keeps every token a model reads (unless the text
/// opens with this much whitespace, which tokenizers drop), while a caption or query of
/// gigabytes costs no more than this.
pub const MAX_TEXT_BYTES: usize = 16 * 1024;

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn prefix(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_of_many_megabytes_tokenizes_as_its_prefix() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip-tiny/tokenizer.json");
        let tokenizer = TextTokenizer::from_file(&path, 77, None).unwrap();
        let huge = "a photo of a cat on a mat ".repeat(2_000_000);
        let short = "a photo of a cat on a mat ".repeat(20);
        assert_eq!(
            tokenizer.encode(&huge).unwrap().ids,
            tokenizer.encode(&short).unwrap().ids
        );
        // The cut falls inside a two-byte character: it moves back to the boundary.
        let accents = "é".repeat(MAX_TEXT_BYTES);
        assert_eq!(prefix("aé", 2), "a");
        assert_eq!(tokenizer.encode(&accents).unwrap().ids.len(), 77);
    }
}
