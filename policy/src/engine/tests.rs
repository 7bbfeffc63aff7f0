use super::*;
use crate::class::StatementClass;
use crate::config::PolicyConfig;
use crate::error::PolicyError;

const POLICY: &str = r#"
max_statement_bytes = 1024
unparsed_passthrough = ["migrator"]

[roles.analyst]
allow = ["read", "session", "transaction"]

[roles.writer]
allow = ["read", "write", "transaction"]

[roles.admin]
allow = ["all"]

[roles.nothing]
allow = []
"#;

fn policy() -> Result<Policy, String> {
    let config: PolicyConfig = toml::from_str(POLICY).map_err(|e| e.to_string())?;
    Policy::compile(&config).map_err(|e: PolicyError| e.to_string())
}

fn who(user: &str, roles: &[&str]) -> Identity {
    Identity::new(user, roles.iter().copied())
}

/// The forwarded SQL of an allowed decision, or the denial message.
fn forwarded(decision: &Decision) -> Result<&str, &str> {
    match decision {
        Decision::Allow { sql, .. } => Ok(sql),
        Decision::Deny(denial) => Err(&denial.message),
    }
}

fn denial(decision: Decision) -> Denial {
    match decision {
        Decision::Deny(denial) => denial,
        allowed => panic!("expected a denial, got {allowed:?}"),
    }
}

#[test]
fn allows_and_forwards_the_re_serialized_text() -> Result<(), String> {
    let (policy, engine) = (policy()?, Engine::new(16));
    let decision = engine.check(
        &policy,
        &who("alice", &["analyst"]),
        "select  *\nfrom t -- c\nwhere a=1",
    );
    assert_eq!(
        decision,
        Decision::Allow {
            sql: Arc::from("SELECT * FROM t WHERE a = 1"),
            classes: ClassSet::only(StatementClass::Read),
            passthrough: false,
        }
    );
    Ok(())
}

#[test]
fn denies_a_class_the_role_lacks_with_a_clear_message() -> Result<(), String> {
    let (policy, engine) = (policy()?, Engine::new(16));
    let denied = denial(engine.check(
        &policy,
        &who("alice", &["analyst"]),
        "INSERT INTO t VALUES (1)",
    ));
    assert_eq!(denied.sqlstate, "42501");
    assert_eq!(
        denied.message,
        "portcullis: permission denied: role(s) \"analyst\" may not run write statements (INSERT); rule: roles.analyst.allow"
    );
    assert_eq!(denied.rule, "roles.analyst.allow");
    Ok(())
}

#[test]
fn messages_name_the_nested_part_that_was_refused() -> Result<(), String> {
    let (policy, engine) = (policy()?, Engine::new(16));
    let alice = who("alice", &["analyst"]);
    let message = |sql: &str| denial(engine.check(&policy, &alice, sql)).message;
    assert!(
        message("EXPLAIN ANALYZE DELETE FROM t")
            .contains("may not run write statements (DELETE in EXPLAIN)"),
        "{}",
        message("EXPLAIN ANALYZE DELETE FROM t")
    );
    assert!(
        message("SELECT pg_read_file('/etc/passwd')")
            .contains("may not run dangerous statements (function pg_read_file in SELECT)")
    );
    assert!(
        message("SET ROLE postgres")
            .contains("may not run dangerous statements (setting role in SET)")
    );
    assert!(
        message("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d")
            .contains("may not run write statements (DELETE in SELECT)")
    );
    assert!(
        message("CREATE TABLE t (a int)").contains("may not run ddl statements (CREATE TABLE)")
    );
    assert!(message("GRANT SELECT ON t TO bob").contains("may not run dcl statements (GRANT)"));
    assert!(message("VACUUM t").contains("may not run utility statements (VACUUM)"));
    assert!(
        message("COPY t TO PROGRAM 'x'")
            .contains("may not run dangerous statements (COPY ... PROGRAM)")
    );
    Ok(())
}

