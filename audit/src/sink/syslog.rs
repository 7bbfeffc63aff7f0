//! The syslog sink: RFC 5424 messages over TCP (RFC 6587) or TLS (RFC 5425).
//!
//! Every record is framed by octet counting, `MSG-LEN SP SYSLOG-MSG`, with the
//! record's trailing newline removed (the length says where a message ends, so
//! messages may hold anything). A batch is written with one buffered write and
//! flushed.
//!
//! TLS uses rustls with the receiver's CA from a PEM file, TLS 1.2 or 1.3, and checks
//! the receiver's certificate against `server_name` (default: the host of `address`).
//! No client certificate is presented yet (TODO: mutual TLS, which RFC 5425 permits).
//!
//! # What "sent" means here
//!
//! Syslog over TCP has **no application-level acknowledgement**: `send` returning
//! `Ok` means the bytes were handed to the kernel (or to TLS and then the kernel), not
//! that the receiver stored them. To narrow the window in which a receiver that died
//! between batches swallows a batch, the sink checks before each write whether the
//! connection has been closed by the peer (a receiver never sends anything on this
//! stream, so readable means EOF or reset) and reconnects if so. A receiver that dies
//! *while* a batch is in flight, or after it read bytes it had not yet stored, can
//! still lose that batch; for end-to-end acknowledgement use RELP (TODO) or one of the
//! acknowledged sinks (HTTP, NATS JetStream). Any error drops the connection; the next
//! `send` reconnects.
//!
//! Errors are [`SinkError::Retryable`] (connect, handshake, write); a receiver has no
//! way to refuse a record over this protocol, so the sink never returns
//! [`SinkError::Refused`] and nothing it sends is dead-lettered.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::AuditError;
use crate::sink::{SendFuture, Sink, SinkError};

/// TLS settings (RFC 5425).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogTls {
    /// PEM file with the CA certificate(s) the receiver's certificate chains to.
    pub ca_file: PathBuf,
    /// Name to check the receiver's certificate against; default the host of the
    /// address.
    pub server_name: Option<String>,
}

/// Syslog sink settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogSinkConfig {
    /// `host:port` of the receiver.
    pub address: String,
    /// TLS, or plain TCP when `None`.
    pub tls: Option<SyslogTls>,
    /// Longest wait for a connection (and TLS handshake).
    pub connect_timeout: Duration,
    /// Longest wait for a batch to be written.
    pub write_timeout: Duration,
}

impl SyslogSinkConfig {
    /// Plain TCP to `address`, 5 s connect and 10 s write timeouts.
    pub fn tcp(address: impl Into<String>) -> Self {
        SyslogSinkConfig {
            address: address.into(),
            tls: None,
            connect_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
        }
    }
}

enum Conn {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => {
                s.write_all(buf).await?;
                s.flush().await
            }
            Conn::Tls(s) => {
                s.write_all(buf).await?;
                s.flush().await
            }
        }
    }

    /// Whether the receiver has closed (or reset) the connection. Never waits.
    async fn peer_closed(&mut self) -> bool {
        let mut buf = [0u8; 512];
        let read = async {
            match self {
                Conn::Tcp(s) => s.read(&mut buf).await,
                Conn::Tls(s) => s.read(&mut buf).await,
            }
        };
        // `timeout` polls the read once before looking at the (already expired) delay.
        match tokio::time::timeout(Duration::ZERO, read).await {
            Err(_) => false,
            Ok(Ok(0)) | Ok(Err(_)) => true,
            // A receiver has nothing to say on this stream; ignore whatever it said.
            Ok(Ok(_)) => false,
        }
    }
}

