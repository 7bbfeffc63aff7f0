//! A cheaper proof that a printed text parses back to the trees it was printed from.
//!
//! The proxy forwards statements as sqlparser prints them, so it must know that the
//! printed text parses back to the very trees it checked. Parsing the printed text again
//! and comparing proves it, at the cost of a second parse. But the parser reads tokens,
//! not characters, and skips whitespace and comments between them: two texts that
//! tokenize to the same tokens, once those are left out, parse to the same trees (trees
//! compare without source positions). A statement its client already wrote the way
//! sqlparser prints it (upper-case keywords, as ORMs, drivers and pgbench write them;
//! any spacing, line breaks or comments) prints to the client's own tokens, and
//! tokenizing the printed text costs a fraction of parsing it. Any other text takes the
//! full proof: this shortens the proof, it never relaxes it.
//!
//! The parser does look at whitespace in a few places (sqlparser 0.64.0, its
//! `*_no_skip` token accessors); each is accounted for:
//! - a `:` or `@` starts a placeholder only when a word or number follows it directly,
//!   so after those two tokens the readings must agree on whether whitespace follows;
//! - the PostgreSQL dialect parses a comment that starts with `+` (after an optional
//!   alphanumeric prefix) as an optimizer hint into the tree, so a text with a comment
//!   holding a `+` has no reading here and takes the full proof;
//! - string literals separated by a line break concatenate, and names may hold hyphens,
//!   only in other dialects (`supports_string_literal_concatenation_with_newline`,
//!   BigQuery), never with the PostgreSQL dialect used here.
//!
//! Semicolons at the very end of a text end no statement, so they are left out too.
//! On an upgrade of sqlparser, look for new `*_no_skip` callers before trusting this;
//! the corpus test below checks the shortcut against the full proof on every entry.

use sqlparser::tokenizer::{Token, TokenWithSpan, Whitespace};

use super::{tokenize, without_final_semicolons};

/// Whether the client's `text` is `printed` itself, give or take leading ASCII
/// whitespace and trailing ASCII whitespace and semicolons, which end no statement:
/// then it proves `printed` without tokenizing it.
pub(super) fn same_text(text: &str, printed: &str) -> bool {
    without_final_semicolons(text.trim_start_matches([' ', '\t', '\n', '\r'])) == printed
}

/// Whether `printed` reads as the same tokens as `parsed` (the tokens the trees were
/// parsed from), which proves that `printed` parses to the same trees. `false` means
/// "not proven here", never "different".
pub(super) fn same(parsed: &[TokenWithSpan], printed: &str) -> bool {
    let Ok(tokens) = tokenize(printed) else {
        return false;
    };
    let (Some(expected), Some(found)) = (reading(parsed), reading(&tokens)) else {
        return false;
    };
    expected.len() == found.len()
        && expected.iter().zip(&found).all(|(expected, found)| {
            expected.token == found.token
                && (expected.spaced == found.spaced
                    || !matches!(expected.token, Token::Colon | Token::AtSign))
        })
}

/// One token the parser reads.
struct Read<'a> {
    token: &'a Token,
    /// Whether whitespace or a comment follows it directly.
    spaced: bool,
}

/// The tokens the parser reads, in order, without trailing semicolons; `None` when a
/// comment may be an optimizer hint.
fn reading(tokens: &[TokenWithSpan]) -> Option<Vec<Read<'_>>> {
    let mut read: Vec<Read<'_>> = Vec::with_capacity(tokens.len());
    for token in tokens {
        match &token.token {
            Token::Whitespace(space) => {
                if let Whitespace::SingleLineComment { comment, .. }
                | Whitespace::MultiLineComment(comment) = space
                    && comment.contains('+')
                {
                    return None;
                }
                if let Some(last) = read.last_mut() {
                    last.spaced = true;
                }
            }
            Token::EOF => break,
            token => read.push(Read {
                token,
                spaced: false,
            }),
        }
    }
    while read
        .last()
        .is_some_and(|last| matches!(last.token, Token::SemiColon))
    {
        read.pop();
    }
    Some(read)
}

#[cfg(test)]
mod tests {
    use super::super::{parse, parse_keeping_tokens, serialize_trees};
    use super::same;

    /// Whether the shortcut proves `printed` against the tokens of `original`.
    fn proves(original: &str, printed: &str) -> bool {
        let (_, tokens) = parse_keeping_tokens(original).expect("the original parses");
        same(&tokens, printed)
    }

