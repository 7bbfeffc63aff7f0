//! The audit pipeline under faults, end to end: a load of statements through the
//! `portcullis` binary while its syslog receiver (rsyslogd) and its NATS JetStream
//! server are killed, the proxy is stopped with SIGTERM while both are down and started
//! again on the same state directory, and then the receivers come back.
//!
//! Proven at the end, against the local JSON file (the whole chain, both runs):
//! - the chain verifies (`verify` and `portcullis audit verify`): one chain across the
//!   restart, no gap, no repeat, no second genesis, no `audit_loss`;
//! - every statement a client got an answer for is in it;
//! - at rsyslog and at NATS, every event of the chain arrived, first arrivals in chain
//!   order; anything else that arrived is a duplicate of the kind the delivery
//!   contract documents (a re-send of an already delivered tail, in order, before
//!   anything new), counted and printed; nothing arrived that is not in the chain
//!   (same seq, id and hash). NATS deduplicates re-sends by `Nats-Msg-Id`, so it must
//!   hold no duplicate at all.
//!
//! rsyslogd is killed *between* batches (the load pauses until it has everything so
//! far): plain TCP syslog has no acknowledgement, and the syslog sink documents that a
//! receiver dying with a batch in flight can lose that batch. nats-server, whose
//! JetStream acknowledges every message, is killed in the middle of the load.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use portcullis_tests::process::{ProxyProcess, portcullis_bin, write_config};
use portcullis_tests::receivers::{NatsServer, Rsyslog, free_port};
use portcullis_tests::{ANALYST, TestEnv};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls};
use tokio_util::sync::CancellationToken;

const INSTANCE: &str = "px-faults";
const STREAM: &str = "PORTCULLIS_AUDIT";
const SUBJECT: &str = "portcullis.audit.faults";
const CLIENTS: usize = 3;

/// One event of the chain (a line of the local JSON file).
#[derive(Debug, Clone)]
struct Event {
    seq: u64,
    id: String,
    hash: String,
    kind: String,
}

/// One event as a receiver got it.
#[derive(Debug, Clone)]
struct Arrival {
    instance: String,
    seq: u64,
    id: String,
    hash: String,
}

impl Arrival {
    fn from_json(v: &Value) -> Option<Arrival> {
        Some(Arrival {
            instance: v.get("instance")?.as_str()?.to_owned(),
            seq: v.get("seq")?.as_u64()?,
            id: v.get("id")?.as_str()?.to_owned(),
            hash: v.get("hash")?.as_str()?.to_owned(),
        })
    }
}

/// The chain as the local file holds it now (complete lines only).
fn read_chain(trail: &Path) -> Result<Vec<Event>> {
    let text = std::fs::read_to_string(trail).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).with_context(|| format!("trail: {line}"))?;
            let a = Arrival::from_json(&v).with_context(|| format!("trail: {line}"))?;
            Ok(Event {
                seq: a.seq,
                id: a.id,
                hash: a.hash,
                kind: v["kind"].as_str().unwrap_or_default().to_owned(),
            })
        })
        .collect()
}

/// What rsyslog wrote: RFC 5424 lines whose MSG is the native JSON event; the
/// structured data must name the same event.
fn read_syslog(rsyslog: &Rsyslog) -> Result<Vec<Arrival>> {
    rsyslog
        .received()
        .iter()
        .map(|line| {
            let msg = line
                .find("\"] {")
                .map(|i| &line[i + 3..])
                .with_context(|| format!("rsyslog got a line that is not ours: {line}"))?;
            let v: Value = serde_json::from_str(msg)
                .with_context(|| format!("rsyslog got a MSG that is not JSON: {line}"))?;
            let a = Arrival::from_json(&v)
                .with_context(|| format!("rsyslog got a MSG that is not an event: {line}"))?;
            ensure!(
                line.starts_with("<")
                    && line.contains(&format!(" id=\"{}\"", a.id))
                    && line.contains(&format!(" seq=\"{}\"", a.seq)),
                "structured data and MSG disagree: {line}"
            );
            Ok(a)
        })
        .collect()
}

