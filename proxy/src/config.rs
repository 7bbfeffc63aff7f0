//! `portcullis.toml`: the proxy's own configuration.
//!
//! Parsing is strict (`deny_unknown_fields`); every error names the file and the line.
//! Paths inside the file are relative to the file's directory. Secrets are never inline:
//! they are references ([`SecretRef`]) resolved when the proxy needs them.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;

use portcullis_policy::PolicyConfig;

/// The whole configuration file, as written by the operator.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where clients connect.
    pub listen: ListenConfig,
    /// TLS for clients. Without it the proxy only speaks plaintext (and refuses
    /// SCRAM-SHA-256-PLUS); with `listen.require_tls` it is mandatory.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The proxy's own user store.
    pub auth: AuthConfig,
    /// The database behind the proxy.
    pub upstream: UpstreamConfig,
    /// Statement policy.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Prometheus metrics endpoint.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// Bounds on what one session may send and how long the proxy waits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The audit trail: where events go and in which formats.
    #[serde(default)]
    pub audit: Option<portcullis_audit::pipeline::AuditConfig>,
    /// The catalog snapshot of the upstream database the policy resolves names in.
    #[serde(default)]
    pub catalog: CatalogConfig,
}

/// The client-facing listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Address and port to accept PostgreSQL clients on, e.g. `127.0.0.1:6432`.
    pub address: SocketAddr,
    /// Refuse clients that do not negotiate TLS (FATAL 28000).
    #[serde(default)]
    pub require_tls: bool,
    /// Concurrent client connections; further clients get FATAL 53300.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

/// Whether clients must present a certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertMode {
    /// Do not ask for client certificates.
    #[default]
    None,
    /// Verify a certificate if the client sends one.
    Optional,
    /// Refuse clients without a valid certificate.
    Required,
}

/// Server certificate and, optionally, the CA for client certificates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain presented to clients; reloaded on SIGHUP.
    pub cert: PathBuf,
    /// PEM private key for `cert`; reloaded on SIGHUP.
    pub key: PathBuf,
    /// PEM CA bundle that client certificates must chain to (mTLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Whether a client certificate is asked for; needs `client_ca`.
    #[serde(default)]
    pub client_certificates: ClientCertMode,
}

/// The proxy's user store.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// TOML file of SCRAM verifiers written by `portcullis user add`.
    pub users_file: PathBuf,
}

/// How the proxy protects its upstream connection, modelled on libpq's `sslmode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamSslMode {
    /// Plain TCP.
    #[default]
    Disable,
    /// TLS if the server offers it, else plain TCP. The certificate is not verified.
    Prefer,
    /// TLS, certificate not verified.
    Require,
    /// TLS, certificate must chain to `ca_file`.
    VerifyCa,
    /// TLS, certificate must chain to `ca_file` and match `host`.
    VerifyFull,
}

/// The database the proxy forwards to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Host name or address of the PostgreSQL server.
    pub host: String,
    /// Port of the PostgreSQL server.
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// Role the proxy logs in as, unless a user record names its own `upstream_user`.
    pub user: String,
    /// Password of that role, by reference; absent for trust authentication.
    #[serde(default)]
    pub password: Option<SecretRef>,
    /// Database to connect to; by default the one the client asked for.
    #[serde(default)]
    pub database: Option<String>,
    /// Transport security towards the server.
    #[serde(default)]
    pub sslmode: UpstreamSslMode,
    /// CA bundle for `verify-ca` and `verify-full`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Seconds to wait for the upstream TCP connection and its startup.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
}

