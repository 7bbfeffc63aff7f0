//! ArcSight Common Event Format (CEF:0).
//!
//! `CEF:0|Portcullis|Portcullis|<version>|<kind>|<summary>|<severity>|<extensions>`
//!
//! Header fields escape `\` and `|` (and turn line breaks into spaces); extension
//! values escape `\` and `=` and write line breaks as `\n` / `\r`. Severity is 0–10:
//! Informational 1, Notice 3, Warning 5, Error 7, Critical 9.
//!
//! | key | value |
//! |---|---|
//! | `rt` | event time, epoch milliseconds |
//! | `externalId` | event id |
//! | `dvchost` | proxy instance |
//! | `src` / `c6a2` | client IPv4 / IPv6 address (`src` is IPv4-only in the CEF spec) |
//! | `spt` | client port |
//! | `suser` | user |
//! | `requestClientApplication` | application_name |
//! | `act` | decision outcome (`allowed`, `rewritten`, `denied`) |
//! | `outcome` | `success` or `failure` |
//! | `reason` | SQLSTATE |
//! | `msg` | detail |
//! | `cs1`..`cs6` | session id, database, statement text, fingerprint, rule, policy version |
//! | `cn1`..`cn3` | rows, duration (µs), seq |
//! | `flexString1`, `flexString2` | roles; touched tables, comma-separated, each followed by the classes of its touched columns in brackets (`public.customers[pii.email pii.national_id]`) |
//!
//! Uncertain: there is no standard key for a database name or a SQL text, hence the
//! custom strings; `flexString*` support varies by receiver; value length limits
//! (e.g. 4000 characters for `cs*`) are not enforced here. The hash chain is not
//! carried (only `cn3` = seq): chain verification needs the JSON format.

use std::net::IpAddr;

use crate::AuditError;
use crate::event::{AuditEvent, Severity, StatementInfo};
use crate::format::{PRODUCT, VENDOR, VERSION, summary};

/// Appends `event` as one CEF line.
pub fn encode(e: &AuditEvent, out: &mut Vec<u8>) -> Result<(), AuditError> {
    let mut s = String::with_capacity(512);
    s.push_str("CEF:0");
    for field in [VENDOR, PRODUCT, VERSION, e.kind.as_str(), &summary(e)] {
        s.push('|');
        header(&mut s, field);
    }
    s.push('|');
    s.push_str(match e.severity() {
        Severity::Informational => "1",
        Severity::Notice => "3",
        Severity::Warning => "5",
        Severity::Error => "7",
        Severity::Critical => "9",
    });
    s.push('|');

    let mut x = Ext(&mut s, true);
    x.put("rt", &e.time.unix_millis().to_string());
    x.put("externalId", &e.id.to_string());
    x.put("dvchost", &e.instance);
    if let Some(client) = &e.client {
        match client.ip {
            Some(IpAddr::V4(ip)) => x.put("src", &ip.to_string()),
            Some(IpAddr::V6(ip)) => {
                x.put("c6a2", &ip.to_string());
                x.put("c6a2Label", "Source IPv6 Address");
            }
            None => {}
        }
        if let Some(port) = client.port {
            x.put("spt", &port.to_string());
        }
    }
    x.opt("suser", e.user.as_deref());
    x.opt("requestClientApplication", e.application_name.as_deref());
    x.opt("act", e.decision.as_ref().map(|d| d.outcome.as_str()));
    x.put(
        "outcome",
        if e.is_failure() { "failure" } else { "success" },
    );
    x.opt("reason", e.sqlstate.as_deref());
    x.opt("msg", e.detail.as_deref());
    let st = e.statement.as_ref();
    let d = e.decision.as_ref();
    let custom = [
        ("sessionId", e.session_id.as_deref()),
        ("database", e.database.as_deref()),
        ("statement", st.map(|s| s.shown_text())),
        ("fingerprint", st.map(|s| s.fingerprint.as_str())),
        ("rule", d.and_then(|d| d.rule.as_deref())),
        ("policyVersion", d.and_then(|d| d.policy_version.as_deref())),
    ];
    for (i, (label, value)) in custom.into_iter().enumerate() {
        if let Some(v) = value {
            x.put(&format!("cs{}", i + 1), v);
            x.put(&format!("cs{}Label", i + 1), label);
        }
    }
    let numbers = [
        ("rows", e.rows.or(e.session.map(|t| t.rows))),
        (
            "durationMicros",
            e.duration_us.or(e.session.map(|t| t.duration_us)),
        ),
        ("seq", Some(e.seq)),
    ];
    for (i, (label, value)) in numbers.into_iter().enumerate() {
        if let Some(v) = value {
            x.put(&format!("cn{}", i + 1), &v.to_string());
            x.put(&format!("cn{}Label", i + 1), label);
        }
    }
    if !e.roles.is_empty() {
        x.put("flexString1", &e.roles.join(","));
        x.put("flexString1Label", "roles");
    }
    if let Some(st) = st.filter(|s| !s.tables.is_empty()) {
        let tables: Vec<String> = st
            .tables
            .iter()
            .map(|t| {
                let one = StatementInfo {
                    tables: vec![t.clone()],
                    ..StatementInfo::default()
                };
                let classes = one.data_classes();
                if classes.is_empty() {
                    t.name.clone()
                } else {
                    format!("{}[{}]", t.name, classes.join(" "))
                }
            })
            .collect();
        x.put("flexString2", &tables.join(","));
        x.put("flexString2Label", "tables");
    }
    s.push('\n');
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// Writes a header field: `\` and `|` escaped, line breaks flattened.
fn header(s: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '|' => s.push_str("\\|"),
            '\r' | '\n' => s.push(' '),
            c => s.push(c),
        }
    }
}

