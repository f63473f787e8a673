//! The builder API for Rust callers: the same searches as the `SEARCH` statement without
//! writing SQL, returning typed hits (captions, image path or bytes, metadata) ready to hand to
//! an LLM as context.

use mirante_query::{self as query, SearchPlan, SearchQuery, Target};
use mirante_storage::{self as storage, Modality};

use crate::catalog::SnapshotCatalog;
use crate::database::{Database, ExecOptions};
use crate::error::{Error, Result};
use crate::output::SearchResults;

/// A collection of a [`Database`].
#[derive(Debug, Clone)]
pub struct Collection<'db> {
    db: &'db Database,
    name: String,
}

impl Database {
    /// The model a locator names (a registry name, folder or Hub id; the default model when
    /// `None`), loaded once per handle.
    pub fn model(&self, locator: Option<&str>) -> Result<std::sync::Arc<crate::LoadedModel>> {
        self.models.load(locator.unwrap_or(crate::DEFAULT_MODEL))
    }

    /// L2-normalised embeddings of `texts` by `model`'s text tower (a registry name, folder or
    /// Hub id; the default model when `None`), in batches.
    pub fn embed_texts(
        &self,
        texts: &[&str],
        model: Option<&str>,
        exec: &ExecOptions,
    ) -> Result<Vec<Vec<f32>>> {
        let model = self.model(model)?;
        let pipeline = self.pipeline(exec);
        Ok(mirante_training::embed_texts(
            &model.encoder,
            texts,
            &pipeline,
        )?)
    }

    /// L2-normalised embeddings of images (files or encoded bytes) by `model`'s image tower,
    /// preprocessed as the model's processor says, decoded on worker threads. An image that
    /// does not decode fails the call, naming it.
    pub fn embed_images(
        &self,
        images: &[mirante_training::ImageSource],
        model: Option<&str>,
        exec: &ExecOptions,
    ) -> Result<Vec<Vec<f32>>> {
        let model = self.model(model)?;
        let pipeline = self.pipeline(exec);
        let out = mirante_training::embed_images(&model.encoder, images, &pipeline)?;
        if !out.failures.is_empty() {
            let list: Vec<String> = out
                .failures
                .iter()
                .take(20)
                .map(|f| format!("  image {} ({}): {}", f.index + 1, f.source, f.reason))
                .collect();
            return Err(Error::Invalid(format!(
                "{} of {} images cannot be embedded:\n{}",
                out.failures.len(),
                images.len(),
                list.join("\n")
            )));
        }
        Ok(out.embeddings.into_iter().flatten().collect())
    }

    /// A handle on an existing collection.
    pub fn collection(&self, name: &str) -> Result<Collection<'_>> {
        self.snapshot()?.collection(name)?;
        Ok(Collection {
            db: self,
            name: name.to_string(),
        })
    }
}

impl<'db> Collection<'db> {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Live rows.
    pub fn count(&self) -> Result<u64> {
        Ok(self.db.snapshot()?.count(&self.name)?)
    }

    /// The model searches embed queries with (the active spaces' model id, as `USING MODEL`
    /// and [`Database::embed_texts`] take it); `None` without one. A name of precomputed
    /// vectors (`external:` fingerprints) names no loadable model.
    pub fn model(&self) -> Result<Option<String>> {
        let snap = self.db.snapshot()?;
        let c = snap.collection(&self.name)?;
        let Some(space) = c.active_image.or(c.active_text) else {
            return Ok(None);
        };
        Ok(Some(c.space(space)?.spec.model_id.clone()))
    }

