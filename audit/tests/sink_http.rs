//! The HTTP sinks against an in-test receiver that follows the Splunk HEC and
//! Elasticsearch `_bulk` semantics, error answers included.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Read;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use portcullis_audit::pipeline::{
    AuditConfig, Auditor, ElasticsearchSettings, SinkConfig, SinkKind,
};
use portcullis_audit::sink::http::{HttpAuth, HttpSink, HttpSinkConfig};
use portcullis_audit::sink::{Sink, SinkError};
use portcullis_audit::{AuditEvent, EventKind, Format};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// A variable cargo sets for every test run (tests cannot set variables: that is
/// unsafe in edition 2024 and unsafe code is forbidden).
const TOKEN_VAR: &str = "CARGO_PKG_NAME";

fn token() -> String {
    std::env::var(TOKEN_VAR).expect("cargo sets CARGO_PKG_NAME")
}

fn records(range: std::ops::Range<usize>) -> Vec<Vec<u8>> {
    range
        .map(|i| {
            let e = AuditEvent::new(EventKind::Statement)
                .with_user("alice")
                .with_detail(format!("event {i}"));
            let mut out = Vec::new();
            Format::Json.encode(&e, &mut out).unwrap();
            out
        })
        .collect()
}

fn record_json(r: &[u8]) -> Value {
    serde_json::from_slice(r).unwrap()
}

#[derive(Default)]
struct State {
    requests: usize,
    /// HEC: events in arrival order. Bulk: documents by arrival.
    events: Vec<Value>,
    /// Bulk: documents by `_id`.
    docs: HashMap<String, Value>,
    /// `picky_bulk`: answer 401 to everything while set.
    deny: bool,
    /// `picky_bulk`: the refused documents' lines, as they were sent.
    refused: Vec<String>,
}

type Shared = Arc<Mutex<State>>;

fn answer(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

async fn read_body(req: Request<Incoming>) -> (hyper::http::request::Parts, Vec<u8>) {
    let (parts, body) = req.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes().to_vec();
    let plain = if parts
        .headers
        .get(CONTENT_ENCODING)
        .is_some_and(|v| v == "gzip")
    {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .unwrap();
        out
    } else {
        bytes
    };
    (parts, plain)
}

/// Splunk HEC: 401 for a wrong token, 503 for the first request, then success.
async fn hec(state: Shared, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = read_body(req).await;
    if parts.uri.path() != "/services/collector/event" {
        return Ok(answer(
            StatusCode::NOT_FOUND,
            json!({"text":"Not found","code":404}),
        ));
    }
    let expected = format!("Splunk {}", token());
    if parts.headers.get(AUTHORIZATION).map(|v| v.as_bytes()) != Some(expected.as_bytes()) {
        return Ok(answer(
            StatusCode::UNAUTHORIZED,
            json!({"text":"Invalid authorization","code":3}),
        ));
    }
    let mut st = state.lock().unwrap();
    st.requests += 1;
    if st.requests == 1 {
        return Ok(answer(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"text":"Server is busy","code":9}),
        ));
    }
    for v in serde_json::Deserializer::from_slice(&body).into_iter::<Value>() {
        let v = v.unwrap();
        assert_eq!(v["sourcetype"], "portcullis:audit");
        assert!(v["time"].as_f64().unwrap() > 1.7e9, "{v}");
        st.events.push(v["event"].clone());
    }
    Ok(answer(StatusCode::OK, json!({"text":"Success","code":0})))
}

