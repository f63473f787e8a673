//! Models the engine embeds with: locating a checkpoint (folder or Hugging Face Hub id), loading
//! it once per database handle, and the embedding spaces it defines.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use mirante_storage::{Metric, Modality, SpaceSpec};
use mirante_training::{Device, DualEncoder};

use crate::error::{Error, Result};

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
    /// path (so the database works from any directory); anything else is taken as a Hub id.
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
        let folder = mirante_training::resolve_model(&key)?;
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