    fn search(&self, query: SearchQuery) -> Search<'db> {
        Search {
            db: self.db,
            plan: SearchPlan {
                collection: self.name.clone(),
                target: query.default_target(),
                query,
                filter: None,
                model: None,
                limit: query::DEFAULT_SEARCH_LIMIT,
                into: None,
                rerank: None,
            },
            filter: None,
            exec: ExecOptions::default(),
        }
    }

    /// The stored image vectors of rows `ids` (of the active image space, or of `model`'s), in
    /// the order of `ids`; `None` for an id that is no live row. Reads only those rows' segments,
    /// where [`Collection::embeddings`] reads the whole space.
    pub fn image_vectors(&self, ids: &[u64], model: Option<&str>) -> Result<Vec<Option<Vec<f32>>>> {
        let snap = self.db.snapshot()?;
        let c = snap.collection(&self.name)?;
        let space = crate::spaces::Spaces::new(self.db, c).active_or_of(model, Modality::Image)?;
        ids.iter()
            .map(|&id| Ok(snap.vector_of(&self.name, space, id, 0)?))
            .collect()
    }

    /// Images ranked by a text query (override with [`Search::match_texts`]).
    pub fn search_text(&self, text: &str) -> Search<'db> {
        self.search(SearchQuery::Text(text.to_string()))
    }

    /// Captions ranked by an image file (override with [`Search::match_images`]).
    pub fn search_image(&self, path: &str) -> Search<'db> {
        self.search(SearchQuery::Image(path.to_string()))
    }

    /// The stored vectors of the active space of `modality`, or of `model`'s (registry name,
    /// folder or Hub id): the live rows' image vectors, or their captions' text vectors.
    pub fn embeddings(&self, model: Option<&str>, modality: Modality) -> Result<Embeddings> {
        let snap = self.db.snapshot()?;
        let c = snap.collection(&self.name)?;
        let spaces = crate::spaces::Spaces::new(self.db, c);
        let space = spaces.active_or_of(model, modality)?;
        let spec = spaces.spec(space)?;
        let segments = snap.segments(c)?;
        let missing = || crate::Error::MissingEmbeddings {
            collection: self.name.clone(),
            detail: format!(
                "has rows without {modality} vectors from {}; run EMBED {} USING MODEL '{}'",
                spec.model_id, self.name, spec.model_id
            ),
        };
        let mut ids = Vec::new();
        let mut captions = Vec::new();
        let mut gathered = Vec::new();
        let mut columns = Vec::with_capacity(segments.len());
        for seg in &segments {
            let vectors = seg.vectors(c, space)?.ok_or_else(missing)?;
            for (local, row) in seg.live_rows() {
                match modality {
                    Modality::Image => {
                        ids.push(row.id());
                        gathered.push((columns.len(), local));
                    }
                    Modality::Text => {
                        let start = seg.text_start(local);
                        for k in 0..row.text_count() {
                            ids.push(row.id());
                            captions.push(k as u32);
                            gathered.push((columns.len(), start + k));
                        }
                    }
                }
            }
            columns.push(vectors);
        }
        let whole = columns.len() == 1 && gathered.len() == columns[0].len();
        let vectors = if whole {
            EmbeddingVectors::Mapped(columns.swap_remove(0))
        } else {
            let mut out = Vec::with_capacity(gathered.len() * spec.dim);
            for (column, item) in gathered {
                out.extend_from_slice(columns[column].get(item));
            }
            EmbeddingVectors::Gathered(out)
        };
        Ok(Embeddings {
            model: spec.model_id.clone(),
            modality,
            ids,
            captions: (modality == Modality::Text).then_some(captions),
            dim: spec.dim,
            vectors,
        })
    }

    /// Rows similar to a stored row (its image vector), the row itself left out.
    pub fn search_row(&self, id: u64) -> Search<'db> {
        self.search(SearchQuery::Row(id))
    }

    /// Captions ranked by an encoded image (PNG, JPEG, ...), preprocessed exactly as a file
    /// with the same bytes.
    pub fn search_image_bytes(&self, bytes: Vec<u8>) -> Search<'db> {
        self.search(SearchQuery::ImageBytes(bytes))
    }

    /// Images ranked by a vector of the searched space (another tool's embedding of a query);
    /// its length must be the space's dimension.
    pub fn search_vector(&self, vector: Vec<f32>) -> Search<'db> {
        self.search(SearchQuery::Vector(vector))
    }

    /// Adds rows from a source (see [`crate::ingest::from_arrow`] for Arrow input) in one
    /// commit, embedding them with the collection's model; with `skip_errors` bad rows are
    /// left out and reported, otherwise one bad row fails the whole add and nothing is committed.
    pub fn add(
        &self,
        source: crate::ingest::Source,
        options: &query::options::ImportOptions,
        skip_errors: bool,
        exec: &ExecOptions,
    ) -> Result<crate::ingest::AddReport> {
        self.add_replacing(source, options, skip_errors, None, exec)
    }

    /// [`Collection::add`] that also deletes, in the same commit, the rows passing `replace` (a
    /// `WHERE` predicate, evaluated under the writer lock): an upsert that readers never see
    /// half done and that racing writers cannot duplicate.
    pub fn add_replacing(
        &self,
        source: crate::ingest::Source,
        options: &query::options::ImportOptions,
        skip_errors: bool,
        replace: Option<&str>,
        exec: &ExecOptions,
    ) -> Result<crate::ingest::AddReport> {
        exec.cancel.check()?;
        let replace = replace
            .map(|text| bind_filter(self.db, &self.name, text))
            .transpose()?;
        let result = crate::ingest::add(
            self.db,
            &self.name,
            source,
            (options, skip_errors),
            (replace.as_ref(), |n| {
                format!("add {n} rows to {}", self.name)
            }),
            exec,
        );
        self.db.release_writer();
        result
    }
}

