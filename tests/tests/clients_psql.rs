//! psql through the proxy over verified TLS with SCRAM channel binding: what a person
//! at a terminal sees must be byte for byte what the database shows directly.
//!
//! Every connection uses `sslmode=verify-full sslrootcert=<proxy cert>` and
//! `channel_binding=require`, so libpq itself proves that the session is TLS to the
//! proxy's certificate (host name checked) and that SCRAM-SHA-256-PLUS was used.

use std::process::Output;

use anyhow::Result;
use portcullis_tests::{ADMIN, ANALYST, SUPPORT, TestEnv, stdout};

/// Strict client settings for a proxy connection through `host` (both `127.0.0.1`
/// and `localhost` are in the certificate).
fn strict_dsn(env: &TestEnv, host: &str, (user, password): (&str, &str), extra: &str) -> String {
    format!(
        "host={host} port={} dbname={} user={user} password={password} sslmode=verify-full sslrootcert={} channel_binding=require {extra}",
        env.proxy_addr.port(),
        env.database,
        env.cert_path.display(),
    )
}

/// `psql -X <dsn> <args>` with no ambient connection settings.
async fn psql(dsn: &str, args: &[&str]) -> Result<Output> {
    let mut cmd = tokio::process::Command::new("psql");
    cmd.arg("-X").arg(dsn).args(args);
    for var in [
        "PGPASSWORD",
        "PGSERVICE",
        "PGSSLMODE",
        "PGCHANNELBINDING",
        "PGOPTIONS",
        "PGAPPNAME",
    ] {
        cmd.env_remove(var);
    }
    Ok(cmd.output().await?)
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_works_for_ip_and_dns_names() -> Result<()> {
    let env = TestEnv::start().await?;
    for host in ["127.0.0.1", "localhost"] {
        let dsn = strict_dsn(&env, host, ADMIN, "");
        let out = psql(&dsn, &["-At", "-c", "SELECT count(*) FROM customers"]).await?;
        assert_eq!(stdout(&out)?, "300\n", "host={host}");
    }
    // The same settings trusting another certificate must fail, or the two successes
    // above prove nothing about verification.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])?;
    let other_path = env.dir().join("other-root.crt");
    std::fs::write(&other_path, other.cert.pem())?;
    let wrong = strict_dsn(&env, "127.0.0.1", ANALYST, "").replace(
        &env.cert_path.display().to_string(),
        &other_path.display().to_string(),
    );
    let out = psql(&wrong, &["-c", "SELECT 1"]).await?;
    assert!(
        !out.status.success(),
        "verify-full accepted a certificate it does not trust"
    );
    let err = text(&out.stderr);
    assert!(err.contains("certificate verify failed"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_commands_match_direct_output_exactly() -> Result<()> {
    let env = TestEnv::start().await?;
    let direct = env.direct_dsn();
    // Expected content proves the comparisons are not between two empty outputs.
    let cases: [(&str, &str); 5] = [
        (
            r"\d customers",
            "\"customers_tenant_id_fkey\" FOREIGN KEY (tenant_id) REFERENCES tenants(id)",
        ),
        (r"\d+ orders", "tenant key: row-level security by tenant"),
        (r"\dt", "(3 rows)"),
        (r"\l", "quickstart"),
        // Column widths follow the longest name (the proxy adds schema `portcullis`).
        (r"\dn", "| pg_database_owner"),
    ];
    // One session per side runs every command (`-c` may repeat).
    let args: Vec<&str> = cases
        .iter()
        .flat_map(|(command, _)| ["-c", *command])
        .collect();
    let straight = psql(&direct, &args).await?;
    assert!(
        straight.status.success(),
        "direct: {}",
        text(&straight.stderr)
    );
    let expected = text(&straight.stdout);
    for (command, needle) in cases {
        assert!(expected.contains(needle), "{command}: {expected}");
    }
    for who in [ADMIN, ANALYST, SUPPORT] {
        let proxied = psql(&strict_dsn(&env, "127.0.0.1", who, ""), &args).await?;
        assert!(
            proxied.status.success(),
            "as {}: {}",
            who.0,
            text(&proxied.stderr)
        );
        // Byte equality, no normalisation: psql's catalog queries, their results
        // and the notices (none) are what the database gives.
        assert_eq!(text(&proxied.stdout), expected, "as {}", who.0);
        assert_eq!(text(&proxied.stderr), "", "as {}", who.0);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_out_and_in_round_trip() -> Result<()> {
    let env = TestEnv::start().await?;
    let proxied_csv = env.dir().join("proxied.csv");
    let direct_csv = env.dir().join("direct.csv");

    // Data-bearing checks run as the DBA, whom no row filter or column mask applies to.
    let admin = strict_dsn(&env, "127.0.0.1", ADMIN, "");
    let copy_out = format!(r"\copy customers TO '{}' CSV", proxied_csv.display());
    let out = psql(&admin, &["-v", "ON_ERROR_STOP=1", "-c", &copy_out]).await?;
    assert_eq!(stdout(&out)?, "COPY 300\n");
    let copy_out = format!(r"\copy customers TO '{}' CSV", direct_csv.display());
    stdout(
        &psql(
            &env.direct_dsn(),
            &["-v", "ON_ERROR_STOP=1", "-c", &copy_out],
        )
        .await?,
    )?;
    let proxied = std::fs::read(&proxied_csv)?;
    let straight = std::fs::read(&direct_csv)?;
    assert_eq!(proxied.iter().filter(|b| **b == b'\n').count(), 300);
    assert!(
        proxied == straight,
        "COPY TO output differs from the direct one"
    );

    // A scratch table made by the DBA through the proxy, filled with COPY FROM STDIN.
    let out = psql(
        &admin,
        &[
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "CREATE TABLE copy_scratch (LIKE customers)",
        ],
    )
    .await?;
    assert_eq!(stdout(&out)?, "CREATE TABLE\n");
    let copy_in = format!(r"\copy copy_scratch FROM '{}' CSV", proxied_csv.display());
    let out = psql(&admin, &["-v", "ON_ERROR_STOP=1", "-c", &copy_in]).await?;
    assert_eq!(stdout(&out)?, "COPY 300\n");

    // The analyst may not: COPY FROM STDIN is a write. The CSV is read, sent, and the
    // session ends cleanly with the proxy's error rather than hanging in COPY mode.
    let analyst = strict_dsn(&env, "127.0.0.1", ANALYST, "");
    let out = psql(&analyst, &["-v", "ON_ERROR_STOP=1", "-c", &copy_in]).await?;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("may not run write statements (COPY)"), "{err}");

    // A bad row deep into a large COPY FROM STDIN: the server's error arrives while the
    // client is still sending; nothing is loaded and the same session goes on.
    let bad_csv = env.dir().join("bad.tsv");
    let rows: String = (0..100_000)
        .map(|i| {
            if i == 90_000 {
                "oops\tbad\n".to_owned()
            } else {
                format!("{i}\tnote {i}\n")
            }
        })
        .collect();
    std::fs::write(&bad_csv, rows)?;
    stdout(
        &env.psql_direct(&["-c", "CREATE TABLE copy_errors (id int, note text)"])
            .await?,
    )?;
    let bad_copy = format!(r"\copy copy_errors FROM '{}'", bad_csv.display());
    let args = [
        "-At",
        "-c",
        bad_copy.as_str(),
        "-c",
        "SELECT count(*) FROM copy_errors",
    ];
    let proxied = psql(&admin, &args).await?;
    let straight = psql(&env.direct_dsn(), &args).await?;
    assert_eq!(text(&proxied.stdout), "0\n");
    let err = text(&proxied.stderr);
    assert!(err.contains("COPY copy_errors, line 90001"), "{err}");
    assert_eq!(err, text(&straight.stderr));

    let count = stdout(
        &env.psql_direct(&["-c", "SELECT count(*) FROM copy_scratch"])
            .await?,
    )?;
    assert_eq!(count, "300\n");
    let differing = stdout(
        &env.psql_direct(&[
            "-c",
            "SELECT count(*) FROM ((TABLE customers EXCEPT ALL TABLE copy_scratch) \
             UNION ALL (TABLE copy_scratch EXCEPT ALL TABLE customers)) d",
        ])
        .await?,
    )?;
    assert_eq!(differing, "0\n", "copied rows differ from the source rows");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_statement_and_failed_transaction_behave_like_postgres() -> Result<()> {
    let env = TestEnv::start().await?;
    let admin = strict_dsn(&env, "127.0.0.1", ADMIN, "");

    let out = psql(
        &admin,
        &["-At", "-v", "ON_ERROR_STOP=1", "-c", "SELECT 1; SELECT 2"],
    )
    .await?;
    assert_eq!(stdout(&out)?, "1\n2\n");

    // An error inside a transaction: later statements are refused by the server until
    // ROLLBACK, which undoes the update. Same script, same output, both ways.
    let script = "BEGIN;\n\
         UPDATE customers SET name = 'changed' WHERE id = 1;\n\
         SELECT 1 / 0;\n\
         SELECT name FROM customers WHERE id = 1;\n\
         ROLLBACK;\n\
         SELECT name <> 'changed' FROM customers WHERE id = 1;\n";
    let script_path = env.dir().join("txn.sql");
    std::fs::write(&script_path, script)?;
    let script_arg = script_path.display().to_string();
    let proxied = psql(&admin, &["-At", "-f", &script_arg]).await?;
    let straight = psql(&env.direct_dsn(), &["-At", "-f", &script_arg]).await?;
    assert_eq!(text(&proxied.stdout), "BEGIN\nUPDATE 1\nROLLBACK\nt\n");
    assert_eq!(text(&proxied.stdout), text(&straight.stdout));
    let err = text(&proxied.stderr);
    assert!(err.contains("ERROR:  division by zero"), "{err}");
    assert!(
        err.contains("ERROR:  current transaction is aborted"),
        "{err}"
    );
    assert_eq!(err, text(&straight.stderr));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_and_parameter_status_reach_the_client() -> Result<()> {
    let env = TestEnv::start().await?;
    let admin = strict_dsn(&env, "127.0.0.1", ADMIN, "application_name=myapp");
    // DO is not parsed by the proxy; the DBA's passthrough forwards it.
    let out = psql(
        &admin,
        &[
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "DO $$BEGIN RAISE NOTICE 'hi from %', 'plpgsql'; END$$",
        ],
    )
    .await?;
    assert_eq!(stdout(&out)?, "DO\n");
    assert_eq!(text(&out.stderr), "NOTICE:  hi from plpgsql\n");

    // application_name travels in the startup packet; the server reports it back in
    // ParameterStatus, which psql shows as a variable, and SHOW reads the setting.
    let out = psql(
        &admin,
        &[
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "SHOW application_name",
            "-c",
            r"\echo :SERVER_VERSION_NUM",
        ],
    )
    .await?;
    let shown = stdout(&out)?;
    let mut lines = shown.lines();
    assert_eq!(lines.next(), Some("myapp"));
    let direct_version = stdout(&env.psql_direct(&["-c", "SHOW server_version_num"]).await?)?;
    assert_eq!(
        lines.next(),
        Some(direct_version.trim()),
        "server_version ParameterStatus"
    );

    // A warning for a statement the proxy parses, for a non-DBA user, as direct.
    let analyst = strict_dsn(&env, "localhost", ANALYST, "");
    let proxied = psql(
        &analyst,
        &["-At", "-c", "ROLLBACK", "-c", "SHOW application_name"],
    )
    .await?;
    let straight = psql(&env.direct_dsn(), &["-At", "-c", "ROLLBACK"]).await?;
    assert_eq!(
        stdout(&proxied)?,
        "ROLLBACK\npsql\n",
        "psql's default application_name"
    );
    let warning = text(&proxied.stderr);
    assert_eq!(warning, "WARNING:  there is no transaction in progress\n");
    assert_eq!(warning, text(&straight.stderr));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_positions_point_into_the_client_text() -> Result<()> {
    let env = TestEnv::start().await?;
    // A typo on line 3 of a formatted, commented query: psql prints the line the
    // server's error position falls on, with a caret under the offending word.
    let query = "-- find one customer\nselect id,\n       nme\n  from customers\n where id = 1";
    let proxied = psql(&strict_dsn(&env, "127.0.0.1", ADMIN, ""), &["-c", query]).await?;
    let straight = psql(&env.direct_dsn(), &["-c", query]).await?;
    let expected = text(&straight.stderr);
    assert!(
        expected.contains("LINE 3:        nme\n               ^"),
        "{expected}"
    );
    // Best is the same caret; a proxy that cannot map the position may leave it out
    // (psql then shows no LINE), but one pointing elsewhere misleads.
    let without_position: String = expected
        .lines()
        .filter(|l| !l.starts_with("LINE 3:") && l.trim() != "^")
        .map(|l| format!("{l}\n"))
        .collect();
    let got = text(&proxied.stderr);
    assert!(
        got == expected || got == without_position,
        "the error position does not point into the client's text:\n{got}\nexpected:\n{expected}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_dump_and_restore_through_the_proxy() -> Result<()> {
    let env = TestEnv::start().await?;
    let dump = |dsn: String| async move {
        let out = tokio::process::Command::new("pg_dump")
            .arg(&dsn)
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE")
            .output()
            .await?;
        // pg_dump 15.14+ fences the script with a random \restrict key per run.
        let script: String = stdout(&out)?
            .lines()
            .filter(|l| !l.starts_with("\\restrict ") && !l.starts_with("\\unrestrict "))
            .map(|l| format!("{l}\n"))
            .collect();
        anyhow::Ok(script)
    };
    // pg_dump: catalog queries, a REPEATABLE READ snapshot, LOCK TABLE, COPY TO STDOUT.
    let proxied = dump(strict_dsn(&env, "127.0.0.1", ADMIN, "")).await?;
    let straight = dump(env.direct_dsn()).await?;
    assert!(
        proxied.contains("COPY public.orders ("),
        "{}",
        &proxied[..proxied.len().min(2000)]
    );
    assert!(
        proxied == straight,
        "pg_dump through the proxy differs from the direct dump"
    );

    // Restore the dump through the proxy (DDL, set_config, COPY FROM STDIN with data in
    // the script) into a fresh database, then dump that straight: the same again.
    stdout(&env.psql_direct(&["-c", "CREATE DATABASE restored"]).await?)?;
    let script = env.dir().join("dump.sql");
    std::fs::write(&script, &proxied)?;
    let restored_dsn = strict_dsn(&env, "127.0.0.1", ADMIN, "")
        .replace(&format!("dbname={}", env.database), "dbname=restored");
    let out = psql(
        &restored_dsn,
        &[
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            &script.display().to_string(),
        ],
    )
    .await?;
    assert!(
        out.status.success(),
        "restore through the proxy: {}",
        text(&out.stderr)
    );
    let direct_restored = env
        .direct_dsn()
        .replace(&format!("dbname={}", env.database), "dbname=restored");
    let again = dump(direct_restored).await?;
    assert!(
        again == straight,
        "the database restored through the proxy differs from the original"
    );
    Ok(())
}
