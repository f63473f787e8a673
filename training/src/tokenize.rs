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

    /// Tokenizes `text` with the checkpoint's special tokens.
    pub fn encode(&self, text: &str) -> Result<Tokens> {
        let text = match self.canonicalize {
            Canonicalize::None => text.to_string(),
            Canonicalize::Siglip { lowercase } => crate::spm::siglip_canonicalize(text, lowercase),
        };
        let enc = self
            .inner
            .encode(text.as_str(), true)
            .map_err(|e| Error::Tokenizer {
                path: self.path.clone(),
                detail: format!("encoding {text:?}: {e}"),
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
