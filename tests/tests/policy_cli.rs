//! `portcullis policy check | test | explain`, run as the built binary against the
//! harness's database and configuration.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::Output;

use portcullis_tests::process::portcullis_bin;
use portcullis_tests::{TestEnv, quickstart_dir};

async fn portcullis(args: &[&str]) -> Output {
    let bin = tokio::task::spawn_blocking(portcullis_bin).await.unwrap();
    let out = tokio::process::Command::new(bin)
        .args(args)
        .env_remove("PORTCULLIS_CONFIG")
        .output()
        .await
        .unwrap();
    println!(
        "$ portcullis {}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A copy of the quickstart policy directory (without its configuration and fixtures).
fn copy_policy(into: &Path) -> PathBuf {
    let dir = into.join("policy");
    std::fs::create_dir_all(&dir).unwrap();
    for file in [
        "model.conf",
        "policy.csv",
        "classification.toml",
        "rules.toml",
    ] {
        std::fs::copy(quickstart_dir().join(file), dir.join(file)).unwrap();
    }
    dir
}

/// The 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[tokio::test]
async fn check_accepts_the_quickstart_and_names_broken_lines() {
    let env = TestEnv::start().await.unwrap();
    let config = env.config_path.display().to_string();
    let quickstart = quickstart_dir().display().to_string();

    let out = portcullis(&["policy", "check", &quickstart, "--config", &config]).await;
    assert!(out.status.success());
    let stdout = text(&out);
    assert!(stdout.contains("0 problems"), "{stdout}");
    assert!(stdout.contains("checked against the catalog"), "{stdout}");

    // A template naming an attribute rules.toml does not declare.
    let scratch = env.dir().join("unknown-attribute");
    let dir = copy_policy(&scratch);
    let rules = std::fs::read_to_string(dir.join("rules.toml")).unwrap();
    let broken = rules.replacen(
        "where = \"tenant_id = ${user.tenant}\"",
        "where = \"tenant_id = ${user.region}\"",
        1,
    );
    assert_ne!(broken, rules);
    let line = line_of(&broken, "${user.region}");
    std::fs::write(dir.join("rules.toml"), &broken).unwrap();
    let out = portcullis(&[
        "policy",
        "check",
        dir.to_str().unwrap(),
        "--config",
        &config,
    ])
    .await;
    assert!(!out.status.success());
    let stdout = text(&out);
    // The filter's [[filter]] header or its where line.
    let named = (line - 3..=line).any(|l| stdout.contains(&format!("rules.toml:{l}: ")));
    assert!(named, "no rules.toml:{}..{line} in {stdout}", line - 3);
    assert!(stdout.contains("region"), "{stdout}");

    // A text mask on a date column: only the catalog can tell.
    let scratch = env.dir().join("wrong-type");
    let dir = copy_policy(&scratch);
    let rules = std::fs::read_to_string(dir.join("rules.toml")).unwrap();
    let broken = rules.replacen(
        "method = \"truncate_date\"\nto = \"year\"",
        "method = \"keep_last\"\nkeep = 2",
        1,
    );
    assert_ne!(broken, rules);
    std::fs::write(dir.join("rules.toml"), &broken).unwrap();
    // The lines of the broken [[mask]] table.
    let method = line_of(&broken, "keep = 2");
    let header = method - 4;
    let out = portcullis(&[
        "policy",
        "check",
        dir.to_str().unwrap(),
        "--config",
        &config,
    ])
    .await;
    assert!(!out.status.success());
    let stdout = text(&out);
    let named = (header..=method).any(|l| stdout.contains(&format!("rules.toml:{l}: ")));
    assert!(named, "no rules.toml:{header}..{method} in {stdout}");
    assert!(stdout.contains("birth_date"), "{stdout}");
    assert!(stdout.contains("1 problem,"), "{stdout}");
}

#[tokio::test]
async fn check_without_an_upstream_skips_the_catalog() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = copy_policy(scratch.path());
    let quickstart = std::fs::read_to_string(quickstart_dir().join("portcullis.toml")).unwrap();
    // Nothing listens on port 1; the users file is the quickstart's.
    let config = quickstart
        .replace("port = 5432", "port = 1")
        .replace(
            "password = { env = \"PORTCULLIS_UPSTREAM_PASSWORD\" }\n",
            "",
        )
        .replace(
            "users_file = \"users.toml\"",
            &format!(
                "users_file = {:?}",
                quickstart_dir().join("users.toml").display().to_string()
            ),
        );
    std::fs::write(dir.join("portcullis.toml"), config).unwrap();
    let out = portcullis(&["policy", "check", dir.to_str().unwrap()]).await;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("catalog checks skipped:"));
    assert!(text(&out).contains("catalog checks skipped:"));
}

