//! The `portcullis` command.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use portcullis::auth::store::{NewUser, add_user, read_password};
use portcullis::config::Config;
use portcullis::demo::{DEMO_USERS, DemoOptions, default_example_dir};
use portcullis::server::Server;

mod policy_cli;

/// mimalloc instead of the system allocator: statement parsing, rewriting and audit
/// events allocate many small objects per statement, and glibc's malloc spent about a
/// quarter of the policy engine's time on a cache miss (`perf`, `cargo bench -p
/// portcullis-policy`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Portcullis: a transparent, TLS-terminating security proxy for PostgreSQL.
///
/// Applications point their connection string at Portcullis instead of the database.
/// It authenticates them itself (SCRAM-SHA-256, with channel binding over TLS), parses
/// every statement, applies the statement policy, and relays the rest untouched.
#[derive(Parser)]
#[command(name = "portcullis", version, propagate_version = true)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, env = "PORTCULLIS_LOG_FORMAT")]
    log_format: LogFormat,
    /// Worker threads of the async runtime (default: one per CPU). With 1, everything
    /// runs on a single thread (like pgbouncer), which saves the cross-thread wake-ups
    /// of a work-stealing scheduler on small machines.
    #[arg(long, global = true, env = "PORTCULLIS_THREADS")]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with a configuration file.
    ///
    /// SIGHUP reloads the TLS certificate, the user store and the policy (each keeps
    /// its previous version if the new one is invalid); SIGTERM or Ctrl-C stops
    /// accepting clients and lets running statements finish for
    /// `limits.shutdown_grace_secs`.
    Serve {
        /// Path to portcullis.toml.
        #[arg(short, long, env = "PORTCULLIS_CONFIG")]
        config: PathBuf,
    },
    /// Validate a configuration file (and the files it names) and exit.
    ///
    /// Exits non-zero with the file and line of the first problem.
    CheckConfig {
        /// Path to portcullis.toml.
        #[arg(short, long, env = "PORTCULLIS_CONFIG")]
        config: PathBuf,
    },
    /// Manage the proxy's own user store.
    #[command(subcommand)]
    User(UserCommand),
    /// Work with audit trails.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Policies as code: check a policy directory, run its fixtures, explain a decision.
    #[command(subcommand)]
    Policy(policy_cli::PolicyCommand),
    /// Start a throwaway PostgreSQL with the quickstart data behind a proxy.
    ///
    /// Needs the PostgreSQL server binaries (initdb, pg_ctl, postgres, psql). Prints a
    /// ready connection URL for each demo user; Ctrl-C stops everything and removes the
    /// temporary files.
    Demo {
        /// Port for the proxy on 127.0.0.1.
        #[arg(long, default_value_t = 6432)]
        port: u16,
        /// Port for the Prometheus endpoint on 127.0.0.1 (0 picks a free one).
        #[arg(long, default_value_t = 9187)]
        metrics_port: u16,
        /// Directory of the example policy set (default: examples/quickstart).
        #[arg(long)]
        example: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain of JSON-lines audit files, oldest first.
    ///
    /// Reports the first modified, missing, reordered or duplicated event precisely
    /// (file line and event id) and exits non-zero if the trail is not intact.
    Verify {
        /// Audit files (rotated files first, the current one last).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Environment variable holding the HMAC key, for trails sealed with one.
        #[arg(long, conflicts_with = "key_file")]
        key_env: Option<String>,
        /// File holding the HMAC key (as `[audit] hmac_key_file`: owner-only, trailing
        /// newline ignored), for trails sealed with one.
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user (or replace one with --replace). The password is asked for twice on a
    /// terminal, or read as one line from standard input; only a SCRAM-SHA-256
    /// verifier is stored.
    Add {
        /// User name clients will log in with.
        name: String,
        /// The user store file (created if missing).
        #[arg(short, long, env = "PORTCULLIS_USERS")]
        file: PathBuf,
        /// Role for the policy; repeatable.
        #[arg(short, long = "role")]
        roles: Vec<String>,
        /// Attribute for the policy as KEY=VALUE (tenant=1); repeatable.
        #[arg(short, long = "attr", value_parser = parse_attr)]
        attrs: Vec<(String, String)>,
        /// When the account stops working, RFC 3339 (2027-01-31T00:00:00Z).
        #[arg(long)]
        expires: Option<String>,
        /// Upstream role the user's sessions log in as.
        #[arg(long)]
        upstream_user: Option<String>,
        /// Replace an existing user of the same name.
        #[arg(long)]
        replace: bool,
    },
}

fn parse_attr(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or("expected KEY=VALUE")?;
    Ok((k.to_owned(), v.to_owned()))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let mut builder = match cli.threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(threads) if threads > 1 => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads);
            builder
        }
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { config } => serve(config).await,
        Command::CheckConfig { config } => check_config(&config),
        Command::User(UserCommand::Add {
            name,
            file,
            roles,
            attrs,
            expires,
            upstream_user,
            replace,
        }) => {
            let expires_at = expires
                .map(|e| {
                    time::OffsetDateTime::parse(&e, &time::format_description::well_known::Rfc3339)
                })
                .transpose()
                .context("--expires must be RFC 3339, e.g. 2027-01-31T00:00:00Z")?;
            let attributes: BTreeMap<String, String> = attrs.into_iter().collect();
            let password = read_password(std::io::IsTerminal::is_terminal(&std::io::stdin()))
                .context("reading the password")?;
            let user = NewUser {
                name: &name,
                roles: &roles,
                attributes: &attributes,
                expires_at,
                upstream_user: upstream_user.as_deref(),
            };
            add_user(&file, &user, &password, replace)?;
            println!("user {name} written to {}", file.display());
            Ok(())
        }
        Command::Audit(AuditCommand::Verify {
            files,
            key_env,
            key_file,
        }) => audit_verify(&files, key_env.as_deref(), key_file.as_deref()),
        Command::Policy(command) => policy_cli::run(command).await,
        Command::Demo {
            port,
            metrics_port,
            example,
        } => demo(port, metrics_port, example).await,
    }
}

