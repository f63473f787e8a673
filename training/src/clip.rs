//! CLIP (`model_type: clip`): vision transformer with a class token, pre- and post-layernorm and
//! a linear projection; causal text transformer pooled at the end-of-text token. Every size
//! comes from `config.json`, with transformers' defaults for absent keys.

use std::path::Path;

use candle_core::{D, DType, Device, IndexOp, Module, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::layers::{
    Activation, Encoder, Norm, PatchEmbedding, TowerShape, l2_normalize, layer_norm,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    pub eos_token_id: u32,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        ClipTextConfig {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            eos_token_id: 49407,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        ClipVisionConfig {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            image_size: 224,
            patch_size: 32,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ClipConfig {
    #[serde(default)]
    pub text_config: ClipTextConfig,
    #[serde(default)]
    pub vision_config: ClipVisionConfig,
    #[serde(default = "default_projection")]
    pub projection_dim: usize,
}

fn default_projection() -> usize {
    512
}

/// A loaded CLIP model.
#[derive(Debug)]
pub struct Clip {
    // text tower
    token_embedding: Embedding,
    position_embedding: Tensor,
    text_encoder: Encoder,
    final_ln: Norm,
    text_projection: Linear,
    eos_token_id: u32,
    // vision tower
    class_embedding: Tensor,
    patch_embedding: PatchEmbedding,
    vision_position: Tensor,
    pre_ln: Norm,
    vision_encoder: Encoder,
    post_ln: Norm,
    visual_projection: Linear,
    pub config: ClipConfig,
    device: Device,
}

impl Clip {
    pub fn new(vb: VarBuilder, config: ClipConfig, config_path: &Path) -> Result<Self> {
        let t = &config.text_config;
        let v = &config.vision_config;
        if !v.image_size.is_multiple_of(v.patch_size) {
            return Err(Error::config(
                config_path,
                format!(
                    "image_size {} is not a multiple of patch_size {}",
                    v.image_size, v.patch_size
                ),
            ));
        }
        let text_shape = TowerShape {
            hidden: t.hidden_size,
            intermediate: t.intermediate_size,
            heads: t.num_attention_heads,
            layers: t.num_hidden_layers,
            eps: t.layer_norm_eps,
            act: Activation::from_config(&t.hidden_act, config_path)?,
        };
        let vision_shape = TowerShape {
            hidden: v.hidden_size,
            intermediate: v.intermediate_size,
            heads: v.num_attention_heads,
            layers: v.num_hidden_layers,
            eps: v.layer_norm_eps,
            act: Activation::from_config(&v.hidden_act, config_path)?,
        };
        let tv = vb.pp("text_model");
        let vv = vb.pp("vision_model");
        let patches = (v.image_size / v.patch_size).pow(2);
        Ok(Clip {
            token_embedding: candle_nn::embedding(
                t.vocab_size,
                t.hidden_size,
                tv.pp("embeddings.token_embedding"),
            )?,
            position_embedding: tv.get(
                (t.max_position_embeddings, t.hidden_size),
                "embeddings.position_embedding.weight",
            )?,
            text_encoder: Encoder::new(tv.pp("encoder"), &text_shape)?,
            final_ln: layer_norm(t.hidden_size, t.layer_norm_eps, tv.pp("final_layer_norm"))?,
            text_projection: candle_nn::linear_no_bias(
                t.hidden_size,
                config.projection_dim,
                vb.pp("text_projection"),
            )?,
            eos_token_id: t.eos_token_id,
            class_embedding: vv.get(v.hidden_size, "embeddings.class_embedding")?,
            patch_embedding: PatchEmbedding::new(
                vv.pp("embeddings.patch_embedding"),
                v.hidden_size,
                v.patch_size,
                false,
            )?,
            vision_position: vv.get(
                (patches + 1, v.hidden_size),
                "embeddings.position_embedding.weight",
            )?,
            pre_ln: layer_norm(v.hidden_size, v.layer_norm_eps, vv.pp("pre_layrnorm"))?,
            vision_encoder: Encoder::new(vv.pp("encoder"), &vision_shape)?,
            post_ln: layer_norm(v.hidden_size, v.layer_norm_eps, vv.pp("post_layernorm"))?,
            visual_projection: candle_nn::linear_no_bias(
                v.hidden_size,
                config.projection_dim,
                vb.pp("visual_projection"),
            )?,
            device: vb.device().clone(),
            config,
        })
    }

    pub fn image_size(&self) -> usize {
        self.config.vision_config.image_size
    }

    /// Size of the shared embedding space.
    pub fn embedding_dim(&self) -> usize {
        self.config.projection_dim
    }

    /// L2-normalised image embeddings of `[B, 3, S, S]` pixel values.
    pub fn image_features(&self, pixels: &Tensor) -> Result<Tensor> {
        self.image_features_prompted(pixels, &[])
    }

    /// Width and depth of the vision transformer (the shape ELIP's prompts take).
    pub fn vision_shape(&self) -> (usize, usize) {
        let v = &self.config.vision_config;
        (v.hidden_size, v.num_hidden_layers)
    }

    /// The mean patch token at the input of each of the first `layers` vision layers (class token excluded).
    pub fn vision_token_means(&self, pixels: &Tensor, layers: usize) -> Result<Vec<Tensor>> {
        Ok(self.vision_encoder.token_means(
            &self.pre_ln.forward(&self.vision_tokens(pixels)?)?,
            1,
            layers,
        )?)
    }

    /// The class token and patch embeddings with their positions, `[B, 1 + N, H]`.
    fn vision_tokens(&self, pixels: &Tensor) -> Result<Tensor> {
        let b = pixels.dim(0)?;
        let patches = self.patch_embedding.forward(pixels)?;
        let hidden = self.class_embedding.dim(0)?;
        let cls = self
            .class_embedding
            .reshape((1, 1, hidden))?
            .broadcast_as((b, 1, hidden))?;
        Ok(Tensor::cat(&[&cls, &patches], 1)?.broadcast_add(&self.vision_position)?)
    }

    /// Image embeddings with ELIP's visual prompts inserted after the class token (see
    /// [`crate::layers::Encoder::forward_prompted`]), after the pre-norm as the reference does.
    pub fn image_features_prompted(&self, pixels: &Tensor, prompts: &[Tensor]) -> Result<Tensor> {
        let x = self
            .vision_encoder
            .forward_prompted(&self.pre_ln.forward(&self.vision_tokens(pixels)?)?, prompts)?;
        let pooled = self.post_ln.forward(&x.i((.., 0, ..))?)?;
        Ok(l2_normalize(&self.visual_projection.forward(&pooled)?)?)
    }

    /// L2-normalised text embeddings; `ids` are token id sequences (any lengths up to the model's
    /// maximum), pooled at the end-of-text token as transformers does.
    pub fn text_features(&self, ids: &[Vec<u32>]) -> Result<Tensor> {
        let max_pos = self.position_embedding.dim(0)?;
        let len = ids.iter().map(Vec::len).max().unwrap_or(0).max(1);
        if len > max_pos {
            return Err(Error::InvalidArgument(format!(
                "a sequence of {len} tokens exceeds the model's {max_pos} positions"
            )));
        }
        // Pad after the end token: the causal mask keeps padding out of the pooled position.
        let mut flat = Vec::with_capacity(ids.len() * len);
        let mut pool = Vec::with_capacity(ids.len());
        for seq in ids {
            pool.push(self.pool_position(seq) as u32);
            flat.extend(
                seq.iter()
                    .copied()
                    .chain(std::iter::repeat_n(0, len - seq.len())),
            );
        }
        let input = Tensor::from_vec(flat, (ids.len(), len), &self.device)?;
        let x = self
            .token_embedding
            .forward(&input)?
            .broadcast_add(&self.position_embedding.narrow(0, 0, len)?)?;
        let mask = causal_mask(len, &self.device)?;
        let x = self
            .final_ln
            .forward(&self.text_encoder.forward(&x, Some(&mask))?)?;
        let idx = Tensor::from_vec(pool, ids.len(), &self.device)?;
        let hidden = x.dim(D::Minus1)?;
        let pooled = x
            .gather(
                &idx.reshape((ids.len(), 1, 1))?
                    .broadcast_as((ids.len(), 1, hidden))?
                    .contiguous()?,
                1,
            )?
            .squeeze(1)?;
        Ok(l2_normalize(&self.text_projection.forward(&pooled)?)?)
    }

    /// Position of the end-of-text token: the first `eos_token_id`, or for legacy configs whose
    /// eos id is 2, the highest id (the original CLIP's argmax).
    fn pool_position(&self, seq: &[u32]) -> usize {
        if self.eos_token_id == 2 {
            return seq
                .iter()
                .enumerate()
                .max_by_key(|(i, t)| (**t, std::cmp::Reverse(*i)))
                .map_or(0, |(i, _)| i);
        }
        seq.iter()
            .position(|&t| t == self.eos_token_id)
            .unwrap_or(seq.len().saturating_sub(1))
    }
}

fn causal_mask(len: usize, device: &Device) -> candle_core::Result<Tensor> {
    let mask: Vec<f32> = (0..len)
        .flat_map(|i| (0..len).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (1, 1, len, len), device)?.to_dtype(DType::F32)
}
