//! The audit event: one type for everything the proxy records.
//!
//! An [`AuditEvent`] is built by the proxy at a phase hook (after startup, after a
//! statement, at session end, on a policy reload, ...), sealed into its instance's hash
//! chain by a [`Chainer`](crate::Chainer), and encoded by a [`Format`](crate::Format).
//!
//! # What an event must never hold
//!
//! An audit trail is read by more people than the data it describes, so an event never
//! carries a protected value: no literal from a statement, no password, no key, no row.
//! [`StatementInfo::text`] is the *normalized* text (every literal replaced by `?`, see
//! [`normalize`](crate::normalize())); build it with [`StatementInfo::from_sql`], which
//! normalizes for you, never by copying the client's text. Attributes and `detail` are
//! for names and versions, not for values read from the database.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::{OffsetDateTime, UtcOffset};

use crate::normalize::normalize;

/// The longest normalized statement text an event keeps, in bytes; longer texts are cut
/// at a character boundary and end with `…` (the fingerprint still covers the whole).
pub const MAX_STATEMENT_TEXT: usize = 16 * 1024;

/// A UTC instant with microsecond precision.
///
/// Serialized as RFC 3339 with exactly six fractional digits and a `Z` offset
/// (`2026-11-24T14:22:30.123456Z`), so that the serialization of an event (and so its
/// hash) does not depend on how many trailing zeros a clock reading happened to have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(OffsetDateTime);

impl Timestamp {
    /// The current time, truncated to the microsecond.
    pub fn now() -> Self {
        Self::from_datetime(OffsetDateTime::now_utc())
    }

    /// `t` converted to UTC and truncated to the microsecond.
    pub fn from_datetime(t: OffsetDateTime) -> Self {
        let t = t.to_offset(UtcOffset::UTC);
        let micros = t.microsecond();
        // `replace_microsecond` only fails for values >= 1_000_000, which `microsecond()`
        // never returns; keep the untruncated time rather than panic if it ever did.
        Timestamp(t.replace_microsecond(micros).unwrap_or(t))
    }

    /// Microseconds since the Unix epoch (negative before 1970).
    pub fn unix_micros(self) -> i128 {
        self.0.unix_timestamp_nanos() / 1_000
    }

