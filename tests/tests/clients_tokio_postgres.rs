//! tokio-postgres through the proxy over TLS with SCRAM channel binding: the extended
//! protocol with binary parameters and results, portals with row limits, COPY in both
//! directions, CancelRequest, LISTEN/NOTIFY, pipelining, and a large streamed result.
//!
//! Every data-bearing answer is compared with what the same call returns on a direct
//! connection to the database.

use std::pin::pin;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use portcullis_tests::{ADMIN, ANALYST, SUPPORT, TestEnv, client_tls};
use tokio::sync::mpsc;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::config::{ChannelBinding, SslMode};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{AsyncMessage, Client, Config, NoTls, Row};
use tokio_postgres_rustls::MakeRustlsConnect;

/// TLS that trusts only the proxy's certificate.
fn tls(env: &TestEnv) -> Result<MakeRustlsConnect> {
    Ok(MakeRustlsConnect::new(client_tls(&env.cert_path)?))
}

/// Proxy connection settings: verified TLS, SCRAM with channel binding required.
fn proxy_config(env: &TestEnv, (user, password): (&str, &str)) -> Config {
    let mut config = Config::new();
    config
        .host(env.proxy_addr.ip().to_string())
        .port(env.proxy_addr.port())
        .dbname(&env.database)
        .user(user)
        .password(password)
        .ssl_mode(SslMode::Require)
        .channel_binding(ChannelBinding::Require)
        .application_name("clients_tokio_postgres");
    config
}

