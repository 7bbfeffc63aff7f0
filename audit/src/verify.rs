//! Checking a hash-chained audit trail (`portcullis audit verify`).
//!
//! [`verify`] reads JSON lines (the native [`Format::Json`](crate::Format::Json)) from
//! one or more sources, given oldest first (rotated files, then the active one), and
//! checks for every event:
//!
//! - that it parses and carries the chain fields (`id`, `instance`, `seq`, `prev_hash`,
//!   `hash`);
//! - that `hash` is right for its canonical form (see [`crate::chain`]), keyed with
//!   HMAC-SHA-256 when a key is given — an unkeyed hash then counts as a modification,
//!   since anyone can compute one;
//! - that `prev_hash` is the hash of the instance's event `seq - 1`;
//! - that every instance's sequence numbers run without gaps, repeats or reordering,
//!   and that an instance does not start a second chain (a new seq 1).
//!
//! Every problem found is listed by position (source index, 1-based line); the first
//! one is exact, later ones may be consequences of it. The first event seen for an
//! instance anchors its chain: if retention deleted older files, the chain starts at
//! whatever seq the oldest kept file starts with (shown in [`InstanceSummary`]), and
//! only a first seq of 1 is checked for an empty `prev_hash`.
//!
//! Memory is bounded: per instance, the last [`WINDOW`] events are remembered for
//! reorder and duplicate detection, and lines longer than [`MAX_LINE`] are refused.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{self, BufRead, Read};

use serde_json::Value;

use crate::chain::{HMAC_PREFIX, hash_value};

/// Longest line accepted, in bytes.
pub const MAX_LINE: usize = 1024 * 1024;
/// How many recent events per instance are remembered.
pub const WINDOW: usize = 4096;
/// How many problems are kept in a report (all are counted).
pub const MAX_PROBLEMS: usize = 1000;

/// Where a line is: index of the source in the order given, and 1-based line number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// Index of the source (file) in the order given to [`verify`].
    pub source: usize,
    /// 1-based line number within the source.
    pub line: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "source {} line {}", self.source, self.line)
    }
}

/// One problem in an audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A source could not be read.
    Io {
        /// The source.
        source: usize,
        /// The error.
        error: String,
    },
    /// A line is not a chained event. `truncated` when it is the last line of its
    /// source and has no newline: a write cut short (crash or truncation).
    Unparseable {
        /// The line.
        at: Position,
        /// Whether the line looks cut short.
        truncated: bool,
        /// What is wrong.
        reason: String,
    },
    /// An event's content does not match its hash: it was modified after sealing (or,
    /// with a key, carries an unkeyed or foreign hash).
    Modified {
        /// The line.
        at: Position,
        /// Instance of the event.
        instance: String,
        /// Its seq.
        seq: u64,
        /// Its id.
        id: String,
    },
    /// An event is keyed (HMAC) but no key was given, so its hash was not checked.
    KeyRequired {
        /// The line.
        at: Position,
    },
    /// An event's `prev_hash` is not the hash of its predecessor: the predecessor was
    /// altered and re-hashed, or one of the two was replaced.
    BrokenLink {
        /// The line of the event whose `prev_hash` does not match.
        at: Position,
        /// Instance.
        instance: String,
        /// Its seq.
        seq: u64,
        /// Its id.
        id: String,
        /// The line of the predecessor (`seq - 1`), when it was seen.
        previous: Option<Position>,
    },
    /// Events `from..=to` of an instance never appeared.
    Missing {
        /// Instance.
        instance: String,
        /// First missing seq.
        from: u64,
        /// Last missing seq.
        to: u64,
        /// The line of the event before the gap.
        after: Position,
        /// The line of the event after the gap.
        before: Position,
    },
    /// An event appeared after a later event of its instance.
    Reordered {
        /// The line of the late event.
        at: Position,
        /// Instance.
        instance: String,
        /// Its seq.
        seq: u64,
        /// The highest seq seen before it.
        after_seq: u64,
        /// The line of that event.
        after: Position,
    },
    /// A new chain (seq 1, empty `prev_hash`) started for an instance that already
    /// had one: the instance lost its chain state, or the new chain is forged.
    Restarted {
        /// The line of the new genesis event.
        at: Position,
        /// Instance.
        instance: String,
        /// The highest seq of the previous chain.
        after_seq: u64,
        /// The line of that event.
        after: Position,
    },
    /// A seq appeared a second time.
    Duplicate {
        /// The line of the repeat.
        at: Position,
        /// Instance.
        instance: String,
        /// The repeated seq.
        seq: u64,
        /// The line of its first appearance, if still remembered.
        first: Option<Position>,
    },
}

