//! The examples/saas policy directory (multi-tenant HR) against a catalog of its
//! schema, without a database: it loads, fits the catalog, and each role's statements
//! are rewritten or refused as its README section says.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

mod fixtures;

use portcullis_policy::catalog::TypeCategory;
use portcullis_policy::governance::Governance;
use portcullis_policy::{Catalog, Decision, Engine, Identity, Policy, PolicyConfig};

fn dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/saas")
}

fn catalog() -> Arc<Catalog> {
    use TypeCategory::*;
    use fixtures::{column, table};
    let catalog = Catalog::default()
        .with_relation(table(
            "companies",
            vec![
                column("id", "integer", Integer),
                column("name", "text", String),
            ],
        ))
        .with_relation(table(
            "departments",
            vec![
                column("id", "integer", Integer),
                column("company_id", "integer", Integer),
                column("name", "text", String),
            ],
        ))
        .with_relation(table(
            "employees",
            vec![
                column("id", "integer", Integer),
                column("company_id", "integer", Integer),
                column("department_id", "integer", Integer),
                column("full_name", "text", String),
                column("work_email", "text", String),
                column("personal_email", "text", String),
                column("phone", "text", String),
                column("national_id", "text", String),
                column("salary", "numeric(12,2)", Numeric),
                column("bank_account", "text", String),
                column("hire_date", "date", DateTime),
                column("birth_date", "date", DateTime),
            ],
        ))
        .with_relation(table(
            "payroll",
            vec![
                column("id", "integer", Integer),
                column("company_id", "integer", Integer),
                column("employee_id", "integer", Integer),
                column("period", "date", DateTime),
                column("gross", "numeric(12,2)", Numeric),
                column("net", "numeric(12,2)", Numeric),
            ],
        ));
    let catalog = ["count", "sum", "row_to_json"]
        .iter()
        .fold(catalog, |catalog, f| catalog.with_function("pg_catalog", f));
    Arc::new(catalog)
}

fn policy() -> Policy {
    let governance = Governance::load(&dir()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(governance.check_against(&catalog()), vec![]);
    let config: PolicyConfig = toml::from_str(
        r#"
        [roles.hr_admin]
        allow = ["read", "write", "session", "transaction"]
        [roles.manager]
        allow = ["read", "session", "transaction"]
        [roles.payroll]
        allow = ["read", "write", "session", "transaction"]
        [roles.auditor]
        allow = ["read", "session", "transaction"]
        "#,
    )
    .unwrap();
    Policy::compile_governed(&config, governance).unwrap()
}

fn identity(user: &str, role: &str, attributes: &[(&str, &str)]) -> Identity {
    let mut identity = Identity::new(user, [role]);
    for (name, value) in attributes {
        identity
            .attributes
            .insert((*name).to_string(), (*value).to_string());
    }
    identity
}

fn forwarded(decision: &Decision) -> String {
    match decision {
        Decision::Allow { sql, .. } => sql.to_string(),
        Decision::Deny(denial) => panic!("denied: {denial}"),
    }
}

#[test]
fn each_role_gets_its_filters_and_masks() {
    let (engine, policy, catalog) = (Engine::default(), policy(), catalog());
    let manager = identity(
        "manager_acme_eng",
        "manager",
        &[("company", "1"), ("department", "1")],
    );
    let sql = forwarded(&engine.decide(
        &policy,
        &catalog,
        &manager,
        "SELECT full_name, salary, national_id FROM employees",
    ));
    assert!(
        sql.contains("WHERE (company_id = '1' AND department_id = '1')"),
        "{sql}"
    );
    assert!(sql.contains("FLOOR(\"salary\" / 10000) * 10000"), "{sql}");
    assert!(
        sql.contains("CAST(NULL AS TEXT) AS \"national_id\""),
        "{sql}"
    );
    let denied = engine.decide(&policy, &catalog, &manager, "SELECT * FROM payroll");
    assert_eq!(denied.denial().map(|d| d.sqlstate), Some("42501"));

    // hr_admin inherits payroll (g, hr_admin, payroll): its grant on payroll, and the
    // national id's last four digits.
    let hr = identity("hr_acme", "hr_admin", &[("company", "1")]);
    let sql = forwarded(&engine.decide(&policy, &catalog, &hr, "SELECT count(*) FROM payroll"));
    assert!(sql.contains("WHERE (company_id = '1')"), "{sql}");
    let sql = forwarded(&engine.decide(&policy, &catalog, &hr, "SELECT * FROM employees"));
    assert!(sql.contains("right(\"national_id\", 4)"), "{sql}");
    assert!(!sql.contains("\"salary\" / 10000"), "{sql}");

    // The auditor: pseudonyms, from the loopback address only.
    let mut auditor = identity("auditor", "auditor", &[("client_addr", "127.0.0.1")]);
    let sql = forwarded(&engine.decide(
        &policy,
        &catalog,
        &auditor,
        "SELECT full_name FROM employees",
    ));
    assert!(sql.contains("sha256("), "{sql}");
    assert!(!sql.contains("WHERE"), "no row filter: {sql}");
    auditor
        .attributes
        .insert("client_addr".into(), "10.1.2.3".into());
    let denied = engine.decide(&policy, &catalog, &auditor, "SELECT 1 FROM employees");
    assert_eq!(denied.denial().map(|d| d.sqlstate), Some("42501"));

    // Payroll posts pay only between 06:00 and 21:59 UTC.
    let mut payroll = identity(
        "payroll_globex",
        "payroll",
        &[("company", "2"), ("hour", "10")],
    );
    let update = "UPDATE payroll SET net = net WHERE id = 1";
    assert!(matches!(
        engine.decide(&policy, &catalog, &payroll, update),
        Decision::Allow { .. }
    ));
    payroll.attributes.insert("hour".into(), "23".into());
    let denied = engine.decide(&policy, &catalog, &payroll, update);
    assert_eq!(denied.denial().map(|d| d.sqlstate), Some("42501"));
}
