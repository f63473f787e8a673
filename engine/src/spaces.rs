//! The one resolver of embedding spaces: which spaces of a collection a statement reads, and
//! with which model. A space stores its model's key and the fingerprint of the weights that
//! made it; a model named by a statement is matched by key first (without loading weights), and
//! by the fingerprint of its weights otherwise (a folder moved or named another way). Vectors
//! made outside Mirante live in "external" spaces whose fingerprint is `external:<name>`.

use std::sync::Arc;

use mirante_storage::{self as storage, CollectionMeta, Modality, SpaceId, SpaceSpec};

use crate::database::Database;
use crate::error::{Error, Result};
use crate::models::LoadedModel;

/// The image and text spaces one model stands for in a collection.
#[derive(Debug, Clone)]
pub(crate) struct ModelSpaces {
    /// As the statement named the model, or the stored key of the active model.
    pub label: String,
    pub fingerprint: String,
    pub image: SpaceId,
    pub text: SpaceId,
}

/// The spaces of one collection.
pub(crate) struct Spaces<'a> {
    db: &'a Database,
    pub c: &'a CollectionMeta,
}

impl<'a> Spaces<'a> {
    pub fn new(db: &'a Database, c: &'a CollectionMeta) -> Self {
        Spaces { db, c }
    }

    pub fn spec(&self, space: SpaceId) -> Result<&'a SpaceSpec> {
        Ok(&self.c.space(space)?.spec)
    }

    /// The active space of `modality`.
    pub fn active(&self, modality: Modality) -> Result<SpaceId> {
        self.c
            .active(modality)
            .ok_or_else(|| Error::MissingEmbeddings {
                collection: self.c.name.clone(),
                detail: format!(
                    "has no {modality} embeddings; give it a model with EMBED {} USING MODEL \
                 '<folder or hub id>'",
                    self.c.name
                ),
            })
    }

    /// The model of the active spaces, loaded and checked against the stored fingerprint;
    /// `None` when the collection has no model.
    pub fn active_model(&self) -> Result<Option<Arc<LoadedModel>>> {
        let Some(space) = self.c.active_image.or(self.c.active_text) else {
            return Ok(None);
        };
        self.model_of(space).map(Some)
    }

    /// `model`'s space of `modality` (a registry name, folder, Hub id or external name), or the
    /// active one when `None`.
    pub fn active_or_of(&self, model: Option<&str>, modality: Modality) -> Result<SpaceId> {
        match model {
            Some(m) => self.of_model(m, modality),
            None => self.active(modality),
        }
    }

    /// The model that made `space`'s vectors, loaded and checked.
    pub fn model_of(&self, space: SpaceId) -> Result<Arc<LoadedModel>> {
        let spec = self.spec(space)?;
        let model = self.db.models.load(&spec.model_id)?;
        model.check_fingerprint(spec, &self.c.name)?;
        Ok(model)
    }

    /// The space of `modality` with the same model as `space`.
    pub fn sibling(&self, space: SpaceId, modality: Modality) -> Result<SpaceId> {
        let fingerprint = &self.spec(space)?.fingerprint;
        self.with_fingerprint(fingerprint, modality)
            .ok_or_else(|| Error::MissingEmbeddings {
                collection: self.c.name.clone(),
                detail: format!(
                    "has no {modality} embeddings from {}",
                    self.spec(space).map_or("?", |s| s.model_id.as_str())
                ),
            })
    }

    fn with_fingerprint(&self, fingerprint: &str, modality: Modality) -> Option<SpaceId> {
        self.c
            .spaces
            .iter()
            .find(|s| s.spec.modality == modality && s.spec.fingerprint == fingerprint)
            .map(|s| s.id)
    }

    /// The fingerprint of the vectors `locator` names in this collection: by stored key (the
    /// active model's when the key holds several versions of the weights), else by loading the
    /// model.
    fn fingerprint_of(&self, locator: &str) -> Result<String> {
        let key = self.db.models.key(locator)?;
        let mut stored: Vec<&str> = self
            .c
            .spaces
            .iter()
            .filter(|s| s.spec.model_id == key)
            .map(|s| s.spec.fingerprint.as_str())
            .collect();
        stored.dedup();
        let active = self
            .c
            .active_image
            .and_then(|s| self.c.space(s).ok())
            .map(|s| s.spec.fingerprint.as_str());
        let chosen = match stored.as_slice() {
            [one] => Some(*one),
            [] => None,
            several => active.filter(|a| several.contains(a)),
        };
        if let Some(f) = chosen {
            return Ok(f.to_string());
        }
        match self.db.models.load(locator) {
            Ok(m) => Ok(m.fingerprint.clone()),
            Err(e) if stored.is_empty() => Err(self.missing(locator, Some(&e))),
            Err(e) => Err(e),
        }
    }

    fn missing(&self, locator: &str, why: Option<&Error>) -> Error {
        let mut names: Vec<&str> = self
            .c
            .spaces
            .iter()
            .map(|s| s.spec.model_id.as_str())
            .collect();
        names.dedup();
        Error::MissingEmbeddings {
            collection: self.c.name.clone(),
            detail: format!(
                "has no embeddings from model {locator}{}; its models: {}; compute them with \
                 EMBED {} USING MODEL '{locator}'",
                why.map(|e| format!(" ({e})")).unwrap_or_default(),
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                },
                self.c.name
            ),
        }
    }

    /// The space of `modality` holding model `locator`'s vectors.
    pub fn of_model(&self, locator: &str, modality: Modality) -> Result<SpaceId> {
        let fingerprint = self.fingerprint_of(locator)?;
        self.with_fingerprint(&fingerprint, modality)
            .ok_or_else(|| Error::MissingEmbeddings {
                collection: self.c.name.clone(),
                detail: format!(
                    "has no {modality} embeddings from model {locator}; compute them with EMBED \
                     {} USING MODEL '{locator}'",
                    self.c.name
                ),
            })
    }

    /// The image and text spaces of model `locator`, or the active ones.
    pub fn pair(&self, locator: Option<&str>) -> Result<ModelSpaces> {
        let Some(locator) = locator else {
            let (Some(image), Some(text)) = (self.c.active_image, self.c.active_text) else {
                return Err(Error::MissingEmbeddings {
                    collection: self.c.name.clone(),
                    detail: format!(
                        "has no image and text embeddings to evaluate; give it a model with \
                         EMBED {} USING MODEL '<folder or hub id>'",
                        self.c.name
                    ),
                });
            };
            let (i, t) = (self.spec(image)?, self.spec(text)?);
            if i.fingerprint != t.fingerprint {
                return Err(Error::Invalid(format!(
                    "the active image and text embeddings of {} come from different models ({} \
                     and {}); name one with USING MODEL",
                    self.c.name, i.model_id, t.model_id
                )));
            }
            return Ok(ModelSpaces {
                label: i.model_id.clone(),
                fingerprint: i.fingerprint.clone(),
                image,
                text,
            });
        };
        let fingerprint = self.fingerprint_of(locator)?;
        let pair = self
            .with_fingerprint(&fingerprint, Modality::Image)
            .zip(self.with_fingerprint(&fingerprint, Modality::Text));
        let (image, text) = pair.ok_or_else(|| Error::MissingEmbeddings {
            collection: self.c.name.clone(),
            detail: format!(
                "has no image and text embeddings from model {locator}; compute them with EMBED \
                 {} USING MODEL '{locator}'",
                self.c.name
            ),
        })?;
        Ok(ModelSpaces {
            label: locator.to_string(),
            fingerprint,
            image,
            text,
        })
    }

    /// Precomputed vectors go into a collection without a model, or one whose active spaces
    /// are that external model's.
    pub fn check_external_target(&self, model: &str) -> Result<()> {
        for active in [self.c.active_image, self.c.active_text]
            .into_iter()
            .flatten()
        {
            let spec = self.spec(active)?;
            if spec.model_id != model || spec.fingerprint != external_fingerprint(model) {
                return Err(Error::Invalid(format!(
                    "collection {} embeds with model {}; precomputed vectors from '{model}' go \
                     into a collection without a model (CREATE COLLECTION name) or one holding \
                     that model's vectors",
                    self.c.name, spec.model_id
                )));
            }
        }
        Ok(())
    }
}