/// A secret named by reference, never written inline.
#[derive(Clone)]
pub enum SecretRef {
    /// Read from this environment variable.
    Env(String),
    /// Read from this file (trailing newline stripped).
    File(PathBuf),
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(name) => write!(f, "env:{name}"),
            Self::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

const INLINE_SECRET: &str =
    "inline secrets are not allowed: write { env = \"VARIABLE\" } or { file = \"path\" }";

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = SecretRef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("{ env = \"VARIABLE\" } or { file = \"path\" }")
            }
            // Never echo the value: an operator who wrote a password inline must not
            // find it again in logs.
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<SecretRef, E> {
                Err(E::custom(INLINE_SECRET))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<SecretRef, A::Error> {
                use serde::de::Error;
                let Some(key) = map.next_key::<String>()? else {
                    return Err(A::Error::custom(
                        "empty secret reference; ".to_owned() + INLINE_SECRET,
                    ));
                };
                let secret = match key.as_str() {
                    "env" => SecretRef::Env(map.next_value()?),
                    "file" => SecretRef::File(map.next_value()?),
                    other => return Err(A::Error::unknown_field(other, &["env", "file"])),
                };
                if map.next_key::<String>()?.is_some() {
                    return Err(A::Error::custom(
                        "a secret reference has exactly one of env or file",
                    ));
                }
                Ok(secret)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl SecretRef {
    /// Resolves the reference; the error names the variable or file, never the value.
    pub fn resolve(&self) -> Result<SecretString, ConfigError> {
        match self {
            Self::Env(name) => std::env::var(name).map(SecretString::from).map_err(|_| {
                ConfigError::Secret(format!("environment variable {name} is not set"))
            }),
            Self::File(path) => std::fs::read_to_string(path)
                .map(|s| SecretString::from(s.trim_end_matches(['\r', '\n']).to_owned()))
                .map_err(|e| ConfigError::Secret(format!("{}: {e}", path.display()))),
        }
    }
}

/// Prometheus endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address to serve `GET /metrics` on.
    pub address: SocketAddr,
}

/// Bounds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest frontend message accepted, in bytes; larger ones end the session with 08P01.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Seconds a client has to finish TLS, startup and authentication.
    #[serde(default = "default_startup_timeout")]
    pub startup_timeout_secs: u64,
    /// Seconds running sessions get to finish after SIGTERM before they are cut.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: default_max_message_bytes(),
            startup_timeout_secs: default_startup_timeout(),
            shutdown_grace_secs: default_shutdown_grace(),
        }
    }
}

