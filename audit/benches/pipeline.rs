//! The audit path: how many statement events per second go from [`Auditor::emit`] to
//! their sink, and where the time goes.
//!
//! - `encode/<format>`: one sealed statement event encoded (json, ocsf, cef, syslog).
//! - `seal/<sha256|hmac>`: one event sealed into the hash chain (canonical JSON + hash).
//! - `pipeline/<sink>`: [`EVENTS`] statement events through the whole pipeline, end to
//!   end: each event is built as the proxy builds it (the session's base event cloned,
//!   stamped with a fresh time and id), handed to `Auditor::emit`, sealed, encoded,
//!   batched and written; the clock stops when the auditor has shut down, i.e. when
//!   every event has been written (file sinks: written and fsynced; syslog: handed to
//!   the kernel, then read back from what rsyslogd wrote). A fresh auditor, file and
//!   chain per iteration, set up outside the clock. Every iteration checks that all
//!   [`EVENTS`] arrived and none was counted lost.
//!   - `file_json`, `file_ocsf`: the file sink with the pipeline's defaults
//!     (batch_max 512, an fsync per batch), in a temporary directory under
//!     `CARGO_TARGET_TMPDIR` (so on the same disk as the build, not tmpfs);
//!   - `rsyslog_tcp`: the syslog sink (RFC 5424, octet-counted) to a private rsyslogd
//!     (imtcp on a free port, omfile), started here and killed at the end. Skipped with a
//!     note on stderr when `/usr/sbin/rsyslogd` is missing (`apt-get install rsyslog`).
//!
//! ```text
//! cargo bench -p portcullis-audit --bench pipeline
//! cargo bench -p portcullis-audit --bench pipeline -- pipeline/   # end to end only
//! ```
//!
//! Criterion prints `thrpt` in elements per second: events/s. Each end-to-end benchmark
//! also prints the CPU time spent per event (this process, all threads; and rsyslogd's
//! own), which a busy machine disturbs much less than the throughput. The target (audit-path
//! benchmark issue): the file sink sustains at least 100,000 events/s. Results and the
//! machine are in `bench/README.md`, "Audit path".

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::Cell;
use std::fs;
use std::hint::black_box;
use std::io::{Read, Seek, SeekFrom};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use portcullis_audit::event::{
    AuditEvent, ClientInfo, DecisionInfo, EventId, EventKind, Outcome, StatementInfo, Timestamp,
    TouchedColumn, TouchedTable,
};
use portcullis_audit::format::SyslogOptions;
use portcullis_audit::pipeline::{
    AuditConfig, Auditor, FileSettings, FormatKind, SinkConfig, SinkKind, SyslogSettings,
};
use portcullis_audit::{Chainer, Format};
use tokio_util::sync::CancellationToken;

#[path = "../tests/support/rsyslog.rs"]
mod rsyslog;

/// The proxy's allocator (see `proxy/src/main.rs`), so that the figures are the proxy's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Events per end-to-end iteration.
const EVENTS: usize = 20_000;

const RSYSLOGD: &str = "/usr/sbin/rsyslogd";

/// A statement event as the proxy emits it for `support_acme` reading a customer:
/// identity, TLS client, normalized text and fingerprint, a table with classified
/// columns, a rewrite decision with rule and policy version, rows and duration.
fn statement_event() -> AuditEvent {
    let column = |name: &str, classes: &[&str]| TouchedColumn {
        name: name.into(),
        classes: classes.iter().map(|c| (*c).to_owned()).collect(),
    };
    AuditEvent::new(EventKind::Statement)
        .with_session("7f3a9c2e-5b1d-4e8f-9a6c-0d2b4f6e8a1c")
        .with_client(ClientInfo {
            ip: Some(IpAddr::V4(Ipv4Addr::new(10, 20, 30, 41))),
            port: Some(51234),
            tls_version: Some("TLSv1.3".into()),
            cipher: Some("TLS13_AES_256_GCM_SHA384".into()),
            cert_subject: Some("CN=billing-service,OU=apps,O=Acme".into()),
        })
        .with_user("support_acme")
        .with_roles(["support"])
        .with_attribute("tenant", "1")
        .with_attribute("department", "support")
        .with_database("shop")
        .with_application("billing-service")
        .with_statement(
            StatementInfo::from_sql(
                "SELECT id, name, email, ssn, card_number, birth_date FROM customers WHERE id = 4711",
            )
            .with_class("read")
            .with_table(TouchedTable {
                name: "public.customers".into(),
                classes: vec![],
                columns: vec![
                    column("id", &[]),
                    column("name", &["pii.name"]),
                    column("email", &["pii.email"]),
                    column("ssn", &["pii.ssn"]),
                    column("card_number", &["financial.card"]),
                    column("birth_date", &["pii.dob"]),
                ],
            }),
        )
        .with_decision(
            DecisionInfo::new(Outcome::Rewritten)
                .with_rule("customers|support|tenant_filter+mask")
                .with_policy_version("3f9d2c1b7a6e5d4c3b2a19081726354453627180"),
        )
        .with_result(Some(1), 184, None)
}

