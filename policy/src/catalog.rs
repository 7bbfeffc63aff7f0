//! The catalog snapshot: which schemas, relations, columns and functions the upstream
//! database has, as far as the policy needs to know.
//!
//! The proxy reads it from the upstream (see [`Catalog::QUERY_RELATIONS`] and
//! [`Catalog::QUERY_FUNCTIONS`]) when it starts and again after DDL, and hands it to the
//! engine with every statement. The engine resolves names against it the way PostgreSQL
//! does: unquoted identifiers fold to lower case, quoted ones keep their case, and an
//! unqualified name is looked up in `pg_catalog` first, then in the search path.
//! A relation that is not in the snapshot is unknown, and unknown relations are refused.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Source of catalog generations: every snapshot built gets a new one.
static GENERATION: AtomicU64 = AtomicU64::new(1);

fn next_generation() -> u64 {
    GENERATION.fetch_add(1, Ordering::Relaxed)
}

/// Schemas whose relations are the server's own: readable by default (so `psql \d` and
/// drivers work) except for the relations in [`GOVERNED_SYSTEM_RELATIONS`].
pub const SYSTEM_SCHEMAS: [&str; 2] = ["pg_catalog", "information_schema"];

/// System relations that expose data values, password hashes or other sessions' SQL.
/// They are treated like user tables: refused unless a policy grants them.
pub const GOVERNED_SYSTEM_RELATIONS: &[&str] = &[
    "pg_statistic",
    "pg_statistic_ext_data",
    "pg_stats",
    "pg_stats_ext",
    "pg_stats_ext_exprs",
    "pg_stat_activity",
    "pg_stat_statements",
    "pg_stat_statements_info",
    "pg_authid",
    "pg_shadow",
    "pg_user_mapping",
    "pg_user_mappings",
    "pg_largeobject",
    "pg_file_settings",
    "pg_hba_file_rules",
    "pg_ident_file_mappings",
    "pg_stat_replication",
    "pg_stat_wal_receiver",
    "pg_stat_subscription",
    "pg_subscription",
    "pg_replication_slots",
    "pg_backend_memory_contexts",
];

/// What kind of relation a name refers to (`pg_class.relkind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelationKind {
    /// An ordinary or partitioned table (`r`, `p`).
    Table,
    /// A view (`v`): it runs with its owner's rights, so it is governed like a table.
    View,
    /// A materialized view (`m`).
    MaterializedView,
    /// A foreign table (`f`).
    Foreign,
    /// A sequence (`S`).
    Sequence,
}

impl RelationKind {
    /// The kind for a `pg_class.relkind` letter, or `None` for kinds that are not
    /// relations a statement can name in FROM (indexes, composite types, TOAST).
    pub fn from_relkind(relkind: &str) -> Option<RelationKind> {
        match relkind {
            "r" | "p" => Some(RelationKind::Table),
            "v" => Some(RelationKind::View),
            "m" => Some(RelationKind::MaterializedView),
            "f" => Some(RelationKind::Foreign),
            "S" => Some(RelationKind::Sequence),
            _ => None,
        }
    }
}

/// The broad type of a column, from `pg_type.typcategory`; masks check it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeCategory {
    /// `S`: text, varchar, char, citext, name.
    String,
    /// `N` for `smallint`, `integer`, `bigint`.
    Integer,
    /// `N` for every other number type (`numeric`, `real`, `double precision`, `money`
    /// is `N` too).
    Numeric,
    /// `D`: date, timestamp, timestamptz.
    DateTime,
    /// Anything else (boolean, bytea, json, arrays, user types...).
    Other,
}

impl TypeCategory {
    /// The category of a column from its `pg_type.typcategory` letter and its
    /// `format_type()` text.
    pub fn of(typcategory: &str, type_name: &str) -> TypeCategory {
        match typcategory {
            "S" => TypeCategory::String,
            "N" if matches!(type_name, "smallint" | "integer" | "bigint") => TypeCategory::Integer,
            "N" => TypeCategory::Numeric,
            "D" => TypeCategory::DateTime,
            _ => TypeCategory::Other,
        }
    }
}

/// One column of a relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// The column name exactly as stored (case preserved).
    pub name: String,
    /// The type as `format_type(atttypid, atttypmod)` prints it, e.g. `numeric(12,2)`,
    /// `character varying(200)`; masks cast to it so the column keeps its type.
    pub type_name: String,
    /// The type's category.
    pub category: TypeCategory,
}

/// One relation of the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Its schema, exactly as stored.
    pub schema: String,
    /// Its name, exactly as stored.
    pub name: String,
    /// What kind of relation it is.
    pub kind: RelationKind,
    /// Its user-visible columns in `attnum` order (dropped and system columns left out).
    /// Empty for system relations, whose columns the engine never needs.
    pub columns: Vec<Column>,
}

