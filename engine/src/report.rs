//! HTML reports: one self-contained page (thumbnails inlined as JPEG data URIs) that shows a
//! search's results with ranks, scores, captions and metadata, for people who would rather look
//! than read.

use std::io::Cursor;
use std::path::Path;

use base64::Engine as _;
use mirante_query::Target;

use crate::error::{Error, Result};
use crate::search::SearchResults;

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
    let img = image::load_from_memory(bytes).ok()?;
    let thumb = image::DynamicImage::ImageRgb8(img.thumbnail(THUMBNAIL, THUMBNAIL).to_rgb8());
    let mut jpeg = Vec::new();
    thumb
        .write_to(&mut Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
        .ok()?;
    Some(format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(jpeg)
    ))
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
h1{font-size:1.3em}.meta{color:#666;margin-bottom:1.5em}\
.hit{display:flex;gap:1em;align-items:flex-start;border-top:1px solid #ddd;padding:.8em 0}\
.rank{font-size:1.4em;font-weight:bold;width:2.5em;text-align:right}\
.thumb{width:192px;min-height:64px;display:flex;justify-content:center;background:#f4f4f4}\
.thumb img{max-width:192px;max-height:192px}\
.score{font-family:monospace}.bar{height:6px;background:#4a7bd0;margin:.3em 0 .6em}\
.matched{background:#fff3b0}ul{margin:.3em 0;padding-left:1.2em}\
table.md td{padding:0 .8em 0 0;color:#555;font-size:.9em}";

/// Writes the report of `results` to `path` (the hits must carry their image bytes).
pub fn write_search_report(path: &Path, results: &SearchResults) -> Result<()> {
    let mut html = String::new();
    html.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    html.push_str(&format!(
        "<title>Mirante: {} in {}</title><style>{STYLE}</style></head><body>\n",
        escape(&results.query),
        escape(&results.collection)
    ));
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
        let thumb = h
            .image_bytes
            .as_deref()
            .and_then(thumbnail_data_uri)
            .map_or_else(
                || "<span>no preview</span>".to_string(),
                |uri| {
                    format!(
                        "<img src=\"{uri}\" alt=\"{}\">",
                        escape(h.image.as_deref().unwrap_or(""))
                    )
                },
            );
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
            metadata.push((k.clone(), crate::result::Cell::from(v.clone()).display()));
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
    // Lets a headless browser (and a curious reader) check that every thumbnail decoded.
    html.push_str(
        "<script>window.addEventListener('load',function(){var n=0;\
         document.querySelectorAll('img').forEach(function(i){if(i.complete&&i.naturalWidth>0)n++;});\
         document.body.setAttribute('data-images-loaded',String(n));});</script>\n",
    );
    html.push_str("</body></html>\n");
    std::fs::write(path, html).map_err(|e| Error::io(path, e))
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