/// A client through the proxy whose connection is driven in the background.
async fn proxy(env: &TestEnv, who: (&str, &str)) -> Result<Client> {
    let (client, connection) = proxy_config(env, who).connect(tls(env)?).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// A client straight to the database, as superuser.
async fn direct(env: &TestEnv) -> Result<Client> {
    let config: Config = env.direct_dsn().parse()?;
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Every column of a row, decoded from binary by its type, as `name=value`.
fn render(row: &Row) -> Result<Vec<String>> {
    let mut out = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let ty = column.type_();
        let value = match *ty {
            Type::BOOL => format!("{:?}", row.try_get::<_, Option<bool>>(i)?),
            Type::INT2 => format!("{:?}", row.try_get::<_, Option<i16>>(i)?),
            Type::INT4 => format!("{:?}", row.try_get::<_, Option<i32>>(i)?),
            Type::INT8 => format!("{:?}", row.try_get::<_, Option<i64>>(i)?),
            Type::FLOAT4 => format!("{:?}", row.try_get::<_, Option<f32>>(i)?),
            Type::FLOAT8 => format!("{:?}", row.try_get::<_, Option<f64>>(i)?),
            Type::TEXT | Type::VARCHAR | Type::NAME => {
                format!("{:?}", row.try_get::<_, Option<String>>(i)?)
            }
            Type::BYTEA => format!("{:?}", row.try_get::<_, Option<Vec<u8>>>(i)?),
            Type::DATE => format!("{:?}", row.try_get::<_, Option<time::Date>>(i)?),
            Type::TIMESTAMPTZ => {
                format!("{:?}", row.try_get::<_, Option<time::OffsetDateTime>>(i)?)
            }
            Type::INT4_ARRAY => format!("{:?}", row.try_get::<_, Option<Vec<Option<i32>>>>(i)?),
            Type::INT8_ARRAY => format!("{:?}", row.try_get::<_, Option<Vec<Option<i64>>>>(i)?),
            Type::TEXT_ARRAY => format!("{:?}", row.try_get::<_, Option<Vec<Option<String>>>>(i)?),
            Type::JSONB | Type::JSON => {
                format!("{:?}", row.try_get::<_, Option<serde_json::Value>>(i)?)
            }
            _ => bail!(
                "column {} has type {ty}, which render() does not decode",
                column.name()
            ),
        };
        out.push(format!("{}={value}", column.name()));
    }
    Ok(out)
}

fn render_all(rows: &[Row]) -> Result<Vec<Vec<String>>> {
    rows.iter().map(render).collect()
}

fn sqlstate(err: &tokio_postgres::Error) -> Option<&str> {
    err.code().map(SqlState::code)
}

const ECHO: &str = "SELECT $1::int2 AS i2, $2::int4 AS i4, $3::int8 AS i8, $4::float4 AS f4, \
     $5::float8 AS f8, $6::float8 AS f8_special, $7::text AS t, $8::bytea AS b, $9::bool AS bo, \
     $10::date AS d, $11::timestamptz AS ts, $12::int4[] AS arr, $13::text AS null_text, \
     $14::jsonb AS j, $15::int8 AS null_int, $16::text[] AS texts";

const ORDERS: &str = "SELECT o.id, o.customer_id, o.tenant_id, o.total::text AS total, o.status, \
     o.created_at, c.birth_date, c.email \
     FROM orders o JOIN customers c ON c.id = o.customer_id \
     WHERE o.tenant_id = $1 AND o.total > $2::text::numeric AND o.status = ANY($3) \
     ORDER BY o.id LIMIT $4";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_parameters_and_results_match_direct() -> Result<()> {
    let env = TestEnv::start().await?;
    let proxied = proxy(&env, ADMIN).await?;
    let straight = direct(&env).await?;

    let bytes: Vec<u8> = (0..=255).collect();
    let date = time::Date::from_calendar_date(2024, time::Month::February, 29)?;
    let ts = time::PrimitiveDateTime::new(
        time::Date::from_calendar_date(2025, time::Month::June, 30)?,
        time::Time::from_hms_micro(23, 59, 58, 123_456)?,
    )
    .assume_offset(time::UtcOffset::from_hms(2, 0, 0)?);
    let json = serde_json::json!({"a": [1, 2.5, {"b": null}], "ünï": "cödé"});
    let params: [&(dyn ToSql + Sync); 16] = [
        &i16::MIN,
        &i32::MAX,
        &i64::MIN,
        &1.5f32,
        &-0.1f64,
        &f64::NEG_INFINITY,
        &"héllo ✓ 'quoted' \"double\" \\ $1",
        &bytes,
        &true,
        &date,
        &ts,
        &vec![Some(1i32), None, Some(i32::MIN)],
        &None::<&str>,
        &json,
        &None::<i64>,
        &vec!["a,b", "{c}", ""],
    ];
    let statement = proxied.prepare(ECHO).await?;
    assert_eq!(statement.params().len(), 16);
    let rows = proxied.query(&statement, &params).await?;
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    // The values survive the round trip exactly...
    assert_eq!(row.get::<_, i16>("i2"), i16::MIN);
    assert_eq!(row.get::<_, i64>("i8"), i64::MIN);
    assert_eq!(row.get::<_, f64>("f8").to_bits(), (-0.1f64).to_bits());
    assert_eq!(row.get::<_, &str>("t"), "héllo ✓ 'quoted' \"double\" \\ $1");
    assert_eq!(row.get::<_, Vec<u8>>("b"), bytes);
    assert_eq!(row.get::<_, time::OffsetDateTime>("ts"), ts);
    assert_eq!(row.get::<_, Option<String>>("null_text"), None);
    assert_eq!(row.get::<_, serde_json::Value>("j"), json);
    // ...and the whole row is what the database gives directly.
    let expected = straight.query(ECHO, &params).await?;
    assert_eq!(render_all(&rows)?, render_all(&expected)?);
    assert_eq!(
        statement
            .columns()
            .iter()
            .map(|c| c.type_().clone())
            .collect::<Vec<_>>(),
        expected[0]
            .columns()
            .iter()
            .map(|c| c.type_().clone())
            .collect::<Vec<_>>(),
    );

    // A prepared statement over the real tables, executed several times with new values.
    let orders = proxied.prepare(ORDERS).await?;
    let mut seen = 0;
    for (tenant, min_total, statuses, limit) in [
        (1i32, "100.00", vec!["paid", "shipped"], 40i64),
        (2, "0", vec!["pending"], 25),
        (3, "250.5", vec!["cancelled", "refunded", "paid"], 1000),
        (9, "0", vec!["paid"], 10),
    ] {
        let args: [&(dyn ToSql + Sync); 4] = [&tenant, &min_total, &statuses, &limit];
        let got = render_all(&proxied.query(&orders, &args).await?)?;
        let want = render_all(&straight.query(ORDERS, &args).await?)?;
        assert_eq!(got, want, "tenant {tenant}");
        seen += got.len();
    }
    assert!(
        seen > 50,
        "the comparisons should cover real rows, saw {seen}"
    );

    // Arrays coming back, and NULL-bearing rows, through the unnamed statement.
    let agg = "SELECT tenant_id, array_agg(id ORDER BY id) AS ids, \
               array_agg(CASE WHEN id % 7 = 0 THEN NULL ELSE status END ORDER BY id) AS statuses \
               FROM orders WHERE id <= $1 GROUP BY tenant_id ORDER BY tenant_id";
    let got = render_all(&proxied.query(agg, &[&60i64]).await?)?;
    let want = render_all(&straight.query(agg, &[&60i64]).await?)?;
    assert_eq!(got, want);
    assert!(got.iter().any(|row| row[2].contains("None")), "{got:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_with_row_limit_suspends_and_resumes() -> Result<()> {
    let env = TestEnv::start().await?;
    let mut proxied = proxy(&env, ADMIN).await?;
    let mut straight = direct(&env).await?;
    let sql = "SELECT id, customer_id, total::text AS total, created_at FROM orders WHERE customer_id <= $1 ORDER BY id";

    let mut results = Vec::new();
    for client in [&mut proxied, &mut straight] {
        let tx = client.transaction().await?;
        let portal = tx.bind(sql, &[&20i64]).await?;
        let mut batches = Vec::new();
        let mut rows = Vec::new();
        // Execute with a row limit: PortalSuspended after each full batch, then
        // CommandComplete, then (executing a finished portal) no rows.
        loop {
            let batch = tx.query_portal(&portal, 10).await?;
            batches.push(batch.len());
            if batch.is_empty() {
                break;
            }
            rows.extend(render_all(&batch)?);
        }
        tx.commit().await?;
        results.push((batches, rows));
    }
    let (proxied_batches, proxied_rows) = &results[0];
    let (direct_batches, direct_rows) = &results[1];
    assert!(proxied_batches.len() > 3, "{proxied_batches:?}");
    assert!(
        proxied_batches[..proxied_batches.len() - 2]
            .iter()
            .all(|n| *n == 10),
        "{proxied_batches:?}"
    );
    assert_eq!(proxied_batches, direct_batches);
    assert_eq!(proxied_rows, direct_rows);

    // Two portals open at once in one transaction, read alternately.
    let tx = proxied.transaction().await?;
    let evens = tx
        .bind("SELECT g FROM generate_series(2, 40, 2) g", &[])
        .await?;
    let odds = tx
        .bind("SELECT g FROM generate_series(1, 39, 2) g", &[])
        .await?;
    let mut merged = Vec::new();
    for _ in 0..4 {
        for portal in [&odds, &evens] {
            merged.extend(
                tx.query_portal(portal, 5)
                    .await?
                    .iter()
                    .map(|r| r.get::<_, i32>(0)),
            );
        }
    }
    tx.rollback().await?;
    let expected: Vec<i32> = (0..4)
        .flat_map(|chunk| {
            let odd = (0..5).map(move |k| 1 + 2 * (chunk * 5 + k));
            let even = (0..5).map(move |k| 2 + 2 * (chunk * 5 + k));
            odd.chain(even)
        })
        .collect();
    assert_eq!(merged, expected);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_match_direct_bytes() -> Result<()> {
    let env = TestEnv::start().await?;
    let proxied = proxy(&env, ADMIN).await?;
    let straight = direct(&env).await?;

    // COPY OUT, text and binary: byte-identical to the direct stream.
    for sql in [
        "COPY customers TO STDOUT",
        "COPY (SELECT * FROM orders ORDER BY id) TO STDOUT (FORMAT binary)",
        "COPY orders TO STDOUT (FORMAT csv, HEADER true)",
    ] {
        let got = copy_out(&proxied, sql).await?;
        let want = copy_out(&straight, sql).await?;
        assert!(got.len() > 10_000, "{sql}: {} bytes", got.len());
        assert!(
            got == want,
            "{sql}: {} bytes through the proxy, {} direct",
            got.len(),
            want.len()
        );
    }

    proxied
        .batch_execute("CREATE TABLE copy_text (id int PRIMARY KEY, note text, amount numeric(12,2)); \
                        CREATE TABLE copy_bin (id int PRIMARY KEY, note text, seen timestamptz, tags int4[])")
        .await?;

    // COPY IN (text), in uneven chunks that split rows and exceed the proxy's read
    // size. The input is in the server's canonical text form (escaped tab and
    // backslash, \N), so the table copied out directly must equal it byte for byte.
    let mut input = Vec::new();
    for i in 0..20_000 {
        let note = if i % 11 == 0 {
            r"\N".to_owned()
        } else {
            format!(r"row\t{i} with \\ and ünïcödé")
        };
        input.extend_from_slice(format!("{i}\t{note}\t{}.{:02}\n", i * 3, i % 100).as_bytes());
    }
    let sink = proxied
        .copy_in::<_, Bytes>("COPY copy_text FROM STDIN")
        .await?;
    let mut sink = pin!(sink);
    for chunk in input.chunks(7_919) {
        sink.send(Bytes::copy_from_slice(chunk)).await?;
    }
    assert_eq!(sink.as_mut().finish().await?, 20_000);
    let back = copy_out(&straight, "COPY copy_text TO STDOUT").await?;
    assert!(back == input, "COPY IN through the proxy changed the data");
    let nulls: i64 = straight
        .query_one("SELECT count(*) FROM copy_text WHERE note IS NULL", &[])
        .await?
        .get(0);
    assert_eq!(nulls, 20_000 / 11 + 1);

    // COPY IN (binary) with tokio-postgres's encoder.
    let sink = proxied
        .copy_in("COPY copy_bin FROM STDIN (FORMAT binary)")
        .await?;
    let writer = BinaryCopyInWriter::new(
        sink,
        &[Type::INT4, Type::TEXT, Type::TIMESTAMPTZ, Type::INT4_ARRAY],
    );
    let mut writer = pin!(writer);
    let base = time::Date::from_calendar_date(2026, time::Month::January, 1)?
        .midnight()
        .assume_utc();
    for i in 0..5_000i32 {
        let note = (i % 3 != 0).then(|| format!("n{i}"));
        let seen = base + time::Duration::seconds(i64::from(i) * 97);
        let tags = vec![i, -i, i * 2];
        writer.as_mut().write(&[&i, &note, &seen, &tags]).await?;
    }
    assert_eq!(writer.as_mut().finish().await?, 5_000);
    let got = copy_out(
        &proxied,
        "COPY (SELECT * FROM copy_bin ORDER BY id) TO STDOUT (FORMAT binary)",
    )
    .await?;
    let want = copy_out(
        &straight,
        "COPY (SELECT * FROM copy_bin ORDER BY id) TO STDOUT (FORMAT binary)",
    )
    .await?;
    assert!(got == want);
    let check: i64 = straight
        .query_one(
            "SELECT sum(id + tags[3]) FROM copy_bin WHERE note IS NULL",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(
        check,
        (0..5_000i64)
            .filter(|i| i % 3 == 0)
            .map(|i| 3 * i)
            .sum::<i64>()
    );

    // An abandoned COPY IN (CopyFail): nothing is loaded and the session goes on.
    {
        let sink = proxied
            .copy_in::<_, Bytes>("COPY copy_text FROM STDIN")
            .await?;
        let mut sink = pin!(sink);
        sink.send(Bytes::from_static(b"900001\tlost\t1.00\n"))
            .await?;
        // Dropped without finish(): tokio-postgres sends CopyFail.
    }
    let after: i64 = proxied
        .query_one("SELECT count(*) FROM copy_text", &[])
        .await?
        .get(0);
    assert_eq!(after, 20_000);
    Ok(())
}

async fn copy_out(client: &Client, sql: &str) -> Result<Vec<u8>> {
    let stream = client.copy_out(sql).await?;
    let chunks: Vec<Bytes> = stream.try_collect().await?;
    Ok(chunks.concat())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_reaches_the_running_statement() -> Result<()> {
    let env = TestEnv::start().await?;
    let client = proxy(&env, ANALYST).await?;
    let straight = direct(&env).await?;
    let token = client.cancel_token();

    let sleeper = tokio::spawn(async move {
        let result = client.query("SELECT pg_sleep(30)", &[]).await.map(|_| ());
        (client, result)
    });
    // Cancel only once the statement sleeps upstream, or the cancel could arrive first.
    // Not `state = 'active'`: the backend is active, then idle, while tokio-postgres
    // prepares the statement before it binds and executes it.
    let running = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30)%' \
                   AND wait_event = 'PgSleep' AND pid <> pg_backend_pid()";
    let mut sleeping = 0;
    for _ in 0..200 {
        sleeping = straight.query_one(running, &[]).await?.get::<_, i64>(0);
        if sleeping == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(sleeping, 1, "pg_sleep never started");

    // The CancelRequest goes over its own TLS connection to the proxy.
    token.cancel_query(tls(&env)?).await?;
    // If the cancel were lost, the sleep would take 30 s; this bound only catches that.
    let (client, result) = tokio::time::timeout(Duration::from_secs(20), sleeper)
        .await
        .context("the cancelled statement did not end")??;
    let err = result
        .err()
        .context("pg_sleep(30) finished although cancelled")?;
    assert_eq!(sqlstate(&err), Some("57014"), "{err}");
    let message = err
        .as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_default();
    assert_eq!(message, "canceling statement due to user request");

    // The session survives the cancel.
    let one: i32 = client.query_one("SELECT 1", &[]).await?.get(0);
    assert_eq!(one, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_and_notices_are_delivered() -> Result<()> {
    let env = TestEnv::start().await?;
    let (listener, mut connection) = proxy_config(&env, ANALYST).connect(tls(&env)?).await?;
    let (tx, mut rx) = mpsc::channel::<AsyncMessage>(16);
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(m) => {
                    if tx.send(m).await.is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    });
    listener.batch_execute("LISTEN portcullis_events").await?;

    let notifier = proxy(&env, SUPPORT).await?;
    notifier
        .batch_execute("NOTIFY portcullis_events, 'payload from a proxied session'")
        .await?;
    let straight = direct(&env).await?;
    straight
        .batch_execute("NOTIFY portcullis_events, 'payload from a direct session'")
        .await?;
    straight
        .batch_execute("NOTIFY other_channel, 'not for us'")
        .await?;

    let mut payloads = Vec::new();
    while payloads.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .context("notification not delivered")?
            .context("listener connection ended")?;
        if let AsyncMessage::Notification(n) = message {
            assert_eq!(n.channel(), "portcullis_events");
            payloads.push(n.payload().to_owned());
        }
    }
    assert_eq!(
        payloads,
        [
            "payload from a proxied session",
            "payload from a direct session"
        ]
    );

    // A WARNING (NoticeResponse) for a statement the proxy parsed and allowed.
    listener.batch_execute("ROLLBACK").await?;
    let notice = loop {
        let message = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .context("notice not delivered")?
            .context("listener connection ended")?;
        match message {
            AsyncMessage::Notice(notice) => break notice,
            AsyncMessage::Notification(n) => bail!("unexpected notification on {}", n.channel()),
            _ => {}
        }
    };
    assert_eq!(notice.code(), &SqlState::NO_ACTIVE_SQL_TRANSACTION);
    assert_eq!(notice.severity(), "WARNING");
    assert_eq!(notice.message(), "there is no transaction in progress");
    drop(listener);
    driver.await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_statements_with_denials_and_errors_in_the_middle() -> Result<()> {
    let env = TestEnv::start().await?;
    let client = proxy(&env, ANALYST).await?;

    // tokio-postgres pipelines concurrent calls on one connection: all Parse/Bind/
    // Execute/Sync batches are written before the first answer is read.
    let queries = (0..20).map(|i| {
        let client = &client;
        async move {
            if i % 5 == 2 {
                client
                    .execute("DELETE FROM orders WHERE id = $1", &[&i64::from(i)])
                    .await
                    .map(|_| -1)
            } else if i % 5 == 4 {
                // A server-side error next to the proxy's denials.
                client
                    .query_one("SELECT $1::int4 / 0", &[&i])
                    .await
                    .map(|row| row.get::<_, i32>(0))
            } else {
                client
                    .query_one(
                        "SELECT $1::int4 * 2 + count(*)::int4 FROM tenants WHERE id < 0",
                        &[&i],
                    )
                    .await
                    .map(|row| row.get::<_, i32>(0))
            }
        }
    });
    let results = futures_util::future::join_all(queries).await;
    for (i, result) in results.into_iter().enumerate() {
        let i = i32::try_from(i)?;
        match result {
            Ok(value) => {
                assert!(i % 5 != 2 && i % 5 != 4, "statement {i} should have failed");
                assert_eq!(value, i * 2, "statement {i}");
            }
            Err(err) if i % 5 == 4 => {
                assert_eq!(sqlstate(&err), Some("22012"), "{err}");
            }
            Err(err) => {
                assert_eq!(i % 5, 2, "statement {i} failed: {err}");
                assert_eq!(sqlstate(&err), Some("42501"), "{err}");
                let message = err
                    .as_db_error()
                    .map(|e| e.message().to_owned())
                    .unwrap_or_default();
                assert!(
                    message.contains("may not run write statements (DELETE)"),
                    "{message}"
                );
            }
        }
    }
    let straight = direct(&env).await?;
    let orders: i64 = straight
        .query_one("SELECT count(*) FROM orders", &[])
        .await?
        .get(0);
    assert_eq!(orders, 1500);
    Ok(())
}

/// Peak resident set size of this process (the proxy runs inside it), in bytes.
fn peak_rss() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM")?;
    let kb: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn million_row_result_streams_in_bounded_memory() -> Result<()> {
    const ROWS: i64 = 1_000_000;
    let env = TestEnv::start().await?;
    let client = proxy(&env, ANALYST).await?;
    // Warm up the session, the TLS buffers and the policy cache first.
    client
        .query(
            "SELECT g, repeat('x', 100) FROM generate_series(1, 1000) g",
            &[],
        )
        .await?;
    let before = peak_rss()?;

    let stream = client
        .query_raw(
            "SELECT g, repeat('x', 100) FROM generate_series(1, 1000000) g",
            Vec::<i32>::new(),
        )
        .await?;
    let mut stream = pin!(stream);
    let (mut rows, mut sum, mut bytes) = (0i64, 0i64, 0usize);
    while let Some(row) = stream.try_next().await? {
        if rows == 1_000 {
            // A slow reader: the server keeps producing meanwhile, and only
            // backpressure through the proxy keeps those bytes out of its memory.
            tokio::time::sleep(Duration::from_millis(1_500)).await;
        }
        rows += 1;
        sum += i64::from(row.get::<_, i32>(0));
        bytes += row.get::<_, &str>(1).len();
    }
    let growth = peak_rss()?.saturating_sub(before);
    eprintln!(
        "peak RSS before {} MiB, growth {} KiB",
        before >> 20,
        growth >> 10
    );

    let straight = direct(&env).await?;
    let want = straight
        .query_one("SELECT count(*), sum(g)::int8, sum(length(repeat('x', 100)))::int8 FROM generate_series(1, 1000000) g", &[])
        .await?;
    assert_eq!(rows, want.get::<_, i64>(0));
    assert_eq!(rows, ROWS);
    assert_eq!(sum, want.get::<_, i64>(1));
    assert_eq!(i64::try_from(bytes)?, want.get::<_, i64>(2));
    // About 110 MB crossed the proxy; neither it nor the client may have held it.
    assert!(
        growth < 64 * 1024 * 1024,
        "peak RSS grew by {} MiB while streaming",
        growth >> 20
    );
    Ok(())
}