#[test]
fn roles_grant_the_union_of_their_classes() -> Result<(), String> {
    let (policy, engine) = (policy()?, Engine::new(16));
    let both = who("carol", &["analyst", "writer", "unknown-role"]);
    assert!(
        engine
            .check(&policy, &both, "INSERT INTO t VALUES (1)")
            .is_allowed()
    );
    assert!(
        engine
            .check(&policy, &both, "SET search_path TO app")
            .is_allowed()
    );
    let denied = denial(engine.check(&policy, &both, "DROP TABLE t"));
    assert_eq!(
        denied.message,
        "portcullis: permission denied: role(s) \"analyst\", \"writer\" may not run ddl statements (DROP TABLE); rule: roles.analyst.allow, roles.writer.allow"
    );
    assert_eq!(denied.rule, "roles.analyst.allow, roles.writer.allow");
    let admin = who("root", &["admin"]);
    for sql in [
        "DROP TABLE t",
        "SET ROLE postgres",
        "COPY t FROM PROGRAM 'x'",
        "GRANT x TO y",
    ] {
        assert!(engine.check(&policy, &admin, sql).is_allowed(), "{sql}");
    }
    Ok(())
}

#[test]
fn users_without_a_known_role_are_denied_everything() -> Result<(), String> {
    let (policy, engine) = (policy()?, Engine::new(16));
    for identity in [who("mallory", &[]), who("mallory", &["Analyst", "root"])] {
        for sql in ["SELECT 1", "", "BEGIN"] {
            let denied = denial(engine.check(&policy, &identity, sql));
            assert_eq!(denied.sqlstate, "42501");
            assert_eq!(denied.rule, "roles");
            assert!(
                denied.message.contains("user \"mallory\" has no role"),
                "{}",
                denied.message
            );
        }
    }
    // A role that grants nothing denies everything but names itself.
    let nobody = who("nina", &["nothing"]);
    assert_eq!(
        denial(engine.check(&policy, &nobody, "SELECT 1")).rule,
        "roles.nothing.allow"
    );
    // Nothing was parsed for the role-less user.
    assert_eq!(engine.cache_stats(), (0, 1));
    Ok(())
}

#[test]
fn deny_all_denies_everything() {
    let engine = Engine::new(16);
    let policy = Policy::deny_all();
    for sql in ["SELECT 1", "", ";", "BEGIN", "SELEC"] {
        let denied = denial(engine.check(&policy, &who("root", &["admin"]), sql));
        assert_eq!(denied.sqlstate, "42501");
        assert_eq!(denied.rule, "deny_all");
    }
    assert_eq!(engine.cache_stats(), (0, 0));
}

#[test]
fn statements_over_the_size_limit_are_refused_without_parsing() -> Result<(), String> {
    let (policy, engine) = (policy()?, Engine::new(16));
    let alice = who("alice", &["analyst"]);
    let padding = "x".repeat(1024 - "SELECT ''".len());
    let at_limit = format!("SELECT '{padding}'");
    assert_eq!(at_limit.len(), 1024);
    assert!(engine.check(&policy, &alice, &at_limit).is_allowed());
    let over = format!("SELECT '{padding}x'");
    let denied = denial(engine.check(&policy, &alice, &over));
    assert_eq!(denied.sqlstate, "54000");
    assert_eq!(denied.rule, "max_statement_bytes");
    assert!(
        denied.message.contains("statement too large: 1025 bytes"),
        "{}",
        denied.message
    );
    // Only the statement at the limit was analysed; the refused one never reached it.
    assert_eq!(engine.cache_stats(), (0, 1));
    // Also for passthrough users.
    let denied = denial(engine.check(&policy, &who("migrator", &[]), &over));
    assert_eq!(denied.sqlstate, "54000");
    Ok(())
}

#[test]
fn empty_and_comment_only_texts_are_allowed_as_empty_queries() -> Result<(), String> {
    let (policy, engine) = (policy()?, Engine::new(16));
    let alice = who("alice", &["analyst"]);
    for sql in ["", ";", "  ", "-- nothing\n", "/* nothing */ ;"] {
        assert_eq!(
            engine.check(&policy, &alice, sql),
            Decision::Allow {
                sql: Arc::from(""),
                classes: ClassSet::EMPTY,
                passthrough: false,
            },
            "{sql:?}"
        );
    }
    Ok(())
}