/// Elasticsearch `_bulk` with `create`: 409 for an existing `_id`; on the first request
/// the second item is refused with 429.
async fn bulk(state: Shared, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = read_body(req).await;
    if parts.uri.path() != "/audit/_bulk" {
        return Ok(answer(
            StatusCode::NOT_FOUND,
            json!({"error":"no such index"}),
        ));
    }
    let expected = format!("ApiKey {}", token());
    if parts.headers.get(AUTHORIZATION).map(|v| v.as_bytes()) != Some(expected.as_bytes()) {
        return Ok(answer(
            StatusCode::UNAUTHORIZED,
            json!({"error":{"type":"security_exception"},"status":401}),
        ));
    }
    assert_eq!(parts.headers[CONTENT_TYPE], "application/x-ndjson");
    let text = String::from_utf8(body).unwrap();
    assert!(text.ends_with('\n'));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len() % 2, 0);
    let mut st = state.lock().unwrap();
    st.requests += 1;
    let first = st.requests == 1;
    let mut items = Vec::new();
    let mut errors = false;
    for (i, pair) in lines.chunks(2).enumerate() {
        let action: Value = serde_json::from_str(pair[0]).unwrap();
        let id = action["create"]["_id"].as_str().unwrap().to_string();
        let doc: Value = serde_json::from_str(pair[1]).unwrap();
        let item = if first && i == 1 {
            errors = true;
            json!({"create":{"_index":"audit","_id":id,"status":429,
                "error":{"type":"es_rejected_execution_exception","reason":"queue full"}}})
        } else if st.docs.contains_key(&id) {
            errors = true;
            json!({"create":{"_index":"audit","_id":id,"status":409,
                "error":{"type":"version_conflict_engine_exception","reason":"document already exists"}}})
        } else {
            st.docs.insert(id.clone(), doc.clone());
            st.events.push(doc);
            json!({"create":{"_index":"audit","_id":id,"status":201,"result":"created"}})
        };
        items.push(item);
    }
    Ok(answer(
        StatusCode::OK,
        json!({"took":1,"errors":errors,"items":items}),
    ))
}

/// The detail of the event [`picky_bulk`] refuses.
const POISON: &str = "poisoned record";

/// Elasticsearch `_bulk` as a cluster with a strict mapping answers: the document whose
/// `detail` is [`POISON`] fails with a 400 item (its reason quoting the value, as
/// Elasticsearch does), the others are created (409 when they exist). No credentials;
/// 401 to everything while `deny` is set.
async fn picky_bulk(
    state: Shared,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = read_body(req).await;
    assert_eq!(parts.uri.path(), "/audit/_bulk");
    let mut st = state.lock().unwrap();
    if st.deny {
        return Ok(answer(
            StatusCode::UNAUTHORIZED,
            json!({"error":{"type":"security_exception","reason":"missing authentication"},"status":401}),
        ));
    }
    st.requests += 1;
    let text = String::from_utf8(body).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut items = Vec::new();
    let mut errors = false;
    for pair in lines.chunks(2) {
        let action: Value = serde_json::from_str(pair[0]).unwrap();
        let id = action["create"]["_id"].as_str().unwrap().to_string();
        let doc: Value = serde_json::from_str(pair[1]).unwrap();
        let item = if doc["detail"] == POISON {
            errors = true;
            st.refused.push(pair[1].to_owned());
            json!({"create":{"_index":"audit","_id":id,"status":400,
                "error":{"type":"document_parsing_exception",
                    "reason":format!("[1:2] failed to parse field [detail]. Preview of field's value: '{POISON}'")}}})
        } else if st.docs.contains_key(&id) {
            errors = true;
            json!({"create":{"_index":"audit","_id":id,"status":409,
                "error":{"type":"version_conflict_engine_exception"}}})
        } else {
            st.docs.insert(id.clone(), doc.clone());
            st.events.push(doc);
            json!({"create":{"_index":"audit","_id":id,"status":201,"result":"created"}})
        };
        items.push(item);
    }
    Ok(answer(
        StatusCode::OK,
        json!({"took":1,"errors":errors,"items":items}),
    ))
}

