//! Portcullis audit: the audit event, its formats, its hash chain and its sinks.
//!
//! The way of an event:
//!
//! 1. the proxy builds an [`AuditEvent`] at a session hook (statement texts go through
//!    [`normalize()`](normalize::normalize) so that no literal is ever recorded);
//! 2. the audit writer task seals it into the instance's hash chain with a [`Chainer`];
//! 3. a [`Format`] encodes it (native JSON, OCSF JSON, CEF or RFC 5424 syslog);
//! 4. a sink writes it ([`sink::file::FileSink`]: append, fsync per batch, rotation by
//!    size, retention by count and age);
//! 5. [`verify::verify`] checks files of JSON lines for modified, missing, reordered or
//!    duplicated events.
//!
//! # Not done yet (TODO for the rest of the audit pipeline issue)
//!
//! - Network sinks: syslog over TCP/TLS (RFC 5425 octet-counting framing), HTTP (Splunk
//!   HEC, Elasticsearch bulk), NATS JetStream; each as a folder under `sink/` with
//!   shared batching and retry with backoff and jitter.
//! - The bounded queue between the query path and the sinks, fail-open/fail-closed per
//!   sink, and the on-disk spool that replays in order while a receiver is down; an
//!   `audit_loss` event whenever anything is dropped.
//! - Wiring into the proxy (session hooks, `AuditConfig` in the binary's config, the
//!   chain key from the key provider).
//! - The `portcullis audit verify` CLI over [`verify::verify`].
//! - Resuming a chain from a file in a format other than native JSON (only JSON lines
//!   can be read back by [`sink::file::last_sealed`]); OCSF/CEF/syslog files therefore
//!   need the chain state persisted elsewhere, or a JSON file sink alongside.
//! - Collapsing literal lists (`IN (?, ?, ?)`) in fingerprints.
//! - Serde configuration (`AuditConfig` with `deny_unknown_fields`, one section per
//!   sink) for the binary to aggregate; today [`sink::file::FileSinkConfig`] and
//!   [`format::SyslogOptions`] are plain structs.
//! - Fuzz targets (outside the default members) for [`normalize()`](normalize::normalize)
//!   and for [`verify::verify`]'s line reader; today both have deterministic
//!   pseudo-random tests.
//! - Checking OCSF output against the OCSF 1.3.0 schema (see [`format::ocsf`] for the
//!   mapping choices that are uncertain) and CEF output against a real receiver.

pub mod chain;
mod error;
pub mod event;
pub mod format;
pub mod normalize;
pub mod pipeline;
pub mod sink;
pub mod verify;

pub use chain::{Chainer, Link};
pub use error::AuditError;
pub use event::{
    AuditEvent, ClientInfo, DecisionInfo, EventId, EventKind, Outcome, SessionTotals, Severity,
    StatementInfo, Timestamp, TouchedColumn, TouchedTable,
};
pub use format::Format;
pub use normalize::{Normalized, normalize};

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}
