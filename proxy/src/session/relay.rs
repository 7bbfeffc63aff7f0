//! The relay: client messages go through the policy hook on their way up, server
//! messages stream back down.
//!
//! Two loops run concurrently in the session's task (a pipelining client must be able
//! to send while results come back). Statements (Query, Parse) are decided by the
//! policy engine and forwarded as re-serialized SQL; everything else passes through
//! as raw bytes.
//!
//! A denied statement is not simply dropped: the server must see *something* there so
//! that its state machine stays exactly as PostgreSQL would have it (an error aborts
//! the implicit transaction of the batch, and the server skips to the next Sync). So the
//! proxy forwards a statement that fails to parse, containing a per-session random
//! marker, and replaces the server's syntax error carrying that marker with its own
//! denial. Batches are counted (one per Query, Sync or FunctionCall, each answered by
//! one ReadyForQuery), so a replacement can only apply inside its own batch.
//!
//! The proxy sends batches of its own too: after a policy reload that renders this
//! identity's native row-level-security settings differently, a `set_config` query
//! goes up before the client's next batch that starts outside a transaction, and its
//! whole answer is kept from the client (an error ends the session: the settings the
//! policy asks for could not be applied).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use parking_lot::Mutex;
use portcullis_policy::{Decision, Identity};
use rand::RngExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{info, warn};

use super::SessionError;
use super::audit::{SessionAudit, StatementAudit};
use super::auth::Authenticated;
use super::native;
use crate::pg::error::sqlstate;
use crate::pg::error::{field, field_text};
use crate::pg::messages::{self, DecodeError};
use crate::pg::scan::{BackendScanner, Piece, command_tag};
use crate::pg::{Framer, PgError, RawMessage};
use crate::server::Shared;
use crate::stream::Stream;
use crate::upstream::{CancelTarget, Upstream};
use portcullis_audit::event::{AuditEvent, DecisionInfo, Outcome};
use portcullis_audit::pipeline::Auditor;

/// Denials waiting for their poison error; a client that pipelines more than this
/// many denied statements without reading is cut off.
const MAX_PENDING_DENIALS: usize = 1024;
/// Batches in flight tracked for latency; beyond this, timings are dropped (not the data).
const MAX_TRACKED_BATCHES: usize = 4096;
/// How long the proxy tries to say goodbye to a peer that may not be reading.
const GOODBYE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// Read size from the server.
const UPSTREAM_READ: usize = 64 * 1024;

/// Why the relay stopped.
enum End {
    /// The client said Terminate.
    ClientDone,
    /// The client closed the connection without Terminate.
    ClientGone,
    /// The server closed the connection.
    ServerClosed,
    /// Graceful shutdown reached an idle point.
    Drained,
}

/// A denial waiting for the server's poison error.
struct PendingDenial {
    batch: u64,
    error: BytesMut,
}

/// What the backend side needs to know about a batch.
struct BatchInfo {
    started: Instant,
    /// Audit events of the batch (one per Query or Execute).
    events: Vec<AuditEvent>,
    /// Error positions refer to the forwarded text, not the client's: they are
    /// dropped for batches whose text was rewritten.
    rewritten: bool,
}

/// State shared by the two directions.
#[derive(Default)]
struct Inflight {
    /// Batches ended by the client side (Query, Sync, FunctionCall).
    batches_sent: u64,
    /// ReadyForQuery messages seen from the server.
    batches_done: u64,
    /// Whether messages were sent since the last batch end.
    open_batch: bool,
    /// Start time of the open batch.
    open_since: Option<Instant>,
    /// Whether a statement of the open batch was forwarded in a different text.
    open_rewritten: bool,
    /// Audit events of the open batch, completed at its ReadyForQuery.
    open_events: Vec<AuditEvent>,
    /// Index of the open batch's event that the next CommandComplete belongs to.
    open_next: usize,
    /// Rows returned or affected over the session (for the session-end event).
    total_rows: u64,
    /// Ended batches awaiting ReadyForQuery.
    ended: VecDeque<BatchInfo>,
    denials: VecDeque<PendingDenial>,
    /// The proxy's own batch in flight (native settings after a reload), whose answer
    /// the client must not see.
    hidden: Option<u64>,
    /// Transaction status of the last ReadyForQuery.
    status: u8,
    draining: bool,
}