/// The event the proxy hands to `emit` for one statement: the template, stamped now.
fn stamped(template: &AuditEvent) -> AuditEvent {
    let mut e = template.clone();
    e.time = Timestamp::now();
    e.id = EventId::new(e.time);
    e
}

fn formats() -> [(&'static str, Format); 4] {
    [
        ("json", Format::Json),
        ("ocsf", Format::Ocsf),
        ("cef", Format::Cef),
        ("syslog", Format::Syslog(SyslogOptions::new("px-bench"))),
    ]
}

fn encode(c: &mut Criterion) {
    let mut event = statement_event();
    Chainer::new("px-bench", None).seal(&mut event).unwrap();
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(1));
    for (name, format) in formats() {
        let mut out = Vec::with_capacity(4096);
        format.encode(&event, &mut out).unwrap();
        eprintln!("encode/{name}: {} bytes per event", out.len());
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                format.encode(black_box(&event), &mut out).unwrap();
                black_box(out.len())
            })
        });
    }
    g.finish();
}

fn seal(c: &mut Criterion) {
    let mut g = c.benchmark_group("seal");
    g.throughput(Throughput::Elements(1));
    for (name, key) in [("sha256", None), ("hmac", Some(b"bench-key".to_vec()))] {
        let mut chainer = Chainer::new("px-bench", key);
        let mut event = statement_event();
        // Sealing overwrites the chain fields, so one event can be sealed over and over.
        g.bench_function(name, |b| {
            b.iter(|| chainer.seal(black_box(&mut event)).unwrap())
        });
    }
    // Every event with its own statement and decision (a simple-protocol statement,
    // described anew each time; the session's parts are still shared), as against the
    // cases above, where the statement is the same `Arc` each time (executions of a
    // prepared statement).
    let mut chainer = Chainer::new("px-bench", None);
    let template = statement_event();
    g.bench_function("sha256_new_statement", |b| {
        b.iter_batched_ref(
            || {
                let mut e = template.clone();
                e.statement = e.statement.as_deref().cloned().map(Arc::new);
                e.decision = e.decision.as_deref().cloned().map(Arc::new);
                e
            },
            |event| chainer.seal(black_box(event)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// The directory the file sinks write to: on the build's disk, not on tmpfs.
fn scratch() -> tempfile::TempDir {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

fn config(dir: &Path, sink: SinkConfig) -> AuditConfig {
    AuditConfig {
        instance: "px-bench".into(),
        state_dir: dir.join("state"),
        shutdown_timeout_ms: 60_000,
        sinks: vec![sink],
        ..AuditConfig::default()
    }
}

fn file_sink(dir: &Path, format: FormatKind) -> SinkConfig {
    let mut sink = SinkConfig::new("local", SinkKind::File);
    sink.format = format;
    sink.file = Some(FileSettings {
        path: dir.join("audit.log"),
        max_bytes: 0,
        retain_count: None,
        retain_age_secs: None,
    });
    sink
}

/// Starts an auditor, emits [`EVENTS`] events and shuts the auditor down (which
/// drains the queue and flushes the sink); returns when emitting started.
async fn emit_all(config: &AuditConfig, template: &AuditEvent) -> Instant {
    let shutdown = CancellationToken::new();
    let (auditor, handle) = Auditor::start(config, shutdown.clone()).unwrap();
    let start = Instant::now();
    for _ in 0..EVENTS {
        auditor.emit(stamped(template)).unwrap();
    }
    shutdown.cancel();
    handle.await.unwrap();
    assert_eq!(auditor.lost(), 0, "events were lost: the figure would lie");
    start
}

/// CPU time (user + system, all threads, in clock ticks) of process `pid` ("self" for
/// this one), from `/proc/<pid>/stat` fields 14 and 15.
fn cpu_ticks(pid: &str) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After "(comm) ", field 3 is the first word.
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest
        .split(' ')
        .skip(11)
        .take(2)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    fields.iter().sum()
}

/// CPU spent per event over every iteration of one benchmark (warm-up included), so
/// that a reader on a busy machine sees the cost beside the throughput.
#[derive(Default)]
struct CpuPerEvent {
    events: Cell<u64>,
    ticks: Cell<u64>,
    other_ticks: Cell<u64>,
}

impl CpuPerEvent {
    fn add(&self, ticks: u64, other_ticks: u64) {
        self.events.set(self.events.get() + EVENTS as u64);
        self.ticks.set(self.ticks.get() + ticks);
        self.other_ticks.set(self.other_ticks.get() + other_ticks);
    }

    /// Prints µs of CPU per event, assuming 100 clock ticks per second (Linux's
    /// USER_HZ on every common architecture).
    fn report(&self, name: &str, other: Option<&str>) {
        let per = |t: u64| t as f64 * 10_000.0 / self.events.get().max(1) as f64;
        eprintln!(
            "pipeline/{name}: {:.2} µs CPU per event in this process{} ({} events)",
            per(self.ticks.get()),
            other
                .map(|o| format!(", {:.2} in {o}", per(self.other_ticks.get())))
                .unwrap_or_default(),
            self.events.get()
        );
    }
}

fn count_lines(path: &Path) -> usize {
    fs::read(path)
        .map(|b| b.iter().filter(|c| **c == b'\n').count())
        .unwrap_or(0)
}

fn pipeline(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let template = statement_event();
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(EVENTS as u64));
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(5));

    for (name, format) in [
        ("file_json", FormatKind::Json),
        ("file_ocsf", FormatKind::Ocsf),
    ] {
        let cpu = CpuPerEvent::default();
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let dir = scratch();
                    let config = config(dir.path(), file_sink(dir.path(), format));
                    let before = cpu_ticks("self");
                    let start = rt.block_on(emit_all(&config, &template));
                    total += start.elapsed();
                    cpu.add(cpu_ticks("self") - before, 0);
                    assert_eq!(count_lines(&dir.path().join("audit.log")), EVENTS);
                }
                total
            })
        });
        cpu.report(name, None);
    }

    match Rsyslog::start() {
        Some(rsyslog) => {
            let cpu = CpuPerEvent::default();
            let pid = rsyslog.child.id().to_string();
            g.bench_function("rsyslog_tcp", |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let (before, other) = (cpu_ticks("self"), cpu_ticks(&pid));
                        total += rt.block_on(rsyslog.run(&template));
                        cpu.add(cpu_ticks("self") - before, cpu_ticks(&pid) - other);
                    }
                    total
                })
            });
            cpu.report("rsyslog_tcp", Some("rsyslogd"));
        }
        None => eprintln!(
            "pipeline/rsyslog_tcp: skipped, {RSYSLOGD} is not installed (apt-get install rsyslog)"
        ),
    }
    g.finish();
}

