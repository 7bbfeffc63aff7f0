//! `portcullis demo`: a throwaway PostgreSQL with the quickstart data set behind a
//! running proxy, for trying Portcullis in one command.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, ClusterError, ClusterOptions};
use crate::config::{ClientCertMode, Config, MetricsConfig, SecretRef, TlsConfig};
use crate::server::{Server, ServerError};
use portcullis_audit::pipeline::{FileSettings, FormatKind, SinkConfig, SinkKind};

/// The demo users and their passwords, as documented in the README.
pub const DEMO_USERS: &[(&str, &str, &str)] = &[
    ("admin", "admin-demo", "role dba: everything"),
    ("analyst", "analyst-demo", "read-only"),
    ("support_acme", "support-demo", "tenant acme (1)"),
];

/// The database the quickstart data lives in.
pub const DEMO_DATABASE: &str = "quickstart";

/// What the demo needs to know.
pub struct DemoOptions {
    /// Port for the proxy on 127.0.0.1.
    pub port: u16,
    /// Port for the metrics endpoint on 127.0.0.1 (0 = any free port).
    pub metrics_port: u16,
    /// Directory holding `portcullis.toml`, `users.toml`, `schema.sql`, `data.sql`.
    pub example_dir: PathBuf,
}

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The example directory is incomplete.
    #[error("{0}")]
    Example(String),
    /// PostgreSQL could not be started or loaded.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The proxy could not start.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// File system trouble in the demo's temp dir.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Certificate generation failed.
    #[error("certificate: {0}")]
    Cert(String),
}

/// A running demo. Dropping it stops PostgreSQL and removes its files; call
/// [`Demo::shutdown`] first to stop the proxy cleanly.
pub struct Demo {
    /// The OCSF JSON-lines audit trail the demo writes.
    pub audit_path: PathBuf,
    /// The same trail as native hash-chained JSON lines.
    pub chain_path: PathBuf,
    /// The proxy's address.
    pub proxy_addr: SocketAddr,
    /// The metrics endpoint's address.
    pub metrics_addr: Option<SocketAddr>,
    /// The generated self-signed certificate clients may pin.
    pub cert_path: PathBuf,
    /// The throwaway PostgreSQL.
    pub cluster: Cluster,
    shutdown: CancellationToken,
    server: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Demo {
    /// URL for a demo user through the proxy.
    pub fn proxy_url(&self, user: &str, password: &str) -> String {
        format!(
            "postgres://{user}:{password}@{}:{}/{DEMO_DATABASE}?sslmode=require",
            self.proxy_addr.ip(),
            self.proxy_addr.port()
        )
    }

    /// URL straight to the throwaway PostgreSQL, bypassing the proxy.
    pub fn direct_url(&self) -> String {
        self.cluster.url(
            self.cluster.superuser(),
            self.cluster.password(),
            DEMO_DATABASE,
        )
    }

    /// Stops the proxy (draining sessions) and then PostgreSQL.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.server.await;
        let _ = tokio::task::spawn_blocking(move || self.cluster.stop()).await;
    }
}

/// The example directory: `$PORTCULLIS_EXAMPLES/quickstart`, else `examples/quickstart`
/// under the current directory, else the one in the source tree this binary was built from.
pub fn default_example_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PORTCULLIS_EXAMPLES") {
        return PathBuf::from(dir).join("quickstart");
    }
    let local = PathBuf::from("examples/quickstart");
    if local.join("portcullis.toml").is_file() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart")
}

