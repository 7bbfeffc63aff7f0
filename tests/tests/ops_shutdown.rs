//! Graceful shutdown: no new connections, running statements and open transactions
//! finish, idle sessions leave at once with FATAL 57P01, and whatever is still busy
//! after `limits.shutdown_grace_secs` is cut.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use portcullis_tests::{
    ADMIN, EnvOptions, SUPPORT, TestEnv, client_tls, eventually, panics_so_far,
};

type ConnectionTask = JoinHandle<Result<(), tokio_postgres::Error>>;

/// A session through the proxy, with the task driving its connection (which ends with
/// the server's unsolicited FATAL, if any).
async fn session(env: &TestEnv, who: (&str, &str), app: &str) -> Result<(Client, ConnectionTask)> {
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(client_tls(&env.cert_path)?);
    let dsn = env.proxy_dsn(who, &format!("sslmode=require application_name={app}"));
    let (client, connection) = tokio_postgres::connect(&dsn, tls).await?;
    Ok((client, tokio::spawn(connection)))
}

async fn direct(env: &TestEnv) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(&env.direct_dsn(), NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn scalar(client: &Client, sql: &str) -> Result<String> {
    for m in client.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(row) = m {
            return Ok(row.get(0).unwrap_or_default().to_owned());
        }
    }
    bail!("no row from {sql}")
}

/// Waits until the upstream backend of application `app` runs a statement.
async fn wait_until_active(db: &Client, app: &str) -> Result<()> {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}' AND state = 'active'"
    );
    if !eventually(5, || async {
        scalar(db, &sql).await.ok().as_deref() == Some("1")
    })
    .await
    {
        bail!("statement of {app} never became active upstream");
    }
    Ok(())
}

/// The SQLSTATE a session's connection task ended with, within `secs`.
async fn connection_end(task: ConnectionTask, secs: u64) -> Result<String> {
    let ended = tokio::time::timeout(Duration::from_secs(secs), task)
        .await
        .with_context(|| format!("session still open {secs} s later"))??;
    match ended {
        Ok(()) => bail!("session closed without an error"),
        Err(e) => Ok(e.as_db_error().map_or_else(
            || format!("not a server error: {e}"),
            |d| d.code().code().to_owned(),
        )),
    }
}

async fn refuses_connections(env: &TestEnv) -> bool {
    eventually(3, || async {
        tokio::net::TcpStream::connect(env.proxy_addr)
            .await
            .is_err()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_running_statements_and_ends_idle_sessions() -> Result<()> {
    let panics = panics_so_far();
    let mut env = TestEnv::start().await?;
    let db = direct(&env).await?;
    let (busy, busy_conn) = session(&env, ADMIN, "drain_busy").await?;
    let (idle, idle_conn) = session(&env, ADMIN, "drain_idle").await?;
    assert_eq!(scalar(&idle, "SELECT 1").await?, "1");

    let running = tokio::spawn(async move {
        let r = scalar(&busy, "SELECT 'finished' FROM pg_sleep(2)").await;
        (r, busy)
    });
    wait_until_active(&db, "drain_busy").await?;
    env.shutdown_token().cancel();

    // The idle session is told at once.
    assert_eq!(connection_end(idle_conn, 2).await?, "57P01", "idle session");
    // No new clients.
    assert!(
        refuses_connections(&env).await,
        "still accepting connections after shutdown"
    );
    // The running statement completes normally, then its session gets 57P01.
    let (result, _busy) = tokio::time::timeout(Duration::from_secs(5), running).await??;
    assert_eq!(result?, "finished");
    assert_eq!(
        connection_end(busy_conn, 2).await?,
        "57P01",
        "busy session after its statement"
    );
    // With every session gone, the server finishes well before the grace period ends.
    tokio::time::timeout(Duration::from_secs(3), env.stop_proxy())
        .await
        .context("server did not stop")?;
    assert_eq!(panics_so_far(), panics);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_transaction_may_commit_during_the_drain() -> Result<()> {
    let panics = panics_so_far();
    let env = TestEnv::start().await?;
    let db = direct(&env).await?;
    let (tx, tx_conn) = session(&env, SUPPORT, "drain_tx").await?;
    let order = scalar(
        &db,
        "SELECT min(id) FROM orders WHERE tenant_id = 1 AND status <> 'refunded'",
    )
    .await?;
    tx.simple_query("BEGIN").await?;
    tx.simple_query(&format!(
        "UPDATE orders SET status = 'refunded' WHERE id = {order}"
    ))
    .await?;

    env.shutdown_token().cancel();
    assert!(
        refuses_connections(&env).await,
        "still accepting connections after shutdown"
    );
    // In a transaction the session is not at an idle point: it may finish its work.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !tx_conn.is_finished(),
        "session cut in the middle of a transaction"
    );
    tx.simple_query("COMMIT")
        .await
        .context("COMMIT during the drain")?;
    assert_eq!(connection_end(tx_conn, 2).await?, "57P01");
    assert_eq!(
        scalar(
            &db,
            &format!("SELECT status FROM orders WHERE id = {order}")
        )
        .await?,
        "refunded"
    );
    assert_eq!(panics_so_far(), panics);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_busy_beyond_the_grace_period_is_cut() -> Result<()> {
    let panics = panics_so_far();
    let mut env = TestEnv::start_with(EnvOptions {
        shutdown_grace_secs: 1,
        ..EnvOptions::default()
    })
    .await?;
    let db = direct(&env).await?;
    let (busy, busy_conn) = session(&env, ADMIN, "grace_busy").await?;
    let running =
        tokio::spawn(async move { busy.simple_query("SELECT pg_sleep(10)").await.map(|_| ()) });
    wait_until_active(&db, "grace_busy").await?;
    env.shutdown_token().cancel();

    let result = tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .context("statement not cut within 5 s of a 1 s grace period")??;
    let err = result
        .err()
        .context("the 10 s statement cannot have completed")?;
    let code = err.as_db_error().map(|d| d.code().code().to_owned());
    assert_eq!(code.as_deref(), Some("57P01"), "{err}");
    assert!(busy_conn.is_finished() || connection_end(busy_conn, 2).await.is_ok());
    tokio::time::timeout(Duration::from_secs(5), env.stop_proxy())
        .await
        .context("server did not stop")?;
    assert_eq!(panics_so_far(), panics);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_session_does_not_leave_its_statement_running_upstream() -> Result<()> {
    let panics = panics_so_far();
    let env = TestEnv::start_with(EnvOptions {
        shutdown_grace_secs: 1,
        ..EnvOptions::default()
    })
    .await?;
    let db = direct(&env).await?;
    let (busy, _busy_conn) = session(&env, ADMIN, "grace_upstream").await?;
    let running =
        tokio::spawn(async move { busy.simple_query("SELECT pg_sleep(20)").await.map(|_| ()) });
    wait_until_active(&db, "grace_upstream").await?;
    env.shutdown_token().cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .context("statement not cut")?;
    let count = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'grace_upstream'";
    let gone = eventually(5, || async {
        scalar(&db, count).await.ok().as_deref() == Some("0")
    })
    .await;
    assert!(
        gone,
        "the upstream backend still runs the cut session's statement: {}",
        scalar(&db, "SELECT string_agg(state || ': ' || query, '; ') FROM pg_stat_activity WHERE application_name = 'grace_upstream'").await?
    );
    assert_eq!(panics_so_far(), panics);
    Ok(())
}
