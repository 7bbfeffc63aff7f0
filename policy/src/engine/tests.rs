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
            rewritten: false,
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
                rewritten: false,
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
            rewritten: false,
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
        let _ = engine.check(&policy, &alice, &format!("SELECT c{n}"));
    }
    assert_eq!(engine.cache_len(), 2);
    // The least recently used entries went first.
    let _ = engine.check(&policy, &alice, "SELECT c9");
    assert_eq!(engine.cache_stats(), (1, 10));

    let small = Engine::with_limits(1000, 4096);
    for n in 0..100 {
        let _ = small.check(&policy, &alice, &format!("SELECT c{n} + c{n}"));
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

// ---- the shape cache

const PGBENCH_TPCB: &[&str] = &[
    "UPDATE pgbench_accounts SET abalance = abalance + {n} WHERE aid = {i};",
    "SELECT abalance FROM pgbench_accounts WHERE aid = {i};",
    "UPDATE pgbench_tellers SET tbalance = tbalance + {n} WHERE tid = {i};",
    "UPDATE pgbench_branches SET bbalance = bbalance + {i} WHERE bid = {i};",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ({i}, {i}, {i}, {n}, CURRENT_TIMESTAMP);",
];

/// Shapes for the fast-path/slow-path comparison: `{i}` an integer, `{d}` a decimal,
/// `{n}` a negative integer, `{s}` a string (quotes, unicode, `$`, `--` inside).
const SHAPES: &[&str] = &[
    "SELECT id, name FROM users WHERE email = {s} AND tenant_id = {i} LIMIT {i}",
    "INSERT INTO users (name, email, score) VALUES ({s}, {s}, {d}) RETURNING id",
    "UPDATE users SET name = {s}, score = score * {d} WHERE id IN ({i}, {i}, {i})",
    "DELETE FROM sessions WHERE user_id = {i} AND token = {s}",
    "SELECT a, count(*) FROM t WHERE b > {d} GROUP BY {i} ORDER BY {i} DESC",
    "select * from orders o join users u on u.id = o.user_id where o.total between {d} and {d} order by o.id limit {i} offset {i}",
    "SELECT CASE WHEN x = {i} THEN {s} ELSE {s} END FROM t",
    "WITH d AS (DELETE FROM q WHERE id = {i} RETURNING *) SELECT * FROM d",
    "SELECT nextval({s})",
    "SELECT \"Weird\"\"Col\", \"$x\", \"it's\" FROM \"T1\" WHERE \"c3\" = {s}",
    "SELECT * FROM t WHERE a = {i} FOR UPDATE",
    "BEGIN; UPDATE t SET a = {i} WHERE id = {i}; COMMIT",
    "SELECT a::numeric(10,2) FROM t WHERE b = {i}",
    "SELECT * FROM t WHERE name LIKE {s}",
    "SELECT x[{i}], y -> {s}, z ->> {s} FROM t WHERE w @> {s}",
    "SELECT a FROM t WHERE b = {s}::jsonb AND c = ANY(ARRAY[{i}, {i}])",
    "SELECT 1; SELECT {i}",
    "INSERT INTO t (a) VALUES ({i}) ON CONFLICT (a) DO UPDATE SET b = {s}",
    "SELECT a FROM t WHERE (b, c) = ({i}, {s}) AND d <> {d} AND e = -{d}",
    "SELECT set_config('search_path', {s}, false)",
];

/// A small deterministic generator (xorshift64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % (n as u64)).unwrap_or(0)
    }

    fn integer(&mut self) -> String {
        let digits = 1 + self.below(12);
        let mut text = (1 + self.below(9)).to_string();
        for _ in 1..digits {
            text.push_str(&self.below(10).to_string());
        }
        text
    }

    fn decimal(&mut self) -> String {
        let (a, b) = (self.below(1000), self.below(100));
        match self.below(5) {
            0 => format!("{a}.{b}"),
            1 => format!(".{b}"),
            2 => format!("{a}."),
            3 => format!("{a}e{b}"),
            _ => format!("{a}.{b}E-{}", self.below(9)),
        }
    }

    fn string(&mut self) -> String {
        const PIECES: &[&str] = &[
            "a", "Z", "0", " ", "''", "é", "☃", "日本", "\n", "\"", "%", "_", "$", "$1", "--",
            "/*", ";", "\\", "x''y",
        ];
        let mut text = String::from("'");
        for _ in 0..self.below(6) {
            text.push_str(PIECES[self.below(PIECES.len())]);
        }
        text.push('\'');
        text
    }

    fn instance(&mut self, shape: &str) -> String {
        let mut text = String::new();
        let mut rest = shape;
        while let Some(start) = rest.find('{') {
            text.push_str(&rest[..start]);
            let literal = match &rest[start..start + 3] {
                "{i}" => self.integer(),
                "{d}" => self.decimal(),
                "{n}" => format!("-{}", self.integer()),
                _ => self.string(),
            };
            text.push_str(&literal);
            rest = &rest[start + 3..];
        }
        text.push_str(rest);
        text
    }
}

