//! SQL analysis: parse a statement text once, classify every statement, and produce the
//! text the proxy forwards. Pure and identity-independent, so results are cached by text.

mod classify;
mod functions;
mod nesting;
mod reading;
mod settings;

use std::fmt;
use std::sync::Arc;

use sqlparser::ast::Statement;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::{Parser, ParserError, ParserOptions};
use sqlparser::tokenizer::{TokenWithSpan, Tokenizer};

use crate::class::{ClassSet, StatementClass};
use crate::decision::sqlstate;

/// How deeply the parser may nest (expressions, subqueries, parentheses). Deeper input
/// is a clean parse error, never a stack overflow; this is sqlparser's default, and far
/// above what psql, drivers and ORMs send.
const RECURSION_LIMIT: usize = 50;

/// Longest parser error text passed on to the client.
const MAX_ERROR_CHARS: usize = 300;

/// Estimated fixed bytes of one cache entry (LRU node, key box, `Arc`), for the cache
/// budgets.
pub(crate) const ENTRY_OVERHEAD: usize = 256;

/// One statement text, analysed. Immutable and shared through the cache.
#[derive(Debug)]
pub(crate) struct Analysis {
    pub(crate) outcome: Outcome,
    /// Estimated memory held by this analysis and its cache key, for the cache budget.
    pub(crate) weight: usize,
}

/// What analysis concluded about a text.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Only whitespace, comments and semicolons.
    Empty,
    /// Parsed and classified; forward `sql`.
    Statements {
        statements: Vec<AnalyzedStatement>,
        /// The statements re-serialized from their syntax trees, joined by `"; "`.
        sql: Arc<str>,
        /// The union of every statement's classes.
        classes: ClassSet,
    },
    /// Not accepted: the reason is safe to show the client (it never holds the text).
    Refused(Refusal),
}

/// Why a text was not accepted for analysis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// sqlparser could not parse it; holds the parser's (truncated) error text.
    Unparsable(String),
    /// It parsed, but uses a construct the proxy does not forward.
    Unsupported(&'static str),
    /// Its operators could nest deeper than [`nesting::MAX_OPERATOR_NESTING`].
    TooComplex,
}

impl Refusal {
    /// The SQLSTATE a client gets for this refusal.
    pub(crate) fn sqlstate(&self) -> &'static str {
        match self {
            Refusal::Unparsable(_) | Refusal::Unsupported(_) => sqlstate::SYNTAX_ERROR,
            Refusal::TooComplex => sqlstate::STATEMENT_TOO_COMPLEX,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Unparsable(error) => {
                write!(f, "Portcullis could not parse it ({error})")
            }
            Refusal::Unsupported(construct) => {
                write!(f, "Portcullis does not accept {construct}")
            }
            Refusal::TooComplex => write!(
                f,
                "Portcullis does not accept operators nested more than {} deep",
                nesting::MAX_OPERATOR_NESTING
            ),
        }
    }
}

/// One parsed statement with its classification.
#[derive(Debug)]
pub(crate) struct AnalyzedStatement {
    /// The checked syntax tree; the relation-level engine will rewrite it.
    pub(crate) ast: Statement,
    /// What kind of statement it is, for messages (`INSERT`, `CREATE TABLE`, ...).
    pub(crate) kind: &'static str,
    /// Its classes, each with the first part of the statement that needs it.
    pub(crate) effects: Effects,
    /// The relations, write targets and functions it references (identity-independent).
    pub(crate) census: crate::rewrite::Census,
    /// Whether its classes may depend on literal values (see
    /// [`classify::Classified::depends_on_literals`]).
    pub(crate) depends_on_literals: bool,
}

/// Something in a statement that needs a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Effect {
    pub(crate) class: StatementClass,
    pub(crate) what: What,
}

impl Effect {
    pub(crate) const fn new(class: StatementClass, what: What) -> Effect {
        Effect { class, what }
    }
}

/// The part of a statement an [`Effect`] comes from, for denial messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum What {
    /// A statement (possibly nested) of this kind.
    Statement(&'static str),
    /// A call of this built-in function (or function family).
    Function(&'static str),
    /// A change of this run-time setting.
    Setting(&'static str),
}

impl fmt::Display for What {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            What::Statement(kind) => f.write_str(kind),
            What::Function(name) => write!(f, "function {name}"),
            What::Setting(name) => write!(f, "setting {name}"),
        }
    }
}