/// A pipeline with one Elasticsearch sink named `search` posting to `url`.
fn es_pipeline(state_dir: &std::path::Path, url: &str) -> AuditConfig {
    let mut sink = SinkConfig::new("search", SinkKind::Elasticsearch);
    sink.batch_max = 8;
    sink.flush_ms = 5;
    sink.elasticsearch = Some(ElasticsearchSettings {
        url: url.to_owned(),
        index: "audit".into(),
        token_env: None,
        user: None,
        password_env: None,
        gzip: Some(false),
        ca_file: None,
        connect_timeout_ms: Some(1000),
        request_timeout_ms: Some(5000),
    });
    AuditConfig {
        instance: "px-test".into(),
        queue_capacity: 1024,
        state_dir: state_dir.to_path_buf(),
        shutdown_timeout_ms: 5_000,
        sinks: vec![sink],
        ..AuditConfig::default()
    }
}

fn statement(i: usize) -> AuditEvent {
    AuditEvent::new(EventKind::Statement).with_detail(format!("event {i}"))
}

/// Waits until `f` holds, for at most 10 s.
async fn until(mut f: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("condition not reached in time");
}

/// The `seq` of every statement event that arrived, in arrival order.
fn statement_seqs(state: &Shared) -> Vec<u64> {
    state
        .lock()
        .unwrap()
        .events
        .iter()
        .filter(|e| e["kind"] == "statement")
        .map(|e| e["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn pipeline_dead_letters_a_refused_record_and_delivers_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (url, state) = serve(picky_bulk).await;
    let config = es_pipeline(dir.path(), &url);
    let dead_letter = config.dead_letter_file(&config.sinks[0]);
    let shutdown = CancellationToken::new();
    let (auditor, handle) = Auditor::start(&config, shutdown.clone()).unwrap();
    for i in 0..30 {
        let event = if i == 12 {
            AuditEvent::new(EventKind::Statement).with_detail(POISON)
        } else {
            statement(i)
        };
        auditor.emit(event).unwrap();
    }
    let loss_report = || {
        state
            .lock()
            .unwrap()
            .events
            .iter()
            .find(|e| e["kind"] == "audit_loss")
            .map(|e| e["detail"].as_str().unwrap().to_owned())
    };
    until(|| loss_report().is_some()).await;
    // The sink is not blocked by the refused record.
    for i in 30..40 {
        auditor.emit(statement(i)).unwrap();
    }
    until(|| statement_seqs(&state).len() == 39).await;
    shutdown.cancel();
    handle.await.unwrap();

    // Every other event arrived once, in order; event 12 has seq 13.
    let expected: Vec<u64> = (1..=41).filter(|s| *s != 13).collect();
    let seqs = statement_seqs(&state);
    let mut all: Vec<u64> = state
        .lock()
        .unwrap()
        .events
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(all.windows(2).all(|w| w[0] < w[1]), "in order: {all:?}");
    all.sort_unstable();
    assert_eq!(all, expected);
    assert_eq!(seqs.len(), 39);

    // The trail says what was set aside and where.
    let report = loss_report().unwrap();
    assert_eq!(
        report,
        format!(
            "1 audit events refused for good by the receiver of sink \"search\"; kept in its \
             dead-letter file {} (1 since start)",
            dead_letter.display()
        )
    );

    // The dead-letter file holds the refused record byte for byte as it was sent
    // (however often the halving sent it), ready to be resent.
    let st = state.lock().unwrap();
    assert!(!st.refused.is_empty());
    assert!(st.refused.iter().all(|r| *r == st.refused[0]));
    let kept = std::fs::read_to_string(&dead_letter).unwrap();
    assert_eq!(kept, format!("{}\n", st.refused[0]));
    assert_eq!(record_json(kept.as_bytes())["seq"], 13);
    let reasons =
        std::fs::read_to_string(dead_letter.with_file_name("dead-letter.reasons.jsonl")).unwrap();
    assert!(reasons.contains("document_parsing_exception"), "{reasons}");
    assert!(
        !reasons.contains(POISON),
        "the reason must not quote the record: {reasons}"
    );

    let stats = auditor.stats();
    let s = &stats.sinks[0];
    assert_eq!(
        (s.dead_lettered, s.lost, stats.lost),
        (1, 0, 0),
        "{stats:?}"
    );
    assert_eq!(s.delivered, 40, "39 statements and the report: {stats:?}");
}

#[tokio::test]
async fn pipeline_spools_through_an_auth_failure_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (url, state) = serve(picky_bulk).await;
    state.lock().unwrap().deny = true;
    let config = es_pipeline(dir.path(), &url);
    let dead_letter = config.dead_letter_file(&config.sinks[0]);
    let shutdown = CancellationToken::new();
    let (auditor, handle) = Auditor::start(&config, shutdown.clone()).unwrap();
    for i in 0..20 {
        auditor.emit(statement(i)).unwrap();
    }
    // 401 is a configuration error: retried and spooled, never dead-lettered.
    until(|| {
        let s = &auditor.stats().sinks[0];
        s.spooled == 20 && s.send_failures >= 2
    })
    .await;
    assert!(state.lock().unwrap().events.is_empty());
    // The operator fixes the credentials.
    state.lock().unwrap().deny = false;
    until(|| statement_seqs(&state).len() == 20).await;
    shutdown.cancel();
    handle.await.unwrap();

    assert_eq!(statement_seqs(&state), (1..=20).collect::<Vec<_>>());
    let stats = auditor.stats();
    let s = &stats.sinks[0];
    assert_eq!(
        (s.dead_lettered, s.lost, stats.lost),
        (0, 0, 0),
        "{stats:?}"
    );
    assert_eq!((s.delivered, s.spool_bytes), (20, 0), "{stats:?}");
    assert!(s.healthy);
    assert!(!dead_letter.exists());
}

async fn serve<F, Fut>(handler: F) -> (String, Shared)
where
    F: Fn(Shared, Request<Incoming>) -> Fut + Send + Sync + Copy + 'static,
    Fut: std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    serve_with(handler, None).await
}

