//! The file sink as a pipeline [`Sink`].
//!
//! The pipeline hands every file sink native JSON records (so that its spool always
//! holds native JSON, from which the chain can resume after a restart). A JSON file
//! takes them as they are: the batch is joined into one buffer and appended. A file in
//! another format (OCSF, CEF, syslog) encodes the events in the file's format: those
//! the worker hands it with the records ([`Sink::send_events`]), and for records
//! replayed from the spool, each record parsed back into its event. The write (with its
//! fsync) runs in `spawn_blocking`.

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
    /// The file's format.
    format: Format,
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
            format: format.clone(),
            max_bytes: settings.max_bytes,
            retain_count: settings.retain_count,
            retain_age: settings.retain_age_secs.map(Duration::from_secs),
        };
        Ok(FileRecordSink {
            inner: Arc::new(Mutex::new(FileSink::open(config)?)),
            format,
            native,
            spare: Vec::new(),
        })
    }
}

impl FileRecordSink {
    /// The batch's bytes in the file's format: native records joined, or `events`
    /// encoded (in the worker, like any sink's encoding; only the write goes to the
    /// blocking pool).
    fn joined(
        &mut self,
        records: &[Vec<u8>],
        events: Option<&[&AuditEvent]>,
    ) -> Result<Batch, SinkError> {
        if !self.native && events.is_none() {
            // Records replayed from the spool: the events are read back from them.
            let mut events = Vec::with_capacity(records.len());
            for r in records {
                let e: AuditEvent = serde_json::from_slice(r).map_err(|e| {
                    SinkError::Refused(format!("spooled record is not an event: {e}"))
                })?;
                events.push(e);
            }
            return Ok(Batch::Events(events));
        }
        let mut joined = std::mem::take(&mut self.spare);
        joined.clear();
        match events {
            Some(events) if !self.native => {
                for event in events {
                    self.format.encode(event, &mut joined).map_err(|e| {
                        SinkError::Refused(format!("event not encodable as {:?}: {e}", self.format))
                    })?;
                }
            }
            _ => {
                for r in records {
                    joined.extend_from_slice(r);
                }
            }
        }
        Ok(Batch::Encoded(joined))
    }

    /// Appends `batch` (with its fsync) on the blocking pool.
    async fn write(&mut self, batch: Batch) -> Result<(), SinkError> {
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
        if spare.capacity() > 0 {
            self.spare = spare;
        }
        written
    }
}

impl Sink for FileRecordSink {
    fn name(&self) -> &str {
        "file"
    }

    fn send<'a>(&'a mut self, records: &'a [Vec<u8>]) -> SendFuture<'a> {
        Box::pin(async move {
            let batch = self.joined(records, None)?;
            self.write(batch).await
        })
    }

    fn takes_events(&self) -> bool {
        !self.native
    }

    fn send_events<'a>(
        &'a mut self,
        records: &'a [Vec<u8>],
        events: &'a [&'a AuditEvent],
    ) -> SendFuture<'a> {
        Box::pin(async move {
            let batch = self.joined(records, Some(events))?;
            self.write(batch).await
        })
    }
}
