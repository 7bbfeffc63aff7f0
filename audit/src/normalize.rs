//! Literal stripping for statement texts: what an audit event may say about a statement.
//!
//! [`normalize`] scans a statement with PostgreSQL's lexical rules (as the proxy runs
//! it: `standard_conforming_strings = on`) and
//!
//! - replaces every literal with `?`: numbers (`42`, `1.5e-3`, `0x1F`, `1_000`), strings
//!   (`'..'` with `''` escapes), escape strings (`E'..'` with backslash escapes), bit and
//!   hex strings (`B'..'`, `X'..'`), national and Unicode strings (`N'..'`, `U&'..'`)
//!   and dollar-quoted strings (`$$..$$`, `$tag$..$tag$`);
//! - keeps identifiers (plain and `"quoted"`), keywords, operators, punctuation and
//!   parameters (`$1`) as written;
//! - removes comments (`-- ..` and nested `/* .. */`) and collapses whitespace.
//!
//! An unterminated literal, quoted identifier or dollar quote swallows the rest of the
//! text into one `?`: a text that does not lex is still never echoed. The scanner works
//! on bytes, never indexes out of range and never panics, whatever the input.
//!
//! Lists of values are then squashed, as PostgreSQL 18's `pg_stat_statements` squashes
//! lists of constants: how many values a list holds usually depends on the data, and
//! should not make a new fingerprint (and a new metric series) per length.
//!
//! - `IN (..)` and `ARRAY[..]` holding two or more elements that are each a value become
//!   `IN (?, ...)` and `ARRAY[?, ...]`. A value is a literal, optionally signed (`-1`), or
//!   a parameter (`$1`), optionally with simple casts (`?::int`, `$1::text[]`,
//!   `?::pg_catalog.int4`); literals and parameters squash alike, to that one marker.
//!   A single element (`IN (?)`), an empty list, or any element that is not a value
//!   (`IN (a, b)`, `IN (?, now())`, `IN (SELECT ..)`, `?::varchar(10)`,
//!   `?::double precision`, `CAST(? AS int)`, `date ?`) leaves the list as it is.
//! - A `VALUES` list of two or more rows that are the same token for token (any literal
//!   matching any literal, any parameter any parameter) keeps its first row and `, ...`:
//!   `VALUES (?, ?), ...`, `VALUES ($1, $2), ...`. One row, or rows of different
//!   shapes, stay as they are.
//! - Other brackets are never squashed. Function arguments: `substr(x, ?, ?)` and
//!   `substr(x, ?)` are different calls, and an argument count is written by a programmer,
//!   not chosen by the data. Nor are row constructors (`(a, b) = (?, ?)`), the inside of a
//!   `VALUES` row (its length is the number of columns written), type modifiers
//!   (`numeric(?, ?)`) or slices.
//!
//! Inner brackets are squashed before outer ones, so `VALUES (ARRAY[?, ...]), ...` also
//! covers rows whose arrays differ in length. `...` is not a token of the input (`.` is
//! one on its own), so a squashed text never shares a fingerprint with one that was not.
//!
//! The fingerprint is computed over the resulting token stream (tokens joined by one
//! space, plain identifiers and keywords in ASCII lower case), so texts that differ only
//! in literal values, comments, spacing, keyword case or the length of squashed lists
//! share it.
//!
//! The statement is scanned into tokens, squashed, then written out and hashed, in time
//! linear in its length. Comparing `VALUES` rows looks at their tokens a second time, so
//! it has a budget (twice the token count) that only `VALUES` lists nested in the rows of
//! other `VALUES` lists can exhaust; past it, rows are left as they are.
//!
//! Limits: `?` in the output is also a PostgreSQL operator (`jsonb ? text`), and `...`
//! is not SQL: the text is for people and for grouping, not for re-parsing. Squashing is
//! lexical, so parameters after a squashed list keep their numbers (`IN ($1, $2) AND b =
//! $3` and `IN ($1, $2, $3) AND b = $4` still differ), and these are not squashed: lists
//! of rows in `IN` (`(a, b) IN ((?, ?), (?, ?))`), rows of a nested array
//! (`ARRAY[[?, ?], [?, ?]]`), typed literals (`date ?`), and `VALUES` rows that differ
//! in a sign or a cast. Nor is `IN (..)` made the same as `= ANY (ARRAY[..])`.

use sha2::{Digest, Sha256};

use crate::hex;

/// A statement text with its literals replaced, and its fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    /// Normalized text, for [`StatementInfo::text`](crate::StatementInfo::text).
    pub text: String,
    /// Hex of the first 16 bytes of SHA-256 over the normalized token stream.
    pub fingerprint: String,
}

/// Normalizes `sql`; see the module documentation.
pub fn normalize(sql: &str) -> Normalized {
    let b = sql.as_bytes();
    let mut s = Scanner {
        b,
        i: 0,
        tokens: Vec::new(),
        pending_space: false,
    };
    s.run();
    let tokens = squash(b, &s.tokens);
    emit(b, &tokens)
}

