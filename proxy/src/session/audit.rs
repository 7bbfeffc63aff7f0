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
use portcullis_policy::{Identity, TouchedRelation};

use super::handshake::TlsInfo;

/// Prepared statements remembered per session; beyond this the oldest are forgotten
/// (their executions are then audited without text, never silently skipped).
const MAX_STATEMENTS: usize = 10_000;

/// What the audit trail knows about one analysed statement text.
#[derive(Debug)]
pub struct StatementAudit {
    /// Shared by every event of the statement (each execution of a prepared one).
    info: Arc<StatementInfo>,
    decision: Arc<DecisionInfo>,
}

/// Per-session audit state.
pub struct SessionAudit {
    auditor: Auditor,
    base: AuditEvent,
    statements: HashMap<String, Arc<StatementAudit>>,
    portals: HashMap<String, Arc<StatementAudit>>,
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
            statements: HashMap::new(),
            portals: HashMap::new(),
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
    pub fn describe(
        sql: &str,
        decision: DecisionInfo,
        classes: &[&str],
        touched: &[TouchedRelation],
        full_text: bool,
    ) -> Arc<StatementAudit> {
        let mut info = StatementInfo::from_sql(sql);
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
        if full_text {
            info = info.with_full_text(sql);
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
        if self.statements.len() >= MAX_STATEMENTS && !self.statements.contains_key(name) {
            if let Some(victim) = self.statements.keys().next().cloned() {
                self.statements.remove(&victim);
            }
        }
        self.statements.insert(name.to_owned(), stmt);
    }

    /// Binds a portal to a prepared statement.
    pub fn on_bind(&mut self, portal: &str, statement: &str) {
        if self.portals.len() >= MAX_STATEMENTS && !self.portals.contains_key(portal) {
            self.portals.clear();
        }
        match self.statements.get(statement) {
            Some(stmt) => {
                self.portals.insert(portal.to_owned(), Arc::clone(stmt));
            }
            None => {
                self.portals.remove(portal);
            }
        }
    }

    /// The event for executing `portal`.
    pub fn on_execute(&mut self, portal: &str) -> AuditEvent {
        match self.portals.get(portal).cloned() {
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
