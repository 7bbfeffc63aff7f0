//! Attribute templates: SQL with `${user.<attribute>}` placeholders, such as
//! `tenant_id = ${user.tenant}`. Values are always inserted as SQL string literals
//! (quotes doubled), never as SQL text, so an attribute cannot inject SQL; PostgreSQL
//! converts the literal to the compared column's type.

use std::collections::BTreeMap;

use crate::identity::Identity;
use crate::rewrite::write::literal;

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// `user.name` is the user name; any other name an attribute.
    Attribute(String),
}

impl Template {
    /// Parses `text`, refusing placeholders that are not `${user.<name>}` and names
    /// for which `known` is false.
    pub(crate) fn parse(text: &str, known: impl Fn(&str) -> bool) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                pieces.push(Piece::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| "unterminated ${ in template".to_string())?;
            let name = after[..end].trim();
            let attribute = name
                .strip_prefix("user.")
                .ok_or_else(|| format!("placeholder ${{{name}}} must be ${{user.<attribute>}}"))?;
            if attribute != "name" && !known(attribute) {
                return Err(format!(
                    "placeholder ${{{name}}} names attribute {attribute}, which rules.toml does not declare"
                ));
            }
            pieces.push(Piece::Attribute(attribute.to_string()));
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(Template { pieces })
    }

    /// The SQL for `identity`, or the name of the first attribute it lacks.
    pub(crate) fn render(&self, identity: &Identity) -> Result<String, String> {
        self.render_with(|name| {
            if name == "name" {
                Some(identity.user.as_str())
            } else {
                identity.attributes.get(name).map(String::as_str)
            }
        })
    }

    /// The text for `identity` with attribute values inserted as they are, unquoted:
    /// for run-time setting values (native row-level security), which are data, not
    /// SQL. `Err` names the first attribute the identity lacks.
    pub(crate) fn render_text(&self, identity: &Identity) -> Result<String, String> {
        let mut text = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(plain) => text.push_str(plain),
                Piece::Attribute(name) if name == "name" => text.push_str(&identity.user),
                Piece::Attribute(name) => {
                    text.push_str(identity.attributes.get(name).ok_or_else(|| name.clone())?)
                }
            }
        }
        Ok(text)
    }

    /// The SQL with placeholder values (for validation).
    pub(crate) fn render_sample(&self) -> String {
        let sample: BTreeMap<&str, &str> = BTreeMap::new();
        self.render_with(|name| Some(sample.get(name).copied().unwrap_or("0")))
            .unwrap_or_default()
    }

    fn render_with<'a>(&self, value: impl Fn(&str) -> Option<&'a str>) -> Result<String, String> {
        let mut sql = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => sql.push_str(text),
                Piece::Attribute(name) => {
                    let value = value(name).ok_or_else(|| name.clone())?;
                    sql.push_str(&literal(value));
                }
            }
        }
        Ok(sql)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_attributes_as_literals_and_refuses_unknown_ones() {
        let template = Template::parse(
            "tenant_id = ${user.tenant} AND owner = ${ user.name }",
            |a| a == "tenant",
        );
        let template = template.as_ref().map_err(String::clone);
        let mut identity = Identity::new("o'brien", ["support"]);
        assert_eq!(
            template.clone().and_then(|t| t.render(&identity)),
            Err("tenant".to_string())
        );
        identity
            .attributes
            .insert("tenant".into(), "1'; DROP TABLE x; --".into());
        assert_eq!(
            template.and_then(|t| t.render(&identity)).as_deref(),
            Ok("tenant_id = '1''; DROP TABLE x; --' AND owner = 'o''brien'")
        );
        assert!(Template::parse("x = ${user.dept}", |_| false).is_err_and(|e| e.contains("dept")));
        assert!(Template::parse("x = ${tenant}", |_| true).is_err());
        assert!(Template::parse("x = ${user.tenant", |_| true).is_err());
    }
}
