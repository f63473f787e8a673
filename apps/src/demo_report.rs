//! The demo's HTML report: what ran and how long it took, the evaluation of both models on the
//! test split (deltas, charts, failures), and each example query before and after fine-tuning,
//! built from the engine's report blocks.

use std::path::Path;

use mirante::DEFAULT_MODEL;
use mirante::output::SearchResults;
use mirante::query::Target;
use mirante::report::{
    EVAL_STYLE, STYLE, escape, evaluation_failures, evaluation_summary, finish_page, page_head,
    thumbnail_tag,
};

use crate::demo::{DemoReport, FINETUNED};
use crate::error::{Error, Result};

const DEMO_STYLE: &str = ".pair{display:flex;gap:2em;flex-wrap:wrap}.side{flex:1;min-width:420px}\
.strip{display:flex;gap:.5em;flex-wrap:wrap}.tile{width:104px;font-size:.75em}\
.tile img{width:100px;height:100px;image-rendering:pixelated}\
ol.captions{margin:.3em 0}code{background:#f4f4f4;padding:.1em .3em}\
table.steps td{padding:.2em .8em .2em 0;vertical-align:top}table.steps td:first-child{white-space:nowrap}";

/// A compact view of a search's hits: thumbnails with scores for images, a ranked list for
/// captions (with their image's thumbnail).
fn hits_strip(results: &SearchResults) -> String {
    let mut html = format!("<div class=\"meta\">model {}</div>", escape(&results.model));
    match results.target {
        Target::Images => {
            html.push_str("<div class=\"strip\">");
            for h in &results.hits {
                html.push_str(&format!(
                    "<div class=\"tile\" data-rank=\"{}\">{}<div>#{} &middot; {:.3}</div>\
                     <div>{}</div></div>",
                    h.rank,
                    thumbnail_tag(h.image_bytes.as_deref(), h.image.as_deref().unwrap_or("")),
                    h.rank,
                    h.score,
                    escape(h.texts.first().map_or("", String::as_str))
                ));
            }
            html.push_str("</div>");
        }
        Target::Texts => {
            html.push_str("<ol class=\"captions\">");
            for h in &results.hits {
                html.push_str(&format!(
                    "<li data-rank=\"{}\">{:.3} &middot; {}</li>",
                    h.rank,
                    h.score,
                    escape(h.matched_text.as_deref().unwrap_or(""))
                ));
            }
            html.push_str("</ol>");
        }
    }
    html
}

/// Writes the demo's report: what ran and how long it took, the evaluation of both models on
/// the test split (deltas, charts, failures), and each example query before and after
/// fine-tuning.
pub(crate) fn write(path: &Path, demo: &DemoReport) -> Result<()> {
    let mut html = page_head("Mirante demo", &[STYLE, EVAL_STYLE, DEMO_STYLE]);
    let d = &demo.dataset;
    html.push_str(&format!(
        "<h1>Mirante demo: zero-shot, fine-tuned, compared</h1><div class=\"meta\">shapes dataset: \
         {} rows ({} captions in English and Portuguese), train {}, validation {}, test {} \
         &middot; default model <code>{}</code> fine-tuned as <code>{}</code></div>\n",
        d.rows, d.captions, d.splits[0], d.splits[1], d.splits[2], DEFAULT_MODEL, FINETUNED
    ));
    html.push_str("<h2>Evaluation on the test split</h2>\n");
    html.push_str(&evaluation_summary(&demo.evaluation));
    for (language, e) in &demo.by_language {
        html.push_str(&format!("<h2>{} captions only</h2>\n", escape(language)));
        html.push_str(&evaluation_summary(e));
    }
    html.push_str("<h2>Fine-tuning</h2><table class=\"metrics\"><tr>");
    let epochs = demo.finetune.to_result_set();
    for c in &epochs.columns {
        html.push_str(&format!("<th>{}</th>", escape(&c.name)));
    }
    html.push_str("</tr>");
    for row in &epochs.rows {
        html.push_str("<tr>");
        for cell in row {
            html.push_str(&format!("<td>{}</td>", escape(&cell.display())));
        }
        html.push_str("</tr>");
    }
    html.push_str("</table>\n<h2>Example queries, before and after fine-tuning</h2>\n");
    for q in &demo.queries {
        html.push_str(&format!(
            "<h3><code>{}</code></h3><div class=\"pair\"><div class=\"side\"><h4>zero-shot</h4>{}</div>\
             <div class=\"side\"><h4>fine-tuned</h4>{}</div></div>\n",
            escape(&q.sql),
            hits_strip(&q.before),
            hits_strip(&q.after)
        ));
    }
    html.push_str(&evaluation_failures(&demo.evaluation));
    html.push_str("<h2>Steps</h2><table class=\"steps\">");
    for (statement, took) in &demo.steps {
        html.push_str(&format!(
            "<tr><td>{:.1} s</td><td><code>{}</code></td></tr>",
            took.as_secs_f64(),
            escape(statement)
        ));
    }
    html.push_str("</table>\n");
    finish_page(&mut html);
    std::fs::write(path, html).map_err(|e| Error::io(path, e))
}
