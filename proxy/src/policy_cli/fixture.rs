//! Fixture files of `portcullis policy test`: `DIR/tests/*.toml`, each a list of
//! `[[case]]` tables (the format is documented in the parent module).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// The largest fixture file read, so a stray huge file cannot exhaust memory.
const MAX_FIXTURE_BYTES: u64 = 16 * 1024 * 1024;

/// What a case expects the decision to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// Forwarded as analysed, not rewritten.
    Allowed,
    /// Forwarded after a rewrite (masks, row filters, write checks).
    Rewritten,
    /// Refused.
    Denied,
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Expect::Allowed => "allowed",
            Expect::Rewritten => "rewritten",
            Expect::Denied => "denied",
        })
    }
}

/// A case as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: String,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    roles: Option<Vec<String>>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    sql: String,
    expect: Expect,
    #[serde(default)]
    forwarded: Option<String>,
    #[serde(default)]
    contains: Vec<String>,
    #[serde(default)]
    sqlstate: Option<String>,
    #[serde(default)]
    message_contains: Option<String>,
    #[serde(default)]
    rows: Option<Vec<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    case: Vec<Spanned<RawCase>>,
}

/// One validated case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// The fixture file.
    pub path: PathBuf,
    /// The line of the case's `[[case]]` header.
    pub line: usize,
    /// What the case is called in reports.
    pub name: String,
    /// A user of the users file (its roles and attributes), or the name for `roles`.
    pub user: Option<String>,
    /// Roles instead of (or overriding) the users file's.
    pub roles: Option<Vec<String>>,
    /// Attributes added to (and overriding) the user's.
    pub attributes: BTreeMap<String, String>,
    /// The statement text the client sends.
    pub sql: String,
    /// The expected decision.
    pub expect: Expect,
    /// The exact forwarded text.
    pub forwarded: Option<String>,
    /// Substrings of the forwarded text.
    pub contains: Vec<String>,
    /// The denial's SQLSTATE.
    pub sqlstate: Option<String>,
    /// A substring of the denial's message.
    pub message_contains: Option<String>,
    /// Rows the forwarded text returns, in text format (`\N` is NULL).
    pub rows: Option<Vec<Vec<String>>>,
}

impl Case {
    /// `file:line` of the case.
    pub fn location(&self) -> String {
        format!("{}:{}", self.path.display(), self.line)
    }
}

/// A fixture file that cannot be used: the file, the line, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {message}", path.display())]
pub struct FixtureError {
    /// The file.
    pub path: PathBuf,
    /// The 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len()))
        .unwrap_or(text)
        .matches('\n')
        .count()
        + 1
}

/// The line of the `[[case]]` header at or before byte `offset` (the span of an
/// array-of-tables element may start at its first key).
fn header_line(text: &str, offset: usize) -> usize {
    let line = line_of(text, offset);
    let lines: Vec<&str> = text.lines().take(line).collect();
    lines
        .iter()
        .rposition(|l| l.trim_start().starts_with("[[case]]"))
        .map_or(line, |i| i + 1)
}

/// Parses and validates the fixture text of `path`. Refuses, naming the line: TOML
/// errors, unknown keys, a case with neither `user` nor `roles`, an empty `name` or
/// `sql`, duplicate names within the file, `sqlstate`/`message_contains` on a case
/// not expecting `denied`, and `forwarded`/`contains`/`rows` on one that does.
pub fn parse(text: &str, path: &Path) -> Result<Vec<Case>, FixtureError> {
    let error = |line, message: String| FixtureError {
        path: path.to_path_buf(),
        line,
        message,
    };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(1, |span| line_of(text, span.start));
        error(line, e.message().to_owned())
    })?;
    let mut cases: Vec<Case> = Vec::with_capacity(raw.case.len());
    for spanned in raw.case {
        let line = header_line(text, spanned.span().start);
        let raw = spanned.into_inner();
        if raw.name.trim().is_empty() {
            return Err(error(line, "case has an empty name".into()));
        }
        if let Some(other) = cases.iter().find(|c| c.name == raw.name) {
            return Err(error(
                line,
                format!(
                    "case name {:?} is already used at line {}",
                    raw.name, other.line
                ),
            ));
        }
        let name = &raw.name;
        if raw.sql.trim().is_empty() {
            return Err(error(line, format!("case {name:?} has an empty sql")));
        }
        if raw.user.is_none() && raw.roles.is_none() {
            return Err(error(
                line,
                format!("case {name:?} names neither a user nor roles"),
            ));
        }
        let denied = raw.expect == Expect::Denied;
        if !denied && (raw.sqlstate.is_some() || raw.message_contains.is_some()) {
            return Err(error(
                line,
                format!("case {name:?}: sqlstate and message_contains need expect = \"denied\""),
            ));
        }
        if denied && (raw.forwarded.is_some() || !raw.contains.is_empty() || raw.rows.is_some()) {
            return Err(error(
                line,
                format!(
                    "case {name:?}: forwarded, contains and rows need expect = \"allowed\" or \"rewritten\""
                ),
            ));
        }
        cases.push(Case {
            path: path.to_path_buf(),
            line,
            name: raw.name,
            user: raw.user,
            roles: raw.roles,
            attributes: raw.attributes,
            sql: raw.sql,
            expect: raw.expect,
            forwarded: raw.forwarded,
            contains: raw.contains,
            sqlstate: raw.sqlstate,
            message_contains: raw.message_contains,
            rows: raw.rows,
        });
    }
    Ok(cases)
}

