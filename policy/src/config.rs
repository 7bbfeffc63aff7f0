//! The `[policy]` table of `portcullis.toml`, as the operator writes it.
//!
//! Parsing is strict (`deny_unknown_fields`, class names checked by serde); the
//! remaining checks happen once, in [`Policy::compile`](crate::Policy::compile).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::class::{ClassSet, StatementClass};

/// Default for [`PolicyConfig::max_statement_bytes`]: 1 MiB.
pub const DEFAULT_MAX_STATEMENT_BYTES: usize = 1024 * 1024;

/// Default for [`PolicyConfig::cache_entries`].
pub const DEFAULT_CACHE_ENTRIES: usize = 4096;

/// Default for [`PolicyConfig::cache_max_bytes`]: 128 MiB of estimated memory.
pub const DEFAULT_CACHE_MAX_BYTES: usize = 128 * 1024 * 1024;

/// The `[policy]` table: statement-class grants per role and the analysis limits.
///
/// ```toml
/// [policy]
/// max_statement_bytes = 1048576
/// unparsed_passthrough = ["migrator"]
///
/// [policy.roles.analyst]
/// allow = ["read", "session", "transaction"]
///
/// [policy.roles.admin]
/// allow = ["all"]
/// ```
///
/// A role that is not listed here grants nothing; a user none of whose roles is listed
/// is refused every statement.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Statements longer than this many bytes are refused (SQLSTATE 54000) before they
    /// are parsed. Between 1 and 1 GiB.
    #[serde(default = "default_max_statement_bytes")]
    pub max_statement_bytes: usize,
    /// Users whose statements Portcullis cannot parse are forwarded verbatim instead of
    /// refused, and audited as unparsed. Meant for trusted administrative or migration
    /// accounts only: for them the proxy enforces nothing on such statements.
    #[serde(default)]
    pub unparsed_passthrough: Vec<String>,
    /// How many distinct statement texts the shared analysis cache keeps (at least 1).
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
    /// Upper bound on the cache's estimated memory, so that a client sending many large
    /// distinct statements cannot grow the proxy without bound.
    #[serde(default = "default_cache_max_bytes")]
    pub cache_max_bytes: usize,
    /// Role name -> what the role may run.
    #[serde(default)]
    pub roles: BTreeMap<String, RoleConfig>,
    /// The policy directory (`model.conf`, `policy.csv`, `classification.toml`,
    /// `rules.toml`; see [`crate::governance`]), relative to the configuration file.
    /// Without it only statement classes are enforced: relations are not governed.
    #[serde(default)]
    pub dir: Option<std::path::PathBuf>,
    /// How often (seconds) the proxy looks for changed policy files and reloads them
    /// as on SIGHUP; 0 turns watching off.
    #[serde(default = "default_watch_secs")]
    pub watch_secs: u64,
}

fn default_watch_secs() -> u64 {
    2
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            max_statement_bytes: DEFAULT_MAX_STATEMENT_BYTES,
            unparsed_passthrough: Vec::new(),
            cache_entries: DEFAULT_CACHE_ENTRIES,
            cache_max_bytes: DEFAULT_CACHE_MAX_BYTES,
            roles: BTreeMap::new(),
            dir: None,
            watch_secs: default_watch_secs(),
        }
    }
}

fn default_max_statement_bytes() -> usize {
    DEFAULT_MAX_STATEMENT_BYTES
}

fn default_cache_entries() -> usize {
    DEFAULT_CACHE_ENTRIES
}

fn default_cache_max_bytes() -> usize {
    DEFAULT_CACHE_MAX_BYTES
}

/// One role's grants: `[policy.roles.<name>]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    /// The statement classes the role may run; `["all"]` grants every class, including
    /// `dangerous`. An empty list grants nothing.
    #[serde(default)]
    pub allow: Vec<ClassGrant>,
}

/// One entry of a role's `allow` list: a statement class, or `all`.
///
/// Unknown names are a configuration error, never silently ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassGrant {
    /// [`StatementClass::Read`].
    Read,
    /// [`StatementClass::Write`].
    Write,
    /// [`StatementClass::Ddl`].
    Ddl,
    /// [`StatementClass::Dcl`].
    Dcl,
    /// [`StatementClass::Session`].
    Session,
    /// [`StatementClass::Transaction`].
    Transaction,
    /// [`StatementClass::Utility`].
    Utility,
    /// [`StatementClass::Dangerous`].
    Dangerous,
    /// Every class.
    All,
}