/// What a token is, as far as rendering, hashing and squashing care.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// Any literal: rendered `?`; its bytes are never looked at again.
    Literal,
    /// `$1`: kept as written.
    Param,
    /// A plain identifier or keyword: ASCII lower case in the fingerprint.
    Word,
    /// A `"quoted"` (or `U&"..."`) identifier: kept as written.
    Quoted,
    /// Operators, punctuation and anything else: kept as written.
    Symbol,
    /// The `,` before a [`Kind::Marker`], which has no place in the input.
    Comma,
    /// The `...` that stands for squashed list elements or rows; no SQL token is
    /// `...` (`.` is a token of its own), so it cannot be confused with input.
    Marker,
}

#[derive(Clone, Copy, Debug)]
struct Token {
    kind: Kind,
    /// Byte range in the input; empty for `Literal`, `Comma` and `Marker`.
    start: usize,
    end: usize,
    /// Whitespace or a comment came before it in the input.
    space: bool,
}

impl Token {
    const fn synthetic(kind: Kind, space: bool) -> Self {
        Token {
            kind,
            start: 0,
            end: 0,
            space,
        }
    }

    fn bytes<'a>(&self, b: &'a [u8]) -> &'a [u8] {
        match self.kind {
            Kind::Literal => b"?",
            Kind::Comma => b",",
            Kind::Marker => b"...",
            _ => b.get(self.start..self.end).unwrap_or_default(),
        }
    }

    fn is_symbol(&self, b: &[u8], s: &[u8]) -> bool {
        self.kind == Kind::Symbol && self.bytes(b) == s
    }

    fn is_word(&self, b: &[u8], w: &str) -> bool {
        self.kind == Kind::Word && self.bytes(b).eq_ignore_ascii_case(w.as_bytes())
    }
}

const COMMA: Token = Token::synthetic(Kind::Comma, false);
const VALUE: Token = Token::synthetic(Kind::Literal, false);
const MARKER: Token = Token::synthetic(Kind::Marker, true);

