//! Statement classes: the coarse "what does this statement do" that roles are granted.

use std::fmt;

/// What a statement (or a part of it) does, as far as a role grant is concerned.
///
/// A statement can have several classes: `EXPLAIN ANALYZE DELETE ...` is a write,
/// `WITH d AS (DELETE ...) SELECT ...` is a read and a write, `COPY t TO '/file'` is a
/// read and dangerous. A role must be granted every class of every statement it sends.
///
/// Classes describe the statement's effect; which relations, rows and columns it may
/// touch is the job of the relation-level policy, not of the class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StatementClass {
    /// Returns data and changes nothing: `SELECT`, `VALUES`, `TABLE`, `SHOW`,
    /// `EXPLAIN` of a read, `COPY ... TO STDOUT`.
    Read,
    /// Changes rows: `INSERT`, `UPDATE`, `DELETE`, `MERGE`, `COPY ... FROM STDIN`,
    /// data-modifying CTEs, `SELECT ... FOR UPDATE` (row locks need UPDATE privilege),
    /// `LOCK`, `CALL`, `nextval`/`setval`.
    Write,
    /// Changes the schema: `CREATE`/`ALTER`/`DROP` of tables, views, indexes, functions,
    /// types, schemas, `TRUNCATE`, `COMMENT`, `SELECT ... INTO`.
    Ddl,
    /// Changes who may do what: `GRANT`, `REVOKE`, roles and users, row-level security
    /// policies, ownership, `ALTER DEFAULT PRIVILEGES`.
    Dcl,
    /// Changes session state: `SET`, `RESET`, `DISCARD`, `LISTEN`/`NOTIFY`, `PREPARE`,
    /// `EXECUTE`, `DEALLOCATE`, cursors.
    Session,
    /// Transaction control: `BEGIN`, `COMMIT`, `ROLLBACK`, savepoints.
    Transaction,
    /// Maintenance: `VACUUM`, `ANALYZE`, `REFRESH MATERIALIZED VIEW`.
    Utility,
    /// Escapes the proxy's control or reaches outside the database: `COPY` to or from a
    /// server file or program, `SET ROLE`, `SET SESSION AUTHORIZATION`, `CREATE EXTENSION`,
    /// server file and large-object functions, and anything Portcullis does not recognise.
    Dangerous,
}

impl StatementClass {
    /// Every class, in declaration order.
    pub const ALL: [StatementClass; 8] = [
        StatementClass::Read,
        StatementClass::Write,
        StatementClass::Ddl,
        StatementClass::Dcl,
        StatementClass::Session,
        StatementClass::Transaction,
        StatementClass::Utility,
        StatementClass::Dangerous,
    ];

    /// The name used in policy files (`allow = ["read", ...]`) and in messages.
    pub const fn as_str(self) -> &'static str {
        match self {
            StatementClass::Read => "read",
            StatementClass::Write => "write",
            StatementClass::Ddl => "ddl",
            StatementClass::Dcl => "dcl",
            StatementClass::Session => "session",
            StatementClass::Transaction => "transaction",
            StatementClass::Utility => "utility",
            StatementClass::Dangerous => "dangerous",
        }
    }

    const fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for StatementClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of [`StatementClass`]es: what a role is granted, or what a statement needs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ClassSet(u8);

impl ClassSet {
    /// No class at all: grants nothing.
    pub const EMPTY: ClassSet = ClassSet(0);

    /// Every class.
    pub const ALL: ClassSet = ClassSet(u8::MAX);

    /// A set holding exactly `class`.
    pub const fn only(class: StatementClass) -> ClassSet {
        ClassSet(class.bit())
    }

    /// Whether `class` is in the set.
    pub const fn contains(self, class: StatementClass) -> bool {
        self.0 & class.bit() != 0
    }

    /// Adds `class` to the set.
    pub fn insert(&mut self, class: StatementClass) {
        self.0 |= class.bit();
    }

    /// The classes in either set.
    #[must_use]
    pub const fn union(self, other: ClassSet) -> ClassSet {
        ClassSet(self.0 | other.0)
    }

    /// Whether every class of `self` is also in `other`.
    pub const fn is_subset(self, other: ClassSet) -> bool {
        self.0 & !other.0 == 0
    }

    /// Whether the set holds no class.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The classes in the set, in declaration order.
    pub fn iter(self) -> impl Iterator<Item = StatementClass> {
        StatementClass::ALL
            .into_iter()
            .filter(move |class| self.contains(*class))
    }
}

impl FromIterator<StatementClass> for ClassSet {
    fn from_iter<I: IntoIterator<Item = StatementClass>>(iter: I) -> Self {
        let mut set = ClassSet::EMPTY;
        for class in iter {
            set.insert(class);
        }
        set
    }
}

impl fmt::Display for ClassSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for class in self.iter() {
            if !first {
                f.write_str(", ")?;
            }
            f.write_str(class.as_str())?;
            first = false;
        }
        Ok(())
    }
}

impl fmt::Debug for ClassSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_operations() {
        let mut set = ClassSet::EMPTY;
        assert!(set.is_empty());
        set.insert(StatementClass::Write);
        set.insert(StatementClass::Read);
        assert!(set.contains(StatementClass::Read));
        assert!(!set.contains(StatementClass::Ddl));
        assert_eq!(set.to_string(), "read, write");
        assert!(ClassSet::only(StatementClass::Read).is_subset(set));
        assert!(!set.is_subset(ClassSet::only(StatementClass::Read)));
        assert!(set.is_subset(ClassSet::ALL));
        assert!(ClassSet::EMPTY.is_subset(ClassSet::EMPTY));
        assert_eq!(ClassSet::ALL.iter().count(), StatementClass::ALL.len());
        let collected: ClassSet = [StatementClass::Dcl, StatementClass::Dcl]
            .into_iter()
            .collect();
        assert_eq!(collected, ClassSet::only(StatementClass::Dcl));
    }
}
