//! TLS negotiation at the edge: failed handshakes, direct TLS with and without ALPN,
//! GSSENCRequest, TLS 1.2 clients, and certificate reload on SIGHUP.
//!
//! Not tested: a client offering only TLS 1.0/1.1. rustls (the only TLS stack among the
//! test dependencies) cannot speak those versions, and the proxy is built on rustls,
//! which has no code for them either, so there is nothing the proxy could get wrong.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::Client;

use portcullis_tests::wire::{
    PROTOCOL_3_0, Tls, assert_still_serving, pg_connect, scalar, scram_login, server_cert,
};
use portcullis_tests::{
    ANALYST, TestEnv, client_tls, describe_messages, eventually, expect_closed, metric,
    panics_so_far, query_message, raw_connect, raw_tls_connect_with, read_until_ready,
    startup_message,
};

const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
const GSSENC_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];

/// Logs in with channel binding on an established TLS stream and runs a query.
async fn login_and_query(s: &mut Tls, env: &TestEnv) -> Result<()> {
    let cert = server_cert(s);
    let (_, mechanism) = scram_login(s, env, ANALYST, PROTOCOL_3_0, &[], Some(&cert)).await?;
    assert_eq!(
        mechanism, "SCRAM-SHA-256-PLUS",
        "channel binding offered over TLS"
    );
    s.write_all(&query_message("SELECT count(*) FROM customers"))
        .await?;
    let msgs = read_until_ready(s).await?;
    let tags: Vec<u8> = msgs.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, b"TDCZ".to_vec(), "{}", describe_messages(&msgs));
    Ok(())
}

async fn start() -> Result<(TestEnv, Client, usize)> {
    let panics = panics_so_far();
    let env = TestEnv::start().await?;
    let before = pg_connect(&env, ANALYST).await?;
    Ok((env, before, panics))
}

/// A rustls client config trusting the environment's certificate, with `alpn`.
fn tls_with_alpn(env: &TestEnv, alpn: &[&[u8]]) -> Result<rustls::ClientConfig> {
    let mut config = client_tls(&env.cert_path)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Direct TLS: the ClientHello is the first thing on the connection.
async fn direct_tls(env: &TestEnv, config: rustls::ClientConfig) -> Result<Tls> {
    let tcp = raw_connect(env).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?.to_owned();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?)
}

/// Reads raw bytes until the peer closes (EOF or reset) and returns them; fails if the
/// connection stays open for 5 s.
async fn read_to_close(tcp: &mut TcpStream) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    match tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read_to_end(&mut out)).await {
        Err(_) => bail!("connection still open after 5 s (read {} bytes)", out.len()),
        Ok(_) => Ok(out),
    }
}

async fn tls_failures(env: &TestEnv) -> f64 {
    metric(
        &env.metrics().await.unwrap_or_default(),
        r#"portcullis_connections_total{outcome="tls_failed"}"#,
    )
}

