//! Statement shapes: a statement text with its simple literals replaced by parameters.
//!
//! Clients that inline literals (`pgbench -M simple`, ORMs) send a new text for every
//! statement: `... WHERE aid = 48213`, `... WHERE aid = 7`. [`normalize`] turns both into
//! the same shape, `... WHERE aid = $1`, so the engine can analyse the shape once and
//! decide later instances from a template (see `engine::template`, and the crate docs
//! for why that is safe).
//!
//! The scanner is deliberately small and refuses (returns `None`) on anything unusual,
//! so that the literals it reports are exactly the tokens sqlparser's PostgreSQL
//! tokenizer would read as one number or one single-quoted string, in a position where a
//! parameter, a number and a string are all read as a plain value:
//!
//! - literals: unsigned numbers (`1`, `1.5`, `.5`, `1.`, `1e10`, `1.5E-3`) and standard
//!   strings (`'it''s'`) without backslashes;
//! - a literal must follow an operator or `(`, `,`, `[` (a number may also follow a
//!   keyword, as in `LIMIT 10`); a string after a word is a typed literal
//!   (`DATE '2020-01-01'`), after `)` it may be one (`varchar(3) 'abc'`), after another
//!   literal it may be a continuation (`'a'\n'b'`), after `.`, `:` or `@` the parser
//!   reads something else than a value: all refused;
//! - a literal directly followed by an identifier character, `$`, `.` or a quote is
//!   refused (`1e`, `1.2.3`, `0x1F`, `1_000`, `'a'b`), and so is a string whose value
//!   holds two quotes in a row (`'a''''b'`: sqlparser prints that value back wrongly);
//! - refused anywhere outside strings and quoted identifiers: comments, `$` (parameters,
//!   dollar quoting), backslashes, non-ASCII bytes, control characters other than
//!   space, tab, CR and LF; refused anywhere: NUL, unterminated strings or quoted
//!   identifiers, string prefixes (`E'`, `B'`, `X'`, `N'`, `U&'`, `U&"`), texts over
//!   [`MAX_SHAPE_BYTES`], and texts without a literal (the exact-text cache covers them).

use std::ops::Range;

/// Longest text [`normalize`] looks at: longer statements are rarely repeated with
/// different literals, and the scan must stay cheap.
pub(crate) const MAX_SHAPE_BYTES: usize = 16 * 1024;

/// A statement text's shape: the text with each simple literal replaced by `$1`, `$2`,
/// ... in order of appearance, and where those literals are in the original text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shape {
    /// The text with literals replaced by parameters: valid SQL when the original is.
    pub(crate) key: String,
    /// The byte ranges of the original literal tokens, in order (`literals[0]` is `$1`).
    pub(crate) literals: Vec<Range<usize>>,
}

/// What a literal token is, as far as the parser can tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LiteralKind {
    /// Digits only: `42`.
    Integer,
    /// Any other unsigned number: `1.5`, `.5`, `1e10`.
    Decimal,
    /// A standard single-quoted string: `'abc'`.
    String,
}

impl LiteralKind {
    fn of(token: &[u8]) -> LiteralKind {
        match token.first() {
            Some(b'\'') => LiteralKind::String,
            _ if token.iter().all(u8::is_ascii_digit) => LiteralKind::Integer,
            _ => LiteralKind::Decimal,
        }
    }

    fn letter(self) -> char {
        match self {
            LiteralKind::Integer => 'i',
            LiteralKind::Decimal => 'n',
            LiteralKind::String => 's',
        }
    }
}

impl Shape {
    /// The key under which this shape's template is cached: [`Shape::key`], a NUL (which
    /// no key holds) and one letter per literal for its [`LiteralKind`].
    ///
    /// A template is only ever proven for instances whose literals are of the same kinds
    /// as the instance it was learnt from: some positions accept a parameter and a
    /// number but not a string (`FETCH FIRST 10 ROWS`), so `$1` alone does not say
    /// enough.
    pub(crate) fn cache_key(&self, sql: &str) -> String {
        let mut key = String::with_capacity(self.key.len() + 1 + self.literals.len());
        key.push_str(&self.key);
        key.push('\0');
        for range in &self.literals {
            let token = sql.as_bytes().get(range.clone()).unwrap_or_default();
            key.push(LiteralKind::of(token).letter());
        }
        key
    }
}

