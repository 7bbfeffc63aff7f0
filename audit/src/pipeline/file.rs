//! The file sink as a pipeline [`Sink`].
//!
//! [`FileSink`] encodes sealed events itself (it owns rotation and the file's format),
//! so the pipeline hands it native JSON records and this adapter parses them back.
//! The write (with its fsync) runs in `spawn_blocking`.
//!
//! TODO: let `FileSink` take encoded records directly and drop the JSON round trip.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::event::AuditEvent;
use crate::pipeline::config::FileSettings;
use crate::sink::file::{FileSink, FileSinkConfig};
use crate::sink::{SendFuture, Sink, SinkError};
use crate::{AuditError, Format};

/// A [`FileSink`] behind the [`Sink`] trait.
pub(crate) struct FileRecordSink {
    inner: Arc<Mutex<FileSink>>,
}

impl FileRecordSink {
    pub(crate) fn open(settings: &FileSettings, format: Format) -> Result<Self, AuditError> {
        let config = FileSinkConfig {
            path: settings.path.clone(),
            format,
            max_bytes: settings.max_bytes,
            retain_count: settings.retain_count,
            retain_age: settings.retain_age_secs.map(Duration::from_secs),
        };
        Ok(FileRecordSink {
            inner: Arc::new(Mutex::new(FileSink::open(config)?)),
        })
    }
}

impl Sink for FileRecordSink {
    fn name(&self) -> &str {
        "file"
    }

    fn send<'a>(&'a mut self, records: &'a [Vec<u8>]) -> SendFuture<'a> {
        Box::pin(async move {
            let mut events = Vec::with_capacity(records.len());
            for r in records {
                let e: AuditEvent = serde_json::from_slice(r).map_err(|e| {
                    SinkError::Permanent(format!("spooled record is not an event: {e}"))
                })?;
                events.push(e);
            }
            let inner = Arc::clone(&self.inner);
            tokio::task::spawn_blocking(move || {
                inner
                    .lock()
                    .map_err(|_| SinkError::Permanent("file sink lock poisoned".into()))?
                    .write_batch(&events)
                    .map_err(|e| SinkError::Retryable(e.to_string()))
            })
            .await
            .map_err(|e| SinkError::Retryable(format!("file sink task: {e}")))?
        })
    }
}
