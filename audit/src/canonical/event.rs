//! The canonical form of an [`AuditEvent`], written field by field.
//!
//! Most of an event's bytes are parts it shares with other events through `Arc`s:
//! its session's client, attributes and roles, and its statement's description and
//! decision (every execution of a prepared statement shares them). Their canonical
//! forms are kept ([`Fragments`]) and copied into the next event that holds the same
//! `Arc`, so that sealing a session's events serializes those parts once. The bytes
//! are those [`Writer::write`] produces for the whole event; a test compares the two.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use super::{Canonical, State, Unsupported, Writer, integer, string};
use crate::event::{AuditEvent, ClientInfo, DecisionInfo, StatementInfo};

/// Slots per kind of shared part (`1 << SLOT_BITS`). A direct-mapped table: a new part
/// takes the slot its address hashes to. 64 covers the sessions and statements in
/// flight on one proxy thread between two events of one of them, which is what makes a
/// hit.
const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;

/// The canonical bytes of recently written shared parts, by kind.
#[derive(Default)]
pub(super) struct Fragments {
    attributes: Table<BTreeMap<String, String>>,
    client: Table<ClientInfo>,
    decision: Table<DecisionInfo>,
    roles: Table<[String]>,
    statement: Table<StatementInfo>,
}

impl fmt::Debug for Fragments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fragments").finish_non_exhaustive()
    }
}

/// Each slot keeps the `Arc` its bytes were written from. Holding it is what makes the
/// address a sound key: the allocation cannot be freed and reused for another value
/// while the slot stands for it, and with this second reference `Arc::make_mut` copies
/// the value instead of changing it in place (the types have no interior mutability).
struct Table<T: ?Sized> {
    slots: Vec<Option<(Arc<T>, Vec<u8>)>>,
}

impl<T: ?Sized> Default for Table<T> {
    fn default() -> Self {
        Table { slots: Vec::new() }
    }
}

impl<T: Serialize + ?Sized> Table<T> {
    /// Appends the canonical form of `v` to `st.out`: copied when `v` is the `Arc` a
    /// slot was written from, otherwise written and kept in `v`'s slot.
    fn write(&mut self, st: &mut State, v: &Arc<T>) -> Result<(), Unsupported> {
        if self.slots.is_empty() {
            self.slots.resize_with(SLOTS, || None);
        }
        let addr = Arc::as_ptr(v).cast::<()>() as usize;
        // Fibonacci hashing (the top bits of the address times 2^64 / phi): allocations
        // are aligned, so the low bits of an address say little.
        let at = (addr as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (u64::BITS - SLOT_BITS);
        let at = usize::try_from(at).unwrap_or_default();
        let Some(slot) = self.slots.get_mut(at) else {
            return v.serialize(Canonical { st });
        };
        if let Some((held, bytes)) = slot {
            if Arc::ptr_eq(held, v) {
                st.out.extend_from_slice(bytes);
                return Ok(());
            }
        }
        let from = st.out.len();
        v.serialize(Canonical { st: &mut *st })?;
        let written = &st.out[from..];
        match slot {
            Some((held, bytes)) => {
                *held = Arc::clone(v);
                bytes.clear();
                bytes.extend_from_slice(written);
            }
            None => *slot = Some((Arc::clone(v), written.to_vec())),
        }
        Ok(())
    }
}

/// Writes an object's members in the order they come; the caller brings them in key
/// order (the order `AuditEvent` declares its fields in).
struct Members<'a> {
    st: &'a mut State,
    first: bool,
}

impl Members<'_> {
    /// `,"key":` (no comma before the first member); `key` needs no escaping.
    fn key(&mut self, key: &str) {
        let out = &mut self.st.out;
        if !self.first {
            out.push(b',');
        }
        self.first = false;
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
    }

    fn str(&mut self, key: &str, v: &str) -> Result<(), Unsupported> {
        self.key(key);
        string(&mut self.st.out, v)
    }

    fn opt_str(&mut self, key: &str, v: Option<&String>) -> Result<(), Unsupported> {
        match v {
            Some(v) => self.str(key, v),
            None => Ok(()),
        }
    }

    fn u64(&mut self, key: &str, v: u64) {
        self.key(key);
        integer(&mut self.st.out, v);
    }

    fn serialized<T: Serialize + ?Sized>(&mut self, key: &str, v: &T) -> Result<(), Unsupported> {
        self.key(key);
        v.serialize(Canonical { st: &mut *self.st })
    }

    fn shared<T: Serialize + ?Sized>(
        &mut self,
        key: &str,
        table: &mut Table<T>,
        v: &Arc<T>,
    ) -> Result<(), Unsupported> {
        self.key(key);
        table.write(self.st, v)
    }
}

impl Writer {
    /// Writes `event` in canonical form, replacing what the last call wrote: the same
    /// bytes as [`Writer::write`], with the event's shared parts copied from earlier
    /// events where they are the same `Arc`s.
    pub(crate) fn write_event(&mut self, event: &AuditEvent) -> Result<(), Unsupported> {
        let Writer { st, fragments } = self;
        st.out.clear();
        st.members.clear();
        st.hash_slot = None;
        st.reordered = 0;
        // The members' values are written as values inside the event: none of them is
        // the outermost object (which is where `write` looks for the hash member).
        st.depth = 1;
        let result = write_members(st, fragments, event);
        st.depth = 0;
        result
    }
}

