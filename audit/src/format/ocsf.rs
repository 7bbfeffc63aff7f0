//! OCSF 1.3.0 JSON.
//!
//! | event kind | OCSF class | activity |
//! |---|---|---|
//! | `statement` | Datastore Activity (6005, category 6 Application Activity) | 4 Query for reads, 5 Write for writes, 99 Other otherwise |
//! | `login_success`, `login_failure` | Authentication (3002, category 3 Identity & Access Management) | 1 Logon |
//! | `session_end` | Authentication (3002) | 2 Logoff |
//! | `connection` | Network Activity (4001, category 4) | 1 Open |
//! | reloads, config, key and loss events | Base Event (0, category 0) | 99 Other |
//!
//! `type_uid` is `class_uid * 100 + activity_id`. `time` is epoch milliseconds; the exact
//! microsecond time is `metadata.original_time`. `severity_id` maps Informational 1,
//! Notice 2 (Low), Warning 3 (Medium), Error 4 (High), Critical 5. Everything the schema
//! has no attribute for — the hash chain, identity attributes, TLS details outside
//! Network Activity, touched tables beyond the first, column classifications, rows,
//! exact durations, dry-run — is kept under `unmapped`, so no information is lost.
//!
//! Uncertain points (checked against the OCSF 1.3 class pages as far as they were
//! available, not against the schema server): `query_info.uid` is used for the
//! fingerprint; `disposition_id` 1 Allowed / 2 Blocked and `action_id` 1 Allowed /
//! 2 Denied are used for decisions (a rewrite is "Allowed" with `unmapped.decision`
//! saying `rewritten`); `database.type_id` 1 is taken to be Relational; `policy.name`
//! carries the deciding rule; `duration` is in milliseconds. Non-statement
//! configuration events might fit Device Config State Change (5019) better than Base
//! Event; left for a SIEM integration test to settle.

use serde_json::{Map, Value, json};

use crate::AuditError;
use crate::canonical;
use crate::event::{AuditEvent, EventKind, Outcome, Severity};
use crate::format::{PRODUCT, VENDOR, VERSION, summary};

/// OCSF schema version written in `metadata.version`.
pub const OCSF_VERSION: &str = "1.3.0";

/// Appends `event` as one OCSF JSON line (keys sorted, for stable output).
pub fn encode(event: &AuditEvent, out: &mut Vec<u8>) -> Result<(), AuditError> {
    canonical::write_value(&to_ocsf(event), out)?;
    out.push(b'\n');
    Ok(())
}

struct Class {
    category_uid: u32,
    category_name: &'static str,
    class_uid: u32,
    class_name: &'static str,
    activity_id: u32,
    activity_name: String,
}

fn class_of(e: &AuditEvent) -> Class {
    let (category_uid, category_name, class_uid, class_name) = match e.kind {
        EventKind::Statement | EventKind::SlowStatement => {
            (6, "Application Activity", 6005, "Datastore Activity")
        }
        EventKind::LoginSuccess | EventKind::LoginFailure | EventKind::SessionEnd => {
            (3, "Identity & Access Management", 3002, "Authentication")
        }
        EventKind::Connection => (4, "Network Activity", 4001, "Network Activity"),
        _ => (0, "Uncategorized", 0, "Base Event"),
    };
    let (activity_id, activity_name) = match e.kind {
        EventKind::Statement | EventKind::SlowStatement => {
            let classes = e
                .statement
                .as_ref()
                .map(|s| s.class.as_slice())
                .unwrap_or_default();
            if classes.iter().any(|c| c == "write") {
                (5, "Write".to_owned())
            } else if classes.iter().any(|c| c == "read") {
                (4, "Query".to_owned())
            } else {
                let name = if classes.is_empty() {
                    "Other".to_owned()
                } else {
                    classes.join(",")
                };
                (99, name)
            }
        }
        EventKind::LoginSuccess | EventKind::LoginFailure => (1, "Logon".to_owned()),
        EventKind::SessionEnd => (2, "Logoff".to_owned()),
        EventKind::Connection => (1, "Open".to_owned()),
        other => (99, other.as_str().to_owned()),
    };
    Class {
        category_uid,
        category_name,
        class_uid,
        class_name,
        activity_id,
        activity_name,
    }
}

fn severity(s: Severity) -> (u32, &'static str) {
    match s {
        Severity::Informational => (1, "Informational"),
        Severity::Notice => (2, "Low"),
        Severity::Warning => (3, "Medium"),
        Severity::Error => (4, "High"),
        Severity::Critical => (5, "Critical"),
    }
}

fn insert_some<T: Into<Value>>(m: &mut Map<String, Value>, key: &str, v: Option<T>) {
    if let Some(v) = v {
        m.insert(key.into(), v.into());
    }
}

