//! RFC 5424 syslog.
//!
//! `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [portcullis@32473 ...] MSG`
//!
//! - PRI is `facility * 8 + severity`, the severity from [`AuditEvent::severity`].
//! - TIMESTAMP is the event time, RFC 3339 with microseconds (the RFC's maximum).
//! - HOSTNAME, APP-NAME and PROCID come from [`SyslogOptions`]; MSGID is the event kind.
//!   Header fields are cut to the RFC's lengths and anything outside printable
//!   US-ASCII becomes `_`; an empty field is the NILVALUE `-`.
//! - One structured-data element carries the event's identity and chain position
//!   (`id`, `instance`, `seq`, `hash`), `session`, `user`, `outcome`, `sqlstate`, and
//!   for statements the touched `tables` and the data `classes` (comma-separated), so
//!   that a collector can route classified access without parsing MSG;
//!   PARAM-VALUEs escape `"`, `\` and `]` as RFC 5424 §6.3.3 requires, and control
//!   characters become spaces so that a message stays on one line.
//! - MSG is the native JSON event or a one-line summary ([`SyslogMsg`]). It is written
//!   without a BOM, i.e. as the RFC's MSG-ANY; every receiver in common use reads it as
//!   UTF-8.
//!
//! **`32473` is a placeholder.** It is the private enterprise number RFC 5612 reserves
//! for documentation and examples; a deployment that wants registered SD-IDs must use
//! its own PEN (set [`SyslogOptions::sd_id`]).

use crate::AuditError;
use crate::event::AuditEvent;
use crate::format::{json, summary};

/// Default SD-ID: `portcullis` at the RFC 5612 example PEN (a placeholder).
pub const DEFAULT_SD_ID: &str = "portcullis@32473";

/// A syslog facility code (0–23), validated at construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facility(u8);

impl Facility {
    /// `auth` (4).
    pub const AUTH: Facility = Facility(4);
    /// `authpriv` (10).
    pub const AUTHPRIV: Facility = Facility(10);
    /// `local0` (16), the default.
    pub const LOCAL0: Facility = Facility(16);

    /// The facility with code `code`; refuses codes above 23.
    pub fn new(code: u8) -> Result<Self, AuditError> {
        if code <= 23 {
            Ok(Facility(code))
        } else {
            Err(AuditError::Config(format!(
                "syslog facility {code} is not in 0..=23"
            )))
        }
    }

    /// The numeric code.
    pub fn code(self) -> u8 {
        self.0
    }
}

/// What goes into MSG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyslogMsg {
    /// The native JSON event (everything, chain included).
    Json,
    /// A one-line human summary (the structured data still identifies the event).
    Text,
}

/// RFC 5424 header settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogOptions {
    /// Facility for every message.
    pub facility: Facility,
    /// HOSTNAME: this host's FQDN or address.
    pub hostname: String,
    /// APP-NAME, `portcullis` by default.
    pub app_name: String,
    /// PROCID, the process id by default.
    pub procid: String,
    /// SD-ID of the structured-data element; see the module note on the PEN.
    pub sd_id: String,
    /// MSG contents.
    pub msg: SyslogMsg,
}

impl SyslogOptions {
    /// Defaults for `hostname`: facility local0, APP-NAME `portcullis`, this
    /// process's id, [`DEFAULT_SD_ID`], JSON MSG.
    pub fn new(hostname: impl Into<String>) -> Self {
        SyslogOptions {
            facility: Facility::LOCAL0,
            hostname: hostname.into(),
            app_name: "portcullis".into(),
            procid: std::process::id().to_string(),
            sd_id: DEFAULT_SD_ID.into(),
            msg: SyslogMsg::Json,
        }
    }
}

