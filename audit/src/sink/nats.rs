//! The NATS JetStream sink: every record is one message on a JetStream subject, and
//! `send` returns only once JetStream has acknowledged every one of them.
//!
//! - Speaks the small part of the NATS client protocol it needs over plain TCP (`INFO`,
//!   `CONNECT`, `PING`/`PONG`, `SUB`, `PUB`/`HPUB`, `MSG`/`HMSG`, `-ERR`) instead of
//!   pulling in a full client: publishing with acks is a few lines of it.
//! - Each record is published with a reply subject on this connection's inbox; the
//!   JetStream PubAck (`{"stream":..,"seq":..}`) or error (`{"error":..}`) comes back
//!   there. A batch's publishes are pipelined, then the acks are awaited together.
//! - When the format is JSON or OCSF, the event id is sent as the `Nats-Msg-Id` header,
//!   so that JetStream drops a retried record within its duplicate window
//!   (`duplicate_window`, two minutes unless the stream says otherwise). CEF and syslog
//!   records carry no id the sink can read, and a retry may duplicate them.
//! - Optionally creates the stream (file storage, bound to the sink's subject) when it
//!   does not exist.
//! - Any connection failure drops the connection; the next `send` reconnects.
//!
//! # Answers and what the pipeline does with them
//!
//! - [`SinkError::Retryable`] (spool, back off, retry): the server is down or slow, a
//!   missing ack, "no responders" (JetStream off, or no stream captures the subject), a
//!   JetStream error on a publish other than the one below, any other `-ERR`.
//! - [`SinkError::Permanent`] (configuration; spooled and retried like a retryable
//!   error until the operator fixes it): an `-ERR` about authorization,
//!   authentication or permissions, a server that requires TLS or lacks headers, a
//!   failed stream creation.
//! - [`SinkError::Refused`] (content; the pipeline isolates the record and
//!   dead-letters it): a record larger than the server's `max_payload`, a
//!   `Maximum Payload Violation`, or JetStream error 10054 (message larger than the
//!   stream allows).
//!
//! Not supported yet: TLS to the server, NKEY/JWT credentials, cluster URLs (one server
//! per sink).

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use super::http::record_meta;
use super::{SendFuture, Sink, SinkError};
use crate::AuditError;
use crate::format::Format;

/// Longest protocol control line accepted from the server (`INFO` can list many URLs).
const MAX_LINE: u64 = 64 * 1024;
/// Largest message payload accepted from the server (acks and API answers are small).
const MAX_INCOMING: usize = 4 * 1024 * 1024;

/// A connection idle for longer than this is replaced before the next batch.
const MAX_IDLE: Duration = Duration::from_secs(60);

/// How the sink authenticates to the NATS server. Secrets are named by environment
/// variable and read when the sink is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsAuth {
    /// `user` and the password in environment variable `password_env`.
    UserPassword {
        /// The NATS user.
        user: String,
        /// Environment variable holding the password.
        password_env: String,
    },
    /// A token in environment variable `env`.
    Token {
        /// Environment variable holding the token.
        env: String,
    },
}

/// NATS JetStream sink settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSinkConfig {
    /// `nats://host:port` (port 4222 when left out). Credentials in the URL are refused:
    /// use [`NatsAuth`].
    pub url: String,
    /// Subject every record is published to (no wildcards).
    pub subject: String,
    /// A stream to create, bound to `subject`, when it does not exist yet. `None`
    /// expects an existing stream to capture `subject`.
    pub stream: Option<String>,
    /// Encoding of each record; JSON and OCSF give JetStream deduplication.
    pub format: Format,
    /// Credentials, if the server wants them.
    pub auth: Option<NatsAuth>,
    /// Limit for the TCP connect and the protocol handshake.
    pub connect_timeout: Duration,
    /// Limit for all of a batch's acks to arrive.
    pub ack_timeout: Duration,
    /// Duplicate window of a stream the sink creates.
    pub duplicate_window: Duration,
}

