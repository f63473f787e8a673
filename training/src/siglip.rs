//! SigLIP (`model_type: siglip`), also used by fixed-resolution SigLIP 2 checkpoints: vision
//! transformer without class token, pooled by a multi-head attention probe (MAP head); text
//! transformer without causal mask, pooled at the last position and projected by `head`.

use std::path::Path;

use candle_core::{IndexOp, Module, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::layers::{
    Activation, Dense, Encoder, Mlp, Norm, PatchEmbedding, TowerShape, l2_normalize, layer_norm,
    softmax_last_dim,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SiglipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    /// Output size of `text_model.head`; transformers defaults it to `hidden_size`.
    pub projection_size: Option<usize>,
}

impl Default for SiglipTextConfig {
    fn default() -> Self {
        SiglipTextConfig {
            vocab_size: 32000,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 64,
            hidden_act: "gelu_pytorch_tanh".into(),
            layer_norm_eps: 1e-6,
            projection_size: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SiglipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    pub vision_use_head: bool,
}

impl Default for SiglipVisionConfig {
    fn default() -> Self {
        SiglipVisionConfig {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            image_size: 224,
            patch_size: 16,
            hidden_act: "gelu_pytorch_tanh".into(),
            layer_norm_eps: 1e-6,
            vision_use_head: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct SiglipConfig {
    #[serde(default)]
    pub text_config: SiglipTextConfig,
    #[serde(default)]
    pub vision_config: SiglipVisionConfig,
}

/// The multi-head attention pooling head (`vision_model.head`): a learned probe attends over
/// the patch features (PyTorch `nn.MultiheadAttention` with packed input projections).
#[derive(Debug)]
struct MapHead {
    probe: Tensor,
    q: Dense,
    k: Dense,
    v: Dense,
    out: Dense,
    ln: Norm,
    mlp: Mlp,
    heads: usize,
}

impl MapHead {
    fn new(vb: VarBuilder, s: &TowerShape) -> candle_core::Result<Self> {
        let h = s.hidden;
        let w = vb.get((3 * h, h), "attention.in_proj_weight")?;
        let b = vb.get(3 * h, "attention.in_proj_bias")?;
        let part = |i: usize| -> candle_core::Result<Dense> {
            Dense::new(w.narrow(0, i * h, h)?, Some(b.narrow(0, i * h, h)?))
        };
        Ok(MapHead {
            probe: vb.get((1, 1, h), "probe")?,
            q: part(0)?,
            k: part(1)?,
            v: part(2)?,
            out: Dense::load(vb.pp("attention.out_proj"), h, h, true)?,
            ln: layer_norm(h, s.eps, vb.pp("layernorm"))?,
            mlp: Mlp::new(vb.pp("mlp"), h, s.intermediate, s.act)?,
            heads: s.heads,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, n, h) = x.dims3()?;
        let hd = h / self.heads;
        let probe = self.probe.broadcast_as((b, 1, h))?;
        let q = (self.q.forward(&probe)? * (hd as f64).powf(-0.5))?
            .reshape((b, 1, self.heads, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let split = |t: Tensor| {
            t.reshape((b, n, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let k = split(self.k.forward(x)?)?;
        let v = split(self.v.forward(x)?)?;
        let probs = softmax_last_dim(&crate::layers::matmul(&q, &k.t()?)?)?;
        let ctx = crate::layers::matmul(&probs, &v)?
            .transpose(1, 2)?
            .reshape((b, 1, h))?;
        let attended = self.out.forward(&ctx)?;
        let y = (&attended + self.mlp.forward(&self.ln.forward(&attended)?)?)?;
        y.i((.., 0, ..))
    }
}

/// A loaded SigLIP model.
#[derive(Debug)]
pub struct Siglip {
    token_embedding: Embedding,
    text_position: Tensor,
    text_encoder: Encoder,
    final_ln: Norm,
    text_head: Linear,
    patch_embedding: PatchEmbedding,
    vision_position: Tensor,
    vision_encoder: Encoder,
    post_ln: Norm,
    map_head: MapHead,
    pub config: SiglipConfig,
    device: candle_core::Device,
}

fn shape(
    hidden: usize,
    intermediate: usize,
    heads: usize,
    layers: usize,
    eps: f64,
    act: &str,
    path: &Path,
) -> Result<TowerShape> {
    Ok(TowerShape {
        hidden,
        intermediate,
        heads,
        layers,
        eps,
        act: Activation::from_config(act, path)?,
    })
}

impl Siglip {
    pub fn new(vb: VarBuilder, config: SiglipConfig, config_path: &Path) -> Result<Self> {
        let t = &config.text_config;
        let v = &config.vision_config;
        if !v.vision_use_head {
            return Err(Error::UnsupportedModel {
                path: config_path.to_path_buf(),
                found: "siglip with vision_use_head = false".into(),
                supported: "siglip vision towers with an attention-pooling head".into(),
            });
        }
        if !v.image_size.is_multiple_of(v.patch_size) {
            return Err(Error::config(
                config_path,
                format!(
                    "image_size {} is not a multiple of patch_size {}",
                    v.image_size, v.patch_size
                ),
            ));
        }
        let ts = shape(
            t.hidden_size,
            t.intermediate_size,
            t.num_attention_heads,
            t.num_hidden_layers,
            t.layer_norm_eps,
            &t.hidden_act,
            config_path,
        )?;
        let vs = shape(
            v.hidden_size,
            v.intermediate_size,
            v.num_attention_heads,
            v.num_hidden_layers,
            v.layer_norm_eps,
            &v.hidden_act,
            config_path,
        )?;
        let tv = vb.pp("text_model");
        let vv = vb.pp("vision_model");
        let patches = (v.image_size / v.patch_size).pow(2);
        let projection = t.projection_size.unwrap_or(t.hidden_size);
        Ok(Siglip {
            token_embedding: candle_nn::embedding(
                t.vocab_size,
                t.hidden_size,
                tv.pp("embeddings.token_embedding"),
            )?,
            text_position: tv.get(
                (t.max_position_embeddings, t.hidden_size),
                "embeddings.position_embedding.weight",
            )?,
            text_encoder: Encoder::new(tv.pp("encoder"), &ts)?,
            final_ln: layer_norm(t.hidden_size, t.layer_norm_eps, tv.pp("final_layer_norm"))?,
            text_head: candle_nn::linear(t.hidden_size, projection, tv.pp("head"))?,
            patch_embedding: PatchEmbedding::new(
                vv.pp("embeddings.patch_embedding"),
                v.hidden_size,
                v.patch_size,
                true,
            )?,
            vision_position: vv.get(
                (patches, v.hidden_size),
                "embeddings.position_embedding.weight",
            )?,
            vision_encoder: Encoder::new(vv.pp("encoder"), &vs)?,
            post_ln: layer_norm(v.hidden_size, v.layer_norm_eps, vv.pp("post_layernorm"))?,
            map_head: MapHead::new(vv.pp("head"), &vs)?,
            device: vb.device().clone(),
            config,
        })
    }

    pub fn image_size(&self) -> usize {
        self.config.vision_config.image_size
    }

    /// Size of the shared embedding space (the vision width, which the text head projects to).
    pub fn embedding_dim(&self) -> usize {
        self.config.vision_config.hidden_size
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

    /// The mean patch token at the input of each of the first `layers` vision layers.
    pub fn vision_token_means(&self, pixels: &Tensor, layers: usize) -> Result<Vec<Tensor>> {
        Ok(self
            .vision_encoder
            .token_means(&self.vision_tokens(pixels)?, 0, layers)?)
    }

    /// Patch embeddings with their positions, `[B, N, H]`.
    fn vision_tokens(&self, pixels: &Tensor) -> Result<Tensor> {
        Ok(self
            .patch_embedding
            .forward(pixels)?
            .broadcast_add(&self.vision_position)?)
    }

    /// Image embeddings with ELIP's visual prompts. SigLIP has no class token: the prompts go
    /// among the patch tokens, after the first one, and the attention-pooling head sees them.
    pub fn image_features_prompted(&self, pixels: &Tensor, prompts: &[Tensor]) -> Result<Tensor> {
        let x = self.post_ln.forward(
            &self
                .vision_encoder
                .forward_prompted(&self.vision_tokens(pixels)?, prompts)?,
        )?;
        Ok(l2_normalize(&self.map_head.forward(&x)?)?)
    }

    /// L2-normalised text embeddings of equal-length id sequences (SigLIP pads to the maximum
    /// length and pools the last position, as it was trained).
    pub fn text_features(&self, ids: &[Vec<u32>]) -> Result<Tensor> {
        let len = ids.first().map_or(0, Vec::len);
        if ids.iter().any(|s| s.len() != len) || len == 0 || len > self.text_position.dim(0)? {
            return Err(Error::InvalidArgument(format!(
                "SigLIP needs sequences of one length up to {} (padded to max length)",
                self.text_position.dim(0)?
            )));
        }
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let input = Tensor::from_vec(flat, (ids.len(), len), &self.device)?;
        let x = self
            .token_embedding
            .forward(&input)?
            .broadcast_add(&self.text_position.narrow(0, 0, len)?)?;
        let x = self
            .final_ln
            .forward(&self.text_encoder.forward(&x, None)?)?;
        // Contiguous: CUDA's matrix product takes no row-strided operand (the CPU's does).
        let last = x.i((.., len - 1, ..))?.contiguous()?;
        Ok(l2_normalize(&self.text_head.forward(&last)?)?)
    }
}
