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

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Shared;
use super::config::Overflow;
use super::spool::{Spool, SpoolFull};
use crate::AuditError;
use crate::event::AuditEvent;
use crate::format::Format;
use crate::sink::Sink;

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

pub(crate) struct Worker {
    pub(crate) settings: WorkerSettings,
    pub(crate) sink: Box<dyn Sink>,
    pub(crate) rx: mpsc::Receiver<Arc<AuditEvent>>,
    pub(crate) spool: Arc<Mutex<Spool>>,
    pub(crate) shared: Arc<Shared>,
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
        rx: mpsc::Receiver<Arc<AuditEvent>>,
        spool: Spool,
        shared: Arc<Shared>,
    ) -> Self {
        Worker {
            settings,
            sink,
            rx,
            spool: Arc::new(Mutex::new(spool)),
            shared,
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
            let batch = self.encode(&events);
            drop(events);
            if !batch.is_empty() {
                self.deliver_or_spool(batch).await;
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
            self.shared.record_loss(n);
            return true;
        }
        if !self.spool_is_empty() {
            self.replay().await;
            if !self.spool_is_empty() {
                return false;
            }
        }
        let Some(held) = self.held.take() else {
            return false;
        };
        match self.sink.send(&held).await {
            Ok(()) => {
                self.backoff.reset();
                self.retry_at = None;
                self.set_unhealthy(false);
                tracing::info!(sink = %self.settings.name, "audit sink is back");
            }
            Err(e) => {
                self.failed(&e.to_string());
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

    /// Encodes `events` in the sink's format, one record each.
    fn encode(&mut self, events: &[Arc<AuditEvent>]) -> Vec<Vec<u8>> {
        let mut batch = Vec::with_capacity(events.len());
        for e in events {
            let mut record = Vec::with_capacity(self.record_hint + self.record_hint / 8);
            match self.settings.format.encode(e, &mut record) {
                Ok(()) => {
                    self.record_hint = record.len();
                    batch.push(record);
                }
                Err(err) => {
                    tracing::error!(sink = %self.settings.name, error = %err,
                        "encoding audit event failed; event lost");
                    self.shared.record_loss(1);
                }
            }
        }
        batch
    }

    /// Collects a batch of events. Returns whether the channel is closed and empty.
    async fn fill(&mut self, batch: &mut Vec<Arc<AuditEvent>>) -> bool {
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

    async fn deliver_or_spool(&mut self, batch: Vec<Vec<u8>>) {
        if self.spool_is_empty() && self.retry_due() {
            match self.sink.send(&batch).await {
                Ok(()) => {
                    self.backoff.reset();
                    self.retry_at = None;
                    self.set_unhealthy(false);
                    return;
                }
                Err(e) => self.failed(&e.to_string()),
            }
        }
        self.spool_batch(batch).await;
    }

    fn failed(&mut self, why: &str) {
        let delay = self.backoff.next_delay();
        tracing::warn!(sink = %self.settings.name, error = why, retry_in_ms = delay.as_millis() as u64,
            "audit sink failed; spooling");
        self.retry_at = Some(Instant::now() + delay);
    }

    async fn spool_batch(&mut self, batch: Vec<Vec<u8>>) {
        let n = batch.len() as u64;
        let spool = Arc::clone(&self.spool);
        let joined = tokio::task::spawn_blocking(move || {
            let r = match spool.lock() {
                Ok(mut s) => s.append(&batch),
                Err(_) => Err(AuditError::Config("audit spool lock poisoned".into())),
            };
            (batch, r)
        })
        .await;
        let (batch, why) = match joined {
            Ok((_, Ok(Ok(())))) => {
                if self.held.is_none() {
                    self.set_unhealthy(false);
                }
                return;
            }
            Ok((batch, Ok(Err(SpoolFull)))) => (Some(batch), "audit spool full".to_owned()),
            Ok((batch, Err(e))) => (Some(batch), format!("audit spool write failed: {e}")),
            Err(e) => (None, format!("audit spool task failed: {e}")),
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
                self.shared.record_loss(n);
            }
        }
    }

    fn set_unhealthy(&mut self, bad: bool) {
        if bad != self.unhealthy && self.settings.overflow == Overflow::FailClosed {
            self.unhealthy = bad;
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
            let spool = Arc::clone(&self.spool);
            let max = self.settings.batch_max;
            let peeked = tokio::task::spawn_blocking(move || {
                spool
                    .lock()
                    .map_err(|_| AuditError::Config("audit spool lock poisoned".into()))?
                    .peek(max)
            })
            .await
            .unwrap_or_else(|e| Err(AuditError::Config(format!("audit spool task: {e}"))));
            let (records, pos) = match peeked {
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
            if let Err(e) = self.sink.send(&records).await {
                self.failed(&e.to_string());
                return;
            }
            self.backoff.reset();
            self.retry_at = None;
            let spool = Arc::clone(&self.spool);
            let advanced = tokio::task::spawn_blocking(move || {
                spool
                    .lock()
                    .map_err(|_| AuditError::Config("audit spool lock poisoned".into()))?
                    .advance(pos)
            })
            .await
            .unwrap_or_else(|e| Err(AuditError::Config(format!("audit spool task: {e}"))));
            if let Err(e) = advanced {
                // The records were delivered; they may be delivered again after a
                // restart, which the at-least-once contract allows.
                tracing::warn!(sink = %self.settings.name, error = %e, "recording audit spool progress failed");
            }
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
