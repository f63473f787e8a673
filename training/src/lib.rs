//! Mirante's encoders: CLIP and SigLIP in candle (own forward pass, so that later work such as ELIP can
//! inject prompt tokens), image preprocessing identical to transformers' PIL backend, and
//! tokenization through the checkpoint's `tokenizer.json`; and training: checkpoints as
//! variables, the CLIP and SigLIP losses, AdamW and the fine-tuning loop (`train`, `finetune`).

mod clip;
mod encoder;
mod error;
pub mod finetune;
mod fused;
mod hub;
mod layers;
mod pipeline;
pub mod preprocess;
pub mod scratch;
mod siglip;
mod spm;
mod tokenize;
pub mod train;

pub use clip::{Clip, ClipConfig, ClipTextConfig, ClipVisionConfig};
pub use encoder::{DualEncoder, Model, SUPPORTED_MODEL_TYPES, checkpoint_fingerprint};
pub use error::{Error, Result};
pub use finetune::{
    FinetuneConfig, FinetuneReport, Freeze, PairData, TrainImage, finetune, save_checkpoint,
};
pub use hub::{hub_cache_dir, resolve_model};
pub use pipeline::{Embedded, Failure, ImageSource, PipelineOptions, embed_images, embed_texts};
pub use preprocess::ImageProcessor;
pub use siglip::{Siglip, SiglipConfig, SiglipTextConfig, SiglipVisionConfig};
pub use tokenize::{Canonicalize, TextTokenizer, Tokens};
pub use train::{AdamWConfig, Loss, Optimizer, Trainable, contrastive_loss};

/// Re-exported so callers can pick a device without depending on candle directly.
pub use candle_core::{DType, Device};

/// The device encoders run on: the first CUDA GPU when built with the `cuda` feature and one is
/// present, else the CPU.
pub fn default_device() -> Device {
    #[cfg(feature = "cuda")]
    if let Ok(d) = Device::new_cuda(0) {
        return d;
    }
    Device::Cpu
}
