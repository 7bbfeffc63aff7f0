//! Where encoded events go. Each sink has its own file (config, encoder use, service,
//! tests); batching, retry with backoff and the disk spool are shared, in `pipeline`.

pub mod file;
pub mod http;
pub mod nats;
pub mod syslog;

use std::future::Future;
use std::pin::Pin;

use crate::event::AuditEvent;

/// Why a sink could not take a batch.
///
/// The pipeline treats the three differently:
///
/// - [`SinkError::Retryable`]: the receiver is down or busy. The batch is spooled and
///   retried with back-off.
/// - [`SinkError::Permanent`]: the receiver will not take anything from this sink as it
///   is configured (credentials refused, no such index or stream, TLS name, missing
///   permissions). Retried with back-off and spooled exactly like a retryable error:
///   once the operator fixes the configuration or the receiver, everything spooled is
///   delivered and nothing is lost.
/// - [`SinkError::Refused`]: the receiver refused *these records* for good (malformed
///   or oversized data, a mapping conflict). Sending them again cannot help, and
///   retrying would block everything behind them, so the pipeline isolates the refused
///   records and moves them to the sink's dead-letter file (see
///   [`crate::pipeline`]).
///
/// Each sink's module docs give its mapping of receiver answers to these variants.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The receiver is unreachable or answered with a transient failure.
    #[error("{0}")]
    Retryable(String),
    /// The receiver refuses this sink as configured (bad credentials, no such index,
    /// missing permissions); nothing it sends can arrive until that is fixed.
    #[error("{0}")]
    Permanent(String),
    /// The receiver refused the content of the batch for good (malformed record,
    /// mapping conflict, too large). The message names the reason, never the records'
    /// contents.
    #[error("{0}")]
    Refused(String),
}

/// A boxed future, so that sinks can be held as trait objects.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;

/// A destination for encoded, sealed audit records.
///
/// `records` are complete records in the sink's format, in order, each ending with a
/// newline (as [`crate::format::Format::encode`] produces them). `send` returns only
/// once the receiver has acknowledged all of them (for at-least-once delivery); on error
/// none or some of them may have arrived, and the pipeline sends the whole batch again.
pub trait Sink: Send {
    /// A short name for logs and metrics (`file`, `syslog`, `splunk`, ...).
    fn name(&self) -> &str;
    /// Delivers `records`.
    fn send<'a>(&'a mut self, records: &'a [Vec<u8>]) -> SendFuture<'a>;

    /// Whether the sink encodes events itself from the records it is sent (a file in
    /// another format than native JSON), so that [`Sink::send_events`] spares it
    /// decoding them.
    fn takes_events(&self) -> bool {
        false
    }

    /// [`Sink::send`], given also the events `records` were made from, one each and in
    /// the same order. The default sends the records.
    fn send_events<'a>(
        &'a mut self,
        records: &'a [Vec<u8>],
        events: &'a [&'a AuditEvent],
    ) -> SendFuture<'a> {
        let _ = events;
        self.send(records)
    }
}
