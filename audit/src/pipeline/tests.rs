//! Pipeline tests: the real file sink, and an in-test sink that fails on demand.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::event::EventKind;
use crate::sink::{SendFuture, SinkError};

/// Fails its first `fail` sends (storing the first half of the batch when `partial`,
/// as a connection that broke mid-batch would), then stores every batch. A batch
/// holding a record that contains `poison` is refused for good, whole.
#[derive(Clone, Default)]
struct Flaky {
    fail: Arc<AtomicU32>,
    partial: bool,
    poison: Option<&'static str>,
    got: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Single records refused for good, as they were sent.
    refused: Arc<Mutex<Vec<Vec<u8>>>>,
    sends: Arc<AtomicU32>,
}

impl Flaky {
    fn failing(n: u32, partial: bool) -> Self {
        Flaky {
            fail: Arc::new(AtomicU32::new(n)),
            partial,
            ..Flaky::default()
        }
    }

    fn poisoned(self, marker: &'static str) -> Self {
        Flaky {
            poison: Some(marker),
            ..self
        }
    }

    fn seqs(&self) -> Vec<u64> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|r| {
                let v: Value = serde_json::from_slice(r).unwrap();
                v["seq"].as_u64().unwrap()
            })
            .collect()
    }

    fn kinds(&self) -> Vec<(String, Option<String>)> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|r| {
                let v: Value = serde_json::from_slice(r).unwrap();
                (
                    v["kind"].as_str().unwrap().to_owned(),
                    v["detail"].as_str().map(str::to_owned),
                )
            })
            .collect()
    }
}

impl Sink for Flaky {
    fn name(&self) -> &str {
        "flaky"
    }

    fn send<'a>(&'a mut self, records: &'a [Vec<u8>]) -> SendFuture<'a> {
        Box::pin(async move {
            self.sends.fetch_add(1, Ordering::SeqCst);
            let failing = self
                .fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            let mut got = self.got.lock().unwrap();
            if !failing {
                if let Some(p) = self.poison {
                    if records.iter().any(|r| contains(r, p)) {
                        if records.len() == 1 {
                            self.refused.lock().unwrap().push(records[0].clone());
                        }
                        return Err(SinkError::Refused("HTTP 400 (test)".into()));
                    }
                }
            }
            if failing {
                if self.partial {
                    got.extend(records[..records.len() / 2].iter().cloned());
                }
                return Err(SinkError::Retryable("receiver down (test)".into()));
            }
            got.extend(records.iter().cloned());
            Ok(())
        })
    }
}

fn contains(record: &[u8], marker: &str) -> bool {
    record.windows(marker.len()).any(|w| w == marker.as_bytes())
}

fn config(state: &Path) -> AuditConfig {
    AuditConfig {
        instance: "px-test".into(),
        queue_capacity: 1024,
        state_dir: state.to_path_buf(),
        shutdown_timeout_ms: 5_000,
        ..AuditConfig::default()
    }
}

fn sink_config(name: &str) -> SinkConfig {
    SinkConfig {
        batch_max: 10,
        flush_ms: 5,
        ..SinkConfig::new(name, SinkKind::Nats)
    }
}

/// A file sink writing `path`, never rotating.
fn file_sink(name: &str, path: &Path) -> SinkConfig {
    let mut s = SinkConfig::new(name, SinkKind::File);
    s.file = Some(FileSettings {
        path: path.to_path_buf(),
        max_bytes: 0,
        retain_count: None,
        retain_age_secs: None,
    });
    s
}

fn built(sc: SinkConfig, sink: Flaky) -> BuiltSink {
    BuiltSink {
        config: sc,
        sink: Box::new(sink),
        format: Format::Json,
    }
}

fn event(i: usize) -> AuditEvent {
    AuditEvent::new(EventKind::Statement).with_detail(format!("event {i}"))
}

/// Waits until `f` holds, for at most 10 s.
async fn until(mut f: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached in time");
}

/// First occurrences in order must be exactly 1..=n, and any repeat must be a resend
/// of something already delivered (never a jump ahead).
fn assert_at_least_once_in_order(seqs: &[u64], n: u64) {
    let mut max = 0;
    let mut firsts = Vec::new();
    for &s in seqs {
        if s > max {
            assert_eq!(s, max + 1, "gap or reordering before seq {s}: {seqs:?}");
            max = s;
            firsts.push(s);
        }
    }
    assert_eq!(firsts, (1..=n).collect::<Vec<_>>());
}

