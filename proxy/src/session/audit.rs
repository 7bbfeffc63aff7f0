//! The session's side of the audit trail: which statement a portal runs, and the
//! events that describe a session, its logins and its statements.
//!
//! Statement events are opened when the client sends a statement (Query) or runs one
//! (Execute of a portal bound to a prepared statement) and completed when the batch's
//! ReadyForQuery arrives, with the rows from CommandComplete, the SQLSTATE of an error
//! and the duration. Event text is always the literal-stripped normalized text; the
//! client's statement itself never enters an event unless `full_statement_text` is on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use portcullis_audit::event::{
    AuditEvent, ClientInfo, DecisionInfo, EventId, EventKind, Outcome, SessionTotals,
    StatementInfo, Timestamp, TouchedColumn, TouchedTable,
};
use portcullis_audit::pipeline::Auditor;
use portcullis_policy::{Identity, Touched, TouchedRelation};

use super::handshake::TlsInfo;

/// Prepared statements remembered per session; beyond this the oldest are forgotten
/// (their executions are then audited without text, never silently skipped).
const MAX_STATEMENTS: usize = 10_000;

/// Statement descriptions a session keeps for reuse ([`SessionAudit::describe`]);
/// when full, they are all dropped and the next statements are described anew.
const MAX_DESCRIBED: usize = 128;

/// What the audit trail knows about one analysed statement text.
#[derive(Debug)]
pub struct StatementAudit {
    /// Shared by every event of the statement (each execution of a prepared one).
    info: Arc<StatementInfo>,
    decision: Arc<DecisionInfo>,
}

/// A description kept for reuse, with what it was made from.
struct Described {
    touched: Touched,
    classes: Vec<String>,
    stmt: Arc<StatementAudit>,
}

/// Per-session audit state.
pub struct SessionAudit {
    auditor: Auditor,
    base: AuditEvent,
    /// Descriptions by fingerprint: the executions of one statement shape (a
    /// simple-protocol statement sent again with other literals, an extended-protocol
    /// statement parsed again) share one `StatementAudit`, so that it is built once
    /// and the sealer copies its canonical form instead of writing it again.
    described: HashMap<String, Described>,
    statements: HashMap<String, Arc<StatementAudit>>,
    portals: HashMap<String, Arc<StatementAudit>>,
    /// The unnamed statement and portal, which most clients use for everything: kept
    /// apart from the named ones so that they cost no hashing.
    unnamed_statement: Option<Arc<StatementAudit>>,
    unnamed_portal: Option<Arc<StatementAudit>>,
    totals: SessionTotals,
    started: std::time::Instant,
}

/// Who is connected, for the session's events.
pub struct SessionContext<'a> {
    /// Proxy-issued session id.
    pub session_id: &'a str,
    /// The client's address.
    pub peer: SocketAddr,
    /// TLS details, if any.
    pub tls: Option<&'a TlsInfo>,
    /// Database asked for.
    pub database: Option<&'a str>,
    /// application_name from the startup packet.
    pub application_name: Option<&'a str>,
}

fn client_info(ctx: &SessionContext<'_>) -> ClientInfo {
    let mut client = ClientInfo {
        ip: Some(ctx.peer.ip()),
        port: Some(ctx.peer.port()),
        ..ClientInfo::default()
    };
    if let Some(tls) = ctx.tls {
        client.tls_version = Some(tls.version.clone());
        client.cipher = Some(tls.cipher.clone());
        client.cert_subject = tls.client_subject.clone();
    }
    client
}

/// The `slow_statement` event for a completed statement event: the same content
/// under its own kind, id and time.
pub fn slow_statement_event(statement: &AuditEvent) -> AuditEvent {
    stamped(statement.clone(), EventKind::SlowStatement)
}

/// `event` as a new event of `kind`: stamped now, with a fresh id.
fn stamped(mut event: AuditEvent, kind: EventKind) -> AuditEvent {
    event.kind = kind;
    event.time = Timestamp::now();
    event.id = EventId::new(event.time);
    event
}

/// A login attempt's event.
pub fn login_event(
    ctx: &SessionContext<'_>,
    user: &str,
    success: bool,
    reason: Option<&str>,
) -> AuditEvent {
    let mut event = AuditEvent::login(ctx.session_id, user, success).with_client(client_info(ctx));
    if let Some(db) = ctx.database {
        event = event.with_database(db);
    }
    if let Some(app) = ctx.application_name {
        event = event.with_application(app);
    }
    if let Some(reason) = reason {
        event = event.with_detail(reason);
    }
    event
}

