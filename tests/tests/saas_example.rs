//! The second example, examples/saas (a multi-tenant HR SaaS), end to end: its schema,
//! data, users and policy directory behind the proxy, against a real PostgreSQL.
//! Each role sees what the README says it sees, masked columns keep their types,
//! writes stay inside the company, and bypass attempts reveal nothing protected —
//! compared against the real values read as the database superuser.

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;

use portcullis_tests::wire::{direct, pg_connect};
use portcullis_tests::{EnvOptions, TestEnv, example_dir};
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// Demo users of examples/saas: (name, password), as in its users.toml and the README.
const HR: (&str, &str) = ("hr_acme", "hr-demo");
const MANAGER: (&str, &str) = ("manager_acme_eng", "manager-demo");
const PAYROLL: (&str, &str) = ("payroll_globex", "payroll-demo");
const AUDITOR: (&str, &str) = ("auditor", "auditor-demo");

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

async fn start() -> anyhow::Result<TestEnv> {
    TestEnv::start_with(EnvOptions {
        example: Some(example_dir("saas")),
        ..EnvOptions::default()
    })
    .await
}

/// The rows of `sql` (simple protocol), every cell as text, NULL as `None`.
async fn rows(client: &Client, sql: &str) -> anyhow::Result<Vec<Vec<Option<String>>>> {
    let mut out = Vec::new();
    for message in client.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(row) = message {
            out.push(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            );
        }
    }
    Ok(out)
}

/// The first column of `sql`'s rows (NULL as the empty string).
async fn column(client: &Client, sql: &str) -> anyhow::Result<Vec<String>> {
    Ok(rows(client, sql)
        .await?
        .into_iter()
        .map(|row| row.into_iter().next().flatten().unwrap_or_default())
        .collect())
}