impl Problem {
    /// The position the problem is reported at (for ordering).
    pub fn position(&self) -> Position {
        match self {
            Problem::Io { source, .. } => Position {
                source: *source,
                line: 0,
            },
            Problem::Unparseable { at, .. }
            | Problem::Modified { at, .. }
            | Problem::KeyRequired { at }
            | Problem::BrokenLink { at, .. }
            | Problem::Reordered { at, .. }
            | Problem::Restarted { at, .. }
            | Problem::Duplicate { at, .. } => *at,
            Problem::Missing { before, .. } => *before,
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Problem::Io { .. } => 0,
            Problem::Unparseable { .. } => 1,
            Problem::Modified { .. } => 2,
            Problem::KeyRequired { .. } => 3,
            Problem::Missing { .. } => 4,
            Problem::Reordered { .. } => 5,
            Problem::Duplicate { .. } => 6,
            Problem::BrokenLink { .. } => 7,
            Problem::Restarted { .. } => 8,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Io { source, error } => write!(f, "source {source}: read error: {error}"),
            Problem::Unparseable {
                at,
                truncated: true,
                reason,
            } => {
                write!(f, "{at}: truncated event (last line cut short): {reason}")
            }
            Problem::Unparseable { at, reason, .. } => {
                write!(f, "{at}: unparseable line: {reason}")
            }
            Problem::Modified {
                at,
                instance,
                seq,
                id,
            } => write!(
                f,
                "{at}: event {id} (instance {instance}, seq {seq}) was modified: its hash does not match its content"
            ),
            Problem::KeyRequired { at } => {
                write!(
                    f,
                    "{at}: event is HMAC-keyed; its hash cannot be checked without the key"
                )
            }
            Problem::BrokenLink {
                at,
                instance,
                seq,
                id,
                previous,
            } => {
                write!(
                    f,
                    "{at}: event {id} (instance {instance}, seq {seq}) does not link to seq {}",
                    seq.saturating_sub(1)
                )?;
                match previous {
                    Some(p) => write!(
                        f,
                        " at {p}: that event was altered and re-hashed, or replaced"
                    ),
                    None => Ok(()),
                }
            }
            Problem::Missing {
                instance,
                from,
                to,
                after,
                before,
            } => {
                if from == to {
                    write!(
                        f,
                        "instance {instance}: event seq {from} is missing between {after} and {before}"
                    )
                } else {
                    write!(
                        f,
                        "instance {instance}: events seq {from}..={to} are missing between {after} and {before}"
                    )
                }
            }
            Problem::Reordered {
                at,
                instance,
                seq,
                after_seq,
                after,
            } => write!(
                f,
                "{at}: instance {instance} event seq {seq} is out of order: it comes after seq {after_seq} at {after}"
            ),
            Problem::Restarted {
                at,
                instance,
                after_seq,
                after,
            } => write!(
                f,
                "{at}: instance {instance} starts a new chain at seq 1 after seq {after_seq} at {after}"
            ),
            Problem::Duplicate {
                at,
                instance,
                seq,
                first,
            } => {
                write!(f, "{at}: instance {instance} seq {seq} appears again")?;
                match first {
                    Some(p) => write!(f, " (first at {p})"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// What [`verify`] saw of one instance's chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceSummary {
    /// Events read.
    pub events: u64,
    /// Seq of the first event read (1 unless older files are gone).
    pub first_seq: u64,
    /// Highest seq read.
    pub last_seq: u64,
}

/// The result of [`verify`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Lines read (blank lines included).
    pub lines: u64,
    /// Events whose chain fields parsed.
    pub events: u64,
    /// Per instance.
    pub instances: BTreeMap<String, InstanceSummary>,
    /// Problems in position order, at most [`MAX_PROBLEMS`]; the first is exact.
    pub problems: Vec<Problem>,
    /// Problems found, including those not kept.
    pub problem_count: u64,
}

impl Report {
    /// Whether the trail verified without any problem.
    pub fn is_ok(&self) -> bool {
        self.problem_count == 0
    }

    /// The first problem in position order.
    pub fn first_problem(&self) -> Option<&Problem> {
        self.problems.first()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} lines, {} events, {} instances, {} problems",
            self.lines,
            self.events,
            self.instances.len(),
            self.problem_count
        )?;
        for (name, s) in &self.instances {
            writeln!(
                f,
                "instance {name}: {} events, seq {}..={}",
                s.events, s.first_seq, s.last_seq
            )?;
        }
        for p in &self.problems {
            writeln!(f, "{p}")?;
        }
        if self.problem_count > self.problems.len() as u64 {
            writeln!(
                f,
                "... and {} more",
                self.problem_count - self.problems.len() as u64
            )?;
        }
        Ok(())
    }
}

/// Verifies the JSON-line sources `readers`, oldest first; see the module docs.
pub fn verify<R, I>(readers: I, key: Option<&[u8]>) -> Report
where
    R: BufRead,
    I: IntoIterator<Item = R>,
{
    let mut v = Verifier {
        key,
        report: Report::default(),
        states: HashMap::new(),
    };
    for (source, mut reader) in readers.into_iter().enumerate() {
        v.read_source(source, &mut reader);
    }
    v.finish()
}

/// The members of an event line that the chain is made of.
struct ChainFields {
    instance: String,
    seq: u64,
    prev_hash: String,
    hash: String,
    id: String,
}

impl ChainFields {
    fn parse(value: &Value) -> Result<Self, String> {
        let obj = value
            .as_object()
            .ok_or_else(|| "not a JSON object".to_owned())?;
        let seq = obj
            .get("seq")
            .and_then(Value::as_u64)
            .ok_or_else(|| "field seq is missing or not an unsigned integer".to_owned())?;
        Ok(ChainFields {
            instance: field_str(obj, "instance")?,
            seq,
            prev_hash: field_str(obj, "prev_hash")?,
            hash: field_str(obj, "hash")?,
            id: field_str(obj, "id")?,
        })
    }
}

struct Entry {
    hash: String,
    prev_hash: String,
    pos: Position,
    id: String,
}

struct Gap {
    from: u64,
    to: u64,
    after: Position,
    before: Position,
}

struct State {
    first_seq: u64,
    max_seq: u64,
    max_pos: Position,
    recent: BTreeMap<u64, Entry>,
    gaps: Vec<Gap>,
}

struct Verifier<'k> {
    key: Option<&'k [u8]>,
    report: Report,
    states: HashMap<String, State>,
}

enum Line {
    Eof,
    Complete,
    Unterminated,
    TooLong,
}

fn read_line<R: BufRead>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<Line> {
    buf.clear();
    let limit = u64::try_from(MAX_LINE)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    let n = r.by_ref().take(limit).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(Line::Eof);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        return Ok(Line::Complete);
    }
    if buf.len() > MAX_LINE {
        // Skip the rest of the over-long line without buffering it.
        loop {
            let chunk = r.fill_buf()?;
            if chunk.is_empty() {
                break;
            }
            if let Some(i) = chunk.iter().position(|b| *b == b'\n') {
                r.consume(i + 1);
                break;
            }
            let len = chunk.len();
            r.consume(len);
        }
        return Ok(Line::TooLong);
    }
    Ok(Line::Unterminated)
}

