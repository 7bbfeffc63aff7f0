//! The decision engine: the shared analysis caches and the per-identity check.

mod template;

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use lru::LruCache;
use parking_lot::Mutex;

use crate::access::Access;
use crate::analysis::{
    self, Analysis, AnalyzedStatement, ENTRY_OVERHEAD, Effect, Effects, Outcome, What,
};
use crate::catalog::Catalog;
use crate::class::ClassSet;
use crate::config::DEFAULT_CACHE_MAX_BYTES;
use crate::decision::{Decision, Denial, sqlstate};
use crate::governance::Governance;
use crate::identity::Identity;
use crate::policy::Policy;
use crate::rewrite::{Census, Walker};
use crate::shape::{Shape, normalize};
use crate::touched::{self, TouchedRelation};
use template::{Rewritten, Sighting, Template};

/// Decides statements for all sessions of a proxy.
///
/// It holds two bounded LRU caches, each with the same limits in entries and estimated
/// bytes:
///
/// - the exact-text cache, from statement text to its analysis (parsed statements,
///   classes, re-serialized text, or the parse error), so a repeated statement is
///   parsed once;
/// - the shape cache, from a statement's shape (its text with simple literals replaced
///   by `$1`, `$2`, ...) to a template proven to decide and forward every text of that
///   shape exactly as the full analysis would (or to a note that the shape cannot have
///   one), so that `... WHERE aid = 48213` and `... WHERE aid = 7` are analysed once
///   between them. See the crate docs for why that is safe.
///
/// Analyses and templates do not depend on the identity or the policy, so one engine
/// serves every session and survives policy reloads. Texts longer than the policy's
/// `max_statement_bytes` reach neither cache.
pub struct Engine {
    cache: Mutex<Cache<Arc<Analysis>>>,
    shapes: Mutex<Cache<ShapeEntry>>,
    hits: AtomicU64,
    misses: AtomicU64,
    shape_hits: AtomicU64,
    shape_misses: AtomicU64,
    empty: Arc<str>,
    no_catalog: Arc<Catalog>,
    /// Per-identity accesses, by [`Access::key_of`].
    accesses: Mutex<LruCache<u64, Arc<Access>>>,
    /// Rewritten decisions by hash of (access key, text), holding the text to rule out
    /// collisions.
    rewrites: Mutex<LruCache<u64, (Box<str>, Decision)>>,
    rewrite_hits: AtomicU64,
    /// What texts (or shapes) touched, by hash of (policy version, catalog
    /// generation, text or shape key), holding that text to rule out collisions.
    touched: Mutex<LruCache<u64, (Box<str>, Touched)>>,
    /// Per (identity access, shape): the shape's rewritten template, or `None` when it
    /// cannot have one; holding the shape's cache key to rule out collisions.
    rewritten_shapes: Mutex<LruCache<u64, RewrittenShape>>,
}

/// The relations one text touched (see [`Engine::touched`]).
pub type Touched = Arc<[TouchedRelation]>;

/// A shape's cache key and its rewritten template for one identity (or `None`).
type RewrittenShape = (Box<str>, Option<Arc<Rewritten>>);

/// What a relation-level decision can rewrite from.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// The text's own analysed statements.
    Statements(&'a [AnalyzedStatement]),
    /// The text was decided from its shape's template (no trees at hand).
    Shape(&'a Shape, &'a str),
}

/// The key of a remembered decision: the identity's access key and the text.
fn decision_key(access: u64, sql: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    access.hash(&mut hasher);
    sql.hash(&mut hasher);
    hasher.finish()
}

/// How many identities' accesses the engine keeps.
const ACCESS_CACHE_ENTRIES: usize = 1024;

