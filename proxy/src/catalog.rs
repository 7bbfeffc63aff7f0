//! The proxy's catalog snapshot of the upstream database: which relations, columns and
//! functions exist, so the policy can resolve the names a statement uses.
//!
//! [`CatalogLoader`] reads one snapshot over its own upstream session, opened with the
//! configured upstream credentials (`[upstream]`) on the catalog's database: it installs
//! the support functions ([`SUPPORT_SQL`]) when asked, then runs
//! [`Catalog::QUERY_RELATIONS`] and [`Catalog::QUERY_FUNCTIONS`] in one read-only
//! repeatable-read transaction with the simple query protocol and decodes the text rows
//! strictly and within a byte budget. [`refresh`] keeps the snapshot in
//! [`Shared::catalog`](crate::server::Shared::catalog) current: one background task,
//! woken after DDL and on SIGHUP, retrying while loads fail.
//!
//! Until a first load succeeds the snapshot is empty, and an empty snapshot makes the
//! policy refuse every relation outside the system schemas: the proxy fails closed.

pub mod refresh;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use portcullis_policy::Catalog;
use portcullis_policy::catalog::RelationRow;
use portcullis_policy::support::{SUPPORT_SCHEMA, SUPPORT_SQL};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tracing::{info, warn};

use crate::config::{CatalogConfig, UpstreamConfig};
use crate::pg::error::field_text;
use crate::pg::messages::{DecodeError, data_row, query, row_description};
use crate::pg::{FrameError, Framer, RawMessage};
use crate::upstream::{Connector, UpstreamError};

pub use refresh::{Refresher, changes_schema};

/// Largest single message accepted on the catalog connection. Catalog rows hold names
/// and type names, far below this; anything larger means a broken stream.
const MAX_MESSAGE: usize = 1024 * 1024;

/// `application_name` of the catalog connection, so operators can tell it apart from
/// client sessions in `pg_stat_activity`.
const APPLICATION_NAME: &str = "portcullis-catalog";

/// `search_path` of the catalog connection. The catalog queries call functions and
/// operators by unqualified name (`format_type`, `=`); with a role or database default
/// that searched a user-writable schema before `pg_catalog`, a user could shadow them
/// and run code as the proxy's upstream user. `pg_temp` last, for the same reason.
const SEARCH_PATH: &str = "pg_catalog, pg_temp";

/// Columns of [`Catalog::QUERY_RELATIONS`]'s result.
const RELATION_COLUMNS: usize = 6;
/// Columns of [`Catalog::QUERY_FUNCTIONS`]'s result.
const FUNCTION_COLUMNS: usize = 2;

