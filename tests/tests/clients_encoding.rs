//! The statement text a client sends must reach the database as the database reads it.
//!
//! The proxy parses, checks and re-serializes statements as UTF-8 with
//! standard-conforming strings. A session whose server reads the forwarded bytes any
//! other way (a multi-byte SJIS character swallowing a backslash, `\'` ending a string
//! with `standard_conforming_strings = off`) runs something other than what was checked,
//! and text in another encoding must not be silently rewritten either.
//!
//! Each smuggling test first proves, straight against the database, that its payload
//! really does run a second statement when read that way, so that a pass means the
//! proxy stopped it rather than that the payload is harmless.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::process::Output;

use anyhow::Result;
use portcullis_tests::{ADMIN, ANALYST, TestEnv, stdout};

fn proxy_dsn(env: &TestEnv, (user, password): (&str, &str), extra: &str) -> String {
    format!(
        "host=127.0.0.1 port={} dbname={} user={user} password={password} sslmode=verify-full sslrootcert={} channel_binding=require {extra}",
        env.proxy_addr.port(),
        env.database,
        env.cert_path.display(),
    )
}

/// `psql -X -v VERBOSITY=verbose <dsn> -c <command bytes>`: the command may be in any
/// encoding, exactly as a client in that encoding would send it.
async fn psql_bytes(dsn: &str, command: &[u8]) -> Result<Output> {
    let mut cmd = tokio::process::Command::new("psql");
    cmd.args(["-X", "-At", "-v", "VERBOSITY=verbose", dsn, "-c"])
        .arg(OsStr::from_bytes(command));
    for var in [
        "PGPASSWORD",
        "PGSERVICE",
        "PGCLIENTENCODING",
        "PGOPTIONS",
        "PGSSLMODE",
    ] {
        cmd.env_remove(var);
    }
    Ok(cmd.output().await?)
}

async fn table_exists(env: &TestEnv, name: &str) -> Result<bool> {
    let out = env
        .psql_direct(&["-c", &format!("SELECT to_regclass('{name}') IS NOT NULL")])
        .await?;
    Ok(stdout(&out)? == "t\n")
}

