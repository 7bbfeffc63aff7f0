//! Write statements: INSERT, UPDATE, DELETE, MERGE and COPY, whose target is not a read.
//!
//! For a target with a row filter: UPDATE and DELETE get the filter added to their
//! predicate (only permitted rows are touched); INSERT gets its rows passed through
//! `portcullis.row_check` (a row outside the filter raises 42501), and so does every
//! UPDATE assignment to a column the filter reads (a row cannot be moved out). For a
//! target with masked columns, a write may not read those columns (in WHERE, SET,
//! RETURNING, ...), so row counts and returned rows reveal nothing the mask hides.
//! What cannot be rewritten that way is refused: MERGE into, and `COPY ... FROM` into,
//! a governed table, `ON CONFLICT DO UPDATE` on a row-filtered one.

use std::ops::ControlFlow;

use sqlparser::ast::{
    AssignmentTarget, CaseWhen, CastKind, CopySource, DataType, Expr, FromTable, Function,
    FunctionArg, FunctionArgExpr, FunctionArguments, Ident, Insert, ObjectName, OnConflictAction,
    OnInsert, Query, SelectItem, SetExpr, Statement, TableAliasColumnDef, TableFactor, TableObject,
    Value, Visit, VisitMut, Visitor, VisitorMut,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::{Act, Read, Resolve, Walker, fold, fold_name};
use crate::decision::{Denial, sqlstate};

/// What constrains writes to one target for one identity.
#[derive(Debug, Clone)]
pub(crate) struct TargetRule {
    /// `schema.table`, for messages.
    pub(crate) relation: String,
    /// The row filter over the target's unqualified columns, as SQL.
    pub(crate) filter: Option<String>,
    /// Columns the filter reads (folded names).
    pub(crate) filter_columns: Vec<String>,
    /// Columns masked for this identity (folded names).
    pub(crate) masked: Vec<String>,
    /// The target's columns and their types, in order.
    pub(crate) columns: Vec<(String, String)>,
    /// The rule that set the filter or masks, for messages.
    pub(crate) rule: String,
}

pub(crate) fn refuse(what: &str) -> Denial {
    Denial {
        sqlstate: sqlstate::INSUFFICIENT_PRIVILEGE,
        message: format!(
            "portcullis: permission denied: Portcullis cannot enforce the policy on {what}; rule: rewrite"
        ),
        rule: "rewrite".to_string(),
    }
}

fn denied(rule: &TargetRule, what: String) -> Denial {
    Denial {
        sqlstate: sqlstate::INSUFFICIENT_PRIVILEGE,
        message: format!(
            "portcullis: permission denied: {what} on {}; rule: {}",
            rule.relation, rule.rule
        ),
        rule: rule.rule.clone(),
    }
}

/// Whether the walker handles `statement` by hand.
pub(crate) fn handles(statement: &Statement) -> bool {
    matches!(
        statement,
        Statement::Insert(_)
            | Statement::Update(_)
            | Statement::Delete(_)
            | Statement::Merge(_)
            | Statement::Copy { .. }
    )
}

/// A statement without children, left in the tree while a write is handled by hand.
pub(crate) fn placeholder() -> Statement {
    Statement::Commit {
        chain: false,
        end: false,
        modifier: None,
    }
}

pub(crate) fn walk<R: Resolve>(
    walker: &mut Walker<'_, R>,
    statement: &mut Statement,
) -> ControlFlow<Denial> {
    let result = match statement {
        Statement::Insert(insert) => self::insert(walker, insert),
        Statement::Update(update) => self::update(walker, update),
        Statement::Delete(delete) => self::delete(walker, delete),
        Statement::Merge(merge) => self::merge(walker, merge),
        Statement::Copy { source, to, .. } => self::copy(walker, source, *to),
        _ => Ok(()),
    };
    match result {
        Ok(()) => ControlFlow::Continue(()),
        Err(denial) => ControlFlow::Break(denial),
    }
}

fn flow(flow: ControlFlow<Denial>) -> Result<(), Denial> {
    match flow {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(denial) => Err(denial),
    }
}

pub(crate) fn parse_expr(sql: &str) -> Result<Expr, Denial> {
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(sql)
        .and_then(|mut parser| parser.parse_expr())
        .map_err(|_| refuse("this statement (its rewritten form did not parse)"))
}

pub(crate) fn parse_query(sql: &str) -> Result<Box<Query>, Denial> {
    match crate::analysis::parse(sql).ok().and_then(|mut s| s.pop()) {
        Some(Statement::Query(query)) => Ok(query),
        _ => Err(refuse("this statement (its rewritten form did not parse)")),
    }
}

/// The type `type_name` stands for in `CAST(... AS type_name)`. Anything that does not
/// read as exactly one plain `CAST` is refused.
pub(crate) fn parse_data_type(type_name: &str) -> Result<DataType, Denial> {
    match parse_expr(&format!("CAST(NULL AS {type_name})"))? {
        Expr::Cast {
            kind: CastKind::Cast,
            data_type,
            format: None,
            ..
        } => Ok(data_type),
        _ => Err(refuse("this statement (a column type did not parse)")),
    }
}

/// `CAST((value) AS data_type)`, as the text would parse.
fn cast(value: Expr, data_type: DataType) -> Expr {
    Expr::Cast {
        kind: CastKind::Cast,
        expr: Box::new(Expr::Nested(Box::new(value))),
        data_type,
        format: None,
    }
}

/// A SQL string literal.
pub(crate) fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A quoted identifier.
pub(crate) fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn target_parts(factor: &TableFactor) -> Result<(Vec<String>, Ident), Denial> {
    let TableFactor::Table {
        name,
        alias,
        args: None,
        ..
    } = factor
    else {
        return Err(refuse("a write whose target is not a table name"));
    };
    let parts =
        fold_name(name).ok_or_else(|| refuse("a relation name that is not an identifier"))?;
    let qualifier = match alias {
        Some(alias) => alias.name.clone(),
        None => name
            .0
            .last()
            .and_then(|part| part.as_ident().cloned())
            .ok_or_else(|| refuse("a relation name that is not an identifier"))?,
    };
    Ok((parts, qualifier))
}

/// Refuses a write that reads a masked column, or the whole target row, of `rule`'s
/// target anywhere in `node`.
fn check_no_masked_reads<V: Visit>(
    rule: &TargetRule,
    qualifier: &Ident,
    node: &V,
) -> Result<(), Denial> {
    if rule.masked.is_empty() {
        return Ok(());
    }
    let qualifier = fold(qualifier);
    struct Reads<'a> {
        rule: &'a TargetRule,
        qualifier: &'a str,
    }
    impl Visitor for Reads<'_> {
        type Break = String;
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<String> {
            let names: Vec<String> = match expr {
                Expr::Identifier(ident) => vec![fold(ident)],
                Expr::CompoundIdentifier(idents) => idents.iter().map(fold).collect(),
                _ => return ControlFlow::Continue(()),
            };
            for name in &names {
                if self.rule.masked.contains(name) {
                    return ControlFlow::Break(format!(
                        "a write may not read the masked column {name}"
                    ));
                }
            }
            if names.len() == 1 && names[0] == self.qualifier {
                return ControlFlow::Break(
                    "a write may not read the whole row of a table with masked columns".to_string(),
                );
            }
            ControlFlow::Continue(())
        }
    }
    match node.visit(&mut Reads {
        rule,
        qualifier: &qualifier,
    }) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(what) => Err(denied(rule, what)),
    }
}