fn identities() -> Vec<Identity> {
    vec![
        who("alice", &["analyst"]),
        who("wendy", &["writer"]),
        who("root", &["admin"]),
        who("nina", &["nothing"]),
        who("migrator", &["writer"]),
    ]
}

#[test]
fn pgbench_statements_are_decided_from_their_shape_from_the_second_literal_on() -> Result<(), String>
{
    let (policy, engine) = (policy()?, Engine::new(64));
    let writer = who("w", &["writer"]);
    let mut rng = Rng(7);
    for (index, shape) in PGBENCH_TPCB.iter().enumerate() {
        let done = index as u64;
        // The first text is analysed and remembered as the shape's sighting.
        let first = rng.instance(shape);
        let decision = engine.check(&policy, &writer, &first);
        assert!(decision.is_allowed(), "{first}: {decision:?}");
        assert_eq!(engine.shape_cache_stats(), (3 * done, 2 * done + 1));
        // The second has the shape's key analysed, proving the template, and is decided
        // from it: the same decision and text as its own full analysis.
        let second = rng.instance(shape);
        assert_ne!(first, second);
        let learnt = engine.check(&policy, &writer, &second);
        assert_eq!(
            learnt,
            Engine::new(4).check(&policy, &writer, &second),
            "{second}"
        );
        assert_eq!(engine.shape_cache_stats(), (3 * done, 2 * done + 2));
        // From then on texts of the shape are hits, with no analysis at all.
        for _ in 0..3 {
            let next = rng.instance(shape);
            let fast = engine.check(&policy, &writer, &next);
            assert_eq!(
                fast,
                Engine::new(4).check(&policy, &writer, &next),
                "{next}"
            );
        }
        assert_eq!(engine.shape_cache_stats(), (3 * done + 3, 2 * done + 2));
    }
    assert_eq!(engine.shape_cache_len(), PGBENCH_TPCB.len());
    // Only the first text of each shape reached the exact-text cache.
    assert_eq!(engine.cache_len(), PGBENCH_TPCB.len());
    assert_eq!(engine.cache_stats(), (15, 10));
    // The forwarded text carries the client's literals, as the full analysis prints it.
    assert_eq!(
        forwarded(&engine.check(
            &policy,
            &writer,
            "UPDATE pgbench_accounts SET abalance = abalance + -4711 WHERE aid = 12345;"
        )),
        Ok("UPDATE pgbench_accounts SET abalance = abalance + -4711 WHERE aid = 12345")
    );
    assert_eq!(engine.shape_cache_stats().0, 16);
    Ok(())
}

/// The property the whole shape cache rests on: for every text, the decision (allow or
/// deny, classes, message, rule) and the forwarded text from the shared engine's fast
/// path are exactly those of a fresh engine's full analysis.
#[test]
fn the_fast_path_decides_and_forwards_exactly_like_the_slow_path() -> Result<(), String> {
    let policy = policy()?;
    let identities = identities();
    let engine = Engine::new(4096);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let shapes: Vec<&str> = PGBENCH_TPCB.iter().chain(SHAPES).copied().collect();
    let mut allowed = 0;
    let mut denied = 0;
    for round in 0..2_000 {
        let shape = shapes[round % shapes.len()];
        let text = rng.instance(shape);
        let fresh = Engine::new(4);
        for identity in &identities {
            let fast = engine.check(&policy, identity, &text);
            let slow = fresh.check(&policy, identity, &text);
            assert_eq!(fast, slow, "{text:?} for {identity:?}");
            if fast.is_allowed() {
                allowed += 1;
            } else {
                denied += 1;
            }
        }
    }
    let (shape_hits, _) = engine.shape_cache_stats();
    // Most texts of most shapes are served from templates (the rest have no shape, or
    // a shape that cannot have a template).
    assert!(shape_hits > 1_000 * identities.len() as u64, "{shape_hits}");
    assert!(allowed > 1_000 && denied > 1_000, "{allowed} {denied}");
    Ok(())
}

