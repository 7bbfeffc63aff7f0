//! Reading a policy directory, with errors that name file and line.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sqlparser::ast::{Expr, Visit, Visitor};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use toml::Spanned;
use zeroize::Zeroizing;

use super::enforcer::{Enforcer, Subject, Value};
use super::{
    AttributeType, BUILTIN_ATTRIBUTES, CLASSIFICATION_FILE, FilterRule, Governance, MODEL_FILE,
    Mask, MaskRule, NativeRule, POLICY_FILE, RULES_FILE, Template,
};
use crate::catalog::Catalog;
use crate::rewrite::fold;

/// Why a policy directory was refused: the file, the line where known, and what is
/// wrong. Operator-facing; clients never see it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {message}", path.display(), line.map(|line| format!(":{line}")).unwrap_or_default())]
pub struct LoadError {
    /// The file.
    pub path: PathBuf,
    /// The 1-based line, when the problem has one.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl LoadError {
    fn new(path: &Path, line: Option<usize>, message: impl Into<String>) -> LoadError {
        LoadError {
            path: path.to_path_buf(),
            line,
            message: message.into(),
        }
    }
}

/// The actions a `p` line may grant.
const ACTIONS: &[&str] = &[
    "select", "insert", "update", "delete", "alter", "execute", "*",
];

/// The longest policy file read, so a stray huge file cannot exhaust memory.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    attributes: BTreeMap<String, AttributeType>,
    #[serde(default = "default_search_path")]
    search_path: Vec<String>,
    #[serde(default)]
    pseudonym_key: Option<Spanned<KeySource>>,
    #[serde(default)]
    mask: Vec<Spanned<RawMask>>,
    #[serde(default)]
    filter: Vec<Spanned<RawFilter>>,
    #[serde(default)]
    native: Vec<Spanned<RawNative>>,
}

fn default_search_path() -> Vec<String> {
    vec!["public".to_string()]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
enum KeySource {
    Env(String),
    File(PathBuf),
}

#[derive(Deserialize)]
struct RawMask {
    class: String,
    roles: Vec<String>,
    #[serde(flatten)]
    mask: Mask,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilter {
    table: String,
    roles: Vec<String>,
    #[serde(rename = "where")]
    condition: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNative {
    table: String,
    roles: Vec<String>,
    settings: BTreeMap<String, String>,
}

type Classification = BTreeMap<String, BTreeMap<String, BTreeMap<String, Spanned<String>>>>;

fn read(dir: &Path, name: &str) -> Result<(PathBuf, String), LoadError> {
    let path = dir.join(name);
    let metadata = std::fs::metadata(&path)
        .map_err(|error| LoadError::new(&path, None, format!("cannot read: {error}")))?;
    if metadata.len() > MAX_FILE_BYTES {
        return Err(LoadError::new(
            &path,
            None,
            format!("larger than {MAX_FILE_BYTES} bytes"),
        ));
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|error| LoadError::new(&path, None, format!("cannot read: {error}")))?;
    Ok((path, text))
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |before| before.matches('\n').count() + 1)
}

fn toml_error(path: &Path, text: &str, error: &toml::de::Error) -> LoadError {
    let line = error.span().map(|span| line_of(text, span.start));
    LoadError::new(path, line, error.message().to_string())
}

/// Splits one CSV line into trimmed fields; double quotes protect commas, `""` is a
/// quote inside quotes.
fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '"' if quoted && chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            // A quote opens a quoted field only at the field's start (CSV); elsewhere
            // it is literal, as in `r.sub.tenant != ""`.
            '"' if quoted => quoted = false,
            '"' if field.trim().is_empty() => {
                field.clear();
                quoted = true;
            }
            ',' if !quoted => fields.push(std::mem::take(&mut field).trim().to_string()),
            _ => field.push(ch),
        }
    }
    if quoted {
        return Err("unterminated quote".to_string());
    }
    fields.push(field.trim().to_string());
    Ok(fields)
}

