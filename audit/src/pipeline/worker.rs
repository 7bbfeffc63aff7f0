//! One sink's worker: batch, encode, send, retry with backoff and jitter, spool, replay.
//!
//! The worker receives sealed events and encodes each batch in its sink's format
//! itself, so that sinks encode in parallel with each other and with the dispatcher's
//! sealing (an event that cannot be encoded is counted as lost).
//!
//! While the spool is empty a batch goes straight to the sink. When a send fails the
//! batch is appended to the spool and the worker backs off (100 ms doubling to 30 s,
//! each wait drawn uniformly from its upper half). From then on every new batch is
//! appended to the spool too, so that order is kept, and once the back-off expires the
//! spool is replayed oldest first, a batch at a time, before anything new is sent. A
//! spool found at startup is replayed first the same way.
//!
//! When the spool cannot take a batch (full, disabled, or failing), a `spool` sink
//! counts the batch as lost (the dispatcher then emits `audit_loss`), while a
//! `fail_closed` sink keeps the batch in memory, marks audit unhealthy (so that
//! [`Auditor::emit`](super::Auditor::emit) refuses) and stops reading its input until
//! the receiver takes the spool and that batch: nothing is lost, the proxy stops
//! instead, and recovers by itself.
//!
//! When the receiver refuses a batch's content for good ([`SinkError::Refused`]), the
//! worker sends each half of it again, halving what is refused again down to single
//! records, so that only the poisoned records are set aside: those go to the sink's
//! [dead-letter file](super::deadletter), are counted, and are reported by the
//! dispatcher's next `audit_loss` event; everything else is delivered in order and the
//! sink goes on (from the spool too: the spool advances past what was set aside). A
//! configuration error ([`SinkError::Permanent`]) is retried like a transient one. If
//! the dead-letter file cannot keep a refused record (full, disabled, failing), a
//! `spool` sink counts it lost; a `fail_closed` sink keeps it and retries, as for a
//! receiver that is down.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Shared;
use super::config::Overflow;
use super::deadletter::DeadLetter;
use super::dispatch::Sealed;
use super::spool::{Spool, SpoolFull, stored_len};
use super::stats::SinkCounters;
use crate::AuditError;
use crate::event::AuditEvent;
use crate::format::Format;
use crate::sink::{Sink, SinkError};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Spool batches replayed before the worker drains its input again.
const REPLAY_BURST: usize = 16;

/// Exponential back-off with jitter.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff { next: BACKOFF_MIN }
    }

    /// The next wait: uniform in `[d/2, d]`, then `d` doubles up to the maximum.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(BACKOFF_MAX);
        let half = d / 2;
        let span = u64::try_from(half.as_micros()).unwrap_or(u64::MAX).max(1);
        half + Duration::from_micros(rand::random::<u64>() % span)
    }

    pub(crate) fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

/// Settings of one worker.
pub(crate) struct WorkerSettings {
    pub(crate) name: String,
    /// What the sink receives.
    pub(crate) format: Format,
    pub(crate) batch_max: usize,
    pub(crate) flush: Duration,
    pub(crate) overflow: Overflow,
}

/// Records `[from..]` of a batch were neither delivered nor set aside, because of
/// `why`: they must be kept (spooled, held, or left in the spool) and retried.
struct Undelivered {
    from: usize,
    why: String,
}

pub(crate) struct Worker {
    pub(crate) settings: WorkerSettings,
    pub(crate) sink: Box<dyn Sink>,
    pub(crate) rx: mpsc::Receiver<Arc<Sealed>>,
    pub(crate) spool: Arc<Mutex<Spool>>,
    pub(crate) shared: Arc<Shared>,
    dead_letter: Arc<DeadLetter>,
    counters: Arc<SinkCounters>,
    backoff: Backoff,
    /// When the receiver may be tried again; `None` while it is believed up.
    retry_at: Option<Instant>,
    /// This worker currently counts in `Shared::unhealthy`.
    unhealthy: bool,
    /// A `fail_closed` batch that neither the receiver nor the spool took.
    held: Option<Vec<Vec<u8>>>,
    /// Size of the last record encoded, to size the next one's buffer.
    record_hint: usize,
}

impl Worker {
    pub(crate) fn new(
        settings: WorkerSettings,
        sink: Box<dyn Sink>,
        rx: mpsc::Receiver<Arc<Sealed>>,
        (spool, dead_letter): (Spool, DeadLetter),
        shared: Arc<Shared>,
        counters: Arc<SinkCounters>,
    ) -> Self {
        counters.set_spool_bytes(spool.len_bytes());
        Worker {
            settings,
            sink,
            rx,
            spool: Arc::new(Mutex::new(spool)),
            shared,
            dead_letter: Arc::new(dead_letter),
            counters,
            backoff: Backoff::new(),
            retry_at: None,
            unhealthy: false,
            held: None,
            record_hint: 1024,
        }
    }