/// Extension writer: `key=value` pairs separated by spaces.
struct Ext<'a>(&'a mut String, bool);

impl Ext<'_> {
    fn put(&mut self, key: &str, v: &str) {
        if !self.1 {
            self.0.push(' ');
        }
        self.1 = false;
        self.0.push_str(key);
        self.0.push('=');
        for c in v.chars() {
            match c {
                '\\' => self.0.push_str("\\\\"),
                '=' => self.0.push_str("\\="),
                '\n' => self.0.push_str("\\n"),
                '\r' => self.0.push_str("\\r"),
                c => self.0.push(c),
            }
        }
    }

    fn opt(&mut self, key: &str, v: Option<&str>) {
        if let Some(v) = v {
            self.put(key, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AuditEvent, EventKind};
    use crate::format::fixtures;

    fn encode_str(e: &AuditEvent) -> String {
        let mut out = Vec::new();
        encode(e, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn golden_statement() {
        let e = fixtures::statement();
        let fp = e.statement.as_ref().unwrap().fingerprint.clone();
        let expected = concat!(
            "CEF:0|Portcullis|Portcullis|VER|statement|SQL statement denied|5|",
            "rt=1795530150123 externalId=019ab6a1-2b3b-7000-8000-000000000001 dvchost=px-1 ",
            "src=10.0.0.5 spt=51234 suser=alice requestClientApplication=psql act=denied ",
            "outcome=failure reason=42501 cs1=s-7 cs1Label=sessionId cs2=sales cs2Label=database ",
            "cs3=SELECT ssn FROM public.customers WHERE id \\= ? cs3Label=statement ",
            "cs4=FP cs4Label=fingerprint cs5=no-pii|for\\=analyst cs5Label=rule ",
            "cs6=abc123 cs6Label=policyVersion cn2=250 cn2Label=durationMicros cn3=42 cn3Label=seq ",
            "flexString1=analyst flexString1Label=roles flexString2=public.customers[pii] flexString2Label=tables\n"
        );
        assert_eq!(
            encode_str(&e),
            expected.replace("FP", &fp).replace("VER", VERSION)
        );
    }

    #[test]
    fn golden_login() {
        let expected = concat!(
            "CEF:0|Portcullis|Portcullis|VER|login_failure|Login failed|5|",
            "rt=1795530150123 externalId=019ab6a1-2b3b-7000-8000-000000000001 dvchost=px-1 ",
            "src=192.0.2.1 spt=40000 suser=bob\\=\"x\"]\\\\| outcome=failure ",
            "msg=bad password\\nattempt 3 cs1=s-8 cs1Label=sessionId cs2=sales cs2Label=database ",
            "cn3=42 cn3Label=seq\n"
        );
        assert_eq!(
            encode_str(&fixtures::login()),
            expected.replace("VER", VERSION)
        );
    }

    #[test]
    fn header_escaping() {
        let mut s = String::new();
        header(&mut s, "a|b\\c\nd");
        assert_eq!(s, "a\\|b\\\\c d");
    }

    #[test]
    fn extension_escaping() {
        let mut s = String::new();
        let mut x = Ext(&mut s, true);
        x.put("msg", "a=b\\c\r\nd|e");
        assert_eq!(s, "msg=a\\=b\\\\c\\r\\nd|e");
    }

    #[test]
    fn ipv6_goes_to_c6a2() {
        let e = AuditEvent::new(EventKind::Connection).with_client(crate::ClientInfo {
            ip: Some("2001:db8::1".parse().unwrap()),
            ..Default::default()
        });
        let line = encode_str(&e);
        assert!(line.contains("c6a2=2001:db8::1 c6a2Label=Source IPv6 Address"));
        assert!(!line.contains(" src="));
    }
}