impl Inflight {
    fn idle(&self) -> bool {
        self.batches_sent == self.batches_done && !self.open_batch && self.status == b'I'
    }
}

/// Relays between `client` and `upstream` until one side ends.
pub async fn relay(
    shared: &Arc<Shared>,
    client: &mut Stream,
    upstream: Upstream,
    auth: &Authenticated,
    cancel: &CancelTarget,
    native: native::Applied,
    audit: Option<&mut SessionAudit>,
) -> Result<(), SessionError> {
    let Upstream {
        stream: upstream_stream,
        leftover,
        ..
    } = upstream;
    let marker = format!("portcullis_denied_{:016x}", rand::rng().random::<u64>());
    let state = Mutex::new(Inflight {
        status: b'I',
        ..Inflight::default()
    });
    let (mut client_rd, mut client_wr) = tokio::io::split(client);
    let (mut up_rd, mut up_wr) = tokio::io::split(upstream_stream);

    let mut front = Frontend {
        shared,
        identity: &auth.identity,
        state: &state,
        marker: &marker,
        framer: Framer::new(shared.limits.max_message_bytes),
        out: BytesMut::with_capacity(16 * 1024),
        audit,
        native,
    };
    let mut back = Backend {
        shared,
        state: &state,
        marker: marker.as_bytes(),
        scanner: BackendScanner::default(),
        buf: leftover,
        out: BytesMut::with_capacity(UPSTREAM_READ),
        pieces: Vec::new(),
        auditor: shared.audit.clone(),
        schema_changed: false,
    };
    let end = tokio::select! {
        r = front.run(&mut client_rd, &mut up_wr) => r,
        r = back.run(&mut up_rd, &mut client_wr) => r,
        () = shared.kill.cancelled() => Ok(End::Drained),
    };
    let total_rows = state.lock().total_rows;
    if let Some(audit) = front.audit.as_deref_mut() {
        audit.add_rows(total_rows);
    }
    // A statement still running upstream would go on after the client is gone (the
    // server does not read its socket while executing): cancel it, unless the client
    // itself ended cleanly.
    let busy = !state.lock().idle();
    if busy && !matches!(end, Ok(End::ClientDone)) {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            if let Err(e) = cancel.cancel().await {
                info!(error = %e, "could not cancel the abandoned statement");
            }
        });
    }
    // Whatever happened, the upstream session ends with the client's. A peer that does
    // not read must not keep the session task alive.
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
        let _ = up_wr.write_all(&[b'X', 0, 0, 0, 4]).await;
        let _ = up_wr.shutdown().await;
    })
    .await;
    let client = client_rd.unsplit(client_wr);
    match end {
        Ok(End::ClientDone | End::ClientGone) => Ok(()),
        Ok(End::Drained) => {
            let e = PgError::fatal(
                sqlstate::ADMIN_SHUTDOWN,
                "terminating connection due to administrator command",
            );
            let _ = tokio::time::timeout(GOODBYE_TIMEOUT, client.write_all(&e.to_bytes())).await;
            Ok(())
        }
        Ok(End::ServerClosed) => {
            info!("upstream closed the connection");
            Err(SessionError::Client(PgError::fatal(
                sqlstate::CONNECTION_FAILURE,
                "portcullis: the database server closed the connection",
            )))
        }
        Err(e) => Err(e),
    }
}

struct Frontend<'a> {
    shared: &'a Shared,
    identity: &'a Identity,
    state: &'a Mutex<Inflight>,
    marker: &'a str,
    framer: Framer,
    out: BytesMut,
    audit: Option<&'a mut SessionAudit>,
    /// The native row-level-security settings the upstream session has.
    native: native::Applied,
}

