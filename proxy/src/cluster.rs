//! A throwaway PostgreSQL cluster for `portcullis demo` and the end-to-end tests.
//!
//! [`Cluster::start`] runs `initdb` into a fresh temporary directory (SCRAM-SHA-256 for every
//! connection, superuser `postgres`), appends the settings to `postgresql.conf`, and starts the
//! server with `pg_ctl` on `127.0.0.1`. Dropping the [`Cluster`] stops the server and removes the
//! directory. Everything is synchronous (`std::process`).
//!
//! `initdb` refuses to run as root. When this process is root, the cluster is created and run
//! as the `postgres` OS user through `runuser` (or `su`), and the temporary directory is handed
//! to that user.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tempfile::TempDir;

/// The address the cluster listens on.
const HOST: &str = "127.0.0.1";
/// The superuser `initdb` creates.
const SUPERUSER: &str = "postgres";
/// The OS user the server runs as when this process is root.
const SERVER_OS_USER: &str = "postgres";
/// How many ports are tried when the caller let [`Cluster::start`] pick one.
const START_ATTEMPTS: usize = 3;
/// How many lines of `server.log` a start failure carries.
const LOG_TAIL_LINES: usize = 20;

/// Why a throwaway cluster could not be found, started, queried or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A PostgreSQL program is not installed where we looked.
    #[error(
        "PostgreSQL program `{binary}` not found (looked in {searched}). Install the PostgreSQL \
         server binaries (Debian/Ubuntu: `apt-get install postgresql`; Fedora/RHEL: \
         `dnf install postgresql-server`; macOS: `brew install postgresql`) or set \
         $PORTCULLIS_PG_BIN to the directory holding initdb, pg_ctl, postgres and psql"
    )]
    BinariesMissing {
        /// The program that is missing, e.g. `initdb`.
        binary: String,
        /// Where it was looked for, for the operator.
        searched: String,
    },
    /// Running as root, but there is no `postgres` OS user to run the server as.
    #[error(
        "running as root, and initdb refuses to run as root, but there is no `{SERVER_OS_USER}` \
         OS user in /etc/passwd to run the cluster as; create one (e.g. `useradd --system \
         --user-group {SERVER_OS_USER}`) or run as an unprivileged user"
    )]
    NoServerUser,
    /// Running as root, but neither `runuser` nor `su` is available to drop privileges.
    #[error(
        "running as root, but neither `runuser` nor `su` was found to run initdb as `{SERVER_OS_USER}`"
    )]
    NoPrivilegeDrop,
    /// The options were refused before anything was run.
    #[error("invalid cluster options: {0}")]
    InvalidOptions(String),
    /// A file-system or process-spawning operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A program ran and exited unsuccessfully.
    #[error("`{program}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The program, e.g. `initdb` or `psql`.
        program: String,
        /// Its exit status.
        status: String,
        /// What it wrote to stderr, trimmed.
        stderr: String,
    },
    /// `pg_ctl start` did not bring the server up.
    #[error(
        "PostgreSQL did not start after {attempts} attempt(s): {pg_ctl}\nlast lines of {log}:\n{log_tail}"
    )]
    StartFailed {
        /// How many ports were tried.
        attempts: usize,
        /// What `pg_ctl` reported on the last attempt.
        pg_ctl: String,
        /// The server log's path.
        log: String,
        /// The last lines of the server log.
        log_tail: String,
    },
}

impl ClusterError {
    fn io(what: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }

    fn missing(binary: &str, searched: impl Into<String>) -> Self {
        Self::BinariesMissing {
            binary: binary.to_owned(),
            searched: searched.into(),
        }
    }
}

/// Server certificate and key (PEM files) that turn on TLS in the cluster.
#[derive(Debug, Clone)]
pub struct SslFiles {
    /// The certificate (chain) PEM file.
    pub cert: PathBuf,
    /// The private key PEM file.
    pub key: PathBuf,
}

/// How to start a [`Cluster`].
///
/// `Debug` redacts the password.
#[derive(Clone)]
pub struct ClusterOptions {
    /// The port to listen on; `None` picks a free one (and retries with another on failure).
    pub port: Option<u16>,
    /// The password of the `postgres` superuser; must be non-empty and a single line.
    pub superuser_password: String,
    /// Server certificate and key; `Some` sets `ssl = on`.
    pub ssl: Option<SslFiles>,
    /// Further `postgresql.conf` settings, appended last (so they override ours). Names must be
    /// made of ASCII letters, digits, `_` and `.`.
    pub extra_conf: Vec<(String, String)>,
}