/// The effects of one statement: the first effect found for each class, in the order
/// found. (One per class is all a decision needs, and bounds the size no matter how
/// many function calls a statement holds.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Effects {
    list: Vec<Effect>,
    classes: ClassSet,
}

impl Effects {
    pub(crate) fn push(&mut self, effect: Effect) {
        if !self.classes.contains(effect.class) {
            self.classes.insert(effect.class);
            self.list.push(effect);
        }
    }

    pub(crate) fn classes(&self) -> ClassSet {
        self.classes
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Effect> {
        self.list.iter()
    }
}

/// Why [`parse`] failed.
#[derive(Debug)]
pub(crate) enum ParseFailure {
    Syntax(ParserError),
    TooDeep,
}

/// Parses `sql` as PostgreSQL, refusing texts whose operator chains could nest deeper
/// than the stack allows before building their trees, and with the recursion limit.
pub(crate) fn parse(sql: &str) -> Result<Vec<Statement>, ParseFailure> {
    parse_keeping_tokens(sql).map(|(statements, _)| statements)
}

/// [`parse`], also returning the tokens the statements were parsed from.
fn parse_keeping_tokens(sql: &str) -> Result<(Vec<Statement>, Vec<TokenWithSpan>), ParseFailure> {
    let tokens = tokenize(sql).map_err(ParseFailure::Syntax)?;
    if nesting::too_deep(&tokens) {
        return Err(ParseFailure::TooDeep);
    }
    let mut parser = Parser::new(&PostgreSqlDialect {})
        .with_options(ParserOptions::default())
        .with_recursion_limit(RECURSION_LIMIT)
        .with_tokens_with_locations(tokens);
    let statements = parser.parse_statements().map_err(ParseFailure::Syntax)?;
    Ok((statements, parser.into_tokens()))
}

/// The tokens of `sql`, as [`parse`] reads them.
fn tokenize(sql: &str) -> Result<Vec<TokenWithSpan>, ParserError> {
    Tokenizer::new(&PostgreSqlDialect {}, sql)
        .with_unescape(ParserOptions::default().unescape)
        .tokenize_with_location()
        .map_err(ParserError::from)
}

/// Analyses one statement text. Never panics, whatever the input.
pub(crate) fn analyze(sql: &str) -> Analysis {
    let outcome = outcome(sql);
    let weight = weight(sql, &outcome);
    Analysis { outcome, weight }
}

fn outcome(sql: &str) -> Outcome {
    // The text the trees are parsed from: the client's, or a TABLE command's wrapping.
    let mut source = std::borrow::Cow::Borrowed(sql);
    let parsed = parse_keeping_tokens(sql).or_else(|failure| {
        // A wrapping that does not parse either is refused with the client's own error.
        let Some(wrapped) = table_command(sql) else {
            return Err(failure);
        };
        let parsed = parse_keeping_tokens(&wrapped).map_err(|_| failure)?;
        source = std::borrow::Cow::Owned(wrapped);
        Ok(parsed)
    });
    let (statements, tokens) = match parsed {
        Ok(parsed) => parsed,
        Err(ParseFailure::Syntax(error)) => {
            return Outcome::Refused(Refusal::Unparsable(client_safe(&error)));
        }
        Err(ParseFailure::TooDeep) => return Outcome::Refused(Refusal::TooComplex),
    };
    if statements.is_empty() {
        return Outcome::Empty;
    }

    let mut analyzed = Vec::with_capacity(statements.len());
    let mut classes = ClassSet::EMPTY;
    for mut statement in statements {
        let classified = match classify::classify(&statement) {
            Ok(classified) => classified,
            Err(unsupported) => return Outcome::Refused(Refusal::Unsupported(unsupported.0)),
        };
        classes = classes.union(classified.effects.classes());
        let Ok(census) = crate::rewrite::Census::of(&mut statement) else {
            return Outcome::Refused(Refusal::Unsupported(
                "this statement: a relation in it cannot be identified",
            ));
        };
        analyzed.push(AnalyzedStatement {
            census,
            ast: statement,
            kind: classified.kind,
            effects: classified.effects,
            depends_on_literals: classified.depends_on_literals,
        });
    }

    let text = serialize_trees(analyzed.iter().map(|statement| &statement.ast));
    // The forwarded text must mean what was checked. If sqlparser's own reading of its
    // output differs from the tree that was checked, its printer lost or changed
    // something: refuse rather than forward a statement nobody analysed. Where the
    // output is the client's own text, or reads as its tokens, that alone proves it
    // (see `reading`).
    let faithful = reading::same_text(&source, &text)
        || reading::same(&tokens, &text)
        || parse(&text).is_ok_and(|reparsed| {
            reparsed.len() == analyzed.len()
                && reparsed
                    .iter()
                    .zip(&analyzed)
                    .all(|(again, checked)| *again == checked.ast)
        });
    if !faithful {
        return Outcome::Refused(Refusal::Unsupported(
            "this statement: its re-serialized form does not parse back to the same statement",
        ));
    }

    Outcome::Statements {
        statements: analyzed,
        sql: Arc::from(text),
        classes,
    }
}

/// A `TABLE name` command, which sqlparser reads only inside a query (`(TABLE t)`,
/// `... UNION TABLE t`), not as a statement of its own: the text in parentheses, which
/// PostgreSQL reads as the same statement. `None` unless the text starts with `TABLE`;
/// a text of several statements (a semicolon before its end) wraps into one that does
/// not parse. The line break keeps the closing parenthesis out of a trailing `--`
/// comment.
fn table_command(sql: &str) -> Option<String> {
    use sqlparser::keywords::Keyword;
    use sqlparser::tokenizer::Token;
    let tokens = tokenize(sql).ok()?;
    let first = tokens
        .iter()
        .map(|token| &token.token)
        .find(|token| !matches!(token, Token::Whitespace(_) | Token::EOF));
    if !matches!(first, Some(Token::Word(word)) if word.keyword == Keyword::TABLE) {
        return None;
    }
    Some(format!("({}\n)", without_final_semicolons(sql)))
}

/// `text` without the spaces, tabs, line breaks and semicolons at its end, which end no
/// statement (characters other scanners might read as part of a token stay).
fn without_final_semicolons(text: &str) -> &str {
    text.trim_end_matches([' ', '\t', '\n', '\r', ';'])
}

/// The statements as the proxy forwards them: printed, joined by `"; "`.
fn serialize_trees<'a>(statements: impl IntoIterator<Item = &'a Statement>) -> String {
    let mut text = String::new();
    for (index, statement) in statements.into_iter().enumerate() {
        if index > 0 {
            text.push_str("; ");
        }
        text.push_str(&statement.to_string());
    }
    text
}

