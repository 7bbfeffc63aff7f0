//! pgbench through the proxy over TLS: initialisation (DDL, COPY, VACUUM) and the
//! built-in scripts in every query mode (simple, extended, prepared), with several
//! clients pipelining on their connections at once.

use std::process::Output;

use anyhow::{Result, bail};
use portcullis_tests::{ADMIN, ANALYST, TestEnv, stdout};

/// Transactions per run: 4 clients x 200.
const CLIENTS: &str = "4";
const PER_CLIENT: &str = "200";
const RUN_TOTAL: u64 = 800;

/// pgbench's built-in TPC-B-like script, sent as one pipeline per transaction.
const PIPELINED_TPCB: &str = r"\set aid random(1, 100000 * :scale)
\set bid random(1, 1 * :scale)
\set tid random(1, 10 * :scale)
\set delta random(-5000, 5000)
\startpipeline
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
\endpipeline
";

/// `pgbench <args>` through the proxy as `who`, over TLS.
async fn pgbench(env: &TestEnv, (user, password): (&str, &str), args: &[&str]) -> Result<Output> {
    let mut cmd = tokio::process::Command::new("pgbench");
    cmd.args(["-h", &env.proxy_addr.ip().to_string()])
        .args(["-p", &env.proxy_addr.port().to_string()])
        .args(["-U", user])
        .args(args)
        .arg(&env.database)
        .env("PGSSLMODE", "require")
        .env("PGPASSWORD", password)
        .env("PGCHANNELBINDING", "require")
        .env_remove("PGSERVICE")
        .env_remove("PGOPTIONS");
    Ok(cmd.output().await?)
}

/// Checks a benchmark run's report: everything processed, nothing failed.
fn check_run(label: &str, out: &Output) -> Result<()> {
    let report = String::from_utf8_lossy(&out.stdout);
    let errors = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "{label}: pgbench exited with {}: {errors}\n{report}",
            out.status
        );
    }
    let processed = format!("number of transactions actually processed: {RUN_TOTAL}/{RUN_TOTAL}");
    assert!(report.contains(&processed), "{label}: {report}");
    assert!(
        report.contains("number of failed transactions: 0 (0.000%)"),
        "{label}: {report}"
    );
    assert!(!errors.contains("error"), "{label}: {errors}");
    Ok(())
}

fn direct_number(text: &str) -> Result<u64> {
    Ok(text.trim().parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_init_and_all_query_modes() -> Result<()> {
    let env = TestEnv::start().await?;

    let init = pgbench(&env, ADMIN, &["-i", "-s", "1"]).await?;
    let init_log = String::from_utf8_lossy(&init.stderr);
    assert!(init.status.success(), "pgbench -i: {init_log}");
    assert!(init_log.contains("done in"), "{init_log}");
    let accounts = env
        .psql_direct(&["-c", "SELECT count(*) FROM pgbench_accounts"])
        .await?;
    assert_eq!(direct_number(&stdout(&accounts)?)?, 100_000);

    // `-n`: without it every run starts by truncating pgbench_history, and the rows
    // of all three TPC-B runs are counted below.
    for mode in ["simple", "extended", "prepared"] {
        let tpcb = pgbench(
            &env,
            ADMIN,
            &["-n", "-M", mode, "-c", CLIENTS, "-j", "2", "-t", PER_CLIENT],
        )
        .await?;
        check_run(&format!("TPC-B -M {mode}"), &tpcb)?;
        let select_only = pgbench(
            &env,
            ADMIN,
            &[
                "-n", "-M", mode, "-S", "-c", CLIENTS, "-j", "2", "-t", PER_CLIENT,
            ],
        )
        .await?;
        check_run(&format!("-S -M {mode}"), &select_only)?;
    }
    // The TPC-B-like transaction as one libpq pipeline (extended protocol only): every
    // statement of a transaction is sent before the first result is read.
    let script = env.dir().join("tpcb-pipeline.sql");
    std::fs::write(&script, PIPELINED_TPCB)?;
    let script = script.display().to_string();
    for mode in ["extended", "prepared"] {
        let run = pgbench(
            &env,
            ADMIN,
            &[
                "-n", "-M", mode, "-f", &script, "-c", CLIENTS, "-j", "2", "-t", PER_CLIENT,
            ],
        )
        .await?;
        check_run(&format!("pipelined TPC-B -M {mode}"), &run)?;
    }

    // A read-only user may run the select-only script.
    let analyst = pgbench(
        &env,
        ANALYST,
        &[
            "-n", "-M", "prepared", "-S", "-c", CLIENTS, "-j", "2", "-t", PER_CLIENT,
        ],
    )
    .await?;
    check_run("analyst -S -M prepared", &analyst)?;

    // Each TPC-B transaction inserts one history row (three built-in runs, two
    // pipelined ones); -S inserts none.
    let history = env
        .psql_direct(&["-c", "SELECT count(*) FROM pgbench_history"])
        .await?;
    assert_eq!(
        direct_number(&stdout(&history)?)?,
        3 * RUN_TOTAL + 2 * RUN_TOTAL
    );
    // Every update landed exactly once: the balances add up to the history's deltas.
    let sums = stdout(
        &env.psql_direct(&[
            "-c",
            "SELECT (SELECT sum(delta) FROM pgbench_history), (SELECT sum(abalance) FROM pgbench_accounts), \
                    (SELECT sum(tbalance) FROM pgbench_tellers), (SELECT sum(bbalance) FROM pgbench_branches)",
        ])
        .await?,
    )?;
    let sums: Vec<&str> = sums.trim().split('|').collect();
    assert_eq!(sums.len(), 4, "{sums:?}");
    assert!(
        sums.iter().all(|s| *s == sums[0]),
        "balances disagree with history: {sums:?}"
    );
    Ok(())
}
