//! Tamper evidence: every event is hashed and chained to its instance's previous event.
//!
//! `hash` is `sha256:<hex>` — or `hmac-sha256:<hex>` when a key is configured — over the
//! event's *canonical form*: its JSON with `hash` set to `""`, `prev_hash`, `instance`
//! and `seq` already filled, object keys sorted bytewise, no whitespace, strings escaped
//! as serde_json escapes them. Hashing the canonical form rather than the line's bytes
//! makes the hash independent of the encoder's field order and whitespace, and makes
//! *every* field count, including fields a later version of this crate adds.
//!
//! Without a key the chain detects accidental damage, deletion, reordering and edits by
//! anyone who does not also recompute every later hash; with a key (held outside the
//! audit store) it also detects an attacker who rewrites the file from the edited event
//! onward.
//!
//! The canonical form is written straight from the event (module `canonical`), with the
//! `serde_json::Value` walk that `verify` uses as the reference and as the fallback.
//!
//! Sequence numbers start at 1; the first event of an instance has an empty
//! `prev_hash`. [`Chainer::resume`] continues a chain after a restart from the last
//! sealed event (see [`crate::sink::file::last_sealed`]).

use std::fmt;

use hmac::{KeyInit, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::event::AuditEvent;
use crate::{AuditError, canonical, push_hex};

/// Prefix of an unkeyed hash.
pub const SHA256_PREFIX: &str = "sha256:";
/// Prefix of a keyed hash.
pub const HMAC_PREFIX: &str = "hmac-sha256:";

/// The chain position of a sealed event: what the next event links to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Proxy instance name.
    pub instance: String,
    /// The event's sequence number.
    pub seq: u64,
    /// The event's `hash`.
    pub hash: String,
}

/// Seals events into one instance's chain, in order.
///
/// One `Chainer` per proxy instance, owned by the task that writes audit events, so
/// that sequence numbers follow write order.
pub struct Chainer {
    instance: String,
    key: Option<zeroize::Zeroizing<Vec<u8>>>,
    next_seq: u64,
    prev_hash: String,
    /// Buffers for the canonical form, kept from one event to the next.
    canonical: canonical::Writer,
}

impl fmt::Debug for Chainer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chainer")
            .field("instance", &self.instance)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl Chainer {
    /// A new chain for `instance`, starting at seq 1, keyed with HMAC-SHA-256 when
    /// `key` is given.
    pub fn new(instance: impl Into<String>, key: Option<Vec<u8>>) -> Self {
        Chainer {
            instance: instance.into(),
            key: key.map(zeroize::Zeroizing::new),
            next_seq: 1,
            prev_hash: String::new(),
            canonical: canonical::Writer::default(),
        }
    }

    /// Continues the chain after `last` (the last sealed event of a previous run), or
    /// starts a new one when there is none. Refuses a link from another instance, and
    /// a keyed chain continued without its key (or the reverse), since either would
    /// make the file unverifiable from that point.
    pub fn resume(
        instance: impl Into<String>,
        key: Option<Vec<u8>>,
        last: Option<Link>,
    ) -> Result<Self, AuditError> {
        let mut c = Chainer::new(instance, key);
        if let Some(last) = last {
            if last.instance != c.instance {
                return Err(AuditError::Config(format!(
                    "cannot resume chain of instance {:?} from an event of instance {:?}",
                    c.instance, last.instance
                )));
            }
            let keyed = last.hash.starts_with(HMAC_PREFIX);
            if keyed != c.key.is_some() {
                return Err(AuditError::Config(
                    "the existing audit chain and the configured hash key disagree (keyed vs unkeyed)"
                        .into(),
                ));
            }
            c.next_seq = last.seq.saturating_add(1);
            c.prev_hash = last.hash;
        }
        Ok(c)
    }

    /// The instance name.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The seq the next sealed event will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Fills `instance`, `seq`, `prev_hash` and `hash` of `event` and advances the
    /// chain. On error the chain does not advance.
    pub fn seal(&mut self, event: &mut AuditEvent) -> Result<(), AuditError> {
        self.seal_inner(event, false).map(drop)
    }

    /// [`Chainer::seal`], also returning the sealed event as a native JSON line (what
    /// [`json::encode`](crate::format::json::encode) writes for it), made from the
    /// canonical form that was just hashed rather than by serializing the event again.
    pub fn seal_line(&mut self, event: &mut AuditEvent) -> Result<Vec<u8>, AuditError> {
        match self.seal_inner(event, true)? {
            Some(line) => Ok(line),
            None => {
                let mut line = Vec::with_capacity(2048);
                crate::format::json::encode(event, &mut line)?;
                Ok(line)
            }
        }
    }

    fn seal_inner(
        &mut self,
        event: &mut AuditEvent,
        want_line: bool,
    ) -> Result<Option<Vec<u8>>, AuditError> {
        event.instance.clone_from(&self.instance);
        event.seq = self.next_seq;
        event.prev_hash.clone_from(&self.prev_hash);
        event.hash.clear();
        let key = self.key.as_ref().map(|k| k.as_slice());
        let (hash, line) = if self.canonical.write_event(event).is_ok() {
            let hash = digest(self.canonical.bytes(), key)?;
            // The canonical form with the hash in its (empty) `hash` member is the
            // canonical form of the sealed event: the native line.
            let line = want_line
                .then(|| self.canonical.with_hash(&hash))
                .flatten()
                .map(|mut line| {
                    line.push(b'\n');
                    line
                });
            (hash, line)
        } else {
            // Something the direct writer does not reproduce: the same bytes, slower.
            let mut bytes = Vec::with_capacity(2048);
            canonical::write_value(&serde_json::to_value(&*event)?, &mut bytes)?;
            (digest(&bytes, key)?, None)
        };
        event.hash.clone_from(&hash);
        self.prev_hash = hash;
        self.next_seq = self.next_seq.saturating_add(1);
        Ok(line)
    }
}

