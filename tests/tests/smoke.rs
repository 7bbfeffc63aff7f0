//! The shortest path through the proxy: psql over TLS, allowed and denied statements.

use portcullis_tests::{ADMIN, ANALYST, TestEnv, stdout};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_through_proxy_over_tls() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let out = env
        .psql(
            ADMIN,
            "channel_binding=require",
            &["-c", "SELECT count(*) FROM customers", "-c", "SHOW ssl"],
        )
        .await?;
    let text = stdout(&out)?;
    assert_eq!(text.lines().next(), Some("300"), "{text}");

    let denied = env.psql(ANALYST, "", &["-c", "DELETE FROM orders"]).await?;
    assert!(!denied.status.success());
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(err.contains("may not run write statements"), "{err}");

    let still_there = stdout(
        &env.psql_direct(&["-c", "SELECT count(*) FROM orders"])
            .await?,
    )?;
    assert_eq!(still_there.trim(), "1500");
    Ok(())
}
