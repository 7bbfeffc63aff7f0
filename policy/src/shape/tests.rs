use sqlparser::ast::Value;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

use super::*;

/// The key of `sql`'s shape and the literal tokens it found.
fn shape(sql: &str) -> Option<(String, Vec<&str>)> {
    normalize(sql).map(|shape| {
        let tokens = shape
            .literals
            .iter()
            .map(|range| &sql[range.clone()])
            .collect();
        (shape.key, tokens)
    })
}

fn key(sql: &str) -> Option<String> {
    normalize(sql).map(|shape| shape.key)
}

#[test]
fn numbers_become_parameters() {
    for number in [
        "0",
        "7",
        "48213",
        "1.5",
        ".5",
        "1.",
        "1e10",
        "1E10",
        "1.5E-3",
        "1e+5",
        "1.e5",
        ".5e3",
        "00012",
        "99999999999999999999999999",
    ] {
        let sql = format!("SELECT a FROM t WHERE b = {number}");
        assert_eq!(
            shape(&sql),
            Some(("SELECT a FROM t WHERE b = $1".to_string(), vec![number])),
            "{number}"
        );
    }
}

#[test]
fn standard_strings_become_parameters() {
    for string in [
        "''",
        "'abc'",
        "'it''s'",
        "''''",
        "'a'''",
        "'''a'",
        "'x''y''z'",
        "'héllo wörld ☃'",
        "'-- not a comment'",
        "'/* nor this */'",
        "'$1 $$ $tag$'",
        "'\"quoted\"'",
        "'line\nbreak\ttab'",
        "'100%_'",
        "';'",
    ] {
        let sql = format!("SELECT a FROM t WHERE b = {string} AND c = 1");
        assert_eq!(
            shape(&sql),
            Some((
                "SELECT a FROM t WHERE b = $1 AND c = $2".to_string(),
                vec![string, "1"]
            )),
            "{string}"
        );
    }
}

#[test]
fn literal_ranges_point_at_the_original_tokens() {
    let sql = "UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 5;";
    let shape = normalize(sql);
    assert_eq!(
        shape,
        Some(Shape {
            key: "UPDATE pgbench_accounts SET abalance = abalance + -$1 WHERE aid = $2;"
                .to_string(),
            literals: vec![51..55, 68..69],
        })
    );
}

#[test]
fn pgbench_simple_statements_have_shapes() {
    for (sql, expected) in [
        (
            "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
        ),
        (
            "UPDATE pgbench_tellers SET tbalance = tbalance + 3223 WHERE tid = 5;",
            "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2;",
        ),
        (
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1, -1, CURRENT_TIMESTAMP);",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, -$4, CURRENT_TIMESTAMP);",
        ),
    ] {
        assert_eq!(key(sql).as_deref(), Some(expected), "{sql}");
    }
    assert_eq!(key("BEGIN;"), None);
    assert_eq!(key("END;"), None);
}

#[test]
fn common_positions_of_literals() {
    assert_eq!(
        key("SELECT * FROM t ORDER BY a LIMIT 10 OFFSET 20").as_deref(),
        Some("SELECT * FROM t ORDER BY a LIMIT $1 OFFSET $2")
    );
    assert_eq!(
        key("SELECT * FROM t WHERE id IN (1,2,3)").as_deref(),
        Some("SELECT * FROM t WHERE id IN ($1,$2,$3)")
    );
    assert_eq!(
        key("SELECT a, count(*) FROM t GROUP BY 1 ORDER BY 2").as_deref(),
        Some("SELECT a, count(*) FROM t GROUP BY $1 ORDER BY $2")
    );
    assert_eq!(
        key("SELECT a FROM t WHERE b=-1 AND c<>'x' AND d||'y' = e AND f[2] = 3").as_deref(),
        Some("SELECT a FROM t WHERE b=-$1 AND c<>$2 AND d||$3 = e AND f[$4] = $5")
    );
    assert_eq!(
        key("SELECT a::text FROM t WHERE b = 'x'::text").as_deref(),
        Some("SELECT a::text FROM t WHERE b = $1::text")
    );
}