/// The tokens of the model's `p` definition.
fn policy_tokens(model: &str) -> Vec<String> {
    let mut in_section = false;
    for line in model.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_section = line == "[policy_definition]";
            continue;
        }
        if in_section {
            if let Some((key, value)) = line.split_once('=') {
                if key.trim() == "p" {
                    return value.split(',').map(|t| t.trim().to_string()).collect();
                }
            }
        }
    }
    Vec::new()
}

/// The `r.sub.<name>` attributes a condition reads.
fn condition_attributes(condition: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = condition;
    while let Some(start) = rest.find("r.sub.") {
        let after = &rest[start + 6..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        names.push(after[..end].to_string());
        rest = &after[end..];
    }
    names
}

fn split_table(path: &Path, line: usize, table: &str) -> Result<(String, String), LoadError> {
    match table.split_once('.') {
        Some((schema, name)) if !schema.is_empty() && !name.is_empty() && !name.contains('.') => {
            Ok((schema.to_string(), name.to_string()))
        }
        _ => Err(LoadError::new(
            path,
            Some(line),
            format!("table {table:?} must be written schema.table"),
        )),
    }
}

/// The columns an expression reads outside subqueries (folded).
fn top_level_columns(expr: &Expr) -> Vec<String> {
    struct Columns(Vec<String>, usize);
    impl Visitor for Columns {
        type Break = ();
        fn pre_visit_query(&mut self, _: &sqlparser::ast::Query) -> std::ops::ControlFlow<()> {
            self.1 += 1;
            std::ops::ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, _: &sqlparser::ast::Query) -> std::ops::ControlFlow<()> {
            self.1 -= 1;
            std::ops::ControlFlow::Continue(())
        }
        fn pre_visit_expr(&mut self, expr: &Expr) -> std::ops::ControlFlow<()> {
            if let (Expr::Identifier(ident), 0) = (expr, self.1) {
                self.0.push(fold(ident));
            }
            std::ops::ControlFlow::Continue(())
        }
    }
    let mut columns = Columns(Vec::new(), 0);
    let _ = expr.visit(&mut columns);
    columns.0.sort();
    columns.0.dedup();
    columns.0
}

pub(super) fn load(dir: &Path) -> Result<Governance, LoadError> {
    let (model_path, model) = read(dir, MODEL_FILE)?;
    let (policy_path, policy) = read(dir, POLICY_FILE)?;
    let (classes_path, classes) = read(dir, CLASSIFICATION_FILE)?;
    let (rules_path, rules_text) = read(dir, RULES_FILE)?;

    let rules: RulesFile = toml::from_str(&rules_text)
        .map_err(|error| toml_error(&rules_path, &rules_text, &error))?;
    let mut attributes: BTreeMap<String, AttributeType> = BUILTIN_ATTRIBUTES
        .iter()
        .map(|(name, kind)| (name.to_string(), *kind))
        .collect();
    for (name, kind) in &rules.attributes {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(LoadError::new(
                &rules_path,
                None,
                format!("attribute name {name:?} must be letters, digits and _"),
            ));
        }
        attributes.insert(name.clone(), *kind);
    }
    let known = |name: &str| attributes.contains_key(name);

    // policy.csv
    let tokens = policy_tokens(&model);
    if tokens.len() < 3 {
        return Err(LoadError::new(
            &model_path,
            None,
            "[policy_definition] must define p = sub, obj, act[, cond]",
        ));
    }
    let mut policies = Vec::new();
    let mut policy_lines = Vec::new();
    let mut groupings = Vec::new();
    let mut parents: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (index, raw) in policy.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let fields =
            csv_fields(trimmed).map_err(|e| LoadError::new(&policy_path, Some(line), e))?;
        let error = |message: String| LoadError::new(&policy_path, Some(line), message);
        match fields.first().map(String::as_str) {
            Some("p") => {
                let mut rule: Vec<String> = fields[1..].to_vec();
                if rule.len() < 3 || rule.len() > tokens.len() {
                    return Err(error(format!(
                        "a p line has {} fields (sub, obj, act[, condition]); the model defines {}",
                        rule.len(),
                        tokens.len()
                    )));
                }
                let object = &rule[1];
                if !(object == "*"
                    || object.starts_with("table:")
                    || object.starts_with("function:"))
                {
                    return Err(error(format!(
                        "object {object:?} must be table:<schema>.<name>, function:<schema>.<name> (globs with *) or *"
                    )));
                }
                if !ACTIONS.contains(&rule[2].as_str()) {
                    return Err(error(format!(
                        "action {:?} must be one of {}",
                        rule[2],
                        ACTIONS.join(", ")
                    )));
                }
                if let Some(condition) = rule.get(3) {
                    for name in condition_attributes(condition) {
                        if name != "name" && !known(&name) {
                            return Err(error(format!(
                                "condition reads r.sub.{name}, an attribute rules.toml does not declare"
                            )));
                        }
                    }
                }
                while rule.len() < tokens.len() {
                    rule.push("true".to_string());
                }
                if rule.get(3).is_some_and(String::is_empty) {
                    rule[3] = "true".to_string();
                }
                policy_lines.push((line, rule.clone()));
                policies.push(rule);
            }
            Some("g") => {
                if fields.len() != 3 {
                    return Err(error("a g line is: g, member, role".to_string()));
                }
                parents
                    .entry(fields[1].clone())
                    .or_default()
                    .insert(fields[2].clone());
                groupings.push(fields[1..].to_vec());
            }
            _ => return Err(error("a line must start with p or g".to_string())),
        }
    }
    let enforcer = Enforcer::new(&model, policies, groupings).map_err(|message| {
        LoadError::new(
            &model_path,
            None,
            format!("invalid casbin model or policy: {message}"),
        )
    })?;
    // Evaluate each line once, with sample attribute values, so a condition that
    // does not evaluate fails now (naming its line), not on the first statement.
    let samples: BTreeMap<&str, Value<'_>> = attributes
        .iter()
        .map(|(name, kind)| {
            let value = match kind {
                AttributeType::Text => Value::Text(""),
                AttributeType::Number => Value::Number(0),
            };
            (name.as_str(), value)
        })
        .collect();
    for (line, rule) in &policy_lines {
        let subject = Subject {
            name: &rule[0],
            user: "",
            attributes: samples
                .iter()
                .map(|(k, v)| {
                    (
                        *k,
                        match v {
                            Value::Text(t) => Value::Text(t),
                            Value::Number(n) => Value::Number(*n),
                        },
                    )
                })
                .collect(),
        };
        let act = if rule[2] == "*" {
            "select"
        } else {
            rule[2].as_str()
        };
        enforcer
            .enforce(&subject, &rule[1], act)
            .map_err(|message| {
                LoadError::new(
                    &policy_path,
                    Some(*line),
                    format!("the line does not evaluate: {message}"),
                )
            })?;
    }

    // classification.toml
    let raw: Classification =
        toml::from_str(&classes).map_err(|error| toml_error(&classes_path, &classes, &error))?;
    let mut classification = HashMap::new();
    for (schema, tables) in raw {
        for (table, columns) in tables {
            let mut map = BTreeMap::new();
            for (column, class) in columns {
                let line = line_of(&classes, class.span().start);
                let class = class.into_inner();
                if class.is_empty()
                    || !class
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
                {
                    return Err(LoadError::new(
                        &classes_path,
                        Some(line),
                        format!(
                            "class {class:?} must be letters, digits, _ and dots (e.g. pii.email)"
                        ),
                    ));
                }
                map.insert(column, class);
            }
            classification.insert((schema.clone(), table), map);
        }
    }

    // rules.toml
    let key = match &rules.pseudonym_key {
        None => None,
        Some(source) => {
            let line = line_of(&rules_text, source.span().start);
            let bytes = match source.get_ref() {
                KeySource::Env(name) => {
                    std::env::var(name).map(String::into_bytes).map_err(|_| {
                        LoadError::new(
                            &rules_path,
                            Some(line),
                            format!("pseudonym_key: environment variable {name} is not set"),
                        )
                    })?
                }
                KeySource::File(file) => {
                    let file = dir.join(file);
                    // A trailing line end (editors add one) is not part of the key.
                    let mut bytes = std::fs::read(&file).map_err(|error| {
                        LoadError::new(
                            &rules_path,
                            Some(line),
                            format!("pseudonym_key: cannot read {}: {error}", file.display()),
                        )
                    })?;
                    while matches!(bytes.last(), Some(b'\n' | b'\r')) {
                        bytes.pop();
                    }
                    bytes
                }
            };
            let bytes = Zeroizing::new(bytes);
            if bytes.len() < 16 {
                return Err(LoadError::new(
                    &rules_path,
                    Some(line),
                    "pseudonym_key must be at least 16 bytes",
                ));
            }
            Some(bytes)
        }
    };
    let mut masks = Vec::new();
    for spanned in rules.mask {
        let line = line_of(&rules_text, spanned.span().start);
        let raw = spanned.into_inner();
        let error = |message: String| LoadError::new(&rules_path, Some(line), message);
        raw.mask.validate().map_err(error)?;
        if raw.roles.is_empty() {
            return Err(error("a mask rule needs at least one role".to_string()));
        }
        if raw.mask == Mask::Pseudonym && key.is_none() {
            return Err(error(
                "mask pseudonym needs pseudonym_key (env or file) in rules.toml".to_string(),
            ));
        }
        masks.push(MaskRule {
            class: raw.class,
            roles: raw.roles,
            mask: raw.mask,
            line,
        });
    }
    let mut filters = Vec::new();
    for spanned in rules.filter {
        let line = line_of(&rules_text, spanned.span().start);
        let raw = spanned.into_inner();
        let error = |message: String| LoadError::new(&rules_path, Some(line), message);
        let (schema, table) = split_table(&rules_path, line, &raw.table)?;
        let filter = Template::parse(&raw.condition, known).map_err(error)?;
        let sample = filter.render_sample();
        let expr = Parser::new(&PostgreSqlDialect {})
            .try_with_sql(&sample)
            .and_then(|mut parser| parser.parse_expr())
            .map_err(|e| error(format!("filter does not parse as an SQL condition: {e}")))?;
        if raw.roles.is_empty() {
            return Err(error("a filter rule needs at least one role".to_string()));
        }
        filters.push(FilterRule {
            schema,
            table,
            roles: raw.roles,
            columns: top_level_columns(&expr),
            filter,
            line,
        });
    }
    let mut native = Vec::new();
    for spanned in rules.native {
        let line = line_of(&rules_text, spanned.span().start);
        let raw = spanned.into_inner();
        let error = |message: String| LoadError::new(&rules_path, Some(line), message);
        let (schema, table) = split_table(&rules_path, line, &raw.table)?;
        let mut settings = Vec::new();
        for (name, value) in raw.settings {
            if !name.contains('.')
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            {
                return Err(error(format!(
                    "setting {name:?} must be a custom setting such as app.tenant"
                )));
            }
            settings.push((
                name.to_ascii_lowercase(),
                Template::parse(&value, known).map_err(error)?,
            ));
        }
        native.push(NativeRule {
            schema,
            table,
            roles: raw.roles,
            settings,
            line,
        });
    }

    Ok(Governance {
        enforcer,
        parents,
        classification,
        masks,
        filters,
        native,
        attributes,
        pseudonym_key: key,
        search_path: rules.search_path,
        content: vec![
            (model_path, model),
            (policy_path, policy),
            (classes_path, classes),
            (rules_path, rules_text),
        ],
    })
}