/// Renders the text and hashes the token stream (tokens joined by one space).
fn emit(b: &[u8], tokens: &[Token]) -> Normalized {
    #[derive(PartialEq, Eq)]
    enum Last {
        None,
        Open,
        Marker,
        Other,
    }
    let mut text = Vec::with_capacity(b.len());
    // What the fingerprint hashes: each token (words in ASCII lower case) and a space.
    let mut hashed = Vec::with_capacity(b.len() + tokens.len());
    let mut last = Last::None;
    for t in tokens {
        let tok = t.bytes(b);
        let verbatim = matches!(t.kind, Kind::Symbol | Kind::Comma);
        let closes = verbatim && matches!(tok, b")" | b"]" | b"," | b";");
        let space = t.space || last == Last::Marker;
        if space && last != Last::None && last != Last::Open && !closes {
            text.push(b' ');
        }
        text.extend_from_slice(tok);
        if t.kind == Kind::Word {
            hashed.extend(tok.iter().map(u8::to_ascii_lowercase));
        } else {
            hashed.extend_from_slice(tok);
        }
        hashed.push(b' ');
        last = if t.kind == Kind::Marker {
            Last::Marker
        } else if verbatim && matches!(tok, b"(" | b"[") {
            Last::Open
        } else {
            Last::Other
        };
    }
    let digest = Sha256::digest(&hashed);
    let text = String::from_utf8(text)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    Normalized {
        text,
        fingerprint: hex(&digest[..16]),
    }
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    tokens: Vec<Token>,
    pending_space: bool,
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_cont(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn is_op_char(c: u8) -> bool {
    matches!(
        c,
        b'+' | b'-'
            | b'*'
            | b'/'
            | b'<'
            | b'>'
            | b'='
            | b'~'
            | b'!'
            | b'@'
            | b'#'
            | b'%'
            | b'^'
            | b'&'
            | b'|'
            | b'`'
            | b'?'
    )
}

impl Scanner<'_> {
    fn at(&self, i: usize) -> Option<u8> {
        self.b.get(i).copied()
    }

    fn run(&mut self) {
        while let Some(c) = self.at(self.i) {
            let next = self.at(self.i + 1);
            if is_space(c) {
                self.i += 1;
                self.pending_space = true;
            } else if c == b'-' && next == Some(b'-') {
                self.skip_line_comment();
            } else if c == b'/' && next == Some(b'*') {
                self.skip_block_comment();
            } else if c == b'\'' {
                self.i += 1;
                self.skip_string(false);
                self.literal();
            } else if self.string_prefix_at(self.i) {
                let escapes = matches!(c, b'e' | b'E');
                self.i += if matches!(c, b'u' | b'U') { 3 } else { 2 };
                self.skip_string(escapes);
                self.literal();
            } else if matches!(c, b'u' | b'U')
                && next == Some(b'&')
                && self.at(self.i + 2) == Some(b'"')
            {
                let start = self.i;
                self.i += 3;
                self.quoted_ident(start);
            } else if c == b'"' {
                let start = self.i;
                self.i += 1;
                self.quoted_ident(start);
            } else if c == b'$' {
                self.dollar();
            } else if c.is_ascii_digit() || (c == b'.' && next.is_some_and(|n| n.is_ascii_digit()))
            {
                self.number();
                // Identifier characters glued to a number are "trailing junk" to
                // PostgreSQL 15+ and an alias to older versions; either way they go
                // into the literal rather than risk echoing part of a value. A string
                // prefix (`1E'..'`) stops there: older versions lex a string there.
                while self.at(self.i).is_some_and(is_ident_cont) && !self.string_prefix_at(self.i) {
                    self.i += 1;
                }
                self.literal();
            } else if is_ident_start(c) {
                let start = self.i;
                while self.at(self.i).is_some_and(is_ident_cont) {
                    self.i += 1;
                }
                self.push(Kind::Word, start, self.i);
            } else if is_op_char(c) {
                let start = self.i;
                self.i += 1;
                while let Some(o) = self.at(self.i) {
                    let starts_comment = (o == b'-' && self.at(self.i + 1) == Some(b'-'))
                        || (o == b'/' && self.at(self.i + 1) == Some(b'*'));
                    if !is_op_char(o) || starts_comment {
                        break;
                    }
                    self.i += 1;
                }
                self.push(Kind::Symbol, start, self.i);
            } else {
                // Punctuation and anything unexpected: one ASCII byte (bytes >= 0x80
                // are identifier characters above, so UTF-8 sequences stay whole).
                let start = self.i;
                self.i += 1;
                self.push(Kind::Symbol, start, self.i);
            }
        }
    }

    /// Whether a prefixed string (`E'`, `B'`, `X'`, `N'`, `U&'`) starts at `i`.
    fn string_prefix_at(&self, i: usize) -> bool {
        matches!(
            (self.at(i), self.at(i + 1), self.at(i + 2)),
            (
                Some(b'e' | b'E' | b'b' | b'B' | b'x' | b'X' | b'n' | b'N'),
                Some(b'\''),
                _
            ) | (Some(b'u' | b'U'), Some(b'&'), Some(b'\''))
        )
    }

    fn skip_line_comment(&mut self) {
        while let Some(c) = self.at(self.i) {
            self.i += 1;
            if c == b'\n' {
                break;
            }
        }
        self.pending_space = true;
    }

    /// PostgreSQL block comments nest.
    fn skip_block_comment(&mut self) {
        self.i += 2;
        let mut depth = 1usize;
        while depth > 0 {
            match (self.at(self.i), self.at(self.i + 1)) {
                (None, _) => break,
                (Some(b'/'), Some(b'*')) => {
                    depth += 1;
                    self.i += 2;
                }
                (Some(b'*'), Some(b'/')) => {
                    depth -= 1;
                    self.i += 2;
                }
                _ => self.i += 1,
            }
        }
        self.pending_space = true;
    }

    /// Skips a quoted string body; `self.i` is just past the opening quote. `''` is a
    /// quote; with `backslash`, `\` escapes the next byte.
    fn skip_string(&mut self, backslash: bool) {
        while let Some(c) = self.at(self.i) {
            if backslash && c == b'\\' {
                self.i += 2;
            } else if c == b'\'' {
                if self.at(self.i + 1) == Some(b'\'') {
                    self.i += 2;
                } else {
                    self.i += 1;
                    return;
                }
            } else {
                self.i += 1;
            }
        }
        self.i = self.b.len();
    }

    /// A `"quoted identifier"` (or `U&"..."`) from `start`; `self.i` is past the quote.
    /// Kept verbatim when terminated; an unterminated one is treated as a literal.
    fn quoted_ident(&mut self, start: usize) {
        while let Some(c) = self.at(self.i) {
            self.i += 1;
            if c == b'"' {
                if self.at(self.i) == Some(b'"') {
                    self.i += 1;
                } else {
                    self.push(Kind::Quoted, start, self.i);
                    return;
                }
            }
        }
        self.i = self.b.len();
        self.literal();
    }

    /// `$1` (a parameter), `$tag$...$tag$` (a literal) or a stray `$`.
    fn dollar(&mut self) {
        let start = self.i;
        if self.at(start + 1).is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
            while self.at(self.i).is_some_and(|c| c.is_ascii_digit()) {
                self.i += 1;
            }
            self.push(Kind::Param, start, self.i);
            return;
        }
        let mut j = start + 1;
        if self.at(j).is_some_and(is_ident_start) {
            j += 1;
            while self
                .at(j)
                .is_some_and(|c| is_ident_start(c) || c.is_ascii_digit())
            {
                j += 1;
            }
        }
        if self.at(j) != Some(b'$') {
            self.i += 1;
            self.push(Kind::Symbol, start, self.i);
            return;
        }
        let tag = &self.b[start..=j];
        let body = j + 1;
        let end = self.b[body.min(self.b.len())..]
            .windows(tag.len())
            .position(|w| w == tag)
            .map_or(self.b.len(), |p| body + p + tag.len());
        self.i = end;
        self.literal();
    }

    fn digits(&mut self, ok: impl Fn(u8) -> bool) {
        while self.at(self.i).is_some_and(|c| ok(c) || c == b'_') {
            self.i += 1;
        }
    }

    fn number(&mut self) {
        let c = self.at(self.i);
        let radix = self.at(self.i + 1).map(|n| n.to_ascii_lowercase());
        if c == Some(b'0') && matches!(radix, Some(b'x' | b'o' | b'b')) {
            self.i += 2;
            self.digits(|d| d.is_ascii_hexdigit());
            return;
        }
        self.digits(|d| d.is_ascii_digit());
        if self.at(self.i) == Some(b'.') && self.at(self.i + 1) != Some(b'.') {
            self.i += 1;
            self.digits(|d| d.is_ascii_digit());
        }
        if matches!(self.at(self.i), Some(b'e' | b'E')) {
            let sign = usize::from(matches!(self.at(self.i + 1), Some(b'+' | b'-')));
            if self
                .at(self.i + 1 + sign)
                .is_some_and(|d| d.is_ascii_digit())
            {
                self.i += 1 + sign;
                self.digits(|d| d.is_ascii_digit());
            }
        }
    }

    fn literal(&mut self) {
        self.push(Kind::Literal, 0, 0);
    }

    fn push(&mut self, kind: Kind, start: usize, end: usize) {
        self.tokens.push(Token {
            kind,
            start,
            end: end.min(self.b.len()),
            space: self.pending_space,
        });
        self.pending_space = false;
    }
}

