//! The compiled policy: validated once from [`PolicyConfig`], then immutable.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::class::ClassSet;
use crate::config::{ClassGrant, PolicyConfig};
use crate::decision::Denial;
use crate::error::PolicyError;
use crate::governance::Governance;
use crate::identity::Identity;

/// PostgreSQL refuses protocol messages of 1 GiB or more; no statement can be longer.
const MAX_STATEMENT_BYTES_LIMIT: usize = 1024 * 1024 * 1024;

/// A compiled, validated, immutable policy. The proxy holds it behind an
/// `ArcSwap` and replaces it whole on reload; nothing mutates it in place.
///
/// It refuses, fail closed: statements over the size limit, statements it cannot parse
/// (unless the user is a passthrough user), users none of whose roles it knows, and any
/// statement with a class that none of the user's roles is granted.
#[derive(Debug, Clone)]
pub struct Policy {
    roles: BTreeMap<String, ClassSet>,
    passthrough: BTreeSet<String>,
    max_statement_bytes: usize,
    deny_all: bool,
    version: String,
    governance: Option<Arc<Governance>>,
}

impl Policy {
    /// Validates `config` and compiles it.
    ///
    /// Refuses a zero or over-1 GiB `max_statement_bytes`, zero cache sizes, and empty
    /// role or passthrough user names.
    pub fn compile(config: &PolicyConfig) -> Result<Policy, PolicyError> {
        if config.max_statement_bytes == 0 || config.max_statement_bytes > MAX_STATEMENT_BYTES_LIMIT
        {
            return Err(PolicyError::MaxStatementBytes {
                value: config.max_statement_bytes,
                max: MAX_STATEMENT_BYTES_LIMIT,
            });
        }
        if config.cache_entries == 0 {
            return Err(PolicyError::CacheEntries);
        }
        if config.cache_max_bytes == 0 {
            return Err(PolicyError::CacheMaxBytes);
        }
        let mut roles = BTreeMap::new();
        for (name, role) in &config.roles {
            if name.trim().is_empty() {
                return Err(PolicyError::EmptyRoleName);
            }
            let classes = role
                .allow
                .iter()
                .fold(ClassSet::EMPTY, |set, grant| set.union(grant.classes()));
            roles.insert(name.clone(), classes);
        }
        let mut passthrough = BTreeSet::new();
        for user in &config.unparsed_passthrough {
            if user.trim().is_empty() {
                return Err(PolicyError::EmptyPassthroughUser);
            }
            passthrough.insert(user.clone());
        }
        Ok(Policy {
            roles,
            passthrough,
            max_statement_bytes: config.max_statement_bytes,
            deny_all: false,
            version: content_hash(config),
            governance: None,
        })
    }

    /// Compiles `config` with the relation-level policy of a policy directory: table
    /// and function grants, masks and row filters then apply to every statement, and
    /// relations or functions the catalog does not know are refused. The version is a
    /// hash over the configuration and every file of the directory.
    pub fn compile_governed(
        config: &PolicyConfig,
        governance: Governance,
    ) -> Result<Policy, PolicyError> {
        let mut policy = Policy::compile(config)?;
        let files = governance.content_hash();
        policy.version = format!("{}+{}", policy.version, files.trim_start_matches("sha256:"));
        policy.version = {
            use sha2::{Digest, Sha256};
            let digest = Sha256::digest(policy.version.as_bytes());
            format!(
                "sha256:{}",
                digest
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            )
        };
        policy.governance = Some(Arc::new(governance));
        Ok(policy)
    }

    /// Compiles `config`, with its policy directory when `dir` is set (already
    /// resolved against the configuration file's directory by the caller).
    pub fn load(config: &PolicyConfig) -> Result<Policy, PolicyError> {
        match &config.dir {
            None => Policy::compile(config),
            Some(dir) => Policy::compile_governed(config, Governance::load(dir)?),
        }
    }

    /// The same policy, named by `version` in decisions and audit events (the proxy
    /// sets the git commit of the policy directory when it is a checkout).
    pub fn with_version(mut self, version: impl Into<String>) -> Policy {
        self.version = version.into();
        self
    }

    /// The relation-level policy, if the policy has one.
    pub fn governance(&self) -> Option<&Arc<Governance>> {
        self.governance.as_ref()
    }

    /// The run-time settings the proxy gives `identity`'s upstream session for native
    /// row-level security (`[[native]]` rules of the policy directory), sorted by name;
    /// empty without a policy directory. See [`Governance::session_settings`] for what
    /// it refuses.
    pub fn session_settings(&self, identity: &Identity) -> Result<Vec<(String, String)>, Denial> {
        match &self.governance {
            Some(governance) => governance.session_settings(identity),
            None => Ok(Vec::new()),
        }
    }

    /// The policy that refuses every statement (SQLSTATE 42501), including empty ones:
    /// what the proxy runs before any policy has been loaded.
    pub fn deny_all() -> Policy {
        Policy {
            roles: BTreeMap::new(),
            passthrough: BTreeSet::new(),
            max_statement_bytes: 0,
            deny_all: true,
            version: "deny-all".to_string(),
            governance: None,
        }
    }

    /// The policy version named in audit events: `sha256:<hex>` of the configuration's
    /// content (order-independent for roles and passthrough users), or `deny-all`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Whether this is [`Policy::deny_all`].
    pub fn is_deny_all(&self) -> bool {
        self.deny_all
    }

    /// The longest statement text accepted, in bytes.
    pub fn max_statement_bytes(&self) -> usize {
        self.max_statement_bytes
    }

    /// The classes `role` is granted, or `None` if the policy does not define the role.
    pub fn role_classes(&self, role: &str) -> Option<ClassSet> {
        self.roles.get(role).copied()
    }

