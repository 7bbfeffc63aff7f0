//! Canonical JSON: object keys sorted bytewise, no whitespace, strings and integers
//! written as serde_json writes them. The hash chain hashes an event's canonical form
//! (see [`crate::chain`]); the OCSF encoder writes it for stable output.
//!
//! Two writers produce the same bytes:
//!
//! - [`write_value`] walks a [`serde_json::Value`]; `verify` uses it, since it reads
//!   events back as values.
//! - [`write`] serializes any `Serialize` type straight into canonical form, without
//!   building a `Value` tree first (which costs an allocation per key and per string,
//!   and dominated the cost of sealing an event). Each object's members are written in
//!   the order they come, then reordered by key in place. It refuses what it does not
//!   reproduce exactly (floats, integers beyond 64 bits, non-string map keys other than
//!   integers, duplicate keys) with [`Unsupported`], so that the caller can fall back
//!   to `write_value`; it never writes something different.
//! - [`Writer::write_event`] writes an [`AuditEvent`](crate::event::AuditEvent) field
//!   by field and copies the canonical forms of the parts it shares with earlier events
//!   (session, statement, decision) instead of writing them again (module `event`).
//!   The hash chain seals with it.

use std::borrow::Cow;
use std::fmt;

use serde::Serialize;
use serde::ser::{self, Impossible};
use serde_json::Value;

use crate::AuditError;

mod event;
use event::Fragments;

/// Writes `v` as canonical JSON.
pub(crate) fn write_value(v: &Value, out: &mut Vec<u8>) -> Result<(), AuditError> {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, k)?;
                out.push(b':');
                write_value(v, out)?;
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(v, out)?;
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar)?,
    }
    Ok(())
}

/// Appends `v` to `out` as canonical JSON, the same bytes as
/// `write_value(&serde_json::to_value(v)?)`. On error `out` may hold part of `v`.
#[cfg(test)]
pub(crate) fn write<T: Serialize + ?Sized>(v: &T, out: &mut Vec<u8>) -> Result<(), Unsupported> {
    let mut w = Writer::default();
    w.write(v)?;
    out.extend_from_slice(w.bytes());
    Ok(())
}

/// [`write`] with buffers kept from one value to the next (the hash chain writes one
/// event after the other).
#[derive(Debug, Default)]
pub(crate) struct Writer {
    st: State,
    /// The canonical forms of recent events' shared parts, for [`Writer::write_event`].
    fragments: Fragments,
}

impl Writer {
    /// Writes `v` in canonical form, replacing what the last call wrote; see
    /// [`Writer::bytes`].
    pub(crate) fn write<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Unsupported> {
        self.st.out.clear();
        self.st.members.clear();
        self.st.depth = 0;
        self.st.hash_slot = None;
        self.st.reordered = 0;
        v.serialize(Canonical { st: &mut self.st })
    }

    /// What the last successful [`Writer::write`] wrote.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.st.out
    }

    /// How many objects of the last written value had their members out of key order.
    #[cfg(test)]
    pub(crate) fn reordered(&self) -> usize {
        self.st.reordered
    }

    /// The last written value with `hash` put into its outermost `"hash":""` member:
    /// the canonical form of the same value with that member set to `hash` (which must
    /// need no escaping). `None` when the value has no such member.
    pub(crate) fn with_hash(&self, hash: &str) -> Option<Vec<u8>> {
        let at = self.st.hash_slot?;
        let out = &self.st.out;
        // One byte more: the sealer ends the line with a newline.
        let mut line = Vec::with_capacity(out.len() + hash.len() + 1);
        line.extend_from_slice(&out[..at]);
        line.extend_from_slice(hash.as_bytes());
        line.extend_from_slice(&out[at..]);
        Some(line)
    }
}

/// The value holds something [`write`] does not reproduce exactly (or its `Serialize`
/// implementation failed); use [`write_value`] instead.
#[derive(Debug)]
pub(crate) struct Unsupported(String);

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not written canonically: {}", self.0)
    }
}

impl std::error::Error for Unsupported {}

impl ser::Error for Unsupported {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Unsupported(msg.to_string())
    }
}

fn unsupported<T>(what: &str) -> Result<T, Unsupported> {
    Err(Unsupported(what.to_owned()))
}

