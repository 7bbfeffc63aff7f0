//! The native event as one JSON line.
//!
//! The line is the event's canonical form (see [`crate::chain`]: keys sorted, no
//! whitespace) with its `hash` filled in: the bytes the chain hashed, plus the hash.
//! That makes the dispatcher's sealing produce the line as a by-product
//! ([`Chainer::seal_line`](crate::Chainer::seal_line)) instead of serializing every
//! event twice.

use crate::event::AuditEvent;
use crate::{AuditError, canonical};

/// Appends `event` as one JSON line.
pub fn encode(event: &AuditEvent, out: &mut Vec<u8>) -> Result<(), AuditError> {
    let mut writer = canonical::Writer::default();
    match writer.write(event) {
        Ok(()) => out.extend_from_slice(writer.bytes()),
        // What the direct writer does not reproduce: the same bytes, slower.
        Err(_) => canonical::write_value(&serde_json::to_value(event)?, out)?,
    }
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
            r#"{"application_name":"psql","attributes":{"tenant":"acme"},"#,
            r#""client":{"cipher":"TLS13_AES_256_GCM_SHA384","ip":"10.0.0.5","port":51234,"tls_version":"TLSv1.3"},"#,
            r#""database":"sales","decision":{"outcome":"denied","policy_version":"abc123","rule":"no-pii|for=analyst"},"#,
            r#""duration_us":250,"hash":"sha256:bb","id":"019ab6a1-2b3b-7000-8000-000000000001","#,
            r#""instance":"px-1","kind":"statement","prev_hash":"sha256:aa","roles":["analyst"],"seq":42,"#,
            r#""session_id":"s-7","sqlstate":"42501","statement":{"class":["read"],"fingerprint":"FP","#,
            r#""tables":[{"columns":[{"classes":["pii"],"name":"ssn"}],"name":"public.customers"}],"#,
            r#""text":"SELECT ssn FROM public.customers WHERE id = ?"},"#,
            r#""time":"2026-11-24T14:22:30.123456Z","user":"alice"}"#,
            "\n"
        );
        let fp = fixtures::statement().statement.unwrap().fingerprint.clone();
        assert_eq!(String::from_utf8(out).unwrap(), expected.replace("FP", &fp));
    }

    #[test]
    fn golden_login() {
        let mut out = Vec::new();
        encode(&fixtures::login(), &mut out).unwrap();
        let expected = concat!(
            r#"{"client":{"ip":"192.0.2.1","port":40000},"database":"sales","#,
            r#""detail":"bad password\nattempt 3","hash":"sha256:bb","#,
            r#""id":"019ab6a1-2b3b-7000-8000-000000000001","instance":"px-1","kind":"login_failure","#,
            r#""prev_hash":"sha256:aa","seq":42,"session_id":"s-8","#,
            r#""time":"2026-11-24T14:22:30.123456Z","user":"bob=\"x\"]\\|"}"#,
            "\n"
        );
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn sealing_produces_the_encoded_line() {
        use crate::Chainer;
        let nasty = "a\nb\"c\\d\u{0}é\u{2028}";
        for key in [None, Some(b"k".to_vec())] {
            let mut chain = Chainer::new("px-1", key);
            for mut event in [
                fixtures::statement(),
                fixtures::login(),
                // A member named "hash" inside the event must not take the hash.
                fixtures::statement()
                    .with_attribute("hash", "")
                    .with_attribute(nasty, nasty),
            ] {
                let line = chain.seal_line(&mut event).unwrap();
                let mut encoded = Vec::new();
                encode(&event, &mut encoded).unwrap();
                assert_eq!(
                    String::from_utf8(line).unwrap(),
                    String::from_utf8(encoded).unwrap()
                );
            }
        }
    }
}
