//! The bodies of Mirante's fuzz targets, shared by the libFuzzer binaries (`fuzz_targets/`) and
//! the test that replays the committed corpora (`tests/tests/fuzz_corpora.rs`, which includes
//! this file). Each must return, whatever the bytes: an error is fine, a panic, an abort, a hang
//! or an allocation beyond the limits is a bug.

use mirante_query::{Catalog, ColumnInfo, ColumnKind, ColumnRef};
use mirante_storage::manifest::Manifest;
use mirante_storage::{RowsShape, check_rows};
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

/// A manifest file (envelope and body), and the same bytes as a manifest body alone: decoded
/// and checked for the invariants readers rely on. The second form gets the fuzzer past the
/// envelope's checksums.
pub fn manifest(data: &[u8]) {
    let _ = mirante_storage::manifest::decode(std::path::Path::new("fuzz.manifest"), data);
    if let Ok(m) = serde_json::from_slice::<Manifest>(data) {
        let _ = m.check();
    }
}

/// A row archive body after a 40-byte prefix holding what its segment's manifest entry would
/// say (rows, captions, first and last row id, blob length; little-endian u64s), validated as
/// a segment's reader validates it.
pub fn rows(data: &[u8]) {
    let Some((prefix, body)) = data.split_first_chunk::<40>() else {
        return;
    };
    let field = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&prefix[i * 8..i * 8 + 8]);
        u64::from_le_bytes(b)
    };
    let shape = RowsShape {
        rows: field(0),
        texts: field(1),
        min_row_id: field(2),
        max_row_id: field(3),
        blob_len: field(4),
    };
    // rkyv reads archives at their alignment, as the memory map of a file gives them.
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(body.len());
    aligned.extend_from_slice(body);
    let _ = check_rows(&aligned, &shape);
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