/// Whether a second text of the same shape as `first` was decided from the shape cache.
/// Whether a template was ever learnt or used for the shape of `first` and `second`,
/// each sent twice (and each decided exactly as a fresh engine decides it).
fn served_from_shape(policy: &Policy, identity: &Identity, first: &str, second: &str) -> bool {
    let engine = Engine::new(16);
    for text in [first, second, first, second] {
        let decision = engine.check(policy, identity, text);
        assert_eq!(
            decision,
            Engine::new(4).check(policy, identity, text),
            "{text}"
        );
        // A repeated text would be answered by the exact-text cache: forget it.
        let mut cache = engine.cache.lock();
        cache.entries.clear();
        cache.bytes = 0;
    }
    let learnt = engine
        .shapes
        .lock()
        .entries
        .iter()
        .any(|(_, entry)| matches!(entry, ShapeEntry::Template(_)));
    learnt || engine.shape_cache_stats().0 > 0
}

#[test]
fn literal_sensitive_and_unusual_statements_never_take_the_shape_path() -> Result<(), String> {
    let policy = policy()?;
    let root = who("root", &["admin"]);
    for (first, second) in [
        ("SELECT DATE '2020-01-01'", "SELECT DATE '2021-01-01'"),
        (
            "SELECT a FROM t WHERE d > interval '1 day' AND b = 1",
            "SELECT a FROM t WHERE d > interval '2 days' AND b = 2",
        ),
        ("SELECT timestamp 'x', 1", "SELECT timestamp 'y', 2"),
        ("SELECT 1 -- one", "SELECT 2 -- two"),
        ("SELECT /* c */ 1", "SELECT /* c */ 2"),
        (
            "SELECT a FROM t WHERE b = E'x\\n'",
            "SELECT a FROM t WHERE b = E'y\\n'",
        ),
        ("SET statement_timeout = 1", "SET statement_timeout = 2"),
        (
            "SET client_encoding = 'UTF8'",
            "SET client_encoding = 'SJIS'",
        ),
        (
            "SELECT set_config('search_path','x',false)",
            "SELECT set_config('role','x',false)",
        ),
        (
            "SELECT * FROM t WHERE a = set_config('search_path', 'x', false)",
            "SELECT * FROM t WHERE a = set_config('session_authorization', 'x', false)",
        ),
        ("COPY (SELECT 1) TO STDOUT", "COPY (SELECT 2) TO STDOUT"),
        ("COPY t TO '/tmp/a'", "COPY t TO '/tmp/b'"),
        ("SELECT $$a$$, 1", "SELECT $$b$$, 2"),
        ("SELECT $1, 1", "SELECT $1, 2"),
        ("EXPLAIN SELECT 1", "EXPLAIN SELECT 2"),
        ("PREPARE p AS SELECT 1", "PREPARE p AS SELECT 2"),
        ("CALL p(1)", "CALL p(2)"),
        ("BEGIN; SELECT 1", "BEGIN; SELECT 2"),
        ("FETCH 10 FROM c", "FETCH 20 FROM c"),
    ] {
        assert!(
            !served_from_shape(&policy, &root, first, second),
            "{second} was served from the shape cache"
        );
    }
    // The role change is refused although a harmless set_config of the same shape came
    // first.
    let alice = who("alice", &["analyst"]);
    let engine = Engine::new(16);
    assert!(
        engine
            .check(
                &policy,
                &alice,
                "SELECT set_config('search_path','x',false)"
            )
            .is_allowed()
    );
    let denied = denial(engine.check(&policy, &alice, "SELECT set_config('role','x',false)"));
    assert!(
        denied.message.contains("setting role"),
        "{}",
        denied.message
    );
    Ok(())
}