impl SessionAudit {
    /// Starts auditing an authenticated session.
    pub fn new(auditor: Auditor, ctx: &SessionContext<'_>, identity: &Identity) -> Self {
        let mut base = AuditEvent::new(EventKind::Statement)
            .with_session(ctx.session_id)
            .with_client(client_info(ctx))
            .with_user(identity.user.clone())
            .with_roles(identity.roles.iter().cloned());
        for (k, v) in &identity.attributes {
            base = base.with_attribute(k.clone(), v.clone());
        }
        if let Some(db) = ctx.database {
            base = base.with_database(db);
        }
        if let Some(app) = ctx.application_name {
            base = base.with_application(app);
        }
        Self {
            auditor,
            base,
            described: HashMap::new(),
            statements: HashMap::new(),
            portals: HashMap::new(),
            unnamed_statement: None,
            unnamed_portal: None,
            totals: SessionTotals::default(),
            started: std::time::Instant::now(),
        }
    }

    /// The auditor, to check health before forwarding.
    pub fn auditor(&self) -> &Auditor {
        &self.auditor
    }

    /// Describes a statement text, what it touched and its decision; with
    /// `full_text` the client's own text is kept too (`[audit] full_statement_text`).
    ///
    /// A description made earlier in the session for the same normalized text, the
    /// same fingerprint, decision, statement classes and touched relations is the same
    /// description, and is returned instead of a new one. With `full_text` each text
    /// is described on its own.
    pub fn describe(
        &mut self,
        sql: &str,
        decision: DecisionInfo,
        classes: &[&str],
        touched: Touched,
        full_text: bool,
    ) -> Arc<StatementAudit> {
        let info = StatementInfo::from_sql(sql);
        if full_text {
            return Self::describe_anew(info.with_full_text(sql), decision, classes, &touched);
        }
        if let Some(known) = self.described.get(&info.fingerprint) {
            let same = known.stmt.info.text == info.text
                && *known.stmt.decision == decision
                && known
                    .classes
                    .iter()
                    .map(String::as_str)
                    .eq(classes.iter().copied())
                && (Arc::ptr_eq(&known.touched, &touched) || known.touched == touched);
            if same {
                return Arc::clone(&known.stmt);
            }
        }
        if self.described.len() >= MAX_DESCRIBED {
            self.described.clear();
        }
        let key = info.fingerprint.clone();
        let stmt = Self::describe_anew(info, decision, classes, &touched);
        self.described.insert(
            key,
            Described {
                touched,
                classes: classes.iter().map(|c| (*c).to_owned()).collect(),
                stmt: Arc::clone(&stmt),
            },
        );
        stmt
    }

    fn describe_anew(
        mut info: StatementInfo,
        decision: DecisionInfo,
        classes: &[&str],
        touched: &[TouchedRelation],
    ) -> Arc<StatementAudit> {
        for class in classes {
            info = info.with_class(*class);
        }
        for relation in touched {
            info = info.with_table(TouchedTable {
                name: relation.name.clone(),
                classes: Vec::new(),
                columns: relation
                    .columns
                    .iter()
                    .map(|column| TouchedColumn {
                        name: column.name.clone(),
                        classes: column.class.iter().cloned().collect(),
                    })
                    .collect(),
            });
        }
        Arc::new(StatementAudit {
            info: Arc::new(info),
            decision: Arc::new(decision),
        })
    }

    /// An event for running `stmt` (Query, or Execute of a portal).
    pub fn statement_event(&mut self, stmt: &StatementAudit) -> AuditEvent {
        // `statements` counts every statement received, `denied` those refused.
        self.totals.statements += 1;
        if stmt.decision.outcome == Outcome::Denied {
            self.totals.denied += 1;
        }
        self.event(EventKind::Statement)
            .with_statement(Arc::clone(&stmt.info))
            .with_decision(Arc::clone(&stmt.decision))
    }

    /// A new event of `kind` about this session, stamped now.
    fn event(&self, kind: EventKind) -> AuditEvent {
        stamped(self.base.clone(), kind)
    }

