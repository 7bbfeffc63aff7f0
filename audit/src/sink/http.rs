//! The HTTP sinks: Splunk HTTP Event Collector and Elasticsearch/OpenSearch `_bulk`.
//!
//! - **Splunk HEC**: `POST <base>/services/collector/event` with
//!   `Authorization: Splunk <token>`; the body is one
//!   `{"event":<record>,"sourcetype":..,"time":<secs.micros>}` object per record. JSON
//!   and OCSF records go in as objects, CEF and syslog ones as strings. Success is a 2xx
//!   with `{"code":0}`. HEC has no idempotent write: a batch retried after a lost
//!   answer is indexed twice (indexer acknowledgement is not implemented yet).
//! - **Elasticsearch / OpenSearch**: `POST <base>/<index>/_bulk` with one
//!   `{"create":{"_id":"<event id>"}}` line and the record per event
//!   (`application/x-ndjson`). Because it is `create` with the event's id, a retried
//!   record that already arrived comes back as a 409 conflict, which counts as
//!   delivered: retries never duplicate. Needs JSON or OCSF records (the id is read
//!   from them).
//! - Both: optional gzip (`Content-Encoding: gzip`), `http` or `https` (rustls; the CA
//!   file from the config, else the system bundle), connect and request timeouts, one
//!   keep-alive HTTP/1.1 connection that is re-opened after any failure.
//!
//! # Answers and what the pipeline does with them
//!
//! | Answer | [`SinkError`] | Pipeline |
//! |---|---|---|
//! | network failure, timeout, 408, 429, 5xx | `Retryable` | spool, back off, retry |
//! | 401, 403, 404, other 4xx; TLS server name | `Permanent` (configuration) | spool, back off, retry |
//! | 400, 413, 422 | `Refused` (content) | isolate the record(s), dead-letter them |
//! | HEC 400 with code 7, 10, 11, 14 or 16 (index, channel, ack, query-string auth) | `Permanent` | spool, back off, retry |
//! | HEC 2xx with a code other than 0 | `Retryable` | spool, back off, retry |
//! | `_bulk` item 2xx or 409 | delivered | |
//! | `_bulk` item 429 or 5xx | `Retryable` | spool, back off, retry |
//! | `_bulk` item 401, 403, 404 | `Permanent` | spool, back off, retry |
//! | `_bulk` item other 4xx (mapping or parse error) | `Refused` | isolate, dead-letter |
//! | a record the sink cannot frame (no event id for `_bulk`) | `Refused` | isolate, dead-letter |
//!
//! When one answer mixes them, `Permanent` wins over `Retryable`, which wins over
//! `Refused`: content is only declared refused when nothing else is wrong. HEC's codes
//! 5, 6, 12, 13 and 15 (no data, invalid data format, event field missing or blank,
//! indexed fields) are content refusals like any other 400. A refusal's message names
//! the status and the receiver's error type or text, never the body of the answer
//! (which can quote the refused data).
//! - The token or password is read from the environment variable the config names, held
//!   only in a header value marked sensitive, and never logged or printed by `Debug`.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use rustls_pki_types::pem::PemObject;
use serde::Deserialize;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_rustls::TlsConnector;

use super::{SendFuture, Sink, SinkError};
use crate::AuditError;
use crate::format::Format;

/// Largest response body read (a `_bulk` answer names every item).
const MAX_RESPONSE: usize = 32 * 1024 * 1024;

/// A keep-alive connection idle for longer than this is replaced before the next
/// request, rather than risk one the server (or a proxy) is about to close.
const MAX_IDLE: Duration = Duration::from_secs(30);

/// CA bundles tried, in order, for `https` without a configured CA file.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// Which HTTP API the sink speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpFlavor {
    /// Splunk HTTP Event Collector (`/services/collector/event`).
    SplunkHec {
        /// The `sourcetype` of every event (`portcullis:audit` by default).
        sourcetype: String,
        /// The Splunk index; the token's default index when `None`.
        index: Option<String>,
    },
    /// Elasticsearch or OpenSearch `/<index>/_bulk` with `create` actions.
    Elasticsearch {
        /// Index or data stream name (lower case, no `/`, `*`, `,`, spaces, ...).
        index: String,
    },
}

