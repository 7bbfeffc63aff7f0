//! Portcullis: a transparent, TLS-terminating security proxy for PostgreSQL.
//!
//! The life of a client connection reads top to bottom in [`session::run`]:
//! accept -> TLS negotiation -> startup -> authentication by the proxy ->
//! upstream connection -> relay, with every statement handed to the policy hook.
//! Beside the sessions, [`catalog`] keeps a snapshot of the upstream's catalog for the
//! policy, refreshed after DDL.

pub mod auth;
pub mod cancel;
pub mod catalog;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod metrics;
pub mod pg;
pub mod policy_source;
pub mod server;
pub mod session;
pub mod stream;
pub mod tls;
pub mod upstream;
