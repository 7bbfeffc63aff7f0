//! The proxy's side towards the database: TLS with certificate verification, and each
//! upstream authentication method (SCRAM-SHA-256, MD5, trust).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use portcullis::auth::store::{NewUser, add_user};
use portcullis::cluster::{Cluster, ClusterOptions, SslFiles};
use portcullis::config::Config;
use portcullis::server::Server;
use portcullis_tests::stdout;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tokio_util::sync::CancellationToken;

const PASSWORD: &str = "upstream-secret";

struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn make_pki() -> Result<Pki> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?
        .signed_by(&key, &ca, &ca_key)?;
    Ok(Pki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Starts a proxy in front of `cluster` with the given `[upstream]` extras and proxy
/// users `(name, upstream_user)` (password = name), returning its address.
async fn proxy(
    dir: &Path,
    cluster: &Cluster,
    upstream_extra: &str,
    users: &[(&str, Option<&str>)],
) -> Result<(std::net::SocketAddr, CancellationToken)> {
    let users_path = dir.join("users.toml");
    for (name, upstream) in users {
        let user = NewUser {
            name,
            roles: &["dba".to_owned()],
            attributes: &BTreeMap::new(),
            expires_at: None,
            upstream_user: *upstream,
        };
        add_user(&users_path, &user, &(*name).to_owned().into(), false)?;
    }
    let (cert, key) = portcullis::demo::write_self_signed(dir)?;
    std::fs::write(dir.join("pw"), PASSWORD)?;
    let config = format!(
        r#"
[listen]
address = "127.0.0.1:0"
[tls]
cert = "{cert}"
key = "{key}"
[auth]
users_file = "{users}"
[upstream]
port = {port}
user = "postgres"
password = {{ file = "{pw}" }}
connect_timeout_secs = 3
{upstream_extra}
[policy.roles.dba]
allow = ["all"]
"#,
        cert = cert.display(),
        key = key.display(),
        users = users_path.display(),
        port = cluster.port(),
        pw = dir.join("pw").display(),
    );
    let path = dir.join("portcullis.toml");
    std::fs::write(&path, config)?;
    let server = Server::bind(Config::load(&path)?, None).await?;
    let addr = server.local_addr()?;
    let token = CancellationToken::new();
    tokio::spawn(server.run(token.clone()));
    Ok((addr, token))
}

async fn psql(addr: std::net::SocketAddr, user: &str, sql: &str) -> Result<std::process::Output> {
    let dsn = format!(
        "host=127.0.0.1 port={} dbname=postgres user={user} password={user} sslmode=require",
        addr.port()
    );
    Ok(tokio::process::Command::new("psql")
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", &dsn, "-c", sql])
        .output()
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_verify_full_and_wrong_ca() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = make_pki()?;
    std::fs::write(dir.path().join("server.crt"), &pki.cert_pem)?;
    std::fs::write(dir.path().join("server.key"), &pki.key_pem)?;
    std::fs::write(dir.path().join("ca.crt"), &pki.ca_pem)?;
    let mut opts = ClusterOptions::new(PASSWORD);
    opts.ssl = Some(SslFiles {
        cert: dir.path().join("server.crt"),
        key: dir.path().join("server.key"),
    });
    let cluster = tokio::task::spawn_blocking(move || Cluster::start(&opts)).await??;

    let good = dir.path().join("good");
    std::fs::create_dir(&good)?;
    let extra = format!(
        "host = \"localhost\"\nsslmode = \"verify-full\"\nca_file = \"{}\"",
        dir.path().join("ca.crt").display()
    );
    let (addr, stop) = proxy(&good, &cluster, &extra, &[("alice", None)]).await?;
    let out = psql(
        addr,
        "alice",
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    .await?;
    assert_eq!(stdout(&out)?.trim(), "t", "upstream session is encrypted");
    stop.cancel();

    // A CA that did not sign the server's certificate: the client gets 08001, not a hang.
    let other = make_pki()?;
    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad)?;
    std::fs::write(bad.join("other-ca.crt"), &other.ca_pem)?;
    let extra = format!(
        "host = \"localhost\"\nsslmode = \"verify-ca\"\nca_file = \"{}\"",
        bad.join("other-ca.crt").display()
    );
    let (addr, stop) = proxy(&bad, &cluster, &extra, &[("alice", None)]).await?;
    let out = psql(addr, "alice", "SELECT 1").await?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("could not establish a connection to the database server"),
        "{err}"
    );
    stop.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_md5_and_trust_authentication() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster =
        tokio::task::spawn_blocking(|| Cluster::start(&ClusterOptions::new(PASSWORD))).await??;
    cluster.psql(
        "postgres",
        &format!(
            "SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN PASSWORD '{PASSWORD}'; \
             CREATE ROLE trustuser LOGIN;"
        ),
    )?;
    // Put md5 and trust lines first in pg_hba.conf, then reload.
    let hba = cluster.data_dir().join("pg_hba.conf");
    let original = std::fs::read_to_string(&hba)?;
    std::fs::write(
        &hba,
        format!(
            "host all md5user 127.0.0.1/32 md5\nhost all trustuser 127.0.0.1/32 trust\n{original}"
        ),
    )?;
    cluster.psql("postgres", "SELECT pg_reload_conf()")?;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let (addr, stop) = proxy(
        dir.path(),
        &cluster,
        "host = \"127.0.0.1\"",
        &[
            ("scram", None),
            ("viamd5", Some("md5user")),
            ("viatrust", Some("trustuser")),
        ],
    )
    .await?;
    for (user, upstream) in [
        ("scram", "postgres"),
        ("viamd5", "md5user"),
        ("viatrust", "trustuser"),
    ] {
        let out = psql(addr, user, "SELECT current_user").await?;
        assert_eq!(stdout(&out)?.trim(), upstream, "{user}");
    }
    stop.cancel();
    Ok(())
}