impl Frontend<'_> {
    async fn run<R, W>(&mut self, client: &mut R, upstream: &mut W) -> Result<End, SessionError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut drain_seen = false;
        loop {
            let next = tokio::select! {
                m = self.framer.next(client) => m?,
                () = self.shared.drain.cancelled(), if !drain_seen => {
                    drain_seen = true;
                    let mut st = self.state.lock();
                    st.draining = true;
                    if st.idle() {
                        return Ok(End::Drained);
                    }
                    continue;
                }
            };
            let Some(msg) = next else {
                return Ok(End::ClientGone);
            };
            if self.handle(msg)? {
                upstream.write_all(&self.out).await?;
                return Ok(End::ClientDone);
            }
            while let Some(msg) = self.framer.try_next()? {
                if self.handle(msg)? {
                    upstream.write_all(&self.out).await?;
                    return Ok(End::ClientDone);
                }
            }
            upstream.write_all(&self.out).await?;
            upstream.flush().await?;
            self.out.clear();
        }
    }

    /// Handles one client message; `true` when it was Terminate.
    fn handle(&mut self, msg: RawMessage) -> Result<bool, SessionError> {
        match msg.tag {
            b'Q' => {
                self.begin()?;
                match messages::query::decode(msg.body()) {
                    Ok(sql) => {
                        let (decision, stmt) = self.decide(sql);
                        if let Some(audit) = self.audit.as_deref_mut() {
                            if let Some(stmt) = stmt {
                                let event = audit.statement_event(&stmt);
                                self.state.lock().open_events.push(event);
                            }
                        }
                        match decision {
                            Ok(forward) => messages::query::encode(&forward, &mut self.out),
                            Err(denial) => self.deny_query(denial)?,
                        }
                    }
                    Err(e @ DecodeError::Malformed(_)) => return Err(e.into()),
                    Err(e @ DecodeError::InvalidUtf8(_)) => {
                        self.shared.metrics.statement("invalid_encoding");
                        self.deny_query(PgError::error(
                            sqlstate::CHARACTER_NOT_IN_REPERTOIRE,
                            e.to_string(),
                        ))?;
                    }
                }
                self.end_batch();
            }
            b'P' => {
                self.begin()?;
                match messages::parse::decode(msg.body()) {
                    Ok(parse) => {
                        let (decision, stmt) = self.decide(parse.query);
                        if let (Some(audit), Some(stmt)) = (self.audit.as_deref_mut(), stmt) {
                            audit.on_parse(parse.name, stmt);
                        }
                        match decision {
                            Ok(forward) => messages::parse::encode(&parse, &forward, &mut self.out),
                            Err(denial) => {
                                let poison = messages::parse::Parse { query: "", ..parse };
                                let marker = self.marker;
                                self.deny(denial, |out| {
                                    messages::parse::encode(&poison, marker, out)
                                })?;
                            }
                        }
                    }
                    Err(e @ DecodeError::Malformed(_)) => return Err(e.into()),
                    Err(e @ DecodeError::InvalidUtf8(_)) => {
                        self.shared.metrics.statement("invalid_encoding");
                        let poison = messages::parse::Parse {
                            name: "",
                            query: "",
                            type_oids: &[],
                            type_count: 0,
                        };
                        let marker = self.marker;
                        let denial =
                            PgError::error(sqlstate::CHARACTER_NOT_IN_REPERTOIRE, e.to_string());
                        self.deny(denial, |out| messages::parse::encode(&poison, marker, out))?;
                    }
                }
            }
            b'S' => {
                self.begin()?;
                self.out.extend_from_slice(&msg.raw);
                self.end_batch();
            }
            b'F' => {
                // Fast-path function calls bypass SQL entirely (lo_export, pg_read_file):
                // refused, answered like a failed statement.
                self.begin()?;
                let denial = PgError::error(
                    sqlstate::INSUFFICIENT_PRIVILEGE,
                    "portcullis: fast-path function calls are not allowed",
                );
                self.shared.metrics.statement("denied");
                self.deny_query(denial)?;
                self.end_batch();
            }
            b'X' => {
                self.out.extend_from_slice(&msg.raw);
                return Ok(true);
            }
            b'B' | b'E' | b'D' | b'C' | b'H' => {
                self.begin()?;
                if self.audit.is_some() {
                    self.audit_extended(msg.tag, msg.body())?;
                }
                self.out.extend_from_slice(&msg.raw);
            }
            // COPY data belongs to the batch of the statement that started the copy.
            b'd' | b'c' | b'f' => self.out.extend_from_slice(&msg.raw),
            other => {
                return Err(SessionError::Client(PgError::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("invalid frontend message type {other}"),
                )));
            }
        }
        Ok(false)
    }

    /// Asks the policy: the text to forward or the client's error, and (when auditing)
    /// what the audit trail records about the statement.
    fn decide(&mut self, sql: &str) -> (Result<Arc<str>, PgError>, Option<Arc<StatementAudit>>) {
        let policy = self.shared.policy.load();
        let auditing = self.audit.is_some();
        if auditing {
            if let Some(audit) = self.audit.as_deref() {
                if !audit.auditor().healthy() {
                    self.shared.metrics.statement("audit_unavailable");
                    let e = PgError::error(
                        sqlstate::INSUFFICIENT_RESOURCES,
                        "portcullis: the audit trail cannot be written; statements are refused until it recovers",
                    );
                    return (Err(e), None);
                }
            }
        }
        let catalog = self.shared.catalog.load();
        let full_text = self
            .audit
            .as_deref()
            .is_some_and(|audit| audit.auditor().full_statement_text());
        let shared = self.shared;
        let mut describe = |decision: DecisionInfo, classes: &[&str]| {
            let audit = self.audit.as_deref_mut()?;
            let touched = shared.engine.touched(&policy, &catalog, sql);
            Some(audit.describe(sql, decision, classes, touched, full_text))
        };
        match self
            .shared
            .engine
            .decide(&policy, &catalog, self.identity, sql)
        {
            Decision::Allow {
                sql: forward,
                passthrough,
                classes,
                rewritten,
            } => {
                self.shared.metrics.statement(if passthrough {
                    "passthrough"
                } else if rewritten {
                    "rewritten"
                } else {
                    "allowed"
                });
                if *forward != *sql {
                    self.state.lock().open_rewritten = true;
                }
                let stmt = if auditing {
                    let outcome = if rewritten {
                        Outcome::Rewritten
                    } else {
                        Outcome::Allowed
                    };
                    let decision = DecisionInfo::new(outcome)
                        .with_rule(if passthrough {
                            "unparsed_passthrough"
                        } else if rewritten {
                            "rewrite"
                        } else {
                            "allow"
                        })
                        .with_policy_version(policy.version());
                    let classes: Vec<&str> = classes.iter().map(|c| c.as_str()).collect();
                    describe(decision, &classes)
                } else {
                    None
                };
                (Ok(forward), stmt)
            }
            Decision::Deny(denial) => {
                let outcome = match denial.sqlstate {
                    "42601" => "parse_error",
                    "54000" | "54001" => "too_large",
                    _ => "denied",
                };
                self.shared.metrics.statement(outcome);
                warn!(
                    user = %self.identity.user,
                    sqlstate = denial.sqlstate,
                    rule = %denial.rule,
                    policy_version = policy.version(),
                    "statement denied"
                );
                let stmt = if auditing {
                    let decision = DecisionInfo::new(Outcome::Denied)
                        .with_rule(denial.rule.clone())
                        .with_policy_version(policy.version());
                    describe(decision, &[])
                } else {
                    None
                };
                (Err(PgError::error(denial.sqlstate, denial.message)), stmt)
            }
        }
    }

    /// Tracks Bind (portal -> statement) and opens an event per Execute.
    fn audit_extended(&mut self, tag: u8, body: &[u8]) -> Result<(), SessionError> {
        let Some(audit) = self.audit.as_deref_mut() else {
            return Ok(());
        };
        match tag {
            b'B' => {
                let (portal, statement) = messages::bind::names(body)?;
                audit.on_bind(portal, statement);
            }
            b'E' => {
                let portal = messages::bind::execute_portal(body)?;
                let event = audit.on_execute(portal);
                self.state.lock().open_events.push(event);
            }
            _ => {}
        }
        Ok(())
    }

    /// Denies a simple-protocol statement: a failing Query goes upstream in its place.
    fn deny_query(&mut self, denial: PgError) -> Result<(), SessionError> {
        let marker = self.marker;
        self.deny(denial, |out| messages::query::encode(marker, out))
    }

    fn deny(
        &mut self,
        denial: PgError,
        poison: impl FnOnce(&mut BytesMut),
    ) -> Result<(), SessionError> {
        let mut st = self.state.lock();
        if st.denials.len() >= MAX_PENDING_DENIALS {
            return Err(SessionError::Client(PgError::fatal(
                sqlstate::PROGRAM_LIMIT_EXCEEDED,
                "portcullis: too many denied statements in flight",
            )));
        }
        let batch = st.batches_sent;
        st.denials.push_back(PendingDenial {
            batch,
            error: denial.to_bytes(),
        });
        drop(st);
        poison(&mut self.out);
        Ok(())
    }

    /// Opens a batch, unless one is open. A batch that starts with everything
    /// answered and outside a transaction first brings the native settings up to the
    /// current policy, in a batch of the proxy's own.
    fn begin(&mut self) -> Result<(), SessionError> {
        let mut st = self.state.lock();
        if st.open_batch {
            return Ok(());
        }
        if st.idle() {
            let policy = self.shared.policy.load();
            if let Some(statement) = self.native.refresh(&policy, self.identity)? {
                messages::query::encode(&statement, &mut self.out);
                st.hidden = Some(st.batches_sent);
                st.batches_sent += 1;
            }
        }
        st.open_batch = true;
        st.open_since = Some(Instant::now());
        Ok(())
    }

    fn end_batch(&mut self) {
        let mut st = self.state.lock();
        st.batches_sent += 1;
        st.open_batch = false;
        let started = st.open_since.take().unwrap_or_else(Instant::now);
        let rewritten = std::mem::take(&mut st.open_rewritten);
        let events = std::mem::take(&mut st.open_events);
        st.open_next = 0;
        if st.ended.len() < MAX_TRACKED_BATCHES {
            st.ended.push_back(BatchInfo {
                started,
                events,
                rewritten,
            });
        } else if let Some(audit) = &self.audit {
            // Untracked batch: its events go out now, without results, rather than never.
            for event in events {
                audit.emit(event);
            }
        }
    }
}