#[test]
fn ordinal_order_and_group_by_keep_their_literals() -> Result<(), String> {
    let (policy, engine) = (policy()?, Engine::new(16));
    let alice = who("alice", &["analyst"]);
    let _ = engine.check(
        &policy,
        &alice,
        "SELECT a, b FROM t GROUP BY 1, 2 ORDER BY 2",
    );
    let _ = engine.check(
        &policy,
        &alice,
        "SELECT a, b FROM t GROUP BY 1, 1 ORDER BY 1",
    );
    let decision = engine.check(
        &policy,
        &alice,
        "SELECT a, b FROM t GROUP BY 2, 1 ORDER BY 1",
    );
    assert_eq!(engine.shape_cache_stats(), (1, 2));
    assert_eq!(
        forwarded(&decision),
        Ok("SELECT a, b FROM t GROUP BY 2, 1 ORDER BY 1")
    );
    assert_eq!(
        decision,
        Engine::new(4).check(
            &policy,
            &alice,
            "SELECT a, b FROM t GROUP BY 2, 1 ORDER BY 1"
        )
    );
    Ok(())
}

#[test]
fn a_structural_denial_is_served_from_the_shape_cache() -> Result<(), String> {
    let (policy, engine) = (policy()?, Engine::new(16));
    let alice = who("alice", &["analyst"]);
    let first = denial(engine.check(&policy, &alice, "DELETE FROM t WHERE id = 1"));
    let _ = engine.check(&policy, &alice, "DELETE FROM t WHERE id = 2");
    let second = denial(engine.check(&policy, &alice, "DELETE FROM t WHERE id = 3"));
    assert_eq!(engine.shape_cache_stats(), (1, 2));
    assert_eq!(first, second);
    assert_eq!(
        second.message,
        "portcullis: permission denied: role(s) \"analyst\" may not run write statements (DELETE); rule: roles.analyst.allow"
    );
    // The same template allows the writer.
    assert_eq!(
        forwarded(&engine.check(
            &policy,
            &who("w", &["writer"]),
            "DELETE FROM t WHERE id = 4"
        )),
        Ok("DELETE FROM t WHERE id = 4")
    );
    assert_eq!(engine.shape_cache_stats(), (2, 2));
    Ok(())
}

#[test]
fn limits_and_identity_checks_come_before_the_shape_cache() -> Result<(), String> {
    let (policy, engine) = (policy()?, Engine::new(16));
    let alice = who("alice", &["analyst"]);
    let _ = engine.check(&policy, &alice, "SELECT a FROM t WHERE b = 'x'");
    let _ = engine.check(&policy, &alice, "SELECT a FROM t WHERE b = 'y'");
    let long = format!("SELECT a FROM t WHERE b = '{}'", "y".repeat(1024));
    assert_eq!(
        denial(engine.check(&policy, &alice, &long)).sqlstate,
        "54000"
    );
    assert_eq!(
        denial(engine.check(
            &policy,
            &who("mallory", &[]),
            "SELECT a FROM t WHERE b = 'z'"
        ))
        .rule,
        "roles"
    );
    assert_eq!(
        denial(engine.check(&Policy::deny_all(), &alice, "SELECT a FROM t WHERE b = 'z'")).rule,
        "deny_all"
    );
    assert_eq!(engine.shape_cache_stats(), (0, 2));
    assert_eq!(engine.cache_stats(), (0, 2));
    // A passthrough user without a role gets its texts analysed (to forward what does
    // not parse), and then refused for having no role, from the template as without.
    let migrator = who("migrator", &[]);
    let text = "SELECT a FROM t WHERE b = 'z'";
    assert_eq!(denial(engine.check(&policy, &migrator, text)).rule, "roles");
    assert_eq!(engine.shape_cache_stats(), (1, 2));
    assert_eq!(
        engine.check(&policy, &migrator, text),
        Engine::new(4).check(&policy, &migrator, text)
    );
    Ok(())
}

