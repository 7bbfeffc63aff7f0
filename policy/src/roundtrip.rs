//! Re-serialization fidelity: the proxy forwards the statement as printed from its
//! syntax tree, so for real-world SQL the printed text must parse back to the very same
//! tree. The corpus lives in `policy/tests/corpus/*.sql` (psql 15 catalog queries,
//! pgbench, tokio-postgres, and application/driver/ORM statements).

use crate::analysis::{self, Outcome};

/// `(file, text)` of every corpus file.
const CORPUS_FILES: &[(&str, &str)] = &[
    ("psql15.sql", include_str!("../tests/corpus/psql15.sql")),
    ("pgbench.sql", include_str!("../tests/corpus/pgbench.sql")),
    (
        "tokio_postgres.sql",
        include_str!("../tests/corpus/tokio_postgres.sql"),
    ),
    ("general.sql", include_str!("../tests/corpus/general.sql")),
];

/// Statements real clients send that sqlparser 0.64 cannot parse, so Portcullis refuses
/// them (42601) unless the user is in `unparsed_passthrough`. If one starts parsing
/// after an upgrade, move it into the corpus.
const KNOWN_UNPARSABLE: &[(&str, &str)] = &[
    ("pgbench -i vacuum step", "vacuum analyze pgbench_accounts"),
    (
        "pgbench -i client-side load (COPY option FREEZE ON)",
        "copy pgbench_accounts from stdin with (freeze on)",
    ),
    // Accepted all the same, read in parentheses (see `analysis::table_command`).
    ("TABLE shorthand", "TABLE pgbench_branches"),
    ("VACUUM with options", "VACUUM (VERBOSE, ANALYZE) t"),
    ("CHECKPOINT", "CHECKPOINT"),
    ("CLUSTER", "CLUSTER t USING t_pkey"),
    ("REINDEX", "REINDEX TABLE t"),
    ("DO block", "DO $$BEGIN RAISE NOTICE 'x'; END$$"),
    ("ALTER SYSTEM", "ALTER SYSTEM SET work_mem = '64MB'"),
    ("PREPARE TRANSACTION", "PREPARE TRANSACTION 'tx1'"),
    ("COMMIT PREPARED", "COMMIT PREPARED 'tx1'"),
    ("MOVE cursor", "MOVE NEXT FROM c"),
    ("FETCH without FROM", "FETCH NEXT c"),
    ("SET role TO", "SET role TO admin"),
    ("FOR NO KEY UPDATE", "SELECT * FROM t FOR NO KEY UPDATE"),
    (
        "CREATE USER ... WITH PASSWORD",
        "CREATE USER bob WITH PASSWORD 'x'",
    ),
    ("ALTER SEQUENCE", "ALTER SEQUENCE s RESTART"),
    ("ALTER DATABASE", "ALTER DATABASE d SET work_mem = '1MB'"),
];

/// One corpus entry: where it is from, its label, its text.
pub(crate) struct Entry {
    pub(crate) file: &'static str,
    pub(crate) name: &'static str,
    pub(crate) sql: &'static str,
}

/// The corpus entries: each starts at a `-- name: <label>` line and runs to the next.
pub(crate) fn corpus() -> Vec<Entry> {
    let mut entries = Vec::new();
    for (file, text) in CORPUS_FILES {
        let mut current: Option<(&str, usize)> = None;
        let mut offset = 0;
        for line in text.split_inclusive('\n') {
            if let Some(name) = line.strip_prefix("-- name:") {
                if let Some((name, start)) = current.take() {
                    entries.push(Entry {
                        file,
                        name,
                        sql: text[start..offset].trim(),
                    });
                }
                current = Some((name.trim(), offset + line.len()));
            }
            offset += line.len();
        }
        if let Some((name, start)) = current {
            entries.push(Entry {
                file,
                name,
                sql: text[start..].trim(),
            });
        }
    }
    entries
}

