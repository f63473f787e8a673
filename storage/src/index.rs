//! FAISS index segments (`.faiss`): one per (segment, embedding space), built from an index-factory
//! string over the segment's embedding column, written with FAISS's own writer and read back
//! memory-mapped where FAISS allows it.
//!
//! Index ids are item positions within the segment's column, so a deletion or metadata filter is
//! a bitmap over those positions, handed to FAISS as an `IDSelectorBitmap`.

use std::ffi::CStr;
use std::path::Path;
use std::ptr;

use faiss::index::IndexImpl;
use faiss::index::io_flags::IoFlags;
use faiss::{Index, MetricType};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::{factory, fsio};

/// Below this many vectors a segment keeps no FAISS index: an exact scan of its memory-mapped
/// column is as fast, and tiny commits stay cheap.
pub const MIN_INDEXED_ITEMS: usize = 1024;

/// Index configuration of a collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexSpec {
    /// FAISS index-factory string, e.g. `Flat`, `HNSW32`, `IVF256,Flat`, `IVF256,PQ16`.
    pub factory: String,
    /// FAISS ParameterSpace settings applied after building, e.g. `nprobe=16` or `efSearch=64`.
    /// Empty means the defaults chosen by [`IndexSpec::effective_params`].
    #[serde(default)]
    pub params: String,
}

impl Default for IndexSpec {
    fn default() -> Self {
        IndexSpec {
            factory: "Flat".into(),
            params: String::new(),
        }
    }
}

impl IndexSpec {
    pub fn new(factory: impl Into<String>) -> Self {
        IndexSpec {
            factory: factory.into(),
            params: String::new(),
        }
    }

    /// The `n` of an `IVF{n}` coarse quantizer, if any.
    pub fn ivf_lists(&self) -> Option<usize> {
        let rest = self
            .factory
            .split(',')
            .find_map(|p| p.trim().strip_prefix("IVF"))?;
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        digits.parse().ok()
    }

    /// Fewest vectors a segment needs before it gets this index: FAISS's k-means wants 39
    /// training points per centroid (IVF lists; `2^bits` per PQ sub-quantizer).
    pub fn min_items(&self) -> usize {
        let training = match factory::parse(&self.factory, None) {
            Ok(f) => f.min_training,
            // A spec stored before specs were checked: its IVF lists and 8-bit PQ codes.
            Err(_) => {
                let pq = if self.factory.contains("PQ") { 256 } else { 0 };
                39 * self.ivf_lists().unwrap_or(0).max(pq)
            }
        };
        MIN_INDEXED_ITEMS.max(training)
    }

    /// Parameters applied to every built index: the user's, or `efSearch=64` for HNSW and
    /// `nprobe=max(1, n/8)` for IVF.
    pub fn effective_params(&self) -> String {
        if !self.params.is_empty() {
            return self.params.clone();
        }
        if let Some(lists) = self.ivf_lists() {
            return format!("nprobe={}", (lists / 8).max(1));
        }
        if self.factory.contains("HNSW") {
            return "efSearch=64".into();
        }
        String::new()
    }

