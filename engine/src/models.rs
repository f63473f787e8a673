//! Models the engine embeds with: locating a checkpoint (folder or Hugging Face Hub id), loading
//! it once per database handle, and the embedding spaces it defines.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use mirante_storage::{Metric, Modality, SpaceSpec};
use mirante_training::{Device, DualEncoder};

use crate::error::{Error, Result};

/// The model of collections created without one: a small CLIP trained from scratch by Mirante on
/// its bundled shapes dataset (`mirante pretrain`; docs/default-model.md). Its files are built
/// into the library and unpacked into a cache folder on first use.
pub const DEFAULT_MODEL: &str = "mirante-shapes-clip";

/// The default model's checkpoint files, compiled in.
const DEFAULT_MODEL_FILES: [(&str, &[u8]); 5] = [
    (
        "config.json",
        include_bytes!("../assets/mirante-shapes-clip/config.json"),
    ),
    (
        "model.safetensors",
        include_bytes!("../assets/mirante-shapes-clip/model.safetensors"),
    ),
    (
        "tokenizer.json",
        include_bytes!("../assets/mirante-shapes-clip/tokenizer.json"),
    ),
    (
        "tokenizer_config.json",
        include_bytes!("../assets/mirante-shapes-clip/tokenizer_config.json"),
    ),
    (
        "preprocessor_config.json",
        include_bytes!("../assets/mirante-shapes-clip/preprocessor_config.json"),
    ),
];

/// Where built-in models are unpacked: `$MIRANTE_CACHE`, else `$XDG_CACHE_HOME/mirante`, else
/// `~/.cache/mirante`, else the temporary folder.
fn cache_dir() -> std::path::PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(dir) = var("MIRANTE_CACHE") {
        return dir.into();
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return Path::new(&dir).join("mirante");
    }
    if let Some(home) = var("HOME") {
        return Path::new(&home).join(".cache").join("mirante");
    }
    std::env::temp_dir().join("mirante-cache")
}

/// The default model's folder, unpacked once per content (the folder name carries a checksum of
/// the files, so a new release never reads an old copy). Unpacked under a temporary name and
/// renamed, so concurrent first uses and crashes leave whole copies only.
fn default_model_folder() -> Result<std::path::PathBuf> {
    // Checksummed once per process: the files are compiled in and never change.
    static SUM: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let sum = *SUM.get_or_init(|| {
        DEFAULT_MODEL_FILES
            .iter()
            .fold(0u32, |acc, (_, bytes)| crc32c::crc32c_append(acc, bytes))
    });
    let root = cache_dir();
    let folder = root.join(format!("{DEFAULT_MODEL}-{sum:08x}"));
    if folder.join("model.safetensors").is_file() {
        return Ok(folder);
    }
    let partial = root.join(format!(".partial-{DEFAULT_MODEL}-{}", std::process::id()));
    std::fs::create_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
    for (name, bytes) in DEFAULT_MODEL_FILES {
        let path = partial.join(name);
        std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
    }
    if let Err(e) = std::fs::rename(&partial, &folder) {
        // Another process unpacked it first: use theirs.
        let _ = std::fs::remove_dir_all(&partial);
        if !folder.join("model.safetensors").is_file() {
            return Err(Error::io(&folder, e));
        }
    }
    Ok(folder)
}

/// The checkpoint folder of a model key (see [`Models::key`]).
pub(crate) fn model_folder(key: &str) -> Result<std::path::PathBuf> {
    if key == DEFAULT_MODEL {
        return default_model_folder();
    }
    Ok(mirante_training::resolve_model(key)?)
}

/// A loaded checkpoint.
#[derive(Debug)]
pub struct LoadedModel {
    /// How spaces name the model: the absolute folder path, or the Hub id as written.
    pub key: String,
    pub encoder: DualEncoder,
    pub fingerprint: String,
}

impl LoadedModel {
    pub fn dim(&self) -> usize {
        self.encoder.model.embedding_dim()
    }

    pub fn family(&self) -> &'static str {
        self.encoder.model.family()
    }

    /// The embedding space of one tower of this model.
    pub fn space(&self, modality: Modality) -> SpaceSpec {
        SpaceSpec {
            model_id: self.key.clone(),
            fingerprint: self.fingerprint.clone(),
            modality,
            dim: self.dim(),
            metric: Metric::Cosine,
        }
    }
}

/// Loaded models by key, shared by the statements of one database handle.
#[derive(Debug)]
pub struct Models {
    device: Device,
    loaded: Mutex<HashMap<String, Arc<LoadedModel>>>,
    /// The database's registry of fine-tuned models (`<database>/models`).
    registry: Option<std::path::PathBuf>,
}

impl Models {
    pub fn new(device: Device) -> Self {
        Models {
            device,
            loaded: Mutex::new(HashMap::new()),
            registry: None,
        }
    }

    /// Models whose plain names (`'clip-art'`) are looked up in `registry` first.
    pub fn with_registry(device: Device, registry: std::path::PathBuf) -> Self {
        Models {
            registry: Some(registry),
            ..Models::new(device)
        }
    }

    /// The key a locator stands for: a registry model's name or a folder becomes an absolute
    /// path (so the database works from any directory); [`DEFAULT_MODEL`] stays itself; anything
    /// else is taken as a Hub id.
    pub fn key(&self, locator: &str) -> Result<String> {
        let plain = !locator.is_empty() && !locator.contains(['/', '\\']) && locator != "..";
        if let Some(registry) = &self.registry
            && plain
        {
            let entry = registry.join(locator);
            if entry.join(crate::finetune::LINEAGE).is_file() {
                let abs = entry.canonicalize().map_err(|e| Error::io(&entry, e))?;
                return Ok(abs.display().to_string());
            }
        }
        let path = Path::new(locator);
        if path.is_dir() {
            let abs = path.canonicalize().map_err(|e| Error::io(path, e))?;
            return Ok(abs.display().to_string());
        }
        Ok(locator.to_string())
    }

    /// Loads (or returns the already loaded) model a locator names.
    pub fn load(&self, locator: &str) -> Result<Arc<LoadedModel>> {
        let key = self.key(locator)?;
        if let Some(m) = self.lock().get(&key) {
            return Ok(m.clone());
        }
        let folder = model_folder(&key)?;
        let encoder = DualEncoder::load(&folder, &self.device)?;
        let fingerprint = encoder.fingerprint()?;
        let model = Arc::new(LoadedModel {
            key: key.clone(),
            encoder,
            fingerprint,
        });
        self.lock().insert(key, model.clone());
        Ok(model)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<LoadedModel>>> {
        // A panic while holding the map cannot leave it inconsistent (inserts are single calls).
        self.loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
