//! Hot reload: an edited policy directory is compiled and swapped while sessions run;
//! sessions pick the new policy up at their next statement, and a broken edit is
//! refused while the last good policy stays in force.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use portcullis_tests::wire::pg_connect;
use portcullis_tests::{ANALYST, EnvOptions, TestEnv, eventually, metric};

const FILES: [&str; 4] = [
    "model.conf",
    "policy.csv",
    "classification.toml",
    "rules.toml",
];

fn copy_quickstart_policy(to: &Path) -> std::io::Result<()> {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart");
    for file in FILES {
        std::fs::copy(from.join(file), to.join(file))?;
    }
    Ok(())
}

async fn email(client: &tokio_postgres::Client) -> anyhow::Result<Option<String>> {
    let row = client
        .query_one("SELECT email FROM customers WHERE id = $1", &[&1_i64])
        .await?;
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_policy_is_picked_up_under_load_and_a_broken_one_is_refused() -> anyhow::Result<()> {
    let policy = tempfile::tempdir()?;
    copy_quickstart_policy(policy.path())?;
    let env = TestEnv::start_with(EnvOptions {
        policy_dir: Some(policy.path().to_path_buf()),
        extra_config: String::new(),
        ..EnvOptions::default()
    })
    .await?;

    // Load: one session runs statements without pause for the whole test.
    let loaded = Arc::new(pg_connect(&env, ANALYST).await?);
    let stop = Arc::new(AtomicBool::new(false));
    let (done, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (client, stop, done, errors) = (
            Arc::clone(&loaded),
            Arc::clone(&stop),
            Arc::clone(&done),
            Arc::clone(&errors),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client
                    .simple_query("SELECT count(*), max(email) FROM customers")
                    .await
                {
                    Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };

    let session = pg_connect(&env, ANALYST).await?;
    let before = email(&session).await?;
    assert!(
        before.as_deref().is_some_and(|e| e.starts_with("***@")),
        "{before:?}"
    );

    // Edit: the analyst's e-mail mask becomes NULL.
    let rules = policy.path().join("rules.toml");
    let text = std::fs::read_to_string(&rules)?;
    let edited = text.replacen("method = \"email_domain\"", "method = \"null\"", 1);
    assert_ne!(text, edited);
    std::fs::write(&rules, &edited)?;
    let mut picked_up = false;
    for _ in 0..50 {
        if email(&session).await?.is_none() {
            picked_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(picked_up, "the open session reads through the new mask");

    // A broken edit is refused; the last good policy stays.
    let reloads_failed = r#"portcullis_reloads_total{outcome="failed"}"#;
    let failed_before = metric(&env.metrics().await?, reloads_failed);
    std::fs::write(
        &rules,
        edited.replace("${user.tenant}", "${user.no_such_attribute}"),
    )?;
    eventually(15, || async {
        metric(&env.metrics().await.unwrap_or_default(), reloads_failed) > failed_before
    })
    .await;
    assert!(
        metric(&env.metrics().await?, reloads_failed) > failed_before,
        "the broken set was refused"
    );
    assert_eq!(email(&session).await?, None, "still the last good policy");

    stop.store(true, Ordering::Relaxed);
    load.await?;
    assert!(done.load(Ordering::Relaxed) > 10, "the load ran");
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "no statement of the loaded session failed"
    );
    Ok(())
}
