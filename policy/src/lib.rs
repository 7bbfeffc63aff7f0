//! Portcullis policy: compiled, immutable policies and the per-statement decision.
//!
//! Every statement text that reaches the proxy goes through [`Engine::check`]:
//!
//! 1. it is parsed with sqlparser's PostgreSQL dialect (cached by text; deeply nested
//!    input is a parse error, never a stack overflow);
//! 2. every statement in it is classified into [`StatementClass`]es by walking its
//!    whole syntax tree, failing closed to [`StatementClass::Dangerous`] for anything
//!    not recognised;
//! 3. it is re-serialized from the syntax tree — that text, not the client's, is what
//!    the proxy forwards, so the database runs exactly what was checked — and the
//!    re-serialized text must parse back to the same trees or the text is refused;
//! 4. the identity's roles must together be granted every class of every statement.
//!
//! This crate does no I/O: it is a pure function of (policy, identity, text), plus
//! caches. The relation-level engine (row filters, column masks, function grants) will
//! grow from the parsed statements kept in the cache.
//!
//! # Caches
//!
//! The analysis (steps 1 to 3) depends on the text alone, so it is cached by exact text
//! and a repeated text costs a lookup. Clients that inline literals (`pgbench -M simple`,
//! ORMs) send a new text every time, so a second cache is keyed by the text's *shape*:
//! the text with its simple literals replaced by parameters,
//! `SELECT abalance FROM pgbench_accounts WHERE aid = $1`. A shape's first text is
//! analysed as usual; for its second, the shape's key is analysed instead and, if that
//! and the first text's analysis prove a template, the text is decided from it, as is
//! every later text of that shape without any parsing: the template's decision, and its
//! forwarded text with the client's literal tokens copied in. The full analysis stays
//! the source of truth: whenever anything is in doubt, a text takes it.
//!
//! ## Why a template is safe
//!
//! What is proven once per shape, from one fully analysed text of it (decision D,
//! forwarded text F) and the full analysis of its key (Dk, Fk), with every check the
//! full analysis makes (parse, classification, re-serialization, round trip):
//!
//! - D and Dk come from the same statement kinds with the same effects (classes and the
//!   parts that need them), so they are the same decision for every identity and policy;
//! - every statement at any depth is a query, `INSERT`, `UPDATE` or `DELETE` and no
//!   function whose class depends on its arguments (`set_config`) is called, so the
//!   classification looked at no literal value;
//! - Fk holds each of `$1`..`$k` exactly once, and with the analysed text's literal
//!   tokens put in their places is exactly F: the parameters sit in the forwarded text
//!   where the literals sit.
//!
//! Why that covers every other text with the same shape: the shape scanner only
//! replaces a literal that sqlparser's PostgreSQL tokenizer reads as exactly one number
//! or standard-string token, with the same boundaries (anything that could continue or
//! re-prefix it refuses the whole text), that prints back as the very same bytes (no
//! backslashes, no two escaped quotes in a row), and that stands after an operator or
//! an opening bracket or comma (a number also after a keyword, as in `LIMIT 10`), where
//! the parser reads a number, a string and a parameter alike as one value leaf. The
//! cache key also records each literal's kind (integer, other number, string), so a
//! template only serves texts with the kinds it was proven with. Two texts with the same
//! cache key therefore tokenize alike except for those value tokens, parse to the same
//! tree except for those leaves, are classified alike (nothing looked at a value), and
//! print as Fk with each text's own literal tokens in the parameters' places: exactly
//! the text the fast path builds. Their re-serialization parses back to their tree for
//! the same reason the key's does. The remaining assumption (that sqlparser treats those
//! tokens alike where it accepts a parameter) is what the per-shape proof and the tests
//! comparing the fast path with full analyses over thousands of texts check.
//!
//! Texts decided from a template are not added to the exact-text cache (they would
//! only evict texts that need it). Both caches are bounded in entries and bytes.
//!
//! ```
//! use portcullis_policy::{Decision, Engine, Identity, Policy, PolicyConfig};
//!
//! let config: PolicyConfig = toml::from_str(r#"
//!     [roles.analyst]
//!     allow = ["read", "session", "transaction"]
//! "#).unwrap();
//! let policy = Policy::compile(&config).unwrap();
//! let engine = Engine::new(config.cache_entries);
//! let alice = Identity::new("alice", ["analyst"]);
//!
//! let read = engine.check(&policy, &alice, "select  1 -- hello");
//! assert!(matches!(read, Decision::Allow { ref sql, .. } if &**sql == "SELECT 1"));
//!
//! let write = engine.check(&policy, &alice, "DELETE FROM t");
//! assert_eq!(write.denial().map(|d| d.sqlstate), Some("42501"));
//! ```

#![warn(missing_docs)]

#[cfg(test)]
extern crate self as portcullis_policy;

mod access;
mod analysis;
pub mod catalog;
mod class;
mod config;
mod decision;
mod engine;
mod error;
pub mod governance;
mod identity;
mod policy;
mod rewrite;
mod shape;
pub mod support;
mod touched;

#[cfg(test)]
mod roundtrip;

pub use catalog::Catalog;
pub use class::{ClassSet, StatementClass};
pub use config::{
    ClassGrant, DEFAULT_CACHE_ENTRIES, DEFAULT_CACHE_MAX_BYTES, DEFAULT_MAX_STATEMENT_BYTES,
    PolicyConfig, RoleConfig,
};
pub use decision::{Decision, Denial, sqlstate};
pub use engine::{Engine, Touched};
pub use error::PolicyError;
pub use identity::Identity;
pub use policy::Policy;
pub use touched::{TouchedColumn, TouchedRelation};
