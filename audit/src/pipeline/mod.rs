//! The audit path out of the query path.
//!
//! ```text
//! Auditor::emit (try_send, never waits)
//!   -> bounded queue (queue_capacity)
//!   -> dispatcher task: seal (Chainer) -> per sink: filter
//!   -> per-sink bounded channel
//!   -> sink worker: batch (batch_max / flush_ms), encode -> Sink::send
//!        on failure: spool to disk (length + SHA-256 per record, fsync per batch),
//!        back off (100 ms .. 30 s, jittered), replay the spool in order, then resume
//!        on a content refusal: halve down to the refused records, move those to the
//!        dead-letter file, deliver the rest, go on
//! ```
//!
//! # What is never silent
//!
//! - **Queue full.** If any sink is `overflow = "fail_closed"`, [`Auditor::emit`]
//!   returns [`AuditUnavailable`] and the proxy refuses the statement. Otherwise the
//!   event is counted ([`Auditor::lost`]) and, as soon as the dispatcher runs again
//!   (within a second), an `audit_loss` event carrying the count is sealed into the
//!   chain and sent to every sink.
//! - **Spool full** (`spool_max_bytes`, default 1 GiB; 0 disables the spool). A
//!   `spool` sink counts the batch as lost and `audit_loss` is emitted. A
//!   `fail_closed` sink keeps the batch in memory, stops taking new records (so the
//!   queue fills behind it) and makes [`Auditor::healthy`] false, so that `emit`
//!   refuses and the proxy refuses statements; once the receiver takes the spool and
//!   that batch, audit is healthy again by itself. Nothing is lost, but every sink
//!   stalls with it: fail-closed means the proxy stops rather than audits partially.
//! - **After shutdown** `emit` treats the closed queue like a full one.
//! - **Records the receiver refuses for good** ([`SinkError::Refused`](crate::sink::SinkError):
//!   a 400 or 413, an Elasticsearch mapping error, Splunk's "invalid data format"; each
//!   sink's docs give its mapping). Retrying them would block the sink forever and
//!   spool everything behind them, so the worker sends the two halves of a refused
//!   batch again, and halves again what is still refused, down to single records (at
//!   most about `2 log2(batch)` extra requests per poisoned record; a receiver that
//!   refuses everything costs `2 n - 1` requests per batch of `n`). Each record refused
//!   on its own is appended, byte for byte in the sink's format, to the sink's
//!   dead-letter file ([`AuditConfig::dead_letter_file`], next to the spool: mode
//!   0600, fsynced, with a `dead-letter.reasons.jsonl` line saying when and why), an
//!   error is logged (sink, count, reason; never the records), and the dispatcher's
//!   next `audit_loss` event says how many of that sink's events were refused and that
//!   they are kept in its dead-letter file. Everything else is delivered in order, and
//!   the spool advances past what was set aside. The dead-letter file is bounded by
//!   `spool_max_bytes` (0 disables it); when it cannot keep a refused record a `spool`
//!   sink counts it lost (and `audit_loss` says so), a `fail_closed` sink keeps it and
//!   retries like a receiver that is down. A configuration error
//!   ([`SinkError::Permanent`](crate::sink::SinkError): bad credentials, no such index,
//!   TLS name, NATS permissions) is not a refusal: it is retried with back-off and the
//!   records spool until the operator fixes it, and nothing is lost.
//! - **Counters** for all of the above (accepted, refused and lost events, queue depth,
//!   and per sink delivered, failed sends, spooled, spool bytes, lost, dead-lettered,
//!   healthy) are in [`Auditor::stats`], which the proxy exports to Prometheus.
//!
//! # Delivery contract: at least once, in order, per sink
//!
//! A batch is removed from the spool only after [`Sink::send`]
//! returned `Ok`. A send that failed may have partly arrived (a TCP write that reached
//! the receiver before the connection broke, an HTTP request whose response was
//! lost), and the whole batch is sent again; a crash between a delivery and the
//! recording of spool progress also resends. Receivers therefore may see **duplicates**,
//! never gaps or reordering within one sink; `instance` + `seq` identify an event and
//! `hash` proves it is the same one, so receivers (and `portcullis audit verify`) can
//! drop duplicates. Plain TCP syslog has no application-level acknowledgement: see
//! [`crate::sink::syslog`] for what that leaves open.
//!
//! Sinks with a filter see a subset of the chain, so their `seq` has gaps by design;
//! keep one unfiltered sink (normally the JSON file) to verify the whole chain.
//!
//! # Chain resumption
//!
//! The chain restarts after the newest of: the last event of the first JSON file
//! sink, and the newest record of every spool holding native JSON (the file sinks'
//! spools always do). TODO: sinks spooling other formats (syslog, CEF, OCSF) do not
//! take part; persisting the chain head in `state_dir` would cover them.
//!
//! # TODO
//!
//! - While a `spool` sink loses events, each `audit_loss` event it cannot keep is
//!   itself counted and reported on the next tick (one per second to the other
//!   sinks); rate-limiting or folding those is left to do.
//! - A tool to resend a dead-letter file (today: by hand, e.g. `curl` with the records
//!   as the sink would frame them) and a bound on dead-letter files per sink beyond
//!   `spool_max_bytes`.
//! - A receiver that accepted part of a refused batch (Splunk HEC indexes the events
//!   before the invalid one) gets those again when the halves are resent: duplicates,
//!   as the delivery contract allows.