impl ClusterOptions {
    /// Options with a free port, no TLS and no extra settings.
    pub fn new(superuser_password: impl Into<String>) -> Self {
        Self {
            port: None,
            superuser_password: superuser_password.into(),
            ssl: None,
            extra_conf: Vec::new(),
        }
    }

    fn validate(&self) -> Result<(), ClusterError> {
        let password = &self.superuser_password;
        if password.is_empty() || password.contains(['\n', '\r', '\0']) {
            return Err(ClusterError::InvalidOptions(
                "the superuser password must be non-empty and a single line".into(),
            ));
        }
        if self.port == Some(0) {
            return Err(ClusterError::InvalidOptions(
                "port 0: use `None` to pick a free port".into(),
            ));
        }
        for (name, value) in &self.extra_conf {
            let valid_name = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
            if !valid_name {
                return Err(ClusterError::InvalidOptions(format!(
                    "invalid setting name {name:?}"
                )));
            }
            if value.contains(['\n', '\r', '\0']) {
                return Err(ClusterError::InvalidOptions(format!(
                    "setting {name} spans lines"
                )));
            }
        }
        Ok(())
    }
}

impl fmt::Debug for ClusterOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterOptions")
            .field("port", &self.port)
            .field("superuser_password", &"<redacted>")
            .field("ssl", &self.ssl)
            .field("extra_conf", &self.extra_conf)
            .finish()
    }
}

/// Where the PostgreSQL server binaries are: `$PORTCULLIS_PG_BIN`, else `pg_config --bindir`,
/// else the newest `/usr/lib/postgresql/*/bin`, else the directory of `initdb` on `PATH`.
///
/// A directory counts only if it holds `initdb`. An explicit `$PORTCULLIS_PG_BIN` without it is
/// an error rather than a silent fallback.
pub fn find_pg_bindir() -> Result<PathBuf, ClusterError> {
    if let Some(dir) = std::env::var_os("PORTCULLIS_PG_BIN").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if is_executable(&dir.join("initdb")) {
            return Ok(dir);
        }
        return Err(ClusterError::missing(
            "initdb",
            format!("$PORTCULLIS_PG_BIN={}", dir.display()),
        ));
    }
    if let Some(dir) = pg_config_bindir().filter(|d| is_executable(&d.join("initdb"))) {
        return Ok(dir);
    }
    if let Some(dir) = newest_debian_bindir() {
        return Ok(dir);
    }
    if let Some(initdb) = which("initdb")
        && let Some(dir) = initdb.parent()
    {
        return Ok(dir.to_path_buf());
    }
    Err(ClusterError::missing(
        "initdb",
        "$PORTCULLIS_PG_BIN (unset), `pg_config --bindir`, /usr/lib/postgresql/*/bin and PATH",
    ))
}

fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8(out.stdout).ok()?;
    let dir = dir.trim();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