    /// Milliseconds since the Unix epoch, as OCSF `time` and CEF `rt` want it.
    pub fn unix_millis(self) -> i64 {
        i64::try_from(self.0.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
    }

    /// The underlying date-time (always UTC).
    pub fn datetime(self) -> OffsetDateTime {
        self.0
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // By hand rather than with `write!` and padding: every event is written at
        // least twice (its hash and its record), so this is on the audit path.
        let t = self.0;
        let mut b = *b"0000-00-00T00:00:00.000000Z";
        let mut put = |at: usize, width: usize, mut v: u32| {
            for i in (at..at + width).rev() {
                b[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        let year = t.year();
        if !(0..=9999).contains(&year) {
            // Outside RFC 3339's four digits; never produced by a clock.
            return write!(
                f,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
                year,
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.microsecond()
            );
        }
        put(0, 4, year.unsigned_abs());
        put(5, 2, u32::from(u8::from(t.month())));
        put(8, 2, u32::from(t.day()));
        put(11, 2, u32::from(t.hour()));
        put(14, 2, u32::from(t.minute()));
        put(17, 2, u32::from(t.second()));
        put(20, 6, t.microsecond());
        // Only ASCII digits and separators were written.
        f.write_str(std::str::from_utf8(&b).map_err(|_| fmt::Error)?)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let t = OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
            .map_err(serde::de::Error::custom)?;
        Ok(Timestamp::from_datetime(t))
    }
}

/// A 128-bit event identifier laid out as a UUIDv7 (RFC 9562): 48 bits of Unix
/// milliseconds, then 74 random bits.
///
/// Why UUIDv7 rather than 128 random bits: every SIEM has a UUID field type, the
/// leading timestamp makes ids sort (and index) in time order, and 74 random bits keep
/// ids from different proxy instances apart without coordination. Ordering *within* an
/// instance is the job of [`AuditEvent::seq`], not of the id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId(u128);

impl EventId {
    /// A fresh id for an event that happens at `time`.
    pub fn new(time: Timestamp) -> Self {
        let millis = u128::from(u64::try_from(time.unix_millis()).unwrap_or(0)) & ((1 << 48) - 1);
        let random: u128 = rand::random();
        let mut v = (millis << 80) | (random & ((1 << 80) - 1));
        // version 7 in bits 76..80, variant 0b10 in bits 62..64
        v = (v & !(0xF << 76)) | (0x7 << 76);
        v = (v & !(0x3 << 62)) | (0x2 << 62);
        EventId(v)
    }

    /// The id as a number (for tests and for callers that store ids compactly).
    pub fn as_u128(self) -> u128 {
        self.0
    }

    /// An id from its numeric value (for replays and tests).
    pub fn from_u128(v: u128) -> Self {
        EventId(v)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut b = [b'-'; 36];
        let mut v = self.0;
        for i in (0..36).rev() {
            if matches!(i, 8 | 13 | 18 | 23) {
                continue;
            }
            b[i] = DIGITS[(v & 0xf) as usize];
            v >>= 4;
        }
        // Only hex digits and dashes were written.
        f.write_str(std::str::from_utf8(&b).map_err(|_| fmt::Error)?)
    }
}

impl Serialize for EventId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let hex: String = s.chars().filter(|c| *c != '-').collect();
        if hex.len() != 32 {
            return Err(serde::de::Error::custom("event id is not a 128-bit UUID"));
        }
        u128::from_str_radix(&hex, 16)
            .map(EventId)
            .map_err(serde::de::Error::custom)
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A client connected (before authentication).
    Connection,
    /// A client authenticated.
    LoginSuccess,
    /// A client failed to authenticate.
    LoginFailure,
    /// A statement was decided (and, unless denied, run).
    Statement,
    /// A statement ran longer than `[audit] slow_statement_ms`: a copy of its
    /// statement event under its own kind, so that sinks can select slow statements.
    SlowStatement,
    /// A session ended; carries [`SessionTotals`].
    SessionEnd,
    /// A new policy set was compiled and swapped in.
    PolicyReload,
    /// A new policy set was invalid; the last good one stays in force.
    PolicyReloadRefused,
    /// The running configuration changed.
    ConfigChange,
    /// A key was generated, unwrapped, rotated or refused.
    KeyEvent,
    /// Audit events were lost (a sink's spool overflowed, a write failed): the trail
    /// itself says where it has a hole.
    AuditLoss,
}

impl EventKind {
    /// The snake_case name used in JSON and as syslog MSGID / CEF signature id.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::Connection => "connection",
            EventKind::LoginSuccess => "login_success",
            EventKind::LoginFailure => "login_failure",
            EventKind::Statement => "statement",
            EventKind::SlowStatement => "slow_statement",
            EventKind::SessionEnd => "session_end",
            EventKind::PolicyReload => "policy_reload",
            EventKind::PolicyReloadRefused => "policy_reload_refused",
            EventKind::ConfigChange => "config_change",
            EventKind::KeyEvent => "key_event",
            EventKind::AuditLoss => "audit_loss",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How urgent an event is, on the RFC 5424 scale (lower is more severe).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Audit itself is failing (`audit_loss`).
    Critical = 2,
    /// Something was refused that an operator must look at (`policy_reload_refused`).
    Error = 3,
    /// A denial or a failed login.
    Warning = 4,
    /// A security-relevant change that went well (reloads, config and key events).
    Notice = 5,
    /// Routine traffic.
    Informational = 6,
}

impl Severity {
    /// The RFC 5424 severity code (0..=7).
    pub const fn code(self) -> u8 {
        self as u8
    }
}

/// Where the client came from and how it is secured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// Subject of the client certificate (mTLS), as an RFC 4514 string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_subject: Option<String>,
    /// Negotiated cipher suite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cipher: Option<String>,
    /// The client's IP address as the proxy sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// The client's source port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Negotiated TLS version (`TLSv1.3`), absent for plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_version: Option<String>,
}

/// A column a statement touched, with its data classification.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TouchedColumn {
    /// Classification classes of the column (`pii`, `secret`, ...), from policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<String>,
    /// Column name.
    pub name: String,
}

/// A table (or view) a statement touched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TouchedTable {
    /// Classification classes of the table itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<String>,
    /// Columns read or written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<TouchedColumn>,
    /// Schema-qualified name as the policy resolved it (`public.accounts`).
    pub name: String,
}

/// A statement, described without any of its values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementInfo {
    /// Statement classes (`read`, `write`, `ddl`, ...), as the policy named them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class: Vec<String>,
    /// Hex of the first 16 bytes of SHA-256 over the normalized token stream; equal for
    /// statements that differ only in literals, comments, spacing or keyword case.
    pub fingerprint: String,
    /// The client's own text, literals and all: only when the operator turned on
    /// `full_statement_text` (it may carry protected values). Cut like `text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_text: Option<String>,
    /// Tables and columns touched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<TouchedTable>,
    /// The **normalized** text: literals replaced by `?`, comments removed, whitespace
    /// collapsed. Never the client's text: literals are where protected values live.
    pub text: String,
}

