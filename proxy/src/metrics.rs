//! Prometheus metrics and the HTTP endpoint that serves them.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use portcullis_audit::pipeline::{AuditStats, Auditor, SinkStats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Label set with a single `outcome` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// What happened.
    pub outcome: &'static str,
}

/// Label set with a single `kind` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    /// Which kind.
    pub kind: &'static str,
}

/// Label set naming a statement shape (the audit fingerprint).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Fingerprint {
    /// Hex fingerprint, or `other` past the cardinality bound.
    pub fingerprint: String,
}

/// Label set naming an audit sink (by its configured name: bounded by the
/// configuration).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    /// The sink's name.
    pub sink: String,
}

/// Distinct fingerprints exported before the rest are counted as `other`: label
/// cardinality must stay bounded whatever clients send.
const MAX_FINGERPRINTS: usize = 500;

fn fingerprint_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 4.0, 9))
}

/// All metrics the proxy exports.
pub struct Metrics {
    /// Client connections accepted, by how they ended the handshake.
    pub connections: Family<Outcome, Counter>,
    /// Sessions currently open.
    pub active_sessions: Gauge,
    /// Statements by decision: allowed, denied, parse_error, passthrough, too_large.
    pub statements: Family<Outcome, Counter>,
    /// Time from a query (or Sync) leaving the proxy to ReadyForQuery coming back.
    pub statement_duration: Histogram,
    /// Upstream failures by kind: connect, auth, refused, protocol, io.
    pub upstream_errors: Family<Kind, Counter>,
    /// Client authentication failures by reason.
    pub auth_failures: Family<Kind, Counter>,
    /// Parse-cache hits since start (set from the engine at each scrape).
    pub parse_cache_hits: Gauge,
    /// Parse-cache misses since start (set from the engine at each scrape).
    pub parse_cache_misses: Gauge,
    /// Reloads by outcome.
    pub reloads: Family<Outcome, Counter>,
    /// Relations in the catalog snapshot in force (0 until a load succeeds).
    pub catalog_relations: Gauge,
    /// Catalog snapshot loads by outcome: ok, error.
    pub catalog_loads: Family<Outcome, Counter>,
    /// Per statement shape (with auditing on): count and latency.
    pub fingerprints: Family<Fingerprint, Histogram, fn() -> Histogram>,
    fingerprints_seen: parking_lot::Mutex<std::collections::HashSet<String>>,
    registry: Registry,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("portcullis");
        let connections = Family::<Outcome, Counter>::default();
        let active_sessions = Gauge::default();
        let statements = Family::<Outcome, Counter>::default();
        let statement_duration = Histogram::new(exponential_buckets(0.000_05, 2.0, 20));
        let upstream_errors = Family::<Kind, Counter>::default();
        let auth_failures = Family::<Kind, Counter>::default();
        let parse_cache_hits = Gauge::default();
        let parse_cache_misses = Gauge::default();
        let reloads = Family::<Outcome, Counter>::default();
        let catalog_relations = Gauge::default();
        let catalog_loads = Family::<Outcome, Counter>::default();
        let fingerprints: Family<Fingerprint, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(fingerprint_histogram);
        registry.register(
            "connections",
            "Client connections by handshake outcome",
            connections.clone(),
        );
        registry.register(
            "active_sessions",
            "Client sessions currently open",
            active_sessions.clone(),
        );
        registry.register(
            "statements",
            "Statements by policy decision",
            statements.clone(),
        );
        registry.register(
            "statement_duration_seconds",
            "Time from forwarding a query or Sync to ReadyForQuery",
            statement_duration.clone(),
        );
        registry.register(
            "upstream_errors",
            "Upstream failures by kind",
            upstream_errors.clone(),
        );
        registry.register(
            "auth_failures",
            "Client authentication failures by reason",
            auth_failures.clone(),
        );
        registry.register(
            "parse_cache_hits",
            "Statements found in the parse cache",
            parse_cache_hits.clone(),
        );
        registry.register(
            "parse_cache_misses",
            "Statements parsed afresh",
            parse_cache_misses.clone(),
        );
        registry.register(
            "reloads",
            "Configuration reloads by outcome",
            reloads.clone(),
        );
        registry.register(
            "catalog_relations",
            "Relations in the catalog snapshot in force",
            catalog_relations.clone(),
        );
        registry.register(
            "catalog_loads",
            "Catalog snapshot loads by outcome",
            catalog_loads.clone(),
        );
        registry.register(
            "statement_fingerprint_duration_seconds",
            "Statements by shape (audit fingerprint; `other` past 500 shapes): count and latency",
            fingerprints.clone(),
        );
        Self {
            connections,
            active_sessions,
            statements,
            statement_duration,
            upstream_errors,
            auth_failures,
            parse_cache_hits,
            parse_cache_misses,
            reloads,
            catalog_relations,
            catalog_loads,
            fingerprints,
            fingerprints_seen: parking_lot::Mutex::new(std::collections::HashSet::new()),
            registry,
        }
    }

    /// Exports the audit pipeline's counters (`portcullis_audit_*`), read from
    /// `auditor` at each scrape.
    pub fn watch_audit(&mut self, auditor: Auditor) {
        self.registry
            .register_collector(Box::new(AuditCollector(auditor)));
    }

    /// Counts a statement decision.
    pub fn statement(&self, outcome: &'static str) {
        self.statements.get_or_create(&Outcome { outcome }).inc();
    }

    /// Records one execution of the statement shape `fingerprint`.
    pub fn observe_fingerprint(&self, fingerprint: &str, seconds: f64) {
        let label = {
            let mut seen = self.fingerprints_seen.lock();
            if seen.contains(fingerprint) {
                fingerprint.to_owned()
            } else if seen.len() < MAX_FINGERPRINTS {
                seen.insert(fingerprint.to_owned());
                fingerprint.to_owned()
            } else {
                "other".to_owned()
            }
        };
        self.fingerprints
            .get_or_create(&Fingerprint { fingerprint: label })
            .observe(seconds);
    }

    /// Counts a catalog load (`ok` or `error`).
    pub fn catalog_load(&self, outcome: &'static str) {
        self.catalog_loads.get_or_create(&Outcome { outcome }).inc();
    }

    /// Counts an upstream failure.
    pub fn upstream_error(&self, kind: &'static str) {
        self.upstream_errors.get_or_create(&Kind { kind }).inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::error!("could not encode metrics");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The audit pipeline's counters as metrics, from [`Auditor::stats`] at scrape time.
#[derive(Debug)]
struct AuditCollector(Auditor);

fn const_counter(v: u64) -> ConstCounter {
    ConstCounter::new(v)
}

fn const_gauge(v: u64) -> ConstGauge {
    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX))
}