/// Rewrites `statements` for `access`: the decision forwarding the rewritten text, or
/// the first denial.
///
/// The forwarded text must mean the rewritten trees. Where the rewrite only replaced
/// table references by derived tables, that holds by construction: the statement's own
/// text was proven to parse back to its tree, each derived table's query was proven to
/// parse back to itself when its view was built, and a derived table prints as
/// `(query) alias`, so the parts print as they parse. Writes are rebuilt in more places
/// (predicates, casts, checks), so their text is parsed back and compared (with the
/// views' placeholders in place: the views' texts are spliced in afterwards, see
/// [`crate::access::Resolver::splice`]).
fn rewrite(access: &Access, statements: &[AnalyzedStatement], classes: ClassSet) -> Decision {
    let mut rewritten = Vec::with_capacity(statements.len());
    let mut resolver = access.resolver();
    let mut constrained = false;
    for statement in statements {
        let mut ast = statement.ast.clone();
        let mut walker = Walker::new(&mut resolver);
        if let Err(denial) = walker.walk(&mut ast) {
            return Decision::Deny(denial);
        }
        constrained |= walker.constrained;
        rewritten.push(ast);
    }
    let text = rewritten
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let faithful = !constrained || analysis::parse(&text).is_ok_and(|again| again == rewritten);
    let spliced = faithful.then(|| resolver.splice(&text)).flatten();
    let Some(text) = spliced else {
        return deny(
            sqlstate::SYNTAX_ERROR,
            "portcullis: statement refused because its rewritten form does not parse back to the same statement; rule: rewrite".to_string(),
            "rewrite",
        );
    };
    Decision::Allow {
        sql: Arc::from(text),
        classes,
        passthrough: false,
        rewritten: true,
    }
}

/// A bounded LRU map from text to `V`, bounded in entries and in estimated bytes.
struct Cache<V> {
    entries: LruCache<Box<str>, V>,
    bytes: usize,
    max_bytes: usize,
}

/// What the shape cache knows about one shape.
#[derive(Clone)]
enum ShapeEntry {
    /// One text of this shape has been analysed; the next one will try to prove a
    /// template against it.
    Sighted(Arc<Sighting>),
    /// Texts of this shape are decided and forwarded from the template.
    Template(Arc<Template>),
    /// The shape cannot have a template: its texts take the full analysis, and the
    /// proof is not tried again while this entry lasts.
    Rejected {
        /// Estimated bytes held by the entry and its key.
        weight: usize,
    },
}

/// Something the cache budget accounts for.
trait Weighted {
    fn weight(&self) -> usize;
}

impl Weighted for Arc<Analysis> {
    fn weight(&self) -> usize {
        self.weight
    }
}

impl Weighted for ShapeEntry {
    fn weight(&self) -> usize {
        match self {
            ShapeEntry::Sighted(sighting) => sighting.weight,
            ShapeEntry::Template(template) => template.weight,
            ShapeEntry::Rejected { weight } => *weight,
        }
    }
}

/// Where the facts for deciding a text came from.
enum Found {
    /// The full analysis of the text (cached or fresh).
    Analysis(Arc<Analysis>),
    /// A template for the text's shape, the text it forwards for this instance, and
    /// the shape (with its cache key).
    Template(Arc<Template>, Arc<str>, Shape, String),
}

impl Engine {
    /// An engine whose cache keeps up to `cache_entries` statement texts (at least one)
    /// within the default memory budget
    /// ([`DEFAULT_CACHE_MAX_BYTES`](crate::DEFAULT_CACHE_MAX_BYTES)).
    pub fn new(cache_entries: usize) -> Engine {
        Engine::with_limits(cache_entries, DEFAULT_CACHE_MAX_BYTES)
    }