/// Why a catalog snapshot could not be loaded. These are for the operator's log and
/// metrics only; no client ever sees them.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The catalog connection could not be opened or authenticated.
    #[error("catalog connection: {0}")]
    Upstream(#[from] UpstreamError),
    /// The server answered a catalog query with an ErrorResponse.
    #[error("upstream refused the catalog query: {code} {message}")]
    Query {
        /// Its SQLSTATE.
        code: String,
        /// Its message.
        message: String,
    },
    /// The server's answer did not have the shape the catalog queries produce.
    #[error("catalog connection: {0}")]
    Protocol(String),
    /// A message body could not be decoded.
    #[error("catalog connection: {0}")]
    Decode(#[from] DecodeError),
    /// The message stream could not be framed (or a message was over the limit).
    #[error("catalog connection: {0}")]
    Frame(#[from] FrameError),
    /// The rows exceed `catalog.max_bytes`.
    #[error("the catalog is larger than catalog.max_bytes ({max} bytes)")]
    TooLarge {
        /// The configured limit.
        max: usize,
    },
    /// The load took longer than `catalog.load_timeout_secs`.
    #[error("catalog load did not finish within {0:?}")]
    Timeout(Duration),
    /// The server closed the connection before answering.
    #[error("the server closed the catalog connection")]
    Closed,
    /// Socket error after connecting.
    #[error("catalog connection: {0}")]
    Io(#[from] std::io::Error),
}

/// What became of the support SQL during a load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Not run: not asked for, or `catalog.install_support = false`.
    NotRun,
    /// The `portcullis` schema and its functions are in place.
    Installed,
    /// The server refused it (logged as a warning); the catalog was loaded anyway.
    Refused,
}

/// A freshly loaded snapshot.
#[derive(Debug)]
pub struct Loaded {
    /// The snapshot.
    pub catalog: Catalog,
    /// Whether the support SQL ran.
    pub support: Support,
}

/// Reads catalog snapshots from the upstream, one dedicated session per load.
///
/// It connects as the configured upstream user (`upstream.user`, never a client's own
/// `upstream_user`) to `upstream.database`, else `catalog.database`, else the database
/// named like that user. It refuses (with a [`CatalogError`]) answers of the wrong
/// shape, binary columns, NULLs where names must be, invalid UTF-8, messages over 1 MiB
/// and catalogs over `catalog.max_bytes`, and gives up after `catalog.load_timeout_secs`.
pub struct CatalogLoader {
    connector: Arc<Connector>,
    database: String,
    install_support: bool,
    timeout: Duration,
    max_bytes: usize,
}

impl CatalogLoader {
    /// A loader using `connector` (the one sessions use) with the catalog settings.
    pub fn new(
        connector: Arc<Connector>,
        upstream: &UpstreamConfig,
        config: &CatalogConfig,
    ) -> Self {
        let database = upstream
            .database
            .clone()
            .or_else(|| config.database.clone())
            .unwrap_or_else(|| upstream.user.clone());
        Self {
            connector,
            database,
            install_support: config.install_support,
            timeout: Duration::from_secs(config.load_timeout_secs.max(1)),
            max_bytes: config.max_bytes,
        }
    }

    /// The database whose catalog is read.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// Opens a session, runs the support SQL if `install_support` (and the
    /// configuration allows it), reads the snapshot and closes the session. A refused
    /// support SQL is a warning, not an error: the upstream user may lack CREATE rights.
    pub async fn load(&self, install_support: bool) -> Result<Loaded, CatalogError> {
        let install = install_support && self.install_support;
        let work = async {
            let extra = BTreeMap::from([
                ("application_name".to_owned(), APPLICATION_NAME.to_owned()),
                ("search_path".to_owned(), SEARCH_PATH.to_owned()),
            ]);
            let (upstream, _cancel) = self
                .connector
                .connect(self.connector.default_user(), &self.database, &extra)
                .await?;
            let mut conn = Connection::new(upstream.stream, upstream.leftover, self.max_bytes);
            let result = conn.load(install).await;
            conn.terminate().await;
            result
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| CatalogError::Timeout(self.timeout))?
    }
}

/// The query that reads the snapshot: both catalog queries in one read-only
/// repeatable-read transaction, so relations and functions come from one moment.
fn snapshot_sql() -> String {
    format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; {}; {}; COMMIT",
        Catalog::QUERY_RELATIONS,
        Catalog::QUERY_FUNCTIONS
    )
}

/// One simple-protocol conversation on the catalog session.
struct Connection<S> {
    stream: S,
    framer: Framer,
    /// Bytes of rows still allowed.
    budget: usize,
    max_bytes: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    fn new(stream: S, leftover: BytesMut, max_bytes: usize) -> Self {
        Self {
            stream,
            framer: Framer::with_buffer(leftover, MAX_MESSAGE),
            budget: max_bytes,
            max_bytes,
        }
    }

    async fn load(&mut self, install_support: bool) -> Result<Loaded, CatalogError> {
        let support = if install_support {
            self.install_support().await?
        } else {
            Support::NotRun
        };
        let catalog = self.read_snapshot().await?;
        Ok(Loaded { catalog, support })
    }

    /// Runs [`SUPPORT_SQL`]; a refusal is logged and reported, not an error.
    async fn install_support(&mut self) -> Result<Support, CatalogError> {
        self.send_query(SUPPORT_SQL).await?;
        let mut refused = None;
        loop {
            let msg = self.next().await?;
            match msg.tag {
                // CommandComplete per statement; EmptyQueryResponse cannot happen but
                // is harmless.
                b'C' | b'I' => {}
                b'E' => refused = Some(server_error(msg.body())),
                b'Z' => break,
                other => return Err(unexpected(other, "the support SQL")),
            }
        }
        Ok(match refused {
            None => {
                info!(schema = SUPPORT_SCHEMA, "support functions installed");
                Support::Installed
            }
            Some(CatalogError::Query { code, message }) => {
                warn!(
                    schema = SUPPORT_SCHEMA,
                    %code,
                    %message,
                    "could not install the support functions; rewritten writes fail until \
                     they exist (install them as a user with CREATE rights, then send SIGHUP)"
                );
                Support::Refused
            }
            Some(other) => return Err(other),
        })
    }

    /// Runs the snapshot query and builds the catalog from its two result sets.
    async fn read_snapshot(&mut self) -> Result<Catalog, CatalogError> {
        self.send_query(&snapshot_sql()).await?;
        self.expect_complete("BEGIN").await?;
        let mut relations = Vec::new();
        self.read_rows(
            RELATION_COLUMNS,
            std::mem::size_of::<RelationRow>(),
            |values| {
                relations.push(relation_row(values)?);
                Ok(())
            },
        )
        .await?;
        let mut functions = Vec::new();
        self.read_rows(
            FUNCTION_COLUMNS,
            std::mem::size_of::<(String, String)>(),
            |values| {
                functions.push(function_row(values)?);
                Ok(())
            },
        )
        .await?;
        self.expect_complete("COMMIT").await?;
        let msg = self.answer().await?;
        if msg.tag != b'Z' {
            return Err(unexpected(msg.tag, "the end of the snapshot query"));
        }
        Ok(Catalog::from_rows(relations, functions))
    }

    /// Reads one result set of `columns` text columns: RowDescription, DataRows (each
    /// handed to `row` and charged its size plus `overhead` against the budget),
    /// CommandComplete.
    async fn read_rows(
        &mut self,
        columns: usize,
        overhead: usize,
        mut row: impl FnMut(&[Option<&str>]) -> Result<(), CatalogError>,
    ) -> Result<(), CatalogError> {
        let msg = self.answer().await?;
        if msg.tag != b'T' {
            return Err(unexpected(msg.tag, "a RowDescription"));
        }
        let fields = row_description::decode(msg.body())?;
        if fields.len() != columns {
            return Err(CatalogError::Protocol(format!(
                "expected {columns} columns, the server described {}",
                fields.len()
            )));
        }
        if fields.iter().any(|f| f.format != 0) {
            return Err(CatalogError::Protocol(
                "binary column in a text-format result".into(),
            ));
        }
        loop {
            let msg = self.answer().await?;
            match msg.tag {
                b'D' => {
                    self.budget = self.budget.checked_sub(msg.raw.len() + overhead).ok_or(
                        CatalogError::TooLarge {
                            max: self.max_bytes,
                        },
                    )?;
                    let values = data_row::decode_text(msg.body())?;
                    if values.len() != columns {
                        return Err(CatalogError::Protocol(format!(
                            "row of {} values in a result of {columns} columns",
                            values.len()
                        )));
                    }
                    row(&values)?;
                }
                b'C' => return Ok(()),
                other => return Err(unexpected(other, "a DataRow or CommandComplete")),
            }
        }
    }

    /// Expects a CommandComplete whose tag is `tag`.
    async fn expect_complete(&mut self, tag: &str) -> Result<(), CatalogError> {
        let msg = self.answer().await?;
        if msg.tag != b'C' {
            return Err(unexpected(msg.tag, tag));
        }
        let got = crate::pg::scan::command_tag(&msg.raw);
        if got != tag.as_bytes() {
            return Err(CatalogError::Protocol(format!(
                "expected CommandComplete {tag}, got {:?}",
                String::from_utf8_lossy(got)
            )));
        }
        Ok(())
    }

    async fn send_query(&mut self, sql: &str) -> Result<(), CatalogError> {
        let mut buf = BytesMut::new();
        query::encode(sql, &mut buf);
        self.stream.write_all(&buf).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// The next message that is part of the answer: notices, parameter changes and
    /// notifications may come at any time and are skipped.
    async fn next(&mut self) -> Result<RawMessage, CatalogError> {
        loop {
            let msg = self
                .framer
                .next(&mut self.stream)
                .await?
                .ok_or(CatalogError::Closed)?;
            if !matches!(msg.tag, b'N' | b'S' | b'A') {
                return Ok(msg);
            }
        }
    }

    /// Like [`Connection::next`], with an ErrorResponse turned into the error.
    async fn answer(&mut self) -> Result<RawMessage, CatalogError> {
        let msg = self.next().await?;
        if msg.tag == b'E' {
            return Err(server_error(msg.body()));
        }
        Ok(msg)
    }

    /// Says goodbye so the server does not log an unexpected EOF; errors are moot.
    async fn terminate(&mut self) {
        let goodbye = [b'X', 0, 0, 0, 4];
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = self.stream.write_all(&goodbye).await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }
}

/// A [`RelationRow`] from `nspname, relname, relkind, attname, format_type, typcategory`.
fn relation_row(values: &[Option<&str>]) -> Result<RelationRow, CatalogError> {
    let [schema, name, relkind, column, type_name, typcategory] = values else {
        return Err(CatalogError::Protocol(format!(
            "relation row of {} values",
            values.len()
        )));
    };
    Ok(RelationRow {
        schema: required(*schema, "nspname")?,
        name: required(*name, "relname")?,
        relkind: required(*relkind, "relkind")?,
        column: column.map(str::to_owned),
        type_name: type_name.map(str::to_owned),
        typcategory: typcategory.map(str::to_owned),
    })
}

/// `(schema, function)` from `nspname, proname`.
fn function_row(values: &[Option<&str>]) -> Result<(String, String), CatalogError> {
    let [schema, name] = values else {
        return Err(CatalogError::Protocol(format!(
            "function row of {} values",
            values.len()
        )));
    };
    Ok((required(*schema, "nspname")?, required(*name, "proname")?))
}

fn required(value: Option<&str>, column: &str) -> Result<String, CatalogError> {
    value
        .map(str::to_owned)
        .ok_or_else(|| CatalogError::Protocol(format!("NULL {column} in the catalog result")))
}

fn server_error(body: &[u8]) -> CatalogError {
    let text = |code| field_text(body, code);
    CatalogError::Query {
        code: text(b'C'),
        message: text(b'M'),
    }
}

fn unexpected(tag: u8, expected: &str) -> CatalogError {
    CatalogError::Protocol(format!(
        "unexpected message {:?} where {expected} was expected",
        char::from(tag)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;
    use portcullis_policy::catalog::{RelationKind, TypeCategory};
    use tokio::io::AsyncReadExt;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&i32::try_from(body.len() + 4).expect("small").to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn complete(tag: &str) -> Vec<u8> {
        msg(b'C', format!("{tag}\0").as_bytes())
    }

    fn description(columns: usize, format: i16) -> Vec<u8> {
        let mut body = BytesMut::new();
        body.put_i16(i16::try_from(columns).expect("few"));
        for i in 0..columns {
            body.put_slice(format!("c{i}\0").as_bytes());
            body.put_i32(0);
            body.put_i16(0);
            body.put_i32(25);
            body.put_i16(-1);
            body.put_i32(-1);
            body.put_i16(format);
        }
        msg(b'T', &body)
    }

    fn data(values: &[Option<&str>]) -> Vec<u8> {
        let mut body = BytesMut::new();
        body.put_i16(i16::try_from(values.len()).expect("few"));
        for value in values {
            match value {
                None => body.put_i32(-1),
                Some(v) => {
                    body.put_i32(i32::try_from(v.len()).expect("short"));
                    body.put_slice(v.as_bytes());
                }
            }
        }
        msg(b'D', &body)
    }

    fn error(code: &str, message: &str) -> Vec<u8> {
        msg(b'E', format!("SERROR\0C{code}\0M{message}\0\0").as_bytes())
    }

    fn ready() -> Vec<u8> {
        msg(b'Z', b"I")
    }

    /// A well-formed answer to the snapshot query.
    fn snapshot_answer() -> Vec<u8> {
        [
            complete("BEGIN"),
            msg(b'N', b"SNOTICE\0C00000\0Mhello\0\0"),
            description(RELATION_COLUMNS, 0),
            data(&[
                Some("pg_catalog"),
                Some("pg_class"),
                Some("r"),
                None,
                None,
                None,
            ]),
            data(&[
                Some("public"),
                Some("customers"),
                Some("r"),
                Some("id"),
                Some("integer"),
                Some("N"),
            ]),
            data(&[
                Some("public"),
                Some("customers"),
                Some("r"),
                Some("email"),
                Some("text"),
                Some("S"),
            ]),
            data(&[
                Some("public"),
                Some("empty_view"),
                Some("v"),
                None,
                None,
                None,
            ]),
            complete("SELECT 4"),
            description(FUNCTION_COLUMNS, 0),
            data(&[Some("pg_catalog"), Some("lower")]),
            data(&[Some("portcullis"), Some("row_check")]),
            complete("SELECT 2"),
            complete("COMMIT"),
            ready(),
        ]
        .concat()
    }

    /// Runs a load against a fake server that answers every Query with the next of
    /// `answers` (after reading the Query), and returns the load's result.
    async fn load_against(
        answers: Vec<Vec<u8>>,
        install: bool,
        max_bytes: usize,
    ) -> Result<Loaded, CatalogError> {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let fake = tokio::spawn(async move {
            let mut queries = Vec::new();
            for answer in answers {
                let mut head = [0u8; 5];
                if server.read_exact(&mut head).await.is_err() {
                    return queries;
                }
                let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
                let mut body = vec![0u8; usize::try_from(len).unwrap_or(4).saturating_sub(4)];
                if server.read_exact(&mut body).await.is_err() {
                    return queries;
                }
                queries.push(head[0]);
                // The loader may give up half-way through an answer it refuses.
                if server.write_all(&answer).await.is_err() {
                    return queries;
                }
            }
            queries
        });
        let mut conn = Connection::new(client, BytesMut::new(), max_bytes);
        let result = conn.load(install).await;
        drop(conn);
        let queries = fake.await.expect("fake server");
        assert!(queries.iter().all(|&t| t == b'Q'), "simple protocol only");
        result
    }

    #[tokio::test]
    async fn decodes_the_snapshot_with_nulls_and_notices() {
        let loaded = load_against(vec![snapshot_answer()], false, 1 << 20)
            .await
            .expect("loads");
        assert_eq!(loaded.support, Support::NotRun);
        let catalog = loaded.catalog;
        assert_eq!(catalog.len(), 3);
        let customers = catalog.relation("public", "customers").expect("customers");
        assert_eq!(customers.kind, RelationKind::Table);
        assert_eq!(
            customers
                .columns
                .iter()
                .map(|c| (c.name.as_str(), c.type_name.as_str(), c.category))
                .collect::<Vec<_>>(),
            vec![
                ("id", "integer", TypeCategory::Integer),
                ("email", "text", TypeCategory::String)
            ]
        );
        assert!(
            catalog
                .relation("public", "empty_view")
                .is_some_and(|v| v.columns.is_empty())
        );
        assert_eq!(
            catalog.resolve_function(&["row_check".into()], &["portcullis".into()]),
            Some("portcullis")
        );
    }

    #[tokio::test]
    async fn support_sql_refusal_is_a_warning_and_the_catalog_still_loads() {
        let refused = [error("42501", "permission denied for database"), ready()].concat();
        let loaded = load_against(vec![refused, snapshot_answer()], true, 1 << 20)
            .await
            .expect("loads anyway");
        assert_eq!(loaded.support, Support::Refused);
        assert_eq!(loaded.catalog.len(), 3);

        let installed = [
            msg(b'N', b"SNOTICE\0C42P06\0Mschema exists\0\0"),
            complete("CREATE SCHEMA"),
            complete("CREATE FUNCTION"),
            ready(),
        ]
        .concat();
        let loaded = load_against(vec![installed, snapshot_answer()], true, 1 << 20)
            .await
            .expect("loads");
        assert_eq!(loaded.support, Support::Installed);
    }

    #[tokio::test]
    async fn refuses_answers_of_the_wrong_shape() {
        let cases: Vec<(&str, &str, Vec<u8>)> = vec![
            (
                "server error",
                "Query",
                [complete("BEGIN"), error("42P01", "nope"), ready()].concat(),
            ),
            (
                "binary column",
                "Protocol",
                [complete("BEGIN"), description(RELATION_COLUMNS, 1)].concat(),
            ),
            (
                "wrong column count",
                "Protocol",
                [complete("BEGIN"), description(3, 0)].concat(),
            ),
            (
                "short row",
                "Protocol",
                [
                    complete("BEGIN"),
                    description(RELATION_COLUMNS, 0),
                    data(&[Some("a"), Some("b")]),
                ]
                .concat(),
            ),
            (
                "NULL name",
                "Protocol",
                [
                    complete("BEGIN"),
                    description(RELATION_COLUMNS, 0),
                    data(&[Some("public"), None, Some("r"), None, None, None]),
                ]
                .concat(),
            ),
            (
                "malformed row",
                "Decode",
                [
                    complete("BEGIN"),
                    description(RELATION_COLUMNS, 0),
                    msg(b'D', &[0, 6, 0, 0, 0, 9, b'x']),
                ]
                .concat(),
            ),
            (
                "unexpected message",
                "Protocol",
                [complete("BEGIN"), msg(b'G', &[0, 0, 0])].concat(),
            ),
            ("closed early", "Closed", complete("BEGIN")),
            (
                "oversized message",
                "Frame(TooLarge",
                [complete("BEGIN"), vec![b'T', 0x7f, 0, 0, 0]].concat(),
            ),
            (
                "negative length",
                "Frame(InvalidLength",
                [complete("BEGIN"), vec![b'T', 0xff, 0xff, 0xff, 0xff]].concat(),
            ),
        ];
        for (what, expected, answer) in cases {
            let result = load_against(vec![answer], false, 1 << 20).await;
            let error = format!("{:?}", result.err());
            assert!(
                error.starts_with(&format!("Some({expected}")),
                "{what}: {error}"
            );
        }
    }

    #[tokio::test]
    async fn refuses_a_catalog_over_the_byte_budget() {
        let result = load_against(vec![snapshot_answer()], false, 300).await;
        assert!(
            matches!(result, Err(CatalogError::TooLarge { max: 300 })),
            "{result:?}"
        );
    }

    #[test]
    fn snapshot_query_is_one_read_only_transaction() {
        let sql = snapshot_sql();
        assert!(sql.starts_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SELECT"));
        assert!(sql.ends_with("; COMMIT"));
    }
}
