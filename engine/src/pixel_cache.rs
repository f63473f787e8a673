//! Preprocessed pixels kept across statements. ELIP re-ranking runs the image encoder on every
//! query's candidates, and the same images come back query after query; decoding and resizing
//! them each time would cost more than the encoder itself on small models. Entries are keyed by
//! the image's content and the model whose preprocessing made them (so a replaced row, a
//! recreated collection or another model can never be served stale pixels), weighed by their
//! size, and evicted least-recently-used first (quick_cache's CLOCK-Pro) past the budget.

use std::sync::Arc;

use quick_cache::Weighter;
use quick_cache::sync::Cache;
use twox_hash::XxHash3_128;

use crate::error::Result;

/// Default budget: about 5,000 images at 224 px, 40,000 at 64 px.
pub(crate) const DEFAULT_BYTES: u64 = 256 << 20;

/// An entry's weight: its bytes.
#[derive(Debug, Clone, Copy)]
struct Bytes;

impl Weighter<u128, Arc<Vec<f32>>> for Bytes {
    fn weight(&self, _key: &u128, pixels: &Arc<Vec<f32>>) -> u64 {
        (pixels.len() * std::mem::size_of::<f32>()) as u64
    }
}

/// Preprocessed pixels by (model, image content), within a byte budget.
pub(crate) struct PixelCache {
    cache: Cache<u128, Arc<Vec<f32>>, Bytes>,
}

impl std::fmt::Debug for PixelCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PixelCache")
            .field("entries", &self.cache.len())
            .field("bytes", &self.cache.weight())
            .finish()
    }
}

impl PixelCache {
    /// A cache holding at most `bytes` of pixels (0 turns it off).
    pub fn new(bytes: u64) -> Self {
        // A 64 px image is 48 KiB: the estimate only sizes the first allocation.
        let estimated = (bytes / (48 << 10)).clamp(1, 1 << 16) as usize;
        PixelCache {
            cache: Cache::with_weighter(estimated, bytes.max(1), Bytes),
        }
    }

    /// The pixels of `image` under the preprocessing of the model with fingerprint `model`:
    /// from the cache, or made by `preprocess` and kept. The flag says whether they were made.
    pub fn get_or_make(
        &self,
        model: &str,
        image: &[u8],
        preprocess: impl FnOnce() -> Result<Vec<f32>>,
    ) -> Result<(Arc<Vec<f32>>, bool)> {
        let mut hasher = XxHash3_128::new();
        hasher.write(model.as_bytes());
        hasher.write(&(model.len() as u64).to_le_bytes());
        hasher.write(image);
        let key = hasher.finish_128();
        let mut made = false;
        let pixels = self.cache.get_or_insert_with(&key, || {
            made = true;
            preprocess().map(Arc::new)
        })?;
        Ok((pixels, made))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixels_are_made_once_per_model_and_content() {
        let cache = PixelCache::new(1 << 20);
        let make = |v: f32| move || Ok(vec![v; 16]);
        let (a, made) = cache.get_or_make("m1", b"png-1", make(1.0)).unwrap();
        assert!(made);
        let (again, made) = cache.get_or_make("m1", b"png-1", make(9.0)).unwrap();
        assert!(!made, "the second request is served from the cache");
        assert_eq!(again, a);
        // Another model's preprocessing, or other bytes, make new pixels.
        assert!(cache.get_or_make("m2", b"png-1", make(2.0)).unwrap().1);
        assert!(cache.get_or_make("m1", b"png-2", make(3.0)).unwrap().1);
        // A failed preprocessing is reported and not kept.
        let failed = cache.get_or_make("m1", b"bad", || {
            Err(crate::error::Error::Invalid("not an image".into()))
        });
        assert!(failed.is_err());
        assert!(cache.get_or_make("m1", b"bad", make(4.0)).unwrap().1);
    }

    #[test]
    fn the_budget_bounds_what_is_kept() {
        let cache = PixelCache::new(64 * 4 * 10);
        for i in 0..100u32 {
            cache
                .get_or_make("m", &i.to_le_bytes(), || Ok(vec![0.0; 64]))
                .unwrap();
        }
        assert!(cache.cache.weight() <= 64 * 4 * 10);
        assert!(cache.cache.len() <= 10);
        // A zero budget keeps nothing: every request preprocesses.
        let off = PixelCache::new(0);
        for _ in 0..2 {
            let (pixels, made) = off.get_or_make("m", b"png", || Ok(vec![1.0; 8])).unwrap();
            assert!(made);
            assert_eq!(pixels.len(), 8);
        }
    }
}
