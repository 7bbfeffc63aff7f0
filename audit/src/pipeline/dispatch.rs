//! The dispatcher: the single task that seals events into the chain, applies each
//! sink's filter, and hands the sealed events to the sink workers (which encode them,
//! in parallel with the sealing of the next ones).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::config::Filter;
use super::stats::SinkCounters;
use crate::chain::Chainer;
use crate::event::{AuditEvent, EventKind};

/// How often pending losses and dead-letters are reported when no event arrives.
const LOSS_TICK: Duration = Duration::from_secs(1);
/// Events taken from the queue at a time.
const BURST: usize = 256;

/// One sink as the dispatcher sees it.
pub(crate) struct Route {
    pub(crate) name: String,
    pub(crate) filter: Filter,
    pub(crate) tx: mpsc::Sender<Arc<Sealed>>,
    pub(crate) counters: Arc<SinkCounters>,
}

/// A sealed event with its native JSON line, as the workers receive it: sealing
/// hashes the event's canonical form, which with the hash filled in *is* the native
/// line, so JSON sinks do not serialize the event again.
pub(crate) struct Sealed {
    pub(crate) event: AuditEvent,
    pub(crate) json: Vec<u8>,
}

pub(crate) struct Dispatcher {
    pub(crate) rx: mpsc::Receiver<AuditEvent>,
    pub(crate) chainer: Chainer,
    pub(crate) routes: Vec<Route>,
    pub(crate) shared: Arc<Shared>,
}

impl Dispatcher {
    /// Runs until `shutdown`, then drains what is queued and returns (dropping the
    /// routes closes the workers' channels, which makes them flush and stop).
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(LOSS_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Whatever is queued is taken at once: one wake-up per burst, not per event.
        let mut burst = Vec::with_capacity(BURST);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                n = self.rx.recv_many(&mut burst, BURST) => {
                    if n == 0 {
                        break;
                    }
                    self.report_loss().await;
                    for ev in burst.drain(..) {
                        self.handle(ev).await;
                    }
                }
                _ = tick.tick() => self.report_loss().await,
            }
        }
        self.rx.close();
        while let Some(ev) = self.rx.recv().await {
            self.handle(ev).await;
        }
        self.report_loss().await;
    }

    /// Turns losses counted since the last report into one `audit_loss` event, and
    /// records dead-lettered since then into one `audit_loss` event per sink.
    async fn report_loss(&mut self) {
        let n = self.shared.take_unreported();
        if n > 0 {
            let total = self.shared.lost();
            let ev = AuditEvent::new(EventKind::AuditLoss)
                .with_detail(format!("{n} audit events lost ({total} since start)"));
            self.handle(ev).await;
        }
        for i in 0..self.shared.sinks.len() {
            let sink = Arc::clone(&self.shared.sinks[i]);
            let (n, total) = sink.take_dead_letter_unreported();
            if n == 0 {
                continue;
            }
            let ev = AuditEvent::new(EventKind::AuditLoss).with_detail(format!(
                "{n} audit events refused for good by the receiver of sink {:?}; \
                 kept in its dead-letter file {} ({total} since start)",
                sink.name,
                sink.dead_letter.display()
            ));
            self.handle(ev).await;
        }
    }

    async fn handle(&mut self, mut ev: AuditEvent) {
        let json = match self.chainer.seal_line(&mut ev) {
            Ok(json) => json,
            Err(e) => {
                tracing::error!(error = %e, "sealing audit event failed; event lost");
                self.shared.record_loss(1);
                return;
            }
        };
        let ev = Arc::new(Sealed { event: ev, json });
        for route in &self.routes {
            if !route.filter.matches(&ev.event) {
                continue;
            }
            // Waiting here (when a worker is slow) lets the queue fill, which is where
            // back-pressure turns into counted loss or fail-closed refusal.
            if route.tx.send(Arc::clone(&ev)).await.is_err() {
                tracing::error!(sink = %route.name, "audit sink worker is gone; event lost");
                self.shared.record_sink_loss(&route.counters, 1);
            }
        }
    }
}
