//! The crate's one error type.

use std::path::PathBuf;

/// Why an audit operation failed.
///
/// These are operator-facing: they may name files and paths, and never reach a
/// database client.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("open", "write", "rename", ...).
        op: &'static str,
        /// The file it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An event could not be serialized.
    #[error("serialize audit event: {0}")]
    Serialize(#[from] serde_json::Error),
    /// A configuration value is out of range or malformed.
    #[error("invalid audit configuration: {0}")]
    Config(String),
}

impl AuditError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        AuditError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
