//! ELIP (Zhan, Liu, Han, Xie, Zisserman, arXiv 2502.15682): a mapping network turns a query's
//! text embedding into visual prompts for the frozen image encoder, which then re-scores the
//! first stage's top-K images under those prompts.
//!
//! - The mapper is an MLP (linear, GELU, linear, GELU, linear) from the backbone's embedding
//!   to `m` prompt vectors of the vision transformer's width, `hidden * m` wide inside. The deep
//!   variant has one more such MLP per later layer, whose prompts replace the previous ones.
//! - Prompts enter after the vision tower's first token (see
//!   [`crate::layers::Encoder::forward_prompted`]): after CLIP's class token, among SigLIP's
//!   patch tokens.
//! - The score of image `j` for query `t` is the cosine of `t`'s text embedding with image `j`
//!   encoded under `t`'s prompts. Training scores every image of a batch under every text
//!   (B x B encoder passes; [`Negatives::InBatch`]), plus optionally the images the first stage
//!   confuses each text with ([`Negatives::Retrieved`]): InfoNCE from text to image at
//!   the backbone's frozen temperature for CLIP, the pairwise sigmoid loss with its frozen scale
//!   and bias for SigLIP.
//!
//! Saved as `elip_config.json` and `model.safetensors`, tensors named
//! `generators.{layer}.{0,2,4}.{weight,bias}` (a PyTorch `ModuleList` of `Sequential`s).

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::encoder::{DualEncoder, Model, weight_files};
use crate::error::{Error, Result};
use crate::finetune::{FinetuneConfig, FinetuneReport, PairData, train_pairs};
use crate::layers::{Activation, Dense};
use crate::train::{Loss, Optimizer};

pub const CONFIG_FILE: &str = "elip_config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Training images whose mean patch token starts the prompts ([`ElipMapper::anchor_prompts`]).
pub const ANCHOR_SAMPLE: usize = 256;

/// The mapper's shape and the backbone it was made for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ElipConfig {
    /// Prompt vectors per image (the paper's m; 10 in the reference).
    pub prompts: usize,
    /// Hidden width per prompt (the MLP is `hidden * prompts` wide; 1024 in the reference).
    pub hidden: usize,
    /// One mapper per vision layer instead of prompts at the input only.
    pub deep: bool,
    /// Dropout on the prompts while training.
    pub dropout: f64,
    /// The backbone's embedding size (the mapper's input).
    pub embedding_dim: usize,
    /// The vision transformer's width (each prompt's size) and depth.
    pub vision_width: usize,
    pub vision_layers: usize,
    /// `clip` or `siglip`: which loss trains it.
    pub family: String,
}

impl ElipConfig {
    /// A configuration for `model` with `prompts` prompts of `hidden` width each.
    pub fn for_model(model: &Model, prompts: usize, hidden: usize, deep: bool) -> Result<Self> {
        if prompts == 0 || hidden == 0 {
            return Err(Error::InvalidArgument(
                "ELIP needs at least one prompt and a hidden width of at least 1".into(),
            ));
        }
        let (width, layers) = model.vision_shape();
        Ok(ElipConfig {
            prompts,
            hidden,
            deep,
            dropout: 0.1,
            embedding_dim: model.embedding_dim(),
            vision_width: width,
            vision_layers: layers,
            family: model.family().to_string(),
        })
    }

    /// Mappers: one, or one per vision layer in the deep variant.
    fn generators(&self) -> usize {
        if self.deep { self.vision_layers } else { 1 }
    }

    /// `(name, rows, cols)` of each linear layer's weight, in file order.
    fn linears(&self) -> Vec<(String, usize, usize)> {
        let inner = self.hidden * self.prompts;
        let out = self.vision_width * self.prompts;
        (0..self.generators())
            .flat_map(|g| {
                [
                    (format!("generators.{g}.0"), inner, self.embedding_dim),
                    (format!("generators.{g}.2"), inner, inner),
                    (format!("generators.{g}.4"), out, inner),
                ]
            })
            .collect()
    }

