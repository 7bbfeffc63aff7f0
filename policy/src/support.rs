//! SQL objects the engine's rewritten statements rely on, installed by the proxy into
//! the upstream database (schema `portcullis`) before it forwards any rewritten write.

/// Creates (or replaces) the `portcullis` schema's support functions. Idempotent; the
/// proxy runs it as its upstream user when it loads the catalog.
///
/// `portcullis.row_check(ok, rule)` returns true when `ok` is true and otherwise raises
/// SQLSTATE 42501 naming the rule: rewritten INSERTs and UPDATEs call it so that a row
/// cannot be written into, or moved out of, what the writer's row filter permits. It is
/// `VOLATILE` so the planner never folds or skips it.
pub const SUPPORT_SQL: &str = "CREATE SCHEMA IF NOT EXISTS portcullis; \
CREATE OR REPLACE FUNCTION portcullis.row_check(ok boolean, rule text) RETURNS boolean \
LANGUAGE plpgsql VOLATILE AS $portcullis$ BEGIN \
IF ok IS NOT TRUE THEN \
RAISE EXCEPTION 'portcullis: permission denied: the new row violates the row filter; rule: %', rule \
USING ERRCODE = '42501'; \
END IF; \
RETURN true; \
END $portcullis$";

/// The support functions' schema; client statements may not change it.
pub const SUPPORT_SCHEMA: &str = "portcullis";