impl Collection<'_> {
    /// Builds segments of this collection from `source` without taking the writer lock, for
    /// [`Database::publish`] to publish later, from this process or another: the first phase of
    /// a two-phase write, which lets many processes (Ray workers, one per GPU) import into one
    /// collection at once. Rows are embedded with the collection's model as of now;
    /// `expected_rows` sizes the first reservation of row ids.
    pub fn build_segments(
        &self,
        source: crate::ingest::Source,
        options: &query::options::ImportOptions,
        skip_errors: bool,
        expected_rows: u64,
        exec: &ExecOptions,
    ) -> Result<crate::ingest::BuildReport> {
        exec.cancel.check()?;
        crate::ingest::build(
            self.db,
            &self.name,
            source,
            (options, skip_errors, expected_rows),
            exec,
        )
    }
}

/// Distributed `EMBED` and `REEMBED`: a driver prepares, workers embed segments, the driver
/// publishes (see `reembed.rs`).
impl Collection<'_> {
    /// Registers `model`'s embedding spaces (inactive) and returns the ids of the segments
    /// lacking its vectors, to share among workers for [`Collection::embed_segments`].
    pub fn prepare_embedding(&self, model: &str) -> Result<Vec<u64>> {
        let result = crate::reembed::prepare(self.db, &self.name, model);
        self.db.release_writer();
        result
    }

    /// Embeds `segments` with `model` (both towers) and writes the columns without the writer
    /// lock; returns them for [`Collection::publish_embedding`], from this process or another.
    pub fn embed_segments(
        &self,
        model: &str,
        segments: &[u64],
        exec: &ExecOptions,
    ) -> Result<Vec<storage::BuiltColumns>> {
        exec.cancel.check()?;
        crate::reembed::build(self.db, &self.name, model, segments, exec)
    }

    /// Attaches the workers' columns in one commit, embeds here whatever they did not cover
    /// (segments merged meanwhile), and with `switch` makes the collection search with
    /// `model` (as `REEMBED`; otherwise as `EMBED`). Returns the status message.
    pub fn publish_embedding(
        &self,
        model: &str,
        built: &[storage::BuiltColumns],
        switch: bool,
        exec: &ExecOptions,
    ) -> Result<String> {
        let result = crate::reembed::publish(self.db, &self.name, model, built, switch, exec);
        self.db.release_writer();
        result
    }
}

/// What publishing built segments did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishReport {
    pub version: u64,
    pub rows: u64,
    /// Why the merge of small segments after the commit failed, if it did (the rows are
    /// committed).
    pub merge_error: Option<String>,
}

impl Database {
    /// Publishes segments built by [`Collection::build_segments`] (here or in other processes)
    /// in one commit, after checking them against the collections as they are now: a
    /// description that no longer fits (the model or the index changed, the rows were
    /// published already) is refused and nothing is committed.
    pub fn publish(&self, built: &[storage::BuiltSegments]) -> Result<PublishReport> {
        let result = (|| {
            let mut w = self.writer()?;
            let version = w.publish(built)?;
            Ok(PublishReport {
                version,
                rows: built.iter().map(storage::BuiltSegments::rows).sum(),
                merge_error: w.take_merge_error().map(|e| {
                    format!(
                        "the rows are published, but merging segments after them failed ({e}); \
                         COMPACT retries"
                    )
                }),
            })
        })();
        self.release_writer();
        result
    }
}