    /// Checks that the mapper fits `model`: same embedding size, vision width and depth.
    pub fn check_backbone(&self, model: &Model) -> Result<()> {
        let (width, layers) = model.vision_shape();
        let fits = self.embedding_dim == model.embedding_dim()
            && self.vision_width == width
            && self.vision_layers == layers
            && self.family == model.family();
        if fits {
            return Ok(());
        }
        Err(Error::InvalidArgument(format!(
            "this ELIP mapper was made for a {} backbone with {}-d embeddings and a {}-layer \
             vision tower {} wide, not a {} one with {}-d embeddings, {layers} layers {width} wide",
            self.family,
            self.embedding_dim,
            self.vision_layers,
            self.vision_width,
            model.family(),
            model.embedding_dim()
        )))
    }
}

/// The variables of a map, locked.
fn variables(
    varmap: &VarMap,
) -> Result<std::sync::MutexGuard<'_, std::collections::HashMap<String, Var>>> {
    varmap
        .data()
        .lock()
        .map_err(|_| Error::InvalidArgument("the variable map was poisoned".into()))
}

/// The trainable mapping network.
pub struct ElipMapper {
    pub config: ElipConfig,
    /// Its variables by file name.
    pub varmap: VarMap,
    generators: Vec<[Dense; 3]>,
}

