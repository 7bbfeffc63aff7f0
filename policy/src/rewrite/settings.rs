//! Which run-time settings a statement changes, for the census: native row-level
//! security reads settings the proxy sets (`app.tenant`), and a client statement must
//! not change them.
//!
//! A change is a setting name (as written; PostgreSQL matches names case-insensitively,
//! so compare them that way) or `None` when the statement may change any setting or
//! the name cannot be read: `RESET ALL`, `DISCARD ALL`, `set_config()` with a first
//! argument that is not a string literal.

use sqlparser::ast::{
    DiscardObject, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, ObjectName, Reset, Set,
    Statement, Value,
};

/// The settings `statement` itself changes (not those of statements or expressions
/// nested in it: the walker reaches those).
pub(crate) fn changed_by_statement(statement: &Statement) -> Vec<Option<String>> {
    match statement {
        Statement::Set(set) => match set {
            Set::SingleAssignment { variable, .. } => vec![name_text(variable)],
            Set::MultipleAssignments { assignments } => assignments
                .iter()
                .map(|assignment| name_text(&assignment.name))
                .collect(),
            // Not PostgreSQL syntax: cannot tell.
            Set::ParenthesizedAssignments { .. } | Set::SetSessionParam(_) => vec![None],
            // Role, authorization, names, time zone, transaction characteristics: none
            // of them is a custom setting.
            Set::SetRole { .. }
            | Set::SetSessionAuthorization(_)
            | Set::SetNames { .. }
            | Set::SetNamesDefault {}
            | Set::SetTimeZone { .. }
            | Set::SetTransaction { .. } => Vec::new(),
        },
        Statement::Reset(reset) => match &reset.reset {
            Reset::ALL => vec![None],
            Reset::ConfigurationParameter(name) => vec![name_text(name)],
            Reset::SessionAuthorization => Vec::new(),
        },
        Statement::Discard {
            object_type: DiscardObject::ALL,
        } => vec![None],
        _ => Vec::new(),
    }
}

/// The setting a call of `name(args)` changes: `None` if it is not `set_config`,
/// `Some(None)` if it is and its first argument is not a string literal.
pub(crate) fn changed_by_call(name: &ObjectName, args: &[FunctionArg]) -> Option<Option<String>> {
    let last = name.0.last()?.as_ident()?;
    if !last.value.eq_ignore_ascii_case("set_config") {
        return None;
    }
    let setting = match args.first() {
        Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(value)))) => {
            match &value.value {
                Value::SingleQuotedString(text) | Value::EscapedStringLiteral(text) => {
                    Some(text.clone())
                }
                Value::DollarQuotedString(dollar) => Some(dollar.value.clone()),
                _ => None,
            }
        }
        // Named arguments, casts, parameters, expressions: cannot tell.
        _ => None,
    };
    Some(setting)
}

/// [`changed_by_call`] for a function call expression.
pub(crate) fn changed_by_expr(expr: &Expr) -> Option<Option<String>> {
    let Expr::Function(function) = expr else {
        return None;
    };
    let args = match &function.args {
        FunctionArguments::List(list) => list.args.as_slice(),
        FunctionArguments::None | FunctionArguments::Subquery(_) => &[],
    };
    changed_by_call(&function.name, args)
}

/// A setting name as PostgreSQL joins it (`app.tenant`), or `None` when a part is not a
/// plain identifier.
fn name_text(name: &ObjectName) -> Option<String> {
    let parts: Option<Vec<&str>> = name
        .0
        .iter()
        .map(|part| part.as_ident().map(|ident| ident.value.as_str()))
        .collect();
    parts.map(|parts| parts.join("."))
}

#[cfg(test)]
mod tests {
    use crate::rewrite::Census;

    fn settings(sql: &str) -> Vec<Option<String>> {
        let mut statements = crate::analysis::parse(sql).unwrap();
        let mut all = Vec::new();
        for statement in &mut statements {
            all.extend(Census::of(statement).unwrap().settings);
        }
        all
    }

    fn named(name: &str) -> Vec<Option<String>> {
        vec![Some(name.to_string())]
    }

    #[test]
    fn set_and_reset_name_their_setting() {
        assert_eq!(settings("SET app.tenant = '2'"), named("app.tenant"));
        assert_eq!(settings("SET SESSION app.tenant TO 2"), named("app.tenant"));
        assert_eq!(
            settings("SET LOCAL App.Tenant = DEFAULT"),
            named("App.Tenant")
        );
        assert_eq!(settings("SET \"app.tenant\" = '2'"), named("app.tenant"));
        assert_eq!(settings("RESET app.tenant"), named("app.tenant"));
        assert_eq!(settings("SET search_path = public"), named("search_path"));
    }

    #[test]
    fn resets_of_everything_cannot_name_one() {
        assert_eq!(settings("RESET ALL"), vec![None]);
        assert_eq!(settings("DISCARD ALL"), vec![None]);
        assert!(settings("DISCARD PLANS").is_empty());
        assert!(settings("SET ROLE admin").is_empty());
        assert!(settings("SET TIME ZONE 'UTC'").is_empty());
        assert!(settings("SELECT current_setting('app.tenant')").is_empty());
    }

    #[test]
    fn set_config_anywhere_is_found() {
        assert_eq!(
            settings("SELECT set_config('app.tenant', '2', false)"),
            named("app.tenant")
        );
        assert_eq!(
            settings("SELECT pg_catalog.SET_CONFIG('app.tenant', '2', true)"),
            named("app.tenant")
        );
        assert_eq!(
            settings("SELECT * FROM set_config('app.tenant', '2', false)"),
            named("app.tenant")
        );
        assert_eq!(
            settings(
                "SELECT 1 FROM t WHERE id IN (SELECT length(set_config('app.tenant', '2', false)))"
            ),
            named("app.tenant")
        );
        assert_eq!(
            settings("WITH x AS (SELECT set_config('app.x', '2', false)) SELECT * FROM x"),
            named("app.x")
        );
        assert_eq!(
            settings("UPDATE t SET a = set_config('app.tenant', '2', false) WHERE b = 1"),
            named("app.tenant")
        );
        assert_eq!(
            settings("PREPARE p AS SELECT set_config('app.tenant', $1, false)"),
            named("app.tenant")
        );
        assert_eq!(settings("SELECT set_config($1, '2', false)"), vec![None]);
        assert_eq!(
            settings("SELECT set_config('app.' || 'tenant', '2', false)"),
            vec![None]
        );
        assert_eq!(
            settings(
                "SELECT set_config(setting_name => 'app.tenant', new_value => '2', is_local => false)"
            ),
            vec![None]
        );
    }
}
