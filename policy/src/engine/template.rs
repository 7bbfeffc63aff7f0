//! Templates: one statement shape, analysed once and proven to stand for every text of
//! that shape, then instantiated by copying the client's literals into place.
//!
//! A template is learnt in two steps, so that a statement pays for at most one full
//! analysis (except the one that finds a shape cannot have a template):
//!
//! 1. the first text of a shape is analysed as usual; [`Sighting::of`] keeps what the
//!    proof needs from it (its literal tokens, forwarded text, statement kinds and
//!    effects), unless it already shows that the shape cannot have a template;
//! 2. the next text of the shape has its shape's key (the text with `$1`, `$2`, ... in
//!    place of the literals) analysed, and [`Template::learn`] proves from the sighting
//!    and the key's analysis:
//!    - both are parsed statements with the same statement kinds, the same effects
//!      (classes, each with the part that needs it) and so the same decision for every
//!      identity and policy;
//!    - nothing in them is classified by a literal value: only queries, `INSERT`,
//!      `UPDATE` and `DELETE` at any depth, and no `set_config` call;
//!    - the key's forwarded text holds each of `$1`..`$k` exactly once, and with the
//!      sighted text's own literal tokens copied in their places becomes exactly that
//!      text's forwarded text.
//!
//! Why that covers every other text of the shape is in the crate docs.

use std::ops::Range;
use std::sync::Arc;

use crate::analysis::{ENTRY_OVERHEAD, Effects, Outcome};
use crate::class::ClassSet;
use crate::rewrite::Census;
use crate::shape::Shape;

/// One piece of a template's forwarded text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    /// Text the proxy forwards as is (re-serialized from the key's syntax tree).
    Text(Arc<str>),
    /// The client's literal token with this index (`0` is the key's `$1`), copied byte
    /// for byte.
    Literal(usize),
}

