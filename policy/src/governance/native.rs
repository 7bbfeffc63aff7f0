//! Native row-level security (`[[native]]` rules): tables the database protects with
//! its own policies, which read run-time settings (`current_setting('app.tenant')`)
//! that the proxy sets for the session.
//!
//! Two things follow from a rule that applies to an identity: the settings it renders
//! for the identity ([`Governance::session_settings`]), which the proxy applies to the
//! upstream session before the first client statement, and the set of protected
//! setting names, which no client statement of that identity may change (the access
//! refuses `SET`, `RESET`, `set_config(...)` and the like on them).

use std::collections::BTreeSet;

use crate::decision::{Denial, sqlstate};
use crate::identity::Identity;

use super::Governance;

/// A setting the proxy sets for native row-level security, and the rule that sets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Protected {
    /// The setting name, lower case.
    pub(crate) name: String,
    /// `schema.table` of the rule.
    pub(crate) table: String,
    /// The rule's line in `rules.toml`.
    pub(crate) line: usize,
}

fn deny(message: String, line: usize) -> Denial {
    let rule = format!("rules.toml:{line}");
    Denial {
        sqlstate: sqlstate::INSUFFICIENT_PRIVILEGE,
        message: format!("portcullis: permission denied: {message}; rule: {rule}"),
        rule,
    }
}

impl Governance {
    /// The roles a rule can name for `identity`: its user name, its assigned roles and
    /// every role they inherit through `g` lines.
    pub(crate) fn effective_roles(&self, identity: &Identity) -> BTreeSet<String> {
        let mut effective: BTreeSet<String> = std::iter::once(&identity.user)
            .chain(&identity.roles)
            .cloned()
            .collect();
        for principal in std::iter::once(&identity.user).chain(&identity.roles) {
            effective.extend(self.inherited(principal));
        }
        effective
    }

    /// The settings of every `[[native]]` rule that applies to one of `effective`.
    pub(crate) fn protected_settings(&self, effective: &BTreeSet<String>) -> Vec<Protected> {
        self.native
            .iter()
            .filter(|rule| rule.roles.iter().any(|role| effective.contains(role)))
            .flat_map(|rule| {
                rule.settings.iter().map(|(name, _)| Protected {
                    name: name.clone(),
                    table: format!("{}.{}", rule.schema, rule.table),
                    line: rule.line,
                })
            })
            .collect()
    }

