//! Transport negotiation: SSLRequest, GSSENCRequest, direct TLS, CancelRequest, and
//! the StartupMessage that follows.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{debug, info};

use super::SessionError;
use crate::pg::PgError;
use crate::pg::error::sqlstate;
use crate::pg::startup::{
    FirstPacket, StartupError, StartupParams, TLS_HANDSHAKE_RECORD, read_first_packet,
};
use crate::server::Shared;
use crate::stream::Stream;
use crate::tls::{ALPN_POSTGRESQL, certificate_subject};

/// What TLS the client negotiated.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// DER of the certificate the proxy presented (for SCRAM channel binding).
    pub server_cert: Arc<[u8]>,
    /// Negotiated protocol version, e.g. `TLSv1_3`.
    pub version: String,
    /// Negotiated cipher suite.
    pub cipher: String,
    /// Subject of the verified client certificate, when mTLS is on.
    pub client_subject: Option<String>,
}

/// A client that has said who it is.
pub struct Negotiated {
    /// The (possibly encrypted) connection.
    pub client: Stream,
    /// Its StartupMessage.
    pub params: StartupParams,
    /// TLS details, if encrypted.
    pub tls: Option<TlsInfo>,
}

type Failed = (Option<Stream>, SessionError);

fn startup_error(e: StartupError) -> SessionError {
    match e {
        StartupError::Closed => {
            SessionError::Silent("client closed the connection during startup".into())
        }
        StartupError::Io(e) => SessionError::Silent(e.to_string()),
        e @ StartupError::UnsupportedProtocol { .. } => SessionError::Client(PgError::fatal(
            sqlstate::FEATURE_NOT_SUPPORTED,
            e.to_string(),
        )),
        other => SessionError::Client(PgError::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            other.to_string(),
        )),
    }
}

/// Runs the connection until a StartupMessage arrives. `Ok(None)` means the
/// connection was a CancelRequest and has been dealt with.
pub async fn negotiate(shared: &Shared, tcp: TcpStream) -> Result<Option<Negotiated>, Failed> {
    let mut first_byte = [0u8; 1];
    match tcp.peek(&mut first_byte).await {
        Ok(0) => {
            return Err((
                None,
                SessionError::Silent("client closed before sending anything".into()),
            ));
        }
        Ok(_) => {}
        Err(e) => return Err((None, e.into())),
    }
    if first_byte[0] == TLS_HANDSHAKE_RECORD {
        // Direct TLS (libpq 17+ `sslnegotiation=direct`): no SSLRequest, and ALPN
        // `postgresql` is mandatory so that other protocols cannot be smuggled in.
        let (stream, info) = accept_tls(shared, tcp, true).await.map_err(|e| (None, e))?;
        return after_tls(shared, stream, info).await;
    }
    let mut plain = Stream::Plain(tcp);
    let mut gss_declined = false;
    loop {
        let packet = match read_first_packet(&mut plain).await {
            Ok(packet) => packet,
            // Not a PostgreSQL client (or gone): PostgreSQL answers nothing either.
            Err(
                e @ (StartupError::InvalidLength(_) | StartupError::Closed | StartupError::Io(_)),
            ) => {
                return Err((None, startup_error(e)));
            }
            Err(e) => return Err((Some(plain), startup_error(e))),
        };
        match packet {
            FirstPacket::SslRequest => {
                let Stream::Plain(mut tcp) = plain else {
                    return Err((
                        None,
                        SessionError::Silent("unreachable stream state".into()),
                    ));
                };
                if shared.tls.is_none() {
                    tcp.write_all(b"N").await.map_err(|e| (None, e.into()))?;
                    plain = Stream::Plain(tcp);
                    continue;
                }
                tcp.write_all(b"S").await.map_err(|e| (None, e.into()))?;
                let (stream, info) = accept_tls(shared, tcp, false)
                    .await
                    .map_err(|e| (None, e))?;
                return after_tls(shared, stream, info).await;
            }
            FirstPacket::GssEncRequest if !gss_declined => {
                gss_declined = true;
                plain.write_all(b"N").await.map_err(|e| (None, e.into()))?;
            }
            FirstPacket::GssEncRequest => {
                let e = PgError::fatal(sqlstate::PROTOCOL_VIOLATION, "duplicate GSSENCRequest");
                return Err((Some(plain), SessionError::Client(e)));
            }
            FirstPacket::Cancel { pid, secret } => {
                cancel(shared, pid, secret).await;
                return Ok(None);
            }
            FirstPacket::Startup(params) => {
                if shared.require_tls {
                    let e = PgError::fatal(
                        sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                        "portcullis: this proxy requires TLS; connect with sslmode=require or stronger",
                    );
                    return Err((Some(plain), SessionError::Client(e)));
                }
                return Ok(Some(Negotiated {
                    client: plain,
                    params,
                    tls: None,
                }));
            }
        }
    }
}

