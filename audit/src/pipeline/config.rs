//! `AuditConfig`: the `[audit]` table of `portcullis.toml`, parsed strictly.
//!
//! ```toml
//! [audit]
//! instance = "px-1"              # default: this host's name
//! queue_capacity = 65536
//! hmac_key_env = "PORTCULLIS_AUDIT_KEY"   # optional: name of the env var holding the chain key
//! state_dir = "/var/lib/portcullis"       # spools go under <state_dir>/spool/<sink name>
//!
//! [[audit.sinks]]
//! name = "local"
//! kind = "file"
//! format = "json"
//! [audit.sinks.file]
//! path = "/var/log/portcullis/audit.jsonl"
//!
//! [[audit.sinks]]
//! name = "siem"
//! kind = "syslog"
//! format = "syslog"
//! filter = "denied_or_classified"        # or a list: ["login_failure", "statement"]
//! overflow = "fail_closed"
//! [audit.sinks.syslog]
//! address = "siem.example.com:6514"
//! tls = true
//! ca_file = "/etc/portcullis/siem-ca.pem"
//! ```
//!
//! Per-kind settings live in a sub-table named after the kind, so that every table can
//! refuse unknown keys. `nats`, `splunk` and `elasticsearch` settings are kept as raw
//! values here and parsed by their sinks.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::AuditError;
use crate::event::{AuditEvent, EventKind, Outcome};
use crate::format::{Facility, Format, SyslogOptions};

/// Why an audit configuration cannot be started.
#[derive(Debug, thiserror::Error)]
pub enum AuditConfigError {
    /// A value is missing, out of range or inconsistent.
    #[error("invalid [audit] configuration: {0}")]
    Invalid(String),
    /// Opening a file, spool or chain failed.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// The `[audit]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Proxy instance name; the hash chain is per instance. Default: the host name.
    #[serde(default = "default_instance")]
    pub instance: String,
    /// Capacity of the queue between the query path and the dispatcher.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Statement events carry the client's own text besides the normalized one
    /// (`statement.full_text`). Off by default: literals are where protected values
    /// live. Read by the proxy when it builds events.
    #[serde(default)]
    pub full_statement_text: bool,
    /// Statements that take at least this long (from the client's message to the
    /// database's ReadyForQuery) are also reported as `slow_statement` events.
    /// Absent: no slow-statement events.
    #[serde(default)]
    pub slow_statement_ms: Option<u64>,
    /// Name of the environment variable holding the HMAC chain key. At most one of
    /// `hmac_key_env` and `hmac_key_file`; neither: unkeyed SHA-256.
    #[serde(default)]
    pub hmac_key_env: Option<String>,
    /// File holding the HMAC chain key (its bytes, a trailing newline removed). It
    /// must not be readable by group or others.
    #[serde(default)]
    pub hmac_key_file: Option<PathBuf>,
    /// Where spools live by default (`<state_dir>/spool/<sink name>`).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// How long a graceful shutdown may take to drain the queue and flush the sinks.
    #[serde(default = "default_shutdown_ms")]
    pub shutdown_timeout_ms: u64,
    /// Where events go.
    #[serde(default)]
    pub sinks: Vec<SinkConfig>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            instance: default_instance(),
            queue_capacity: default_queue_capacity(),
            full_statement_text: false,
            slow_statement_ms: None,
            hmac_key_env: None,
            hmac_key_file: None,
            state_dir: default_state_dir(),
            shutdown_timeout_ms: default_shutdown_ms(),
            sinks: Vec::new(),
        }
    }
}

/// The sink types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    /// Local file with rotation ([`crate::sink::file`]).
    File,
    /// RFC 5424 over TCP or TLS ([`crate::sink::syslog`]).
    Syslog,
    /// NATS JetStream.
    Nats,
    /// Splunk HTTP Event Collector.
    Splunk,
    /// Elasticsearch bulk API.
    Elasticsearch,
}

impl SinkKind {
    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::File => "file",
            SinkKind::Syslog => "syslog",
            SinkKind::Nats => "nats",
            SinkKind::Splunk => "splunk",
            SinkKind::Elasticsearch => "elasticsearch",
        }
    }
}

