//! `portcullis policy check | test | explain`: policies as code.
//!
//! - `check DIR [--config FILE]` validates a policy directory completely: the
//!   directory itself (`Governance::load`), the `[policy]` section of the
//!   configuration (default `DIR/portcullis.toml` when it exists) with `DIR` as its
//!   policy directory, the roles of the users file (a warning for a role the policy
//!   does not know), and, when the upstream answers, the directory against its catalog
//!   (`Governance::check_against`). Every problem is printed as `file:line: message`;
//!   any problem makes it exit non-zero. An unreachable upstream only skips the
//!   catalog checks, and says so.
//! - `test DIR [--config FILE]` runs the fixture cases of `DIR/tests/*.toml` against
//!   the upstream's catalog, deciding each with [`Engine::decide`] for the identity
//!   the proxy would build.
//! - `explain --user U [--config FILE | DIR] SQL` prints one decision, the policy
//!   version and the forwarded text.
//!
//! # Fixture format
//!
//! ```toml
//! [[case]]
//! name = "analyst sees e-mail domains only"   # unique within the file
//! user = "analyst"          # a user of the config's users file: its roles and attributes
//! # instead of user (or to override its roles):  roles = ["support"]
//! attributes = { tenant = "1" }                # optional, added to the user's
//! sql = "SELECT email FROM customers WHERE id = 1"
//! expect = "rewritten"      # allowed | rewritten | denied
//! forwarded = "..."         # optional: the exact SQL forwarded
//! contains = ["strpos("]    # optional: substrings of the forwarded SQL
//! sqlstate = "42501"        # optional, denied only
//! message_contains = "..."  # optional, denied only
//! rows = [["***@example.com"]]  # optional: rows of the forwarded SQL, text format
//! ```
//!
//! The identity is built as the proxy builds it at login: the user's roles and
//! attributes from the users file, plus the built-in `database` (the catalog's
//! database), `hour` and `weekday` (now, UTC); `attributes` of the case override
//! any of them (`client_addr`, `application_name` and `cert_subject` are unset
//! unless the case sets them). `allowed` means forwarded as analysed, `rewritten`
//! forwarded after a rewrite (masks, row filters, write checks), `denied` refused.
//!
//! `rows` runs the forwarded SQL on the upstream as the user's upstream role (the
//! `upstream_user` of the users file, else `[upstream] user`) on the catalog's
//! database, inside `BEGIN` ... `ROLLBACK` so fixtures never change data, and compares
//! every row of every result set, in order, in text format; `"\\N"` stands for NULL.
//! Like the proxy, `test` installs the support functions (`portcullis.row_check`)
//! when a case has `rows` and `[catalog] install_support` allows it.

pub mod fixture;
mod rows;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Subcommand;

use portcullis::auth::store::UserStore;
use portcullis::catalog::CatalogLoader;
use portcullis::config::Config;
use portcullis::upstream::Connector;
use portcullis_policy::governance::{Governance, LoadError, POLICY_FILE};
use portcullis_policy::{Catalog, Decision, Engine, Identity, Policy, PolicyConfig};

use fixture::{Case, Expect};
use rows::{Outcome, Runner};