    /// An engine whose cache keeps up to `cache_entries` statement texts and about
    /// `cache_max_bytes` of memory (both at least one). A single analysis larger than
    /// the whole budget is used but not cached.
    ///
    /// The shape cache has the same limits, separately.
    pub fn with_limits(cache_entries: usize, cache_max_bytes: usize) -> Engine {
        Engine {
            cache: Mutex::new(Cache::new(cache_entries, cache_max_bytes)),
            shapes: Mutex::new(Cache::new(cache_entries, cache_max_bytes)),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            shape_hits: AtomicU64::new(0),
            shape_misses: AtomicU64::new(0),
            empty: Arc::from(""),
            no_catalog: Arc::new(Catalog::default()),
            accesses: Mutex::new(LruCache::new(
                NonZeroUsize::new(ACCESS_CACHE_ENTRIES).unwrap_or(NonZeroUsize::MIN),
            )),
            rewrites: Mutex::new(LruCache::new(
                NonZeroUsize::new(cache_entries).unwrap_or(NonZeroUsize::MIN),
            )),
            rewrite_hits: AtomicU64::new(0),
            touched: Mutex::new(LruCache::new(
                NonZeroUsize::new(cache_entries).unwrap_or(NonZeroUsize::MIN),
            )),
            rewritten_shapes: Mutex::new(LruCache::new(
                NonZeroUsize::new(cache_entries).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    /// Decides whether `identity` may run the statement text `sql` under `policy`, and
    /// what to forward if so.
    ///
    /// Refuses, in this order: everything under [`Policy::deny_all`] (42501); texts over
    /// `max_statement_bytes` (54000, without parsing); users with no role the policy
    /// knows (42501, unless a passthrough user); texts that do not parse or use a
    /// construct the proxy does not forward (42601, unless the user is in
    /// `unparsed_passthrough`, in which case the original text is forwarded with
    /// `passthrough: true`); and texts with any statement needing a class none of the
    /// user's roles is granted (42501). A multi-statement text is allowed or refused as
    /// a whole. Empty and comment-only texts are allowed and forwarded as `""`.
    ///
    /// A text whose shape has a template is decided from it, with the same decision
    /// and forwarded text as the full analysis (the crate docs say why).
    pub fn check(&self, policy: &Policy, identity: &Identity, sql: &str) -> Decision {
        self.decide(policy, &self.no_catalog, identity, sql)
    }

    /// [`Engine::check`] against a catalog snapshot: with a relation-level policy
    /// ([`Policy::governance`]), a statement the class grants allow must also pass the
    /// table and function grants, and is rewritten by relation substitution where the
    /// identity has row filters or masks (see the `rewrite` module). Rewritten texts
    /// are cached per (text, policy version, catalog generation, identity).
    pub fn decide(
        &self,
        policy: &Policy,
        catalog: &Arc<Catalog>,
        identity: &Identity,
        sql: &str,
    ) -> Decision {
        if policy.is_deny_all() {
            return deny(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                "portcullis: permission denied: no policy is loaded, so every statement is refused; rule: deny_all".to_string(),
                "deny_all",
            );
        }
        if sql.len() > policy.max_statement_bytes() {
            return deny(
                sqlstate::PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "portcullis: statement too large: {} bytes, the limit is {} bytes; rule: max_statement_bytes",
                    sql.len(),
                    policy.max_statement_bytes()
                ),
                "max_statement_bytes",
            );
        }

        if let Some(decided) = self.remembered(policy, catalog, identity, sql) {
            return decided;
        }
        let grant = Grant::of(policy, identity);
        let passthrough = policy.is_passthrough_user(&identity.user);
        if grant.roles.is_empty() && !passthrough {
            return deny_no_role(identity);
        }

        let analysis = match self.lookup(sql) {
            Found::Analysis(analysis) => analysis,
            Found::Template(template, forwarded, shape, shape_key) => {
                let decision = decide(
                    &grant,
                    identity,
                    template.classes,
                    template
                        .statements
                        .iter()
                        .map(|(kind, effects)| (*kind, effects)),
                    forwarded,
                );
                let censuses: Vec<&Census> = template.censuses.iter().collect();
                return self.govern(
                    policy,
                    catalog,
                    identity,
                    sql,
                    decision,
                    &censuses,
                    Source::Shape(&shape, &shape_key),
                );
            }
        };
        match &analysis.outcome {
            Outcome::Empty => Decision::Allow {
                sql: Arc::clone(&self.empty),
                classes: ClassSet::EMPTY,
                passthrough: false,
                rewritten: false,
            },
            Outcome::Refused(_) if passthrough => Decision::Allow {
                sql: Arc::from(sql),
                classes: ClassSet::EMPTY,
                passthrough: true,
                rewritten: false,
            },
            Outcome::Refused(refusal) => deny(
                refusal.sqlstate(),
                format!("portcullis: statement refused because {refusal}; rule: parse"),
                "parse",
            ),
            Outcome::Statements {
                statements,
                sql: forwarded,
                classes,
            } => {
                let decision = decide(
                    &grant,
                    identity,
                    *classes,
                    statements
                        .iter()
                        .map(|statement| (statement.kind, &statement.effects)),
                    Arc::clone(forwarded),
                );
                let censuses: Vec<&Census> = statements.iter().map(|s| &s.census).collect();
                let statements = Source::Statements(statements);
                self.govern(
                    policy, catalog, identity, sql, decision, &censuses, statements,
                )
            }
        }
    }

    /// The relation-level decision on top of an allowed class-level one.
    #[allow(clippy::too_many_arguments)]
    fn govern(
        &self,
        policy: &Policy,
        catalog: &Arc<Catalog>,
        identity: &Identity,
        sql: &str,
        decision: Decision,
        censuses: &[&Census],
        source: Source<'_>,
    ) -> Decision {
        let (Decision::Allow { classes, .. }, Some(governance)) = (&decision, policy.governance())
        else {
            return decision;
        };
        let classes = *classes;
        let access = self.access(policy, governance, catalog, identity);
        let key = decision_key(access.key, sql);
        // Texts decided from a shape's template are not remembered (as in the exact
        // cache): their literals make nearly every one new.
        let remember = |decided: Decision| {
            if let Source::Statements(_) = source {
                self.rewrites
                    .lock()
                    .put(key, (Box::from(sql), decided.clone()));
            }
            decided
        };
        let mut open = true;
        for census in censuses {
            match access.open(census) {
                Ok(census_open) => open &= census_open,
                Err(denial) => return remember(Decision::Deny(denial)),
            }
        }
        if open {
            return remember(decision);
        }
        let statements = match source {
            Source::Statements(statements) => statements,
            Source::Shape(shape, shape_key) => {
                return self.rewrite_shape(&access, sql, shape, shape_key, classes);
            }
        };
        let decided = rewrite(&access, statements, classes);
        self.rewrites
            .lock()
            .put(key, (Box::from(sql), decided.clone()));
        decided
    }

    /// The rewrite of a text decided from its shape's template: from the shape's
    /// rewritten template for this identity when there is one (learnt on the shape's
    /// first text for the identity, see [`Rewritten`]), else in full.
    fn rewrite_shape(
        &self,
        access: &Access,
        sql: &str,
        shape: &Shape,
        shape_key: &str,
        classes: ClassSet,
    ) -> Decision {
        let key = decision_key(access.key, shape_key);
        let known = match self.rewritten_shapes.lock().get(&key) {
            Some((stored, rewritten)) if **stored == *shape_key => Some(rewritten.clone()),
            _ => None,
        };
        if let Some(Some(rewritten)) = &known {
            if let Some(text) = rewritten.instantiate(sql, &shape.literals) {
                self.rewrite_hits.fetch_add(1, Ordering::Relaxed);
                return Decision::Allow {
                    sql: Arc::from(text),
                    classes,
                    passthrough: false,
                    rewritten: true,
                };
            }
        }
        let full = analysis::analyze(sql);
        let Outcome::Statements { statements, .. } = &full.outcome else {
            return deny(
                sqlstate::SYNTAX_ERROR,
                "portcullis: statement refused because its shape and its text disagree; rule: rewrite".to_string(),
                "rewrite",
            );
        };
        let decided = rewrite(access, statements, classes);
        if known.is_none() {
            let learnt = match (&decided, &analysis::analyze(&shape.key).outcome) {
                (
                    Decision::Allow { sql: forwarded, .. },
                    Outcome::Statements {
                        statements: key_statements,
                        ..
                    },
                ) => match rewrite(access, key_statements, classes) {
                    Decision::Allow {
                        sql: key_forwarded, ..
                    } => Rewritten::learn(&key_forwarded, sql, &shape.literals, forwarded)
                        .map(Arc::new),
                    Decision::Deny(_) => None,
                },
                _ => None,
            };
            self.rewritten_shapes
                .lock()
                .put(key, (Box::from(shape_key), learnt));
        }
        decided
    }

    /// The relations, columns and column classes `sql` touches (see the `touched`
    /// module for how columns are attributed), for its audit event. Empty for texts
    /// that do not parse and for texts over `max_statement_bytes`. Computed once per text (or per shape, for texts decided from
    /// a template) under a policy version and catalog generation.
    pub fn touched(&self, policy: &Policy, catalog: &Catalog, sql: &str) -> Touched {
        // Texts the engine refuses unparsed are not parsed here either.
        if sql.len() > policy.max_statement_bytes() {
            return Arc::from([]);
        }
        let key_of = |text: &str| {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            policy.version().hash(&mut hasher);
            catalog.generation().hash(&mut hasher);
            text.hash(&mut hasher);
            hasher.finish()
        };
        let cached = |key: u64, text: &str| match self.touched.lock().get(&key) {
            Some((stored, touched)) if **stored == *text => Some(Arc::clone(touched)),
            _ => None,
        };
        let key = key_of(sql);
        if let Some(found) = cached(key, sql) {
            return found;
        }
        let analysis = self.cache.lock().entries.peek(sql).map(Arc::clone);
        let (censuses, key, text): (Vec<Census>, u64, Box<str>) = match analysis {
            Some(analysis) => (censuses_of(&analysis), key, sql.into()),
            None => {
                let shape = normalize(sql);
                let shape_key = shape.as_ref().map(|shape| shape.cache_key(sql));
                let template = shape_key.as_deref().and_then(|shape_key| {
                    match self.shapes.lock().entries.peek(shape_key) {
                        Some(ShapeEntry::Template(template)) => Some(Arc::clone(template)),
                        _ => None,
                    }
                });
                match (template, shape_key) {
                    (Some(template), Some(shape_key)) => {
                        let key = key_of(&shape_key);
                        if let Some(found) = cached(key, &shape_key) {
                            return found;
                        }
                        (template.censuses.to_vec(), key, shape_key.into())
                    }
                    _ => (censuses_of(&analysis::analyze(sql)), key, sql.into()),
                }
            }
        };
        let governance = policy.governance();
        let default_path = [String::from("public")];
        let search_path = governance.map_or(&default_path[..], |g| &g.search_path);
        let censuses: Vec<&Census> = censuses.iter().collect();
        let found: Touched = touched::touched(
            &censuses,
            catalog,
            search_path,
            governance.map(|g| &g.classification),
        )
        .into();
        self.touched.lock().put(key, (text, Arc::clone(&found)));
        found
    }

    /// The remembered relation-level decision for `sql`, if any.
    fn remembered(
        &self,
        policy: &Policy,
        catalog: &Catalog,
        identity: &Identity,
        sql: &str,
    ) -> Option<Decision> {
        policy.governance()?;
        let key = decision_key(Access::key_of(policy.version(), catalog, identity), sql);
        let mut decisions = self.rewrites.lock();
        match decisions.get(&key) {
            Some((text, decided)) if **text == *sql => {
                self.rewrite_hits.fetch_add(1, Ordering::Relaxed);
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(decided.clone())
            }
            _ => None,
        }
    }

    /// The identity's access under `policy` and `catalog`, cached.
    fn access(
        &self,
        policy: &Policy,
        governance: &Arc<Governance>,
        catalog: &Arc<Catalog>,
        identity: &Identity,
    ) -> Arc<Access> {
        let key = Access::key_of(policy.version(), catalog, identity);
        if let Some(access) = self.accesses.lock().get(&key) {
            return Arc::clone(access);
        }
        let access = Arc::new(Access::new(
            key,
            Arc::clone(governance),
            Arc::clone(catalog),
            identity,
        ));
        self.accesses.lock().put(key, Arc::clone(&access));
        access
    }

    /// `(hits, misses)` of the caches since the engine was created: a text decided from
    /// the exact-text cache or from a shape's template without analysing anything is a
    /// hit, a text for which a full analysis ran (of the text, or of its shape's key to
    /// prove a template) a miss.
    pub fn cache_stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// `(hits, misses)` of the shape cache alone since the engine was created: texts
    /// decided from a shape's template without analysing anything, and texts that
    /// missed the exact-text cache, had a shape, and needed an analysis: the first text
    /// of a shape, the second (whose shape's key is analysed to prove the template, and
    /// which is then decided from it), and texts of shapes that cannot have a template.
    /// Texts without a shape (no literal, or anything unusual) count in neither.
    pub fn shape_cache_stats(&self) -> (u64, u64) {
        (
            self.shape_hits.load(Ordering::Relaxed),
            self.shape_misses.load(Ordering::Relaxed),
        )
    }

    /// How many relation-level decisions were answered without rewriting: remembered
    /// decisions of repeated texts, and texts rewritten from their shape's rewritten
    /// template.
    pub fn rewrite_cache_hits(&self) -> u64 {
        self.rewrite_hits.load(Ordering::Relaxed)
    }

    /// How many statement texts the exact-text cache holds now.
    pub fn cache_len(&self) -> usize {
        self.cache.lock().entries.len()
    }

    /// How many shapes the shape cache holds now (with or without a template).
    pub fn shape_cache_len(&self) -> usize {
        self.shapes.lock().entries.len()
    }

    /// What decides `sql`: its cached analysis, else its shape's template, else a fresh
    /// analysis (then cached).
    ///
    /// A shape's template is learnt over its first two texts, so that a call pays for
    /// at most one analysis (but once per shape whose proof fails): the first text is
    /// analysed and remembered as the shape's sighting; the second has the shape's key
    /// analysed, and is decided from the template if that proves one (else analysed
    /// itself, and the shape is marked as having none).
    /// No lock is held while parsing; two sessions missing on the same new text or shape
    /// at once may both do the work. Texts decided from a template are not added to the
    /// exact-text cache: they would only evict texts that need it.
    fn lookup(&self, sql: &str) -> Found {
        if let Some(found) = self.cache.lock().entries.get(sql).map(Arc::clone) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Found::Analysis(found);
        }
        let Some(shape) = normalize(sql) else {
            return Found::Analysis(self.analyze(sql));
        };
        let key = shape.cache_key(sql);
        let entry = self.shapes.lock().entries.get(key.as_str()).cloned();
        match entry {
            Some(ShapeEntry::Template(template)) => {
                if let Some(forwarded) = template.instantiate(sql, &shape.literals) {
                    self.shape_hits.fetch_add(1, Ordering::Relaxed);
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return Found::Template(template, Arc::from(forwarded), shape, key);
                }
                self.shape_misses.fetch_add(1, Ordering::Relaxed);
                Found::Analysis(self.analyze(sql))
            }
            Some(ShapeEntry::Rejected { .. }) => {
                self.shape_misses.fetch_add(1, Ordering::Relaxed);
                Found::Analysis(self.analyze(sql))
            }
            Some(ShapeEntry::Sighted(sighting)) => {
                self.shape_misses.fetch_add(1, Ordering::Relaxed);
                self.misses.fetch_add(1, Ordering::Relaxed);
                let key_analysis = analysis::analyze(&shape.key);
                let learnt = Template::learn(&sighting, &key_analysis.outcome, key.len())
                    .map(Arc::new)
                    .and_then(|template| {
                        let forwarded = template.instantiate(sql, &shape.literals)?;
                        Some((template, forwarded))
                    });
                match learnt {
                    Some((template, forwarded)) => {
                        self.shapes.lock().insert(
                            key.clone().into_boxed_str(),
                            ShapeEntry::Template(Arc::clone(&template)),
                        );
                        Found::Template(template, Arc::from(forwarded), shape, key)
                    }
                    None => {
                        let rejected = rejected(&key);
                        self.shapes.lock().insert(key.into_boxed_str(), rejected);
                        Found::Analysis(self.analyze_uncounted(sql))
                    }
                }
            }
            None => {
                self.shape_misses.fetch_add(1, Ordering::Relaxed);
                let analysis = self.analyze(sql);
                let entry = match Sighting::of(sql, &shape, &analysis.outcome, key.len()) {
                    Some(sighting) => ShapeEntry::Sighted(Arc::new(sighting)),
                    None => rejected(&key),
                };
                self.shapes.lock().insert(key.into_boxed_str(), entry);
                Found::Analysis(analysis)
            }
        }
    }

    /// The full analysis of `sql`, counted as a miss and cached.
    fn analyze(&self, sql: &str) -> Arc<Analysis> {
        self.misses.fetch_add(1, Ordering::Relaxed);
        self.analyze_uncounted(sql)
    }

    fn analyze_uncounted(&self, sql: &str) -> Arc<Analysis> {
        let analysis = Arc::new(analysis::analyze(sql));
        self.cache.lock().insert(sql.into(), Arc::clone(&analysis));
        analysis
    }
}

/// The censuses of an analysed text's statements (none if it did not parse).
fn censuses_of(analysis: &Analysis) -> Vec<Census> {
    match &analysis.outcome {
        Outcome::Statements { statements, .. } => {
            statements.iter().map(|s| s.census.clone()).collect()
        }
        _ => Vec::new(),
    }
}

/// The shape cache entry for a shape that cannot have a template.
fn rejected(key: &str) -> ShapeEntry {
    ShapeEntry::Rejected {
        weight: ENTRY_OVERHEAD.saturating_add(key.len()),
    }
}

impl<V: Weighted> Cache<V> {
    fn new(entries: usize, max_bytes: usize) -> Cache<V> {
        let entries = NonZeroUsize::new(entries).unwrap_or(NonZeroUsize::MIN);
        Cache {
            entries: LruCache::new(entries),
            bytes: 0,
            max_bytes: max_bytes.max(1),
        }
    }

    fn insert(&mut self, key: Box<str>, value: V) {
        let weight = value.weight();
        if weight > self.max_bytes {
            return;
        }
        if let Some((_, replaced)) = self.entries.push(key, value) {
            // Either an evicted least-recently-used entry or the same key filled
            // concurrently by another session: both leave the cache.
            self.bytes = self.bytes.saturating_sub(replaced.weight());
        }
        self.bytes = self.bytes.saturating_add(weight);
        while self.bytes > self.max_bytes {
            match self.entries.pop_lru() {
                Some((_, evicted)) => self.bytes = self.bytes.saturating_sub(evicted.weight()),
                None => {
                    self.bytes = 0;
                    break;
                }
            }
        }
    }
}

impl Default for Engine {
    /// An engine with the default cache size
    /// ([`DEFAULT_CACHE_ENTRIES`](crate::DEFAULT_CACHE_ENTRIES)).
    fn default() -> Engine {
        Engine::new(crate::config::DEFAULT_CACHE_ENTRIES)
    }
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (hits, misses) = self.cache_stats();
        let (shape_hits, shape_misses) = self.shape_cache_stats();
        let (entries, capacity, bytes, max_bytes) = {
            let cache = self.cache.lock();
            (
                cache.entries.len(),
                cache.entries.cap(),
                cache.bytes,
                cache.max_bytes,
            )
        };
        let (shapes, shape_bytes) = {
            let shapes = self.shapes.lock();
            (shapes.entries.len(), shapes.bytes)
        };
        f.debug_struct("Engine")
            .field("cache_entries", &entries)
            .field("cache_capacity", &capacity)
            .field("cache_bytes", &bytes)
            .field("cache_max_bytes", &max_bytes)
            .field("hits", &hits)
            .field("misses", &misses)
            .field("shape_entries", &shapes)
            .field("shape_bytes", &shape_bytes)
            .field("shape_hits", &shape_hits)
            .field("shape_misses", &shape_misses)
            .finish()
    }
}

/// What an identity's known roles grant together.
struct Grant<'a> {
    /// The identity's roles that the policy defines, without repeats, in the order given.
    roles: Vec<&'a str>,
    classes: ClassSet,
}

