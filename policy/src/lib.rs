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
//! This crate does no I/O: it is a pure function of (policy, identity, text), plus a
//! cache. The relation-level engine (row filters, column masks, function grants) will
//! grow from the parsed statements kept in the cache.
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

mod analysis;
mod class;
mod config;
mod decision;
mod engine;
mod error;
mod identity;
mod policy;

#[cfg(test)]
mod roundtrip;

pub use class::{ClassSet, StatementClass};
pub use config::{
    ClassGrant, DEFAULT_CACHE_ENTRIES, DEFAULT_CACHE_MAX_BYTES, DEFAULT_MAX_STATEMENT_BYTES,
    PolicyConfig, RoleConfig,
};
pub use decision::{Decision, Denial, sqlstate};
pub use engine::Engine;
pub use error::PolicyError;
pub use identity::Identity;
pub use policy::Policy;
