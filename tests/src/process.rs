//! The `portcullis` binary as a separate process: for tests that need what only a real
//! process gives (a SIGTERM, a restart that keeps nothing in memory).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The `portcullis` binary of this build profile. Cargo builds another package's
/// binaries only for its own tests, so it is built here (a no-op when up to date).
/// Blocks: call it from `spawn_blocking` in async code.
///
/// `portcullis-tests` is selected too so that dependency features are unified as in
/// the test build: built alone, `portcullis` resolves some shared dependencies with
/// fewer features, and each of the two builds would recompile the workspace crates
/// the other just compiled.
pub fn portcullis_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // target/<profile>/deps/<test>-<hash>
        let exe = std::env::current_exe().expect("the test's own path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>/deps")
            .to_path_buf();
        let target_dir = profile_dir.parent().expect("target directory");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "-q", "-p", "portcullis", "-p", "portcullis-tests"])
            .args(["--bin", "portcullis"])
            .arg("--target-dir")
            .arg(target_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        // What cargo set for this test (CARGO_MANIFEST_DIR, CARGO_PKG_NAME, ...) must not
        // reach the build: build scripts that watch such variables (ring's does) would
        // rerun, and everything above them would be recompiled, twice per test run.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            let set_for_crate = [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
            ]
            .iter()
            .any(|p| name.starts_with(p))
                || [
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "CARGO_RUSTC_CURRENT_DIR",
                ]
                .contains(&name.as_ref());
            if set_for_crate {
                build.env_remove(name.as_ref());
            }
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "building the portcullis binary failed");
        let bin = profile_dir.join("portcullis");
        assert!(bin.is_file(), "{} missing", bin.display());
        bin
    })
}

/// `portcullis serve --config <file>` running as a child process, with its output
/// appended to a log file. Killed (SIGKILL) on drop if still running.
pub struct ProxyProcess {
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    addr: SocketAddr,
}

impl ProxyProcess {
    /// A proxy for `config`, whose `[listen] address` must be `addr` (a fixed port, so
    /// that a restart listens where clients expect it); logs go to `log`. Not started.
    pub fn new(config: &Path, addr: SocketAddr, log: &Path) -> ProxyProcess {
        ProxyProcess {
            child: None,
            config: config.to_path_buf(),
            log: log.to_path_buf(),
            addr,
        }
    }

    /// The client address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts the binary and waits (up to 30 s) until it accepts connections.
    pub async fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("the proxy is already running");
        }
        let bin = tokio::task::spawn_blocking(portcullis_bin).await?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(bin)
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .env_remove("PORTCULLIS_CONFIG")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start portcullis")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok())
                .flatten()
            {
                self.child = None;
                bail!("portcullis exited with {status}:\n{}", self.log_text());
            }
            if Instant::now() > deadline {
                bail!(
                    "portcullis did not listen on {} within 30 s:\n{}",
                    self.addr,
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM and waits up to `limit` for the process to exit; its exit status.
    pub async fn terminate(&mut self, limit: Duration) -> Result<ExitStatus> {
        let Some(child) = self.child.as_mut() else {
            bail!("the proxy is not running");
        };
        let pid = child.id().to_string();
        let sent = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await?;
        if !sent.success() {
            bail!("kill -TERM {pid} failed");
        }
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "portcullis did not exit within {limit:?} of SIGTERM:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything the process (all its runs) logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Writes to `out` the configuration of `env` (the harness's generated file) with the
/// client listener on `listen` instead of a port picked at bind time, and `extra`
/// (whole TOML tables, e.g. `[audit]`) appended.
pub fn write_config(
    env: &crate::TestEnv,
    listen: SocketAddr,
    extra: &str,
    out: &Path,
) -> Result<()> {
    let text = std::fs::read_to_string(&env.config_path)?;
    let any_port = "[listen]\naddress = \"127.0.0.1:0\"";
    if !text.contains(any_port) {
        bail!("the harness's configuration has no `{any_port}`");
    }
    let text = text.replacen(any_port, &format!("[listen]\naddress = \"{listen}\""), 1);
    std::fs::write(out, format!("{text}\n{extra}\n"))?;
    Ok(())
}