/// The OCSF object for `e`.
pub fn to_ocsf(e: &AuditEvent) -> Value {
    let c = class_of(e);
    let (severity_id, severity_name) = severity(e.severity());
    let failed = e.is_failure();
    let mut o = Map::new();
    o.insert("category_uid".into(), c.category_uid.into());
    o.insert("category_name".into(), c.category_name.into());
    o.insert("class_uid".into(), c.class_uid.into());
    o.insert("class_name".into(), c.class_name.into());
    o.insert("activity_id".into(), c.activity_id.into());
    o.insert("activity_name".into(), c.activity_name.into());
    o.insert(
        "type_uid".into(),
        (u64::from(c.class_uid) * 100 + u64::from(c.activity_id)).into(),
    );
    o.insert("severity_id".into(), severity_id.into());
    o.insert("severity".into(), severity_name.into());
    o.insert("status_id".into(), (if failed { 2 } else { 1 }).into());
    o.insert(
        "status".into(),
        (if failed { "Failure" } else { "Success" }).into(),
    );
    o.insert("time".into(), e.time.unix_millis().into());
    o.insert("message".into(), summary(e).into());
    insert_some(&mut o, "status_code", e.sqlstate.clone());
    insert_some(&mut o, "status_detail", e.detail.clone());

    let mut metadata = json!({
        "version": OCSF_VERSION,
        "product": { "name": PRODUCT, "vendor_name": VENDOR, "version": VERSION },
        "uid": e.id.to_string(),
        "original_time": e.time.to_string(),
        "sequence": e.seq,
        "log_name": "audit",
    });
    if let (Some(sid), Some(m)) = (&e.session_id, metadata.as_object_mut()) {
        m.insert("correlation_uid".into(), sid.clone().into());
    }
    o.insert("metadata".into(), metadata);

    let mut unmapped = Map::new();
    unmapped.insert("kind".into(), e.kind.as_str().into());
    unmapped.insert("instance".into(), e.instance.clone().into());
    unmapped.insert("prev_hash".into(), e.prev_hash.clone().into());
    unmapped.insert("hash".into(), e.hash.clone().into());
    if !e.attributes.is_empty() {
        unmapped.insert("attributes".into(), json!(e.attributes));
    }
    insert_some(
        &mut unmapped,
        "application_name",
        e.application_name.clone(),
    );
    insert_some(&mut unmapped, "rows", e.rows);
    insert_some(&mut unmapped, "duration_us", e.duration_us);

    // The user: the subject of an Authentication, the actor elsewhere.
    let mut user = Map::new();
    insert_some(&mut user, "name", e.user.clone());
    if !e.roles.is_empty() {
        let groups: Vec<Value> = e.roles.iter().map(|r| json!({ "name": r })).collect();
        user.insert("groups".into(), groups.into());
    }
    let session = e.session_id.as_ref().map(|s| json!({ "uid": s }));
    if c.class_uid == 3002 {
        if !user.is_empty() {
            o.insert("user".into(), user.into());
        }
        insert_some(&mut o, "session", session);
    } else {
        let mut actor = Map::new();
        if !user.is_empty() {
            actor.insert("user".into(), user.into());
        }
        insert_some(&mut actor, "session", session);
        if !actor.is_empty() {
            o.insert("actor".into(), actor.into());
        }
    }

    if let Some(client) = &e.client {
        let mut ep = Map::new();
        insert_some(&mut ep, "ip", client.ip.map(|ip| ip.to_string()));
        insert_some(&mut ep, "port", client.port);
        if !ep.is_empty() {
            o.insert("src_endpoint".into(), ep.into());
        }
        let mut tls = Map::new();
        insert_some(&mut tls, "version", client.tls_version.clone());
        insert_some(&mut tls, "cipher", client.cipher.clone());
        if let Some(subject) = &client.cert_subject {
            tls.insert("certificate".into(), json!({ "subject": subject }));
        }
        if !tls.is_empty() {
            let key = if c.class_uid == 4001 {
                &mut o
            } else {
                &mut unmapped
            };
            key.insert("tls".into(), tls.into());
        }
    }

    if let Some(db) = &e.database {
        if c.class_uid == 6005 {
            o.insert("type_id".into(), 1.into());
            o.insert("type".into(), "Database".into());
            o.insert(
                "database".into(),
                json!({ "name": db, "type_id": 1, "type": "Relational" }),
            );
        } else if c.class_uid == 3002 {
            o.insert("service".into(), json!({ "name": db }));
        } else {
            unmapped.insert("database".into(), db.clone().into());
        }
    }

    if let Some(st) = &e.statement {
        o.insert(
            "query_info".into(),
            json!({ "query_string": st.shown_text(), "uid": st.fingerprint }),
        );
        if let Some(first) = st.tables.first() {
            o.insert("table".into(), json!({ "name": first.name }));
        }
        if !st.tables.is_empty() {
            unmapped.insert("tables".into(), json!(st.tables));
        }
        if !st.class.is_empty() {
            unmapped.insert("statement_class".into(), json!(st.class));
        }
    }

    if let Some(d) = &e.decision {
        let (action_id, action, disposition_id, disposition) = match d.outcome {
            Outcome::Allowed | Outcome::Rewritten => (1, "Allowed", 1, "Allowed"),
            Outcome::Denied => (2, "Denied", 2, "Blocked"),
        };
        o.insert("action_id".into(), action_id.into());
        o.insert("action".into(), action.into());
        o.insert("disposition_id".into(), disposition_id.into());
        o.insert("disposition".into(), disposition.into());
        let mut policy = Map::new();
        insert_some(&mut policy, "name", d.rule.clone());
        insert_some(&mut policy, "version", d.policy_version.clone());
        if !policy.is_empty() {
            o.insert("policy".into(), policy.into());
        }
        unmapped.insert("decision".into(), json!(d));
    }

    let duration_us = e.duration_us.or(e.session.map(|t| t.duration_us));
    if let Some(us) = duration_us {
        o.insert("duration".into(), (us / 1000).into());
    }
    if let Some(totals) = &e.session {
        unmapped.insert("session_totals".into(), json!(totals));
    }

    o.insert("unmapped".into(), unmapped.into());
    Value::Object(o)
}