/// The encoding a sink receives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FormatKind {
    /// Native JSON lines (the only one `verify` reads).
    #[default]
    Json,
    /// OCSF 1.3.0 JSON.
    Ocsf,
    /// ArcSight CEF.
    Cef,
    /// RFC 5424.
    Syslog,
}

/// Named event filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NamedFilter {
    /// Every event.
    All,
    /// Denied statements and failed logins.
    Denied,
    /// Events that touched a classified table or column.
    Classified,
    /// Either of the two.
    DeniedOrClassified,
}

/// Which events a sink receives. `audit_loss` events pass every filter: a trail must
/// say where it has a hole.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Filter {
    /// A named filter.
    Named(NamedFilter),
    /// Exactly these kinds.
    Kinds(Vec<EventKind>),
}

impl Default for Filter {
    fn default() -> Self {
        Filter::Named(NamedFilter::All)
    }
}

impl Filter {
    /// Whether `e` goes to the sink.
    pub fn matches(&self, e: &AuditEvent) -> bool {
        if e.kind == EventKind::AuditLoss {
            return true;
        }
        let denied = || {
            e.kind == EventKind::LoginFailure
                || e.decision
                    .as_ref()
                    .is_some_and(|d| d.outcome == Outcome::Denied)
        };
        let classified = || {
            e.statement.as_ref().is_some_and(|s| {
                s.tables.iter().any(|t| {
                    !t.classes.is_empty() || t.columns.iter().any(|c| !c.classes.is_empty())
                })
            })
        };
        match self {
            Filter::Named(NamedFilter::All) => true,
            Filter::Named(NamedFilter::Denied) => denied(),
            Filter::Named(NamedFilter::Classified) => classified(),
            Filter::Named(NamedFilter::DeniedOrClassified) => denied() || classified(),
            Filter::Kinds(kinds) => kinds.contains(&e.kind),
        }
    }
}

/// What a sink does when its receiver is down and its spool is full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// Spool; past `spool_max_bytes`, count the loss and emit `audit_loss`.
    #[default]
    Spool,
    /// Spool; past `spool_max_bytes` (or with the spool disabled), mark audit unhealthy
    /// so that the proxy refuses statements. Also makes a full queue refuse events.
    FailClosed,
}

/// One `[[audit.sinks]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Unique name (logs, spool directory).
    pub name: String,
    /// Sink type.
    pub kind: SinkKind,
    /// Encoding.
    #[serde(default)]
    pub format: FormatKind,
    /// Which events.
    #[serde(default)]
    pub filter: Filter,
    /// Behaviour when the spool is full.
    #[serde(default)]
    pub overflow: Overflow,
    /// Largest batch handed to the sink.
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    /// Longest a record waits for its batch to fill, in milliseconds.
    #[serde(default = "default_flush_ms")]
    pub flush_ms: u64,
    /// Spool directory; default `<state_dir>/spool/<name>`.
    #[serde(default)]
    pub spool_dir: Option<PathBuf>,
    /// Largest spool file; 0 disables spooling.
    #[serde(default = "default_spool_max")]
    pub spool_max_bytes: u64,
    /// `kind = "file"` settings.
    #[serde(default)]
    pub file: Option<FileSettings>,
    /// `kind = "syslog"` settings.
    #[serde(default)]
    pub syslog: Option<SyslogSettings>,
    /// `kind = "nats"` settings.
    #[serde(default)]
    pub nats: Option<NatsSettings>,
    /// `kind = "splunk"` settings.
    #[serde(default)]
    pub splunk: Option<SplunkSettings>,
    /// `kind = "elasticsearch"` settings.
    #[serde(default)]
    pub elasticsearch: Option<ElasticsearchSettings>,
}

impl SinkConfig {
    /// A sink of `kind` named `name` with every default.
    pub fn new(name: impl Into<String>, kind: SinkKind) -> Self {
        SinkConfig {
            name: name.into(),
            kind,
            format: FormatKind::default(),
            filter: Filter::default(),
            overflow: Overflow::default(),
            batch_max: default_batch_max(),
            flush_ms: default_flush_ms(),
            spool_dir: None,
            spool_max_bytes: default_spool_max(),
            file: None,
            syslog: None,
            nats: None,
            splunk: None,
            elasticsearch: None,
        }
    }