    /// Remembers a prepared statement (the unnamed one is simply replaced).
    pub fn on_parse(&mut self, name: &str, stmt: Arc<StatementAudit>) {
        if name.is_empty() {
            self.unnamed_statement = Some(stmt);
            return;
        }
        if self.statements.len() >= MAX_STATEMENTS && !self.statements.contains_key(name) {
            if let Some(victim) = self.statements.keys().next().cloned() {
                self.statements.remove(&victim);
            }
        }
        self.statements.insert(name.to_owned(), stmt);
    }

    /// Binds a portal to a prepared statement.
    pub fn on_bind(&mut self, portal: &str, statement: &str) {
        let stmt = if statement.is_empty() {
            self.unnamed_statement.clone()
        } else {
            self.statements.get(statement).cloned()
        };
        if portal.is_empty() {
            self.unnamed_portal = stmt;
            return;
        }
        if self.portals.len() >= MAX_STATEMENTS && !self.portals.contains_key(portal) {
            self.portals.clear();
        }
        match stmt {
            Some(stmt) => {
                self.portals.insert(portal.to_owned(), stmt);
            }
            None => {
                self.portals.remove(portal);
            }
        }
    }

    /// The event for executing `portal`.
    pub fn on_execute(&mut self, portal: &str) -> AuditEvent {
        let stmt = if portal.is_empty() {
            self.unnamed_portal.clone()
        } else {
            self.portals.get(portal).cloned()
        };
        match stmt {
            Some(stmt) => self.statement_event(&stmt),
            None => {
                // A portal of a statement the proxy no longer remembers: still audited.
                let stmt = StatementAudit {
                    info: Arc::new(StatementInfo::from_sql("")),
                    decision: Arc::new(DecisionInfo::new(Outcome::Allowed)),
                };
                self.statement_event(&stmt)
            }
        }
    }

    /// Hands a completed event to the pipeline.
    pub fn emit(&self, event: AuditEvent) {
        if self.auditor.emit(event).is_err() {
            tracing::warn!("audit queue unavailable; the loss is counted");
        }
    }

    /// Adds rows returned or affected to the session's totals.
    pub fn add_rows(&mut self, rows: u64) {
        self.totals.rows = self.totals.rows.saturating_add(rows);
    }

