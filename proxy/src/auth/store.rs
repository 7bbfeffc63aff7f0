//! The proxy's user store: a TOML file of users, their SCRAM verifiers, roles and attributes.
//!
//! ```toml
//! # written by `portcullis user add`
//! [[user]]
//! name = "analyst"
//! verifier = "SCRAM-SHA-256$4096:...$...:..."
//! roles = ["analyst"]
//! expires_at = "2027-01-01T00:00:00Z"   # optional, RFC 3339
//! upstream_user = "app_ro"             # optional: the upstream role this user maps to
//! [user.attributes]                     # optional string map (tenant, department, ...)
//! tenant = "1"
//! ```
//!
//! The file holds verifiers, never passwords: a `password` key is refused. Verifiers are in
//! PostgreSQL's `pg_authid.rolpassword` format, so they can be copied from PostgreSQL.
//! Every error names the file and the line.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead as _, IsTerminal as _, Read as _, Write as _};
use std::ops::Range;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret as _, SecretString};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use toml::Spanned;
use zeroize::Zeroizing;

use super::scram::{ScramVerifier, VerifierError};

/// Largest user store accepted; far above any real one, it only bounds memory.
const MAX_FILE_LEN: u64 = 16 * 1024 * 1024;

/// Longest name PostgreSQL keeps for a role (`NAMEDATALEN - 1`); longer names are truncated
/// by PostgreSQL, so they are refused here rather than silently never matching.
const MAX_NAME_LEN: usize = 63;

/// Longest password [`read_password`] accepts.
const MAX_PASSWORD_LEN: usize = 1024;

const FILE_HEADER: &str = "\
# Portcullis user store, written by `portcullis user add`.
# Rewriting it keeps every user but not comments or formatting.

";

/// Why the user store could not be read or written. Operator-facing: messages name the file,
/// the line and the user, never a password or a verifier.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading, writing or renaming the file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The user store.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file is not valid TOML or does not have the expected shape (unknown key, wrong type).
    #[error("{}:{line}:{column}: {message}", path.display())]
    Syntax {
        /// The user store.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in characters) of the error.
        column: usize,
        /// What the TOML parser found wrong.
        message: String,
    },
    /// Two entries have the same name.
    #[error("{}:{line}: user {name:?} is already defined at line {first_line}", path.display())]
    DuplicateUser {
        /// The user store.
        path: PathBuf,
        /// Line of the second definition.
        line: usize,
        /// Line of the first definition.
        first_line: usize,
        /// The duplicated name.
        name: String,
    },
    /// A `verifier` is not a SCRAM-SHA-256 verifier in PostgreSQL's format.
    #[error("{}:{line}: user {name:?}: {source}", path.display())]
    InvalidVerifier {
        /// The user store.
        path: PathBuf,
        /// Line of the verifier.
        line: usize,
        /// The user it belongs to.
        name: String,
        /// What is wrong with it.
        #[source]
        source: VerifierError,
    },
    /// An entry has a plaintext `password` key.
    #[error(
        "{}:{line}: plaintext `password` keys are not accepted; store a SCRAM verifier \
         with `portcullis user add` instead",
        path.display()
    )]
    PlaintextPassword {
        /// The user store.
        path: PathBuf,
        /// Line of the `password` key.
        line: usize,
    },
    /// An entry is well-formed TOML but not a valid user (bad name, bad timestamp, ...).
    #[error("{}:{line}: {reason}", path.display())]
    InvalidEntry {
        /// The user store.
        path: PathBuf,
        /// Line of the offending value.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// [`add_user`] without `replace` found the user already in the file.
    #[error("{}: user {name:?} already exists", path.display())]
    UserExists {
        /// The user store.
        path: PathBuf,
        /// The existing user.
        name: String,
    },
    /// [`add_user`] was given a user that could not be stored (bad name, empty password, ...).
    #[error("cannot add user: {0}")]
    InvalidUser(String),
}

/// One user of the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// The name clients give in the startup packet.
    pub name: String,
    /// The SCRAM-SHA-256 verifier the client must prove knowledge of the password against.
    pub verifier: ScramVerifier,
    /// Roles, as referenced by the policy.
    pub roles: Vec<String>,
    /// Free-form attributes (tenant, department, ...), as referenced by the policy.
    pub attributes: BTreeMap<String, String>,
    /// From this instant on the user may no longer log in.
    pub expires_at: Option<OffsetDateTime>,
    /// The upstream role this user's sessions use, if not the same name.
    pub upstream_user: Option<String>,
}