/// Writes `s` as a JSON string, escaped as serde_json escapes it.
fn string(out: &mut Vec<u8>, s: &str) -> Result<(), Unsupported> {
    // serde_json escapes exactly the control characters, `"` and `\`. Most strings in
    // an event have none, and checking that first is several times faster than
    // serde_json's byte-by-byte escaping (a fold without early exit, so that the
    // compiler vectorizes it).
    let plain = !s.bytes().fold(false, |seen, b| {
        seen | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if plain {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return Ok(());
    }
    serde_json::to_writer(&mut *out, s).map_err(|e| Unsupported(e.to_string()))
}

/// `a` sorts strictly before `b`, bytewise; most keys differ in their first byte.
fn key_before(a: &str, b: &str) -> bool {
    match (a.as_bytes().first(), b.as_bytes().first()) {
        (Some(x), Some(y)) if x != y => x < y,
        _ => a.as_bytes() < b.as_bytes(),
    }
}

fn integer(out: &mut Vec<u8>, v: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// What the serializer writes to, shared by every nested object and array.
#[derive(Debug, Default)]
struct State {
    out: Vec<u8>,
    /// Where an object's members wait while they are put in key order.
    scratch: Vec<u8>,
    /// The members of the objects being written, innermost last: each object's
    /// members sit above those of the objects around it (a stack).
    members: Vec<Member>,
    /// Objects open around the value being written.
    depth: usize,
    /// Where the outermost object's `"hash":""` value sits in `out`: the offset of
    /// its closing quote.
    hash_slot: Option<usize>,
    /// Buffer for `collect_str`.
    text: String,
    /// Objects whose members came out of key order and had to be rewritten.
    reordered: usize,
}

/// An object member: its key and the range of `out` its value occupies.
#[derive(Debug)]
struct Member {
    key: Cow<'static, str>,
    from: usize,
    to: usize,
}

/// The serializer behind [`write`].
struct Canonical<'a> {
    st: &'a mut State,
}

/// A JSON array being written.
struct Array<'a> {
    st: &'a mut State,
    first: bool,
    /// Closes the `{"variant":` of a tuple variant.
    close: bool,
}

/// A JSON object being written: members go to `out` as they come, keys included. When
/// they come in key order (the event types declare their fields in that order, and
/// `BTreeMap`s iterate in it) that is already the canonical form; otherwise
/// [`Object::finish`] rewrites the object with its members sorted.
struct Object<'a> {
    st: &'a mut State,
    /// Where this object's `{` is in `out`.
    start: usize,
    /// Every key so far came after the one before it.
    sorted: bool,
    /// Where this object's members start in `State::members`.
    base: usize,
    /// The key of a map entry whose value comes next.
    key: Option<String>,
    /// Closes the `{"variant":` of a struct variant.
    close: bool,
}

impl<'a> Canonical<'a> {
    fn object(self, close: bool) -> Object<'a> {
        self.st.depth += 1;
        let start = self.st.out.len();
        self.st.out.push(b'{');
        let base = self.st.members.len();
        Object {
            st: self.st,
            start,
            sorted: true,
            base,
            key: None,
            close,
        }
    }

    fn array(self, close: bool) -> Array<'a> {
        self.st.out.push(b'[');
        Array {
            st: self.st,
            first: true,
            close,
        }
    }

    /// `{"variant":` for the enum representations serde_json uses.
    fn open_variant(&mut self, variant: &str) -> Result<(), Unsupported> {
        self.st.out.push(b'{');
        string(&mut self.st.out, variant)?;
        self.st.out.push(b':');
        Ok(())
    }
}