mod config;
mod deadletter;
mod dispatch;
mod file;
mod spool;
mod stats;
mod worker;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{
    AuditConfig, AuditConfigError, ElasticsearchSettings, FileSettings, Filter, FormatKind,
    NamedFilter, NatsSettings, Overflow, SinkConfig, SinkKind, SplunkSettings, SyslogSettings,
};
pub use stats::{AuditStats, SinkStats};

use crate::chain::{Chainer, Link};
use crate::event::AuditEvent;
use crate::format::Format;
use crate::sink::Sink;
use crate::sink::http::{HttpAuth, HttpFlavor, HttpSink, HttpSinkConfig};
use crate::sink::nats::{NatsAuth, NatsSink, NatsSinkConfig};
use crate::sink::syslog::{SyslogSink, SyslogSinkConfig, SyslogTls};
use deadletter::DeadLetter;
use dispatch::{Dispatcher, Route};
use spool::Spool;
use stats::SinkCounters;
use worker::{Worker, WorkerSettings};

/// Audit cannot take the event: a `fail_closed` sink is down with a full spool, or the
/// queue is full and a sink is `fail_closed`. The proxy must refuse the statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("audit is unavailable")]
pub struct AuditUnavailable;

/// The chain key named by `config`, if any.
fn chain_key(
    config: &AuditConfig,
) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>, AuditConfigError> {
    if let Some(var) = &config.hmac_key_env {
        let key = std::env::var(var).map_err(|_| {
            AuditConfigError::Invalid(format!(
                "hmac_key_env: environment variable {var} is not set"
            ))
        })?;
        return Ok(Some(zeroize::Zeroizing::new(key.into_bytes())));
    }
    match &config.hmac_key_file {
        Some(path) => read_key_file(path).map(Some),
        None => Ok(None),
    }
}

/// Reads a chain key from `path`: the file's bytes without trailing line breaks.
/// Refuses a file that group or others may read, and an empty key.
pub fn read_key_file(
    path: &std::path::Path,
) -> Result<zeroize::Zeroizing<Vec<u8>>, AuditConfigError> {
    let invalid =
        |why: String| AuditConfigError::Invalid(format!("hmac_key_file {}: {why}", path.display()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| invalid(e.to_string()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(invalid(format!(
                "mode {:o} lets others read the key; chmod 600 it",
                mode & 0o777
            )));
        }
    }
    let mut key = zeroize::Zeroizing::new(std::fs::read(path).map_err(|e| invalid(e.to_string()))?);
    while key.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        key.pop();
    }
    if key.is_empty() {
        return Err(invalid("the file is empty".into()));
    }
    Ok(key)
}

/// A sink ready to run, with its settings and the format the pipeline encodes for it.
pub(crate) struct BuiltSink {
    pub(crate) config: SinkConfig,
    pub(crate) sink: Box<dyn Sink>,
    pub(crate) format: Format,
}

/// State shared by the handle, the dispatcher and the workers.
#[derive(Debug)]
pub(crate) struct Shared {
    lost: AtomicU64,
    unreported: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    /// Per sink, in configuration order.
    pub(crate) sinks: Vec<Arc<SinkCounters>>,
    /// Number of `fail_closed` sinks that cannot keep events right now.
    pub(crate) unhealthy: AtomicUsize,
    fail_closed: bool,
    full_statement_text: bool,
    slow_statement: Option<Duration>,
}

