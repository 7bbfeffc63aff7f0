//! One client session, from accepted socket to goodbye.
//!
//! [`run`] is the whole life in order: negotiate TLS and read the startup packet,
//! authenticate the client against the proxy's user store, open the upstream session,
//! apply native row-level-security settings to it, greet the client, then relay until
//! either side ends. Each step is a function in
//! this module's children.

mod audit;
mod auth;
mod handshake;
mod native;
mod relay;
mod startup;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{Instrument, info, info_span, warn};

use crate::pg::error::sqlstate;
use crate::pg::messages::DecodeError;
use crate::pg::{FrameError, PgError};
use crate::server::Shared;
use crate::stream::Stream;
use crate::upstream::UpstreamError;

pub use handshake::TlsInfo;

/// Why a session ended early. Each variant knows what, if anything, the client is told.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The client must be told this and the connection closed.
    #[error("{}: {}", .0.code, .0.message)]
    Client(PgError),
    /// Nothing can be sent (TLS failed, client vanished); just close.
    #[error("{0}")]
    Silent(String),
    /// The upstream could not be used.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

impl From<FrameError> for SessionError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Io(e) => Self::Silent(e.to_string()),
            FrameError::Truncated => Self::Silent(e.to_string()),
            FrameError::TooLarge { .. } | FrameError::InvalidLength(_) => Self::Client(
                PgError::fatal(sqlstate::PROTOCOL_VIOLATION, format!("portcullis: {e}")),
            ),
        }
    }
}

/// A message body the proxy cannot read ends the session with 08P01 (invalid UTF-8 in a
/// statement's text is answered earlier, with ERROR 22021, by the relay).
impl From<DecodeError> for SessionError {
    fn from(e: DecodeError) -> Self {
        Self::Client(PgError::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            format!("portcullis: {e}"),
        ))
    }
}

impl From<std::io::Error> for SessionError {
    fn from(e: std::io::Error) -> Self {
        Self::Silent(e.to_string())
    }
}

/// Runs one client connection to its end. Never panics on client input; every error
/// is logged and, where the protocol allows, reported to the client.
pub async fn run(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr) {
    let span = info_span!("session", %peer, user = tracing::field::Empty);
    async move {
        let _active = ActiveSession::new(&shared.metrics);
        let _ = tcp.set_nodelay(true);
        let (mut client, result) = establish_and_relay(&shared, tcp, peer).await;
        if let Err(err) = result {
            report(&shared, client.as_mut(), &err).await;
        }
        if let Some(client) = client.as_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(2), client.shutdown()).await;
        }
    }
    .instrument(span)
    .await;
}

/// The session's steps. Returns the client stream (if it got that far) so the caller
/// can report an error on it.
async fn establish_and_relay(
    shared: &Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
) -> (Option<Stream>, Result<(), SessionError>) {
    let startup_timeout = Duration::from_secs(shared.limits.startup_timeout_secs);
    let negotiated =
        match tokio::time::timeout(startup_timeout, handshake::negotiate(shared, tcp)).await {
            Ok(Ok(Some(n))) => n,
            Ok(Ok(None)) => return (None, Ok(())), // a CancelRequest, handled
            Ok(Err((client, e))) => return (client, Err(e)),
            Err(_) => return (None, Err(SessionError::Silent("startup timed out".into()))),
        };
    let handshake::Negotiated {
        mut client,
        params,
        tls,
    } = negotiated;

    let authenticated = tokio::time::timeout(
        startup_timeout,
        auth::authenticate(shared, &mut client, &params, tls.as_ref(), peer),
    )
    .await;
    let identity = match authenticated {
        Ok(Ok(identity)) => identity,
        Ok(Err(e)) => return (Some(client), Err(e)),
        Err(_) => {
            let e = PgError::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                "portcullis: authentication timed out",
            );
            return (Some(client), Err(SessionError::Client(e)));
        }
    };
    tracing::Span::current().record("user", identity.identity.user.as_str());

    let upstream = match startup::connect_upstream(shared, &identity, &params).await {
        Ok(u) => u,
        Err(e) => return (Some(client), Err(e)),
    };
    let (mut upstream, cancel_target) = upstream;
    // Before the client's first statement: the settings the database's own row-level
    // security reads for this identity.
    let native = match native::apply(shared, &identity.identity, &mut upstream).await {
        Ok(applied) => applied,
        Err(e) => return (Some(client), Err(e)),
    };
    let registration = shared.cancels.register(cancel_target.clone());
    info!(upstream_pid = upstream.backend_key.0, "session established");

    let mut greeting = BytesMut::new();
    startup::greeting(&upstream, &registration, &mut greeting);
    if let Err(e) = client.write_all(&greeting).await {
        return (Some(client), Err(e.into()));
    }
    if let Err(e) = client.flush().await {
        return (Some(client), Err(e.into()));
    }

    let session_id = format!("{:08x}", registration.pid);
    let ctx = audit::SessionContext {
        session_id: &session_id,
        peer,
        tls: tls.as_ref(),
        database: params.params.get("database").map(String::as_str),
        application_name: params.params.get("application_name").map(String::as_str),
    };
    let mut session_audit = shared.audit.clone().map(|auditor| {
        let audit = audit::SessionAudit::new(auditor, &ctx, &identity.identity);
        audit.emit(audit::login_event(
            &ctx,
            &identity.identity.user,
            true,
            None,
        ));
        audit
    });
    let result = relay::relay(
        shared,
        &mut client,
        upstream,
        &identity,
        &cancel_target,
        native,
        session_audit.as_mut(),
    )
    .await;
    if let Some(audit) = &session_audit {
        audit.emit(audit.end_event());
    }
    drop(registration);
    (Some(client), result)
}

/// Counts the session in `active_sessions` for exactly as long as it lives, however
/// it ends.
struct ActiveSession<'a>(&'a crate::metrics::Metrics);

impl<'a> ActiveSession<'a> {
    fn new(metrics: &'a crate::metrics::Metrics) -> Self {
        metrics.active_sessions.inc();
        Self(metrics)
    }
}

impl Drop for ActiveSession<'_> {
    fn drop(&mut self) {
        self.0.active_sessions.dec();
    }
}

/// Logs the error and tells the client what it may know.
async fn report(shared: &Shared, client: Option<&mut Stream>, err: &SessionError) {
    let pg = match err {
        SessionError::Client(pg) => Some(pg.clone()),
        SessionError::Silent(msg) => {
            info!(reason = %msg, "session closed");
            None
        }
        SessionError::Upstream(e) => {
            let kind = match e {
                UpstreamError::Connect { .. } | UpstreamError::Timeout(_) => "connect",
                UpstreamError::Tls(_) => "tls",
                UpstreamError::Refused { .. } => "refused",
                UpstreamError::Auth(_) => "auth",
                UpstreamError::Protocol(_) => "protocol",
                UpstreamError::Io(_) => "io",
            };
            shared.metrics.upstream_error(kind);
            warn!(error = %e, "upstream unavailable");
            Some(e.client_error())
        }
    };
    if let (Some(pg), Some(client)) = (pg, client) {
        if let SessionError::Client(_) = err {
            info!(code = pg.code, message = %pg.message, "session refused");
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = client.write_all(&pg.to_bytes()).await;
            let _ = client.flush().await;
        })
        .await;
    }
}
