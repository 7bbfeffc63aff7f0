//! The Prometheus endpoint counts what happened: connections, sessions, statement
//! decisions, statement durations and authentication failures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use anyhow::{Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::{Client, SimpleQueryMessage};

use portcullis_tests::{ANALYST, SUPPORT, TestEnv, client_tls, eventually, metric, panics_so_far};

async fn pg_connect(env: &TestEnv, who: (&str, &str)) -> Result<Client, tokio_postgres::Error> {
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(
        client_tls(&env.cert_path).expect("client TLS"),
    );
    let (client, connection) =
        tokio_postgres::connect(&env.proxy_dsn(who, "sslmode=require"), tls).await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn rows(client: &Client, sql: &str) -> Result<usize, tokio_postgres::Error> {
    Ok(client
        .simple_query(sql)
        .await?
        .iter()
        .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
        .count())
}

/// Sends `sql` and expects the server to refuse it with `code`.
async fn expect_refused(client: &Client, sql: &str, code: &str) -> Result<()> {
    match client.simple_query(sql).await {
        Ok(_) => bail!("{sql} was allowed"),
        Err(e) => {
            assert_eq!(
                e.as_db_error().map(|d| d.code().code()),
                Some(code),
                "{sql}: {e}"
            );
            Ok(())
        }
    }
}

const ALLOWED: &str = r#"portcullis_statements_total{outcome="allowed"}"#;
const REWRITTEN: &str = r#"portcullis_statements_total{outcome="rewritten"}"#;
const DENIED: &str = r#"portcullis_statements_total{outcome="denied"}"#;
const PARSE_ERROR: &str = r#"portcullis_statements_total{outcome="parse_error"}"#;
const DURATIONS: &str = "portcullis_statement_duration_seconds_count";
const ACCEPTED: &str = r#"portcullis_connections_total{outcome="accepted"}"#;
const ACTIVE: &str = "portcullis_active_sessions";
const WRONG_PASSWORD: &str = r#"portcullis_auth_failures_total{kind="wrong_password"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_connections_sessions_statements_and_durations() -> Result<()> {
    let panics = panics_so_far();
    let env = TestEnv::start().await?;
    let m0 = env.metrics().await?;
    assert!(m0.contains("200 OK"), "{m0}");
    assert_eq!(metric(&m0, ACTIVE), 0.0);

    let analyst = pg_connect(&env, ANALYST).await?;
    let support = pg_connect(&env, SUPPORT).await?;
    let m1 = env.metrics().await?;
    assert_eq!(metric(&m1, ACCEPTED) - metric(&m0, ACCEPTED), 2.0, "{m1}");
    assert_eq!(metric(&m1, ACTIVE), 2.0, "{m1}");

    // 1 allowed as sent, 3 rewritten (the analyst reads customers through masks,
    // support reads and updates orders through its tenant's row filter), 3 denied,
    // 1 unparseable: each one Query message, one ReadyForQuery.
    assert_eq!(rows(&analyst, "SELECT 1").await?, 1);
    assert_eq!(
        rows(&analyst, "SELECT id FROM customers ORDER BY id LIMIT 3").await?,
        3
    );
    assert_eq!(rows(&support, "SELECT count(*) FROM orders").await?, 1);
    assert_eq!(
        rows(&support, "UPDATE orders SET total = total WHERE id = 1").await?,
        0
    );
    expect_refused(&analyst, "DELETE FROM orders", "42501").await?;
    expect_refused(&analyst, "UPDATE customers SET name = name", "42501").await?;
    expect_refused(&support, "DROP TABLE orders", "42501").await?;
    expect_refused(&analyst, "SELEC 1", "42601").await?;

    // A refused statement's error can reach the client before its ReadyForQuery is
    // counted; wait for the last one.
    let m1_durations = metric(&m1, DURATIONS);
    eventually(5, || async {
        metric(&env.metrics().await.unwrap_or_default(), DURATIONS) - m1_durations >= 8.0
    })
    .await;
    let m2 = env.metrics().await?;
    // Labelled families appear once they have a sample.
    for family in [
        "# TYPE portcullis_statements counter",
        "# TYPE portcullis_statement_duration_seconds histogram",
        "# TYPE portcullis_connections counter",
        "# TYPE portcullis_active_sessions gauge",
    ] {
        assert!(m2.contains(family), "{family} missing from:\n{m2}");
    }
    let delta = |series: &str| metric(&m2, series) - metric(&m1, series);
    assert_eq!(delta(ALLOWED), 1.0, "{m2}");
    assert_eq!(delta(REWRITTEN), 3.0, "{m2}");
    assert_eq!(delta(DENIED), 3.0, "{m2}");
    assert_eq!(delta(PARSE_ERROR), 1.0, "{m2}");
    assert_eq!(
        delta(DURATIONS),
        8.0,
        "one duration per statement batch:\n{m2}"
    );
    assert!(
        metric(&m2, "portcullis_statement_duration_seconds_sum") > 0.0,
        "{m2}"
    );

    // A failed login is counted as a connection and an authentication failure.
    let failed = pg_connect(&env, (ANALYST.0, "wrong")).await;
    assert!(failed.is_err());
    drop((analyst, support));
    let idle = eventually(5, || async {
        metric(&env.metrics().await.unwrap_or_default(), ACTIVE) == 0.0
    })
    .await;
    let m3 = env.metrics().await?;
    assert!(idle, "closed sessions still counted as active:\n{m3}");
    assert_eq!(metric(&m3, ACCEPTED) - metric(&m1, ACCEPTED), 1.0, "{m3}");
    assert_eq!(metric(&m3, WRONG_PASSWORD), 1.0, "{m3}");
    assert_eq!(
        metric(&m3, ALLOWED),
        metric(&m2, ALLOWED),
        "nothing counted twice"
    );

    // Anything but /metrics is 404.
    let mut s = tokio::net::TcpStream::connect(env.metrics_addr.expect("metrics enabled")).await?;
    s.write_all(b"GET /secrets HTTP/1.0\r\nHost: x\r\n\r\n")
        .await?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).await?;
    assert!(
        reply.starts_with("HTTP/1.0 404") || reply.starts_with("HTTP/1.1 404"),
        "{reply}"
    );
    assert_eq!(panics_so_far(), panics);
    Ok(())
}