async fn serve(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let server = Server::bind(config, Some(path)).await?;
    tracing::info!(address = %server.local_addr()?, "portcullis listening");
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    server.run(shutdown).await;
    Ok(())
}

fn check_config(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    portcullis::auth::store::UserStore::load(&config.auth.users_file)?;
    portcullis::policy_source::load(&config.policy)
        .map_err(|e| anyhow::anyhow!("{}: policy: {e}", path.display()))?;
    if let Some(tls) = config.tls.clone() {
        portcullis::tls::ReloadableTls::new(tls)?;
    }
    portcullis::upstream::Connector::new(&config.upstream)?;
    println!("{}: ok", path.display());
    Ok(())
}

fn audit_verify(
    files: &[PathBuf],
    key_env: Option<&str>,
    key_file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let key = match (key_env, key_file) {
        (Some(var), _) => Some(zeroize::Zeroizing::new(
            std::env::var(var)
                .with_context(|| format!("environment variable {var} is not set"))?
                .into_bytes(),
        )),
        (None, Some(path)) => Some(portcullis_audit::pipeline::read_key_file(path)?),
        (None, None) => None,
    };
    let mut readers = Vec::with_capacity(files.len());
    for file in files {
        let f = std::fs::File::open(file).with_context(|| format!("{}", file.display()))?;
        readers.push(std::io::BufReader::new(f));
    }
    let report = portcullis_audit::verify::verify(readers, key.as_ref().map(|k| k.as_slice()));
    println!("{report}");
    if report.is_ok() {
        Ok(())
    } else {
        bail!("the audit trail is not intact")
    }
}

async fn stop_on_signal(token: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            token.cancel();
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutdown requested");
    token.cancel();
}

async fn demo(port: u16, metrics_port: u16, example: Option<PathBuf>) -> anyhow::Result<()> {
    let example_dir = example.unwrap_or_else(default_example_dir);
    if !example_dir.is_dir() {
        bail!("example directory {} not found", example_dir.display());
    }
    println!(
        "Starting a throwaway PostgreSQL and loading {} ...",
        example_dir.display()
    );
    let demo = portcullis::demo::start(DemoOptions {
        port,
        metrics_port,
        example_dir,
    })
    .await?;
    println!();
    println!(
        "Portcullis demo is running: proxy on {} (TLS with a self-signed certificate,",
        demo.proxy_addr
    );
    println!("{}).", demo.cert_path.display());
    println!();
    println!("Connect through the proxy as a demo user, e.g. psql \"<url>\":");
    for (user, password, what) in DEMO_USERS {
        println!("  # {user}: {what}");
        println!("{}", demo.proxy_url(user, password));
    }
    println!();
    println!("Directly to the throwaway PostgreSQL (bypasses the proxy, for comparison):");
    println!("{}", demo.direct_url());
    println!();
    println!("Audit trail as OCSF JSON lines (for a SIEM):");
    println!("{}", demo.audit_path.display());
    println!("and as hash-chained JSON lines (check with `portcullis audit verify <file>`):");
    println!("{}", demo.chain_path.display());
    if let Some(m) = demo.metrics_addr {
        println!();
        println!("Prometheus metrics: http://{m}/metrics");
    }
    println!();
    println!("Press Ctrl-C to stop; everything is removed on exit.");
    let token = CancellationToken::new();
    stop_on_signal(token.clone()).await;
    println!("Stopping ...");
    demo.shutdown().await;
    println!("Stopped; temporary files removed.");
    Ok(())
}
