//! The parser. Like DataFusion's, it looks at a statement's leading keywords: Mirante's own
//! statements (`SEARCH`, `IMPORT`, `CREATE COLLECTION`, ...) are parsed here with sqlparser's
//! tokenizer and primitives (identifiers, literals, expressions), standard SQL (`SELECT`,
//! `INSERT`, `DELETE`) goes to sqlparser whole and is converted to our [`Statement`], rejecting
//! the parts Mirante does not run with a positioned error.

use sqlparser::ast::{self as sql, Spanned};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

use crate::ast::*;
use crate::error::{Error, Pos, Result};

/// Statement keywords, for error messages and completion.
pub const STATEMENT_KEYWORDS: &[&str] = &[
    "CREATE COLLECTION",
    "CREATE INDEX",
    "DROP COLLECTION",
    "SHOW COLLECTIONS",
    "SHOW MODELS",
    "DESCRIBE",
    "IMPORT",
    "INSERT",
    "SELECT",
    "DELETE",
    "SEARCH",
    "EVALUATE",
    "FINETUNE MODEL",
    "TRAIN ELIP",
    "DROP MODEL",
    "EXPORT MODEL",
    "EMBED",
    "REEMBED",
    "ALTER COLLECTION",
    "COMPACT",
    "VACUUM",
    "RESTORE VERSION",
    "EXPLAIN",
];

/// Every keyword of the language (for REPL completion).
pub const KEYWORDS: &[&str] = &[
    "ALTER",
    "AND",
    "ARRAY",
    "AS",
    "BETWEEN",
    "BOTH",
    "BY",
    "COLLECTION",
    "COLLECTIONS",
    "COMPACT",
    "COUNT",
    "CREATE",
    "DELETE",
    "DESCRIBE",
    "DIRECTION",
    "DROP",
    "ELIP",
    "EMBED",
    "ERROR",
    "EVALUATE",
    "EXISTS",
    "EXPLAIN",
    "EXPORT",
    "FINETUNE",
    "FROM",
    "IF",
    "ILIKE",
    "IMAGE",
    "IMAGE_TO_TEXT",
    "IMAGES",
    "IMPORT",
    "IN",
    "INDEX",
    "INSERT",
    "INTO",
    "IS",
    "KEEP",
    "LIKE",
    "LIMIT",
    "MATCH",
    "MODEL",
    "MODELS",
    "NOT",
    "NULL",
    "OFFSET",
    "ON",
    "OR",
    "OVERWRITE",
    "REEMBED",
    "RERANK",
    "RESTORE",
    "ROW",
    "SEARCH",
    "SELECT",
    "SET",
    "SHOW",
    "SKIP",
    "TEXT",
    "TEXT_TO_IMAGE",
    "TEXTS",
    "TO",
    "TOP",
    "FUSION",
    "TRAIN",
    "USING",
    "VALIDATE",
    "VACUUM",
    "VALUES",
    "VERSION",
    "WHERE",
    "WITH",
];

/// The most AND / OR operators one statement may hold. Conditions nest one level per operator,
/// and every stage that walks them (conversion, binding, evaluation, dropping) recurses: this
/// bound (SQLite's default expression depth) keeps them within the 2 MiB stack of a library
/// host's thread. Long lists of values belong in `IN (...)`, which has no such limit.
pub const MAX_BOOLEAN_OPERATORS: usize = 1000;