#[test]
fn aid_1_and_aid_1_0_have_the_same_key_but_not_the_same_kinds() {
    let sql_int = "SELECT abalance FROM pgbench_accounts WHERE aid = 1";
    let sql_dec = "SELECT abalance FROM pgbench_accounts WHERE aid = 1.0";
    let sql_str = "SELECT abalance FROM pgbench_accounts WHERE aid = '1'";
    let (Some(int), Some(dec), Some(string)) =
        (normalize(sql_int), normalize(sql_dec), normalize(sql_str))
    else {
        panic!("no shape");
    };
    assert_eq!(int.key, dec.key);
    assert_eq!(int.key, string.key);
    assert_eq!(int.cache_key(sql_int), format!("{}\0i", int.key));
    assert_eq!(dec.cache_key(sql_dec), format!("{}\0n", dec.key));
    assert_eq!(string.cache_key(sql_str), format!("{}\0s", string.key));
    assert_eq!(
        int.cache_key(sql_int),
        normalize("SELECT abalance FROM pgbench_accounts WHERE aid = 48213")
            .map(|s| s.cache_key("SELECT abalance FROM pgbench_accounts WHERE aid = 48213"))
            .unwrap_or_default()
    );
}

#[test]
fn digits_in_identifiers_are_not_literals() {
    assert_eq!(
        shape("SELECT col_2, t1.c3 FROM t1 WHERE x9 = 9"),
        Some((
            "SELECT col_2, t1.c3 FROM t1 WHERE x9 = $1".to_string(),
            vec!["9"]
        ))
    );
    assert_eq!(key("SELECT col_2 FROM t1"), None);
}

