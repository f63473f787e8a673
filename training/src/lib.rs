//! Mirante's encoders: CLIP and SigLIP in candle (own forward pass, so that later work such as ELIP can
//! inject prompt tokens), image preprocessing identical to transformers' PIL backend, and
//! tokenization through the checkpoint's `tokenizer.json`; and training: checkpoints as
//! variables, the CLIP and SigLIP losses, AdamW and the fine-tuning loop (`train`, `finetune`).

mod clip;
pub mod elip;
mod encoder;
mod error;
pub mod finetune;
mod fused;
mod hub;
pub mod imageio;
mod layers;
pub mod negatives;
mod pipeline;
pub mod preprocess;
mod progress;
pub mod scratch;
mod siglip;
mod spm;
mod stop;
mod tokenize;
pub mod train;

pub use clip::{Clip, ClipConfig, ClipTextConfig, ClipVisionConfig};
pub use encoder::{DualEncoder, Model, SUPPORTED_MODEL_TYPES, checkpoint_fingerprint};
pub use error::{Error, Result};
pub use finetune::{
    FinetuneConfig, FinetuneReport, Freeze, PairData, Precision, TrainImage, finetune,
    save_checkpoint,
};
pub use hub::{hub_cache_dir, hub_id, resolve_model, resolve_model_with};
pub use imageio::ImageLimits;
pub use layers::Autocast;
pub use pipeline::{Embedded, Failure, ImageSource, PipelineOptions, embed_images, embed_texts};
pub use preprocess::ImageProcessor;
pub use progress::{Progress, ProgressBoard, TaskState};
pub use siglip::{Siglip, SiglipConfig, SiglipTextConfig, SiglipVisionConfig};
pub use stop::Stop;
pub use tokenize::{Canonicalize, TextTokenizer, Tokens};
pub use train::{AdamWConfig, Loss, MicroBatch, Optimizer, Trainable, contrastive_loss};

/// Re-exported so callers can pick a device without depending on candle directly.
pub use candle_core::{DType, Device};

/// candle's setting for how long an idle CPU worker spins before it sleeps.
const SPIN_LIMIT_VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// Lets candle's idle CPU worker threads sleep after 1,000 spins instead of candle's 25,000,
/// unless `CANDLE_BARRIER_POOL_SPIN_LIMIT` is already set. Between element-wise operations its
/// worker kept spinning while the matrix products' threads ran; on 2 cores that took a sixth of
/// the processor from them, and training steps ran 15% faster with it asleep
/// (docs/benchmarks.md). Binaries call it; a library cannot set the environment safely.
///
/// # Safety
/// Sets an environment variable: call it first thing in `main`, before any other thread exists.
pub unsafe fn park_idle_workers() {
    if std::env::var_os(SPIN_LIMIT_VAR).is_none() {
        // SAFETY: the caller guarantees no other thread reads or writes the environment.
        unsafe { std::env::set_var(SPIN_LIMIT_VAR, "1000") };
    }
}

/// The device encoders run on: `MIRANTE_DEVICE` when set (see [`select_device`]), else the first
/// CUDA GPU when built with the `cuda` feature and one is present, else the CPU. A value that
/// cannot be honoured is reported on stderr and the CPU is used, so a library default never fails.
pub fn default_device() -> Device {
    let spec = std::env::var("MIRANTE_DEVICE").ok();
    match select_device(spec.as_deref()) {
        Ok(device) => device,
        Err(e) => {
            eprintln!("warning: MIRANTE_DEVICE: {e}; using the CPU");
            Device::Cpu
        }
    }
}

/// The device named by `spec`: `cpu`, `cuda` (GPU 0) or `cuda:N`; `None` or empty picks the
/// first GPU when built with the `cuda` feature and one is present, else the CPU.
pub fn select_device(spec: Option<&str>) -> Result<Device> {
    let spec = spec.map(str::trim).unwrap_or("");
    let ordinal = match spec {
        "" => {
            #[cfg(feature = "cuda")]
            if let Ok(d) = Device::new_cuda(0) {
                return Ok(d);
            }
            return Ok(Device::Cpu);
        }
        "cpu" => return Ok(Device::Cpu),
        "cuda" | "gpu" => 0,
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| {
                Error::InvalidArgument(format!("device '{other}' is not one of cpu, cuda, cuda:N"))
            })?,
    };
    if !cfg!(feature = "cuda") {
        return Err(Error::InvalidArgument(format!(
            "device '{spec}' needs a GPU build: this one was built without the cuda feature \
             (cargo build --release --features mirante-cli/cuda)"
        )));
    }
    Device::new_cuda(ordinal)
        .map_err(|e| Error::InvalidArgument(format!("device '{spec}' is not available: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_named_cpu_or_cuda() {
        assert!(select_device(Some("cpu")).unwrap().is_cpu());
        assert!(select_device(Some(" ")).is_ok());
        for bad in ["tpu", "cuda:x", "cuda:-1"] {
            let e = select_device(Some(bad)).unwrap_err().to_string();
            assert!(e.contains("cpu, cuda, cuda:N"), "{bad}: {e}");
        }
        #[cfg(not(feature = "cuda"))]
        {
            let e = select_device(Some("cuda:1")).unwrap_err().to_string();
            assert!(e.contains("without the cuda feature"), "{e}");
        }
    }
}
