//! Client authentication at the proxy: SCRAM failures that must not reach the database,
//! TLS requirements, channel binding, startup parameters that would change identity,
//! and an unreachable upstream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_postgres::error::DbError;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use portcullis_tests::{
    ADMIN, ANALYST, EXPIRED, EnvOptions, TestEnv, client_tls, describe_messages, error_fields,
    expect_fatal_then_close, frontend_message, metric, panics_so_far, raw_connect, raw_tls_connect,
    read_message_within, startup_message, stdout,
};

const PROTOCOL_3_0: i32 = 3 << 16;

// ----- helpers -----------------------------------------------------------------------------

async fn pg_connect_dsn(dsn: &str, env: &TestEnv) -> Result<Client, tokio_postgres::Error> {
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(
        client_tls(&env.cert_path).expect("client TLS"),
    );
    let (client, connection) = tokio_postgres::connect(dsn, tls).await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn pg_connect(env: &TestEnv, who: (&str, &str)) -> Result<Client> {
    Ok(pg_connect_dsn(&env.proxy_dsn(who, "sslmode=require"), env).await?)
}

/// The ErrorResponse a connection attempt through the proxy (TLS) ends with.
async fn refusal(env: &TestEnv, who: (&str, &str), extra: &str) -> Result<DbError> {
    let dsn = env.proxy_dsn(who, &format!("sslmode=require {extra}"));
    match pg_connect_dsn(&dsn, env).await {
        Ok(_) => bail!("connection as {} with {extra:?} was accepted", who.0),
        Err(e) => e
            .as_db_error()
            .cloned()
            .with_context(|| format!("not a server error: {e}")),
    }
}

fn assert_error(e: &DbError, severity: &str, code: &str) {
    assert_eq!((e.severity(), e.code().code()), (severity, code), "{e:?}");
}

async fn scalar(client: &Client, sql: &str) -> Result<String> {
    for m in client.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(row) = m {
            return Ok(row.get(0).unwrap_or_default().to_owned());
        }
    }
    bail!("no row from {sql}")
}

async fn metrics(env: &TestEnv) -> String {
    env.metrics().await.unwrap_or_default()
}

