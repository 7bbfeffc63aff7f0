//! Hostile and malformed input on the wire, before and after authentication.
//!
//! Real clients cannot produce most of these inputs, so the tests speak the protocol
//! over raw sockets. After every bad input they check three things: the offending
//! connection ends the way the protocol wants (an ErrorResponse with the right
//! severity and SQLSTATE, or a clean close where nothing can be said), a session that
//! was open before the bad input still works, and a fresh session works. No session
//! task may panic (the proxy runs inside the test process, so a panic hook counts).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_postgres::Client;

use portcullis_tests::wire::{
    PROTOCOL_3_0, Tls, assert_still_serving, direct, pg_connect, scalar, scram_login, server_cert,
};
use portcullis_tests::{
    ADMIN, ANALYST, EnvOptions, SUPPORT, TestEnv, describe_messages, error_fields, eventually,
    expect_closed, expect_error, expect_fatal_then_close, extended_messages, frontend_message,
    panics_so_far, query_message, raw_connect, raw_tls_connect, read_message_within,
    read_until_ready, startup_message, sync_message,
};

// ----- helpers -------------------------------------------------------------------------

/// SSLRequest, TLS, StartupMessage, SCRAM-SHA-256-PLUS, until ReadyForQuery.
async fn raw_login(env: &TestEnv, who: (&str, &str)) -> Result<Tls> {
    raw_login_with(env, who, &[]).await
}

async fn raw_login_with(env: &TestEnv, who: (&str, &str), extra: &[(&str, &str)]) -> Result<Tls> {
    let mut s = raw_tls_connect(env).await?;
    let cert = server_cert(&s);
    scram_login(&mut s, env, who, PROTOCOL_3_0, extra, Some(&cert)).await?;
    Ok(s)
}

/// The connection was refused: either closed without a word, or with FATAL `code` and
/// then closed.
async fn expect_refused<S: AsyncRead + Unpin>(s: &mut S, code: &str) -> Result<()> {
    match tokio::time::timeout(
        std::time::Duration::from_secs(5),
        portcullis_tests::read_message(s),
    )
    .await
    {
        Err(_) => bail!("connection neither answered nor closed within 5 s"),
        Ok(Ok(None)) | Ok(Err(_)) => Ok(()),
        Ok(Ok(Some((b'E', body)))) => {
            let fields = error_fields(&body);
            assert_eq!(
                fields.get(&'S').map(String::as_str),
                Some("FATAL"),
                "{fields:?}"
            );
            assert_eq!(
                fields.get(&'C').map(String::as_str),
                Some(code),
                "{fields:?}"
            );
            expect_closed(s).await
        }
        Ok(Ok(Some(other))) => bail!("unexpected answer {}", describe_messages(&[other])),
    }
}

/// Reads one batch's answer (until ReadyForQuery) and expects exactly one ERROR with
/// `code`, no result rows, and an idle session after it.
async fn expect_error_then_ready<S: AsyncRead + Unpin>(
    s: &mut S,
    code: &str,
) -> Result<std::collections::BTreeMap<char, String>> {
    let msgs = read_until_ready(s).await?;
    let errors: Vec<_> = msgs
        .iter()
        .filter(|(t, _)| *t == b'E')
        .map(|(_, b)| error_fields(b))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "exactly one ErrorResponse: {}",
        describe_messages(&msgs)
    );
    let fields = errors.into_iter().next().unwrap();
    assert_eq!(
        fields.get(&'S').map(String::as_str),
        Some("ERROR"),
        "{fields:?}"
    );
    assert_eq!(
        fields.get(&'C').map(String::as_str),
        Some(code),
        "{fields:?}"
    );
    assert!(
        !msgs.iter().any(|(t, _)| *t == b'D'),
        "no rows: {}",
        describe_messages(&msgs)
    );
    assert_eq!(
        msgs.last().map(|(_, b)| b.as_slice()),
        Some(&b"I"[..]),
        "idle afterwards"
    );
    Ok(fields)
}