impl NatsSinkConfig {
    /// JSON records to `subject` on the server at `url`, with no stream creation and no
    /// credentials, 5 s connect and 10 s ack timeouts, 2 min duplicate window.
    pub fn new(url: impl Into<String>, subject: impl Into<String>) -> Self {
        NatsSinkConfig {
            url: url.into(),
            subject: subject.into(),
            stream: None,
            format: Format::Json,
            auth: None,
            connect_timeout: Duration::from_secs(5),
            ack_timeout: Duration::from_secs(10),
            duplicate_window: Duration::from_secs(120),
        }
    }
}

/// Credentials read from the environment; never printed.
enum Credentials {
    None,
    UserPassword { user: String, password: String },
    Token(String),
}

/// A sink publishing to NATS JetStream. Connects on the first `send`.
pub struct NatsSink {
    config: NatsSinkConfig,
    host: String,
    port: u16,
    credentials: Credentials,
    conn: Option<Conn>,
    /// Counts batches, so that a late ack of an earlier, failed batch is never taken
    /// for one of the current batch.
    batch: u64,
    name: String,
}

impl fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSink")
            .field("config", &self.config)
            .field("connected", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

impl NatsSink {
    /// Checks `config` and reads its credentials from the environment. Does not
    /// connect. Refuses a malformed URL, credentials in the URL, a subject with
    /// wildcards or spaces, an invalid stream name and a missing credential variable.
    pub fn from_config(config: NatsSinkConfig) -> Result<Self, AuditError> {
        let (host, port) = parse_url(&config.url)?;
        if !valid_token(&config.subject, true) {
            return Err(AuditError::Config(format!(
                "NATS subject {:?} must be non-empty, without spaces or wildcards",
                config.subject
            )));
        }
        if let Some(stream) = &config.stream {
            if !valid_token(stream, false) {
                return Err(AuditError::Config(format!(
                    "NATS stream name {stream:?} must be non-empty, without spaces, dots or wildcards"
                )));
            }
        }
        let credentials = match &config.auth {
            None => Credentials::None,
            Some(NatsAuth::UserPassword { user, password_env }) => Credentials::UserPassword {
                user: user.clone(),
                password: env_secret(password_env)?,
            },
            Some(NatsAuth::Token { env }) => Credentials::Token(env_secret(env)?),
        };
        Ok(NatsSink {
            name: "nats".into(),
            host,
            port,
            credentials,
            conn: None,
            batch: 0,
            config,
        })
    }

    async fn send_batch(&mut self, records: &[Vec<u8>]) -> Result<(), SinkError> {
        if records.is_empty() {
            return Ok(());
        }
        // The sink answers the server's PINGs only while it sends, so a connection idle
        // for longer than the server's ping interval (2 min by default) may have been
        // closed as stale: start a fresh one rather than fail on it.
        if self
            .conn
            .as_ref()
            .is_some_and(|c| c.last_used.elapsed() > MAX_IDLE)
        {
            self.conn = None;
        }
        if self.conn.is_none() {
            self.conn = Some(self.connect().await?);
        }
        self.batch = self.batch.wrapping_add(1);
        let Some(conn) = self.conn.as_mut() else {
            return Err(SinkError::Retryable("NATS: not connected".into()));
        };
        let r = conn
            .publish_batch(
                &self.config.subject,
                &self.config.format,
                records,
                self.batch,
                self.config.ack_timeout,
            )
            .await;
        conn.last_used = Instant::now();
        if r.is_err() {
            // The connection may be in any state (half a message written, acks still on
            // their way): start afresh.
            self.conn = None;
        }
        r
    }

    async fn connect(&self) -> Result<Conn, SinkError> {
        let deadline = Instant::now() + self.config.connect_timeout;
        let addr = format!("{}:{}", self.host, self.port);
        let tcp = timeout_at(
            deadline,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| SinkError::Retryable(format!("NATS connect to {addr}: timed out")))?
        .map_err(|e| SinkError::Retryable(format!("NATS connect to {addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let mut conn = Conn {
            stream: BufStream::new(tcp),
            inbox: format!("_INBOX.{:032x}", rand::random::<u128>()),
            max_payload: 1024 * 1024,
            last_used: Instant::now(),
        };
        timeout_at(deadline, conn.handshake(&self.credentials))
            .await
            .map_err(|_| {
                SinkError::Retryable(format!("NATS handshake with {addr}: timed out"))
            })??;
        if let Some(stream) = &self.config.stream {
            timeout_at(
                deadline + self.config.ack_timeout,
                conn.ensure_stream(stream, &self.config.subject, self.config.duplicate_window),
            )
            .await
            .map_err(|_| SinkError::Retryable("NATS stream lookup: timed out".into()))??;
        }
        Ok(conn)
    }
}

impl Sink for NatsSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a mut self, records: &'a [Vec<u8>]) -> SendFuture<'a> {
        Box::pin(self.send_batch(records))
    }
}

/// One protocol operation from the server.
enum Op {
    Msg {
        subject: String,
        /// The header block (`NATS/1.0 ...` and header lines), for `HMSG`.
        headers: Option<Vec<u8>>,
        payload: Vec<u8>,
    },
    Ping,
    Pong,
    Err(String),
    /// `+OK`, `INFO`: nothing to do.
    Other,
}

/// The JetStream answer to a publish or an API request, as far as the sink reads it.
#[derive(Deserialize)]
struct ApiReply {
    #[serde(default)]
    error: Option<ApiError>,
    #[serde(default)]
    seq: Option<u64>,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    err_code: u32,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
struct ServerInfo {
    #[serde(default)]
    headers: bool,
    #[serde(default)]
    tls_required: bool,
    #[serde(default)]
    max_payload: Option<usize>,
}

struct Conn {
    stream: BufStream<TcpStream>,
    inbox: String,
    max_payload: usize,
    last_used: Instant,
}

fn io_err(what: &str, e: std::io::Error) -> SinkError {
    SinkError::Retryable(format!("NATS {what}: {e}"))
}

impl Conn {
    async fn handshake(&mut self, credentials: &Credentials) -> Result<(), SinkError> {
        let line = self.read_line().await.map_err(|e| io_err("read INFO", e))?;
        let Some(info) = line.strip_prefix("INFO ") else {
            return Err(SinkError::Retryable(format!(
                "NATS: expected INFO, got {:?}",
                truncate(&line)
            )));
        };
        let info: ServerInfo = serde_json::from_str(info)
            .map_err(|e| SinkError::Retryable(format!("NATS: bad INFO: {e}")))?;
        if info.tls_required {
            return Err(SinkError::Permanent(
                "NATS server requires TLS, which this sink does not speak yet".into(),
            ));
        }
        if !info.headers {
            return Err(SinkError::Permanent(
                "NATS server does not support headers (needs 2.2 or later)".into(),
            ));
        }
        if let Some(m) = info.max_payload {
            self.max_payload = m;
        }
        let mut connect = json!({
            "verbose": false,
            "pedantic": false,
            "tls_required": false,
            "headers": true,
            "no_responders": true,
            "lang": "rust-portcullis",
            "version": crate::format::VERSION,
            "protocol": 1,
            "name": "portcullis-audit",
        });
        if let Some(o) = connect.as_object_mut() {
            match credentials {
                Credentials::None => {}
                Credentials::UserPassword { user, password } => {
                    o.insert("user".into(), user.as_str().into());
                    o.insert("pass".into(), password.as_str().into());
                }
                Credentials::Token(t) => {
                    o.insert("auth_token".into(), t.as_str().into());
                }
            }
        }
        let mut out = b"CONNECT ".to_vec();
        serde_json::to_writer(&mut out, &connect)
            .map_err(|e| SinkError::Permanent(format!("NATS CONNECT: {e}")))?;
        out.extend_from_slice(b"\r\nPING\r\n");
        out.extend_from_slice(format!("SUB {}.> 1\r\n", self.inbox).as_bytes());
        self.write_all(&out).await?;
        loop {
            match self.read_op().await? {
                Op::Err(e) => return Err(server_error(&e)),
                Op::Ping => self.write_all(b"PONG\r\n").await?,
                // The PONG to our PING: CONNECT was accepted.
                Op::Pong => return Ok(()),
                Op::Msg { .. } | Op::Other => {}
            }
        }
    }

    /// Creates `stream` bound to `subject` unless it exists.
    async fn ensure_stream(
        &mut self,
        stream: &str,
        subject: &str,
        duplicate_window: Duration,
    ) -> Result<(), SinkError> {
        let info = self
            .request(&format!("$JS.API.STREAM.INFO.{stream}"), b"", "info")
            .await?;
        match info.error {
            None => return Ok(()),
            Some(e) if e.code == 404 => {}
            Some(e) => {
                return Err(SinkError::Retryable(format!(
                    "NATS stream info {stream}: {} ({})",
                    e.description, e.err_code
                )));
            }
        }
        let body = json!({
            "name": stream,
            "subjects": [subject],
            "storage": "file",
            "retention": "limits",
            "duplicate_window": u64::try_from(duplicate_window.as_nanos()).unwrap_or(u64::MAX),
        });
        let body = serde_json::to_vec(&body)
            .map_err(|e| SinkError::Permanent(format!("NATS stream create: {e}")))?;
        let created = self
            .request(&format!("$JS.API.STREAM.CREATE.{stream}"), &body, "create")
            .await?;
        match created.error {
            None => Ok(()),
            // Another proxy created it meanwhile.
            Some(e) if e.err_code == 10058 => Ok(()),
            Some(e) => Err(SinkError::Permanent(format!(
                "NATS stream create {stream}: {} ({})",
                e.description, e.err_code
            ))),
        }
    }

    /// One JetStream API request, answered on `<inbox>.<tag>`.
    async fn request(
        &mut self,
        subject: &str,
        payload: &[u8],
        tag: &str,
    ) -> Result<ApiReply, SinkError> {
        let reply = format!("{}.{tag}", self.inbox);
        let mut out = format!("PUB {subject} {reply} {}\r\n", payload.len()).into_bytes();
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
        self.write_all(&out).await?;
        loop {
            match self.read_op().await? {
                Op::Msg {
                    subject,
                    headers,
                    payload,
                } if subject == reply => {
                    if no_responders(headers.as_deref()) {
                        return Err(SinkError::Retryable(
                            "NATS: JetStream is not enabled on the server".into(),
                        ));
                    }
                    return serde_json::from_slice(&payload).map_err(|e| {
                        SinkError::Retryable(format!("NATS: bad JetStream answer: {e}"))
                    });
                }
                Op::Err(e) => return Err(server_error(&e)),
                Op::Ping => self.write_all(b"PONG\r\n").await?,
                _ => {}
            }
        }
    }

    async fn publish_batch(
        &mut self,
        subject: &str,
        format: &Format,
        records: &[Vec<u8>],
        batch: u64,
        ack_timeout: Duration,
    ) -> Result<(), SinkError> {
        let prefix = format!("{}.{batch}.", self.inbox);
        // Headers first, so that an oversized record is refused before anything of the
        // batch is written.
        let mut headers = Vec::with_capacity(records.len());
        for record in records {
            let payload = record.strip_suffix(b"\n").unwrap_or(record);
            let h = record_meta(format, payload)
                .id
                .map(|id| format!("NATS/1.0\r\nNats-Msg-Id: {id}\r\n\r\n"));
            let total = payload.len() + h.as_ref().map_or(0, String::len);
            if total > self.max_payload {
                return Err(SinkError::Refused(format!(
                    "NATS: record of {total} bytes exceeds the server's max_payload {}",
                    self.max_payload
                )));
            }
            headers.push(h);
        }
        let mut head = String::new();
        for (i, (record, headers)) in records.iter().zip(&headers).enumerate() {
            let payload = record.strip_suffix(b"\n").unwrap_or(record);
            let total = payload.len() + headers.as_ref().map_or(0, String::len);
            head.clear();
            match headers {
                Some(h) => {
                    head.push_str(&format!(
                        "HPUB {subject} {prefix}{i} {} {total}\r\n",
                        h.len()
                    ));
                    head.push_str(h);
                }
                None => head.push_str(&format!("PUB {subject} {prefix}{i} {total}\r\n")),
            }
            self.stream
                .write_all(head.as_bytes())
                .await
                .map_err(|e| io_err("write", e))?;
            self.stream
                .write_all(payload)
                .await
                .map_err(|e| io_err("write", e))?;
            self.stream
                .write_all(b"\r\n")
                .await
                .map_err(|e| io_err("write", e))?;
        }
        self.stream.flush().await.map_err(|e| io_err("write", e))?;

        let mut acked = vec![false; records.len()];
        let mut missing = records.len();
        let deadline = Instant::now() + ack_timeout;
        while missing > 0 {
            let op = timeout_at(deadline, self.read_op()).await.map_err(|_| {
                SinkError::Retryable(format!(
                    "NATS: {missing} of {} acks missing after {ack_timeout:?}",
                    records.len()
                ))
            })??;
            match op {
                Op::Msg {
                    subject: reply,
                    headers,
                    payload,
                } => {
                    let Some(i) = reply
                        .strip_prefix(&prefix)
                        .and_then(|i| i.parse::<usize>().ok())
                    else {
                        continue; // a late answer to an earlier batch
                    };
                    if no_responders(headers.as_deref()) {
                        return Err(SinkError::Retryable(format!(
                            "NATS: no JetStream stream captures subject {subject}"
                        )));
                    }
                    let ack: ApiReply = serde_json::from_slice(&payload).map_err(|e| {
                        SinkError::Retryable(format!("NATS: bad JetStream ack: {e}"))
                    })?;
                    if let Some(e) = ack.error {
                        let why = format!(
                            "NATS: JetStream refused record {i}: {} ({})",
                            e.description, e.err_code
                        );
                        return Err(if e.err_code == JS_MESSAGE_TOO_LARGE {
                            SinkError::Refused(why)
                        } else {
                            SinkError::Retryable(why)
                        });
                    }
                    if ack.seq.is_none() {
                        return Err(SinkError::Retryable(format!(
                            "NATS: JetStream ack for record {i} without a sequence"
                        )));
                    }
                    if let Some(slot) = acked.get_mut(i) {
                        if !*slot {
                            *slot = true;
                            missing -= 1;
                        }
                    }
                }
                Op::Err(e) => return Err(server_error(&e)),
                Op::Ping => self.write_all(b"PONG\r\n").await?,
                Op::Pong | Op::Other => {}
            }
        }
        Ok(())
    }

    async fn write_all(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|e| io_err("write", e))?;
        self.stream.flush().await.map_err(|e| io_err("write", e))
    }

    async fn read_line(&mut self) -> std::io::Result<String> {
        let mut line = Vec::new();
        let n = (&mut self.stream)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if !line.ends_with(b"\r\n") {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "protocol line too long or not CRLF-terminated",
            ));
        }
        line.truncate(line.len() - 2);
        String::from_utf8(line)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "non-UTF-8 line"))
    }

    async fn read_op(&mut self) -> Result<Op, SinkError> {
        let line = self.read_line().await.map_err(|e| io_err("read", e))?;
        let mut parts = line.split_ascii_whitespace();
        let verb = parts.next().unwrap_or_default().to_ascii_uppercase();
        let args: Vec<&str> = parts.collect();
        let bad = || SinkError::Retryable(format!("NATS: malformed {:?}", truncate(&line)));
        match verb.as_str() {
            "MSG" | "HMSG" => {
                let with_headers = verb == "HMSG";
                let (hdr_len, total) = if with_headers {
                    let [.., h, t] = args.as_slice() else {
                        return Err(bad());
                    };
                    (
                        h.parse::<usize>().map_err(|_| bad())?,
                        t.parse::<usize>().map_err(|_| bad())?,
                    )
                } else {
                    let [.., t] = args.as_slice() else {
                        return Err(bad());
                    };
                    (0, t.parse::<usize>().map_err(|_| bad())?)
                };
                if total > MAX_INCOMING || hdr_len > total {
                    return Err(bad());
                }
                let subject = args.first().ok_or_else(bad)?.to_string();
                let mut buf = vec![0; total + 2];
                self.stream
                    .read_exact(&mut buf)
                    .await
                    .map_err(|e| io_err("read", e))?;
                buf.truncate(total);
                let payload = buf.split_off(hdr_len);
                Ok(Op::Msg {
                    subject,
                    headers: with_headers.then_some(buf),
                    payload,
                })
            }
            "PING" => Ok(Op::Ping),
            "PONG" => Ok(Op::Pong),
            "-ERR" => Ok(Op::Err(
                line.get(5..).unwrap_or_default().trim().to_string(),
            )),
            _ => Ok(Op::Other),
        }
    }
}

