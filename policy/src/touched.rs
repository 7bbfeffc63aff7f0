//! What a statement touched, for the audit trail: the relations it reads or writes,
//! the columns it may read or write in each, and their data classification.
//!
//! Derived from the statements' [`Census`]es, resolved against the catalog snapshot
//! the way the rewrite resolves them (`pg_catalog` first, then the policy's
//! `search_path`), and from the policy's `classification.toml`.
//!
//! The column lists over-approximate, never under-approximate: a column counts as
//! touched when the statement names an identifier of its name anywhere (a column of
//! the same name in another relation included), and every column counts when the
//! statement uses `*`, a whole-row reference (`SELECT c FROM customers c`, `c.*`,
//! `row_to_json(c.*)`), or writes whole rows (INSERT or COPY without a column list,
//! MERGE). An audit trail that says a query may have read `ssn` when it did not is
//! noise; one that misses a read of `ssn` would be a hole.

use std::collections::BTreeMap;

use crate::catalog::{Catalog, Relation};
use crate::rewrite::Census;

/// A relation a statement touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TouchedRelation {
    /// `schema.name` as the catalog stores it, or the name as written when the
    /// catalog does not know it (then `columns` is empty).
    pub name: String,
    /// Whether the statement writes it (INSERT, UPDATE, DELETE, MERGE, COPY FROM).
    pub written: bool,
    /// The columns the statement may read or write, in the relation's column order.
    pub columns: Vec<TouchedColumn>,
}

/// A column a statement may have touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TouchedColumn {
    /// The column's name.
    pub name: String,
    /// Its class from `classification.toml` (`pii.email`), if classified.
    pub class: Option<String>,
}

impl TouchedRelation {
    /// Whether any touched column is classified.
    pub fn is_classified(&self) -> bool {
        self.columns.iter().any(|column| column.class.is_some())
    }
}

/// Where classes come from: `(schema, table) -> column -> class`.
pub(crate) type Classification =
    std::collections::HashMap<(String, String), BTreeMap<String, String>>;

/// The relations `censuses` touch, merged across statements, in first-seen order.
pub(crate) fn touched(
    censuses: &[&Census],
    catalog: &Catalog,
    search_path: &[String],
    classification: Option<&Classification>,
) -> Vec<TouchedRelation> {
    let mut out: Vec<TouchedRelation> = Vec::new();
    for census in censuses {
        let relations = census
            .reads
            .iter()
            .map(|(parts, _)| (parts, false))
            .chain(census.targets.iter().map(|(parts, _)| (parts, true)));
        for (parts, written) in relations {
            let found = match catalog.resolve(parts, search_path) {
                Some(relation) => of_relation(census, relation, written, classification),
                None => TouchedRelation {
                    name: parts.join("."),
                    written,
                    columns: Vec::new(),
                },
            };
            merge(&mut out, found);
        }
    }
    out
}

fn of_relation(
    census: &Census,
    relation: &Relation,
    written: bool,
    classification: Option<&Classification>,
) -> TouchedRelation {
    let named = |name: &str| {
        census
            .names
            .binary_search_by(|n| n.as_str().cmp(name))
            .is_ok()
    };
    let is_column = |name: &str| relation.column(name).is_some();
    let whole_row = census.everything
        || (named(&relation.name) && !is_column(&relation.name))
        || census
            .aliases
            .iter()
            .any(|alias| named(alias) && !is_column(alias));
    let classes =
        classification.and_then(|c| c.get(&(relation.schema.clone(), relation.name.clone())));
    let columns = relation
        .columns
        .iter()
        .filter(|column| whole_row || named(&column.name))
        .map(|column| TouchedColumn {
            name: column.name.clone(),
            class: classes.and_then(|c| c.get(&column.name)).cloned(),
        })
        .collect();
    TouchedRelation {
        name: relation.qualified(),
        written,
        columns,
    }
}

/// Adds `found` to `out`, uniting it with an entry for the same relation.
fn merge(out: &mut Vec<TouchedRelation>, found: TouchedRelation) {
    let Some(known) = out.iter_mut().find(|known| known.name == found.name) else {
        out.push(found);
        return;
    };
    known.written |= found.written;
    for column in found.columns {
        if !known.columns.iter().any(|c| c.name == column.name) {
            known.columns.push(column);
        }
    }
}
