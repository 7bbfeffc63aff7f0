//! The quickstart policy directory against a catalog of the quickstart schema: what
//! each demo user may run, and the text forwarded for it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

mod fixtures;

use portcullis_policy::catalog::{Relation, RelationKind};
use portcullis_policy::governance::Governance;
use portcullis_policy::{Catalog, Decision, Engine, Identity, Policy, PolicyConfig};

fn catalog() -> Arc<Catalog> {
    let catalog = fixtures::quickstart_catalog()
        .with_relation(Relation {
            schema: "pg_catalog".into(),
            name: "pg_stats".into(),
            kind: RelationKind::View,
            columns: vec![],
        })
        .with_relation(Relation {
            schema: "pg_catalog".into(),
            name: "pg_class".into(),
            kind: RelationKind::Table,
            columns: vec![],
        });
    let catalog = [
        "count",
        "lower",
        "max",
        "now",
        "row_to_json",
        "query_to_xml",
        "sum",
        "length",
    ]
    .iter()
    .fold(catalog, |catalog, f| catalog.with_function("pg_catalog", f));
    Arc::new(catalog)
}

fn policy() -> Policy {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart");
    let governance = Governance::load(&dir).unwrap_or_else(|e| panic!("{e}"));
    let config: PolicyConfig = toml::from_str(
        r#"
        [roles.dba]
        allow = ["all"]
        [roles.analyst]
        allow = ["read", "session", "transaction"]
        [roles.support]
        allow = ["read", "write", "session", "transaction"]
        "#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    Policy::compile_governed(&config, governance).unwrap_or_else(|e| panic!("{e}"))
}

fn support() -> Identity {
    let mut identity = Identity::new("support_acme", ["support"]);
    identity.attributes.insert("tenant".into(), "1".into());
    identity
}

fn forwarded(decision: &Decision) -> String {
    match decision {
        Decision::Allow { sql, .. } => sql.to_string(),
        Decision::Deny(denial) => panic!("denied: {denial}"),
    }
}

#[test]
fn admin_statements_pass_unchanged() {
    let (engine, policy, catalog) = (Engine::default(), policy(), catalog());
    let admin = Identity::new("admin", ["dba"]);
    let decision = engine.decide(
        &policy,
        &catalog,
        &admin,
        "select ssn from customers where id = 1",
    );
    assert_eq!(
        forwarded(&decision),
        "SELECT ssn FROM customers WHERE id = 1"
    );
    assert!(matches!(
        decision,
        Decision::Allow {
            rewritten: false,
            ..
        }
    ));
}

#[test]
fn analyst_reads_through_masks() {
    let (engine, policy, catalog) = (Engine::default(), policy(), catalog());
    let analyst = Identity::new("analyst", ["analyst"]);
    let sql =
        forwarded(&engine.decide(&policy, &catalog, &analyst, "SELECT c.ssn FROM customers c"));
    assert!(
        sql.starts_with(
            "SELECT c.ssn FROM (SELECT \"id\", \"tenant_id\", \"name\", CAST(CASE WHEN \"email\""
        ),
        "{sql}"
    );
    assert!(
        sql.contains("CAST(lpad(right(\"ssn\", 4), length(\"ssn\"), '*') AS TEXT) AS \"ssn\""),
        "{sql}"
    );
    assert!(
        sql.contains("date_trunc('year', \"birth_date\") AS DATE) AS \"birth_date\""),
        "{sql}"
    );
    assert!(sql.ends_with("FROM \"public\".\"customers\") c"), "{sql}");
    // Unqualified, quoted, schema-qualified, TABLE, CTE, subquery: all substituted.
    for text in [
        "SELECT * FROM customers",
        "SELECT * FROM \"customers\"",
        "SELECT * FROM public.customers",
        "WITH x AS (SELECT * FROM customers) SELECT * FROM x",
        "WITH customers AS (SELECT * FROM customers) SELECT * FROM customers",
        "SELECT (SELECT max(ssn) FROM customers)",
        "SELECT * FROM orders o, LATERAL (SELECT ssn FROM customers c WHERE c.id = o.customer_id) l",
        "SELECT ssn FROM customers UNION SELECT 'x'",
        "SELECT row_to_json(c) FROM customers c",
        "TABLE customers",
        "TABLE public.customers;",
        "SELECT 1 AS id UNION TABLE customers",
    ] {
        let sql = forwarded(&engine.decide(&policy, &catalog, &analyst, text));
        assert!(sql.contains("right(\"ssn\", 4)"), "{text} -> {sql}");
        // Only the CTE of the same name may still be read by its bare name.
        let bare = sql.contains("FROM customers") && !text.starts_with("WITH customers");
        assert!(
            !bare && !sql.contains("FROM public.customers"),
            "{text} -> {sql}"
        );
    }
    // Writes and unknown relations are refused.
    for text in [
        "DELETE FROM customers",
        "UPDATE orders SET total = 0",
        "SELECT * FROM secrets",
        "SELECT * FROM pg_stats",
    ] {
        let decision = engine.decide(&policy, &catalog, &analyst, text);
        assert_eq!(
            decision.denial().map(|d| d.sqlstate),
            Some("42501"),
            "{text}"
        );
    }
    // The system catalog stays readable.
    assert_eq!(
        forwarded(&engine.decide(&policy, &catalog, &analyst, "SELECT count(*) FROM pg_class")),
        "SELECT count(*) FROM pg_class"
    );
}

#[test]
fn support_sees_its_tenant_and_cannot_leave_it() {
    let (engine, policy, catalog) = (Engine::default(), policy(), catalog());
    let support = support();
    let sql = forwarded(&engine.decide(
        &policy,
        &catalog,
        &support,
        "SELECT email, ssn FROM customers WHERE id = $1",
    ));
    assert!(
        sql.contains("WHERE (tenant_id = '1')) AS customers WHERE id = $1"),
        "{sql}"
    );
    assert!(sql.contains("CAST(NULL AS TEXT) AS \"ssn\""), "{sql}");
    assert!(sql.contains(", \"email\", "), "email in clear: {sql}");

    let sql = forwarded(&engine.decide(
        &policy,
        &catalog,
        &support,
        "UPDATE customers SET name = $1 WHERE id = $2",
    ));
    assert_eq!(
        sql,
        "UPDATE customers SET name = $1 WHERE (id = $2) AND ((customers.tenant_id = '1'))"
    );

    let sql = forwarded(&engine.decide(
        &policy,
        &catalog,
        &support,
        "UPDATE orders SET tenant_id = 2 WHERE id = 7",
    ));
    assert!(
        sql.contains("portcullis.row_check((((CAST((2) AS INTEGER)) = '1')), 'rules.toml:"),
        "{sql}"
    );

    let sql = forwarded(&engine.decide(
        &policy,
        &catalog,
        &support,
        "INSERT INTO orders (tenant_id, customer_id, total, status) VALUES ($1, $2, $3, 'paid')",
    ));
    assert!(sql.starts_with("INSERT INTO orders (tenant_id, customer_id, total, status) SELECT * FROM (VALUES (CAST(($1) AS INTEGER)"), "{sql}");
    assert!(
        sql.contains("WHERE portcullis.row_check(((tenant_id = '1'))"),
        "{sql}"
    );

    for text in [
        "DELETE FROM orders WHERE id = 1",
        "INSERT INTO orders (customer_id, total, status) VALUES (1, 2, 'paid')",
        "UPDATE customers SET name = 'x' WHERE ssn LIKE '1%'",
        "UPDATE customers SET name = ssn",
        "UPDATE customers SET name = 'x' RETURNING *",
        "COPY customers FROM STDIN",
        "SELECT query_to_xml('select * from customers', true, true, '')",
    ] {
        let decision = engine.decide(&policy, &catalog, &support, text);
        assert_eq!(
            decision.denial().map(|d| d.sqlstate),
            Some("42501"),
            "{text}: {decision:?}"
        );
    }
    let mut nobody = Identity::new("support_x", ["support"]);
    nobody.attributes.clear();
    let decision = engine.decide(&policy, &catalog, &nobody, "SELECT * FROM orders");
    assert!(
        decision.denial().is_some(),
        "a support user without tenant reads nothing"
    );
}

#[test]
fn tablesample_is_drawn_from_the_table_before_the_row_filter() {
    let (engine, policy, catalog) = (Engine::default(), policy(), catalog());
    let support = support();
    for (text, sample) in [
        (
            "SELECT count(*) FROM customers TABLESAMPLE BERNOULLI (0)",
            "FROM \"public\".\"customers\" TABLESAMPLE BERNOULLI (0) WHERE",
        ),
        (
            "SELECT c.email FROM customers AS c TABLESAMPLE SYSTEM (50) REPEATABLE (7) JOIN orders o ON o.customer_id = c.id",
            "FROM \"public\".\"customers\" TABLESAMPLE SYSTEM (50) REPEATABLE (7) WHERE",
        ),
    ] {
        let sql = forwarded(&engine.decide(&policy, &catalog, &support, text));
        assert!(sql.contains(sample), "{text} -> {sql}");
        assert_eq!(sql.matches("TABLESAMPLE").count(), 1, "{text} -> {sql}");
        assert!(sql.contains("tenant_id = '1'"), "{text} -> {sql}");
    }
    // Texts of one shape, some decided from its template, decide as the full analysis
    // does: the sample's literals now stand in the spliced view's text.
    let shared = Engine::default();
    for n in 1..30u32 {
        let text = format!(
            "SELECT count(*) FROM customers TABLESAMPLE BERNOULLI ({}) REPEATABLE ({n}) WHERE id > {}",
            n % 7 * 10,
            n * 3
        );
        let fast = shared.decide(&policy, &catalog, &support, &text);
        let full = Engine::default().decide(&policy, &catalog, &support, &text);
        assert_eq!(fast, full, "{text}");
        let sql = forwarded(&fast);
        assert!(
            sql.contains(&format!(
                "BERNOULLI ({}) REPEATABLE ({n}) WHERE",
                n % 7 * 10
            )),
            "{text} -> {sql}"
        );
    }
    // Left in place where nothing is substituted.
    let sql = forwarded(&engine.decide(
        &policy,
        &catalog,
        &Identity::new("admin", ["dba"]),
        "SELECT count(*) FROM customers TABLESAMPLE BERNOULLI (0)",
    ));
    assert_eq!(
        sql,
        "SELECT count(*) FROM customers TABLESAMPLE BERNOULLI (0)"
    );
}

#[test]
fn shapes_rewritten_from_templates_match_full_rewrites() {
    let (engine, policy, catalog) = (Engine::default(), policy(), catalog());
    let support = support();
    let shapes = [
        "SELECT email, ssn FROM customers WHERE id = {}",
        "SELECT c.name, o.total FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.id = {} AND o.total > {}",
        "UPDATE orders SET status = 'paid' WHERE id = {}",
        "UPDATE orders SET tenant_id = {} WHERE id = {}",
        "INSERT INTO orders (tenant_id, customer_id, total, status) VALUES ({}, {}, {}, 'paid')",
        "DELETE FROM orders WHERE id = {}",
    ];
    let mut fast_paths = 0;
    for shape in shapes {
        let before = engine.rewrite_cache_hits();
        for n in 1..40u32 {
            let text = shape
                .split("{}")
                .enumerate()
                .map(|(i, part)| {
                    if i == 0 {
                        part.to_string()
                    } else {
                        format!("{}{part}", n * 7 + i as u32)
                    }
                })
                .collect::<String>();
            let fast = engine.decide(&policy, &catalog, &support, &text);
            let full = Engine::default().decide(&policy, &catalog, &support, &text);
            assert_eq!(fast, full, "{text}");
        }
        if engine.rewrite_cache_hits() > before + 30 {
            fast_paths += 1;
        }
    }
    // All but the UPDATE that moves a row-filter column (its value is used twice) and
    // the DELETE, which support may not run at all.
    assert_eq!(
        fast_paths,
        shapes.len() - 2,
        "texts rewritten from their shape's template"
    );
}

/// `(column, class)`.
type Col = (String, Option<String>);

/// `(relation, written, [(column, class)])` for each relation `sql` touched.
fn touched(engine: &Engine, sql: &str) -> Vec<(String, bool, Vec<Col>)> {
    engine
        .touched(&policy(), &catalog(), sql)
        .iter()
        .map(|relation| {
            let columns = relation
                .columns
                .iter()
                .map(|c| (c.name.clone(), c.class.clone()))
                .collect();
            (relation.name.clone(), relation.written, columns)
        })
        .collect()
}

fn names(columns: &[Col]) -> Vec<&str> {
    columns.iter().map(|(name, _)| name.as_str()).collect()
}

#[test]
fn touched_relations_columns_and_classes() {
    let engine = Engine::default();

    let found = touched(&engine, "SELECT name, email FROM customers WHERE id = 7");
    assert_eq!(found.len(), 1);
    let (name, written, columns) = &found[0];
    assert_eq!((name.as_str(), *written), ("public.customers", false));
    assert_eq!(names(columns), ["id", "name", "email"]);
    assert_eq!(columns[2].1.as_deref(), Some("pii.email"));
    assert_eq!(columns[0].1, None);

    // A join: each relation gets the columns named anywhere that it has.
    let found = touched(
        &engine,
        "SELECT c.ssn, o.total FROM customers c JOIN orders o ON o.customer_id = c.id",
    );
    let relations: Vec<&str> = found.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(relations, ["public.customers", "public.orders"]);
    assert_eq!(names(&found[0].2), ["id", "ssn"]);
    assert_eq!(found[0].2[1].1.as_deref(), Some("pii.national_id"));
    assert_eq!(names(&found[1].2), ["id", "customer_id", "total"]);

    // Wildcards and whole-row references touch every column.
    for sql in [
        "SELECT * FROM customers",
        "SELECT c FROM customers c",
        "SELECT row_to_json(c.*) FROM customers c",
        "SELECT c.* FROM customers c",
        "SELECT 1 FROM customers c WHERE c IS NOT NULL",
        "SELECT count(*) FROM (SELECT * FROM customers) s",
    ] {
        let found = touched(&engine, sql);
        assert_eq!(
            found.first().map(|f| f.2.len()),
            Some(8),
            "{sql}: {found:?}"
        );
    }

    // Writes: the target is written; its listed and SET columns are touched.
    let found = touched(
        &engine,
        "UPDATE customers SET card_number = $1 WHERE id = $2",
    );
    assert!(found[0].1);
    assert_eq!(names(&found[0].2), ["id", "card_number"]);
    assert_eq!(found[0].2[1].1.as_deref(), Some("financial.card"));
    let found = touched(
        &engine,
        "INSERT INTO orders VALUES (1, 1, 1, 2.5, 'new', now())",
    );
    assert_eq!((found[0].1, found[0].2.len()), (true, 6));
    let found = touched(&engine, "COPY customers (id, birth_date) FROM STDIN");
    assert_eq!(names(&found[0].2), ["id", "birth_date"]);

    // A multi-statement text unites; subqueries and CTEs count; unknown names stay.
    let found = touched(
        &engine,
        "WITH t AS (SELECT tenant_id FROM orders) SELECT count(*) FROM t; SELECT x FROM nowhere",
    );
    let relations: Vec<&str> = found.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(relations, ["public.orders", "nowhere"]);
    assert_eq!(names(&found[0].2), ["tenant_id"]);
    assert!(found[1].2.is_empty());

    // Texts that vary only in literals agree (decided from a shape's template).
    let policy = policy();
    let (catalog, support) = (catalog(), support());
    for id in 1..5 {
        let sql = format!("SELECT email FROM customers WHERE id = {id}");
        assert!(
            engine
                .decide(&policy, &catalog, &support, &sql)
                .is_allowed()
        );
        let found = touched(&engine, &sql);
        assert_eq!(names(&found[0].2), ["id", "email"], "{sql}");
    }

    // Unparsable text touches nothing known; oversized text is not even parsed.
    assert!(touched(&engine, "SELEC oops").is_empty());
    let huge = format!(
        "SELECT email FROM customers WHERE name = '{}'",
        "x".repeat(2 << 20)
    );
    assert!(touched(&engine, &huge).is_empty());
}