impl UserRecord {
    /// Whether the account has expired at `now` (it expires at `expires_at`, inclusive).
    #[must_use]
    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        self.expires_at.is_some_and(|expires_at| now >= expires_at)
    }
}

/// The users of the proxy, as loaded from the user store; immutable once loaded.
#[derive(Debug, Clone, Default)]
pub struct UserStore {
    /// In file order, so that rewriting the file keeps it.
    users: Vec<UserRecord>,
    /// Name -> position in `users`.
    index: BTreeMap<String, usize>,
}

impl UserStore {
    /// Reads and validates the user store at `path`.
    ///
    /// Refuses unknown keys, plaintext passwords, duplicate names, invalid verifiers, names
    /// that PostgreSQL could not hold, and timestamps that are not RFC 3339 with an offset;
    /// every error names the file and the line. Warns (through `tracing`) when the file is
    /// readable by group or others.
    pub fn load(path: &Path) -> Result<Self, StoreError> {
        let text = read_bounded(path).map_err(|source| StoreError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses user store text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, StoreError> {
        let raw: RawFile = toml::from_str(text).map_err(|error| {
            let (line, column) = error
                .span()
                .map_or((1, 1), |span| line_and_column(text, span.start));
            StoreError::Syntax {
                path: path.to_owned(),
                line,
                column,
                message: error.message().to_owned(),
            }
        })?;

        let mut store = Self::default();
        let mut first_lines: BTreeMap<String, usize> = BTreeMap::new();
        for entry in raw.user {
            let line_of = |span: Range<usize>| line_and_column(text, span.start).0;
            let entry_line = line_of(entry.span());
            let entry = entry.into_inner();
            let invalid = |line: usize, reason: String| StoreError::InvalidEntry {
                path: path.to_owned(),
                line,
                reason,
            };

            if let Some(password) = &entry.password {
                return Err(StoreError::PlaintextPassword {
                    path: path.to_owned(),
                    line: line_of(password.span()),
                });
            }
            let name_line = line_of(entry.name.span());
            let name = entry.name.into_inner();
            check_name(&name)
                .map_err(|reason| invalid(name_line, format!("user name {reason}")))?;
            if let Some(&first_line) = first_lines.get(&name) {
                return Err(StoreError::DuplicateUser {
                    path: path.to_owned(),
                    line: name_line,
                    first_line,
                    name,
                });
            }
            let Some(verifier) = entry.verifier else {
                return Err(invalid(
                    entry_line,
                    format!("user {name:?} has no `verifier`"),
                ));
            };
            let verifier_line = line_of(verifier.span());
            let verifier = ScramVerifier::parse(verifier.get_ref()).map_err(|source| {
                StoreError::InvalidVerifier {
                    path: path.to_owned(),
                    line: verifier_line,
                    name: name.clone(),
                    source,
                }
            })?;
            let expires_at = match entry.expires_at {
                None => None,
                Some(value) => {
                    let line = line_of(value.span());
                    Some(parse_timestamp(value.get_ref()).map_err(|reason| {
                        invalid(line, format!("user {name:?}: `expires_at` {reason}"))
                    })?)
                }
            };
            let upstream_user = match entry.upstream_user {
                None => None,
                Some(upstream) => {
                    let line = line_of(upstream.span());
                    let upstream = upstream.into_inner();
                    check_name(&upstream).map_err(|reason| {
                        invalid(line, format!("user {name:?}: `upstream_user` {reason}"))
                    })?;
                    Some(upstream)
                }
            };
            if entry.roles.iter().any(String::is_empty) {
                return Err(invalid(
                    entry_line,
                    format!("user {name:?} has an empty role"),
                ));
            }
            if entry.attributes.keys().any(String::is_empty) {
                return Err(invalid(
                    entry_line,
                    format!("user {name:?} has an empty attribute name"),
                ));
            }

            first_lines.insert(name.clone(), name_line);
            store.insert(UserRecord {
                name,
                verifier,
                roles: entry.roles,
                attributes: entry.attributes,
                expires_at,
                upstream_user,
            });
        }
        Ok(store)
    }

    /// The user called `name`, if any.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&UserRecord> {
        self.index.get(name).and_then(|&at| self.users.get(at))
    }

    /// All users, in file order.
    pub fn iter(&self) -> impl Iterator<Item = &UserRecord> {
        self.users.iter()
    }

    /// Number of users.
    #[must_use]
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the store has no users.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Adds `user`, or replaces the user of the same name in place.
    fn insert(&mut self, user: UserRecord) {
        match self
            .index
            .get(&user.name)
            .and_then(|&at| self.users.get_mut(at))
        {
            Some(existing) => *existing = user,
            None => {
                self.index.insert(user.name.clone(), self.users.len());
                self.users.push(user);
            }
        }
    }

    /// The file text for this store.
    fn to_toml(&self) -> Result<Zeroizing<String>, StoreError> {
        let verifiers: Vec<Zeroizing<String>> = self
            .users
            .iter()
            .map(|record| Zeroizing::new(record.verifier.to_string()))
            .collect();
        let mut user = Vec::with_capacity(self.users.len());
        for (record, verifier) in self.users.iter().zip(&verifiers) {
            let expires_at = match record.expires_at {
                None => None,
                Some(at) => Some(at.format(&Rfc3339).map_err(|_| {
                    StoreError::InvalidUser(format!(
                        "the expiry of user {:?} cannot be written as RFC 3339",
                        record.name
                    ))
                })?),
            };
            user.push(OutUser {
                name: &record.name,
                verifier: verifier.as_str(),
                roles: &record.roles,
                expires_at,
                upstream_user: record.upstream_user.as_deref(),
                attributes: &record.attributes,
            });
        }
        let body = Zeroizing::new(
            toml::to_string(&OutFile { user })
                .map_err(|error| StoreError::InvalidUser(error.to_string()))?,
        );
        let mut text = Zeroizing::new(String::with_capacity(FILE_HEADER.len() + body.len()));
        text.push_str(FILE_HEADER);
        text.push_str(&body);
        Ok(text)
    }
}

/// A user for [`add_user`], everything but the password.
#[derive(Debug, Clone, Copy)]
pub struct NewUser<'a> {
    /// The name clients will give in the startup packet.
    pub name: &'a str,
    /// Roles, as referenced by the policy.
    pub roles: &'a [String],
    /// Free-form attributes, as referenced by the policy.
    pub attributes: &'a BTreeMap<String, String>,
    /// When the account stops working, if ever.
    pub expires_at: Option<OffsetDateTime>,
    /// The upstream role this user maps to, if not the same name.
    pub upstream_user: Option<&'a str>,
}