/// A collection's stored vectors of one embedding space, for hosts that compute with them (the
/// Python package hands them to numpy without copying when it can).
#[derive(Debug, Clone)]
pub struct Embeddings {
    /// The key of the model that made them.
    pub model: String,
    pub modality: Modality,
    /// Per vector, its row's id (a row has one image vector, and one text vector per caption).
    pub ids: Vec<u64>,
    /// Per vector of a text space, its caption's position in the row.
    pub captions: Option<Vec<u32>>,
    pub dim: usize,
    pub vectors: EmbeddingVectors,
}

/// Where [`Embeddings`]' values are.
#[derive(Debug, Clone)]
pub enum EmbeddingVectors {
    /// The column file itself, memory-mapped: the collection is one segment without deleted
    /// rows (`COMPACT` makes it so), and nothing was copied.
    Mapped(mirante_storage::Vectors),
    /// Gathered from several segments, deleted rows left out.
    Gathered(Vec<f32>),
}

impl Embeddings {
    /// The vectors, row-major (`ids.len() * dim` values).
    pub fn as_slice(&self) -> &[f32] {
        match &self.vectors {
            EmbeddingVectors::Mapped(v) => v.as_slice(),
            EmbeddingVectors::Gathered(v) => v,
        }
    }
}

/// A search being built; [`Search::run`] executes it.
#[derive(Debug, Clone)]
pub struct Search<'db> {
    db: &'db Database,
    plan: SearchPlan,
    filter: Option<String>,
    exec: ExecOptions,
}

impl Search<'_> {
    pub fn limit(mut self, k: usize) -> Self {
        self.plan.limit = k as u64;
        self
    }

    pub fn match_images(mut self) -> Self {
        self.plan.target = Some(Target::Images);
        self
    }

    pub fn match_texts(mut self) -> Self {
        self.plan.target = Some(Target::Texts);
        self
    }

    /// A condition on the rows, written as after `WHERE` (`"split = 'test' AND year > 1900"`).
    pub fn filter(mut self, predicate: &str) -> Self {
        self.filter = Some(predicate.to_string());
        self
    }

    /// Search the embeddings of another model of the collection (folder or Hub id).
    pub fn model(mut self, locator: &str) -> Self {
        self.plan.model = Some(locator.to_string());
        self
    }

    /// Hits carry the stored image bytes.
    pub fn with_image_bytes(mut self) -> Self {
        self.exec.image_bytes = true;
        self
    }

    /// Stops the search (its re-ranking) when `cancel` is raised.
    pub fn cancel_with(mut self, cancel: &crate::CancelToken) -> Self {
        self.exec.cancel = cancel.clone();
        self
    }

    /// Re-rank the first `top` images of a text search with registry ELIP model `elip`.
    pub fn rerank(mut self, elip: &str, top: usize) -> Self {
        self.plan.rerank = Some(query::RerankPlan {
            elip: elip.to_string(),
            top: top as u64,
            fusion: None,
        });
        self
    }

    /// Also write an HTML report to `path`; an existing file is replaced only with
    /// `overwrite`.
    pub fn report(mut self, path: &str, overwrite: bool) -> Self {
        self.plan.into = Some(query::OutputPath {
            path: path.to_string(),
            overwrite,
        });
        self
    }

    pub fn run(mut self) -> Result<SearchResults> {
        if self.plan.limit > query::MAX_SEARCH_LIMIT {
            return Err(Error::Invalid(format!(
                "limit {} is above the maximum of {}",
                self.plan.limit,
                query::MAX_SEARCH_LIMIT
            )));
        }
        if let Some(text) = &self.filter {
            self.plan.filter = Some(bind_filter(self.db, &self.plan.collection, text)?);
        }
        crate::search::run(self.db, &self.plan, &self.exec)
    }
}

/// A `WHERE` predicate's text bound to `collection`'s columns.
fn bind_filter(db: &Database, collection: &str, text: &str) -> Result<query::Predicate> {
    let expr = query::parse_predicate(text)?;
    let snap = db.snapshot()?;
    Ok(query::bind_predicate(
        &expr,
        collection,
        &SnapshotCatalog(&snap),
    )?)
}