/// What JetStream holds (empty while the stream does not exist yet).
async fn read_nats(nats: &NatsServer) -> Result<Vec<Arrival>> {
    let messages = match nats.stream_messages(STREAM).await {
        Ok(m) => m,
        Err(e) if e.to_string().contains("stream not found") => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    messages
        .iter()
        .map(|m| {
            let v: Value = serde_json::from_slice(&m.data)
                .with_context(|| format!("NATS message {} is not JSON", m.seq))?;
            let a = Arrival::from_json(&v)
                .with_context(|| format!("NATS message {} is not an event", m.seq))?;
            ensure!(
                m.subject == SUBJECT && m.msg_id.as_deref() == Some(a.id.as_str()),
                "NATS message {} on {} with Nats-Msg-Id {:?} for event {}",
                m.seq,
                m.subject,
                m.msg_id,
                a.id
            );
            Ok(a)
        })
        .collect()
}

/// The receivers' state at one moment.
struct Snapshot {
    chain: Vec<Event>,
    syslog: Vec<Arrival>,
    nats: Vec<Arrival>,
}

impl Snapshot {
    async fn take(trail: &Path, rsyslog: &Rsyslog, nats: &NatsServer) -> Result<Snapshot> {
        Ok(Snapshot {
            chain: read_chain(trail)?,
            syslog: read_syslog(rsyslog)?,
            nats: read_nats(nats).await?,
        })
    }

    /// Chain events not (yet) at rsyslog and at NATS: how many, and the first seq.
    fn missing(&self) -> [(usize, Option<u64>); 2] {
        let missing = |got: &[Arrival]| {
            let ids: std::collections::HashSet<&str> = got.iter().map(|a| a.id.as_str()).collect();
            let mut absent = self.chain.iter().filter(|e| !ids.contains(e.id.as_str()));
            let first = absent.next().map(|e| e.seq);
            (first.map_or(0, |_| 1 + absent.count()), first)
        };
        [missing(&self.syslog), missing(&self.nats)]
    }
}

/// Waits (up to `limit`) until both receivers hold every event of the chain and the
/// chain has not grown for a while (so that nothing is in flight).
async fn wait_delivered(
    what: &str,
    limit: Duration,
    trail: &Path,
    rsyslog: &Rsyslog,
    nats: &NatsServer,
) -> Result<Snapshot> {
    let deadline = Instant::now() + limit;
    let mut last_len = usize::MAX;
    loop {
        let s = Snapshot::take(trail, rsyslog, nats).await?;
        let [syslog, nats_missing] = s.missing();
        if syslog.0 == 0 && nats_missing.0 == 0 && s.chain.len() == last_len {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!(
                "{what}: after {limit:?}, of {} chain events {} never reached rsyslog (the \
                 first: seq {:?}) and {} never reached NATS (the first: seq {:?})\n\
                 --- rsyslogd:\n{}\n--- nats-server (tail):\n{}",
                s.chain.len(),
                syslog.0,
                syslog.1,
                nats_missing.0,
                nats_missing.1,
                rsyslog.stderr(),
                tail(&nats.stderr(), 3000),
            );
        }
        last_len = s.chain.len();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// What one sink's arrivals look like against the chain.
#[derive(Debug, Default)]
struct Delivery {
    arrivals: usize,
    duplicates: usize,
    /// Re-sent ranges (first seq, last seq).
    resends: Vec<(u64, u64)>,
}

/// Checks one sink's arrivals against the chain; see the module docs.
fn check_delivery(sink: &str, chain: &[Event], got: &[Arrival]) -> Result<Delivery> {
    let index: HashMap<u64, usize> = chain.iter().enumerate().map(|(i, e)| (e.seq, i)).collect();
    let mut d = Delivery {
        arrivals: got.len(),
        ..Delivery::default()
    };
    // Index of the next chain event expected to arrive for the first time.
    let mut next = 0usize;
    // While a re-send is under way: the index it must continue with.
    let mut resend: Option<usize> = None;
    for (n, a) in got.iter().enumerate() {
        let Some(&i) = index.get(&a.seq).filter(|_| a.instance == INSTANCE) else {
            bail!(
                "{sink}: arrival {n} (instance {}, seq {}) is not in the chain",
                a.instance,
                a.seq
            );
        };
        let e = &chain[i];
        ensure!(
            e.id == a.id && e.hash == a.hash,
            "{sink}: arrival {n} has seq {} but id {} / hash {}, the chain has {} / {}",
            a.seq,
            a.id,
            a.hash,
            e.id,
            e.hash
        );
        if i == next {
            if let Some(expected) = resend.filter(|x| *x != next) {
                bail!(
                    "{sink}: new event seq {} arrived in the middle of a re-send that stopped \
                     before seq {}",
                    e.seq,
                    chain[expected].seq
                );
            }
            resend = None;
            next += 1;
        } else if i < next {
            d.duplicates += 1;
            match (resend, d.resends.last_mut()) {
                (Some(expected), Some(run)) if expected == i => run.1 = e.seq,
                _ => d.resends.push((e.seq, e.seq)),
            }
            resend = Some(i + 1);
        } else {
            bail!(
                "{sink}: seq {} arrived before seq {} (a gap or reordering; arrival {n})",
                e.seq,
                chain[next].seq
            );
        }
    }
    ensure!(
        next == chain.len(),
        "{sink}: events from seq {} on never arrived",
        chain.get(next).map_or(0, |e| e.seq)
    );
    Ok(d)
}

// ---- the load ------------------------------------------------------------------------

/// What the clients saw.
#[derive(Debug, Default)]
struct Tally {
    /// Statements answered with rows or with the policy's refusal (each one is audited).
    answered: AtomicU64,
    /// Statements that failed otherwise (only while the proxy shuts down).
    broken: AtomicU64,
}

async fn connect(addr: SocketAddr, database: &str) -> Result<Client> {
    let mut config = Config::new();
    config
        .host(addr.ip().to_string())
        .port(addr.port())
        .dbname(database)
        .user(ANALYST.0)
        .password(ANALYST.1)
        .ssl_mode(SslMode::Disable)
        .application_name("audit_faults")
        .connect_timeout(Duration::from_secs(10));
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// One statement of a varied mix: simple and extended protocol, classified columns
/// (masked), and now and then one the policy denies.
async fn statement(client: &Client, i: u64) -> Result<(), tokio_postgres::Error> {
    match i % 4 {
        0 => client
            .simple_query("SELECT count(*) FROM orders")
            .await
            .map(drop),
        1 => client
            .query(
                "SELECT id, status FROM orders WHERE id = $1",
                &[&i64::try_from(i).unwrap_or(0)],
            )
            .await
            .map(drop),
        2 => client
            .query("SELECT name, email FROM customers ORDER BY id LIMIT 3", &[])
            .await
            .map(drop),
        _ if i % 8 == 7 => client
            .simple_query("DELETE FROM orders WHERE id = 0")
            .await
            .map(drop),
        _ => client.simple_query("SELECT 1").await.map(drop),
    }
}

/// Runs `CLIENTS` clients of `per_client` statements each. With `until_broken`, a
/// client ends quietly when its connection breaks (the proxy is being stopped) or
/// `stop` fires; otherwise every statement must be answered.
fn start_load(
    addr: SocketAddr,
    database: &str,
    per_client: u64,
    until_broken: bool,
    stop: &CancellationToken,
    tally: &Arc<Tally>,
) -> Vec<JoinHandle<Result<()>>> {
    (0..CLIENTS as u64)
        .map(|c| {
            let database = database.to_owned();
            let stop = stop.clone();
            let tally = Arc::clone(tally);
            tokio::spawn(async move {
                let client = connect(addr, &database).await?;
                for i in 0..per_client {
                    if stop.is_cancelled() {
                        break;
                    }
                    match statement(&client, c * 1000 + i).await {
                        Ok(()) => {}
                        Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {}
                        Err(_) if until_broken => {
                            tally.broken.fetch_add(1, Ordering::SeqCst);
                            return Ok(());
                        }
                        Err(e) => bail!("statement {i} of client {c}: {e}"),
                    }
                    tally.answered.fetch_add(1, Ordering::SeqCst);
                }
                Ok(())
            })
        })
        .collect()
}

/// Waits (bounded) for the clients of a phase to finish.
async fn join_load(what: &str, load: Vec<JoinHandle<Result<()>>>) -> Result<()> {
    for task in load {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .with_context(|| format!("{what}: a client did not finish within 60 s"))???;
    }
    Ok(())
}

/// Waits (up to 30 s) until the clients have had `n` statements answered in all.
async fn wait_answered(what: &str, tally: &Tally, n: u64) -> Result<()> {
    let ok =
        portcullis_tests::eventually(30, || async { tally.answered.load(Ordering::SeqCst) >= n })
            .await;
    ensure!(
        ok,
        "{what}: only {} statements answered within 30 s (waited for {n})",
        tally.answered.load(Ordering::SeqCst)
    );
    Ok(())
}

fn spool_bytes(state: &Path, sink: &str) -> u64 {
    std::fs::metadata(state.join("spool").join(sink).join("spool.dat"))
        .map(|m| m.len())
        .unwrap_or(0)
}

// ---- the scenario --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_and_proxy_restarts_lose_nothing_and_keep_order() -> Result<()> {
    let started = Instant::now();
    let at = || format!("[{:.1} s]", started.elapsed().as_secs_f64());
    // Build the binary while the database starts.
    let bin = tokio::task::spawn_blocking(portcullis_bin);
    let mut env = TestEnv::start().await?;
    bin.await?;
    println!("{} database up", at());
    // This test runs the proxy as its own process; the harness's in-process one idles.
    env.stop_proxy().await;
    let work = tempfile::Builder::new()
        .prefix("portcullis-faults-")
        .tempdir()?;
    let dir = work.path();
    let trail = dir.join("audit.jsonl");
    let state = dir.join("state");

    std::fs::create_dir_all(dir.join("rsyslog"))?;
    let mut rsyslog = Rsyslog::configure(&dir.join("rsyslog"), free_port())?;
    rsyslog.start()?;
    let mut nats = NatsServer::new(&dir.join("nats-store"), free_port())?;
    nats.start()?;

    let audit = format!(
        r#"
[audit]
instance = "{INSTANCE}"
state_dir = "{state}"
shutdown_timeout_ms = 5000

[[audit.sinks]]
name = "local"
kind = "file"
format = "json"
flush_ms = 20
[audit.sinks.file]
path = "{trail}"

[[audit.sinks]]
name = "siem"
kind = "syslog"
format = "syslog"
batch_max = 32
flush_ms = 20
[audit.sinks.syslog]
address = "{syslog}"

[[audit.sinks]]
name = "bus"
kind = "nats"
format = "json"
batch_max = 32
flush_ms = 20
[audit.sinks.nats]
url = "{nats}"
subject = "{SUBJECT}"
stream = "{STREAM}"
connect_timeout_ms = 1000
ack_timeout_ms = 3000
"#,
        state = state.display(),
        trail = trail.display(),
        syslog = rsyslog.address(),
        nats = nats.url(),
    );
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let config = dir.join("portcullis.toml");
    write_config(&env, addr, &audit, &config)?;
    let mut proxy = ProxyProcess::new(&config, addr, &dir.join("portcullis.log"));
    proxy.start().await?;
    println!("{} receivers and proxy up", at());

    let tally = Arc::new(Tally::default());
    let never = CancellationToken::new();

    // A: everything up.
    join_load(
        "A",
        start_load(addr, &env.database, 50, false, &never, &tally),
    )
    .await?;
    let a = wait_delivered(
        "A, all up",
        Duration::from_secs(20),
        &trail,
        &rsyslog,
        &nats,
    )
    .await?;
    println!("{} A: {} events delivered everywhere", at(), a.chain.len());

    // rsyslog dies between batches (see the module docs); the load goes on.
    rsyslog.kill();
    let stop = CancellationToken::new();
    let base = tally.answered.load(Ordering::SeqCst);
    let b = start_load(addr, &env.database, 10_000, true, &stop, &tally);
    wait_answered("B", &tally, base + 60).await?;
    // nats-server dies in the middle of the load.
    nats.kill();
    wait_answered("B", &tally, base + 150).await?;
    // SIGTERM with both receivers down and clients busy.
    let status = proxy.terminate(Duration::from_secs(30)).await?;
    stop.cancel();
    join_load("B", b).await?;
    ensure!(
        status.success(),
        "portcullis exited with {status}:\n{}",
        proxy.log_text()
    );
    let first_run = read_chain(&trail)?;
    let (siem_spool, bus_spool) = (spool_bytes(&state, "siem"), spool_bytes(&state, "bus"));
    println!(
        "{} B: proxy stopped after {} events; spooled: siem {siem_spool} bytes, bus {bus_spool} bytes",
        at(),
        first_run.len()
    );
    ensure!(
        siem_spool > 0 && bus_spool > 0,
        "both sinks should hold spooled events across the restart (siem {siem_spool}, bus {bus_spool})"
    );

    // C: the proxy again, same config and state, receivers still down.
    proxy.start().await?;
    join_load(
        "C",
        start_load(addr, &env.database, 40, false, &never, &tally),
    )
    .await?;
    println!("{} C: done, receivers still down", at());

    // D: the receivers come back in the middle of the load.
    let base = tally.answered.load(Ordering::SeqCst);
    let d = start_load(addr, &env.database, 60, false, &never, &tally);
    wait_answered("D", &tally, base + 60).await?;
    rsyslog.start()?;
    nats.start()?;
    join_load("D", d).await?;
    println!("{} D: done, receivers back", at());

    // E: a few more.
    let e = start_load(addr, &env.database, 5, false, &never, &tally);
    join_load("E", e).await?;
    wait_delivered(
        "after the receivers came back",
        Duration::from_secs(45),
        &trail,
        &rsyslog,
        &nats,
    )
    .await?;
    println!("{} E: everything delivered", at());

    // Stop the proxy so that the chain is final, then look at everything.
    let status = proxy.terminate(Duration::from_secs(30)).await?;
    ensure!(status.success(), "portcullis exited with {status}");
    let end = wait_delivered("final", Duration::from_secs(20), &trail, &rsyslog, &nats).await?;
    let chain = &end.chain;
    println!("{} proxy stopped; checking", at());

    // The chain: intact across the restart, and it holds every answered statement.
    let report = portcullis_tests::portcullis_audit::verify::verify(
        [std::io::BufReader::new(std::fs::File::open(&trail)?)],
        None,
    );
    ensure!(report.is_ok(), "the chain does not verify:\n{report}");
    let summary = report
        .instances
        .get(INSTANCE)
        .context("no event of the instance")?;
    ensure!(
        report.instances.len() == 1
            && summary.first_seq == 1
            && summary.last_seq == chain.len() as u64
            && summary.events == chain.len() as u64,
        "one chain from seq 1 without gaps expected:\n{report}"
    );
    ensure!(
        chain.len() > first_run.len()
            && chain[..first_run.len()]
                .iter()
                .zip(&first_run)
                .all(|(a, b)| a.id == b.id),
        "the second run continues the first run's chain"
    );
    let cli = tokio::process::Command::new(portcullis_bin())
        .args(["audit", "verify"])
        .arg(&trail)
        .output()
        .await?;
    ensure!(
        cli.status.success(),
        "portcullis audit verify: {}{}",
        String::from_utf8_lossy(&cli.stdout),
        String::from_utf8_lossy(&cli.stderr)
    );
    ensure!(
        !chain.iter().any(|e| e.kind == "audit_loss"),
        "the pipeline reported lost events"
    );
    let statements = chain.iter().filter(|e| e.kind == "statement").count() as u64;
    let answered = tally.answered.load(Ordering::SeqCst);
    ensure!(
        statements >= answered,
        "{answered} statements were answered but only {statements} are in the chain"
    );

    // The receivers: everything, in chain order, duplicates only as re-sends.
    let syslog = check_delivery("rsyslog", chain, &end.syslog)?;
    let bus = check_delivery("NATS", chain, &end.nats)?;
    ensure!(
        bus.duplicates == 0,
        "JetStream should have dropped re-sent messages by Nats-Msg-Id: {bus:?}"
    );
    ensure!(
        spool_bytes(&state, "siem") == 0 && spool_bytes(&state, "bus") == 0,
        "spools drained"
    );

    println!(
        "chain: {} events ({} in the first run, seq {} and on in the second), {} statement \
         events for {answered} answered statements ({} broken by the shutdown)",
        chain.len(),
        first_run.len(),
        first_run.len() + 1,
        statements,
        tally.broken.load(Ordering::SeqCst),
    );
    for (name, d) in [("rsyslog", &syslog), ("NATS", &bus)] {
        println!(
            "{name}: {} arrivals, {} duplicates in {} re-sends {:?}",
            d.arrivals,
            d.duplicates,
            d.resends.len(),
            d.resends
        );
    }
    // The faults did hit both sinks (and were recovered from, as shown above).
    let log = proxy.log_text();
    for sink in ["siem", "bus"] {
        let failures = log
            .lines()
            .filter(|l| l.contains("audit sink failed") && l.contains(&format!("sink={sink} ")))
            .count();
        println!("{sink}: {failures} failed sends logged by the proxy");
        ensure!(failures > 0, "the proxy never saw sink {sink} fail:\n{log}");
    }
    println!("took {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The delivery check itself: what it accepts and what it refuses.
#[test]
fn delivery_check_accepts_resends_and_refuses_gaps_reorders_and_strangers() {
    let chain: Vec<Event> = (1..=6)
        .map(|seq| Event {
            seq,
            id: format!("id{seq}"),
            hash: format!("h{seq}"),
            kind: "statement".into(),
        })
        .collect();
    let got = |seqs: &[u64]| -> Vec<Arrival> {
        seqs.iter()
            .map(|&seq| Arrival {
                instance: INSTANCE.into(),
                seq,
                id: format!("id{seq}"),
                hash: format!("h{seq}"),
            })
            .collect()
    };
    let d = check_delivery("t", &chain, &got(&[1, 2, 3, 4, 5, 6])).unwrap();
    assert_eq!((d.duplicates, d.resends.len()), (0, 0));
    // A batch 3..=4 half arrived, then was re-sent whole; an interrupted re-send is
    // started again.
    let d = check_delivery("t", &chain, &got(&[1, 2, 3, 4, 3, 4, 5, 3, 4, 5, 6])).unwrap();
    assert_eq!(d.duplicates, 5);
    assert_eq!(d.resends, vec![(3, 4), (3, 5)]);
    for (bad, why) in [
        (&[1, 2, 4, 3, 5, 6][..], "arrived before"),
        (&[1, 2, 3, 5, 6][..], "arrived before"),
        (&[1, 2, 3, 4, 5][..], "never arrived"),
        (&[1, 2, 3, 4, 2, 5, 6][..], "in the middle of a re-send"),
        (&[1, 2, 3, 4, 5, 6, 7][..], "not in the chain"),
    ] {
        let e = check_delivery("t", &chain, &got(bad)).unwrap_err();
        assert!(e.to_string().contains(why), "{bad:?}: {e}");
    }
    let mut forged = got(&[1, 2, 3, 4, 5, 6]);
    forged[2].hash = "other".into();
    assert!(check_delivery("t", &chain, &forged).is_err());
}
