//! Temporary exploration helper (to be deleted).
use portcullis_tests::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "manual exploration"]
async fn scratch_env() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let info = format!(
        "PROXY_HOST={}\nPROXY_PORT={}\nDB={}\nCERT={}\nDIRECT='{}'\n",
        env.proxy_addr.ip(),
        env.proxy_addr.port(),
        env.database,
        env.cert_path.display(),
        env.direct_dsn()
    );
    std::fs::write("/tmp/portcullis-scratch.env", info)?;
    tokio::time::sleep(std::time::Duration::from_secs(1500)).await;
    Ok(())
}