    #[test]
    fn canonical_text_is_proven_whatever_its_spacing_comments_and_final_semicolons() {
        let printed = "SELECT id, name FROM customers WHERE id = $1";
        for original in [
            printed,
            "SELECT id, name FROM customers WHERE id = $1;",
            "SELECT id, name FROM customers WHERE id = $1 ;; ",
            "SELECT id,name\nFROM customers\n\tWHERE id=$1 -- the customer\n",
            "/* sqlcommenter: route='x' */ SELECT id, name FROM customers WHERE id = $1",
        ] {
            assert!(proves(original, printed), "{original:?}");
        }
    }

    #[test]
    fn the_printed_text_itself_needs_no_tokens() {
        let printed = "SELECT id FROM t WHERE a = $1";
        for text in [
            printed,
            "  SELECT id FROM t WHERE a = $1;\n",
            "\tSELECT id FROM t WHERE a = $1 ; ;",
        ] {
            assert!(super::same_text(text, printed), "{text:?}");
        }
        for text in [
            "SELECT id FROM t WHERE a = $1 -- x",
            "SELECT id FROM t WHERE a = $1\u{a0}",
            "select id FROM t WHERE a = $1",
            "SELECT id FROM t WHERE a = $1; SELECT 1",
        ] {
            assert!(!super::same_text(text, printed), "{text:?}");
        }
    }

    #[test]
    fn any_other_token_difference_takes_the_full_proof() {
        let printed = "SELECT id, name FROM customers WHERE id = $1";
        for original in [
            // Keyword case: the full parse decides.
            "select id, name from customers where id = $1",
            // Identifier case and quoting change what the name is.
            "SELECT ID, name FROM customers WHERE id = $1",
            "SELECT \"id\", name FROM customers WHERE id = $1",
            "SELECT id, name FROM customers WHERE id = $2",
            "SELECT id, name FROM customers WHERE id = $1 AND true",
            // Two statements are not one.
            "SELECT id, name FROM customers; WHERE id = $1",
        ] {
            if parse_keeping_tokens(original).is_ok() {
                assert!(!proves(original, printed), "{original:?}");
            }
        }
    }

    #[test]
    fn possible_hints_and_placeholder_spacing_are_not_taken_on_trust() {
        // pg_hint_plan comments are part of the tree with the PostgreSQL dialect.
        let hinted = "SELECT /*+ SeqScan(t) */ a FROM t";
        assert!(!proves(hinted, hinted));
        assert!(!proves("SELECT -- a+b\n a FROM t", "SELECT a FROM t"));
        // `:name` is a placeholder, `: name` is not: spacing after `:` must agree.
        assert!(proves("SELECT :name", "SELECT :name"));
        assert!(!same(
            &parse_keeping_tokens("SELECT :name").expect("parses").1,
            "SELECT : name"
        ));
    }

    /// Whatever the spacing and comments, a text the shortcut matches against a printed
    /// text parses to the printed text's trees: checked on every corpus entry (psql,
    /// pgbench, tokio-postgres, ORM and general statements) respaced several ways, each
    /// against the entry's printed form. And the shortcut does prove most entries that
    /// are already in canonical form.
    #[test]
    fn a_shortcut_proof_holds_for_every_respaced_corpus_entry() {
        let respacings: [fn(&str) -> String; 5] = [
            |sql| sql.to_string(),
            |sql| sql.replace(' ', "\n"),
            |sql| sql.replace(' ', " /* c */ "),
            |sql| sql.replace(" = ", "=").replace(", ", ","),
            |sql| sql.replace(':', ": ").replace('@', "@ "),
        ];
        let (mut entries, mut proven, mut checked) = (0, 0, 0);
        for entry in crate::roundtrip::corpus() {
            let Ok(trees) = parse(entry.sql) else {
                continue;
            };
            entries += 1;
            let printed = serialize_trees(&trees);
            for (index, respace) in respacings.iter().enumerate() {
                let text = respace(entry.sql);
                let Ok((_, tokens)) = parse_keeping_tokens(&text) else {
                    continue;
                };
                if same(&tokens, &printed) {
                    checked += 1;
                    proven += usize::from(index == 0);
                    assert_eq!(
                        parse(&text).ok(),
                        parse(&printed).ok(),
                        "{}: {}: respacing {index} was taken for the printed text \
                         but parses differently: {text:?}",
                        entry.file,
                        entry.name
                    );
                }
            }
        }
        assert!(
            proven * 2 >= entries,
            "only {proven} of {entries} corpus entries took the shortcut as written"
        );
        assert!(checked > proven, "no respaced entry took the shortcut");
    }
}