fn check_returning(
    rule: &TargetRule,
    qualifier: &Ident,
    returning: &Option<Vec<SelectItem>>,
) -> Result<(), Denial> {
    let Some(items) = returning else {
        return Ok(());
    };
    if !rule.masked.is_empty()
        && items.iter().any(|item| {
            matches!(
                item,
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
            )
        })
    {
        return Err(denied(
            rule,
            "RETURNING * of a table with masked columns".to_string(),
        ));
    }
    check_no_masked_reads(rule, qualifier, returning)
}

/// The filter as an expression whose target columns are qualified with `qualifier`
/// (so it cannot be captured by another table in FROM/USING), with `replace`d columns
/// swapped for the given SQL instead.
fn filter_expr<R: Resolve>(
    resolve: &mut R,
    rule: &TargetRule,
    filter: &str,
    qualifier: &Ident,
    replace: &[(String, Expr)],
) -> Result<Expr, Denial> {
    let mut expr = resolve.expr(filter)?;
    struct Qualify<'a> {
        columns: &'a [(String, String)],
        qualifier: &'a Ident,
        replace: &'a [(String, Expr)],
        depth: usize,
    }
    impl VisitorMut for Qualify<'_> {
        type Break = ();
        fn pre_visit_query(&mut self, _: &mut Query) -> ControlFlow<()> {
            self.depth += 1;
            ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, _: &mut Query) -> ControlFlow<()> {
            self.depth -= 1;
            ControlFlow::Continue(())
        }
        fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
            if self.depth > 0 {
                return ControlFlow::Continue(());
            }
            if let Expr::Identifier(ident) = expr {
                let name = fold(ident);
                if let Some((_, replacement)) = self.replace.iter().find(|(c, _)| *c == name) {
                    *expr = Expr::Nested(Box::new(replacement.clone()));
                } else if self.columns.iter().any(|(c, _)| *c == name) {
                    *expr = Expr::CompoundIdentifier(vec![self.qualifier.clone(), ident.clone()]);
                }
            }
            ControlFlow::Continue(())
        }
    }
    let _ = VisitMut::visit(
        &mut expr,
        &mut Qualify {
            columns: &rule.columns,
            qualifier,
            replace,
            depth: 0,
        },
    );
    Ok(expr)
}

