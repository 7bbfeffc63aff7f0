//! Keeping the catalog snapshot current: one background task loads, sessions and
//! SIGHUP only ask.
//!
//! Asking is a [`Refresher::request_refresh`]: it never blocks and never queues more
//! than one load. A load runs at most once at a time; requests made while it runs
//! coalesce into a single load right after it, so a migration of a thousand DDL
//! statements costs a handful of loads, not a thousand; and loads start at least
//! [`MIN_LOAD_INTERVAL`] apart, so a client creating temporary tables in a loop cannot
//! make the proxy reconnect to the upstream without pause. While loads fail, the task
//! retries every `catalog.retry_secs`; the previous snapshot (empty at first, which
//! fails closed) stays in force meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::CatalogLoader;
use crate::server::Shared;

/// Least time between the starts of two loads; requests in between wait and coalesce.
pub const MIN_LOAD_INTERVAL: Duration = Duration::from_millis(500);

/// The handle sessions and the server use to ask for a fresh catalog snapshot. It
/// does not load anything itself: the task running [`keep_fresh`] does.
#[derive(Debug)]
pub struct Refresher {
    wake: Notify,
    /// Whether the next load should (re)install the support functions: at the first
    /// load and after each SIGHUP, until a load that ran them succeeds.
    support_wanted: AtomicBool,
}

impl Default for Refresher {
    fn default() -> Self {
        Self::new()
    }
}

impl Refresher {
    /// A handle whose first load also installs the support functions.
    pub fn new() -> Self {
        Self {
            wake: Notify::new(),
            support_wanted: AtomicBool::new(true),
        }
    }

    /// Asks for a new snapshot. Cheap and non-blocking: requests made while a load is
    /// pending or running coalesce into one more load.
    pub fn request_refresh(&self) {
        self.wake.notify_one();
    }

    /// Asks for a new snapshot that also reinstalls the support functions (SIGHUP).
    pub fn request_reload(&self) {
        self.support_wanted.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

/// Whether a CommandComplete tag says the statement may have changed what the catalog
/// snapshot holds: `CREATE`, `ALTER`, `DROP`, `COMMENT`, `GRANT`, `REVOKE`,
/// `REFRESH` and `IMPORT FOREIGN SCHEMA`, as whole words.
///
/// Statements that change the schema under another tag are not seen: `CREATE TABLE AS`,
/// `SELECT INTO` and `CREATE MATERIALIZED VIEW` (tag `SELECT n`), and DDL run inside
/// `DO` blocks, procedures or functions.
pub fn changes_schema(tag: &[u8]) -> bool {
    const SCHEMA_CHANGES: [&[u8]; 8] = [
        b"CREATE",
        b"ALTER",
        b"DROP",
        b"COMMENT",
        b"GRANT",
        b"REVOKE",
        b"REFRESH",
        b"IMPORT FOREIGN SCHEMA",
    ];
    SCHEMA_CHANGES.iter().any(|word| {
        tag.strip_prefix(*word)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(b" "))
    })
}

/// Loads one snapshot and, if it loaded, puts it in force: swaps it into
/// `shared.catalog`, sets `portcullis_catalog_relations`, counts the outcome in
/// `portcullis_catalog_loads_total` and logs it. A failed load keeps the previous
/// snapshot. Returns whether the load succeeded.
///
/// Callers must not run two of these at once; [`keep_fresh`] is the only caller once
/// the server runs.
pub async fn load_and_publish(shared: &Shared, loader: &CatalogLoader) -> bool {
    let refresher = &shared.catalog_refresher;
    let install = refresher.support_wanted.swap(false, Ordering::AcqRel);
    let started = Instant::now();
    let result = loader.load(install).await;
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match result {
        Ok(loaded) => {
            let relations = loaded.catalog.len();
            shared
                .metrics
                .catalog_relations
                .set(i64::try_from(relations).unwrap_or(i64::MAX));
            shared.metrics.catalog_load("ok");
            shared.catalog.store(Arc::new(loaded.catalog));
            info!(
                database = loader.database(),
                relations,
                duration_ms,
                support = ?loaded.support,
                "catalog loaded"
            );
            true
        }
        Err(e) => {
            if install {
                // The support SQL may not have run: try again with the next load.
                refresher.support_wanted.store(true, Ordering::Release);
            }
            shared.metrics.catalog_load("error");
            warn!(
                database = loader.database(),
                error = %e,
                duration_ms,
                relations_kept = shared.catalog.load().len(),
                "catalog load failed; keeping the previous snapshot"
            );
            false
        }
    }
}

/// The refresh task: waits for requests (or, while the last load failed, for
/// `retry`), loads, and repeats until `stop` fires, never starting loads less than
/// [`MIN_LOAD_INTERVAL`] apart. `healthy` says whether the snapshot in force came from
/// a successful load. A load in progress when `stop` fires is abandoned.
pub async fn keep_fresh(
    shared: Arc<Shared>,
    loader: CatalogLoader,
    retry: Duration,
    mut healthy: bool,
    stop: CancellationToken,
) {
    loop {
        let retry_after = (!healthy).then_some(retry);
        tokio::select! {
            () = stop.cancelled() => return,
            () = shared.catalog_refresher.wake.notified() => {}
            () = sleep_for(retry_after) => {}
        }
        let started = tokio::time::Instant::now();
        healthy = tokio::select! {
            () = stop.cancelled() => return,
            ok = load_and_publish(&shared, &loader) => ok,
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(started + MIN_LOAD_INTERVAL) => {}
        }
    }
}

/// Sleeps for `duration`, or forever without one.
async fn sleep_for(duration: Option<Duration>) {
    match duration {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_changing_tags_are_whole_words() {
        for tag in [
            "CREATE TABLE",
            "CREATE INDEX",
            "ALTER TABLE",
            "DROP VIEW",
            "COMMENT",
            "GRANT",
            "GRANT ROLE",
            "REVOKE",
            "REFRESH MATERIALIZED VIEW",
            "IMPORT FOREIGN SCHEMA",
        ] {
            assert!(changes_schema(tag.as_bytes()), "{tag}");
        }
        for tag in [
            "SELECT 1",
            "INSERT 0 1",
            "CREATEX",
            "DROPPED",
            "COMMIT",
            "TRUNCATE TABLE",
            "IMPORT",
            "",
        ] {
            assert!(!changes_schema(tag.as_bytes()), "{tag}");
        }
    }

    #[tokio::test]
    async fn requests_coalesce_into_one_pending_load() {
        let refresher = Refresher::new();
        for _ in 0..100 {
            refresher.request_refresh();
        }
        // One stored permit, however many requests.
        tokio::time::timeout(Duration::from_secs(1), refresher.wake.notified())
            .await
            .expect("a load is pending");
        let again =
            tokio::time::timeout(Duration::from_millis(50), refresher.wake.notified()).await;
        assert!(again.is_err(), "only one load was pending");
        assert!(refresher.support_wanted.load(Ordering::Acquire));
    }
}
