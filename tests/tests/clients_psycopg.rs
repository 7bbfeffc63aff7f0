//! psycopg 3 (libpq underneath, pipeline mode, server-side cursors, binary transfer)
//! through the proxy with `sslmode=verify-full` and `channel_binding=require`.
//!
//! `tests/py/psycopg_check.py` runs the same checks once straight against the database
//! and once through the proxy; its two JSON summaries must agree, and a read-only user
//! must be refused cleanly without losing the connection.

use std::path::Path;

use anyhow::{Context, Result, bail};
use portcullis_tests::{ADMIN, ANALYST, TestEnv};
use serde_json::{Value, json};

/// The interpreter with psycopg installed (`scripts/test` sets `PORTCULLIS_PYTHON`).
fn python() -> String {
    std::env::var("PORTCULLIS_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Runs `tests/py/<script>` with `args` and parses the JSON summary it prints.
async fn run_script(script: &str, args: &[&str]) -> Result<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("py")
        .join(script);
    let interpreter = python();
    let out = tokio::process::Command::new(&interpreter)
        .arg(&script)
        .args(args)
        .env_remove("PGPASSWORD")
        .env_remove("PGSERVICE")
        .env_remove("PGSSLMODE")
        .output()
        .await
        .with_context(|| format!("running {interpreter}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if stderr.contains("No module named 'psycopg'") {
            bail!(
                "{interpreter} has no psycopg; set PORTCULLIS_PYTHON (scripts/test makes a venv)"
            );
        }
        bail!("{} failed ({}): {stderr}", script.display(), out.status);
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("summary: {}", String::from_utf8_lossy(&out.stdout)))
}

fn strict_dsn(env: &TestEnv, host: &str, (user, password): (&str, &str)) -> String {
    format!(
        "host={host} port={} dbname={} user={user} password={password} sslmode=verify-full sslrootcert={} channel_binding=require",
        env.proxy_addr.port(),
        env.database,
        env.cert_path.display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_through_proxy_matches_direct() -> Result<()> {
    let env = TestEnv::start().await?;
    let direct = run_script("psycopg_check.py", &[&env.direct_dsn(), "py_direct"]).await?;
    let admin = strict_dsn(&env, "127.0.0.1", ADMIN);
    let analyst = strict_dsn(&env, "localhost", ANALYST);
    let proxied = run_script("psycopg_check.py", &[&admin, "py_proxied", &analyst]).await?;

    let sections = [
        "server_version",
        "params",
        "prepared",
        "binary",
        "executemany",
        "copy",
        "named_cursor",
        "pipeline",
        "session",
    ];
    for section in sections {
        assert!(
            direct.get(section).is_some(),
            "direct summary lacks {section}"
        );
        assert_eq!(
            proxied.get(section),
            direct.get(section),
            "section {section}"
        );
    }

    // What the agreeing values are, so that agreement means something.
    assert_eq!(proxied["params"]["plus_one"], json!(42));
    assert_eq!(
        proxied["params"]["mixed"][0],
        json!("it's \"quoted\" \\ $1 %s")
    );
    assert_eq!(proxied["params"]["mixed"][2], json!("Decimal:24.690"));
    assert_eq!(
        proxied["prepared"]["counts"].as_array().map(Vec::len),
        Some(10)
    );
    assert_eq!(
        proxied["prepared"]["server_prepared"],
        json!(1),
        "prepare=True made no server-side statement"
    );
    assert_eq!(
        proxied["binary"]["result_format"],
        json!(1),
        "results were not binary"
    );
    assert_eq!(proxied["binary"]["rows"].as_array().map(Vec::len), Some(50));
    assert_eq!(proxied["binary"]["typed"][1], json!([1, null, -3]));
    assert_eq!(
        proxied["executemany"],
        json!([500, 428, "Decimal:124997.50"])
    );
    assert_eq!(proxied["copy"]["out_lines"], json!(300));
    assert_eq!(proxied["copy"]["in"], json!([2000, "Decimal:4000000.00"]));
    let cursor = &proxied["named_cursor"];
    assert_eq!(cursor["rows"], json!(1500));
    assert_eq!(cursor["id_sum"], json!(1500 * 1501 / 2));
    let batches: Vec<u64> = serde_json::from_value(cursor["batches"].clone())?;
    assert_eq!(batches.len(), 16, "{batches:?}");
    assert!(batches[..15].iter().all(|n| *n == 97), "{batches:?}");
    let pipeline = &proxied["pipeline"];
    assert_eq!(pipeline["customers"], json!(300));
    assert_eq!(pipeline["updated"], json!(50));
    assert_eq!(pipeline["times3"], json!(42));
    assert_eq!(pipeline["error"], json!(["DivisionByZero"]));
    assert_eq!(pipeline["after_error"], json!("recovered"));

    let session = &proxied["session"];
    assert_eq!(session["application_name"], json!("changed mid-session"));
    assert_eq!(session["timezone"], json!("Asia/Kolkata"));
    assert_eq!(session["datestyle"], json!("ISO, DMY"));
    assert_eq!(session["as_text"], json!("2020-01-31 17:30:00+05:30"));
    assert_eq!(session["dmy"], json!("2020-02-01"));
    assert_eq!(
        session["timestamptz"],
        json!("datetime:2020-01-01 05:30:00+05:30")
    );
    assert_eq!(session["after_reset"], json!(true));

    let denied = &proxied["denied"];
    assert_eq!(denied["ssl_in_use"], json!(true));
    let direct_tls = denied["direct_tls"].as_str().unwrap_or_default();
    assert!(
        direct_tls == "ok" || direct_tls.starts_with("skipped"),
        "sslnegotiation=direct: {direct_tls}"
    );
    assert_eq!(denied["autocommit"]["sqlstate"], json!("42501"), "{denied}");
    let message = denied["autocommit"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("may not run write statements (DELETE)"),
        "{message}"
    );
    assert_eq!(denied["autocommit_after"], json!("still usable"));
    // Like a server-side error, the denial fails the open transaction.
    assert_eq!(
        denied["in_transaction"],
        json!({"sqlstate": "42501", "status": "INERROR"})
    );
    assert_eq!(denied["transaction_after"], json!("still usable"));
    assert_eq!(
        denied["pipeline"],
        json!([["InsufficientPrivilege", "42501"]])
    );
    assert_eq!(denied["pipeline_after"], json!("recovered"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_name_the_sender_as_the_client_knows_it() -> Result<()> {
    let env = TestEnv::start().await?;
    let direct = run_script("psycopg_notify.py", &[&env.direct_dsn()]).await?;
    let proxied = run_script(
        "psycopg_notify.py",
        &[&strict_dsn(&env, "127.0.0.1", ANALYST)],
    )
    .await?;
    let payloads = json!(["from myself", "from the other session"]);
    assert_eq!(direct["payloads"], payloads);
    assert_eq!(direct["own_pid_matches"], json!(true), "{direct}");
    assert_eq!(proxied["payloads"], payloads);
    assert_eq!(
        proxied["channels"],
        json!(["portcullis_pids", "portcullis_pids"])
    );
    assert_eq!(proxied["pids_differ"], json!(true));
    // The proxy hands out its own BackendKeyData process id, so the process id in a
    // NotificationResponse (the upstream backend's) must be translated to match.
    assert_eq!(
        proxied["own_pid_matches"],
        json!(true),
        "a session's own notification carries a process id other than its BackendKeyData's: {proxied}"
    );
    assert_eq!(
        proxied["other_pid_matches"],
        json!(true),
        "another proxied session's notification carries a process id other than that session's BackendKeyData's: {proxied}"
    );
    Ok(())
}