/// Refuses a statement with more than [`MAX_BOOLEAN_OPERATORS`] AND / OR operators, before any
/// tree is built from it.
fn check_boolean_operators(tokens: &[TokenWithSpan]) -> Result<()> {
    let mut count = 0;
    for t in tokens {
        match &t.token {
            Token::SemiColon => count = 0,
            Token::Word(w)
                if w.quote_style.is_none()
                    && (w.value.eq_ignore_ascii_case("AND")
                        || w.value.eq_ignore_ascii_case("OR")) =>
            {
                count += 1;
                if count > MAX_BOOLEAN_OPERATORS {
                    return Err(Error::syntax(
                        format!(
                            "the statement holds more than {MAX_BOOLEAN_OPERATORS} AND / OR \
                             operators; compare one column with many values with IN (...)"
                        ),
                        pos(t.span.start),
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Parses `;`-separated statements.
pub fn parse(sql: &str) -> Result<Vec<Statement>> {
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| Error::syntax(e.message, pos(e.location)))?;
    check_boolean_operators(&tokens)?;
    let mut p = StatementParser {
        p: Parser::new(&dialect).with_tokens_with_locations(tokens),
        end: end_of(sql),
    };
    let mut out = Vec::new();
    loop {
        while p.p.consume_token(&Token::SemiColon) {}
        if p.p.peek_token().token == Token::EOF {
            return Ok(out);
        }
        out.push(p.statement()?);
        let next = p.p.peek_token();
        if !matches!(next.token, Token::SemiColon | Token::EOF) {
            return Err(p.unexpected("';' or the end of the input", &next));
        }
    }
}

/// Parses a standalone predicate, as written after `WHERE` (for the builder API).
pub fn parse_predicate(text: &str) -> Result<Expr> {
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, text)
        .tokenize_with_location()
        .map_err(|e| Error::syntax(e.message, pos(e.location)))?;
    check_boolean_operators(&tokens)?;
    let mut p = StatementParser {
        p: Parser::new(&dialect).with_tokens_with_locations(tokens),
        end: end_of(text),
    };
    let e = p.expr_until(&[])?;
    let next = p.p.peek_token();
    if next.token != Token::EOF {
        return Err(p.unexpected("the end of the condition", &next));
    }
    Ok(e)
}

/// The position just past the end of `text`.
fn end_of(text: &str) -> Pos {
    Pos {
        line: text.split('\n').count().max(1) as u64,
        column: text.split('\n').next_back().unwrap_or("").chars().count() as u64 + 1,
    }
}

fn pos(l: Location) -> Pos {
    Pos {
        line: l.line,
        column: l.column,
    }
}

/// Converts a sqlparser error, whose message ends with " at Line: L, Column: C" (line 0 when it
/// is the end of the input, which `end` locates).
fn from_sqlparser(e: ParserError, end: Pos) -> Error {
    let fallback = end;
    let message = match e {
        ParserError::TokenizerError(m) | ParserError::ParserError(m) => m,
        ParserError::RecursionLimitExceeded => "the statement is nested too deeply".into(),
    };
    let (text, at) = match message.rfind(" at Line: ") {
        Some(i) => {
            let (text, tail) = message.split_at(i);
            let mut nums = tail
                .trim_start_matches(" at Line: ")
                .split(", Column: ")
                .map(|n| n.trim().parse::<u64>().ok());
            match (nums.next().flatten(), nums.next().flatten()) {
                (Some(line), Some(column)) if line > 0 => (text.to_string(), Pos { line, column }),
                _ => (message.clone(), fallback),
            }
        }
        None => (message.clone(), fallback),
    };
    let text = text
        .replacen("Expected: ", "expected ", 1)
        .replacen(", found: EOF", ", found end of input", 1)
        .replacen(", found: ", ", found ", 1);
    Error::syntax(text, at)
}

struct StatementParser<'a> {
    p: Parser<'a>,
    /// Position just past the input, for errors at its end.
    end: Pos,
}

/// Words that end a `SEARCH`'s `WHERE` expression.
const SEARCH_CLAUSES: [&str; 5] = ["MATCH", "USING", "LIMIT", "INTO", "RERANK"];
/// Words that end the `WHERE` expressions of `FINETUNE` and `TRAIN ELIP`.
const TRAINING_CLAUSES: [&str; 4] = ["USING", "VALIDATE", "WITH", "AS"];
/// Words that end an `EVALUATE`'s `WHERE` expression.
const EVALUATE_CLAUSES: [&str; 4] = ["DIRECTION", "USING", "INTO", "RERANK"];

impl StatementParser<'_> {
    fn here(&self) -> Pos {
        let t = self.p.peek_token();
        if t.token == Token::EOF {
            self.end
        } else {
            pos(t.span.start)
        }
    }

    fn unexpected(&self, expected: &str, found: &TokenWithSpan) -> Error {
        let found = match &found.token {
            Token::EOF => "end of input".to_string(),
            t => format!("'{t}'"),
        };
        Error::syntax(format!("expected {expected}, found {found}"), self.here())
    }

    /// The next token as an unquoted word, upper-cased.
    fn peek_word(&self) -> Option<String> {
        peek_word_at(&self.p, 0)
    }

    /// Consumes the word `w` (case-insensitive) if it is next.
    fn word(&mut self, w: &str) -> bool {
        if self.peek_word().as_deref() == Some(w) {
            self.p.next_token();
            true
        } else {
            false
        }
    }

    fn expect_word(&mut self, w: &str) -> Result<()> {
        if self.word(w) {
            Ok(())
        } else {
            Err(self.unexpected(w, &self.p.peek_token()))
        }
    }

    fn expect_token(&mut self, t: Token, what: &str) -> Result<()> {
        if self.p.consume_token(&t) {
            Ok(())
        } else {
            Err(self.unexpected(what, &self.p.peek_token()))
        }
    }

    fn name(&mut self, what: &str) -> Result<Name> {
        let next = self.p.peek_token();
        match &next.token {
            Token::Word(w) => {
                self.p.next_token();
                Ok(Name {
                    value: w.value.clone(),
                    pos: pos(next.span.start),
                })
            }
            _ => Err(self.unexpected(what, &next)),
        }
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let next = self.p.peek_token();
        match &next.token {
            Token::SingleQuotedString(s) => {
                self.p.next_token();
                Ok(s.clone())
            }
            _ => Err(self.unexpected(&format!("{what} as a quoted string"), &next)),
        }
    }

    /// `'<path>' [OVERWRITE]`.
    fn output_path(&mut self, what: &str) -> Result<OutputPath> {
        Ok(OutputPath {
            path: self.string(what)?,
            overwrite: self.word("OVERWRITE"),
        })
    }

    fn uint(&mut self, what: &str) -> Result<u64> {
        let next = self.p.peek_token();
        if let Token::Number(n, _) = &next.token
            && let Ok(v) = n.parse::<u64>()
        {
            self.p.next_token();
            return Ok(v);
        }
        Err(self.unexpected(what, &next))
    }

    /// A clause that may appear once: `slot` takes what `parse` reads; a second one is an error
    /// at `at`.
    fn once<T>(
        &mut self,
        slot: &mut Option<T>,
        name: &str,
        at: Pos,
        parse: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<()> {
        if slot.is_some() {
            return Err(Error::syntax(format!("{name} is given twice"), at));
        }
        *slot = Some(parse(self)?);
        Ok(())
    }

    fn expr(&mut self) -> Result<Expr> {
        let end = self.end;
        let e = self.p.parse_expr().map_err(|e| from_sqlparser(e, end))?;
        convert_expr(&e)
    }

    /// An expression that ends before the first of `stops` outside parentheses: sqlparser would
    /// otherwise read words such as MATCH as operators.
    fn expr_until(&mut self, stops: &[&str]) -> Result<Expr> {
        // The condition's tokens, consumed one by one (linear in its length), up to the stop.
        let mut tokens = Vec::new();
        let mut depth = 0i32;
        loop {
            let t = self.p.peek_token_ref();
            match &t.token {
                Token::EOF | Token::SemiColon => break,
                Token::Word(w)
                    if depth == 0
                        && w.quote_style.is_none()
                        && stops.iter().any(|s| w.value.eq_ignore_ascii_case(s)) =>
                {
                    break;
                }
                Token::LParen => depth += 1,
                Token::RParen => depth -= 1,
                _ => {}
            }
            tokens.push(self.p.next_token());
        }
        let stop = self.p.peek_token_ref().clone();
        let stop_pos = if stop.token == Token::EOF {
            self.end
        } else {
            pos(stop.span.start)
        };
        tokens.push(TokenWithSpan::new(Token::EOF, stop.span));
        let dialect = GenericDialect {};
        let mut sub = Parser::new(&dialect).with_tokens_with_locations(tokens);
        let e = sub.parse_expr().map_err(|e| from_sqlparser(e, stop_pos))?;
        let rest = sub.peek_token();
        if rest.token != Token::EOF {
            return Err(Error::syntax(
                format!("unexpected '{}' in the WHERE condition", rest.token),
                pos(rest.span.start),
            ));
        }
        convert_expr(&e)
    }

    fn statement(&mut self) -> Result<Statement> {
        let start = self.p.peek_token();
        let Some(first) = self.peek_word() else {
            return Err(self.unexpected("a statement", &start));
        };
        match first.as_str() {
            "CREATE" => {
                self.p.next_token();
                if self.word("COLLECTION") {
                    self.create_collection()
                } else if self.word("INDEX") {
                    self.expect_word("ON")?;
                    let collection = self.name("a collection name")?;
                    self.expect_word("USING")?;
                    let factory = self.string("a FAISS factory string")?;
                    Ok(Statement::CreateIndex {
                        collection,
                        factory,
                    })
                } else {
                    Err(self.unexpected("COLLECTION or INDEX", &self.p.peek_token()))
                }
            }
            "DROP" if peek_word_at(&self.p, 1).as_deref() == Some("MODEL") => {
                self.p.next_token();
                self.p.next_token();
                Ok(Statement::DropModel {
                    name: self.string("the model's name")?,
                })
            }
            "EXPORT" => {
                self.p.next_token();
                self.expect_word("MODEL")?;
                let name = self.string("the model's name")?;
                self.expect_word("TO")?;
                Ok(Statement::ExportModel {
                    name,
                    folder: self.output_path("the folder to write")?,
                })
            }
            "FINETUNE" => self.finetune(),
            "TRAIN" => self.train_elip(),
            "DROP" => {
                self.p.next_token();
                self.expect_word("COLLECTION")?;
                let if_exists = self.if_exists("EXISTS")?;
                Ok(Statement::DropCollection {
                    name: self.name("a collection name")?,
                    if_exists,
                })
            }
            "SHOW" => {
                self.p.next_token();
                if self.word("COLLECTIONS") {
                    Ok(Statement::ShowCollections)
                } else if self.word("MODELS") {
                    Ok(Statement::ShowModels)
                } else {
                    Err(self.unexpected("COLLECTIONS or MODELS", &self.p.peek_token()))
                }
            }
            "DESCRIBE" | "DESC" => {
                self.p.next_token();
                self.word("COLLECTION");
                Ok(Statement::Describe {
                    name: self.name("a collection name")?,
                })
            }
            "IMPORT" => self.import(),
            "SEARCH" => self.search(),
            "EVALUATE" => self.evaluate(),
            "EMBED" => {
                self.p.next_token();
                let collection = self.name("a collection name")?;
                let model = self.using_model()?;
                Ok(Statement::Embed { collection, model })
            }
            "REEMBED" => {
                self.p.next_token();
                let collection = self.name("a collection name")?;
                let model = self.using_model()?.ok_or_else(|| {
                    Error::syntax(
                        "REEMBED needs the new model: REEMBED <collection> USING MODEL '<model>'",
                        self.here(),
                    )
                })?;
                Ok(Statement::Reembed { collection, model })
            }
            "ALTER" => {
                self.p.next_token();
                self.expect_word("COLLECTION")?;
                let collection = self.name("a collection name")?;
                self.expect_word("SET")?;
                self.expect_word("MODEL")?;
                Ok(Statement::SetModel {
                    collection,
                    model: self.string("a model name, folder or Hub id")?,
                })
            }
            "COMPACT" => {
                self.p.next_token();
                Ok(Statement::Compact {
                    collection: self.name("a collection name")?,
                })
            }
            "VACUUM" => {
                self.p.next_token();
                let keep_versions = if self.word("KEEP") {
                    let at = pos(self.p.peek_token_ref().span.start);
                    let keep = self.uint("the number of versions to keep")?;
                    if keep == 0 {
                        // The newest version is the database itself: it is always kept.
                        return Err(Error::syntax(
                            "VACUUM KEEP takes at least 1 (the newest version is always kept)",
                            at,
                        ));
                    }
                    Some(keep)
                } else {
                    None
                };
                Ok(Statement::Vacuum { keep_versions })
            }
            "RESTORE" => {
                self.p.next_token();
                self.expect_word("VERSION")?;
                Ok(Statement::Restore {
                    version: self.uint("the version to restore")?,
                })
            }
            "EXPLAIN" => {
                self.p.next_token();
                // Refused before descending: a chain of thousands would exhaust the stack.
                if self.peek_word().as_deref() == Some("EXPLAIN") {
                    return Err(Error::syntax(
                        "EXPLAIN EXPLAIN is not a statement",
                        pos(start.span.start),
                    ));
                }
                Ok(Statement::Explain(Box::new(self.statement()?)))
            }
            "SELECT" | "INSERT" | "DELETE" => {
                let end = self.end;
                let stmt = self
                    .p
                    .parse_statement()
                    .map_err(|e| from_sqlparser(e, end))?;
                convert_statement(stmt, pos(start.span.start))
            }
            _ => Err(Error::syntax(
                format!(
                    "expected a statement ({}), found '{}'",
                    STATEMENT_KEYWORDS.join(", "),
                    start.token
                ),
                pos(start.span.start),
            )),
        }
    }

    /// `IF NOT EXISTS` / `IF EXISTS`; `tail` is "NOT EXISTS" or "EXISTS".
    fn if_exists(&mut self, tail: &str) -> Result<bool> {
        if !self.word("IF") {
            return Ok(false);
        }
        for w in tail.split(' ') {
            self.expect_word(w)?;
        }
        Ok(true)
    }

    fn create_collection(&mut self) -> Result<Statement> {
        let if_not_exists = self.if_exists("NOT EXISTS")?;
        let name = self.name("a collection name")?;
        let mut columns = Vec::new();
        if self.p.consume_token(&Token::LParen) {
            loop {
                let col = self.name("a column name")?;
                let ty_pos = self.here();
                let ty = match self.peek_word().as_deref() {
                    Some("STRING" | "TEXT" | "VARCHAR") => ColumnType::String,
                    Some("INT" | "INTEGER" | "BIGINT" | "I64") => ColumnType::Int,
                    Some("FLOAT" | "DOUBLE" | "REAL" | "F64") => ColumnType::Float,
                    Some("BOOL" | "BOOLEAN") => ColumnType::Bool,
                    _ => {
                        return Err(Error::syntax(
                            "expected a column type: STRING, INT, FLOAT or BOOL",
                            ty_pos,
                        ));
                    }
                };
                self.p.next_token();
                let nullable = if self.word("NOT") {
                    self.expect_word("NULL")?;
                    false
                } else {
                    self.word("NULL");
                    true
                };
                columns.push(ColumnSpec {
                    name: col,
                    ty,
                    nullable,
                });
                if !self.p.consume_token(&Token::Comma) {
                    break;
                }
            }
            self.expect_token(Token::RParen, "',' or ')'")?;
        }
        let options = self.options()?;
        Ok(Statement::CreateCollection {
            name,
            if_not_exists,
            columns,
            options,
        })
    }

    /// `WITH (key = literal, ...)`, or nothing.
    fn options(&mut self) -> Result<Options> {
        let mut options = Vec::new();
        if !self.word("WITH") {
            return Ok(Options(options));
        }
        self.expect_token(Token::LParen, "'('")?;
        loop {
            let key = self.name("an option name")?;
            self.expect_token(Token::Eq, "'='")?;
            let at = self.here();
            let value = match self.expr()? {
                Expr::Literal(l, _) => l,
                _ => return Err(Error::syntax("expected a constant option value", at)),
            };
            if options
                .iter()
                .any(|o: &OptionItem| o.key.value.eq_ignore_ascii_case(&key.value))
            {
                return Err(Error::syntax(
                    format!("option '{}' is given twice", key.value),
                    key.pos,
                ));
            }
            options.push(OptionItem {
                key,
                value,
                pos: at,
            });
            if !self.p.consume_token(&Token::Comma) {
                break;
            }
        }
        self.expect_token(Token::RParen, "',' or ')'")?;
        Ok(Options(options))
    }

    fn using_model(&mut self) -> Result<Option<String>> {
        if self.word("USING") {
            self.expect_word("MODEL")?;
            Ok(Some(self.string("a model name, folder or Hub id")?))
        } else {
            Ok(None)
        }
    }

    fn import(&mut self) -> Result<Statement> {
        self.p.next_token();
        self.expect_word("INTO")?;
        let collection = self.name("a collection name")?;
        self.expect_word("FROM")?;
        let source = self.string("a source path")?;
        let mut options = Options::default();
        let mut skip_errors = false;
        loop {
            if self.peek_word().as_deref() == Some("WITH") && options.0.is_empty() {
                options = self.options()?;
            } else if self.word("ON") {
                self.expect_word("ERROR")?;
                if self.word("SKIP") {
                    skip_errors = true;
                } else if !self.word("FAIL") {
                    return Err(self.unexpected("SKIP or FAIL", &self.p.peek_token()));
                }
            } else {
                break;
            }
        }
        Ok(Statement::Import {
            collection,
            source,
            options,
            skip_errors,
        })
    }

    fn search(&mut self) -> Result<Statement> {
        self.p.next_token();
        let collection = self.name("a collection name")?;
        self.expect_word("BY")?;
        let query = if self.word("TEXT") {
            SearchQuery::Text(self.string("the query text")?)
        } else if self.word("IMAGE") {
            SearchQuery::Image(self.string("the path of the query image")?)
        } else if self.word("ROW") {
            SearchQuery::Row(self.uint("a row id")?)
        } else {
            return Err(self.unexpected("TEXT, IMAGE or ROW", &self.p.peek_token()));
        };
        let mut s = Search {
            collection,
            query,
            target: None,
            filter: None,
            model: None,
            limit: None,
            into: None,
            rerank: None,
        };
        // The optional clauses may come in any order, each once.
        loop {
            let at = self.here();
            let clause = self.peek_word();
            let twice = |name: &str| Error::syntax(format!("{name} is given twice"), at);
            match clause.as_deref() {
                Some("MATCH") => {
                    self.p.next_token();
                    if s.target.is_some() {
                        return Err(twice("MATCH"));
                    }
                    s.target = Some(if self.word("IMAGES") || self.word("IMAGE") {
                        Target::Images
                    } else if self.word("TEXTS") || self.word("TEXT") {
                        Target::Texts
                    } else {
                        return Err(self.unexpected("IMAGES or TEXTS", &self.p.peek_token()));
                    });
                }
                Some("WHERE") => {
                    self.p.next_token();
                    self.once(&mut s.filter, "WHERE", at, |p| {
                        p.expr_until(&SEARCH_CLAUSES)
                    })?;
                }
                Some("USING") => {
                    if s.model.is_some() {
                        return Err(twice("USING MODEL"));
                    }
                    s.model = self.using_model()?;
                }
                Some("LIMIT") => {
                    self.p.next_token();
                    self.once(&mut s.limit, "LIMIT", at, |p| {
                        p.uint("the number of results")
                    })?;
                }
                Some("INTO") => {
                    self.p.next_token();
                    self.once(&mut s.into, "INTO", at, |p| {
                        p.output_path("the report's path")
                    })?;
                }
                Some("RERANK") => self.once(&mut s.rerank, "RERANK", at, Self::rerank)?,
                _ => break,
            }
        }
        Ok(Statement::Search(s))
    }

    /// `RERANK WITH ELIP '<name>' [TOP k] [FUSION w]`.
    fn rerank(&mut self) -> Result<Rerank> {
        let pos = self.here();
        self.expect_word("RERANK")?;
        self.expect_word("WITH")?;
        self.expect_word("ELIP")?;
        let elip = self.string("the ELIP model's name")?;
        let top = if self.word("TOP") {
            Some(self.uint("how many first-stage results to re-rank")?)
        } else {
            None
        };
        let fusion = if self.word("FUSION") {
            let next = self.p.peek_token();
            match &next.token {
                Token::Number(n, _) => match n.parse::<f64>() {
                    Ok(w) if (0.0..=1.0).contains(&w) => {
                        self.p.next_token();
                        Some(w)
                    }
                    _ => {
                        return Err(Error::syntax(
                            format!(
                                "FUSION expects a weight in [0, 1] (1: ELIP's score alone), got {n}"
                            ),
                            self.here(),
                        ));
                    }
                },
                _ => return Err(self.unexpected("a fusion weight in [0, 1]", &next)),
            }
        } else {
            None
        };
        Ok(Rerank {
            elip,
            top,
            fusion,
            pos,
        })
    }

    /// The clauses after `ON <collection>` of `FINETUNE` and `TRAIN ELIP`, in any order, each
    /// once (`USING MODEL` only when `using`, `WHERE`, `VALIDATE WHERE`, `WITH`), then
    /// `AS '<name>'`. `kind` makes the statement's kind from the `USING MODEL` model.
    fn training(
        &mut self,
        collection: Name,
        using: bool,
        kind: impl FnOnce(Option<String>) -> TrainingKind,
    ) -> Result<Statement> {
        let (mut model, mut filter, mut validate, mut options) =
            (None, None, None, Options::default());
        loop {
            let at = self.here();
            let twice = |name: &str| Error::syntax(format!("{name} is given twice"), at);
            match self.peek_word().as_deref() {
                Some("USING") if using => {
                    if model.is_some() {
                        return Err(twice("USING MODEL"));
                    }
                    model = self.using_model()?;
                }
                Some("WHERE") => {
                    self.p.next_token();
                    self.once(&mut filter, "WHERE", at, |p| {
                        p.expr_until(&TRAINING_CLAUSES)
                    })?;
                }
                Some("VALIDATE") => {
                    self.p.next_token();
                    self.expect_word("WHERE")?;
                    self.once(&mut validate, "VALIDATE WHERE", at, |p| {
                        p.expr_until(&TRAINING_CLAUSES)
                    })?;
                }
                Some("WITH") => {
                    if !options.0.is_empty() {
                        return Err(twice("WITH"));
                    }
                    options = self.options()?;
                }
                _ => break,
            }
        }
        self.expect_word("AS")?;
        let name = self.string("the new model's name")?;
        Ok(Statement::Train(Training {
            kind: kind(model),
            collection,
            filter,
            validate,
            options,
            name,
        }))
    }

    fn train_elip(&mut self) -> Result<Statement> {
        self.p.next_token();
        self.expect_word("ELIP")?;
        self.expect_word("ON")?;
        let collection = self.name("a collection name")?;
        self.training(collection, true, |backbone| TrainingKind::Elip { backbone })
    }

    fn finetune(&mut self) -> Result<Statement> {
        self.p.next_token();
        self.expect_word("MODEL")?;
        let base = self.string("the base model (folder, Hub id or registry name)")?;
        self.expect_word("ON")?;
        let collection = self.name("a collection name")?;
        self.training(collection, false, |_| TrainingKind::Finetune { base })
    }

    fn evaluate(&mut self) -> Result<Statement> {
        self.p.next_token();
        let mut metrics = Vec::new();
        if self.peek_word().as_deref() != Some("ON") {
            loop {
                let at = self.here();
                let m = self.metric()?;
                if metrics.contains(&m) {
                    return Err(Error::syntax(format!("metric {m} is given twice"), at));
                }
                metrics.push(m);
                if !self.p.consume_token(&Token::Comma) {
                    break;
                }
            }
        }
        self.expect_word("ON")?;
        let mut e = Evaluate {
            collection: self.name("a collection name")?,
            metrics,
            filter: None,
            directions: Vec::new(),
            models: Vec::new(),
            use_index: false,
            into: None,
            rerank: None,
        };
        loop {
            let at = self.here();
            let twice = |name: &str| Error::syntax(format!("{name} is given twice"), at);
            match self.peek_word().as_deref() {
                Some("WHERE") => {
                    self.p.next_token();
                    self.once(&mut e.filter, "WHERE", at, |p| {
                        p.expr_until(&EVALUATE_CLAUSES)
                    })?;
                }
                Some("DIRECTION") => {
                    self.p.next_token();
                    if !e.directions.is_empty() {
                        return Err(twice("DIRECTION"));
                    }
                    let d = self.here();
                    e.directions = match self.peek_word().as_deref() {
                        Some("TEXT_TO_IMAGE") => vec![Direction::TextToImage],
                        Some("IMAGE_TO_TEXT") => vec![Direction::ImageToText],
                        Some("BOTH") => Direction::BOTH.to_vec(),
                        _ => {
                            return Err(Error::syntax(
                                "expected a direction: text_to_image, image_to_text or both",
                                d,
                            ));
                        }
                    };
                    self.p.next_token();
                }
                Some("USING") if peek_word_at(&self.p, 1).as_deref() == Some("INDEX") => {
                    self.p.next_token();
                    self.p.next_token();
                    if e.use_index {
                        return Err(twice("USING INDEX"));
                    }
                    e.use_index = true;
                }
                Some("USING") => {
                    self.p.next_token();
                    if !e.models.is_empty() {
                        return Err(twice("USING MODEL"));
                    }
                    if !self.word("MODELS") {
                        self.expect_word("MODEL")?;
                    }
                    loop {
                        let at = self.here();
                        let m = self.string("a model name, folder or Hub id")?;
                        if e.models.contains(&m) {
                            return Err(Error::syntax(format!("model '{m}' is given twice"), at));
                        }
                        e.models.push(m);
                        if !self.p.consume_token(&Token::Comma) {
                            break;
                        }
                    }
                }
                Some("INTO") => {
                    self.p.next_token();
                    self.once(&mut e.into, "INTO", at, |p| {
                        p.output_path("the report's path")
                    })?;
                }
                Some("RERANK") => self.once(&mut e.rerank, "RERANK", at, Self::rerank)?,
                _ => break,
            }
        }
        Ok(Statement::Evaluate(e))
    }

    /// One metric: `recall@10` (one word to the tokenizer), `recall @ 10`, `mrr`, ...
    fn metric(&mut self) -> Result<EvalMetric> {
        let at = self.here();
        let next = self.p.peek_token();
        let Token::Word(w) = &next.token else {
            return Err(self.unexpected(&format!("a metric ({})", EvalMetric::SPELLINGS), &next));
        };
        self.p.next_token();
        let mut text = w.value.to_lowercase();
        if self.p.consume_token(&Token::AtSign) {
            text.push('@');
            text.push_str(&self.uint("the cutoff K after '@'")?.to_string());
        }
        text.parse().map_err(|why| Error::syntax(why, at))
    }
}

fn peek_word_at(p: &Parser<'_>, n: usize) -> Option<String> {
    match p.peek_nth_token_ref(n).token {
        Token::Word(ref w) if w.quote_style.is_none() => Some(w.value.to_uppercase()),
        _ => None,
    }
}

fn span_pos(node: &impl Spanned) -> Pos {
    pos(node.span().start)
}

fn unsupported(what: &str, node: &impl Spanned) -> Error {
    Error::syntax(format!("{what} is not supported"), span_pos(node))
}

/// The single collection of a `FROM` clause.
fn single_table(from: &[sql::TableWithJoins], at: Pos) -> Result<Name> {
    let [table] = from else {
        return Err(Error::syntax(
            "expected exactly one collection after FROM",
            at,
        ));
    };
    if let Some(j) = table.joins.first() {
        return Err(unsupported("JOIN", &j.relation));
    }
    match &table.relation {
        sql::TableFactor::Table { name, alias, .. } => {
            if let Some(a) = alias {
                return Err(Error::syntax(
                    "a collection alias is not supported",
                    pos(a.name.span.start),
                ));
            }
            object_name(name)
        }
        other => Err(Error::syntax(
            "expected a collection name after FROM",
            span_pos(other),
        )),
    }
}

fn object_name(name: &sql::ObjectName) -> Result<Name> {
    match &name.0[..] {
        [sql::ObjectNamePart::Identifier(ident)] => Ok(ident_name(ident)),
        _ => Err(Error::syntax(
            format!("expected a collection name, found '{name}'"),
            span_pos(name),
        )),
    }
}

fn ident_name(ident: &sql::Ident) -> Name {
    Name {
        value: ident.value.clone(),
        pos: pos(ident.span.start),
    }
}

fn limit_value(e: &sql::Expr, what: &str) -> Result<u64> {
    match convert_expr(e)? {
        Expr::Literal(Literal::Int(n), _) if n >= 0 => Ok(n as u64),
        _ => Err(Error::syntax(
            format!("expected a non-negative integer {what}"),
            span_pos(e),
        )),
    }
}

fn convert_statement(stmt: sql::Statement, at: Pos) -> Result<Statement> {
    match stmt {
        sql::Statement::Query(q) => convert_select(*q, at),
        sql::Statement::Insert(ins) => {
            let collection = match &ins.table {
                sql::TableObject::TableName(n) => object_name(n)?,
                other => return Err(unsupported("this INSERT target", other)),
            };
            let columns = ins
                .columns
                .iter()
                .map(|c| match &c.0[..] {
                    [sql::ObjectNamePart::Identifier(i)] => Ok(ident_name(i)),
                    _ => Err(unsupported("a qualified column name", c)),
                })
                .collect::<Result<Vec<_>>>()?;
            if columns.is_empty() {
                return Err(Error::syntax(
                    "INSERT needs its column list, e.g. INSERT INTO name (image, text) VALUES (...)",
                    at,
                ));
            }
            let Some(source) = ins.source else {
                return Err(Error::syntax("expected VALUES (...)", at));
            };
            let sql::SetExpr::Values(values) = *source.body else {
                return Err(unsupported("INSERT ... SELECT", &*source));
            };
            let mut rows = Vec::new();
            for row in &values.rows {
                let mut out = Vec::new();
                for e in &row.content {
                    match convert_expr(e)? {
                        Expr::Literal(l, p) => out.push((l, p)),
                        _ => {
                            return Err(Error::syntax(
                                "INSERT values must be constants",
                                span_pos(e),
                            ));
                        }
                    }
                }
                if out.len() != columns.len() {
                    return Err(Error::syntax(
                        format!(
                            "this row has {} values for {} columns",
                            out.len(),
                            columns.len()
                        ),
                        span_pos(&row.content[0]),
                    ));
                }
                rows.push(out);
            }
            Ok(Statement::Insert {
                collection,
                columns,
                rows,
            })
        }
        sql::Statement::Delete(del) => {
            let from = match &del.from {
                sql::FromTable::WithFromKeyword(f) | sql::FromTable::WithoutKeyword(f) => f,
            };
            if let Some(l) = &del.limit {
                return Err(unsupported("DELETE ... LIMIT", l));
            }
            Ok(Statement::Delete {
                collection: single_table(from, at)?,
                filter: del.selection.as_ref().map(convert_expr).transpose()?,
            })
        }
        _ => Err(Error::syntax(
            "only SELECT, INSERT and DELETE are accepted from standard SQL",
            at,
        )),
    }
}

fn convert_select(q: sql::Query, at: Pos) -> Result<Statement> {
    if let Some(w) = &q.with {
        return Err(Error::syntax(
            "WITH is not supported",
            pos(w.with_token.0.span.start),
        ));
    }
    if let Some(ob) = &q.order_by {
        return Err(Error::syntax(
            "ORDER BY is not supported: SELECT returns rows in id order (use SEARCH to rank)",
            span_pos(ob),
        ));
    }
    let (limit, offset) = match &q.limit_clause {
        None => (None, None),
        Some(sql::LimitClause::LimitOffset { limit, offset, .. }) => (
            limit
                .as_ref()
                .map(|e| limit_value(e, "LIMIT"))
                .transpose()?,
            offset
                .as_ref()
                .map(|o| limit_value(&o.value, "OFFSET"))
                .transpose()?,
        ),
        Some(sql::LimitClause::OffsetCommaLimit { offset, limit }) => (
            Some(limit_value(limit, "LIMIT")?),
            Some(limit_value(offset, "OFFSET")?),
        ),
    };
    let sql::SetExpr::Select(select) = *q.body else {
        return Err(Error::syntax(
            "only a plain SELECT ... FROM one collection is supported",
            at,
        ));
    };
    if select.distinct.is_some() {
        return Err(Error::syntax("DISTINCT is not supported", at));
    }
    if let Some(h) = &select.having {
        return Err(unsupported("HAVING", h));
    }
    if let sql::GroupByExpr::Expressions(v, _) = &select.group_by
        && let Some(e) = v.first()
    {
        return Err(unsupported("GROUP BY", e));
    }
    let collection = single_table(&select.from, at)?;
    let mut columns = Vec::new();
    let mut projection = None;
    for item in &select.projection {
        match item {
            sql::SelectItem::Wildcard(_) => projection = Some(Projection::All),
            sql::SelectItem::UnnamedExpr(sql::Expr::Identifier(i)) => columns.push(ident_name(i)),
            sql::SelectItem::UnnamedExpr(e) if e.to_string().eq_ignore_ascii_case("count(*)") => {
                projection = Some(Projection::CountStar)
            }
            other => {
                return Err(Error::syntax(
                    "expected column names, * or count(*)",
                    span_pos(other),
                ));
            }
        }
    }
    let projection = match (projection, columns.is_empty()) {
        (Some(p), true) if select.projection.len() == 1 => p,
        (None, false) => Projection::Columns(columns),
        _ => {
            return Err(Error::syntax(
                "* and count(*) cannot be mixed with other columns",
                at,
            ));
        }
    };
    Ok(Statement::Select {
        collection,
        projection,
        filter: select.selection.as_ref().map(convert_expr).transpose()?,
        limit,
        offset,
    })
}

fn literal(v: &sql::ValueWithSpan, negate: bool) -> Result<Literal> {
    let at = pos(v.span.start);
    let lit = match &v.value {
        sql::Value::Number(n, _) => match n.parse::<i64>() {
            Ok(i) => Literal::Int(if negate { -i } else { i }),
            Err(_) => {
                let f: f64 = n
                    .parse()
                    .map_err(|_| Error::syntax(format!("'{n}' is not a number"), at))?;
                Literal::Float(if negate { -f } else { f })
            }
        },
        _ if negate => return Err(Error::syntax("'-' applies to numbers only", at)),
        sql::Value::SingleQuotedString(s) => Literal::String(s.clone()),
        sql::Value::Boolean(b) => Literal::Bool(*b),
        sql::Value::Null => Literal::Null,
        other => {
            return Err(Error::syntax(
                format!(
                    "unsupported literal {other}; use 'single quoted strings', numbers, TRUE, FALSE or NULL"
                ),
                at,
            ));
        }
    };
    Ok(lit)
}

/// Converts a sqlparser expression to the predicate language Mirante evaluates.
pub(crate) fn convert_expr(e: &sql::Expr) -> Result<Expr> {
    use sql::Expr as E;
    let b = |e: &sql::Expr| convert_expr(e).map(Box::new);
    Ok(match e {
        E::Identifier(i) => Expr::Column(ident_name(i)),
        E::Value(v) => Expr::Literal(literal(v, false)?, pos(v.span.start)),
        E::UnaryOp {
            op: sql::UnaryOperator::Minus,
            expr,
        } if matches!(**expr, E::Value(_)) => match &**expr {
            E::Value(v) => Expr::Literal(literal(v, true)?, span_pos(e)),
            _ => unreachable!("guarded by matches!"),
        },
        E::UnaryOp {
            op: sql::UnaryOperator::Not,
            expr,
        } => Expr::Not(b(expr)?),
        E::Nested(inner) => convert_expr(inner)?,
        E::BinaryOp { left, op, right } => {
            let cmp = |op| -> Result<Expr> {
                Ok(Expr::Compare {
                    left: b(left)?,
                    op,
                    right: b(right)?,
                })
            };
            match op {
                sql::BinaryOperator::And => Expr::And(b(left)?, b(right)?),
                sql::BinaryOperator::Or => Expr::Or(b(left)?, b(right)?),
                sql::BinaryOperator::Eq => cmp(CmpOp::Eq)?,
                sql::BinaryOperator::NotEq => cmp(CmpOp::NotEq)?,
                sql::BinaryOperator::Lt => cmp(CmpOp::Lt)?,
                sql::BinaryOperator::LtEq => cmp(CmpOp::LtEq)?,
                sql::BinaryOperator::Gt => cmp(CmpOp::Gt)?,
                sql::BinaryOperator::GtEq => cmp(CmpOp::GtEq)?,
                other => {
                    return Err(Error::syntax(
                        format!(
                            "operator {other} is not supported; use =, <>, <, <=, >, >=, AND, OR, NOT"
                        ),
                        span_pos(e),
                    ));
                }
            }
        }
        E::IsNull(x) => Expr::IsNull {
            expr: b(x)?,
            negated: false,
        },
        E::IsNotNull(x) => Expr::IsNull {
            expr: b(x)?,
            negated: true,
        },
        E::In {
            expr,
            target: sql::InTarget::List(list),
            negated,
            global: false,
        } => Expr::InList {
            expr: b(expr)?,
            list: list.iter().map(convert_expr).collect::<Result<_>>()?,
            negated: *negated,
        },
        E::Between {
            expr,
            negated,
            low,
            high,
        } => Expr::Between {
            expr: b(expr)?,
            low: b(low)?,
            high: b(high)?,
            negated: *negated,
        },
        E::Like {
            negated,
            expr,
            pattern,
            escape_char: None,
            any: false,
        }
        | E::ILike {
            negated,
            expr,
            pattern,
            escape_char: None,
            any: false,
        } => {
            let Expr::Literal(Literal::String(p), _) = convert_expr(pattern)? else {
                return Err(Error::syntax(
                    "LIKE needs a quoted pattern",
                    span_pos(&**pattern),
                ));
            };
            Expr::Like {
                expr: b(expr)?,
                pattern: p,
                negated: *negated,
                case_insensitive: matches!(e, E::ILike { .. }),
            }
        }
        E::Array(arr) => {
            let items = arr
                .elem
                .iter()
                .map(|x| match convert_expr(x)? {
                    Expr::Literal(l, _) => Ok(l),
                    _ => Err(Error::syntax("list items must be constants", span_pos(x))),
                })
                .collect::<Result<Vec<_>>>()?;
            Expr::Literal(Literal::List(items), span_pos(e))
        }
        E::CompoundIdentifier(_) => {
            return Err(Error::syntax(
                "qualified names are not supported; name the column alone",
                span_pos(e),
            ));
        }
        other => {
            return Err(Error::syntax(
                format!(
                    "unsupported expression `{other}`; predicates use columns, constants, \
                     comparisons, AND/OR/NOT, IN, BETWEEN, LIKE/ILIKE and IS [NOT] NULL"
                ),
                span_pos(e),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(sql: &str) -> Statement {
        let mut v = parse(sql).unwrap_or_else(|e| panic!("{}", e.render(sql)));
        assert_eq!(v.len(), 1);
        v.remove(0)
    }

    #[test]
    fn elip_training_and_reranking() {
        let Statement::Train(Training {
            kind: TrainingKind::Elip { backbone },
            collection,
            filter,
            validate,
            options,
            name,
        }) = one(
            "TRAIN ELIP ON shapes USING MODEL 'shapes-finetuned' WHERE split = 'train' \
             VALIDATE WHERE split = 'validation' WITH (prompts = 10, deep = false) AS 'elip'",
        )
        else {
            panic!("not TRAIN ELIP");
        };
        assert_eq!(backbone.as_deref(), Some("shapes-finetuned"));
        assert_eq!(
            (collection.value.as_str(), name.as_str()),
            ("shapes", "elip")
        );
        assert!(filter.is_some() && validate.is_some());
        assert_eq!(options.0.len(), 2);
        // The backbone may be left to the collection's active model, clauses in any order.
        let Statement::Train(Training {
            kind: TrainingKind::Elip { backbone },
            ..
        }) = one("TRAIN ELIP ON shapes WITH (epochs = 1) WHERE split = 'train' AS 'e'")
        else {
            panic!("not TRAIN ELIP");
        };
        assert!(backbone.is_none());

        let Statement::Search(s) = one(
            "SEARCH shapes BY TEXT 'a red circle' WHERE split = 'test' RERANK WITH ELIP 'e' TOP 50 LIMIT 5",
        ) else {
            panic!("not a search");
        };
        let r = s.rerank.unwrap();
        assert_eq!((r.elip.as_str(), r.top, r.fusion), ("e", Some(50), None));
        let Statement::Search(fused) =
            one("SEARCH shapes BY TEXT 'x' RERANK WITH ELIP 'e' TOP 20 FUSION 0.25 LIMIT 5")
        else {
            panic!("not a search");
        };
        assert_eq!(fused.rerank.unwrap().fusion, Some(0.25));
        assert!(parse("SEARCH shapes BY TEXT 'x' RERANK WITH ELIP 'e' FUSION 1.5").is_err());
        assert_eq!(s.limit, Some(5));
        assert!(s.filter.is_some(), "WHERE stops before RERANK");
        let Statement::Evaluate(e) =
            one("EVALUATE recall@1 ON shapes WHERE split = 'test' RERANK WITH ELIP 'e'")
        else {
            panic!("not an evaluation");
        };
        assert_eq!(e.rerank.unwrap().top, None);
        let twice = parse("SEARCH s BY TEXT 'x' RERANK WITH ELIP 'a' RERANK WITH ELIP 'b'")
            .unwrap_err()
            .to_string();
        assert!(twice.contains("RERANK is given twice"), "{twice}");
        let missing = parse("SEARCH s BY TEXT 'x' RERANK WITH 'a'")
            .unwrap_err()
            .to_string();
        assert!(missing.contains("ELIP"), "{missing}");
    }

    #[test]
    fn literal_search_form() {
        let Statement::Search(s) = one("SEARCH images BY TEXT 'a dog on the beach' LIMIT 5") else {
            panic!("not a search");
        };
        assert_eq!(s.collection.value, "images");
        assert_eq!(s.query, SearchQuery::Text("a dog on the beach".into()));
        assert_eq!(s.limit, Some(5));
        assert_eq!(s.target, None);
    }

    #[test]
    fn evaluate_literal_form_and_clauses() {
        let Statement::Evaluate(e) = one("EVALUATE recall@10 ON images") else {
            panic!("not an evaluation");
        };
        assert_eq!(e.metrics, vec![EvalMetric::Recall(10)]);
        assert_eq!(e.collection.value, "images");
        assert!(e.directions.is_empty() && e.models.is_empty());

        let Statement::Evaluate(e) = one(
            "evaluate Recall@1, recall @ 5, MRR, ndcg@10, median_rank, mean_similarity on c \
             where split = 'test' and year > 2000 direction image_to_text \
             using model 'a', 'b' using index into 'r.html' overwrite",
        ) else {
            panic!("not an evaluation");
        };
        assert_eq!(
            e.metrics,
            vec![
                EvalMetric::Recall(1),
                EvalMetric::Recall(5),
                EvalMetric::Mrr,
                EvalMetric::Ndcg(10),
                EvalMetric::MedianRank,
                EvalMetric::MeanSimilarity
            ]
        );
        assert!(e.filter.is_some());
        assert_eq!(e.directions, vec![Direction::ImageToText]);
        assert_eq!(e.models, vec!["a".to_string(), "b".to_string()]);
        assert!(e.use_index);
        assert_eq!(
            e.into,
            Some(OutputPath {
                path: "r.html".into(),
                overwrite: true
            })
        );

        let Statement::Evaluate(e) = one("EVALUATE ON c DIRECTION both") else {
            panic!("not an evaluation");
        };
        assert!(e.metrics.is_empty());
        assert_eq!(e.directions, Direction::BOTH.to_vec());
    }

    #[test]
    fn finetune_and_model_registry_statements() {
        let Statement::Train(Training {
            kind: TrainingKind::Finetune { base },
            collection,
            filter,
            validate,
            options,
            name,
        }) = one(
            "FINETUNE MODEL 'openai/clip' ON images WHERE split = 'train' \
             VALIDATE WHERE split = 'validation' WITH (epochs = 3, lr = 1e-5) AS 'clip-art'",
        )
        else {
            panic!("not a fine-tuning");
        };
        assert_eq!((base.as_str(), name.as_str()), ("openai/clip", "clip-art"));
        assert_eq!(collection.value, "images");
        assert!(filter.is_some() && validate.is_some());
        assert_eq!(options.0.len(), 2);
        assert_eq!(
            one("DROP MODEL 'clip-art'"),
            Statement::DropModel {
                name: "clip-art".into()
            }
        );
        assert_eq!(
            one("EXPORT MODEL 'clip-art' TO '/tmp/x'"),
            Statement::ExportModel {
                name: "clip-art".into(),
                folder: OutputPath {
                    path: "/tmp/x".into(),
                    overwrite: false
                }
            }
        );
        assert_eq!(
            one("REEMBED images USING MODEL 'clip-art'"),
            Statement::Reembed {
                collection: Name {
                    value: "images".into(),
                    pos: Pos { line: 1, column: 9 }
                },
                model: "clip-art".into()
            }
        );
        assert!(matches!(
            one("ALTER COLLECTION images SET MODEL 'base'"),
            Statement::SetModel { .. }
        ));
        assert!(
            parse("REEMBED images")
                .unwrap_err()
                .to_string()
                .contains("needs the new model")
        );
        assert!(
            parse("FINETUNE MODEL 'b' ON c WITH (epochs = 1)")
                .unwrap_err()
                .to_string()
                .contains("expected AS")
        );
    }

    #[test]
    fn evaluate_errors_name_the_metric() {
        let err = |sql: &str| parse(sql).unwrap_err().to_string();
        assert!(err("EVALUATE recal@10 ON c").contains("did you mean recall"));
        assert!(err("EVALUATE recall@0 ON c").contains("from 1"));
        assert!(err("EVALUATE mrr@5 ON c").contains("takes no cutoff"));
        assert!(err("EVALUATE mrr, mrr ON c").contains("given twice"));
        assert!(err("EVALUATE mrr ON c DIRECTION sideways").contains("text_to_image"));
        assert!(err("EVALUATE 'x' ON c").contains("a metric"));
    }

    #[test]
    fn search_clauses_in_any_order() {
        let Statement::Search(s) = one(
            "search c by image '/x.jpg' limit 3 where split = 'test' and year >= 2000 \
             match images using model 'm' into 'r.html'",
        ) else {
            panic!("not a search");
        };
        assert_eq!(s.target, Some(Target::Images));
        assert_eq!(s.model.as_deref(), Some("m"));
        assert_eq!(
            s.into,
            Some(OutputPath {
                path: "r.html".into(),
                overwrite: false
            })
        );
        assert!(matches!(s.filter, Some(Expr::And(_, _))));
    }

    #[test]
    fn several_statements_and_positions() {
        let v = parse("SHOW COLLECTIONS;\n  DESCRIBE images;;").unwrap();
        assert_eq!(v.len(), 2);
        let Statement::Describe { name } = &v[1] else {
            panic!()
        };
        assert_eq!(
            name.pos,
            Pos {
                line: 2,
                column: 12
            }
        );
    }

    #[test]
    fn errors_have_positions() {
        let e = parse("SEARCH images BY TXT 'x'").unwrap_err();
        assert_eq!(
            e,
            Error::syntax(
                "expected TEXT, IMAGE or ROW, found 'TXT'",
                Pos {
                    line: 1,
                    column: 18
                }
            )
        );
        let e = parse("SELECT * FROM images WHERE").unwrap_err();
        assert_eq!(e.pos().column, 27, "{e}");
        let e = parse("SELECT * FROM a JOIN b ON a.x = b.x").unwrap_err();
        assert!(e.to_string().contains("JOIN is not supported"), "{e}");
    }

    #[test]
    fn standard_sql_is_converted() {
        let Statement::Insert { columns, rows, .. } = one(
            "INSERT INTO images (image, text, year) VALUES ('a.jpg', ARRAY['x', 'y'], -3), ('b.jpg', 'z', 2.5)",
        ) else {
            panic!()
        };
        assert_eq!(columns.len(), 3);
        assert_eq!(
            rows[0][1].0,
            Literal::List(vec![
                Literal::String("x".into()),
                Literal::String("y".into())
            ])
        );
        assert_eq!(rows[0][2].0, Literal::Int(-3));
        assert_eq!(rows[1][2].0, Literal::Float(2.5));
        assert!(matches!(
            one("SELECT count(*) FROM images WHERE split = 'test'"),
            Statement::Select {
                projection: Projection::CountStar,
                ..
            }
        ));
        assert!(matches!(
            one("SELECT id, text FROM images LIMIT 3 OFFSET 2"),
            Statement::Select {
                limit: Some(3),
                offset: Some(2),
                ..
            }
        ));
        assert!(matches!(
            one("DELETE FROM images WHERE id IN (1, 2)"),
            Statement::Delete {
                filter: Some(Expr::InList { .. }),
                ..
            }
        ));
    }

    #[test]
    fn own_statements() {
        assert!(matches!(
            one("CREATE COLLECTION IF NOT EXISTS art (artist STRING NOT NULL, year INT) WITH (model = 'm', index = 'HNSW32')"),
            Statement::CreateCollection { if_not_exists: true, ref columns, ref options, .. }
                if columns.len() == 2 && !columns[0].nullable && options.0.len() == 2
        ));
        assert!(matches!(
            one("IMPORT INTO art FROM '/data' WITH (split = 'train') ON ERROR SKIP"),
            Statement::Import {
                skip_errors: true,
                ..
            }
        ));
        assert!(matches!(
            one("EXPLAIN SEARCH art BY ROW 7"),
            Statement::Explain(_)
        ));
        assert!(matches!(
            one("VACUUM KEEP 3"),
            Statement::Vacuum {
                keep_versions: Some(3)
            }
        ));
        assert!(matches!(
            one("RESTORE VERSION 12"),
            Statement::Restore { version: 12 }
        ));
        assert!(matches!(
            one("CREATE INDEX ON art USING 'IVF16,Flat'"),
            Statement::CreateIndex { .. }
        ));
    }
}
