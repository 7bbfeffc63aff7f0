//! The listener: accepts clients, runs a session task for each, reloads on SIGHUP and
//! shuts down gracefully.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use portcullis_policy::{Catalog, Engine, Policy};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::auth::store::UserStore;
use crate::cancel::CancelRegistry;
use crate::catalog::{CatalogLoader, Refresher, refresh};
use crate::config::{Config, LimitsConfig};
use crate::metrics::{Metrics, Outcome};
use crate::pg::PgError;
use crate::pg::error::sqlstate;
use crate::tls::ReloadableTls;
use crate::upstream::Connector;

/// Everything sessions share. Immutable except through atomic swaps.
pub struct Shared {
    /// Client TLS, if configured.
    pub tls: Option<ReloadableTls>,
    /// Refuse plaintext clients.
    pub require_tls: bool,
    /// The proxy's users; swapped on reload.
    pub users: ArcSwap<UserStore>,
    /// The statement policy in force; swapped on reload.
    pub policy: ArcSwap<Policy>,
    /// Parser, classifier and parse cache.
    pub engine: Engine,
    /// The upstream's catalog snapshot in force; swapped whole by each successful load
    /// (`catalog.load()` for a cheap guard per statement, `catalog.load_full()` for an
    /// `Arc<Catalog>` to keep). Empty until the first load succeeds, which makes the
    /// policy refuse every relation outside the system schemas.
    pub catalog: ArcSwap<Catalog>,
    /// Asks the server's refresh task for a new snapshot (after DDL, on SIGHUP).
    pub catalog_refresher: Refresher,
    /// Opens upstream sessions.
    pub connector: Arc<Connector>,
    /// Live sessions for CancelRequest routing.
    pub cancels: CancelRegistry,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Size and time limits.
    pub limits: LimitsConfig,
    /// The audit pipeline, when `[audit]` is configured.
    pub audit: Option<portcullis_audit::pipeline::Auditor>,
    /// Fires on SIGTERM: sessions leave at their next idle point.
    pub drain: CancellationToken,
    /// Fires when the grace period is over: sessions end now.
    pub kill: CancellationToken,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Configuration problem.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// TLS material problem.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// User store problem.
    #[error(transparent)]
    Users(#[from] crate::auth::store::StoreError),
    /// Policy problem.
    #[error("policy: {0}")]
    Policy(String),
    /// The audit pipeline could not start.
    #[error("audit: {0}")]
    Audit(String),
    /// Could not bind a listener.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A bound, not yet running proxy.
pub struct Server {
    shared: Arc<Shared>,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    max_connections: usize,
    config_path: Option<PathBuf>,
    /// The policy directory and how often to look for changes in it.
    policy_dir: Option<PathBuf>,
    watch_secs: u64,
    users_file: PathBuf,
    audit_stop: CancellationToken,
    audit_task: Option<tokio::task::JoinHandle<()>>,
    /// Taken by [`Server::run`], which hands it to the refresh task.
    catalog_loader: Option<CatalogLoader>,
    catalog_retry: Duration,
    /// Whether the snapshot loaded at start came from the upstream.
    catalog_loaded: bool,
}

impl Server {
    /// Builds everything from `config`, binds the listeners and loads the catalog
    /// snapshot. `config_path` is re-read on SIGHUP for the policy section.
    ///
    /// An unreachable upstream does not stop the start: the proxy starts with an empty
    /// catalog (refusing every non-system relation) and [`Server::run`] keeps retrying.
    pub async fn bind(config: Config, config_path: Option<PathBuf>) -> Result<Self, ServerError> {
        let tls = config.tls.clone().map(ReloadableTls::new).transpose()?;
        let users = UserStore::load(&config.auth.users_file)?;
        let policy = crate::policy_source::load(&config.policy)
            .map_err(|e| ServerError::Policy(e.to_string()))?;
        let engine =
            Engine::with_limits(config.policy.cache_entries, config.policy.cache_max_bytes);
        let connector = Arc::new(Connector::new(&config.upstream)?);
        let catalog_loader =
            CatalogLoader::new(Arc::clone(&connector), &config.upstream, &config.catalog);
        let listener = TcpListener::bind(config.listen.address)
            .await
            .map_err(|source| ServerError::Bind {
                addr: config.listen.address,
                source,
            })?;
        let metrics_listener =
            match &config.metrics {
                Some(m) => Some(TcpListener::bind(m.address).await.map_err(|source| {
                    ServerError::Bind {
                        addr: m.address,
                        source,
                    }
                })?),
                None => None,
            };
        let audit_stop = CancellationToken::new();
        let (audit, audit_task) = match config.audit {
            Some(audit_config) => {
                let (auditor, task) =
                    portcullis_audit::pipeline::Auditor::start(&audit_config, audit_stop.clone())
                        .map_err(|e| ServerError::Audit(e.to_string()))?;
                (Some(auditor), Some(task))
            }
            None => (None, None),
        };
        let mut metrics = Metrics::new();
        if let Some(auditor) = &audit {
            metrics.watch_audit(auditor.clone());
        }
        let shared = Arc::new(Shared {
            tls,
            require_tls: config.listen.require_tls,
            users: ArcSwap::from_pointee(users),
            policy: ArcSwap::from_pointee(policy),
            engine,
            catalog: ArcSwap::from_pointee(Catalog::default()),
            catalog_refresher: Refresher::new(),
            connector,
            cancels: CancelRegistry::default(),
            metrics: Arc::new(metrics),
            limits: config.limits,
            audit,
            drain: CancellationToken::new(),
            kill: CancellationToken::new(),
        });
        if let Some(auditor) = &shared.audit {
            let started = portcullis_audit::event::AuditEvent::new(
                portcullis_audit::event::EventKind::ConfigChange,
            )
            .with_detail(format!(
                "proxy started on {}; configuration {}; policy version {}",
                listener
                    .local_addr()
                    .map_or_else(|_| "?".to_owned(), |a| a.to_string()),
                config_path
                    .as_deref()
                    .map_or_else(|| "(built in)".to_owned(), |p| p.display().to_string()),
                shared.policy.load().version()
            ));
            if auditor.emit(started).is_err() {
                warn!("audit queue unavailable; the loss is counted");
            }
        }
        let catalog_retry = Duration::from_secs(config.catalog.retry_secs.max(1));
        let catalog_loaded = refresh::load_and_publish(&shared, &catalog_loader).await;
        if !catalog_loaded {
            warn!(
                database = catalog_loader.database(),
                retry_secs = catalog_retry.as_secs(),
                "starting with an empty catalog: every relation outside the system schemas \
                 is refused until a load succeeds; retrying in the background"
            );
        }
        Ok(Self {
            shared,
            listener,
            metrics_listener,
            max_connections: config.listen.max_connections,
            config_path,
            policy_dir: config.policy.dir.clone(),
            watch_secs: config.policy.watch_secs,
            users_file: config.auth.users_file,
            audit_stop,
            audit_task,
            catalog_loader: Some(catalog_loader),
            catalog_retry,
            catalog_loaded,
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The metrics endpoint's address, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Shared state, for tests and embedding.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Re-reads TLS material, the user store and the policy; each part that fails to
    /// load keeps its previous version. Also asks for a new catalog snapshot (with the
    /// support functions reinstalled), which loads in the background.
    pub fn reload(&self) {
        let shared = &self.shared;
        shared.catalog_refresher.request_reload();
        let mut ok = true;
        use portcullis_audit::event::EventKind::ConfigChange;
        if let Some(tls) = &shared.tls {
            match tls.reload() {
                Ok(()) => self.audit_event(ConfigChange, "TLS certificate and key reloaded".into()),
                Err(e) => {
                    ok = false;
                    error!(error = %e, "TLS reload failed; keeping the previous certificate");
                    self.audit_event(
                        ConfigChange,
                        format!("TLS reload refused, the previous certificate stays: {e}"),
                    );
                }
            }
        }
        match UserStore::load(&self.users_file) {
            Ok(users) => {
                self.audit_event(
                    ConfigChange,
                    format!(
                        "user store {} reloaded: {} users",
                        self.users_file.display(),
                        users.len()
                    ),
                );
                shared.users.store(Arc::new(users));
            }
            Err(e) => {
                ok = false;
                error!(error = %e, "user store reload failed; keeping the previous one");
                self.audit_event(
                    ConfigChange,
                    format!("user store reload refused, the previous one stays: {e}"),
                );
            }
        }
        if let Some(path) = &self.config_path {
            match Config::load(path).map_err(|e| e.to_string()).and_then(|c| {
                crate::policy_source::load(&c.policy)
                    .map_err(|e| format!("{}: policy: {e}", path.display()))
            }) {
                Ok(policy) if policy.version() == shared.policy.load().version() => {
                    info!(version = policy.version(), "policy unchanged");
                }
                Ok(policy) => {
                    info!(version = policy.version(), "policy reloaded");
                    self.audit_event(
                        portcullis_audit::event::EventKind::PolicyReload,
                        format!("policy version {}", policy.version()),
                    );
                    shared.policy.store(Arc::new(policy));
                }
                Err(e) => {
                    ok = false;
                    error!(error = %e, "policy reload failed; keeping the previous policy");
                    self.audit_event(portcullis_audit::event::EventKind::PolicyReloadRefused, e);
                }
            }
        }
        let outcome = if ok { "ok" } else { "failed" };
        shared
            .metrics
            .reloads
            .get_or_create(&Outcome { outcome })
            .inc();
        info!(outcome, "reload finished");
    }

    /// The fingerprint of the configuration file and the policy directory, when the
    /// server was started from a file.
    fn policy_fingerprint(&self) -> Option<crate::policy_source::Fingerprint> {
        let path = self.config_path.as_deref()?;
        Some(crate::policy_source::Fingerprint::of(
            path,
            self.policy_dir.as_deref(),
        ))
    }

    fn audit_event(&self, kind: portcullis_audit::event::EventKind, detail: String) {
        if let Some(auditor) = &self.shared.audit {
            let event = portcullis_audit::event::AuditEvent::new(kind).with_detail(detail);
            if auditor.emit(event).is_err() {
                warn!("audit queue unavailable; the loss is counted");
            }
        }
    }

    /// Accepts clients until `shutdown` fires, then drains: no new connections,
    /// running sessions finish their statement, and after the grace period the rest
    /// are cut.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        let limiter = Arc::new(Semaphore::new(self.max_connections));
        let metrics_stop = CancellationToken::new();
        if let Some(listener) = self.metrics_listener.take() {
            let shared = Arc::clone(&self.shared);
            let metrics = Arc::clone(&self.shared.metrics);
            tracker.spawn(crate::metrics::serve(
                listener,
                metrics,
                move || {
                    let (hits, misses) = shared.engine.cache_stats();
                    shared
                        .metrics
                        .parse_cache_hits
                        .set(i64::try_from(hits).unwrap_or(i64::MAX));
                    shared
                        .metrics
                        .parse_cache_misses
                        .set(i64::try_from(misses).unwrap_or(i64::MAX));
                },
                metrics_stop.clone(),
            ));
        }
        if let Some(loader) = self.catalog_loader.take() {
            // Stops with `shutdown`: a load in progress is abandoned.
            tracker.spawn(refresh::keep_fresh(
                Arc::clone(&self.shared),
                loader,
                self.catalog_retry,
                self.catalog_loaded,
                shutdown.clone(),
            ));
        }
        let mut hangup = signal(tokio::signal::unix::SignalKind::hangup());
        // Policy files are watched by polling their size and modification time: cheap,
        // and it works on every filesystem and with `git pull` replacing files.
        let watch_every = Duration::from_secs(self.watch_secs.max(1));
        let mut watch =
            tokio::time::interval_at(tokio::time::Instant::now() + watch_every, watch_every);
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen = self.policy_fingerprint();
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, peer)) => self.admit(&tracker, &limiter, tcp, peer),
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(()) = recv(&mut hangup) => {
                    info!("SIGHUP: reloading");
                    self.reload();
                    seen = self.policy_fingerprint();
                }
                _ = watch.tick(), if self.watch_secs > 0 && seen.is_some() => {
                    let now = self.policy_fingerprint();
                    if now != seen {
                        info!("policy files changed: reloading");
                        seen = now;
                        self.reload();
                    }
                }
                () = shutdown.cancelled() => break,
            }
        }
        drop(self.listener);
        let grace = Duration::from_secs(self.shared.limits.shutdown_grace_secs);
        info!(
            sessions = self.shared.metrics.active_sessions.get(),
            ?grace,
            "shutting down: draining sessions"
        );
        self.shared.drain.cancel();
        metrics_stop.cancel();
        tracker.close();
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            warn!("grace period over: closing remaining sessions");
            self.shared.kill.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
        }
        // Sessions are gone: let the audit pipeline drain its queue and flush its sinks.
        self.audit_stop.cancel();
        if let Some(task) = self.audit_task.take() {
            if tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .is_err()
            {
                warn!("audit pipeline did not finish flushing in time; its spool keeps the rest");
            }
        }
        info!("shutdown complete");
    }

    fn admit(
        &self,
        tracker: &TaskTracker,
        limiter: &Arc<Semaphore>,
        tcp: TcpStream,
        peer: SocketAddr,
    ) {
        let Ok(permit) = Arc::clone(limiter).try_acquire_owned() else {
            self.shared
                .metrics
                .connections
                .get_or_create(&Outcome {
                    outcome: "rejected",
                })
                .inc();
            tracker.spawn(refuse_overload(tcp));
            return;
        };
        self.shared
            .metrics
            .connections
            .get_or_create(&Outcome {
                outcome: "accepted",
            })
            .inc();
        let shared = Arc::clone(&self.shared);
        tracker.spawn(async move {
            crate::session::run(shared, tcp, peer).await;
            drop(permit);
        });
    }
}

/// Tells an over-limit client why, without reading its startup packet.
async fn refuse_overload(mut tcp: TcpStream) {
    let e = PgError::fatal(
        sqlstate::TOO_MANY_CONNECTIONS,
        "sorry, too many clients already",
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), tcp.write_all(&e.to_bytes())).await;
}

fn signal(kind: tokio::signal::unix::SignalKind) -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(kind).ok()
}

async fn recv(sig: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match sig {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}