/// What an open bracket is to [`squash`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// `IN (` or `ARRAY[`: squashed when every element is a value.
    List,
    /// A row of a `VALUES` list.
    Row,
    /// The statement itself, function arguments, row constructors, subqueries,
    /// type modifiers, slices: kept as they are.
    Other,
}

/// A `VALUES` list being read, kept by the frame its rows open in.
struct ValuesList {
    /// Output range of the first row, brackets included.
    first: (usize, usize),
    rows: usize,
    /// Every row so far has the first row's shape.
    alike: bool,
    /// The last row was followed by `, (`: that bracket is the next row.
    awaiting: bool,
}

struct Frame {
    /// Output index of the open bracket.
    open: usize,
    close: u8,
    role: Role,
    values: Option<ValuesList>,
}

/// Rewrites the token stream: `IN (v, v, ...)` and `ARRAY[v, v, ...]` with two or more
/// values become `(?, ...)` and `[?, ...]`; a `VALUES` list of two or more rows of one
/// shape keeps its first row and `, ...`. Inner brackets are rewritten before outer
/// ones, so rows that differ only in the length of a list inside them are alike.
fn squash(b: &[u8], tokens: &[Token]) -> Vec<Token> {
    let mut out: Vec<Token> = Vec::with_capacity(tokens.len());
    let mut frames = vec![Frame {
        open: 0,
        close: 0,
        role: Role::Other,
        values: None,
    }];
    // Comparing rows looks at their tokens again, and VALUES lists nested in rows of
    // VALUES lists would make that quadratic; a budget keeps it linear. It depends only
    // on the token stream's shape, so texts that differ only in literals squash alike.
    let mut budget = tokens.len().saturating_mul(2);
    for (i, &t) in tokens.iter().enumerate() {
        let sym = if t.kind == Kind::Symbol {
            t.bytes(b)
        } else {
            b""
        };
        let closes_top =
            frames.len() > 1 && frames.last().is_some_and(|f| sym == [f.close].as_slice());
        if sym == b"(" || sym == b"[" {
            let prev = out.last();
            let Some(frame) = frames.last_mut() else {
                break;
            };
            let role = if sym == b"[" {
                if prev.is_some_and(|p| p.is_word(b, "array")) {
                    Role::List
                } else {
                    Role::Other
                }
            } else if let Some(list) = frame.values.as_mut().filter(|l| l.awaiting) {
                list.awaiting = false;
                Role::Row
            } else if prev.is_some_and(|p| p.is_word(b, "values")) {
                frame.values = Some(ValuesList {
                    first: (0, 0),
                    rows: 0,
                    alike: true,
                    awaiting: false,
                });
                Role::Row
            } else if prev.is_some_and(|p| p.is_word(b, "in")) {
                Role::List
            } else {
                Role::Other
            };
            frames.push(Frame {
                open: out.len(),
                close: if sym == b"(" { b')' } else { b']' },
                role,
                values: None,
            });
            out.push(t);
        } else if closes_top {
            let Some(frame) = frames.pop() else {
                break;
            };
            if frame.role == Role::List
                && out
                    .get(frame.open + 1..)
                    .is_some_and(|items| is_value_list(b, items))
            {
                out.truncate(frame.open + 1);
                out.extend([VALUE, COMMA, MARKER]);
            }
            out.push(t);
            if frame.role == Role::Row {
                let next_row = tokens.get(i + 1).is_some_and(|t| t.is_symbol(b, b","))
                    && tokens.get(i + 2).is_some_and(|t| t.is_symbol(b, b"("));
                if let Some(parent) = frames.last_mut() {
                    end_row(b, &mut out, parent, frame.open, next_row, &mut budget);
                }
            }
        } else {
            // A close bracket that does not match the innermost open one (text that
            // does not parse) is kept as a plain token.
            out.push(t);
        }
    }
    out
}