/// The fingerprint of vectors made outside Mirante: their model is known by name only.
pub(crate) fn external_fingerprint(model: &str) -> String {
    format!("external:{model}")
}

/// The (space, dim) of an external model's image and text vectors in `collection`, staged in
/// `tx` (and made active) with `dims` (image, text) when the collection lacks them; existing
/// spaces keep their dimensions.
pub(crate) fn stage_external(
    tx: &mut dyn storage::Stage,
    collection: &str,
    model: &str,
    dims: [usize; 2],
) -> Result<[(SpaceId, usize); 2]> {
    let fingerprint = external_fingerprint(model);
    let mut out = [(0, 0); 2];
    for (slot, modality) in [Modality::Image, Modality::Text].into_iter().enumerate() {
        let existing = tx
            .collection(collection)?
            .spaces
            .iter()
            .find(|s| s.spec.modality == modality && s.spec.fingerprint == fingerprint)
            .map(|s| s.spec.dim);
        let dim = existing.unwrap_or(dims[slot]);
        let spec = SpaceSpec {
            model_id: model.to_string(),
            fingerprint: fingerprint.clone(),
            modality,
            dim,
            metric: storage::Metric::Cosine,
        };
        out[slot] = (tx.add_space(collection, spec, true)?, dim);
    }
    Ok(out)
}