/// Adds `user` with a fresh SCRAM-SHA-256 verifier of `password` to the user store at `path`,
/// creating the file if it does not exist.
///
/// The existing file must load cleanly ([`UserStore::load`]); its other users are kept, in
/// order, but its comments and formatting are not. An existing user of the same name is an
/// error unless `replace`, which replaces it in place. The file is written atomically (a
/// temporary file in the same directory, synced, then renamed over it) with mode 0600 on
/// Unix. Two concurrent `add_user` calls on the same file can lose one of the updates.
///
/// Refuses an empty password, and names, roles or attributes that [`UserStore::load`] would
/// refuse.
pub fn add_user(
    path: &Path,
    user: &NewUser<'_>,
    password: &SecretString,
    replace: bool,
) -> Result<(), StoreError> {
    check_name(user.name).map_err(|reason| StoreError::InvalidUser(format!("name {reason}")))?;
    if let Some(upstream) = user.upstream_user {
        check_name(upstream)
            .map_err(|reason| StoreError::InvalidUser(format!("upstream user {reason}")))?;
    }
    if user.roles.iter().any(String::is_empty) {
        return Err(StoreError::InvalidUser("empty role".to_owned()));
    }
    if user.attributes.keys().any(String::is_empty) {
        return Err(StoreError::InvalidUser("empty attribute name".to_owned()));
    }
    if password.expose_secret().is_empty() {
        return Err(StoreError::InvalidUser(
            "empty passwords are not allowed".to_owned(),
        ));
    }

    let mut store = match fs::symlink_metadata(path) {
        Ok(_) => UserStore::load(path)?,
        Err(error) if error.kind() == io::ErrorKind::NotFound => UserStore::default(),
        Err(source) => {
            return Err(StoreError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    if store.get(user.name).is_some() && !replace {
        return Err(StoreError::UserExists {
            path: path.to_owned(),
            name: user.name.to_owned(),
        });
    }
    store.insert(UserRecord {
        name: user.name.to_owned(),
        verifier: ScramVerifier::generate(password),
        roles: user.roles.to_vec(),
        attributes: user.attributes.clone(),
        expires_at: user.expires_at,
        upstream_user: user.upstream_user.map(str::to_owned),
    });

    let text = store.to_toml()?;
    // Never write a file the proxy would refuse to load.
    UserStore::parse(&text, path)?;
    write_atomically(path, text.as_bytes()).map_err(|source| StoreError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Reads a new password for `portcullis user add`.
///
/// With `prompt_tty` and a terminal on stdin, prompts twice on the terminal without echo and
/// requires both entries to match. Otherwise reads one line from stdin (for scripts: `echo
/// ... | portcullis user add`), without its trailing newline. Refuses an empty password, one
/// longer than 1024 bytes, and one that is not UTF-8.
pub fn read_password(prompt_tty: bool) -> io::Result<SecretString> {
    let stdin = io::stdin();
    let password = if prompt_tty && stdin.is_terminal() {
        let first = Zeroizing::new(rpassword::prompt_password("Password: ")?);
        let second = Zeroizing::new(rpassword::prompt_password("Repeat password: ")?);
        if !bool::from(first.as_bytes().ct_eq(second.as_bytes())) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "passwords do not match",
            ));
        }
        first
    } else {
        read_password_line(&mut stdin.lock())?
    };
    if password.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty passwords are not allowed",
        ));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "password is too long",
        ));
    }
    // `to_owned` allocates exactly, so the boxed str is not a reallocated copy that would
    // escape zeroization; `password` itself is zeroed on drop.
    Ok(SecretString::from(password.as_str().to_owned()))
}

