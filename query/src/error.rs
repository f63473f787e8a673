//! The query crate's error type: every error knows the position (line, column) it concerns, so
//! the caller can point at it with a caret.

/// Result alias used throughout `mirante-query`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A position in the statement text, 1-based. Line 0 means "unknown".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: u64,
    pub column: u64,
}

impl std::fmt::Display for Pos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// Errors from parsing or binding a statement.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The text is not a statement of the language.
    #[error("syntax error at {pos}: {message}")]
    Syntax { message: String, pos: Pos },

    /// The statement parses but names something that does not exist or does not fit (an
    /// unknown collection or column, a literal of the wrong type).
    #[error("{message} (at {pos})")]
    Bind { message: String, pos: Pos },
}

impl Error {
    pub fn syntax(message: impl Into<String>, pos: Pos) -> Self {
        Error::Syntax {
            message: message.into(),
            pos,
        }
    }

    pub fn bind(message: impl Into<String>, pos: Pos) -> Self {
        Error::Bind {
            message: message.into(),
            pos,
        }
    }

    pub fn pos(&self) -> Pos {
        match self {
            Error::Syntax { pos, .. } | Error::Bind { pos, .. } => *pos,
        }
    }

    /// The message followed by the offending line of `sql` and a caret under the position.
    pub fn render(&self, sql: &str) -> String {
        let pos = self.pos();
        let mut out = self.to_string();
        if pos.line == 0 {
            return out;
        }
        if let Some(line) = sql.lines().nth(pos.line as usize - 1) {
            let col = (pos.column as usize).max(1);
            // Columns count characters; the caret is indented with the same characters' widths
            // (tabs kept as tabs) so it lines up in a terminal.
            let indent: String = line
                .chars()
                .take(col - 1)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            out.push_str(&format!("\n  {line}\n  {indent}^"));
        }
        out
    }
}

/// The candidate closest to `name` by edit distance, when it is close enough to be a likely typo.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = name.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::levenshtein(&lower, &c.to_lowercase()), c))
        .filter(|&(d, c)| d <= (c.len().max(name.len()) / 3).max(2))
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// " (did you mean 'x'?)" when a close candidate exists, else the list of what exists.
pub fn suggestion<'a>(
    name: &str,
    kind: &str,
    candidates: impl IntoIterator<Item = &'a str> + Clone,
) -> String {
    match closest(name, candidates.clone()) {
        Some(c) => format!("; did you mean '{c}'?"),
        None => {
            let all: Vec<&str> = candidates.into_iter().collect();
            if all.is_empty() {
                format!("; there are no {kind}s")
            } else {
                format!("; {kind}s are: {}", all.join(", "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_points_at_the_column() {
        let e = Error::syntax(
            "expected TEXT, IMAGE or ROW",
            Pos {
                line: 2,
                column: 18,
            },
        );
        let text = e.render("SHOW COLLECTIONS;\nSEARCH images BY TXT 'x'");
        assert_eq!(
            text,
            "syntax error at line 2, column 18: expected TEXT, IMAGE or ROW\n  \
             SEARCH images BY TXT 'x'\n                   ^"
        );
    }

    #[test]
    fn closest_finds_typos_only() {
        let names = ["images", "captions", "products"];
        assert_eq!(closest("imagse", names), Some("images"));
        assert_eq!(closest("IMAGES", names), Some("images"));
        assert_eq!(closest("zebra", names), None);
        assert_eq!(
            suggestion("zebra", "collection", names),
            "; collections are: images, captions, products"
        );
    }
}