/// One metric without labels.
fn encode_one(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    let e = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(e)
}

/// One metric per sink, labelled `sink`.
fn encode_per_sink<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    (name, help): (&str, &str),
    stats: &AuditStats,
    metric: impl Fn(&SinkStats) -> M,
    metric_type: MetricType,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
    for s in &stats.sinks {
        let label = SinkLabel {
            sink: s.name.clone(),
        };
        metric(s).encode(family.encode_family(&label)?)?;
    }
    Ok(())
}

impl Collector for AuditCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let st = self.0.stats();
        let e = &mut encoder;
        encode_one(
            e,
            "audit_events_accepted",
            "Audit events taken onto the audit queue",
            const_counter(st.accepted),
        )?;
        encode_one(
            e,
            "audit_events_refused",
            "Audit events the queue could not take (full, closed, or audit unavailable); \
             the statement was refused (fail-closed) or the event counted lost",
            const_counter(st.refused),
        )?;
        encode_one(
            e,
            "audit_events_lost",
            "Audit events lost, every cause; each loss is also reported in the trail",
            const_counter(st.lost),
        )?;
        encode_one(
            e,
            "audit_queue_depth",
            "Audit events waiting for the dispatcher",
            const_gauge(st.queue_depth),
        )?;
        encode_one(
            e,
            "audit_queue_capacity",
            "Capacity of the audit queue",
            const_gauge(st.queue_capacity),
        )?;
        let counter = MetricType::Counter;
        let gauge = MetricType::Gauge;
        encode_per_sink(
            e,
            (
                "audit_sink_delivered",
                "Audit records the sink's receiver acknowledged",
            ),
            &st,
            |s| const_counter(s.delivered),
            counter,
        )?;
        encode_per_sink(
            e,
            (
                "audit_sink_send_failures",
                "Failed sends to the sink's receiver (each retried, or its refused records dead-lettered)",
            ),
            &st,
            |s| const_counter(s.send_failures),
            counter,
        )?;
        encode_per_sink(
            e,
            (
                "audit_sink_spooled",
                "Audit records written to the sink's spool",
            ),
            &st,
            |s| const_counter(s.spooled),
            counter,
        )?;
        encode_per_sink(
            e,
            ("audit_sink_spool_bytes", "Size of the sink's spool file"),
            &st,
            |s| const_gauge(s.spool_bytes),
            gauge,
        )?;
        encode_per_sink(
            e,
            (
                "audit_sink_lost",
                "Audit records the sink lost (spool full, encoding failed, down at shutdown)",
            ),
            &st,
            |s| const_counter(s.lost),
            counter,
        )?;
        encode_per_sink(
            e,
            (
                "audit_sink_dead_lettered",
                "Audit records the sink's receiver refused for good, kept in its dead-letter file",
            ),
            &st,
            |s| const_counter(s.dead_lettered),
            counter,
        )?;
        encode_per_sink(
            e,
            (
                "audit_sink_healthy",
                "0 while a fail-closed sink cannot keep events and audit refuses statements",
            ),
            &st,
            |s| const_gauge(u64::from(s.healthy)),
            gauge,
        )
    }
}

