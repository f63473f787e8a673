//! The part of FAISS's index-factory language Mirante accepts, parsed and bounded before FAISS
//! sees it. FAISS trusts its factory strings: some parameters it accepts crash the process
//! (`HNSW0`), others cost memory without bound (`HNSW100000`) or make every later build fail
//! (`PQ8x16` on a few thousand vectors). So a spec is parsed here, each number is held to a
//! range, the dimensions are followed through the transforms, and the training a segment needs
//! is computed from the parsed spec.
//!
//! Accepted, comma-separated: any transforms (`PCA{d}`, `PCAR{d}`, `PCAW{d}`, `PCAWR{d}`,
//! `OPQ{m}`, `OPQ{m}_{d}`, `L2norm`), then one index (`Flat`; `HNSW{M}` with an optional
//! `_Flat`, `_SQ{t}` or `_PQ{m}` storage; `IVF{n}` or `IVF{n}_HNSW{M}` followed by `Flat`,
//! `SQ{t}` or a PQ; `PQ{m}`, `PQ{m}x{b}`, `PQ{m}np`, `PQ{m}x4fs`, `PQ{m}x4fsr`; `SQ{t}`;
//! `LSH`), then an
//! optional `RFlat` refinement.

use crate::error::{Error, Result};

/// Longest factory string accepted.
pub const MAX_FACTORY_LEN: usize = 256;
/// Bounds of each number, chosen so that no accepted spec costs much more per vector than its
/// codes: a graph of at most 128 links per node, at most 65,536 inverted lists (their training
/// needs 39 points each), PQ codes of at most 12 bits per sub-quantizer.
const HNSW_M: (u64, u64) = (2, 128);
const IVF_LISTS: (u64, u64) = (1, 65_536);
const PQ_BITS: (u64, u64) = (1, 12);
/// FAISS's k-means wants this many training points per centroid.
const POINTS_PER_CENTROID: usize = 39;
const SQ_TYPES: &[&str] = &["SQ4", "SQ6", "SQ8", "SQfp16", "SQbf16"];

/// A factory string that passed the checks, with what building it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Factory {
    /// Inverted lists of an IVF index.
    pub ivf_lists: Option<usize>,
    /// Vectors a segment needs before the index can be trained well.
    pub min_training: usize,
    /// The same structure with small training needs (at most 16 lists, 4-bit codes), for a
    /// trial build on a few vectors.
    pub trial: String,
    /// Vectors the trial build trains on.
    pub trial_items: usize,
}

/// Parses `factory` for vectors of `dim` dimensions (`None`: the dimension is not known yet, so
/// only what does not depend on it is checked).
pub(crate) fn parse(factory: &str, dim: Option<usize>) -> Result<Factory> {
    if factory.len() > MAX_FACTORY_LEN {
        return Err(invalid(
            factory,
            &format!(
                "it is {} bytes long, the limit is {MAX_FACTORY_LEN}",
                factory.len()
            ),
        ));
    }
    let parts: Vec<&str> = factory.split(',').map(str::trim).collect();
    let mut p = Parser {
        factory,
        dim,
        min_training: 1,
        trial: Vec::new(),
        trial_items: 1,
        ivf_lists: None,
    };
    let mut i = 0;
    while i < parts.len() && p.transform(parts[i])? {
        i += 1;
    }
    let Some(main) = parts.get(i) else {
        return Err(invalid(factory, "it has no index after its transforms"));
    };
    i += 1;
    if p.index(main, parts.get(i).copied())? {
        i += 1;
    }
    if parts.get(i) == Some(&"RFlat") {
        p.trial.push("RFlat".into());
        i += 1;
    }
    if let Some(extra) = parts.get(i) {
        return Err(invalid(
            factory,
            &format!("'{extra}' is not expected there"),
        ));
    }
    Ok(Factory {
        ivf_lists: p.ivf_lists,
        min_training: p.min_training,
        trial: p.trial.join(","),
        trial_items: p.trial_items,
    })
}

struct Parser<'a> {
    factory: &'a str,
    /// The dimension at this point of the chain (transforms change it).
    dim: Option<usize>,
    min_training: usize,
    trial: Vec<String>,
    trial_items: usize,
    ivf_lists: Option<usize>,
}