struct Backend<'a> {
    auditor: Option<Auditor>,
    shared: &'a Shared,
    state: &'a Mutex<Inflight>,
    marker: &'a [u8],
    scanner: BackendScanner,
    buf: BytesMut,
    out: BytesMut,
    pieces: Vec<Piece>,
    /// A statement completed with a schema-changing tag; the catalog is refreshed once
    /// the session is outside a transaction, when the change is committed and visible.
    schema_changed: bool,
}

impl Backend<'_> {
    async fn run<R, W>(&mut self, upstream: &mut R, client: &mut W) -> Result<End, SessionError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        // Bytes that arrived with the startup answer are scanned before the first read.
        let mut skip_read = !self.buf.is_empty();
        loop {
            if !skip_read {
                self.buf.reserve(UPSTREAM_READ);
                if upstream.read_buf(&mut self.buf).await? == 0 {
                    return Ok(End::ServerClosed);
                }
            }
            skip_read = false;
            self.scanner
                .scan(&mut self.buf, &mut self.pieces)
                .map_err(|e| {
                    self.shared.metrics.upstream_error("protocol");
                    SessionError::Client(PgError::fatal(
                        sqlstate::CONNECTION_FAILURE,
                        format!("portcullis: {e}"),
                    ))
                })?;
            let mut drained = false;
            let mut hiding = {
                let st = self.state.lock();
                st.hidden == Some(st.batches_done)
            };
            let mut pieces = std::mem::take(&mut self.pieces);
            for piece in pieces.drain(..) {
                if hiding {
                    match self.hidden(piece)? {
                        Hidden::Kept => {}
                        Hidden::Done { drained: now } => {
                            hiding = false;
                            drained = now;
                        }
                    }
                    continue;
                }
                match piece {
                    Piece::Forward(bytes) => self.out.unsplit(bytes),
                    Piece::Message { tag: b'E', raw } => {
                        let replacement = {
                            let mut st = self.state.lock();
                            let current = st.batches_done;
                            match st.denials.front() {
                                Some(d) if d.batch == current && contains(&raw, self.marker) => {
                                    st.denials.pop_front().map(|d| d.error)
                                }
                                _ => None,
                            }
                        };
                        if self.auditor.is_some() {
                            let reported = replacement.as_deref().unwrap_or(&raw);
                            self.record_error(field(reported.get(5..).unwrap_or_default(), b'C'));
                        }
                        match replacement {
                            Some(error) => self.out.unsplit(error),
                            None => self.forward_report(raw),
                        }
                    }
                    Piece::Message { tag: b'N', raw } => self.forward_report(raw),
                    Piece::Message { tag: b'C', raw } => {
                        self.schema_changed |= crate::catalog::changes_schema(command_tag(&raw));
                        if self.auditor.is_some() {
                            self.record_rows(&raw);
                        }
                        self.out.unsplit(raw);
                    }
                    Piece::Message { tag: b'S', raw } => {
                        check_parameter_status(&raw)?;
                        self.out.unsplit(raw);
                    }
                    Piece::Message { tag: b'A', mut raw } => {
                        self.translate_notification_pid(&mut raw);
                        self.out.unsplit(raw);
                    }
                    Piece::Message { tag: b'Z', raw } => {
                        let status = raw.get(5).copied().unwrap_or(b'I');
                        if self.schema_changed && status == b'I' {
                            self.schema_changed = false;
                            self.shared.catalog_refresher.request_refresh();
                        }
                        let mut st = self.state.lock();
                        let done = st.batches_done;
                        while st.denials.front().is_some_and(|d| d.batch <= done) {
                            st.denials.pop_front();
                        }
                        st.batches_done += 1;
                        st.status = status;
                        if let Some(batch) = st.ended.pop_front() {
                            let elapsed = batch.started.elapsed();
                            self.shared
                                .metrics
                                .statement_duration
                                .observe(elapsed.as_secs_f64());
                            if let Some(auditor) = &self.auditor {
                                let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
                                let slow = auditor.slow_statement().is_some_and(|at| elapsed >= at);
                                for mut event in batch.events {
                                    event.duration_us = Some(micros);
                                    if let Some(statement) = &event.statement {
                                        self.shared.metrics.observe_fingerprint(
                                            &statement.fingerprint,
                                            elapsed.as_secs_f64(),
                                        );
                                    }
                                    let slow =
                                        slow.then(|| super::audit::slow_statement_event(&event));
                                    for event in std::iter::once(event).chain(slow) {
                                        if auditor.emit(event).is_err() {
                                            warn!("audit queue unavailable; the loss is counted");
                                        }
                                    }
                                }
                            }
                        }
                        drained = st.draining && st.idle();
                        drop(st);
                        self.out.unsplit(raw);
                    }
                    Piece::Message { raw, .. } => self.out.unsplit(raw),
                }
            }
            self.pieces = pieces;
            if !self.out.is_empty() {
                client.write_all(&self.out).await?;
                client.flush().await?;
                // Drop the bytes (not just clear them) so that `buf` is again the sole
                // owner of its allocation and can reuse it for the next read.
                self.out = BytesMut::new();
            }
            if drained {
                return Ok(End::Drained);
            }
        }
    }
}

