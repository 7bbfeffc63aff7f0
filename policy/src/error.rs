//! The crate's one error type: why a policy configuration was refused.

use thiserror::Error;

/// Why [`Policy::compile`](crate::Policy::compile) refused a configuration.
///
/// These are operator-facing (they name the offending setting); clients never see them.
/// A proxy that fails to compile a new policy keeps the last good one.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// `max_statement_bytes` is zero or larger than PostgreSQL's 1 GiB message limit.
    #[error("policy.max_statement_bytes must be between 1 and {max}, got {value}")]
    MaxStatementBytes {
        /// The configured value.
        value: usize,
        /// The largest accepted value.
        max: usize,
    },
    /// `cache_entries` is zero.
    #[error("policy.cache_entries must be at least 1")]
    CacheEntries,
    /// `cache_max_bytes` is zero.
    #[error("policy.cache_max_bytes must be at least 1")]
    CacheMaxBytes,
    /// A role under `[policy.roles]` has an empty or blank name.
    #[error("policy.roles has a role with an empty name")]
    EmptyRoleName,
    /// `unparsed_passthrough` names an empty or blank user.
    #[error("policy.unparsed_passthrough contains an empty user name")]
    EmptyPassthroughUser,
    /// A file of the policy directory was refused (it names file and line).
    #[error("{0}")]
    Load(#[from] crate::governance::LoadError),
}