/// Fills `CASE WHEN portcullis.row_check((NULL), 'rule') THEN NULL END` (`template`)
/// with `check` for the first NULL and `value` for the second; `None` if the template
/// is not that.
fn checked(mut template: Expr, check: Expr, value: Expr) -> Option<Expr> {
    let Expr::Case {
        operand: None,
        conditions,
        else_result: None,
        ..
    } = &mut template
    else {
        return None;
    };
    let [CaseWhen { condition, result }] = conditions.as_mut_slice() else {
        return None;
    };
    let Expr::Function(Function {
        args: FunctionArguments::List(list),
        ..
    }) = condition
    else {
        return None;
    };
    let Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Nested(first)))) =
        list.args.first_mut()
    else {
        return None;
    };
    if !is_null(first) || !is_null(result) {
        return None;
    }
    **first = check;
    *result = value;
    Some(template)
}

fn is_null(expr: &Expr) -> bool {
    matches!(expr, Expr::Value(value) if value.value == Value::Null)
}

fn and(selection: &mut Option<Expr>, filter: Expr) {
    let filter = Expr::Nested(Box::new(filter));
    *selection = Some(match selection.take() {
        Some(existing) => Expr::BinaryOp {
            left: Box::new(Expr::Nested(Box::new(existing))),
            op: sqlparser::ast::BinaryOperator::And,
            right: Box::new(filter),
        },
        None => filter,
    });
}

fn column_type<'a>(rule: &'a TargetRule, column: &str) -> Result<&'a str, Denial> {
    rule.columns
        .iter()
        .find(|(name, _)| name == column)
        .map(|(_, type_name)| type_name.as_str())
        .ok_or_else(|| denied(rule, format!("column {column} is not known")))
}