/// Credentials for the receiver, by environment variable name; read when the sink is
/// built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpAuth {
    /// A token: sent as `Authorization: Splunk <token>` to HEC and
    /// `Authorization: ApiKey <token>` (base64 API key) to Elasticsearch.
    Token {
        /// Environment variable holding the token.
        env: String,
    },
    /// HTTP basic authentication.
    Basic {
        /// User name.
        user: String,
        /// Environment variable holding the password.
        password_env: String,
    },
}

/// HTTP sink settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSinkConfig {
    /// `http(s)://host[:port][/base path]`; the API path is appended to the base path.
    pub url: String,
    /// Splunk HEC or Elasticsearch bulk.
    pub flavor: HttpFlavor,
    /// Encoding of each record. Elasticsearch needs JSON or OCSF.
    pub format: Format,
    /// Credentials; Splunk HEC needs a [`HttpAuth::Token`].
    pub auth: Option<HttpAuth>,
    /// Compress request bodies with gzip.
    pub gzip: bool,
    /// PEM file of CAs to trust for `https`; the system bundle when `None`.
    pub ca_file: Option<PathBuf>,
    /// Limit for TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// Limit for one request, from sending to the last byte of the answer.
    pub request_timeout: Duration,
}

impl HttpSinkConfig {
    /// Splunk HEC at `url` with the token in environment variable `token_env`, JSON
    /// records, sourcetype `portcullis:audit`, gzip on, 5 s / 30 s timeouts.
    pub fn splunk(url: impl Into<String>, token_env: impl Into<String>) -> Self {
        HttpSinkConfig {
            url: url.into(),
            flavor: HttpFlavor::SplunkHec {
                sourcetype: "portcullis:audit".into(),
                index: None,
            },
            format: Format::Json,
            auth: Some(HttpAuth::Token {
                env: token_env.into(),
            }),
            gzip: true,
            ca_file: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
        }
    }

    /// Elasticsearch/OpenSearch bulk into `index` at `url`, no credentials, JSON
    /// records, gzip on, 5 s / 30 s timeouts.
    pub fn elasticsearch(url: impl Into<String>, index: impl Into<String>) -> Self {
        HttpSinkConfig {
            flavor: HttpFlavor::Elasticsearch {
                index: index.into(),
            },
            auth: None,
            ..HttpSinkConfig::splunk(url, String::new())
        }
    }
}

/// Anything a connection can run over (TCP or TLS over TCP).
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A sink posting batches to Splunk HEC or Elasticsearch. Connects on the first `send`.
pub struct HttpSink {
    config: HttpSinkConfig,
    host: String,
    port: u16,
    /// The `Host` header.
    authority: HeaderValue,
    /// Full request path.
    path: String,
    tls: Option<TlsConnector>,
    /// Marked sensitive; never printed.
    auth_header: Option<HeaderValue>,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// When `sender` last finished a request.
    last_used: Instant,
    name: String,
}

impl fmt::Debug for HttpSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSink")
            .field("config", &self.config)
            .field("connected", &self.sender.is_some())
            .finish_non_exhaustive()
    }
}

