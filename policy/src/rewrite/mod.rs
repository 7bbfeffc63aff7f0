//! Relation substitution: every reference to a governed relation, wherever it stands in a
//! statement, is replaced by a derived table that holds only what the identity may see,
//! under the same name, so the rest of the statement is untouched.
//!
//! The [`Walker`] visits a statement's whole syntax tree once. It knows SQL's scoping
//! (which names are CTEs where, which table factor is a write target) and asks a
//! [`Resolve`] what to do with each relation, write target and function it meets. The
//! identity-independent census ([`Census`]) and the per-identity rewrite (the engine's
//! access) are two resolvers over the same walk, so what is counted is what is rewritten.
//!
//! Fail closed: a relation name the walker cannot read as plain identifiers, or that
//! stands where the walker cannot rewrite it, is handed to the resolver as an `other`
//! reference, which refuses governed relations.

pub(crate) mod settings;
pub(crate) mod write;

use std::ops::ControlFlow;

use sqlparser::ast::{
    AssignmentTarget, CopySource, DataType, Expr, Function, FunctionArg, FunctionArgExpr,
    FunctionArguments, Ident, ObjectName, ObjectNamePart, Query, SelectItem,
    SelectItemQualifiedWildcardKind, SetExpr, Statement, TableAlias, TableFactor, TableInheritance,
    TableSampleKind, VisitMut, VisitorMut,
};

use crate::decision::Denial;

pub(crate) use write::TargetRule;

/// What a statement does to a write target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Act {
    Select,
    Insert,
    Update,
    Delete,
    /// Any other statement that names the relation (DDL, LOCK, VACUUM, COMMENT, ...).
    Alter,
}

impl Act {
    /// The action name in casbin policies.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Act::Select => "select",
            Act::Insert => "insert",
            Act::Update => "update",
            Act::Delete => "delete",
            Act::Alter => "alter",
        }
    }
}

/// A relation name folded as PostgreSQL folds it: unquoted parts to lower case.
pub(crate) type Parts = Vec<String>;

/// How a read reference is to be rewritten.
pub(crate) enum Read {
    /// Leave the reference as it is.
    Keep,
    /// Replace it by this derived table's query.
    Substitute(Box<Query>),
}

/// Decides what happens to each thing the walker meets.
pub(crate) trait Resolve {
    /// A relation read in FROM (or `TABLE t`, or `COPY t TO`), not a CTE. `only` is
    /// true for `ONLY t`.
    fn read(&mut self, parts: &[String], only: bool) -> Result<Read, Denial>;
    /// The target of an INSERT, UPDATE, DELETE, MERGE or `COPY ... FROM`: `None` when
    /// the identity may write it without constraints.
    fn target(&mut self, parts: &[String], act: Act) -> Result<Option<TargetRule>, Denial>;
    /// Any other reference to a relation (DDL, LOCK, ...); names that cannot be
    /// folded arrive as `None`.
    fn other(&mut self, parts: Option<&[String]>) -> Result<(), Denial>;
    /// A function call (scalar, aggregate or set-returning).
    fn function(&mut self, parts: Option<&[String]>) -> Result<(), Denial>;
    /// A change of a run-time setting (see [`settings`]); `None` when any setting may
    /// change. Only the census records these.
    fn setting(&mut self, _name: Option<&str>) -> Result<(), Denial> {
        Ok(())
    }
    /// A name the statement uses that may stand for a column (see [`Named`]). Only the
    /// census records these, for the audit trail's touched columns.
    fn named(&mut self, _named: Named<'_>) {}
    /// `sql` parsed as an expression. `sql` comes from the policy and the catalog, never
    /// from the statement, so a resolver may remember the parse (the text is all it
    /// depends on).
    fn expr(&mut self, sql: &str) -> Result<Expr, Denial> {
        write::parse_expr(sql)
    }
    /// The derived table `view` (just returned by [`Resolve::read`]) with the reference's
    /// `TABLESAMPLE` moved onto the table it reads, so that the sample is drawn from the
    /// table as the client asked, before the row filter (as PostgreSQL would apply the
    /// client's WHERE). A resolver that cannot do that refuses.
    fn sampled(
        &mut self,
        _view: Box<Query>,
        _sample: TableSampleKind,
    ) -> Result<Box<Query>, Denial> {
        Err(write::refuse("TABLESAMPLE on this table"))
    }
    /// `sql` parsed as a query; like [`Resolve::expr`].
    fn query(&mut self, sql: &str) -> Result<Box<Query>, Denial> {
        write::parse_query(sql)
    }
    /// A catalog type name parsed as the type of a `CAST`; like [`Resolve::expr`].
    fn data_type(&mut self, type_name: &str) -> Result<DataType, Denial> {
        write::parse_data_type(type_name)
    }
}

/// What a statement names, beyond relations and functions, that tells which columns
/// it may touch. Over-approximate by design: an identifier is any relation's column of
/// that name, and any wildcard touches every column.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Named<'a> {
    /// An identifier (or the last part of a compound one), or the qualifier of
    /// `alias.*`, which touches a whole row when it names a relation or an alias.
    Column(&'a str),
    /// A table alias.
    Alias(&'a str),
    /// `*`, or a write of whole rows (INSERT or COPY without a column list).
    Everything,
}

/// Folds an identifier as PostgreSQL does: unquoted ones to lower case.
pub(crate) fn fold(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_ascii_lowercase(),
    }
}

/// Folds every part of a name, or `None` if a part is not a plain identifier.
pub(crate) fn fold_name(name: &ObjectName) -> Option<Parts> {
    name.0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) => Some(fold(ident)),
            ObjectNamePart::Function(_) => None,
        })
        .collect()
}

