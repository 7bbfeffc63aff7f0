use super::*;
use crate::class::StatementClass::{
    Dangerous as X, Dcl as C, Ddl as D, Read as R, Session as S, Transaction as T, Utility as U,
    Write as W,
};

/// The classes of `sql`, or a description of why it has none.
fn classes_of(sql: &str) -> Result<ClassSet, String> {
    match analyze(sql).outcome {
        Outcome::Statements { classes, .. } => Ok(classes),
        Outcome::Empty => Err("empty".to_string()),
        Outcome::Refused(refusal) => Err(refusal.to_string()),
    }
}

fn set(classes: &[StatementClass]) -> ClassSet {
    classes.iter().copied().collect()
}

const CASES: &[(&str, &[StatementClass])] = &[
    // reads
    ("SELECT 1", &[R]),
    ("select abalance from pgbench_accounts where aid = $1", &[R]),
    ("VALUES (1, 2), (3, 4)", &[R]),
    ("WITH x AS (SELECT 1) SELECT * FROM x", &[R]),
    ("SELECT 1 UNION ALL SELECT 2", &[R]),
    (
        "SELECT * FROM t JOIN LATERAL (SELECT * FROM u WHERE u.id = t.id) AS l ON true",
        &[R],
    ),
    ("SHOW search_path", &[R]),
    ("SHOW ALL", &[R]),
    ("EXPLAIN SELECT 1", &[R]),
    (
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT * FROM t",
        &[R],
    ),
    ("COPY t TO STDOUT", &[R]),
    (
        "COPY (SELECT * FROM t) TO STDOUT WITH (FORMAT csv, HEADER)",
        &[R],
    ),
    (
        "SELECT current_setting('search_path'), pg_catalog.version()",
        &[R],
    ),
    // writes
    ("INSERT INTO t VALUES (1)", &[W]),
    (
        "INSERT INTO t (a, b) VALUES ($1, $2) ON CONFLICT (a) DO UPDATE SET b = EXCLUDED.b RETURNING *",
        &[W],
    ),
    ("INSERT INTO t SELECT * FROM s", &[W]),
    (
        "UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 5",
        &[W],
    ),
    (
        "UPDATE t SET a = s.a FROM s WHERE t.id = s.id RETURNING t.*",
        &[W],
    ),
    ("DELETE FROM t WHERE a = 1", &[W]),
    ("DELETE FROM t USING s WHERE t.id = s.id", &[W]),
    (
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a WHEN NOT MATCHED THEN INSERT (id, a) VALUES (s.id, s.a)",
        &[W],
    ),
    ("COPY t FROM STDIN", &[W]),
    ("COPY t (a, b) FROM STDIN WITH (FORMAT csv)", &[W]),
    ("copy pgbench_accounts from stdin with (freeze true)", &[W]),
    (
        "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        &[R, W],
    ),
    (
        "WITH i AS (INSERT INTO t VALUES (1) RETURNING id) SELECT id FROM i",
        &[R, W],
    ),
    (
        "WITH u AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM u",
        &[R, W],
    ),
    (
        "SELECT * FROM (WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d) AS x",
        &[R, W],
    ),
    (
        "WITH x AS (SELECT 1 AS a) INSERT INTO t SELECT a FROM x",
        &[W],
    ),
    ("EXPLAIN ANALYZE DELETE FROM t", &[W]),
    ("EXPLAIN DELETE FROM t", &[W]),
    ("SELECT * FROM t FOR UPDATE", &[R, W]),
    ("SELECT * FROM t FOR SHARE SKIP LOCKED", &[R, W]),
    ("SELECT nextval('seq')", &[R, W]),
    ("CALL p()", &[W]),
    ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", &[W]),
    // schema changes
    (
        "CREATE TABLE t (id int PRIMARY KEY, name text NOT NULL)",
        &[D],
    ),
    ("CREATE TEMP TABLE tt (a int) ON COMMIT DROP", &[D]),
    ("CREATE TABLE t2 AS SELECT * FROM t", &[D]),
    ("SELECT * INTO newt FROM t", &[R, D]),
    ("CREATE INDEX CONCURRENTLY i ON t (a)", &[D]),
    ("CREATE VIEW v AS SELECT 1", &[D]),
    ("CREATE MATERIALIZED VIEW mv AS SELECT 1", &[D]),
    ("ALTER TABLE t ADD COLUMN c int", &[D]),
    ("DROP TABLE IF EXISTS t CASCADE", &[D]),
    ("DROP INDEX i", &[D]),
    ("TRUNCATE TABLE t RESTART IDENTITY CASCADE", &[D]),
    ("COMMENT ON TABLE t IS 'x'", &[D]),
    (
        "CREATE FUNCTION f(int) RETURNS int LANGUAGE sql AS 'SELECT $1'",
        &[D],
    ),
    ("CREATE SCHEMA s", &[D]),
    ("CREATE SEQUENCE seq", &[D]),
    ("CREATE TYPE mood AS ENUM ('a', 'b')", &[D]),
    (
        "CREATE TRIGGER trg BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()",
        &[D],
    ),
    ("DROP EXTENSION pgcrypto", &[D]),
    // access control
    ("GRANT SELECT ON t TO bob", &[C]),
    ("REVOKE ALL ON t FROM bob", &[C]),
    ("GRANT admin TO bob", &[C]),
    ("REVOKE admin FROM bob", &[C]),
    ("CREATE ROLE bob LOGIN", &[C]),
    ("ALTER ROLE bob SUPERUSER", &[C]),
    ("DROP ROLE bob", &[C]),
    ("DROP USER bob", &[C]),
    (
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO bob",
        &[C],
    ),
    ("CREATE POLICY p ON t USING (tenant_id = 42)", &[C]),
    ("DROP POLICY p ON t", &[C]),
    ("ALTER TABLE t ENABLE ROW LEVEL SECURITY", &[D, C]),
    ("ALTER TABLE t OWNER TO bob", &[D, C]),
    // session state
    ("SET search_path TO public, pg_catalog", &[S]),
    ("SET LOCAL statement_timeout = '5s'", &[S]),
    ("SET TIME ZONE 'UTC'", &[S]),
    ("SET extra_float_digits = 3", &[S]),
    ("SET application_name = 'psql'", &[S]),
    ("SET client_encoding TO 'UTF8'", &[S]),
    ("SET standard_conforming_strings = on", &[S]),
    ("RESET search_path", &[S]),
    ("RESET ALL", &[S]),
    ("DISCARD ALL", &[S]),
    ("LISTEN chan", &[S]),
    ("UNLISTEN chan", &[S]),
    ("NOTIFY chan, 'payload'", &[S]),
    ("SELECT pg_notify('chan', 'x')", &[R, S]),
    ("SELECT set_config('search_path', '', false)", &[R, S]),
    ("SELECT set_config('app.tenant_id', $1, true)", &[R, S]),
    ("SET NAMES 'UTF8'", &[S]),
    ("PREPARE p (int) AS SELECT $1", &[S, R]),
    ("PREPARE q AS INSERT INTO t VALUES ($1)", &[S, W]),
    ("EXECUTE p(1)", &[S]),
    ("DEALLOCATE p", &[S]),
    ("DEALLOCATE ALL", &[S]),
    ("DECLARE c CURSOR WITH HOLD FOR SELECT * FROM t", &[R, S]),
    ("FETCH 10 FROM c", &[S]),
    ("CLOSE c", &[S]),
    ("CLOSE ALL", &[S]),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", &[S]),
    // transaction control
    ("BEGIN", &[T]),
    ("BEGIN ISOLATION LEVEL REPEATABLE READ", &[T]),
    ("START TRANSACTION READ ONLY", &[T]),
    ("COMMIT", &[T]),
    ("END", &[T]),
    ("ROLLBACK", &[T]),
    ("ABORT", &[T]),
    ("SAVEPOINT s1", &[T]),
    ("RELEASE SAVEPOINT s1", &[T]),
    ("ROLLBACK TO SAVEPOINT s1", &[T]),
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", &[T]),
    // maintenance
    ("VACUUM", &[U]),
    ("VACUUM pgbench_branches", &[U]),
    ("ANALYZE", &[U]),
    ("ANALYZE t", &[U]),
    ("REFRESH MATERIALIZED VIEW CONCURRENTLY mv", &[U]),
    // dangerous
    ("COPY t FROM '/etc/passwd'", &[W, X]),
    ("COPY t TO '/tmp/x'", &[R, X]),
    ("COPY t TO PROGRAM 'rm -rf /'", &[R, X]),
    ("COPY (SELECT 1) TO PROGRAM 'cat > /tmp/x'", &[R, X]),
    ("COPY t FROM PROGRAM 'curl http://x'", &[W, X]),
    ("SET ROLE admin", &[X]),
    ("SET LOCAL ROLE admin", &[X]),
    ("SET role = 'admin'", &[X]),
    ("SET \"ROLE\" = 'admin'", &[X]),
    ("RESET ROLE", &[X]),
    ("RESET role", &[X]),
    ("SET SESSION AUTHORIZATION bob", &[X]),
    ("SET SESSION AUTHORIZATION DEFAULT", &[X]),
    ("RESET SESSION AUTHORIZATION", &[X]),
    ("SET session_authorization = 'bob'", &[X]),
    ("SET session_replication_role = replica", &[X]),
    ("SET client_encoding = 'SJIS'", &[X]),
    ("SET standard_conforming_strings = off", &[X]),
    ("SET standard_conforming_strings = DEFAULT", &[S]),
    ("CREATE EXTENSION pgcrypto", &[D, X]),
    (
        "CREATE SERVER srv FOREIGN DATA WRAPPER postgres_fdw",
        &[D, X],
    ),
    ("LOAD 'auto_explain'", &[X]),
    ("SELECT pg_read_file('/etc/passwd')", &[R, X]),
    ("SELECT PG_CATALOG.PG_READ_FILE('/etc/passwd')", &[R, X]),
    ("SELECT * FROM pg_ls_dir('/')", &[R, X]),
    ("SELECT * FROM pg_catalog.pg_ls_waldir()", &[R, X]),
    ("SELECT set_config('role', 'admin', false)", &[R, X]),
    ("SELECT set_config('ROLE', 'admin', false)", &[R, X]),
    (
        "SELECT set_config('client_encoding', 'SJIS', false)",
        &[R, X],
    ),
    ("SELECT set_config(current_user, 'x', false)", &[R, X]),
    ("SELECT * FROM set_config('role', 'admin', false)", &[R, X]),
    ("SELECT lo_import('/etc/passwd')", &[R, X]),
    (
        "SELECT * FROM dblink('host=x', 'select 1') AS t(a int)",
        &[R, X],
    ),
    (
        "SELECT query_to_xml('select * from secret', true, true, '')",
        &[R, X],
    ),
    (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity",
        &[R, X],
    ),
    (
        "WITH x AS (SELECT pg_read_file('/etc/passwd') AS f) SELECT * FROM x",
        &[R, X],
    ),
    (
        "SELECT (SELECT max(pg_read_file(name)) FROM files)",
        &[R, X],
    ),
    (
        "INSERT INTO t VALUES (pg_read_file('/etc/passwd'))",
        &[W, X],
    ),
    (
        "EXPLAIN ANALYZE SELECT pg_read_file('/etc/passwd')",
        &[R, X],
    ),
    // multi-statement texts: the union
    ("BEGIN; INSERT INTO t VALUES (1); COMMIT", &[T, W]),
    ("SELECT 1; SET ROLE admin", &[R, X]),
];

