//! SentencePiece models (`spiece.model`, as SigLIP checkpoints ship them) converted for the
//! `tokenizers` crate, plus SigLIP's text canonicalisation, so that token ids equal
//! transformers' `SiglipTokenizer` (which runs the sentencepiece library).
//!
//! The conversion follows sentencepiece's own pipeline: the model's precompiled normalisation
//! map (e.g. nmt_nfkc), spaces escaped as `▁`, whitespace-delimited pieces, unigram Viterbi
//! segmentation with the model's scores, unknown characters fused into one unknown piece.

use std::path::Path;

use prost::Message;
use tokenizers::Tokenizer;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::{NormalizerWrapper, Precompiled, Replace, Sequence};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::processors::template::TemplateProcessing;

use crate::error::{Error, Result};

/// The parts of sentencepiece's `ModelProto` that the conversion needs (field numbers from
/// `sentencepiece_model.proto`; other fields are skipped).
#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(message, repeated, tag = "1")]
    pieces: Vec<Piece>,
    #[prost(message, optional, tag = "2")]
    trainer_spec: Option<TrainerSpec>,
    #[prost(message, optional, tag = "3")]
    normalizer_spec: Option<NormalizerSpec>,
}

#[derive(Clone, PartialEq, Message)]
struct Piece {
    #[prost(string, optional, tag = "1")]
    piece: Option<String>,
    #[prost(float, optional, tag = "2")]
    score: Option<f32>,
    #[prost(int32, optional, tag = "3")]
    kind: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
struct TrainerSpec {
    /// 1 unigram, 2 BPE, 3 word, 4 char.
    #[prost(int32, optional, tag = "3")]
    model_type: Option<i32>,
    #[prost(bool, optional, tag = "35")]
    byte_fallback: Option<bool>,
    #[prost(int32, optional, tag = "40")]
    unk_id: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
struct NormalizerSpec {
    #[prost(bytes = "vec", optional, tag = "2")]
    precompiled_charsmap: Option<Vec<u8>>,
}

/// Builds a `tokenizers` tokenizer equivalent to a sentencepiece unigram model, appending `eos`
/// after every sequence.
pub fn tokenizer_from_spiece(path: &Path, eos: &str) -> Result<Tokenizer> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::MissingFile {
            path: path.to_path_buf(),
            detail: "the checkpoint needs tokenizer.json or spiece.model".into(),
        },
        _ => Error::io(path, e),
    })?;
    let bad = |detail: String| Error::Tokenizer {
        path: path.to_path_buf(),
        detail,
    };
    let proto = ModelProto::decode(&bytes[..])
        .map_err(|e| bad(format!("not a sentencepiece model: {e}")))?;
    let trainer = proto.trainer_spec.clone().unwrap_or_default();
    if trainer.model_type.unwrap_or(1) != 1 {
        return Err(bad(format!(
            "sentencepiece model type {} is not supported (only unigram, as SigLIP uses)",
            trainer.model_type.unwrap_or(1)
        )));
    }
    let vocab: Vec<(String, f64)> = proto
        .pieces
        .iter()
        .map(|p| {
            (
                p.piece.clone().unwrap_or_default(),
                p.score.unwrap_or(0.0) as f64,
            )
        })
        .collect();
    let eos_id = vocab
        .iter()
        .position(|(p, _)| p == eos)
        .ok_or_else(|| bad(format!("has no end-of-sequence piece {eos:?}")))?;
    let unk_id = trainer.unk_id.unwrap_or(0).max(0) as usize;
    let model = Unigram::from(vocab, Some(unk_id), trainer.byte_fallback.unwrap_or(false))
        .map_err(|e| bad(e.to_string()))?;
    let mut tokenizer = Tokenizer::new(model);
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    if let Some(map) = proto
        .normalizer_spec
        .and_then(|n| n.precompiled_charsmap)
        .filter(|m| !m.is_empty())
    {
        let precompiled =
            Precompiled::from(&map).map_err(|e| bad(format!("precompiled charsmap: {e}")))?;
        normalizers.push(precompiled.into());
    }
    normalizers.push(
        Replace::new(" ", "▁")
            .map_err(|e| bad(e.to_string()))?
            .into(),
    );
    tokenizer.with_normalizer(Some(Sequence::new(normalizers)));
    tokenizer.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::First, true)));
    let post = TemplateProcessing::builder()
        .try_single(format!("$A {eos}"))
        .and_then(|b| b.try_pair(format!("$A {eos} $B {eos}")))
        .map_err(|e| bad(e.to_string()))?
        .special_tokens(vec![(eos.to_string(), eos_id as u32)])
        .build()
        .map_err(|e| bad(e.to_string()))?;
    tokenizer.with_post_processor(Some(post));
    Ok(tokenizer)
}

/// Python's `str.isspace`, which `re`'s `\s` and `str.strip` use: Unicode whitespace plus the
/// information separators U+001C..U+001F.
fn python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// SigLIP's `canonicalize_text`: lowercase, drop ASCII punctuation, collapse whitespace runs to
/// one space, strip. `SiglipTokenizer` first turns `▁` into spaces; sentencepiece then prefixes
/// `▁` (the Metaspace pre-tokenizer does that here).
pub fn siglip_canonicalize(text: &str, lowercase: bool) -> String {
    let text = text.replace('▁', " ");
    let lowered = if lowercase { text.to_lowercase() } else { text };
    let mut out = String::with_capacity(lowered.len() + 1);
    let mut pending_space = false;
    for c in lowered.chars().filter(|c| !c.is_ascii_punctuation()) {
        if python_space(c) {
            pending_space = true;
            continue;
        }
        if pending_space && !out.is_empty() {
            out.push(' ');
        }
        pending_space = false;
        out.push(c);
    }
    out
}
