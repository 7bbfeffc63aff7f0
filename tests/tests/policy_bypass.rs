//! The bypass corpus: statements that try to get around the quickstart's masks and row
//! filters, sent through the proxy to a real PostgreSQL as `analyst` and as
//! `support_acme`, in the simple and (for single statements) the extended protocol.
//! Each response must be a denial or hold no protected value: no full SSN, card number
//! or birth date for the analyst, no SSN or card number and no other tenant's e-mail
//! for support — compared against the real values read as the database superuser.

use std::collections::BTreeSet;
use std::error::Error;

use portcullis_tests::wire::{direct, pg_connect};
use portcullis_tests::{ANALYST, SUPPORT, TestEnv};
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage};

/// Any column as text: binary values of text-like types are their UTF-8 bytes, which
/// is where a leaked string would show.
struct Raw(String);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Raw, Box<dyn Error + Sync + Send>> {
        Ok(Raw(String::from_utf8_lossy(raw).into_owned()))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Attempts for both users; each is a statement text (several statements only where
/// the text says so, sent in the simple protocol alone).
const ATTEMPTS: &[&str] = &[
    "SELECT ssn, card_number, email, birth_date FROM customers",
    "SELECT lower(ssn), upper(card_number) FROM customers",
    "SELECT ssn || '', card_number || '' FROM customers",
    "SELECT CAST(ssn AS bytea)::text FROM customers",
    "SELECT row_to_json(c) FROM customers c",
    "SELECT c::text FROM customers c",
    "SELECT to_json(c.*) FROM customers c",
    "SELECT jsonb_agg(c) FROM customers c",
    "SELECT (c).ssn FROM customers c",
    "SELECT string_agg(ssn, ','), string_agg(card_number, ',') FROM customers",
    "SELECT array_agg(ssn) FROM customers",
    "SELECT max(card_number), min(email), max(birth_date) FROM customers",
    "WITH x AS (SELECT * FROM customers) SELECT * FROM x",
    "WITH customers AS (SELECT * FROM customers) SELECT * FROM customers",
    "WITH RECURSIVE r(n, s) AS (SELECT 1, (SELECT ssn FROM customers LIMIT 1) UNION ALL SELECT n + 1, s FROM r WHERE n < 3) SELECT * FROM r",
    "SELECT * FROM (SELECT * FROM customers) sub",
    "SELECT (SELECT c2.ssn FROM customers c2 WHERE c2.id = c.id) FROM customers c",
    "SELECT l.* FROM orders o, LATERAL (SELECT ssn, email FROM customers c WHERE c.id = o.customer_id) l",
    "SELECT ssn FROM customers UNION ALL SELECT email FROM customers",
    "SELECT card_number FROM customers INTERSECT SELECT card_number FROM customers",
    "SELECT * FROM \"customers\"",
    "SELECT * FROM public.customers",
    "SELECT * FROM PUBLIC.\"customers\"",
    "SELECT * FROM ONLY customers",
    "SELECT/**/ssn/**/FROM/**/customers",
    "SELECT ssn FROM customers -- trailing comment",
    "SELECT ssn FROM customers c JOIN orders o ON o.customer_id = c.id",
    "SELECT ssn FROM customers WHERE id IN (SELECT customer_id FROM orders)",
    "SELECT format('%s %s', ssn, card_number) FROM customers",
    "SELECT regexp_replace(ssn, '-', '', 'g') FROM customers",
    "SELECT pg_catalog.lower(email) FROM customers",
    "SELECT ssn COLLATE \"C\" FROM customers",
    "SELECT email FROM customers ORDER BY ssn",
    "VALUES ((SELECT ssn FROM customers LIMIT 1))",
    "SELECT * FROM customers TABLESAMPLE SYSTEM (100)",
    "SELECT xmlforest(ssn, card_number) FROM customers",
    "SELECT encode(convert_to(ssn, 'UTF8'), 'hex') FROM customers",
    "EXPLAIN (VERBOSE) SELECT ssn FROM customers",
    "SELECT * FROM customers FOR UPDATE",
    "SELECT * FROM pg_stats WHERE tablename = 'customers'",
    "SELECT * FROM pg_catalog.pg_statistic",
    "SELECT query FROM pg_stat_activity",
    "SELECT query_to_xml('select ssn from customers', true, true, '')",
    "SELECT table_to_xml('customers', true, true, '')",
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT lo_import('/etc/passwd')",
    "DO $$ BEGIN PERFORM 1; END $$",
    "TABLE customers",
    "COPY customers TO '/tmp/customers.csv'",
    "COPY (SELECT ssn FROM customers) TO PROGRAM 'cat'",
    "CREATE TEMP TABLE stolen AS SELECT * FROM customers",
    "SET ROLE postgres",
    "SET SESSION AUTHORIZATION postgres",
    "SELECT * FROM secrets_nobody_declared",
    "SELECT 1; SELECT ssn, email FROM customers",
    "SET search_path = pg_catalog, public; SELECT ssn FROM customers",
    "PREPARE p AS SELECT ssn, email FROM customers; EXECUTE p",
    "BEGIN; DECLARE cur CURSOR FOR SELECT ssn, email FROM customers; FETCH ALL FROM cur; COMMIT",
    "SELECT email FROM customers WHERE tenant_id <> 1",
    "SELECT * FROM orders WHERE tenant_id = 2",
    "SELECT * FROM tenants",
];

/// Writes that must not cross tenants (support) or happen at all (analyst).
const WRITES: &[&str] = &[
    "UPDATE orders SET tenant_id = 2 WHERE tenant_id = 1",
    "UPDATE customers SET tenant_id = 3 WHERE id = (SELECT min(id) FROM customers)",
    "INSERT INTO orders (tenant_id, customer_id, total, status) VALUES (2, 1, 1, 'paid')",
    "INSERT INTO orders (customer_id, total, status) VALUES (1, 1, 'paid')",
    "INSERT INTO orders (tenant_id, customer_id, total, status) SELECT 3, customer_id, total, status FROM orders LIMIT 1",
    "DELETE FROM orders",
    "UPDATE customers SET name = name WHERE tenant_id = 2",
    "UPDATE customers SET name = ssn",
    "UPDATE customers SET name = name WHERE ssn LIKE '1%' RETURNING *",
    "MERGE INTO orders o USING tenants t ON o.tenant_id = t.id WHEN MATCHED THEN UPDATE SET total = 0",
    "COPY orders FROM STDIN",
];

struct Secrets {
    values: BTreeSet<String>,
}

impl Secrets {
    fn leaked<'a>(&self, cells: impl IntoIterator<Item = &'a str>) -> Option<String> {
        for cell in cells {
            if let Some(secret) = self.values.iter().find(|s| cell.contains(s.as_str())) {
                return Some(format!("{secret:?} in {:.200}", cell));
            }
        }
        None
    }
}

async fn column(client: &Client, sql: &str) -> anyhow::Result<Vec<String>> {
    let mut values = Vec::new();
    for message in client.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(row) = message {
            values.push(row.get(0).unwrap_or_default().to_string());
        }
    }
    Ok(values)
}