impl Relation {
    /// `schema.name`, as policy files write it (no quoting).
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// Whether the relation belongs to the server (`pg_catalog`, `information_schema`).
    pub fn is_system(&self) -> bool {
        SYSTEM_SCHEMAS.contains(&self.schema.as_str())
    }

    /// The column called exactly `name`.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|column| column.name == name)
    }
}

/// One row of [`Catalog::QUERY_RELATIONS`]'s result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationRow {
    /// `nspname`.
    pub schema: String,
    /// `relname`.
    pub name: String,
    /// `relkind`.
    pub relkind: String,
    /// `attname`, or `None` for a relation without columns (or a system relation).
    pub column: Option<String>,
    /// `format_type(atttypid, atttypmod)`.
    pub type_name: Option<String>,
    /// `typcategory`.
    pub typcategory: Option<String>,
}

/// An immutable snapshot of the upstream's catalog. The proxy replaces it whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    /// schema -> name -> relation (two levels, so lookups by `&str` allocate nothing).
    relations: HashMap<String, HashMap<String, Arc<Relation>>>,
    /// schema -> function names.
    functions: HashMap<String, HashSet<String>>,
    schemas: HashSet<String>,
    generation: u64,
}

impl Catalog {
    /// The query that reads every relation a statement can name, with the columns of
    /// the non-system ones, in a stable order. Its rows, in order, feed
    /// [`Catalog::from_rows`].
    pub const QUERY_RELATIONS: &'static str = "SELECT n.nspname::text, c.relname::text, c.relkind::text, a.attname::text, \
         format_type(a.atttypid, a.atttypmod), t.typcategory::text \
         FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 \
         AND NOT a.attisdropped AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
         LEFT JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
         WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND n.nspname <> 'pg_toast' \
         AND n.nspname NOT LIKE 'pg_temp_%' AND n.nspname NOT LIKE 'pg_toast_temp_%' \
         ORDER BY n.nspname, c.relname, a.attnum";

    /// The query that reads every function name per schema (`nspname`, `proname`).
    pub const QUERY_FUNCTIONS: &'static str = "SELECT DISTINCT n.nspname::text, p.proname::text \
         FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
         WHERE n.nspname <> 'pg_toast'";

    /// Builds a snapshot from the rows of [`Catalog::QUERY_RELATIONS`] and
    /// [`Catalog::QUERY_FUNCTIONS`]. Rows of unknown relation kinds are skipped.
    pub fn from_rows(
        relations: impl IntoIterator<Item = RelationRow>,
        functions: impl IntoIterator<Item = (String, String)>,
    ) -> Catalog {
        let mut built: HashMap<(String, String), Relation> = HashMap::new();
        let mut schemas = HashSet::new();
        for row in relations {
            let Some(kind) = RelationKind::from_relkind(&row.relkind) else {
                continue;
            };
            schemas.insert(row.schema.clone());
            let relation = built
                .entry((row.schema.clone(), row.name.clone()))
                .or_insert_with(|| Relation {
                    schema: row.schema.clone(),
                    name: row.name.clone(),
                    kind,
                    columns: Vec::new(),
                });
            if let (Some(column), Some(type_name)) = (row.column, row.type_name) {
                let category =
                    TypeCategory::of(row.typcategory.as_deref().unwrap_or(""), &type_name);
                relation.columns.push(Column {
                    name: column,
                    type_name,
                    category,
                });
            }
        }
        let functions = functions.into_iter().fold(
            HashMap::<String, HashSet<String>>::new(),
            |mut by_schema, (schema, name)| {
                by_schema.entry(schema).or_default().insert(name);
                by_schema
            },
        );
        schemas.extend(functions.keys().cloned());
        Catalog {
            relations: built.into_iter().fold(
                HashMap::new(),
                |mut by_schema, ((schema, name), relation)| {
                    by_schema
                        .entry(schema)
                        .or_insert_with(HashMap::new)
                        .insert(name, Arc::new(relation));
                    by_schema
                },
            ),
            functions,
            schemas,
            generation: next_generation(),
        }
    }

    /// Adds a relation (for tests and fixtures that describe a schema without a server).
    pub fn with_relation(mut self, relation: Relation) -> Catalog {
        self.schemas.insert(relation.schema.clone());
        self.generation = next_generation();
        self.relations
            .entry(relation.schema.clone())
            .or_default()
            .insert(relation.name.clone(), Arc::new(relation));
        self
    }

    /// Adds a function name (for tests and fixtures).
    pub fn with_function(mut self, schema: &str, name: &str) -> Catalog {
        self.schemas.insert(schema.to_string());
        self.generation = next_generation();
        self.functions
            .entry(schema.to_string())
            .or_default()
            .insert(name.to_string());
        self
    }