/// What became of a piece of the proxy's own batch's answer.
enum Hidden {
    /// Kept from the client (or, for asynchronous messages, forwarded).
    Kept,
    /// It was the batch's ReadyForQuery; `drained` as for any batch.
    Done { drained: bool },
}

impl Backend<'_> {
    /// Handles a piece of the answer to the proxy's own batch: the client sees only
    /// what the server would have sent it anyway (notifications, parameter changes);
    /// an error ends the session, since the settings the policy asks for are not in
    /// place.
    fn hidden(&mut self, piece: Piece) -> Result<Hidden, SessionError> {
        match piece {
            Piece::Message { tag: b'Z', raw } => {
                let mut st = self.state.lock();
                st.hidden = None;
                st.batches_done += 1;
                st.status = raw.get(5).copied().unwrap_or(b'I');
                Ok(Hidden::Done {
                    drained: st.draining && st.idle(),
                })
            }
            Piece::Message { tag: b'E', raw } => {
                let body = raw.get(5..).unwrap_or_default();
                let text = |code| field_text(body, code);
                warn!(
                    code = %text(b'C'),
                    message = %text(b'M'),
                    "upstream refused the native row-level security settings of a reloaded policy"
                );
                Err(native::refused())
            }
            Piece::Message { tag: b'S', raw } => {
                check_parameter_status(&raw)?;
                self.out.unsplit(raw);
                Ok(Hidden::Kept)
            }
            Piece::Message { tag: b'A', mut raw } => {
                self.translate_notification_pid(&mut raw);
                self.out.unsplit(raw);
                Ok(Hidden::Kept)
            }
            // RowDescription, DataRow, CommandComplete, notices of the proxy's query.
            Piece::Forward(_) | Piece::Message { .. } => Ok(Hidden::Kept),
        }
    }

    /// The event a CommandComplete or ErrorResponse belongs to: the next one of the
    /// oldest unfinished batch (or of the open batch, when it has not ended yet).
    fn with_current_event(&self, f: impl FnOnce(&mut AuditEvent), advance: bool) {
        let mut st = self.state.lock();
        let st = &mut *st;
        let (events, next) = match st.ended.front_mut() {
            Some(batch) => {
                let done = batch
                    .events
                    .iter()
                    .position(|e| e.rows.is_none() && e.sqlstate.is_none());
                (&mut batch.events, done)
            }
            None => {
                let i = st.open_next;
                (&mut st.open_events, Some(i))
            }
        };
        let Some(last) = events.len().checked_sub(1) else {
            return;
        };
        let index = next.unwrap_or(last).min(last);
        f(&mut events[index]);
        if advance && st.ended.is_empty() {
            st.open_next += 1;
        }
    }

    fn record_rows(&self, raw: &[u8]) {
        // CommandComplete's tag ends with the row count ("SELECT 5", "INSERT 0 3").
        let tag = raw.get(5..raw.len().saturating_sub(1)).unwrap_or_default();
        let rows = tag
            .rsplit(|&b| b == b' ')
            .next()
            .and_then(|n| std::str::from_utf8(n).ok())
            .and_then(|n| n.parse::<u64>().ok());
        self.state.lock().total_rows += rows.unwrap_or(0);
        self.with_current_event(|e| e.rows = Some(rows.unwrap_or(0)), true);
    }

    fn record_error(&self, code: Option<&[u8]>) {
        let code = code.map(|c| String::from_utf8_lossy(c).into_owned());
        self.with_current_event(|e| e.sqlstate = code, true);
    }

    /// Forwards an ErrorResponse or NoticeResponse, without its position field when
    /// the statement it points into was forwarded in a text other than the client's.
    fn forward_report(&mut self, raw: BytesMut) {
        let rewritten = {
            let st = self.state.lock();
            st.ended.front().map_or(st.open_rewritten, |b| b.rewritten)
        };
        if rewritten && field(raw.get(5..).unwrap_or_default(), b'P').is_some() {
            self.out.unsplit(without_field(&raw, b'P'));
        } else {
            self.out.unsplit(raw);
        }
    }

    /// NotificationResponse carries the sending backend's pid; clients know sessions
    /// by the pids the proxy handed out, so translate it (libpq's documented way to
    /// recognise one's own notifications compares it with `PQbackendPID`).
    fn translate_notification_pid(&self, raw: &mut BytesMut) {
        let Some(pid_bytes) = raw.get(5..9) else {
            return;
        };
        let upstream_pid =
            i32::from_be_bytes([pid_bytes[0], pid_bytes[1], pid_bytes[2], pid_bytes[3]]);
        if let Some(proxy_pid) = self.shared.cancels.proxy_pid(upstream_pid) {
            raw[5..9].copy_from_slice(&proxy_pid.to_be_bytes());
        }
    }
}