/// Runs `sql` on a raw session and returns the first column of its rows.
async fn raw_rows<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, sql: &str) -> Result<Vec<String>> {
    s.write_all(&query_message(sql)).await?;
    let msgs = read_until_ready(s).await?;
    if msgs.iter().any(|(t, _)| *t == b'E') {
        bail!("{sql}: {}", describe_messages(&msgs));
    }
    Ok(msgs
        .iter()
        .filter(|(t, _)| *t == b'D')
        .map(|(_, b)| first_column(b))
        .collect())
}

fn first_column(data_row: &[u8]) -> String {
    let len = i32::from_be_bytes(data_row[2..6].try_into().unwrap());
    usize::try_from(len).map_or_else(
        |_| "NULL".to_owned(),
        |l| String::from_utf8_lossy(&data_row[6..6 + l]).into_owned(),
    )
}

async fn start() -> Result<(TestEnv, Client, usize)> {
    start_with(EnvOptions::default()).await
}

async fn start_with(opts: EnvOptions) -> Result<(TestEnv, Client, usize)> {
    let panics = panics_so_far();
    let env = TestEnv::start_with(opts).await?;
    let before = pg_connect(&env, ANALYST).await?;
    Ok((env, before, panics))
}

// ----- before authentication -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_request_instead_of_startup_packet_is_refused() -> Result<()> {
    let (env, before, panics) = start().await?;
    let mut s = raw_connect(&env).await?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await?;
    expect_refused(&mut s, "08P01").await?;
    assert_still_serving(&env, &before, panics).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_length_out_of_range_is_refused_without_waiting_for_the_body() -> Result<()> {
    let (env, before, panics) = start().await?;
    // Below the 8-byte minimum, above PostgreSQL's 10000-byte maximum, and negative. Only
    // the length (and at most a few bytes) is sent: the proxy must not wait for the rest.
    for len in [0i32, 4, 7, 10_001, 1 << 30, -1, i32::MIN] {
        let mut s = raw_connect(&env).await?;
        let mut packet = len.to_be_bytes().to_vec();
        packet.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
        s.write_all(&packet).await?;
        expect_refused(&mut s, "08P01")
            .await
            .with_context(|| format!("length {len}"))?;
    }
    assert_still_serving(&env, &before, panics).await
}

