//! New models from nothing: a byte-level BPE tokenizer trained on a corpus in CLIP's exact
//! `tokenizer.json` pipeline, and a CLIP checkpoint of any size with transformers' initialisation,
//! written in Hugging Face layout so that [`crate::Trainable::load`] (and transformers) read it.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::encoder::DualEncoder;
use crate::error::{Error, Result};

const START: &str = "<|startoftext|>";
const END: &str = "<|endoftext|>";
const WORD_END: &str = "</w>";

/// Architecture of a CLIP model made from scratch.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipArchitecture {
    pub image_size: usize,
    pub patch_size: usize,
    pub vision_width: usize,
    pub vision_layers: usize,
    pub vision_heads: usize,
    pub text_width: usize,
    pub text_layers: usize,
    pub text_heads: usize,
    /// Longest token sequence (start and end tokens included).
    pub max_positions: usize,
    pub projection_dim: usize,
    /// MLP width as a multiple of the layer width.
    pub mlp_ratio: usize,
}

impl ClipArchitecture {
    /// Refuses shapes no CLIP checkpoint can have, so that a run fails before it spends time
    /// on data.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            self.image_size,
            self.patch_size,
            self.vision_width,
            self.vision_layers,
            self.vision_heads,
            self.text_width,
            self.text_layers,
            self.text_heads,
            self.max_positions,
            self.projection_dim,
            self.mlp_ratio,
        ];
        if positive.contains(&0)
            || !self.image_size.is_multiple_of(self.patch_size)
            || !self.vision_width.is_multiple_of(self.vision_heads)
            || !self.text_width.is_multiple_of(self.text_heads)
        {
            return Err(Error::InvalidArgument(format!(
                "inconsistent architecture (image {} px in {} px patches, vision width {} with {} \
                 heads, text width {} with {} heads): every size must be positive, the image size \
                 a multiple of the patch size and each width a multiple of its head count",
                self.image_size,
                self.patch_size,
                self.vision_width,
                self.vision_heads,
                self.text_width,
                self.text_heads
            )));
        }
        Ok(())
    }
}

impl Default for ClipArchitecture {
    fn default() -> Self {
        ClipArchitecture {
            image_size: 64,
            patch_size: 8,
            vision_width: 128,
            vision_layers: 4,
            vision_heads: 4,
            text_width: 128,
            text_layers: 3,
            text_heads: 4,
            max_positions: 48,
            projection_dim: 128,
            mlp_ratio: 4,
        }
    }
}

/// Trains a byte-level BPE tokenizer on `texts`, in the pipeline of OpenAI CLIP's tokenizer.json
/// (NFC, whitespace collapse, lowercase; CLIP's split regex; `</w>` word ends; start and end
/// tokens around every sequence). Every byte can be encoded, at a word's end too, so no text
/// falls back to an unknown token. Returns the tokenizer.json text.
pub fn train_clip_tokenizer(texts: &[String], vocab_size: usize) -> Result<String> {
    let err = |detail: String| Error::Tokenizer {
        path: "tokenizer.json (training)".into(),
        detail,
    };
    let pipeline = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
            {"type": "Lowercase"}
        ]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex":
                "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"},
             "behavior": "Removed", "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
        ]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": WORD_END, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": {}, "merges": []}
    });
    let tokenizer: tokenizers::Tokenizer = pipeline
        .to_string()
        .parse()
        .map_err(|e: tokenizers::Error| err(e.to_string()))?;
    let (vocab_list, merges) = learn_merges(&tokenizer, texts, vocab_size)?;
    let mut doc = pipeline;
    let mut vocab = serde_json::Map::new();
    for token in vocab_list {
        let id = vocab.len();
        vocab.insert(token, id.into());
    }
    let start = vocab.len();
    vocab.insert(START.into(), start.into());
    vocab.insert(END.into(), (start + 1).into());
    doc["model"]["vocab"] = serde_json::Value::Object(vocab);
    doc["model"]["merges"] = merges
        .into_iter()
        .map(|(a, b)| serde_json::Value::from(vec![a, b]))
        .collect();
    doc["model"]["unk_token"] = END.into();
    let special = |content: &str, id: usize| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    doc["added_tokens"] = json!([special(START, start), special(END, start + 1)]);
    doc["post_processor"] = json!({"type": "RobertaProcessing", "sep": [END, start + 1],
        "cls": [START, start], "trim_offsets": false, "add_prefix_space": false});
    serde_json::to_string_pretty(&doc).map_err(|e| err(e.to_string()))
}

/// A BPE merge: two adjacent symbols that become one.
type Merge = (String, String);

