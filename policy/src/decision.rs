//! The outcome of checking one statement text: forward this SQL, or refuse with this error.

use std::fmt;
use std::sync::Arc;

use crate::class::ClassSet;

/// SQLSTATE codes that a [`Denial`] carries to the client.
pub mod sqlstate {
    /// `42501 insufficient_privilege`: the identity may not run the statement.
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    /// `42601 syntax_error`: Portcullis could not parse (or will not accept) the text.
    pub const SYNTAX_ERROR: &str = "42601";
    /// `54000 program_limit_exceeded`: the text is over `max_statement_bytes`.
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    /// `54001 statement_too_complex`: the text nests operators deeper than Portcullis
    /// can analyse safely.
    pub const STATEMENT_TOO_COMPLEX: &str = "54001";
}

/// What the proxy does with one statement text (one simple-protocol Query or one
/// extended-protocol Parse).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward `sql` upstream.
    Allow {
        /// The text to send upstream. For parsed statements this is the statement list
        /// re-serialized from the checked syntax tree (joined by `"; "`), never the
        /// client's text, so the database runs exactly what was checked. For an empty
        /// or comment-only text it is `""` (PostgreSQL answers EmptyQueryResponse).
        /// With `passthrough` it is the client's original text.
        sql: Arc<str>,
        /// The union of the classes of all statements in the text (empty for an empty
        /// text and for passthrough, whose classes are unknown).
        classes: ClassSet,
        /// True when the text could not be parsed and was forwarded verbatim because the
        /// user is listed in `unparsed_passthrough`. The audit event must say so: nothing
        /// about such a statement was checked.
        passthrough: bool,
        /// True when the text was rewritten for the identity (relation substitution,
        /// row filters added to writes): `sql` differs from the analysed text.
        rewritten: bool,
    },
    /// Refuse the statement; the proxy answers with an ErrorResponse built from it.
    Deny(Denial),
}

impl Decision {
    /// Whether the statement may be forwarded.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }

    /// The denial, if the statement was refused.
    pub fn denial(&self) -> Option<&Denial> {
        match self {
            Decision::Allow { .. } => None,
            Decision::Deny(denial) => Some(denial),
        }
    }
}

/// Why a statement was refused, in a form that is safe to show the client.
///
/// The message names the refused statement class and statement kind but never echoes
/// the statement text, policy internals beyond the rule name, or server details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The SQLSTATE for the ErrorResponse; one of the [`sqlstate`] constants.
    pub sqlstate: &'static str,
    /// The human-readable message for the ErrorResponse, prefixed `portcullis:`.
    pub message: String,
    /// The policy rule that refused it (e.g. `roles.analyst.allow`), for audit events.
    pub rule: String,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (SQLSTATE {})", self.message, self.sqlstate)
    }
}