/// The last significant token before the current position (whitespace skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prev {
    /// Start of the text.
    Start,
    /// An unquoted identifier or keyword.
    Word,
    /// A quoted identifier.
    QuotedIdent,
    /// A number or string literal.
    Literal,
    /// A punctuation or operator character.
    Punct(u8),
}

impl Prev {
    /// Punctuation after which the parser reads a number, string or parameter as a plain
    /// value: operators and the openers of lists.
    fn is_value_context(self) -> bool {
        const VALUE_CONTEXT: &[u8] = b"(,=<>+-*/%^|~[";
        matches!(self, Prev::Punct(byte) if VALUE_CONTEXT.contains(&byte))
    }

    fn allows_number(self) -> bool {
        self == Prev::Word || self.is_value_context()
    }

    fn allows_string(self) -> bool {
        self.is_value_context()
    }
}

fn is_ident_start(byte: u8) -> bool {
    byte.is_ascii_alphabetic() || byte == b'_'
}

/// Characters that would make the token before them something else than what it looks
/// like: identifier characters (and every non-ASCII byte, which PostgreSQL allows in
/// identifiers), `$` (identifier part, parameter, dollar quote).
fn continues_token(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'$' || !byte.is_ascii()
}

/// The shape of `sql`, or `None` when it holds no simple literal or anything the scanner
/// does not fully understand (see the module docs). Costs one pass over the text.
pub(crate) fn normalize(sql: &str) -> Option<Shape> {
    if sql.len() > MAX_SHAPE_BYTES {
        return None;
    }
    let bytes = sql.as_bytes();
    let mut key = String::with_capacity(sql.len() + 8);
    let mut literals: Vec<Range<usize>> = Vec::new();
    // `sql[copied..]` is not yet in `key`.
    let mut copied = 0;
    let mut prev = Prev::Start;
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        match byte {
            b' ' | b'\t' | b'\n' | b'\r' => at += 1,
            b'\'' => {
                if !prev.allows_string() {
                    return None;
                }
                let end = string_end(bytes, at)?;
                literal(sql, at..end, &mut key, &mut copied, &mut literals);
                prev = Prev::Literal;
                at = end;
            }
            b'"' => {
                // `U&"..."` has Unicode escapes. (`a"b"` never gets here: the word
                // before refuses a quote right after it.)
                if at > 0 && bytes[at - 1] == b'&' {
                    return None;
                }
                at = quoted_identifier_end(bytes, at)?;
                prev = Prev::QuotedIdent;
            }
            b'0'..=b'9' => {
                let end = number_end(bytes, at)?;
                if !prev.allows_number() {
                    return None;
                }
                literal(sql, at..end, &mut key, &mut copied, &mut literals);
                prev = Prev::Literal;
                at = end;
            }
            b'.' if bytes.get(at + 1).is_some_and(u8::is_ascii_digit) => {
                // `.5` is a number, but `t.5`, `"t".5`, `(x).5` and `a[1].5` are field
                // accesses; with whitespace in between they are errors or worse.
                let end = number_end(bytes, at)?;
                if !prev.allows_number() || prev == Prev::Word {
                    return None;
                }
                literal(sql, at..end, &mut key, &mut copied, &mut literals);
                prev = Prev::Literal;
                at = end;
            }
            _ if is_ident_start(byte) => {
                let mut end = at + 1;
                while bytes
                    .get(end)
                    .is_some_and(|&b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    end += 1;
                }
                // `E'...'`, `x'...'`, `a$b`, `abc\u{e9}`: prefixes and unusual identifiers.
                if bytes
                    .get(end)
                    .is_some_and(|&b| b == b'\'' || b == b'"' || continues_token(b))
                {
                    return None;
                }
                prev = Prev::Word;
                at = end;
            }
            b'-' if bytes.get(at + 1) == Some(&b'-') => return None,
            b'/' if bytes.get(at + 1) == Some(&b'*') => return None,
            // Parameters and dollar quotes, escapes outside strings, psql-style and
            // other unusual characters: the exact-text cache is enough for those.
            b'$' | b'\\' | b'`' => return None,
            _ if byte.is_ascii_punctuation() => {
                prev = Prev::Punct(byte);
                at += 1;
            }
            // NUL, other control characters, non-ASCII outside quotes.
            _ => return None,
        }
    }
    if literals.is_empty() {
        return None;
    }
    key.push_str(&sql[copied..]);
    Some(Shape { key, literals })
}