impl<'a> Grant<'a> {
    fn of(policy: &Policy, identity: &'a Identity) -> Grant<'a> {
        let mut roles: Vec<&str> = Vec::new();
        let mut classes = ClassSet::EMPTY;
        for role in &identity.roles {
            if let Some(granted) = policy.role_classes(role) {
                if !roles.contains(&role.as_str()) {
                    roles.push(role);
                }
                classes = classes.union(granted);
            }
        }
        Grant { roles, classes }
    }
}

/// The decision for parsed statements (each given as its kind and effects, in order)
/// whose classes together are `classes`, forwarding `forwarded` if allowed.
fn decide<'a>(
    grant: &Grant<'_>,
    identity: &Identity,
    classes: ClassSet,
    statements: impl Iterator<Item = (&'static str, &'a Effects)>,
    forwarded: Arc<str>,
) -> Decision {
    if classes.is_subset(grant.classes) {
        return Decision::Allow {
            sql: forwarded,
            classes,
            passthrough: false,
            rewritten: false,
        };
    }
    if grant.roles.is_empty() {
        return deny_no_role(identity);
    }
    match first_refused(statements, grant.classes) {
        Some((kind, effect)) => deny_class(grant, kind, effect),
        // Unreachable while `classes` is the union of the effects; refuse anyway rather
        // than trust that.
        None => deny_no_role(identity),
    }
}