impl HttpSink {
    /// Checks `config`, reads the credential from the environment and, for `https`,
    /// loads the CAs. Does not connect. Refuses a malformed URL or index name, Splunk
    /// without a token, Elasticsearch with CEF or syslog records, a missing credential
    /// variable and an unreadable CA file.
    pub fn from_config(config: HttpSinkConfig) -> Result<Self, AuditError> {
        let url = parse_url(&config.url)?;
        let (path, name) = match &config.flavor {
            HttpFlavor::SplunkHec { .. } => {
                if !matches!(config.auth, Some(HttpAuth::Token { .. })) {
                    return Err(AuditError::Config(
                        "Splunk HEC sink needs a token (auth = token)".into(),
                    ));
                }
                (
                    format!("{}/services/collector/event", url.base_path),
                    "splunk",
                )
            }
            HttpFlavor::Elasticsearch { index } => {
                if !valid_index(index) {
                    return Err(AuditError::Config(format!(
                        "Elasticsearch index name {index:?} is invalid"
                    )));
                }
                if !matches!(config.format, Format::Json | Format::Ocsf) {
                    return Err(AuditError::Config(
                        "Elasticsearch sink needs JSON or OCSF records".into(),
                    ));
                }
                (format!("{}/{index}/_bulk", url.base_path), "elasticsearch")
            }
        };
        let auth_header = match &config.auth {
            None => None,
            Some(HttpAuth::Token { env }) => {
                let scheme = match config.flavor {
                    HttpFlavor::SplunkHec { .. } => "Splunk",
                    HttpFlavor::Elasticsearch { .. } => "ApiKey",
                };
                Some(secret_header(
                    &format!("{scheme} {}", env_secret(env)?),
                    env,
                )?)
            }
            Some(HttpAuth::Basic { user, password_env }) => {
                let pair = format!("{user}:{}", env_secret(password_env)?);
                let b64 = base64::engine::general_purpose::STANDARD.encode(pair);
                Some(secret_header(&format!("Basic {b64}"), password_env)?)
            }
        };
        let tls = if url.tls {
            Some(tls_connector(config.ca_file.as_deref())?)
        } else {
            None
        };
        let default_port = if url.tls { 443 } else { 80 };
        let host_part = if url.host.contains(':') {
            format!("[{}]", url.host)
        } else {
            url.host.clone()
        };
        let authority = if url.port == default_port {
            host_part
        } else {
            format!("{host_part}:{}", url.port)
        };
        let authority = HeaderValue::from_str(&authority)
            .map_err(|_| AuditError::Config(format!("bad host in {:?}", config.url)))?;
        Ok(HttpSink {
            host: url.host,
            port: url.port,
            authority,
            path,
            tls,
            auth_header,
            sender: None,
            last_used: Instant::now(),
            name: name.into(),
            config,
        })
    }

    async fn send_batch(&mut self, records: &[Vec<u8>]) -> Result<(), SinkError> {
        if records.is_empty() {
            return Ok(());
        }
        let (body, content_type) = match &self.config.flavor {
            HttpFlavor::SplunkHec { sourcetype, index } => (
                hec_body(&self.config.format, sourcetype, index.as_deref(), records),
                "application/json",
            ),
            HttpFlavor::Elasticsearch { .. } => (
                bulk_body(&self.config.format, records)?,
                "application/x-ndjson",
            ),
        };
        let r = self.post(body, content_type).await;
        if r.is_err() {
            self.sender = None;
        }
        let (status, answer) = r?;
        match &self.config.flavor {
            HttpFlavor::SplunkHec { .. } => hec_result(status, &answer),
            HttpFlavor::Elasticsearch { .. } => bulk_result(status, &answer, records.len()),
        }
    }

