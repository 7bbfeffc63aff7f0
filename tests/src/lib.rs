//! Harness for end-to-end tests: a real PostgreSQL, the quickstart data set, and a
//! Portcullis proxy in front of it, in the test's own runtime.
//!
//! By default every [`TestEnv`] starts its own throwaway cluster from the system's
//! binaries (see `portcullis::cluster`). With `PORTCULLIS_TEST_PG_URL` set to a
//! superuser URL (`postgres://user:password@host:port`), it instead creates a fresh
//! database on that server and drops it afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};
use portcullis::auth::store::{NewUser, add_user};
use portcullis::cluster::{Cluster, ClusterOptions};
use portcullis::config::Config;
use portcullis::server::{Server, Shared};
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use portcullis;
pub use portcullis_audit;

pub mod process;
pub mod receivers;
pub mod wire;

/// Demo users of the quickstart: (name, password).
pub const ADMIN: (&str, &str) = ("admin", "admin-demo");
/// Read-only analyst.
pub const ANALYST: (&str, &str) = ("analyst", "analyst-demo");
/// Support for tenant 1.
pub const SUPPORT: (&str, &str) = ("support_acme", "support-demo");
/// A user whose account expired (added by the harness).
pub const EXPIRED: (&str, &str) = ("expired_user", "expired-pass");

/// Where the database under test lives.
enum Backend {
    Own(Cluster),
    External { url: String, database: String },
}

/// Knobs for a test environment.
#[derive(Clone)]
pub struct EnvOptions {
    /// Extra TOML appended to the generated `portcullis.toml` (before `[policy]`
    /// sections are closed, so put tables at the end).
    pub extra_config: String,
    /// `listen.require_tls`.
    pub require_tls: bool,
    /// `limits.max_message_bytes`.
    pub max_message_bytes: usize,
    /// `limits.shutdown_grace_secs`.
    pub shutdown_grace_secs: u64,
    /// Port of the upstream instead of the real one (to simulate it being down).
    pub upstream_port_override: Option<u16>,
    /// Extra lines for the `[tls]` table (client CA settings).
    pub tls_extra: String,
    /// Extra lines for the `[catalog]` table (whose `database` the harness sets).
    pub catalog_extra: String,
    /// An example directory to start with instead of the quickstart (see
    /// [`example_dir`]): its `schema.sql` and `data.sql` are loaded, its `users.toml`
    /// is the user store and its `portcullis.toml`'s `[policy]` section (with `dir`
    /// pointing at the directory) is the policy.
    pub example: Option<PathBuf>,
    /// The policy directory; the example's (by default the quickstart's) when `None`.
    pub policy_dir: Option<std::path::PathBuf>,
}

impl Default for EnvOptions {
    fn default() -> Self {
        Self {
            extra_config: String::new(),
            require_tls: false,
            max_message_bytes: 64 * 1024 * 1024,
            shutdown_grace_secs: 5,
            upstream_port_override: None,
            tls_extra: String::new(),
            catalog_extra: String::new(),
            example: None,
            policy_dir: None,
        }
    }
}

/// A running database + proxy. Dropping it stops both.
pub struct TestEnv {
    backend: Option<Backend>,
    /// Host of the real database.
    pub pg_host: String,
    /// Port of the real database.
    pub pg_port: u16,
    /// Superuser name of the real database.
    pub pg_user: String,
    /// Superuser password of the real database.
    pub pg_password: String,
    /// Database holding the quickstart data.
    pub database: String,
    /// The proxy's client address.
    pub proxy_addr: SocketAddr,
    /// The proxy's metrics address.
    pub metrics_addr: Option<SocketAddr>,
    /// The proxy's self-signed certificate (PEM).
    pub cert_path: PathBuf,
    /// The generated configuration file.
    pub config_path: PathBuf,
    /// The generated user store.
    pub users_path: PathBuf,
    /// The proxy's shared state.
    pub shared: Arc<Shared>,
    shutdown: CancellationToken,
    server: Option<JoinHandle<()>>,
    dir: tempfile::TempDir,
}

static DB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The repository's `examples/quickstart`.
pub fn quickstart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart")
}

/// The repository's `examples/<name>` (for [`EnvOptions::example`]).
pub fn example_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

