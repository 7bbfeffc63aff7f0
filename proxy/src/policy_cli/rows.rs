//! Running a forwarded text on the upstream for a fixture's `rows`: one session per
//! run of `policy test`, each text inside a transaction that is rolled back, so
//! fixtures never change the data.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use portcullis::pg::error::field;
use portcullis::pg::frame::{Framer, RawMessage};
use portcullis::pg::messages::{data_row, query, row_description};
use portcullis::stream::Stream;
use portcullis::upstream::Connector;

/// The largest message read from the upstream.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// The most rows kept per text: a fixture compares a handful.
const MAX_ROWS: usize = 10_000;
/// How long one text may run.
const TIMEOUT: Duration = Duration::from_secs(30);

/// How NULL is written in fixtures (as in `COPY ... TEXT`).
pub const NULL: &str = "\\N";

/// A session on the upstream, opened as the proxy opens a client's.
pub struct Runner {
    stream: Stream,
    framer: Framer,
}

/// What a forwarded text returned.
pub enum Outcome {
    /// The rows of every result set, in order, in text format.
    Rows(Vec<Vec<String>>),
    /// The server's error: SQLSTATE and message.
    Error(String, String),
}

impl Runner {
    /// Connects as `user` to `database` with `application_name = portcullis policy test`.
    pub async fn connect(
        connector: &Arc<Connector>,
        user: &str,
        database: &str,
    ) -> anyhow::Result<Runner> {
        let extra = BTreeMap::from([(
            "application_name".to_owned(),
            "portcullis policy test".to_owned(),
        )]);
        let (upstream, _cancel) = connector
            .connect(user, database, &extra)
            .await
            .with_context(|| format!("connecting to the upstream as {user} on {database}"))?;
        Ok(Runner {
            stream: upstream.stream,
            framer: Framer::with_buffer(upstream.leftover, MAX_MESSAGE),
        })
    }

    /// Runs `sql` between `BEGIN` and `ROLLBACK`.
    pub async fn run(&mut self, sql: &str) -> anyhow::Result<Outcome> {
        tokio::time::timeout(TIMEOUT, async {
            if let Outcome::Error(code, message) = self.simple("BEGIN").await? {
                bail!("BEGIN failed: {code} {message}");
            }
            let outcome = self.simple(sql).await?;
            // After an error the transaction is aborted; ROLLBACK ends it either way.
            if let Outcome::Error(code, message) = self.simple("ROLLBACK").await? {
                bail!("ROLLBACK failed: {code} {message}");
            }
            Ok(outcome)
        })
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {} seconds", TIMEOUT.as_secs()))?
    }

    /// One simple-protocol query, read up to ReadyForQuery.
    async fn simple(&mut self, sql: &str) -> anyhow::Result<Outcome> {
        let mut buf = BytesMut::new();
        query::encode(sql, &mut buf);
        self.stream.write_all(&buf).await?;
        self.stream.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let msg = self.next().await?;
            match msg.tag {
                b'T' => {
                    if row_description::decode(msg.body())?
                        .iter()
                        .any(|f| f.format != 0)
                    {
                        bail!("binary column in a text-format result");
                    }
                }
                b'D' => {
                    if rows.len() >= MAX_ROWS {
                        bail!("more than {MAX_ROWS} rows");
                    }
                    let values = data_row::decode_text(msg.body())?;
                    rows.push(
                        values
                            .into_iter()
                            .map(|v| v.unwrap_or(NULL).to_owned())
                            .collect(),
                    );
                }
                b'E' => {
                    let text = |code| {
                        field(msg.body(), code)
                            .map(String::from_utf8_lossy)
                            .unwrap_or_default()
                            .into_owned()
                    };
                    error = Some((text(b'C'), text(b'M')));
                }
                b'Z' => break,
                // CommandComplete, EmptyQueryResponse, notices, parameter changes,
                // notifications, COPY is not expected of a fixture.
                b'C' | b'I' | b'N' | b'S' | b'A' => {}
                other => bail!("unexpected message {:?} from the upstream", other as char),
            }
        }
        Ok(match error {
            Some((code, message)) => Outcome::Error(code, message),
            None => Outcome::Rows(rows),
        })
    }

    async fn next(&mut self) -> anyhow::Result<RawMessage> {
        self.framer
            .next(&mut self.stream)
            .await?
            .context("the upstream closed the connection")
    }

    /// Says goodbye so the server does not log an unexpected EOF.
    pub async fn close(mut self) {
        let _ = self.stream.write_all(&[b'X', 0, 0, 0, 4]).await;
        let _ = self.stream.shutdown().await;
    }
}
