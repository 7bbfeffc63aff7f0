//! Client authentication by the proxy: SCRAM-SHA-256(-PLUS) against the proxy's own user store.
//!
//! Pure building blocks, no sockets:
//!
//! - [`scram`]: the server side of a SCRAM-SHA-256 / SCRAM-SHA-256-PLUS exchange
//!   ([`ScramServer`]), PostgreSQL-format verifiers ([`ScramVerifier`]) and the
//!   `tls-server-end-point` channel-binding data ([`try_tls_server_end_point`]);
//! - [`store`]: the user store file ([`UserStore`]) and `portcullis user add` ([`add_user`],
//!   [`read_password`]).
//!
//! A session authenticates a client roughly so:
//!
//! ```text
//! let record = store.get(user).filter(|r| !r.is_expired(now));
//! let mut scram = ScramServer::new(user, record.map(|r| r.verifier.clone()),
//!                                  try_tls_server_end_point(cert_der));
//! send AuthenticationSASL(scram.mechanisms())
//! reply = scram.client_first(mechanism, initial_response)?  -> AuthenticationSASLContinue
//! reply = scram.client_final(response)?                      -> AuthenticationSASLFinal, Ok
//! on error e: ErrorResponse(FATAL, e.sqlstate(), e.to_string()) and close
//! ```
//!
//! Unknown and expired users go through the same exchange against a mock verifier and fail
//! exactly like a wrong password.

pub mod scram;
pub mod store;

pub use scram::{
    DEFAULT_ITERATIONS, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramError, ScramServer, ScramVerifier,
    VerifierError, tls_server_end_point, try_tls_server_end_point,
};
pub use store::{NewUser, StoreError, UserRecord, UserStore, add_user, read_password};

/// Any failure of the authentication building blocks.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The SCRAM exchange failed; the client gets [`ScramError::sqlstate`] and its message.
    #[error(transparent)]
    Scram(#[from] ScramError),
    /// The user store could not be read or written (operator-facing).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A verifier could not be parsed or generated (operator-facing).
    #[error(transparent)]
    Verifier(#[from] VerifierError),
}

impl AuthError {
    /// The SQLSTATE to report to the client: the SCRAM error's own, and `XX000`
    /// (internal_error) for operator-side failures, whose details belong in the log only.
    #[must_use]
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Self::Scram(error) => error.sqlstate(),
            Self::Store(_) | Self::Verifier(_) => "XX000",
        }
    }
}