/// Learns BPE merges over the words `tokenizer`'s normaliser and pre-tokeniser make of `texts`
/// (byte-level symbols, `</w>` on each word's last symbol): repeatedly merges the most frequent
/// adjacent pair, ties broken by the pair's text, so the result depends on the corpus alone.
/// (The tokenizers crate's trainer breaks ties by ids that follow hash-map order, so two runs
/// on one corpus can differ.) Returns the vocabulary in id order (every byte alone and at a
/// word's end, then each merge's result) and the merges.
fn learn_merges(
    tokenizer: &tokenizers::Tokenizer,
    texts: &[String],
    vocab_size: usize,
) -> Result<(Vec<String>, Vec<Merge>)> {
    use std::collections::BTreeMap;
    use tokenizers::{Normalizer, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};
    let err = |detail: String| Error::Tokenizer {
        path: "tokenizer.json (training)".into(),
        detail,
    };
    let mut words: BTreeMap<Vec<String>, u64> = BTreeMap::new();
    for text in texts {
        let mut normalized = tokenizers::NormalizedString::from(text.as_str());
        if let Some(n) = tokenizer.get_normalizer() {
            n.normalize(&mut normalized)
                .map_err(|e| err(e.to_string()))?;
        }
        let mut pre = PreTokenizedString::from(normalized.get());
        if let Some(p) = tokenizer.get_pre_tokenizer() {
            p.pre_tokenize(&mut pre).map_err(|e| err(e.to_string()))?;
        }
        for (word, _, _) in pre.get_splits(OffsetReferential::Original, OffsetType::Char) {
            let mut symbols: Vec<String> = word.chars().map(String::from).collect();
            if let Some(last) = symbols.last_mut() {
                last.push_str(WORD_END);
                *words.entry(symbols).or_insert(0) += 1;
            }
        }
    }
    let mut alphabet: Vec<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
        .into_iter()
        .collect();
    alphabet.sort_unstable();
    let mut vocab: Vec<String> = alphabet.iter().map(|c| c.to_string()).collect();
    vocab.extend(alphabet.iter().map(|c| format!("{c}{WORD_END}")));
    let mut words: Vec<(Vec<String>, u64)> = words.into_iter().collect();
    let mut merges = Vec::new();
    // Two places are kept for the start and end tokens.
    while vocab.len() + 2 < vocab_size {
        let mut pairs: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for (symbols, count) in &words {
            for w in symbols.windows(2) {
                *pairs.entry((w[0].as_str(), w[1].as_str())).or_insert(0) += count;
            }
        }
        // The most frequent pair; among equals, the first in text order (BTreeMap order).
        let Some((&(a, b), &count)) = pairs.iter().rev().max_by_key(|(_, c)| **c) else {
            break;
        };
        if count < 2 {
            break;
        }
        let (a, b) = (a.to_string(), b.to_string());
        let merged = format!("{a}{b}");
        for (symbols, _) in &mut words {
            let mut i = 0;
            while i + 1 < symbols.len() {
                if symbols[i] == a && symbols[i + 1] == b {
                    symbols[i] = merged.clone();
                    symbols.remove(i + 1);
                }
                i += 1;
            }
        }
        vocab.push(merged);
        merges.push((a, b));
    }
    Ok((vocab, merges))
}

/// Ids of the start and end tokens of a tokenizer written by [`train_clip_tokenizer`].
fn special_ids(tokenizer_json: &str) -> Result<(u32, u32, usize)> {
    let tokenizer: tokenizers::Tokenizer =
        tokenizer_json
            .parse()
            .map_err(|e: tokenizers::Error| Error::Tokenizer {
                path: "tokenizer.json".into(),
                detail: e.to_string(),
            })?;
    let id = |t: &str| {
        tokenizer.token_to_id(t).ok_or_else(|| Error::Tokenizer {
            path: "tokenizer.json".into(),
            detail: format!("no {t} token"),
        })
    };
    Ok((id(START)?, id(END)?, tokenizer.get_vocab_size(true)))
}