/// The last part of `name` folded, if it is an identifier.
fn last_part(name: &ObjectName) -> Option<String> {
    name.0.last()?.as_ident().map(fold)
}

/// Reports what a select list (or RETURNING list) names: wildcards and the qualifiers
/// of `alias.*`. Its expressions are reported when the walk visits them.
fn name_projection<R: Resolve>(resolve: &mut R, items: &[SelectItem]) {
    for item in items {
        match item {
            SelectItem::Wildcard(_) => resolve.named(Named::Everything),
            SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::ObjectName(name), _) => {
                match last_part(name) {
                    Some(qualifier) => resolve.named(Named::Column(&qualifier)),
                    None => resolve.named(Named::Everything),
                }
            }
            _ => {}
        }
    }
}

/// Reports the wildcards in every select list of a query body (nested queries are
/// reported when the walk reaches them).
fn name_body<R: Resolve>(resolve: &mut R, body: &SetExpr) {
    match body {
        SetExpr::Select(select) => name_projection(resolve, &select.projection),
        SetExpr::SetOperation { left, right, .. } => {
            name_body(resolve, left);
            name_body(resolve, right);
        }
        _ => {}
    }
}

/// Reports the columns a write statement names outside expressions: its column list
/// (all columns without one), its SET targets and its RETURNING list.
fn name_write<R: Resolve>(resolve: &mut R, statement: &Statement) {
    match statement {
        Statement::Insert(insert) => {
            if insert.columns.is_empty() {
                resolve.named(Named::Everything);
            }
            name_columns(resolve, insert.columns.iter().map(last_part));
            if let Some(returning) = &insert.returning {
                name_projection(resolve, returning);
            }
        }
        Statement::Update(update) => {
            let targets = update.assignments.iter().flat_map(|a| match &a.target {
                AssignmentTarget::ColumnName(name) => vec![last_part(name)],
                AssignmentTarget::Tuple(names) => names.iter().map(last_part).collect(),
            });
            name_columns(resolve, targets);
            if let Some(returning) = &update.returning {
                name_projection(resolve, returning);
            }
        }
        Statement::Delete(delete) => {
            if let Some(returning) = &delete.returning {
                name_projection(resolve, returning);
            }
        }
        Statement::Copy {
            source: CopySource::Table { columns, .. },
            ..
        } => {
            if columns.is_empty() {
                resolve.named(Named::Everything);
            }
            name_columns(resolve, columns.iter().map(|ident| Some(fold(ident))));
        }
        // MERGE's clauses may insert and update any column: all of them count.
        Statement::Merge(_) => resolve.named(Named::Everything),
        _ => {}
    }
}

/// Reports column names (`None`: a name that is not an identifier, so any column).
fn name_columns<R: Resolve>(resolve: &mut R, names: impl Iterator<Item = Option<String>>) {
    for name in names {
        match name {
            Some(name) => resolve.named(Named::Column(&name)),
            None => resolve.named(Named::Everything),
        }
    }
}

/// SQL syntax that sqlparser reads as a function call but PostgreSQL does not look up
/// in `pg_proc`.
const SPECIAL_FORMS: &[&str] = &[
    "coalesce",
    "nullif",
    "greatest",
    "least",
    "current_date",
    "current_time",
    "current_timestamp",
    "localtime",
    "localtimestamp",
    "current_user",
    "current_role",
    "session_user",
    "user",
    "current_catalog",
    "current_schema",
    "system_user",
    "row",
    "array",
    "grouping",
    "xmlelement",
    "xmlforest",
    "xmlconcat",
    "xmlpi",
    "xmlroot",
    "xmlparse",
    "xmlserialize",
    "xmlexists",
    "normalize",
    "json_object",
    "json_array",
    "json_objectagg",
    "json_arrayagg",
];