    /// Whether `user`'s unparseable statements are forwarded verbatim.
    pub fn is_passthrough_user(&self, user: &str) -> bool {
        self.passthrough.contains(user)
    }
}

impl TryFrom<&PolicyConfig> for Policy {
    type Error = PolicyError;

    fn try_from(config: &PolicyConfig) -> Result<Policy, PolicyError> {
        Policy::compile(config)
    }
}

/// SHA-256 over an unambiguous, canonical encoding of the configuration: every string
/// is length-prefixed, maps and sets are sorted, grants are deduplicated.
fn content_hash(config: &PolicyConfig) -> String {
    let mut hasher = Sha256::new();
    let mut field = |name: &str, value: &[u8]| {
        hasher.update((name.len() as u64).to_be_bytes());
        hasher.update(name.as_bytes());
        hasher.update((value.len() as u64).to_be_bytes());
        hasher.update(value);
    };
    field("portcullis-policy/v1", b"");
    field(
        "max_statement_bytes",
        &(config.max_statement_bytes as u64).to_be_bytes(),
    );
    field(
        "cache_entries",
        &(config.cache_entries as u64).to_be_bytes(),
    );
    field(
        "cache_max_bytes",
        &(config.cache_max_bytes as u64).to_be_bytes(),
    );
    let passthrough: BTreeSet<&str> = config
        .unparsed_passthrough
        .iter()
        .map(String::as_str)
        .collect();
    for user in passthrough {
        field("unparsed_passthrough", user.as_bytes());
    }
    for (role, grants) in &config.roles {
        field("role", role.as_bytes());
        let grants: BTreeSet<ClassGrant> = grants.allow.iter().copied().collect();
        for grant in grants {
            field("allow", grant.as_str().as_bytes());
        }
    }
    let digest = hasher.finalize();
    let mut version = String::with_capacity(7 + digest.len() * 2);
    version.push_str("sha256:");
    for byte in digest.iter() {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        version.push(char::from(HEX[usize::from(byte >> 4)]));
        version.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    version
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::class::StatementClass;
    use crate::config::RoleConfig;

    fn config_with(roles: &[(&str, &[ClassGrant])]) -> PolicyConfig {
        PolicyConfig {
            roles: roles
                .iter()
                .map(|(name, allow)| {
                    (
                        name.to_string(),
                        RoleConfig {
                            allow: allow.to_vec(),
                        },
                    )
                })
                .collect(),
            ..PolicyConfig::default()
        }
    }

    #[test]
    fn compiles_role_grants() -> Result<(), PolicyError> {
        let policy = Policy::compile(&config_with(&[
            ("analyst", &[ClassGrant::Read, ClassGrant::Session]),
            ("admin", &[ClassGrant::All]),
            ("nobody", &[]),
        ]))?;
        let analyst = policy.role_classes("analyst").unwrap_or_default();
        assert!(analyst.contains(StatementClass::Read));
        assert!(!analyst.contains(StatementClass::Write));
        assert_eq!(policy.role_classes("admin"), Some(ClassSet::ALL));
        assert_eq!(policy.role_classes("nobody"), Some(ClassSet::EMPTY));
        assert_eq!(policy.role_classes("Analyst"), None);
        assert!(!policy.is_deny_all());
        Ok(())
    }

    #[test]
    fn refuses_invalid_limits_and_names() {
        let mut config = PolicyConfig {
            max_statement_bytes: 0,
            ..PolicyConfig::default()
        };
        assert!(matches!(
            Policy::compile(&config),
            Err(PolicyError::MaxStatementBytes { value: 0, .. })
        ));
        config.max_statement_bytes = MAX_STATEMENT_BYTES_LIMIT + 1;
        assert!(Policy::compile(&config).is_err());
        config.max_statement_bytes = 1024;
        config.cache_entries = 0;
        assert_eq!(
            Policy::compile(&config).err(),
            Some(PolicyError::CacheEntries)
        );
        config.cache_entries = 1;
        config.cache_max_bytes = 0;
        assert_eq!(
            Policy::compile(&config).err(),
            Some(PolicyError::CacheMaxBytes)
        );

        let blank_role = config_with(&[(" ", &[ClassGrant::Read])]);
        assert_eq!(
            Policy::compile(&blank_role).err(),
            Some(PolicyError::EmptyRoleName)
        );

        let blank_user = PolicyConfig {
            unparsed_passthrough: vec![String::new()],
            ..PolicyConfig::default()
        };
        assert_eq!(
            Policy::compile(&blank_user).err(),
            Some(PolicyError::EmptyPassthroughUser)
        );
    }

    #[test]
    fn version_is_a_content_hash() -> Result<(), PolicyError> {
        let a = Policy::compile(&config_with(&[(
            "r",
            &[ClassGrant::Read, ClassGrant::Write],
        )]))?;
        let same = Policy::compile(&config_with(&[(
            "r",
            &[ClassGrant::Write, ClassGrant::Read, ClassGrant::Read],
        )]))?;
        let other = Policy::compile(&config_with(&[("r", &[ClassGrant::Read])]))?;
        assert!(a.version().starts_with("sha256:"));
        assert_eq!(a.version().len(), "sha256:".len() + 64);
        assert_eq!(a.version(), same.version());
        assert_ne!(a.version(), other.version());
        assert_eq!(Policy::deny_all().version(), "deny-all");
        Ok(())
    }

    #[test]
    fn passthrough_users() -> Result<(), PolicyError> {
        let policy = Policy::compile(&PolicyConfig {
            unparsed_passthrough: vec!["migrator".into()],
            ..PolicyConfig::default()
        })?;
        assert!(policy.is_passthrough_user("migrator"));
        assert!(!policy.is_passthrough_user("Migrator"));
        Ok(())
    }
}
