//! PostgreSQL wire protocol, version 3.0, as the proxy needs it.
//!
//! Message types come from `pgwire`'s codec (without its server features); this module
//! adds what a proxy needs around them: framing with a size limit, the untyped first
//! packet, ErrorResponse construction with SQLSTATEs, and a scanner that walks the
//! backend stream without buffering whole results.

pub mod error;
pub mod frame;
pub mod messages;
pub mod scan;
pub mod startup;

pub use error::PgError;
pub use frame::{FrameError, Framer, RawMessage};