/// Appends the text before the literal and its parameter to `key`.
fn literal(
    sql: &str,
    range: Range<usize>,
    key: &mut String,
    copied: &mut usize,
    literals: &mut Vec<Range<usize>>,
) {
    key.push_str(&sql[*copied..range.start]);
    key.push('$');
    push_decimal(key, literals.len() + 1);
    *copied = range.end;
    literals.push(range);
}

/// Appends `n` in decimal (without `fmt`, which costs more than the rest of the scan).
fn push_decimal(text: &mut String, n: usize) {
    if n >= 10 {
        push_decimal(text, n / 10);
    }
    text.push(char::from(b'0' + (n % 10) as u8));
}

/// The end (exclusive) of the standard string starting at `start`, or `None` if it is
/// unterminated, holds a backslash or NUL, holds two escaped quotes in a row, or is
/// directly followed by something that would continue it.
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut at = start + 1;
    loop {
        match *bytes.get(at)? {
            b'\'' if bytes.get(at + 1) == Some(&b'\'') => {
                // sqlparser prints a value holding `''` as `''''`, which reads back as
                // one quote: never let such a string through a template.
                if bytes.get(at + 2) == Some(&b'\'') && bytes.get(at + 3) == Some(&b'\'') {
                    return None;
                }
                at += 2;
            }
            b'\'' => {
                let end = at + 1;
                return match bytes.get(end) {
                    Some(&b) if continues_token(b) || b == b'"' || b == b'.' => None,
                    _ => Some(end),
                };
            }
            b'\\' | 0 => return None,
            _ => at += 1,
        }
    }
}

/// The end (exclusive) of the quoted identifier starting at `start` (`""` escapes a
/// quote), or `None` if it is unterminated, holds NUL, or is directly followed by an
/// identifier character or a quote.
fn quoted_identifier_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut at = start + 1;
    loop {
        match *bytes.get(at)? {
            b'"' if bytes.get(at + 1) == Some(&b'"') => at += 2,
            b'"' => {
                let end = at + 1;
                return match bytes.get(end) {
                    Some(&b) if continues_token(b) || b == b'\'' => None,
                    _ => Some(end),
                };
            }
            0 => return None,
            _ => at += 1,
        }
    }
}

/// The end (exclusive) of the unsigned number starting at `start` (a digit, or `.`
/// followed by a digit), in the forms sqlparser's tokenizer reads as one number token:
/// `digits[.digits][e[+-]digits]` or `.digits[e[+-]digits]`. `None` when anything
/// follows that would make it another token or an error (`1e`, `1.2.3`, `0x1`, `1_0`).
fn number_end(bytes: &[u8], start: usize) -> Option<usize> {
    let digits = |mut at: usize| {
        while bytes.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        at
    };
    let mut at = digits(start);
    if bytes.get(at) == Some(&b'.') {
        at = digits(at + 1);
    }
    if matches!(bytes.get(at), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(bytes.get(at + 1), Some(b'+' | b'-')));
        if bytes.get(at + 1 + sign).is_some_and(u8::is_ascii_digit) {
            at = digits(at + 1 + sign);
        }
    }
    match bytes.get(at) {
        Some(&b) if continues_token(b) || b == b'.' || b == b'\'' || b == b'"' => None,
        _ => Some(at),
    }
}

#[cfg(test)]
mod tests;
