//! Loading a checkpoint folder in Hugging Face layout and embedding images and texts with it.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use crate::clip::{Clip, ClipConfig};
use crate::error::{Error, Result};
use crate::preprocess::{ImageProcessor, Resample, ResizeTo};
use crate::siglip::{Siglip, SiglipConfig};
use crate::tokenize::{Canonicalize, TextTokenizer};

/// Model families this build implements.
pub const SUPPORTED_MODEL_TYPES: &str =
    "clip, siglip (SigLIP and fixed-resolution SigLIP 2 checkpoints)";

/// The model family of a checkpoint.
#[derive(Debug)]
pub enum Model {
    Clip(Clip),
    Siglip(Siglip),
}

impl Model {
    /// Side of the square images the vision tower takes.
    pub fn image_size(&self) -> usize {
        match self {
            Model::Clip(m) => m.image_size(),
            Model::Siglip(m) => m.image_size(),
        }
    }

    /// Size of the embeddings both towers produce.
    pub fn embedding_dim(&self) -> usize {
        match self {
            Model::Clip(m) => m.embedding_dim(),
            Model::Siglip(m) => m.embedding_dim(),
        }
    }

    /// Width and depth of the vision transformer.
    pub fn vision_shape(&self) -> (usize, usize) {
        match self {
            Model::Clip(m) => m.vision_shape(),
            Model::Siglip(m) => m.vision_shape(),
        }
    }

    /// The mean patch token at the input of each of the first `layers` vision layers,
    /// `[width]` each.
    pub fn vision_token_means(&self, pixels: &Tensor, layers: usize) -> Result<Vec<Tensor>> {
        match self {
            Model::Clip(m) => m.vision_token_means(pixels, layers),
            Model::Siglip(m) => m.vision_token_means(pixels, layers),
        }
    }

    /// L2-normalised image embeddings with ELIP's visual prompts (`[B, m, width]` per
    /// prompted layer; none: the plain embeddings).
    pub fn image_features_prompted(&self, pixels: &Tensor, prompts: &[Tensor]) -> Result<Tensor> {
        match self {
            Model::Clip(m) => m.image_features_prompted(pixels, prompts),
            Model::Siglip(m) => m.image_features_prompted(pixels, prompts),
        }
    }

    /// The family name, as `config.json`'s `model_type` spells it.
    pub fn family(&self) -> &'static str {
        match self {
            Model::Clip(_) => "clip",
            Model::Siglip(_) => "siglip",
        }
    }
}

/// An image-text dual encoder loaded from a checkpoint.
#[derive(Debug)]
pub struct DualEncoder {
    pub model: Model,
    pub processor: ImageProcessor,
    pub tokenizer: TextTokenizer,
    folder: PathBuf,
    device: Device,
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::MissingFile {
            path: path.to_path_buf(),
            detail: "not a Hugging Face checkpoint folder".into(),
        },
        _ => Error::io(path, e),
    })?;
    serde_json::from_str(&text).map_err(|e| Error::config(path, e.to_string()))
}

/// The safetensors files of a checkpoint: `model.safetensors`, or the shards listed by
/// `model.safetensors.index.json`.
/// See [`DualEncoder::fingerprint`].
pub fn checkpoint_fingerprint(folder: &Path) -> Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    const SAMPLES: u64 = 16;
    const SAMPLE_LEN: u64 = 64 << 10;
    let config = folder.join("config.json");
    let mut crc = crc32c::crc32c(&std::fs::read(&config).map_err(|e| Error::io(&config, e))?);
    let mut total = 0u64;
    for path in weight_files(folder)? {
        let mut f = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        let len = f.metadata().map_err(|e| Error::io(&path, e))?.len();
        total += len;
        crc = crc32c::crc32c_append(crc, &len.to_le_bytes());
        let mut header_len = [0u8; 8];
        f.read_exact(&mut header_len)
            .map_err(|e| Error::io(&path, e))?;
        let header_len = u64::from_le_bytes(header_len).min(len.saturating_sub(8));
        let mut buf = vec![0u8; header_len.min(SAMPLE_LEN * 16) as usize];
        f.read_exact(&mut buf).map_err(|e| Error::io(&path, e))?;
        crc = crc32c::crc32c_append(crc, &buf);
        let data_start = 8 + header_len;
        let data_len = len - data_start;
        for i in 0..SAMPLES {
            let at = data_start + data_len.saturating_sub(SAMPLE_LEN) * i / (SAMPLES - 1);
            f.seek(SeekFrom::Start(at))
                .map_err(|e| Error::io(&path, e))?;
            let mut sample = Vec::with_capacity(SAMPLE_LEN as usize);
            (&mut f)
                .take(SAMPLE_LEN)
                .read_to_end(&mut sample)
                .map_err(|e| Error::io(&path, e))?;
            crc = crc32c::crc32c_append(crc, &sample);
        }
    }
    Ok(format!("crc32c:{crc:08x}:{total}"))
}

