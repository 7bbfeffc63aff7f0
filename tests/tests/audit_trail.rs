//! The proxy's audit trail: logins, statements (allowed and denied, with rows and
//! SQLSTATE), session ends; literals never reach an event; the chain verifies.

use std::path::Path;

use anyhow::Result;
use portcullis_tests::{ADMIN, ANALYST, EnvOptions, TestEnv, eventually, metric, stdout};

/// A proxy auditing everything to the JSON-lines file `trail` (state under `dir`), with
/// `audit_keys` added to its `[audit]` table.
async fn start_with_trail(dir: &Path, trail: &Path, audit_keys: &str) -> Result<TestEnv> {
    TestEnv::start_with(EnvOptions {
        extra_config: format!(
            r#"
[audit]
instance = "test-proxy"
state_dir = "{state}"
{audit_keys}

[[audit.sinks]]
name = "local"
kind = "file"
format = "json"
flush_ms = 50

[audit.sinks.file]
path = "{trail}"
"#,
            state = dir.join("state").display(),
            trail = trail.display(),
        ),
        ..EnvOptions::default()
    })
    .await
}

/// The events of a JSON-lines trail.
fn parse_events(text: &str) -> Result<Vec<serde_json::Value>> {
    Ok(text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_and_logins_are_audited_without_their_literals() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let trail = dir.path().join("audit.jsonl");
    let env = start_with_trail(dir.path(), &trail, "").await?;

    let secret_email = stdout(
        &env.psql_direct(&["-c", "SELECT email FROM customers ORDER BY id LIMIT 1"])
            .await?,
    )?;
    let secret_email = secret_email.trim().to_owned();
    let out = env
        .psql(
            ANALYST,
            "",
            &[
                "-c",
                &format!("SELECT id FROM customers WHERE email = '{secret_email}'"),
                "-c",
                "SELECT id FROM orders LIMIT 7",
            ],
        )
        .await?;
    stdout(&out)?;
    let denied = env
        .psql(ANALYST, "", &["-c", "DELETE FROM orders WHERE id = 12345"])
        .await?;
    assert!(!denied.status.success());
    let wrong = env
        .psql(("analyst", "wrong-password"), "", &["-c", "SELECT 1"])
        .await?;
    assert!(!wrong.status.success());

    let read = || std::fs::read_to_string(&trail).unwrap_or_default();
    let complete = eventually(10, || async {
        let t = read();
        t.matches("\"kind\":\"session_end\"").count() >= 2
            && t.contains("\"kind\":\"login_failure\"")
    })
    .await;
    let text = read();
    assert!(
        complete,
        "two session ends and a failed login expected in:\n{text}"
    );

    let events = parse_events(&text)?;
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert!(
        kinds.contains(&"login_success") && kinds.contains(&"login_failure"),
        "{kinds:?}"
    );
    // The start is a configuration change, naming the policy version in force.
    let started = &events[0];
    assert_eq!(started["kind"], "config_change", "{started}");
    assert!(
        started["detail"]
            .as_str()
            .is_some_and(|d| d.contains("proxy started") && d.contains("policy version")),
        "{started}"
    );

    let statements: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["kind"] == "statement").collect();
    let limited = statements
        .iter()
        .find(|e| {
            e["statement"]["text"]
                .as_str()
                .is_some_and(|t| t.contains("orders") && t.contains("LIMIT"))
        })
        .expect("the LIMIT 7 statement is audited");
    assert_eq!(limited["rows"], 7, "{limited}");
    assert_eq!(limited["decision"]["outcome"], "allowed");
    let delete = statements
        .iter()
        .find(|e| e["decision"]["outcome"] == "denied")
        .expect("the DELETE is audited as denied");
    assert_eq!(delete["sqlstate"], "42501", "{delete}");
    assert!(
        delete["decision"]["rule"]
            .as_str()
            .is_some_and(|r| r.contains("roles.analyst")),
        "{delete}"
    );

    // Session totals count every statement received, and the refused ones apart.
    let totals: Vec<(u64, u64)> = events
        .iter()
        .filter(|e| e["kind"] == "session_end")
        .map(|e| {
            (
                e["session"]["statements"].as_u64().unwrap_or(0),
                e["session"]["denied"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert!(
        totals.contains(&(2, 0)) && totals.contains(&(1, 1)),
        "{totals:?}"
    );

    // The email lookup names what it touched, with the column classes.
    let lookup = statements
        .iter()
        .find(|e| {
            e["statement"]["text"]
                .as_str()
                .is_some_and(|t| t.contains("customers") && t.contains("email"))
        })
        .expect("the email lookup is audited");
    assert_eq!(lookup["decision"]["outcome"], "rewritten", "{lookup}");
    let tables = &lookup["statement"]["tables"];
    assert_eq!(tables[0]["name"], "public.customers", "{lookup}");
    let columns: Vec<(String, String)> = tables[0]["columns"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_owned(),
                c["classes"].to_string(),
            )
        })
        .collect();
    assert_eq!(
        columns,
        [
            ("id".to_owned(), "null".to_owned()),
            ("email".to_owned(), r#"["pii.email"]"#.to_owned())
        ],
        "{lookup}"
    );
    assert!(lookup["statement"].get("full_text").is_none());

    // No literal from any statement appears anywhere in the trail.
    assert!(
        !text.contains(&secret_email),
        "literal leaked into the audit trail"
    );
    assert!(
        !text.contains("12345"),
        "literal leaked into the audit trail"
    );
    assert!(!text.contains("wrong-password"));

    // The same statement shape is counted, with its latency, in Prometheus.
    let fingerprint = limited["statement"]["fingerprint"]
        .as_str()
        .expect("fingerprint");
    let metrics = env.metrics().await?;
    let count_line = format!(
        "portcullis_statement_fingerprint_duration_seconds_count{{fingerprint=\"{fingerprint}\"}} 1"
    );
    assert!(
        metrics.contains(&count_line),
        "{count_line} missing from metrics"
    );

    // So is the audit pipeline: the file sink delivered what the trail holds, and
    // nothing was lost or set aside.
    let delivered = r#"portcullis_audit_sink_delivered_total{sink="local"}"#;
    assert!(
        metric(&metrics, delivered) > 0.0,
        "{delivered} in:\n{metrics}"
    );
    for zero in [
        r#"portcullis_audit_sink_lost_total{sink="local"} 0"#,
        r#"portcullis_audit_sink_dead_lettered_total{sink="local"} 0"#,
        "portcullis_audit_events_lost_total 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == zero),
            "{zero} missing from metrics:\n{metrics}"
        );
    }
    assert!(metric(&metrics, "portcullis_audit_events_accepted_total") >= events.len() as f64);

    let report = portcullis_tests::portcullis_audit::verify::verify([text.as_bytes()], None);
    assert!(report.is_ok(), "{report}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_text_and_slow_statements_when_configured() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let trail = dir.path().join("audit.jsonl");
    let env = start_with_trail(
        dir.path(),
        &trail,
        r#"
full_statement_text = true
slow_statement_ms = 300
"#,
    )
    .await?;

    let out = env
        .psql(
            ADMIN,
            "",
            &[
                "-c",
                "SELECT 'fast-marker' AS m",
                "-c",
                "SELECT pg_sleep(0.5), 'slow-marker' AS m",
            ],
        )
        .await?;
    stdout(&out)?;
    // A SIGHUP reload is a configuration change (nextest runs each test in its own
    // process, so the signal reaches only this test's proxy).
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()?;
    assert!(status.success(), "kill -HUP failed");

    let read = || std::fs::read_to_string(&trail).unwrap_or_default();
    let complete = eventually(10, || async {
        let t = read();
        t.contains("\"kind\":\"session_end\"") && t.contains("user store")
    })
    .await;
    let text = read();
    assert!(complete, "a session end expected in:\n{text}");
    let events = parse_events(&text)?;
    let full = |e: &&serde_json::Value| e["statement"]["full_text"].as_str().map(str::to_owned);

    // The client's own text is kept beside the normalized one.
    let fast = events
        .iter()
        .find(|e| full(e).is_some_and(|t| t.contains("'fast-marker'")))
        .expect("the fast statement with its full text");
    assert_eq!(fast["kind"], "statement");
    assert!(
        !fast["statement"]["text"]
            .as_str()
            .unwrap_or_default()
            .contains("fast-marker")
    );

    // Only the slow one is reported again as slow_statement, with its duration.
    let slow: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["kind"] == "slow_statement")
        .collect();
    assert_eq!(slow.len(), 1, "{text}");
    assert!(
        full(&slow[0]).is_some_and(|t| t.contains("slow-marker")),
        "{text}"
    );
    assert!(
        slow[0]["duration_us"]
            .as_u64()
            .is_some_and(|d| d >= 300_000),
        "{text}"
    );
    let original = events
        .iter()
        .find(|e| e["kind"] == "statement" && full(e) == full(&slow[0]))
        .expect("the slow statement's own event");
    assert_ne!(original["id"], slow[0]["id"]);
    assert_eq!(
        original["statement"]["fingerprint"],
        slow[0]["statement"]["fingerprint"]
    );

    let changes: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "config_change")
        .filter_map(|e| e["detail"].as_str())
        .collect();
    assert!(
        changes
            .iter()
            .any(|d| d.contains("TLS certificate and key reloaded"))
            && changes
                .iter()
                .any(|d| d.contains("user store") && d.contains("reloaded")),
        "{changes:?}"
    );

    let report = portcullis_tests::portcullis_audit::verify::verify([text.as_bytes()], None);
    assert!(report.is_ok(), "{report}");
    Ok(())
}