#[test]
fn classifies_statements() {
    let mut failures = Vec::new();
    for (sql, expected) in CASES {
        let expected = set(expected);
        match classes_of(sql) {
            Ok(classes) if classes == expected => {}
            Ok(classes) => {
                failures.push(format!("{sql}\n    got {classes:?}, expected {expected:?}"))
            }
            Err(why) => failures.push(format!("{sql}\n    not classified: {why}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} misclassified:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
    assert!(CASES.len() >= 40);
}

#[test]
fn statement_kinds_name_the_statement() {
    let kinds = |sql: &str| match analyze(sql).outcome {
        Outcome::Statements { statements, .. } => {
            statements.iter().map(|s| s.kind).collect::<Vec<_>>()
        }
        other => panic!("{sql}: {other:?}"),
    };
    assert_eq!(kinds("INSERT INTO t VALUES (1)"), ["INSERT"]);
    assert_eq!(kinds("EXPLAIN ANALYZE DELETE FROM t"), ["EXPLAIN"]);
    assert_eq!(
        kinds("begin; select 1; commit"),
        ["BEGIN", "SELECT", "COMMIT"]
    );
    assert_eq!(kinds("CREATE TABLE t2 AS SELECT 1"), ["CREATE TABLE AS"]);
    assert_eq!(kinds("COPY t TO PROGRAM 'x'"), ["COPY"]);
}

#[test]
fn empty_and_comment_only_texts_are_empty() {
    for sql in [
        "",
        ";",
        "  ;; ",
        "\n\t",
        "-- just a comment",
        "/* c */",
        "/* a /* nested */ c */;",
    ] {
        assert!(
            matches!(analyze(sql).outcome, Outcome::Empty),
            "{sql:?} should be empty"
        );
    }
}

#[test]
fn statements_are_re_serialized_and_joined() {
    match analyze("select  1 ;  -- comment\n select 'a''b' /* c */ ; ").outcome {
        Outcome::Statements {
            sql, statements, ..
        } => {
            assert_eq!(&*sql, "SELECT 1; SELECT 'a''b'");
            assert_eq!(statements.len(), 2);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn comments_never_reach_the_forwarded_text() {
    // PostgreSQL ends `--` comments at \r as well as \n; the forwarded text must not
    // depend on who is right, and it does not: comments are dropped.
    match analyze("SELECT 1 -- x\r, 2\n").outcome {
        Outcome::Statements { sql, .. } => assert_eq!(&*sql, "SELECT 1, 2"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unparsable_texts_are_refused_with_the_parser_error() {
    for sql in [
        "SELEC 1",
        "SELECT (",
        "DO $$BEGIN NULL; END$$",
        "ALTER SYSTEM SET work_mem = '1GB'",
        "CHECKPOINT",
        "CLUSTER t USING i",
        "REINDEX TABLE t",
        "VACUUM ANALYZE t",
        "TABLE t; TABLE u",
        "TABLE t; -- the end",
        "copy pgbench_accounts from stdin with (freeze on)",
        "SELECT 'unterminated",
    ] {
        match analyze(sql).outcome {
            Outcome::Refused(Refusal::Unparsable(error)) => {
                assert!(error.starts_with("sql parser error: "), "{sql}: {error}");
            }
            other => panic!("{sql}: {other:?}"),
        }
    }
}

#[test]
fn table_commands_are_read_in_parentheses() {
    for (sql, forwarded) in [
        // sqlparser prints `TABLE t` as what PostgreSQL defines it to be.
        ("TABLE t", "(SELECT * FROM t)"),
        ("TABLE t;", "(SELECT * FROM t)"),
        ("table public.t ;; \n", "(SELECT * FROM public.t)"),
        ("TABLE t -- all of it", "(SELECT * FROM t)"),
        (
            "TABLE t ORDER BY 1 LIMIT 2",
            "(SELECT * FROM t ORDER BY 1 LIMIT 2)",
        ),
    ] {
        match analyze(sql).outcome {
            Outcome::Statements {
                statements,
                sql: text,
                ..
            } => {
                assert_eq!(statements.len(), 1, "{sql}");
                assert_eq!(&*text, forwarded, "{sql}");
            }
            other => panic!("{sql}: {other:?}"),
        }
    }
}

#[test]
fn inline_copy_data_is_refused() {
    // sqlparser reads psql-script data after `FROM STDIN;`; on the wire PostgreSQL would
    // execute those lines as SQL, so such a text must never be forwarded.
    for sql in [
        "COPY t FROM STDIN;\n1\t2\n\\.\n",
        "COPY t FROM STDIN;\nDROP TABLE x",
        "COPY t (a) FROM STDIN WITH (FORMAT csv);\nDROP TABLE x;\n\\.",
    ] {
        assert_eq!(
            analyze(sql).outcome_refusal(),
            Some(Refusal::Unsupported(
                "COPY ... FROM STDIN followed by inline data"
            )),
            "{sql:?}"
        );
    }
    // The same statements on one line are separate statements.
    assert_eq!(
        classes_of("COPY t FROM STDIN; DROP TABLE x"),
        Ok(set(&[W, D]))
    );
}

#[test]
fn ten_thousand_nested_parentheses_are_a_clean_parse_error() {
    let depth = 10_000;
    let sql = format!("SELECT {}1{}", "(".repeat(depth), ")".repeat(depth));
    match analyze(&sql).outcome {
        Outcome::Refused(Refusal::Unparsable(error)) => {
            assert!(error.contains("recursion limit exceeded"), "{error}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn other_deep_nesting_never_overflows_the_stack() {
    let depth = 10_000;
    let nest = |open: &str, middle: &str, close: &str| {
        format!("{}{middle}{}", open.repeat(depth), close.repeat(depth))
    };
    let texts = [
        format!("SELECT {}", nest("NOT ", "true", "")),
        format!("SELECT {}", nest("- ", "1", "")),
        format!("SELECT {}", nest("(SELECT ", "1", ")")),
        format!("SELECT {}", nest("ARRAY[", "1", "]")),
        format!("SELECT {}", nest("f(", "1", ")")),
        format!("SELECT {}", nest("CASE WHEN ", "true", " THEN 1 END")),
        format!("SELECT {}", nest("ROW(", "1", ")")),
        format!("SELECT {}", nest("EXISTS (SELECT ", "1", ")")),
        format!("SELECT * FROM {}", nest("(", "t", ")")),
        format!("SELECT * FROM {}", nest("(SELECT * FROM ", "t", ") AS x")),
        nest("(", "SELECT 1", ")"),
        nest("WITH a AS (", "SELECT 1", ") SELECT 1"),
        format!("SELECT 1 {}", nest("UNION (SELECT 1 ", "", ")")),
        format!("SELECT a{}", "[1]".repeat(depth)),
        format!("SELECT 1{}", "::int".repeat(depth)),
        format!("SELECT {}", nest("'{", "", "}'")),
        format!("EXPLAIN {}", nest("EXPLAIN ", "SELECT 1", "")),
        format!("PREPARE p AS {}", nest("PREPARE p AS ", "SELECT 1", "")),
        nest("/*", "", "*/"),
    ];
    for sql in &texts {
        // Either outcome is fine; not crashing is the point.
        let _ = analyze(sql);
    }
}

#[test]
fn long_lists_are_flat_and_accepted() {
    let list = (0..10_000)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    assert_eq!(
        classes_of(&format!("SELECT * FROM t WHERE a IN ({list})")),
        Ok(set(&[R]))
    );
    let rows = vec!["($1 + 1, $2 || 'x', now())"; 2_000].join(", ");
    assert_eq!(
        classes_of(&format!("INSERT INTO t VALUES {rows}")),
        Ok(set(&[W]))
    );
    let columns = vec!["a || b AS c"; 2_000].join(", ");
    assert_eq!(
        classes_of(&format!("SELECT {columns} FROM t")),
        Ok(set(&[R]))
    );
    let whens = (0..1_000)
        .map(|i| format!("WHEN {i} THEN 'v{i}'"))
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(
        classes_of(&format!(
            "UPDATE t SET v = CASE id {whens} END WHERE id < 1000"
        )),
        Ok(set(&[W]))
    );
    let many = vec!["SELECT 1 + 1 + 1"; 2_000].join("; ");
    assert_eq!(classes_of(&many), Ok(set(&[R])));
}

/// Chains of `count` links of `link` after `head`.
fn chain(head: &str, link: &str, count: usize) -> String {
    format!("{head}{}", link.repeat(count))
}

#[test]
fn operator_chains_up_to_the_limit_are_analysed() {
    // Each text's bound is exactly at the limit: parsed, classified, re-serialized and
    // compared (the comparison is the deepest recursion), all on this thread's stack.
    let max = nesting::MAX_OPERATOR_NESTING;
    let texts = [
        chain("SELECT 1", " + 1", max),
        chain("SELECT a FROM t WHERE true", " AND true", max),
        chain("SELECT a FROM t WHERE a", " OR a = 1", max / 2),
        chain("SELECT 'a'", " || 'a'", max),
        chain("SELECT 1", "::int", max),
        chain("SELECT 1", " UNION SELECT 1", max),
        chain("SELECT a", "[1]", max),
        chain("SELECT j", " -> 'k'", max),
        format!(
            "SELECT {}1{}",
            "(1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + ".repeat(max / 10),
            ")".repeat(max / 10)
        ),
        // As deep as the recursion limit allows, with the whole chain at the bottom.
        format!(
            "SELECT {}{}{}",
            "(SELECT ".repeat(19),
            chain("1", " + 1", max),
            ")".repeat(19)
        ),
        format!(
            "SELECT {}{}{}",
            "(".repeat(45),
            chain("1", " + 1", max),
            ")".repeat(45)
        ),
    ];
    for sql in &texts {
        match analyze(sql).outcome {
            Outcome::Statements { .. } => {}
            other => panic!("{}...: {other:?}", &sql[..40]),
        }
    }
}

#[test]
fn operator_chains_over_the_limit_are_refused_before_parsing() {
    let max = nesting::MAX_OPERATOR_NESTING;
    let texts = [
        chain("SELECT 1", " + 1", max + 1),
        chain("SELECT 1", " + 1", 500_000),
        chain("SELECT * FROM t WHERE true", " AND true", 100_000),
        chain("SELECT * FROM t WHERE a = 1", " OR a = 1", max),
        chain("SELECT 'a'", " || 'a'", 100_000),
        chain("SELECT 1", "::int", 100_000),
        chain("SELECT 1", " UNION SELECT 1", 50_000),
        chain("SELECT 1, 2", " EXCEPT SELECT 1, 2", 50_000),
        chain("SELECT a", "[1]", 100_000),
        chain("SELECT j", " -> 'k'", 100_000),
        chain("SELECT 1", " IS NOT NULL", 100_000),
        chain("SELECT 'a'", " COLLATE \"C\"", 100_000),
        chain("SELECT now()", " AT TIME ZONE 'UTC'", 100_000),
        chain("SELECT 1", " OPERATOR(pg_catalog.+) 1", 100_000),
        format!(
            "SELECT {}1{}",
            "(1 + 1 + 1 + 1 + ".repeat(1_000),
            ")".repeat(1_000)
        ),
    ];
    for sql in &texts {
        assert_eq!(
            analyze(sql).outcome_refusal(),
            Some(Refusal::TooComplex),
            "{}...",
            &sql[..40]
        );
    }
}

#[test]
fn parser_errors_are_bounded_and_printable() {
    let long = ParserError::ParserError(format!("bad\n\0token {}", "x".repeat(10_000)));
    let safe = client_safe(&long);
    assert!(safe.chars().count() <= MAX_ERROR_CHARS + 3);
    assert!(!safe.chars().any(char::is_control), "{safe:?}");
    assert!(safe.ends_with("..."));
}

#[test]
fn a_big_literal_in_an_error_is_truncated() {
    let sql = format!("SELECT 1 '{}'", "y".repeat(100_000));
    match analyze(&sql).outcome {
        Outcome::Refused(Refusal::Unparsable(error)) => {
            assert!(error.len() < 2 * MAX_ERROR_CHARS, "{}", error.len());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_statement_has_at_least_one_class() {
    // Statements of other dialects that the parser also accepts fall back to Dangerous.
    for sql in ["LOAD 'x'", "KILL 1", "SHOW TABLES"] {
        if let Outcome::Statements { classes, .. } = analyze(sql).outcome {
            assert!(classes.contains(X), "{sql}: {classes:?}");
        }
    }
}

#[test]
fn weight_grows_with_the_text() {
    let small = analyze("SELECT 1").weight;
    let large = analyze(&format!("SELECT '{}'", "z".repeat(10_000))).weight;
    assert!(large > small + 10_000);
}

impl Analysis {
    fn outcome_refusal(&self) -> Option<Refusal> {
        match &self.outcome {
            Outcome::Refused(refusal) => Some(refusal.clone()),
            _ => None,
        }
    }
}
