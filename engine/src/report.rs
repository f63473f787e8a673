//! HTML reports: self-contained pages (thumbnails inlined as JPEG data URIs, charts as inline
//! SVG) for people who would rather look than read: a search's results with ranks, scores,
//! captions and metadata; an evaluation's metrics, models compared, and its worst failures.

use std::io::Cursor;

use base64::Engine as _;
use mirante_query::Target;

use crate::error::{Error, Result};
use crate::output::{Cell, Evaluation, Failure, Item, SearchResults};

/// Longest side of a thumbnail, in pixels.
const THUMBNAIL: u32 = 192;

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A JPEG thumbnail as a data URI, or `None` when the bytes do not decode.
pub fn thumbnail_data_uri(bytes: &[u8]) -> Option<String> {
    Some(format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(thumbnail_jpeg(bytes, THUMBNAIL)?)
    ))
}

/// A JPEG of a stored image at most `side` pixels on its longest side, or `None` when the
/// bytes do not decode within the default image limits (a stored image may never have been
/// decoded: rows imported with precomputed vectors keep their bytes unread).
pub fn thumbnail_jpeg(bytes: &[u8], side: u32) -> Option<Vec<u8>> {
    let limits = mirante_training::imageio::ImageLimits::default();
    let img = mirante_training::imageio::decode(bytes, "stored image", limits.max_pixels).ok()?;
    let thumb = image::DynamicImage::ImageRgb8(img.thumbnail(side, side).to_rgb8());
    let mut jpeg = Vec::new();
    thumb
        .write_to(&mut Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
        .ok()?;
    Some(jpeg)
}

pub const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
h1{font-size:1.3em}.meta{color:#666;margin-bottom:1.5em}\
.hit{display:flex;gap:1em;align-items:flex-start;border-top:1px solid #ddd;padding:.8em 0}\
.rank{font-size:1.4em;font-weight:bold;width:2.5em;text-align:right}\
.thumb{width:192px;min-height:64px;display:flex;justify-content:center;background:#f4f4f4}\
.thumb img{max-width:192px;max-height:192px}\
.score{font-family:monospace}.bar{height:6px;background:#4a7bd0;margin:.3em 0 .6em}\
.matched{background:#fff3b0}ul{margin:.3em 0;padding-left:1.2em}\
table.md td{padding:0 .8em 0 0;color:#555;font-size:.9em}";

/// Closes a report page: a script that lets a headless browser (and a curious reader) check that
/// every thumbnail decoded.
pub fn finish_page(html: &mut String) {
    html.push_str(
        "<script>window.addEventListener('load',function(){var n=0;\
         document.querySelectorAll('img').forEach(function(i){if(i.complete&&i.naturalWidth>0)n++;});\
         document.body.setAttribute('data-images-loaded',String(n));});</script>\n",
    );
    html.push_str("</body></html>\n");
}

/// An `<img>` of the bytes, or a placeholder when they do not decode.
pub fn thumbnail_tag(bytes: Option<&[u8]>, alt: &str) -> String {
    bytes.and_then(thumbnail_data_uri).map_or_else(
        || "<span>no preview</span>".to_string(),
        |uri| format!("<img src=\"{uri}\" alt=\"{}\">", escape(alt)),
    )
}

/// Colours of the models in charts, in order.
const PALETTE: [&str; 6] = [
    "#4a7bd0", "#e07b39", "#3d9a5b", "#b4469a", "#8a8a8a", "#c9a227",
];

pub const EVAL_STYLE: &str = "table.metrics{border-collapse:collapse;margin:1em 0}\
table.metrics td,table.metrics th{border-bottom:1px solid #ddd;padding:.3em .8em;text-align:right}\
table.metrics th:first-child,table.metrics td:first-child{text-align:left}\
.up{color:#2b8a3e}.down{color:#c92a2a}.charts{display:flex;flex-wrap:wrap;gap:1.5em}\
.chart{border:1px solid #eee;padding:.5em}.legend span{margin-right:1em}\
.failure{border-top:1px solid #ddd;padding:.8em 0}.row{display:flex;gap:.6em;flex-wrap:wrap}\
.cell{width:150px;font-size:.85em}.cell img{max-width:150px;max-height:150px}\
.gold{outline:3px solid #2b8a3e}.query{font-weight:bold;margin-bottom:.4em}";

/// Writes the report of an evaluation: the metrics table (with deltas against the first model),
/// one bar chart per metric, and the worst failures of each model and direction.
pub fn write_evaluation_report(file: std::fs::File, e: &Evaluation) -> Result<()> {
    let mut html = page_head(
        &format!("Mirante: evaluation of {}", e.collection),
        &[STYLE, EVAL_STYLE],
    );
    html.push_str(&evaluation_summary(e));
    html.push_str(&evaluation_failures(e));
    finish_page(&mut html);
    write_page(file, &html)
}

/// Writes a finished page into the report's file (created by the statement, see
/// [`crate::access`]), durably.
fn write_page(mut file: std::fs::File, html: &str) -> Result<()> {
    use std::io::Write;
    file.write_all(html.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::Io {
            path: "the report".into(),
            source: e,
        })
}

/// The start of a report page, up to the opened `<body>`.
pub fn page_head(title: &str, styles: &[&str]) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\
         <style>{}</style></head><body>\n",
        escape(title),
        styles.concat()
    )
}

/// An evaluation's heading, metrics table and bar charts.
pub fn evaluation_summary(e: &Evaluation) -> String {
    let mut html = String::new();
    html.push_str(&format!(
        "<h1>EVALUATE ON {}</h1><div class=\"meta\">version {} &middot; {} images, {} captions{} \
         &middot; exact ranks, ties counted pessimistically</div>\n",
        escape(&e.collection),
        e.version,
        e.images,
        e.captions,
        e.filter
            .as_ref()
            .map(|f| format!(" &middot; WHERE {}", escape(f)))
            .unwrap_or_default()
    ));
    let table = e.to_result_set();
    html.push_str("<table class=\"metrics\"><tr>");
    for c in &table.columns {
        html.push_str(&format!("<th>{}</th>", escape(&c.name)));
    }
    html.push_str("</tr>\n");
    for row in &table.rows {
        html.push_str("<tr>");
        for (c, cell) in table.column_names().into_iter().zip(row) {
            let text = match cell {
                Cell::Float(v) if c.starts_with("delta_") => format!("{v:+.4}"),
                Cell::Float(v) => format!("{v:.4}"),
                other => other.display(),
            };
            let class = match cell {
                Cell::Float(v) if c.starts_with("delta_") && *v != 0.0 => {
                    // A lower median rank is the better one.
                    let better = (*v > 0.0) != c.ends_with("median_rank");
                    if better {
                        " class=\"up\""
                    } else {
                        " class=\"down\""
                    }
                }
                _ => "",
            };
            html.push_str(&format!("<td{class}>{}</td>", escape(&text)));
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</table>\n<div class=\"legend\">");
    for (i, m) in e.models.iter().enumerate() {
        html.push_str(&format!(
            "<span><svg width=\"12\" height=\"12\"><rect width=\"12\" height=\"12\" \
             fill=\"{}\"/></svg> {}</span>",
            PALETTE[i % PALETTE.len()],
            escape(&m.model)
        ));
    }
    html.push_str("</div>\n<div class=\"charts\">");
    for (mi, metric) in e.metric_columns().iter().enumerate() {
        html.push_str(&bar_chart(e, mi, metric));
    }
    html.push_str("</div>\n");
    html
}

/// The worst failures of each model and direction, with thumbnails.
pub fn evaluation_failures(e: &Evaluation) -> String {
    let mut html = String::new();
    for m in &e.models {
        for d in &m.directions {
            if d.worst.is_empty() {
                continue;
            }
            html.push_str(&format!(
                "<h2>Worst {} queries of {}</h2>\n",
                d.direction,
                escape(&m.model)
            ));
            for f in &d.worst {
                html.push_str(&failure_html(f));
            }
        }
    }
    html
}

/// One SVG bar chart: a group of bars (one per model) for each direction.
fn bar_chart(e: &Evaluation, metric_index: usize, metric: &str) -> String {
    let values: Vec<Vec<Option<f64>>> = e
        .models
        .iter()
        .map(|m| {
            m.directions
                .iter()
                .map(|d| d.values[metric_index].1)
                .collect()
        })
        .collect();
    // Fractions share the 0..1 axis; a median rank gets its own.
    let top = if metric == "median_rank" {
        values
            .iter()
            .flatten()
            .flatten()
            .fold(1.0f64, |a, &b| a.max(b))
    } else {
        1.0
    };
    let directions: Vec<String> = e.models[0]
        .directions
        .iter()
        .map(|d| d.direction.to_string())
        .collect();
    let (bar, gap, height) = (22.0, 44.0, 140.0);
    let group = bar * e.models.len() as f64;
    let width = 40.0 + directions.len() as f64 * (group + gap);
    let mut svg = format!(
        "<div class=\"chart\"><div>{}</div><svg width=\"{width}\" height=\"{}\" \
         role=\"img\" aria-label=\"{}\">",
        escape(metric),
        height + 40.0,
        escape(metric)
    );
    svg.push_str(&format!(
        "<line x1=\"30\" y1=\"10\" x2=\"30\" y2=\"{}\" stroke=\"#999\"/>\
         <text x=\"26\" y=\"16\" font-size=\"10\" text-anchor=\"end\">{}</text>\
         <text x=\"26\" y=\"{}\" font-size=\"10\" text-anchor=\"end\">0</text>",
        10.0 + height,
        if top == 1.0 {
            "1".to_string()
        } else {
            format!("{top:.0}")
        },
        10.0 + height
    ));
    for (di, name) in directions.iter().enumerate() {
        let x0 = 36.0 + di as f64 * (group + gap);
        for (mi, per_model) in values.iter().enumerate() {
            let v = per_model.get(di).copied().flatten().unwrap_or(0.0);
            let h = (v / top).clamp(0.0, 1.0) * height;
            svg.push_str(&format!(
                "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{h}\" fill=\"{}\">\
                 <title>{} {}: {v:.4}</title></rect>\
                 <text x=\"{}\" y=\"{}\" font-size=\"9\" text-anchor=\"middle\">{}</text>",
                x0 + mi as f64 * bar,
                10.0 + height - h,
                bar - 2.0,
                PALETTE[mi % PALETTE.len()],
                escape(&e.models[mi].model),
                name,
                x0 + mi as f64 * bar + (bar - 2.0) / 2.0,
                (10.0 + height - h - 3.0).max(9.0),
                if top == 1.0 {
                    format!("{v:.2}")
                } else {
                    format!("{v:.0}")
                }
            ));
        }
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
            x0 + group / 2.0,
            height + 26.0,
            name.replace("_to_", "\u{2192}")
        ));
    }
    svg.push_str("</svg></div>");
    svg
}

/// One failure: the query, what should have come first, and what came instead.
fn failure_html(f: &Failure) -> String {
    let relevant_rows: Vec<u64> = f.relevant.iter().map(|i| i.row).collect();
    let cell = |item: &Item, score: Option<f32>| {
        let gold = relevant_rows.contains(&item.row);
        let body = match &item.image {
            Some(bytes) => thumbnail_tag(Some(bytes), &item.label),
            None => escape(&item.label),
        };
        format!(
            "<div class=\"cell{}\">{body}<div>row {}{}</div></div>",
            if gold { " gold" } else { "" },
            item.row,
            score
                .map(|s| format!(" &middot; {s:.4}"))
                .unwrap_or_default()
        )
    };
    let query = match &f.query.image {
        Some(bytes) => format!(
            "image of row {}: {}",
            f.query.row,
            thumbnail_tag(Some(bytes), &f.query.label)
        ),
        None => format!(
            "&ldquo;{}&rdquo; (row {})",
            escape(&f.query.label),
            f.query.row
        ),
    };
    let relevant: String = f.relevant.iter().map(|i| cell(i, None)).collect();
    let retrieved: String = f.retrieved.iter().map(|(i, s)| cell(i, Some(*s))).collect();
    let rank = if f.rank == crate::metrics::NOT_RETRIEVED {
        "not retrieved by the index".to_string()
    } else {
        format!("first relevant at rank {}", f.rank)
    };
    format!(
        "<div class=\"failure\" data-rank=\"{}\"><div class=\"query\">{query} &middot; {rank}\
         </div><div>relevant:</div><div class=\"row\">{relevant}</div>\
         <div>retrieved (exact scores):</div><div class=\"row\">{retrieved}</div></div>\n",
        f.rank
    )
}

/// Writes the report of `results` to `path` (the hits must carry their image bytes).
pub fn write_search_report(file: std::fs::File, results: &SearchResults) -> Result<()> {
    let mut html = page_head(
        &format!("Mirante: {} in {}", results.query, results.collection),
        &[STYLE],
    );
    html.push_str(&search_sections(results));
    finish_page(&mut html);
    write_page(file, &html)
}

/// A search's heading and hits (thumbnail, score bar, captions, metadata).
fn search_sections(results: &SearchResults) -> String {
    let mut html = String::new();
    html.push_str(&format!(
        "<h1>SEARCH {} BY {}</h1><div class=\"meta\">ranking {} with model {} &middot; {} results</div>\n",
        escape(&results.collection),
        escape(&results.query),
        match results.target {
            Target::Images => "images",
            Target::Texts => "captions",
        },
        escape(&results.model),
        results.hits.len()
    ));
    let top = results.hits.first().map_or(1.0, |h| h.score.max(1e-6));
    for h in &results.hits {
        let thumb = thumbnail_tag(h.image_bytes.as_deref(), h.image.as_deref().unwrap_or(""));
        let captions: String = h
            .texts
            .iter()
            .map(|t| {
                let class = if h.matched_text.as_deref() == Some(t.as_str()) {
                    " class=\"matched\""
                } else {
                    ""
                };
                format!("<li{class}>{}</li>", escape(t))
            })
            .collect();
        let mut metadata: Vec<(String, String)> = vec![
            ("id".into(), h.id.to_string()),
            (
                "image".into(),
                h.image.clone().unwrap_or_else(|| "-".into()),
            ),
        ];
        if let Some(s) = &h.split {
            metadata.push(("split".into(), s.clone()));
        }
        for (k, v) in &h.metadata {
            metadata.push((k.clone(), Cell::from(v.clone()).display()));
        }
        let md: String = metadata
            .iter()
            .map(|(k, v)| format!("<tr><td>{}</td><td>{}</td></tr>", escape(k), escape(v)))
            .collect();
        let width = (100.0 * (h.score / top).clamp(0.0, 1.0)).round();
        html.push_str(&format!(
            "<div class=\"hit\" data-rank=\"{}\"><div class=\"rank\">{}</div>\
             <div class=\"thumb\">{thumb}</div><div><div class=\"score\">score {:.4}</div>\
             <div class=\"bar\" style=\"width:{width}%\"></div><ul>{captions}</ul>\
             <table class=\"md\">{md}</table></div></div>\n",
            h.rank, h.rank, h.score
        ));
    }
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }

    #[test]
    fn thumbnails_are_small_jpegs() {
        let img = image::RgbImage::from_pixel(640, 320, image::Rgb([200, 30, 30]));
        let mut png = Vec::new();
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let uri = thumbnail_data_uri(&png).unwrap();
        let b64 = uri.strip_prefix("data:image/jpeg;base64,").unwrap();
        let jpeg = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let back = image::load_from_memory(&jpeg).unwrap();
        assert_eq!((back.width(), back.height()), (192, 96));
        assert!(thumbnail_data_uri(b"not an image").is_none());
    }
}
