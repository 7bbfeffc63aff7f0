//! The pipeline's counters: relaxed atomics, cheap to bump on the audit path and to
//! read at a metrics scrape ([`Auditor::stats`](super::Auditor::stats)).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A snapshot of the pipeline's counters. Counters count since start; gauges are the
/// value at the time of the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditStats {
    /// Events [`Auditor::emit`](super::Auditor::emit) put on the queue (counter).
    pub accepted: u64,
    /// Events `emit` could not put on the queue: queue full or closed, or audit
    /// unhealthy (counter). With a `fail_closed` sink the statement was refused;
    /// otherwise the event also counts in `lost`.
    pub refused: u64,
    /// Events lost, every cause: queue full, spool full, an event that could not be
    /// sealed or encoded (counter). Every loss is also reported in the trail by an
    /// `audit_loss` event.
    pub lost: u64,
    /// Events waiting between `emit` and the dispatcher (gauge).
    pub queue_depth: u64,
    /// The queue's capacity.
    pub queue_capacity: u64,
    /// Per sink, in configuration order.
    pub sinks: Vec<SinkStats>,
}

/// One sink's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkStats {
    /// The sink's configured name.
    pub name: String,
    /// Records the receiver acknowledged (counter). A record sent again after a
    /// failed try that had partly arrived counts again.
    pub delivered: u64,
    /// Sends that failed, each followed by a retry or a dead-letter (counter).
    pub send_failures: u64,
    /// Records written to the spool (counter).
    pub spooled: u64,
    /// Size of the spool file (gauge).
    pub spool_bytes: u64,
    /// Records this sink lost: spool full, encoding failed, still down at shutdown
    /// (counter).
    pub lost: u64,
    /// Records the receiver refused for good, kept in the dead-letter file (counter).
    pub dead_lettered: u64,
    /// False while this `fail_closed` sink cannot keep events and audit refuses them;
    /// always true for a `spool` sink.
    pub healthy: bool,
}

/// The live counters of one sink, shared by its worker, the dispatcher and readers.
#[derive(Debug)]
pub(crate) struct SinkCounters {
    pub(crate) name: String,
    /// The sink's dead-letter file, for the `audit_loss` text.
    pub(crate) dead_letter: PathBuf,
    delivered: AtomicU64,
    send_failures: AtomicU64,
    spooled: AtomicU64,
    spool_bytes: AtomicU64,
    lost: AtomicU64,
    dead_lettered: AtomicU64,
    /// Dead-lettered records not yet reported by an `audit_loss` event.
    dead_letter_unreported: AtomicU64,
    unhealthy: AtomicBool,
}

impl SinkCounters {
    pub(crate) fn new(name: &str, dead_letter: &Path) -> Self {
        SinkCounters {
            name: name.to_owned(),
            dead_letter: dead_letter.to_path_buf(),
            delivered: AtomicU64::new(0),
            send_failures: AtomicU64::new(0),
            spooled: AtomicU64::new(0),
            spool_bytes: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            dead_letter_unreported: AtomicU64::new(0),
            unhealthy: AtomicBool::new(false),
        }
    }

    pub(crate) fn delivered(&self, n: usize) {
        self.delivered.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn send_failed(&self) {
        self.send_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn spooled(&self, n: usize) {
        self.spooled.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn set_spool_bytes(&self, bytes: u64) {
        self.spool_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Counts a loss for this sink only; [`super::Shared::record_sink_loss`] counts it
    /// everywhere.
    pub(crate) fn lost(&self, n: u64) {
        self.lost.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn dead_lettered(&self, n: usize) {
        self.dead_lettered.fetch_add(n as u64, Ordering::Relaxed);
        self.dead_letter_unreported
            .fetch_add(n as u64, Ordering::SeqCst);
    }

    /// Dead-lettered records since the last call, and the total since start.
    pub(crate) fn take_dead_letter_unreported(&self) -> (u64, u64) {
        let n = self.dead_letter_unreported.swap(0, Ordering::SeqCst);
        (n, self.dead_lettered.load(Ordering::Relaxed))
    }

    pub(crate) fn set_unhealthy(&self, bad: bool) {
        self.unhealthy.store(bad, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> SinkStats {
        SinkStats {
            name: self.name.clone(),
            delivered: self.delivered.load(Ordering::Relaxed),
            send_failures: self.send_failures.load(Ordering::Relaxed),
            spooled: self.spooled.load(Ordering::Relaxed),
            spool_bytes: self.spool_bytes.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            healthy: !self.unhealthy.load(Ordering::Relaxed),
        }
    }
}