impl TestEnv {
    /// Database + quickstart data + proxy with default options.
    pub async fn start() -> Result<Self> {
        Self::start_with(EnvOptions::default()).await
    }

    /// Database + quickstart data + proxy.
    pub async fn start_with(opts: EnvOptions) -> Result<Self> {
        portcullis::tls::install_crypto_provider();
        let dir = tempfile::Builder::new()
            .prefix("portcullis-test-")
            .tempdir()?;
        let example = opts.example.clone().unwrap_or_else(quickstart_dir);
        let example_db = example.clone();
        let (backend, host, port, user, password, database) =
            tokio::task::spawn_blocking(move || start_database(&example_db)).await??;

        let (cert_path, key_path) = portcullis::demo::write_self_signed(dir.path())?;
        let users_path = dir.path().join("users.toml");
        std::fs::copy(example.join("users.toml"), &users_path)?;
        let expired = NewUser {
            name: EXPIRED.0,
            roles: &["dba".to_owned()],
            attributes: &BTreeMap::new(),
            expires_at: Some(time::OffsetDateTime::now_utc() - time::Duration::days(1)),
            upstream_user: None,
        };
        add_user(&users_path, &expired, &EXPIRED.1.to_owned().into(), false)?;
        let password_path = dir.path().join("upstream-password");
        std::fs::write(&password_path, &password)?;

        let quickstart = std::fs::read_to_string(example.join("portcullis.toml"))?;
        let policy = quickstart
            .find("[policy]")
            .map(|i| &quickstart[i..])
            .context("quickstart config has no [policy]")?;
        // The policy directory is the quickstart's own, wherever this config is written.
        let policy = policy.replace(
            "dir = \".\"",
            &format!(
                "dir = {:?}",
                opts.policy_dir
                    .clone()
                    .unwrap_or_else(|| example.clone())
                    .display()
                    .to_string()
            ),
        );
        let config_text = format!(
            r#"
[listen]
address = "127.0.0.1:0"
require_tls = {require_tls}

[tls]
cert = "{cert}"
key = "{key}"
{tls_extra}

[auth]
users_file = "{users}"

[upstream]
host = "{host}"
port = {port}
user = "{user}"
password = {{ file = "{pwfile}" }}

[metrics]
address = "127.0.0.1:0"

[limits]
max_message_bytes = {max_msg}
shutdown_grace_secs = {grace}

[catalog]
database = "{database}"
{catalog_extra}

{extra}

{policy}
"#,
            require_tls = opts.require_tls,
            cert = cert_path.display(),
            key = key_path.display(),
            users = users_path.display(),
            port = opts.upstream_port_override.unwrap_or(port),
            pwfile = password_path.display(),
            max_msg = opts.max_message_bytes,
            grace = opts.shutdown_grace_secs,
            database = database,
            extra = opts.extra_config,
            tls_extra = opts.tls_extra,
            catalog_extra = opts.catalog_extra,
        );
        let config_path = dir.path().join("portcullis.toml");
        std::fs::write(&config_path, &config_text)?;
        let config = Config::load(&config_path)?;
        let server = Server::bind(config, Some(config_path.clone())).await?;
        let proxy_addr = server.local_addr()?;
        let metrics_addr = server.metrics_addr();
        let shared = Arc::clone(server.shared());
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(server.run(shutdown.clone()));
        Ok(Self {
            backend: Some(backend),
            pg_host: host,
            pg_port: port,
            pg_user: user,
            pg_password: password,
            database,
            proxy_addr,
            metrics_addr,
            cert_path,
            config_path,
            users_path,
            shared,
            shutdown,
            server: Some(handle),
            dir,
        })
    }

    /// Scratch directory that lives as long as the environment.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// libpq key/value connection string through the proxy.
    pub fn proxy_dsn(&self, (user, password): (&str, &str), extra: &str) -> String {
        format!(
            "host={} port={} dbname={} user={user} password={password} {extra}",
            self.proxy_addr.ip(),
            self.proxy_addr.port(),
            self.database
        )
    }

    /// libpq key/value connection string straight to the database as superuser.
    pub fn direct_dsn(&self) -> String {
        format!(
            "host={} port={} dbname={} user={} password={}",
            self.pg_host, self.pg_port, self.database, self.pg_user, self.pg_password
        )
    }