impl Shared {
    pub(crate) fn record_loss(&self, n: u64) {
        self.lost.fetch_add(n, Ordering::SeqCst);
        self.unreported.fetch_add(n, Ordering::SeqCst);
    }

    /// Counts a loss of `sink`, both in its own counters and in the total.
    pub(crate) fn record_sink_loss(&self, sink: &SinkCounters, n: u64) {
        sink.lost(n);
        self.record_loss(n);
    }

    pub(crate) fn take_unreported(&self) -> u64 {
        self.unreported.swap(0, Ordering::SeqCst)
    }

    pub(crate) fn lost(&self) -> u64 {
        self.lost.load(Ordering::SeqCst)
    }
}

/// The query path's handle on audit: cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct Auditor {
    tx: mpsc::Sender<AuditEvent>,
    shared: Arc<Shared>,
}

impl Auditor {
    /// Starts the dispatcher and one worker per sink on the current tokio runtime.
    ///
    /// Validates `config`, reads the chain key from the environment, opens file sinks
    /// and spools (a spool left by a previous run is replayed before anything new), and
    /// resumes the chain. The returned task ends after `shutdown` is cancelled and the
    /// queue has been drained and the sinks flushed (or their records spooled), within
    /// `shutdown_timeout_ms`. Refuses sink kinds that are not built yet.
    pub fn start(
        config: &AuditConfig,
        shutdown: CancellationToken,
    ) -> Result<(Auditor, JoinHandle<()>), AuditConfigError> {
        config.validate()?;
        let mut sinks = Vec::with_capacity(config.sinks.len());
        for s in &config.sinks {
            let (sink, format) = build_sink(config, s)?;
            sinks.push(BuiltSink {
                config: s.clone(),
                sink,
                format,
            });
        }
        Self::start_with(config, sinks, shutdown)
    }

    /// [`Auditor::start`] with sinks already built (the `sinks` of `config` are
    /// ignored and `config` is not validated again).
    pub(crate) fn start_with(
        config: &AuditConfig,
        sinks: Vec<BuiltSink>,
        shutdown: CancellationToken,
    ) -> Result<(Auditor, JoinHandle<()>), AuditConfigError> {
        let key = chain_key(config)?;
        let counters: Vec<Arc<SinkCounters>> = sinks
            .iter()
            .map(|b| {
                Arc::new(SinkCounters::new(
                    &b.config.name,
                    &config.dead_letter_file(&b.config),
                ))
            })
            .collect();
        let shared = Arc::new(Shared {
            lost: AtomicU64::new(0),
            unreported: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            sinks: counters.clone(),
            unhealthy: AtomicUsize::new(0),
            fail_closed: sinks
                .iter()
                .any(|b| b.config.overflow == Overflow::FailClosed),
            full_statement_text: config.full_statement_text,
            slow_statement: config.slow_statement_ms.map(Duration::from_millis),
        });

        let mut routes = Vec::with_capacity(sinks.len());
        let mut workers = Vec::with_capacity(sinks.len());
        let mut resume: Vec<Link> = Vec::new();
        for (
            BuiltSink {
                config: s,
                sink,
                format,
            },
            counters,
        ) in sinks.into_iter().zip(counters)
        {
            let s = &s;
            let spool_dir = config.spool_dir(s);
            let spool = Spool::open(&spool_dir, s.spool_max_bytes)?;
            let dead_letter = DeadLetter::new(&spool_dir, s.spool_max_bytes);
            if format == Format::Json {
                if let Some(link) = spool.last()?.and_then(|r| link_of(&r)) {
                    resume.push(link);
                }
            }
            if let (Some(f), Format::Json) = (&s.file, config.format(s)?) {
                if let Some(link) = crate::sink::file::last_sealed(&f.path, &config.instance)? {
                    resume.push(link);
                }
            }
            let (tx, rx) = mpsc::channel(config.queue_capacity.min(s.batch_max * 4).max(1));
            routes.push(Route {
                name: s.name.clone(),
                filter: s.filter.clone(),
                tx,
                counters: Arc::clone(&counters),
            });
            let settings = WorkerSettings {
                name: s.name.clone(),
                format,
                batch_max: s.batch_max,
                flush: s.flush(),
                overflow: s.overflow,
            };
            workers.push(Worker::new(
                settings,
                sink,
                rx,
                (spool, dead_letter),
                Arc::clone(&shared),
                counters,
            ));
        }
        let last = resume
            .into_iter()
            .filter(|l| l.instance == config.instance)
            .max_by_key(|l| l.seq);
        let chainer = Chainer::resume(config.instance.clone(), key.map(|k| k.to_vec()), last)?;

        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let dispatcher = Dispatcher {
            rx,
            chainer,
            routes,
            shared: Arc::clone(&shared),
        };
        let timeout = Duration::from_millis(config.shutdown_timeout_ms);
        let handle = tokio::spawn(supervise(dispatcher, workers, shutdown, timeout));
        Ok((Auditor { tx, shared }, handle))
    }