#[cfg(test)]
mod tests {
    use super::*;
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
            r#"{"action":"Denied","action_id":2,"activity_id":4,"activity_name":"Query","#,
            r#""actor":{"session":{"uid":"s-7"},"user":{"groups":[{"name":"analyst"}],"name":"alice"}},"#,
            r#""category_name":"Application Activity","category_uid":6,"class_name":"Datastore Activity","#,
            r#""class_uid":6005,"database":{"name":"sales","type":"Relational","type_id":1},"#,
            r#""disposition":"Blocked","disposition_id":2,"duration":0,"message":"SQL statement denied","#,
            r#""metadata":{"correlation_uid":"s-7","log_name":"audit","original_time":"2026-11-24T14:22:30.123456Z","#,
            r#""product":{"name":"Portcullis","vendor_name":"Portcullis","version":"VER"},"sequence":42,"#,
            r#""uid":"019ab6a1-2b3b-7000-8000-000000000001","version":"1.3.0"},"#,
            r#""policy":{"name":"no-pii|for=analyst","version":"abc123"},"#,
            r#""query_info":{"query_string":"SELECT ssn FROM public.customers WHERE id = ?","uid":"FP"},"#,
            r#""severity":"Medium","severity_id":3,"src_endpoint":{"ip":"10.0.0.5","port":51234},"#,
            r#""status":"Failure","status_code":"42501","status_id":2,"table":{"name":"public.customers"},"#,
            r#""time":1795530150123,"type":"Database","type_id":1,"type_uid":600504,"#,
            r#""unmapped":{"application_name":"psql","attributes":{"tenant":"acme"},"#,
            r#""decision":{"outcome":"denied","policy_version":"abc123","rule":"no-pii|for=analyst"},"#,
            r#""duration_us":250,"hash":"sha256:bb","instance":"px-1","kind":"statement","prev_hash":"sha256:aa","#,
            r#""statement_class":["read"],"tables":[{"columns":[{"classes":["pii"],"name":"ssn"}],"name":"public.customers"}],"#,
            r#""tls":{"cipher":"TLS13_AES_256_GCM_SHA384","version":"TLSv1.3"}}}"#,
            "\n"
        );
        assert_eq!(
            encode_str(&e),
            expected.replace("FP", &fp).replace("VER", VERSION)
        );
    }

    #[test]
    fn golden_login() {
        let expected = concat!(
            r#"{"activity_id":1,"activity_name":"Logon","category_name":"Identity & Access Management","#,
            r#""category_uid":3,"class_name":"Authentication","class_uid":3002,"message":"Login failed","#,
            r#""metadata":{"correlation_uid":"s-8","log_name":"audit","original_time":"2026-11-24T14:22:30.123456Z","#,
            r#""product":{"name":"Portcullis","vendor_name":"Portcullis","version":"VER"},"sequence":42,"#,
            r#""uid":"019ab6a1-2b3b-7000-8000-000000000001","version":"1.3.0"},"#,
            r#""service":{"name":"sales"},"session":{"uid":"s-8"},"severity":"Medium","severity_id":3,"#,
            r#""src_endpoint":{"ip":"192.0.2.1","port":40000},"status":"Failure","#,
            r#""status_detail":"bad password\nattempt 3","status_id":2,"time":1795530150123,"type_uid":300201,"#,
            r#""unmapped":{"hash":"sha256:bb","instance":"px-1","kind":"login_failure","prev_hash":"sha256:aa"},"#,
            r#""user":{"name":"bob=\"x\"]\\|"}}"#,
            "\n"
        );
        assert_eq!(
            encode_str(&fixtures::login()),
            expected.replace("VER", VERSION)
        );
    }

    #[test]
    fn type_uid_is_class_times_100_plus_activity() {
        for kind in [
            EventKind::Connection,
            EventKind::SessionEnd,
            EventKind::PolicyReload,
            EventKind::AuditLoss,
        ] {
            let v = to_ocsf(&AuditEvent::new(kind));
            let class = v["class_uid"].as_u64().unwrap();
            let activity = v["activity_id"].as_u64().unwrap();
            assert_eq!(v["type_uid"].as_u64().unwrap(), class * 100 + activity);
        }
    }
}
