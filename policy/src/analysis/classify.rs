//! Statement classification: which [`StatementClass`]es one parsed statement needs.
//!
//! A statement's classes are the union of
//!
//! - its own class (the `match` in [`own_effects`], one arm per statement kind that
//!   PostgreSQL has, and a fail-closed `Dangerous` for everything else);
//! - the own classes of every statement nested in it (`EXPLAIN ANALYZE DELETE`,
//!   `PREPARE p AS INSERT ...`, `WITH d AS (DELETE ...) SELECT ...`), found by walking
//!   the whole syntax tree with sqlparser's visitor, so nesting cannot hide one;
//! - row locks (`FOR UPDATE`/`FOR SHARE` need UPDATE privilege in PostgreSQL: write),
//!   `SELECT ... INTO` (creates a table: DDL), and calls of the built-in functions listed
//!   in [`super::functions`], wherever they occur.
//!
//! A statement that ends up with no class at all is classified `Dangerous`, so a gap in
//! this file can only ever refuse too much.

use std::ops::ControlFlow;

use sqlparser::ast::{
    AlterTableOperation, CopyTarget, DeclareType, Expr, FunctionArguments, ObjectName, ObjectType,
    Query, Reset, Select, Set, SetExpr, Statement, TableFactor, Visit, Visitor,
};

use super::functions::{call_effect, literal_text, reads_arguments};
use super::settings::{assess_reset, assess_set};
use super::{Effect, Effects, What};
use crate::class::StatementClass::{
    self, Dangerous, Dcl, Ddl, Read, Session, Transaction, Utility, Write,
};

/// Why a statement that parsed is still not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unsupported(pub(crate) &'static str);

/// One statement's kind (for messages) and classes.
#[derive(Debug)]
pub(crate) struct Classified {
    pub(crate) kind: &'static str,
    pub(crate) effects: Effects,
    /// Whether the classes may depend on the values of literals in the statement: it
    /// holds (at any depth) a statement other than a query, `INSERT`, `UPDATE` or
    /// `DELETE` (`SET x = 'v'` is judged by its value), or a call whose class depends on
    /// its arguments (`set_config`). The shape cache only serves statements for which
    /// this is false.
    pub(crate) depends_on_literals: bool,
}

/// Classifies one top-level statement.
pub(crate) fn classify(statement: &Statement) -> Result<Classified, Unsupported> {
    let mut collector = Collector {
        effects: Effects::default(),
        kind: None,
        depends_on_literals: false,
    };
    if let ControlFlow::Break(unsupported) = statement.visit(&mut collector) {
        return Err(unsupported);
    }
    let kind = collector.kind.unwrap_or("statement");
    let mut effects = collector.effects;
    if effects.is_empty() {
        effects.push(Effect::new(Dangerous, What::Statement(kind)));
    }
    Ok(Classified {
        kind,
        effects,
        depends_on_literals: collector.depends_on_literals,
    })
}

/// Walks every node of one statement, collecting effects.
struct Collector {
    effects: Effects,
    /// The kind of the outermost statement (the first one visited).
    kind: Option<&'static str>,
    depends_on_literals: bool,
}