    /// Posts `body` and returns the status and the answer's body.
    async fn post(
        &mut self,
        body: Vec<u8>,
        content_type: &'static str,
    ) -> Result<(StatusCode, Bytes), SinkError> {
        let mut req = Request::post(self.path.as_str())
            .header(HOST, self.authority.clone())
            .header(CONTENT_TYPE, content_type);
        if let Some(auth) = &self.auth_header {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        let body = if self.config.gzip {
            req = req.header(CONTENT_ENCODING, "gzip");
            gzip(&body)?
        } else {
            body
        };
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| SinkError::Permanent(format!("{}: building request: {e}", self.name)))?;

        let reuse = self
            .sender
            .take()
            .filter(|s| !s.is_closed() && s.is_ready() && self.last_used.elapsed() < MAX_IDLE);
        let mut sender = match reuse {
            Some(s) => s,
            None => self.connect().await?,
        };
        let name = &self.name;
        let exchange = async {
            sender
                .ready()
                .await
                .map_err(|e| SinkError::Retryable(format!("{name}: connection: {e}")))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| SinkError::Retryable(format!("{name}: request: {e}")))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| SinkError::Retryable(format!("{name}: reading answer: {e}")))?
                .to_bytes();
            Ok::<_, SinkError>((status, body))
        };
        let out = timeout(self.config.request_timeout, exchange)
            .await
            .map_err(|_| {
                SinkError::Retryable(format!(
                    "{name}: no answer within {:?}",
                    self.config.request_timeout
                ))
            })??;
        self.sender = Some(sender);
        self.last_used = Instant::now();
        Ok(out)
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, SinkError> {
        let name = &self.name;
        let addr = (self.host.as_str(), self.port);
        let open = async {
            let tcp = TcpStream::connect(addr).await.map_err(|e| {
                SinkError::Retryable(format!("{name}: connect {}:{}: {e}", self.host, self.port))
            })?;
            let _ = tcp.set_nodelay(true);
            let io: Box<dyn Io> =
                match &self.tls {
                    None => Box::new(tcp),
                    Some(tls) => {
                        let server = ServerName::try_from(self.host.clone()).map_err(|e| {
                            SinkError::Permanent(format!("{name}: TLS server name: {e}"))
                        })?;
                        Box::new(tls.connect(server, tcp).await.map_err(|e| {
                            SinkError::Retryable(format!("{name}: TLS handshake: {e}"))
                        })?)
                    }
                };
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                .await
                .map_err(|e| SinkError::Retryable(format!("{name}: HTTP handshake: {e}")))?;
            // Drives the connection; ends when the sender is dropped or the peer closes.
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(sender)
        };
        timeout(self.config.connect_timeout, open)
            .await
            .map_err(|_| {
                SinkError::Retryable(format!(
                    "{name}: connect {}:{}: timed out",
                    self.host, self.port
                ))
            })?
    }
}

impl Sink for HttpSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a mut self, records: &'a [Vec<u8>]) -> SendFuture<'a> {
        Box::pin(self.send_batch(records))
    }
}

/// What the sinks read from an encoded record.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct RecordMeta {
    /// The event id (`id` in JSON, `metadata.uid` in OCSF), when it is a plain token.
    pub id: Option<String>,
    /// The event time.
    pub time: Option<OffsetDateTime>,
    /// The record is a JSON object (JSON or OCSF format, and it parsed).
    pub json: bool,
}

/// Reads the id and time of a JSON or OCSF `record` (without its newline); nothing for
/// the other formats.
pub(crate) fn record_meta(format: &Format, record: &[u8]) -> RecordMeta {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default)]
        id: Option<Value>,
        #[serde(default)]
        time: Option<Value>,
        #[serde(default)]
        metadata: Option<Value>,
    }
    if !matches!(format, Format::Json | Format::Ocsf) {
        return RecordMeta::default();
    }
    let Ok(p) = serde_json::from_slice::<Probe>(record) else {
        return RecordMeta::default();
    };
    let parse_time = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
    };
    let (id, time) = match format {
        Format::Ocsf => {
            let m = p.metadata.as_ref();
            (
                m.and_then(|m| m.get("uid")),
                parse_time(m.and_then(|m| m.get("original_time"))),
            )
        }
        _ => (p.id.as_ref(), parse_time(p.time.as_ref())),
    };
    RecordMeta {
        id: id
            .and_then(Value::as_str)
            .filter(|id| valid_id(id))
            .map(str::to_string),
        time,
        json: true,
    }
}

/// Ids go into NATS headers and URLs' neighbours: keep them to a safe alphabet.
fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