/// Serves `handler` on 127.0.0.1, over TLS when `tls` is given.
async fn serve_with<F, Fut>(handler: F, tls: Option<TlsAcceptor>) -> (String, Shared)
where
    F: Fn(Shared, Request<Incoming>) -> Fut + Send + Sync + Copy + 'static,
    Fut: std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let state = Shared::default();
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let st = st.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| handler(st.clone(), req));
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    None => {
                        let _ = http.serve_connection(TokioIo::new(tcp), svc).await;
                    }
                    Some(tls) => {
                        if let Ok(stream) = tls.accept(tcp).await {
                            let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                }
            });
        }
    });
    (format!("{scheme}://{addr}"), state)
}

#[tokio::test]
async fn splunk_hec_retries_then_delivers_in_order() {
    let (url, state) = serve(hec).await;
    let mut sink = HttpSink::from_config(HttpSinkConfig::splunk(&url, TOKEN_VAR)).unwrap();
    assert_eq!(sink.name(), "splunk");
    let first = records(0..5);
    let second = records(5..10);

    let err = sink.send(&first).await.unwrap_err();
    assert!(matches!(err, SinkError::Retryable(_)), "{err:?}");
    sink.send(&first).await.unwrap();
    sink.send(&second).await.unwrap();

    let st = state.lock().unwrap();
    let expected: Vec<Value> = first
        .iter()
        .chain(&second)
        .map(|r| record_json(r))
        .collect();
    assert_eq!(st.events, expected);
    assert_eq!(st.requests, 3);
}

#[tokio::test]
async fn splunk_hec_bad_token_is_permanent() {
    let (url, state) = serve(hec).await;
    let mut config = HttpSinkConfig::splunk(&url, "CARGO_MANIFEST_DIR");
    config.gzip = false;
    let mut sink = HttpSink::from_config(config).unwrap();
    let err = sink.send(&records(0..2)).await.unwrap_err();
    assert!(matches!(err, SinkError::Permanent(_)), "{err:?}");
    assert!(!err.to_string().contains(&token()));
    assert!(state.lock().unwrap().events.is_empty());
}