pub(crate) fn weight_files(folder: &Path) -> Result<Vec<PathBuf>> {
    let single = folder.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = folder.join("model.safetensors.index.json");
    if !index.is_file() {
        return Err(Error::MissingFile {
            path: single,
            detail: "neither model.safetensors nor model.safetensors.index.json is present".into(),
        });
    }
    let v = read_json(&index)?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::config(&index, "no weight_map object"))?;
    let mut files: Vec<PathBuf> = map
        .values()
        .filter_map(|f| f.as_str())
        .map(|f| folder.join(f))
        .collect();
    files.sort();
    files.dedup();
    if let Some(missing) = files.iter().find(|f| !f.is_file()) {
        return Err(Error::MissingFile {
            path: missing.clone(),
            detail: format!("listed in {}", index.display()),
        });
    }
    Ok(files)
}

/// transformers' CLIP defaults (OpenAI's mean/std, written as transformers spells them).
#[allow(clippy::excessive_precision)]
fn clip_processor_defaults() -> ImageProcessor {
    ImageProcessor {
        resize: Some((ResizeTo::ShortestEdge(224), Resample::Bicubic)),
        center_crop: Some((224, 224)),
        rescale: Some(1.0 / 255.0),
        normalize: Some((
            [0.481_454_66, 0.457_827_5, 0.408_210_73],
            [0.268_629_54, 0.261_302_58, 0.275_777_11],
        )),
        convert_rgb: true,
        limits: crate::imageio::ImageLimits::default(),
    }
}

fn siglip_processor_defaults() -> ImageProcessor {
    ImageProcessor {
        resize: Some((
            ResizeTo::Exact {
                height: 224,
                width: 224,
            },
            Resample::Bicubic,
        )),
        center_crop: None,
        rescale: Some(1.0 / 255.0),
        normalize: Some(([0.5; 3], [0.5; 3])),
        convert_rgb: true,
        limits: crate::imageio::ImageLimits::default(),
    }
}