fn hec_body(
    format: &Format,
    sourcetype: &str,
    index: Option<&str>,
    records: &[Vec<u8>],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.iter().map(|r| r.len() + 96).sum());
    for record in records {
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        let meta = record_meta(format, record);
        out.extend_from_slice(b"{\"event\":");
        if meta.json {
            out.extend_from_slice(record);
        } else {
            push_json_string(&mut out, &String::from_utf8_lossy(record));
        }
        out.extend_from_slice(b",\"sourcetype\":");
        push_json_string(&mut out, sourcetype);
        if let Some(index) = index {
            out.extend_from_slice(b",\"index\":");
            push_json_string(&mut out, index);
        }
        if let Some(t) = meta.time {
            let micros = t.unix_timestamp_nanos() / 1000;
            let _ = write!(
                out,
                ",\"time\":{}.{:06}",
                micros.div_euclid(1_000_000),
                micros.rem_euclid(1_000_000)
            );
        }
        out.extend_from_slice(b"}\n");
    }
    out
}

fn push_json_string(out: &mut Vec<u8>, s: &str) {
    // Serializing a str cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn bulk_body(format: &Format, records: &[Vec<u8>]) -> Result<Vec<u8>, SinkError> {
    let mut out = Vec::with_capacity(records.iter().map(|r| r.len() + 80).sum());
    for (i, record) in records.iter().enumerate() {
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        let meta = record_meta(format, record);
        let Some(id) = meta.id.filter(|_| meta.json) else {
            return Err(SinkError::Refused(format!(
                "elasticsearch: record {i} is not a JSON event with an id"
            )));
        };
        out.extend_from_slice(b"{\"create\":{\"_id\":");
        push_json_string(&mut out, &id);
        out.extend_from_slice(b"}}\n");
        out.extend_from_slice(record);
        out.push(b'\n');
    }
    Ok(out)
}

fn gzip(body: &[u8]) -> Result<Vec<u8>, SinkError> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4 + 64),
        flate2::Compression::default(),
    );
    enc.write_all(body)
        .and_then(|()| enc.finish())
        .map_err(|e| SinkError::Permanent(format!("gzip: {e}")))
}

/// Maps a non-2xx status; see the module docs.
fn status_error(who: &str, status: StatusCode, body: &[u8]) -> SinkError {
    if status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        SinkError::Retryable(format!("{who}: HTTP {status}: {}", snippet(body)))
    } else if content_refused(status) {
        SinkError::Refused(format!("{who}: HTTP {status}: {}", error_summary(body)))
    } else {
        SinkError::Permanent(format!("{who}: HTTP {status}: {}", snippet(body)))
    }
}

/// Statuses that refuse the request's content rather than the sink's configuration.
fn content_refused(status: StatusCode) -> bool {
    status == StatusCode::BAD_REQUEST
        || status == StatusCode::PAYLOAD_TOO_LARGE
        || status == StatusCode::UNPROCESSABLE_ENTITY
}

/// The start of an answer's body, for errors that do not concern the records.
fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned()
}

/// What a refusal answer says about itself: HEC's `text` and `code`, or
/// Elasticsearch's error `type`. Never the rest of the body, which may quote the data.
fn error_summary(body: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return "no readable error".into();
    };
    let error = v.get("error");
    let kind = error
        .and_then(|e| {
            e.get("type")
                .or_else(|| e.get("root_cause")?.get(0)?.get("type"))
        })
        .or(v.get("text"))
        .and_then(Value::as_str)
        .map(|t| t.chars().take(120).collect::<String>());
    match (kind, v.get("code").and_then(Value::as_i64)) {
        (Some(k), Some(code)) => format!("{k} (code {code})"),
        (Some(k), None) => k,
        (None, Some(code)) => format!("code {code}"),
        (None, None) => "no readable error".into(),
    }
}

/// HEC codes of a 400 that mean the sink's configuration, not the data, is wrong:
/// incorrect index, data channel missing or invalid, acknowledgement disabled,
/// query-string authorization not enabled.
const HEC_CONFIG_CODES: &[i64] = &[7, 10, 11, 14, 16];