/// How the proxy reads and refreshes its catalog snapshot of the upstream database.
///
/// Read at start only: a SIGHUP reloads the snapshot but not these settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    /// Database whose catalog is read when `upstream.database` is not set (when it is,
    /// every session goes there and so does the catalog connection). By default the
    /// upstream user's name, which is PostgreSQL's own default database.
    #[serde(default)]
    pub database: Option<String>,
    /// Create or replace the `portcullis` schema's support functions (which rewritten
    /// writes call) at the first load and at every SIGHUP. A failure, such as a missing
    /// CREATE right, is logged as a warning and does not stop the proxy.
    #[serde(default = "default_true")]
    pub install_support: bool,
    /// Seconds one load (connect, support SQL, catalog queries) may take.
    #[serde(default = "default_catalog_timeout")]
    pub load_timeout_secs: u64,
    /// Seconds between attempts after a failed load, until one succeeds.
    #[serde(default = "default_catalog_retry")]
    pub retry_secs: u64,
    /// Largest catalog accepted, in bytes of row data as the server sends it; a larger
    /// one fails to load and the previous snapshot stays in force.
    #[serde(default = "default_catalog_max_bytes")]
    pub max_bytes: usize,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        Self {
            database: None,
            install_support: true,
            load_timeout_secs: default_catalog_timeout(),
            retry_secs: default_catalog_retry(),
            max_bytes: default_catalog_max_bytes(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_catalog_timeout() -> u64 {
    30
}
fn default_catalog_retry() -> u64 {
    5
}
fn default_catalog_max_bytes() -> usize {
    256 * 1024 * 1024
}
fn default_max_connections() -> usize {
    1000
}
fn default_pg_port() -> u16 {
    5432
}
fn default_connect_timeout() -> u64 {
    5
}
fn default_max_message_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_startup_timeout() -> u64 {
    15
}
fn default_shutdown_grace() -> u64 {
    30
}

/// What went wrong reading the configuration; always names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending item.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The file parsed but is inconsistent.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A secret reference could not be resolved.
    #[error("secret: {0}")]
    Secret(String),
}

/// 1-based line and column of a byte offset in `src`.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = src.get(..offset.min(src.len())).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

impl Config {
    /// Reads, parses and validates `path`, resolving relative paths against its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let src = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&src, path, base)
    }

    /// Parses `src` (read from `path`) and validates it; relative paths are joined to `base`.
    pub fn from_toml(src: &str, path: &Path, base: &Path) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(src).map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |span| line_col(src, span.start));
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: e.message().to_owned(),
            }
        })?;
        config.resolve_paths(base);
        config.validate(path)?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let join = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        join(&mut self.auth.users_file);
        if let Some(dir) = &mut self.policy.dir {
            join(dir);
        }
        if let Some(tls) = &mut self.tls {
            join(&mut tls.cert);
            join(&mut tls.key);
            if let Some(ca) = &mut tls.client_ca {
                join(ca);
            }
        }
        if let Some(ca) = &mut self.upstream.ca_file {
            join(ca);
        }
        if let Some(SecretRef::File(p)) = &mut self.upstream.password {
            join(p);
        }
        if let Some(audit) = &mut self.audit {
            join(&mut audit.state_dir);
            for sink in &mut audit.sinks {
                if let Some(spool) = &mut sink.spool_dir {
                    join(spool);
                }
                if let Some(file) = &mut sink.file {
                    join(&mut file.path);
                }
                if let Some(ca) = sink.syslog.as_mut().and_then(|s| s.ca_file.as_mut()) {
                    join(ca);
                }
            }
        }
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |message: &str| {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                message: message.to_owned(),
            })
        };
        if self.listen.require_tls && self.tls.is_none() {
            return invalid("listen.require_tls = true needs a [tls] section with cert and key");
        }
        if let Some(tls) = &self.tls {
            match (tls.client_certificates, &tls.client_ca) {
                (ClientCertMode::None, Some(_)) => {
                    return invalid(
                        "tls.client_ca is set but tls.client_certificates = \"none\"; set it to \"optional\" or \"required\"",
                    );
                }
                (ClientCertMode::Optional | ClientCertMode::Required, None) => {
                    return invalid("tls.client_certificates needs tls.client_ca");
                }
                _ => {}
            }
        }
        if matches!(
            self.upstream.sslmode,
            UpstreamSslMode::VerifyCa | UpstreamSslMode::VerifyFull
        ) && self.upstream.ca_file.is_none()
        {
            return invalid("upstream.sslmode verify-ca / verify-full needs upstream.ca_file");
        }
        if self.limits.max_message_bytes < 1024 {
            return invalid("limits.max_message_bytes must be at least 1024");
        }
        if self.listen.max_connections == 0 {
            return invalid("listen.max_connections must be at least 1");
        }
        if self.catalog.load_timeout_secs == 0 || self.catalog.retry_secs == 0 {
            return invalid("catalog.load_timeout_secs and catalog.retry_secs must be at least 1");
        }
        if self.catalog.max_bytes < 64 * 1024 {
            return invalid("catalog.max_bytes must be at least 65536");
        }
        if self.catalog.database.as_deref() == Some("") {
            return invalid("catalog.database must not be empty; leave it out for the default");
        }
        if let Some(audit) = &self.audit {
            if let Err(e) = audit.validate() {
                return invalid(&format!("audit: {e}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[listen]
address = "127.0.0.1:6432"

[auth]
users_file = "users.toml"

[upstream]
host = "127.0.0.1"
user = "postgres"
password = { env = "PGPASS_TEST" }
"#;

    fn parse(src: &str) -> Result<Config, ConfigError> {
        Config::from_toml(
            src,
            Path::new("/etc/p/portcullis.toml"),
            Path::new("/etc/p"),
        )
    }

    #[test]
    fn minimal_config_resolves_relative_paths() {
        let c = parse(MINIMAL).expect("valid");
        assert_eq!(c.auth.users_file, Path::new("/etc/p/users.toml"));
        assert_eq!(c.upstream.port, 5432);
        assert_eq!(c.limits.max_message_bytes, 64 * 1024 * 1024);
        assert!(!c.listen.require_tls);
        assert!(c.catalog.install_support);
        assert_eq!(c.catalog.database, None);
        assert_eq!(c.catalog.load_timeout_secs, 30);
    }

    #[test]
    fn catalog_section_is_strict_and_validated() {
        let with = |table: &str| parse(&format!("{MINIMAL}\n[catalog]\n{table}\n"));
        let c = with("database = \"app\"\ninstall_support = false").expect("valid");
        assert_eq!(c.catalog.database.as_deref(), Some("app"));
        assert!(!c.catalog.install_support);
        assert!(matches!(
            with("retry_secs = 0"),
            Err(ConfigError::Invalid { .. })
        ));
        assert!(matches!(
            with("database = \"\""),
            Err(ConfigError::Invalid { .. })
        ));
        assert!(matches!(
            with("install = true"),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn unknown_key_points_at_line() {
        let src = MINIMAL.replace("user = \"postgres\"", "user = \"postgres\"\nusr = 1");
        let err = parse(&src).expect_err("unknown field");
        let text = err.to_string();
        assert!(text.starts_with("/etc/p/portcullis.toml:11:1:"), "{text}");
        assert!(text.contains("unknown field"), "{text}");
    }

    #[test]
    fn inline_password_is_refused() {
        let src = MINIMAL.replace(
            "password = { env = \"PGPASS_TEST\" }",
            "password = \"hunter2\"",
        );
        let err = parse(&src).expect_err("inline secret").to_string();
        assert!(err.contains(":11:"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn require_tls_without_tls_section_is_invalid() {
        let src = MINIMAL.replace("[listen]\n", "[listen]\nrequire_tls = true\n");
        assert!(matches!(parse(&src), Err(ConfigError::Invalid { .. })));
    }

    #[test]
    fn secret_from_file_strips_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").expect("write");
        let secret = SecretRef::File(file).resolve().expect("resolves");
        assert_eq!(secrecy::ExposeSecret::expose_secret(&secret), "s3cret");
        assert!(format!("{:?}", SecretRef::Env("X".into())).contains("env:X"));
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}
