//! Opening the upstream session for an authenticated client and greeting the client.
//!
//! Startup parameters are settings the server applies before any statement, so they
//! are policy too: `options=-c role=postgres` or a `session_authorization` parameter
//! would change who the session runs as. Only an allow-list of harmless settings is
//! passed upstream; anything else refuses the connection.

use std::collections::BTreeMap;

use bytes::{BufMut, BytesMut};
use pgwire::messages::Message;
use pgwire::messages::response::{ReadyForQuery, TransactionStatus};

use super::SessionError;
use super::auth::Authenticated;
use crate::cancel::Registration;
use crate::pg::PgError;
use crate::pg::error::sqlstate;
use crate::pg::startup::StartupParams;
use crate::server::Shared;
use crate::upstream::{CancelTarget, Upstream};

/// Run-time settings a client may set in its startup packet (lower case, as
/// PostgreSQL matches setting names case-insensitively).
const ALLOWED_SETTINGS: &[&str] = &[
    "application_name",
    "bytea_output",
    "client_encoding",
    "client_min_messages",
    "datestyle",
    "default_transaction_isolation",
    "default_transaction_read_only",
    "extra_float_digits",
    "fallback_application_name",
    "idle_in_transaction_session_timeout",
    "intervalstyle",
    "lc_messages",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "lock_timeout",
    "search_path",
    "standard_conforming_strings",
    "statement_timeout",
    "timezone",
    "work_mem",
];

/// Whether setting `name` (lower case) to `value` leaves the server reading SQL text the
/// way the proxy checks it: as UTF-8 with standard-conforming strings. Any other reading
/// could make the server see a statement the proxy did not. Used for what clients ask at
/// startup and for what the server reports later in ParameterStatus.
pub(super) fn reads_like_the_proxy(name: &str, value: &str) -> bool {
    let value = value.trim().trim_matches('\'').to_ascii_lowercase();
    match name {
        // SQL_ASCII passes bytes unconverted and the server checks them as UTF-8: the same reading.
        "client_encoding" => matches!(value.as_str(), "utf8" | "utf-8" | "unicode" | "sql_ascii"),
        "standard_conforming_strings" => matches!(value.as_str(), "on" | "true" | "yes" | "1"),
        _ => true,
    }
}

fn check_lexical_setting(name: &str, value: &str) -> Result<(), SessionError> {
    if reads_like_the_proxy(name, value) {
        Ok(())
    } else {
        Err(SessionError::Client(PgError::fatal(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!(
                "portcullis: {name} = {value} is not supported; the proxy requires UTF8 and standard_conforming_strings = on"
            ),
        )))
    }
}

/// Parameters that identify the session rather than configure it.
const IDENTITY_PARAMS: &[&str] = &["user", "database"];

fn refuse(message: String) -> SessionError {
    SessionError::Client(PgError::fatal(sqlstate::INSUFFICIENT_PRIVILEGE, message))
}

/// Checks the client's startup parameters and returns those to send upstream.
pub fn upstream_params(params: &StartupParams) -> Result<BTreeMap<String, String>, SessionError> {
    let mut out = BTreeMap::new();
    for (name, value) in &params.params {
        let lower = name.to_ascii_lowercase();
        if IDENTITY_PARAMS.contains(&lower.as_str()) {
            continue;
        }
        if lower == "replication" {
            return Err(SessionError::Client(PgError::fatal(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "portcullis: replication connections are not supported through the proxy",
            )));
        }
        if lower.starts_with("_pq_.") {
            // Protocol extensions were refused in NegotiateProtocolVersion.
            continue;
        }
        if lower == "options" {
            check_options(value)?;
            out.insert(name.clone(), value.clone());
            continue;
        }
        if !ALLOWED_SETTINGS.contains(&lower.as_str()) {
            return Err(refuse(format!(
                "portcullis: startup parameter \"{name}\" is not allowed through the proxy"
            )));
        }
        check_lexical_setting(&lower, value)?;
        out.insert(name.clone(), value.clone());
    }
    Ok(out)
}

/// `options` holds command-line style switches (`-c name=value`, `--name=value`); each
/// must set an allowed setting.
fn check_options(options: &str) -> Result<(), SessionError> {
    let mut words = options.split_ascii_whitespace();
    while let Some(word) = words.next() {
        let setting = if word == "-c" {
            words.next().unwrap_or_default()
        } else if let Some(rest) = word.strip_prefix("-c") {
            rest
        } else if let Some(rest) = word.strip_prefix("--") {
            rest
        } else {
            return Err(refuse(format!(
                "portcullis: startup option \"{word}\" is not allowed through the proxy"
            )));
        };
        let (name, value) = setting.split_once('=').unwrap_or((setting, ""));
        let name = name.replace('-', "_").to_ascii_lowercase();
        // A backslash escapes whitespace inside a value; refuse rather than
        // reimplement PostgreSQL's option splitting.
        if setting.contains('\\') || !ALLOWED_SETTINGS.contains(&name.as_str()) {
            return Err(refuse(format!(
                "portcullis: setting \"{name}\" in startup options is not allowed through the proxy"
            )));
        }
        check_lexical_setting(&name, value)?;
    }
    Ok(())
}

/// Opens the upstream session for `auth`, after the startup parameters pass.
pub async fn connect_upstream(
    shared: &Shared,
    auth: &Authenticated,
    params: &StartupParams,
) -> Result<(Upstream, CancelTarget), SessionError> {
    let extra = upstream_params(params)?;
    let user = auth
        .upstream_user
        .as_deref()
        .unwrap_or_else(|| shared.connector.default_user());
    let database = params
        .params
        .get("database")
        .filter(|d| !d.is_empty())
        .map_or(auth.identity.user.as_str(), String::as_str);
    Ok(shared.connector.connect(user, database, &extra).await?)
}

/// AuthenticationOk has been sent; now ParameterStatus, the proxy's BackendKeyData
/// and ReadyForQuery.
pub fn greeting(upstream: &Upstream, registration: &Registration<'_>, out: &mut BytesMut) {
    for status in &upstream.parameter_status {
        out.extend_from_slice(&status.raw);
    }
    out.put_u8(b'K');
    out.put_i32(12);
    out.put_i32(registration.pid);
    out.put_i32(registration.secret);
    if ReadyForQuery::new(TransactionStatus::Idle)
        .encode(out)
        .is_err()
    {
        tracing::error!("could not encode ReadyForQuery");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> StartupParams {
        StartupParams {
            major: 3,
            minor: 0,
            params: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn passes_harmless_settings() {
        let p = params(&[
            ("user", "u"),
            ("database", "d"),
            ("application_name", "psql"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO"),
            ("options", "-c statement_timeout=5s --search_path=public"),
        ]);
        let out = upstream_params(&p).expect("allowed");
        assert_eq!(out.len(), 4);
        assert!(!out.contains_key("user"));
    }

    #[test]
    fn refuses_identity_changing_settings() {
        for bad in [
            vec![("role", "postgres")],
            vec![("session_authorization", "postgres")],
            vec![("options", "-c role=postgres")],
            vec![("options", "-crole=postgres")],
            vec![("options", "--session-authorization=postgres")],
            vec![("options", "-c search_path=x\\ -c\\ role=postgres")],
            vec![("options", "-D /tmp")],
            vec![("replication", "database")],
            vec![("client_encoding", "LATIN1")],
            vec![("standard_conforming_strings", "off")],
            vec![("options", "-c standard_conforming_strings=off")],
            vec![("options", "-c client_encoding=SJIS")],
        ] {
            assert!(upstream_params(&params(&bad)).is_err(), "{bad:?}");
        }
    }
}
