//! Which run-time settings (GUCs) a client may change with `SET`, `RESET` or
//! `set_config()` as an ordinary session statement, and which are dangerous.
//!
//! Two groups are dangerous:
//!
//! - settings that change who the session acts as or what it may bypass (`role`,
//!   `session_authorization`, `session_replication_role`, preload libraries);
//! - settings that change how PostgreSQL *tokenizes* later statements
//!   (`client_encoding` other than UTF-8, `standard_conforming_strings` off). The proxy
//!   analyses and re-serializes statements assuming UTF-8 and standard-conforming
//!   strings; if the server read the forwarded text differently (a backslash eaten by a
//!   multi-byte SJIS character, `\'` ending a string), what runs would differ from what
//!   was checked.
//!
//! PostgreSQL matches setting names case-insensitively, quoted or not, so do we.

/// Settings that are dangerous whatever value they are given.
const ALWAYS_DANGEROUS: &[&str] = &[
    "role",
    "session_authorization",
    "session_replication_role",
    "local_preload_libraries",
    "session_preload_libraries",
    "shared_preload_libraries",
];

/// Settings that are dangerous unless set to a value the proxy's tokenizer assumes.
const TOKENIZER_SETTINGS: &[(&str, &[&str])] = &[
    ("client_encoding", &["utf8", "utf-8", "unicode", "default"]),
    ("names", &["utf8", "utf-8", "unicode", "default"]),
    (
        "standard_conforming_strings",
        &["on", "true", "yes", "1", "default"],
    ),
];

/// Settings whose `RESET` is dangerous: resetting them changes the acting role.
const RESET_DANGEROUS: &[&str] = &["role", "session_authorization"];

/// Assesses `SET name = value`: `None` when it is an ordinary session statement,
/// `Some(setting)` (a static name for messages) when it is dangerous.
///
/// `value` is the single literal value, lowercased; `None` when the value is not one
/// simple literal, which for tokenizer settings counts as dangerous.
pub(crate) fn assess_set(name: &str, value: Option<&str>) -> Option<&'static str> {
    if let Some(setting) = find(ALWAYS_DANGEROUS, name) {
        return Some(setting);
    }
    for (setting, safe_values) in TOKENIZER_SETTINGS {
        if setting.eq_ignore_ascii_case(name) {
            let safe = value.is_some_and(|value| {
                safe_values
                    .iter()
                    .any(|safe| safe.eq_ignore_ascii_case(value))
            });
            return if safe { None } else { Some(setting) };
        }
    }
    None
}

/// Assesses `RESET name` the same way as [`assess_set`].
pub(crate) fn assess_reset(name: &str) -> Option<&'static str> {
    find(RESET_DANGEROUS, name)
}

fn find(list: &[&'static str], name: &str) -> Option<&'static str> {
    list.iter()
        .copied()
        .find(|candidate| candidate.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_changes_are_dangerous_in_any_spelling() {
        assert_eq!(assess_set("role", Some("admin")), Some("role"));
        assert_eq!(assess_set("ROLE", None), Some("role"));
        assert_eq!(
            assess_set("Session_Authorization", Some("x")),
            Some("session_authorization")
        );
        assert_eq!(assess_reset("role"), Some("role"));
        assert_eq!(assess_reset("search_path"), None);
    }

    #[test]
    fn tokenizer_settings_only_accept_what_the_proxy_assumes() {
        assert_eq!(assess_set("client_encoding", Some("UTF8")), None);
        assert_eq!(
            assess_set("client_encoding", Some("sjis")),
            Some("client_encoding")
        );
        assert_eq!(assess_set("client_encoding", None), Some("client_encoding"));
        assert_eq!(assess_set("standard_conforming_strings", Some("on")), None);
        assert_eq!(
            assess_set("standard_conforming_strings", Some("off")),
            Some("standard_conforming_strings")
        );
    }

    #[test]
    fn ordinary_settings_are_session_statements() {
        assert_eq!(assess_set("search_path", None), None);
        assert_eq!(assess_set("statement_timeout", Some("5s")), None);
        assert_eq!(assess_set("app.tenant_id", Some("42")), None);
    }
}
