//! The native event as one JSON line.

use crate::AuditError;
use crate::event::AuditEvent;

/// Appends `event` as one JSON line.
pub fn encode(event: &AuditEvent, out: &mut Vec<u8>) -> Result<(), AuditError> {
    serde_json::to_writer(&mut *out, event)?;
    out.push(b'\n');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::fixtures;

    #[test]
    fn golden_statement() {
        let mut out = Vec::new();
        encode(&fixtures::statement(), &mut out).unwrap();
        let expected = concat!(
            r#"{"time":"2026-11-24T14:22:30.123456Z","id":"019ab6a1-2b3b-7000-8000-000000000001","#,
            r#""instance":"px-1","seq":42,"prev_hash":"sha256:aa","hash":"sha256:bb","kind":"statement","#,
            r#""session_id":"s-7","client":{"ip":"10.0.0.5","port":51234,"tls_version":"TLSv1.3","#,
            r#""cipher":"TLS13_AES_256_GCM_SHA384"},"user":"alice","roles":["analyst"],"#,
            r#""attributes":{"tenant":"acme"},"database":"sales","application_name":"psql","#,
            r#""statement":{"class":["read"],"text":"SELECT ssn FROM public.customers WHERE id = ?","#,
            r#""fingerprint":"FP","tables":[{"name":"public.customers","columns":[{"name":"ssn","classes":["pii"]}]}]},"#,
            r#""decision":{"outcome":"denied","rule":"no-pii|for=analyst","policy_version":"abc123"},"#,
            r#""duration_us":250,"sqlstate":"42501"}"#,
            "\n"
        );
        let fp = fixtures::statement().statement.unwrap().fingerprint;
        assert_eq!(String::from_utf8(out).unwrap(), expected.replace("FP", &fp));
    }

    #[test]
    fn golden_login() {
        let mut out = Vec::new();
        encode(&fixtures::login(), &mut out).unwrap();
        let expected = concat!(
            r#"{"time":"2026-11-24T14:22:30.123456Z","id":"019ab6a1-2b3b-7000-8000-000000000001","#,
            r#""instance":"px-1","seq":42,"prev_hash":"sha256:aa","hash":"sha256:bb","kind":"login_failure","#,
            r#""session_id":"s-8","client":{"ip":"192.0.2.1","port":40000},"user":"bob=\"x\"]\\|","#,
            r#""database":"sales","detail":"bad password\nattempt 3"}"#,
            "\n"
        );
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }
}