/// The Debian/Ubuntu layout: `/usr/lib/postgresql/<major>/bin`, newest major first.
fn newest_debian_bindir() -> Option<PathBuf> {
    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name().into_string().ok()?;
            let version = name
                .split('.')
                .map(|p| p.parse::<u32>().ok())
                .collect::<Option<Vec<_>>>()?;
            let bin = entry.path().join("bin");
            is_executable(&bin.join("initdb")).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `program` on `PATH`, or in the sbin directories root's tools live in.
fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn require(bindir: &Path, program: &str) -> Result<PathBuf, ClusterError> {
    let path = bindir.join(program);
    if is_executable(&path) {
        Ok(path)
    } else {
        Err(ClusterError::missing(program, bindir.display().to_string()))
    }
}

/// Who runs `initdb`, `pg_ctl` and the server.
#[derive(Debug, Clone)]
enum ServerUser {
    /// This process's user (not root).
    Current,
    /// The `postgres` OS user, reached from root through `runuser` or `su`.
    Other {
        uid: u32,
        gid: u32,
        drop: PrivilegeDrop,
    },
}

#[derive(Debug, Clone)]
enum PrivilegeDrop {
    Runuser(PathBuf),
    Su(PathBuf),
}

impl ServerUser {
    fn detect() -> Result<Self, ClusterError> {
        if !running_as_root() {
            return Ok(Self::Current);
        }
        let (uid, gid) = lookup_os_user(SERVER_OS_USER)?.ok_or(ClusterError::NoServerUser)?;
        let drop = match (which("runuser"), which("su")) {
            (Some(runuser), _) => PrivilegeDrop::Runuser(runuser),
            (None, Some(su)) => PrivilegeDrop::Su(su),
            (None, None) => return Err(ClusterError::NoPrivilegeDrop),
        };
        Ok(Self::Other { uid, gid, drop })
    }

    /// A command that runs `program args` as the server user.
    fn command(&self, program: &Path, args: &[&OsStr]) -> Command {
        match self {
            Self::Current => {
                let mut cmd = Command::new(program);
                cmd.args(args);
                cmd
            }
            Self::Other {
                drop: PrivilegeDrop::Runuser(runuser),
                ..
            } => {
                let mut cmd = Command::new(runuser);
                cmd.args(["-u", SERVER_OS_USER, "--"])
                    .arg(program)
                    .args(args);
                cmd
            }
            Self::Other {
                drop: PrivilegeDrop::Su(su),
                ..
            } => {
                let mut script = String::from("exec");
                for word in std::iter::once(program.as_os_str()).chain(args.iter().copied()) {
                    script.push(' ');
                    script.push_str(&shell_quote(&word.to_string_lossy()));
                }
                let mut cmd = Command::new(su);
                cmd.args(["-s", "/bin/sh", "-c", &script, SERVER_OS_USER]);
                cmd
            }
        }
    }

    /// Hands a file or directory we created to the server user.
    fn give(&self, path: &Path) -> Result<(), ClusterError> {
        match self {
            Self::Current => Ok(()),
            Self::Other { uid, gid, .. } => std::os::unix::fs::chown(path, Some(*uid), Some(*gid))
                .map_err(|e| {
                    ClusterError::io(format!("chown {} to {SERVER_OS_USER}", path.display()), e)
                }),
        }
    }
}

/// Whether the effective user is root, read from the owner of `/proc/self` (no `unsafe`
/// `geteuid`), falling back to `id -u` where there is no procfs.
fn running_as_root() -> bool {
    if let Ok(meta) = fs::metadata("/proc/self") {
        return meta.uid() == 0;
    }
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// `(uid, gid)` of `name` in `/etc/passwd`.
fn lookup_os_user(name: &str) -> Result<Option<(u32, u32)>, ClusterError> {
    let passwd = match fs::read_to_string("/etc/passwd") {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ClusterError::io("read /etc/passwd", e)),
    };
    Ok(passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some((uid, gid))
    }))
}

/// A running throwaway PostgreSQL cluster on `127.0.0.1`.
///
/// Dropping it runs `pg_ctl stop -m fast` and removes its directory, best effort and without
/// panicking; call [`Cluster::stop`] to see errors. `Debug` redacts the password.
pub struct Cluster {
    server_user: ServerUser,
    pg_ctl: PathBuf,
    psql: PathBuf,
    port: u16,
    password: String,
    data_dir: PathBuf,
    log_file: PathBuf,
    /// `None` once [`Cluster::stop`] has cleaned up.
    dir: Option<TempDir>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("port", &self.port)
            .field("data_dir", &self.data_dir)
            .field("password", &"<redacted>")
            .field("server_user", &self.server_user)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Creates a cluster in a fresh temporary directory and starts it.
    ///
    /// Refuses an empty or multi-line password and malformed `extra_conf` names; fails with
    /// [`ClusterError::BinariesMissing`] when PostgreSQL is not installed, and with
    /// [`ClusterError::StartFailed`] (carrying the tail of `server.log`) when the server does not
    /// come up.
    pub fn start(opts: &ClusterOptions) -> Result<Cluster, ClusterError> {
        opts.validate()?;
        let bindir = find_pg_bindir()?;
        let initdb = require(&bindir, "initdb")?;
        let pg_ctl = require(&bindir, "pg_ctl")?;
        require(&bindir, "postgres")?;
        let psql = require(&bindir, "psql").or_else(|_| {
            which("psql").ok_or_else(|| {
                ClusterError::missing("psql", format!("{} and PATH", bindir.display()))
            })
        })?;
        let server_user = ServerUser::detect()?;

        let dir = make_temp_dir(&server_user)?;
        let data_dir = dir.path().join("data");
        let log_file = dir.path().join("server.log");
        let mut cluster = Cluster {
            server_user,
            pg_ctl,
            psql,
            port: 0,
            password: opts.superuser_password.clone(),
            data_dir,
            log_file,
            dir: Some(dir),
        };
        cluster.initdb(&initdb)?;
        cluster.configure(opts)?;
        cluster.start_server(opts.port)?;
        Ok(cluster)
    }

