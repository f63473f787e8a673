//! Loading a checkpoint folder in Hugging Face layout and embedding images and texts with it.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::clip::{Clip, ClipConfig};
use crate::error::{Error, Result};
use crate::preprocess::{ImageProcessor, Resample, ResizeTo};
use crate::tokenize::TextTokenizer;

/// Model families this build implements.
pub const SUPPORTED_MODEL_TYPES: &str = "clip";

/// An image-text dual encoder loaded from a checkpoint.
#[derive(Debug)]
pub struct DualEncoder {
    model: Clip,
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
fn weight_files(folder: &Path) -> Result<Vec<PathBuf>> {
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
    }
}

impl DualEncoder {
    /// Loads a checkpoint folder (config.json, safetensors weights, tokenizer, preprocessor).
    pub fn load(folder: &Path, device: &Device) -> Result<Self> {
        let config_path = folder.join("config.json");
        let config = read_json(&config_path)?;
        let model_type = config
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        if model_type != "clip" {
            return Err(Error::UnsupportedModel {
                path: config_path,
                found: model_type.to_string(),
                supported: SUPPORTED_MODEL_TYPES.to_string(),
            });
        }
        let cfg: ClipConfig = serde_json::from_value(config)
            .map_err(|e| Error::config(&config_path, e.to_string()))?;
        let files = weight_files(folder)?;
        // SAFETY: safetensors files of a checkpoint are mapped read-only and not modified while
        // the model lives; this is the crate's only mapping call.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, DType::F32, device) }
            .map_err(|e| Error::Weights {
                path: files[0].clone(),
                detail: e.to_string(),
            })?;
        let max_len = cfg.text_config.max_position_embeddings;
        let model = Clip::new(vb, cfg, &config_path).map_err(|e| match e {
            Error::Tensor(t) => Error::Weights {
                path: files[0].clone(),
                detail: t.to_string(),
            },
            other => other,
        })?;
        let processor = ImageProcessor::from_folder(folder, &clip_processor_defaults())?;
        let tokenizer = TextTokenizer::from_file(&folder.join("tokenizer.json"), max_len, None)?;
        Ok(DualEncoder {
            model,
            processor,
            tokenizer,
            folder: folder.to_path_buf(),
            device: device.clone(),
        })
    }

    pub fn folder(&self) -> &Path {
        &self.folder
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
    pub fn embed_pixels(&self, pixels: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        let s = self.model.image_size();
        let flat: Vec<f32> = pixels.iter().flatten().copied().collect();
        let t = Tensor::from_vec(flat, (pixels.len(), 3, s, s), &self.device)?;
        Ok(self.model.image_features(&t)?.to_vec2()?)
    }

    /// L2-normalised embeddings of texts.
    pub fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let ids = texts
            .iter()
            .map(|t| Ok(self.tokenizer.encode(t)?.ids))
            .collect::<Result<Vec<_>>>()?;
        Ok(self.model.text_features(&ids)?.to_vec2()?)
    }
}
