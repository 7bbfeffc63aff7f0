//! ErrorResponse and NoticeResponse construction: what a client is allowed to see.
//!
//! Errors built here carry a SQLSTATE and a message written for the client. Internal
//! details (paths, upstream addresses, secrets) belong in the operator's log, never here.

use bytes::BytesMut;
use pgwire::messages::Message;
use pgwire::messages::response::ErrorResponse;

/// SQLSTATEs the proxy itself raises.
pub mod sqlstate {
    /// Statement refused by policy.
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    /// Statement could not be parsed.
    pub const SYNTAX_ERROR: &str = "42601";
    /// Malformed or unexpected message.
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    /// Upstream could not be reached.
    pub const SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION: &str = "08001";
    /// Upstream connection failed during the session.
    pub const CONNECTION_FAILURE: &str = "08006";
    /// Authentication specification problems (TLS required, account expired).
    pub const INVALID_AUTHORIZATION_SPECIFICATION: &str = "28000";
    /// Wrong password or unknown user.
    pub const INVALID_PASSWORD: &str = "28P01";
    /// Too many connections.
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    /// Proxy is shutting down.
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    /// The audit trail cannot be written (fail-closed sinks).
    pub const INSUFFICIENT_RESOURCES: &str = "53000";
    /// Statement too large and similar limits.
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    /// A feature the proxy does not support (e.g. replication connections).
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    /// Input that is not valid in the client encoding.
    pub const CHARACTER_NOT_IN_REPERTOIRE: &str = "22021";
}

/// Severity of an error sent to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends after this message.
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Self::Error => "ERROR",
            Self::Fatal => "FATAL",
        }
    }
}

/// An error the proxy reports to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    /// ERROR or FATAL.
    pub severity: Severity,
    /// Five-character SQLSTATE.
    pub code: &'static str,
    /// Primary message, safe for the client.
    pub message: String,
    /// Optional hint.
    pub hint: Option<String>,
}

impl PgError {
    /// A statement-level error; the session continues.
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            code,
            message: message.into(),
            hint: None,
        }
    }

    /// A session-ending error.
    pub fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Fatal,
            code,
            message: message.into(),
            hint: None,
        }
    }

    /// Adds a hint line.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Appends the ErrorResponse to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        let mut fields = vec![
            (b'S', self.severity.as_str().to_owned()),
            (b'V', self.severity.as_str().to_owned()),
            (b'C', self.code.to_owned()),
            (b'M', self.message.clone()),
        ];
        if let Some(hint) = &self.hint {
            fields.push((b'H', hint.clone()));
        }
        // Encoding into a BytesMut cannot fail for messages far below pgwire's limits;
        // messages are built by the proxy from short strings.
        if ErrorResponse::new(fields).encode(buf).is_err() {
            tracing::error!(code = self.code, "could not encode ErrorResponse");
        }
    }

    /// The ErrorResponse as bytes.
    pub fn to_bytes(&self) -> BytesMut {
        let mut buf = BytesMut::new();
        self.encode(&mut buf);
        buf
    }
}

/// Reads one field (`C` SQLSTATE, `M` message, ...) of an ErrorResponse or
/// NoticeResponse body.
pub fn field(body: &[u8], wanted: u8) -> Option<&[u8]> {
    let mut rest = body;
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            return None;
        }
        let end = tail.iter().position(|&b| b == 0)?;
        if code == wanted {
            return tail.get(..end);
        }
        rest = tail.get(end + 1..)?;
    }
    None
}

/// A field of an ErrorResponse or NoticeResponse body as text, for logs: empty when
/// missing, invalid UTF-8 replaced.
pub fn field_text(body: &[u8], wanted: u8) -> String {
    field(body, wanted)
        .map(String::from_utf8_lossy)
        .unwrap_or_default()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_fields_and_reads_them_back() {
        let bytes = PgError::error(sqlstate::INSUFFICIENT_PRIVILEGE, "denied")
            .with_hint("ask")
            .to_bytes();
        assert_eq!(bytes[0], b'E');
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        assert_eq!(len + 1, bytes.len());
        let body = &bytes[5..];
        assert_eq!(field(body, b'C'), Some(&b"42501"[..]));
        assert_eq!(field(body, b'M'), Some(&b"denied"[..]));
        assert_eq!(field(body, b'H'), Some(&b"ask"[..]));
        assert_eq!(field(body, b'D'), None);
    }

    #[test]
    fn field_survives_garbage() {
        assert_eq!(field(b"", b'C'), None);
        assert_eq!(field(b"Cabc", b'C'), None);
        assert_eq!(field(b"\0", b'C'), None);
    }
}