    /// Runs until the input channel closes (the dispatcher has drained and gone), then
    /// makes one last attempt and leaves whatever is undelivered in the spool.
    pub(crate) async fn run(mut self) {
        loop {
            if self.held.is_some() {
                if self.retry_held().await {
                    break;
                }
                continue;
            }
            let mut events = Vec::new();
            let closed = self.fill(&mut events).await;
            if self.sink.takes_events() {
                // The sink encodes the events itself: it gets them with the records
                // (native JSON, which is what its spool keeps).
                let batch = self.encode(&events);
                if !batch.is_empty() {
                    self.deliver_or_spool(batch, Some(&events)).await;
                }
            } else {
                let batch = self.encode_owned(events);
                if !batch.is_empty() {
                    self.deliver_or_spool(batch, None).await;
                }
            }
            if self.retry_due() && !self.spool_is_empty() {
                self.replay().await;
            }
            if closed {
                break;
            }
        }
        tracing::debug!(sink = %self.settings.name, "audit sink worker stopped");
    }

    /// Waits for the retry time, then replays the spool and sends the held batch.
    /// Returns true when the worker should stop (its input is closed: the held batch
    /// is then counted as lost).
    async fn retry_held(&mut self) -> bool {
        if let Some(at) = self.retry_at {
            let wait = tokio::time::sleep_until(at);
            tokio::pin!(wait);
            // Keep an eye on the input closing, without reading from it.
            while !self.rx.is_closed() {
                tokio::select! {
                    () = &mut wait => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
        if self.rx.is_closed() && !self.retry_due() {
            let mut n = self.held.take().map_or(0, |h| h.len() as u64);
            while self.rx.try_recv().is_ok() {
                n += 1;
            }
            tracing::error!(sink = %self.settings.name, lost = n, "audit sink still down at shutdown; held events lost");
            self.shared.record_sink_loss(&self.counters, n);
            return true;
        }
        if !self.spool_is_empty() {
            self.replay().await;
            if !self.spool_is_empty() {
                return false;
            }
        }
        let Some(mut held) = self.held.take() else {
            return false;
        };
        match self.send(&held, None).await {
            Ok(()) => {
                self.backoff.reset();
                self.retry_at = None;
                self.set_unhealthy(false);
                tracing::info!(sink = %self.settings.name, "audit sink is back");
            }
            Err(u) => {
                self.failed(&u.why);
                held.drain(..u.from);
                self.held = Some(held);
            }
        }
        false
    }

    fn retry_due(&self) -> bool {
        self.retry_at.is_none_or(|t| Instant::now() >= t)
    }

    fn spool_is_empty(&self) -> bool {
        self.spool.lock().map(|s| s.is_empty()).unwrap_or(false)
    }

    /// [`Worker::encode`], taking the native lines out of events this worker holds
    /// alone (the only sink they were routed to) instead of copying them.
    fn encode_owned(&mut self, events: Vec<Arc<Sealed>>) -> Vec<Vec<u8>> {
        if self.settings.format != Format::Json {
            return self.encode(&events);
        }
        events
            .into_iter()
            .map(|e| match Arc::try_unwrap(e) {
                Ok(sealed) => sealed.json,
                Err(shared) => shared.json.clone(),
            })
            .collect()
    }

    /// Encodes `events` in the sink's format, one record each. An event that cannot be
    /// encoded is counted as lost and left out, so records and events then differ in
    /// number; only native JSON (which is never re-encoded) is sent with its events.
    fn encode(&mut self, events: &[Arc<Sealed>]) -> Vec<Vec<u8>> {
        let mut batch = Vec::with_capacity(events.len());
        for e in events {
            if self.settings.format == Format::Json {
                batch.push(e.json.clone());
                continue;
            }
            let mut record = Vec::with_capacity(self.record_hint + self.record_hint / 8);
            match self.settings.format.encode(&e.event, &mut record) {
                Ok(()) => {
                    self.record_hint = record.len();
                    batch.push(record);
                }
                Err(err) => {
                    tracing::error!(sink = %self.settings.name, error = %err,
                        "encoding audit event failed; event lost");
                    self.shared.record_sink_loss(&self.counters, 1);
                }
            }
        }
        batch
    }

    /// Collects a batch of events. Returns whether the channel is closed and empty.
    async fn fill(&mut self, batch: &mut Vec<Arc<Sealed>>) -> bool {
        let max = self.settings.batch_max;
        let spooling = !self.spool_is_empty();
        if spooling && self.retry_due() {
            // Replay is pending: take only what is already queued.
            while batch.len() < max {
                match self.rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(mpsc::error::TryRecvError::Empty) => return false,
                    Err(mpsc::error::TryRecvError::Disconnected) => return true,
                }
            }
            return false;
        }
        // Wait for a first record (or for the retry time while spooling).
        let first = match self.retry_at.filter(|_| spooling) {
            Some(at) => match tokio::time::timeout_at(at, self.rx.recv()).await {
                Ok(r) => r,
                Err(_) => return false,
            },
            None => self.rx.recv().await,
        };
        let Some(first) = first else { return true };
        batch.push(first);
        let deadline = Instant::now() + self.settings.flush;
        while batch.len() < max {
            // Take whatever is queued at once (one wake-up per burst, not per record).
            let room = max - batch.len();
            match tokio::time::timeout_at(deadline, self.rx.recv_many(batch, room)).await {
                Ok(0) => return true,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        false
    }

    /// Sends `batch` (with the `events` it was made from, for a sink that takes them),
    /// or spools it when the spool is not empty, the receiver is backing off, or the
    /// send fails.
    async fn deliver_or_spool(&mut self, mut batch: Vec<Vec<u8>>, events: Option<&[Arc<Sealed>]>) {
        if self.spool_is_empty() && self.retry_due() {
            match self.send(&batch, events).await {
                Ok(()) => {
                    self.backoff.reset();
                    self.retry_at = None;
                    self.set_unhealthy(false);
                    return;
                }
                Err(u) => {
                    self.failed(&u.why);
                    batch.drain(..u.from);
                }
            }
        }
        self.spool_batch(batch).await;
    }

    /// Sends `records`, setting aside in the dead-letter file those the receiver
    /// refuses for good. `Ok` once every record is delivered or set aside; on `Err`,
    /// the records before `from` are.
    async fn send(
        &mut self,
        records: &[Vec<u8>],
        events: Option<&[Arc<Sealed>]>,
    ) -> Result<(), Undelivered> {
        // Events go along only when they match the records one for one.
        let events = events.filter(|events| events.len() == records.len());
        // Parts still to send, the next one last, so that order is kept.
        let mut todo = Vec::with_capacity(8);
        todo.push(0..records.len());
        while let Some(range) = todo.pop() {
            let part = &records[range.clone()];
            let sent = match events {
                Some(events) => {
                    let events: Vec<&AuditEvent> =
                        events[range.clone()].iter().map(|e| &e.event).collect();
                    self.sink.send_events(part, &events).await
                }
                None => self.sink.send(part).await,
            };
            match sent {
                Ok(()) => self.counters.delivered(part.len()),
                Err(SinkError::Refused(why)) => {
                    self.counters.send_failed();
                    if part.len() > 1 {
                        // Only the poisoned records are to be set aside: try each
                        // half on its own.
                        let mid = range.start + part.len() / 2;
                        todo.push(mid..range.end);
                        todo.push(range.start..mid);
                    } else {
                        self.set_aside(part, &why)
                            .await
                            .map_err(|why| Undelivered {
                                from: range.start,
                                why,
                            })?;
                    }
                }
                Err(e) => {
                    self.counters.send_failed();
                    return Err(Undelivered {
                        from: range.start,
                        why: e.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Moves `records`, refused for good because of `why`, to the dead-letter file.
    /// `Err` (with the reason) when a `fail_closed` sink could not keep them there.
    async fn set_aside(&mut self, records: &[Vec<u8>], why: &str) -> Result<(), String> {
        let n = records.len();
        let dead_letter = Arc::clone(&self.dead_letter);
        let name = self.settings.name.clone();
        let owned = records.to_vec();
        let reason = why.to_owned();
        let kept = tokio::task::spawn_blocking(move || dead_letter.append(&name, &owned, &reason))
            .await
            .unwrap_or_else(|e| Err(AuditError::Config(format!("dead-letter task: {e}"))));
        let file = self.dead_letter.records_path().display();
        let not_kept = match kept {
            Ok(Ok(())) => {
                tracing::error!(sink = %self.settings.name, records = n, reason = why, file = %file,
                    "audit receiver refused records for good; moved them to the dead-letter file");
                self.counters.dead_lettered(n);
                return Ok(());
            }
            Ok(Err(SpoolFull)) => format!("dead-letter file {file} full or disabled"),
            Err(e) => format!("dead-letter file: {e}"),
        };
        if self.settings.overflow == Overflow::FailClosed {
            return Err(format!("{why}; and {not_kept}"));
        }
        tracing::error!(sink = %self.settings.name, lost = n, reason = why, error = %not_kept,
            "audit receiver refused records for good and the dead-letter file cannot keep them; audit events lost");
        self.shared.record_sink_loss(&self.counters, n as u64);
        Ok(())
    }

    /// Runs `op` on the spool off the async threads, and notes the spool's size.
    async fn with_spool<T: Send + 'static>(
        &mut self,
        op: impl FnOnce(&mut Spool) -> Result<T, AuditError> + Send + 'static,
    ) -> Result<T, AuditError> {
        let spool = Arc::clone(&self.spool);
        let counters = Arc::clone(&self.counters);
        tokio::task::spawn_blocking(move || {
            let mut s = spool
                .lock()
                .map_err(|_| AuditError::Config("audit spool lock poisoned".into()))?;
            let out = op(&mut s);
            counters.set_spool_bytes(s.len_bytes());
            out
        })
        .await
        .unwrap_or_else(|e| Err(AuditError::Config(format!("audit spool task: {e}"))))
    }

    fn failed(&mut self, why: &str) {
        let delay = self.backoff.next_delay();
        tracing::warn!(sink = %self.settings.name, error = why, retry_in_ms = delay.as_millis() as u64,
            "audit sink failed; spooling");
        self.retry_at = Some(Instant::now() + delay);
    }

    async fn spool_batch(&mut self, batch: Vec<Vec<u8>>) {
        let n = batch.len();
        // The batch comes back from the blocking task, to be held if the spool
        // refuses it.
        let joined = self
            .with_spool(move |s| Ok((s.append(&batch), batch)))
            .await;
        let (batch, why) = match joined {
            Ok((Ok(Ok(())), _)) => {
                self.counters.spooled(n);
                if self.held.is_none() {
                    self.set_unhealthy(false);
                }
                return;
            }
            Ok((Ok(Err(SpoolFull)), batch)) => (Some(batch), "audit spool full".to_owned()),
            Ok((Err(e), batch)) => (Some(batch), format!("audit spool write failed: {e}")),
            Err(e) => (None, format!("audit spool failed: {e}")),
        };
        match batch {
            Some(batch) if self.settings.overflow == Overflow::FailClosed => {
                tracing::error!(sink = %self.settings.name, reason = %why,
                    "fail-closed audit sink cannot keep events; refusing new ones");
                self.held = Some(batch);
                self.set_unhealthy(true);
                if self.retry_at.is_none() {
                    self.failed(&why);
                }
            }
            _ => {
                tracing::error!(sink = %self.settings.name, reason = %why, lost = n, "audit events lost");
                self.shared.record_sink_loss(&self.counters, n as u64);
            }
        }
    }

    fn set_unhealthy(&mut self, bad: bool) {
        if bad != self.unhealthy && self.settings.overflow == Overflow::FailClosed {
            self.unhealthy = bad;
            self.counters.set_unhealthy(bad);
            if bad {
                self.shared.unhealthy.fetch_add(1, Ordering::SeqCst);
            } else {
                self.shared.unhealthy.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// Sends up to [`REPLAY_BURST`] spooled batches, oldest first.
    async fn replay(&mut self) {
        for _ in 0..REPLAY_BURST {
            let max = self.settings.batch_max;
            let (records, pos) = match self.with_spool(move |s| s.peek(max)).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(sink = %self.settings.name, error = %e, "reading audit spool failed");
                    self.failed(&e.to_string());
                    return;
                }
            };
            if records.is_empty() {
                return;
            }
            let sent = self.send(&records, None).await;
            // Past what was delivered or set aside, even when the rest must wait.
            let advanced = match &sent {
                Ok(()) => self.with_spool(move |s| s.advance(pos)).await,
                Err(u) if u.from > 0 => {
                    let bytes = records[..u.from].iter().map(|r| stored_len(r)).sum();
                    self.with_spool(move |s| s.advance_by(bytes)).await
                }
                Err(_) => Ok(()),
            };
            if let Err(e) = advanced {
                // The records were delivered; they may be delivered again after a
                // restart, which the at-least-once contract allows.
                tracing::warn!(sink = %self.settings.name, error = %e, "recording audit spool progress failed");
            }
            if let Err(u) = sent {
                self.failed(&u.why);
                return;
            }
            self.backoff.reset();
            self.retry_at = None;
            if self.spool_is_empty() {
                if self.held.is_none() {
                    self.set_unhealthy(false);
                }
                tracing::info!(sink = %self.settings.name, "audit spool replayed");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new();
        let first = b.next_delay();
        assert!(first >= BACKOFF_MIN / 2 && first <= BACKOFF_MIN);
        let mut last = first;
        for _ in 0..20 {
            last = b.next_delay();
        }
        assert!(last >= BACKOFF_MAX / 2 && last <= BACKOFF_MAX);
        b.reset();
        assert!(b.next_delay() <= BACKOFF_MIN);
    }
}