// ----- tests -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_ssl_request_fails_the_handshake_and_closes() -> Result<()> {
    let (env, before, panics) = start().await?;
    let failures = tls_failures(&env).await;
    let mut tcp = raw_connect(&env).await?;
    tcp.write_all(&SSL_REQUEST).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    assert_eq!(answer[0], b'S');
    tcp.write_all(b"this is not a TLS ClientHello, it is garbage\r\n\r\n")
        .await?;
    let reply = read_to_close(&mut tcp).await?;
    // At most a TLS alert record (content type 21); never a PostgreSQL message in clear.
    assert!(
        reply.is_empty() || reply[0] == 0x15,
        "unexpected reply {reply:?}"
    );
    assert!(
        eventually(5, || async { tls_failures(&env).await > failures }).await,
        "tls_failed not counted"
    );
    assert_still_serving(&env, &before, panics).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_trusting_another_ca_fails_the_handshake() -> Result<()> {
    let (env, before, panics) = start().await?;
    let failures = tls_failures(&env).await;
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(other.cert.der().clone())?;
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let err = raw_tls_connect_with(&env, config)
        .await
        .err()
        .context("handshake must fail")?;
    let text = format!("{err:#}");
    assert!(
        text.contains("certificate") || text.contains("UnknownIssuer"),
        "{text}"
    );
    assert!(
        eventually(5, || async { tls_failures(&env).await > failures }).await,
        "tls_failed not counted"
    );
    assert_still_serving(&env, &before, panics).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_with_alpn_postgresql_works_end_to_end() -> Result<()> {
    let (env, before, panics) = start().await?;
    let mut s = direct_tls(&env, tls_with_alpn(&env, &[b"postgresql"])?).await?;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"postgresql"[..]));
    login_and_query(&mut s, &env).await?;
    assert_still_serving(&env, &before, panics).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_without_alpn_postgresql_is_refused() -> Result<()> {
    let (env, before, panics) = start().await?;
    // No ALPN at all: the handshake may complete, but the proxy then closes without
    // reading a StartupMessage.
    match direct_tls(&env, tls_with_alpn(&env, &[])?).await {
        Err(_) => {}
        Ok(mut s) => {
            let startup = startup_message(
                PROTOCOL_3_0,
                &[("user", ANALYST.0), ("database", &env.database)],
            );
            let _ = s.write_all(&startup).await;
            let _ = s.flush().await;
            expect_closed(&mut s)
                .await
                .context("direct TLS without ALPN")?;
        }
    }
    // Another protocol's ALPN: the proxy has no protocol in common with the client.
    match direct_tls(&env, tls_with_alpn(&env, &[b"http/1.1"])?).await {
        Err(e) => assert!(
            format!("{e:#}").contains("NoApplicationProtocol")
                || format!("{e:#}").contains("alert"),
            "{e:#}"
        ),
        Ok(mut s) => {
            assert_ne!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
            let _ = s
                .write_all(&startup_message(PROTOCOL_3_0, &[("user", ANALYST.0)]))
                .await;
            let _ = s.flush().await;
            expect_closed(&mut s)
                .await
                .context("direct TLS with ALPN http/1.1")?;
        }
    }
    assert_still_serving(&env, &before, panics).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gssenc_request_is_declined_and_ssl_request_then_works() -> Result<()> {
    let (env, before, panics) = start().await?;
    let mut tcp = raw_connect(&env).await?;
    tcp.write_all(&GSSENC_REQUEST).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    assert_eq!(answer[0], b'N', "GSSENCRequest must be declined");
    tcp.write_all(&SSL_REQUEST).await?;
    tcp.read_exact(&mut answer).await?;
    assert_eq!(answer[0], b'S', "SSLRequest after a declined GSSENCRequest");
    let name = rustls::pki_types::ServerName::try_from("localhost")?.to_owned();
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(client_tls(&env.cert_path)?))
        .connect(name, tcp)
        .await?;
    login_and_query(&mut s, &env).await?;
    assert_still_serving(&env, &before, panics).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_only_client_works_with_channel_binding() -> Result<()> {
    let (env, before, panics) = start().await?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in portcullis_tests::portcullis::tls::load_certs(&env.cert_path)? {
        roots.add(cert)?;
    }
    let config = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut s = raw_tls_connect_with(&env, config).await?;
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    login_and_query(&mut s, &env).await?;
    assert_still_serving(&env, &before, panics).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_for_new_connections_only() -> Result<()> {
    let (env, before, panics) = start().await?;
    let old_der = portcullis_tests::portcullis::tls::load_certs(&env.cert_path)?[0]
        .as_ref()
        .to_vec();
    let config = portcullis_tests::portcullis::config::Config::load(&env.config_path)?;
    let tls = config.tls.context("the test config has [tls]")?;

    let fresh = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])?;
    let new_der = fresh.cert.der().as_ref().to_vec();
    // Key first: a reload between the two writes then fails (key and cert mismatch) and
    // keeps the old setup rather than presenting a half-new one.
    std::fs::write(&tls.key, fresh.key_pair.serialize_pem())?;
    std::fs::write(&tls.cert, fresh.cert.pem())?;

    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()?;
    assert!(status.success(), "kill -HUP failed");

    let mut new_roots = rustls::RootCertStore::empty();
    new_roots.add(fresh.cert.der().clone())?;
    let new_client = rustls::ClientConfig::builder()
        .with_root_certificates(new_roots)
        .with_no_client_auth();
    let switched = eventually(5, || {
        let config = new_client.clone();
        let env = &env;
        async move { raw_tls_connect_with(env, config).await.is_ok() }
    })
    .await;
    assert!(
        switched,
        "no connection presented the new certificate within 5 s of SIGHUP"
    );

    let mut s = raw_tls_connect_with(&env, new_client).await?;
    let presented = server_cert(&s);
    assert_eq!(
        presented, new_der,
        "new connections get the new certificate"
    );
    assert_ne!(presented, old_der);
    // Channel binding must be computed over the certificate actually presented.
    login_and_query(&mut s, &env).await?;

    // A client that only trusts the old certificate can no longer connect...
    let mut old_roots = rustls::RootCertStore::empty();
    old_roots.add(rustls::pki_types::CertificateDer::from(old_der.clone()))?;
    let old_only = rustls::ClientConfig::builder()
        .with_root_certificates(old_roots)
        .with_no_client_auth();
    assert!(
        raw_tls_connect_with(&env, old_only).await.is_err(),
        "old certificate still presented"
    );
    // ...while the session opened before the reload goes on.
    assert_eq!(
        scalar(&before, "SELECT 'survived reload'").await?,
        "survived reload"
    );
    let metrics = env.metrics().await?;
    assert!(
        metric(&metrics, r#"portcullis_reloads_total{outcome="ok"}"#) >= 1.0,
        "{metrics}"
    );

    // The harness's own fresh-connection check trusts env.cert_path, which now holds the
    // new certificate.
    assert_still_serving(&env, &before, panics).await
}
