//! The SASL exchange with the client: SCRAM-SHA-256, or SCRAM-SHA-256-PLUS bound to
//! the proxy's own certificate. No upstream connection exists until it succeeds.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use pgwire::messages::Message;
use pgwire::messages::startup::{Authentication, NegotiateProtocolVersion};
use portcullis_policy::Identity;
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt;
use tracing::warn;

use super::SessionError;
use super::handshake::TlsInfo;
use crate::auth::scram::{ScramError, ScramServer, try_tls_server_end_point};
use crate::metrics::Kind;
use crate::pg::error::sqlstate;
use crate::pg::messages::sasl;
use crate::pg::startup::StartupParams;
use crate::pg::{Framer, PgError, RawMessage};
use crate::server::Shared;
use crate::stream::Stream;

/// SASL messages are small; anything bigger is an attack or a bug.
const MAX_SASL_MESSAGE: usize = 16 * 1024;

/// A client whose password the proxy has verified.
pub struct Authenticated {
    /// Who the policy sees.
    pub identity: Identity,
    /// The upstream role to log in as.
    pub upstream_user: Option<String>,
}

/// Authenticates the client named in `params`.
pub async fn authenticate(
    shared: &Shared,
    client: &mut Stream,
    params: &StartupParams,
    tls: Option<&TlsInfo>,
    peer: SocketAddr,
) -> Result<Authenticated, SessionError> {
    let user = params
        .params
        .get("user")
        .filter(|u| !u.is_empty())
        .cloned()
        .ok_or_else(|| {
            SessionError::Client(PgError::fatal(
                sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                "no PostgreSQL user name specified in startup packet",
            ))
        })?;
    let store = shared.users.load();
    let record = store.get(&user).cloned();
    let binding = tls.and_then(|t| try_tls_server_end_point(&t.server_cert));
    let mut scram = ScramServer::new(&user, record.as_ref().map(|r| r.verifier.clone()), binding);

    let audit_failure = |reason: &str| {
        if let Some(auditor) = &shared.audit {
            let ctx = super::audit::SessionContext {
                session_id: "",
                peer,
                tls,
                database: params.params.get("database").map(String::as_str),
                application_name: params.params.get("application_name").map(String::as_str),
            };
            if auditor
                .emit(super::audit::login_event(&ctx, &user, false, Some(reason)))
                .is_err()
            {
                warn!("audit queue unavailable; the loss is counted");
            }
        }
    };
    let failed = |reason: &'static str, detail: String| {
        shared
            .metrics
            .auth_failures
            .get_or_create(&Kind { kind: reason })
            .inc();
        warn!(%user, %peer, reason, detail = %detail, "authentication failed");
        audit_failure(reason);
        SessionError::Client(PgError::fatal(
            sqlstate::INVALID_PASSWORD,
            format!("password authentication failed for user \"{user}\""),
        ))
    };
    let scram_failed = |e: ScramError| {
        if e.sqlstate() == sqlstate::INVALID_PASSWORD {
            let reason = if record.is_none() {
                "unknown_user"
            } else {
                "wrong_password"
            };
            failed(reason, e.to_string())
        } else {
            shared
                .metrics
                .auth_failures
                .get_or_create(&Kind { kind: "protocol" })
                .inc();
            warn!(%user, %peer, error = %e, "SASL exchange failed");
            SessionError::Client(PgError::fatal(e.sqlstate(), format!("portcullis: {e}")))
        }
    };

    negotiate_protocol(client, params).await?;
    let mut framer = Framer::new(MAX_SASL_MESSAGE);
    send(
        client,
        Authentication::SASL(scram.mechanisms().iter().map(|m| (*m).to_owned()).collect()),
    )
    .await?;

    let initial_msg = read_password_message(client, &mut framer).await?;
    let initial = sasl::decode_initial(initial_msg.body())?;
    let server_first = scram
        .client_first(initial.mechanism, initial.data)
        .map_err(scram_failed)?;
    send(
        client,
        Authentication::SASLContinue(Bytes::from(server_first)),
    )
    .await?;

    let response = read_password_message(client, &mut framer).await?;
    let server_final = scram
        .client_final(sasl::decode_response(response.body()))
        .map_err(scram_failed)?;

    // The password was right; only now may the client learn about the account's state.
    let record = record.ok_or_else(|| failed("unknown_user", "no record".into()))?;
    if record.is_expired(OffsetDateTime::now_utc()) {
        shared
            .metrics
            .auth_failures
            .get_or_create(&Kind { kind: "expired" })
            .inc();
        warn!(%user, %peer, "login refused: account expired");
        audit_failure("expired");
        return Err(SessionError::Client(PgError::fatal(
            sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            format!("portcullis: account \"{user}\" has expired"),
        )));
    }
    let mut out = BytesMut::new();
    encode(
        &Authentication::SASLFinal(Bytes::from(server_final)),
        &mut out,
    )?;
    encode(&Authentication::Ok, &mut out)?;
    client.write_all(&out).await?;

    let mut attributes: BTreeMap<String, String> = record.attributes.clone();
    // Built-in attributes are the proxy's own observations; they override any
    // attribute of the same name in the user store.
    attributes.insert("client_addr".into(), peer.ip().to_string());
    if let Some(database) = params.params.get("database") {
        attributes.insert("database".into(), database.clone());
    }
    // Time-of-day attributes are taken at login (UTC) and hold for the session.
    let now = time::OffsetDateTime::now_utc();
    attributes.insert("hour".into(), now.hour().to_string());
    attributes.insert(
        "weekday".into(),
        now.weekday().number_from_monday().to_string(),
    );
    if let Some(app) = params.params.get("application_name") {
        attributes.insert("application_name".into(), app.clone());
    }
    if let Some(subject) = tls.and_then(|t| t.client_subject.clone()) {
        attributes.insert("cert_subject".into(), subject);
    }
    Ok(Authenticated {
        identity: Identity {
            user: record.name.clone(),
            roles: record.roles.clone(),
            attributes,
        },
        upstream_user: record.upstream_user.clone(),
    })
}