impl Visitor for Collector {
    type Break = Unsupported;

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<Unsupported> {
        // Only these are classified by their structure alone; everything else may look
        // at values (`SET`, `COPY ... TO 'file'`, ...) now or after a later change.
        if !matches!(
            statement,
            Statement::Query(_)
                | Statement::Insert(_)
                | Statement::Update(_)
                | Statement::Delete(_)
        ) {
            self.depends_on_literals = true;
        }
        match own_effects(statement, &mut self.effects) {
            Ok(kind) => {
                self.kind.get_or_insert(kind);
                ControlFlow::Continue(())
            }
            Err(unsupported) => ControlFlow::Break(unsupported),
        }
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<Unsupported> {
        if !query.locks.is_empty() {
            self.effects.push(Effect::new(
                Write,
                What::Statement("SELECT ... FOR UPDATE/SHARE"),
            ));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<Unsupported> {
        if select.into.is_some() {
            self.effects
                .push(Effect::new(Ddl, What::Statement("SELECT ... INTO")));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<Unsupported> {
        if let Expr::Function(function) = expr {
            let args = match &function.args {
                FunctionArguments::List(list) => list.args.as_slice(),
                FunctionArguments::None | FunctionArguments::Subquery(_) => &[],
            };
            self.call(&function.name, args);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<Unsupported> {
        // Set-returning functions in FROM are not expressions: `FROM pg_ls_dir('/')`.
        match factor {
            TableFactor::Table {
                name,
                args: Some(args),
                ..
            } => self.call(name, &args.args),
            TableFactor::Function { name, args, .. } => self.call(name, args),
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

impl Collector {
    fn call(&mut self, name: &ObjectName, args: &[sqlparser::ast::FunctionArg]) {
        if reads_arguments(name) {
            self.depends_on_literals = true;
        }
        if let Some(effect) = call_effect(name, args) {
            self.effects.push(effect);
        }
    }
}

/// Pushes the statement's own effects (not those of statements, queries or
/// expressions nested in it: the visitor reaches those) and returns its kind.
fn own_effects(statement: &Statement, fx: &mut Effects) -> Result<&'static str, Unsupported> {
    let kind = match statement {
        // ---- reads and writes
        Statement::Query(query) => match query_kind(query) {
            // `WITH ... INSERT ...`: the nested DML statement carries the class.
            Some(kind) => kind,
            None => own(fx, Read, "SELECT"),
        },
        Statement::Insert(_) => own(fx, Write, "INSERT"),
        Statement::Update(_) => own(fx, Write, "UPDATE"),
        Statement::Delete(_) => own(fx, Write, "DELETE"),
        Statement::Merge(_) => own(fx, Write, "MERGE"),
        Statement::Copy {
            to,
            target,
            payload,
            ..
        } => {
            if payload.is_some() {
                // psql-script style data after `FROM STDIN;` is never COPY data on the
                // wire: PostgreSQL would run it as SQL. Refuse rather than forward it.
                return Err(Unsupported("COPY ... FROM STDIN followed by inline data"));
            }
            own(fx, if *to { Read } else { Write }, "COPY");
            match target {
                CopyTarget::Stdin | CopyTarget::Stdout => {}
                CopyTarget::File { .. } => {
                    own(fx, Dangerous, "COPY with a server file");
                }
                CopyTarget::Program { .. } => {
                    own(fx, Dangerous, "COPY ... PROGRAM");
                }
            }
            "COPY"
        }
        Statement::ShowVariable { .. } => own(fx, Read, "SHOW"),
        // The explained statement is visited as a nested statement and carries the
        // classes, with or without ANALYZE (planning a write is refused like the write).
        Statement::Explain { .. } => "EXPLAIN",
        Statement::Call(function) => {
            if let Some(effect) = call_effect(&function.name, &[]) {
                fx.push(effect);
            }
            fx.push(Effect::new(Write, What::Statement("CALL")));
            "CALL"
        }
        Statement::Lock(_) => own(fx, Write, "LOCK"),

        // ---- transaction control
        Statement::StartTransaction {
            statements,
            exception,
            has_end_keyword,
            ..
        } => {
            if statements.is_empty() && exception.is_none() && !has_end_keyword {
                own(fx, Transaction, "BEGIN")
            } else {
                // A procedural BEGIN ... END block (not PostgreSQL SQL).
                own(fx, Dangerous, "BEGIN ... END block")
            }
        }
        Statement::Commit { end: true, .. } => own(fx, Transaction, "END"),
        Statement::Commit { .. } => own(fx, Transaction, "COMMIT"),
        Statement::Rollback { .. } => own(fx, Transaction, "ROLLBACK"),
        Statement::Savepoint { .. } => own(fx, Transaction, "SAVEPOINT"),
        Statement::ReleaseSavepoint { .. } => own(fx, Transaction, "RELEASE SAVEPOINT"),

        // ---- session state
        Statement::Set(set) => set_effects(set, fx),
        Statement::Reset(reset) => match &reset.reset {
            Reset::ALL => own(fx, Session, "RESET"),
            Reset::SessionAuthorization => {
                fx.push(Effect::new(
                    Dangerous,
                    What::Setting("session_authorization"),
                ));
                "RESET"
            }
            Reset::ConfigurationParameter(name) => {
                match assess_reset(&object_name_text(name)) {
                    Some(setting) => fx.push(Effect::new(Dangerous, What::Setting(setting))),
                    None => fx.push(Effect::new(Session, What::Statement("RESET"))),
                }
                "RESET"
            }
        },
        Statement::Discard { .. } => own(fx, Session, "DISCARD"),
        Statement::LISTEN { .. } => own(fx, Session, "LISTEN"),
        Statement::UNLISTEN { .. } => own(fx, Session, "UNLISTEN"),
        Statement::NOTIFY { .. } => own(fx, Session, "NOTIFY"),
        // The prepared statement is visited as a nested statement and adds its classes.
        Statement::Prepare { .. } => own(fx, Session, "PREPARE"),
        Statement::Execute {
            name: Some(_),
            immediate: false,
            into,
            using,
            output: false,
            ..
        } if into.is_empty() && using.is_empty() => own(fx, Session, "EXECUTE"),
        Statement::Deallocate { .. } => own(fx, Session, "DEALLOCATE"),
        Statement::Declare { stmts, .. } => {
            let cursors = stmts.iter().all(|declare| {
                matches!(declare.declare_type, Some(DeclareType::Cursor))
                    && declare.for_query.is_some()
            });
            if cursors {
                // The cursor's rows are read by later FETCHes: the DECLARE is the read.
                own(fx, Read, "DECLARE");
                own(fx, Session, "DECLARE")
            } else {
                own(fx, Dangerous, "DECLARE (not a cursor)")
            }
        }
        Statement::Fetch { into: None, .. } => own(fx, Session, "FETCH"),
        Statement::Close { .. } => own(fx, Session, "CLOSE"),

        // ---- maintenance
        Statement::Analyze(_) => own(fx, Utility, "ANALYZE"),
        Statement::Vacuum(_) => own(fx, Utility, "VACUUM"),
        Statement::RefreshMaterializedView(_) => own(fx, Utility, "REFRESH MATERIALIZED VIEW"),

        // ---- access control
        Statement::Grant(_) => own(fx, Dcl, "GRANT"),
        Statement::Revoke(_) => own(fx, Dcl, "REVOKE"),
        Statement::GrantRole(_) => own(fx, Dcl, "GRANT role"),
        Statement::RevokeRole(_) => own(fx, Dcl, "REVOKE role"),
        Statement::AlterDefaultPrivileges(_) => own(fx, Dcl, "ALTER DEFAULT PRIVILEGES"),
        Statement::CreateRole(_) => own(fx, Dcl, "CREATE ROLE"),
        Statement::AlterRole { .. } => own(fx, Dcl, "ALTER ROLE"),
        Statement::CreateUser(_) => own(fx, Dcl, "CREATE USER"),
        Statement::AlterUser(_) => own(fx, Dcl, "ALTER USER"),
        Statement::CreatePolicy(_) => own(fx, Dcl, "CREATE POLICY"),
        Statement::AlterPolicy(_) => own(fx, Dcl, "ALTER POLICY"),
        Statement::DropPolicy(_) => own(fx, Dcl, "DROP POLICY"),
        Statement::Drop {
            object_type: ObjectType::Role | ObjectType::User | ObjectType::Group,
            ..
        } => own(fx, Dcl, "DROP ROLE"),

        // ---- schema changes
        Statement::Drop { object_type, .. } => own(fx, Ddl, drop_kind(*object_type)),
        Statement::CreateTable(create) if create.query.is_some() => own(fx, Ddl, "CREATE TABLE AS"),
        Statement::CreateTable(_) => own(fx, Ddl, "CREATE TABLE"),
        Statement::CreateView(view) if view.materialized => {
            own(fx, Ddl, "CREATE MATERIALIZED VIEW")
        }
        Statement::CreateView(_) => own(fx, Ddl, "CREATE VIEW"),
        Statement::AlterTable(alter) => {
            own(fx, Ddl, "ALTER TABLE");
            // Row-level security switches and ownership decide who sees what.
            if alter.operations.iter().any(changes_access) {
                own(fx, Dcl, "ALTER TABLE")
            } else {
                "ALTER TABLE"
            }
        }
        Statement::Truncate(_) => own(fx, Ddl, "TRUNCATE"),
        Statement::Comment { .. } => own(fx, Ddl, "COMMENT"),
        Statement::CreateIndex(_) => own(fx, Ddl, "CREATE INDEX"),
        Statement::AlterIndex { .. } => own(fx, Ddl, "ALTER INDEX"),
        Statement::AlterView(_) => own(fx, Ddl, "ALTER VIEW"),
        Statement::CreateSchema { .. } => own(fx, Ddl, "CREATE SCHEMA"),
        Statement::AlterSchema(_) => own(fx, Ddl, "ALTER SCHEMA"),
        Statement::CreateDatabase { .. } => own(fx, Ddl, "CREATE DATABASE"),
        Statement::CreateSequence { .. } => own(fx, Ddl, "CREATE SEQUENCE"),
        Statement::CreateDomain(_) => own(fx, Ddl, "CREATE DOMAIN"),
        Statement::DropDomain(_) => own(fx, Ddl, "DROP DOMAIN"),
        Statement::CreateType { .. } => own(fx, Ddl, "CREATE TYPE"),
        Statement::AlterType(_) => own(fx, Ddl, "ALTER TYPE"),
        Statement::CreateFunction(_) => own(fx, Ddl, "CREATE FUNCTION"),
        Statement::AlterFunction(_) => own(fx, Ddl, "ALTER FUNCTION"),
        Statement::DropFunction(_) => own(fx, Ddl, "DROP FUNCTION"),
        Statement::CreateProcedure { .. } => own(fx, Ddl, "CREATE PROCEDURE"),
        Statement::DropProcedure { .. } => own(fx, Ddl, "DROP PROCEDURE"),
        Statement::CreateTrigger(_) => own(fx, Ddl, "CREATE TRIGGER"),
        Statement::AlterTrigger(_) => own(fx, Ddl, "ALTER TRIGGER"),
        Statement::DropTrigger(_) => own(fx, Ddl, "DROP TRIGGER"),
        Statement::CreateRule(_) => own(fx, Ddl, "CREATE RULE"),
        Statement::DropRule(_) => own(fx, Ddl, "DROP RULE"),
        Statement::CreateForeignTable(_) => own(fx, Ddl, "CREATE FOREIGN TABLE"),
        Statement::CreateAggregate(_) => own(fx, Ddl, "CREATE AGGREGATE"),
        Statement::CreateCollation(_) => own(fx, Ddl, "CREATE COLLATION"),
        Statement::AlterCollation(_) => own(fx, Ddl, "ALTER COLLATION"),
        Statement::CreateOperator(_) => own(fx, Ddl, "CREATE OPERATOR"),
        Statement::CreateOperatorFamily(_) => own(fx, Ddl, "CREATE OPERATOR FAMILY"),
        Statement::CreateOperatorClass(_) => own(fx, Ddl, "CREATE OPERATOR CLASS"),
        Statement::AlterOperator(_) => own(fx, Ddl, "ALTER OPERATOR"),
        Statement::AlterOperatorFamily(_) => own(fx, Ddl, "ALTER OPERATOR FAMILY"),
        Statement::AlterOperatorClass(_) => own(fx, Ddl, "ALTER OPERATOR CLASS"),
        Statement::DropOperator(_) => own(fx, Ddl, "DROP OPERATOR"),
        Statement::DropOperatorFamily(_) => own(fx, Ddl, "DROP OPERATOR FAMILY"),
        Statement::DropOperatorClass(_) => own(fx, Ddl, "DROP OPERATOR CLASS"),
        Statement::CreateTextSearch(_) => own(fx, Ddl, "CREATE TEXT SEARCH"),
        Statement::AlterTextSearch(_) => own(fx, Ddl, "ALTER TEXT SEARCH"),
        Statement::DropExtension(_) => own(fx, Ddl, "DROP EXTENSION"),

        // ---- reaching outside the database or the proxy's control
        Statement::CreateExtension(_) => {
            own(fx, Ddl, "CREATE EXTENSION");
            own(fx, Dangerous, "CREATE EXTENSION")
        }
        Statement::CreateServer(_) => {
            own(fx, Ddl, "CREATE SERVER");
            own(fx, Dangerous, "CREATE SERVER")
        }
        Statement::CreateForeignDataWrapper(_) => {
            own(fx, Ddl, "CREATE FOREIGN DATA WRAPPER");
            own(fx, Dangerous, "CREATE FOREIGN DATA WRAPPER")
        }
        Statement::CreateUserMapping(_) => {
            own(fx, Ddl, "CREATE USER MAPPING");
            own(fx, Dangerous, "CREATE USER MAPPING")
        }

        // Everything else is either not PostgreSQL (other dialects' statements that the
        // parser also knows) or new in a later sqlparser: fail closed.
        _ => own(fx, Dangerous, "unrecognised statement"),
    };
    Ok(kind)
}

/// Pushes `class` for a statement of `kind` and returns the kind.
fn own(fx: &mut Effects, class: StatementClass, kind: &'static str) -> &'static str {
    fx.push(Effect::new(class, What::Statement(kind)));
    kind
}

/// The kind of a query whose body is a DML statement (`WITH ... INSERT`), or `None`
/// for an ordinary read.
fn query_kind(query: &Query) -> Option<&'static str> {
    match query.body.as_ref() {
        SetExpr::Insert(_) => Some("INSERT"),
        SetExpr::Update(_) => Some("UPDATE"),
        SetExpr::Delete(_) => Some("DELETE"),
        SetExpr::Merge(_) => Some("MERGE"),
        SetExpr::Select(_)
        | SetExpr::Query(_)
        | SetExpr::SetOperation { .. }
        | SetExpr::Values(_)
        | SetExpr::Table(_) => None,
    }
}

/// `SET ...`: a session statement unless it changes identity or tokenization.
fn set_effects(set: &Set, fx: &mut Effects) -> &'static str {
    match set {
        Set::SingleAssignment {
            variable, values, ..
        } => setting(fx, &object_name_text(variable), values),
        Set::MultipleAssignments { assignments } => {
            for assignment in assignments {
                setting(
                    fx,
                    &object_name_text(&assignment.name),
                    std::slice::from_ref(&assignment.value),
                );
            }
        }
        Set::ParenthesizedAssignments { .. } | Set::SetSessionParam(_) => {
            // Not PostgreSQL syntax.
            fx.push(Effect::new(Dangerous, What::Statement("SET")));
        }
        Set::SetRole { .. } => fx.push(Effect::new(Dangerous, What::Setting("role"))),
        Set::SetSessionAuthorization(_) => fx.push(Effect::new(
            Dangerous,
            What::Setting("session_authorization"),
        )),
        Set::SetNames { charset_name, .. } => {
            match assess_set("client_encoding", Some(&charset_name.value)) {
                Some(setting) => fx.push(Effect::new(Dangerous, What::Setting(setting))),
                None => fx.push(Effect::new(Session, What::Statement("SET"))),
            }
        }
        Set::SetNamesDefault {} | Set::SetTimeZone { .. } => {
            fx.push(Effect::new(Session, What::Statement("SET")));
        }
        Set::SetTransaction { session: true, .. } => fx.push(Effect::new(
            Session,
            What::Statement("SET SESSION CHARACTERISTICS"),
        )),
        Set::SetTransaction { .. } => {
            fx.push(Effect::new(Transaction, What::Statement("SET TRANSACTION")));
        }
    }
    "SET"
}

/// One `name = value` assignment of a `SET`.
fn setting(fx: &mut Effects, name: &str, values: &[Expr]) {
    let value = match values {
        [single] => literal_text(single),
        _ => None,
    };
    match assess_set(name, value.as_deref()) {
        Some(setting) => fx.push(Effect::new(Dangerous, What::Setting(setting))),
        None => fx.push(Effect::new(Session, What::Statement("SET"))),
    }
}

/// `ALTER TABLE` operations that change access rather than shape.
fn changes_access(operation: &AlterTableOperation) -> bool {
    matches!(
        operation,
        AlterTableOperation::EnableRowLevelSecurity
            | AlterTableOperation::DisableRowLevelSecurity
            | AlterTableOperation::ForceRowLevelSecurity
            | AlterTableOperation::NoForceRowLevelSecurity
            | AlterTableOperation::OwnerTo { .. }
    )
}

fn drop_kind(object_type: ObjectType) -> &'static str {
    match object_type {
        ObjectType::Table => "DROP TABLE",
        ObjectType::ForeignTable => "DROP FOREIGN TABLE",
        ObjectType::View => "DROP VIEW",
        ObjectType::MaterializedView => "DROP MATERIALIZED VIEW",
        ObjectType::Index => "DROP INDEX",
        ObjectType::Schema => "DROP SCHEMA",
        ObjectType::Database => "DROP DATABASE",
        ObjectType::Sequence => "DROP SEQUENCE",
        ObjectType::Type => "DROP TYPE",
        ObjectType::Collation => "DROP COLLATION",
        _ => "DROP",
    }
}

/// A dotted name as PostgreSQL would look a setting up (case is compared later).
fn object_name_text(name: &ObjectName) -> String {
    let mut text = String::new();
    for (index, part) in name.0.iter().enumerate() {
        if index > 0 {
            text.push('.');
        }
        match part.as_ident() {
            Some(ident) => text.push_str(&ident.value),
            // Not a plain name: make it match no known setting.
            None => text.push('?'),
        }
    }
    text
}