/// A row of `parent`'s VALUES list ended at the end of `out`; `next_row` says whether
/// `, (` follows. At the list's end, a list of alike rows keeps only its first.
fn end_row(
    b: &[u8],
    out: &mut Vec<Token>,
    parent: &mut Frame,
    open: usize,
    next_row: bool,
    budget: &mut usize,
) {
    let Some(list) = parent.values.as_mut() else {
        return;
    };
    let row = (open, out.len());
    list.rows += 1;
    if list.rows == 1 {
        list.first = row;
    } else if list.alike {
        let (f, r) = (list.first, row);
        list.alike = match (out.get(f.0..f.1), out.get(r.0..r.1)) {
            (Some(first), Some(this)) => alike(b, first, this, budget),
            _ => false,
        };
    }
    if next_row {
        list.awaiting = true;
        return;
    }
    if list.rows >= 2 && list.alike {
        out.truncate(list.first.1);
        out.extend([COMMA, MARKER]);
    }
    parent.values = None;
}

/// Whether two rows are the same token for token, any literal matching any literal
/// and any parameter any parameter. Spends `budget`; an empty budget says no.
fn alike(b: &[u8], x: &[Token], y: &[Token], budget: &mut usize) -> bool {
    if x.len() != y.len() || *budget < x.len() {
        return false;
    }
    *budget -= x.len();
    x.iter().zip(y).all(|(p, q)| {
        p.kind == q.kind
            && match p.kind {
                Kind::Literal | Kind::Param | Kind::Comma | Kind::Marker => true,
                Kind::Word => p.bytes(b).eq_ignore_ascii_case(q.bytes(b)),
                Kind::Quoted | Kind::Symbol => p.bytes(b) == q.bytes(b),
            }
    })
}