#[test]
fn shapes_that_cannot_have_a_template_are_not_retried() -> Result<(), String> {
    let (policy, engine) = (policy()?, Engine::new(16));
    let alice = who("alice", &["analyst"]);
    for n in 0..5 {
        let sql = format!("SELECT a::numeric(10,2) FROM t WHERE b = {n}");
        assert!(engine.check(&policy, &alice, &sql).is_allowed());
    }
    assert_eq!(engine.shape_cache_len(), 1);
    assert_eq!(engine.shape_cache_stats(), (0, 5));
    // The second text had the key analysed (it does not parse: `numeric($1,$2)`), then
    // itself; the key is never analysed again.
    assert_eq!(engine.cache_stats(), (0, 5));
    assert!(matches!(
        engine.shapes.lock().entries.iter().next(),
        Some((_, ShapeEntry::Rejected { .. }))
    ));
    Ok(())
}

#[test]
fn the_shape_cache_is_bounded_in_entries_and_bytes() -> Result<(), String> {
    let policy = policy()?;
    let alice = who("alice", &["analyst"]);
    let engine = Engine::new(2);
    for n in 0..10 {
        let _ = engine.check(&policy, &alice, &format!("SELECT c{n} FROM t WHERE a = 1"));
    }
    assert_eq!(engine.shape_cache_len(), 2);
    let small = Engine::with_limits(1000, 4096);
    for n in 0..100 {
        let _ = small.check(&policy, &alice, &format!("SELECT c{n} FROM t WHERE a = 1"));
    }
    assert!(small.shapes.lock().bytes <= 4096);
    assert!(small.shape_cache_len() < 100);
    Ok(())
}

