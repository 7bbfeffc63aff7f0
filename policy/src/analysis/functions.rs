//! Built-in functions whose call changes a statement's class.
//!
//! This is the minimal list for statement classes, not the function policy: calls to
//! user-schema functions are still classified by the statement around them until the
//! relation/function engine governs them. A function is matched by its last name part,
//! case-insensitively and whatever its schema, so `public.pg_read_file(...)` is treated
//! like `pg_catalog.pg_read_file(...)` (conservative: a user function that shadows a
//! listed name is refused too).

use sqlparser::ast::{Expr, FunctionArg, FunctionArgExpr, ObjectName, Value};

use super::settings;
use super::{Effect, What};
use crate::class::StatementClass;

/// Functions that reach outside the policy's control: server files, large objects
/// (which bypass table policies), SQL given as text (which escapes analysis), other
/// databases, other sessions, replication and server administration.
const DANGEROUS: &[&str] = &[
    // server files
    "pg_read_file",
    "pg_read_binary_file",
    "pg_stat_file",
    "pg_ls_dir",
    "pg_file_write",
    "pg_file_rename",
    "pg_file_unlink",
    "pg_file_sync",
    "pg_logdir_ls",
    // large objects
    "lo_import",
    "lo_export",
    "lo_open",
    "lo_close",
    "lo_creat",
    "lo_create",
    "lo_unlink",
    "lo_get",
    "lo_put",
    "lo_from_bytea",
    "lo_truncate",
    "lo_truncate64",
    "lo_lseek",
    "lo_lseek64",
    "lo_tell",
    "lo_tell64",
    "loread",
    "lowrite",
    // SQL or relations given as text
    "ts_stat",
    "ts_rewrite",
    "connectby",
    // other sessions and server administration
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_promote",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_wal_replay_pause",
    "pg_wal_replay_resume",
    "pg_log_backend_memory_contexts",
    "pg_import_system_collations",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_copy_physical_replication_slot",
    "pg_copy_logical_replication_slot",
    "pg_drop_replication_slot",
    "pg_replication_slot_advance",
    "pg_logical_emit_message",
    "pg_stat_statements_reset",
];

/// Families of dangerous functions, matched by name prefix.
const DANGEROUS_PREFIXES: &[&str] = &[
    "dblink",
    "pg_ls_",
    "pg_logical_slot_",
    "pg_replication_origin_",
    "pg_stat_reset",
    "query_to_xml",
    "cursor_to_xml",
    "table_to_xml",
    "schema_to_xml",
    "database_to_xml",
    "crosstab",
];

/// Functions that modify data (sequence state).
const WRITE: &[&str] = &["nextval", "setval"];

/// Functions that only change session state.
const SESSION: &[&str] = &["pg_notify"];

/// `set_config(name, value, is_local)`: classified like `SET name = value`.
const SET_CONFIG: &str = "set_config";

/// The effect of calling the function `name` with `args`, if the call changes the
/// class of the statement it appears in.
pub(crate) fn call_effect(name: &ObjectName, args: &[FunctionArg]) -> Option<Effect> {
    let Some(ident) = name.0.last()?.as_ident() else {
        // A dialect-specific computed name part; PostgreSQL has none. Fail closed.
        return Some(Effect::new(StatementClass::Dangerous, What::Function("?")));
    };
    let function = ident.value.as_str();
    if let Some(listed) = find(DANGEROUS, function) {
        return Some(Effect::new(
            StatementClass::Dangerous,
            What::Function(listed),
        ));
    }
    if let Some(prefix) = DANGEROUS_PREFIXES
        .iter()
        .copied()
        .find(|prefix| starts_with_ignore_ascii_case(function, prefix))
    {
        return Some(Effect::new(
            StatementClass::Dangerous,
            What::Function(prefix),
        ));
    }
    if let Some(listed) = find(WRITE, function) {
        return Some(Effect::new(StatementClass::Write, What::Function(listed)));
    }
    if let Some(listed) = find(SESSION, function) {
        return Some(Effect::new(StatementClass::Session, What::Function(listed)));
    }
    if SET_CONFIG.eq_ignore_ascii_case(function) {
        return Some(set_config_effect(args));
    }
    None
}

/// `set_config('name', value, local)` is a `SET`: it needs a literal setting name, and a
/// literal value only where the value matters (`client_encoding`, ...). A computed
/// setting name cannot be assessed and is dangerous.
fn set_config_effect(args: &[FunctionArg]) -> Effect {
    let Some(name) = args.first().and_then(literal_arg) else {
        return Effect::new(StatementClass::Dangerous, What::Function(SET_CONFIG));
    };
    let value = args.get(1).and_then(literal_arg);
    match settings::assess_set(&name, value.as_deref()) {
        Some(setting) => Effect::new(StatementClass::Dangerous, What::Setting(setting)),
        None => Effect::new(StatementClass::Session, What::Function(SET_CONFIG)),
    }
}

fn literal_arg(arg: &FunctionArg) -> Option<String> {
    match arg {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(expr)) => literal_text(expr),
        _ => None,
    }
}

/// The text of a simple literal (string, number, boolean, bare word), if `expr` is one.
pub(crate) fn literal_text(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Value(value) => match &value.value {
            Value::SingleQuotedString(text) | Value::EscapedStringLiteral(text) => {
                Some(text.clone())
            }
            Value::DollarQuotedString(dollar) => Some(dollar.value.clone()),
            Value::Boolean(true) => Some("true".to_string()),
            Value::Boolean(false) => Some("false".to_string()),
            Value::Number(number, false) => Some(number.to_string()),
            _ => None,
        },
        Expr::Identifier(ident) => Some(ident.value.clone()),
        _ => None,
    }
}

/// Whether the class of a call of `name` depends on the values of its arguments
/// (`set_config('role', ...)` is dangerous, `set_config('search_path', ...)` is not), so
/// that a statement calling it cannot be classified once for every literal value. Names
/// that are not plain identifiers count as depending on them.
pub(crate) fn reads_arguments(name: &ObjectName) -> bool {
    name.0
        .last()
        .and_then(|part| part.as_ident())
        .is_none_or(|ident| SET_CONFIG.eq_ignore_ascii_case(&ident.value))
}

fn find(list: &[&'static str], name: &str) -> Option<&'static str> {
    list.iter()
        .copied()
        .find(|candidate| candidate.eq_ignore_ascii_case(name))
}

fn starts_with_ignore_ascii_case(text: &str, prefix: &str) -> bool {
    text.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}
