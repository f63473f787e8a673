//! Models the engine embeds and re-ranks with: what a locator (registry name, folder, Hub id)
//! stands for as a stored key, where a key's checkpoint is, and the per-handle caches of loaded
//! encoders and ELIP mappers.
//!
//! Keys are what embedding spaces store: `registry:<name>` for the database's own models (so
//! the database can move), the absolute path of a folder, [`DEFAULT_MODEL`], or a Hub id.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use mirante_storage::{Metric, Modality, SpaceSpec};
use mirante_training::elip::{self as training_elip, ElipMapper};
use mirante_training::{Device, DualEncoder, ImageLimits};

use crate::access::Access;
use crate::error::{Error, Result};
use crate::fsio;
use crate::registry::{LINEAGE_FILE, Registry};

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
fn cache_dir() -> PathBuf {
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
fn default_model_folder() -> Result<PathBuf> {
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
    fsio::create_dir_all(&partial)?;
    for (name, bytes) in DEFAULT_MODEL_FILES {
        fsio::write(&partial.join(name), bytes)?;
    }
    if let Err(e) = fsio::rename(&partial, &folder) {
        // Another process unpacked it first: use theirs.
        let _ = fsio::remove_dir_all(&partial);
        if !folder.join("model.safetensors").is_file() {
            return Err(e);
        }
    }
    Ok(folder)
}

/// A loaded checkpoint.
#[derive(Debug)]
pub struct LoadedModel {
    /// How spaces name the model (see the module docs).
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

    /// Refuses vectors stored under `spec` when this model's weights are not the ones that
    /// made them.
    pub fn check_fingerprint(&self, spec: &SpaceSpec, collection: &str) -> Result<()> {
        if self.fingerprint == spec.fingerprint {
            return Ok(());
        }
        Err(Error::ModelChanged {
            model: spec.model_id.clone(),
            collection: collection.to_string(),
            then: spec.fingerprint.clone(),
            now: self.fingerprint.clone(),
        })
    }
}

/// An ELIP re-ranker of the registry, with the backbone it was trained over.
#[derive(Debug)]
pub struct LoadedElip {
    pub mapper: ElipMapper,
    /// The backbone's model key and fingerprint, from the lineage.
    pub backbone: String,
    pub backbone_fingerprint: String,
    /// The weight of ELIP's score against the first stage's (1: ELIP alone), from the lineage.
    pub fusion: f64,
}

impl LoadedElip {
    /// The fusion weight a re-ranking uses: the statement's `FUSION`, else the model's.
    pub fn fusion_for(&self, r: &mirante_query::RerankPlan) -> f64 {
        r.fusion.unwrap_or(self.fusion)
    }

    /// Refuses re-ranking vectors of another model than the backbone.
    pub fn check_backbone(&self, name: &str, fingerprint: &str, model: &str) -> Result<()> {
        if fingerprint == self.backbone_fingerprint {
            return Ok(());
        }
        Err(Error::Invalid(format!(
            "ELIP model '{name}' was trained over {} (fingerprint {}), but the first stage uses \
             {model} (fingerprint {fingerprint}); search or evaluate with USING MODEL '{}'",
            self.backbone, self.backbone_fingerprint, self.backbone
        )))
    }
}

/// Sizes and modification times of a registry model's files when it was loaded: a model
/// dropped and trained again under the same name is read anew.
type FileStamps = Vec<Option<(std::time::SystemTime, u64)>>;

fn stamps(folder: &Path) -> FileStamps {
    [
        training_elip::CONFIG_FILE,
        training_elip::WEIGHTS_FILE,
        LINEAGE_FILE,
    ]
    .iter()
    .map(|f| {
        let m = fsio::metadata(&folder.join(f)).ok()?;
        Some((m.modified().ok()?, m.len()))
    })
    .collect()
}

/// Loaded models by key, shared by the statements of one database handle.
#[derive(Debug)]
pub struct Models {
    device: Device,
    /// Set on every encoder loaded.
    image_limits: ImageLimits,
    /// Which model folders may be read and whether Hub ids may download.
    access: Access,
    /// The database's registry; `None` outside a database (registry names are then unknown).
    registry: Option<Registry>,
    loaded: Mutex<HashMap<String, Arc<LoadedModel>>>,
    elips: Mutex<HashMap<String, (FileStamps, Arc<LoadedElip>)>>,
}

impl Models {
    /// Models outside any database: folders, Hub ids and the default model.
    pub fn new(device: Device) -> Self {
        Models {
            device,
            image_limits: ImageLimits::default(),
            access: Access::default(),
            registry: None,
            loaded: Mutex::new(HashMap::new()),
            elips: Mutex::new(HashMap::new()),
        }
    }

    /// Models of the database whose registry is `registry`.
    pub fn with_registry(device: Device, registry: Registry) -> Self {
        Models {
            registry: Some(registry),
            ..Models::new(device)
        }
    }

    /// Encoders loaded from now on refuse images beyond `limits`.
    pub fn with_image_limits(mut self, limits: ImageLimits) -> Self {
        self.image_limits = limits;
        self
    }

    /// Model folders outside `access`'s roots are refused, and Hub ids download only if it
    /// allows.
    pub fn with_access(mut self, access: Access) -> Self {
        self.access = access;
        self
    }

    /// The database's registry.
    pub fn registry(&self) -> Result<&Registry> {
        self.registry
            .as_ref()
            .ok_or_else(|| Error::Invalid("registry models need a database".into()))
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The key a locator stands for: a registry model's name (or its key) becomes
    /// `registry:<name>`; a folder its absolute path (so the database works from any
    /// directory); [`DEFAULT_MODEL`] stays itself; anything else is taken as a Hub id.
    pub fn key(&self, locator: &str) -> Result<String> {
        if let Some(name) = Registry::name_of(locator) {
            self.registry()?.existing(name)?;
            return Ok(locator.to_string());
        }
        let plain = !locator.is_empty() && !locator.contains(['/', '\\']) && locator != "..";
        if plain && self.registry.as_ref().is_some_and(|r| r.contains(locator)) {
            return Ok(Registry::key(locator));
        }
        let path = Path::new(locator);
        if path.is_dir() {
            return Ok(fsio::canonicalize(path)?.display().to_string());
        }
        Ok(locator.to_string())
    }

    /// The checkpoint folder of a key.
    pub fn folder(&self, key: &str) -> Result<PathBuf> {
        if key == DEFAULT_MODEL {
            return default_model_folder();
        }
        if let Some(name) = Registry::name_of(key) {
            return self.registry()?.existing(name);
        }
        let path = Path::new(key);
        if path.is_dir() {
            self.access.check_read(path)?;
        }
        Ok(mirante_training::resolve_model_with(
            key,
            self.access.downloads,
        )?)
    }

    /// Loads (or returns the already loaded) model a locator names.
    pub fn load(&self, locator: &str) -> Result<Arc<LoadedModel>> {
        let key = self.key(locator)?;
        if let Some(m) = lock(&self.loaded).get(&key) {
            return Ok(m.clone());
        }
        let folder = self.folder(&key)?;
        let mut encoder = DualEncoder::load(&folder, &self.device)?;
        encoder.processor.limits = self.image_limits;
        let fingerprint = encoder.fingerprint()?;
        let model = Arc::new(LoadedModel {
            key: key.clone(),
            encoder,
            fingerprint,
        });
        lock(&self.loaded).insert(key, model.clone());
        Ok(model)
    }

    /// Registry ELIP model `name`, from the cache or read (its mapper and lineage).
    pub fn elip(&self, name: &str) -> Result<Arc<LoadedElip>> {
        let registry = self.registry()?;
        let folder = registry.folder(name);
        if !registry.contains(name) || !folder.join(training_elip::CONFIG_FILE).is_file() {
            return Err(Error::Invalid(format!(
                "'{name}' is not an ELIP model of this database; train one with TRAIN ELIP ON \
                 <collection> ... AS '{name}' (SHOW MODELS lists the registry)"
            )));
        }
        let stamp = stamps(&folder);
        if let Some((s, loaded)) = lock(&self.elips).get(name)
            && *s == stamp
        {
            return Ok(Arc::clone(loaded));
        }
        let lineage = registry.lineage(name)?;
        let fusion = lineage.fusion.ok_or_else(|| Error::Corrupt {
            path: folder.join(LINEAGE_FILE),
            detail: "an ELIP model's lineage has no fusion weight".into(),
        })?;
        let loaded = Arc::new(LoadedElip {
            mapper: ElipMapper::load(&folder, &self.device)?,
            backbone: lineage.base,
            backbone_fingerprint: lineage.base_fingerprint,
            fusion,
        });
        lock(&self.elips).insert(name.to_string(), (stamp, Arc::clone(&loaded)));
        Ok(loaded)
    }
}

/// A cache's map; a panic while it was held cannot leave it inconsistent (inserts are single
/// calls), so a poisoned lock is used as it is.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
