//! Native row-level security: a table protected by the database's own policy (ENABLE
//! and FORCE ROW LEVEL SECURITY, `USING (tenant_id = current_setting('app.tenant')::int)`)
//! and a `[[native]]` rule naming it for the `support` role. support_acme (tenant 1)
//! reaches the database as a non-superuser role that owns nothing, so the policy binds
//! it: it sees tenant 1's rows only, and every statement that would change the setting
//! is refused by the proxy. admin, which no native rule names, is unaffected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use portcullis::auth::store::{NewUser, UserStore, add_user};
use portcullis::config::Config;
use portcullis_tests::wire::{direct, pg_connect};
use portcullis_tests::{ADMIN, SUPPORT, TestEnv, eventually, quickstart_dir};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, SimpleQueryMessage};

/// The rule appended to the quickstart's rules.toml.
const NATIVE_RULE: &str = r#"
[[native]]
table = "public.tickets"
roles = ["support"]
[native.settings]
"app.tenant" = "${user.tenant}"
"#;

/// Rows of a simple query, each as its columns' text.
async fn rows(client: &Client, sql: &str) -> Result<Vec<Vec<String>>> {
    Ok(client
        .simple_query(sql)
        .await
        .with_context(|| sql.to_owned())?
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or("NULL").to_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

/// What a reload does: the policy from the configuration, with `dir` as its directory.
fn load_policy(env: &TestEnv, dir: &std::path::Path) -> Result<()> {
    let mut config = Config::load(&env.config_path)?;
    config.policy.dir = Some(dir.to_owned());
    let policy = portcullis_policy::Policy::load(&config.policy)?;
    env.shared.policy.store(Arc::new(policy));
    Ok(())
}

/// Creates the RLS-protected table and the unprivileged upstream role, points the
/// proxy at a copy of the quickstart policy with the native rule, maps support_acme to
/// that role, and waits for the catalog to know the table. Returns the role's name.
async fn prepare(env: &TestEnv) -> Result<String> {
    let role = format!("portcullis_tenant_{}", std::process::id());
    let db = direct(env).await?;
    db.batch_execute(&format!(
        "CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD '{password}';
         CREATE TABLE public.tickets (id int PRIMARY KEY, tenant_id int NOT NULL, subject text NOT NULL);
         INSERT INTO public.tickets VALUES
             (1, 1, 'acme printer'), (2, 1, 'acme vpn'), (3, 2, 'globex invoice'), (4, 3, 'initech tps');
         ALTER TABLE public.tickets ENABLE ROW LEVEL SECURITY;
         ALTER TABLE public.tickets FORCE ROW LEVEL SECURITY;
         CREATE POLICY tenant_isolation ON public.tickets
             USING (tenant_id = current_setting('app.tenant')::int);
         GRANT SELECT ON public.tickets TO {role};",
        password = env.pg_password.replace('\'', "''"),
    ))
    .await?;

    let policy_dir = env.dir().join("policy-native");
    std::fs::create_dir(&policy_dir)?;
    for file in [
        "model.conf",
        "policy.csv",
        "classification.toml",
        "rules.toml",
    ] {
        std::fs::copy(quickstart_dir().join(file), policy_dir.join(file))?;
    }
    let append = |file: &str, text: &str| -> Result<()> {
        let path = policy_dir.join(file);
        let mut content = std::fs::read_to_string(&path)?;
        content.push_str(text);
        std::fs::write(&path, content)?;
        Ok(())
    };
    append(
        "policy.csv",
        "\np, support, table:public.tickets, select, r.sub.tenant != \"\"\n",
    )?;
    append("rules.toml", NATIVE_RULE)?;

    load_policy(env, &policy_dir)?;

    let attributes = BTreeMap::from([("tenant".to_owned(), "1".to_owned())]);
    let support = NewUser {
        name: SUPPORT.0,
        roles: &["support".to_owned()],
        attributes: &attributes,
        expires_at: None,
        upstream_user: Some(&role),
    };
    add_user(
        &env.users_path,
        &support,
        &SUPPORT.1.to_owned().into(),
        true,
    )?;
    env.shared
        .users
        .store(Arc::new(UserStore::load(&env.users_path)?));

    env.shared.catalog_refresher.request_reload();
    let known = eventually(20, || async {
        env.shared
            .catalog
            .load()
            .relation("public", "tickets")
            .is_some()
    })
    .await;
    assert!(known, "the catalog never learned public.tickets");
    Ok(role)
}

/// Drops what [`prepare`] created (the role is the cluster's, not the test database's).
async fn clean_up(env: &TestEnv, role: &str) -> Result<()> {
    let db = direct(env).await?;
    let _ = db
        .batch_execute(&format!(
            "DROP TABLE public.tickets; DROP ROLE IF EXISTS {role}"
        ))
        .await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_rls_sets_the_tenant_and_refuses_changing_it() -> Result<()> {
    let env = TestEnv::start().await?;
    let role = prepare(&env).await?;

    let support = pg_connect(&env, SUPPORT).await?;
    // The database, not the proxy, filters: the statement reaches it unchanged, as a
    // role that neither owns the table nor bypasses row-level security.
    assert_eq!(
        rows(&support, "SELECT current_user").await?,
        [[role.clone()]]
    );
    assert_eq!(
        rows(&support, "SELECT current_setting('app.tenant')").await?,
        [["1"]]
    );
    let tenant_one = rows(&support, "SELECT id, tenant_id FROM tickets ORDER BY id").await?;
    assert_eq!(tenant_one, [["1", "1"], ["2", "1"]]);

    for attempt in [
        "SET app.tenant = '2'",
        "SET SESSION app.tenant TO 2",
        "BEGIN; SET LOCAL app.tenant = '2'; SELECT * FROM tickets; COMMIT",
        "SET \"APP.TENANT\" = '2'",
        "RESET app.tenant",
        "RESET ALL",
        "DISCARD ALL",
        "SELECT set_config('app.tenant', '2', false)",
        "SELECT pg_catalog.set_config('App.Tenant', '2', true)",
        "SELECT * FROM tickets WHERE set_config('app.tenant', '2', true) IS NOT NULL",
        "SELECT * FROM set_config('app.tenant', '2', false)",
    ] {
        let err = support.simple_query(attempt).await.expect_err(attempt);
        assert_eq!(
            err.code(),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{attempt}: {err}"
        );
        let message = err
            .as_db_error()
            .map(|e| e.message().to_owned())
            .unwrap_or_default();
        assert!(message.contains("app.tenant"), "{attempt}: {message}");
        assert!(message.contains("rules.toml:"), "{attempt}: {message}");
        // A refused transaction leaves the session in a failed block; leave it.
        let _ = support.simple_query("ROLLBACK").await;
    }
    // A computed setting name is refused too (already as a dangerous statement).
    let err = support
        .simple_query("SELECT set_config('app.' || 'tenant', '2', false)")
        .await
        .expect_err("set_config with a computed name");
    assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{err}");
    // A parameter as the name, in the extended protocol, is refused at Parse.
    let err = support
        .prepare("SELECT set_config($1, $2, false)")
        .await
        .expect_err("set_config with a parameter as name");
    assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{err}");
    // Other settings stay the client's.
    support.simple_query("SET statement_timeout = '5s'").await?;
    support.simple_query("RESET statement_timeout").await?;
    // Nothing changed.
    assert_eq!(
        rows(&support, "SELECT current_setting('app.tenant')").await?,
        [["1"]]
    );
    assert_eq!(
        rows(&support, "SELECT id, tenant_id FROM tickets ORDER BY id").await?,
        tenant_one
    );

    // admin: no native rule names it, so nothing is set and nothing is refused.
    let admin = pg_connect(&env, ADMIN).await?;
    assert_eq!(
        rows(&admin, "SELECT current_setting('app.tenant', true)").await?,
        [["NULL"]]
    );
    assert_eq!(rows(&admin, "SELECT count(*) FROM tickets").await?, [["4"]]);
    admin.simple_query("SET app.tenant = '2'").await?;
    admin
        .simple_query("SELECT set_config('app.tenant', '3', false)")
        .await?;
    admin.simple_query("RESET ALL").await?;

    clean_up(&env, &role).await
}

/// A reload that renders the native settings differently reaches open sessions at
/// their next batch outside a transaction (a transaction keeps the settings it began
/// with), in both protocols, without the client seeing the proxy's own query; a reload
/// that cannot render them for the identity ends the session instead of leaving the
/// old settings in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reaches_open_sessions_between_transactions() -> Result<()> {
    let env = TestEnv::start().await?;
    let role = prepare(&env).await?;
    let policy_dir = env.dir().join("policy-native");
    let rules = std::fs::read_to_string(policy_dir.join("rules.toml"))?;
    let reload_with = |value: &str| -> Result<()> {
        let changed = rules
            .replace(
                r#""app.tenant" = "${user.tenant}""#,
                &format!(r#""app.tenant" = "{value}""#),
            )
            .replace(
                "tenant = \"text\"",
                "tenant = \"text\"\ndepartment = \"text\"",
            );
        assert_ne!(changed, rules, "the native rule was not found");
        std::fs::write(policy_dir.join("rules.toml"), changed)?;
        load_policy(&env, &policy_dir)
    };

    let support = pg_connect(&env, SUPPORT).await?;
    let tickets = "SELECT id FROM tickets ORDER BY id";
    assert_eq!(rows(&support, tickets).await?, [["1"], ["2"]]);
    let statement = support.prepare(tickets).await?;

    support.simple_query("BEGIN").await?;
    assert_eq!(rows(&support, tickets).await?, [["1"], ["2"]]);
    reload_with("3")?;
    // Inside the transaction, nothing changes.
    assert_eq!(rows(&support, tickets).await?, [["1"], ["2"]]);
    assert_eq!(
        rows(&support, "SELECT current_setting('app.tenant')").await?,
        [["1"]]
    );
    support.simple_query("COMMIT").await?;
    // The next batch has the new settings, and its answer is only its own.
    let messages = support.simple_query(tickets).await?;
    let ids: Vec<&str> = messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0),
            _ => None,
        })
        .collect();
    assert_eq!(ids, ["4"]);
    assert_eq!(
        messages
            .iter()
            .filter(|m| matches!(m, SimpleQueryMessage::CommandComplete(_)))
            .count(),
        1,
        "{messages:?}"
    );
    // The extended protocol: a batch that starts with Parse/Bind picks it up too.
    reload_with("2")?;
    let ids: Vec<i32> = support
        .query(&statement, &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(ids, [3]);

    // A policy that cannot render the setting for this identity (it has no
    // department) ends the session.
    reload_with("${user.department}")?;
    let err = support
        .simple_query(tickets)
        .await
        .expect_err("the settings cannot be rendered");
    assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{err}");
    assert!(
        eventually(10, || async { support.is_closed() }).await,
        "the session stayed open with the old settings"
    );
    // And no new session gets in with it.
    let Err(err) = pg_connect(&env, SUPPORT).await else {
        panic!("a new session got in with settings the policy cannot render");
    };
    assert!(format!("{err:#}").contains("department"), "{err:#}");

    clean_up(&env, &role).await
}
