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
//! The fingerprint is computed over the token stream (tokens joined by one space, plain
//! identifiers and keywords in ASCII lower case), so texts that differ only in literal
//! values, comments, spacing or keyword case share it.
//!
//! Limits: `?` in the output is also a PostgreSQL operator (`jsonb ? text`); the text
//! is for people and for grouping, not for re-parsing. Lists of literals are not
//! collapsed (`IN (?, ?)` and `IN (?, ?, ?)` have different fingerprints).

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
    let mut s = Scanner {
        b: sql.as_bytes(),
        i: 0,
        text: Vec::with_capacity(sql.len()),
        hasher: Sha256::new(),
        pending_space: false,
        last: Tok::None,
    };
    s.run();
    let digest = s.hasher.finalize();
    let text = String::from_utf8(s.text)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    Normalized {
        text,
        fingerprint: hex(&digest[..16]),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tok {
    None,
    Open,
    Other,
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    text: Vec<u8>,
    hasher: Sha256,
    pending_space: bool,
    last: Tok,
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
                self.emit(start, self.i, true);
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
                self.emit(start, self.i, false);
            } else {
                // Punctuation and anything unexpected: one ASCII byte (bytes >= 0x80
                // are identifier characters above, so UTF-8 sequences stay whole).
                let start = self.i;
                self.i += 1;
                self.emit(start, self.i, false);
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
                    self.emit(start, self.i, false);
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
            self.emit(start, self.i, false);
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
            self.emit(start, self.i, false);
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
        self.put(b"?", false, false);
    }

    fn emit(&mut self, start: usize, end: usize, fold: bool) {
        let b = self.b;
        let tok = &b[start..end.min(b.len())];
        self.put(tok, fold, true);
    }

    fn put(&mut self, tok: &[u8], fold: bool, verbatim: bool) {
        let closes = verbatim && matches!(tok, b")" | b"]" | b"," | b";");
        if self.pending_space && self.last != Tok::None && self.last != Tok::Open && !closes {
            self.text.push(b' ');
        }
        self.pending_space = false;
        self.text.extend_from_slice(tok);
        if fold {
            self.hasher.update(tok.to_ascii_lowercase());
        } else {
            self.hasher.update(tok);
        }
        self.hasher.update(b" ");
        self.last = if verbatim && matches!(tok, b"(" | b"[") {
            Tok::Open
        } else {
            Tok::Other
        };
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