/// A syslog receiver over TCP or TLS.
pub struct SyslogSink {
    config: SyslogSinkConfig,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    conn: Option<Conn>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for SyslogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyslogSink")
            .field("config", &self.config)
            .field("connected", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

impl SyslogSink {
    /// A sink for `config`; loads the CA file now (and refuses an unreadable or empty
    /// one, or an invalid server name) but connects only on the first `send`.
    pub fn new(config: SyslogSinkConfig) -> Result<Self, AuditError> {
        let tls = match &config.tls {
            None => None,
            Some(t) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(&t.ca_file).map_err(|e| {
                    AuditError::Config(format!("syslog ca_file {}: {e}", t.ca_file.display()))
                })?;
                for cert in certs {
                    let cert = cert.map_err(|e| {
                        AuditError::Config(format!("syslog ca_file {}: {e}", t.ca_file.display()))
                    })?;
                    roots.add(cert).map_err(|e| {
                        AuditError::Config(format!("syslog ca_file {}: {e}", t.ca_file.display()))
                    })?;
                }
                if roots.is_empty() {
                    return Err(AuditError::Config(format!(
                        "syslog ca_file {} holds no certificate",
                        t.ca_file.display()
                    )));
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let client = rustls::ClientConfig::builder_with_provider(provider)
                    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                    .map_err(|e| AuditError::Config(format!("syslog TLS: {e}")))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                let name = t
                    .server_name
                    .clone()
                    .unwrap_or_else(|| host_of(&config.address).to_owned());
                let name = ServerName::try_from(name.clone()).map_err(|_| {
                    AuditError::Config(format!("syslog server_name {name:?} is not a valid name"))
                })?;
                Some((TlsConnector::from(Arc::new(client)), name))
            }
        };
        Ok(SyslogSink {
            config,
            tls,
            conn: None,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    async fn connect(&self) -> Result<Conn, SinkError> {
        let addr = &self.config.address;
        let connect = async {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            match &self.tls {
                None => Ok::<_, io::Error>(Conn::Tcp(tcp)),
                Some((connector, name)) => Ok(Conn::Tls(Box::new(
                    connector.connect(name.clone(), tcp).await?,
                ))),
            }
        };
        match tokio::time::timeout(self.config.connect_timeout, connect).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(SinkError::Retryable(format!("syslog connect {addr}: {e}"))),
            Err(_) => Err(SinkError::Retryable(format!(
                "syslog connect {addr}: timed out"
            ))),
        }
    }

    async fn send_batch(&mut self, records: &[Vec<u8>]) -> Result<(), SinkError> {
        self.buf.clear();
        for r in records {
            frame(r, &mut self.buf);
        }
        if let Some(conn) = &mut self.conn {
            if conn.peer_closed().await {
                tracing::info!(address = %self.config.address, "syslog receiver closed the connection; reconnecting");
                self.conn = None;
            }
        }
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => self.connect().await?,
        };
        match tokio::time::timeout(self.config.write_timeout, conn.write_all(&self.buf)).await {
            Ok(Ok(())) => {
                self.conn = Some(conn);
                Ok(())
            }
            Ok(Err(e)) => Err(SinkError::Retryable(format!(
                "syslog write {}: {e}",
                self.config.address
            ))),
            Err(_) => Err(SinkError::Retryable(format!(
                "syslog write {}: timed out",
                self.config.address
            ))),
        }
    }
}

impl Sink for SyslogSink {
    fn name(&self) -> &str {
        "syslog"
    }

    fn send<'a>(&'a mut self, records: &'a [Vec<u8>]) -> SendFuture<'a> {
        Box::pin(self.send_batch(records))
    }
}

/// Appends `record` (without one trailing newline) framed by octet counting.
pub fn frame(record: &[u8], out: &mut Vec<u8>) {
    let msg = record.strip_suffix(b"\n").unwrap_or(record);
    out.extend_from_slice(msg.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(msg);
}

/// The host part of `host:port` or `[v6]:port`.
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    #[test]
    fn frames_by_octet_count() {
        let mut out = Vec::new();
        frame(b"<134>1 - - - - - - h\xc3\xa9\n", &mut out);
        frame(b"x", &mut out);
        assert_eq!(out, b"22 <134>1 - - - - - - h\xc3\xa91 x".to_vec());
        assert_eq!(host_of("[::1]:6514"), "::1");
        assert_eq!(host_of("siem.example.com:6514"), "siem.example.com");
    }

    #[tokio::test]
    async fn writes_frames_and_reconnects_after_peer_close() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut sink = SyslogSink::new(SyslogSinkConfig::tcp(&addr)).unwrap();
        let recs = vec![b"a\n".to_vec(), b"bc\n".to_vec()];

        sink.send(&recs).await.unwrap();
        let (mut s1, _) = listener.accept().await.unwrap();
        let mut got = vec![0u8; 7];
        s1.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"1 a2 bc");
        drop(s1);
        tokio::time::sleep(Duration::from_millis(50)).await;

        // The receiver went away between batches: the sink notices and reconnects.
        sink.send(&recs[..1]).await.unwrap();
        let (mut s2, _) = listener.accept().await.unwrap();
        let mut got = vec![0u8; 3];
        s2.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"1 a");
    }

    #[tokio::test]
    async fn refusal_is_retryable_and_bad_ca_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let mut sink = SyslogSink::new(SyslogSinkConfig::tcp(&addr)).unwrap();
        assert!(matches!(
            sink.send(&[b"x\n".to_vec()]).await,
            Err(SinkError::Retryable(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a pem").unwrap();
        let cfg = SyslogSinkConfig {
            tls: Some(SyslogTls {
                ca_file: ca,
                server_name: None,
            }),
            ..SyslogSinkConfig::tcp(&addr)
        };
        assert!(SyslogSink::new(cfg).is_err());
    }
}