/// Reads every `*.toml` of `dir` (sorted by name) and parses it. Refuses a directory
/// with no fixture file, an unreadable or oversized file, and any malformed one.
pub fn load_dir(dir: &Path) -> Result<Vec<Case>, FixtureError> {
    let unreadable = |path: &Path, message: String| FixtureError {
        path: path.to_path_buf(),
        line: 1,
        message,
    };
    let entries = std::fs::read_dir(dir).map_err(|e| unreadable(dir, e.to_string()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| unreadable(dir, e.to_string()))?.path();
        if path.extension().is_some_and(|x| x == "toml") && path.is_file() {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(unreadable(dir, "no *.toml fixture file".into()));
    }
    files.sort();
    let mut cases = Vec::new();
    for path in files {
        let size = std::fs::metadata(&path)
            .map_err(|e| unreadable(&path, e.to_string()))?
            .len();
        if size > MAX_FIXTURE_BYTES {
            return Err(unreadable(
                &path,
                format!("fixture file of {size} bytes, the limit is {MAX_FIXTURE_BYTES}"),
            ));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| unreadable(&path, e.to_string()))?;
        cases.extend(parse(&text, &path)?);
    }
    Ok(cases)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Vec<Case>, FixtureError> {
        parse(text, Path::new("t.toml"))
    }

    #[test]
    fn parses_cases_with_their_header_lines() {
        let cases = parse_str(
            r#"
# comment
[[case]]
name = "one"
user = "analyst"
sql = "SELECT 1"
expect = "allowed"
rows = [["1"]]

[[case]]
name = "two"
roles = ["support"]
attributes = { tenant = "1" }
sql = "DELETE FROM t"
expect = "denied"
sqlstate = "42501"
message_contains = "permission"
"#,
        )
        .unwrap();
        assert_eq!(cases.len(), 2);
        assert_eq!(cases[0].line, 3);
        assert_eq!(cases[0].expect, Expect::Allowed);
        assert_eq!(cases[0].rows, Some(vec![vec!["1".to_owned()]]));
        assert_eq!(cases[1].line, 10);
        assert_eq!(cases[1].roles, Some(vec!["support".to_owned()]));
        assert_eq!(
            cases[1].attributes.get("tenant").map(String::as_str),
            Some("1")
        );
        assert_eq!(cases[1].sqlstate.as_deref(), Some("42501"));
        assert_eq!(cases[1].location(), "t.toml:10");
    }

    #[test]
    fn null_is_backslash_n() {
        let cases = parse_str(
            "[[case]]\nname = \"n\"\nuser = \"u\"\nsql = \"SELECT NULL\"\nexpect = \"allowed\"\nrows = [[\"\\\\N\"]]\n",
        )
        .unwrap();
        assert_eq!(cases[0].rows, Some(vec![vec!["\\N".to_owned()]]));
    }

    #[test]
    fn refuses_unknown_keys_with_their_line() {
        let err = parse_str(
            "[[case]]\nname = \"a\"\nuser = \"u\"\nsql = \"SELECT 1\"\nexpect = \"allowed\"\nexpected_rows = 3\n",
        )
        .unwrap_err();
        assert_eq!(err.line, 6, "{err}");
        assert!(err.message.contains("expected_rows"), "{err}");
        assert!(err.to_string().starts_with("t.toml:"), "{err}");
    }

    #[test]
    fn refuses_a_bad_expectation() {
        let err = parse_str(
            "[[case]]\nname = \"a\"\nuser = \"u\"\nsql = \"SELECT 1\"\nexpect = \"maybe\"\n",
        )
        .unwrap_err();
        assert_eq!(err.line, 5, "{err}");
    }

    #[test]
    fn refuses_a_case_without_identity() {
        let err = parse_str("\n[[case]]\nname = \"a\"\nsql = \"SELECT 1\"\nexpect = \"allowed\"\n")
            .unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("neither a user nor roles"), "{err}");
    }

    #[test]
    fn refuses_duplicate_names() {
        let case =
            "[[case]]\nname = \"a\"\nuser = \"u\"\nsql = \"SELECT 1\"\nexpect = \"allowed\"\n";
        let err = parse_str(&format!("{case}{case}")).unwrap_err();
        assert_eq!(err.line, 6);
        assert!(err.message.contains("line 1"), "{err}");
    }

    #[test]
    fn refuses_expectations_that_do_not_fit_the_decision() {
        let err = parse_str(
            "[[case]]\nname = \"a\"\nuser = \"u\"\nsql = \"SELECT 1\"\nexpect = \"allowed\"\nsqlstate = \"42501\"\n",
        )
        .unwrap_err();
        assert!(err.message.contains("need expect = \"denied\""), "{err}");
        let err = parse_str(
            "[[case]]\nname = \"a\"\nuser = \"u\"\nsql = \"SELECT 1\"\nexpect = \"denied\"\nrows = []\n",
        )
        .unwrap_err();
        assert!(err.message.contains("rows need"), "{err}");
    }

    #[test]
    fn refuses_missing_sql() {
        let err =
            parse_str("[[case]]\nname = \"a\"\nuser = \"u\"\nexpect = \"allowed\"\n").unwrap_err();
        assert!(err.message.contains("sql"), "{err}");
    }
}