/// Random statements with literals in many syntactic positions (some where a parameter
/// is not accepted, or means something else), each sent with several literal values:
/// every text must be decided and forwarded exactly as a fresh engine's full analysis
/// does, whether or not its shape has a template.
#[test]
fn literals_in_odd_places_never_make_the_fast_path_differ() -> Result<(), String> {
    /// A generator of statement skeletons; `#` marks a literal slot.
    struct Grammar<'r>(&'r mut Rng);

    impl Grammar<'_> {
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.0.below(items.len())]
        }

        fn expr(&mut self, depth: usize) -> String {
            if depth == 0 {
                return self
                    .pick(&["#", "a", "t.b", "\"C\"", "#", "-#"])
                    .to_string();
            }
            let d = depth - 1;
            match self.0.below(30) {
                0 => format!(
                    "{} {} {}",
                    self.expr(d),
                    self.pick(&[
                        "+", "-", "*", "/", "%", "^", "||", "=", "<>", "<", ">=", "->", "->>",
                        "@>", "&", "|", "#", "<<"
                    ]),
                    self.expr(d)
                ),
                1 => format!("({})", self.expr(d)),
                2 => format!("-{}", self.expr(d)),
                3 => format!(
                    "{}({})",
                    self.pick(&[
                        "f",
                        "abs",
                        "coalesce",
                        "lower",
                        "nextval",
                        "length",
                        "round",
                        "generate_series"
                    ]),
                    self.expr(d)
                ),
                4 => format!(
                    "{}::{}",
                    self.expr(d),
                    self.pick(&[
                        "int",
                        "text",
                        "numeric(#, #)",
                        "varchar(#)",
                        "int[]",
                        "jsonb",
                        "bit(#)",
                        "interval"
                    ])
                ),
                5 => format!(
                    "CASE WHEN {} THEN {} ELSE {} END",
                    self.expr(d),
                    self.expr(d),
                    self.expr(d)
                ),
                6 => format!("{} IN (#, #, {})", self.expr(d), self.expr(d)),
                7 => format!(
                    "{} BETWEEN {} AND {}",
                    self.expr(d),
                    self.expr(d),
                    self.expr(d)
                ),
                8 => format!("ARRAY[{}, #]", self.expr(d)),
                9 => format!("{}[#]", self.expr(d)),
                10 => format!("{}[#:#]", self.expr(d)),
                11 => format!("{} IS NOT NULL", self.expr(d)),
                12 => format!("NOT {}", self.expr(d)),
                13 => format!("EXISTS (SELECT # FROM u WHERE x = {})", self.expr(d)),
                14 => format!("{} LIKE #", self.expr(d)),
                15 => "INTERVAL #".to_string(),
                16 => format!("ROW(#, {})", self.expr(d)),
                17 => format!("(#, {}) = (#, #)", self.expr(d)),
                18 => format!("{} AT TIME ZONE #", self.expr(d)),
                19 => format!("SUBSTRING({} FROM # FOR #)", self.expr(d)),
                20 => format!("POSITION(# IN {})", self.expr(d)),
                21 => format!("EXTRACT(YEAR FROM {})", self.expr(d)),
                22 => format!("TRIM(BOTH # FROM {})", self.expr(d)),
                23 => format!("{} COLLATE \"C\"", self.expr(d)),
                24 => format!("count(*) FILTER (WHERE {})", self.expr(d)),
                25 => format!("sum({}) OVER (ORDER BY # ROWS # PRECEDING)", self.expr(d)),
                26 => format!("{} IS DISTINCT FROM {}", self.expr(d), self.expr(d)),
                27 => format!("set_config(#, {}, false)", self.expr(d)),
                28 => format!("{} = ANY(#)", self.expr(d)),
                _ => format!(
                    "{} {} {}",
                    self.expr(d),
                    self.pick(&["AND", "OR"]),
                    self.expr(d)
                ),
            }
        }

        fn statement(&mut self) -> String {
            let e = |g: &mut Self| g.expr(2);
            match self.0.below(12) {
                0..=3 => {
                    let mut sql =
                        format!("SELECT {}, {} FROM t WHERE {}", e(self), e(self), e(self));
                    for clause in [
                        " GROUP BY #",
                        " ORDER BY #",
                        " LIMIT #",
                        " OFFSET #",
                        " FETCH FIRST # ROWS ONLY",
                        " FOR UPDATE",
                    ] {
                        if self.0.below(3) == 0 {
                            sql.push_str(clause);
                        }
                    }
                    sql
                }
                4 => format!(
                    "SELECT DISTINCT ON (#) a FROM t TABLESAMPLE BERNOULLI (#) WHERE {}",
                    e(self)
                ),
                5 => format!(
                    "INSERT INTO t (a, b) VALUES (#, {}), ({}, #) RETURNING {}",
                    e(self),
                    e(self),
                    e(self)
                ),
                6 => format!("UPDATE t SET a = {}, b = # WHERE {}", e(self), e(self)),
                7 => format!("DELETE FROM t WHERE {}", e(self)),
                8 => format!("WITH w AS (SELECT # AS x) SELECT {} FROM w", e(self)),
                9 => format!("VALUES (#, {})", e(self)),
                10 => format!("SELECT {} ; SELECT #", e(self)),
                _ => format!(
                    "{} {}",
                    self.pick(&[
                        "SET x =",
                        "EXPLAIN SELECT",
                        "COPY (SELECT #) TO STDOUT; SELECT",
                        "PREPARE p AS SELECT",
                        "SET LOCAL statement_timeout ="
                    ]),
                    e(self)
                ),
            }
        }
    }

    let policy = policy()?;
    let identities = identities();
    let engine = Engine::new(4096);
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let mut generated = Vec::new();
    for _ in 0..2_000 {
        generated.push(Grammar(&mut rng).statement());
    }
    for skeleton in &generated {
        // Kinds per slot: fixed for most instances (so templates get learnt and used),
        // sometimes changed.
        let slots = skeleton.matches('#').count();
        let kinds: Vec<usize> = (0..slots).map(|_| rng.below(4)).collect();
        for round in 0..6 {
            let mut text = String::new();
            for (slot, piece) in skeleton.split('#').enumerate() {
                if slot > 0 {
                    let kind = if round == 5 {
                        rng.below(4)
                    } else {
                        kinds[slot - 1]
                    };
                    text.push_str(&match kind {
                        0 => rng.integer(),
                        1 => rng.decimal(),
                        2 => rng.string(),
                        _ => format!("{}", rng.below(10)),
                    });
                }
                text.push_str(piece);
            }
            let identity = &identities[rng.below(identities.len())];
            let fast = engine.check(&policy, identity, &text);
            let slow = Engine::new(4).check(&policy, identity, &text);
            assert_eq!(fast, slow, "{text}");
        }
    }
    let (shape_hits, _) = engine.shape_cache_stats();
    assert!(shape_hits > 1_000, "{shape_hits}");
    Ok(())
}