fn write_members(
    st: &mut State,
    fragments: &mut Fragments,
    event: &AuditEvent,
) -> Result<(), Unsupported> {
    // Every field by name, without `..`: a field added to `AuditEvent` does not compile
    // until it is written here too. Each is written when serde would write it (the
    // `skip_serializing_if` of its declaration), in declaration order, which is key
    // order.
    let AuditEvent {
        application_name,
        attributes,
        client,
        database,
        decision,
        detail,
        duration_us,
        hash,
        id,
        instance,
        kind,
        prev_hash,
        roles,
        rows,
        seq,
        session,
        session_id,
        sqlstate,
        statement,
        time,
        user,
    } = event;
    st.out.push(b'{');
    let mut m = Members { st, first: true };
    m.opt_str("application_name", application_name.as_ref())?;
    if !attributes.is_empty() {
        m.shared("attributes", &mut fragments.attributes, attributes)?;
    }
    if let Some(client) = client {
        m.shared("client", &mut fragments.client, client)?;
    }
    m.opt_str("database", database.as_ref())?;
    if let Some(decision) = decision {
        m.shared("decision", &mut fragments.decision, decision)?;
    }
    m.opt_str("detail", detail.as_ref())?;
    if let Some(duration_us) = duration_us {
        m.u64("duration_us", *duration_us);
    }
    m.key("hash");
    if hash.is_empty() {
        // Where the hash goes once it is known: after the opening quote.
        m.st.hash_slot = Some(m.st.out.len() + 1);
    }
    string(&mut m.st.out, hash)?;
    m.serialized("id", id)?;
    m.str("instance", instance)?;
    m.serialized("kind", kind)?;
    m.str("prev_hash", prev_hash)?;
    if !roles.is_empty() {
        m.shared("roles", &mut fragments.roles, roles)?;
    }
    if let Some(rows) = rows {
        m.u64("rows", *rows);
    }
    m.u64("seq", *seq);
    if let Some(session) = session {
        m.serialized("session", session)?;
    }
    m.opt_str("session_id", session_id.as_ref())?;
    m.opt_str("sqlstate", sqlstate.as_ref())?;
    if let Some(statement) = statement {
        m.shared("statement", &mut fragments.statement, statement)?;
    }
    m.serialized("time", time)?;
    m.opt_str("user", user.as_ref())?;
    m.st.out.push(b'}');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventKind, Outcome, SessionTotals, TouchedTable};
    use crate::format::fixtures;

    fn generic(event: &AuditEvent) -> (Vec<u8>, Option<Vec<u8>>) {
        let mut w = Writer::default();
        w.write(event).unwrap();
        (w.bytes().to_vec(), w.with_hash("sha256:00"))
    }

    fn check(w: &mut Writer, event: &AuditEvent) {
        let (bytes, line) = generic(event);
        w.write_event(event).unwrap();
        assert_eq!(
            String::from_utf8_lossy(w.bytes()),
            String::from_utf8_lossy(&bytes)
        );
        assert_eq!(w.with_hash("sha256:00"), line);
    }

    /// Every field set, strings that need escaping, and the same `Arc`s again, changed
    /// through `Arc::make_mut`, and dropped and replaced: always the bytes `write` gives.
    #[test]
    fn writes_what_the_generic_writer_writes() {
        let nasty = "a\nb\r\"c\\d\u{0}é\u{2028}";
        let mut full = fixtures::statement()
            .with_attribute("department", "support")
            .with_attribute(nasty, nasty)
            .with_detail(nasty)
            .with_application(nasty)
            .with_totals(SessionTotals::default());
        full.client = Some(Arc::new(ClientInfo {
            cert_subject: Some(format!("CN={nasty}")),
            ..full.client.as_deref().cloned().unwrap_or_default()
        }));
        full.rows = Some(7);
        full.hash.clear();
        let sealed = fixtures::statement();
        assert!(!sealed.hash.is_empty());
        let bare = AuditEvent::new(EventKind::SessionEnd);

        let mut w = Writer::default();
        for event in [&full, &sealed, &bare, &fixtures::login(), &full, &full] {
            check(&mut w, event);
        }

        // A shared part changed after it was written: make_mut copies it, since the
        // writer holds a reference, so the new value is written, not the kept bytes.
        let mut changed = full.clone();
        if let Some(decision) = &mut changed.decision {
            Arc::make_mut(decision).outcome = Outcome::Allowed;
        }
        if let Some(statement) = &mut changed.statement {
            Arc::make_mut(statement).tables.push(TouchedTable {
                name: "public.other".into(),
                classes: vec!["pii".into()],
                columns: Vec::new(),
            });
        }
        changed = changed.with_attribute("added", "1");
        changed.roles = Arc::from(vec!["x".to_owned(), nasty.to_owned()]);
        check(&mut w, &changed);
        check(&mut w, &full);

        // Many distinct parts: every slot taken and replaced, hits and misses mixed.
        let events: Vec<AuditEvent> = (0..3 * SLOTS)
            .map(|i| {
                fixtures::statement()
                    .with_user(format!("u{i}"))
                    .with_attribute("tenant", i.to_string())
                    .with_roles([format!("r{i}")])
            })
            .collect();
        for round in 0..2 {
            for (i, event) in events.iter().enumerate() {
                if (i + round) % 3 != 0 {
                    check(&mut w, event);
                }
            }
        }
    }
}