/// One line from `reader`, without its line ending, bounded in length.
fn read_password_line(reader: &mut impl io::BufRead) -> io::Result<Zeroizing<String>> {
    let mut line = Zeroizing::new(Vec::new());
    // Two bytes of slack for "\r\n", one more to notice an over-long line.
    let limit = u64::try_from(MAX_PASSWORD_LEN + 3).unwrap_or(u64::MAX);
    reader.take(limit).read_until(b'\n', &mut line)?;
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    if line.len() > MAX_PASSWORD_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "password is too long",
        ));
    }
    let text = std::str::from_utf8(&line)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "password is not valid UTF-8"))?;
    Ok(Zeroizing::new(text.to_owned()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    user: Vec<Spanned<RawUser>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: Spanned<String>,
    // Optional here only so that a `password` entry without one gets the clearer error.
    verifier: Option<Spanned<String>>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    expires_at: Option<Spanned<toml::Value>>,
    upstream_user: Option<Spanned<String>>,
    /// Recognised only to be refused with a clear message; the value is never kept.
    password: Option<Spanned<IgnoredAny>>,
}

#[derive(Serialize)]
struct OutFile<'a> {
    user: Vec<OutUser<'a>>,
}

#[derive(Serialize)]
struct OutUser<'a> {
    name: &'a str,
    verifier: &'a str,
    roles: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_user: Option<&'a str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    attributes: &'a BTreeMap<String, String>,
}

/// A role name PostgreSQL could hold and a startup packet could carry.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("is empty")
    } else if name.len() > MAX_NAME_LEN {
        Err("is longer than 63 bytes")
    } else if name.chars().any(char::is_control) {
        Err("contains control characters")
    } else {
        Ok(())
    }
}

/// An RFC 3339 timestamp with an offset, given as a string or a TOML offset date-time.
fn parse_timestamp(value: &toml::Value) -> Result<OffsetDateTime, &'static str> {
    const EXPECTED: &str =
        "must be an RFC 3339 timestamp with an offset, e.g. \"2027-01-01T00:00:00Z\"";
    let text = match value {
        toml::Value::String(text) => text.clone(),
        toml::Value::Datetime(datetime) => datetime.to_string(),
        _ => return Err(EXPECTED),
    };
    OffsetDateTime::parse(&text, &Rfc3339).map_err(|_| EXPECTED)
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.as_bytes().get(..offset).unwrap_or(text.as_bytes());
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |at| at + 1);
    let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
    // Count characters, not bytes: skip UTF-8 continuation bytes.
    let column = 1 + before
        .get(line_start..)
        .unwrap_or_default()
        .iter()
        .filter(|&&b| b & 0xC0 != 0x80)
        .count();
    (line, column)
}