#[test]
fn quoted_identifiers_are_copied_verbatim() {
    assert_eq!(
        shape(r#"SELECT "a""b", "$1", "x'y", "col 2", "é" FROM "T1" WHERE "c3" = 3"#),
        Some((
            r#"SELECT "a""b", "$1", "x'y", "col 2", "é" FROM "T1" WHERE "c3" = $1"#.to_string(),
            vec!["3"]
        ))
    );
}

#[test]
fn texts_without_literals_have_no_shape() {
    for sql in [
        "",
        "SELECT a FROM t",
        "BEGIN",
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    ] {
        assert_eq!(key(sql), None, "{sql:?}");
    }
}

#[test]
fn comments_and_dollars_are_refused() {
    for sql in [
        "SELECT 1 -- one",
        "SELECT 1 /* one */",
        "SELECT 1 --",
        "SELECT a FROM t WHERE b = $1 AND c = 2",
        "SELECT $$x$$, 1",
        "SELECT $tag$x$tag$, 1",
        "SELECT a$b FROM t WHERE c = 1",
        "SELECT 1 \\g",
        "SELECT `a` FROM t WHERE b = 1",
    ] {
        assert_eq!(key(sql), None, "{sql:?}");
    }
}

#[test]
fn prefixed_strings_are_refused() {
    for sql in [
        "SELECT E'a\\nb', 1",
        "SELECT e'x', 1",
        "SELECT B'0101', 1",
        "SELECT b'0101', 1",
        "SELECT X'ff', 1",
        "SELECT x'ff', 1",
        "SELECT N'x', 1",
        "SELECT U&'d\\0061t', 1",
        "SELECT U&\"d\\0061t\" FROM t WHERE a = 1",
        "SELECT u&'x', 1",
    ] {
        assert_eq!(key(sql), None, "{sql:?}");
    }
}

#[test]
fn typed_and_unusually_placed_literals_are_refused() {
    for sql in [
        "SELECT DATE '2020-01-01'",
        "SELECT a FROM t WHERE d > date '2020-01-01' AND b = 1",
        "SELECT interval '1 day'",
        "SELECT timestamp 'x'",
        "SELECT timestamp with time zone '2020-01-01 00:00'",
        "SELECT \"char\" 'x'",
        "SELECT varchar(3) 'abc'",
        "SELECT int4[] '{1}', 1",
        "SELECT 'a' 'b'",
        "SELECT 'a'\n'b'",
        "SELECT 1 'a'",
        "SELECT 'abc'",
        "SELECT a FROM t WHERE b LIKE 'x%'",
        "SELECT a AT TIME ZONE 'UTC' FROM t",
        "SELECT a FROM t WHERE b = ANY '{1,2}'",
        "SELECT 'x' FROM t",
        "SELECT t.5 FROM t",
        "SELECT t .5 FROM t",
        "SELECT a FROM t WHERE b = :1",
        "SELECT @1",
        "SELECT a FROM t WHERE b = ? 1",
        "SELECT a FROM t WHERE b = 'x'.c",
        "1",
        "SELECT 1; 2",
        "SELECT a FROM t WHERE b = 'x' || 'y' AND c = 'a'b",
    ] {
        assert_eq!(key(sql), None, "{sql:?}");
    }
}

#[test]
fn malformed_numbers_are_refused() {
    for number in [
        "1e", "1e+", "1E-", "1.2.3", "1..2", "0x1F", "0o17", "0b101", "1_000", "1abc", "12L",
        "1.5e3.", "1.e", ".5.", "1$", "1'a'", "1\"a\"", "1é",
    ] {
        let sql = format!("SELECT a FROM t WHERE b = {number}");
        assert_eq!(key(&sql), None, "{number}");
    }
}

#[test]
fn odd_bytes_and_unterminated_quotes_are_refused() {
    for sql in [
        "SELECT a FROM t WHERE b = 1\0",
        "SELECT a FROM t WHERE b = '\0' AND c = 1",
        "SELECT a FROM t WHERE b = 'x",
        "SELECT a FROM t WHERE b = 'x''",
        "SELECT \"a FROM t WHERE b = 1",
        "SELECT \"a\0\" FROM t WHERE b = 1",
        "SELECT é FROM t WHERE b = 1",
        "SELECT a FROM t\u{feff} WHERE b = 1",
        "SELECT a FROM t WHERE\x0cb = 1",
        "SELECT a FROM t WHERE\x0bb = 1",
        "SELECT a FROM t WHERE b = 'back\\slash'",
        "SELECT a FROM t WHERE b = 'two''''quotes'",
        "SELECT a FROM t WHERE b = ''''''",
    ] {
        assert_eq!(key(sql), None, "{sql:?}");
    }
}

#[test]
fn long_texts_are_not_scanned() {
    let list = vec!["1"; 6000].join(", ");
    let long = format!("SELECT a FROM t WHERE b IN ({list})");
    assert!(long.len() > MAX_SHAPE_BYTES);
    assert_eq!(key(&long), None);
    let short = format!("SELECT a FROM t WHERE b IN ({})", vec!["1"; 100].join(", "));
    let shape = normalize(&short);
    assert_eq!(shape.as_ref().map(|s| s.literals.len()), Some(100));
    let key = shape.map(|s| s.key).unwrap_or_default();
    assert!(key.contains("$9, $10, $11,"), "{key}");
    assert!(key.ends_with("$99, $100)"), "{key}");
}

/// The part of the safety argument that is about single tokens: every literal that
/// `normalize` accepts is one token to sqlparser's PostgreSQL tokenizer, a number or a
/// standard string, and prints back as exactly the same bytes. (Should sqlparser's
/// `bigdecimal` feature ever be enabled, this stops compiling, as it must: numbers would
/// then print normalised, `1e3` as `1000`, and a template proven with one spelling
/// would forward another spelling differently from the full analysis.)
#[test]
fn every_accepted_literal_is_one_token_that_prints_back_verbatim() {
    let mut literals: Vec<String> = [
        "0", "1", "42", "1.5", ".5", "1.", "1e10", "1.5E-3", "1e+5", "1.e5", ".5e3", "007",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    // Strings built from pieces that stress quoting.
    let pieces = [
        "a", "''", " ", "é", "☃", "\n", "\t", "\"", "%", "_", "$", "$1", "--", "/*", "*/", ";",
        "x''y", "\u{1}", "'' ",
    ];
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..2_000 {
        let mut body = String::new();
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut n = state;
        for _ in 0..(n % 6) {
            n /= 7;
            body.push_str(pieces[usize::try_from(n % pieces.len() as u64).unwrap_or(0)]);
        }
        literals.push(format!("'{body}'"));
    }
    let mut accepted = 0;
    for literal in &literals {
        let sql = format!("SELECT a FROM t WHERE b = {literal}");
        let Some(shape) = normalize(&sql) else {
            continue;
        };
        accepted += 1;
        assert_eq!(shape.literals.len(), 1, "{literal}");
        assert_eq!(&sql[shape.literals[0].clone()], literal.as_str());
        let tokens = Tokenizer::new(&PostgreSqlDialect {}, literal)
            .with_unescape(true)
            .tokenize();
        let printed = match tokens.as_deref() {
            Ok([Token::Number(number, false)]) => Value::Number(number.clone(), false).to_string(),
            Ok([Token::SingleQuotedString(value)]) => {
                Value::SingleQuotedString(value.clone()).to_string()
            }
            other => panic!("{literal:?} tokenizes as {other:?}"),
        };
        assert_eq!(&printed, literal);
    }
    assert!(accepted > 1_000, "only {accepted} accepted");
}