#[tokio::test]
async fn file_sink_gets_every_event_and_the_chain_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut c = config(dir.path());
    c.sinks.push(file_sink("local", &path));
    let shutdown = CancellationToken::new();
    let (auditor, handle) = Auditor::start(&c, shutdown.clone()).unwrap();
    for i in 0..300 {
        auditor.emit(event(i)).unwrap();
    }
    shutdown.cancel();
    handle.await.unwrap();
    let report = crate::verify::verify(
        [std::io::BufReader::new(std::fs::File::open(&path).unwrap())],
        None,
    );
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.events, 300);
    assert_eq!(auditor.lost(), 0);

    // A restart continues the chain in the same file.
    let shutdown = CancellationToken::new();
    let (auditor, handle) = Auditor::start(&c, shutdown.clone()).unwrap();
    auditor.emit(event(300)).unwrap();
    shutdown.cancel();
    handle.await.unwrap();
    let report = crate::verify::verify(
        [std::io::BufReader::new(std::fs::File::open(&path).unwrap())],
        None,
    );
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.events, 301);
}

/// A file in another format gets the events encoded from the sealed events the worker
/// hands it: byte for byte what encoding the native line's event gives, in order, for
/// every format, besides a native file in the same pipeline.
#[tokio::test]
async fn files_in_other_formats_encode_the_sealed_events() {
    use crate::format::SyslogOptions;
    for (kind, format) in [
        (FormatKind::Ocsf, Format::Ocsf),
        (FormatKind::Cef, Format::Cef),
        (
            FormatKind::Syslog,
            Format::Syslog(SyslogOptions::new("px-test")),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let native = dir.path().join("audit.jsonl");
        let other = dir.path().join("audit.other");
        let mut c = config(dir.path());
        for (name, path, kind) in [
            ("native", &native, FormatKind::Json),
            ("other", &other, kind),
        ] {
            let mut s = file_sink(name, path);
            s.format = kind;
            s.batch_max = 7;
            c.sinks.push(s);
        }
        let shutdown = CancellationToken::new();
        let (auditor, handle) = Auditor::start(&c, shutdown.clone()).unwrap();
        for i in 0..50 {
            auditor
                .emit(
                    event(i)
                        .with_user(format!("user-{i}"))
                        .with_attribute("tenant", "1"),
                )
                .unwrap();
        }
        shutdown.cancel();
        handle.await.unwrap();
        assert_eq!(auditor.lost(), 0);

        let native = std::fs::read_to_string(&native).unwrap();
        let other = std::fs::read_to_string(&other).unwrap();
        let mut expected = Vec::new();
        for line in native.lines() {
            let event: AuditEvent = serde_json::from_str(line).unwrap();
            format.encode(&event, &mut expected).unwrap();
        }
        assert_eq!(native.lines().count(), 50);
        assert_eq!(other, String::from_utf8(expected).unwrap(), "{kind:?}");
        assert!(other.contains("user-49"));
    }
}

#[tokio::test]
async fn retries_spool_and_replay_in_order_without_loss() {
    for partial in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        let flaky = Flaky::failing(4, partial);
        let shutdown = CancellationToken::new();
        let (auditor, handle) = Auditor::start_with(
            &c,
            vec![built(sink_config("flaky"), flaky.clone())],
            shutdown.clone(),
        )
        .unwrap();
        for wave in 0..5 {
            for i in 0..40 {
                auditor.emit(event(wave * 40 + i)).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        until(|| flaky.seqs().iter().max() == Some(&200)).await;
        shutdown.cancel();
        handle.await.unwrap();
        let seqs = flaky.seqs();
        assert_at_least_once_in_order(&seqs, 200);
        if !partial {
            assert_eq!(seqs, (1..=200).collect::<Vec<_>>(), "no duplicates");
        } else {
            assert!(
                seqs.len() > 200,
                "partial sends leave documented duplicates"
            );
        }
        assert!(flaky.sends.load(Ordering::SeqCst) > 4);
        assert_eq!(auditor.lost(), 0);
        let spool = Spool::open(&c.state_dir.join("spool/flaky"), 1 << 30).unwrap();
        assert!(spool.is_empty(), "spool drained");
    }
}

#[tokio::test]
async fn spool_left_on_disk_is_replayed_first_by_a_new_auditor() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());

    // First run: the receiver never answers; everything ends up in the spool.
    let down = Flaky::failing(u32::MAX, false);
    let shutdown = CancellationToken::new();
    let (auditor, handle) = Auditor::start_with(
        &c,
        vec![built(sink_config("siem"), down.clone())],
        shutdown.clone(),
    )
    .unwrap();
    for i in 0..50 {
        auditor.emit(event(i)).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    shutdown.cancel();
    handle.await.unwrap();
    assert!(down.seqs().is_empty());
    assert_eq!(auditor.lost(), 0);

    // Second run: the receiver is back. The spool goes first, then new events, and
    // the chain continues after the spooled events.
    let up = Flaky::default();
    let shutdown = CancellationToken::new();
    let (auditor, handle) = Auditor::start_with(
        &c,
        vec![built(sink_config("siem"), up.clone())],
        shutdown.clone(),
    )
    .unwrap();
    for i in 50..60 {
        auditor.emit(event(i)).unwrap();
    }
    until(|| up.seqs().len() >= 60).await;
    shutdown.cancel();
    handle.await.unwrap();
    assert_eq!(up.seqs(), (1..=60).collect::<Vec<_>>());
    let details: Vec<_> = up.kinds().into_iter().map(|(_, d)| d.unwrap()).collect();
    assert_eq!(details[0], "event 0");
    assert_eq!(details[59], "event 59");
}

#[tokio::test]
async fn full_queue_is_counted_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let c = AuditConfig {
        queue_capacity: 4,
        ..config(dir.path())
    };
    let sink = Flaky::default();
    let shutdown = CancellationToken::new();
    let (auditor, handle) = Auditor::start_with(
        &c,
        vec![built(sink_config("s"), sink.clone())],
        shutdown.clone(),
    )
    .unwrap();
    // The test runtime has one thread: nothing is dequeued until we yield.
    for i in 0..10 {
        auditor.emit(event(i)).unwrap();
    }
    assert_eq!(auditor.lost(), 6);
    let st = auditor.stats();
    assert_eq!(
        (
            st.accepted,
            st.refused,
            st.lost,
            st.queue_depth,
            st.queue_capacity
        ),
        (4, 6, 6, 4, 4)
    );
    until(|| {
        sink.kinds().iter().any(|(k, d)| {
            k == "audit_loss" && d.as_deref() == Some("6 audit events lost (6 since start)")
        })
    })
    .await;
    shutdown.cancel();
    handle.await.unwrap();
    assert_at_least_once_in_order(&sink.seqs(), 5);
}

