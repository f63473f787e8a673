//! The bodies of Mirante's fuzz targets, shared by the libFuzzer binaries (`fuzz_targets/`) and
//! the test that replays the committed corpora (`tests/tests/fuzz_corpora.rs`, which includes
//! this file). Each must return, whatever the bytes: an error is fine, a panic, an abort, a hang
//! or an allocation beyond the limits is a bug.

use mirante_query::{Catalog, ColumnInfo, ColumnKind, ColumnRef};
use mirante_training::ImageProcessor;
use mirante_training::imageio::ImageLimits;
use mirante_training::preprocess::{Resample, ResizeTo};

/// A statement (or a `WHERE` condition) parsed, and bound against a catalog of two collections.
pub fn statement(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(statements) = mirante_query::parse(text) {
        for s in statements {
            let _ = mirante_query::bind(s, &TwoCollections);
        }
    }
    let _ = mirante_query::parse_predicate(text);
}

/// Image bytes decoded and preprocessed as CLIP's processor does, within small limits (so that
/// a decompression bomb is an error, not an out-of-memory kill of the fuzzer).
pub fn image(data: &[u8]) {
    let processor = ImageProcessor {
        resize: Some((ResizeTo::ShortestEdge(32), Resample::Bicubic)),
        center_crop: Some((32, 32)),
        rescale: Some(1.0 / 255.0),
        normalize: Some(([0.5; 3], [0.5; 3])),
        convert_rgb: true,
        limits: ImageLimits {
            max_pixels: 1 << 22,
            max_file_bytes: 1 << 24,
        },
    };
    let _ = processor.process_bytes(data, "fuzz input");
}

/// Collections `images` and `art` with every kind of column.
struct TwoCollections;

impl Catalog for TwoCollections {
    fn collection_names(&self) -> Vec<String> {
        vec!["images".into(), "art".into()]
    }

    fn columns(&self, collection: &str) -> Option<Vec<ColumnInfo>> {
        if !["images", "art"].contains(&collection) {
            return None;
        }
        let column = |name: &str, column, kind, nullable| ColumnInfo {
            name: name.into(),
            column,
            kind,
            nullable,
        };
        Some(vec![
            column("id", ColumnRef::Id, ColumnKind::Int, false),
            column("image", ColumnRef::Image, ColumnKind::String, true),
            column("text", ColumnRef::Text, ColumnKind::StringList, true),
            column("split", ColumnRef::Split, ColumnKind::String, true),
            column("year", ColumnRef::Meta(0), ColumnKind::Int, true),
            column("artist", ColumnRef::Meta(1), ColumnKind::String, false),
            column("price", ColumnRef::Meta(2), ColumnKind::Float, true),
            column("sold", ColumnRef::Meta(3), ColumnKind::Bool, true),
        ])
    }
}