impl ClassGrant {
    /// The classes this grant stands for.
    pub const fn classes(self) -> ClassSet {
        match self {
            ClassGrant::Read => ClassSet::only(StatementClass::Read),
            ClassGrant::Write => ClassSet::only(StatementClass::Write),
            ClassGrant::Ddl => ClassSet::only(StatementClass::Ddl),
            ClassGrant::Dcl => ClassSet::only(StatementClass::Dcl),
            ClassGrant::Session => ClassSet::only(StatementClass::Session),
            ClassGrant::Transaction => ClassSet::only(StatementClass::Transaction),
            ClassGrant::Utility => ClassSet::only(StatementClass::Utility),
            ClassGrant::Dangerous => ClassSet::only(StatementClass::Dangerous),
            ClassGrant::All => ClassSet::ALL,
        }
    }

    /// The name used in policy files.
    pub const fn as_str(self) -> &'static str {
        match self {
            ClassGrant::All => "all",
            ClassGrant::Read => StatementClass::Read.as_str(),
            ClassGrant::Write => StatementClass::Write.as_str(),
            ClassGrant::Ddl => StatementClass::Ddl.as_str(),
            ClassGrant::Dcl => StatementClass::Dcl.as_str(),
            ClassGrant::Session => StatementClass::Session.as_str(),
            ClassGrant::Transaction => StatementClass::Transaction.as_str(),
            ClassGrant::Utility => StatementClass::Utility.as_str(),
            ClassGrant::Dangerous => StatementClass::Dangerous.as_str(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_to_an_empty_table() -> Result<(), toml::de::Error> {
        let config: PolicyConfig = toml::from_str("")?;
        assert_eq!(config, PolicyConfig::default());
        assert_eq!(config.max_statement_bytes, 1024 * 1024);
        assert_eq!(config.cache_entries, 4096);
        Ok(())
    }

    #[test]
    fn parses_roles_and_passthrough() -> Result<(), toml::de::Error> {
        let config: PolicyConfig = toml::from_str(
            r#"
            max_statement_bytes = 4096
            unparsed_passthrough = ["migrator"]
            cache_entries = 16

            [roles.analyst]
            allow = ["read", "session", "transaction"]

            [roles.admin]
            allow = ["all"]
            "#,
        )?;
        assert_eq!(config.max_statement_bytes, 4096);
        assert_eq!(config.unparsed_passthrough, vec!["migrator".to_string()]);
        assert_eq!(config.cache_entries, 16);
        let analyst = config.roles.get("analyst").map(|r| r.allow.clone());
        assert_eq!(
            analyst,
            Some(vec![
                ClassGrant::Read,
                ClassGrant::Session,
                ClassGrant::Transaction
            ])
        );
        assert_eq!(
            config.roles.get("admin").map(|r| r.allow.clone()),
            Some(vec![ClassGrant::All])
        );
        Ok(())
    }

    #[test]
    fn unknown_class_is_an_error_naming_it() {
        let err = toml::from_str::<PolicyConfig>("[roles.x]\nallow = [\"raed\"]\n");
        let message = err
            .map(|_| ())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(message.contains("raed"), "{message}");
        assert!(message.contains("line 2"), "{message}");
    }

    #[test]
    fn unknown_fields_are_errors() {
        assert!(toml::from_str::<PolicyConfig>("max_statment_bytes = 1\n").is_err());
        assert!(toml::from_str::<PolicyConfig>("[roles.x]\nalow = []\n").is_err());
    }

    #[test]
    fn grant_names_match_class_names() {
        for (grant, class) in [
            (ClassGrant::Read, StatementClass::Read),
            (ClassGrant::Write, StatementClass::Write),
            (ClassGrant::Ddl, StatementClass::Ddl),
            (ClassGrant::Dcl, StatementClass::Dcl),
            (ClassGrant::Session, StatementClass::Session),
            (ClassGrant::Transaction, StatementClass::Transaction),
            (ClassGrant::Utility, StatementClass::Utility),
            (ClassGrant::Dangerous, StatementClass::Dangerous),
        ] {
            assert_eq!(grant.as_str(), class.as_str());
            assert_eq!(grant.classes(), ClassSet::only(class));
        }
        assert_eq!(ClassGrant::All.classes(), ClassSet::ALL);
    }
}