/// Whether an `HMSG` header block is the server's "no responders" status.
fn no_responders(headers: Option<&[u8]>) -> bool {
    headers.is_some_and(|h| h.starts_with(b"NATS/1.0 503"))
}

/// JetStream's error code for a message larger than the stream's `max_msg_size`.
const JS_MESSAGE_TOO_LARGE: u32 = 10054;

/// Classifies a `-ERR` from the server.
fn server_error(e: &str) -> SinkError {
    let lower = e.to_ascii_lowercase();
    if lower.contains("maximum payload") {
        SinkError::Refused(format!("NATS server refused a record: {e}"))
    } else if lower.contains("authorization")
        || lower.contains("authentication")
        || lower.contains("permissions")
    {
        SinkError::Permanent(format!("NATS server refused: {e}"))
    } else {
        SinkError::Retryable(format!("NATS server error: {e}"))
    }
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(120);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Subjects (`allow_dots`) and stream names: printable ASCII, no spaces or wildcards.
fn valid_token(s: &str, allow_dots: bool) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_graphic()
                && b != b'*'
                && b != b'>'
                && (allow_dots || (b != b'.' && b != b'/' && b != b'\\'))
        })
        && (!allow_dots || s.split('.').all(|t| !t.is_empty()))
}

fn env_secret(var: &str) -> Result<String, AuditError> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => Err(AuditError::Config(format!(
            "environment variable {var} (NATS credential) is not set"
        ))),
    }
}