    /// The batching delay.
    pub fn flush(&self) -> Duration {
        Duration::from_millis(self.flush_ms)
    }
}

/// `[audit.sinks.file]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    /// The active file.
    pub path: PathBuf,
    /// Rotate past this size; 0 never rotates.
    #[serde(default = "default_file_max")]
    pub max_bytes: u64,
    /// Keep at most this many rotated files.
    #[serde(default = "default_retain_count")]
    pub retain_count: Option<usize>,
    /// Delete rotated files older than this.
    #[serde(default)]
    pub retain_age_secs: Option<u64>,
}

/// `[audit.sinks.syslog]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogSettings {
    /// `host:port` of the receiver.
    pub address: String,
    /// RFC 5425 TLS (requires `ca_file`).
    #[serde(default)]
    pub tls: bool,
    /// PEM file of the CA(s) that sign the receiver's certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Name checked against the receiver's certificate; default the host of `address`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Syslog facility code (0..=23), default 16 (local0).
    #[serde(default = "default_facility")]
    pub facility: u8,
    /// HOSTNAME header field; default the instance name.
    #[serde(default)]
    pub hostname: Option<String>,
}

/// `[audit.sinks.nats]` (see [`crate::sink::nats`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSettings {
    /// `nats://host:port`.
    pub url: String,
    /// Subject every record is published to.
    pub subject: String,
    /// A stream to create for `subject` when it does not exist.
    #[serde(default)]
    pub stream: Option<String>,
    /// User name (with `password_env`).
    #[serde(default)]
    pub user: Option<String>,
    /// Environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Environment variable holding a token (instead of user and password).
    #[serde(default)]
    pub token_env: Option<String>,
    /// Connect and handshake limit.
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
    /// Limit for a batch's acks.
    #[serde(default)]
    pub ack_timeout_ms: Option<u64>,
    /// Duplicate window of a stream the sink creates.
    #[serde(default)]
    pub duplicate_window_secs: Option<u64>,
}

/// `[audit.sinks.splunk]` (see [`crate::sink::http`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplunkSettings {
    /// `https://host:8088`.
    pub url: String,
    /// Environment variable holding the HEC token.
    pub token_env: String,
    /// `sourcetype` of every event.
    #[serde(default)]
    pub sourcetype: Option<String>,
    /// Splunk index (the token's default index when absent).
    #[serde(default)]
    pub index: Option<String>,
    /// Gzip request bodies (default on).
    #[serde(default)]
    pub gzip: Option<bool>,
    /// PEM CA file for `https` (system bundle when absent).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Connect + TLS handshake limit.
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
    /// Whole-request limit.
    #[serde(default)]
    pub request_timeout_ms: Option<u64>,
}

/// `[audit.sinks.elasticsearch]` (see [`crate::sink::http`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElasticsearchSettings {
    /// `https://host:9200`.
    pub url: String,
    /// Index or data stream.
    pub index: String,
    /// Environment variable holding an API key (instead of user and password).
    #[serde(default)]
    pub token_env: Option<String>,
    /// Basic-auth user (with `password_env`).
    #[serde(default)]
    pub user: Option<String>,
    /// Environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Gzip request bodies (default on).
    #[serde(default)]
    pub gzip: Option<bool>,
    /// PEM CA file for `https` (system bundle when absent).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Connect + TLS handshake limit.
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
    /// Whole-request limit.
    #[serde(default)]
    pub request_timeout_ms: Option<u64>,
}

