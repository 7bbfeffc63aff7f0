//! The casbin enforcer behind table and function grants.
//!
//! casbin's constructors are `async` (for adapters that do I/O); the policy is given
//! as text and lines here, so their futures complete without waiting and are driven
//! with `pollster`.

use std::collections::BTreeMap;

use casbin::{CoreApi, DefaultModel, MemoryAdapter, MgmtApi};
use serde::Serialize;

use super::AttributeType;

/// A compiled casbin model with its policy lines.
pub(crate) struct Enforcer {
    inner: casbin::Enforcer,
}

/// The request subject: the principal being checked and the identity's attributes.
#[derive(Debug, Serialize, Hash)]
pub(crate) struct Subject<'a> {
    pub(crate) name: &'a str,
    pub(crate) user: &'a str,
    #[serde(flatten)]
    pub(crate) attributes: BTreeMap<&'a str, Value<'a>>,
}

/// An attribute value, typed as `rules.toml` declares it.
#[derive(Debug, Serialize, Hash)]
#[serde(untagged)]
pub(crate) enum Value<'a> {
    Text(&'a str),
    Number(i32),
}

impl Value<'_> {
    /// The value of a declared attribute: numbers that do not parse are absent.
    pub(crate) fn typed(text: &str, kind: AttributeType) -> Option<Value<'_>> {
        match kind {
            AttributeType::Text => Some(Value::Text(text)),
            AttributeType::Number => text.trim().parse().ok().map(Value::Number),
        }
    }
}

impl Enforcer {
    /// Builds the enforcer from the model text and the `p` and `g` rules.
    pub(crate) fn new(
        model: &str,
        policies: Vec<Vec<String>>,
        groupings: Vec<Vec<String>>,
    ) -> Result<Enforcer, String> {
        pollster::block_on(async move {
            let model = DefaultModel::from_str(model)
                .await
                .map_err(|error| error.to_string())?;
            let mut inner = casbin::Enforcer::new(model, MemoryAdapter::default())
                .await
                .map_err(|error| error.to_string())?;
            if !policies.is_empty() {
                inner
                    .add_policies(policies)
                    .await
                    .map_err(|error| error.to_string())?;
            }
            if !groupings.is_empty() {
                inner
                    .add_grouping_policies(groupings)
                    .await
                    .map_err(|error| error.to_string())?;
            }
            Ok(Enforcer { inner })
        })
    }

    /// Whether the model and policy allow `subject` to `act` on `object`. An
    /// evaluation error (a condition that does not evaluate to a boolean) is an `Err`.
    pub(crate) fn enforce(
        &self,
        subject: &Subject<'_>,
        object: &str,
        act: &str,
    ) -> Result<bool, String> {
        self.inner
            .enforce((subject, object, act))
            .map_err(|error| error.to_string())
    }
}