impl StatementInfo {
    /// Describes `sql` (the client's raw text) by normalizing it: the raw text is not
    /// kept. Texts longer than [`MAX_STATEMENT_TEXT`] are cut.
    pub fn from_sql(sql: &str) -> Self {
        let n = normalize(sql);
        let mut text = n.text;
        truncate_with_ellipsis(&mut text, MAX_STATEMENT_TEXT);
        StatementInfo {
            class: Vec::new(),
            text,
            fingerprint: n.fingerprint,
            tables: Vec::new(),
            full_text: None,
        }
    }

    /// Keeps the client's own text too (see [`StatementInfo::full_text`]).
    pub fn with_full_text(mut self, sql: &str) -> Self {
        let mut text = sql.to_owned();
        truncate_with_ellipsis(&mut text, MAX_STATEMENT_TEXT);
        self.full_text = Some(text);
        self
    }

    /// The distinct classification classes of everything touched, sorted.
    pub fn data_classes(&self) -> Vec<&str> {
        let mut classes: Vec<&str> = self
            .tables
            .iter()
            .flat_map(|t| {
                t.classes
                    .iter()
                    .chain(t.columns.iter().flat_map(|c| &c.classes))
            })
            .map(String::as_str)
            .collect();
        classes.sort_unstable();
        classes.dedup();
        classes
    }

    /// The text a format shows: the full text where it was kept, else the normalized.
    pub fn shown_text(&self) -> &str {
        self.full_text.as_deref().unwrap_or(&self.text)
    }

    /// Adds a statement class.
    pub fn with_class(mut self, class: impl Into<String>) -> Self {
        self.class.push(class.into());
        self
    }

    /// Adds a touched table.
    pub fn with_table(mut self, table: TouchedTable) -> Self {
        self.tables.push(table);
        self
    }
}

fn truncate_with_ellipsis(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut cut = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s.push('…');
}

/// What the policy did with a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Forwarded as sent (after re-serialization).
    Allowed,
    /// Forwarded with row filters or column masks applied.
    Rewritten,
    /// Refused; the client got an error.
    Denied,
}

impl Outcome {
    /// The snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Rewritten => "rewritten",
            Outcome::Denied => "denied",
        }
    }
}

/// The policy decision behind a statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionInfo {
    /// The policy set runs in dry-run mode: the outcome was decided and recorded but
    /// not enforced.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// What happened to the statement.
    pub outcome: Outcome,
    /// Policy version in force (git commit or content hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<String>,
    /// The rule that decided (for a denial, the rule that refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

impl DecisionInfo {
    /// A decision with this outcome and nothing else known.
    pub fn new(outcome: Outcome) -> Self {
        DecisionInfo {
            outcome,
            rule: None,
            policy_version: None,
            dry_run: false,
        }
    }

    /// Names the deciding rule.
    pub fn with_rule(mut self, rule: impl Into<String>) -> Self {
        self.rule = Some(rule.into());
        self
    }

    /// Names the policy version.
    pub fn with_policy_version(mut self, version: impl Into<String>) -> Self {
        self.policy_version = Some(version.into());
        self
    }
}

/// Totals over a whole session, for `session_end`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionTotals {
    /// Statements denied.
    pub denied: u64,
    /// Session length in microseconds.
    pub duration_us: u64,
    /// Rows returned or affected, summed.
    pub rows: u64,
    /// Statements received.
    pub statements: u64,
}

fn is_empty_map(m: &BTreeMap<String, String>) -> bool {
    m.is_empty()
}

fn is_empty_slice(s: &[String]) -> bool {
    s.is_empty()
}