/// Serves `GET /metrics` until `shutdown` fires. Other paths get 404.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    refresh: impl Fn() + Send + Sync + 'static,
    shutdown: CancellationToken,
) {
    let refresh = Arc::new(refresh);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shutdown.cancelled() => return,
        };
        let Ok((tcp, _)) = accepted else { continue };
        let metrics = Arc::clone(&metrics);
        let refresh = Arc::clone(&refresh);
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = Arc::clone(&metrics);
                let refresh = Arc::clone(&refresh);
                async move {
                    if req.uri().path() == "/metrics" {
                        refresh();
                        Response::builder()
                            .header(
                                "content-type",
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )
                            .body(Full::new(Bytes::from(metrics.render())))
                    } else {
                        Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"not found\n")))
                    }
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// Binds the metrics listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_audit::pipeline::{AuditConfig, FileSettings, SinkConfig, SinkKind};

    #[tokio::test]
    async fn audit_pipeline_counters_are_exported() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = SinkConfig::new("local", SinkKind::File);
        sink.flush_ms = 1;
        sink.file = Some(FileSettings {
            path: dir.path().join("audit.jsonl"),
            max_bytes: 0,
            retain_count: None,
            retain_age_secs: None,
        });
        let config = AuditConfig {
            instance: "px-metrics".into(),
            queue_capacity: 16,
            state_dir: dir.path().join("state"),
            sinks: vec![sink],
            ..AuditConfig::default()
        };
        let stop = CancellationToken::new();
        let (auditor, task) = Auditor::start(&config, stop.clone()).unwrap();
        let mut metrics = Metrics::new();
        metrics.watch_audit(auditor.clone());
        for _ in 0..3 {
            let event = portcullis_audit::AuditEvent::new(portcullis_audit::EventKind::Statement);
            auditor.emit(event).unwrap();
        }
        for _ in 0..500 {
            if auditor.stats().sinks[0].delivered == 3 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let text = metrics.render();
        for line in [
            "# TYPE portcullis_audit_events_accepted counter",
            "portcullis_audit_events_accepted_total 3",
            "portcullis_audit_events_lost_total 0",
            "# TYPE portcullis_audit_queue_depth gauge",
            "portcullis_audit_queue_capacity 16",
            "# TYPE portcullis_audit_sink_delivered counter",
            "portcullis_audit_sink_delivered_total{sink=\"local\"} 3",
            "portcullis_audit_sink_lost_total{sink=\"local\"} 0",
            "portcullis_audit_sink_dead_lettered_total{sink=\"local\"} 0",
            "portcullis_audit_sink_spool_bytes{sink=\"local\"} 0",
            "portcullis_audit_sink_healthy{sink=\"local\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
        stop.cancel();
        task.await.unwrap();
    }

    #[test]
    fn fingerprint_labels_are_bounded() {
        let metrics = Metrics::new();
        for i in 0..MAX_FINGERPRINTS + 50 {
            metrics.observe_fingerprint(&format!("{i:032x}"), 0.001);
        }
        metrics.observe_fingerprint(&format!("{:032x}", 3), 0.002);
        let text = metrics.render();
        let series = text
            .lines()
            .filter(|l| l.starts_with("portcullis_statement_fingerprint_duration_seconds_count{"))
            .count();
        assert_eq!(series, MAX_FINGERPRINTS + 1, "bounded, plus `other`");
        assert!(text.contains(
            "portcullis_statement_fingerprint_duration_seconds_count{fingerprint=\"other\"} 50"
        ));
        assert!(text.contains(&format!(
            "portcullis_statement_fingerprint_duration_seconds_count{{fingerprint=\"{:032x}\"}} 2",
            3
        )));
    }
}