    /// The session-end event with totals.
    pub fn end_event(&self) -> AuditEvent {
        let mut totals = self.totals;
        totals.duration_us = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.event(EventKind::SessionEnd).with_totals(totals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_audit::pipeline::{AuditConfig, FileSettings, SinkConfig, SinkKind};
    use portcullis_policy::TouchedColumn as PolicyColumn;
    use tokio_util::sync::CancellationToken;

    fn touched(column: &str) -> Touched {
        Arc::from([TouchedRelation {
            name: "public.customers".into(),
            written: false,
            columns: vec![PolicyColumn {
                name: column.into(),
                class: Some("pii.email".into()),
            }],
        }])
    }

    fn allowed(version: &str) -> DecisionInfo {
        DecisionInfo::new(Outcome::Rewritten)
            .with_rule("rewrite")
            .with_policy_version(version)
    }

    fn session() -> (
        SessionAudit,
        CancellationToken,
        tokio::task::JoinHandle<()>,
        tempfile::TempDir,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = SinkConfig::new("local", SinkKind::File);
        sink.file = Some(FileSettings {
            path: dir.path().join("audit.jsonl"),
            max_bytes: 0,
            retain_count: None,
            retain_age_secs: None,
        });
        let config = AuditConfig {
            instance: "px-describe".into(),
            state_dir: dir.path().join("state"),
            sinks: vec![sink],
            ..AuditConfig::default()
        };
        let stop = CancellationToken::new();
        let (auditor, task) = Auditor::start(&config, stop.clone()).unwrap();
        let ctx = SessionContext {
            session_id: "s-1",
            peer: "127.0.0.1:5000".parse().unwrap(),
            tls: None,
            database: Some("shop"),
            application_name: None,
        };
        let identity = Identity::new("support_acme", ["support"]);
        (SessionAudit::new(auditor, &ctx, &identity), stop, task, dir)
    }

    /// Executions name the statement their portal was bound to: named and unnamed
    /// statements and portals, rebinding, and a portal of an unknown statement.
    #[tokio::test]
    async fn executions_carry_their_statement() {
        let (mut audit, stop, task, _dir) = session();
        let email = touched("email");
        let describe = |audit: &mut SessionAudit, sql: &str| {
            audit.describe(sql, allowed("v1"), &["read"], Arc::clone(&email), false)
        };
        let text = |event: &AuditEvent| event.statement.as_ref().map(|s| s.text.clone());
        let a = describe(&mut audit, "SELECT 1");
        let b = describe(&mut audit, "SELECT email FROM customers");
        audit.on_parse("", Arc::clone(&a));
        audit.on_parse("named", Arc::clone(&b));

        audit.on_bind("", "");
        audit.on_bind("p", "named");
        assert_eq!(text(&audit.on_execute("")).as_deref(), Some("SELECT ?"));
        assert_eq!(
            text(&audit.on_execute("p")).as_deref(),
            Some("SELECT email FROM customers")
        );
        // Rebinding the unnamed portal, and replacing the unnamed statement.
        audit.on_bind("", "named");
        assert_eq!(
            text(&audit.on_execute("")).as_deref(),
            Some("SELECT email FROM customers")
        );
        let c = describe(&mut audit, "SELECT 2 + 2");
        audit.on_parse("", c);
        audit.on_bind("", "");
        audit.on_bind("q", "");
        assert_eq!(text(&audit.on_execute("")).as_deref(), Some("SELECT ? + ?"));
        assert_eq!(
            text(&audit.on_execute("q")).as_deref(),
            Some("SELECT ? + ?")
        );
        // A statement the session does not know: still an event, without text.
        audit.on_bind("", "missing");
        audit.on_bind("p", "missing");
        for portal in ["", "p", "never-bound"] {
            assert_eq!(text(&audit.on_execute(portal)).as_deref(), Some(""));
        }
        stop.cancel();
        task.await.unwrap();
    }

    /// Texts that differ only in their literals share one description; a change of
    /// decision, classes, touched columns or shape, or a full-text audit, does not.
    #[tokio::test]
    async fn statement_shapes_share_one_description() {
        let (mut audit, stop, task, _dir) = session();
        let email = touched("email");
        let sql = |id: u32| format!("SELECT email FROM customers WHERE id = {id}");
        let first = audit.describe(&sql(1), allowed("v1"), &["read"], Arc::clone(&email), false);
        assert_eq!(first.info.text, "SELECT email FROM customers WHERE id = ?");
        assert_eq!(first.info.tables[0].columns[0].classes, ["pii.email"]);
        // Another literal, and touched relations equal but not the same Arc.
        let again = audit.describe(&sql(2), allowed("v1"), &["read"], touched("email"), false);
        assert!(Arc::ptr_eq(&first, &again));

        let differing = [
            audit.describe(&sql(3), allowed("v2"), &["read"], Arc::clone(&email), false),
            audit.describe(
                &sql(3),
                allowed("v1"),
                &["write"],
                Arc::clone(&email),
                false,
            ),
            audit.describe(&sql(3), allowed("v1"), &["read"], touched("name"), false),
            audit.describe(
                "SELECT email FROM customers WHERE id > 3",
                allowed("v1"),
                &["read"],
                Arc::clone(&email),
                false,
            ),
            audit.describe(&sql(3), allowed("v1"), &["read"], Arc::clone(&email), true),
        ];
        for (i, other) in differing.iter().enumerate() {
            assert!(
                !Arc::ptr_eq(&first, other),
                "case {i} reused the first description"
            );
        }
        assert_eq!(differing[0].decision.policy_version.as_deref(), Some("v2"));
        assert_eq!(differing[1].info.class, ["write"]);
        assert_eq!(differing[2].info.tables[0].columns[0].name, "name");
        assert_eq!(
            differing[4].info.full_text.as_deref(),
            Some(sql(3).as_str())
        );

        // The table is bounded: beyond it, descriptions are made anew, not lost.
        for id in 0..(2 * MAX_DESCRIBED) {
            let text = format!("SELECT email FROM customers AS c{id} WHERE id = {id}");
            audit.describe(&text, allowed("v1"), &["read"], Arc::clone(&email), false);
            assert!(audit.described.len() <= MAX_DESCRIBED);
        }
        stop.cancel();
        task.await.unwrap();
    }
}
