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
use portcullis_audit::sink::http::{HttpAuth, HttpSink, HttpSinkConfig};
use portcullis_audit::sink::{Sink, SinkError};
use portcullis_audit::{AuditEvent, EventKind, Format};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

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