/// `nats://host:port` or `host:port` to host and port.
fn parse_url(url: &str) -> Result<(String, u16), AuditError> {
    let bad = |why: &str| AuditError::Config(format!("NATS url {url:?}: {why}"));
    let rest = match url.split_once("://") {
        Some(("nats", rest)) => rest,
        Some((scheme, _)) => return Err(bad(&format!("scheme {scheme} is not supported"))),
        None => url,
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('@') {
        return Err(bad("credentials in the URL are refused; use auth"));
    }
    if rest.contains('/') {
        return Err(bad("has a path"));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        (host, after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| bad("bad port"))?,
        None => 4222,
    };
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(parse_url("nats://h:1").unwrap(), ("h".into(), 1));
        assert_eq!(parse_url("nats://h").unwrap(), ("h".into(), 4222));
        assert_eq!(parse_url("127.0.0.1:5").unwrap(), ("127.0.0.1".into(), 5));
        assert_eq!(parse_url("nats://[::1]:7").unwrap(), ("::1".into(), 7));
        assert!(parse_url("nats://u:p@h:1").is_err());
        assert!(parse_url("tls://h:1").is_err());
        assert!(parse_url("nats://:1").is_err());
    }

    #[test]
    fn subjects_and_streams() {
        assert!(valid_token("audit.events", true));
        assert!(!valid_token("audit.*", true));
        assert!(!valid_token("audit..x", true));
        assert!(!valid_token("a b", true));
        assert!(valid_token("AUDIT", false));
        assert!(!valid_token("AU.DIT", false));
    }

    #[test]
    fn missing_secret_is_refused() {
        let mut c = NatsSinkConfig::new("nats://127.0.0.1:1", "audit");
        c.auth = Some(NatsAuth::Token {
            env: "PORTCULLIS_TEST_SURELY_UNSET_VAR".into(),
        });
        assert!(NatsSink::from_config(c).is_err());
    }

    #[test]
    fn auth_errors_are_permanent() {
        assert!(matches!(
            server_error("'Authorization Violation'"),
            SinkError::Permanent(_)
        ));
        assert!(matches!(
            server_error("'Slow Consumer'"),
            SinkError::Retryable(_)
        ));
        assert!(matches!(
            server_error("'Maximum Payload Violation'"),
            SinkError::Refused(_)
        ));
    }
}