#[tokio::test]
async fn fail_closed_refuses_instead_of_losing() {
    let dir = tempfile::tempdir().unwrap();
    let c = AuditConfig {
        queue_capacity: 4,
        ..config(dir.path())
    };
    let sc = SinkConfig {
        overflow: Overflow::FailClosed,
        spool_max_bytes: 0,
        ..sink_config("strict")
    };
    let down = Flaky::failing(u32::MAX, false);
    let shutdown = CancellationToken::new();
    let (auditor, handle) =
        Auditor::start_with(&c, vec![built(sc, down.clone())], shutdown.clone()).unwrap();
    for i in 0..4 {
        auditor.emit(event(i)).unwrap();
    }
    assert_eq!(auditor.emit(event(4)), Err(AuditUnavailable), "queue full");
    assert_eq!(auditor.lost(), 0);
    // The receiver is down and there is no spool: audit becomes unhealthy.
    until(|| !auditor.healthy()).await;
    assert_eq!(auditor.emit(event(5)), Err(AuditUnavailable));
    // The receiver comes back: the held events go out and audit recovers by itself.
    down.fail.store(0, Ordering::SeqCst);
    until(|| auditor.healthy()).await;
    auditor.emit(event(6)).unwrap();
    until(|| down.seqs().len() == 5).await;
    shutdown.cancel();
    handle.await.unwrap();
    assert_eq!(down.seqs(), (1..=5).collect::<Vec<_>>());
    assert_eq!(auditor.lost(), 0);
}