fn hec_result(status: StatusCode, body: &[u8]) -> Result<(), SinkError> {
    #[derive(Deserialize)]
    struct HecAnswer {
        #[serde(default)]
        code: Option<i64>,
        #[serde(default)]
        text: String,
    }
    if !status.is_success() {
        let code = serde_json::from_slice::<HecAnswer>(body)
            .ok()
            .and_then(|a| a.code);
        if status == StatusCode::BAD_REQUEST && code.is_some_and(|c| HEC_CONFIG_CODES.contains(&c))
        {
            return Err(SinkError::Permanent(format!(
                "splunk: HTTP {status}: {}",
                snippet(body)
            )));
        }
        return Err(status_error("splunk", status, body));
    }
    match serde_json::from_slice::<HecAnswer>(body) {
        Ok(HecAnswer { code: Some(0), .. }) => Ok(()),
        Ok(a) => Err(SinkError::Retryable(format!(
            "splunk: HTTP {status} with code {:?}: {}",
            a.code, a.text
        ))),
        Err(e) => Err(SinkError::Retryable(format!(
            "splunk: HTTP {status} with an unreadable answer: {e}"
        ))),
    }
}

fn bulk_result(status: StatusCode, body: &[u8], sent: usize) -> Result<(), SinkError> {
    #[derive(Deserialize)]
    struct BulkAnswer {
        errors: bool,
        #[serde(default)]
        items: Vec<std::collections::HashMap<String, BulkItem>>,
    }
    #[derive(Deserialize)]
    struct BulkItem {
        status: u16,
        #[serde(default)]
        error: Option<Value>,
    }
    if !status.is_success() {
        return Err(status_error("elasticsearch", status, body));
    }
    let answer: BulkAnswer = serde_json::from_slice(body)
        .map_err(|e| SinkError::Retryable(format!("elasticsearch: unreadable bulk answer: {e}")))?;
    if !answer.errors {
        return Ok(());
    }
    if answer.items.len() != sent {
        return Err(SinkError::Retryable(format!(
            "elasticsearch: bulk answer names {} items for {sent} sent",
            answer.items.len()
        )));
    }
    let mut retry = 0usize;
    let mut config: Option<String> = None;
    let mut refused: Option<String> = None;
    for (i, item) in answer.items.iter().enumerate() {
        let Some(item) = item.values().next() else {
            continue;
        };
        // 409 on `create`: the document is there from an earlier try.
        if (200..300).contains(&item.status) || item.status == 409 {
            continue;
        }
        let kind = item
            .error
            .as_ref()
            .and_then(|e| e.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("no error type given");
        let why = || format!("item {i}: status {}: {kind}", item.status);
        if item.status == 429 || item.status >= 500 {
            retry += 1;
        } else if matches!(item.status, 401 | 403 | 404) {
            config.get_or_insert_with(why);
        } else {
            refused.get_or_insert_with(why);
        }
    }
    if let Some(why) = config {
        return Err(SinkError::Permanent(format!(
            "elasticsearch: bulk item not accepted: {why}"
        )));
    }
    if retry > 0 {
        return Err(SinkError::Retryable(format!(
            "elasticsearch: {retry} of {sent} bulk items must be retried"
        )));
    }
    if let Some(why) = refused {
        return Err(SinkError::Refused(format!(
            "elasticsearch: bulk item refused: {why}"
        )));
    }
    Ok(())
}

fn env_secret(var: &str) -> Result<String, AuditError> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => Err(AuditError::Config(format!(
            "environment variable {var} (HTTP sink credential) is not set"
        ))),
    }
}

fn secret_header(value: &str, var: &str) -> Result<HeaderValue, AuditError> {
    let mut h = HeaderValue::from_str(value).map_err(|_| {
        AuditError::Config(format!(
            "environment variable {var} holds characters not allowed in a header"
        ))
    })?;
    h.set_sensitive(true);
    Ok(h)
}