    /// A number that differs between snapshots built separately (0 for the empty
    /// default); caches of per-identity views are keyed by it.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// How many relations the snapshot holds.
    pub fn len(&self) -> usize {
        self.relations.values().map(HashMap::len).sum()
    }

    /// Whether the snapshot holds no relation (never loaded, or an empty database).
    pub fn is_empty(&self) -> bool {
        self.relations.values().all(HashMap::is_empty)
    }

    /// The relation `schema.name` (exact, already case-folded names).
    pub fn relation(&self, schema: &str, name: &str) -> Option<&Arc<Relation>> {
        self.relations.get(schema)?.get(name)
    }

    /// Every relation, in no particular order.
    pub fn relations(&self) -> impl Iterator<Item = &Arc<Relation>> {
        self.relations.values().flat_map(HashMap::values)
    }

    /// Resolves a relation name of one or two (folded) parts as PostgreSQL would:
    /// qualified names directly; unqualified ones in `pg_catalog`, then each schema of
    /// `search_path` in order.
    pub fn resolve(&self, parts: &[String], search_path: &[String]) -> Option<&Arc<Relation>> {
        match parts {
            [schema, name] => self.relation(schema, name),
            [name] => std::iter::once("pg_catalog")
                .chain(search_path.iter().map(String::as_str))
                .find_map(|schema| self.relation(schema, name)),
            _ => None,
        }
    }

    /// Resolves a function name of one or two (folded) parts to its schema, the way
    /// [`Catalog::resolve`] resolves relations.
    pub fn resolve_function<'a>(
        &'a self,
        parts: &'a [String],
        search_path: &'a [String],
    ) -> Option<&'a str> {
        match parts {
            [schema, name] => self.has_function(schema, name).then_some(schema.as_str()),
            [name] => std::iter::once("pg_catalog")
                .chain(search_path.iter().map(String::as_str))
                .find(|schema| self.has_function(schema, name)),
            _ => None,
        }
    }

    fn has_function(&self, schema: &str, name: &str) -> bool {
        self.functions
            .get(schema)
            .is_some_and(|names| names.contains(name))
    }

    /// Whether the schema exists in the snapshot.
    pub fn has_schema(&self, schema: &str) -> bool {
        self.schemas.contains(schema)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        schema: &str,
        name: &str,
        kind: &str,
        column: Option<(&str, &str, &str)>,
    ) -> RelationRow {
        RelationRow {
            schema: schema.into(),
            name: name.into(),
            relkind: kind.into(),
            column: column.map(|c| c.0.into()),
            type_name: column.map(|c| c.1.into()),
            typcategory: column.map(|c| c.2.into()),
        }
    }

    #[test]
    fn builds_relations_with_columns_in_order_and_resolves_like_postgres() {
        let catalog = Catalog::from_rows(
            [
                row("public", "customers", "r", Some(("id", "integer", "N"))),
                row("public", "customers", "r", Some(("email", "text", "S"))),
                row(
                    "public",
                    "customers",
                    "r",
                    Some(("total", "numeric(12,2)", "N")),
                ),
                row("pg_catalog", "pg_class", "r", None),
                row("public", "customers_pkey", "i", None),
                row("hr", "Staff", "v", Some(("born", "date", "D"))),
            ],
            [
                ("pg_catalog".into(), "lower".into()),
                ("public".into(), "f".into()),
            ],
        );
        assert_eq!(catalog.len(), 3, "the index is skipped");
        let search_path = vec!["public".to_string()];
        let customers = catalog
            .resolve(&["customers".into()], &search_path)
            .map(|r| {
                r.columns
                    .iter()
                    .map(|c| (c.name.as_str(), c.category))
                    .collect::<Vec<_>>()
            });
        assert_eq!(
            customers,
            Some(vec![
                ("id", TypeCategory::Integer),
                ("email", TypeCategory::String),
                ("total", TypeCategory::Numeric)
            ])
        );
        assert!(
            catalog
                .resolve(&["pg_class".into()], &search_path)
                .is_some_and(|r| r.is_system())
        );
        assert!(
            catalog.resolve(&["staff".into()], &["hr".into()]).is_none(),
            "case matters"
        );
        assert!(
            catalog
                .resolve(&["hr".into(), "Staff".into()], &[])
                .is_some()
        );
        assert!(
            catalog
                .resolve(
                    &["db".into(), "public".into(), "customers".into()],
                    &search_path
                )
                .is_none()
        );
        assert_eq!(
            catalog.resolve_function(&["lower".into()], &search_path),
            Some("pg_catalog")
        );
        assert_eq!(
            catalog.resolve_function(&["f".into()], &search_path),
            Some("public")
        );
        assert_eq!(catalog.resolve_function(&["g".into()], &search_path), None);
    }
}