/// Runs `sql` both ways; returns the cells of every row returned, or `None` when the
/// proxy or the database refused it.
async fn run(client: &Client, sql: &str, extended: bool) -> Option<Vec<String>> {
    if extended {
        let rows = client.query(sql, &[]).await.ok()?;
        let mut cells = Vec::new();
        for row in rows {
            for index in 0..row.len() {
                if let Ok(Some(Raw(text))) = row.try_get::<_, Option<Raw>>(index) {
                    cells.push(text);
                }
            }
        }
        Some(cells)
    } else {
        let messages = client.simple_query(sql).await.ok()?;
        let mut cells = Vec::new();
        for message in messages {
            if let SimpleQueryMessage::Row(row) = message {
                for index in 0..row.len() {
                    cells.push(row.get(index).unwrap_or_default().to_string());
                }
            }
        }
        Some(cells)
    }
}

async fn corpus(env: &TestEnv, who: (&str, &str), secrets: &Secrets) -> anyhow::Result<usize> {
    let mut checked = 0;
    for extended in [false, true] {
        let client = pg_connect(env, who).await?;
        for sql in ATTEMPTS.iter().chain(WRITES) {
            if extended && sql.contains("; ") {
                continue;
            }
            if let Some(cells) = run(&client, sql, extended).await {
                if let Some(leak) = secrets.leaked(cells.iter().map(String::as_str)) {
                    panic!("{} leaked {leak} with {sql} (extended: {extended})", who.0);
                }
            }
            checked += 1;
            // A failed statement inside BEGIN leaves the session in an aborted block.
            let _ = client.simple_query("ROLLBACK").await;
        }
    }
    Ok(checked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_attempts_reveal_no_protected_value() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let db = direct(&env).await?;
    let before = column(
        &db,
        "SELECT md5(string_agg(o::text, ',' ORDER BY id)) FROM orders o",
    )
    .await?;
    let customers_before = column(
        &db,
        "SELECT md5(string_agg(c::text, ',' ORDER BY id)) FROM customers c",
    )
    .await?;

    let mut analyst = BTreeSet::new();
    analyst.extend(column(&db, "SELECT ssn FROM customers").await?);
    analyst.extend(column(&db, "SELECT card_number FROM customers").await?);
    analyst.extend(
        column(
            &db,
            "SELECT split_part(email, '@', 1) || '@' FROM customers",
        )
        .await?,
    );
    analyst.extend(
        column(
            &db,
            "SELECT birth_date::text FROM customers WHERE extract(doy FROM birth_date) > 1",
        )
        .await?,
    );
    let analyst = Secrets { values: analyst };
    assert!(analyst.values.len() > 900, "the secrets were read");

    let mut support = BTreeSet::new();
    support.extend(column(&db, "SELECT ssn FROM customers").await?);
    support.extend(column(&db, "SELECT card_number FROM customers").await?);
    support.extend(column(&db, "SELECT email FROM customers WHERE tenant_id <> 1").await?);
    support.extend(column(&db, "SELECT name FROM tenants WHERE id <> 1").await?);
    let support = Secrets { values: support };

    let checked = corpus(&env, ANALYST, &analyst).await? + corpus(&env, SUPPORT, &support).await?;
    assert!(checked >= 4 * 60, "{checked} attempts checked");

    // The masked views still answer: shapes and the permitted rows are there.
    let analyst_client = pg_connect(&env, ANALYST).await?;
    let row = analyst_client
        .query_one(
            "SELECT ssn, card_number, email, birth_date FROM customers ORDER BY id LIMIT 1",
            &[],
        )
        .await?;
    let ssn: String = row.get(0);
    let email: String = row.get(2);
    let birth: time::Date = row.get(3);
    assert!(ssn.starts_with("*******") && ssn.len() == 11, "{ssn}");
    assert!(email.starts_with("***@"), "{email}");
    assert_eq!((birth.month() as u8, birth.day()), (1, 1), "year only");
    let support_client = pg_connect(&env, SUPPORT).await?;
    let tenants = column(&support_client, "SELECT DISTINCT tenant_id FROM customers").await?;
    assert_eq!(tenants, vec!["1".to_string()]);
    let inferred = column(
        &support_client,
        "SELECT count(*) FROM customers WHERE ssn IS NOT NULL",
    )
    .await?;
    assert_eq!(
        inferred,
        vec!["0".to_string()],
        "ssn is fully redacted for support"
    );
    // TABLESAMPLE and TABLE work through the substitution: a sample of no rows is
    // empty, a sample of all rows and `TABLE` are the tenant's rows.
    let tenant_rows = column(&support_client, "SELECT count(*) FROM customers").await?;
    for (sql, expected) in [
        (
            "SELECT count(*) FROM customers TABLESAMPLE BERNOULLI (0)",
            vec!["0".to_string()],
        ),
        (
            "SELECT count(*) FROM customers c TABLESAMPLE SYSTEM (100) REPEATABLE (1)",
            tenant_rows.clone(),
        ),
        (
            "SELECT count(*) FROM (TABLE customers) t WHERE tenant_id = 1",
            tenant_rows.clone(),
        ),
    ] {
        assert_eq!(column(&support_client, sql).await?, expected, "{sql}");
    }
    assert!(tenant_rows[0] != "0", "{tenant_rows:?}");
    let table = column(&support_client, "TABLE customers;").await?;
    assert_eq!(vec![table.len().to_string()], tenant_rows);
    // Support may update its own tenant's rows.
    let updated = support_client
        .execute(
            "UPDATE orders SET status = status WHERE id = (SELECT min(id) FROM orders)",
            &[],
        )
        .await?;
    assert_eq!(updated, 1);

    // Nothing moved, nothing was deleted.
    assert_eq!(
        column(
            &db,
            "SELECT md5(string_agg(o::text, ',' ORDER BY id)) FROM orders o"
        )
        .await?,
        before
    );
    assert_eq!(
        column(
            &db,
            "SELECT md5(string_agg(c::text, ',' ORDER BY id)) FROM customers c"
        )
        .await?,
        customers_before
    );
    Ok(())
}
