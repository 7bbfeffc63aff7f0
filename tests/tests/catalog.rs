//! The catalog snapshot: loaded from the upstream before the proxy serves, with the
//! support functions installed; refreshed after DDL once it is committed; and, when the
//! upstream is down at start, empty (fail closed) until a background retry succeeds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use anyhow::{Context, Result};
use tokio_postgres::{Client, SimpleQueryMessage};

use portcullis_tests::wire::direct;
use portcullis_tests::{ADMIN, EnvOptions, TestEnv, client_tls, eventually, metric, panics_so_far};

const RELATIONS: &str = "portcullis_catalog_relations";
const LOADS_OK: &str = r#"portcullis_catalog_loads_total{outcome="ok"}"#;
const LOADS_ERROR: &str = r#"portcullis_catalog_loads_total{outcome="error"}"#;

/// What the snapshot should count: every relation a statement can name, as
/// `Catalog::QUERY_RELATIONS` selects them.
const RELATION_COUNT: &str = "SELECT count(*) FROM pg_class c \
     JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND n.nspname <> 'pg_toast' \
     AND n.nspname NOT LIKE 'pg_temp_%' AND n.nspname NOT LIKE 'pg_toast_temp_%'";

async fn pg_connect(env: &TestEnv, who: (&str, &str)) -> Result<Client> {
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(client_tls(&env.cert_path)?);
    let (client, connection) =
        tokio_postgres::connect(&env.proxy_dsn(who, "sslmode=require"), tls).await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn scalar(client: &Client, sql: &str) -> Result<String> {
    client
        .simple_query(sql)
        .await?
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .with_context(|| format!("no value from {sql}"))
}

async fn relations_metric(env: &TestEnv) -> f64 {
    metric(&env.metrics().await.unwrap_or_default(), RELATIONS)
}

fn has_relation(env: &TestEnv, schema: &str, name: &str) -> bool {
    env.shared.catalog.load().relation(schema, name).is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_is_loaded_at_start_and_refreshed_after_committed_ddl() -> Result<()> {
    let panics = panics_so_far();
    let env = TestEnv::start().await?;
    let db = direct(&env).await?;

    // Loaded before the first client: the quickstart tables and the system relations.
    let m = env.metrics().await?;
    let relations = metric(&m, RELATIONS);
    assert!(relations >= 3.0, "{m}");
    let upstream_count: f64 = scalar(&db, RELATION_COUNT).await?.parse()?;
    assert_eq!(
        relations, upstream_count,
        "the snapshot holds every nameable relation, system ones included"
    );
    assert!(relations > 50.0, "pg_catalog's relations are counted: {m}");
    assert!(metric(&m, LOADS_OK) >= 1.0, "{m}");
    {
        let catalog = env.shared.catalog.load();
        assert_eq!(catalog.len() as f64, relations);
        let customers = catalog
            .relation("public", "customers")
            .context("public.customers")?;
        assert!(customers.column("email").is_some(), "{customers:?}");
        for table in ["tenants", "orders"] {
            assert!(catalog.relation("public", table).is_some(), "{table}");
        }
        assert!(catalog.relation("pg_catalog", "pg_class").is_some());
        assert_eq!(
            catalog.resolve_function(
                &["portcullis".into(), "row_check".into()],
                &["public".into()]
            ),
            Some("portcullis"),
            "the support function was installed before the snapshot was read"
        );
    }

    // The support SQL is in the upstream database, and works.
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = 'portcullis' AND p.proname = 'row_check'"
        )
        .await?,
        "1"
    );
    assert_eq!(
        scalar(&db, "SELECT portcullis.row_check(true, 'r1')").await?,
        "t"
    );
    let refused = db
        .simple_query("SELECT portcullis.row_check(false, 'tenant_rule')")
        .await
        .expect_err("row_check(false) raises");
    let refused = refused.as_db_error().context("a database error")?;
    assert_eq!(refused.code().code(), "42501");
    assert!(refused.message().contains("tenant_rule"), "{refused:?}");

    // DDL through the proxy: the snapshot follows.
    let admin = pg_connect(&env, ADMIN).await?;
    let loads_before = metric(&env.metrics().await?, LOADS_OK);
    admin
        .simple_query("CREATE TABLE t_new (id int PRIMARY KEY, note text)")
        .await?;
    let grew = eventually(10, || async {
        relations_metric(&env).await == relations + 1.0 && has_relation(&env, "public", "t_new")
    })
    .await;
    assert!(grew, "t_new not in the catalog:\n{}", env.metrics().await?);
    let columns: Vec<String> = env
        .shared
        .catalog
        .load()
        .relation("public", "t_new")
        .map(|r| r.columns.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    assert_eq!(columns, ["id", "note"]);
    assert!(metric(&env.metrics().await?, LOADS_OK) > loads_before);

    // DDL in a transaction is visible to the catalog only once committed, so the
    // refresh must follow COMMIT, not CREATE. Another session's DDL forces a load while
    // the transaction is open: it cannot see t_tx, and a refresh spent there (instead
    // of after COMMIT) would leave t_tx out for good.
    admin.simple_query("BEGIN").await?;
    admin.simple_query("CREATE TABLE t_tx (a int)").await?;
    let other = pg_connect(&env, ADMIN).await?;
    other.simple_query("CREATE TABLE t_other (b int)").await?;
    let other_seen = eventually(10, || async { has_relation(&env, "public", "t_other") }).await;
    assert!(other_seen, "t_other not in the catalog");
    assert!(!has_relation(&env, "public", "t_tx"), "uncommitted table");
    admin.simple_query("INSERT INTO t_tx VALUES (1)").await?;
    admin.simple_query("COMMIT").await?;
    let committed = eventually(10, || async { has_relation(&env, "public", "t_tx") }).await;
    assert!(committed, "t_tx not in the catalog after COMMIT");

    admin
        .simple_query("DROP TABLE t_new, t_tx, t_other")
        .await?;
    let dropped = eventually(10, || async {
        !has_relation(&env, "public", "t_new") && relations_metric(&env).await == relations
    })
    .await;
    assert!(dropped, "dropped tables still in the catalog");
    assert_eq!(
        metric(&env.metrics().await?, LOADS_ERROR),
        0.0,
        "no load failed"
    );
    assert_eq!(panics_so_far(), panics);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_at_start_gives_an_empty_catalog_until_a_retry_succeeds() -> Result<()> {
    let panics = panics_so_far();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let env = TestEnv::start_with(EnvOptions {
        upstream_port_override: Some(port),
        catalog_extra: "retry_secs = 1".into(),
        ..EnvOptions::default()
    })
    .await?;
    // The proxy started (the harness got its addresses) with nothing to resolve names in.
    let m = env.metrics().await?;
    assert!(m.contains("200 OK"), "{m}");
    assert_eq!(metric(&m, RELATIONS), 0.0, "{m}");
    assert!(metric(&m, LOADS_ERROR) >= 1.0, "{m}");
    assert!(env.shared.catalog.load().is_empty());

    // The database "comes up": a forwarder on the configured port.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .context("the closed port was taken in the meantime")?;
    let (pg_host, pg_port) = (env.pg_host.clone(), env.pg_port);
    let forwarder = tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = (pg_host.clone(), pg_port);
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    let loaded = eventually(20, || async {
        relations_metric(&env).await > 0.0 && has_relation(&env, "public", "customers")
    })
    .await;
    let m = env.metrics().await?;
    assert!(loaded, "no retry loaded the catalog:\n{m}");
    assert!(metric(&m, LOADS_OK) >= 1.0, "{m}");
    forwarder.abort();
    assert_eq!(panics_so_far(), panics);
    Ok(())
}