/// The proxy checks statements as UTF-8 with standard-conforming strings; if the
/// server's reading changes (a SET the policy let through, a function that calls
/// set_config), later statements could mean something else to it. End the session.
fn check_parameter_status(raw: &[u8]) -> Result<(), SessionError> {
    let body = raw.get(5..).unwrap_or_default();
    let mut parts = body.split(|&b| b == 0);
    let name = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let value = String::from_utf8_lossy(parts.next().unwrap_or_default());
    if super::startup::reads_like_the_proxy(&name, &value) {
        Ok(())
    } else {
        Err(SessionError::Client(PgError::fatal(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!(
                "portcullis: the server switched {name} to {value}; the proxy requires UTF8 and standard_conforming_strings = on"
            ),
        )))
    }
}

/// A copy of an ErrorResponse/NoticeResponse without the fields of type `code`.
fn without_field(raw: &[u8], code: u8) -> BytesMut {
    let mut out = BytesMut::with_capacity(raw.len());
    out.extend_from_slice(&raw[..1]);
    out.extend_from_slice(&[0, 0, 0, 0]);
    let mut rest = raw.get(5..).unwrap_or_default();
    while let Some((&c, tail)) = rest.split_first() {
        if c == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        if c != code {
            out.extend_from_slice(&[c]);
            out.extend_from_slice(&tail[..end]);
            out.extend_from_slice(&[0]);
        }
        rest = tail.get(end + 1..).unwrap_or_default();
    }
    out.extend_from_slice(&[0]);
    let len = i32::try_from(out.len() - 1).unwrap_or(i32::MAX);
    out[1..5].copy_from_slice(&len.to_be_bytes());
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
