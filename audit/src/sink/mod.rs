//! Where encoded events go. Each sink has its own file (config, encoder use, service,
//! tests); batching, retry with backoff and the disk spool are shared, in `pipeline`.

pub mod file;
pub mod http;
pub mod nats;
pub mod syslog;

use std::future::Future;
use std::pin::Pin;

/// Why a sink could not take a batch. Retryable errors make the pipeline back off and
/// retry (spooling meanwhile); permanent ones are reported and the batch is spooled.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The receiver is unreachable or answered with a transient failure.
    #[error("{0}")]
    Retryable(String),
    /// The receiver refused the batch for good (bad credentials, malformed request).
    #[error("{0}")]
    Permanent(String),
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
}