fn sqlstate(error: &tokio_postgres::Error) -> String {
    error
        .code()
        .map(|code| code.code().to_owned())
        .unwrap_or_else(|| format!("no sqlstate: {error}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_sees_one_department_with_salary_bands() -> anyhow::Result<()> {
    let env = start().await?;
    let db = direct(&env).await?;
    let manager = pg_connect(&env, MANAGER).await?;

    let sql = "SELECT id, company_id, department_id, salary, national_id, phone, birth_date, bank_account, personal_email FROM employees ORDER BY id";
    let seen = rows(&manager, sql).await?;
    let real = rows(&db, sql).await?;
    let expected: Vec<_> = real
        .iter()
        .filter(|row| row[1].as_deref() == Some("1") && row[2].as_deref() == Some("1"))
        .collect();
    assert!(expected.len() >= 10, "{} engineers at Acme", expected.len());
    assert_eq!(
        seen.len(),
        expected.len(),
        "only Acme's engineering department"
    );
    for (seen, real) in seen.iter().zip(expected.iter()) {
        assert_eq!(seen[0], real[0], "same employees, same order");
        assert_eq!(
            (seen[1].as_deref(), seen[2].as_deref()),
            (Some("1"), Some("1"))
        );
        // Salary bucketed to 10000, keeping numeric(12,2)'s text form.
        let salary: f64 = real[3].as_deref().unwrap_or_default().parse()?;
        let band = (salary / 10000.0).floor() * 10000.0;
        assert_eq!(seen[3].as_deref(), Some(format!("{band:.2}").as_str()));
        assert_eq!(seen[4], None, "national_id is NULL for managers");
        // Phone: only the last four characters.
        if let (Some(phone), Some(real_phone)) = (&seen[5], &real[5]) {
            assert_eq!(phone.len(), real_phone.len());
            assert!(phone.starts_with("*******") && phone.ends_with(&real_phone[11..]));
        } else {
            assert_eq!(seen[5], real[5], "NULL stays NULL");
        }
        // Birth date: the first of its month.
        let birth = seen[6].as_deref().unwrap_or_default();
        let real_birth = real[6].as_deref().unwrap_or_default();
        assert_eq!(birth, format!("{}-01", &real_birth[..7]));
        assert_eq!((&seen[7], &seen[8]), (&None, &None), "no rule: NULL");
    }

    // The extended protocol, with a parameter, sees the same masked values.
    let first: i32 = expected[0][0].as_deref().unwrap_or_default().parse()?;
    let row = manager
        .query_one(
            "SELECT salary::text, national_id, full_name FROM employees WHERE id = $1",
            &[&first],
        )
        .await?;
    assert_eq!(row.get::<_, Option<String>>(0), seen[0][3]);
    assert_eq!(row.get::<_, Option<String>>(1), None);
    let real_name = column(
        &db,
        &format!("SELECT full_name FROM employees WHERE id = {first}"),
    )
    .await?;
    assert_eq!(
        row.get::<_, String>(2),
        real_name[0],
        "names are clear for managers"
    );
    // Another department's employee does not exist for the manager.
    let other: i32 = column(
        &db,
        "SELECT min(id) FROM employees WHERE company_id = 1 AND department_id <> 1",
    )
    .await?[0]
        .parse()?;
    let none = manager
        .query("SELECT * FROM employees WHERE id = $1", &[&other])
        .await?;
    assert!(none.is_empty());
    // Only Acme's departments and company.
    assert_eq!(
        column(&manager, "SELECT DISTINCT company_id FROM departments").await?,
        vec!["1".to_owned()]
    );
    assert_eq!(
        column(&manager, "SELECT name FROM companies").await?,
        vec!["Acme Corp".to_owned()]
    );
    // No payroll at all, and no writes.
    let error = manager
        .simple_query("SELECT * FROM payroll")
        .await
        .err()
        .map(|e| sqlstate(&e));
    assert_eq!(error.as_deref(), Some("42501"));
    let error = manager
        .execute("UPDATE employees SET phone = NULL WHERE id = $1", &[&first])
        .await
        .err()
        .map(|e| sqlstate(&e));
    assert_eq!(error.as_deref(), Some("42501"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auditor_sees_every_company_through_stable_pseudonyms() -> anyhow::Result<()> {
    let env = start().await?;
    let db = direct(&env).await?;
    let auditor = pg_connect(&env, AUDITOR).await?;
    let real_names: BTreeSet<String> = column(&db, "SELECT full_name FROM employees")
        .await?
        .into_iter()
        .collect();
    assert_eq!(real_names.len(), 250);

    assert_eq!(
        column(
            &auditor,
            "SELECT DISTINCT company_id FROM employees ORDER BY 1"
        )
        .await?,
        vec!["1", "2", "3"]
    );
    // Pseudonyms join and group: one group per person, three pay slips each.
    let grouped = rows(
        &auditor,
        "SELECT full_name, count(*) FROM employees e JOIN payroll p ON p.employee_id = e.id GROUP BY 1",
    )
    .await?;
    assert_eq!(grouped.len(), 250, "one group per person");
    for row in &grouped {
        assert_eq!(row[1].as_deref(), Some("3"));
        let name = row[0].as_deref().unwrap_or_default();
        assert_eq!(name.len(), 64, "{name}");
        assert!(name.chars().all(|c| c.is_ascii_hexdigit()), "{name}");
        assert!(!real_names.contains(name));
    }
    // The same person gets the same pseudonym in two queries and in both protocols.
    let simple: BTreeMap<String, String> = rows(&auditor, "SELECT id, full_name FROM employees")
        .await?
        .into_iter()
        .map(|row| {
            (
                row[0].clone().unwrap_or_default(),
                row[1].clone().unwrap_or_default(),
            )
        })
        .collect();
    let extended: BTreeMap<String, String> = auditor
        .query(
            "SELECT id, full_name FROM employees WHERE company_id = ANY($1)",
            &[&vec![1i32, 2, 3]],
        )
        .await?
        .iter()
        .map(|row| (row.get::<_, i32>(0).to_string(), row.get::<_, String>(1)))
        .collect();
    assert_eq!(simple.len(), 250);
    assert_eq!(simple, extended);
    let distinct: BTreeSet<&String> = simple.values().collect();
    assert_eq!(
        distinct.len(),
        250,
        "different people, different pseudonyms"
    );
    // A pseudonym found in one query finds the person in another.
    let (id, pseudonym) = simple
        .iter()
        .next()
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();
    let found = auditor
        .query(
            "SELECT id FROM employees WHERE full_name = $1",
            &[&pseudonym],
        )
        .await?;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].get::<_, i32>(0).to_string(), id);

    // The other masks: email domain, fixed bank account, birth year, NULLs, exact pay.
    let masked = rows(
        &auditor,
        "SELECT work_email, bank_account, birth_date, national_id, phone, personal_email, salary FROM employees WHERE id = 1",
    )
    .await?;
    assert_eq!(
        masked[0][..6],
        [
            Some("***@acme.example".to_owned()),
            Some("REDACTED".to_owned()),
            Some("1971-01-01".to_owned()),
            None,
            None,
            None
        ]
    );
    assert_eq!(masked[0][6].as_deref(), Some("130000.00"));
    assert_eq!(
        column(&auditor, "SELECT sum(gross) FROM payroll").await?,
        column(&db, "SELECT sum(gross) FROM payroll").await?,
        "pay is exact for the auditor"
    );

    // No real name in any output of these.
    for sql in [
        "SELECT * FROM employees",
        "SELECT row_to_json(e) FROM employees e",
        "SELECT string_agg(full_name, ',') FROM employees",
        "SELECT full_name::varchar FROM employees UNION SELECT name FROM departments",
    ] {
        for row in rows(&auditor, sql).await? {
            for cell in row.into_iter().flatten() {
                assert!(
                    !real_names.iter().any(|name| cell.contains(name.as_str())),
                    "{sql} leaked a name: {cell:.200}"
                );
            }
        }
    }
    // The auditor's grant holds only from the audit host (loopback): the same
    // password from 127.0.0.2 logs in, but every read is refused.
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind("127.0.0.2:0".parse()?)?;
    let stream = socket.connect(env.proxy_addr).await?;
    let (elsewhere, connection) = tokio_postgres::Config::new()
        .user(AUDITOR.0)
        .password(AUDITOR.1)
        .dbname(&env.database)
        .connect_raw(stream, NoTls)
        .await?;
    tokio::spawn(connection);
    let error = elsewhere
        .simple_query("SELECT count(*) FROM employees")
        .await
        .err()
        .map(|e| sqlstate(&e));
    assert_eq!(error.as_deref(), Some("42501"));
    Ok(())
}

/// `SELECT * FROM <table>`'s column types through the proxy and straight to the database.
async fn types(client: &Client, table: &str) -> anyhow::Result<Vec<(String, u32)>> {
    let statement = client.prepare(&format!("SELECT * FROM {table}")).await?;
    Ok(statement
        .columns()
        .iter()
        .map(|c| (c.name().to_owned(), c.type_().oid()))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masked_columns_keep_their_types_and_writes_stay_in_the_company() -> anyhow::Result<()> {
    let env = start().await?;
    let db = direct(&env).await?;
    let employees = types(&db, "employees").await?;
    let payroll = types(&db, "payroll").await?;
    assert_eq!(employees.len(), 12);
    for who in [HR, MANAGER, PAYROLL, AUDITOR] {
        let client = pg_connect(&env, who).await?;
        assert_eq!(types(&client, "employees").await?, employees, "{}", who.0);
        if who != MANAGER {
            assert_eq!(types(&client, "payroll").await?, payroll, "{}", who.0);
        }
        // The simple protocol's RowDescription too: numeric stays numeric.
        let row = client
            .query_one(
                "SELECT salary, birth_date, full_name FROM employees LIMIT 1",
                &[],
            )
            .await?;
        let oids: Vec<u32> = row.columns().iter().map(|c| c.type_().oid()).collect();
        assert_eq!(oids, vec![1700, 1082, 25], "{}", who.0);
    }

    let checksum = "SELECT md5(string_agg(e::text, ',' ORDER BY id)) FROM employees e";
    let pay_checksum = "SELECT md5(string_agg(p::text, ',' ORDER BY id)) FROM payroll p";
    let before = column(&db, checksum).await?;
    let pay_before = column(&db, pay_checksum).await?;

    let hr = pg_connect(&env, HR).await?;
    let hr_sees = column(&hr, "SELECT DISTINCT company_id FROM employees").await?;
    assert_eq!(hr_sees, vec!["1".to_owned()]);
    // hr_admin inherits payroll's masks: the last four digits of the national id.
    let national = column(&hr, "SELECT national_id FROM employees WHERE id = 1").await?;
    assert_eq!(national, vec!["*******4877".to_owned()]);
    // Cross-company writes: refused, or they match no row.
    let insert = hr
        .execute(
            "INSERT INTO employees (id, company_id, department_id, full_name, work_email, national_id, salary, bank_account, hire_date, birth_date) \
             VALUES (9001, 2, 7, 'Mallory Intruder', 'mallory@globex.example', '000-00-0000', 1, 'DE00', '2026-01-01', '1990-01-01')",
            &[],
        )
        .await;
    assert!(insert.is_err(), "insert into another company: {insert:?}");
    let moved = hr
        .execute(
            "UPDATE employees SET company_id = 2, department_id = 7 WHERE id = 1",
            &[],
        )
        .await;
    assert!(moved.is_err(), "moving a row to another company: {moved:?}");
    let other = hr
        .execute("UPDATE employees SET salary = 1 WHERE company_id = 2", &[])
        .await;
    assert!(matches!(other, Ok(0) | Err(_)), "{other:?}");
    let deleted = hr
        .execute("DELETE FROM employees WHERE company_id = 3", &[])
        .await;
    assert!(matches!(deleted, Ok(0) | Err(_)), "{deleted:?}");
    // Inside the company, HR may write.
    let own = hr
        .execute("UPDATE employees SET phone = phone WHERE id = 1", &[])
        .await?;
    assert_eq!(own, 1);

    let payroll_client = pg_connect(&env, PAYROLL).await?;
    let foreign = payroll_client
        .simple_query("UPDATE payroll SET gross = 0, net = 0 WHERE company_id = 1")
        .await;
    match foreign {
        Ok(messages) => assert!(
            messages
                .iter()
                .any(|m| matches!(m, SimpleQueryMessage::CommandComplete(0))),
            "{messages:?}"
        ),
        Err(error) => assert_eq!(sqlstate(&error), "42501"),
    }
    let delete = payroll_client
        .simple_query("DELETE FROM payroll")
        .await
        .err()
        .map(|e| sqlstate(&e));
    assert_eq!(delete.as_deref(), Some("42501"), "payroll never deletes");
    // Posting pay in its own company depends on the hour (06:00-21:59 UTC) at login.
    let hour = time::OffsetDateTime::now_utc().hour();
    let post = payroll_client
        .execute(
            "UPDATE payroll SET net = net WHERE id = (SELECT min(id) FROM payroll)",
            &[],
        )
        .await;
    if time::OffsetDateTime::now_utc().hour() == hour {
        if (6..22).contains(&hour) {
            assert_eq!(post.ok(), Some(1), "business hours");
        } else {
            assert_eq!(post.err().map(|e| sqlstate(&e)).as_deref(), Some("42501"));
        }
    }
    assert_eq!(column(&db, checksum).await?, before, "employees unchanged");
    assert_eq!(
        column(&db, pay_checksum).await?,
        pay_before,
        "payroll unchanged"
    );
    Ok(())
}

/// Statements that try to get around the masks and filters.
const ATTEMPTS: &[&str] = &[
    "SELECT national_id, salary, bank_account, full_name, personal_email, phone, birth_date FROM employees",
    "SELECT row_to_json(e) FROM employees e",
    "SELECT e::text FROM employees e",
    "SELECT to_jsonb(e.*) FROM employees e",
    "SELECT jsonb_agg(e) FROM employees e",
    "SELECT CAST(salary AS text), salary::float8, CAST(national_id AS bytea)::text FROM employees",
    "SELECT CAST(full_name AS varchar(200)), bank_account::text FROM employees",
    "SELECT (e).national_id FROM employees e",
    "WITH x AS (SELECT * FROM employees) SELECT * FROM x",
    "WITH employees AS (SELECT * FROM public.employees) SELECT * FROM employees",
    "SELECT * FROM (SELECT * FROM employees) sub",
    "SELECT (SELECT e2.national_id FROM employees e2 WHERE e2.id = e.id) FROM employees e",
    "SELECT full_name FROM employees UNION ALL SELECT national_id FROM employees",
    "SELECT bank_account FROM employees UNION SELECT name FROM companies",
    "SELECT full_name FROM employees INTERSECT SELECT full_name FROM employees",
    "SELECT string_agg(full_name || ' ' || national_id, ',') FROM employees",
    "SELECT max(salary)::text, min(national_id), max(birth_date)::text FROM employees",
    "SELECT * FROM employees WHERE company_id = 2",
    "SELECT full_name, salary FROM employees WHERE department_id <> 1",
    "SELECT e.*, p.* FROM payroll p JOIN employees e ON e.id = p.employee_id",
    "SELECT full_name FROM employees ORDER BY salary",
    "SELECT * FROM ONLY public.employees",
    "SELECT * FROM \"employees\"",
    "TABLE employees",
    "SELECT format('%s', e) FROM employees e",
    "SELECT l.* FROM departments d, LATERAL (SELECT full_name, national_id FROM employees x WHERE x.department_id = d.id) l",
    "SELECT query_to_xml('select full_name, national_id from employees', true, true, '')",
    "SELECT * FROM pg_stats WHERE tablename = 'employees'",
    "SELECT name FROM companies WHERE id <> 1",
    "COPY employees TO STDOUT",
    "SELECT 1; SELECT full_name, national_id FROM employees",
    "BEGIN; DECLARE c CURSOR FOR SELECT national_id, bank_account FROM employees; FETCH ALL FROM c; COMMIT",
];

/// Runs `sql`; the cells of every row returned, or `None` when it was refused.
async fn run(client: &Client, sql: &str, extended: bool) -> Option<Vec<String>> {
    let mut cells = Vec::new();
    if extended {
        for row in client.query(sql, &[]).await.ok()? {
            for index in 0..row.len() {
                if let Ok(Some(Raw(text))) = row.try_get::<_, Option<Raw>>(index) {
                    cells.push(text);
                }
            }
        }
    } else {
        for message in client.simple_query(sql).await.ok()? {
            if let SimpleQueryMessage::Row(row) = message {
                cells.extend((0..row.len()).filter_map(|i| row.get(i).map(str::to_owned)));
            }
        }
    }
    Some(cells)
}

async fn attempts(
    env: &TestEnv,
    who: (&str, &str),
    secrets: &BTreeSet<String>,
) -> anyhow::Result<usize> {
    let mut answered = 0;
    for extended in [false, true] {
        let client = pg_connect(env, who).await?;
        for sql in ATTEMPTS {
            if extended && sql.contains("; ") {
                continue;
            }
            if let Some(cells) = run(&client, sql, extended).await {
                answered += 1;
                for cell in &cells {
                    if let Some(secret) = secrets.iter().find(|s| cell.contains(s.as_str())) {
                        panic!("{} saw {secret:?} with {sql} (extended: {extended})", who.0);
                    }
                }
            }
            let _ = client.simple_query("ROLLBACK").await;
        }
    }
    Ok(answered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_attempts_reveal_nothing() -> anyhow::Result<()> {
    let env = start().await?;
    let db = direct(&env).await?;
    let mut common = BTreeSet::new();
    common.extend(column(&db, "SELECT national_id FROM employees").await?);
    common.extend(column(&db, "SELECT bank_account FROM employees").await?);
    common.extend(
        column(
            &db,
            "SELECT personal_email FROM employees WHERE personal_email IS NOT NULL",
        )
        .await?,
    );
    // Exact salaries (those that are not already a multiple of the 10000 band).
    common.extend(
        column(
            &db,
            "SELECT salary::text FROM employees WHERE salary % 10000 <> 0",
        )
        .await?,
    );
    common.extend(
        column(
            &db,
            "SELECT birth_date::text FROM employees WHERE extract(day FROM birth_date) > 1",
        )
        .await?,
    );

    let mut manager = common.clone();
    manager.extend(
        column(
            &db,
            "SELECT full_name FROM employees WHERE NOT (company_id = 1 AND department_id = 1)",
        )
        .await?,
    );
    manager.extend(column(&db, "SELECT name FROM companies WHERE id <> 1").await?);
    manager.extend(column(&db, "SELECT phone FROM employees WHERE phone IS NOT NULL").await?);
    let mut auditor = common;
    auditor.extend(column(&db, "SELECT full_name FROM employees").await?);
    auditor.extend(
        column(
            &db,
            "SELECT split_part(work_email, '@', 1) || '@' FROM employees",
        )
        .await?,
    );
    auditor.extend(column(&db, "SELECT phone FROM employees WHERE phone IS NOT NULL").await?);
    assert!(manager.len() > 1000 && auditor.len() > 1000);

    let manager_answered = attempts(&env, MANAGER, &manager).await?;
    let auditor_answered = attempts(&env, AUDITOR, &auditor).await?;
    // Most attempts are answered (with masked values), not merely refused.
    assert!(manager_answered >= 20, "{manager_answered}");
    assert!(auditor_answered >= 20, "{auditor_answered}");
    Ok(())
}