    /// The address the server listens on: `127.0.0.1`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's name: `postgres`.
    pub fn superuser(&self) -> &str {
        SUPERUSER
    }

    /// The superuser's password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The data directory (inside the temporary directory that is removed on drop).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A `postgres://user:password@127.0.0.1:port/db` URL, every part percent-encoded.
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "postgres://{}:{}@{HOST}:{}/{}",
            percent_encode(user),
            percent_encode(password),
            self.port,
            percent_encode(db)
        )
    }

    /// Runs `sql` with `psql -X -v ON_ERROR_STOP=1 -At -c` as the superuser over TCP and
    /// returns its stdout without the final newline. A failing statement is an error carrying
    /// psql's stderr.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, ClusterError> {
        let mut cmd = self.psql_command(db, &self.password);
        cmd.arg("-c").arg(sql);
        psql_output(cmd)
    }

    /// Runs the script at `path` like [`Cluster::psql`] (`-f`), stopping at the first error.
    pub fn psql_file(&self, db: &str, path: &Path) -> Result<String, ClusterError> {
        let mut cmd = self.psql_command(db, &self.password);
        cmd.arg("-f").arg(path);
        psql_output(cmd)
    }

    /// Creates database `name` (any name; it is quoted as an identifier).
    pub fn create_database(&self, name: &str) -> Result<(), ClusterError> {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {}", quote_ident(name)),
        )
        .map(drop)
    }

    /// Stops the server (`pg_ctl stop -m fast`) and removes the temporary directory, reporting
    /// what went wrong (the directory is removed even when stopping fails).
    pub fn stop(mut self) -> Result<(), ClusterError> {
        let stopped = self.pg_ctl_stop("fast");
        let Some(dir) = self.dir.take() else {
            return stopped;
        };
        let path = dir.path().display().to_string();
        let removed = dir
            .close()
            .map_err(|e| ClusterError::io(format!("remove {path}"), e));
        stopped.and(removed)
    }

    /// `psql` against this cluster as the superuser with `password`, without the statement.
    fn psql_command(&self, db: &str, password: &str) -> Command {
        let conninfo = format!(
            "host={HOST} port={} user={SUPERUSER} dbname={} connect_timeout=10",
            self.port,
            conninfo_quote(db)
        );
        let mut cmd = Command::new(&self.psql);
        cmd.args(["-X", "-v", "ON_ERROR_STOP=1", "-At", "-d"])
            .arg(conninfo);
        // The caller's libpq environment must not redirect or break the connection.
        for var in [
            "PGSERVICE",
            "PGSERVICEFILE",
            "PGOPTIONS",
            "PGSSLMODE",
            "PGREQUIRESSL",
            "PGPASSFILE",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("PGPASSWORD", password).stdin(Stdio::null());
        cmd
    }

    fn initdb(&self, initdb: &Path) -> Result<(), ClusterError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let pwfile = dir.path().join("pwfile");
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&pwfile)
            .and_then(|mut f| writeln!(f, "{}", self.password))
            .map_err(|e| ClusterError::io(format!("write {}", pwfile.display()), e));
        let result = written
            .and_then(|()| self.server_user.give(&pwfile))
            .and_then(|()| {
                let mut pwfile_arg = OsString::from("--pwfile=");
                pwfile_arg.push(&pwfile);
                let args: [&OsStr; 9] = [
                    "--auth=scram-sha-256".as_ref(),
                    "--username".as_ref(),
                    SUPERUSER.as_ref(),
                    &pwfile_arg,
                    "-E".as_ref(),
                    "UTF8".as_ref(),
                    "--locale=C".as_ref(),
                    "--no-sync".as_ref(),
                    "-D".as_ref(),
                ];
                let mut cmd = self.server_user.command(initdb, &args);
                cmd.arg(&self.data_dir);
                run("initdb", cmd, dir.path()).map(drop)
            });
        // The password file must not outlive initdb, whatever happened.
        let _ = fs::remove_file(&pwfile);
        result
    }

    /// Appends our settings (and the caller's) to `postgresql.conf`; copies the TLS files in.
    fn configure(&self, opts: &ClusterOptions) -> Result<(), ClusterError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let socket_dir = dir.path().to_string_lossy().into_owned();
        let mut settings: Vec<(String, String)> = [
            ("listen_addresses", HOST),
            ("unix_socket_directories", socket_dir.as_str()),
            ("fsync", "off"),
            ("max_connections", "200"),
            ("shared_buffers", "128MB"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        if let Some(ssl) = &opts.ssl {
            self.copy_private(&ssl.cert, "server.crt")?;
            self.copy_private(&ssl.key, "server.key")?;
            for (k, v) in [
                ("ssl", "on"),
                ("ssl_cert_file", "server.crt"),
                ("ssl_key_file", "server.key"),
            ] {
                settings.push((k.to_owned(), v.to_owned()));
            }
        }
        settings.extend(opts.extra_conf.iter().cloned());
        let mut text = String::from("\n# Added by portcullis::cluster\n");
        for (name, value) in &settings {
            text.push_str(&conf_line(name, value));
        }
        self.append_conf(&text)
    }

    /// Copies `from` into the data directory as `name`, mode 0600, owned by the server user
    /// (PostgreSQL refuses a key file others can read).
    fn copy_private(&self, from: &Path, name: &str) -> Result<(), ClusterError> {
        let to = self.data_dir.join(name);
        let contents =
            fs::read(from).map_err(|e| ClusterError::io(format!("read {}", from.display()), e))?;
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&to)
            .and_then(|mut f| f.write_all(&contents))
            .map_err(|e| ClusterError::io(format!("write {}", to.display()), e))?;
        self.server_user.give(&to)
    }

    fn append_conf(&self, text: &str) -> Result<(), ClusterError> {
        let conf = self.data_dir.join("postgresql.conf");
        OpenOptions::new()
            .append(true)
            .open(&conf)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| ClusterError::io(format!("append to {}", conf.display()), e))
    }

    /// `pg_ctl start`, on `port` or on up to [`START_ATTEMPTS`] free ports.
    fn start_server(&mut self, port: Option<u16>) -> Result<(), ClusterError> {
        let attempts = if port.is_some() { 1 } else { START_ATTEMPTS };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = match port {
                Some(port) => port,
                None => free_port()?,
            };
            // A later `port` line overrides an earlier one, so a retry just appends.
            self.append_conf(&conf_line("port", &port.to_string()))?;
            self.port = port;
            let args: [&OsStr; 9] = [
                "start".as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "-s".as_ref(),
                "-D".as_ref(),
                self.data_dir.as_os_str(),
                "-l".as_ref(),
                self.log_file.as_os_str(),
            ];
            let cmd = self.server_user.command(&self.pg_ctl, &args);
            let cwd = self
                .dir
                .as_ref()
                .map_or(self.data_dir.as_path(), |d| d.path());
            let failure = match run("pg_ctl start", cmd, cwd) {
                Ok(_) => return Ok(()),
                Err(ClusterError::CommandFailed { status, stderr, .. }) => {
                    format!("{status}: {stderr}")
                }
                Err(other) => return Err(other),
            };
            // A server that came up late must not hold the next attempt's data directory.
            let _ = self.pg_ctl_stop("immediate");
            if attempt >= attempts {
                return Err(ClusterError::StartFailed {
                    attempts: attempt,
                    pg_ctl: failure,
                    log: self.log_file.display().to_string(),
                    log_tail: log_tail(&self.log_file, LOG_TAIL_LINES),
                });
            }
        }
    }

    /// `pg_ctl stop -m <mode>`, when a postmaster may be running.
    fn pg_ctl_stop(&self, mode: &str) -> Result<(), ClusterError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        if !self.data_dir.join("postmaster.pid").exists() {
            return Ok(());
        }
        let args: [&OsStr; 8] = [
            "stop".as_ref(),
            "-w".as_ref(),
            "-t".as_ref(),
            "60".as_ref(),
            "-s".as_ref(),
            "-m".as_ref(),
            mode.as_ref(),
            "-D".as_ref(),
        ];
        let mut cmd = self.server_user.command(&self.pg_ctl, &args);
        cmd.arg(&self.data_dir);
        run("pg_ctl stop", cmd, dir.path()).map(drop)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.pg_ctl_stop("fast").is_err() {
            let _ = self.pg_ctl_stop("immediate");
        }
        // TempDir's own drop removes the directory, ignoring errors.
        self.dir.take();
    }
}