/// The first effect, in statement order, whose class is not granted, with its
/// statement's kind.
fn first_refused<'a>(
    mut statements: impl Iterator<Item = (&'static str, &'a Effects)>,
    granted: ClassSet,
) -> Option<(&'static str, &'a Effect)> {
    statements.find_map(|(kind, effects)| {
        effects
            .iter()
            .find(|effect| !granted.contains(effect.class))
            .map(|effect| (kind, effect))
    })
}

fn deny(sqlstate: &'static str, message: String, rule: &str) -> Decision {
    Decision::Deny(Denial {
        sqlstate,
        message,
        rule: rule.to_string(),
    })
}

fn deny_no_role(identity: &Identity) -> Decision {
    deny(
        sqlstate::INSUFFICIENT_PRIVILEGE,
        format!(
            "portcullis: permission denied: user {:?} has no role that the policy defines; rule: roles",
            identity.user
        ),
        "roles",
    )
}

fn deny_class(grant: &Grant<'_>, kind: &'static str, effect: &Effect) -> Decision {
    let mut roles = String::new();
    let mut rule = String::new();
    for (index, role) in grant.roles.iter().enumerate() {
        if index > 0 {
            roles.push_str(", ");
            rule.push_str(", ");
        }
        roles.push_str(&format!("{role:?}"));
        rule.push_str(&format!("roles.{role}.allow"));
    }
    // "(INSERT)", "(COPY ... PROGRAM)", or where the refused part is nested in another
    // statement: "(DELETE in EXPLAIN)", "(function pg_read_file in SELECT)".
    let what = match effect.what {
        What::Statement(part) if part.starts_with(kind) => part.to_string(),
        part => format!("{part} in {kind}"),
    };
    deny(
        sqlstate::INSUFFICIENT_PRIVILEGE,
        format!(
            "portcullis: permission denied: role(s) {roles} may not run {} statements ({what}); rule: {rule}",
            effect.class
        ),
        &rule,
    )
}

#[cfg(test)]
mod tests;