/// A client asking for protocol 3.x with x > 0, or for `_pq_.` extensions, is told
/// that the proxy speaks 3.0 without extensions, as PostgreSQL 15 answers.
async fn negotiate_protocol(
    client: &mut Stream,
    params: &StartupParams,
) -> Result<(), SessionError> {
    let unsupported: Vec<String> = params
        .params
        .keys()
        .filter(|k| k.starts_with("_pq_."))
        .cloned()
        .collect();
    if params.minor == 0 && unsupported.is_empty() {
        return Ok(());
    }
    let mut out = BytesMut::new();
    // PostgreSQL sends the full version number (3 << 16 | 0), which every libpq accepts.
    NegotiateProtocolVersion::new(196_608, unsupported)
        .encode(&mut out)
        .map_err(|e| {
            SessionError::Silent(format!("could not encode NegotiateProtocolVersion: {e}"))
        })?;
    client.write_all(&out).await?;
    Ok(())
}

fn protocol(message: String) -> SessionError {
    SessionError::Client(PgError::fatal(sqlstate::PROTOCOL_VIOLATION, message))
}

fn encode(auth: &Authentication, out: &mut BytesMut) -> Result<(), SessionError> {
    auth.encode(out)
        .map_err(|e| SessionError::Silent(format!("could not encode authentication message: {e}")))
}

async fn send(client: &mut Stream, auth: Authentication) -> Result<(), SessionError> {
    let mut out = BytesMut::new();
    encode(&auth, &mut out)?;
    client.write_all(&out).await?;
    client.flush().await?;
    Ok(())
}

async fn read_password_message(
    client: &mut Stream,
    framer: &mut Framer,
) -> Result<RawMessage, SessionError> {
    let msg = framer
        .next(client)
        .await?
        .ok_or_else(|| SessionError::Silent("client left during authentication".into()))?;
    if msg.tag != b'p' {
        return Err(protocol(format!(
            "expected a password message, got message type {:?}",
            char::from(msg.tag)
        )));
    }
    Ok(msg)
}