#[tokio::test]
async fn network_sinks_are_built_from_config() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    let mut nats = SinkConfig::new("bus", SinkKind::Nats);
    nats.nats = Some(NatsSettings {
        url: "nats://127.0.0.1:1".into(),
        subject: "audit.events".into(),
        stream: None,
        user: None,
        password_env: None,
        token_env: None,
        connect_timeout_ms: Some(100),
        ack_timeout_ms: None,
        duplicate_window_secs: None,
    });
    c.sinks.push(nats);
    let mut es = SinkConfig::new("search", SinkKind::Elasticsearch);
    es.elasticsearch = Some(ElasticsearchSettings {
        url: "http://127.0.0.1:1".into(),
        index: "audit".into(),
        token_env: None,
        user: None,
        password_env: None,
        gzip: Some(false),
        ca_file: None,
        connect_timeout_ms: Some(100),
        request_timeout_ms: None,
    });
    c.sinks.push(es);
    let shutdown = CancellationToken::new();
    let (auditor, handle) = Auditor::start(&c, shutdown.clone()).unwrap();
    auditor.emit(event(0)).unwrap();
    shutdown.cancel();
    handle.await.unwrap();
    // Both receivers were down: the event waits in each spool.
    for name in ["bus", "search"] {
        let spool = Spool::open(&c.state_dir.join("spool").join(name), 1 << 30).unwrap();
        assert!(!spool.is_empty(), "{name}");
    }
}

#[cfg(unix)]
#[tokio::test]
async fn chain_key_from_a_private_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let key_path = dir.path().join("chain.key");
    std::fs::write(&key_path, b"correct horse battery staple\n").unwrap();
    let mut c = config(dir.path());
    c.sinks.push(file_sink("local", &path));
    c.hmac_key_file = Some(key_path.clone());

    // A key others may read is refused, naming the file and the fix.
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let refused = Auditor::start(&c, CancellationToken::new())
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("chain.key") && refused.contains("chmod 600"),
        "{refused}"
    );

    // Both sources at once are refused.
    let mut both = c.clone();
    both.hmac_key_env = Some("PORTCULLIS_TEST_UNSET_KEY".into());
    let refused = Auditor::start(&both, CancellationToken::new())
        .unwrap_err()
        .to_string();
    assert!(refused.contains("at most one"), "{refused}");

    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let shutdown = CancellationToken::new();
    let (auditor, handle) = Auditor::start(&c, shutdown.clone()).unwrap();
    for i in 0..5 {
        auditor.emit(event(i)).unwrap();
    }
    shutdown.cancel();
    handle.await.unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"hash\":\"hmac-sha256:"), "{text}");
    // The key is the file's bytes without the trailing newline.
    let keyed = crate::verify::verify([text.as_bytes()], Some(b"correct horse battery staple"));
    assert!(keyed.is_ok(), "{:?}", keyed.problems);
    let wrong = crate::verify::verify([text.as_bytes()], Some(b"another key"));
    assert!(!wrong.is_ok());
}

fn poisoned_event() -> AuditEvent {
    AuditEvent::new(EventKind::Statement).with_detail("poisoned record")
}

#[tokio::test]
async fn refused_record_is_dead_lettered_and_the_sink_goes_on() {
    // 0: refused on the live path; 3: the receiver is down first, so the poisoned
    // batch is refused while the spool is replayed.
    for fail in [0, 3] {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        let sc = sink_config("siem");
        let dead_letter = c.dead_letter_file(&sc);
        let sink = Flaky::failing(fail, false).poisoned("poisoned record");
        let shutdown = CancellationToken::new();
        let (auditor, handle) =
            Auditor::start_with(&c, vec![built(sc, sink.clone())], shutdown.clone()).unwrap();
        for i in 0..40 {
            auditor
                .emit(if i == 17 { poisoned_event() } else { event(i) })
                .unwrap();
        }
        until(|| sink.kinds().iter().any(|(k, _)| k == "audit_loss")).await;
        // The sink is not blocked: later events arrive too.
        for i in 40..50 {
            auditor.emit(event(i)).unwrap();
        }
        until(|| sink.seqs().len() == 50).await;
        shutdown.cancel();
        handle.await.unwrap();

        // Everything but the poisoned record (event 17, seq 18) arrived once, in
        // order; the 51st event is the audit_loss report.
        let expected: Vec<u64> = (1..=51).filter(|s| *s != 18).collect();
        assert_eq!(sink.seqs(), expected, "fail = {fail}");
        let report: Vec<String> = sink
            .kinds()
            .into_iter()
            .filter(|(k, _)| k == "audit_loss")
            .filter_map(|(_, d)| d)
            .collect();
        assert_eq!(report.len(), 1, "{report:?}");
        assert!(
            report[0]
                .starts_with("1 audit events refused for good by the receiver of sink \"siem\"")
                && report[0].contains(&format!("dead-letter file {}", dead_letter.display())),
            "{}",
            report[0]
        );

        // The dead-letter file holds exactly the refused record, byte for byte.
        let refused = sink.refused.lock().unwrap().clone();
        assert_eq!(refused.len(), 1);
        let kept = std::fs::read(&dead_letter).unwrap();
        assert_eq!(kept, refused[0]);
        let v: Value = serde_json::from_slice(&kept).unwrap();
        assert_eq!(
            (v["seq"].as_u64(), v["detail"].as_str()),
            (Some(18), Some("poisoned record"))
        );
        let reasons =
            std::fs::read_to_string(dead_letter.with_file_name("dead-letter.reasons.jsonl"))
                .unwrap();
        let reason: Value = serde_json::from_str(reasons.trim_end()).unwrap();
        assert_eq!(reason["sink"], "siem");
        assert_eq!(reason["reason"], "HTTP 400 (test)");

        // And it is all counted.
        let stats = auditor.stats();
        assert_eq!(stats.accepted, 50);
        assert_eq!(stats.lost, 0);
        let s = &stats.sinks[0];
        assert_eq!(s.name, "siem");
        assert_eq!((s.delivered, s.dead_lettered, s.lost), (50, 1, 0));
        assert!(s.send_failures >= u64::from(fail) + 2, "{s:?}");
        assert_eq!(s.spooled > 0, fail > 0, "{s:?}");
        assert_eq!(s.spool_bytes, 0, "spool drained: {s:?}");
        assert!(s.healthy);
    }
}