impl Object<'_> {
    fn value<T: Serialize + ?Sized>(
        &mut self,
        key: Cow<'static, str>,
        v: &T,
    ) -> Result<(), Unsupported> {
        let st = &mut *self.st;
        if let Some(prev) = st.members[self.base..].last() {
            if self.sorted && !key_before(&prev.key, &key) {
                self.sorted = false;
            }
            st.out.push(b',');
        }
        string(&mut st.out, &key)?;
        st.out.push(b':');
        let from = st.out.len();
        v.serialize(Canonical { st: &mut *st })?;
        let to = st.out.len();
        st.members.push(Member { key, from, to });
        Ok(())
    }

    fn finish(self) -> Result<(), Unsupported> {
        let State {
            out,
            scratch,
            members,
            depth,
            hash_slot,
            reordered,
            ..
        } = &mut *self.st;
        let outermost = *depth == 1;
        *depth -= 1;
        let mine = &mut members[self.base..];
        if self.sorted {
            // Written in key order: nothing to move.
            out.push(b'}');
        } else {
            // Same members, same length, rewritten in key order from a copy; each
            // member's range is moved to where its value now is.
            *reordered += 1;
            scratch.clear();
            scratch.extend_from_slice(&out[self.start..]);
            out.truncate(self.start);
            mine.sort_unstable_by(|a, b| a.key.as_bytes().cmp(b.key.as_bytes()));
            if mine.windows(2).any(|w| w[0].key == w[1].key) {
                // A `Value` would keep only the last; not worth reproducing.
                return unsupported("duplicate key");
            }
            out.push(b'{');
            for (i, m) in mine.iter_mut().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(out, &m.key)?;
                out.push(b':');
                let from = out.len();
                out.extend_from_slice(&scratch[m.from - self.start..m.to - self.start]);
                (m.from, m.to) = (from, out.len());
            }
            out.push(b'}');
        }
        if outermost {
            *hash_slot = mine
                .iter()
                .find(|m| m.key == "hash" && out[m.from..m.to] == *b"\"\"")
                .map(|m| m.from + 1);
        }
        if self.close {
            out.push(b'}');
        }
        members.truncate(self.base);
        Ok(())
    }
}

impl Array<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Unsupported> {
        if !self.first {
            self.st.out.push(b',');
        }
        self.first = false;
        v.serialize(Canonical { st: &mut *self.st })
    }

    fn finish(self) -> Result<(), Unsupported> {
        self.st.out.push(b']');
        if self.close {
            self.st.out.push(b'}');
        }
        Ok(())
    }
}