/// A temporary directory the server user can use: the system temp dir unless the server user
/// could not traverse it, then `/tmp`.
fn make_temp_dir(server_user: &ServerUser) -> Result<TempDir, ClusterError> {
    let mut parent = std::env::temp_dir();
    if matches!(server_user, ServerUser::Other { .. })
        && !fs::metadata(&parent).is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
    {
        parent = PathBuf::from("/tmp");
    }
    let dir = tempfile::Builder::new()
        .prefix("portcullis-pg-")
        .tempdir_in(&parent)
        .map_err(|e| {
            ClusterError::io(
                format!("create a temporary directory in {}", parent.display()),
                e,
            )
        })?;
    server_user.give(dir.path())?;
    Ok(dir)
}

/// A port that was free a moment ago (bind to port 0, read it, release it).
fn free_port() -> Result<u16, ClusterError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| ClusterError::io("find a free port on 127.0.0.1", e))
}

/// Runs `cmd` in `cwd` (the server user may not be able to enter ours) and returns its output,
/// or [`ClusterError::CommandFailed`] with its stderr.
fn run(program: &str, mut cmd: Command, cwd: &Path) -> Result<Output, ClusterError> {
    cmd.current_dir(cwd).stdin(Stdio::null());
    let out = cmd
        .output()
        .map_err(|e| ClusterError::io(format!("run {program}"), e))?;
    if out.status.success() {
        return Ok(out);
    }
    Err(ClusterError::CommandFailed {
        program: program.to_owned(),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

fn psql_output(cmd: Command) -> Result<String, ClusterError> {
    let out = run("psql", cmd, Path::new("/"))?;
    let mut stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if stdout.ends_with('\n') {
        stdout.pop();
    }
    Ok(stdout)
}

fn log_tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(could not read {}: {e})", path.display()),
    }
}

/// `name = 'value'`: PostgreSQL accepts every setting as a quoted string.
fn conf_line(name: &str, value: &str) -> String {
    format!(
        "{name} = '{}'\n",
        value.replace('\\', "\\\\").replace('\'', "''")
    )
}

fn conninfo_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// RFC 3986 percent-encoding of everything but the unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// A started cluster, or `None` (test skipped) where PostgreSQL is not installed; in CI
    /// (`$CI` set) a missing PostgreSQL fails the test instead.
    fn start_or_skip(opts: &ClusterOptions) -> Option<Cluster> {
        match Cluster::start(opts) {
            Ok(cluster) => Some(cluster),
            Err(e @ ClusterError::BinariesMissing { .. }) if std::env::var_os("CI").is_none() => {
                eprintln!("skipping: {e}");
                None
            }
            Err(e) => panic!("cluster did not start: {e}"),
        }
    }

    #[test]
    fn cluster_starts_enforces_scram_and_cleans_up() {
        let Some(cluster) = start_or_skip(&ClusterOptions::new("s3cret 'pw'")) else {
            return;
        };
        assert_eq!(cluster.psql("postgres", "SELECT 1").unwrap(), "1");
        assert_eq!(
            cluster
                .psql("postgres", "SHOW password_encryption")
                .unwrap(),
            "scram-sha-256"
        );
        assert_eq!(
            cluster.psql("postgres", "SHOW max_connections").unwrap(),
            "200"
        );

        let mut wrong = cluster.psql_command("postgres", "not-the-password");
        wrong.args(["-c", "SELECT 1"]);
        match psql_output(wrong) {
            Err(ClusterError::CommandFailed { stderr, .. }) => {
                assert!(
                    stderr.contains("password authentication failed"),
                    "{stderr}"
                )
            }
            other => panic!("a wrong password must be refused, got {other:?}"),
        }

        cluster.create_database("qs \"probe\"").unwrap();
        let found = cluster
            .psql(
                "postgres",
                "SELECT count(*) FROM pg_database WHERE datname = 'qs \"probe\"'",
            )
            .unwrap();
        assert_eq!(found, "1");
        assert_eq!(
            cluster
                .psql("qs \"probe\"", "SELECT current_database()")
                .unwrap(),
            "qs \"probe\""
        );
        assert!(
            cluster
                .psql("postgres", "SELECT * FROM no_such_table")
                .is_err()
        );

        let data_dir = cluster.data_dir().to_path_buf();
        assert!(data_dir.join("PG_VERSION").exists());
        assert!(!data_dir.parent().unwrap().join("pwfile").exists());
        cluster.stop().unwrap();
        assert!(!data_dir.exists());
    }

    #[test]
    fn cluster_with_ssl() {
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
                .unwrap();
        let pem_dir = TempDir::new().unwrap();
        let cert = pem_dir.path().join("cert.pem");
        let key = pem_dir.path().join("key.pem");
        fs::write(&cert, certified.cert.pem()).unwrap();
        fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
        let opts = ClusterOptions {
            ssl: Some(SslFiles { cert, key }),
            ..ClusterOptions::new("tls-pw")
        };
        let Some(cluster) = start_or_skip(&opts) else {
            return;
        };

        let mut cmd = Command::new(&cluster.psql);
        cmd.args(["-X", "-At", "-c", "SHOW ssl", "-d"])
            .arg(format!(
                "sslmode=require host=127.0.0.1 port={} user=postgres dbname=postgres",
                cluster.port()
            ))
            .env("PGPASSWORD", cluster.password());
        assert_eq!(psql_output(cmd).unwrap(), "on");
        // Dropping stops the server and removes the directory.
        let data_dir = cluster.data_dir().to_path_buf();
        drop(cluster);
        assert!(!data_dir.exists());
    }

    #[test]
    fn start_failure_carries_the_server_log() {
        let opts = ClusterOptions {
            port: Some(free_port().unwrap()),
            extra_conf: vec![("shared_buffers".into(), "lots".into())],
            ..ClusterOptions::new("pw")
        };
        if find_pg_bindir().is_err() && std::env::var_os("CI").is_none() {
            return;
        }
        match Cluster::start(&opts) {
            Err(ClusterError::StartFailed {
                attempts, log_tail, ..
            }) => {
                assert_eq!(attempts, 1);
                assert!(log_tail.contains("shared_buffers"), "{log_tail}");
            }
            other => panic!("a bad setting must fail the start, got {other:?}"),
        }
    }

    #[test]
    fn privilege_drop_runs_as_the_server_user() {
        let Ok(ServerUser::Other { uid, gid, .. }) = ServerUser::detect() else {
            return;
        };
        let id = which("id").unwrap();
        for drop in [
            which("runuser").map(PrivilegeDrop::Runuser),
            which("su").map(PrivilegeDrop::Su),
        ]
        .into_iter()
        .flatten()
        {
            let user = ServerUser::Other { uid, gid, drop };
            let cmd = user.command(&id, &["-un".as_ref()]);
            let out = run("id", cmd, Path::new("/")).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                SERVER_OS_USER,
                "{user:?}"
            );
        }
    }

    #[test]
    fn url_percent_encodes() {
        let text = percent_encode("a b@c:d/é");
        assert_eq!(text, "a%20b%40c%3Ad%2F%C3%A9");
    }

    #[test]
    fn options_are_validated_and_redacted() {
        assert!(ClusterOptions::new("").validate().is_err());
        assert!(ClusterOptions::new("a\nb").validate().is_err());
        let bad = ClusterOptions {
            extra_conf: vec![("x = 1 #".into(), "y".into())],
            ..ClusterOptions::new("pw")
        };
        assert!(bad.validate().is_err());
        assert!(!format!("{:?}", ClusterOptions::new("hunter2")).contains("hunter2"));
        assert_eq!(conf_line("a", "it's"), "a = 'it''s'\n");
    }

    #[test]
    fn missing_binaries_say_how_to_install() {
        let text = ClusterError::missing("initdb", "/nowhere").to_string();
        assert!(text.contains("initdb") && text.contains("apt-get install postgresql"));
        assert!(text.contains("brew install postgresql") && text.contains("$PORTCULLIS_PG_BIN"));
    }
}