    /// The run-time settings the proxy must give `identity`'s upstream session, as
    /// (name, value) pairs sorted by name: those of every `[[native]]` rule that applies
    /// to the identity's effective roles, each template rendered with the identity's
    /// attributes as plain text (the value of a setting is not SQL).
    ///
    /// Refuses (42501, naming the rule's line): a template naming an attribute the
    /// identity lacks; a value holding a NUL byte, which no setting can carry; and two
    /// rules that give one setting different values.
    pub fn session_settings(&self, identity: &Identity) -> Result<Vec<(String, String)>, Denial> {
        let effective = self.effective_roles(identity);
        let mut settings: std::collections::BTreeMap<String, (String, usize)> =
            std::collections::BTreeMap::new();
        for rule in &self.native {
            if !rule.roles.iter().any(|role| effective.contains(role)) {
                continue;
            }
            for (name, template) in &rule.settings {
                let value = template.render_text(identity).map_err(|attribute| {
                    deny(
                        format!(
                            "native row-level security on {}.{} sets {name} from attribute {attribute}, which user {} does not have",
                            rule.schema, rule.table, identity.user
                        ),
                        rule.line,
                    )
                })?;
                if value.contains('\0') {
                    return Err(deny(
                        format!(
                            "the value of {name} for user {} holds a NUL byte",
                            identity.user
                        ),
                        rule.line,
                    ));
                }
                match settings.get(name) {
                    Some((other, line)) if *other != value => {
                        return Err(deny(
                            format!(
                                "native rules at rules.toml:{line} and rules.toml:{} give {name} different values for user {}",
                                rule.line, identity.user
                            ),
                            rule.line,
                        ));
                    }
                    Some(_) => {}
                    None => {
                        settings.insert(name.clone(), (value, rule.line));
                    }
                }
            }
        }
        Ok(settings
            .into_iter()
            .map(|(name, (value, _))| (name, value))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A governance from the given `policy.csv` and `rules.toml` (empty model
    /// extras, no classification).
    fn governance(policy: &str, rules: &str) -> Governance {
        let dir = tempfile::tempdir().unwrap();
        let quickstart =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart");
        std::fs::copy(quickstart.join("model.conf"), dir.path().join("model.conf")).unwrap();
        std::fs::write(dir.path().join("policy.csv"), policy).unwrap();
        std::fs::write(dir.path().join("classification.toml"), "").unwrap();
        std::fs::write(dir.path().join("rules.toml"), rules).unwrap();
        Governance::load(dir.path()).unwrap_or_else(|e| panic!("{e}"))
    }

    const RULES: &str = r#"[attributes]
tenant = "text"
region = "text"

[[native]]
table = "public.tickets"
roles = ["support"]
[native.settings]
"app.tenant" = "${user.tenant}"
"app.who" = "${user.name}"

[[native]]
table = "public.notes"
roles = ["regional"]
[native.settings]
"app.region" = "eu-${user.region}"
"#;

    fn support(tenant: Option<&str>) -> Identity {
        let mut identity = Identity::new("o'brien", ["support"]);
        if let Some(tenant) = tenant {
            identity.attributes.insert("tenant".into(), tenant.into());
        }
        identity
    }

    #[test]
    fn renders_the_settings_of_applicable_rules_as_plain_text() {
        let governance = governance("p, support, table:public.tickets, select\n", RULES);
        assert_eq!(
            governance.session_settings(&support(Some("1'; --"))),
            Ok(vec![
                ("app.tenant".to_string(), "1'; --".to_string()),
                ("app.who".to_string(), "o'brien".to_string()),
            ])
        );
        let protected = governance.protected_settings(&governance.effective_roles(&support(None)));
        assert_eq!(
            protected
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
            ["app.tenant", "app.who"]
        );
        assert_eq!(protected[0].table, "public.tickets");
        assert_eq!(protected[0].line, 5);
        // A user no rule names gets nothing and protects nothing.
        let analyst = Identity::new("ann", ["analyst"]);
        assert_eq!(governance.session_settings(&analyst), Ok(vec![]));
        assert!(
            governance
                .protected_settings(&governance.effective_roles(&analyst))
                .is_empty()
        );
    }

    #[test]
    fn inherited_roles_and_user_names_count() {
        let governance = governance("g, lead, support\ng, zed, regional\n", RULES);
        let mut lead = Identity::new("lou", ["lead"]);
        lead.attributes.insert("tenant".into(), "7".into());
        assert_eq!(
            governance.session_settings(&lead),
            Ok(vec![
                ("app.tenant".to_string(), "7".to_string()),
                ("app.who".to_string(), "lou".to_string()),
            ])
        );
        // `g, zed, regional` makes the user zed (no assigned role) regional.
        let mut zed = Identity::new("zed", Vec::<String>::new());
        zed.attributes.insert("region".into(), "west".into());
        assert_eq!(
            governance.session_settings(&zed),
            Ok(vec![("app.region".to_string(), "eu-west".to_string())])
        );
    }

    #[test]
    fn a_missing_attribute_is_a_denial_naming_it() {
        let governance = governance("", RULES);
        let denial = governance.session_settings(&support(None)).unwrap_err();
        assert_eq!(denial.sqlstate, "42501");
        assert!(denial.message.contains("attribute tenant"), "{denial}");
        assert!(denial.message.contains("public.tickets"), "{denial}");
        assert_eq!(denial.rule, "rules.toml:5");
    }

    #[test]
    fn conflicting_values_are_a_denial_and_equal_ones_are_not() {
        let rules = format!(
            "{RULES}\n[[native]]\ntable = \"public.notes\"\nroles = [\"auditor\"]\n[native.settings]\n\"app.tenant\" = \"${{user.region}}\"\n"
        );
        let governance = governance("", &rules);
        let mut both = Identity::new("bo", ["support", "auditor"]);
        both.attributes.insert("tenant".into(), "1".into());
        both.attributes.insert("region".into(), "2".into());
        let denial = governance.session_settings(&both).unwrap_err();
        assert!(denial.message.contains("app.tenant"), "{denial}");
        assert!(denial.message.contains("rules.toml:5"), "{denial}");
        assert!(denial.message.contains("different values"), "{denial}");
        both.attributes.insert("region".into(), "1".into());
        assert_eq!(governance.session_settings(&both).map(|s| s.len()), Ok(2));
    }

    #[test]
    fn statements_changing_a_protected_setting_are_refused() {
        use std::sync::Arc;
        let governance = Arc::new(governance("", RULES));
        let access = |identity: &Identity| {
            crate::access::Access::new(
                0,
                Arc::clone(&governance),
                Arc::new(crate::catalog::Catalog::default()),
                identity,
            )
        };
        let census = |sql: &str| {
            let mut statement = crate::analysis::parse(sql).unwrap().pop().unwrap();
            crate::rewrite::Census::of(&mut statement).unwrap()
        };
        let support = access(&support(Some("1")));
        let denial = support.open(&census("SET APP.TENANT = '2'")).unwrap_err();
        assert_eq!(denial.sqlstate, "42501");
        assert_eq!(denial.rule, "rules.toml:5");
        assert!(denial.message.contains("setting app.tenant"), "{denial}");
        assert!(denial.message.contains("public.tickets"), "{denial}");
        for sql in [
            "RESET ALL",
            "DISCARD ALL",
            "SELECT set_config('app.who', 'x', false)",
        ] {
            assert!(support.open(&census(sql)).is_err(), "{sql}");
        }
        assert_eq!(support.open(&census("SET search_path = x")), Ok(true));
        assert_eq!(support.open(&census("DISCARD PLANS")), Ok(true));
        let analyst = access(&Identity::new("ann", ["analyst"]));
        assert_eq!(analyst.open(&census("SET app.tenant = '2'")), Ok(true));
        assert_eq!(analyst.open(&census("RESET ALL")), Ok(true));
    }

    #[test]
    fn a_nul_byte_is_refused() {
        let governance = governance("", RULES);
        let denial = governance
            .session_settings(&support(Some("1\0")))
            .unwrap_err();
        assert!(denial.message.contains("NUL"), "{denial}");
    }
}