/// After TLS, the client sends its StartupMessage (or a CancelRequest) encrypted.
async fn after_tls(
    shared: &Shared,
    mut stream: Stream,
    info: TlsInfo,
) -> Result<Option<Negotiated>, Failed> {
    match read_first_packet(&mut stream).await {
        Ok(FirstPacket::Startup(params)) => Ok(Some(Negotiated {
            client: stream,
            params,
            tls: Some(info),
        })),
        Ok(FirstPacket::Cancel { pid, secret }) => {
            cancel(shared, pid, secret).await;
            Ok(None)
        }
        Ok(FirstPacket::SslRequest | FirstPacket::GssEncRequest) => {
            let e = PgError::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                "encryption request inside TLS",
            );
            Err((Some(stream), SessionError::Client(e)))
        }
        Err(e) => Err((Some(stream), startup_error(e))),
    }
}

async fn accept_tls(
    shared: &Shared,
    tcp: TcpStream,
    direct: bool,
) -> Result<(Stream, TlsInfo), SessionError> {
    let Some(tls) = &shared.tls else {
        return Err(SessionError::Silent(
            "direct TLS attempted but TLS is not configured".into(),
        ));
    };
    let state = tls.current();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&state.config));
    let stream = match acceptor.accept(tcp).await {
        Ok(s) => s,
        Err(e) => {
            shared
                .metrics
                .connections
                .get_or_create(&crate::metrics::Outcome {
                    outcome: "tls_failed",
                })
                .inc();
            info!(error = %e, "TLS handshake failed");
            return Err(SessionError::Silent(format!("TLS handshake failed: {e}")));
        }
    };
    let conn = stream.get_ref().1;
    if direct && conn.alpn_protocol() != Some(ALPN_POSTGRESQL) {
        return Err(SessionError::Silent(
            "direct TLS without ALPN \"postgresql\"".into(),
        ));
    }
    let info = TlsInfo {
        server_cert: Arc::clone(&state.cert_der),
        version: conn
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default(),
        cipher: conn
            .negotiated_cipher_suite()
            .map(|c| format!("{:?}", c.suite()))
            .unwrap_or_default(),
        client_subject: conn
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|c| certificate_subject(c.as_ref())),
    };
    debug!(version = %info.version, cipher = %info.cipher, direct, "TLS established");
    Ok((Stream::ServerTls(Box::new(stream)), info))
}

/// Forwards a CancelRequest to the right upstream backend, if the key matches.
/// The client never learns whether it did (as with PostgreSQL).
async fn cancel(shared: &Shared, pid: i32, secret: i32) {
    match shared.cancels.lookup(pid, secret) {
        Some(target) => {
            info!(pid, "forwarding cancel request");
            if let Err(e) = target.cancel().await {
                shared.metrics.upstream_error("cancel");
                info!(error = %e, "cancel request could not be forwarded");
            }
        }
        None => info!(pid, "cancel request with unknown key ignored"),
    }
}