#[test]
fn unparsable_statements_are_refused_with_the_parser_error_only() -> Result<(), String> {
    let (policy, engine) = (policy()?, Engine::new(16));
    let alice = who("alice", &["analyst", "admin"]);
    let denied = denial(engine.check(&policy, &alice, "SELEC secret_column FROM secret_table"));
    assert_eq!(denied.sqlstate, "42601");
    assert_eq!(denied.rule, "parse");
    assert!(
        denied
            .message
            .starts_with("portcullis: statement refused because Portcullis could not parse it (sql parser error: "),
        "{}",
        denied.message
    );
    assert!(
        !denied.message.contains("secret_table"),
        "{}",
        denied.message
    );

    let nested = format!("SELECT {}1{}", "(".repeat(10_000), ")".repeat(10_000));
    let denied = denial(
        engine.check(
            &Policy::compile(&PolicyConfig {
                max_statement_bytes: 1 << 20,
                roles: [(
                    "analyst".to_string(),
                    crate::config::RoleConfig {
                        allow: vec![crate::config::ClassGrant::Read],
                    },
                )]
                .into_iter()
                .collect(),
                ..PolicyConfig::default()
            })
            .map_err(|e| e.to_string())?,
            &alice,
            &nested,
        ),
    );
    assert_eq!(denied.sqlstate, "42601");
    assert!(
        denied.message.contains("recursion limit exceeded"),
        "{}",
        denied.message
    );
    Ok(())
}

#[test]
fn too_complex_statements_get_54001() -> Result<(), String> {
    let (policy, engine) = (policy()?, Engine::new(16));
    let chain = format!("SELECT 1{}", " + 1".repeat(250));
    let denied = denial(engine.check(&policy, &who("alice", &["analyst"]), &chain));
    assert_eq!(denied.sqlstate, "54001");
    assert!(
        denied.message.contains("nested more than 200 deep"),
        "{}",
        denied.message
    );
    Ok(())
}

#[test]
fn passthrough_users_forward_unparsable_text_verbatim() -> Result<(), String> {
    let (policy, engine) = (policy()?, Engine::new(16));
    let migrator = who("migrator", &[]);
    let text = "DO $$BEGIN PERFORM 1; END$$";
    assert_eq!(
        engine.check(&policy, &migrator, text),
        Decision::Allow {
            sql: Arc::from(text),
            classes: ClassSet::EMPTY,
            passthrough: true,
        }
    );
    let copy_with_data = "COPY t FROM STDIN;\n1\n\\.\n";
    assert!(matches!(
        engine.check(&policy, &migrator, copy_with_data),
        Decision::Allow {
            passthrough: true,
            ..
        }
    ));
    // Parseable statements are checked as usual: the migrator has no role.
    assert_eq!(
        denial(engine.check(&policy, &migrator, "SELECT 1")).rule,
        "roles"
    );
    // With a role, parseable statements follow the role.
    let with_role = who("migrator", &["writer"]);
    assert!(matches!(
        engine.check(&policy, &with_role, "INSERT INTO t VALUES (1)"),
        Decision::Allow {
            passthrough: false,
            ..
        }
    ));
    assert_eq!(
        denial(engine.check(&policy, &with_role, "DROP TABLE t")).sqlstate,
        "42501"
    );
    // Other users are not passthrough users.
    assert_eq!(
        denial(engine.check(&policy, &who("alice", &["admin"]), text)).sqlstate,
        "42601"
    );
    Ok(())
}

#[test]
fn a_multi_statement_text_is_decided_as_a_whole() -> Result<(), String> {
    let (policy, engine) = (policy()?, Engine::new(16));
    let alice = who("alice", &["analyst"]);
    assert_eq!(
        forwarded(&engine.check(&policy, &alice, "begin; select 1 ;select 2; commit;")),
        Ok("BEGIN; SELECT 1; SELECT 2; COMMIT")
    );
    let denied = denial(engine.check(&policy, &alice, "SELECT 1; DELETE FROM t; SELECT 2"));
    assert!(denied.message.contains("(DELETE)"), "{}", denied.message);
    match engine.check(
        &policy,
        &who("w", &["writer"]),
        "BEGIN; UPDATE t SET a = 1; COMMIT",
    ) {
        Decision::Allow { classes, .. } => assert_eq!(
            classes,
            [StatementClass::Transaction, StatementClass::Write]
                .into_iter()
                .collect()
        ),
        denied => panic!("{denied:?}"),
    }
    Ok(())
}