#[tokio::test]
async fn elasticsearch_bulk_retries_items_without_duplicates() {
    let (url, state) = serve(bulk).await;
    let mut config = HttpSinkConfig::elasticsearch(&url, "audit");
    config.auth = Some(HttpAuth::Token {
        env: TOKEN_VAR.into(),
    });
    config.gzip = false;
    let mut sink = HttpSink::from_config(config).unwrap();
    assert_eq!(sink.name(), "elasticsearch");
    let first = records(0..5);
    let second = records(5..10);

    // One item is refused with 429: the batch is retryable.
    let err = sink.send(&first).await.unwrap_err();
    assert!(matches!(err, SinkError::Retryable(_)), "{err:?}");
    // The retry resends everything; the four that arrived come back 409 = delivered.
    sink.send(&first).await.unwrap();
    sink.send(&second).await.unwrap();
    // A replay of an already delivered batch changes nothing.
    sink.send(&second).await.unwrap();

    let st = state.lock().unwrap();
    assert_eq!(st.docs.len(), 10);
    assert_eq!(st.events.len(), 10, "every record exactly once");
    for r in first.iter().chain(&second) {
        let v = record_json(r);
        let id = v["id"].as_str().unwrap();
        assert_eq!(st.docs[id], v);
    }
}

#[tokio::test]
async fn elasticsearch_bad_key_is_permanent() {
    let (url, _state) = serve(bulk).await;
    let mut config = HttpSinkConfig::elasticsearch(&url, "audit");
    config.auth = Some(HttpAuth::Basic {
        user: "elastic".into(),
        password_env: TOKEN_VAR.into(),
    });
    let mut sink = HttpSink::from_config(config).unwrap();
    let err = sink.send(&records(0..1)).await.unwrap_err();
    assert!(matches!(err, SinkError::Permanent(_)), "{err:?}");
}

#[tokio::test]
async fn unreachable_receiver_is_retryable() {
    // Bind and drop to find a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut sink = HttpSink::from_config(HttpSinkConfig::splunk(
        format!("http://127.0.0.1:{port}"),
        TOKEN_VAR,
    ))
    .unwrap();
    let err = sink.send(&records(0..1)).await.unwrap_err();
    assert!(matches!(err, SinkError::Retryable(_)), "{err:?}");
}

#[test]
fn elasticsearch_refuses_formats_without_ids() {
    let mut config = HttpSinkConfig::elasticsearch("http://127.0.0.1:9200", "audit");
    config.format = Format::Cef;
    assert!(HttpSink::from_config(config).is_err());
    assert!(HttpSink::from_config(HttpSinkConfig::elasticsearch("http://h", "Bad/Index")).is_err());
}

/// A CA file and an acceptor for a `127.0.0.1` certificate that CA signed.
fn tls_setup(dir: &std::path::Path) -> (std::path::PathBuf, TlsAcceptor) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "portcullis test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
    .unwrap();
    (ca_file, TlsAcceptor::from(Arc::new(config)))
}

#[tokio::test]
async fn splunk_hec_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_file, acceptor) = tls_setup(dir.path());
    let (url, state) = serve_with(hec, Some(acceptor)).await;
    assert!(url.starts_with("https://"));

    // Without the test CA (system bundle only) the server is not trusted.
    let mut untrusted = HttpSink::from_config(HttpSinkConfig::splunk(&url, TOKEN_VAR)).unwrap();
    let err = untrusted.send(&records(0..1)).await.unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");

    let mut config = HttpSinkConfig::splunk(&url, TOKEN_VAR);
    config.ca_file = Some(ca_file);
    let mut sink = HttpSink::from_config(config).unwrap();
    let batch = records(0..3);
    assert!(matches!(
        sink.send(&batch).await,
        Err(SinkError::Retryable(_))
    ));
    sink.send(&batch).await.unwrap();
    let expected: Vec<Value> = batch.iter().map(|r| record_json(r)).collect();
    assert_eq!(state.lock().unwrap().events, expected);
}
