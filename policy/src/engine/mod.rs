//! The decision engine: the shared analysis cache and the per-identity check.

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use lru::LruCache;
use parking_lot::Mutex;

use crate::analysis::{self, Analysis, AnalyzedStatement, Effect, Outcome, What};
use crate::class::ClassSet;
use crate::config::DEFAULT_CACHE_MAX_BYTES;
use crate::decision::{Decision, Denial, sqlstate};
use crate::identity::Identity;
use crate::policy::Policy;

/// Decides statements for all sessions of a proxy.
///
/// It holds a bounded LRU cache from statement text to its analysis (parsed statements,
/// classes, re-serialized text, or the parse error), so a repeated statement is parsed
/// once. The analysis does not depend on the identity or the policy, so one engine
/// serves every session and survives policy reloads. The cache is bounded both in
/// entries and in estimated bytes; texts longer than the policy's
/// `max_statement_bytes` never reach it.
pub struct Engine {
    cache: Mutex<Cache>,
    hits: AtomicU64,
    misses: AtomicU64,
    empty: Arc<str>,
}

struct Cache {
    entries: LruCache<Box<str>, Arc<Analysis>>,
    bytes: usize,
    max_bytes: usize,
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
    pub fn with_limits(cache_entries: usize, cache_max_bytes: usize) -> Engine {
        let entries = NonZeroUsize::new(cache_entries).unwrap_or(NonZeroUsize::MIN);
        Engine {
            cache: Mutex::new(Cache {
                entries: LruCache::new(entries),
                bytes: 0,
                max_bytes: cache_max_bytes.max(1),
            }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            empty: Arc::from(""),
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
    pub fn check(&self, policy: &Policy, identity: &Identity, sql: &str) -> Decision {
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

        let grant = Grant::of(policy, identity);
        let passthrough = policy.is_passthrough_user(&identity.user);
        if grant.roles.is_empty() && !passthrough {
            return deny_no_role(identity);
        }

        let analysis = self.analysis(sql);
        match &analysis.outcome {
            Outcome::Empty => Decision::Allow {
                sql: Arc::clone(&self.empty),
                classes: ClassSet::EMPTY,
                passthrough: false,
            },
            Outcome::Refused(_) if passthrough => Decision::Allow {
                sql: Arc::from(sql),
                classes: ClassSet::EMPTY,
                passthrough: true,
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
                if classes.is_subset(grant.classes) {
                    return Decision::Allow {
                        sql: Arc::clone(forwarded),
                        classes: *classes,
                        passthrough: false,
                    };
                }
                if grant.roles.is_empty() {
                    return deny_no_role(identity);
                }
                match first_refused(statements, grant.classes) {
                    Some((statement, effect)) => deny_class(&grant, statement, effect),
                    // Unreachable while `classes` is the union of the effects; refuse
                    // anyway rather than trust that.
                    None => deny_no_role(identity),
                }
            }
        }
    }

    /// `(hits, misses)` of the analysis cache since the engine was created.
    pub fn cache_stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// How many statement texts the cache holds now.
    pub fn cache_len(&self) -> usize {
        self.cache.lock().entries.len()
    }

    /// The analysis of `sql`, from the cache or freshly made (and then cached). The lock
    /// is not held while parsing; two sessions missing on the same new text at once may
    /// both parse it.
    fn analysis(&self, sql: &str) -> Arc<Analysis> {
        if let Some(found) = self.cache.lock().entries.get(sql) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Arc::clone(found);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let analysis = Arc::new(analysis::analyze(sql));
        self.cache.lock().insert(sql, Arc::clone(&analysis));
        analysis
    }
}

impl Cache {
    fn insert(&mut self, sql: &str, analysis: Arc<Analysis>) {
        let weight = analysis.weight;
        if weight > self.max_bytes {
            return;
        }
        if let Some((_, replaced)) = self.entries.push(sql.into(), analysis) {
            // Either an evicted least-recently-used entry or the same text analysed
            // concurrently by another session: both leave the cache.
            self.bytes = self.bytes.saturating_sub(replaced.weight);
        }
        self.bytes = self.bytes.saturating_add(weight);
        while self.bytes > self.max_bytes {
            match self.entries.pop_lru() {
                Some((_, evicted)) => self.bytes = self.bytes.saturating_sub(evicted.weight),
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
        let cache = self.cache.lock();
        f.debug_struct("Engine")
            .field("cache_entries", &cache.entries.len())
            .field("cache_capacity", &cache.entries.cap())
            .field("cache_bytes", &cache.bytes)
            .field("cache_max_bytes", &cache.max_bytes)
            .field("hits", &hits)
            .field("misses", &misses)
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

/// The first effect, in statement order, whose class is not granted, with its statement.
fn first_refused(
    statements: &[AnalyzedStatement],
    granted: ClassSet,
) -> Option<(&AnalyzedStatement, &Effect)> {
    statements.iter().find_map(|statement| {
        statement
            .effects
            .iter()
            .find(|effect| !granted.contains(effect.class))
            .map(|effect| (statement, effect))
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

fn deny_class(grant: &Grant<'_>, statement: &AnalyzedStatement, effect: &Effect) -> Decision {
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
        What::Statement(part) if part.starts_with(statement.kind) => part.to_string(),
        part => format!("{part} in {}", statement.kind),
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