/// Appends `event` as one RFC 5424 message and a newline.
pub fn encode(e: &AuditEvent, opts: &SyslogOptions, out: &mut Vec<u8>) -> Result<(), AuditError> {
    let pri = u16::from(opts.facility.code()) * 8 + u16::from(e.severity().code());
    let mut s = String::with_capacity(512);
    s.push('<');
    s.push_str(&pri.to_string());
    s.push_str(">1 ");
    s.push_str(&e.time.to_string());
    s.push(' ');
    header_field(&mut s, &opts.hostname, 255);
    s.push(' ');
    header_field(&mut s, &opts.app_name, 48);
    s.push(' ');
    header_field(&mut s, &opts.procid, 128);
    s.push(' ');
    header_field(&mut s, e.kind.as_str(), 32);
    s.push_str(" [");
    sd_name(&mut s, &opts.sd_id);
    let d = e.decision.as_ref();
    let params = [
        ("id", Some(e.id.to_string())),
        ("instance", Some(e.instance.clone())),
        ("seq", Some(e.seq.to_string())),
        ("session", e.session_id.clone()),
        ("user", e.user.clone()),
        ("outcome", d.map(|d| d.outcome.as_str().to_owned())),
        ("sqlstate", e.sqlstate.clone()),
        (
            "tables",
            e.statement
                .as_ref()
                .filter(|st| !st.tables.is_empty())
                .map(|st| {
                    let names: Vec<&str> = st.tables.iter().map(|t| t.name.as_str()).collect();
                    names.join(",")
                }),
        ),
        (
            "classes",
            e.statement
                .as_ref()
                .map(|st| st.data_classes().join(","))
                .filter(|c| !c.is_empty()),
        ),
        ("hash", Some(e.hash.clone()).filter(|h| !h.is_empty())),
    ];
    for (name, value) in params {
        if let Some(v) = value {
            s.push(' ');
            s.push_str(name);
            s.push_str("=\"");
            sd_value(&mut s, &v);
            s.push('"');
        }
    }
    s.push_str("] ");
    out.extend_from_slice(s.as_bytes());
    match opts.msg {
        SyslogMsg::Json => json::encode(e, out)?,
        SyslogMsg::Text => {
            let mut text = summary(e);
            if let Some(st) = &e.statement {
                text.push_str(": ");
                text.push_str(st.shown_text());
            }
            if let Some(detail) = &e.detail {
                text.push_str(": ");
                text.push_str(detail);
            }
            for c in text.chars() {
                let c = if c.is_control() { ' ' } else { c };
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            out.push(b'\n');
        }
    }
    Ok(())
}

/// A header field: PRINTUSASCII, at most `max` bytes, NILVALUE when empty.
fn header_field(s: &mut String, v: &str, max: usize) {
    if v.is_empty() {
        s.push('-');
        return;
    }
    for c in v.chars().take(max) {
        s.push(if c.is_ascii_graphic() { c } else { '_' });
    }
}

/// An SD-NAME: printable US-ASCII except `=`, space, `]` and `"`, at most 32 chars.
fn sd_name(s: &mut String, v: &str) {
    for c in v.chars().take(32) {
        let ok = c.is_ascii_graphic() && !matches!(c, '=' | ']' | '"');
        s.push(if ok { c } else { '_' });
    }
}

/// A PARAM-VALUE: `"`, `\` and `]` escaped with a backslash; control characters
/// (which RFC 5424 allows but line-based transports and files do not survive) become
/// spaces.
fn sd_value(s: &mut String, v: &str) {
    for c in v.chars() {
        if matches!(c, '"' | '\\' | ']') {
            s.push('\\');
        }
        s.push(if c.is_control() { ' ' } else { c });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::fixtures;

    fn opts(msg: SyslogMsg) -> SyslogOptions {
        SyslogOptions {
            procid: "4242".into(),
            msg,
            ..SyslogOptions::new("db-proxy.example.com")
        }
    }

    fn encode_str(e: &AuditEvent, o: &SyslogOptions) -> String {
        let mut out = Vec::new();
        encode(e, o, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn golden_statement_text() {
        let e = fixtures::statement();
        let expected = concat!(
            "<132>1 2026-11-24T14:22:30.123456Z db-proxy.example.com portcullis 4242 statement ",
            "[portcullis@32473 id=\"019ab6a1-2b3b-7000-8000-000000000001\" instance=\"px-1\" seq=\"42\" ",
            "session=\"s-7\" user=\"alice\" outcome=\"denied\" sqlstate=\"42501\" tables=\"public.customers\" classes=\"pii\" hash=\"sha256:bb\"] ",
            "SQL statement denied: SELECT ssn FROM public.customers WHERE id = ?\n"
        );
        assert_eq!(encode_str(&e, &opts(SyslogMsg::Text)), expected);
    }

    #[test]
    fn golden_statement_json_msg() {
        let e = fixtures::statement();
        let line = encode_str(&e, &opts(SyslogMsg::Json));
        let mut json = Vec::new();
        crate::format::json::encode(&e, &mut json).unwrap();
        let (head, msg) = line.split_once("] ").unwrap();
        assert!(head.starts_with("<132>1 2026-11-24T14:22:30.123456Z db-proxy.example.com "));
        assert_eq!(msg.as_bytes(), json.as_slice());
    }

    #[test]
    fn golden_login_with_escaping() {
        let o = SyslogOptions {
            facility: Facility::AUTHPRIV,
            ..opts(SyslogMsg::Text)
        };
        let expected = concat!(
            "<84>1 2026-11-24T14:22:30.123456Z db-proxy.example.com portcullis 4242 login_failure ",
            "[portcullis@32473 id=\"019ab6a1-2b3b-7000-8000-000000000001\" instance=\"px-1\" seq=\"42\" ",
            "session=\"s-8\" user=\"bob=\\\"x\\\"\\]\\\\|\" hash=\"sha256:bb\"] ",
            "Login failed: bad password attempt 3\n"
        );
        assert_eq!(encode_str(&fixtures::login(), &o), expected);
    }

    #[test]
    fn header_fields_are_sanitized() {
        let o = SyslogOptions {
            hostname: "bad host\n".into(),
            app_name: String::new(),
            ..opts(SyslogMsg::Text)
        };
        let line = encode_str(&fixtures::login(), &o);
        assert!(line.contains(" bad_host_ - 4242 "), "{line}");
    }

    #[test]
    fn facility_is_validated() {
        assert!(Facility::new(23).is_ok());
        assert!(Facility::new(24).is_err());
    }
}