/// Writes a new CLIP checkpoint into `folder` (created): config.json, the tokenizer,
/// preprocessor_config.json and model.safetensors initialised as transformers'
/// `CLIPPreTrainedModel._init_weights` does, deterministic in `seed`.
pub fn initialize_clip(
    folder: &Path,
    arch: &ClipArchitecture,
    tokenizer_json: &str,
    seed: u64,
) -> Result<()> {
    arch.validate()?;
    std::fs::create_dir_all(folder).map_err(|e| Error::io(folder, e))?;
    let (bos, eos, vocab_size) = special_ids(tokenizer_json)?;
    let config = json!({
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "dtype": "float32",
        "initializer_factor": 1.0,
        "logit_scale_init_value": 2.6592,
        "projection_dim": arch.projection_dim,
        "text_config": {
            "model_type": "clip_text_model",
            "vocab_size": vocab_size,
            "hidden_size": arch.text_width,
            "intermediate_size": arch.text_width * arch.mlp_ratio,
            "num_hidden_layers": arch.text_layers,
            "num_attention_heads": arch.text_heads,
            "max_position_embeddings": arch.max_positions,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "initializer_factor": 1.0,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": eos,
            "projection_dim": arch.projection_dim
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "image_size": arch.image_size,
            "patch_size": arch.patch_size,
            "num_channels": 3,
            "hidden_size": arch.vision_width,
            "intermediate_size": arch.vision_width * arch.mlp_ratio,
            "num_hidden_layers": arch.vision_layers,
            "num_attention_heads": arch.vision_heads,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "initializer_factor": 1.0,
            "projection_dim": arch.projection_dim
        }
    });
    let preprocessor = json!({
        "image_processor_type": "CLIPImageProcessor",
        "do_convert_rgb": true,
        "do_resize": true,
        "size": {"shortest_edge": arch.image_size},
        "resample": 3,
        "do_center_crop": true,
        "crop_size": {"height": arch.image_size, "width": arch.image_size},
        "do_rescale": true,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": true,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711]
    });
    let tokenizer_config = json!({
        "tokenizer_class": "CLIPTokenizer",
        "processor_class": "CLIPProcessor",
        "bos_token": START,
        "eos_token": END,
        "pad_token": END,
        "unk_token": END,
        "model_max_length": arch.max_positions
    });
    let write = |name: &str, text: String| {
        let path = folder.join(name);
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))
    };
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    write("config.json", pretty(&config))?;
    write("preprocessor_config.json", pretty(&preprocessor))?;
    write("tokenizer_config.json", pretty(&tokenizer_config))?;
    write("tokenizer.json", tokenizer_json.to_string())?;

    // Build the model over fresh variables to learn every parameter's name and shape.
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    DualEncoder::build_from_config(folder, vb.clone(), &Device::Cpu)?;
    vb.get(&[] as &[usize], "logit_scale")?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut names: Vec<(String, Vec<usize>)> = varmap
        .data()
        .lock()
        .map_err(|_| Error::InvalidArgument("the variable map was poisoned".into()))?
        .iter()
        .map(|(n, v)| (n.clone(), v.dims().to_vec()))
        .collect();
    // Sorted so that the random stream, hence the weights, depend on the seed alone.
    names.sort();
    for (name, shape) in names {
        let init = initial_value(&name, arch);
        let count: usize = shape.iter().product();
        let values: Vec<f32> = match init {
            Init::Constant(c) => vec![c; count],
            Init::Normal(std) => (0..count).map(|_| normal(&mut rng) * std).collect(),
        };
        tensors.insert(name, Tensor::from_vec(values, shape, &Device::Cpu)?);
    }
    let path = folder.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &path)?;
    Ok(())
}

enum Init {
    Constant(f32),
    Normal(f32),
}

/// transformers' CLIP initialisation (factor 1): embeddings N(0, 0.02); the class embedding
/// N(0, d^-1/2); attention and MLP input projections scaled by depth; norms 1, biases 0.
fn initial_value(name: &str, arch: &ClipArchitecture) -> Init {
    let vision = name.starts_with("vision_model") || name == "visual_projection.weight";
    let (width, layers) = if vision {
        (arch.vision_width as f32, arch.vision_layers as f32)
    } else {
        (arch.text_width as f32, arch.text_layers as f32)
    };
    let in_proj = width.powf(-0.5) * (2.0 * layers).powf(-0.5);
    if name == "logit_scale" {
        return Init::Constant(2.6592);
    }
    if name.ends_with(".bias") {
        return Init::Constant(0.0);
    }
    if name.contains("layer_norm") || name.contains("layrnorm") || name.contains("layernorm") {
        return Init::Constant(1.0);
    }
    if name.ends_with("class_embedding") {
        return Init::Normal(width.powf(-0.5));
    }
    if name.contains("embedding") {
        return Init::Normal(0.02);
    }
    if name.contains("q_proj") || name.contains("k_proj") || name.contains("v_proj") {
        return Init::Normal(in_proj);
    }
    if name.contains("out_proj") {
        return Init::Normal(width.powf(-0.5));
    }
    if name.contains("fc1") {
        return Init::Normal((2.0 * width).powf(-0.5));
    }
    if name.contains("fc2") {
        return Init::Normal(in_proj);
    }
    // The two projections.
    Init::Normal(width.powf(-0.5))
}

/// A standard normal sample (Box-Muller).
pub(crate) fn normal(rng: &mut StdRng) -> f32 {
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}

