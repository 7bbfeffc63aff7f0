//! Native row-level security: the settings the database's own policies read
//! (`current_setting('app.tenant')`), applied to the upstream session after it is
//! opened and before the client's first statement, and again whenever a reloaded
//! policy renders them differently (see [`Applied::refresh`]).
//!
//! They are set for the session (`set_config(name, value, false)`), not per statement
//! with `SET LOCAL`, and that is equivalent here: the upstream connection belongs to
//! this one client for its whole life (no pooling hands it to anyone else), and the
//! policy refuses every client statement that could change a protected setting (`SET`,
//! `RESET`, `RESET ALL`, `DISCARD ALL`, `set_config()` on it or with a computed name),
//! so the values stay what the policy rendered for this identity. Startup parameters
//! cannot carry them: the proxy refuses custom settings there.

use std::time::Duration;

use bytes::BytesMut;
use portcullis_policy::Identity;
use tokio::io::AsyncWriteExt;
use tracing::{debug, warn};

use super::SessionError;
use crate::pg::error::{field_text, sqlstate};
use crate::pg::messages::query;
use crate::pg::{Framer, PgError};
use crate::server::Shared;
use crate::upstream::{Upstream, UpstreamError};

/// Largest message accepted while the settings are applied (the answer is one short row).
const MAX_MESSAGE: usize = 64 * 1024;

/// The settings applied to one upstream session and the policy version they were
/// rendered from.
#[derive(Debug, Default)]
pub struct Applied {
    version: String,
    settings: Vec<(String, String)>,
}

impl Applied {
    /// After a policy reload: the statement that brings the upstream session's settings
    /// to what `policy` renders for `identity`, or `None` when nothing changed. Settings
    /// the new policy no longer renders are set to the empty string, so that no value
    /// of the old policy lingers. Fails (FATAL, the policy's 42501) when the policy
    /// cannot render them for this identity.
    ///
    /// The caller sends the statement only between transactions, so a transaction sees
    /// one policy's settings throughout, and `set_config(..., false)` cannot be undone
    /// by a rollback.
    pub fn refresh(
        &mut self,
        policy: &portcullis_policy::Policy,
        identity: &Identity,
    ) -> Result<Option<String>, SessionError> {
        if policy.version() == self.version {
            return Ok(None);
        }
        let settings = rendered(policy, identity)?;
        self.version = policy.version().to_owned();
        if settings == self.settings {
            return Ok(None);
        }
        let mut statement_settings = settings.clone();
        for (name, _) in &self.settings {
            if !settings.iter().any(|(new, _)| new == name) {
                statement_settings.push((name.clone(), String::new()));
            }
        }
        self.settings = settings;
        debug!(
            policy_version = %self.version,
            "the reloaded policy renders new native row-level security settings"
        );
        Ok(Some(statement(&statement_settings)))
    }
}

/// The identity's settings under `policy`, or the FATAL refusing the session.
fn rendered(
    policy: &portcullis_policy::Policy,
    identity: &Identity,
) -> Result<Vec<(String, String)>, SessionError> {
    policy
        .session_settings(identity)
        .map_err(|denial| SessionError::Client(PgError::fatal(denial.sqlstate, denial.message)))
}

/// Applies the identity's native row-level-security settings to `upstream`, if it has
/// any, and returns what it applied. Refuses the session with a FATAL when the policy
/// cannot render them (a missing attribute, conflicting rules: the policy's 42501) or
/// the server rejects them.
pub async fn apply(
    shared: &Shared,
    identity: &Identity,
    upstream: &mut Upstream,
) -> Result<Applied, SessionError> {
    let policy = shared.policy.load();
    let settings = rendered(&policy, identity)?;
    let applied = Applied {
        version: policy.version().to_owned(),
        settings,
    };
    if applied.settings.is_empty() {
        return Ok(applied);
    }
    let names: Vec<&str> = applied
        .settings
        .iter()
        .map(|(name, _)| name.as_str())
        .collect();
    debug!(settings = ?names, "applying native row-level security settings");
    let mut out = BytesMut::new();
    query::encode(&statement(&applied.settings), &mut out);
    let timeout = Duration::from_secs(shared.limits.startup_timeout_secs);
    let answer = tokio::time::timeout(timeout, async {
        upstream.stream.write_all(&out).await?;
        upstream.stream.flush().await?;
        read_answer(upstream).await
    })
    .await
    .map_err(|_| SessionError::Upstream(UpstreamError::Timeout(timeout)))??;
    match answer {
        None => Ok(applied),
        Some((code, message)) => {
            warn!(%code, %message, settings = ?names, "upstream refused the native row-level security settings");
            Err(refused())
        }
    }
}

/// What the client hears when the server refuses the settings.
pub fn refused() -> SessionError {
    SessionError::Client(
        PgError::fatal(
            sqlstate::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
            "portcullis: could not apply the session settings for native row-level security",
        )
        .with_hint("the proxy's log has the details"),
    )
}

/// `SELECT pg_catalog.set_config('name', 'value', false), ...`: names and values as
/// string literals with quotes doubled (the upstream session runs with
/// `standard_conforming_strings = on`, so backslashes are plain characters; the policy
/// refuses NUL bytes). Schema-qualified, so no `search_path` can substitute another
/// `set_config`.
fn statement(settings: &[(String, String)]) -> String {
    let literal = |text: &str| format!("'{}'", text.replace('\'', "''"));
    let calls: Vec<String> = settings
        .iter()
        .map(|(name, value)| {
            format!(
                "pg_catalog.set_config({}, {}, false)",
                literal(name),
                literal(value)
            )
        })
        .collect();
    format!("SELECT {}", calls.join(", "))
}

/// Reads the answer up to ReadyForQuery: `None` when it succeeded, else the server's
/// (SQLSTATE, message).
async fn read_answer(upstream: &mut Upstream) -> Result<Option<(String, String)>, SessionError> {
    let mut framer = Framer::with_buffer(std::mem::take(&mut upstream.leftover), MAX_MESSAGE);
    let mut error = None;
    loop {
        let msg = framer
            .next(&mut upstream.stream)
            .await
            .map_err(|e| SessionError::Upstream(UpstreamError::Protocol(e.to_string())))?
            .ok_or_else(|| {
                SessionError::Upstream(UpstreamError::Protocol(
                    "server closed the connection while the session settings were applied".into(),
                ))
            })?;
        match msg.tag {
            b'E' => {
                let body = msg.body();
                let text = |code| field_text(body, code);
                error = Some((text(b'C'), text(b'M')));
            }
            // A reported setting changed: the client's greeting carries the new value.
            b'S' => upstream.parameter_status.push(msg),
            b'Z' => break,
            // RowDescription, DataRow, CommandComplete, notices.
            _ => {}
        }
    }
    upstream.leftover = framer.into_buffer();
    Ok(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_names_and_values_as_literals() {
        let settings = vec![
            ("app.tenant".to_string(), "1'; RESET ALL; --".to_string()),
            ("app.who".to_string(), "o\\'brien".to_string()),
        ];
        assert_eq!(
            statement(&settings),
            "SELECT pg_catalog.set_config('app.tenant', '1''; RESET ALL; --', false), \
             pg_catalog.set_config('app.who', 'o\\''brien', false)"
        );
    }
}