/// One audit event.
///
/// Optional fields are left out of the JSON when absent. The chain fields
/// (`instance`, `seq`, `prev_hash`, `hash`) are filled by
/// [`Chainer::seal`](crate::Chainer::seal), not by the caller.
///
/// The fields are declared in the bytewise order of their JSON keys, as are those of
/// the types inside it, so that the canonical form (see [`crate::chain`]) is written
/// straight through instead of being sorted; a test in `canonical` keeps it so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// `application_name` from the startup message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_name: Option<String>,
    /// Identity attributes (tenant, department, ...). Sorted, so the serialization is
    /// deterministic.
    #[serde(default, skip_serializing_if = "is_empty_map")]
    pub attributes: Arc<BTreeMap<String, String>>,
    /// Client address and TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<Arc<ClientInfo>>,
    /// Database name from the startup message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// The policy decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Arc<DecisionInfo>>,
    /// Free text for reload, config, key and loss events (what changed, why it was
    /// refused). Never a secret or a data value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Duration in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_us: Option<u64>,
    /// `algorithm:hex` over this event's canonical form (see [`crate::chain`]).
    #[serde(default)]
    pub hash: String,
    /// Unique id (UUIDv7 layout).
    pub id: EventId,
    /// Name of the proxy instance that recorded it; the chain is per instance.
    #[serde(default)]
    pub instance: String,
    /// What happened.
    pub kind: EventKind,
    /// `hash` of the instance's previous event; empty for the first.
    #[serde(default)]
    pub prev_hash: String,
    /// Roles in force.
    #[serde(default, skip_serializing_if = "is_empty_slice")]
    pub roles: Arc<[String]>,
    /// Rows returned or affected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Position in the instance's chain, from 1, without gaps.
    #[serde(default)]
    pub seq: u64,
    /// Session totals, for `session_end`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionTotals>,
    /// The session it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// SQLSTATE of the error the client got, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<String>,
    /// The statement, normalized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<Arc<StatementInfo>>,
    /// When it happened (UTC, microseconds).
    pub time: Timestamp,
    /// Authenticated (or, for `login_failure`, claimed) user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl AuditEvent {
    /// An event of `kind` happening now, with a fresh id and nothing else filled.
    pub fn new(kind: EventKind) -> Self {
        Self::at(kind, Timestamp::now())
    }

    /// An event of `kind` at `time` (for tests and replays).
    pub fn at(kind: EventKind, time: Timestamp) -> Self {
        AuditEvent {
            time,
            id: EventId::new(time),
            instance: String::new(),
            seq: 0,
            prev_hash: String::new(),
            hash: String::new(),
            kind,
            session_id: None,
            client: None,
            user: None,
            roles: Arc::default(),
            attributes: Arc::default(),
            database: None,
            application_name: None,
            statement: None,
            decision: None,
            rows: None,
            duration_us: None,
            sqlstate: None,
            session: None,
            detail: None,
        }
    }

    /// A `statement` event for `sql` (normalized here) with its decision.
    pub fn statement(session_id: impl Into<String>, sql: &str, decision: DecisionInfo) -> Self {
        Self::new(EventKind::Statement)
            .with_session(session_id)
            .with_statement(StatementInfo::from_sql(sql))
            .with_decision(decision)
    }

    /// A `login_success` or `login_failure` event.
    pub fn login(session_id: impl Into<String>, user: impl Into<String>, success: bool) -> Self {
        let kind = if success {
            EventKind::LoginSuccess
        } else {
            EventKind::LoginFailure
        };
        Self::new(kind).with_session(session_id).with_user(user)
    }

    /// Sets the session id.
    pub fn with_session(mut self, id: impl Into<String>) -> Self {
        self.session_id = Some(id.into());
        self
    }

    /// Sets the client (shared: a session's events all have the same).
    pub fn with_client(mut self, client: impl Into<Arc<ClientInfo>>) -> Self {
        self.client = Some(client.into());
        self
    }

    /// Sets the user.
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Sets the roles.
    pub fn with_roles<I, S>(mut self, roles: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.roles = roles.into_iter().map(Into::into).collect();
        self
    }

    /// Adds an identity attribute.
    pub fn with_attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.attributes).insert(key.into(), value.into());
        self
    }

    /// Sets the database name.
    pub fn with_database(mut self, database: impl Into<String>) -> Self {
        self.database = Some(database.into());
        self
    }

    /// Sets application_name.
    pub fn with_application(mut self, name: impl Into<String>) -> Self {
        self.application_name = Some(name.into());
        self
    }

    /// Sets the statement (shared: the executions of one prepared statement all
    /// describe it with the same [`StatementInfo`]).
    pub fn with_statement(mut self, statement: impl Into<Arc<StatementInfo>>) -> Self {
        self.statement = Some(statement.into());
        self
    }

    /// Sets the decision (shared: the executions of one prepared statement all have the
    /// same).
    pub fn with_decision(mut self, decision: impl Into<Arc<DecisionInfo>>) -> Self {
        self.decision = Some(decision.into());
        self
    }

    /// Sets the statement's result: rows, duration and SQLSTATE (if it failed).
    pub fn with_result(
        mut self,
        rows: Option<u64>,
        duration_us: u64,
        sqlstate: Option<&str>,
    ) -> Self {
        self.rows = rows;
        self.duration_us = Some(duration_us);
        self.sqlstate = sqlstate.map(str::to_owned);
        self
    }

    /// Sets session totals.
    pub fn with_totals(mut self, totals: SessionTotals) -> Self {
        self.session = Some(totals);
        self
    }

    /// Sets the free-text detail.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Whether the event records something that went wrong for the actor (a failed
    /// login, a denied or failed statement, a refused reload, lost audit events).
    pub fn is_failure(&self) -> bool {
        match self.kind {
            EventKind::LoginFailure | EventKind::PolicyReloadRefused | EventKind::AuditLoss => true,
            _ => {
                self.decision
                    .as_ref()
                    .is_some_and(|d| d.outcome == Outcome::Denied)
                    || self.sqlstate.is_some()
            }
        }
    }

    /// Severity derived from the kind and the outcome.
    pub fn severity(&self) -> Severity {
        match self.kind {
            EventKind::AuditLoss => Severity::Critical,
            EventKind::PolicyReloadRefused => Severity::Error,
            EventKind::LoginFailure => Severity::Warning,
            EventKind::PolicyReload
            | EventKind::ConfigChange
            | EventKind::KeyEvent
            | EventKind::SlowStatement => Severity::Notice,
            EventKind::Statement
                if self
                    .decision
                    .as_ref()
                    .is_some_and(|d| d.outcome == Outcome::Denied) =>
            {
                Severity::Warning
            }
            _ => Severity::Informational,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_has_six_digits_and_round_trips() {
        let t = Timestamp::from_datetime(
            OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_120_000_999).unwrap(),
        );
        assert_eq!(t.to_string(), "2023-11-14T22:13:20.120000Z");
        let json = serde_json::to_string(&t).unwrap();
        let back: Timestamp = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
        let offset: Timestamp = serde_json::from_str("\"2023-11-15T00:13:20.12+02:00\"").unwrap();
        assert_eq!(offset, t);
    }

    #[test]
    fn display_matches_the_padded_formats() {
        for nanos in [
            0i128,
            1_795_530_150_123_456_000,
            -62_135_596_800_000_000_000,
            253_402_300_799_999_999_000,
        ] {
            let t =
                Timestamp::from_datetime(OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap());
            let d = t.datetime();
            let padded = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
                d.year(),
                u8::from(d.month()),
                d.day(),
                d.hour(),
                d.minute(),
                d.second(),
                d.microsecond()
            );
            assert_eq!(t.to_string(), padded);
        }
        for v in [0u128, u128::MAX, 0x019a_b6a1_2b3b_7000_8000_0000_0000_0001] {
            let h = format!("{v:032x}");
            let dashed = format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            );
            assert_eq!(EventId::from_u128(v).to_string(), dashed);
        }
    }

    #[test]
    fn event_id_is_uuid_v7() {
        let t = Timestamp::now();
        let id = EventId::new(t);
        let s = id.to_string();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "7");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"));
        let back: EventId = serde_json::from_str(&format!("\"{s}\"")).unwrap();
        assert_eq!(back, id);
        assert_ne!(EventId::new(t), id);
    }

    #[test]
    fn optional_fields_are_skipped() {
        let e = AuditEvent::new(EventKind::Connection);
        let v = serde_json::to_value(&e).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        for k in ["time", "id", "instance", "seq", "prev_hash", "hash", "kind"] {
            assert!(keys.contains(&k), "{k} missing");
        }
        assert_eq!(keys.len(), 7, "{keys:?}");
    }

    #[test]
    fn statement_event_keeps_no_literal() {
        let e = AuditEvent::statement(
            "s1",
            "SELECT * FROM users WHERE ssn = '123-45-6789' AND pin = 4242",
            DecisionInfo::new(Outcome::Allowed),
        );
        let json = serde_json::to_string(&e).unwrap();
        assert!(!json.contains("6789"));
        assert!(!json.contains("4242"));
        let back: AuditEvent = serde_json::from_str(&json).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn long_text_is_cut_at_char_boundary() {
        let mut s = "é".repeat(100);
        truncate_with_ellipsis(&mut s, 50);
        assert!(s.len() <= 50);
        assert!(s.ends_with('…'));
    }

    #[test]
    fn severity_follows_outcome() {
        let denied = AuditEvent::statement("s", "select 1", DecisionInfo::new(Outcome::Denied));
        assert_eq!(denied.severity(), Severity::Warning);
        assert!(denied.is_failure());
        let ok = AuditEvent::statement("s", "select 1", DecisionInfo::new(Outcome::Allowed));
        assert_eq!(ok.severity(), Severity::Informational);
        assert!(!ok.is_failure());
    }
}