    fn parsed_params(&self) -> Result<Vec<(String, f64)>> {
        self.effective_params()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "index parameter '{kv}' is not of the form name=value (e.g. nprobe=16)"
                    ))
                })?;
                let v: f64 = v.trim().parse().map_err(|_| {
                    Error::InvalidArgument(format!(
                        "index parameter '{kv}' has a non-numeric value"
                    ))
                })?;
                let k = k.trim();
                let Some(&(_, most)) = PARAMETERS.iter().find(|(name, _)| *name == k) else {
                    return Err(Error::InvalidArgument(format!(
                        "index parameter '{k}' is not one of {}",
                        PARAMETERS.map(|(n, _)| n).join(", ")
                    )));
                };
                if v.fract() != 0.0 || !(1.0..=most).contains(&v) {
                    return Err(Error::InvalidArgument(format!(
                        "index parameter {k}={v} must be a whole number from 1 to {most}"
                    )));
                }
                Ok((k.to_string(), v))
            })
            .collect()
    }

    /// `nprobe` to pass with filtered IVF searches (FAISS wants IVF search parameters there).
    fn nprobe(&self) -> Option<usize> {
        self.ivf_lists()?;
        let params = self.parsed_params().ok()?;
        Some(
            params
                .iter()
                .find(|(k, _)| k == "nprobe")
                .map(|(_, v)| *v as usize)
                .unwrap_or(1),
        )
    }

    /// Checks what does not depend on the vectors' dimension: the factory string's grammar and
    /// bounds (see [`crate::factory`]) and the parameters.
    pub fn validate_syntax(&self) -> Result<()> {
        factory::parse(&self.factory, None)?;
        self.parsed_params().map(drop)
    }

    /// Checks the spec for `dim`-sized vectors: grammar, bounds and dimensions, then a trial
    /// build (train, add, search) of the same structure on a few hundred synthetic vectors, so
    /// that what FAISS would refuse at the first large segment is refused now.
    pub fn validate(&self, dim: usize) -> Result<()> {
        let parsed = factory::parse(&self.factory, Some(dim))?;
        self.parsed_params()?;
        let refused = |e: faiss::error::Error| {
            Error::InvalidArgument(format!(
                "index '{}' is refused: FAISS cannot build it for {dim}-dimensional vectors ({e})",
                self.factory
            ))
        };
        let n = parsed.trial_items.max(64);
        let vectors = trial_vectors(n, dim);
        let mut index = faiss::index_factory(dim as u32, &parsed.trial, MetricType::InnerProduct)
            .map_err(refused)?;
        if !index.is_trained() {
            index.train(&vectors).map_err(refused)?;
        }
        index.add(&vectors).map_err(refused)?;
        self.apply_params(&index)?;
        index.search(&vectors[..dim], 1).map_err(refused)?;
        Ok(())
    }

    fn apply_params(&self, index: &IndexImpl) -> Result<()> {
        let params = self.parsed_params()?;
        if params.is_empty() {
            return Ok(());
        }
        let space = faiss::index::autotune::ParameterSpace::new()
            .map_err(|e| Error::faiss("creating a parameter space", e))?;
        for (k, v) in params {
            space.set_index_parameter(index, &k, v).map_err(|e| {
                Error::InvalidArgument(format!(
                    "index '{}' does not take parameter {k}={v} ({e})",
                    self.factory
                ))
            })?;
        }
        Ok(())
    }
}

/// Builds an index over `vectors` (inner product) and writes it to `path`, fsynced.
pub(crate) fn build(spec: &IndexSpec, dim: usize, vectors: &[f32], path: &Path) -> Result<()> {
    let ctx = || format!("building '{}' index {}", spec.factory, path.display());
    let mut index = faiss::index_factory(dim as u32, &spec.factory, MetricType::InnerProduct)
        .map_err(|e| Error::faiss(ctx(), e))?;
    if !index.is_trained() {
        index.train(vectors).map_err(|e| Error::faiss(ctx(), e))?;
    }
    index.add(vectors).map_err(|e| Error::faiss(ctx(), e))?;
    spec.apply_params(&index)?;
    let path_str = path
        .to_str()
        .ok_or_else(|| Error::InvalidArgument(format!("non-UTF-8 path {}", path.display())))?;
    faiss::write_index(&index, path_str).map_err(|e| Error::faiss(ctx(), e))?;
    fsio::sync_file(path)
}

/// Search parameters a spec may set, with their largest values (each costs search time or
/// memory in proportion).
const PARAMETERS: [(&str, f64); 3] = [
    ("nprobe", 65_536.0),
    ("efSearch", 4096.0),
    ("k_factor", 64.0),
];

/// `n` deterministic pseudo-random vectors of `dim` values in [-1, 1), for trial builds.
fn trial_vectors(n: usize, dim: usize) -> Vec<f32> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..n * dim)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect()
}

/// A loaded FAISS index segment.
#[derive(Debug)]
pub(crate) struct LoadedIndex {
    index: IndexImpl,
    nprobe: Option<usize>,
}

/// FAISS 1.12's `IO_FLAG_MMAP_IFC`: maps the codes of flat-storage indexes instead of copying them.
const IO_FLAG_MMAP_IFC: i32 = 1 << 9;