/// The file's text, refusing files too large to be a user store.
fn read_bounded(path: &Path) -> io::Result<Zeroizing<String>> {
    let file = fs::File::open(path)?;
    let metadata = file.metadata()?;
    warn_if_exposed(path, &metadata);
    let mut text = Zeroizing::new(String::new());
    file.take(MAX_FILE_LEN + 1).read_to_string(&mut text)?;
    if u64::try_from(text.len()).unwrap_or(u64::MAX) > MAX_FILE_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "file is too large",
        ));
    }
    Ok(text)
}

#[cfg(unix)]
fn warn_if_exposed(path: &Path, metadata: &fs::Metadata) {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = metadata.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{:o}", mode & 0o777),
            "the user store is accessible to group or others; it should be mode 0600",
        );
    }
}

#[cfg(not(unix))]
fn warn_if_exposed(_path: &Path, _metadata: &fs::Metadata) {}

/// Replaces `path` with `contents` so that readers see the old file or the new one, never a
/// mix, and a crash leaves one of the two.
fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut temp = tempfile::Builder::new()
        .prefix(".portcullis-users-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        temp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    temp.write_all(contents)?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|error| error.error)?;
    // Make the rename itself durable.
    #[cfg(unix)]
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> OffsetDateTime {
        OffsetDateTime::parse(rfc3339, &Rfc3339).unwrap()
    }

    const VERIFIER: &str = "SCRAM-SHA-256$4096:P46x4u1l8BhVgNu/XO3H0A==$HFikufgdN3qTlTOxoHqy0a2yO17lCWgaMJAgirkweK8=:okuZjZqofdhMVAU+11MAwiAcoPmSLMSq1qAnFAN1xi0=";

    fn parse(text: &str) -> Result<UserStore, StoreError> {
        UserStore::parse(text, Path::new("users.toml"))
    }

    fn user(name: &str) -> String {
        format!("[[user]]\nname = \"{name}\"\nverifier = \"{VERIFIER}\"\n")
    }

    #[test]
    fn loads_the_documented_example() {
        let text = format!(
            "# written by `portcullis user add`\n\
             [[user]]\n\
             name = \"analyst\"\n\
             verifier = \"{VERIFIER}\"\n\
             roles = [\"analyst\"]\n\
             expires_at = \"2027-01-01T00:00:00Z\"\n\
             upstream_user = \"app_ro\"\n\
             [user.attributes]\n\
             tenant = \"1\"\n\
             \n\
             [[user]]\n\
             name = \"ops\"\n\
             verifier = \"{VERIFIER}\"\n"
        );
        let store = parse(&text).unwrap();
        assert_eq!(store.len(), 2);
        let analyst = store.get("analyst").unwrap();
        assert_eq!(analyst.roles, ["analyst"]);
        assert_eq!(
            analyst.attributes.get("tenant").map(String::as_str),
            Some("1")
        );
        assert_eq!(analyst.expires_at, Some(at("2027-01-01T00:00:00Z")));
        assert_eq!(analyst.upstream_user.as_deref(), Some("app_ro"));
        assert_eq!(analyst.verifier.to_string(), VERIFIER);
        let ops = store.get("ops").unwrap();
        assert!(ops.roles.is_empty() && ops.attributes.is_empty());
        assert_eq!(ops.expires_at, None);
        assert!(store.get("nobody").is_none());
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn accepts_toml_datetimes_for_expiry() {
        let text = format!("{}expires_at = 2027-01-01T00:00:00+02:00\n", user("a"));
        let store = parse(&text).unwrap();
        assert_eq!(
            store.get("a").unwrap().expires_at,
            Some(at("2027-01-01T00:00:00+02:00"))
        );
        // A local date-time has no offset: refused.
        let text = format!("{}expires_at = 2027-01-01T00:00:00\n", user("a"));
        assert!(matches!(
            parse(&text),
            Err(StoreError::InvalidEntry { line: 4, .. })
        ));
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let text = format!("{}\n[[user]]\nname = \"b\"\n  bogus = 1\n", user("a"));
        match parse(&text).unwrap_err() {
            StoreError::Syntax { line, message, .. } => {
                assert_eq!(line, 7, "{message}");
                assert!(message.contains("bogus"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }

        match parse("[[user]]\nname = \"a\"\nverifier = \n").unwrap_err() {
            StoreError::Syntax { line, column, .. } => assert_eq!((line, column), (3, 12)),
            other => panic!("unexpected {other:?}"),
        }

        let err = parse("[[user]]\nname = 5\n").unwrap_err();
        assert!(matches!(err, StoreError::Syntax { line: 2, .. }), "{err:?}");
        assert!(err.to_string().starts_with("users.toml:2:"), "{err}");

        let err = parse("[[users]]\nname = \"a\"\n").unwrap_err();
        assert!(matches!(err, StoreError::Syntax { line: 1, .. }), "{err:?}");
    }

    #[test]
    fn duplicates_are_refused_with_both_lines() {
        let text = format!("{}\n{}", user("a"), user("a"));
        match parse(&text).unwrap_err() {
            StoreError::DuplicateUser {
                line,
                first_line,
                name,
                ..
            } => {
                assert_eq!((line, first_line, name.as_str()), (6, 2, "a"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn invalid_verifiers_are_refused_with_the_line() {
        let text = format!(
            "{}\n[[user]]\nname = \"b\"\nverifier = \"md5abc\"\n",
            user("a")
        );
        let err = parse(&text).unwrap_err();
        assert!(
            matches!(&err, StoreError::InvalidVerifier { line: 7, name, .. } if name == "b"),
            "{err:?}"
        );
        let text = "[[user]]\nname = \"b\"\nroles = []\n";
        assert!(matches!(
            parse(text),
            Err(StoreError::InvalidEntry { line: 1, .. })
        ));
    }

    #[test]
    fn plaintext_passwords_are_refused_without_echoing_them() {
        let text = "[[user]]\nname = \"a\"\npassword = \"hunter2\"\n";
        let err = parse(text).unwrap_err();
        assert!(
            matches!(err, StoreError::PlaintextPassword { line: 3, .. }),
            "{err:?}"
        );
        assert!(!err.to_string().contains("hunter2"));
        assert!(!format!("{err:?}").contains("hunter2"));
    }

    #[test]
    fn bad_names_are_refused() {
        for name in ["", "a\\u0000b", &"x".repeat(64)] {
            let text = format!("[[user]]\nname = \"{name}\"\nverifier = \"{VERIFIER}\"\n");
            assert!(
                matches!(parse(&text), Err(StoreError::InvalidEntry { line: 2, .. })),
                "{name:?}"
            );
        }
        let text = format!("{}upstream_user = \"\"\n", user("a"));
        assert!(matches!(
            parse(&text),
            Err(StoreError::InvalidEntry { line: 4, .. })
        ));
    }

    #[test]
    fn expiry_is_inclusive() {
        let text = format!("{}expires_at = \"2027-01-01T00:00:00Z\"\n", user("a"));
        let store = parse(&text).unwrap();
        let a = store.get("a").unwrap();
        assert!(!a.is_expired(at("2026-12-31T23:59:59Z")));
        assert!(a.is_expired(at("2027-01-01T00:00:00Z")));
        assert!(a.is_expired(at("2027-06-01T00:00:00Z")));
        let text = user("b");
        assert!(
            !parse(&text)
                .unwrap()
                .get("b")
                .unwrap()
                .is_expired(at("9999-01-01T00:00:00Z"))
        );
    }

    #[test]
    fn line_and_column_counts_characters() {
        assert_eq!(line_and_column("", 0), (1, 1));
        assert_eq!(line_and_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_and_column("\u{e9}\u{e9}x", 4), (1, 3));
        assert_eq!(line_and_column("ab", 99), (1, 3));
    }

    #[test]
    fn add_and_replace_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let roles = vec!["analyst".to_owned()];
        let mut attributes = BTreeMap::new();
        attributes.insert("tenant".to_owned(), "1".to_owned());
        let analyst = NewUser {
            name: "analyst",
            roles: &roles,
            attributes: &attributes,
            expires_at: Some(at("2027-01-01T00:00:00Z")),
            upstream_user: Some("app_ro"),
        };
        let no_attributes = BTreeMap::new();
        let ops = NewUser {
            name: "ops",
            roles: &[],
            attributes: &no_attributes,
            expires_at: None,
            upstream_user: None,
        };
        let password = SecretString::from("s3cret".to_owned());

        add_user(&path, &analyst, &password, false).unwrap();
        add_user(&path, &ops, &password, false).unwrap();
        let store = UserStore::load(&path).unwrap();
        assert_eq!(
            store.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
            ["analyst", "ops"]
        );
        let loaded = store.get("analyst").unwrap().clone();
        assert_eq!(loaded.roles, roles);
        assert_eq!(loaded.attributes, attributes);
        assert_eq!(loaded.expires_at, analyst.expires_at);
        assert_eq!(loaded.upstream_user.as_deref(), Some("app_ro"));
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("[user.attributes]"), "{text}");
        assert!(!text.contains("s3cret"));

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        // Adding again without replace is refused and leaves the file untouched.
        let err = add_user(&path, &analyst, &password, false).unwrap_err();
        assert!(matches!(err, StoreError::UserExists { .. }), "{err:?}");
        assert_eq!(fs::read_to_string(&path).unwrap(), text);

        // Replacing keeps the order and the other user, and changes the verifier.
        let changed = NewUser {
            roles: &[],
            expires_at: None,
            ..analyst
        };
        add_user(&path, &changed, &password, true).unwrap();
        let store = UserStore::load(&path).unwrap();
        assert_eq!(
            store.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
            ["analyst", "ops"]
        );
        let replaced = store.get("analyst").unwrap();
        assert!(replaced.roles.is_empty());
        assert_eq!(replaced.expires_at, None);
        assert_ne!(replaced.verifier, loaded.verifier);
        assert_eq!(store.get("ops"), UserStore::load(&path).unwrap().get("ops"));

        // No temporary files are left behind.
        let entries: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(entries.len(), 1);
    }

    #[test]
    fn add_user_refuses_bad_input_and_broken_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let none = BTreeMap::new();
        let base = NewUser {
            name: "a",
            roles: &[],
            attributes: &none,
            expires_at: None,
            upstream_user: None,
        };
        let password = SecretString::from("pw".to_owned());
        let empty = SecretString::from(String::new());
        assert!(matches!(
            add_user(&path, &base, &empty, false),
            Err(StoreError::InvalidUser(_))
        ));
        let bad_name = NewUser { name: "", ..base };
        assert!(matches!(
            add_user(&path, &bad_name, &password, false),
            Err(StoreError::InvalidUser(_))
        ));
        assert!(!path.exists());

        fs::write(&path, "not toml [").unwrap();
        assert!(matches!(
            add_user(&path, &base, &password, false),
            Err(StoreError::Syntax { .. })
        ));
        assert_eq!(fs::read_to_string(&path).unwrap(), "not toml [");
    }

    #[test]
    fn load_reports_missing_files() {
        let err = UserStore::load(Path::new("/nonexistent/portcullis/users.toml")).unwrap_err();
        assert!(
            matches!(&err, StoreError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
        );
        assert!(
            err.to_string()
                .starts_with("/nonexistent/portcullis/users.toml: ")
        );
    }

    #[test]
    fn password_lines() {
        let read =
            |input: &[u8]| read_password_line(&mut &input[..]).map(|p| p.as_str().to_owned());
        assert_eq!(read(b"pw\n").unwrap(), "pw");
        assert_eq!(read(b"pw\r\n").unwrap(), "pw");
        assert_eq!(read(b" p w \nrest").unwrap(), " p w ");
        assert_eq!(read(b"pw").unwrap(), "pw");
        assert_eq!(read(b"").unwrap(), "");
        assert!(read(b"\xff\n").is_err());
        assert!(read(&[b'a'; MAX_PASSWORD_LEN + 1]).is_err());
        assert_eq!(
            read(&[b'a'; MAX_PASSWORD_LEN]).unwrap().len(),
            MAX_PASSWORD_LEN
        );
    }
}