fn insert<R: Resolve>(walker: &mut Walker<'_, R>, insert: &mut Insert) -> Result<(), Denial> {
    let TableObject::TableName(name) = &insert.table else {
        return Err(refuse("INSERT into a table function"));
    };
    let parts =
        fold_name(name).ok_or_else(|| refuse("a relation name that is not an identifier"))?;
    let qualifier = match &insert.table_alias {
        Some(alias) => alias.alias.clone(),
        None => name
            .0
            .last()
            .and_then(|part| part.as_ident().cloned())
            .ok_or_else(|| refuse("a relation name that is not an identifier"))?,
    };
    let rule = walker.resolver().target(&parts, Act::Insert)?;
    let upsert = matches!(
        &insert.on,
        Some(OnInsert::OnConflict(conflict)) if matches!(conflict.action, OnConflictAction::DoUpdate(_))
    );
    if upsert {
        // ON CONFLICT DO UPDATE updates the existing row: it needs the update grant.
        if let Some(update_rule) = walker.resolver().target(&parts, Act::Update)? {
            if update_rule.filter.is_some() {
                return Err(denied(
                    &update_rule,
                    "INSERT ... ON CONFLICT DO UPDATE is not allowed under a row filter"
                        .to_string(),
                ));
            }
            check_no_masked_reads(&update_rule, &qualifier, &insert.on)?;
            check_returning(&update_rule, &qualifier, &insert.returning)?;
        }
    }
    if let Some(source) = &mut insert.source {
        flow(walker.visit(&mut **source))?;
    }
    flow(walker.visit(&mut insert.on))?;
    flow(walker.visit(&mut insert.returning))?;
    let Some(rule) = rule else {
        return Ok(());
    };
    walker.constrained = true;
    check_no_masked_reads(&rule, &qualifier, &insert.on)?;
    let Some(filter) = rule.filter.clone() else {
        return Ok(());
    };
    let columns: Vec<String> = if insert.columns.is_empty() {
        let count = match insert.source.as_deref().map(|q| q.body.as_ref()) {
            Some(SetExpr::Values(values)) => values.rows.first().map_or(0, |row| row.content.len()),
            _ => rule.columns.len(),
        };
        rule.columns
            .iter()
            .take(count)
            .map(|(c, _)| c.clone())
            .collect()
    } else {
        insert
            .columns
            .iter()
            .map(|c| fold_name(c).and_then(|p| p.last().cloned()))
            .collect::<Option<_>>()
            .ok_or_else(|| refuse("an INSERT column list that is not plain names"))?
    };
    if let Some(missing) = rule.filter_columns.iter().find(|c| !columns.contains(c)) {
        return Err(denied(
            &rule,
            format!("an INSERT under a row filter must set column {missing}"),
        ));
    }
    let Some(source) = insert.source.as_mut() else {
        return Err(denied(
            &rule,
            "INSERT ... DEFAULT VALUES is not allowed under a row filter".to_string(),
        ));
    };
    if let SetExpr::Values(values) = source.body.as_mut() {
        // A VALUES list moved into a subquery loses the target's types for its
        // parameters and literals: cast each to its column's type, as the INSERT would.
        for row in &mut values.rows {
            for (index, value) in row.content.iter_mut().enumerate() {
                if matches!(value, Expr::Identifier(ident) if ident.quote_style.is_none() && ident.value.eq_ignore_ascii_case("default"))
                {
                    return Err(denied(
                        &rule,
                        "DEFAULT in an INSERT under a row filter".to_string(),
                    ));
                }
                let Some(column) = columns.get(index) else {
                    continue;
                };
                let data_type = walker.resolver().data_type(column_type(&rule, column)?)?;
                *value = cast(
                    std::mem::replace(value, Expr::Value(Value::Null.into())),
                    data_type,
                );
            }
        }
    }
    if columns.is_empty() {
        return Err(refuse("this INSERT"));
    }
    // The wrapper depends on the policy only: parsed once per filter and rule, then
    // given the statement's column list and rows.
    let wrapper = format!(
        "SELECT * FROM (SELECT 1) AS portcullis_new WHERE portcullis.row_check(({filter}), {})",
        literal(&rule.rule),
    );
    let mut wrapper = walker.resolver().query(&wrapper)?;
    if let SetExpr::Select(select) = wrapper.body.as_mut() {
        if let Some(TableFactor::Derived {
            subquery,
            alias: Some(alias),
            ..
        }) = select.from.first_mut().map(|t| &mut t.relation)
        {
            alias.columns = columns
                .iter()
                .map(|c| TableAliasColumnDef {
                    name: Ident::with_quote('"', c.as_str()),
                    data_type: None,
                })
                .collect();
            std::mem::swap(subquery, source);
            *source = wrapper;
            return Ok(());
        }
    }
    Err(refuse("this INSERT"))
}

fn update<R: Resolve>(
    walker: &mut Walker<'_, R>,
    update: &mut sqlparser::ast::Update,
) -> Result<(), Denial> {
    let (parts, qualifier) = target_parts(&update.table.relation)?;
    let rule = walker.resolver().target(&parts, Act::Update)?;
    flow(walker.visit(&mut update.table.joins))?;
    flow(walker.visit(&mut update.assignments))?;
    flow(walker.visit(&mut update.from))?;
    flow(walker.visit(&mut update.selection))?;
    flow(walker.visit(&mut update.returning))?;
    let Some(rule) = rule else {
        return Ok(());
    };
    walker.constrained = true;
    for assignment in &update.assignments {
        check_no_masked_reads(&rule, &qualifier, &assignment.value)?;
    }
    check_no_masked_reads(&rule, &qualifier, &update.selection)?;
    check_no_masked_reads(&rule, &qualifier, &update.from)?;
    check_returning(&rule, &qualifier, &update.returning)?;
    let Some(filter) = rule.filter.clone() else {
        return Ok(());
    };
    // New values of the columns the filter reads, cast to their columns' types.
    let mut moved = Vec::new();
    for assignment in &update.assignments {
        let targets: Vec<&ObjectName> = match &assignment.target {
            AssignmentTarget::ColumnName(name) => vec![name],
            AssignmentTarget::Tuple(names) => names.iter().collect(),
        };
        for target in targets {
            let column = fold_name(target)
                .and_then(|p| p.last().cloned())
                .ok_or_else(|| refuse("an assignment to something that is not a column"))?;
            if rule.filter_columns.contains(&column) {
                if matches!(assignment.target, AssignmentTarget::Tuple(_)) {
                    return Err(denied(
                        &rule,
                        format!("a multi-column assignment to {column} under a row filter"),
                    ));
                }
                let data_type = walker.resolver().data_type(column_type(&rule, &column)?)?;
                moved.push((column, cast(assignment.value.clone(), data_type)));
            }
        }
    }
    if !moved.is_empty() {
        let check = filter_expr(walker.resolver(), &rule, &filter, &qualifier, &moved)?;
        // `CASE WHEN portcullis.row_check((check), 'rule') THEN new_value END`, from a
        // template parsed once per rule.
        let template = walker.resolver().expr(&format!(
            "CASE WHEN portcullis.row_check((NULL), {}) THEN NULL END",
            literal(&rule.rule)
        ))?;
        for assignment in &mut update.assignments {
            let AssignmentTarget::ColumnName(name) = &assignment.target else {
                continue;
            };
            let Some(column) = fold_name(name).and_then(|p| p.last().cloned()) else {
                continue;
            };
            if let Some((_, new_value)) = moved.iter().find(|(c, _)| *c == column) {
                assignment.value = checked(template.clone(), check.clone(), new_value.clone())
                    .ok_or_else(|| refuse("this UPDATE"))?;
            }
        }
    }
    let filter = filter_expr(walker.resolver(), &rule, &filter, &qualifier, &[])?;
    and(&mut update.selection, filter);
    Ok(())
}