/// The statements of `sql`, re-serialized and joined as the proxy forwards them.
fn reserialize(sql: &str) -> Result<String, String> {
    let statements = analysis::parse(sql).map_err(|e| format!("does not parse: {e:?}"))?;
    if statements.is_empty() {
        return Err("holds no statement".to_string());
    }
    let text = statements
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let again = analysis::parse(&text)
        .map_err(|e| format!("re-serialized text {text:?} does not parse: {e:?}"))?;
    if again != statements {
        return Err(format!(
            "re-serialized text {text:?} parses to a different tree"
        ));
    }
    Ok(text)
}

#[test]
fn corpus_is_large_enough_and_covers_the_clients() {
    let entries = corpus();
    assert!(entries.len() >= 80, "only {} entries", entries.len());
    for file in [
        "psql15.sql",
        "pgbench.sql",
        "tokio_postgres.sql",
        "general.sql",
    ] {
        assert!(entries.iter().any(|e| e.file == file), "{file} is empty");
    }
    for entry in &entries {
        assert!(
            !entry.sql.is_empty(),
            "{}: {} is empty",
            entry.file,
            entry.name
        );
    }
}

#[test]
fn every_corpus_statement_round_trips_to_the_same_tree() {
    let mut failures = Vec::new();
    for entry in corpus() {
        if let Err(why) = reserialize(entry.sql) {
            failures.push(format!("{}: {}: {why}", entry.file, entry.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_corpus_statement_is_accepted_by_the_analysis() {
    let mut failures = Vec::new();
    for entry in corpus() {
        match analysis::analyze(entry.sql).outcome {
            Outcome::Statements { .. } => {}
            other => failures.push(format!("{}: {}: {other:?}", entry.file, entry.name)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn known_unparsable_statements_still_fail() {
    for (what, sql) in KNOWN_UNPARSABLE {
        assert!(
            analysis::parse(sql).is_err(),
            "{what} now parses: move {sql:?} into the corpus"
        );
    }
}

/// Runs the psql corpus against a live server, original and re-serialized text, and
/// compares the output. Ignored by default (it needs `psql` and a server):
///
/// ```text
/// PORTCULLIS_TEST_PG='host=127.0.0.1 user=postgres dbname=postgres' \
///     cargo test -p portcullis-policy -- --ignored same_rows
/// ```
#[test]
#[ignore = "needs psql and a PostgreSQL server (PORTCULLIS_TEST_PG)"]
fn psql_catalog_queries_return_the_same_rows_when_re_serialized() {
    let Ok(conninfo) = std::env::var("PORTCULLIS_TEST_PG") else {
        panic!("set PORTCULLIS_TEST_PG to a libpq connection string");
    };
    // (success, output); for an error only the ERROR line, since the LINE context
    // quotes the statement text, which differs by design.
    let run = |sql: &str| -> (bool, String) {
        match std::process::Command::new("psql")
            .args([
                "-X",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &conninfo,
                "-c",
                sql,
            ])
            .output()
        {
            Ok(output) if output.status.success() => {
                (true, String::from_utf8_lossy(&output.stdout).into_owned())
            }
            Ok(output) => (
                false,
                String::from_utf8_lossy(&output.stderr)
                    .lines()
                    .filter(|line| line.starts_with("ERROR:"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            Err(error) => panic!("cannot run psql: {error}"),
        }
    };
    let mut failures = Vec::new();
    let mut compared = 0;
    for entry in corpus().iter().filter(|e| e.file == "psql15.sql") {
        let reserialized = match reserialize(entry.sql) {
            Ok(text) => text,
            Err(why) => {
                failures.push(format!("{}: {why}", entry.name));
                continue;
            }
        };
        let original = run(entry.sql);
        let forwarded = run(&reserialized);
        // Entries whose objects do not exist in this database fail; they must fail the
        // same way.
        if original != forwarded {
            failures.push(format!(
                "{}: different results\n--- original\n{}\n--- re-serialized\n{}",
                entry.name, original.1, forwarded.1
            ));
        }
        compared += 1;
    }
    assert!(compared > 0);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