    /// Runs `psql` through the proxy with `args` (TLS required unless `extra` says otherwise).
    pub async fn psql(&self, who: (&str, &str), extra: &str, args: &[&str]) -> Result<Output> {
        let dsn = self.proxy_dsn(who, &format!("sslmode=require {extra}"));
        let mut cmd = tokio::process::Command::new("psql");
        cmd.arg("-X")
            .arg("-At")
            .arg("-v")
            .arg("ON_ERROR_STOP=1")
            .arg(&dsn)
            .args(args);
        cmd.env_remove("PGPASSWORD").env_remove("PGSERVICE");
        Ok(cmd.output().await?)
    }

    /// Runs `psql` straight against the database as superuser.
    pub async fn psql_direct(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = tokio::process::Command::new("psql");
        cmd.arg("-X")
            .arg("-At")
            .arg("-v")
            .arg("ON_ERROR_STOP=1")
            .arg(self.direct_dsn())
            .args(args);
        Ok(cmd.output().await?)
    }

    /// Stops the proxy gracefully and waits for it.
    pub async fn stop_proxy(&mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.server.take() {
            let _ = h.await;
        }
    }

    /// The proxy's shutdown trigger (SIGTERM equivalent).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Fetches the Prometheus exposition text.
    pub async fn metrics(&self) -> Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.metrics_addr.context("metrics disabled")?;
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.server.take() {
            h.abort();
        }
        match self.backend.take() {
            Some(Backend::Own(cluster)) => drop(cluster),
            Some(Backend::External { url, database }) => {
                let _ = std::process::Command::new("psql")
                    .arg("-X")
                    .arg(format!("{url}/postgres"))
                    .arg("-c")
                    .arg(format!(
                        "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
                    ))
                    .output();
            }
            None => {}
        }
    }
}

type Started = (Backend, String, u16, String, String, String);

fn start_database(example: &Path) -> Result<Started> {
    let schema = example.join("schema.sql");
    let data = example.join("data.sql");
    if let Ok(url) = std::env::var("PORTCULLIS_TEST_PG_URL") {
        let url = url.trim_end_matches('/').to_owned();
        let parsed = parse_url(&url)?;
        let database = format!(
            "portcullis_test_{}_{}",
            std::process::id(),
            DB_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run_psql(
            &format!("{url}/postgres"),
            &["-c", &format!("CREATE DATABASE \"{database}\"")],
        )?;
        let db_url = format!("{url}/{database}");
        run_psql(
            &db_url,
            &[
                "-f",
                &schema.display().to_string(),
                "-f",
                &data.display().to_string(),
            ],
        )?;
        let (user, password, host, port) = parsed;
        return Ok((
            Backend::External {
                url,
                database: database.clone(),
            },
            host,
            port,
            user,
            password,
            database,
        ));
    }
    let password = format!("pw{}", std::process::id());
    let cluster = Cluster::start(&ClusterOptions::new(password.clone()))?;
    let database = match example.file_name().and_then(|name| name.to_str()) {
        Some(name) if example != quickstart_dir() => name.to_owned(),
        _ => "quickstart".to_owned(),
    };
    cluster.create_database(&database)?;
    cluster.psql_file(&database, &schema)?;
    cluster.psql_file(&database, &data)?;
    let host = cluster.host().to_owned();
    let port = cluster.port();
    let user = cluster.superuser().to_owned();
    Ok((Backend::Own(cluster), host, port, user, password, database))
}

/// (user, password, host, port) of `postgres://user:password@host:port`.
fn parse_url(url: &str) -> Result<(String, String, String, u16)> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"));
    let Some(rest) = rest else {
        bail!("PORTCULLIS_TEST_PG_URL must start with postgres://")
    };
    let (cred, hostport) = rest
        .rsplit_once('@')
        .context("PORTCULLIS_TEST_PG_URL needs user:password@")?;
    let (user, password) = cred.split_once(':').unwrap_or((cred, ""));
    let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "5432"));
    Ok((
        user.to_owned(),
        password.to_owned(),
        host.to_owned(),
        port.parse()?,
    ))
}

