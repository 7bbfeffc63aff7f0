//! The `portcullis` command line: help texts, user management, config checking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn portcullis(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .env_remove("PORTCULLIS_CONFIG")
        .env_remove("PORTCULLIS_USERS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn portcullis");
    let mut pipe = child.stdin.take().expect("stdin");
    if let Some(input) = stdin {
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    drop(pipe);
    child.wait_with_output().expect("wait")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn every_command_explains_itself() {
    for (args, expect) in [
        (&["--help"][..], "security proxy"),
        (&["serve", "--help"], "SIGHUP"),
        (&["check-config", "--help"], "line"),
        (&["demo", "--help"], "throwaway PostgreSQL"),
        (&["user", "--help"], "user store"),
        (&["user", "add", "--help"], "SCRAM-SHA-256"),
    ] {
        let out = portcullis(args, None);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains(expect),
            "{args:?} lacks {expect:?}: {}",
            text(&out)
        );
    }
}

#[test]
fn user_add_writes_a_verifier_never_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.toml");
    let f = file.to_str().unwrap();
    let out = portcullis(
        &[
            "user",
            "add",
            "carol",
            "--file",
            f,
            "--role",
            "analyst",
            "--attr",
            "tenant=7",
            "--expires",
            "2030-01-01T00:00:00Z",
        ],
        Some("correct horse battery\n"),
    );
    assert!(out.status.success(), "{}", text(&out));
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(!written.contains("correct horse"), "{written}");
    assert!(written.contains("SCRAM-SHA-256$4096:"), "{written}");
    let store = portcullis::auth::store::UserStore::load(&file).unwrap();
    let carol = store.get("carol").unwrap();
    assert_eq!(carol.roles, vec!["analyst".to_owned()]);
    assert_eq!(
        carol.attributes.get("tenant").map(String::as_str),
        Some("7")
    );

    // A second add of the same name is refused without --replace, accepted with it.
    let again = portcullis(&["user", "add", "carol", "--file", f], Some("other\n"));
    assert!(!again.status.success());
    let replaced = portcullis(
        &["user", "add", "carol", "--file", f, "--replace"],
        Some("other\n"),
    );
    assert!(replaced.status.success(), "{}", text(&replaced));

    let empty = portcullis(&["user", "add", "dave", "--file", f], Some("\n"));
    assert!(!empty.status.success(), "empty password refused");
}

#[test]
fn check_config_accepts_quickstart_and_points_at_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let quickstart =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart");
    // The quickstart names its TLS files and its policy directory relative to itself;
    // give them to a copy.
    for f in [
        "portcullis.toml",
        "users.toml",
        "model.conf",
        "policy.csv",
        "classification.toml",
        "rules.toml",
    ] {
        std::fs::copy(quickstart.join(f), dir.path().join(f)).unwrap();
    }
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.path().join("server.crt"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("server.key"), cert.key_pair.serialize_pem()).unwrap();
    let config = dir.path().join("portcullis.toml");
    let c = config.to_str().unwrap();

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    let ok = cmd
        .args(["check-config", "--config", c])
        .env("PORTCULLIS_UPSTREAM_PASSWORD", "x")
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", text(&ok));

    let original = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        original.replace("max_connections = 500", "max_connections = \"many\""),
    )
    .unwrap();
    let bad = portcullis(&["check-config", "--config", c], None);
    assert!(!bad.status.success());
    let line = original
        .lines()
        .position(|l| l.starts_with("max_connections"))
        .unwrap()
        + 1;
    assert!(
        text(&bad).contains(&format!("portcullis.toml:{line}:")),
        "{}",
        text(&bad)
    );

    std::fs::write(
        &config,
        original.replace(
            "allow = [\"read\", \"session\", \"transaction\"]",
            "allow = [\"reed\"]",
        ),
    )
    .unwrap();
    let bad = portcullis(&["check-config", "--config", c], None);
    assert!(!bad.status.success());
    assert!(text(&bad).contains("reed"), "{}", text(&bad));
}

#[test]
fn audit_verify_accepts_an_intact_chain_and_pinpoints_a_modification() {
    use portcullis_audit::chain::Chainer;
    use portcullis_audit::event::AuditEvent;
    use portcullis_audit::format::Format;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let mut chainer = Chainer::new("proxy-1", None);
    let mut out = Vec::new();
    for i in 0..5 {
        let mut event = AuditEvent::login(format!("s{i}"), format!("user{i}"), i % 2 == 0);
        chainer.seal(&mut event).unwrap();
        Format::Json.encode(&event, &mut out).unwrap();
    }
    std::fs::write(&file, &out).unwrap();
    let f = file.to_str().unwrap();

    let ok = portcullis(&["audit", "verify", f], None);
    assert!(ok.status.success(), "{}", text(&ok));

    let tampered = String::from_utf8(out)
        .unwrap()
        .replacen("user2", "userX", 1);
    std::fs::write(&file, tampered).unwrap();
    let bad = portcullis(&["audit", "verify", f], None);
    assert!(!bad.status.success());
    assert!(text(&bad).contains("line 3"), "{}", text(&bad));
}

#[cfg(unix)]
#[test]
fn audit_verify_checks_a_keyed_chain_with_the_key_file() {
    use portcullis_audit::chain::Chainer;
    use portcullis_audit::event::AuditEvent;
    use portcullis_audit::format::Format;
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let key = dir.path().join("chain.key");
    std::fs::write(&key, "s3cret-chain-key\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut chainer = Chainer::new("proxy-1", Some(b"s3cret-chain-key".to_vec()));
    let mut out = Vec::new();
    for i in 0..3 {
        let mut event = AuditEvent::login(format!("s{i}"), format!("user{i}"), true);
        chainer.seal(&mut event).unwrap();
        Format::Json.encode(&event, &mut out).unwrap();
    }
    std::fs::write(&file, &out).unwrap();
    let (f, k) = (file.to_str().unwrap(), key.to_str().unwrap());

    let ok = portcullis(&["audit", "verify", "--key-file", k, f], None);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(!text(&ok).contains("s3cret"), "the key is never printed");

    std::fs::write(&key, "another-key\n").unwrap();
    let bad = portcullis(&["audit", "verify", "--key-file", k, f], None);
    assert!(!bad.status.success(), "{}", text(&bad));

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let open = portcullis(&["audit", "verify", "--key-file", k, f], None);
    assert!(!open.status.success());
    assert!(text(&open).contains("chmod 600"), "{}", text(&open));
}

#[test]
fn siem_example_configuration_is_valid() {
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/siem/portcullis.toml");
    let config =
        portcullis::config::Config::load(&example).expect("the SIEM example parses and validates");
    let audit = config.audit.expect("[audit]");
    let kinds: Vec<_> = audit.sinks.iter().map(|s| s.kind.as_str()).collect();
    assert_eq!(kinds, ["file", "syslog", "splunk", "elasticsearch", "nats"]);
}