/// The hash of an event given as a JSON object, computed with its `hash` member
/// replaced by `""` (the object is not modified).
pub fn hash_value(event: &Value, key: Option<&[u8]>) -> Result<String, AuditError> {
    let mut bytes = Vec::with_capacity(2048);
    match event {
        Value::Object(map) => {
            let mut map = map.clone();
            map.insert("hash".into(), Value::String(String::new()));
            canonical::write_value(&Value::Object(map), &mut bytes)?;
        }
        other => canonical::write_value(other, &mut bytes)?,
    }
    digest(&bytes, key)
}

/// `sha256:<hex>` of `bytes`, or `hmac-sha256:<hex>` with `key`.
fn digest(bytes: &[u8], key: Option<&[u8]>) -> Result<String, AuditError> {
    let (prefix, sum): (&str, [u8; 32]) = match key {
        Some(key) => {
            // HMAC accepts keys of any length; the error arm is unreachable.
            let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key)
                .map_err(|_| AuditError::Config("invalid HMAC key".into()))?;
            mac.update(bytes);
            (HMAC_PREFIX, mac.finalize().into_bytes().into())
        }
        None => (SHA256_PREFIX, Sha256::digest(bytes).into()),
    };
    let mut hash = String::with_capacity(prefix.len() + 2 * sum.len());
    hash.push_str(prefix);
    push_hex(&mut hash, &sum);
    Ok(hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventKind, Timestamp};

    fn ev() -> AuditEvent {
        AuditEvent::at(EventKind::Connection, Timestamp::now()).with_user("alice")
    }

    #[test]
    fn seals_in_order_and_links() {
        let mut c = Chainer::new("px1", None);
        let mut a = ev();
        let mut b = ev();
        c.seal(&mut a).unwrap();
        c.seal(&mut b).unwrap();
        assert_eq!((a.seq, b.seq), (1, 2));
        assert_eq!(a.prev_hash, "");
        assert_eq!(b.prev_hash, a.hash);
        assert!(a.hash.starts_with(SHA256_PREFIX));
        assert_eq!(a.instance, "px1");
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(hash_value(&v, None).unwrap(), a.hash);
    }

    #[test]
    fn seal_agrees_with_hash_value_on_full_events() {
        use crate::event::DecisionInfo;
        use crate::format::fixtures;
        let nasty = "a\nb\"c\\d\u{0}é\u{2028}";
        let events = [
            fixtures::statement(),
            fixtures::login(),
            fixtures::statement()
                .with_attribute(nasty, nasty)
                .with_attribute("Z", "z")
                .with_detail(nasty)
                .with_decision(DecisionInfo::new(crate::event::Outcome::Rewritten)),
        ];
        for key in [None, Some(b"k".to_vec())] {
            let mut c = Chainer::new("px1", key.clone());
            for mut e in events.clone() {
                c.seal(&mut e).unwrap();
                let v = serde_json::to_value(&e).unwrap();
                assert_eq!(hash_value(&v, key.as_deref()).unwrap(), e.hash);
            }
        }
    }

    #[test]
    fn hash_ignores_field_order_and_whitespace() {
        let mut c = Chainer::new("px1", None);
        let mut a = ev();
        c.seal(&mut a).unwrap();
        let reordered = format!(
            "{{ \"user\": \"alice\", \"kind\": \"connection\", \"hash\": \"{}\", \"prev_hash\": \"\", \"seq\": 1, \"instance\": \"px1\", \"id\": \"{}\", \"time\": \"{}\" }}",
            a.hash, a.id, a.time
        );
        let v: Value = serde_json::from_str(&reordered).unwrap();
        assert_eq!(hash_value(&v, None).unwrap(), a.hash);
    }

    #[test]
    fn keyed_hash_depends_on_key() {
        let mut c1 = Chainer::new("px1", Some(b"k1".to_vec()));
        let mut c2 = Chainer::new("px1", Some(b"k2".to_vec()));
        let mut a = ev();
        let mut b = a.clone();
        c1.seal(&mut a).unwrap();
        c2.seal(&mut b).unwrap();
        assert!(a.hash.starts_with(HMAC_PREFIX));
        assert_ne!(a.hash, b.hash);
        assert!(!format!("{c1:?}").contains("k1"));
    }

    #[test]
    fn resume_continues_and_refuses_mismatches() {
        let mut c = Chainer::new("px1", None);
        let mut a = ev();
        c.seal(&mut a).unwrap();
        let link = Link {
            instance: "px1".into(),
            seq: a.seq,
            hash: a.hash.clone(),
        };
        let mut r = Chainer::resume("px1", None, Some(link.clone())).unwrap();
        let mut b = ev();
        r.seal(&mut b).unwrap();
        assert_eq!(b.seq, 2);
        assert_eq!(b.prev_hash, a.hash);
        assert!(Chainer::resume("px2", None, Some(link.clone())).is_err());
        assert!(Chainer::resume("px1", Some(b"k".to_vec()), Some(link)).is_err());
    }
}
