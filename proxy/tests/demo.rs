//! The README's first command: `portcullis demo` starts everything, prints working URLs,
//! and removes everything on Ctrl-C.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn demo_prints_working_urls_and_cleans_up_on_interrupt() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["demo", "--port", "0", "--metrics-port", "0"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn demo");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut urls = Vec::new();
    let mut cert = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    for line in lines.by_ref() {
        let line = line.expect("line");
        if line.starts_with("postgres://") {
            urls.push(line.clone());
        }
        if line.ends_with("server.crt).") {
            cert = Some(line.trim_end_matches(").").to_owned());
        }
        if line.starts_with("Press Ctrl-C") || Instant::now() > deadline {
            break;
        }
    }
    assert_eq!(
        urls.len(),
        4,
        "three demo users and the direct URL: {urls:?}"
    );
    for (url, expect) in [(&urls[0], "300"), (&urls[1], "300"), (&urls[3], "300")] {
        let out = Command::new("psql")
            .args(["-X", "-At", url, "-c", "SELECT count(*) FROM customers"])
            .output()
            .expect("psql");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            expect,
            "{url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let denied = Command::new("psql")
        .args(["-X", "-At", &urls[1], "-c", "DELETE FROM orders"])
        .output()
        .expect("psql");
    assert!(!denied.status.success(), "analyst may not write");

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().expect("wait");
    assert!(status.success(), "demo exit status {status}: {rest:?}");
    assert!(rest.iter().any(|l| l.starts_with("Stopped")), "{rest:?}");
    let cert = cert.expect("certificate path printed");
    let dir = std::path::Path::new(&cert).parent().expect("cert dir");
    assert!(!dir.exists(), "{} removed", dir.display());
}
