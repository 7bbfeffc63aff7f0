//! Who is asking: the authenticated identity a decision is made for.

use std::collections::BTreeMap;

/// The identity of an authenticated client session, as the proxy established it.
///
/// The policy trusts these fields: the proxy fills them from its own authentication
/// (SCRAM against its user store, or a verified client certificate) and the policy
/// files, never from anything the client merely claims (such as `application_name`)
/// unless the proxy labels it as such in `attributes`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The proxy-authenticated user name.
    pub user: String,
    /// The roles granted to the user; matched exactly (case-sensitive) against
    /// `[policy.roles]`. Roles the policy does not define grant nothing.
    pub roles: Vec<String>,
    /// Attributes for attribute-based rules (tenant, department, client address, ...).
    /// Not used by statement classes; carried for row filters and masks.
    pub attributes: BTreeMap<String, String>,
}

impl Identity {
    /// An identity with the given user and roles and no attributes.
    pub fn new<U, R, S>(user: U, roles: R) -> Identity
    where
        U: Into<String>,
        R: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Identity {
            user: user.into(),
            roles: roles.into_iter().map(Into::into).collect(),
            attributes: BTreeMap::new(),
        }
    }
}