pub(super) fn check_against(governance: &Governance, catalog: &Catalog) -> Vec<LoadError> {
    let mut problems = Vec::new();
    let path_of = |name: &str| {
        governance
            .content
            .iter()
            .find(|(path, _)| path.file_name().is_some_and(|f| f == name))
            .map(|(path, text)| (path.clone(), text.as_str()))
    };
    if let Some((path, text)) = path_of(CLASSIFICATION_FILE) {
        let mut keys: Vec<_> = governance.classification.iter().collect();
        keys.sort_by(|a, b| a.0.cmp(b.0));
        for ((schema, table), columns) in keys {
            let line = text
                .lines()
                .position(|l| l.trim_start().starts_with('[') && l.contains(table.as_str()))
                .map(|i| i + 1);
            let Some(relation) = catalog.relation(schema, table) else {
                problems.push(LoadError::new(
                    &path,
                    line,
                    format!("table {schema}.{table} does not exist in the database"),
                ));
                continue;
            };
            for (column, class) in columns {
                let column_line = text
                    .lines()
                    .position(|l| l.trim_start().starts_with(column.as_str()))
                    .map(|i| i + 1);
                let Some(found) = relation.column(column) else {
                    problems.push(LoadError::new(
                        &path,
                        column_line,
                        format!("column {schema}.{table}.{column} does not exist"),
                    ));
                    continue;
                };
                for rule in governance
                    .masks
                    .iter()
                    .filter(|m| m.specificity(class).is_some())
                {
                    if let Some(why) = rule.mask.unfit_for(found.category) {
                        let rules = path_of(RULES_FILE).map(|(p, _)| p).unwrap_or_default();
                        problems.push(LoadError::new(
                            &rules,
                            Some(rule.line),
                            format!(
                                "mask {} for class {class} cannot apply to {schema}.{table}.{column} ({}): {why}",
                                rule.mask.method(),
                                found.type_name
                            ),
                        ));
                    }
                }
            }
        }
    }
    if let Some((path, _)) = path_of(RULES_FILE) {
        for filter in &governance.filters {
            match catalog.relation(&filter.schema, &filter.table) {
                None => problems.push(LoadError::new(
                    &path,
                    Some(filter.line),
                    format!(
                        "filter names table {}.{}, which does not exist",
                        filter.schema, filter.table
                    ),
                )),
                Some(relation) => {
                    for column in &filter.columns {
                        if relation.column(column).is_none() {
                            problems.push(LoadError::new(
                                &path,
                                Some(filter.line),
                                format!(
                                    "filter reads column {column}, which {}.{} does not have",
                                    filter.schema, filter.table
                                ),
                            ));
                        }
                    }
                }
            }
        }
        for rule in &governance.native {
            if catalog.relation(&rule.schema, &rule.table).is_none() {
                problems.push(LoadError::new(
                    &path,
                    Some(rule.line),
                    format!(
                        "native rule names table {}.{}, which does not exist",
                        rule.schema, rule.table
                    ),
                ));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_respect_quotes() {
        assert_eq!(
            csv_fields(r#"p, support, table:public.*, select, "r.sub.dept == ""hr"", or not""#),
            Ok(vec![
                "p".into(),
                "support".into(),
                "table:public.*".into(),
                "select".into(),
                "r.sub.dept == \"hr\", or not".into()
            ])
        );
        assert!(csv_fields("p, \"open").is_err());
        assert_eq!(
            csv_fields(r#"p, s, o, a, r.sub.tenant != """#),
            Ok(vec![
                "p".into(),
                "s".into(),
                "o".into(),
                "a".into(),
                "r.sub.tenant != \"\"".into()
            ])
        );
    }

    #[test]
    fn condition_attributes_are_found() {
        assert_eq!(
            condition_attributes("r.sub.hour >= 8 && r.sub.department == \"hr\""),
            vec!["hour".to_string(), "department".to_string()]
        );
    }
}
