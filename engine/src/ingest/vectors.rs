//! Vectors made outside Mirante, imported with the rows (`image_embedding`, `text_embedding`):
//! read from JSON values or Arrow cells, and checked (finite, one text vector per caption).

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef};
use arrow_schema::DataType;

use mirante_query::options::EmbeddingColumns;

use super::source::Precomputed;

/// Checks a row's precomputed vectors: present, finite, one text vector per caption.
pub(super) fn precomputed(
    image: std::result::Result<Vec<f32>, String>,
    texts: std::result::Result<Vec<Vec<f32>>, String>,
    e: &EmbeddingColumns,
    captions: usize,
) -> std::result::Result<Precomputed, String> {
    let image = image.map_err(|m| format!("image embedding column '{}': {m}", e.image))?;
    let texts = texts.map_err(|m| format!("text embedding column '{}': {m}", e.text))?;
    if texts.len() != captions {
        return Err(format!(
            "text embedding column '{}' holds {} vectors for {captions} captions",
            e.text,
            texts.len()
        ));
    }
    if image.is_empty() || texts.iter().any(Vec::is_empty) {
        return Err("an embedding is empty".into());
    }
    if !image
        .iter()
        .chain(texts.iter().flatten())
        .all(|x| x.is_finite())
    {
        return Err("an embedding holds NaN or infinity".into());
    }
    Ok(Precomputed { image, texts })
}

/// A vector from JSON: an array of numbers, or a string holding one (a CSV cell).
pub(super) fn json_vector(v: &serde_json::Value) -> std::result::Result<Vec<f32>, String> {
    use serde_json::Value as J;
    match v {
        J::Null => Err("the vector is missing".into()),
        J::String(s) => json_vector(
            &serde_json::from_str(s).map_err(|e| format!("not a JSON array of numbers: {e}"))?,
        ),
        J::Array(items) => items
            .iter()
            .map(|x| {
                x.as_f64()
                    .map(|x| x as f32)
                    .ok_or_else(|| format!("the vector holds {x}, expected numbers"))
            })
            .collect(),
        other => Err(format!("{other} is not a vector (a list of numbers)")),
    }
}

/// Caption vectors from JSON: an array of vectors, or one vector for a single caption.
pub(super) fn json_vectors(v: &serde_json::Value) -> std::result::Result<Vec<Vec<f32>>, String> {
    use serde_json::Value as J;
    match v {
        J::String(s) => json_vectors(
            &serde_json::from_str(s).map_err(|e| format!("not a JSON array of vectors: {e}"))?,
        ),
        J::Array(items) if items.iter().all(J::is_array) => items.iter().map(json_vector).collect(),
        J::Array(_) => Ok(vec![json_vector(v)?]),
        J::Null => Ok(Vec::new()),
        other => Err(format!("{other} is not a list of vectors")),
    }
}

/// A vector cell: a list (or fixed-size list) of floats.
pub(super) fn vector_at(a: &ArrayRef, i: usize) -> std::result::Result<Vec<f32>, String> {
    if a.is_null(i) {
        return Err("the vector is missing".into());
    }
    let values = match a.data_type() {
        DataType::List(_) => a.as_list::<i32>().value(i),
        DataType::LargeList(_) => a.as_list::<i64>().value(i),
        DataType::FixedSizeList(_, _) => a.as_fixed_size_list().value(i),
        other => return Err(format!("type {other} is not a list of floats")),
    };
    let floats = arrow_cast::cast(&values, &DataType::Float32)
        .map_err(|e| format!("type {} is not a list of floats: {e}", a.data_type()))?;
    let floats = floats.as_primitive::<arrow_array::types::Float32Type>();
    if floats.null_count() > 0 {
        return Err("the vector holds nulls".into());
    }
    Ok(floats.values().to_vec())
}

/// Caption vectors: a list of vectors, or one vector for a row with one caption.
pub(super) fn vectors_at(a: &ArrayRef, i: usize) -> std::result::Result<Vec<Vec<f32>>, String> {
    if a.is_null(i) {
        return Ok(Vec::new());
    }
    let inner = match a.data_type() {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => f.data_type(),
        other => return Err(format!("type {other} is not a list of vectors")),
    };
    if !matches!(
        inner,
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(_, _)
    ) {
        return Ok(vec![vector_at(a, i)?]);
    }
    let list = match a.data_type() {
        DataType::List(_) => a.as_list::<i32>().value(i),
        DataType::LargeList(_) => a.as_list::<i64>().value(i),
        _ => a.as_fixed_size_list().value(i),
    };
    (0..list.len()).map(|j| vector_at(&list, j)).collect()
}