fn run_psql(url: &str, args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("psql")
        .arg("-X")
        .arg("-q")
        .arg("-v")
        .arg("ON_ERROR_STOP=1")
        .arg(url)
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// stdout of a successful command, or an error with its stderr.
pub fn stdout(out: &Output) -> Result<String> {
    if !out.status.success() {
        bail!(
            "command failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A rustls client config that trusts the environment's self-signed certificate.
pub fn client_tls(cert_path: &Path) -> Result<rustls::ClientConfig> {
    portcullis::tls::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in portcullis::tls::load_certs(cert_path)? {
        roots.add(cert)?;
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Like [`client_tls`], presenting a client certificate.
pub fn client_tls_with_cert(
    cert_path: &Path,
    chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
) -> Result<rustls::ClientConfig> {
    portcullis::tls::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in portcullis::tls::load_certs(cert_path)? {
        roots.add(cert)?;
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?)
}

// ---------------------------------------------------------------------------------------
// Raw wire-protocol helpers, for tests that must send what no real client would.
// ---------------------------------------------------------------------------------------

/// A typed frontend message: `tag`, length, `body`.
pub fn frontend_message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(tag);
    out.extend_from_slice(
        &i32::try_from(body.len() + 4)
            .expect("message fits i32")
            .to_be_bytes(),
    );
    out.extend_from_slice(body);
    out
}

/// A StartupMessage for protocol `version` (`3 << 16` is 3.0) with `params`.
pub fn startup_message(version: i32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = i32::try_from(body.len() + 4)
        .expect("fits")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(&body);
    out
}

/// A simple-protocol Query message.
pub fn query_message(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    frontend_message(b'Q', &body)
}

/// Parse (unnamed, no parameter types) + Bind (unnamed portal, no parameters) +
/// Execute (no row limit), without Sync.
pub fn extended_messages(sql: &str) -> Vec<u8> {
    let mut parse = vec![0u8];
    parse.extend_from_slice(sql.as_bytes());
    parse.extend_from_slice(&[0, 0, 0]);
    // portal "", statement "", 0 parameter formats, 0 parameters, 0 result formats
    let bind = [0u8, 0, 0, 0, 0, 0, 0, 0];
    let execute = [0u8, 0, 0, 0, 0];
    let mut out = frontend_message(b'P', &parse);
    out.extend(frontend_message(b'B', &bind));
    out.extend(frontend_message(b'E', &execute));
    out
}

/// A Sync message.
pub fn sync_message() -> Vec<u8> {
    frontend_message(b'S', &[])
}

/// Reads one backend message as (tag, body). `Ok(None)` is a clean end of stream before
/// a new message; a stream that ends inside a message is an error.
pub async fn read_message<R>(reader: &mut R) -> Result<Option<(u8, Vec<u8>)>>
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut tag = [0u8; 1];
    if reader.read(&mut tag).await? == 0 {
        return Ok(None);
    }
    let mut len = [0u8; 4];
    reader.read_exact(&mut len).await?;
    let len = i32::from_be_bytes(len);
    let body_len = usize::try_from(len)
        .ok()
        .and_then(|l| l.checked_sub(4))
        .with_context(|| {
            format!(
                "backend message {:?} with bad length {len}",
                char::from(tag[0])
            )
        })?;
    let mut body = vec![0u8; body_len];
    reader.read_exact(&mut body).await?;
    Ok(Some((tag[0], body)))
}

/// Like [`read_message`] but fails after `secs` seconds.
pub async fn read_message_within<R>(reader: &mut R, secs: u64) -> Result<Option<(u8, Vec<u8>)>>
where
    R: tokio::io::AsyncRead + Unpin,
{
    tokio::time::timeout(std::time::Duration::from_secs(secs), read_message(reader))
        .await
        .with_context(|| format!("no backend message within {secs} s"))?
}

/// Fields of an ErrorResponse or NoticeResponse body, by field code (`S`, `C`, `M`, ...).
pub fn error_fields(body: &[u8]) -> BTreeMap<char, String> {
    body.split(|&b| b == 0)
        .filter(|f| !f.is_empty())
        .map(|f| {
            (
                char::from(f[0]),
                String::from_utf8_lossy(&f[1..]).into_owned(),
            )
        })
        .collect()
}

/// Reads messages until ReadyForQuery (included), within 10 s. Fails on end of stream.
pub async fn read_until_ready<R>(reader: &mut R) -> Result<Vec<(u8, Vec<u8>)>>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let mut out = Vec::new();
    loop {
        match read_message_within(reader, 10).await? {
            Some((tag, body)) => {
                out.push((tag, body));
                if tag == b'Z' {
                    return Ok(out);
                }
            }
            None => bail!(
                "connection closed before ReadyForQuery; got {}",
                describe_messages(&out)
            ),
        }
    }
}

/// Tags of `msgs` as a string, with error fields spelled out, for assertion messages.
pub fn describe_messages(msgs: &[(u8, Vec<u8>)]) -> String {
    msgs.iter()
        .map(|(tag, body)| match tag {
            b'E' | b'N' => format!("{}{:?}", char::from(*tag), error_fields(body)),
            _ => char::from(*tag).to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Expects the next message (notices skipped) to be an ErrorResponse with `severity` and
/// SQLSTATE `code`; returns its fields.
pub async fn expect_error<R>(
    reader: &mut R,
    severity: &str,
    code: &str,
) -> Result<BTreeMap<char, String>>
where
    R: tokio::io::AsyncRead + Unpin,
{
    loop {
        match read_message_within(reader, 10).await? {
            Some((b'N', _)) => continue,
            Some((b'E', body)) => {
                let fields = error_fields(&body);
                if fields.get(&'S').map(String::as_str) != Some(severity)
                    || fields.get(&'C').map(String::as_str) != Some(code)
                {
                    bail!("expected {severity} {code}, got {fields:?}");
                }
                return Ok(fields);
            }
            Some((tag, body)) => bail!(
                "expected ErrorResponse, got {}",
                describe_messages(&[(tag, body)])
            ),
            None => bail!("connection closed instead of {severity} {code}"),
        }
    }
}

/// Expects a FATAL ErrorResponse with `code` followed by the end of the connection;
/// returns the error's fields.
pub async fn expect_fatal_then_close<R>(
    reader: &mut R,
    code: &str,
) -> Result<BTreeMap<char, String>>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let fields = expect_error(reader, "FATAL", code).await?;
    expect_closed(reader).await?;
    Ok(fields)
}

/// Expects the peer to close the connection within 5 s without sending any message
/// (a read error such as a reset or a TLS close without close_notify also counts as
/// closed).
pub async fn expect_closed<R>(reader: &mut R) -> Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
{
    match tokio::time::timeout(std::time::Duration::from_secs(5), read_message(reader)).await {
        Err(_) => bail!("connection still open after 5 s"),
        Ok(Ok(None)) | Ok(Err(_)) => Ok(()),
        Ok(Ok(Some((tag, body)))) => {
            bail!(
                "expected the connection to close, got {}",
                describe_messages(&[(tag, body)])
            )
        }
    }
}

/// Plain TCP connection to the proxy.
pub async fn raw_connect(env: &TestEnv) -> Result<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(env.proxy_addr).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// SSLRequest, then a TLS handshake with `config`, on a new connection to the proxy.
pub async fn raw_tls_connect_with(
    env: &TestEnv,
    config: rustls::ClientConfig,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = raw_connect(env).await?;
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    if answer[0] != b'S' {
        bail!("SSLRequest answered {:?}", char::from(answer[0]));
    }
    let name = rustls::pki_types::ServerName::try_from("localhost")?.to_owned();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    Ok(stream)
}

/// SSLRequest and a TLS handshake trusting the environment's certificate.
pub async fn raw_tls_connect(
    env: &TestEnv,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    raw_tls_connect_with(env, client_tls(&env.cert_path)?).await
}

/// The value of the sample `series` (metric name with its labels exactly as exposed,
/// e.g. `portcullis_statements_total{outcome="denied"}`) in a Prometheus text; 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series)
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
        .unwrap_or(0.0)
}

/// Polls `check` every 50 ms until it returns true or `secs` seconds pass; returns
/// whether it became true.
pub async fn eventually<F, Fut>(secs: u64, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Installs (once per process) a panic hook that counts panics on every thread, then
/// returns the count so far. The proxy runs in the test process, and a panic in a
/// spawned session task fails nothing by itself; a test calls this at its start and
/// asserts at its end that the count did not change.
pub fn panics_so_far() -> usize {
    use std::sync::atomic::AtomicUsize;
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            COUNT.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
    COUNT.load(Ordering::SeqCst)
}
