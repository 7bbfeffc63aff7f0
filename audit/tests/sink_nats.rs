//! The NATS JetStream sink against a real `nats-server`: delivery in order, retryable
//! failure while the server is down, and no duplicates after replays (JetStream
//! deduplicates by `Nats-Msg-Id`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use portcullis_audit::sink::nats::{NatsAuth, NatsSink, NatsSinkConfig};
use portcullis_audit::sink::{Sink, SinkError};
use portcullis_audit::{AuditEvent, EventKind, Format};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

const NATS_SERVER: &str = "/usr/sbin/nats-server";
const STREAM: &str = "AUDIT";
const SUBJECT: &str = "portcullis.audit";

/// A running `nats-server`, killed on drop.
struct Server(Child);

impl Server {
    fn start(store: &Path, port: u16) -> Server {
        Server::start_with(store, port, &[])
    }

    fn start_with(store: &Path, port: u16, extra: &[&str]) -> Server {
        let child = Command::new(NATS_SERVER)
            .args(extra)
            .arg("-js")
            .arg("-sd")
            .arg(store)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        let server = Server(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn records(range: std::ops::Range<usize>) -> Vec<Vec<u8>> {
    range
        .map(|i| {
            let e = AuditEvent::new(EventKind::Statement).with_detail(format!("event {i}"));
            let mut out = Vec::new();
            Format::Json.encode(&e, &mut out).unwrap();
            out
        })
        .collect()
}

/// Just enough of a NATS client to ask JetStream's API.
struct Client {
    io: BufStream<TcpStream>,
    next: u64,
}

impl Client {
    async fn connect(port: u16) -> Client {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut c = Client {
            io: BufStream::new(tcp),
            next: 0,
        };
        let info = c.line().await;
        assert!(info.starts_with("INFO "), "{info}");
        c.write(b"CONNECT {\"verbose\":false,\"headers\":true,\"no_responders\":true}\r\nPING\r\nSUB _INBOX.test.> 1\r\n")
            .await;
        loop {
            if c.line().await == "PONG" {
                break;
            }
        }
        c
    }

    async fn write(&mut self, b: &[u8]) {
        self.io.write_all(b).await.unwrap();
        self.io.flush().await.unwrap();
    }

    async fn line(&mut self) -> String {
        let mut s = String::new();
        self.io.read_line(&mut s).await.unwrap();
        s.trim_end().to_string()
    }

    /// Sends a request and returns the JSON answer (retrying "no responders" while
    /// JetStream starts).
    async fn request(&mut self, subject: &str, payload: &Value) -> Value {
        let payload = payload.to_string();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            self.next += 1;
            let reply = format!("_INBOX.test.{}", self.next);
            self.write(
                format!("PUB {subject} {reply} {}\r\n{payload}\r\n", payload.len()).as_bytes(),
            )
            .await;
            loop {
                let line = self.line().await;
                let parts: Vec<&str> = line.split_whitespace().collect();
                match parts.first().copied() {
                    Some("PING") => self.write(b"PONG\r\n").await,
                    Some("MSG") | Some("HMSG") => {
                        let (hdr, total) = if parts[0] == "HMSG" {
                            let n = parts.len();
                            (parts[n - 2].parse().unwrap(), parts[n - 1].parse().unwrap())
                        } else {
                            (0usize, parts[parts.len() - 1].parse::<usize>().unwrap())
                        };
                        let mut buf = vec![0; total + 2];
                        self.io.read_exact(&mut buf).await.unwrap();
                        if parts[1] != reply {
                            continue;
                        }
                        if buf.starts_with(b"NATS/1.0 503") {
                            break; // no responders yet: JetStream still starting
                        }
                        return serde_json::from_slice(&buf[hdr..total]).unwrap();
                    }
                    Some("-ERR") => panic!("{line}"),
                    _ => {}
                }
            }
            assert!(Instant::now() < deadline, "JetStream did not answer");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every message in the stream, in order, with its `Nats-Msg-Id`.
    async fn stream_contents(&mut self) -> Vec<(Vec<u8>, String)> {
        let info = self
            .request(&format!("$JS.API.STREAM.INFO.{STREAM}"), &json!({}))
            .await;
        let state = &info["state"];
        let first = state["first_seq"].as_u64().unwrap();
        let last = state["last_seq"].as_u64().unwrap();
        assert_eq!(state["messages"].as_u64().unwrap(), last + 1 - first);
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut out = Vec::new();
        for seq in first..=last {
            let m = self
                .request(
                    &format!("$JS.API.STREAM.MSG.GET.{STREAM}"),
                    &json!({ "seq": seq }),
                )
                .await;
            let msg = &m["message"];
            assert_eq!(msg["subject"], SUBJECT, "{m}");
            let data = b64.decode(msg["data"].as_str().unwrap()).unwrap();
            let hdrs =
                String::from_utf8(b64.decode(msg["hdrs"].as_str().unwrap()).unwrap()).unwrap();
            let id = hdrs
                .lines()
                .find_map(|l| l.strip_prefix("Nats-Msg-Id: "))
                .unwrap_or_default()
                .to_string();
            out.push((data, id));
        }
        out
    }
}

fn sink(port: u16) -> NatsSink {
    let mut config = NatsSinkConfig::new(format!("nats://127.0.0.1:{port}"), SUBJECT);
    config.stream = Some(STREAM.into());
    config.connect_timeout = Duration::from_secs(2);
    config.ack_timeout = Duration::from_secs(5);
    NatsSink::from_config(config).unwrap()
}

/// Sends until JetStream takes the batch (as the pipeline's retry would).
async fn send_until_ok(sink: &mut NatsSink, batch: &[Vec<u8>]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match sink.send(batch).await {
            Ok(()) => return,
            Err(SinkError::Retryable(e)) => {
                assert!(Instant::now() < deadline, "still failing: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("permanent: {e}"),
        }
    }
}

fn expected(batches: &[&[Vec<u8>]]) -> Vec<(Vec<u8>, String)> {
    batches
        .iter()
        .flat_map(|b| b.iter())
        .map(|r| {
            let v: Value = serde_json::from_slice(r).unwrap();
            (
                r.strip_suffix(b"\n").unwrap().to_vec(),
                v["id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn jetstream_delivery_outage_and_dedupe() {
    let store = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = Server::start(store.path(), port);
    let mut sink = sink(port);
    assert_eq!(sink.name(), "nats");

    let a = records(0..20);
    send_until_ok(&mut sink, &a).await;
    // A replay of the same batch (the pipeline retrying after a lost ack) is dropped by
    // JetStream's duplicate window.
    sink.send(&a).await.unwrap();
    let mut client = Client::connect(port).await;
    assert_eq!(client.stream_contents().await, expected(&[&a]));
    drop(client);

    // Server down: sends fail, retryably, both on the broken connection and on
    // reconnecting.
    drop(server);
    let b = records(20..30);
    for _ in 0..2 {
        let err = sink.send(&b).await.unwrap_err();
        assert!(matches!(err, SinkError::Retryable(_)), "{err:?}");
    }

    // Back up with the same store: replay A and B together, then C.
    let _server = Server::start(store.path(), port);
    let ab: Vec<Vec<u8>> = a.iter().chain(&b).cloned().collect();
    send_until_ok(&mut sink, &ab).await;
    let c = records(30..35);
    sink.send(&c).await.unwrap();

    let mut client = Client::connect(port).await;
    assert_eq!(client.stream_contents().await, expected(&[&a, &b, &c]));
}

#[tokio::test]
async fn missing_stream_is_retryable_without_creation() {
    let store = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = Server::start(store.path(), port);
    let mut config = NatsSinkConfig::new(format!("nats://127.0.0.1:{port}"), "nobody.listens");
    config.connect_timeout = Duration::from_secs(2);
    config.ack_timeout = Duration::from_secs(2);
    let mut sink = NatsSink::from_config(config).unwrap();
    let err = sink.send(&records(0..1)).await.unwrap_err();
    assert!(matches!(err, SinkError::Retryable(_)), "{err:?}");
}

#[tokio::test]
async fn token_auth() {
    // Tests cannot set variables (unsafe in edition 2024): use one cargo sets.
    let var = "CARGO_PKG_NAME";
    let token = std::env::var(var).unwrap();
    let store = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = Server::start_with(store.path(), port, &["--auth", &token]);
    let config = |env: &str| {
        let mut c = NatsSinkConfig::new(format!("nats://127.0.0.1:{port}"), SUBJECT);
        c.stream = Some(STREAM.into());
        c.auth = Some(NatsAuth::Token { env: env.into() });
        c
    };
    let mut sink = NatsSink::from_config(config(var)).unwrap();
    send_until_ok(&mut sink, &records(0..3)).await;

    let mut wrong = NatsSink::from_config(config("CARGO_MANIFEST_DIR")).unwrap();
    let err = wrong.send(&records(0..1)).await.unwrap_err();
    assert!(matches!(err, SinkError::Permanent(_)), "{err:?}");
    assert!(!err.to_string().contains(&token));
}
