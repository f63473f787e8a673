//! The results of a `SEARCH`: typed hits, where the time went, and their tables.

use std::time::Duration;

use mirante_query::Target;
use mirante_storage::Value;

use super::table::{Cell, CellType, Column, ResultSet};

/// One result of a search.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    /// 1-based.
    pub rank: usize,
    pub id: u64,
    /// Cosine similarity; non-increasing along the results.
    pub score: f32,
    /// All captions of the row.
    pub texts: Vec<String>,
    /// The caption that matched, when captions were ranked.
    pub matched_text: Option<String>,
    /// Where the image was imported from.
    pub image: Option<String>,
    pub split: Option<String>,
    pub metadata: Vec<(String, Value)>,
    /// The stored image bytes, when asked for (HTML reports, RAG callers).
    pub image_bytes: Option<Vec<u8>>,
    /// With `RERANK WITH ELIP`: the hit's 1-based rank in the first stage (`score` is then
    /// ELIP's).
    pub first_rank: Option<usize>,
}

/// Where the time of a search went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SearchTimings {
    /// Loading the model (first use only) and embedding the query.
    pub embed: Duration,
    /// The vector search (FAISS or exact scans, filters, merge).
    pub search: Duration,
    /// Reading the hit rows.
    pub fetch: Duration,
    /// Re-scoring the first stage's top-K with ELIP (zero without `RERANK`).
    pub rerank: Duration,
    /// Candidates re-ranking had to decode; the others came from the database's pixel cache.
    pub rerank_decoded: usize,
}

/// The results of a search and what produced them.
#[derive(Debug, Clone)]
pub struct SearchResults {
    pub collection: String,
    /// The query as written ("text 'a dog'", "image x.jpg", "row 7").
    pub query: String,
    pub target: Target,
    pub model: String,
    pub hits: Vec<SearchHit>,
    /// The collection's metadata columns, in schema order.
    pub metadata_columns: Vec<Column>,
    pub timings: SearchTimings,
    /// The HTML report written, if `INTO` was given.
    pub report: Option<String>,
}

impl SearchResults {
    /// The columns and rows: `rank`, `id`, `score`, `text` (all captions), `matched_text` (when
    /// captions were ranked), `first_rank` (when re-ranked), `image`, `split`, the metadata
    /// columns, and with `bytes` the stored `image_bytes`.
    fn table(&self, captions: CaptionCells, bytes: bool) -> ResultSet {
        let matched = self.target == Target::Texts;
        let reranked = self.hits.iter().any(|h| h.first_rank.is_some());
        let mut columns = vec![
            Column::new("rank", CellType::Int, false),
            Column::new("id", CellType::Int, false),
            Column::new("score", CellType::Float, false),
        ];
        match captions {
            CaptionCells::All => {
                columns.push(Column::new("text", CellType::StrList, false));
                if matched {
                    columns.push(Column::new("matched_text", CellType::Str, true));
                }
            }
            CaptionCells::One => {
                columns.push(Column::new("caption", CellType::Str, true));
                columns.push(Column::new("captions", CellType::Int, false));
            }
        }
        if reranked {
            columns.push(Column::new("first_rank", CellType::Int, true));
        }
        columns.push(Column::new("image", CellType::Str, true));
        columns.push(Column::new("split", CellType::Str, true));
        columns.extend(self.metadata_columns.iter().cloned());
        if bytes {
            columns.push(Column::new("image_bytes", CellType::Bytes, true));
        }
        let opt = |s: &Option<String>| s.clone().map_or(Cell::Null, Cell::Str);
        let rows = self
            .hits
            .iter()
            .map(|h| {
                let mut r = vec![
                    Cell::Int(h.rank as i64),
                    Cell::Int(h.id as i64),
                    Cell::Float(f64::from(h.score)),
                ];
                match captions {
                    CaptionCells::All => {
                        r.push(Cell::List(h.texts.clone()));
                        if matched {
                            r.push(opt(&h.matched_text));
                        }
                    }
                    CaptionCells::One => {
                        let shown = h.matched_text.as_ref().or(h.texts.first());
                        r.push(shown.map_or(Cell::Null, |c| Cell::Str(c.clone())));
                        r.push(Cell::Int(h.texts.len() as i64));
                    }
                }
                if reranked {
                    r.push(h.first_rank.map_or(Cell::Null, |x| Cell::Int(x as i64)));
                }
                r.push(opt(&h.image));
                r.push(opt(&h.split));
                r.extend(h.metadata.iter().map(|(_, v)| Cell::from(v.clone())));
                if bytes {
                    r.push(h.image_bytes.clone().map_or(Cell::Null, Cell::Bytes));
                }
                r
            })
            .collect();
        ResultSet {
            columns,
            rows,
            status: self.report.as_ref().map(|p| format!("wrote report {p}")),
        }
    }

    /// Every column, captions as lists.
    pub fn to_result_set(&self) -> ResultSet {
        self.table(CaptionCells::All, false)
    }

    /// For a terminal: each hit's captions as one `caption` (the matched one, else the first)
    /// and `captions`, how many the row has.
    pub fn display_set(&self) -> ResultSet {
        self.table(CaptionCells::One, false)
    }

    /// For Arrow: every column, and the image bytes when the search fetched them.
    pub(crate) fn arrow_set(&self) -> ResultSet {
        let bytes = self.hits.iter().any(|h| h.image_bytes.is_some());
        self.table(CaptionCells::All, bytes)
    }
}

/// How a hit's captions become cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CaptionCells {
    All,
    One,
}
