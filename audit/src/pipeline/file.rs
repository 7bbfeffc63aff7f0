//! The file sink as a pipeline [`Sink`].
//!
//! The pipeline hands every file sink native JSON records (so that its spool always
//! holds native JSON, from which the chain can resume after a restart). A JSON file
//! takes them as they are: the batch is joined into one buffer and appended. A file in
//! another format (OCSF, CEF, syslog) parses each record back into its event and
//! encodes it in the file's format. The write (with its fsync) runs in
//! `spawn_blocking`.

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
    /// The file is native JSON, so records are written as they come.
    native: bool,
    /// The last native batch's buffer, kept so that its memory is reused (a fresh
    /// buffer per batch would fault in fresh pages every time).
    spare: Vec<u8>,
}

/// What one batch asks of the file.
enum Batch {
    /// Native JSON records, joined.
    Encoded(Vec<u8>),
    /// Events to encode in the file's format.
    Events(Vec<AuditEvent>),
}

impl FileRecordSink {
    pub(crate) fn open(settings: &FileSettings, format: Format) -> Result<Self, AuditError> {
        let native = format == Format::Json;
        let config = FileSinkConfig {
            path: settings.path.clone(),
            format,
            max_bytes: settings.max_bytes,
            retain_count: settings.retain_count,
            retain_age: settings.retain_age_secs.map(Duration::from_secs),
        };
        Ok(FileRecordSink {
            inner: Arc::new(Mutex::new(FileSink::open(config)?)),
            native,
            spare: Vec::new(),
        })
    }
}

impl Sink for FileRecordSink {
    fn name(&self) -> &str {
        "file"
    }

    fn send<'a>(&'a mut self, records: &'a [Vec<u8>]) -> SendFuture<'a> {
        Box::pin(async move {
            let batch = if self.native {
                let mut joined = std::mem::take(&mut self.spare);
                joined.clear();
                for r in records {
                    joined.extend_from_slice(r);
                }
                Batch::Encoded(joined)
            } else {
                let mut events = Vec::with_capacity(records.len());
                for r in records {
                    let e: AuditEvent = serde_json::from_slice(r).map_err(|e| {
                        SinkError::Refused(format!("spooled record is not an event: {e}"))
                    })?;
                    events.push(e);
                }
                Batch::Events(events)
            };
            let inner = Arc::clone(&self.inner);
            let (written, spare) = tokio::task::spawn_blocking(move || {
                let written = match inner.lock() {
                    Ok(mut file) => match &batch {
                        Batch::Encoded(bytes) => file.write_encoded(bytes),
                        Batch::Events(events) => file.write_batch(events),
                    }
                    .map_err(|e| SinkError::Retryable(e.to_string())),
                    Err(_) => Err(SinkError::Permanent("file sink lock poisoned".into())),
                };
                let spare = match batch {
                    Batch::Encoded(bytes) => bytes,
                    Batch::Events(_) => Vec::new(),
                };
                (written, spare)
            })
            .await
            .map_err(|e| SinkError::Retryable(format!("file sink task: {e}")))?;
            self.spare = spare;
            written
        })
    }
}