/// Protocol 2.0 and 4.0 get `FATAL 0A000 unsupported frontend protocol`, then a close.
async fn refuses_unsupported_protocols<S, F, Fut>(env: &TestEnv, connect: F) -> Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<S>>,
{
    for (major, minor) in [(2u16, 0u16), (4, 0)] {
        let mut s = connect().await?;
        let version = (i32::from(major) << 16) | i32::from(minor);
        s.write_all(&startup_message(
            version,
            &[("user", ANALYST.0), ("database", &env.database)],
        ))
        .await?;
        let fields = expect_fatal_then_close(&mut s, "0A000")
            .await
            .with_context(|| format!("protocol {major}.{minor}"))?;
        let message = &fields[&'M'];
        assert!(
            message.contains(&format!("unsupported frontend protocol {major}.{minor}")),
            "{message}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_protocol_version_gets_fatal_0a000_in_plaintext() -> Result<()> {
    let (env, before, panics) = start().await?;
    refuses_unsupported_protocols(&env, || raw_connect(&env)).await?;
    assert_still_serving(&env, &before, panics).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_protocol_version_gets_fatal_0a000_over_tls() -> Result<()> {
    let (env, before, panics) = start().await?;
    refuses_unsupported_protocols(&env, || raw_tls_connect(&env)).await?;
    assert_still_serving(&env, &before, panics).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_minor_version_and_protocol_options_are_negotiated_down() -> Result<()> {
    let (env, before, panics) = start().await?;
    let mut s = raw_tls_connect(&env).await?;
    let cert = server_cert(&s);
    let (msgs, _) = scram_login(
        &mut s,
        &env,
        ANALYST,
        PROTOCOL_3_0 | 2,
        &[("_pq_.portcullis_test", "on")],
        Some(&cert),
    )
    .await?;
    // login() collects non-authentication messages; NegotiateProtocolVersion comes first.
    let (tag, body) = msgs.first().context("no messages")?;
    assert_eq!(
        *tag,
        b'v',
        "NegotiateProtocolVersion expected first: {}",
        describe_messages(&msgs)
    );
    assert_eq!(
        i32::from_be_bytes(body[..4].try_into()?),
        PROTOCOL_3_0,
        "newest minor version supported: 3.0"
    );
    assert_eq!(
        i32::from_be_bytes(body[4..8].try_into()?),
        1,
        "one unrecognised option"
    );
    assert_eq!(&body[8..], b"_pq_.portcullis_test\0");
    assert_eq!(raw_rows(&mut s, "SELECT 7").await?, vec!["7"]);
    assert_still_serving(&env, &before, panics).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_startup_packet_then_close_is_harmless() -> Result<()> {
    let (env, before, panics) = start().await?;
    let mut s = raw_connect(&env).await?;
    let full = startup_message(
        PROTOCOL_3_0,
        &[("user", ANALYST.0), ("database", &env.database)],
    );
    s.write_all(&full[..full.len() / 2]).await?;
    s.shutdown().await?;
    expect_closed(&mut s).await?;
    // And the same over TLS, vanishing without close_notify.
    let mut t = raw_tls_connect(&env).await?;
    t.write_all(&full[..full.len() / 2]).await?;
    t.flush().await?;
    drop(t);
    assert_still_serving(&env, &before, panics).await
}

// ----- after authentication: framing ---------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_message_type_is_fatal_08p01() -> Result<()> {
    let (env, before, panics) = start().await?;
    let mut s = raw_login(&env, ANALYST).await?;
    s.write_all(&frontend_message(b'z', b"whatever\0")).await?;
    s.flush().await?;
    let fields = expect_fatal_then_close(&mut s, "08P01").await?;
    assert!(
        fields[&'M'].contains("invalid frontend message type"),
        "{fields:?}"
    );
    assert_still_serving(&env, &before, panics).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_or_short_message_length_is_fatal_08p01() -> Result<()> {
    let (env, before, panics) = start().await?;
    for len in [-1i32, i32::MIN, 0, 3] {
        let mut s = raw_login(&env, ANALYST).await?;
        let mut msg = vec![b'Q'];
        msg.extend_from_slice(&len.to_be_bytes());
        s.write_all(&msg).await?;
        s.flush().await?;
        let fields = expect_fatal_then_close(&mut s, "08P01")
            .await
            .with_context(|| format!("length {len}"))?;
        assert!(
            fields[&'M'].contains("invalid message length"),
            "{fields:?}"
        );
    }
    assert_still_serving(&env, &before, panics).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_over_the_limit_is_refused_without_being_read() -> Result<()> {
    let (env, before, panics) = start_with(EnvOptions {
        max_message_bytes: 1 << 20,
        ..EnvOptions::default()
    })
    .await?;
    let mut s = raw_login(&env, ANALYST).await?;
    // Only the header of a 2 MiB Query: if the proxy waited for the body, no answer would come.
    let mut header = vec![b'Q'];
    header.extend_from_slice(&((2 << 20) + 4i32).to_be_bytes());
    s.write_all(&header).await?;
    s.flush().await?;
    let fields = expect_fatal_then_close(&mut s, "08P01").await?;
    let message = &fields[&'M'];
    assert!(
        message.contains("limit") && message.contains(&(1 << 20).to_string()),
        "{message}"
    );
    assert_still_serving(&env, &before, panics).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_without_nul_terminator_is_a_protocol_violation() -> Result<()> {
    let (env, before, panics) = start().await?;
    let mut s = raw_login(&env, ANALYST).await?;
    s.write_all(&frontend_message(b'Q', b"SELECT 1")).await?;
    s.flush().await?;
    // PostgreSQL answers ERROR 08P01 "invalid string in message" and goes on; ending the
    // session with FATAL 08P01 is acceptable too. Running it (or an empty query) is not.
    let (tag, body) = read_message_within(&mut s, 10)
        .await?
        .context("closed without a word")?;
    assert_eq!(
        tag,
        b'E',
        "expected an ErrorResponse, got {}",
        describe_messages(&[(tag, body.clone())])
    );
    let fields = error_fields(&body);
    assert_eq!(
        fields.get(&'C').map(String::as_str),
        Some("08P01"),
        "{fields:?}"
    );
    if fields[&'S'] == "FATAL" {
        expect_closed(&mut s).await?;
    } else {
        let rest = read_until_ready(&mut s).await?;
        assert_eq!(
            rest.len(),
            1,
            "only ReadyForQuery after the error: {}",
            describe_messages(&rest)
        );
        assert_eq!(raw_rows(&mut s, "SELECT 1").await?, vec!["1"]);
    }
    assert_still_serving(&env, &before, panics).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_message_then_vanishing_client_is_harmless() -> Result<()> {
    let (env, before, panics) = start().await?;
    let mut s = raw_login(&env, ANALYST).await?;
    let mut partial = vec![b'Q'];
    partial.extend_from_slice(&100i32.to_be_bytes());
    partial.extend_from_slice(b"SELECT 1 ");
    s.write_all(&partial).await?;
    s.flush().await?;
    drop(s);
    // Also with an orderly TLS close.
    let mut s = raw_login(&env, ANALYST).await?;
    s.write_all(&partial).await?;
    s.shutdown().await?;
    expect_closed(&mut s).await?;
    assert_still_serving(&env, &before, panics).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishing_mid_query_ends_the_upstream_backend() -> Result<()> {
    let (env, before, panics) = start().await?;
    let db = direct(&env).await?;
    let app = "portcullis-vanish-probe";
    let mut s = raw_login_with(&env, ADMIN, &[("application_name", app)]).await?;
    s.write_all(&query_message("SELECT pg_sleep(20)")).await?;
    s.flush().await?;
    let count = format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}'");
    let active = format!("{count} AND state = 'active' AND query LIKE '%pg_sleep%'");
    assert!(
        eventually(5, || async {
            scalar(&db, &active).await.ok().as_deref() == Some("1")
        })
        .await,
        "the statement never started upstream"
    );
    drop(s); // the client vanishes: no Terminate, no close_notify
    let gone = eventually(5, || async {
        scalar(&db, &count).await.ok().as_deref() == Some("0")
    })
    .await;
    assert!(
        gone,
        "upstream backend still there 5 s after its client vanished: {}",
        scalar(&db, &format!("SELECT string_agg(state || ': ' || query, '; ') FROM pg_stat_activity WHERE application_name = '{app}'")).await?
    );
    assert_still_serving(&env, &before, panics).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_query_is_rejected_not_rewritten() -> Result<()> {
    let (env, before, panics) = start().await?;
    let mut s = raw_login(&env, ANALYST).await?;
    s.write_all(&frontend_message(b'Q', b"SELECT 'a\xff\xfeb' AS v\0"))
        .await?;
    s.flush().await?;
    // PostgreSQL: ERROR 22021 invalid byte sequence for encoding "UTF8", session goes on.
    let msgs = read_until_ready(&mut s).await?;
    let rows: Vec<String> = msgs
        .iter()
        .filter(|(t, _)| *t == b'D')
        .map(|(_, b)| first_column(b))
        .collect();
    assert!(
        rows.is_empty(),
        "the statement ran with altered text; it returned {rows:?}"
    );
    let errors: Vec<_> = msgs
        .iter()
        .filter(|(t, _)| *t == b'E')
        .map(|(_, b)| error_fields(b))
        .collect();
    assert_eq!(errors.len(), 1, "{}", describe_messages(&msgs));
    assert_eq!(
        errors[0].get(&'S').map(String::as_str),
        Some("ERROR"),
        "{:?}",
        errors[0]
    );
    assert_eq!(
        errors[0].get(&'C').map(String::as_str),
        Some("22021"),
        "{:?}",
        errors[0]
    );
    assert_eq!(raw_rows(&mut s, "SELECT 'ok'").await?, vec!["ok"]);
    assert_still_serving(&env, &before, panics).await
}

// ----- after authentication: statements ------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_over_max_statement_bytes_gets_54000_and_session_continues() -> Result<()> {
    let (env, before, panics) = start().await?;
    let mut s = raw_login(&env, ANALYST).await?;
    let big = format!("SELECT '{}' AS v", "x".repeat((1 << 20) + 1000));
    s.write_all(&query_message(&big)).await?;
    s.flush().await?;
    let fields = expect_error_then_ready(&mut s, "54000").await?;
    assert!(fields[&'M'].contains("too large"), "{fields:?}");
    assert_eq!(raw_rows(&mut s, "SELECT 2").await?, vec!["2"]);
    assert_still_serving(&env, &before, panics).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparseable_statement_gets_42601_from_the_proxy_and_session_continues() -> Result<()> {
    let (env, before, panics) = start().await?;
    let mut s = raw_login(&env, ANALYST).await?;
    s.write_all(&query_message("SELEC 1 FROM customers"))
        .await?;
    s.flush().await?;
    let fields = expect_error_then_ready(&mut s, "42601").await?;
    let message = &fields[&'M'];
    assert!(
        message.starts_with("portcullis:") && message.contains("refused"),
        "{message}"
    );
    assert!(
        !message.contains("portcullis_denied_"),
        "the poison marker leaked: {message}"
    );
    assert_eq!(
        raw_rows(&mut s, "SELECT count(*) FROM customers").await?,
        vec!["300"]
    );
    assert_still_serving(&env, &before, panics).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparseable_statement_in_extended_protocol_gets_exactly_one_error() -> Result<()> {
    let (env, before, panics) = start().await?;
    let mut s = raw_login(&env, ANALYST).await?;
    let mut batch = extended_messages("SELEC 1 FROM customers");
    batch.extend(sync_message());
    s.write_all(&batch).await?;
    s.flush().await?;
    let msgs = read_until_ready(&mut s).await?;
    assert_eq!(
        msgs.len(),
        2,
        "ErrorResponse then ReadyForQuery only: {}",
        describe_messages(&msgs)
    );
    let fields = error_fields(&msgs[0].1);
    assert_eq!(
        (msgs[0].0, fields.get(&'S').map(String::as_str)),
        (b'E', Some("ERROR")),
        "{fields:?}"
    );
    assert_eq!(
        fields.get(&'C').map(String::as_str),
        Some("42601"),
        "{fields:?}"
    );
    assert!(fields[&'M'].starts_with("portcullis:"), "{fields:?}");
    assert_eq!(msgs[1].1, b"I");

    let mut good = extended_messages("SELECT count(*) FROM orders");
    good.extend(sync_message());
    s.write_all(&good).await?;
    s.flush().await?;
    let msgs = read_until_ready(&mut s).await?;
    let tags: Vec<u8> = msgs.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, b"12DCZ".to_vec(), "{}", describe_messages(&msgs));
    assert_eq!(first_column(&msgs[2].1), "1500");
    assert_still_serving(&env, &before, panics).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_statement_in_a_pipelined_batch_rolls_back_the_whole_batch() -> Result<()> {
    let (env, before, panics) = start().await?;
    let db = direct(&env).await?;
    let order = scalar(&db, "SELECT min(id) FROM orders WHERE tenant_id = 1").await?;
    let status_sql = format!("SELECT status FROM orders WHERE id = {order}");
    let original = scalar(&db, &status_sql).await?;
    let target = if original == "refunded" {
        "cancelled"
    } else {
        "refunded"
    };
    let update = format!("UPDATE orders SET status = '{target}' WHERE id = {order}");

    let mut s = raw_login(&env, SUPPORT).await?;
    let mut batch = extended_messages(&update);
    batch.extend(extended_messages("DROP TABLE orders"));
    batch.extend(sync_message());
    s.write_all(&batch).await?;
    s.flush().await?;
    let msgs = read_until_ready(&mut s).await?;
    let tags: Vec<u8> = msgs.iter().map(|(t, _)| *t).collect();
    // As PostgreSQL: the UPDATE runs (ParseComplete, BindComplete, CommandComplete), the
    // refused statement errors, the rest of the batch is skipped until Sync.
    assert_eq!(tags, b"12CEZ".to_vec(), "{}", describe_messages(&msgs));
    let fields = error_fields(&msgs[3].1);
    assert_eq!(
        fields.get(&'C').map(String::as_str),
        Some("42501"),
        "{fields:?}"
    );
    assert_eq!(msgs[4].1, b"I", "implicit transaction ended");
    assert_eq!(
        scalar(&db, &status_sql).await?,
        original,
        "the batch's UPDATE must have been rolled back"
    );
    assert_eq!(scalar(&db, "SELECT count(*) FROM orders").await?, "1500");

    // Control: the same UPDATE on its own does change the row.
    let mut alone = extended_messages(&update);
    alone.extend(sync_message());
    s.write_all(&alone).await?;
    s.flush().await?;
    let msgs = read_until_ready(&mut s).await?;
    assert!(
        !msgs.iter().any(|(t, _)| *t == b'E'),
        "{}",
        describe_messages(&msgs)
    );
    assert_eq!(scalar(&db, &status_sql).await?, target);
    assert_still_serving(&env, &before, panics).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_path_function_call_is_denied_and_session_continues() -> Result<()> {
    let (env, before, panics) = start().await?;
    let mut s = raw_login(&env, ADMIN).await?;
    // FunctionCall of version() (OID 89): no argument formats, no arguments, text result.
    let mut body = 89i32.to_be_bytes().to_vec();
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    s.write_all(&frontend_message(b'F', &body)).await?;
    s.flush().await?;
    let fields = expect_error(&mut s, "ERROR", "42501").await?;
    assert!(fields[&'M'].contains("fast-path"), "{fields:?}");
    let rest = read_until_ready(&mut s).await?;
    assert_eq!(rest.len(), 1, "{}", describe_messages(&rest));
    assert_eq!(rest[0].1, b"I");
    assert_eq!(raw_rows(&mut s, "SELECT 'after'").await?, vec!["after"]);
    assert_still_serving(&env, &before, panics).await
}

// ----- malformed bodies of messages the proxy decodes ------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_sasl_initial_response_is_refused_without_panic() -> Result<()> {
    let (env, before, panics) = start().await?;
    // SASLInitialResponse is mechanism name, Int32 length of the data (-1: none), data.
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    cases.push(("no data length", b"SCRAM-SHA-256\0".to_vec()));
    cases.push(("truncated data length", b"SCRAM-SHA-256\0\0\0".to_vec()));
    let mut longer = b"SCRAM-SHA-256\0".to_vec();
    longer.extend_from_slice(&1000i32.to_be_bytes());
    longer.extend_from_slice(b"n,,n=,r=abc");
    cases.push(("data length beyond the message", longer));
    let mut negative = b"SCRAM-SHA-256\0".to_vec();
    negative.extend_from_slice(&(-2i32).to_be_bytes());
    cases.push(("negative data length", negative));
    for (what, body) in cases {
        let mut s = raw_tls_connect(&env).await?;
        s.write_all(&startup_message(
            PROTOCOL_3_0,
            &[("user", ANALYST.0), ("database", &env.database)],
        ))
        .await?;
        let (tag, _) = read_message_within(&mut s, 10).await?.context("closed")?;
        assert_eq!(tag, b'R');
        s.write_all(&frontend_message(b'p', &body)).await?;
        s.flush().await?;
        expect_fatal_then_close(&mut s, "08P01")
            .await
            .with_context(|| what.to_owned())?;
        assert_eq!(panics_so_far(), panics, "{what}: a session task panicked");
    }
    assert_still_serving(&env, &before, panics).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_parse_message_is_refused_without_panic() -> Result<()> {
    let (env, before, panics) = start().await?;
    // Parse is statement name, query, Int16 count of parameter types, Int32 each.
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    cases.push(("no parameter type count", b"\0SELECT 1\0".to_vec()));
    let mut missing_oids = b"\0SELECT $1\0".to_vec();
    missing_oids.extend_from_slice(&1000u16.to_be_bytes());
    cases.push(("fewer parameter types than announced", missing_oids));
    for (what, body) in cases {
        let mut s = raw_login(&env, ANALYST).await?;
        let mut batch = frontend_message(b'P', &body);
        batch.extend(sync_message());
        s.write_all(&batch).await?;
        s.flush().await?;
        // ERROR 08P01 and ReadyForQuery (as PostgreSQL), or FATAL 08P01 and close.
        let (tag, body) = read_message_within(&mut s, 10)
            .await?
            .with_context(|| format!("{what}: closed without a word"))?;
        assert_eq!(
            tag,
            b'E',
            "{what}: {}",
            describe_messages(&[(tag, body.clone())])
        );
        let fields = error_fields(&body);
        assert_eq!(
            fields.get(&'C').map(String::as_str),
            Some("08P01"),
            "{what}: {fields:?}"
        );
        assert_eq!(panics_so_far(), panics, "{what}: a session task panicked");
    }
    assert_still_serving(&env, &before, panics).await
}

/// TLS, StartupMessage as ANALYST, and the proxy's AuthenticationSASL read: ready for a
/// hand-made SASLInitialResponse.
async fn sasl_start(env: &TestEnv) -> Result<Tls> {
    let mut s = raw_tls_connect(env).await?;
    s.write_all(&startup_message(
        PROTOCOL_3_0,
        &[("user", ANALYST.0), ("database", &env.database)],
    ))
    .await?;
    let (tag, _) = read_message_within(&mut s, 10).await?.context("closed")?;
    assert_eq!(tag, b'R');
    Ok(s)
}

/// The attempt ends with a FATAL authentication or protocol error, and nothing panicked.
async fn expect_auth_fatal(s: &mut Tls, what: &str, panics: usize) -> Result<()> {
    let (tag, body) = read_message_within(s, 10)
        .await?
        .with_context(|| format!("{what}: closed without a word"))?;
    let fields = error_fields(&body);
    assert_eq!(
        (tag, fields.get(&'S').map(String::as_str)),
        (b'E', Some("FATAL")),
        "{what}: {fields:?}"
    );
    assert!(
        ["08P01", "28000", "28P01"].contains(&fields[&'C'].as_str()),
        "{what}: {fields:?}"
    );
    assert_eq!(panics_so_far(), panics, "{what}: a session task panicked");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_scram_messages_are_refused_without_panic() -> Result<()> {
    let (env, before, panics) = start().await?;
    let sasl_initial = |mechanism: &str, data: &[u8]| {
        let mut body = mechanism.as_bytes().to_vec();
        body.push(0);
        body.extend_from_slice(&i32::try_from(data.len()).unwrap().to_be_bytes());
        body.extend_from_slice(data);
        frontend_message(b'p', &body)
    };
    // client-first-message variants; each must end the attempt with FATAL.
    let first_cases: Vec<(&str, &str, &[u8])> = vec![
        ("empty", "SCRAM-SHA-256", b""),
        ("no attributes", "SCRAM-SHA-256", b"n,,"),
        ("empty nonce", "SCRAM-SHA-256", b"n,,n=,r="),
        (
            "binding flag without -PLUS",
            "SCRAM-SHA-256",
            b"p=tls-server-end-point,,n=,r=abc",
        ),
        (
            "-PLUS without binding flag",
            "SCRAM-SHA-256-PLUS",
            b"n,,n=,r=abc",
        ),
        (
            "authorization identity",
            "SCRAM-SHA-256",
            b"n,a=postgres,n=,r=abc",
        ),
        ("unknown mechanism", "SCRAM-SHA-1", b"n,,n=,r=abc"),
        ("not UTF-8", "SCRAM-SHA-256", b"n,,n=\xff\xfe,r=abc"),
        (
            "unknown binding type",
            "SCRAM-SHA-256-PLUS",
            b"p=tls-unique,,n=,r=abc",
        ),
    ];
    for (what, mechanism, data) in first_cases {
        let mut s = sasl_start(&env).await?;
        s.write_all(&sasl_initial(mechanism, data)).await?;
        s.flush().await?;
        expect_auth_fatal(&mut s, what, panics).await?;
    }
    // client-final-message variants after a valid client-first.
    type MakeFinal = Box<dyn Fn(&str) -> Vec<u8>>;
    let final_cases: Vec<(&str, MakeFinal)> = vec![
        ("garbage", Box::new(|_| b"garbage".to_vec())),
        ("empty", Box::new(|_| Vec::new())),
        (
            "wrong nonce",
            Box::new(|_| b"c=biws,r=somebodyelse,p=AAAA".to_vec()),
        ),
        (
            "proof not base64",
            Box::new(|n| format!("c=biws,r={n},p=!!!").into_bytes()),
        ),
        (
            "proof too short",
            Box::new(|n| format!("c=biws,r={n},p=AAAA").into_bytes()),
        ),
        (
            "binding data not base64",
            Box::new(|n| format!("c=***,r={n},p=AAAA").into_bytes()),
        ),
        (
            "not UTF-8",
            Box::new(|n| {
                [
                    b"c=biws,r=".as_slice(),
                    n.as_bytes(),
                    b",p=\xff\xff".as_slice(),
                ]
                .concat()
            }),
        ),
    ];
    for (what, make) in final_cases {
        let mut s = sasl_start(&env).await?;
        s.write_all(&sasl_initial("SCRAM-SHA-256", b"n,,n=,r=clientnonce123456"))
            .await?;
        s.flush().await?;
        let (tag, body) = read_message_within(&mut s, 10).await?.context("closed")?;
        assert_eq!(tag, b'R', "{}", describe_messages(&[(tag, body.clone())]));
        let server_first = String::from_utf8_lossy(&body[4..]).into_owned();
        let nonce = server_first
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .context("nonce")?
            .to_owned();
        s.write_all(&frontend_message(b'p', &make(&nonce))).await?;
        s.flush().await?;
        expect_auth_fatal(&mut s, what, panics).await?;
    }
    assert_still_serving(&env, &before, panics).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utf8_client_encoding_text_is_not_mangled() -> Result<()> {
    let (env, before, panics) = start().await?;
    // client_encoding is an allowed startup parameter. Either the proxy refuses an
    // encoding it cannot handle, or the client's bytes must reach the server unchanged.
    let mut s = raw_tls_connect(&env).await?;
    let cert = server_cert(&s);
    match scram_login(
        &mut s,
        &env,
        ANALYST,
        PROTOCOL_3_0,
        &[("client_encoding", "LATIN1")],
        Some(&cert),
    )
    .await
    {
        Err(refused) => assert!(
            format!("{refused:#}").contains("client_encoding"),
            "{refused:#}"
        ),
        Ok(_) => {
            // 'café' in LATIN1 is 63 61 66 E9; the server answers in LATIN1 too.
            s.write_all(&frontend_message(
                b'Q',
                b"SELECT 'caf\xe9' AS v, length('caf\xe9') AS n\0",
            ))
            .await?;
            s.flush().await?;
            let msgs = read_until_ready(&mut s).await?;
            let row = msgs
                .iter()
                .find(|(t, _)| *t == b'D')
                .map(|(_, b)| b.clone());
            let row = row.with_context(|| format!("no row: {}", describe_messages(&msgs)))?;
            let value_len = usize::try_from(i32::from_be_bytes(row[2..6].try_into()?))?;
            assert_eq!(
                &row[6..6 + value_len],
                b"caf\xe9",
                "text changed on its way through the proxy"
            );
        }
    }
    // The same for a client that switches encodings after the startup.
    for set in [
        "SET client_encoding = 'LATIN1'",
        "SET client_encoding TO latin1",
        "SET NAMES 'LATIN1'",
        "SELECT set_config('client_encoding', 'LATIN1', false)",
    ] {
        let mut s = raw_login(&env, ANALYST).await?;
        s.write_all(&query_message(set)).await?;
        s.flush().await?;
        let msgs = read_until_ready(&mut s).await?;
        if msgs.iter().any(|(t, _)| *t == b'E') {
            continue; // refused: fine
        }
        s.write_all(&frontend_message(b'Q', b"SELECT 'caf\xe9' AS v\0"))
            .await?;
        s.flush().await?;
        let msgs = read_until_ready(&mut s).await?;
        let row = msgs
            .iter()
            .find(|(t, _)| *t == b'D')
            .map(|(_, b)| b.clone());
        let row = row.with_context(|| format!("{set}: no row: {}", describe_messages(&msgs)))?;
        let value_len = usize::try_from(i32::from_be_bytes(row[2..6].try_into()?))?;
        assert_eq!(
            &row[6..6 + value_len],
            b"caf\xe9",
            "after {set}: text changed on its way through the proxy"
        );
    }
    assert_still_serving(&env, &before, panics).await
}