/// SigLIP's tokenizer: `tokenizer.json` when the checkpoint has one (SigLIP 2's Gemma
/// tokenizer), else `spiece.model` converted, with `SiglipTokenizer`'s canonicalisation. Both
/// pad to the maximum length, as SigLIP was trained.
fn siglip_tokenizer(folder: &Path, text_positions: usize) -> Result<TextTokenizer> {
    let cfg_path = folder.join("tokenizer_config.json");
    let cfg = if cfg_path.is_file() {
        read_json(&cfg_path)?
    } else {
        serde_json::Value::Null
    };
    let token = |key: &str, default: &str| -> String {
        match cfg.get(key) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => v
                .get("content")
                .and_then(|c| c.as_str())
                .unwrap_or(default)
                .to_string(),
            None => default.to_string(),
        }
    };
    let max_len = cfg
        .get("model_max_length")
        .and_then(|v| v.as_u64())
        .map_or(text_positions, |m| (m as usize).min(text_positions));
    let json = folder.join("tokenizer.json");
    let (inner, path, canonicalize, pad) = if json.is_file() {
        let inner = tokenizers::Tokenizer::from_file(&json).map_err(|e| Error::Tokenizer {
            path: json.clone(),
            detail: e.to_string(),
        })?;
        (inner, json, Canonicalize::None, token("pad_token", "<pad>"))
    } else {
        let spiece = folder.join("spiece.model");
        let eos = token("eos_token", "</s>");
        let inner = crate::spm::tokenizer_from_spiece(&spiece, &eos)?;
        let lowercase = cfg
            .get("do_lower_case")
            .and_then(|v| v.as_bool())
            .unwrap_or(true);
        (
            inner,
            spiece,
            Canonicalize::Siglip { lowercase },
            token("pad_token", "</s>"),
        )
    };
    let pad_id = inner.token_to_id(&pad).ok_or_else(|| Error::Tokenizer {
        path: path.clone(),
        detail: format!("pad token '{pad}' is not in the vocabulary"),
    })?;
    // transformers 5's Siglip2Tokenizer pads on the left unless the config says otherwise.
    let class_default_left =
        cfg.get("tokenizer_class").and_then(|v| v.as_str()) == Some("Siglip2Tokenizer");
    let pad_left = match cfg.get("padding_side").and_then(|v| v.as_str()) {
        Some(side) => side == "left",
        None => class_default_left,
    };
    Ok(
        TextTokenizer::new(inner, &path, max_len, Some(pad_id), canonicalize)?
            .with_left_padding(pad_left),
    )
}

/// `config.json` and its `model_type`, refused with the supported list unless Mirante
/// implements it.
fn read_config(folder: &Path) -> Result<(serde_json::Value, String)> {
    let config_path = folder.join("config.json");
    let config = read_json(&config_path)?;
    let model_type = config
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    if !["clip", "siglip"].contains(&model_type.as_str()) {
        return Err(Error::UnsupportedModel {
            path: config_path,
            found: if model_type == "siglip2" {
                "siglip2 (NaFlex variable-resolution SigLIP 2 is not implemented yet; \
                 fixed-resolution SigLIP 2 checkpoints have model_type siglip)"
                    .into()
            } else {
                model_type
            },
            supported: SUPPORTED_MODEL_TYPES.to_string(),
        });
    }
    Ok((config, model_type))
}

/// Tensor errors while building a model are weight problems (missing tensor, wrong shape):
/// report them against the checkpoint file.
fn weights_error(files: &[PathBuf]) -> impl Fn(Error) -> Error + '_ {
    move |e| match e {
        Error::Tensor(t) => Error::Weights {
            path: files[0].clone(),
            detail: t.to_string(),
        },
        other => other,
    }
}

impl DualEncoder {
    /// Loads a checkpoint folder (config.json, safetensors weights, tokenizer, preprocessor).
    pub fn load(folder: &Path, device: &Device) -> Result<Self> {
        let (config, model_type) = read_config(folder)?;
        let files = weight_files(folder)?;
        // SAFETY: safetensors files of a checkpoint are mapped read-only and not modified while
        // the model lives; this is the crate's only mapping call.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, DType::F32, device) }
            .map_err(|e| Error::Weights {
                path: files[0].clone(),
                detail: e.to_string(),
            })?;
        Self::build(folder, config, &model_type, vb, &files, device)
    }

    /// Builds the model `folder`'s config.json describes over `vb` (no weight files needed): a
    /// variable builder collects the parameters a new checkpoint must hold.
    pub fn build_from_config(folder: &Path, vb: VarBuilder, device: &Device) -> Result<Self> {
        let (config, model_type) = read_config(folder)?;
        Self::build(
            folder,
            config,
            &model_type,
            vb,
            &[folder.join("model.safetensors")],
            device,
        )
    }

    /// Loads a checkpoint for training: every parameter is a variable of the returned
    /// [`VarMap`] (named as in the checkpoint), filled from the weight files. `extra` names
    /// further checkpoint tensors to hold as variables when present (a loss's logit scale and
    /// bias).
    pub fn load_variables(
        folder: &Path,
        device: &Device,
        extra: &[&str],
    ) -> Result<(Self, VarMap)> {
        let (config, model_type) = read_config(folder)?;
        let files = weight_files(folder)?;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let encoder = Self::build(folder, config, &model_type, vb.clone(), &files, device)?;
        let weights = crate::train::Weights::open(&files)?;
        for name in extra.iter().filter(|n| weights.contains(n)) {
            vb.get(weights.shape(name)?, name)?;
        }
        weights.fill(&varmap, device)?;
        Ok((encoder, varmap))
    }