/// The parser's error text, bounded and without control characters (it is sent to the
/// client in an ErrorResponse, whose fields are NUL-terminated).
fn client_safe(error: &ParserError) -> String {
    let full = error.to_string();
    let mut safe = String::with_capacity(full.len().min(MAX_ERROR_CHARS + 3));
    for (count, ch) in full.chars().enumerate() {
        if count == MAX_ERROR_CHARS {
            safe.push_str("...");
            break;
        }
        safe.push(if ch.is_control() { ' ' } else { ch });
    }
    safe
}

/// Estimated bytes held by a cache entry for `sql`: the key, the forwarded text and the
/// syntax trees (estimated from the text length; a tree is a few times its text).
fn weight(sql: &str, outcome: &Outcome) -> usize {
    const TREE_BYTES_PER_TEXT_BYTE: usize = 8;
    let held = match outcome {
        Outcome::Empty => 0,
        Outcome::Refused(Refusal::Unparsable(error)) => error.len(),
        Outcome::Refused(Refusal::Unsupported(_) | Refusal::TooComplex) => 0,
        Outcome::Statements { sql: forwarded, .. } => forwarded
            .len()
            .saturating_add(sql.len().saturating_mul(TREE_BYTES_PER_TEXT_BYTE)),
    };
    ENTRY_OVERHEAD
        .saturating_add(sql.len())
        .saturating_add(held)
}

#[cfg(test)]
mod tests;