fn tls_connector(ca_file: Option<&Path>) -> Result<TlsConnector, AuditError> {
    let path = match ca_file {
        Some(p) => p.to_path_buf(),
        None => SYSTEM_BUNDLES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or_else(|| {
                AuditError::Config("https sink: no ca_file and no system CA bundle found".into())
            })?,
    };
    let bad = |e: String| AuditError::Config(format!("CA file {}: {e}", path.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        rustls_pki_types::CertificateDer::pem_file_iter(&path).map_err(|e| bad(e.to_string()))?
    {
        let cert = cert.map_err(|e| bad(e.to_string()))?;
        // A system bundle may hold a certificate rustls cannot use; skip it rather
        // than refuse the whole bundle.
        if roots.add(cert).is_err() && ca_file.is_some() {
            return Err(bad("a certificate could not be parsed".into()));
        }
    }
    if roots.is_empty() {
        return Err(bad("no certificates".into()));
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| AuditError::Config(format!("TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

struct Url {
    tls: bool,
    host: String,
    port: u16,
    /// Without a trailing `/`; empty for the root.
    base_path: String,
}

fn parse_url(url: &str) -> Result<Url, AuditError> {
    let bad = |why: &str| AuditError::Config(format!("HTTP sink url {url:?}: {why}"));
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(bad("must start with http:// or https://"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err(bad("credentials in the URL are refused; use auth"));
    }
    if path.contains(['?', '#', ' ']) {
        return Err(bad("query, fragment or space in the path"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| bad("bad port"))?,
        None if tls => 443,
        None => 80,
    };
    Ok(Url {
        tls,
        host: host.to_string(),
        port,
        base_path: path.trim_end_matches('/').to_string(),
    })
}

/// Elasticsearch's index name rules, as far as they matter here.
fn valid_index(index: &str) -> bool {
    !index.is_empty()
        && index.len() <= 255
        && index != "."
        && index != ".."
        && !index.starts_with(['-', '_', '+'])
        && index.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::fixtures;

    fn record(format: &Format) -> Vec<u8> {
        let mut out = Vec::new();
        format.encode(&fixtures::statement(), &mut out).unwrap();
        out
    }

    #[test]
    fn meta_from_json_and_ocsf() {
        for f in [Format::Json, Format::Ocsf] {
            let r = record(&f);
            let m = record_meta(&f, r.strip_suffix(b"\n").unwrap());
            assert_eq!(
                m.id.as_deref(),
                Some("019ab6a1-2b3b-7000-8000-000000000001"),
                "{f:?}"
            );
            assert_eq!(m.time, Some(fixtures::time().datetime()), "{f:?}");
            assert!(m.json);
        }
        assert_eq!(
            record_meta(&Format::Cef, &record(&Format::Cef)),
            RecordMeta::default()
        );
    }

    #[test]
    fn hec_body_shape() {
        let body = hec_body(
            &Format::Json,
            "portcullis:audit",
            Some("main"),
            &[record(&Format::Json)],
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["sourcetype"], "portcullis:audit");
        assert_eq!(v["index"], "main");
        assert_eq!(v["event"]["user"], "alice");
        assert!(
            String::from_utf8(body)
                .unwrap()
                .contains(r#""time":1795530150.123456}"#)
        );
        let body = hec_body(&Format::Cef, "s", None, &[record(&Format::Cef)]);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(v["event"].as_str().unwrap().starts_with("CEF:"));
    }

    #[test]
    fn bulk_answers() {
        let ok = br#"{"errors":false,"items":[{"create":{"status":201}}]}"#;
        assert!(bulk_result(StatusCode::OK, ok, 1).is_ok());
        let dup =
            br#"{"errors":true,"items":[{"create":{"status":409}},{"create":{"status":201}}]}"#;
        assert!(bulk_result(StatusCode::OK, dup, 2).is_ok());
        let busy =
            br#"{"errors":true,"items":[{"create":{"status":429}},{"create":{"status":201}}]}"#;
        assert!(matches!(
            bulk_result(StatusCode::OK, busy, 2),
            Err(SinkError::Retryable(_))
        ));
        let bad = br#"{"errors":true,"items":[{"create":{"status":201}},{"create":{"status":400,
            "error":{"type":"document_parsing_exception","reason":"preview 'secret'"}}}]}"#;
        match bulk_result(StatusCode::OK, bad, 2) {
            Err(SinkError::Refused(why)) => {
                assert!(why.contains("item 1") && why.contains("document_parsing_exception"));
                assert!(!why.contains("secret"), "the reason may quote data: {why}");
            }
            other => panic!("{other:?}"),
        }
        // A retryable item wins over a refused one; a forbidden one over both.
        let mixed =
            br#"{"errors":true,"items":[{"create":{"status":400}},{"create":{"status":503}}]}"#;
        assert!(matches!(
            bulk_result(StatusCode::OK, mixed, 2),
            Err(SinkError::Retryable(_))
        ));
        let forbidden =
            br#"{"errors":true,"items":[{"create":{"status":403}},{"create":{"status":503}}]}"#;
        assert!(matches!(
            bulk_result(StatusCode::OK, forbidden, 2),
            Err(SinkError::Permanent(_))
        ));
        for status in [StatusCode::BAD_REQUEST, StatusCode::PAYLOAD_TOO_LARGE] {
            let body =
                br#"{"error":{"type":"parse_exception","reason":"quotes 'secret'"},"status":400}"#;
            match bulk_result(status, body, 1) {
                Err(SinkError::Refused(why)) => {
                    assert!(why.contains("parse_exception"), "{why}");
                    assert!(!why.contains("secret"), "{why}");
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            bulk_result(StatusCode::SERVICE_UNAVAILABLE, b"", 1),
            Err(SinkError::Retryable(_))
        ));
        assert!(matches!(
            bulk_result(StatusCode::UNAUTHORIZED, b"", 1),
            Err(SinkError::Permanent(_))
        ));
    }

    #[test]
    fn hec_answers() {
        let invalid = br#"{"text":"Invalid data format","code":6,"invalid-event-number":2}"#;
        match hec_result(StatusCode::BAD_REQUEST, invalid) {
            Err(SinkError::Refused(why)) => assert!(why.contains("Invalid data format (code 6)")),
            other => panic!("{other:?}"),
        }
        let index = br#"{"text":"Incorrect index","code":7,"invalid-event-number":0}"#;
        assert!(matches!(
            hec_result(StatusCode::BAD_REQUEST, index),
            Err(SinkError::Permanent(_))
        ));
        assert!(matches!(
            hec_result(StatusCode::PAYLOAD_TOO_LARGE, b"too large"),
            Err(SinkError::Refused(_))
        ));
        let token = br#"{"text":"Invalid token","code":4}"#;
        assert!(matches!(
            hec_result(StatusCode::FORBIDDEN, token),
            Err(SinkError::Permanent(_))
        ));
        assert!(hec_result(StatusCode::OK, br#"{"text":"Success","code":0}"#).is_ok());
    }

    #[test]
    fn urls_and_indices() {
        let u = parse_url("https://h:8088/splunk/").unwrap();
        assert!(u.tls);
        assert_eq!(
            (u.host.as_str(), u.port, u.base_path.as_str()),
            ("h", 8088, "/splunk")
        );
        let u = parse_url("http://[::1]").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.base_path.as_str()),
            ("::1", 80, "")
        );
        assert!(parse_url("ftp://h").is_err());
        assert!(parse_url("http://u:p@h").is_err());
        assert!(valid_index("audit-2026.11"));
        assert!(!valid_index("Audit"));
        assert!(!valid_index("a/b"));
        assert!(!valid_index("_x"));
    }

    #[test]
    fn debug_hides_the_token() {
        // Setting variables is unsafe in edition 2024 (and unsafe code is forbidden):
        // use one that cargo always sets.
        let var = "CARGO_PKG_NAME";
        let secret = std::env::var(var).unwrap();
        let sink =
            HttpSink::from_config(HttpSinkConfig::splunk("http://127.0.0.1:1", var)).unwrap();
        assert!(!format!("{sink:?}").contains(&secret));
        let missing = HttpSinkConfig::splunk("http://127.0.0.1:1", "PORTCULLIS_SURELY_UNSET_VAR");
        assert!(HttpSink::from_config(missing).is_err());
    }
}