impl<'a> ser::Serializer for Canonical<'a> {
    type Ok = ();
    type Error = Unsupported;
    type SerializeSeq = Array<'a>;
    type SerializeTuple = Array<'a>;
    type SerializeTupleStruct = Array<'a>;
    type SerializeTupleVariant = Array<'a>;
    type SerializeMap = Object<'a>;
    type SerializeStruct = Object<'a>;
    type SerializeStructVariant = Object<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), Unsupported> {
        self.st
            .out
            .extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), Unsupported> {
        integer(&mut self.st.out, v);
        Ok(())
    }
    fn serialize_i16(self, v: i16) -> Result<(), Unsupported> {
        integer(&mut self.st.out, v);
        Ok(())
    }
    fn serialize_i32(self, v: i32) -> Result<(), Unsupported> {
        integer(&mut self.st.out, v);
        Ok(())
    }
    fn serialize_i64(self, v: i64) -> Result<(), Unsupported> {
        integer(&mut self.st.out, v);
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), Unsupported> {
        integer(&mut self.st.out, v);
        Ok(())
    }
    fn serialize_u16(self, v: u16) -> Result<(), Unsupported> {
        integer(&mut self.st.out, v);
        Ok(())
    }
    fn serialize_u32(self, v: u32) -> Result<(), Unsupported> {
        integer(&mut self.st.out, v);
        Ok(())
    }
    fn serialize_u64(self, v: u64) -> Result<(), Unsupported> {
        integer(&mut self.st.out, v);
        Ok(())
    }
    fn serialize_i128(self, _: i128) -> Result<(), Unsupported> {
        unsupported("128-bit integer")
    }
    fn serialize_u128(self, _: u128) -> Result<(), Unsupported> {
        unsupported("128-bit integer")
    }
    fn serialize_f32(self, _: f32) -> Result<(), Unsupported> {
        unsupported("float")
    }
    fn serialize_f64(self, _: f64) -> Result<(), Unsupported> {
        unsupported("float")
    }
    fn serialize_char(self, v: char) -> Result<(), Unsupported> {
        string(&mut self.st.out, v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(self, v: &str) -> Result<(), Unsupported> {
        string(&mut self.st.out, v)
    }
    fn collect_str<T: fmt::Display + ?Sized>(self, v: &T) -> Result<(), Unsupported> {
        // Times and ids are written this way: format into a kept buffer rather than a
        // fresh `String` each time.
        let mut text = std::mem::take(&mut self.st.text);
        text.clear();
        fmt::Write::write_fmt(&mut text, format_args!("{v}"))
            .map_err(|e| Unsupported(e.to_string()))?;
        let r = string(&mut self.st.out, &text);
        self.st.text = text;
        r
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Unsupported> {
        let mut a = self.array(false);
        for b in v {
            ser::SerializeSeq::serialize_element(&mut a, b)?;
        }
        a.finish()
    }
    fn serialize_none(self) -> Result<(), Unsupported> {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), Unsupported> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Unsupported> {
        self.st.out.extend_from_slice(b"null");
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Unsupported> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), Unsupported> {
        string(&mut self.st.out, variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<(), Unsupported> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        mut self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<(), Unsupported> {
        self.open_variant(variant)?;
        v.serialize(Canonical { st: &mut *self.st })?;
        self.st.out.push(b'}');
        Ok(())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Array<'a>, Unsupported> {
        Ok(self.array(false))
    }
    fn serialize_tuple(self, _: usize) -> Result<Array<'a>, Unsupported> {
        Ok(self.array(false))
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Array<'a>, Unsupported> {
        Ok(self.array(false))
    }
    fn serialize_tuple_variant(
        mut self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Array<'a>, Unsupported> {
        self.open_variant(variant)?;
        Ok(self.array(true))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Object<'a>, Unsupported> {
        Ok(self.object(false))
    }
    fn serialize_struct(self, name: &'static str, _: usize) -> Result<Object<'a>, Unsupported> {
        if name.starts_with("$serde_json::") {
            // serde_json's private tokens (RawValue, arbitrary precision numbers).
            return unsupported(name);
        }
        Ok(self.object(false))
    }
    fn serialize_struct_variant(
        mut self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Object<'a>, Unsupported> {
        self.open_variant(variant)?;
        Ok(self.object(true))
    }
}

impl ser::SerializeSeq for Array<'_> {
    type Ok = ();
    type Error = Unsupported;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Unsupported> {
        self.element(v)
    }
    fn end(self) -> Result<(), Unsupported> {
        self.finish()
    }
}

impl ser::SerializeTuple for Array<'_> {
    type Ok = ();
    type Error = Unsupported;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Unsupported> {
        self.element(v)
    }
    fn end(self) -> Result<(), Unsupported> {
        self.finish()
    }
}

impl ser::SerializeTupleStruct for Array<'_> {
    type Ok = ();
    type Error = Unsupported;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Unsupported> {
        self.element(v)
    }
    fn end(self) -> Result<(), Unsupported> {
        self.finish()
    }
}

impl ser::SerializeTupleVariant for Array<'_> {
    type Ok = ();
    type Error = Unsupported;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Unsupported> {
        self.element(v)
    }
    fn end(self) -> Result<(), Unsupported> {
        self.finish()
    }
}

impl ser::SerializeMap for Object<'_> {
    type Ok = ();
    type Error = Unsupported;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Unsupported> {
        self.key = Some(key.serialize(KeySerializer)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Unsupported> {
        let Some(key) = self.key.take() else {
            return unsupported("map value without a key");
        };
        self.value(Cow::Owned(key), v)
    }
    fn end(self) -> Result<(), Unsupported> {
        self.finish()
    }
}

impl ser::SerializeStruct for Object<'_> {
    type Ok = ();
    type Error = Unsupported;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        v: &T,
    ) -> Result<(), Unsupported> {
        self.value(Cow::Borrowed(key), v)
    }
    fn end(self) -> Result<(), Unsupported> {
        self.finish()
    }
}

impl ser::SerializeStructVariant for Object<'_> {
    type Ok = ();
    type Error = Unsupported;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        v: &T,
    ) -> Result<(), Unsupported> {
        self.value(Cow::Borrowed(key), v)
    }
    fn end(self) -> Result<(), Unsupported> {
        self.finish()
    }
}

/// Map keys, as serde_json turns them into object keys: strings as they are,
/// integers in decimal; anything else is refused.
struct KeySerializer;