#[tokio::test]
async fn losses_are_counted_per_sink() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    // No spool and so no dead-letter file: the refused record is lost, the rest
    // arrives.
    let lossy = SinkConfig {
        spool_max_bytes: 0,
        ..sink_config("lossy")
    };
    let picky = Flaky::default().poisoned("poisoned record");
    // Down for good, without a spool: everything is lost.
    let gone = SinkConfig {
        spool_max_bytes: 0,
        ..sink_config("gone")
    };
    let down = Flaky::failing(u32::MAX, false);
    let shutdown = CancellationToken::new();
    let (auditor, handle) = Auditor::start_with(
        &c,
        vec![built(lossy, picky.clone()), built(gone, down.clone())],
        shutdown.clone(),
    )
    .unwrap();
    for i in 0..20 {
        auditor
            .emit(if i == 5 { poisoned_event() } else { event(i) })
            .unwrap();
    }
    until(|| {
        picky
            .kinds()
            .iter()
            .any(|(k, d)| k == "audit_loss" && d.as_deref().is_some_and(|d| d.contains("lost")))
    })
    .await;
    shutdown.cancel();
    handle.await.unwrap();

    let stats = auditor.stats();
    let (l, g) = (&stats.sinks[0], &stats.sinks[1]);
    assert_eq!((l.name.as_str(), g.name.as_str()), ("lossy", "gone"));
    assert_eq!((l.lost, l.dead_lettered, l.spooled), (1, 0, 0), "{l:?}");
    assert!(l.delivered >= 20, "{l:?}");
    assert!(g.lost >= 20, "{g:?}");
    assert_eq!((g.delivered, g.spooled), (0, 0), "{g:?}");
    assert!(g.send_failures >= 1, "{g:?}");
    assert_eq!(stats.lost, l.lost + g.lost);
    assert_eq!(auditor.lost(), stats.lost);
    assert!(
        picky.seqs().iter().all(|s| *s != 6),
        "the refused record is not resent"
    );
}

#[tokio::test]
async fn fail_closed_sink_keeps_a_refused_record_it_cannot_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let sc = SinkConfig {
        overflow: Overflow::FailClosed,
        spool_max_bytes: 0,
        ..sink_config("strict")
    };
    let dead_letter = c.dead_letter_file(&sc);
    let sink = Flaky::default().poisoned("poisoned record");
    let shutdown = CancellationToken::new();
    let (auditor, handle) =
        Auditor::start_with(&c, vec![built(sc, sink.clone())], shutdown.clone()).unwrap();
    auditor.emit(event(0)).unwrap();
    auditor.emit(poisoned_event()).unwrap();
    until(|| !auditor.healthy()).await;
    assert_eq!(auditor.emit(event(2)), Err(AuditUnavailable));
    let stats = auditor.stats();
    assert!(!stats.sinks[0].healthy);
    assert_eq!(stats.refused, 1);
    assert_eq!(stats.lost, 0);
    shutdown.cancel();
    handle.await.unwrap();
    assert_eq!(sink.seqs()[0], 1);
    assert!(!dead_letter.exists());
}