impl Parser<'_> {
    /// A transform; `false` when `part` is not one (so it must be the index).
    fn transform(&mut self, part: &str) -> Result<bool> {
        if part == "L2norm" {
            self.trial.push(part.into());
            return Ok(true);
        }
        for prefix in ["PCAWR", "PCAW", "PCAR", "PCA"] {
            if let Some(rest) = part.strip_prefix(prefix) {
                let d = self.number(part, rest, "output dimensions", (1, 65_536))?;
                self.reduce_to(part, d)?;
                self.train(d, d);
                self.trial.push(part.into());
                return Ok(true);
            }
        }
        if let Some(rest) = part.strip_prefix("OPQ") {
            let (m, d) = match rest.split_once('_') {
                Some((m, d)) => (m, Some(d)),
                None => (rest, None),
            };
            let m = self.number(part, m, "sub-quantizers", (1, 65_536))?;
            if let Some(d) = d {
                let d = self.number(part, d, "output dimensions", (1, 65_536))?;
                self.reduce_to(part, d)?;
            }
            self.divides(part, m)?;
            self.train(256, POINTS_PER_CENTROID * 256);
            self.trial.push(part.into());
            return Ok(true);
        }
        Ok(false)
    }

    /// The index; `true` when it consumed `next` as its storage (IVF).
    fn index(&mut self, part: &str, next: Option<&str>) -> Result<bool> {
        if part == "Flat" || part == "LSH" || SQ_TYPES.contains(&part) {
            self.trial.push(part.into());
            return Ok(false);
        }
        if let Some(rest) = part.strip_prefix("HNSW") {
            let (m, storage) = match rest.split_once('_') {
                Some((m, s)) => (m, Some(s)),
                None => (rest, None),
            };
            let m = self.number(part, m, "links per node", HNSW_M)?;
            let storage = match storage {
                None => String::new(),
                Some(s) => format!("_{}", self.storage(part, s)?),
            };
            self.trial.push(format!("HNSW{m}{storage}"));
            return Ok(false);
        }
        if let Some(rest) = part.strip_prefix("IVF") {
            let (n, quantizer) = match rest.split_once('_') {
                Some((n, q)) => (n, Some(q)),
                None => (rest, None),
            };
            let n = self.number(part, n, "inverted lists", IVF_LISTS)?;
            let quantizer = match quantizer {
                None => String::new(),
                Some(q) => {
                    let m = q.strip_prefix("HNSW").ok_or_else(|| {
                        invalid(
                            self.factory,
                            &format!("'{part}': the coarse quantizer after '_' must be HNSW{{M}}"),
                        )
                    })?;
                    format!("_HNSW{}", self.number(part, m, "links per node", HNSW_M)?)
                }
            };
            self.ivf_lists = Some(n);
            let trial_lists = n.min(16);
            // Enough trial vectors that FAISS's k-means trains without its "please provide
            // at least ... training points" warning on stderr.
            self.train(POINTS_PER_CENTROID * trial_lists, POINTS_PER_CENTROID * n);
            let Some(storage) = next else {
                return Err(invalid(
                    self.factory,
                    &format!(
                        "'{part}' needs a storage after it, e.g. '{part},Flat' or '{part},PQ16'"
                    ),
                ));
            };
            let storage = self.storage(part, storage)?;
            self.trial.push(format!("IVF{trial_lists}{quantizer}"));
            self.trial.push(storage);
            return Ok(true);
        }
        if part.starts_with("PQ") {
            let storage = self.storage(part, part)?;
            self.trial.push(storage);
            return Ok(false);
        }
        Err(invalid(
            self.factory,
            &format!("'{part}' is not an index Mirante accepts"),
        ))
    }

    /// A code storage: `Flat`, `SQ{t}` or a product quantizer; returns its trial form.
    fn storage(&mut self, part: &str, s: &str) -> Result<String> {
        if s == "Flat" || SQ_TYPES.contains(&s) {
            return Ok(s.into());
        }
        let Some(rest) = s.strip_prefix("PQ") else {
            return Err(invalid(
                self.factory,
                &format!(
                    "'{part}': storage '{s}' is not Flat, SQ4/SQ6/SQ8/SQfp16/SQbf16 or PQ{{m}}"
                ),
            ));
        };
        let (m, bits, suffix) = if let Some(m) = rest.strip_suffix("x4fsr") {
            (m, 4, "x4fsr")
        } else if let Some(m) = rest.strip_suffix("x4fs") {
            (m, 4, "x4fs")
        } else if let Some(m) = rest.strip_suffix("np") {
            (m, 8, "np")
        } else if let Some((m, b)) = rest.split_once('x') {
            (m, self.number(part, b, "bits per code", PQ_BITS)?, "")
        } else {
            (rest, 8, "")
        };
        let m = self.number(part, m, "sub-quantizers", (1, 65_536))?;
        self.divides(part, m)?;
        // The trial trains 4-bit codes at most: the same structure, and 16 centroids per
        // sub-quantizer train on a few hundred vectors without FAISS's warning.
        let trial_bits = bits.min(4);
        self.train(
            POINTS_PER_CENTROID << trial_bits,
            POINTS_PER_CENTROID << bits,
        );
        Ok(match suffix {
            "" => format!("PQ{m}x{trial_bits}"),
            "np" => format!("PQ{m}x{trial_bits}np"),
            fast => format!("PQ{m}{fast}"),
        })
    }

    fn number(&self, part: &str, digits: &str, what: &str, (lo, hi): (u64, u64)) -> Result<usize> {
        let n: u64 = (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse().ok())
            .flatten()
            .ok_or_else(|| {
                invalid(
                    self.factory,
                    &format!("'{part}' needs a number of {what} where it has '{digits}'"),
                )
            })?;
        if !(lo..=hi).contains(&n) {
            return Err(invalid(
                self.factory,
                &format!("'{part}' asks for {n} {what}; Mirante accepts {lo} to {hi}"),
            ));
        }
        Ok(n as usize)
    }

    /// A transform to `d` dimensions, which must not be more than it gets.
    fn reduce_to(&mut self, part: &str, d: usize) -> Result<()> {
        if let Some(dim) = self.dim
            && d > dim
        {
            return Err(invalid(
                self.factory,
                &format!("'{part}' outputs {d} dimensions from {dim}-dimensional vectors"),
            ));
        }
        self.dim = Some(d);
        Ok(())
    }

    /// `m` sub-quantizers must split the dimensions evenly.
    fn divides(&self, part: &str, m: usize) -> Result<()> {
        match self.dim {
            Some(dim) if m > dim || !dim.is_multiple_of(m) => Err(invalid(
                self.factory,
                &format!(
                    "'{part}' splits {dim}-dimensional vectors into {m} parts; {m} must divide {dim}"
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Records a training need: the trial needs `trial` vectors, a real segment `segment`.
    fn train(&mut self, trial: usize, segment: usize) {
        self.trial_items = self.trial_items.max(trial);
        self.min_training = self.min_training.max(segment);
    }
}

fn invalid(factory: &str, why: &str) -> Error {
    Error::InvalidArgument(format!(
        "index '{factory}' is refused: {why} (examples: Flat, HNSW32, IVF256,Flat, IVF256,PQ16, \
         OPQ16,IVF1024,PQ16x4fs; see docs/query.md)"
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn accepted_specs_know_their_training_needs() {
        for (spec, lists, min_training, trial) in [
            ("Flat", None, 1, "Flat"),
            ("HNSW32", None, 1, "HNSW32"),
            ("HNSW32_PQ16", None, 9984, "HNSW32_PQ16x4"),
            ("IVF256,Flat", Some(256), 9984, "IVF16,Flat"),
            (
                "IVF4096_HNSW32,PQ16x10",
                Some(4096),
                159_744,
                "IVF16_HNSW32,PQ16x4",
            ),
            (
                "PCA64,IVF16,SQ8,RFlat",
                Some(16),
                624,
                "PCA64,IVF16,SQ8,RFlat",
            ),
            (
                "OPQ16_64,IVF1024,PQ16x4fs",
                Some(1024),
                39_936,
                "OPQ16_64,IVF16,PQ16x4fs",
            ),
            ("L2norm,PQ32x4", None, 624, "L2norm,PQ32x4"),
            ("IVF64,PQ8np", Some(64), 9984, "IVF16,PQ8x4np"),
        ] {
            let f = parse(spec, Some(128)).unwrap();
            assert_eq!(f.ivf_lists, lists, "{spec}");
            assert_eq!(f.min_training, min_training, "{spec}");
            assert_eq!(f.trial, trial, "{spec}");
        }
    }

    #[test]
    fn refused_specs_say_why() {
        for (spec, why) in [
            ("HNSW0", "accepts 2 to 128"),
            ("HNSW100000", "accepts 2 to 128"),
            ("IVF0,Flat", "accepts 1 to 65536"),
            ("IVF16", "needs a storage"),
            ("PQ8x16", "accepts 1 to 12"),
            ("PQ7", "7 must divide 128"),
            ("PCA256,Flat", "outputs 256 dimensions from 128"),
            ("IDMap,Flat", "not an index"),
            ("Flat,Flat", "not expected"),
            ("HNSW", "needs a number"),
            ("PCA,Flat", "needs a number"),
            ("IVF99999999999999999999,Flat", "needs a number"),
            ("Refine(Refine(Flat))", "not an index"),
        ] {
            let err = parse(spec, Some(128)).unwrap_err().to_string();
            assert!(err.contains(why), "{spec}: {err}");
        }
        let long = "PCA8,".repeat(100) + "Flat";
        assert!(
            parse(&long, Some(128))
                .unwrap_err()
                .to_string()
                .contains("bytes long")
        );
        // Without a dimension, only what does not depend on it is checked.
        assert!(parse("PQ7", None).is_ok());
    }
}