/// Rewrites a checkpoint's floating-point tensors in `dtype` (e.g. f16 to halve its size).
pub fn convert_checkpoint(folder: &Path, dtype: DType) -> Result<()> {
    let path = folder.join("model.safetensors");
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu)?;
    let converted = tensors
        .into_iter()
        .map(|(name, t)| Ok((name, t.to_dtype(dtype)?)))
        .collect::<Result<HashMap<String, Tensor>>>()?;
    let partial = folder.join("model.safetensors.partial");
    candle_core::safetensors::save(&converted, &partial)?;
    std::fs::rename(&partial, &path).map_err(|e| Error::io(&path, e))?;
    let config_path = folder.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let mut config: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::config(&config_path, e.to_string()))?;
    config["dtype"] = match dtype {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        _ => "float32",
    }
    .into();
    let pretty = serde_json::to_string_pretty(&config)
        .map_err(|e| Error::config(&config_path, e.to_string()))?;
    std::fs::write(&config_path, pretty).map_err(|e| Error::io(&config_path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Vec<String> {
        [
            "a small red triangle left of a blue circle",
            "uma estrela vermelha pequena à esquerda de um círculo azul",
            "two yellow squares side by side",
            "há um losango verde no centro",
        ]
        .iter()
        .cycle()
        .take(40)
        .map(|s| s.to_string())
        .collect()
    }

    #[test]
    fn trained_tokenizer_follows_clip_and_encodes_any_text() {
        let json = train_clip_tokenizer(&corpus(), 700).unwrap();
        let tok: tokenizers::Tokenizer = json.parse().unwrap();
        let (bos, eos, _) = special_ids(&json).unwrap();
        let enc = tok.encode("A  small RED triangle", true).unwrap();
        let ids = enc.get_ids();
        assert_eq!((ids[0], *ids.last().unwrap()), (bos, eos));
        // Frequent words became single tokens; case and spacing were normalised.
        assert_eq!(enc.get_tokens()[1..4], ["a</w>", "small</w>", "red</w>"]);
        // Unseen characters still encode to real tokens (never the end token mid-sequence).
        let odd = tok.encode("zebra ñandú 東京 🙂", true).unwrap();
        let inner = &odd.get_ids()[1..odd.get_ids().len() - 1];
        assert!(!inner.is_empty() && inner.iter().all(|&i| i != eos && i != bos));
    }

    #[test]
    fn initialised_checkpoint_loads_and_embeds() {
        let dir = tempfile::tempdir().unwrap();
        let arch = ClipArchitecture {
            image_size: 16,
            patch_size: 8,
            vision_width: 16,
            vision_layers: 1,
            vision_heads: 2,
            text_width: 16,
            text_layers: 1,
            text_heads: 2,
            max_positions: 16,
            projection_dim: 8,
            mlp_ratio: 2,
        };
        let json = train_clip_tokenizer(&corpus(), 600).unwrap();
        initialize_clip(dir.path(), &arch, &json, 7).unwrap();
        let model = DualEncoder::load(dir.path(), &Device::Cpu).unwrap();
        let e = model.embed_texts(&["a red triangle"]).unwrap();
        assert_eq!(e[0].len(), 8);
        // Same seed, same weights.
        let again = tempfile::tempdir().unwrap();
        initialize_clip(again.path(), &arch, &json, 7).unwrap();
        let read = |p: &Path| std::fs::read(p.join("model.safetensors")).unwrap();
        assert_eq!(read(dir.path()), read(again.path()));
        convert_checkpoint(dir.path(), DType::F16).unwrap();
        let half = DualEncoder::load(dir.path(), &Device::Cpu).unwrap();
        let h = half.embed_texts(&["a red triangle"]).unwrap();
        let cos: f32 = e[0].iter().zip(&h[0]).map(|(a, b)| a * b).sum();
        assert!(cos > 0.999, "f16 copy drifted: cosine {cos}");
    }

    #[test]
    fn impossible_architectures_are_refused() {
        let variant = |change: fn(&mut ClipArchitecture)| {
            let mut arch = ClipArchitecture::default();
            change(&mut arch);
            arch
        };
        assert!(ClipArchitecture::default().validate().is_ok());
        assert!(variant(|a| a.patch_size = 4).validate().is_ok());
        for bad in [
            variant(|a| a.patch_size = 5),
            variant(|a| a.patch_size = 0),
            variant(|a| a.vision_heads = 3),
            variant(|a| a.text_layers = 0),
        ] {
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains("multiple of the patch size"), "{err}");
        }
    }
}

#[cfg(test)]
mod determinism {
    use super::*;

    #[test]
    fn tokenizer_training_is_deterministic() {
        let corpus: Vec<String> = (0..3000)
            .map(|i| {
                format!(
                    "a small red {} left of {} blue circle {}",
                    i % 7,
                    i % 13,
                    i % 5
                )
            })
            .collect();
        let a = train_clip_tokenizer(&corpus, 600).unwrap();
        for _ in 0..5 {
            assert!(a == train_clip_tokenizer(&corpus, 600).unwrap());
        }
    }
}
