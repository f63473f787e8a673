//! Batched embedding with decoding and resizing on a pool of worker threads, connected to the
//! model (on the calling thread) by bounded channels, so preprocessing overlaps model compute
//! and memory stays bounded. Output order is the input order; images that fail are reported
//! with their source and reason, and the others proceed.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crossbeam_channel::bounded;

use crate::encoder::DualEncoder;
use crate::error::Result;
use crate::progress::Progress;
use crate::stop::Stop;

/// An image to embed: a file, or bytes already in memory (e.g. read from a database blob).
#[derive(Debug, Clone)]
pub enum ImageSource {
    Path(PathBuf),
    Bytes { source: String, bytes: Vec<u8> },
}

impl ImageSource {
    pub fn name(&self) -> String {
        match self {
            ImageSource::Path(p) => p.display().to_string(),
            ImageSource::Bytes { source, .. } => source.clone(),
        }
    }

    fn pixels(&self, encoder: &DualEncoder) -> Result<Vec<f32>> {
        match self {
            ImageSource::Path(p) => {
                let limit = encoder.processor.limits.max_file_bytes;
                let bytes = crate::imageio::read_file(p, limit)?;
                encoder.pixels(&bytes, &p.display().to_string())
            }
            ImageSource::Bytes { source, bytes } => encoder.pixels(bytes, source),
        }
    }
}

/// An input that could not be embedded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Position in the input list.
    pub index: usize,
    pub source: String,
    pub reason: String,
}

/// Embeddings in input order (`None` where the input failed) and the failures.
#[derive(Debug, Clone, Default)]
pub struct Embedded {
    pub embeddings: Vec<Option<Vec<f32>>>,
    pub failures: Vec<Failure>,
}

/// How to run a batch job.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    pub batch_size: usize,
    /// Decode/resize threads.
    pub workers: usize,
    /// Where the progress of a job shows.
    pub progress: Progress,
    /// Checked before every model batch.
    pub stop: Stop,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            batch_size: 32,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            progress: Progress::Hidden,
            stop: Stop::default(),
        }
    }
}

/// Embeds images: workers decode and preprocess, the calling thread runs the model batch by
/// batch in input order.
pub fn embed_images(
    encoder: &DualEncoder,
    inputs: &[ImageSource],
    options: &PipelineOptions,
) -> Result<Embedded> {
    let batch = options.batch_size.max(1);
    let workers = options.workers.max(1);
    let bar = options.progress.steps(inputs.len(), "embedding images");
    let mut out = Embedded {
        embeddings: vec![None; inputs.len()],
        failures: Vec::new(),
    };
    std::thread::scope(|scope| -> Result<()> {
        let (job_tx, job_rx) = bounded::<usize>(2 * batch);
        let (done_tx, done_rx) = bounded::<(usize, Result<Vec<f32>>)>(2 * batch);
        for _ in 0..workers {
            let (job_rx, done_tx) = (job_rx.clone(), done_tx.clone());
            scope.spawn(move || {
                for i in job_rx {
                    if done_tx.send((i, inputs[i].pixels(encoder))).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        scope.spawn(move || {
            for i in 0..inputs.len() {
                if job_tx.send(i).is_err() {
                    return;
                }
            }
        });
        // Reorder: results arrive in any order; the model consumes them in input order.
        let mut ready: BTreeMap<usize, Result<Vec<f32>>> = BTreeMap::new();
        let mut next = 0;
        let mut pending: Vec<(usize, Vec<f32>)> = Vec::with_capacity(batch);
        let flush = |pending: &mut Vec<(usize, Vec<f32>)>, out: &mut Embedded| -> Result<()> {
            if pending.is_empty() {
                return Ok(());
            }
            options.stop.check()?;
            let pixels: Vec<Vec<f32>> =
                pending.iter_mut().map(|(_, p)| std::mem::take(p)).collect();
            let embeddings = encoder.embed_pixels(&pixels)?;
            for ((i, _), e) in pending.drain(..).zip(embeddings) {
                out.embeddings[i] = Some(e);
            }
            bar.inc(pixels.len() as u64);
            Ok(())
        };
        for (i, result) in done_rx {
            ready.insert(i, result);
            while let Some(result) = ready.remove(&next) {
                match result {
                    Ok(p) => pending.push((next, p)),
                    Err(e) => {
                        out.failures.push(Failure {
                            index: next,
                            source: inputs[next].name(),
                            reason: e.to_string(),
                        });
                        bar.inc(1);
                    }
                }
                next += 1;
                if pending.len() == batch {
                    flush(&mut pending, &mut out)?;
                }
            }
        }
        flush(&mut pending, &mut out)
    })?;
    bar.finish_and_clear();
    Ok(out)
}

/// Embeds texts in batches, in input order.
pub fn embed_texts(
    encoder: &DualEncoder,
    texts: &[&str],
    options: &PipelineOptions,
) -> Result<Vec<Vec<f32>>> {
    let bar = options.progress.steps(texts.len(), "embedding texts");
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(options.batch_size.max(1)) {
        options.stop.check()?;
        out.extend(encoder.embed_texts(chunk)?);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}