impl AuditConfig {
    /// Checks what serde cannot: unique names, ranges, per-kind settings present.
    pub fn validate(&self) -> Result<(), AuditConfigError> {
        let bad = |m: String| Err(AuditConfigError::Invalid(m));
        if self.instance.is_empty() {
            return bad("instance must not be empty".into());
        }
        if self.queue_capacity == 0 {
            return bad("queue_capacity must be at least 1".into());
        }
        if self.hmac_key_env.is_some() && self.hmac_key_file.is_some() {
            return bad("set at most one of hmac_key_env and hmac_key_file".into());
        }
        for (i, s) in self.sinks.iter().enumerate() {
            if s.name.is_empty()
                || !s
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return bad(format!(
                    "sink name {:?} must be non-empty ASCII letters, digits, - or _",
                    s.name
                ));
            }
            if self.sinks[..i].iter().any(|o| o.name == s.name) {
                return bad(format!("sink name {:?} is used twice", s.name));
            }
            if s.batch_max == 0 {
                return bad(format!("sink {}: batch_max must be at least 1", s.name));
            }
            let present = [
                (SinkKind::File, s.file.is_some()),
                (SinkKind::Syslog, s.syslog.is_some()),
                (SinkKind::Nats, s.nats.is_some()),
                (SinkKind::Splunk, s.splunk.is_some()),
                (SinkKind::Elasticsearch, s.elasticsearch.is_some()),
            ];
            for (kind, is_set) in present {
                if is_set && kind != s.kind {
                    return bad(format!(
                        "sink {}: has [{}] settings but kind = {:?}",
                        s.name,
                        kind.as_str(),
                        s.kind.as_str()
                    ));
                }
                if !is_set && kind == s.kind {
                    return bad(format!(
                        "sink {}: kind = {:?} needs a [audit.sinks.{}] table",
                        s.name,
                        kind.as_str(),
                        kind.as_str()
                    ));
                }
            }
            if let Some(sys) = &s.syslog {
                Facility::new(sys.facility)?;
                if sys.tls && sys.ca_file.is_none() {
                    return bad(format!("sink {}: tls = true needs ca_file", s.name));
                }
            }
        }
        Ok(())
    }

    /// The spool directory of `sink`.
    pub fn spool_dir(&self, sink: &SinkConfig) -> PathBuf {
        sink.spool_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("spool").join(&sink.name))
    }

    /// The file in which records `sink`'s receiver refused for good are kept, in the
    /// sink's format, byte for byte; `dead-letter.reasons.jsonl` beside it says when
    /// and why (see `pipeline`'s docs).
    pub fn dead_letter_file(&self, sink: &SinkConfig) -> PathBuf {
        self.spool_dir(sink).join(super::deadletter::RECORDS_FILE)
    }

    /// The [`Format`] `sink` writes.
    pub fn format(&self, sink: &SinkConfig) -> Result<Format, AuditConfigError> {
        Ok(match sink.format {
            FormatKind::Json => Format::Json,
            FormatKind::Ocsf => Format::Ocsf,
            FormatKind::Cef => Format::Cef,
            FormatKind::Syslog => {
                let mut o = SyslogOptions::new(self.instance.clone());
                if let Some(sys) = &sink.syslog {
                    o.facility = Facility::new(sys.facility)?;
                    if let Some(h) = &sys.hostname {
                        o.hostname.clone_from(h);
                    }
                }
                Format::Syslog(o)
            }
        })
    }
}