fn field_str(obj: &serde_json::Map<String, Value>, name: &str) -> Result<String, String> {
    match obj.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("field {name} is not a string")),
        None => Err(format!("field {name} is missing")),
    }
}

impl Verifier<'_> {
    fn problem(&mut self, p: Problem) {
        self.report.problem_count += 1;
        if self.report.problems.len() < MAX_PROBLEMS {
            self.report.problems.push(p);
        }
    }

    fn read_source<R: BufRead>(&mut self, source: usize, r: &mut R) {
        let mut buf = Vec::with_capacity(4096);
        let mut line = 0u64;
        loop {
            let kind = match read_line(r, &mut buf) {
                Ok(Line::Eof) => return,
                Ok(k) => k,
                Err(e) => {
                    self.problem(Problem::Io {
                        source,
                        error: e.to_string(),
                    });
                    return;
                }
            };
            line += 1;
            self.report.lines += 1;
            let at = Position { source, line };
            if matches!(kind, Line::TooLong) {
                self.problem(Problem::Unparseable {
                    at,
                    truncated: false,
                    reason: format!("line longer than {MAX_LINE} bytes"),
                });
                continue;
            }
            if buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let truncated = matches!(kind, Line::Unterminated);
            match serde_json::from_slice::<Value>(&buf) {
                Ok(value) => self.event(at, &value, truncated),
                Err(e) => self.problem(Problem::Unparseable {
                    at,
                    truncated,
                    reason: e.to_string(),
                }),
            }
        }
    }

    fn event(&mut self, at: Position, value: &Value, truncated: bool) {
        let fields = match ChainFields::parse(value) {
            Ok(f) => f,
            Err(reason) => {
                self.problem(Problem::Unparseable {
                    at,
                    truncated,
                    reason,
                });
                return;
            }
        };
        self.report.events += 1;
        self.check_hash(at, value, &fields);
        self.link(at, fields);
    }

    fn check_hash(&mut self, at: Position, value: &Value, f: &ChainFields) {
        let expected = match (f.hash.starts_with(HMAC_PREFIX), self.key) {
            (true, None) => {
                self.problem(Problem::KeyRequired { at });
                return;
            }
            // With a key, an unkeyed hash is a downgrade: anyone can compute one.
            (false, Some(_)) => None,
            (_, key) => hash_value(value, key).ok(),
        };
        if expected.as_deref() != Some(f.hash.as_str()) {
            self.problem(Problem::Modified {
                at,
                instance: f.instance.clone(),
                seq: f.seq,
                id: f.id.clone(),
            });
        }
    }

    fn link(&mut self, at: Position, f: ChainFields) {
        let ChainFields {
            instance,
            seq,
            prev_hash,
            hash,
            id,
        } = f;
        let summary = self.report.instances.entry(instance.clone()).or_default();
        summary.events += 1;
        if summary.events == 1 {
            summary.first_seq = seq;
        }
        summary.last_seq = summary.last_seq.max(seq);

        let mut problems = Vec::new();
        let mut is_new = !self.states.contains_key(&instance);
        // A second genesis event (not a copy of the first) is a new chain: the instance
        // lost its chain state, or someone started a forged one.
        let restarted = seq == 1
            && prev_hash.is_empty()
            && self
                .states
                .get(&instance)
                .is_some_and(|st| st.recent.get(&1).is_none_or(|e| e.hash != hash));
        if restarted {
            if let Some(old) = self.states.remove(&instance) {
                for g in old.gaps {
                    problems.push(Problem::Missing {
                        instance: instance.clone(),
                        from: g.from,
                        to: g.to,
                        after: g.after,
                        before: g.before,
                    });
                }
                problems.push(Problem::Restarted {
                    at,
                    instance: instance.clone(),
                    after_seq: old.max_seq,
                    after: old.max_pos,
                });
            }
            is_new = true;
        }
        let st = self
            .states
            .entry(instance.clone())
            .or_insert_with(|| State {
                first_seq: seq,
                max_seq: seq,
                max_pos: at,
                recent: BTreeMap::new(),
                gaps: Vec::new(),
            });
        let in_gap = st.gaps.iter().position(|g| g.from <= seq && seq <= g.to);

        if is_new {
            // The first event anchors the chain; only a genesis event can be checked.
            if seq == 1 && !prev_hash.is_empty() {
                problems.push(Problem::BrokenLink {
                    at,
                    instance: instance.clone(),
                    seq,
                    id: id.clone(),
                    previous: None,
                });
            }
        } else if let Some(first) = st.recent.get(&seq) {
            problems.push(Problem::Duplicate {
                at,
                instance: instance.clone(),
                seq,
                first: Some(first.pos),
            });
        } else if seq <= st.max_seq && in_gap.is_none() && seq >= st.first_seq {
            // Seen before, longer ago than the window remembers.
            problems.push(Problem::Duplicate {
                at,
                instance: instance.clone(),
                seq,
                first: None,
            });
        } else {
            if seq < st.max_seq {
                if let Some(i) = in_gap {
                    let g = st.gaps.remove(i);
                    if g.from < seq {
                        st.gaps.push(Gap {
                            from: g.from,
                            to: seq - 1,
                            after: g.after,
                            before: g.before,
                        });
                    }
                    if seq < g.to {
                        st.gaps.push(Gap {
                            from: seq + 1,
                            to: g.to,
                            after: g.after,
                            before: g.before,
                        });
                    }
                }
                st.first_seq = st.first_seq.min(seq);
                problems.push(Problem::Reordered {
                    at,
                    instance: instance.clone(),
                    seq,
                    after_seq: st.max_seq,
                    after: st.max_pos,
                });
            } else if seq > st.max_seq.saturating_add(1) {
                st.gaps.push(Gap {
                    from: st.max_seq + 1,
                    to: seq - 1,
                    after: st.max_pos,
                    before: at,
                });
            }
            // Link to the predecessor and, for a late event, from its successor.
            if let Some(p) = seq.checked_sub(1).and_then(|s| st.recent.get(&s)) {
                if p.hash != prev_hash {
                    problems.push(Problem::BrokenLink {
                        at,
                        instance: instance.clone(),
                        seq,
                        id: id.clone(),
                        previous: Some(p.pos),
                    });
                }
            }
            if let Some(n) = seq.checked_add(1).and_then(|s| st.recent.get(&s)) {
                if n.prev_hash != hash {
                    problems.push(Problem::BrokenLink {
                        at: n.pos,
                        instance: instance.clone(),
                        seq: seq.saturating_add(1),
                        id: n.id.clone(),
                        previous: Some(at),
                    });
                }
            }
        }
        let remember = is_new || !matches!(problems.last(), Some(Problem::Duplicate { .. }));
        if remember {
            if seq >= st.max_seq {
                st.max_seq = seq;
                st.max_pos = at;
            }
            st.recent.insert(
                seq,
                Entry {
                    hash,
                    prev_hash,
                    pos: at,
                    id,
                },
            );
            while st.recent.len() > WINDOW {
                st.recent.pop_first();
            }
        }
        // Gaps that can no longer be filled within the window are final.
        let horizon = st.max_seq.saturating_sub(WINDOW as u64);
        let mut i = 0;
        while i < st.gaps.len() {
            if st.gaps[i].to < horizon {
                let g = st.gaps.swap_remove(i);
                problems.push(Problem::Missing {
                    instance: instance.clone(),
                    from: g.from,
                    to: g.to,
                    after: g.after,
                    before: g.before,
                });
            } else {
                i += 1;
            }
        }
        for p in problems {
            self.problem(p);
        }
    }

    fn finish(mut self) -> Report {
        let mut states: Vec<(String, State)> = self.states.drain().collect();
        states.sort_by(|a, b| a.0.cmp(&b.0));
        for (instance, st) in states {
            for g in st.gaps {
                self.problem(Problem::Missing {
                    instance: instance.clone(),
                    from: g.from,
                    to: g.to,
                    after: g.after,
                    before: g.before,
                });
            }
        }
        self.report
            .problems
            .sort_by_key(|p| (p.position(), p.rank()));
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::Chainer;
    use crate::event::{AuditEvent, DecisionInfo, EventKind, Outcome};
    use crate::format::Format;

    fn trail(n: usize, key: Option<&[u8]>) -> Vec<String> {
        let mut c = Chainer::new("px-1", key.map(<[u8]>::to_vec));
        (0..n)
            .map(|i| {
                let mut e = AuditEvent::statement(
                    format!("s{i}"),
                    &format!("select {i}"),
                    DecisionInfo::new(Outcome::Allowed),
                );
                c.seal(&mut e).unwrap();
                let mut out = Vec::new();
                Format::Json.encode(&e, &mut out).unwrap();
                String::from_utf8(out).unwrap()
            })
            .collect()
    }

    fn run(lines: &[String], key: Option<&[u8]>) -> Report {
        let text: String = lines.concat();
        verify([text.as_bytes()], key)
    }

    fn pos(line: u64) -> Position {
        Position { source: 0, line }
    }

    #[test]
    fn intact_chain_verifies() {
        let r = run(&trail(5, None), None);
        assert!(r.is_ok(), "{:?}", r.problems);
        assert_eq!(r.events, 5);
        assert_eq!(
            r.instances["px-1"],
            InstanceSummary {
                events: 5,
                first_seq: 1,
                last_seq: 5
            }
        );
    }

    #[test]
    fn intact_keyed_chain_verifies_only_with_key() {
        let lines = trail(3, Some(b"secret"));
        assert!(run(&lines, Some(b"secret")).is_ok());
        let wrong = run(&lines, Some(b"other"));
        assert!(
            matches!(wrong.first_problem(), Some(Problem::Modified { at, .. }) if *at == pos(1))
        );
        let none = run(&lines, None);
        assert!(matches!(
            none.first_problem(),
            Some(Problem::KeyRequired { .. })
        ));
    }

    #[test]
    fn unkeyed_chain_fails_when_key_expected() {
        let r = run(&trail(2, None), Some(b"secret"));
        assert!(matches!(
            r.first_problem(),
            Some(Problem::Modified { seq: 1, .. })
        ));
    }

    #[test]
    fn spans_several_sources() {
        let lines = trail(4, None);
        let a = lines[..2].concat();
        let b = lines[2..].concat();
        let r = verify([a.as_bytes(), b.as_bytes()], None);
        assert!(r.is_ok(), "{:?}", r.problems);
    }

    #[test]
    fn modified_field_is_reported() {
        let mut lines = trail(5, None);
        let id = serde_json::from_str::<Value>(&lines[2]).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        lines[2] = lines[2].replace("\"outcome\":\"allowed\"", "\"outcome\":\"denied\"");
        let r = run(&lines, None);
        assert_eq!(r.problem_count, 1, "{:?}", r.problems);
        assert_eq!(
            r.first_problem(),
            Some(&Problem::Modified {
                at: pos(3),
                instance: "px-1".into(),
                seq: 3,
                id
            })
        );
    }

    #[test]
    fn rehashed_modification_breaks_the_next_link() {
        let mut lines = trail(4, None);
        let mut v: Value = serde_json::from_str(&lines[1]).unwrap();
        v["user"] = "mallory".into();
        v["hash"] = hash_value(&v, None).unwrap().into();
        lines[1] = format!("{v}\n");
        let r = run(&lines, None);
        assert!(
            matches!(r.first_problem(), Some(Problem::BrokenLink { at, seq: 3, previous: Some(p), .. }) if *at == pos(3) && *p == pos(2)),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn deleted_line_is_a_gap() {
        let mut lines = trail(5, None);
        lines.remove(2);
        let r = run(&lines, None);
        assert_eq!(r.problem_count, 1, "{:?}", r.problems);
        assert_eq!(
            r.first_problem(),
            Some(&Problem::Missing {
                instance: "px-1".into(),
                from: 3,
                to: 3,
                after: pos(2),
                before: pos(3)
            })
        );
        assert!(
            r.problems[0]
                .to_string()
                .contains("seq 3 is missing between source 0 line 2 and source 0 line 3")
        );
    }

    #[test]
    fn swapped_lines_are_reordered() {
        let mut lines = trail(5, None);
        lines.swap(2, 3);
        let r = run(&lines, None);
        assert_eq!(r.problem_count, 1, "{:?}", r.problems);
        assert_eq!(
            r.first_problem(),
            Some(&Problem::Reordered {
                at: pos(4),
                instance: "px-1".into(),
                seq: 3,
                after_seq: 4,
                after: pos(3)
            })
        );
    }

    #[test]
    fn duplicated_line_is_reported() {
        let mut lines = trail(5, None);
        let dup = lines[2].clone();
        lines.insert(3, dup);
        let r = run(&lines, None);
        assert_eq!(r.problem_count, 1, "{:?}", r.problems);
        assert_eq!(
            r.first_problem(),
            Some(&Problem::Duplicate {
                at: pos(4),
                instance: "px-1".into(),
                seq: 3,
                first: Some(pos(3))
            })
        );
    }

    #[test]
    fn truncated_last_line_is_reported() {
        let mut lines = trail(3, None);
        let last = lines[2].clone();
        lines[2] = last[..last.len() / 2].to_owned();
        let r = run(&lines, None);
        assert_eq!(r.problem_count, 1, "{:?}", r.problems);
        assert!(
            matches!(r.first_problem(), Some(Problem::Unparseable { at, truncated: true, .. }) if *at == pos(3))
        );
        assert_eq!(r.events, 2);
    }

    #[test]
    fn garbage_line_in_the_middle() {
        let mut lines = trail(3, None);
        lines[1] = "not json\n".into();
        let r = run(&lines, None);
        assert!(
            matches!(r.problems[0], Problem::Unparseable { at, truncated: false, .. } if at == pos(2))
        );
        assert!(matches!(
            r.problems[1],
            Problem::Missing { from: 2, to: 2, .. }
        ));
    }

    #[test]
    fn interleaved_instances_are_chained_separately() {
        let a = trail(3, None);
        let mut c = Chainer::new("px-2", None);
        let b: Vec<String> = (0..3)
            .map(|_| {
                let mut e = AuditEvent::new(EventKind::Connection);
                c.seal(&mut e).unwrap();
                format!("{}\n", serde_json::to_string(&e).unwrap())
            })
            .collect();
        let mixed = vec![
            a[0].clone(),
            b[0].clone(),
            b[1].clone(),
            a[1].clone(),
            a[2].clone(),
            b[2].clone(),
        ];
        let r = run(&mixed, None);
        assert!(r.is_ok(), "{:?}", r.problems);
        assert_eq!(r.instances.len(), 2);
    }

    #[test]
    fn first_event_with_seq_one_must_have_empty_prev_hash() {
        let lines = trail(3, None);
        let r = run(&lines[1..], None);
        assert!(r.is_ok(), "a chain may start later (retention)");
        assert_eq!(r.instances["px-1"].first_seq, 2);
    }

    #[test]
    fn restarted_chain_is_reported() {
        let mut lines = trail(3, None);
        lines.extend(trail(2, None));
        let r = run(&lines, None);
        assert_eq!(r.problem_count, 1, "{:?}", r.problems);
        assert_eq!(
            r.first_problem(),
            Some(&Problem::Restarted {
                at: pos(4),
                instance: "px-1".into(),
                after_seq: 3,
                after: pos(3)
            })
        );
    }

    #[test]
    fn duplicated_genesis_is_a_duplicate() {
        let mut lines = trail(2, None);
        lines.insert(1, lines[0].clone());
        let r = run(&lines, None);
        assert!(matches!(
            r.first_problem(),
            Some(Problem::Duplicate { seq: 1, .. })
        ));
    }

    #[test]
    fn gap_wider_than_the_window_is_reported_once() {
        let lines = trail(3, None);
        let mut v: Value = serde_json::from_str(&lines[2]).unwrap();
        let far = 3 + WINDOW as u64 * 2;
        v["seq"] = far.into();
        v["hash"] = hash_value(&v, None).unwrap().into();
        let shifted = vec![lines[0].clone(), lines[1].clone(), format!("{v}\n")];
        let r = run(&shifted, None);
        assert_eq!(r.problem_count, 1, "{:?}", r.problems);
        assert_eq!(
            r.first_problem(),
            Some(&Problem::Missing {
                instance: "px-1".into(),
                from: 3,
                to: far - 1,
                after: pos(2),
                before: pos(3)
            })
        );
        assert!(r.to_string().contains("1 problems"));
    }

    #[test]
    fn overlong_line_is_refused_without_buffering() {
        let mut text = "x".repeat(MAX_LINE + 10);
        text.push('\n');
        text.push_str(&trail(1, None).concat());
        let r = verify([text.as_bytes()], None);
        assert_eq!(r.problem_count, 1);
        assert!(
            matches!(r.first_problem(), Some(Problem::Unparseable { at, .. }) if *at == pos(1))
        );
        assert_eq!(r.events, 1);
    }
}