/// `portcullis policy ...`.
#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy directory completely and exit non-zero on any problem.
    ///
    /// Loads the directory (model.conf, policy.csv, classification.toml, rules.toml,
    /// templates naming unknown attributes), the [policy] section of the configuration
    /// with DIR as its policy directory, and warns about roles in the users file that
    /// the policy does not know. When the configuration's upstream answers, it also
    /// checks the directory against the database's catalog (unknown tables and columns,
    /// masks on columns of the wrong type); an unreachable upstream skips those checks
    /// without failing. Problems are printed as `file:line: message`.
    Check {
        /// The policy directory.
        dir: PathBuf,
        /// The configuration (default: DIR/portcullis.toml, if it exists).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Run the fixture cases of DIR/tests/*.toml and exit non-zero on any failure.
    ///
    /// Each `[[case]]` names a user of the users file (or `roles` and `attributes`), a
    /// statement and the expected decision (allowed, rewritten or denied), optionally
    /// the exact forwarded SQL (`forwarded`), substrings of it (`contains`), the
    /// denial's `sqlstate` and `message_contains`, and the `rows` the forwarded SQL
    /// returns on the upstream (run in a rolled-back transaction; "\\N" is NULL).
    /// Needs the configuration's upstream for the catalog. See the README.
    Test {
        /// The policy directory; fixtures are read from DIR/tests/*.toml.
        dir: PathBuf,
        /// The configuration (default: DIR/portcullis.toml, if it exists).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Show what the proxy would do with one statement for one user.
    ///
    /// Prints the decision (allowed, rewritten or denied, with SQLSTATE, message and
    /// rule), the policy version and the SQL that would be forwarded. Needs the
    /// configuration's upstream for the catalog.
    #[command(override_usage = "portcullis policy explain --user USER [--config FILE] [DIR] SQL")]
    Explain {
        /// A user of the configuration's users file.
        #[arg(short, long)]
        user: String,
        /// Roles instead of the user's; repeatable.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Extra attribute KEY=VALUE, overriding the user's; repeatable.
        #[arg(long = "attr", value_parser = parse_attr)]
        attrs: Vec<(String, String)>,
        /// The configuration (default: DIR/portcullis.toml; without DIR, required).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// [DIR] SQL: the policy directory (default: the configuration's [policy] dir)
        /// and the statement text.
        #[arg(num_args = 1..=2, required = true, value_name = "[DIR] SQL")]
        args: Vec<String>,
    },
}

fn parse_attr(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or("expected KEY=VALUE")?;
    Ok((k.to_owned(), v.to_owned()))
}

/// Runs one `policy` command; an error is the process's failure.
pub async fn run(command: PolicyCommand) -> anyhow::Result<()> {
    portcullis::tls::install_crypto_provider();
    match command {
        PolicyCommand::Check { dir, config } => check(&dir, config).await,
        PolicyCommand::Test { dir, config } => test(&dir, config).await,
        PolicyCommand::Explain {
            user,
            roles,
            attrs,
            config,
            args,
        } => {
            let (dir, sql) = match args.as_slice() {
                [sql] => (None, sql.as_str()),
                [dir, sql] => (Some(PathBuf::from(dir)), sql.as_str()),
                _ => bail!("expected [DIR] SQL"),
            };
            let request = Request {
                user,
                roles,
                attributes: attrs.into_iter().collect(),
            };
            explain(dir.as_deref(), config, &request, sql).await
        }
    }
}

/// The configuration file to use: `--config`, else `DIR/portcullis.toml` if it exists.
fn config_path(dir: Option<&Path>, config: Option<PathBuf>) -> Option<PathBuf> {
    config.or_else(|| {
        dir.map(|d| d.join("portcullis.toml"))
            .filter(|p| p.is_file())
    })
}

/// The `[policy]` section with `dir` as its policy directory.
fn policy_config(config: Option<&Config>, dir: &Path) -> PolicyConfig {
    let mut policy = config.map(|c| c.policy.clone()).unwrap_or_default();
    if let Some(configured) = &policy.dir
        && !same_dir(configured, dir)
    {
        eprintln!(
            "note: using {} instead of the configuration's [policy] dir {}",
            dir.display(),
            configured.display()
        );
    }
    policy.dir = Some(dir.to_path_buf());
    policy
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The upstream's catalog, its connector and database.
struct Upstream {
    catalog: Arc<Catalog>,
    connector: Arc<Connector>,
    database: String,
}

async fn load_catalog(config: &Config, install_support: bool) -> anyhow::Result<Upstream> {
    let connector = Arc::new(Connector::new(&config.upstream)?);
    let loader = CatalogLoader::new(Arc::clone(&connector), &config.upstream, &config.catalog);
    // The error's own text already holds its sources; a flat message keeps `{:#}`
    // from repeating them.
    let loaded = loader.load(install_support).await.map_err(|e| {
        anyhow::anyhow!(
            "loading the catalog of database {} on {}:{}: {e}",
            loader.database(),
            config.upstream.host,
            config.upstream.port
        )
    })?;
    Ok(Upstream {
        catalog: Arc::new(loaded.catalog),
        connector,
        database: loader.database().to_owned(),
    })
}

/// The principals `policy.csv` names (`p` subjects, both sides of `g` lines).
fn csv_principals(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        match fields.as_slice() {
            ["p", sub, ..] => {
                names.insert((*sub).to_owned());
            }
            ["g", a, b, ..] => {
                names.insert((*a).to_owned());
                names.insert((*b).to_owned());
            }
            _ => {}
        }
    }
    names
}

/// The line of user `name`'s `roles` in a users file (else its `name` line, else 1).
fn user_line(text: &str, name: &str) -> usize {
    let quoted = format!("{name:?}");
    let lines: Vec<&str> = text.lines().collect();
    let Some(at) = lines.iter().position(|l| {
        let l = l.trim_start();
        l.starts_with("name") && l.contains(&quoted)
    }) else {
        return 1;
    };
    lines
        .iter()
        .enumerate()
        .skip(at + 1)
        .take_while(|(_, l)| !l.trim_start().starts_with("[[user]]"))
        .find(|(_, l)| l.trim_start().starts_with("roles"))
        .map_or(at + 1, |(i, _)| i + 1)
}

fn print_problem(problem: &LoadError) {
    match problem.line {
        Some(line) => println!("{}:{line}: {}", problem.path.display(), problem.message),
        None => println!("{}: {}", problem.path.display(), problem.message),
    }
}

async fn check(dir: &Path, config: Option<PathBuf>) -> anyhow::Result<()> {
    let mut problems = 0usize;
    let mut warnings = 0usize;

    let governance = match Governance::load(dir) {
        Ok(g) => Some(g),
        Err(e) => {
            print_problem(&e);
            problems += 1;
            None
        }
    };

    let config_path = config_path(Some(dir), config);
    let config = match &config_path {
        None => {
            eprintln!(
                "note: no configuration ({} does not exist and --config was not given): \
                 [policy], users and catalog checks skipped",
                dir.join("portcullis.toml").display()
            );
            None
        }
        Some(path) => match Config::load(path) {
            Ok(c) => Some(c),
            Err(e) => {
                println!("{e}");
                problems += 1;
                None
            }
        },
    };

    // The [policy] section; its directory is the one checked above.
    let mut policy = policy_config(config.as_ref(), dir);
    policy.dir = None;
    if let Err(e) = Policy::compile(&policy) {
        let path = config_path.as_deref().unwrap_or(dir);
        println!("{}: [policy]: {e}", path.display());
        problems += 1;
    }

    if let Some(config) = &config {
        warnings += check_users(config, dir, &policy, &mut problems);
    }

    let mut catalog_note = "catalog checks skipped: no configuration".to_owned();
    if let (Some(config), Some(governance)) = (&config, &governance) {
        match load_catalog(config, false).await {
            Ok(upstream) => {
                let found = governance.check_against(&upstream.catalog);
                for problem in &found {
                    print_problem(problem);
                }
                problems += found.len();
                catalog_note = format!(
                    "checked against the catalog of {} ({} relations)",
                    upstream.database,
                    upstream.catalog.len()
                );
            }
            Err(e) => {
                catalog_note = format!("catalog checks skipped: {e:#}");
                eprintln!("{catalog_note}");
            }
        }
    } else if config.is_some() {
        catalog_note = "catalog checks skipped: the directory did not load".to_owned();
    }

    let summary = format!(
        "{}: {problems} problem{}, {warnings} warning{}; {catalog_note}",
        dir.display(),
        plural(problems),
        plural(warnings)
    );
    if problems > 0 {
        println!("{summary}");
        bail!("policy check found {problems} problem{}", plural(problems));
    }
    println!("{summary}");
    Ok(())
}

/// Warns about users' roles the policy does not know; a users file that does not load
/// is a problem. Returns the number of warnings.
fn check_users(config: &Config, dir: &Path, policy: &PolicyConfig, problems: &mut usize) -> usize {
    let path = &config.auth.users_file;
    let store = match UserStore::load(path) {
        Ok(store) => store,
        Err(e) => {
            println!("{e}");
            *problems += 1;
            return 0;
        }
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let principals = std::fs::read_to_string(dir.join(POLICY_FILE))
        .map(|t| csv_principals(&t))
        .unwrap_or_default();
    let mut warnings = 0;
    for user in store.iter() {
        let line = user_line(&text, &user.name);
        if user.roles.is_empty() {
            println!(
                "{}:{line}: warning: user {} has no role, so every statement is refused",
                path.display(),
                user.name
            );
            warnings += 1;
        }
        for role in &user.roles {
            if !policy.roles.contains_key(role) {
                println!(
                    "{}:{line}: warning: user {} has role {role}, which [policy.roles] does not define (it grants no statement class)",
                    path.display(),
                    user.name
                );
                warnings += 1;
            } else if !principals.contains(role) {
                println!(
                    "{}:{line}: warning: user {} has role {role}, which no line of {POLICY_FILE} names (it grants no table)",
                    path.display(),
                    user.name
                );
                warnings += 1;
            }
        }
    }
    warnings
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Who a decision is for, before the users file is consulted.
struct Request {
    user: String,
    roles: Vec<String>,
    attributes: BTreeMap<String, String>,
}

/// The identity the proxy would build at login, and the upstream role its sessions
/// use. Refuses a user missing from the users file unless roles are given.
fn identity(
    store: &UserStore,
    request: &Request,
    database: &str,
) -> Result<(Identity, Option<String>), String> {
    let record = store.get(&request.user);
    if record.is_none() && request.roles.is_empty() {
        return Err(format!(
            "user {} is not in the users file (give roles instead)",
            request.user
        ));
    }
    let mut attributes = record.map(|r| r.attributes.clone()).unwrap_or_default();
    attributes.insert("database".into(), database.to_owned());
    let now = time::OffsetDateTime::now_utc();
    attributes.insert("hour".into(), now.hour().to_string());
    attributes.insert(
        "weekday".into(),
        now.weekday().number_from_monday().to_string(),
    );
    attributes.extend(request.attributes.clone());
    let roles = if request.roles.is_empty() {
        record.map(|r| r.roles.clone()).unwrap_or_default()
    } else {
        request.roles.clone()
    };
    Ok((
        Identity {
            user: request.user.clone(),
            roles,
            attributes,
        },
        record.and_then(|r| r.upstream_user.clone()),
    ))
}

/// What a decision was, as fixtures name it.
fn kind_of(decision: &Decision) -> Expect {
    match decision {
        Decision::Allow {
            rewritten: true, ..
        } => Expect::Rewritten,
        Decision::Allow { .. } => Expect::Allowed,
        Decision::Deny(_) => Expect::Denied,
    }
}

/// Configuration, policy and users for `test` and `explain`.
struct Loaded {
    config: Config,
    policy: Policy,
    store: UserStore,
}

fn load_all(dir: Option<&Path>, config: Option<PathBuf>) -> anyhow::Result<Loaded> {
    let Some(path) = config_path(dir, config) else {
        bail!(
            "no configuration: give --config FILE (or put portcullis.toml in the policy directory)"
        );
    };
    let config = Config::load(&path)?;
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => config
            .policy
            .dir
            .clone()
            .with_context(|| format!("{}: [policy] has no dir; give DIR", path.display()))?,
    };
    let policy_config = policy_config(Some(&config), &dir);
    let policy = Policy::load(&policy_config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let store = UserStore::load(&config.auth.users_file)?;
    Ok(Loaded {
        config,
        policy,
        store,
    })
}

async fn explain(
    dir: Option<&Path>,
    config: Option<PathBuf>,
    request: &Request,
    sql: &str,
) -> anyhow::Result<()> {
    let loaded = load_all(dir, config)?;
    let upstream = load_catalog(&loaded.config, false)
        .await
        .context("explain needs the upstream's catalog")?;
    let (identity, _) =
        identity(&loaded.store, request, &upstream.database).map_err(anyhow::Error::msg)?;
    let engine = Engine::with_limits(
        loaded.config.policy.cache_entries,
        loaded.config.policy.cache_max_bytes,
    );
    let decision = engine.decide(&loaded.policy, &upstream.catalog, &identity, sql);
    println!(
        "user:      {} (roles: {})",
        identity.user,
        identity.roles.join(", ")
    );
    println!("decision:  {}", kind_of(&decision));
    match &decision {
        Decision::Allow {
            sql, passthrough, ..
        } => {
            if *passthrough {
                println!("note:      not parsed; forwarded verbatim (unparsed_passthrough)");
            }
            println!("policy:    {}", loaded.policy.version());
            println!("forwarded: {sql}");
        }
        Decision::Deny(denial) => {
            println!("sqlstate:  {}", denial.sqlstate);
            println!("message:   {}", denial.message);
            println!("rule:      {}", denial.rule);
            println!("policy:    {}", loaded.policy.version());
        }
    }
    Ok(())
}

async fn test(dir: &Path, config: Option<PathBuf>) -> anyhow::Result<()> {
    let cases = fixture::load_dir(&dir.join("tests")).map_err(anyhow::Error::msg)?;
    let loaded = load_all(Some(dir), config)?;
    let wants_rows = cases.iter().any(|c| c.rows.is_some());
    let upstream = load_catalog(&loaded.config, wants_rows)
        .await
        .context("policy test needs the upstream's catalog")?;
    let engine = Engine::with_limits(
        loaded.config.policy.cache_entries,
        loaded.config.policy.cache_max_bytes,
    );
    let default_user = loaded.config.upstream.user.clone();
    let mut runners: HashMap<String, Runner> = HashMap::new();
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let (mut passed, mut failed) = (0usize, 0usize);
    for (i, case) in cases.iter().enumerate() {
        let why = run_case(
            case,
            &loaded,
            &upstream,
            &engine,
            &default_user,
            &mut runners,
        )
        .await;
        if why.is_empty() {
            passed += 1;
            println!("ok      {} ({})", case.name, case.location());
        } else {
            failed += 1;
            println!(
                "FAILED  {} ({}): {}",
                case.name,
                case.location(),
                why.join("; ")
            );
        }
        if last_progress.elapsed().as_secs() >= 5 {
            last_progress = Instant::now();
            eprintln!("progress: {}/{} cases", i + 1, cases.len());
        }
    }
    for (_, runner) in runners.drain() {
        runner.close().await;
    }
    println!(
        "{passed} passed, {failed} failed ({} cases in {:.1}s; policy {})",
        cases.len(),
        started.elapsed().as_secs_f64(),
        loaded.policy.version()
    );
    if failed > 0 {
        bail!("{failed} fixture case{} failed", plural(failed));
    }
    Ok(())
}

/// Runs one case; returns why it failed (empty when it passed).
async fn run_case(
    case: &Case,
    loaded: &Loaded,
    upstream: &Upstream,
    engine: &Engine,
    default_user: &str,
    runners: &mut HashMap<String, Runner>,
) -> Vec<String> {
    let request = Request {
        user: case.user.clone().unwrap_or_else(|| "fixture".to_owned()),
        roles: case.roles.clone().unwrap_or_default(),
        attributes: case.attributes.clone(),
    };
    let (identity, upstream_user) = match identity(&loaded.store, &request, &upstream.database) {
        Ok(found) => found,
        Err(e) => return vec![e],
    };
    let decision = engine.decide(&loaded.policy, &upstream.catalog, &identity, &case.sql);
    let mut why = Vec::new();
    let got = kind_of(&decision);
    if got != case.expect {
        why.push(match &decision {
            Decision::Deny(denial) => format!(
                "expected {}, got denied: {} ({})",
                case.expect, denial.message, denial.sqlstate
            ),
            Decision::Allow { sql, .. } => {
                format!("expected {}, got {got}: {sql}", case.expect)
            }
        });
        return why;
    }
    match &decision {
        Decision::Deny(denial) => {
            if let Some(code) = &case.sqlstate
                && code != denial.sqlstate
            {
                why.push(format!(
                    "expected SQLSTATE {code}, got {} ({})",
                    denial.sqlstate, denial.message
                ));
            }
            if let Some(part) = &case.message_contains
                && !denial.message.contains(part.as_str())
            {
                why.push(format!(
                    "message {:?} does not contain {part:?}",
                    denial.message
                ));
            }
        }
        Decision::Allow { sql, .. } => {
            if let Some(expected) = &case.forwarded
                && **sql != **expected
            {
                why.push(format!("forwarded {sql:?}, expected {expected:?}"));
            }
            for part in &case.contains {
                if !sql.contains(part.as_str()) {
                    why.push(format!("forwarded {sql:?} does not contain {part:?}"));
                }
            }
            if let Some(expected) = &case.rows {
                let role = upstream_user.as_deref().unwrap_or(default_user);
                match compare_rows(upstream, role, sql, expected, runners).await {
                    Ok(None) => {}
                    Ok(Some(problem)) => why.push(problem),
                    Err(e) => why.push(format!("running the forwarded SQL: {e:#}")),
                }
            }
        }
    }
    why
}

/// Runs `sql` as `role` and compares its rows; `Some(why)` when they differ.
async fn compare_rows(
    upstream: &Upstream,
    role: &str,
    sql: &str,
    expected: &[Vec<String>],
    runners: &mut HashMap<String, Runner>,
) -> anyhow::Result<Option<String>> {
    if !runners.contains_key(role) {
        let runner = Runner::connect(&upstream.connector, role, &upstream.database).await?;
        runners.insert(role.to_owned(), runner);
    }
    let runner = runners
        .get_mut(role)
        .context("upstream session went missing")?;
    let outcome = match runner.run(sql).await {
        Ok(outcome) => outcome,
        Err(e) => {
            // The session is in an unknown state; the next case opens a new one.
            runners.remove(role);
            return Err(e);
        }
    };
    Ok(match outcome {
        Outcome::Error(code, message) => Some(format!(
            "the forwarded SQL failed on the upstream: {message} (SQLSTATE {code})"
        )),
        Outcome::Rows(got) if got != expected => Some(format!(
            "rows {}, expected {}",
            show_rows(&got),
            show_rows(expected)
        )),
        Outcome::Rows(_) => None,
    })
}

/// Rows for a failure message: the first few, and how many there were.
fn show_rows(rows: &[Vec<String>]) -> String {
    const SHOWN: usize = 5;
    let shown: Vec<String> = rows.iter().take(SHOWN).map(|r| format!("{r:?}")).collect();
    if rows.len() > SHOWN {
        format!("[{}, ...] ({} rows)", shown.join(", "), rows.len())
    } else {
        format!("[{}]", shown.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_of_policy_csv() {
        let names = csv_principals(
            "# c\np, analyst, table:public.*, select\ng, alice, support\np,dba,*,*\n",
        );
        let want: BTreeSet<String> = ["alice", "analyst", "dba", "support"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(names, want);
    }

    #[test]
    fn finds_the_roles_line_of_a_user() {
        let text = "[[user]]\nname = \"a\"\nroles = [\"x\"]\n\n[[user]]\nname = \"b\"\nverifier = \"v\"\nroles = [\"y\"]\n[[user]]\nname = \"c\"\n";
        assert_eq!(user_line(text, "a"), 3);
        assert_eq!(user_line(text, "b"), 8);
        assert_eq!(user_line(text, "c"), 10);
        assert_eq!(user_line(text, "zz"), 1);
    }
}