fn default_instance() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "portcullis".into())
}
fn default_queue_capacity() -> usize {
    65536
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/portcullis")
}
fn default_shutdown_ms() -> u64 {
    10_000
}
fn default_batch_max() -> usize {
    512
}
fn default_flush_ms() -> u64 {
    200
}
fn default_spool_max() -> u64 {
    1024 * 1024 * 1024
}
fn default_file_max() -> u64 {
    100 * 1024 * 1024
}
#[allow(clippy::unnecessary_wraps)]
fn default_retain_count() -> Option<usize> {
    Some(30)
}
fn default_facility() -> u8 {
    16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AuditConfig, String> {
        #[derive(Deserialize)]
        struct Root {
            audit: AuditConfig,
        }
        toml::from_str::<Root>(text)
            .map(|r| r.audit)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn parses_full_example_with_defaults() {
        let c = parse(
            r#"
            [audit]
            instance = "px-1"
            hmac_key_env = "KEY"
            [[audit.sinks]]
            name = "local"
            kind = "file"
            [audit.sinks.file]
            path = "/tmp/a.jsonl"
            [[audit.sinks]]
            name = "siem"
            kind = "syslog"
            format = "syslog"
            filter = ["login_failure", "statement"]
            overflow = "fail_closed"
            [audit.sinks.syslog]
            address = "localhost:6514"
            tls = true
            ca_file = "/tmp/ca.pem"
            facility = 10
            [[audit.sinks]]
            name = "bus"
            kind = "nats"
            filter = "denied_or_classified"
            [audit.sinks.nats]
            url = "nats://x"
            subject = "audit"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.queue_capacity, 65536);
        assert_eq!(c.sinks[0].batch_max, 512);
        assert_eq!(c.sinks[0].flush_ms, 200);
        assert_eq!(c.sinks[0].filter, Filter::Named(NamedFilter::All));
        assert_eq!(c.sinks[0].overflow, Overflow::Spool);
        assert_eq!(
            c.spool_dir(&c.sinks[0]),
            PathBuf::from("/var/lib/portcullis/spool/local")
        );
        assert_eq!(
            c.sinks[1].filter,
            Filter::Kinds(vec![EventKind::LoginFailure, EventKind::Statement])
        );
        assert_eq!(c.sinks[1].overflow, Overflow::FailClosed);
        assert!(
            matches!(c.format(&c.sinks[1]).unwrap(), Format::Syslog(o) if o.facility == Facility::AUTHPRIV)
        );
        assert_eq!(
            c.sinks[2].filter,
            Filter::Named(NamedFilter::DeniedOrClassified)
        );
    }

    #[test]
    fn refuses_unknown_and_inconsistent() {
        assert!(parse("[audit]\nbogus = 1\n").is_err());
        assert!(
            parse("[audit]\n[[audit.sinks]]\nname=\"a\"\nkind=\"file\"\n[audit.sinks.file]\npath=\"x\"\nrotate=1\n")
                .is_err()
        );
        assert!(parse("[audit]\n[[audit.sinks]]\nname=\"a\"\nkind=\"kafka\"\n").is_err());
        let no_table = parse("[audit]\n[[audit.sinks]]\nname=\"a\"\nkind=\"file\"\n").unwrap();
        assert!(no_table.validate().is_err());
        let wrong_table = parse(
            "[audit]\n[[audit.sinks]]\nname=\"a\"\nkind=\"file\"\n[audit.sinks.file]\npath=\"x\"\n[audit.sinks.syslog]\naddress=\"h:1\"\n",
        )
        .unwrap();
        assert!(wrong_table.validate().is_err());
        let dup = parse(
            "[audit]\n[[audit.sinks]]\nname=\"a\"\nkind=\"file\"\n[audit.sinks.file]\npath=\"x\"\n[[audit.sinks]]\nname=\"a\"\nkind=\"file\"\n[audit.sinks.file]\npath=\"y\"\n",
        )
        .unwrap();
        assert!(dup.validate().is_err());
    }

    #[test]
    fn filters_select_events() {
        use crate::format::fixtures;
        let denied = fixtures::statement();
        let mut allowed = fixtures::statement();
        allowed.decision = Some(crate::event::DecisionInfo::new(Outcome::Allowed).into());
        let mut plain = allowed.clone();
        plain.statement = Some(crate::event::StatementInfo::from_sql("select 1").into());
        let loss = AuditEvent::new(EventKind::AuditLoss);
        let f = |n| Filter::Named(n);
        assert!(f(NamedFilter::Denied).matches(&denied));
        assert!(!f(NamedFilter::Denied).matches(&allowed));
        assert!(f(NamedFilter::Classified).matches(&allowed));
        assert!(!f(NamedFilter::Classified).matches(&plain));
        assert!(!f(NamedFilter::DeniedOrClassified).matches(&plain));
        assert!(f(NamedFilter::Denied).matches(&fixtures::login()));
        assert!(Filter::Kinds(vec![EventKind::Connection]).matches(&loss));
        assert!(!Filter::Kinds(vec![EventKind::Connection]).matches(&plain));
    }
}