impl ser::Serializer for KeySerializer {
    type Ok = String;
    type Error = Unsupported;
    type SerializeSeq = Impossible<String, Unsupported>;
    type SerializeTuple = Impossible<String, Unsupported>;
    type SerializeTupleStruct = Impossible<String, Unsupported>;
    type SerializeTupleVariant = Impossible<String, Unsupported>;
    type SerializeMap = Impossible<String, Unsupported>;
    type SerializeStruct = Impossible<String, Unsupported>;
    type SerializeStructVariant = Impossible<String, Unsupported>;

    fn serialize_str(self, v: &str) -> Result<String, Unsupported> {
        Ok(v.to_owned())
    }
    fn serialize_char(self, v: char) -> Result<String, Unsupported> {
        Ok(v.to_string())
    }
    fn serialize_i8(self, v: i8) -> Result<String, Unsupported> {
        Ok(v.to_string())
    }
    fn serialize_i16(self, v: i16) -> Result<String, Unsupported> {
        Ok(v.to_string())
    }
    fn serialize_i32(self, v: i32) -> Result<String, Unsupported> {
        Ok(v.to_string())
    }
    fn serialize_i64(self, v: i64) -> Result<String, Unsupported> {
        Ok(v.to_string())
    }
    fn serialize_u8(self, v: u8) -> Result<String, Unsupported> {
        Ok(v.to_string())
    }
    fn serialize_u16(self, v: u16) -> Result<String, Unsupported> {
        Ok(v.to_string())
    }
    fn serialize_u32(self, v: u32) -> Result<String, Unsupported> {
        Ok(v.to_string())
    }
    fn serialize_u64(self, v: u64) -> Result<String, Unsupported> {
        Ok(v.to_string())
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<String, Unsupported> {
        Ok(variant.to_owned())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<String, Unsupported> {
        v.serialize(self)
    }

    fn serialize_bool(self, _: bool) -> Result<String, Unsupported> {
        unsupported("bool map key")
    }
    fn serialize_i128(self, _: i128) -> Result<String, Unsupported> {
        unsupported("128-bit map key")
    }
    fn serialize_u128(self, _: u128) -> Result<String, Unsupported> {
        unsupported("128-bit map key")
    }
    fn serialize_f32(self, _: f32) -> Result<String, Unsupported> {
        unsupported("float map key")
    }
    fn serialize_f64(self, _: f64) -> Result<String, Unsupported> {
        unsupported("float map key")
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<String, Unsupported> {
        unsupported("bytes map key")
    }
    fn serialize_none(self) -> Result<String, Unsupported> {
        unsupported("none map key")
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<String, Unsupported> {
        unsupported("option map key")
    }
    fn serialize_unit(self) -> Result<String, Unsupported> {
        unsupported("unit map key")
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<String, Unsupported> {
        unsupported("unit map key")
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<String, Unsupported> {
        unsupported("enum map key")
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Unsupported> {
        unsupported("sequence map key")
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Unsupported> {
        unsupported("tuple map key")
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Unsupported> {
        unsupported("tuple map key")
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Unsupported> {
        unsupported("enum map key")
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Unsupported> {
        unsupported("map map key")
    }
    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, Unsupported> {
        unsupported("struct map key")
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Unsupported> {
        unsupported("enum map key")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use serde::Serialize;

    use super::*;
    use crate::event::{AuditEvent, DecisionInfo, Outcome};
    use crate::format::fixtures;

    fn via_value<T: Serialize>(v: &T) -> Vec<u8> {
        let mut out = Vec::new();
        write_value(&serde_json::to_value(v).unwrap(), &mut out).unwrap();
        out
    }

    fn direct<T: Serialize>(v: &T) -> Vec<u8> {
        let mut out = b"prefix".to_vec();
        write(v, &mut out).unwrap();
        out.split_off(6)
    }

    fn same<T: Serialize>(v: &T) {
        let (a, b) = (via_value(v), direct(v));
        assert_eq!(
            String::from_utf8_lossy(&b),
            String::from_utf8_lossy(&a),
            "direct vs via Value"
        );
    }

    #[test]
    fn events_match_the_value_path() {
        let nasty = "a\nb\r\nc|d=e]f\"g\\h\u{0}i\u{2028}é\u{1F600}";
        let mut hostile = fixtures::statement()
            .with_user(nasty)
            .with_detail(nasty)
            .with_application(nasty)
            .with_attribute(nasty, nasty)
            .with_attribute("Zeta", "1")
            .with_attribute("alpha", "2")
            .with_attribute("ä", "3")
            .with_attribute("", "4");
        hostile.decision = Some(DecisionInfo::new(Outcome::Denied).with_rule(nasty).into());
        hostile.hash.clear();
        let events: Vec<AuditEvent> = vec![
            fixtures::statement(),
            fixtures::login(),
            hostile,
            AuditEvent::new(crate::event::EventKind::SessionEnd)
                .with_totals(crate::event::SessionTotals::default()),
        ];
        for e in &events {
            same(e);
        }
    }

    /// The event types declare their fields in key order, so that events are written
    /// straight through; a field added out of order would still be written right, by
    /// the slower path, and this test would say so.
    #[test]
    fn events_are_written_without_reordering() {
        let mut full = fixtures::statement()
            .with_attribute("department", "support")
            .with_detail("d")
            .with_totals(crate::event::SessionTotals::default());
        full.client = Some(std::sync::Arc::new(crate::event::ClientInfo {
            cert_subject: Some("CN=x".into()),
            ..full.client.as_deref().cloned().unwrap_or_default()
        }));
        if let Some(decision) = &mut full.decision {
            std::sync::Arc::make_mut(decision).dry_run = true;
        }
        full.statement = full
            .statement
            .map(|s| std::sync::Arc::new((*s).clone().with_full_text("SELECT 1")));
        let mut w = Writer::default();
        for e in [&full, &fixtures::login()] {
            w.write(e).unwrap();
            assert_eq!(w.reordered(), 0, "{}", String::from_utf8_lossy(w.bytes()));
            same(e);
        }
        // Whereas a struct out of order is rewritten, to the same bytes.
        #[derive(Serialize)]
        struct Late {
            b: u8,
            a: [u8; 0],
        }
        w.write(&Late { b: 1, a: [] }).unwrap();
        assert_eq!((w.bytes(), w.reordered()), (&br#"{"a":[],"b":1}"#[..], 1));
    }

    #[test]
    fn serde_shapes_match_the_value_path() {
        #[derive(Serialize)]
        enum E {
            Unit,
            New(u8),
            Tuple(u8, &'static str),
            Struct { b: i64, a: Option<bool> },
        }
        #[derive(Serialize)]
        struct Newtype(&'static str);
        #[derive(Serialize)]
        struct Unit;
        #[derive(Serialize)]
        struct S {
            z: Vec<E>,
            y: (u8, char),
            x: Newtype,
            w: Unit,
            v: Option<u8>,
            #[serde(with = "serde_bytes_like")]
            u: Vec<u8>,
            t: BTreeMap<u32, i16>,
            s: HashMap<String, Vec<u64>>,
            r: (),
            #[serde(flatten)]
            q: BTreeMap<String, u8>,
        }
        mod serde_bytes_like {
            pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(v)
            }
        }
        let s = S {
            z: vec![
                E::Unit,
                E::New(1),
                E::Tuple(2, "t"),
                E::Struct { b: -3, a: None },
            ],
            y: (4, 'c'),
            x: Newtype("n"),
            w: Unit,
            v: None,
            u: vec![0, 255],
            t: [(10, -1), (9, 2)].into_iter().collect(),
            s: [("k".to_owned(), vec![u64::MAX]), ("j".into(), vec![])]
                .into_iter()
                .collect(),
            r: (),
            q: [("qq".to_owned(), 1)].into_iter().collect(),
        };
        same(&s);
    }

    #[test]
    fn refuses_what_it_would_not_reproduce() {
        let mut out = Vec::new();
        assert!(write(&1.5f64, &mut out).is_err());
        assert!(write(&u128::MAX, &mut out).is_err());
        let bool_keys: BTreeMap<bool, u8> = [(true, 1)].into_iter().collect();
        assert!(write(&bool_keys, &mut out).is_err());
        #[derive(Serialize)]
        struct Dup {
            a: u8,
            #[serde(flatten)]
            more: BTreeMap<String, u8>,
        }
        let dup = Dup {
            a: 1,
            more: [("a".to_owned(), 2)].into_iter().collect(),
        };
        assert!(write(&dup, &mut out).is_err());
    }
}