    fn build(
        folder: &Path,
        config: serde_json::Value,
        model_type: &str,
        vb: VarBuilder,
        files: &[PathBuf],
        device: &Device,
    ) -> Result<Self> {
        let config_path = folder.join("config.json");
        let parse_err = |e: serde_json::Error| Error::config(&config_path, e.to_string());
        let (model, processor, tokenizer) = if model_type == "clip" {
            let cfg: ClipConfig = serde_json::from_value(config).map_err(parse_err)?;
            let max_len = cfg.text_config.max_position_embeddings;
            let model = Clip::new(vb, cfg, &config_path).map_err(weights_error(files))?;
            let processor = ImageProcessor::from_folder(folder, &clip_processor_defaults())?;
            let tokenizer =
                TextTokenizer::from_file(&folder.join("tokenizer.json"), max_len, None)?;
            (Model::Clip(model), processor, tokenizer)
        } else {
            let cfg: SiglipConfig = serde_json::from_value(config).map_err(parse_err)?;
            let positions = cfg.text_config.max_position_embeddings;
            let model = Siglip::new(vb, cfg, &config_path).map_err(weights_error(files))?;
            let processor = ImageProcessor::from_folder(folder, &siglip_processor_defaults())?;
            let tokenizer = siglip_tokenizer(folder, positions)?;
            (Model::Siglip(model), processor, tokenizer)
        };
        Ok(DualEncoder {
            model,
            processor,
            tokenizer,
            folder: folder.to_path_buf(),
            device: device.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn folder(&self) -> &Path {
        &self.folder
    }

    /// Identity of the weights: a CRC-32C over `config.json`, the size and safetensors header of
    /// each weight file and 16 evenly spaced 64 KiB samples of its data. Fine-tuning changes the
    /// samples, so a re-trained checkpoint under the same name is told apart, without reading
    /// gigabytes on every load.
    pub fn fingerprint(&self) -> Result<String> {
        checkpoint_fingerprint(&self.folder)
    }

    /// Pixel values (channel-first, flattened) of one image file's bytes.
    pub fn pixels(&self, bytes: &[u8], source: &str) -> Result<Vec<f32>> {
        let (pixels, h, w) = self.processor.process_bytes(bytes, source)?;
        let s = self.model.image_size() as u32;
        if (h, w) != (s, s) {
            return Err(Error::InvalidArgument(format!(
                "{source}: preprocessing gives {h}x{w} pixels, the model expects {s}x{s}"
            )));
        }
        Ok(pixels)
    }

    /// L2-normalised embeddings of preprocessed images (each `3 * S * S` values).
    pub fn embed_pixels(&self, pixels: &[impl AsRef<[f32]>]) -> Result<Vec<Vec<f32>>> {
        let s = self.model.image_size();
        let flat: Vec<f32> = pixels.iter().flat_map(AsRef::as_ref).copied().collect();
        let t = Tensor::from_vec(flat, (pixels.len(), 3, s, s), &self.device)?;
        let out = match &self.model {
            Model::Clip(m) => m.image_features(&t)?,
            Model::Siglip(m) => m.image_features(&t)?,
        };
        Ok(out.to_vec2()?)
    }

    /// L2-normalised embeddings of texts.
    pub fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let ids = texts
            .iter()
            .map(|t| Ok(self.tokenizer.encode(t)?.ids))
            .collect::<Result<Vec<_>>>()?;
        self.embed_token_ids(&ids)
    }

    /// L2-normalised embeddings of already tokenized texts.
    pub fn embed_token_ids(&self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let out = match &self.model {
            Model::Clip(m) => m.text_features(ids)?,
            Model::Siglip(m) => m.text_features(ids)?,
        };
        Ok(out.to_vec2()?)
    }
}