/// Whether `items` (a bracket's contents) are two or more comma-separated values: a
/// literal (optionally signed), or a parameter, each optionally cast with `::name`,
/// `::schema.name`, `::name[]`.
fn is_value_list(b: &[u8], items: &[Token]) -> bool {
    let at = |k: usize| items.get(k);
    let sym = |k: usize, s: &[u8]| at(k).is_some_and(|t| t.is_symbol(b, s));
    let name = |k: usize| at(k).is_some_and(|t| matches!(t.kind, Kind::Word | Kind::Quoted));
    let mut j = 0;
    let mut n = 0usize;
    loop {
        if (sym(j, b"-") || sym(j, b"+")) && at(j + 1).is_some_and(|t| t.kind == Kind::Literal) {
            j += 1;
        }
        if !at(j).is_some_and(|t| matches!(t.kind, Kind::Literal | Kind::Param)) {
            return false;
        }
        j += 1;
        while sym(j, b":") && sym(j + 1, b":") {
            if !name(j + 2) {
                return false;
            }
            j += 3;
            while sym(j, b".") && name(j + 1) {
                j += 2;
            }
            while sym(j, b"[") && sym(j + 1, b"]") {
                j += 2;
            }
        }
        n += 1;
        match at(j) {
            None => return n >= 2,
            Some(t) if t.is_symbol(b, b",") => j += 1,
            Some(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> String {
        normalize(s).text
    }

    #[test]
    fn numbers_and_strings() {
        assert_eq!(
            text("SELECT * FROM t WHERE a = 1 AND b = 'x' AND c = 1.5e-3"),
            "SELECT * FROM t WHERE a = ? AND b = ? AND c = ?"
        );
        assert_eq!(
            text("select 0x1F, 0o17, 0b101, 1_000, .5, 5."),
            "select ?, ?, ?, ?, ?, ?"
        );
        assert_eq!(text("select -1"), "select -?");
    }

    #[test]
    fn identifiers_with_digits_are_kept() {
        assert_eq!(
            text("select col_2, t1.x$y from s3.t1"),
            "select col_2, t1.x$y from s3.t1"
        );
        assert_eq!(text("select $1, $12 from t"), "select $1, $12 from t");
    }

    #[test]
    fn doubled_quotes_and_escape_strings() {
        assert_eq!(text("select 'it''s', 'a\\' , 'b'"), "select ?, ?, ?");
        assert_eq!(text(r"select E'it\'s \\', 'x'"), "select ?, ?");
        assert_eq!(text(r"select e'\\'"), "select ?");
    }

    #[test]
    fn prefixed_strings() {
        assert_eq!(
            text("select B'0101', X'ff', N'n', U&'d\\0061t', x, e, b"),
            "select ?, ?, ?, ?, x, e, b"
        );
        // A word ending in e/x/b before a quote is an identifier, not a prefix.
        assert_eq!(text("select type'x'"), "select type?");
    }

    #[test]
    fn quoted_identifiers_keep_quotes_inside() {
        assert_eq!(
            text(r#"select "it's"."a""b" from "we'ird" where x = 'v"al'"#),
            r#"select "it's"."a""b" from "we'ird" where x = ?"#
        );
        assert_eq!(
            text(r#"select U&"d\0061t" from t"#),
            r#"select U&"d\0061t" from t"#
        );
    }

    #[test]
    fn dollar_quotes() {
        assert_eq!(text("select $$secret$$, 1"), "select ?, ?");
        assert_eq!(
            text("do $outer$ begin perform $inner$ x $outer $inner$; end $outer$; select 2"),
            "do ?; select ?"
        );
        assert_eq!(text("select $a$ '$$' $a$"), "select ?");
        assert_eq!(text("select a$b$ from t"), "select a$b$ from t");
        assert_eq!(text("select $ x"), "select $ x");
    }

    #[test]
    fn comments_are_removed_even_with_quotes() {
        assert_eq!(
            text("select 1 -- it's 'secret'\n, 2 /* don't /* nested ' */ still */ from t"),
            "select ?, ? from t"
        );
        assert_eq!(text("select a/**/b"), "select a b");
        assert_eq!(text("select 1+--x\n2"), "select ?+ ?");
    }

    #[test]
    fn unterminated_things_never_leak() {
        assert_eq!(text("select 'secret"), "select ?");
        assert_eq!(text("select E'secret\\"), "select ?");
        assert_eq!(text("select $t$ secret"), "select ?");
        assert_eq!(text("select \"secret"), "select ?");
        assert_eq!(text("select /* secret"), "select");
    }

    #[test]
    fn escape_string_with_both_quote_escapes() {
        assert_eq!(text(r"select E'a''b\'c' || 'd'"), "select ? || ?");
        assert_eq!(text("select U&'d!0061t' UESCAPE '!'"), "select ? UESCAPE ?");
    }

    #[test]
    fn dollar_tags_match_exactly() {
        // `$a$` does not close `$ab$`, and a longer tag does not close a shorter one.
        assert_eq!(text("select $ab$ x $a$ y $ab$, 1"), "select ?, ?");
        assert_eq!(text("select $a$ x $ab$ y $a$, 1"), "select ?, ?");
        assert_eq!(text("select $A$ x $a$ y $A$"), "select ?");
        assert_eq!(text("/* $$ */ select $$a$$"), "select ?");
    }

    #[test]
    fn casts_and_array_slices() {
        assert_eq!(
            text("select '{1,2}'::int[], a[1:2]"),
            "select ?::int[], a[?:?]"
        );
    }

    #[test]
    fn unicode_is_kept_whole() {
        assert_eq!(
            text("SELECT naïve, \"日本\" FROM données WHERE x = 'café'"),
            "SELECT naïve, \"日本\" FROM données WHERE x = ?"
        );
    }

    #[test]
    fn whitespace_collapses() {
        assert_eq!(text("  select\n\t f( 1 ,\n 2 )  ;  "), "select f(?, ?);");
    }

    #[test]
    fn fingerprint_ignores_literals_case_spacing_and_comments() {
        let a = normalize("SELECT * FROM t WHERE id = 1");
        let b = normalize("select  *\nfrom T where ID=42 -- hi");
        let c = normalize("select * from t where id = 'x'");
        let d = normalize("select * from u where id = 1");
        let e = normalize(r#"select * from "T" where id = 1"#);
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.fingerprint, c.fingerprint);
        assert_ne!(a.fingerprint, d.fingerprint);
        assert_ne!(
            a.fingerprint, e.fingerprint,
            "quoted identifiers are case-sensitive"
        );
        assert_eq!(a.fingerprint.len(), 32);
    }

    fn fp(s: &str) -> String {
        normalize(s).fingerprint
    }

    #[test]
    fn fingerprints_without_lists_are_unchanged() {
        // SHA-256 of the tokens, each followed by one space, as before squashing existed.
        assert_eq!(
            fp("SELECT * FROM t WHERE id = 1"),
            "2223fbdbc730af4afea9c5d6667c5aa0"
        );
        assert_eq!(
            fp("select 1, 2 from t where a in ($1)"),
            "8f10e61c0643958b5ef07c315e58eb3e"
        );
        // And a squashed list hashes its marker as one token.
        assert_eq!(
            fp("select * from t where a in (1, 2, 3)"),
            "7ecb1ef5b3c6c0b53a8bb7d28f7fae29"
        );
    }

    #[test]
    fn in_lists_of_values_squash() {
        assert_eq!(
            text("SELECT * FROM t WHERE id IN (1, 2, 3)"),
            "SELECT * FROM t WHERE id IN (?, ...)"
        );
        assert_eq!(
            text("select 1 where a in(1,2)"),
            "select ? where a in(?, ...)"
        );
        assert_eq!(
            text("select * from t where a not in ($1, $2) and b = $3"),
            "select * from t where a not in (?, ...) and b = $3"
        );
        assert_eq!(
            text("select * from t where a in ('x', -1, +2.5, $3, E'y'::text)"),
            "select * from t where a in (?, ...)"
        );
        assert_eq!(
            text(r#"select 1 where a in (1::int, '2'::pg_catalog.int4, $1::text[][], 't'::"T")"#),
            "select ? where a in (?, ...)"
        );
        let base = fp("select * from t where id in (1, 2)");
        for other in [
            "select * from t where id in (5, 6, 7, 8)",
            "SELECT * FROM t WHERE id IN ( 'a' ,\n 'b' , 'c' ) -- x",
            "select * from t where id in ($1, $2, $3)",
            "select * from t where id in (-1, 2::bigint)",
        ] {
            assert_eq!(fp(other), base, "{other}");
        }
    }

    #[test]
    fn arrays_of_values_squash() {
        assert_eq!(text("select ARRAY[1, 2, 3]"), "select ARRAY[?, ...]");
        assert_eq!(
            text("select * from t where a = any(array[$1,$2])"),
            "select * from t where a = any(array[?, ...])"
        );
        assert_eq!(fp("select array[1, 2]"), fp("select array['a', 'b', 'c']"));
        assert_ne!(fp("select array[1, 2]"), fp("select array[1]"));
    }

    #[test]
    fn lists_that_are_not_all_values_stay() {
        for (sql, want) in [
            ("select 1 where a in (b, c)", "select ? where a in (b, c)"),
            ("select 1 where a in (1)", "select ? where a in (?)"),
            ("select 1 where a in ()", "select ? where a in ()"),
            ("select 1 where a in (1, b)", "select ? where a in (?, b)"),
            (
                "select 1 where a in (1, now())",
                "select ? where a in (?, now())",
            ),
            (
                "select 1 where a in (1 + 2, 3)",
                "select ? where a in (? + ?, ?)",
            ),
            (
                "select 1 where a in ((1), (2))",
                "select ? where a in ((?), (?))",
            ),
            ("select 1 where a in (1, 2,)", "select ? where a in (?, ?,)"),
            (
                "select 1 where a in ($1, -$2)",
                "select ? where a in ($1, -$2)",
            ),
            (
                "select 1 where a in (x ? 'k', 1)",
                "select ? where a in (x ? ?, ?)",
            ),
            // `?` in the input is the jsonb operator, not a value.
            ("select 1 where a in (?, ?)", "select ? where a in (?, ?)"),
            (
                "select 1 where a in (select 1, 2)",
                "select ? where a in (select ?, ?)",
            ),
            (
                "select 1 where a in ('a'::varchar(10), 'b')",
                "select ? where a in (?::varchar(?), ?)",
            ),
            (
                "select 1 where a in (1::double precision, 2)",
                "select ? where a in (?::double precision, ?)",
            ),
            (
                "select 1 where a in (date '2024-01-01', date '2024-01-02')",
                "select ? where a in (date ?, date ?)",
            ),
            ("select array[1]", "select array[?]"),
            ("select array[a, b]", "select array[a, b]"),
            ("select a[1:2], b[1, 2]", "select a[?:?], b[?, ?]"),
            (
                "select array[[1, 2], [3, 4]]",
                "select array[[?, ?], [?, ?]]",
            ),
            (
                r#"select 1 where "in" (1, 2)"#,
                r#"select ? where "in" (?, ?)"#,
            ),
        ] {
            assert_eq!(text(sql), want, "{sql}");
        }
    }

    #[test]
    fn function_arguments_and_row_constructors_stay() {
        assert_eq!(text("select f(1, 2)"), "select f(?, ?)");
        assert_eq!(
            text("select substr(x, 1, 2), substr(x, 3)"),
            "select substr(x, ?, ?), substr(x, ?)"
        );
        assert_ne!(fp("select substr(x, 1, 2)"), fp("select substr(x, 3)"));
        assert_eq!(
            text("select (1, 2), row(1, 2) where (a, b) = (1, 2)"),
            "select (?, ?), row(?, ?) where (a, b) = (?, ?)"
        );
        assert_eq!(text("select 1::numeric(10, 2)"), "select ?::numeric(?, ?)");
        assert_eq!(
            text("select * from t where (a, b) in ((1, 2), (3, 4))"),
            "select * from t where (a, b) in ((?, ?), (?, ?))"
        );
    }

    #[test]
    fn nested_lists_squash_inside_out() {
        assert_eq!(
            text(
                "select * from t where a in (1, 2) and b in (select c from u where d in (3, 4, 5))"
            ),
            "select * from t where a in (?, ...) and b in (select c from u where d in (?, ...))"
        );
        assert_eq!(
            text("select f(x in (1, 2), array[3, 4]), ((y in ($1, $2)))"),
            "select f(x in (?, ...), array[?, ...]), ((y in (?, ...)))"
        );
        assert_eq!(
            text("select 1 where a in (array[1, 2], array[3])"),
            "select ? where a in (array[?, ...], array[?])"
        );
    }

    #[test]
    fn values_rows_of_one_shape_squash() {
        assert_eq!(
            text("INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y'), (3, 'z')"),
            "INSERT INTO t (a, b) VALUES (?, ?), ..."
        );
        assert_eq!(
            text("insert into t values ($1, $2, now()), ($3, $4, now()) returning id"),
            "insert into t values ($1, $2, now()), ... returning id"
        );
        assert_eq!(
            text("insert into t values (1),(2)returning id"),
            "insert into t values (?), ... returning id"
        );
        assert_eq!(
            text("select * from (values (1, 'a'), (2, 'b')) as v(id, name)"),
            "select * from (values (?, ?), ...) as v(id, name)"
        );
        assert_eq!(
            text("insert into t values (array[1, 2]), (array[3, 4, 5]), (array[6, 7])"),
            "insert into t values (array[?, ...]), ..."
        );
        assert_eq!(
            text("insert into t values (1), (2) on conflict (a) do update set b = 3"),
            "insert into t values (?), ... on conflict (a) do update set b = ?"
        );
        let two = fp("insert into t (a, b) values (1, 'x'), (2, 'y')");
        assert_eq!(
            two,
            fp("insert into t (a, b) values (1, 'x'), (2, 'y'), (3, 'z')")
        );
        assert_ne!(two, fp("insert into t (a, b) values (1, 'x')"));
        assert_eq!(
            fp("insert into t values ($1, $2), ($3, $4)"),
            fp("insert into t values ($1, $2), ($3, $4), ($5, $6)")
        );
    }

    #[test]
    fn values_rows_that_differ_stay() {
        for (sql, want) in [
            ("values (1, 2)", "values (?, ?)"),
            ("values (1, 2), (3)", "values (?, ?), (?)"),
            ("values (1, 2), (3, now())", "values (?, ?), (?, now())"),
            ("values (1), ($1)", "values (?), ($1)"),
            ("values (1), (-1)", "values (?), (-?)"),
            ("values (1), (2), (a)", "values (?), (?), (a)"),
            ("values (1), (2) , 3", "values (?), ..., ?"),
        ] {
            assert_eq!(text(sql), want, "{sql}");
        }
    }

    #[test]
    fn nested_values_lists() {
        assert_eq!(
            text("values ((values (1), (2))), ((values (3), (4), (5)))"),
            "values ((values (?), ...)), ..."
        );
        // Deep nesting of VALUES in VALUES rows: still normalized, no literal left.
        let mut sql = String::from("1");
        for _ in 0..300 {
            sql = format!("values (({sql})), ((values ('SECRET'), (2)))");
        }
        let out = normalize(&sql).text;
        assert!(!out.contains("SECRET"));
        assert!(out.starts_with("values (("));
    }

    #[test]
    fn unbalanced_brackets_do_not_squash_or_panic() {
        for (sql, want) in [
            ("select 1 where a in (1, 2 ]", "select ? where a in (?, ?]"),
            ("select 1 where a in (1, 2", "select ? where a in (?, ?"),
            ("values (1), (2", "values (?), (?"),
            ("values (1), (2]), (3)", "values (?), (?]), (?)"),
            (") ] in (1, 2)", ")] in (?, ...)"),
            ("select array[1, 2)", "select array[?, ?)"),
        ] {
            assert_eq!(text(sql), want, "{sql}");
        }
    }

    #[test]
    fn squashing_keeps_literals_out_and_never_panics() {
        let fragments = [
            "'SECRET'",
            "$$SECRET$$",
            "12345",
            "$1",
            "a",
            "now()",
            "-",
            "::int",
            "::int[]",
            "?",
        ];
        let glue = [
            " IN (",
            "ARRAY[",
            " VALUES (",
            ", ",
            ")",
            "]",
            "(",
            "), (",
            " ",
            ",",
        ];
        let mut state: u64 = 0x1234_5678_9ABC_DEF1;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            usize::try_from(state % n as u64).unwrap()
        };
        for _ in 0..3000 {
            let mut sql = String::from("select ");
            for _ in 0..(1 + next(12)) {
                sql.push_str(glue[next(glue.len())]);
                sql.push_str(fragments[next(fragments.len())]);
            }
            let n = normalize(&sql);
            assert!(!n.text.contains("SECRET"), "{sql:?} -> {:?}", n.text);
            assert!(!n.text.contains("12345"), "{sql:?} -> {:?}", n.text);
            assert!(!n.text.contains("  "), "{sql:?} -> {:?}", n.text);
        }
    }

    #[test]
    fn no_literal_content_survives_any_combination() {
        let fragments = [
            "'SECRET'",
            "'it''s SECRET'",
            "E'SECRET\\' '",
            "e'\\SECRET'",
            "X'5EC7E7'",
            "$$SECRET$$",
            "$q$ SECRET $$ $q$",
            "-- SECRET '\n",
            "/* SECRET /* ' */ */",
            "12345",
            "1.5e10",
            "0xC0FFEE",
            "U&'SECRET'",
            "N'SECRET'",
            "B'1010'",
        ];
        // No empty glue: `0xC0FFEE'..'` glues a hex digit `E` to a quote, and the
        // scanner (like PostgreSQL) reads a hex number and a plain string there.
        let glue = [" ", "(", ")", ",", "+", "::", "\n", "=", "||"];
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            usize::try_from(state % n as u64).unwrap()
        };
        for _ in 0..3000 {
            let mut sql = String::from("select ");
            for _ in 0..(1 + next(6)) {
                sql.push_str(glue[next(glue.len())]);
                sql.push_str(fragments[next(fragments.len())]);
            }
            let out = normalize(&sql).text;
            for needle in ["SECRET", "12345", "C0FFEE", "5EC7E7", "1010", "1.5"] {
                assert!(!out.contains(needle), "{sql:?} -> {out:?}");
            }
        }
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        // A small deterministic generator (no rand dependency in the test's outcome).
        let alphabet: Vec<char> = "'\"$e E-/*\\x0.9aé_&U\n;()".chars().collect();
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..2000 {
            let mut s = String::new();
            for _ in 0..(state % 24) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let idx = usize::try_from(state % alphabet.len() as u64).unwrap();
                s.push(alphabet[idx]);
            }
            let n = normalize(&s);
            assert!(!n.text.contains("  "));
        }
    }
}