/// A private rsyslogd (imtcp on a free port, omfile), killed on drop.
struct Rsyslog {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    /// How far `received.log` has been read, and how many lines that held.
    read: Cell<(u64, usize)>,
}

impl Rsyslog {
    fn start() -> Option<Rsyslog> {
        if !Path::new(RSYSLOGD).exists() {
            return None;
        }
        let dir = scratch();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        fs::create_dir_all(rsyslog::work_dir(dir.path())).unwrap();
        let conf = rsyslog::config(dir.path(), port, None);
        let conf_path = dir.path().join("rsyslog.conf");
        fs::write(&conf_path, conf).unwrap();
        let log = fs::File::create(dir.path().join("rsyslogd.stderr")).unwrap();
        let child = Command::new(RSYSLOGD)
            .arg("-n")
            .arg("-f")
            .arg(&conf_path)
            .arg("-i")
            .arg(dir.path().join("pid"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start rsyslogd");
        let mut r = Rsyslog {
            child,
            dir,
            port,
            read: Cell::new((0, 0)),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = r.child.try_wait().unwrap() {
                panic!("rsyslogd exited with {status}:\n{}", r.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "rsyslogd did not listen:\n{}",
                r.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(r)
    }

    fn stderr(&self) -> String {
        fs::read_to_string(self.dir.path().join("rsyslogd.stderr")).unwrap_or_default()
    }

    /// Lines rsyslogd has written so far (reads only what is new since the last call).
    fn lines(&self) -> usize {
        let (mut offset, mut lines) = self.read.get();
        if let Ok(mut f) = fs::File::open(rsyslog::received_log(self.dir.path())) {
            let mut buf = Vec::new();
            f.seek(SeekFrom::Start(offset)).unwrap();
            f.read_to_end(&mut buf).unwrap();
            offset += buf.len() as u64;
            lines += buf.iter().filter(|c| **c == b'\n').count();
        }
        self.read.set((offset, lines));
        lines
    }

    /// One iteration: a fresh auditor with a syslog sink to this rsyslogd; the clock
    /// stops when rsyslogd has written all [`EVENTS`] to its file.
    async fn run(&self, template: &AuditEvent) -> Duration {
        let dir = scratch();
        let mut sink = SinkConfig::new("siem", SinkKind::Syslog);
        sink.format = FormatKind::Syslog;
        sink.syslog = Some(SyslogSettings {
            address: format!("127.0.0.1:{}", self.port),
            tls: false,
            ca_file: None,
            server_name: None,
            facility: 16,
            hostname: Some("px-bench".into()),
        });
        let config = config(dir.path(), sink);
        let before = self.lines();
        let start = emit_all(&config, template).await;
        let sent = start.elapsed();
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.lines() < before + EVENTS && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let took = start.elapsed();
        let got = self.lines() - before;
        assert_eq!(
            got,
            EVENTS,
            "rsyslogd wrote {got} of {EVENTS} events (sent in {sent:?}):\n{}",
            self.stderr()
        );
        took
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

criterion_group! {
    name = micro;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    targets = encode, seal
}
criterion_group!(end_to_end, pipeline);
criterion_main!(micro, end_to_end);