/// A read-only user's single SELECT of one string literal, as the proxy reads it; the
/// server, reading the same bytes with `setting`, sees a second statement after it.
async fn assert_not_smuggled(
    env: &TestEnv,
    payload: &str,
    setting: &str,
    label: &str,
) -> Result<()> {
    // Control: straight to the database with the setting, the payload runs CREATE TABLE.
    let control_table = format!("control_{label}");
    let control = payload.replace("TARGET", &control_table);
    let direct = format!("{} {setting}", env.direct_dsn());
    let out = psql_bytes(&direct, control.as_bytes()).await?;
    assert!(
        out.status.success(),
        "control: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table_exists(env, &control_table).await?,
        "the payload does not smuggle a statement even directly"
    );

    // Through the proxy, as a user who may only read: refused in any way, but never run.
    let target = format!("smuggled_{label}");
    let attack = payload.replace("TARGET", &target);
    let out = psql_bytes(&proxy_dsn(env, ANALYST, setting), attack.as_bytes()).await?;
    assert!(
        !table_exists(env, &target).await?,
        "{label}: a read-only user ran CREATE TABLE through the proxy (connection settings {setting:?}); psql said: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_conforming_strings_off_at_startup_cannot_smuggle_statements() -> Result<()> {
    let env = TestEnv::start().await?;
    // The proxy reads 'x\' as a complete string and '; CREATE ... -- ' as another;
    // with standard_conforming_strings off the server reads \' as a quote inside one
    // string that ends before "; CREATE TABLE".
    let payload = r"SELECT 'x\', '; CREATE TABLE TARGET (); -- '";
    assert_not_smuggled(
        &env,
        payload,
        "options='-c standard_conforming_strings=off'",
        "scs_options",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sjis_client_encoding_at_startup_cannot_smuggle_statements() -> Result<()> {
    let env = TestEnv::start().await?;
    // "Õ" is C3 95 in UTF-8. In SJIS, C3 is one half-width katakana and 95 5C one
    // kanji, so the backslash that escapes the quote for the proxy is part of a
    // character for the server, and the string ends before "; CREATE TABLE".
    let payload = "SELECT E'Õ\\'; CREATE TABLE TARGET (); --'";
    assert_not_smuggled(&env, payload, "client_encoding=SJIS", "sjis_param").await?;
    assert_not_smuggled(
        &env,
        payload,
        "options='-c client_encoding=SJIS'",
        "sjis_options",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latin1_client_text_is_stored_intact_or_refused() -> Result<()> {
    let env = TestEnv::start().await?;
    stdout(
        &env.psql_direct(&["-c", "CREATE TABLE latin1_text (source text, t text)"])
            .await?,
    )?;
    // 'héllo' in LATIN1: é is the single byte E9.
    let insert = |source: &str| {
        let mut sql = format!("INSERT INTO latin1_text VALUES ('{source}', 'h").into_bytes();
        sql.extend_from_slice(b"\xe9llo')");
        sql
    };
    let direct = format!("{} client_encoding=LATIN1", env.direct_dsn());
    stdout(&psql_bytes(&direct, &insert("direct")).await?)?;
    let out = psql_bytes(
        &proxy_dsn(&env, ADMIN, "client_encoding=LATIN1"),
        &insert("proxy"),
    )
    .await?;

    let stored = stdout(
        &env.psql_direct(&["-c", "SELECT source, t FROM latin1_text ORDER BY source"])
            .await?,
    )?;
    if out.status.success() {
        // Accepted: then the database must hold what the client meant, as directly.
        assert_eq!(
            stored, "direct|héllo\nproxy|héllo\n",
            "LATIN1 text was rewritten on the way"
        );
    } else {
        // Refusing a client encoding the proxy cannot read is fine; corrupting is not.
        assert_eq!(stored, "direct|héllo\n");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_is_refused_like_postgres_does() -> Result<()> {
    let env = TestEnv::start().await?;
    // A client that claims UTF-8 but sends a LATIN1 byte.
    let select = b"SELECT 'h\xe9llo'";
    let direct = psql_bytes(&env.direct_dsn(), select).await?;
    assert!(!direct.status.success());
    assert!(
        String::from_utf8_lossy(&direct.stderr).contains("22021"),
        "{}",
        String::from_utf8_lossy(&direct.stderr)
    );

    let proxied = psql_bytes(&proxy_dsn(&env, ANALYST, ""), select).await?;
    let shown = String::from_utf8_lossy(&proxied.stdout);
    assert!(
        !proxied.status.success(),
        "the proxy accepted invalid UTF-8 and the query returned {shown:?} (U+FFFD substituted)"
    );
    let err = String::from_utf8_lossy(&proxied.stderr);
    assert!(err.contains("22021"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_defaults_cannot_switch_how_the_server_reads_statements() -> Result<()> {
    let env = TestEnv::start().await?;
    // A legacy database configured server-side (by its owner, not through the proxy):
    // sessions that do not say otherwise start with these settings.
    let database = &env.database;
    stdout(
        &env.psql_direct(&[
            "-c",
            &format!("ALTER DATABASE \"{database}\" SET standard_conforming_strings = off"),
        ])
        .await?,
    )?;
    let payload = r"SELECT 'x\', '; CREATE TABLE TARGET (); -- '";
    assert_not_smuggled(&env, payload, "", "scs_database_default").await?;

    stdout(
        &env.psql_direct(&[
            "-c",
            &format!("ALTER DATABASE \"{database}\" RESET standard_conforming_strings"),
        ])
        .await?,
    )?;
    stdout(
        &env.psql_direct(&[
            "-c",
            &format!("ALTER DATABASE \"{database}\" SET client_encoding = 'SJIS'"),
        ])
        .await?,
    )?;
    let payload = "SELECT E'Õ\\'; CREATE TABLE TARGET (); --'";
    assert_not_smuggled(&env, payload, "", "sjis_database_default").await
}