#[tokio::test]
async fn test_runs_the_quickstart_fixtures_and_reports_failures() {
    let env = TestEnv::start().await.unwrap();
    let config = env.config_path.display().to_string();
    let quickstart = quickstart_dir().display().to_string();

    let out = portcullis(&["policy", "test", &quickstart, "--config", &config]).await;
    let stdout = text(&out);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    assert!(!stdout.contains("FAILED"), "{stdout}");

    // A wrong expectation fails, naming the case and its line.
    let dir = copy_policy(env.dir());
    std::fs::create_dir_all(dir.join("tests")).unwrap();
    let fixture = r#"
[[case]]
name = "analyst masks ssn"
user = "analyst"
sql = "SELECT ssn FROM customers WHERE id = 1"
expect = "rewritten"
rows = [["*******4877"]]

[[case]]
name = "analyst deletes customers"
user = "analyst"
sql = "DELETE FROM customers"
expect = "allowed"

[[case]]
name = "analyst sees the full ssn"
user = "analyst"
sql = "SELECT ssn FROM customers WHERE id = 1"
expect = "rewritten"
rows = [["012-94-4877"]]
"#;
    std::fs::write(dir.join("tests/wrong.toml"), fixture).unwrap();
    let out = portcullis(&["policy", "test", dir.to_str().unwrap(), "--config", &config]).await;
    assert!(!out.status.success());
    let stdout = text(&out);
    assert!(stdout.contains("ok      analyst masks ssn"), "{stdout}");
    assert!(
        stdout.contains("FAILED  analyst deletes customers (") && stdout.contains("wrong.toml:9)"),
        "{stdout}"
    );
    assert!(stdout.contains("expected allowed, got denied"), "{stdout}");
    assert!(
        stdout.contains("FAILED  analyst sees the full ssn") && stdout.contains("*******4877"),
        "{stdout}"
    );
    assert!(stdout.contains("1 passed, 2 failed"), "{stdout}");

    // A malformed fixture names its file and line.
    std::fs::write(
        dir.join("tests/wrong.toml"),
        "[[case]]\nname = \"x\"\nuser = \"analyst\"\nsql = \"SELECT 1\"\nexpect = \"perhaps\"\n",
    )
    .unwrap();
    let out = portcullis(&["policy", "test", dir.to_str().unwrap(), "--config", &config]).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("wrong.toml:5:"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn explain_shows_the_masked_sql() {
    let env = TestEnv::start().await.unwrap();
    let config = env.config_path.display().to_string();

    let out = portcullis(&[
        "policy",
        "explain",
        "--user",
        "analyst",
        "--config",
        &config,
        "SELECT ssn FROM customers",
    ])
    .await;
    assert!(out.status.success());
    let stdout = text(&out);
    assert!(stdout.contains("decision:  rewritten"), "{stdout}");
    assert!(stdout.contains("policy:    sha256:"), "{stdout}");
    assert!(stdout.contains("right(\"ssn\", 4)"), "{stdout}");

    let out = portcullis(&[
        "policy",
        "explain",
        "--user",
        "analyst",
        "--config",
        &config,
        "DELETE FROM customers",
    ])
    .await;
    assert!(out.status.success());
    let stdout = text(&out);
    assert!(stdout.contains("decision:  denied"), "{stdout}");
    assert!(stdout.contains("sqlstate:  42501"), "{stdout}");
    assert!(stdout.contains("rule:      "), "{stdout}");
}