impl std::fmt::Debug for ElipMapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElipMapper")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ElipMapper {
    /// A new mapper, initialised as the reference does (weights normal with std 0.02, biases 0)
    /// from `seed`.
    pub fn new(config: ElipConfig, seed: u64, device: &Device) -> Result<Self> {
        let mut rng = StdRng::seed_from_u64(seed);
        let varmap = VarMap::new();
        {
            let mut vars = variables(&varmap)?;
            for (name, rows, cols) in config.linears() {
                let w: Vec<f32> = (0..rows * cols)
                    .map(|_| crate::scratch::normal(&mut rng) * 0.02)
                    .collect();
                let w = Tensor::from_vec(w, (rows, cols), device)?;
                vars.insert(format!("{name}.weight"), Var::from_tensor(&w)?);
                vars.insert(
                    format!("{name}.bias"),
                    Var::from_tensor(&Tensor::zeros(rows, DType::F32, device)?)?,
                );
            }
        }
        Self::from_varmap(config, varmap)
    }

    /// Loads a mapper saved by [`ElipMapper::save`] (or written by PyTorch with these names).
    pub fn load(folder: &Path, device: &Device) -> Result<Self> {
        let config_path = folder.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let config: ElipConfig =
            serde_json::from_str(&text).map_err(|e| Error::config(&config_path, e.to_string()))?;
        let path = folder.join(WEIGHTS_FILE);
        let tensors =
            candle_core::safetensors::load(&path, device).map_err(|e| Error::Weights {
                path: path.clone(),
                detail: e.to_string(),
            })?;
        let varmap = VarMap::new();
        {
            let mut vars = variables(&varmap)?;
            for (name, rows, cols) in config.linears() {
                for (suffix, shape) in [("weight", vec![rows, cols]), ("bias", vec![rows])] {
                    let key = format!("{name}.{suffix}");
                    let t = tensors.get(&key).ok_or_else(|| Error::Weights {
                        path: path.clone(),
                        detail: format!("no tensor '{key}'"),
                    })?;
                    if t.dims() != shape.as_slice() {
                        return Err(Error::Weights {
                            path: path.clone(),
                            detail: format!("'{key}' is {:?}, expected {shape:?}", t.dims()),
                        });
                    }
                    vars.insert(key, Var::from_tensor(&t.to_dtype(DType::F32)?)?);
                }
            }
        }
        Self::from_varmap(config, varmap)
    }

    fn from_varmap(config: ElipConfig, varmap: VarMap) -> Result<Self> {
        let generators = {
            let vars = variables(&varmap)?;
            let dense = |name: &str| -> Result<Dense> {
                let get = |k: String| -> Result<Tensor> {
                    vars.get(&k)
                        .map(|v| v.as_tensor().clone())
                        .ok_or_else(|| Error::InvalidArgument(format!("no variable '{k}'")))
                };
                Ok(Dense::new(
                    get(format!("{name}.weight"))?,
                    Some(get(format!("{name}.bias"))?),
                )?)
            };
            (0..config.generators())
                .map(|g| {
                    Ok([
                        dense(&format!("generators.{g}.0"))?,
                        dense(&format!("generators.{g}.2"))?,
                        dense(&format!("generators.{g}.4"))?,
                    ])
                })
                .collect::<Result<Vec<_>>>()?
        };
        Ok(ElipMapper {
            config,
            varmap,
            generators,
        })
    }

    /// Starts each generator's prompts at the mean patch token of the layer they enter, over
    /// the first [`ANCHOR_SAMPLE`] images of `data`: the last linear layer's bias becomes that
    /// token for every prompt. With the reference's near-zero start, the frozen tower meets
    /// `m` tokens unlike any it was trained on, which disrupts a small backbone badly before
    /// training; tokens like a typical patch leave its ranking nearly as it was.
    pub fn anchor_prompts(&self, encoder: &DualEncoder, data: &PairData) -> Result<()> {
        let sample: Vec<usize> = (0..data.images.len().min(ANCHOR_SAMPLE)).collect();
        let pixels = data.image_tensor(&sample, encoder)?;
        let means = encoder
            .model
            .vision_token_means(&pixels, self.generators.len())?;
        let vars = variables(&self.varmap)?;
        for g in 0..self.generators.len() {
            let layer = if self.config.deep { g } else { 0 };
            let mean = means.get(layer).ok_or_else(|| {
                Error::InvalidArgument(format!("the backbone has no vision layer {layer}"))
            })?;
            let key = format!("generators.{g}.4.bias");
            let bias = vars
                .get(&key)
                .ok_or_else(|| Error::InvalidArgument(format!("no variable '{key}'")))?;
            let tiled = mean
                .to_dtype(DType::F32)?
                .unsqueeze(0)?
                .broadcast_as((self.config.prompts, self.config.vision_width))?
                .flatten_all()?;
            bias.set(&tiled)?;
        }
        Ok(())
    }

    /// Writes `elip_config.json` and `model.safetensors` into `folder`.
    pub fn save(&self, folder: &Path) -> Result<()> {
        std::fs::create_dir_all(folder).map_err(|e| Error::io(folder, e))?;
        let config_path = folder.join(CONFIG_FILE);
        let json = serde_json::to_string_pretty(&self.config)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        std::fs::write(&config_path, json).map_err(|e| Error::io(&config_path, e))?;
        let path = folder.join(WEIGHTS_FILE);
        self.varmap.save(&path).map_err(|e| Error::Weights {
            path: path.clone(),
            detail: e.to_string(),
        })
    }

    /// The prompts for text embeddings `[B, d]`: one `[B, m, width]` tensor per mapper. With
    /// `dropout`, prompt values are zeroed with the config's probability (scaled as inverted
    /// dropout) from that generator, so training runs repeat.
    pub fn prompts(&self, texts: &Tensor, dropout: Option<&mut StdRng>) -> Result<Vec<Tensor>> {
        let b = texts.dim(0)?;
        let (m, w) = (self.config.prompts, self.config.vision_width);
        let mut out = Vec::with_capacity(self.generators.len());
        let mut rng = dropout;
        for [l1, l2, l3] in &self.generators {
            let h = l1.forward_act(texts, Some(Activation::Gelu))?;
            let h = l2.forward_act(&h, Some(Activation::Gelu))?;
            let mut p = l3.forward(&h)?.reshape((b, m, w))?;
            if let Some(rng) = rng.as_deref_mut() {
                let keep = 1.0 - self.config.dropout;
                if keep < 1.0 {
                    let mask: Vec<f32> = (0..b * m * w)
                        .map(|_| {
                            if rng.random::<f64>() < keep {
                                (1.0 / keep) as f32
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    p = p.mul(&Tensor::from_vec(mask, (b, m, w), texts.device())?)?;
                }
            }
            out.push(p);
        }
        Ok(out)
    }
}

/// Embeddings of image `i` under the prompts of text `i`, for pixels `[N, 3, S, S]` and
/// L2-normalised text embeddings `[N, d]`: `[N, d]`, L2-normalised.
pub fn prompted_image_features(
    model: &Model,
    mapper: &ElipMapper,
    pixels: &Tensor,
    texts: &Tensor,
) -> Result<Tensor> {
    let prompts = inference_prompts(mapper, texts)?;
    model.image_features_prompted(pixels, &prompts)
}

/// The prompts for inference: detached from the mapper's variables, so the image encoder runs
/// its fused inference kernels and records no graph.
fn inference_prompts(mapper: &ElipMapper, texts: &Tensor) -> Result<Vec<Tensor>> {
    Ok(mapper
        .prompts(texts, None)?
        .into_iter()
        .map(|p| p.detach())
        .collect())
}

/// The backbone's temperature and bias: `exp(logit_scale)` and `logit_bias` when present.
pub fn backbone_logits(encoder: &DualEncoder) -> Result<(f64, Option<f64>)> {
    let files = weight_files(encoder.folder())?;
    let weights = crate::train::Weights::open(&files)?;
    let scalar = |name: &str| -> Result<Option<f64>> {
        if !weights.contains(name) {
            return Ok(None);
        }
        let t = weights.load(name)?;
        Ok(Some(f64::from(
            t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?[0],
        )))
    };
    let scale = scalar("logit_scale")?.ok_or_else(|| Error::Weights {
        path: encoder.folder().join(WEIGHTS_FILE),
        detail: "the checkpoint has no 'logit_scale', which ELIP's loss needs".into(),
    })?;
    Ok((scale.exp(), scalar("logit_bias")?))
}

/// ELIP's training loss on a batch of B pairs (image `i` with text `i`): every image scored
/// under every text's prompts. `texts` are the frozen text tower's L2-normalised embeddings;
/// `scale` and `bias` the backbone's (frozen).
pub fn batch_loss(
    model: &Model,
    mapper: &ElipMapper,
    pixels: &Tensor,
    texts: &Tensor,
    logits: (f64, Option<f64>),
    dropout: Option<&mut StdRng>,
) -> Result<Tensor> {
    let b = pixels.dim(0)? as u32;
    let every: Vec<Vec<u32>> = (0..b).map(|_| (0..b).collect()).collect();
    let positives: Vec<u32> = (0..b).collect();
    candidate_loss(
        model,
        mapper,
        (pixels, &every, &positives),
        texts,
        logits,
        dropout,
    )
}

/// ELIP's loss when text `t` scores the images `candidates[t]` (rows of the pixel pool
/// `[P, 3, S, S]`, the same number per text), its own image at `candidates[t][positives[t]]`:
/// InfoNCE over each text's candidates for CLIP, the signed sigmoid loss for SigLIP.
pub fn candidate_loss(
    model: &Model,
    mapper: &ElipMapper,
    (pool, candidates, positives): (&Tensor, &[Vec<u32>], &[u32]),
    texts: &Tensor,
    (scale, bias): (f64, Option<f64>),
    dropout: Option<&mut StdRng>,
) -> Result<Tensor> {
    let b = texts.dim(0)?;
    let k = candidates.first().map_or(0, Vec::len);
    if candidates.len() != b || positives.len() != b || candidates.iter().any(|c| c.len() != k) {
        return Err(Error::InvalidArgument(format!(
            "ELIP's loss needs one positive and the same number of candidates per text: {b} \
             texts, {} candidate lists, {} positives",
            candidates.len(),
            positives.len()
        )));
    }
    let d = texts.dim(1)?;
    // Row t * K + j: candidate j of text t.
    let flat: Vec<u32> = candidates.iter().flatten().copied().collect();
    let tiled_pixels = pool.index_select(&Tensor::from_vec(flat, b * k, pool.device())?, 0)?;
    let prompts: Vec<Tensor> = mapper
        .prompts(texts, dropout)?
        .into_iter()
        .map(|p| {
            let (m, w) = (p.dim(1)?, p.dim(2)?);
            p.unsqueeze(1)?
                .broadcast_as((b, k, m, w))?
                .reshape((b * k, m, w))
        })
        .collect::<candle_core::Result<_>>()?;
    let images = model.image_features_prompted(&tiled_pixels, &prompts)?;
    let tiled_texts = texts
        .unsqueeze(1)?
        .broadcast_as((b, k, d))?
        .reshape((b * k, d))?;
    let logits = ((images * tiled_texts)?.sum(1)?.reshape((b, k))? * scale)?;
    let loss = match Loss::for_model(model) {
        Loss::InfoNce => {
            let labels = Tensor::from_slice(positives, b, pool.device())?;
            candle_nn::loss::cross_entropy(&logits, &labels)?
        }
        Loss::Sigmoid => {
            let bias = bias.ok_or_else(|| {
                Error::InvalidArgument("the sigmoid loss needs the backbone's logit_bias".into())
            })?;
            crate::train::signed_sigmoid_loss(&(logits + bias)?, positives)?
        }
    };
    Ok(loss)
}

/// Re-scores candidate images for one query: the cosine of the query's text embedding with
/// each candidate encoded under the query's prompts. `pixels` are the candidates' preprocessed
/// pixels; they run through the image encoder in batches of `batch`.
pub fn rerank_scores(
    encoder: &DualEncoder,
    mapper: &ElipMapper,
    text: &[f32],
    pixels: &[impl AsRef<[f32]>],
    batch: usize,
) -> Result<Vec<f32>> {
    let device = encoder.device();
    let d = text.len();
    let query = Tensor::from_slice(text, (1, d), device)?;
    let prompts = inference_prompts(mapper, &query)?;
    let s = encoder.model.image_size();
    let mut scores = Vec::with_capacity(pixels.len());
    for chunk in pixels.chunks(batch.max(1)) {
        let n = chunk.len();
        let flat: Vec<f32> = chunk.iter().flat_map(|p| p.as_ref()).copied().collect();
        let px = Tensor::from_vec(flat, (n, 3, s, s), device)?;
        let p: Vec<Tensor> = prompts
            .iter()
            .map(|p| p.broadcast_as((n, p.dim(1)?, p.dim(2)?)))
            .collect::<candle_core::Result<_>>()?;
        let images = encoder.model.image_features_prompted(&px, &p)?;
        let sims = images.matmul(&query.t()?)?.squeeze(1)?;
        scores.extend(sims.to_vec1::<f32>()?);
    }
    Ok(scores)
}

/// The frozen text tower's L2-normalised embeddings of token id sequences, `[N, d]`.
fn caption_embeddings(encoder: &DualEncoder, captions: &[Vec<u32>]) -> Result<Tensor> {
    const CHUNK: usize = 256;
    let mut rows = Vec::with_capacity(captions.len());
    for chunk in captions.chunks(CHUNK) {
        rows.extend(encoder.embed_token_ids(chunk)?);
    }
    let d = encoder.model.embedding_dim();
    let flat: Vec<f32> = rows.into_iter().flatten().collect();
    Ok(Tensor::from_vec(
        flat,
        (captions.len(), d),
        encoder.device(),
    )?)
}

/// Which images each caption of a training batch is scored against.
#[derive(Debug, Clone, Copy)]
pub enum Negatives<'a> {
    /// Every image of the batch: the paper's B x B encoder passes.
    InBatch,
    /// Every image of the batch, and per caption (indexed as [`PairData::captions`]) the N
    /// images other than its own that the first stage ranks highest: the confusions re-ranking
    /// must undo, at B x (B + N) passes. (Retrieved negatives alone let the mapper lower the
    /// loss by making every candidate score alike; the batch's easy negatives forbid that.)
    Retrieved(&'a [Vec<usize>]),
}

/// Trains `mapper` on `data` with the backbone `encoder` frozen (its text embeddings computed
/// once), with fine-tuning's loop: `config`'s epochs, batches (hard pairs together), AdamW,
/// warmup and cosine decay, clipping, accumulation, precision and early stopping (its `freeze`
/// and `loss` do not apply: the loss is the backbone family's). Each caption is scored against
/// its `negatives`. After each epoch `validate` scores the mapper (higher is better); the best
/// one is saved to `out`, or the last one when no epoch beat the untrained mapper.
pub fn train<E: From<Error>>(
    encoder: &DualEncoder,
    mapper: &ElipMapper,
    (data, negatives): (&PairData, Negatives<'_>),
    config: &FinetuneConfig,
    out: &Path,
    mut validate: impl FnMut(&ElipMapper) -> Result<Option<f64>, E>,
) -> Result<FinetuneReport, E> {
    mapper.config.check_backbone(&encoder.model)?;
    if let Negatives::Retrieved(lists) = negatives {
        let n = lists.first().map_or(0, Vec::len);
        if lists.len() != data.captions.len() || n == 0 || lists.iter().any(|l| l.len() != n) {
            return Err(Error::InvalidArgument(format!(
                "retrieved negatives need the same number (at least 1) for each of the {} \
                 captions",
                data.captions.len()
            ))
            .into());
        }
    }
    let device = encoder.device().clone();
    let texts = caption_embeddings(encoder, &data.captions)?;
    let logits = backbone_logits(encoder)?;
    let mut optimiser = Optimizer::over(&mapper.varmap, config.optimiser, |_| true, false)?;
    // Dropout draws from its own stream, so batches stay those of `config.seed`.
    let mut dropout = StdRng::seed_from_u64(config.seed.wrapping_add(1));
    let report = train_pairs(
        &mut optimiser,
        data,
        config,
        |batch, micro, vars| {
            crate::finetune::accumulated(batch, micro, vars, |part| {
                let captions: Vec<u32> = part.iter().map(|&(_, c)| c as u32).collect();
                let n = captions.len();
                let t = texts.index_select(&Tensor::from_vec(captions, n, &device)?, 0)?;
                match negatives {
                    Negatives::InBatch => batch_loss(
                        &encoder.model,
                        mapper,
                        &data.pixel_batch(part, encoder)?,
                        &t,
                        logits,
                        Some(&mut dropout),
                    ),
                    Negatives::Retrieved(lists) => {
                        // The pool: the batch's images, then each caption's retrieved negatives.
                        let extra = lists.first().map_or(0, Vec::len);
                        let images: Vec<usize> = part
                            .iter()
                            .map(|&(i, _)| i)
                            .chain(part.iter().flat_map(|&(_, c)| lists[c].iter().copied()))
                            .collect();
                        let pool = data.image_tensor(&images, encoder)?;
                        let rows: Vec<Vec<u32>> = (0..n)
                            .map(|r| {
                                let own = n + r * extra;
                                (0..n as u32)
                                    .chain(own as u32..(own + extra) as u32)
                                    .collect()
                            })
                            .collect();
                        let positives: Vec<u32> = (0..n as u32).collect();
                        candidate_loss(
                            &encoder.model,
                            mapper,
                            (&pool, &rows, &positives),
                            &t,
                            logits,
                            Some(&mut dropout),
                        )
                    }
                }
            })
        },
        // The backbone is frozen: its neighbours never change.
        |_| Ok(None),
        || validate(mapper),
        || Ok(mapper.save(out)?),
    )?;
    if report.best_epoch == 0 {
        mapper.save(out)?;
    }
    Ok(report)
}