fn delete<R: Resolve>(
    walker: &mut Walker<'_, R>,
    delete: &mut sqlparser::ast::Delete,
) -> Result<(), Denial> {
    if !delete.tables.is_empty() {
        return Err(refuse("a multi-table DELETE"));
    }
    let tables = match &mut delete.from {
        FromTable::WithFromKeyword(tables) | FromTable::WithoutKeyword(tables) => tables,
    };
    let [target] = tables.as_mut_slice() else {
        return Err(refuse("a DELETE from several tables"));
    };
    let (parts, qualifier) = target_parts(&target.relation)?;
    let rule = walker.resolver().target(&parts, Act::Delete)?;
    flow(walker.visit(&mut target.joins))?;
    flow(walker.visit(&mut delete.using))?;
    flow(walker.visit(&mut delete.selection))?;
    flow(walker.visit(&mut delete.returning))?;
    let Some(rule) = rule else {
        return Ok(());
    };
    walker.constrained = true;
    check_no_masked_reads(&rule, &qualifier, &delete.selection)?;
    check_no_masked_reads(&rule, &qualifier, &delete.using)?;
    check_returning(&rule, &qualifier, &delete.returning)?;
    if let Some(filter) = rule.filter.clone() {
        let filter = filter_expr(walker.resolver(), &rule, &filter, &qualifier, &[])?;
        and(&mut delete.selection, filter);
    }
    Ok(())
}

fn merge<R: Resolve>(
    walker: &mut Walker<'_, R>,
    merge: &mut sqlparser::ast::Merge,
) -> Result<(), Denial> {
    let (parts, _) = target_parts(&merge.table)?;
    for act in [Act::Insert, Act::Update, Act::Delete] {
        if let Some(rule) = walker.resolver().target(&parts, act)? {
            return Err(denied(
                &rule,
                "MERGE into a table with a row filter or masked columns".to_string(),
            ));
        }
    }
    flow(walker.visit(&mut merge.source))?;
    flow(walker.visit(&mut merge.on))?;
    flow(walker.visit(&mut merge.clauses))
}

fn copy<R: Resolve>(
    walker: &mut Walker<'_, R>,
    source: &mut CopySource,
    to: bool,
) -> Result<(), Denial> {
    let (table_name, columns) = match source {
        CopySource::Query(query) => return flow(walker.visit(&mut **query)),
        CopySource::Table {
            table_name,
            columns,
        } => (table_name, columns),
    };
    let parts =
        fold_name(table_name).ok_or_else(|| refuse("a relation name that is not an identifier"))?;
    if !to {
        if let Some(rule) = walker.resolver().target(&parts, Act::Insert)? {
            if rule.filter.is_some() {
                return Err(denied(
                    &rule,
                    "COPY ... FROM into a table with a row filter (use INSERT)".to_string(),
                ));
            }
        }
        return Ok(());
    }
    match walker.resolver().read(&parts, false)? {
        Read::Keep => Ok(()),
        Read::Substitute(subquery) => {
            let alias = table_name
                .0
                .last()
                .and_then(|part| part.as_ident().cloned())
                .ok_or_else(|| refuse("a relation name that is not an identifier"))?;
            let list = if columns.is_empty() {
                "*".to_string()
            } else {
                columns
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let query = parse_query(&format!("SELECT {list} FROM ({subquery}) AS {alias}"))?;
            walker.substituted += 1;
            // Built from text here: its whole form is parsed back before forwarding.
            walker.constrained = true;
            *source = CopySource::Query(query);
            Ok(())
        }
    }
}