/// Starts PostgreSQL, loads the data set and starts the proxy.
pub async fn start(opts: DemoOptions) -> Result<Demo, DemoError> {
    let example = std::fs::canonicalize(&opts.example_dir).map_err(|e| {
        DemoError::Example(format!(
            "example directory {}: {e}",
            opts.example_dir.display()
        ))
    })?;
    for file in ["portcullis.toml", "users.toml", "schema.sql", "data.sql"] {
        if !example.join(file).is_file() {
            return Err(DemoError::Example(format!(
                "{} is missing; run the demo from the repository root or set PORTCULLIS_EXAMPLES",
                example.join(file).display()
            )));
        }
    }
    let dir = tempfile::Builder::new()
        .prefix("portcullis-demo-")
        .tempdir()?;
    let password = random_password();

    let cluster = {
        let example = example.clone();
        let password = password.clone();
        tokio::task::spawn_blocking(move || -> Result<Cluster, ClusterError> {
            let cluster = Cluster::start(&ClusterOptions::new(password))?;
            cluster.create_database(DEMO_DATABASE)?;
            cluster.psql_file(DEMO_DATABASE, &example.join("schema.sql"))?;
            cluster.psql_file(DEMO_DATABASE, &example.join("data.sql"))?;
            Ok(cluster)
        })
        .await
        .map_err(|e| DemoError::Example(format!("cluster setup task failed: {e}")))??
    };

    let (cert_path, key_path) = write_self_signed(dir.path())?;
    let password_file = dir.path().join("upstream-password");
    write_private(&password_file, password.as_bytes())?;

    let config_path = example.join("portcullis.toml");
    let mut config = Config::load(&config_path).map_err(ServerError::from)?;
    config.listen.address = SocketAddr::from((Ipv4Addr::LOCALHOST, opts.port));
    config.tls = Some(TlsConfig {
        cert: cert_path.clone(),
        key: key_path,
        client_ca: None,
        client_certificates: ClientCertMode::None,
    });
    config.upstream.host = cluster.host().to_owned();
    config.upstream.port = cluster.port();
    config.upstream.user = cluster.superuser().to_owned();
    config.upstream.password = Some(SecretRef::File(password_file));
    // Clients name the database; the catalog connection has no client to ask.
    config.catalog.database = Some(DEMO_DATABASE.to_owned());
    config.metrics = Some(MetricsConfig {
        address: SocketAddr::from((Ipv4Addr::LOCALHOST, opts.metrics_port)),
    });
    // The demo's audit trail: OCSF JSON lines in the demo directory, besides any sink the
    // example configures.
    let audit_path = dir.path().join("audit.ocsf.jsonl");
    let chain_path = dir.path().join("audit.jsonl");
    let mut audit = config.audit.take().unwrap_or_default();
    audit.instance = "portcullis-demo".to_owned();
    audit.state_dir = dir.path().join("audit-state");
    let mut sink = SinkConfig::new("demo-file", SinkKind::File);
    sink.format = FormatKind::Ocsf;
    sink.flush_ms = 100;
    sink.file = Some(FileSettings {
        path: audit_path.clone(),
        max_bytes: 64 * 1024 * 1024,
        retain_count: Some(4),
        retain_age_secs: None,
    });
    audit.sinks.push(sink);
    // The same events in the native JSON form, which `portcullis audit verify` checks.
    let mut chain = SinkConfig::new("demo-chain", SinkKind::File);
    chain.format = FormatKind::Json;
    chain.flush_ms = 100;
    chain.file = Some(FileSettings {
        path: chain_path.clone(),
        max_bytes: 64 * 1024 * 1024,
        retain_count: Some(4),
        retain_age_secs: None,
    });
    audit.sinks.push(chain);
    config.audit = Some(audit);

    // With the example's file named, edits to its policy (the [policy] section and the
    // policy directory) are reloaded while the demo runs; the demo's own overrides
    // (ports, certificate, upstream) stay, as reloads only take the policy from it.
    let server = Server::bind(config, Some(config_path.clone())).await?;
    let proxy_addr = server.local_addr()?;
    let metrics_addr = server.metrics_addr();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(server.run(shutdown.clone()));
    Ok(Demo {
        audit_path,
        chain_path,
        proxy_addr,
        metrics_addr,
        cert_path,
        cluster,
        shutdown,
        server: handle,
        _dir: dir,
    })
}

fn random_password() -> String {
    use rand::RngExt;
    let mut rng = rand::rng();
    (0..24)
        .map(|_| {
            char::from(
                b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
                    [rng.random_range(0..57)],
            )
        })
        .collect()
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents)
}

/// Writes a self-signed certificate for localhost and 127.0.0.1.
pub fn write_self_signed(dir: &Path) -> Result<(PathBuf, PathBuf), DemoError> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .map_err(|e| DemoError::Cert(e.to_string()))?;
    let cert_path = dir.join("server.crt");
    let key_path = dir.join("server.key");
    std::fs::write(&cert_path, cert.cert.pem())?;
    write_private(&key_path, cert.key_pair.serialize_pem().as_bytes())?;
    Ok((cert_path, key_path))
}
