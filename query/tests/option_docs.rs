//! The option tables of `docs/query.md` are the statements' own tables
//! ([`mirante_query::options::TABLES`]), rendered: each sits between
//! `<!-- options: STATEMENT -->` and `<!-- /options -->`. `MIRANTE_BLESS=1` rewrites them.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use mirante_query::options::{TABLES, markdown_table};

#[test]
fn docs_list_every_statement_option_as_declared() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/query.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut fixed = text.clone();
    for (statement, table) in TABLES {
        let open = format!("<!-- options: {statement} -->\n");
        let close = "<!-- /options -->";
        let start = fixed
            .find(&open)
            .unwrap_or_else(|| panic!("docs/query.md has no `{}`", open.trim()))
            + open.len();
        let end = start + fixed[start..].find(close).unwrap();
        fixed.replace_range(start..end, &markdown_table(table));
    }
    if std::env::var_os("MIRANTE_BLESS").is_some() {
        std::fs::write(&path, &fixed).unwrap();
        return;
    }
    assert!(
        fixed == text,
        "docs/query.md's option tables differ from the statements' tables; rerun with \
         MIRANTE_BLESS=1 and review the diff"
    );
}