    /// Hands `event` to the pipeline without waiting. See the module docs for what
    /// happens when the queue is full; `Err` means the statement must be refused.
    pub fn emit(&self, event: AuditEvent) -> Result<(), AuditUnavailable> {
        if !self.healthy() {
            self.shared.refused.fetch_add(1, Ordering::Relaxed);
            return Err(AuditUnavailable);
        }
        match self.tx.try_send(event) {
            Ok(()) => {
                self.shared.accepted.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(_) => {
                self.shared.refused.fetch_add(1, Ordering::Relaxed);
                if self.shared.fail_closed {
                    return Err(AuditUnavailable);
                }
                self.shared.record_loss(1);
                Ok(())
            }
        }
    }

    /// A snapshot of the pipeline's counters, for metrics. Cheap: atomic loads.
    pub fn stats(&self) -> AuditStats {
        let capacity = self.tx.max_capacity();
        AuditStats {
            accepted: self.shared.accepted.load(Ordering::Relaxed),
            refused: self.shared.refused.load(Ordering::Relaxed),
            lost: self.shared.lost(),
            queue_depth: capacity.saturating_sub(self.tx.capacity()) as u64,
            queue_capacity: capacity as u64,
            sinks: self.shared.sinks.iter().map(|c| c.snapshot()).collect(),
        }
    }

    /// Events lost since start (queue full, spool full, encoding failures).
    pub fn lost(&self) -> u64 {
        self.shared.lost()
    }

    /// False while a `fail_closed` sink is down and its spool is full or disabled
    /// (`emit` then refuses every event).
    pub fn healthy(&self) -> bool {
        self.shared.unhealthy.load(Ordering::SeqCst) == 0
    }

    /// Whether statement events may carry the client's own text (`full_statement_text`).
    pub fn full_statement_text(&self) -> bool {
        self.shared.full_statement_text
    }

    /// The duration from which a statement is also reported as `slow_statement`.
    pub fn slow_statement(&self) -> Option<Duration> {
        self.shared.slow_statement
    }
}

async fn supervise(
    dispatcher: Dispatcher,
    workers: Vec<Worker>,
    shutdown: CancellationToken,
    timeout: Duration,
) {
    let mut tasks: Vec<(String, JoinHandle<()>)> = workers
        .into_iter()
        .map(|w| (w.settings.name.clone(), tokio::spawn(w.run())))
        .collect();
    let mut dispatch = tokio::spawn(dispatcher.run(shutdown.clone()));
    // The dispatcher also ends on its own when every `Auditor` handle is dropped.
    let dispatched = tokio::select! {
        _ = &mut dispatch => true,
        () = shutdown.cancelled() => false,
    };
    let deadline = tokio::time::Instant::now() + timeout;
    if !dispatched
        && tokio::time::timeout_at(deadline, &mut dispatch)
            .await
            .is_err()
    {
        tracing::warn!("audit dispatcher did not drain in time");
        dispatch.abort();
    }
    for (name, task) in &mut tasks {
        if tokio::time::timeout_at(deadline, &mut *task).await.is_err() {
            tracing::warn!(sink = %name, "audit sink did not flush in time; its spool keeps what was written");
            task.abort();
        }
    }
}

/// The sink for `s` and the format the pipeline encodes for it.
fn build_sink(
    config: &AuditConfig,
    s: &SinkConfig,
) -> Result<(Box<dyn Sink>, Format), AuditConfigError> {
    let missing = || AuditConfigError::Invalid(format!("sink {}: missing settings", s.name));
    let format = config.format(s)?;
    match s.kind {
        SinkKind::File => {
            let f = s.file.as_ref().ok_or_else(missing)?;
            let sink = file::FileRecordSink::open(f, format)?;
            // The file sink encodes itself; the pipeline hands it native JSON.
            Ok((Box::new(sink), Format::Json))
        }
        SinkKind::Syslog => {
            let sys = s.syslog.as_ref().ok_or_else(missing)?;
            let sink = SyslogSink::new(SyslogSinkConfig {
                tls: sys.tls.then(|| SyslogTls {
                    ca_file: sys.ca_file.clone().unwrap_or_default(),
                    server_name: sys.server_name.clone(),
                }),
                ..SyslogSinkConfig::tcp(sys.address.clone())
            })?;
            Ok((Box::new(sink), format))
        }
        // ---- NATS / Splunk / Elasticsearch: the sinks in `crate::sink::nats` and
        // `crate::sink::http` (written separately); only the settings mapping is here.
        SinkKind::Nats => {
            let n = s.nats.as_ref().ok_or_else(missing)?;
            let sink = NatsSink::from_config(nats_config(n, format.clone(), &s.name)?)?;
            Ok((Box::new(sink), format))
        }
        SinkKind::Splunk => {
            let h = s.splunk.as_ref().ok_or_else(missing)?;
            let mut c = HttpSinkConfig::splunk(h.url.clone(), h.token_env.clone());
            if let HttpFlavor::SplunkHec { sourcetype, index } = &mut c.flavor {
                if let Some(st) = &h.sourcetype {
                    sourcetype.clone_from(st);
                }
                index.clone_from(&h.index);
            }
            http_common(
                &mut c,
                h.gzip,
                &h.ca_file,
                h.connect_timeout_ms,
                h.request_timeout_ms,
            );
            c.format = format.clone();
            Ok((Box::new(HttpSink::from_config(c)?), format))
        }
        SinkKind::Elasticsearch => {
            let h = s.elasticsearch.as_ref().ok_or_else(missing)?;
            let mut c = HttpSinkConfig::elasticsearch(h.url.clone(), h.index.clone());
            c.auth = match (&h.token_env, &h.user, &h.password_env) {
                (Some(env), None, None) => Some(HttpAuth::Token { env: env.clone() }),
                (None, Some(user), Some(pw)) => Some(HttpAuth::Basic {
                    user: user.clone(),
                    password_env: pw.clone(),
                }),
                (None, None, None) => None,
                _ => {
                    return Err(AuditConfigError::Invalid(format!(
                        "sink {}: give either token_env or user and password_env",
                        s.name
                    )));
                }
            };
            http_common(
                &mut c,
                h.gzip,
                &h.ca_file,
                h.connect_timeout_ms,
                h.request_timeout_ms,
            );
            c.format = format.clone();
            Ok((Box::new(HttpSink::from_config(c)?), format))
        }
    }
}

fn nats_config(
    n: &config::NatsSettings,
    format: Format,
    name: &str,
) -> Result<NatsSinkConfig, AuditConfigError> {
    let mut c = NatsSinkConfig::new(n.url.clone(), n.subject.clone());
    c.stream.clone_from(&n.stream);
    c.format = format;
    c.auth = match (&n.token_env, &n.user, &n.password_env) {
        (Some(env), None, None) => Some(NatsAuth::Token { env: env.clone() }),
        (None, Some(user), Some(pw)) => Some(NatsAuth::UserPassword {
            user: user.clone(),
            password_env: pw.clone(),
        }),
        (None, None, None) => None,
        _ => {
            return Err(AuditConfigError::Invalid(format!(
                "sink {name}: give either token_env or user and password_env"
            )));
        }
    };
    if let Some(ms) = n.connect_timeout_ms {
        c.connect_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = n.ack_timeout_ms {
        c.ack_timeout = Duration::from_millis(ms);
    }
    if let Some(secs) = n.duplicate_window_secs {
        c.duplicate_window = Duration::from_secs(secs);
    }
    Ok(c)
}

fn http_common(
    c: &mut HttpSinkConfig,
    gzip: Option<bool>,
    ca_file: &Option<std::path::PathBuf>,
    connect_ms: Option<u64>,
    request_ms: Option<u64>,
) {
    if let Some(g) = gzip {
        c.gzip = g;
    }
    c.ca_file.clone_from(ca_file);
    if let Some(ms) = connect_ms {
        c.connect_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = request_ms {
        c.request_timeout = Duration::from_millis(ms);
    }
}

/// The chain position in a native JSON record.
fn link_of(record: &[u8]) -> Option<Link> {
    let v: Value = serde_json::from_slice(record).ok()?;
    Some(Link {
        instance: v.get("instance")?.as_str()?.to_owned(),
        seq: v.get("seq")?.as_u64()?,
        hash: v.get("hash")?.as_str()?.to_owned(),
    })
}