/// Walks one statement; see the module docs.
pub(crate) struct Walker<'r, R: Resolve> {
    resolve: &'r mut R,
    /// CTE names visible at this point, innermost scope last.
    scopes: Vec<Vec<String>>,
    /// CTE lists taken out of queries while their bodies are walked.
    withs: Vec<Option<sqlparser::ast::With>>,
    /// Statements taken out of the tree while handled by hand.
    taken: Vec<Option<Statement>>,
    /// Set between a table factor's pre-visit and the visit of its name.
    table_name_next: bool,
    /// How many relation references were substituted.
    pub(crate) substituted: usize,
    /// Whether a write was rewritten (filter added, rows checked).
    pub(crate) constrained: bool,
}

impl<'r, R: Resolve> Walker<'r, R> {
    pub(crate) fn new(resolve: &'r mut R) -> Walker<'r, R> {
        Walker {
            resolve,
            scopes: Vec::new(),
            withs: Vec::new(),
            taken: Vec::new(),
            table_name_next: false,
            substituted: 0,
            constrained: false,
        }
    }

    /// Walks (and, depending on the resolver, rewrites) one statement.
    pub(crate) fn walk(&mut self, statement: &mut Statement) -> Result<(), Denial> {
        match statement.visit(self) {
            ControlFlow::Continue(()) => Ok(()),
            ControlFlow::Break(denial) => Err(denial),
        }
    }

    fn is_cte(&self, parts: &[String]) -> bool {
        match parts {
            [name] => self.scopes.iter().rev().any(|scope| scope.contains(name)),
            _ => false,
        }
    }

    /// Walks `node` with this walker (for parts of statements handled by hand).
    pub(crate) fn visit<V: VisitMut>(&mut self, node: &mut V) -> ControlFlow<Denial> {
        node.visit(self)
    }

    pub(crate) fn resolver(&mut self) -> &mut R {
        self.resolve
    }

    /// Replaces every `TABLE t` in a query body by `SELECT * FROM t`, which PostgreSQL
    /// defines it to be, so the table factor is walked like any other.
    fn expand_table_commands(body: &mut SetExpr) -> Result<(), Denial> {
        match body {
            SetExpr::Table(table) => {
                let mut name = Vec::new();
                if let Some(schema) = &table.schema_name {
                    name.push(schema.to_string());
                }
                match &table.table_name {
                    Some(table) => name.push(table.to_string()),
                    None => return Err(write::refuse("TABLE without a table name")),
                }
                let sql = format!("SELECT * FROM {}", name.join("."));
                match crate::analysis::parse(&sql).ok().and_then(|mut s| s.pop()) {
                    Some(Statement::Query(query)) => *body = *query.body,
                    _ => return Err(write::refuse("this TABLE command")),
                }
                Ok(())
            }
            SetExpr::SetOperation { left, right, .. } => {
                Self::expand_table_commands(left)?;
                Self::expand_table_commands(right)
            }
            _ => Ok(()),
        }
    }
}

impl<R: Resolve> VisitorMut for Walker<'_, R> {
    type Break = Denial;

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<Denial> {
        if let Err(denial) = Self::expand_table_commands(&mut query.body) {
            return ControlFlow::Break(denial);
        }
        name_body(self.resolve, &query.body);
        let Some(mut with) = query.with.take() else {
            self.scopes.push(Vec::new());
            self.withs.push(None);
            return ControlFlow::Continue(());
        };
        let names: Vec<String> = with
            .cte_tables
            .iter()
            .map(|cte| fold(&cte.alias.name))
            .collect();
        // A CTE body sees the CTEs before it, or with RECURSIVE all of them (itself
        // included); the query body sees all of them.
        for (index, cte) in with.cte_tables.iter_mut().enumerate() {
            let visible = if with.recursive {
                names.clone()
            } else {
                names[..index].to_vec()
            };
            self.scopes.push(visible);
            let flow = cte.query.visit(self);
            self.scopes.pop();
            flow?;
        }
        self.scopes.push(names);
        self.withs.push(Some(with));
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, query: &mut Query) -> ControlFlow<Denial> {
        self.scopes.pop();
        query.with = self.withs.pop().flatten();
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, statement: &mut Statement) -> ControlFlow<Denial> {
        for name in settings::changed_by_statement(statement) {
            if let Err(denial) = self.resolve.setting(name.as_deref()) {
                return ControlFlow::Break(denial);
            }
        }
        if !write::handles(statement) {
            self.taken.push(None);
            return ControlFlow::Continue(());
        }
        name_write(self.resolve, statement);
        // Write statements are walked by hand (their target is not a read), then put
        // back after the generic walk has passed over the placeholder.
        let mut taken = std::mem::replace(statement, write::placeholder());
        let flow = write::walk(self, &mut taken);
        self.taken.push(Some(taken));
        flow
    }