impl LoadedIndex {
    /// Loads an index file whose length and CRC-32C the caller has already verified (FAISS's reader
    /// trusts its input, so unchecked bytes must never reach it).
    pub fn load(path: &Path, spec: &IndexSpec) -> Result<Self> {
        let path_str = path
            .to_str()
            .ok_or_else(|| Error::InvalidArgument(format!("non-UTF-8 path {}", path.display())))?;
        let mapped = faiss::index::io::read_index_with_flags(
            path_str,
            IoFlags::from(IO_FLAG_MMAP_IFC) | IoFlags::READ_ONLY,
        );
        let index = match mapped {
            Ok(i) => i,
            Err(_) => faiss::read_index(path_str).map_err(|e| {
                Error::corruption(path, format!("FAISS cannot read the index: {e}"))
            })?,
        };
        Ok(LoadedIndex {
            index,
            nprobe: spec.nprobe(),
        })
    }

    pub fn ntotal(&self) -> usize {
        self.index.ntotal() as usize
    }

    /// Searches `queries` (row-major, `nq` vectors) for the `k` best ids. With `allowed`, only
    /// positions whose bit is set (LSB-first bitmap) are candidates. Returns, per query, up to `k`
    /// (position, FAISS score) pairs; FAISS pads missing results with -1, which are dropped.
    pub fn search(
        &self,
        queries: &[f32],
        nq: usize,
        k: usize,
        allowed: Option<&[u8]>,
    ) -> Result<Vec<Vec<(usize, f32)>>> {
        let mut distances = vec![0f32; nq * k];
        let mut labels = vec![-1i64; nq * k];
        // SAFETY: the index pointer is valid for the lifetime of `self`; FAISS's CPU search is
        // const and thread-safe; the query, distance and label buffers have the sizes FAISS writes
        // (nq*d reads, nq*k writes); the selector and parameters are freed after the call and the
        // bitmap they point to outlives them.
        let code = unsafe {
            let index = self.index.inner_ptr();
            match allowed {
                None => faiss_sys::faiss_Index_search(
                    index,
                    nq as i64,
                    queries.as_ptr(),
                    k as i64,
                    distances.as_mut_ptr(),
                    labels.as_mut_ptr(),
                ),
                Some(bitmap) => {
                    let mut sel = ptr::null_mut();
                    let code = faiss_sys::faiss_IDSelectorBitmap_new(
                        &mut sel,
                        bitmap.len(),
                        bitmap.as_ptr(),
                    );
                    if code != 0 {
                        return Err(last_error("creating a bitmap selector"));
                    }
                    let sel = sel as *mut faiss_sys::FaissIDSelector;
                    let mut params = ptr::null_mut();
                    let code = match self.nprobe {
                        Some(np) => {
                            let mut p = ptr::null_mut();
                            let c =
                                faiss_sys::faiss_SearchParametersIVF_new_with(&mut p, sel, np, 0);
                            params = p as *mut faiss_sys::FaissSearchParameters;
                            c
                        }
                        None => faiss_sys::faiss_SearchParameters_new(&mut params, sel),
                    };
                    let code = if code == 0 {
                        faiss_sys::faiss_Index_search_with_params(
                            index,
                            nq as i64,
                            queries.as_ptr(),
                            k as i64,
                            params,
                            distances.as_mut_ptr(),
                            labels.as_mut_ptr(),
                        )
                    } else {
                        code
                    };
                    if !params.is_null() {
                        faiss_sys::faiss_SearchParameters_free(params);
                    }
                    faiss_sys::faiss_IDSelector_free(sel);
                    code
                }
            }
        };
        if code != 0 {
            return Err(last_error("searching an index"));
        }
        Ok((0..nq)
            .map(|q| {
                (0..k)
                    .filter_map(|j| {
                        let l = labels[q * k + j];
                        (l >= 0).then(|| (l as usize, distances[q * k + j]))
                    })
                    .collect()
            })
            .collect())
    }
}

/// FAISS's message for the last failed C-API call on this thread.
fn last_error(context: &str) -> Error {
    // SAFETY: faiss_get_last_error returns null or a NUL-terminated thread-local string.
    let msg = unsafe {
        let p = faiss_sys::faiss_get_last_error();
        if p.is_null() {
            "unknown error".to_string()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    Error::Faiss {
        context: context.to_string(),
        detail: msg,
    }
}
