//! Encodings of an [`AuditEvent`] for files and SIEMs.
//!
//! Every encoder appends exactly one record, terminated by `\n`, to the output buffer.
//! Stream framings that need more (RFC 6587 octet counting for syslog over TCP) belong
//! to the sink, not to the format.

pub mod cef;
pub mod json;
pub mod ocsf;
pub mod syslog;

use crate::AuditError;
use crate::event::{AuditEvent, EventKind, Outcome};

pub use syslog::{Facility, SyslogMsg, SyslogOptions};

/// Product name in OCSF metadata, CEF headers and syslog APP-NAME.
pub const PRODUCT: &str = "Portcullis";
/// Vendor name in OCSF metadata and CEF headers.
pub const VENDOR: &str = "Portcullis";
/// Product version reported by the encoders.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How events are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// The native event as one JSON line; the only format [`verify`](crate::verify)
    /// and chain resumption read back.
    Json,
    /// OCSF 1.3.0 JSON, one object per line.
    Ocsf,
    /// ArcSight Common Event Format, one record per line.
    Cef,
    /// RFC 5424 syslog, one message per line.
    Syslog(SyslogOptions),
}

impl Format {
    /// Appends `event`, encoded and newline-terminated, to `out`. On error `out` is left
    /// as it was.
    pub fn encode(&self, event: &AuditEvent, out: &mut Vec<u8>) -> Result<(), AuditError> {
        let len = out.len();
        let r = match self {
            Format::Json => json::encode(event, out),
            Format::Ocsf => ocsf::encode(event, out),
            Format::Cef => cef::encode(event, out),
            Format::Syslog(opts) => syslog::encode(event, opts, out),
        };
        if r.is_err() {
            out.truncate(len);
        }
        r
    }
}

/// A one-line human summary of the event, without any value that is not already in
/// the event (used as CEF name and as the short syslog MSG).
pub(crate) fn summary(e: &AuditEvent) -> String {
    let outcome = e.decision.as_ref().map(|d| d.outcome);
    match e.kind {
        EventKind::Connection => "Client connected".into(),
        EventKind::LoginSuccess => "Login succeeded".into(),
        EventKind::LoginFailure => "Login failed".into(),
        EventKind::Statement => match outcome {
            Some(Outcome::Denied) => "SQL statement denied".into(),
            Some(Outcome::Rewritten) => "SQL statement rewritten".into(),
            Some(Outcome::Allowed) if e.sqlstate.is_some() => "SQL statement failed".into(),
            _ => "SQL statement".into(),
        },
        EventKind::SlowStatement => "Slow SQL statement".into(),
        EventKind::SessionEnd => "Session ended".into(),
        EventKind::PolicyReload => "Policy reloaded".into(),
        EventKind::PolicyReloadRefused => "Policy reload refused".into(),
        EventKind::ConfigChange => "Configuration changed".into(),
        EventKind::KeyEvent => "Key event".into(),
        EventKind::AuditLoss => "Audit events lost".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::*;

    /// Every format writes exactly one line, whatever the strings hold.
    #[test]
    fn one_record_per_line_with_hostile_strings() {
        let nasty = "a\nb\r\nc|d=e]f\"g\\h\u{0}i\u{2028}é";
        let mut e = fixtures::statement()
            .with_user(nasty)
            .with_detail(nasty)
            .with_application(nasty)
            .with_database(nasty)
            .with_session(nasty)
            .with_attribute(nasty, nasty);
        e.instance = nasty.into();
        e.decision = Some(DecisionInfo::new(Outcome::Denied).with_rule(nasty).into());
        let formats = [
            Format::Json,
            Format::Ocsf,
            Format::Cef,
            Format::Syslog(SyslogOptions::new(nasty)),
            Format::Syslog(SyslogOptions {
                msg: SyslogMsg::Text,
                ..SyslogOptions::new("h")
            }),
        ];
        for f in formats {
            let mut out = Vec::new();
            f.encode(&e, &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert_eq!(text.matches('\n').count(), 1, "{f:?}: {text}");
            assert!(!text.contains('\r'), "{f:?}: {text}");
            assert!(text.ends_with('\n'));
        }
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    use std::net::{IpAddr, Ipv4Addr};

    use time::OffsetDateTime;

    use crate::event::*;

    pub fn time() -> Timestamp {
        // 2026-11-24T14:22:30.123456Z
        Timestamp::from_datetime(
            OffsetDateTime::from_unix_timestamp_nanos(1_795_530_150_123_456_000).unwrap(),
        )
    }

    fn base(kind: EventKind) -> AuditEvent {
        let mut e = AuditEvent::at(kind, time());
        e.id = EventId::from_u128(0x019a_b6a1_2b3b_7000_8000_0000_0000_0001);
        e.instance = "px-1".into();
        e.seq = 42;
        e.prev_hash = "sha256:aa".into();
        e.hash = "sha256:bb".into();
        e
    }

    /// A denied statement with every statement field filled.
    pub fn statement() -> AuditEvent {
        base(EventKind::Statement)
            .with_session("s-7")
            .with_client(ClientInfo {
                ip: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5))),
                port: Some(51234),
                tls_version: Some("TLSv1.3".into()),
                cipher: Some("TLS13_AES_256_GCM_SHA384".into()),
                cert_subject: None,
            })
            .with_user("alice")
            .with_roles(["analyst"])
            .with_attribute("tenant", "acme")
            .with_database("sales")
            .with_application("psql")
            .with_statement(
                StatementInfo::from_sql("SELECT ssn FROM public.customers WHERE id = 7")
                    .with_class("read")
                    .with_table(TouchedTable {
                        name: "public.customers".into(),
                        classes: vec![],
                        columns: vec![TouchedColumn {
                            name: "ssn".into(),
                            classes: vec!["pii".into()],
                        }],
                    }),
            )
            .with_decision(
                DecisionInfo::new(Outcome::Denied)
                    .with_rule("no-pii|for=analyst")
                    .with_policy_version("abc123"),
            )
            .with_result(None, 250, Some("42501"))
    }

    /// A failed login with a user name that needs escaping everywhere.
    pub fn login() -> AuditEvent {
        base(EventKind::LoginFailure)
            .with_session("s-8")
            .with_client(ClientInfo {
                ip: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
                port: Some(40000),
                ..ClientInfo::default()
            })
            .with_user("bob=\"x\"]\\|")
            .with_database("sales")
            .with_detail("bad password\nattempt 3")
    }
}