    fn post_visit_statement(&mut self, statement: &mut Statement) -> ControlFlow<Denial> {
        if let Some(Some(taken)) = self.taken.pop() {
            *statement = taken;
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<Denial> {
        if let TableFactor::Table { .. } = factor {
            self.table_name_next = true;
        }
        let call = match factor {
            TableFactor::Table {
                name,
                args: Some(args),
                ..
            } => settings::changed_by_call(name, &args.args),
            TableFactor::Function { name, args, .. } => settings::changed_by_call(name, args),
            _ => None,
        };
        if let Some(name) = call {
            if let Err(denial) = self.resolve.setting(name.as_deref()) {
                return ControlFlow::Break(denial);
            }
        }
        if let TableFactor::Function { name, .. } = factor {
            let parts = fold_name(name);
            if let Err(denial) = self.resolve.function(parts.as_deref()) {
                return ControlFlow::Break(denial);
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &mut ObjectName) -> ControlFlow<Denial> {
        if std::mem::take(&mut self.table_name_next) {
            // The name of the table factor being visited: decided after its children.
            return ControlFlow::Continue(());
        }
        let parts = fold_name(relation);
        if parts.as_deref().is_some_and(|parts| self.is_cte(parts)) {
            return ControlFlow::Continue(());
        }
        match self.resolve.other(parts.as_deref()) {
            Ok(()) => ControlFlow::Continue(()),
            Err(denial) => ControlFlow::Break(denial),
        }
    }

    fn post_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<Denial> {
        let TableFactor::Table {
            name,
            alias,
            args,
            inheritance,
            sample,
            ..
        } = factor
        else {
            return ControlFlow::Continue(());
        };
        let Some(parts) = fold_name(name) else {
            return ControlFlow::Break(write::refuse("a relation name that is not an identifier"));
        };
        if let Some(alias) = alias {
            self.resolve.named(Named::Alias(&fold(&alias.name)));
        }
        if args.is_some() {
            // `FROM f(...)`: a set-returning function, not a relation.
            return match self.resolve.function(Some(&parts)) {
                Ok(()) => ControlFlow::Continue(()),
                Err(denial) => ControlFlow::Break(denial),
            };
        }
        if self.is_cte(&parts) {
            return ControlFlow::Continue(());
        }
        let only = matches!(inheritance, Some(TableInheritance::Only { .. }));
        match self.resolve.read(&parts, only) {
            Ok(Read::Keep) => ControlFlow::Continue(()),
            Ok(Read::Substitute(subquery)) => {
                let subquery = match sample.take() {
                    Some(sample) => match self.resolve.sampled(subquery, sample) {
                        Ok(subquery) => subquery,
                        Err(denial) => return ControlFlow::Break(denial),
                    },
                    None => subquery,
                };
                let alias = alias.take().unwrap_or_else(|| TableAlias {
                    explicit: true,
                    name: name
                        .0
                        .last()
                        .and_then(|part| part.as_ident().cloned())
                        .unwrap_or_else(|| Ident::new(parts.last().cloned().unwrap_or_default())),
                    columns: Vec::new(),
                    at: None,
                });
                *factor = TableFactor::Derived {
                    lateral: false,
                    subquery,
                    alias: Some(alias),
                    sample: None,
                };
                self.substituted += 1;
                ControlFlow::Continue(())
            }
            Err(denial) => ControlFlow::Break(denial),
        }
    }

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<Denial> {
        match expr {
            Expr::Identifier(ident) => self.resolve.named(Named::Column(&fold(ident))),
            Expr::CompoundIdentifier(idents) => {
                if let Some(last) = idents.last() {
                    self.resolve.named(Named::Column(&fold(last)));
                }
            }
            Expr::QualifiedWildcard(name, _) => match last_part(name) {
                Some(qualifier) => self.resolve.named(Named::Column(&qualifier)),
                None => self.resolve.named(Named::Everything),
            },
            Expr::Function(Function {
                args: FunctionArguments::List(list),
                ..
            }) => {
                for arg in &list.args {
                    let (FunctionArg::Unnamed(arg)
                    | FunctionArg::Named { arg, .. }
                    | FunctionArg::ExprNamed { arg, .. }) = arg;
                    if let FunctionArgExpr::QualifiedWildcard(name) = arg {
                        match last_part(name) {
                            Some(qualifier) => self.resolve.named(Named::Column(&qualifier)),
                            None => self.resolve.named(Named::Everything),
                        }
                    }
                }
            }
            _ => {}
        }
        if let Some(name) = settings::changed_by_expr(expr) {
            if let Err(denial) = self.resolve.setting(name.as_deref()) {
                return ControlFlow::Break(denial);
            }
        }
        if let Expr::Function(Function { name, .. }) = expr {
            let parts = fold_name(name);
            let special =
                matches!(parts.as_deref(), Some([one]) if SPECIAL_FORMS.contains(&one.as_str()));
            if !special {
                if let Err(denial) = self.resolve.function(parts.as_deref()) {
                    return ControlFlow::Break(denial);
                }
            }
        }
        ControlFlow::Continue(())
    }
}

/// An identity-independent record of what a statement references, so that an
/// identity for which all of them are open can skip the rewrite.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Census {
    pub(crate) reads: Vec<(Parts, bool)>,
    pub(crate) targets: Vec<(Parts, Act)>,
    pub(crate) others: Vec<Option<Parts>>,
    pub(crate) functions: Vec<Option<Parts>>,
    /// Run-time settings the statement changes (`None`: any, or one it cannot name).
    pub(crate) settings: Vec<Option<String>>,
    /// Identifiers that may name columns, sorted (see [`Named::Column`]).
    pub(crate) names: Vec<String>,
    /// Table aliases, sorted.
    pub(crate) aliases: Vec<String>,
    /// Whether a wildcard or a whole-row write touches every column.
    pub(crate) everything: bool,
}

impl Census {
    /// The census of one statement. Nothing in it is rewritten, except that `TABLE t`
    /// becomes the `SELECT * FROM t` it stands for.
    pub(crate) fn of(statement: &mut Statement) -> Result<Census, Denial> {
        let mut census = Census::default();
        Walker::new(&mut census).walk(statement)?;
        census.reads.sort();
        census.reads.dedup();
        census.targets.sort();
        census.targets.dedup();
        census.others.sort();
        census.others.dedup();
        census.functions.sort();
        census.functions.dedup();
        census.settings.sort();
        census.settings.dedup();
        census.names.sort();
        census.names.dedup();
        census.aliases.sort();
        census.aliases.dedup();
        Ok(census)
    }

    /// Estimated heap bytes, for cache budgets.
    pub(crate) fn weight(&self) -> usize {
        let parts = |p: &Parts| p.iter().map(|s| s.len() + 24).sum::<usize>() + 24;
        self.reads.iter().map(|(p, _)| parts(p)).sum::<usize>()
            + self.targets.iter().map(|(p, _)| parts(p)).sum::<usize>()
            + self.others.iter().flatten().map(parts).sum::<usize>()
            + self.functions.iter().flatten().map(parts).sum::<usize>()
            + self
                .settings
                .iter()
                .flatten()
                .map(|s| s.len() + 24)
                .sum::<usize>()
            + self
                .names
                .iter()
                .chain(&self.aliases)
                .map(|s| s.len() + 24)
                .sum::<usize>()
    }
}

impl Resolve for Census {
    fn read(&mut self, parts: &[String], only: bool) -> Result<Read, Denial> {
        self.reads.push((parts.to_vec(), only));
        Ok(Read::Keep)
    }

    fn target(&mut self, parts: &[String], act: Act) -> Result<Option<TargetRule>, Denial> {
        self.targets.push((parts.to_vec(), act));
        Ok(None)
    }

    fn other(&mut self, parts: Option<&[String]>) -> Result<(), Denial> {
        self.others.push(parts.map(<[String]>::to_vec));
        Ok(())
    }

    fn function(&mut self, parts: Option<&[String]>) -> Result<(), Denial> {
        self.functions.push(parts.map(<[String]>::to_vec));
        Ok(())
    }

    fn setting(&mut self, name: Option<&str>) -> Result<(), Denial> {
        self.settings.push(name.map(str::to_string));
        Ok(())
    }

    fn named(&mut self, named: Named<'_>) {
        match named {
            Named::Column(name) => self.names.push(name.to_owned()),
            Named::Alias(name) => self.aliases.push(name.to_owned()),
            Named::Everything => self.everything = true,
        }
    }
}