#[test]
fn a_repeated_statement_is_a_cache_hit() -> Result<(), String> {
    let (policy, engine) = (policy()?, Engine::new(16));
    let sql = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";
    let first = engine.check(&policy, &who("alice", &["analyst"]), sql);
    assert_eq!(engine.cache_stats(), (0, 1));
    let second = engine.check(&policy, &who("alice", &["analyst"]), sql);
    assert_eq!(engine.cache_stats(), (1, 1));
    assert_eq!(first, second);
    // The analysis is shared across identities; the decision is not.
    assert!(
        !engine
            .check(&policy, &who("nina", &["nothing"]), sql)
            .is_allowed()
    );
    assert_eq!(engine.cache_stats(), (2, 1));
    // Parse errors are cached too.
    let _ = engine.check(&policy, &who("alice", &["analyst"]), "SELEC 1");
    let _ = engine.check(&policy, &who("alice", &["analyst"]), "SELEC 1");
    assert_eq!(engine.cache_stats(), (3, 2));
    assert_eq!(engine.cache_len(), 2);
    // The forwarded text is shared, not copied, between decisions.
    if let (Decision::Allow { sql: a, .. }, Decision::Allow { sql: b, .. }) = (&first, &second) {
        assert!(Arc::ptr_eq(a, b));
    }
    Ok(())
}

#[test]
fn the_cache_is_bounded_in_entries_and_bytes() -> Result<(), String> {
    let policy = policy()?;
    let alice = who("alice", &["analyst"]);
    let engine = Engine::new(2);
    for n in 0..10 {
        let _ = engine.check(&policy, &alice, &format!("SELECT {n}"));
    }
    assert_eq!(engine.cache_len(), 2);
    // The least recently used entries went first.
    let _ = engine.check(&policy, &alice, "SELECT 9");
    assert_eq!(engine.cache_stats(), (1, 10));

    let small = Engine::with_limits(1000, 4096);
    for n in 0..100 {
        let _ = small.check(&policy, &alice, &format!("SELECT {n} + {n}"));
    }
    let held = small.cache.lock().bytes;
    assert!(held <= 4096, "{held}");
    assert!(small.cache_len() < 100);
    // An analysis larger than the whole budget is decided but not cached.
    let big = format!("SELECT '{}'", "b".repeat(900));
    assert!(small.check(&policy, &alice, &big).is_allowed());
    assert!(small.check(&policy, &alice, &big).is_allowed());
    assert!(small.cache.lock().bytes <= 4096);
    assert_eq!(Engine::new(0).cache.lock().entries.cap().get(), 1);
    Ok(())
}

#[test]
fn the_engine_is_shareable_between_sessions() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Engine>();
    shareable::<Policy>();
    shareable::<Decision>();
}

#[test]
fn no_input_makes_it_panic() -> Result<(), String> {
    let policy = policy()?;
    let engine = Engine::new(64);
    let identities = [
        who("root", &["admin"]),
        who("migrator", &[]),
        who("alice", &["analyst"]),
    ];
    let fragments = [
        "SELECT",
        "'",
        "\"",
        "$$",
        "$1",
        "$a$",
        "E'\\",
        "(",
        ")",
        "[",
        "]",
        "::",
        ";",
        "--",
        "/*",
        "*/",
        "\0",
        "\r",
        "\n",
        "é",
        "\u{feff}",
        "COPY",
        "FROM",
        "STDIN",
        "\\.",
        "WITH",
        "x",
        "1",
        "+",
        "OPERATOR(",
        "ARRAY[",
        "U&'",
        "B'",
        "X'",
        "N'",
        "{",
        "}",
        ",",
        "INSERT",
        "SET",
        "ROLE",
    ];
    // A small deterministic generator: the point is coverage of odd combinations.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..3_000 {
        let mut sql = String::new();
        for _ in 0..(state % 12) {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let index = usize::try_from(state >> 33).unwrap_or(0) % fragments.len();
            sql.push_str(fragments[index]);
            if state & 1 == 0 {
                sql.push(' ');
            }
        }
        for identity in &identities {
            let _ = engine.check(&policy, identity, &sql);
        }
    }
    Ok(())
}