/// A TCP listener standing in for the database: it counts connections and closes them.
/// Started before the environment so that the proxy's upstream port can point at it.
/// The proxy's own catalog connections (application_name `portcullis-catalog`, at start
/// and on retries) are not counted: the tests count what client logins open.
async fn counting_upstream() -> Result<(u16, Arc<AtomicUsize>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                // Counted before the connection is closed, so before the proxy can
                // report the failure to its client.
                if !is_catalog_connection(tcp).await {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    Ok((port, count))
}

/// Reads the startup packet (the proxy sends it at once on a plaintext upstream) and
/// tells whether it is the proxy's catalog connection.
async fn is_catalog_connection(mut tcp: tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let read = async {
        let mut len = [0u8; 4];
        tcp.read_exact(&mut len).await.ok()?;
        let len = usize::try_from(i32::from_be_bytes(len))
            .ok()?
            .checked_sub(4)?;
        let mut body = vec![0u8; len.min(64 * 1024)];
        tcp.read_exact(&mut body).await.ok()?;
        Some(body.windows(18).any(|w| w == b"portcullis-catalog"))
    };
    tokio::time::timeout(std::time::Duration::from_secs(2), read)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// An environment whose upstream is a counting listener: any upstream connection the
/// proxy opens is seen.
async fn start_with_counting_upstream() -> Result<(TestEnv, Arc<AtomicUsize>)> {
    let (port, count) = counting_upstream().await?;
    let env = TestEnv::start_with(EnvOptions {
        upstream_port_override: Some(port),
        ..EnvOptions::default()
    })
    .await?;
    Ok((env, count))
}

/// Positive control: a correct login does reach the (counting) upstream, and fails there.
async fn assert_correct_login_reaches_upstream(env: &TestEnv, count: &AtomicUsize) -> Result<()> {
    let before = count.load(Ordering::SeqCst);
    let e = refusal(env, ANALYST, "").await?;
    assert_error(&e, "FATAL", "08001");
    assert_eq!(
        count.load(Ordering::SeqCst),
        before + 1,
        "the counting upstream sees logins"
    );
    Ok(())
}

/// Startup and SASLInitialResponse with `client_first` over `s`; returns the
/// mechanisms offered and the server-first-message (or the ErrorResponse fields).
async fn scram_first<S>(
    s: &mut S,
    env: &TestEnv,
    user: &str,
    mechanism: &str,
    client_first: &str,
) -> Result<(
    Vec<String>,
    Result<String, std::collections::BTreeMap<char, String>>,
)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    s.write_all(&startup_message(
        PROTOCOL_3_0,
        &[("user", user), ("database", &env.database)],
    ))
    .await?;
    let (tag, body) = read_message_within(s, 10).await?.context("closed")?;
    if tag != b'R' || i32::from_be_bytes(body[..4].try_into()?) != 10 {
        bail!(
            "expected AuthenticationSASL, got {}",
            describe_messages(&[(tag, body)])
        );
    }
    let mechanisms = body[4..]
        .split(|&b| b == 0)
        .filter(|m| !m.is_empty())
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect();
    let mut msg = mechanism.as_bytes().to_vec();
    msg.push(0);
    msg.extend_from_slice(&i32::try_from(client_first.len())?.to_be_bytes());
    msg.extend_from_slice(client_first.as_bytes());
    s.write_all(&frontend_message(b'p', &msg)).await?;
    let (tag, body) = read_message_within(s, 10).await?.context("closed")?;
    match tag {
        b'R' if i32::from_be_bytes(body[..4].try_into()?) == 11 => Ok((
            mechanisms,
            Ok(String::from_utf8_lossy(&body[4..]).into_owned()),
        )),
        b'E' => Ok((mechanisms, Err(error_fields(&body)))),
        _ => bail!("unexpected {}", describe_messages(&[(tag, body)])),
    }
}

/// `r=`, `s=` and `i=` of a server-first-message.
fn server_first_parts(msg: &str) -> (String, String, String) {
    let get = |key: &str| {
        msg.split(',')
            .find_map(|a| a.strip_prefix(key))
            .unwrap_or_default()
            .to_owned()
    };
    (get("r="), get("s="), get("i="))
}

// ----- wrong password, unknown user, expired account ---------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_28p01_and_opens_no_upstream_connection() -> Result<()> {
    let panics = panics_so_far();
    let (env, upstream) = start_with_counting_upstream().await?;
    let e = refusal(&env, (ANALYST.0, "not-the-password"), "").await?;
    assert_error(&e, "FATAL", "28P01");
    assert_eq!(
        e.message(),
        "password authentication failed for user \"analyst\""
    );
    assert_eq!(
        upstream.load(Ordering::SeqCst),
        0,
        "no upstream connection for a failed login"
    );
    let m = metrics(&env).await;
    assert_eq!(
        metric(
            &m,
            r#"portcullis_auth_failures_total{kind="wrong_password"}"#
        ),
        1.0,
        "{m}"
    );
    assert_correct_login_reaches_upstream(&env, &upstream).await?;
    assert_eq!(panics_so_far(), panics);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_user_fails_exactly_like_a_wrong_password() -> Result<()> {
    let panics = panics_so_far();
    let (env, upstream) = start_with_counting_upstream().await?;
    let unknown = refusal(&env, ("nobody_here", "whatever"), "").await?;
    assert_error(&unknown, "FATAL", "28P01");
    assert_eq!(
        unknown.message(),
        "password authentication failed for user \"nobody_here\""
    );
    let known = refusal(&env, (ANALYST.0, "whatever"), "").await?;
    assert_eq!(
        (unknown.code(), unknown.detail(), unknown.hint()),
        (known.code(), known.detail(), known.hint()),
        "nothing but the name may differ"
    );
    assert_eq!(
        upstream.load(Ordering::SeqCst),
        0,
        "no upstream connection for a failed login"
    );
    let m = metrics(&env).await;
    assert_eq!(
        metric(&m, r#"portcullis_auth_failures_total{kind="unknown_user"}"#),
        1.0,
        "{m}"
    );

    // The SCRAM exchange itself must not tell them apart: same mechanisms, same iteration
    // count, a salt of the same shape, and the same salt again for the same unknown user.
    let first = "n,,n=,r=fyko+d2lbbFgONRv9qkxdawL";
    let mut known_run = raw_tls_connect(&env).await?;
    let (known_mechs, known_first) =
        scram_first(&mut known_run, &env, ANALYST.0, "SCRAM-SHA-256", first).await?;
    let mut salts = Vec::new();
    for _ in 0..2 {
        let mut s = raw_tls_connect(&env).await?;
        let (mechs, server_first) =
            scram_first(&mut s, &env, "nobody_here", "SCRAM-SHA-256", first).await?;
        assert_eq!(mechs, known_mechs);
        let (nonce, salt, iterations) =
            server_first_parts(&server_first.expect("server-first for an unknown user"));
        let (known_nonce, known_salt, known_iterations) =
            server_first_parts(known_first.as_ref().expect("known"));
        assert!(
            nonce.starts_with("fyko+d2lbbFgONRv9qkxdawL") && nonce.len() == known_nonce.len(),
            "{nonce}"
        );
        assert_eq!(
            (salt.len(), &iterations),
            (known_salt.len(), &known_iterations)
        );
        salts.push(salt);
    }
    assert_eq!(
        salts[0], salts[1],
        "an unknown user's salt must be stable, as a real user's is"
    );
    assert_correct_login_reaches_upstream(&env, &upstream).await?;
    assert_eq!(panics_so_far(), panics);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_account_is_28000_and_opens_no_upstream_connection() -> Result<()> {
    let panics = panics_so_far();
    let (env, upstream) = start_with_counting_upstream().await?;
    let e = refusal(&env, EXPIRED, "").await?;
    assert_error(&e, "FATAL", "28000");
    assert!(e.message().contains("has expired"), "{e:?}");
    // With a wrong password the expiry must not show: that would confirm the account exists.
    let wrong = refusal(&env, (EXPIRED.0, "wrong"), "").await?;
    assert_error(&wrong, "FATAL", "28P01");
    assert_eq!(
        wrong.message(),
        "password authentication failed for user \"expired_user\""
    );
    assert_eq!(
        upstream.load(Ordering::SeqCst),
        0,
        "no upstream connection for an expired account"
    );
    let m = metrics(&env).await;
    assert_eq!(
        metric(&m, r#"portcullis_auth_failures_total{kind="expired"}"#),
        1.0,
        "{m}"
    );
    assert_correct_login_reaches_upstream(&env, &upstream).await?;
    assert_eq!(panics_so_far(), panics);
    Ok(())
}

// ----- TLS and channel binding -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_tls_refuses_plaintext_with_28000() -> Result<()> {
    let panics = panics_so_far();
    let env = TestEnv::start_with(EnvOptions {
        require_tls: true,
        ..EnvOptions::default()
    })
    .await?;
    let before = pg_connect(&env, ANALYST).await?;
    let dsn = env.proxy_dsn(ANALYST, "sslmode=disable");
    let err = tokio_postgres::connect(&dsn, NoTls)
        .await
        .err()
        .context("plaintext accepted")?;
    let e = err
        .as_db_error()
        .with_context(|| format!("not a server error: {err}"))?;
    assert_error(e, "FATAL", "28000");
    assert!(e.message().contains("TLS"), "{e:?}");

    let out = env
        .psql(ANALYST, "sslmode=disable", &["-c", "SELECT 1"])
        .await?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("requires TLS"), "{stderr}");

    assert_eq!(scalar(&before, "SELECT 'tls ok'").await?, "tls ok");
    assert_eq!(
        stdout(&env.psql(ANALYST, "", &["-c", "SHOW ssl"]).await?)?.trim(),
        "off",
        "upstream is plaintext in the harness"
    );
    assert_eq!(panics_so_far(), panics);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_binding_require_works_and_downgrade_is_detected() -> Result<()> {
    let panics = panics_so_far();
    let env = TestEnv::start().await?;
    let out = env
        .psql(
            ANALYST,
            "channel_binding=require",
            &["-c", "SELECT current_setting('application_name') || 'x'"],
        )
        .await?;
    assert_eq!(stdout(&out)?.trim(), "psqlx");
    let client = pg_connect_dsn(
        &env.proxy_dsn(ANALYST, "sslmode=require channel_binding=require"),
        &env,
    )
    .await?;
    assert_eq!(scalar(&client, "SELECT 1").await?, "1");

    // Over TLS the proxy offers -PLUS; a client claiming "y" (I could bind, but I think
    // you cannot) is a downgrade, refused like PostgreSQL does (08P01).
    let mut s = raw_tls_connect(&env).await?;
    let (mechs, answer) = scram_first(
        &mut s,
        &env,
        ANALYST.0,
        "SCRAM-SHA-256",
        "y,,n=,r=abcdefghijklmnopqrstuvwx",
    )
    .await?;
    assert!(
        mechs.contains(&"SCRAM-SHA-256-PLUS".to_owned()),
        "{mechs:?}"
    );
    let fields = answer.err().context("downgrade accepted")?;
    assert_eq!(
        (fields[&'S'].as_str(), fields[&'C'].as_str()),
        ("FATAL", "08P01"),
        "{fields:?}"
    );

    // In plaintext there is nothing to bind to: -PLUS is not offered, and psql's
    // channel_binding=require refuses to go on.
    let mut plain = raw_connect(&env).await?;
    let (mechs, answer) = scram_first(
        &mut plain,
        &env,
        ANALYST.0,
        "SCRAM-SHA-256",
        "n,,n=,r=abcdefghijklmnopqrstuvwx",
    )
    .await?;
    assert_eq!(mechs, vec!["SCRAM-SHA-256".to_owned()]);
    assert!(answer.is_ok());
    let out = env
        .psql(
            ANALYST,
            "sslmode=disable channel_binding=require",
            &["-c", "SELECT 1"],
        )
        .await?;
    assert!(
        !out.status.success(),
        "channel binding cannot be required without TLS"
    );
    assert_eq!(panics_so_far(), panics);
    Ok(())
}

// ----- startup parameters ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_changing_startup_options_are_refused_with_42501() -> Result<()> {
    let panics = panics_so_far();
    let env = TestEnv::start().await?;
    for options in [
        "-c role=postgres",
        "-c session_authorization=postgres",
        "-crole=postgres",
        "--role=postgres",
        "--session-authorization=postgres",
        "-c search_path=public -c role=postgres",
    ] {
        let e = refusal(&env, ANALYST, &format!("options='{options}'")).await?;
        assert_error(&e, "FATAL", "42501");
        assert!(e.message().contains("not allowed"), "{options}: {e:?}");
    }
    // Control: a harmless setting goes through and takes effect upstream.
    let client = pg_connect_dsn(
        &env.proxy_dsn(
            ANALYST,
            "sslmode=require options='-c statement_timeout=4321'",
        ),
        &env,
    )
    .await?;
    assert_eq!(scalar(&client, "SHOW statement_timeout").await?, "4321ms");
    assert_eq!(
        scalar(&client, "SELECT current_user = session_user").await?,
        "t"
    );
    assert_eq!(panics_so_far(), panics);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_connection_is_refused() -> Result<()> {
    let panics = panics_so_far();
    let env = TestEnv::start().await?;
    for mode in ["database", "true"] {
        let out = env
            .psql(
                ANALYST,
                &format!("replication={mode}"),
                &["-c", "IDENTIFY_SYSTEM"],
            )
            .await?;
        assert!(
            !out.status.success(),
            "replication={mode} accepted: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("FATAL") && stderr.contains("replication"),
            "{stderr}"
        );
    }
    let client = pg_connect(&env, ADMIN).await?;
    assert_eq!(
        scalar(&client, "SELECT 'normal session fine'").await?,
        "normal session fine"
    );
    assert_eq!(panics_so_far(), panics);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_without_user_is_fatal_28000() -> Result<()> {
    let panics = panics_so_far();
    let env = TestEnv::start().await?;
    for params in [
        vec![("database", env.database.as_str())],
        vec![("user", ""), ("database", env.database.as_str())],
    ] {
        let mut s = raw_connect(&env).await?;
        s.write_all(&startup_message(PROTOCOL_3_0, &params)).await?;
        let fields = expect_fatal_then_close(&mut s, "28000")
            .await
            .with_context(|| format!("{params:?}"))?;
        assert!(
            fields[&'M'].contains("no PostgreSQL user name"),
            "{fields:?}"
        );
    }
    let client = pg_connect(&env, ANALYST).await?;
    assert_eq!(scalar(&client, "SELECT 1").await?, "1");
    assert_eq!(panics_so_far(), panics);
    Ok(())
}

// ----- upstream unreachable ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_gives_08001_and_the_proxy_keeps_serving() -> Result<()> {
    let panics = panics_so_far();
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let env = TestEnv::start_with(EnvOptions {
        upstream_port_override: Some(closed_port),
        ..EnvOptions::default()
    })
    .await?;
    for attempt in 1..=2 {
        let e = refusal(&env, ANALYST, "").await?;
        assert_error(&e, "FATAL", "08001");
        assert!(
            e.message()
                .contains("could not establish a connection to the database server"),
            "{e:?}"
        );
        assert!(
            !e.message().contains(&closed_port.to_string()),
            "internals leaked: {e:?}"
        );
        let m = metrics(&env).await;
        assert_eq!(
            metric(&m, r#"portcullis_upstream_errors_total{kind="connect"}"#),
            f64::from(attempt),
            "{m}"
        );
    }
    // Authentication still happens first: a wrong password is still 28P01, not 08001.
    let e = refusal(&env, (ANALYST.0, "wrong"), "").await?;
    assert_error(&e, "FATAL", "28P01");
    let m = metrics(&env).await;
    assert_eq!(
        metric(&m, r#"portcullis_upstream_errors_total{kind="connect"}"#),
        2.0,
        "{m}"
    );
    let idle = portcullis_tests::eventually(5, || async {
        metric(&metrics(&env).await, "portcullis_active_sessions") == 0.0
    })
    .await;
    assert!(
        idle,
        "refused sessions still counted as active: {}",
        metrics(&env).await
    );
    assert_eq!(panics_so_far(), panics);
    Ok(())
}
