//! The relation-level policy: who may touch which relation (casbin RBAC with ABAC
//! conditions), which columns are classified, how each class is masked for each role,
//! and which rows each role sees.
//!
//! A policy directory holds:
//!
//! - `model.conf`: the casbin model. Requests are `(sub, obj, act)`: `sub` is a map
//!   with `name` (the principal checked: the user, then each of its assigned roles;
//!   `g` lines give the hierarchy), `user` and every identity attribute; `obj` is
//!   `table:<schema>.<name>` or `function:<schema>.<name>`; `act` is `select`,
//!   `insert`, `update`, `delete`, `alter` or `execute`.
//! - `policy.csv`: casbin `p` and `g` lines; a `p` line's optional last field is an
//!   ABAC condition such as `r.sub.hour >= 8 && r.sub.hour < 18`.
//! - `classification.toml`: `[schema.table]` tables of `column = "class"`.
//! - `rules.toml`: declared attributes, masks per class and role, row filters per
//!   table and role (templates such as `tenant_id = ${user.tenant}`), tables left to
//!   the database's own row-level security (`[[native]]`), the pseudonym key.
//!
//! Everything is validated at load; errors name the file and line.

pub(crate) mod enforcer;
mod files;
pub(crate) mod mask;
pub(crate) mod native;
pub(crate) mod template;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

pub use files::LoadError;
pub use mask::{DatePart, Mask};
pub(crate) use template::Template;

use crate::catalog::Catalog;

/// The type of an identity attribute, as `rules.toml` declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttributeType {
    /// Compared as text.
    Text,
    /// A whole number (casbin conditions can compare it with `<`, `>=`, ...).
    Number,
}

/// Attributes every identity has, filled by the proxy.
pub const BUILTIN_ATTRIBUTES: &[(&str, AttributeType)] = &[
    ("user", AttributeType::Text),
    ("client_addr", AttributeType::Text),
    ("application_name", AttributeType::Text),
    ("cert_subject", AttributeType::Text),
    ("database", AttributeType::Text),
    ("hour", AttributeType::Number),
    ("weekday", AttributeType::Number),
];

/// One mask rule of `rules.toml`.
#[derive(Debug, Clone)]
pub(crate) struct MaskRule {
    /// A class (`pii.email`), a class prefix (`pii.*`) or `*`.
    pub(crate) class: String,
    pub(crate) roles: Vec<String>,
    pub(crate) mask: Mask,
    pub(crate) line: usize,
}

impl MaskRule {
    /// How specifically the rule names `class`: 2 exact, 1 prefix, 0 `*`; `None` if
    /// it does not match.
    pub(crate) fn specificity(&self, class: &str) -> Option<u8> {
        if self.class == class {
            Some(2)
        } else if self.class == "*" {
            Some(0)
        } else if let Some(prefix) = self.class.strip_suffix('*') {
            class.starts_with(prefix).then_some(1)
        } else {
            None
        }
    }
}

/// One row filter of `rules.toml`.
#[derive(Debug, Clone)]
pub(crate) struct FilterRule {
    pub(crate) schema: String,
    pub(crate) table: String,
    pub(crate) roles: Vec<String>,
    pub(crate) filter: Template,
    /// Columns the filter reads (folded), for write checks.
    pub(crate) columns: Vec<String>,
    pub(crate) line: usize,
}

/// One `[[native]]` rule: the table is protected by the database's own row-level
/// security, reading the given settings, which the proxy sets for the session.
#[derive(Debug, Clone)]
pub(crate) struct NativeRule {
    pub(crate) schema: String,
    pub(crate) table: String,
    pub(crate) roles: Vec<String>,
    pub(crate) settings: Vec<(String, Template)>,
    pub(crate) line: usize,
}

/// The compiled relation-level policy of one policy directory. Immutable.
pub struct Governance {
    pub(crate) enforcer: enforcer::Enforcer,
    /// Principal -> the roles it is directly assigned by `g` lines.
    pub(crate) parents: BTreeMap<String, BTreeSet<String>>,
    /// (schema, table) -> column -> class.
    pub(crate) classification: HashMap<(String, String), BTreeMap<String, String>>,
    pub(crate) masks: Vec<MaskRule>,
    pub(crate) filters: Vec<FilterRule>,
    pub(crate) native: Vec<NativeRule>,
    pub(crate) attributes: BTreeMap<String, AttributeType>,
    pub(crate) pseudonym_key: Option<Zeroizing<Vec<u8>>>,
    pub(crate) search_path: Vec<String>,
    /// The files it was compiled from and their content hash.
    pub(crate) content: Vec<(PathBuf, String)>,
}

impl std::fmt::Debug for Governance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The pseudonym key never appears in debug output.
        f.debug_struct("Governance")
            .field("masks", &self.masks.len())
            .field("filters", &self.filters.len())
            .field("native", &self.native.len())
            .field("attributes", &self.attributes)
            .field("search_path", &self.search_path)
            .finish_non_exhaustive()
    }
}

/// The file names inside a policy directory.
pub const MODEL_FILE: &str = "model.conf";
/// Casbin policy lines.
pub const POLICY_FILE: &str = "policy.csv";
/// Column classes.
pub const CLASSIFICATION_FILE: &str = "classification.toml";
/// Masks, filters, native RLS, attributes.
pub const RULES_FILE: &str = "rules.toml";

impl Governance {
    /// Loads and compiles the policy directory `dir`. Refuses, naming file and line:
    /// a missing or unreadable file, an invalid casbin model, a policy line with an
    /// unknown object kind or action or a condition naming an undeclared attribute or
    /// failing to evaluate, a malformed classification, a mask with bad parameters or a
    /// template naming an undeclared attribute, and a missing pseudonym key when a
    /// pseudonym mask is used.
    pub fn load(dir: &Path) -> Result<Governance, LoadError> {
        files::load(dir)
    }

    /// Checks the policy against a catalog: tables named by classification, filters
    /// and native rules must exist, classified columns must exist, and every mask
    /// that can apply to a classified column must fit its type. Returns every problem
    /// found (empty when none).
    pub fn check_against(&self, catalog: &Catalog) -> Vec<LoadError> {
        files::check_against(self, catalog)
    }

    /// The roles `principal` holds through `g` lines, transitively (without itself).
    pub(crate) fn inherited(&self, principal: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![principal.to_string()];
        while let Some(next) = todo.pop() {
            if let Some(parents) = self.parents.get(&next) {
                for parent in parents {
                    if seen.insert(parent.clone()) {
                        todo.push(parent.clone());
                    }
                }
            }
        }
        seen
    }

    /// The class of a column, if classified.
    pub(crate) fn class_of(&self, schema: &str, table: &str, column: &str) -> Option<&str> {
        self.classification
            .get(&(schema.to_string(), table.to_string()))
            .and_then(|columns| columns.get(column))
            .map(String::as_str)
    }

    /// The search path used to resolve unqualified names.
    pub fn search_path(&self) -> &[String] {
        &self.search_path
    }

    /// A content hash over all files of the directory (`sha256:<hex>`).
    pub(crate) fn content_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        // File names, not paths: the same files are the same version wherever the
        // directory is and however its path is spelled.
        for (path, content) in &self.content {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            hasher.update(name.as_bytes());
            hasher.update([0]);
            hasher.update(content.as_bytes());
            hasher.update([0]);
        }
        let digest = hasher.finalize();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }
}
