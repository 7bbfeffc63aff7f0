//! Real audit receivers started by a test: an rsyslogd and a nats-server with
//! JetStream, each on its own free port with its own files in a directory the test
//! owns (never the machine's services), killed hard on demand and on drop.
//!
//! Missing programs fail the test with the package to install (`.ci/run` installs
//! `rsyslog`, `rsyslog-gnutls` and `nats-server`): a receiver test that skips itself
//! silently proves nothing.

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};

#[path = "../../audit/tests/support/rsyslog.rs"]
mod rsyslog;

/// Where Debian puts rsyslogd.
pub const RSYSLOGD: &str = "/usr/sbin/rsyslogd";
/// Where Debian puts nats-server.
pub const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free port on 127.0.0.1")
}

/// Waits (up to `limit`) until 127.0.0.1:`port` accepts, while `child` runs.
fn wait_listening(child: &mut Child, port: u16, limit: Duration, what: &str) -> Result<()> {
    let deadline = Instant::now() + limit;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited with {status} before listening on {port}");
        }
        if Instant::now() > deadline {
            bail!("{what} did not listen on {port} within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// SIGKILL and reap.
fn kill_child(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// An rsyslogd receiving syslog over plain TCP (`imtcp`, which reads RFC 6587
/// octet-counted framing) and writing every message, as received (`%rawmsg%`), as one
/// line of `received.log` in its directory.
pub struct Rsyslog {
    child: Option<Child>,
    conf: PathBuf,
    dir: PathBuf,
    port: u16,
}

impl Rsyslog {
    /// Writes the configuration for a receiver on `port` with its files in `dir`;
    /// [`Rsyslog::start`] starts it.
    pub fn configure(dir: &Path, port: u16) -> Result<Rsyslog> {
        if !Path::new(RSYSLOGD).exists() {
            bail!("{RSYSLOGD} is not installed: apt-get install -y rsyslog rsyslog-gnutls");
        }
        fs::create_dir_all(rsyslog::work_dir(dir))?;
        let conf = rsyslog::config(dir, port, None);
        let path = dir.join("rsyslog.conf");
        fs::write(&path, conf)?;
        Ok(Rsyslog {
            child: None,
            conf: path,
            dir: dir.to_path_buf(),
            port,
        })
    }

    /// `127.0.0.1:port`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts rsyslogd in the foreground (`-n`) and waits until it listens.
    pub fn start(&mut self) -> Result<()> {
        kill_child(&mut self.child);
        let _ = fs::remove_file(self.dir.join("pid"));
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("rsyslogd.stderr"))?;
        let mut child = Command::new(RSYSLOGD)
            .arg("-n")
            .arg("-f")
            .arg(&self.conf)
            .arg("-i")
            .arg(self.dir.join("pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start rsyslogd")?;
        let up = wait_listening(&mut child, self.port, Duration::from_secs(10), "rsyslogd");
        self.child = Some(child);
        up.with_context(|| self.stderr())
    }

    /// SIGKILL: whatever rsyslogd had read but not written is gone with it.
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    /// What rsyslogd printed.
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.join("rsyslogd.stderr")).unwrap_or_default()
    }

    /// The messages received so far, one per line, in the order they were written.
    /// A last line without its newline (a write in progress) is left out.
    pub fn received(&self) -> Vec<String> {
        let text = fs::read_to_string(rsyslog::received_log(&self.dir)).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A nats-server with JetStream (file storage in a store directory that outlives
/// restarts), listening on 127.0.0.1 only.
pub struct NatsServer {
    child: Option<Child>,
    store: PathBuf,
    port: u16,
    log: PathBuf,
}

impl NatsServer {
    /// A server on `port` keeping its JetStream store in `store`; not started yet.
    pub fn new(store: &Path, port: u16) -> Result<NatsServer> {
        if !Path::new(NATS_SERVER).exists() {
            bail!("{NATS_SERVER} is not installed: apt-get install -y nats-server");
        }
        fs::create_dir_all(store)?;
        Ok(NatsServer {
            child: None,
            store: store.to_path_buf(),
            port,
            log: store.with_extension("log"),
        })
    }

    /// `nats://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (with `extra` arguments) and waits until it accepts.
    pub fn start_with(&mut self, extra: &[&str]) -> Result<()> {
        kill_child(&mut self.child);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut child = Command::new(NATS_SERVER)
            .args(extra)
            .arg("-js")
            .arg("-sd")
            .arg(&self.store)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start nats-server")?;
        let up = wait_listening(
            &mut child,
            self.port,
            Duration::from_secs(15),
            "nats-server",
        );
        self.child = Some(child);
        up.with_context(|| self.stderr())
    }

    /// Starts the server and waits until it accepts.
    pub fn start(&mut self) -> Result<()> {
        self.start_with(&[])
    }

    /// SIGKILL: acknowledged messages are in the store's files, the rest is gone.
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    /// What the server logged.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every message of `stream`, oldest first.
    pub async fn stream_messages(&self, stream: &str) -> Result<Vec<StreamMessage>> {
        JetStreamReader::connect(self.port)
            .await?
            .messages(stream)
            .await
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One message read back from a JetStream stream.
#[derive(Debug, Clone)]
pub struct StreamMessage {
    /// Stream sequence number.
    pub seq: u64,
    /// Subject it was published to.
    pub subject: String,
    /// Payload.
    pub data: Vec<u8>,
    /// Its `Nats-Msg-Id` header, if any.
    pub msg_id: Option<String>,
}

/// Just enough of a NATS client to read a stream through the JetStream API.
struct JetStreamReader {
    io: BufStream<tokio::net::TcpStream>,
    next: u64,
}

impl JetStreamReader {
    const TIMEOUT: Duration = Duration::from_secs(15);

    async fn connect(port: u16) -> Result<JetStreamReader> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let mut c = JetStreamReader {
            io: BufStream::new(tcp),
            next: 0,
        };
        let info = c.line().await?;
        if !info.starts_with("INFO ") {
            bail!("not a NATS server: {info}");
        }
        c.write(
            b"CONNECT {\"verbose\":false,\"headers\":true,\"no_responders\":true}\r\n\
              PING\r\nSUB _INBOX.reader.> 1\r\n",
        )
        .await?;
        while c.line().await? != "PONG" {}
        Ok(c)
    }

    async fn write(&mut self, b: &[u8]) -> Result<()> {
        self.io.write_all(b).await?;
        self.io.flush().await?;
        Ok(())
    }

    async fn line(&mut self) -> Result<String> {
        let mut s = String::new();
        let n = tokio::time::timeout(Self::TIMEOUT, self.io.read_line(&mut s))
            .await
            .context("NATS server went quiet")??;
        if n == 0 {
            bail!("NATS server closed the connection");
        }
        Ok(s.trim_end().to_owned())
    }

    /// A JetStream API request; retries "no responders" while JetStream starts.
    async fn request(&mut self, subject: &str, payload: &Value) -> Result<Value> {
        let payload = payload.to_string();
        let deadline = Instant::now() + Self::TIMEOUT;
        loop {
            self.next += 1;
            let reply = format!("_INBOX.reader.{}", self.next);
            self.write(
                format!("PUB {subject} {reply} {}\r\n{payload}\r\n", payload.len()).as_bytes(),
            )
            .await?;
            let answer = loop {
                let line = self.line().await?;
                let parts: Vec<&str> = line.split_whitespace().collect();
                match parts.first().copied() {
                    Some("PING") => self.write(b"PONG\r\n").await?,
                    Some("MSG" | "HMSG") => {
                        let n = parts.len();
                        let total: usize = parts[n - 1].parse()?;
                        let hdr: usize = if parts[0] == "HMSG" {
                            parts[n - 2].parse()?
                        } else {
                            0
                        };
                        let mut buf = vec![0; total + 2];
                        self.io.read_exact(&mut buf).await?;
                        if parts.get(1) != Some(&reply.as_str()) {
                            continue;
                        }
                        if buf.starts_with(b"NATS/1.0 503") {
                            break None;
                        }
                        break Some(serde_json::from_slice::<Value>(&buf[hdr..total])?);
                    }
                    Some("-ERR") => bail!("NATS: {line}"),
                    _ => {}
                }
            };
            match answer {
                Some(v) => return Ok(v),
                None if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                None => bail!("JetStream did not answer {subject}"),
            }
        }
    }

    async fn messages(&mut self, stream: &str) -> Result<Vec<StreamMessage>> {
        let info = self
            .request(&format!("$JS.API.STREAM.INFO.{stream}"), &json!({}))
            .await?;
        if let Some(e) = info.get("error") {
            bail!("stream {stream}: {e}");
        }
        let state = &info["state"];
        let (Some(first), Some(last)) = (state["first_seq"].as_u64(), state["last_seq"].as_u64())
        else {
            bail!("stream {stream}: no state in {info}");
        };
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut out = Vec::new();
        for seq in first..=last {
            let m = self
                .request(
                    &format!("$JS.API.STREAM.MSG.GET.{stream}"),
                    &json!({ "seq": seq }),
                )
                .await?;
            let msg = &m["message"];
            if msg.is_null() {
                // Deleted messages leave holes in the sequence.
                continue;
            }
            let data = b64.decode(msg["data"].as_str().unwrap_or_default())?;
            let headers = match msg["hdrs"].as_str() {
                Some(h) => String::from_utf8(b64.decode(h)?)?,
                None => String::new(),
            };
            out.push(StreamMessage {
                seq,
                subject: msg["subject"].as_str().unwrap_or_default().to_owned(),
                data,
                msg_id: headers
                    .lines()
                    .find_map(|l| l.strip_prefix("Nats-Msg-Id: "))
                    .map(str::to_owned),
            });
        }
        Ok(out)
    }
}