/// The first text seen of a shape, fully analysed: the instance a template is proven
/// against. It holds no syntax tree.
#[derive(Debug)]
pub(crate) struct Sighting {
    sql: Box<str>,
    literals: Vec<Range<usize>>,
    forwarded: Arc<str>,
    classes: ClassSet,
    statements: Box<[(&'static str, Effects)]>,
    censuses: Box<[Census]>,
    /// Estimated memory held by this sighting and its cache key.
    pub(crate) weight: usize,
}

impl Sighting {
    /// What a template for `sql`'s shape must be proven against, from `outcome` (the
    /// full analysis of `sql`); `None` if the outcome already rules a template out: it
    /// is not parsed statements, or something in it is classified by literal values.
    /// `key_bytes` is the length of the cache key, for the weight.
    pub(crate) fn of(
        sql: &str,
        shape: &Shape,
        outcome: &Outcome,
        key_bytes: usize,
    ) -> Option<Sighting> {
        let Outcome::Statements {
            statements,
            sql: forwarded,
            classes,
        } = outcome
        else {
            return None;
        };
        if statements
            .iter()
            .any(|statement| statement.depends_on_literals)
        {
            return None;
        }
        Some(Sighting {
            sql: sql.into(),
            literals: shape.literals.clone(),
            forwarded: Arc::clone(forwarded),
            classes: *classes,
            statements: statements
                .iter()
                .map(|statement| (statement.kind, statement.effects.clone()))
                .collect(),
            censuses: statements.iter().map(|s| s.census.clone()).collect(),
            weight: ENTRY_OVERHEAD
                .saturating_add(key_bytes)
                .saturating_add(sql.len())
                .saturating_add(forwarded.len())
                .saturating_add(statements.len().saturating_mul(64))
                .saturating_add(statements.iter().map(|s| s.census.weight()).sum::<usize>()),
        })
    }
}

/// A shape's analysis, without syntax trees: what [`Engine::check`](crate::Engine::check)
/// needs to decide an instance and build its forwarded text.
#[derive(Debug)]
pub(crate) struct Template {
    segments: Box<[Segment]>,
    /// The union of the statements' classes.
    pub(crate) classes: ClassSet,
    /// Each statement's kind and effects, in order, for denial messages.
    pub(crate) statements: Box<[(&'static str, Effects)]>,
    /// Each statement's references, for the relation-level policy.
    pub(crate) censuses: Box<[Census]>,
    /// Estimated memory held by this template and its cache key.
    pub(crate) weight: usize,
}

impl Template {
    /// The template for the shape of `sighting`, if it can be proven (see the module
    /// docs) from `sighting` and `key` (the analysis of the shape's key). `key_bytes` is
    /// the length of the cache key, for the weight.
    pub(crate) fn learn(sighting: &Sighting, key: &Outcome, key_bytes: usize) -> Option<Template> {
        let Outcome::Statements {
            statements: key_statements,
            sql: key_forwarded,
            classes: key_classes,
        } = key
        else {
            return None;
        };
        let same_decision = sighting.classes == *key_classes
            && sighting.statements.len() == key_statements.len()
            && sighting
                .statements
                .iter()
                .zip(key_statements)
                .all(|((kind, effects), key)| {
                    !key.depends_on_literals && *kind == key.kind && *effects == key.effects
                })
            && sighting
                .censuses
                .iter()
                .zip(key_statements)
                .all(|(census, key)| *census == key.census);
        if !same_decision {
            return None;
        }
        let segments = split(key_forwarded, sighting.literals.len())?;
        let fixed: usize = segments
            .iter()
            .map(|segment| match segment {
                Segment::Text(text) => text.len(),
                Segment::Literal(_) => 0,
            })
            .sum();
        let template = Template {
            segments: segments.into_boxed_slice(),
            classes: sighting.classes,
            statements: sighting.statements.clone(),
            censuses: sighting.censuses.clone(),
            weight: ENTRY_OVERHEAD
                .saturating_add(key_bytes)
                .saturating_add(fixed)
                .saturating_add(sighting.statements.len().saturating_mul(64))
                .saturating_add(sighting.censuses.iter().map(Census::weight).sum::<usize>()),
        };
        // The proof that the placeholders sit where the literals sit in the forwarded
        // text, for the sighted instance; the crate docs say why it carries over.
        let instantiated = template.instantiate(&sighting.sql, &sighting.literals)?;
        (instantiated == *sighting.forwarded).then_some(template)
    }

    /// The forwarded text for the instance `sql` whose literal tokens are at `literals`:
    /// the segments with each literal copied from `sql`. `None` if a literal is missing
    /// (never for a shape with this template's cache key).
    pub(crate) fn instantiate(&self, sql: &str, literals: &[Range<usize>]) -> Option<String> {
        instantiate(&self.segments, sql, literals)
    }
}

/// A shape's forwarded text as rewritten for one identity, cut at its parameters.
///
/// Why it is safe, given a shape's [`Template`]: the rewrite, like the classification,
/// looks at relation and column names and at the statement's structure, never at a
/// literal's value; it turns the shape's key (parameters where the literals are) into a
/// text holding each parameter once exactly where the rewrite of an instance holds that
/// instance's literal tokens. That is proven once per (shape, identity) on a fully
/// rewritten instance, as for the template itself; texts where a parameter ends up
/// twice or not at all (an UPDATE moving a row-filter column uses its value twice) get
/// no rewritten template and take the full rewrite.
#[derive(Debug)]
pub(crate) struct Rewritten {
    segments: Box<[Segment]>,
}

impl Rewritten {
    /// The rewritten template from the rewrite of the shape's key (`key_forwarded`),
    /// if instantiating it for the instance `sql` (literals at `literals`) gives exactly
    /// that instance's full rewrite `forwarded`.
    pub(crate) fn learn(
        key_forwarded: &str,
        sql: &str,
        literals: &[Range<usize>],
        forwarded: &str,
    ) -> Option<Rewritten> {
        let segments = split(key_forwarded, literals.len())?.into_boxed_slice();
        (instantiate(&segments, sql, literals)? == forwarded).then_some(Rewritten { segments })
    }

    /// The rewritten text for the instance `sql`.
    pub(crate) fn instantiate(&self, sql: &str, literals: &[Range<usize>]) -> Option<String> {
        instantiate(&self.segments, sql, literals)
    }
}

/// `segments` with each literal copied from `sql`; `None` if one is missing.
fn instantiate(segments: &[Segment], sql: &str, literals: &[Range<usize>]) -> Option<String> {
    {
        let mut length = 0;
        for segment in segments {
            length += match segment {
                Segment::Text(text) => text.len(),
                Segment::Literal(index) => literals.get(*index)?.len(),
            };
        }
        let mut text = String::with_capacity(length);
        for segment in segments {
            match segment {
                Segment::Text(fixed) => text.push_str(fixed),
                Segment::Literal(index) => text.push_str(sql.get(literals.get(*index)?.clone())?),
            }
        }
        Some(text)
    }
}

/// `forwarded` cut at its parameters `$1`..`$count`, each of which must occur exactly
/// once, outside quoted identifiers and strings; `None` otherwise (a parameter printed
/// twice, dropped, or any other `$`).
fn split(forwarded: &str, count: usize) -> Option<Vec<Segment>> {
    let bytes = forwarded.as_bytes();
    let mut segments = Vec::with_capacity(2 * count + 1);
    let mut seen = vec![false; count];
    let mut start = 0;
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        match byte {
            b'"' | b'\'' => at = quoted_end(bytes, at)?,
            b'$' => {
                let digits = bytes[at + 1..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                let number: usize = forwarded.get(at + 1..at + 1 + digits)?.parse().ok()?;
                let index = number.checked_sub(1)?;
                if std::mem::replace(seen.get_mut(index)?, true) {
                    return None;
                }
                if start < at {
                    segments.push(Segment::Text(Arc::from(&forwarded[start..at])));
                }
                segments.push(Segment::Literal(index));
                at += 1 + digits;
                start = at;
            }
            _ => at += 1,
        }
    }
    if start < bytes.len() {
        segments.push(Segment::Text(Arc::from(&forwarded[start..])));
    }
    seen.iter().all(|&found| found).then_some(segments)
}

/// The end (exclusive) of the quoted identifier or string starting at `start`, where a
/// doubled quote escapes one; `None` if unterminated.
fn quoted_end(bytes: &[u8], start: usize) -> Option<usize> {
    let quote = bytes[start];
    let mut at = start + 1;
    loop {
        if *bytes.get(at)? == quote {
            if bytes.get(at + 1) == Some(&quote) {
                at += 2;
            } else {
                return Some(at + 1);
            }
        } else {
            at += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(segments: &[Segment]) -> Vec<String> {
        segments
            .iter()
            .map(|segment| match segment {
                Segment::Text(text) => text.to_string(),
                Segment::Literal(index) => format!("#{index}"),
            })
            .collect()
    }

    #[test]
    fn split_finds_each_parameter_once() {
        let segments = split("SELECT a FROM t WHERE b = $2 AND c = $1", 2);
        assert_eq!(
            segments.as_deref().map(texts),
            Some(vec![
                "SELECT a FROM t WHERE b = ".to_string(),
                "#1".to_string(),
                " AND c = ".to_string(),
                "#0".to_string(),
            ])
        );
        assert_eq!(
            split("$1", 1).as_deref().map(texts),
            Some(vec!["#0".to_string()])
        );
    }

    #[test]
    fn split_refuses_missing_repeated_and_unknown_parameters() {
        assert_eq!(split("SELECT $1, $1", 1), None);
        assert_eq!(split("SELECT $1", 2), None);
        assert_eq!(split("SELECT $1, $3", 2), None);
        assert_eq!(split("SELECT $0, $1", 1), None);
        assert_eq!(split("SELECT $1, $", 1), None);
        assert_eq!(split("SELECT $1, $x", 1), None);
        assert_eq!(split("SELECT 1", 0).map(|s| s.len()), Some(1));
    }

    #[test]
    fn split_skips_quoted_identifiers_and_strings() {
        let segments = split(r#"SELECT "a$1""b", '$2''' FROM t WHERE x = $1"#, 1);
        assert_eq!(
            segments.as_deref().map(texts),
            Some(vec![
                r#"SELECT "a$1""b", '$2''' FROM t WHERE x = "#.to_string(),
                "#0".to_string()
            ])
        );
        assert_eq!(split(r#"SELECT "a$1 = $1"#, 1), None);
    }
}
