//! SCRAM-SHA-256 and SCRAM-SHA-256-PLUS, server side (RFC 5802, RFC 7677), as PostgreSQL
//! speaks it.
//!
//! The exchange, in PostgreSQL protocol messages:
//!
//! ```text
//! proxy  -> AuthenticationSASL            ScramServer::mechanisms()
//! client -> SASLInitialResponse           ScramServer::client_first(mechanism, data)
//! proxy  -> AuthenticationSASLContinue    (server-first-message)
//! client -> SASLResponse                  ScramServer::client_final(data)
//! proxy  -> AuthenticationSASLFinal       (server-final-message), then AuthenticationOk
//! ```
//!
//! Where PostgreSQL departs from RFC 5802, this module follows PostgreSQL so that every
//! PostgreSQL client works unchanged:
//!
//! - the user name in client-first-message (`n=`) is ignored; PostgreSQL, and the proxy, take
//!   the role from the startup packet, so clients usually send an empty `n=`;
//! - authorization identities (`a=`) are refused;
//! - clients normalise the password with SASLprep and fall back to the raw bytes when SASLprep
//!   fails; the server never sees the password, only the [`ScramVerifier`], so this matters
//!   only to [`ScramVerifier::generate`].
//!
//! Every error is final: after one, the [`ScramServer`] refuses all further messages.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit as _, Mac as _};
use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest as _, Sha224, Sha256, Sha384, Sha512};
use subtle::ConstantTimeEq as _;
use x509_parser::prelude::{FromDer as _, X509Certificate};
use x509_parser::signature_algorithm::RsaSsaPssParams;
use x509_parser::x509::AlgorithmIdentifier;
use zeroize::{Zeroize as _, Zeroizing};

/// SASL name of SCRAM-SHA-256 without channel binding.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// SASL name of SCRAM-SHA-256 with `tls-server-end-point` channel binding.
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// Iteration count used by [`ScramVerifier::generate`]; PostgreSQL's default
/// (`scram_iterations`) and what libpq's `PQencryptPasswordConn` uses.
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// Salt length used by [`ScramVerifier::generate`], as PostgreSQL does.
pub const SALT_LEN: usize = 16;

/// Random bytes the server appends to the client's nonce (PostgreSQL's `SCRAM_RAW_NONCE_LEN`).
const SERVER_NONCE_LEN: usize = 18;

/// Longest SCRAM message accepted from a client. Real messages are well under 200 bytes;
/// the bound keeps parsing cost trivially small whatever the client sends.
const MAX_CLIENT_MESSAGE_LEN: usize = 8 * 1024;

const VERIFIER_PREFIX: &str = "SCRAM-SHA-256$";
const CHANNEL_BINDING_TYPE: &str = "tls-server-end-point";

type HmacSha256 = Hmac<Sha256>;

/// Why a SCRAM exchange failed.
///
/// The `Display` text is static and safe to send to the client; it never contains a secret,
/// the verifier, or bytes the client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// The client broke the SCRAM or SASL protocol (bad syntax, unexpected message,
    /// nonce mismatch, inconsistent channel-binding flags). SQLSTATE 08P01.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// Wrong password, or a user the proxy does not know; deliberately the same error.
    /// SQLSTATE 28P01.
    #[error("password authentication failed")]
    AuthenticationFailed,
    /// The channel-binding data in client-final-message does not match this TLS connection,
    /// the sign of a man in the middle. SQLSTATE 28000, as PostgreSQL reports it.
    #[error("SCRAM channel binding check failed")]
    ChannelBindingMismatch,
    /// The client supports channel binding but believes the server does not (`y` flag) while
    /// the server does offer it: per RFC 5802 section 6 this is treated as a downgrade attack.
    /// SQLSTATE 08P01, as PostgreSQL reports it.
    #[error(
        "SCRAM channel binding negotiation error: the client supports channel binding and \
         thinks the server does not, but this server does support it"
    )]
    ChannelBindingDowngrade,
    /// The client chose a SASL mechanism the server did not offer. SQLSTATE 08P01.
    #[error("client selected an invalid SASL authentication mechanism")]
    UnsupportedMechanism,
}

impl ScramError {
    /// The SQLSTATE PostgreSQL reports for this failure, for the client's ErrorResponse.
    #[must_use]
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Self::Malformed(_) | Self::ChannelBindingDowngrade | Self::UnsupportedMechanism => {
                "08P01"
            }
            Self::AuthenticationFailed => "28P01",
            Self::ChannelBindingMismatch => "28000",
        }
    }
}

/// Why a SCRAM verifier string or a verifier request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifierError {
    /// The string is not `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    #[error("invalid SCRAM-SHA-256 verifier: {0}")]
    Invalid(&'static str),
    /// A password with non-ASCII characters needs SASLprep, which is only available here
    /// through the default iteration count (see [`ScramVerifier::generate_with_iterations`]).
    #[error(
        "passwords with non-ASCII characters can only be hashed with the default iteration \
         count ({DEFAULT_ITERATIONS})"
    )]
    NonAsciiNeedsDefaultIterations,
}

/// A SCRAM-SHA-256 password verifier: what the server stores instead of the password.
///
/// Its text form is PostgreSQL's `pg_authid.rolpassword` format,
/// `SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>`, so
/// verifiers can be copied from PostgreSQL to the proxy's user store and back.
///
/// StoredKey and ServerKey are secret-equivalent (they allow an offline dictionary attack on
/// the password, and ServerKey lets its holder impersonate the server): `Debug` redacts them,
/// equality is constant-time and they are zeroed on drop. `Display` does print them, since
/// that is the storage format.
#[derive(Clone)]
pub struct ScramVerifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl ScramVerifier {
    /// Parses PostgreSQL's verifier format.
    ///
    /// Refuses anything but canonical padded base64, an iteration count that is not a
    /// positive decimal integer, an empty salt, and keys that are not exactly 32 bytes.
    pub fn parse(s: &str) -> Result<Self, VerifierError> {
        let rest = s
            .strip_prefix(VERIFIER_PREFIX)
            .ok_or(VerifierError::Invalid("must start with \"SCRAM-SHA-256$\""))?;
        let (params, keys) = rest
            .split_once('$')
            .ok_or(VerifierError::Invalid("missing '$' before the keys"))?;
        let (iterations, salt) = params.split_once(':').ok_or(VerifierError::Invalid(
            "missing ':' between iterations and salt",
        ))?;
        let (stored_key, server_key) = keys.split_once(':').ok_or(VerifierError::Invalid(
            "missing ':' between StoredKey and ServerKey",
        ))?;

        // `u32::from_str` would also take a leading '+'; only plain digits are a valid count.
        if iterations.is_empty() || !iterations.bytes().all(|b| b.is_ascii_digit()) {
            return Err(VerifierError::Invalid(
                "iteration count is not a decimal number",
            ));
        }
        let iterations: u32 = iterations
            .parse()
            .map_err(|_| VerifierError::Invalid("iteration count is out of range"))?;
        if iterations == 0 {
            return Err(VerifierError::Invalid("iteration count must be at least 1"));
        }
        let salt = STANDARD
            .decode(salt)
            .map_err(|_| VerifierError::Invalid("salt is not valid base64"))?;
        if salt.is_empty() {
            return Err(VerifierError::Invalid("salt is empty"));
        }
        let stored_key = decode_key(stored_key).ok_or(VerifierError::Invalid(
            "StoredKey is not 32 bytes of base64",
        ))?;
        let server_key = decode_key(server_key).ok_or(VerifierError::Invalid(
            "ServerKey is not 32 bytes of base64",
        ))?;
        Ok(Self {
            iterations,
            salt,
            stored_key,
            server_key,
        })
    }

    /// Hashes `password` with a fresh random 16-byte salt and [`DEFAULT_ITERATIONS`], exactly
    /// as PostgreSQL (and libpq's `PQencryptPasswordConn`) would, SASLprep included.
    #[must_use]
    pub fn generate(password: &SecretString) -> Self {
        let password = password.expose_secret();
        if password.is_ascii() {
            return Self::derive(password.as_bytes(), &random_salt(), DEFAULT_ITERATIONS);
        }
        // Non-ASCII passwords must be SASLprep-normalised the way clients will normalise
        // them. postgres-protocol implements exactly libpq's rules (SASLprep, raw bytes when
        // SASLprep fails) for the default parameters, so let it do the hashing.
        let encoded = Zeroizing::new(postgres_protocol::password::scram_sha_256(
            password.as_bytes(),
        ));
        match Self::parse(&encoded) {
            Ok(verifier) => verifier,
            Err(_) => {
                // Unreachable unless postgres-protocol changes its output format; hashing the
                // raw bytes is still what every client does when SASLprep fails.
                tracing::error!("postgres-protocol produced an unparsable SCRAM verifier");
                Self::derive(password.as_bytes(), &random_salt(), DEFAULT_ITERATIONS)
            }
        }
    }

    /// Like [`generate`](Self::generate) with a chosen iteration count.
    ///
    /// Refuses an iteration count of 0, and a non-ASCII password with a non-default count:
    /// SASLprep is only reachable through [`generate`](Self::generate), and hashing an
    /// un-normalised password would lock out clients that normalise it. (SASLprep leaves
    /// ASCII passwords unchanged, or fails on ASCII control characters, in which case clients
    /// use the raw bytes: either way the raw bytes are right for ASCII.) Note that some
    /// clients refuse very large counts (rust-postgres: more than 100 000).
    pub fn generate_with_iterations(
        password: &SecretString,
        iterations: u32,
    ) -> Result<Self, VerifierError> {
        if iterations == 0 {
            return Err(VerifierError::Invalid("iteration count must be at least 1"));
        }
        let raw = password.expose_secret();
        if raw.is_ascii() {
            Ok(Self::derive(raw.as_bytes(), &random_salt(), iterations))
        } else if iterations == DEFAULT_ITERATIONS {
            Ok(Self::generate(password))
        } else {
            Err(VerifierError::NonAsciiNeedsDefaultIterations)
        }
    }

    /// The PBKDF2 iteration count the client must use.
    #[must_use]
    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// The salt the client must use (not secret: any client asking for this user gets it).
    #[must_use]
    pub fn salt(&self) -> &[u8] {
        &self.salt
    }

    /// RFC 5802 section 3: SaltedPassword = Hi(password, salt, i), then the two keys.
    fn derive(normalized_password: &[u8], salt: &[u8], iterations: u32) -> Self {
        let salted_password = Zeroizing::new(pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(
            normalized_password,
            salt,
            iterations,
        ));
        let client_key = Zeroizing::new(hmac_sha256(&salted_password, &[b"Client Key"]));
        Self {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(client_key.as_slice()),
            server_key: hmac_sha256(&salted_password, &[b"Server Key"]),
        }
    }

    /// A verifier for a user the proxy does not know. It is a pure function of the user name
    /// and a per-process secret, so repeated attempts for the same name see the same salt,
    /// as they would for a real user; nobody knows a password for it.
    fn mock(user: &str) -> Self {
        let secret = mock_secret();
        let derive = |label: &[u8]| hmac_sha256(secret, &[label, user.as_bytes()]);
        let salt = derive(b"portcullis scram mock salt\0");
        Self {
            iterations: DEFAULT_ITERATIONS,
            salt: salt.get(..SALT_LEN).unwrap_or(&salt).to_vec(),
            stored_key: derive(b"portcullis scram mock stored key\0"),
            server_key: derive(b"portcullis scram mock server key\0"),
        }
    }
}

impl FromStr for ScramVerifier {
    type Err = VerifierError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{VERIFIER_PREFIX}{}:{}${}:{}",
            self.iterations,
            STANDARD.encode(&self.salt),
            STANDARD.encode(self.stored_key),
            STANDARD.encode(self.server_key),
        )
    }
}

impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .field("salt", &STANDARD.encode(&self.salt))
            .field("stored_key", &"[redacted]")
            .field("server_key", &"[redacted]")
            .finish()
    }
}

impl PartialEq for ScramVerifier {
    fn eq(&self, other: &Self) -> bool {
        let keys =
            self.stored_key.ct_eq(&other.stored_key) & self.server_key.ct_eq(&other.server_key);
        self.iterations == other.iterations && self.salt == other.salt && bool::from(keys)
    }
}

impl Eq for ScramVerifier {}

impl Drop for ScramVerifier {
    fn drop(&mut self) {
        self.stored_key.zeroize();
        self.server_key.zeroize();
    }
}

/// `tls-server-end-point` channel-binding data (RFC 5929 section 4.1) for the certificate
/// `cert_der`: its DER bytes hashed with the hash function of its signature algorithm, where
/// MD5 and SHA-1 are replaced by SHA-256.
///
/// Where that hash is undefined (see [`try_tls_server_end_point`]) this falls back to SHA-256
/// of the certificate. No conforming peer computes that value, so binding then simply fails;
/// a server deciding whether to offer SCRAM-SHA-256-PLUS should use
/// [`try_tls_server_end_point`] instead.
#[must_use]
pub fn tls_server_end_point(cert_der: &[u8]) -> Vec<u8> {
    try_tls_server_end_point(cert_der).unwrap_or_else(|| EndPointHash::Sha256.digest(cert_der))
}

/// Like [`tls_server_end_point`], but `None` when the end-point hash is undefined or unknown;
/// the server must then not offer SCRAM-SHA-256-PLUS (pass `None` to [`ScramServer::new`]).
///
/// That is the case for Ed25519 and Ed448 certificates (their signatures have no separate
/// hash), for RSASSA-PSS without parameters, for hash functions outside SHA-1/SHA-2 (e.g.
/// SHA-3, which OpenSSL-based peers would support), and for bytes that are not exactly one DER
/// certificate. PostgreSQL (`be_tls_get_certificate_hash`) finds no digest for Ed25519/Ed448
/// either, but still advertises -PLUS and then fails the connection with "could not find
/// digest for NID"; libpq fails the same way on the client side. Not offering -PLUS instead
/// lets such clients authenticate without channel binding.
#[must_use]
pub fn try_tls_server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    let (rest, cert) = X509Certificate::from_der(cert_der).ok()?;
    if !rest.is_empty() {
        return None;
    }
    let hash = EndPointHash::for_signature(&cert.signature_algorithm)?;
    Some(hash.digest(cert_der))
}

/// The hash functions `tls-server-end-point` can end up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndPointHash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl EndPointHash {
    fn for_signature(algorithm: &AlgorithmIdentifier<'_>) -> Option<Self> {
        let oid = algorithm.algorithm.to_id_string();
        match oid.as_str() {
            // RSASSA-PSS names its hash in the parameters (RFC 4055; absent hash = SHA-1).
            "1.2.840.113549.1.1.10" => {
                let params = RsaSsaPssParams::try_from(algorithm.parameters.as_ref()?).ok()?;
                Self::for_digest(&params.hash_algorithm_oid().to_id_string())
            }
            // md5WithRSAEncryption, sha1WithRSAEncryption, md5WithRSA / sha1WithRSA (OIW),
            // ecdsa-with-SHA1, dsa-with-sha1: RFC 5929 says SHA-256.
            "1.2.840.113549.1.1.4"
            | "1.2.840.113549.1.1.5"
            | "1.3.14.3.2.3"
            | "1.3.14.3.2.25"
            | "1.3.14.3.2.29"
            | "1.2.840.10045.4.1"
            | "1.2.840.10040.4.3" => Some(Self::Sha256),
            // sha224WithRSAEncryption, ecdsa-with-SHA224, dsa-with-sha224
            "1.2.840.113549.1.1.14" | "1.2.840.10045.4.3.1" | "2.16.840.1.101.3.4.3.1" => {
                Some(Self::Sha224)
            }
            // sha256WithRSAEncryption, ecdsa-with-SHA256, dsa-with-sha256
            "1.2.840.113549.1.1.11" | "1.2.840.10045.4.3.2" | "2.16.840.1.101.3.4.3.2" => {
                Some(Self::Sha256)
            }
            // sha384WithRSAEncryption, ecdsa-with-SHA384
            "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => Some(Self::Sha384),
            // sha512WithRSAEncryption, ecdsa-with-SHA512
            "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => Some(Self::Sha512),
            // Ed25519 (1.3.101.112), Ed448 (1.3.101.113), SHA-3 based and unknown algorithms.
            _ => None,
        }
    }

    /// Maps a digest algorithm OID (as found in RSASSA-PSS parameters).
    fn for_digest(oid: &str) -> Option<Self> {
        match oid {
            // MD5, SHA-1: replaced by SHA-256 (RFC 5929).
            "1.2.840.113549.2.5" | "1.3.14.3.2.26" => Some(Self::Sha256),
            "2.16.840.1.101.3.4.2.4" => Some(Self::Sha224),
            "2.16.840.1.101.3.4.2.1" => Some(Self::Sha256),
            "2.16.840.1.101.3.4.2.2" => Some(Self::Sha384),
            "2.16.840.1.101.3.4.2.3" => Some(Self::Sha512),
            _ => None,
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha224 => Sha224::digest(data).to_vec(),
            Self::Sha256 => Sha256::digest(data).to_vec(),
            Self::Sha384 => Sha384::digest(data).to_vec(),
            Self::Sha512 => Sha512::digest(data).to_vec(),
        }
    }
}

/// The server side of one SCRAM-SHA-256(-PLUS) exchange.
///
/// Create one per authentication attempt, offer [`mechanisms`](Self::mechanisms) in
/// AuthenticationSASL, then feed the client's two messages to
/// [`client_first`](Self::client_first) and [`client_final`](Self::client_final). The client
/// is authenticated only when `client_final` returns `Ok`. Any error ends the exchange.
pub struct ScramServer {
    verifier: ScramVerifier,
    /// The verifier is a stand-in for an unknown user: the proof check must fail even in the
    /// (computationally infeasible) case that a client matches it.
    mock: bool,
    channel_binding: Option<Vec<u8>>,
    state: State,
}

enum State {
    AwaitingClientFirst,
    AwaitingClientFinal(Box<Pending>),
    Authenticated { channel_binding: bool },
    Failed,
}

/// What client_final needs from the first round trip.
struct Pending {
    /// The gs2 header exactly as the client sent it, e.g. `n,,` or `p=tls-server-end-point,,`.
    gs2_header: String,
    /// Whether the client selected SCRAM-SHA-256-PLUS (and so sent `p=tls-server-end-point`).
    channel_binding: bool,
    client_first_bare: String,
    server_first: String,
    /// Client nonce followed by server nonce.
    nonce: String,
}

impl ScramServer {
    /// Starts an exchange for the user named `user` in the startup packet.
    ///
    /// `verifier` is the user's verifier, or `None` when the user is unknown (or must not log
    /// in, e.g. expired): the exchange then runs against a mock verifier derived from a
    /// per-process secret and `user`, and fails at the proof check with
    /// [`ScramError::AuthenticationFailed`], the same error, after the same messages and the
    /// same work, as a wrong password. (Mock verifiers use [`DEFAULT_ITERATIONS`]; a store
    /// whose users all have that count does not leak which users exist.)
    ///
    /// `channel_binding` is this connection's `tls-server-end-point` data from
    /// [`try_tls_server_end_point`], or `None` on a connection without TLS or whose certificate
    /// has no defined end-point hash; only with it is SCRAM-SHA-256-PLUS offered.
    #[must_use]
    pub fn new(
        user: &str,
        verifier: Option<ScramVerifier>,
        channel_binding: Option<Vec<u8>>,
    ) -> Self {
        let (verifier, mock) = match verifier {
            Some(verifier) => (verifier, false),
            None => (ScramVerifier::mock(user), true),
        };
        Self {
            verifier,
            mock,
            channel_binding,
            state: State::AwaitingClientFirst,
        }
    }

    /// The SASL mechanisms to offer, in order of preference.
    #[must_use]
    pub fn mechanisms(&self) -> &'static [&'static str] {
        if self.channel_binding.is_some() {
            &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]
        } else {
            &[SCRAM_SHA_256]
        }
    }

    /// Whether the exchange has completed successfully.
    #[must_use]
    pub fn is_authenticated(&self) -> bool {
        matches!(self.state, State::Authenticated { .. })
    }

    /// Whether the exchange completed successfully *with* channel binding (SCRAM-SHA-256-PLUS).
    /// A caller that requires channel binding checks this after a successful exchange.
    #[must_use]
    pub fn channel_binding_used(&self) -> bool {
        matches!(
            self.state,
            State::Authenticated {
                channel_binding: true
            }
        )
    }

    /// Handles SASLInitialResponse: the chosen `mechanism` and the client-first-message.
    /// Returns the server-first-message for AuthenticationSASLContinue.
    ///
    /// Refuses a mechanism that was not offered, a second call, an authorization identity,
    /// mandatory extensions, and channel-binding flags inconsistent with the mechanism: `p`
    /// only with SCRAM-SHA-256-PLUS (and only `tls-server-end-point`), `n` or `y` only with
    /// SCRAM-SHA-256, and `y` not at all when -PLUS was offered (a downgrade).
    pub fn client_first(&mut self, mechanism: &str, data: &[u8]) -> Result<Vec<u8>, ScramError> {
        let state = std::mem::replace(&mut self.state, State::Failed);
        if !matches!(state, State::AwaitingClientFirst) {
            return Err(ScramError::Malformed("unexpected client-first-message"));
        }
        let pending = self.accept_client_first(mechanism, data)?;
        let reply = pending.server_first.clone().into_bytes();
        self.state = State::AwaitingClientFinal(Box::new(pending));
        Ok(reply)
    }

    /// Handles SASLResponse: the client-final-message. Returns the server-final-message
    /// (`v=<ServerSignature>`) for AuthenticationSASLFinal; the client is then authenticated.
    ///
    /// Refuses a call out of order, a channel-binding value that is not the gs2 header (plus
    /// this connection's binding data with -PLUS), a nonce other than the one agreed, and a
    /// ClientProof that does not match the verifier (compared in constant time).
    pub fn client_final(&mut self, data: &[u8]) -> Result<Vec<u8>, ScramError> {
        let State::AwaitingClientFinal(pending) = std::mem::replace(&mut self.state, State::Failed)
        else {
            return Err(ScramError::Malformed("unexpected client-final-message"));
        };
        let reply = self.accept_client_final(&pending, data)?;
        self.state = State::Authenticated {
            channel_binding: pending.channel_binding,
        };
        Ok(reply)
    }

    fn accept_client_first(&self, mechanism: &str, data: &[u8]) -> Result<Pending, ScramError> {
        let plus = match mechanism {
            SCRAM_SHA_256 => false,
            SCRAM_SHA_256_PLUS if self.channel_binding.is_some() => true,
            _ => return Err(ScramError::UnsupportedMechanism),
        };
        let message = client_message(data)?;
        let first = ClientFirst::parse(message)?;

        match first.cbind_flag {
            CbindFlag::Requested(name) => {
                if !plus {
                    return Err(ScramError::Malformed(
                        "SCRAM-SHA-256 was selected but the message requests channel binding",
                    ));
                }
                if name != CHANNEL_BINDING_TYPE {
                    return Err(ScramError::Malformed("unsupported channel-binding type"));
                }
            }
            CbindFlag::ClientOnly | CbindFlag::NotSupported if plus => {
                return Err(ScramError::Malformed(
                    "SCRAM-SHA-256-PLUS was selected but the message does not use channel binding",
                ));
            }
            CbindFlag::ClientOnly if self.channel_binding.is_some() => {
                return Err(ScramError::ChannelBindingDowngrade);
            }
            CbindFlag::ClientOnly | CbindFlag::NotSupported => {}
        }

        let mut server_nonce = [0u8; SERVER_NONCE_LEN];
        rand::fill(&mut server_nonce);
        let nonce = format!("{}{}", first.nonce, STANDARD.encode(server_nonce));
        let server_first = format!(
            "r={nonce},s={},i={}",
            STANDARD.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        Ok(Pending {
            gs2_header: first.gs2_header.to_owned(),
            channel_binding: plus,
            client_first_bare: first.bare.to_owned(),
            server_first,
            nonce,
        })
    }

    fn accept_client_final(&self, pending: &Pending, data: &[u8]) -> Result<Vec<u8>, ScramError> {
        let message = client_message(data)?;
        let last = ClientFinal::parse(message)?;

        let mut cbind_input = pending.gs2_header.as_bytes().to_vec();
        if pending.channel_binding {
            // `channel_binding` is only set when the server has binding data (-PLUS offered).
            cbind_input.extend_from_slice(self.channel_binding.as_deref().unwrap_or_default());
        }
        if !bool::from(
            last.channel_binding
                .as_bytes()
                .ct_eq(STANDARD.encode(&cbind_input).as_bytes()),
        ) {
            return Err(ScramError::ChannelBindingMismatch);
        }
        if last.nonce != pending.nonce {
            return Err(ScramError::Malformed("nonce does not match"));
        }

        let auth_message = format!(
            "{},{},{}",
            pending.client_first_bare, pending.server_first, last.without_proof
        );
        // ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage); the proof is valid iff
        // H(ClientKey) = StoredKey.
        let client_signature = hmac_sha256(&self.verifier.stored_key, &[auth_message.as_bytes()]);
        let mut client_key = Zeroizing::new(last.proof);
        for (key, signature) in client_key.iter_mut().zip(client_signature) {
            *key ^= signature;
        }
        let proof_ok = sha256(client_key.as_slice()).ct_eq(&self.verifier.stored_key)
            & subtle::Choice::from(u8::from(!self.mock));
        if !bool::from(proof_ok) {
            return Err(ScramError::AuthenticationFailed);
        }

        let server_signature = hmac_sha256(&self.verifier.server_key, &[auth_message.as_bytes()]);
        Ok(format!("v={}", STANDARD.encode(server_signature)).into_bytes())
    }
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::AwaitingClientFirst => "awaiting client-first-message",
            State::AwaitingClientFinal(_) => "awaiting client-final-message",
            State::Authenticated { .. } => "authenticated",
            State::Failed => "failed",
        };
        f.debug_struct("ScramServer")
            .field("channel_binding_offered", &self.channel_binding.is_some())
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

/// The gs2-cbind-flag of client-first-message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CbindFlag<'a> {
    /// `n`: the client does not support channel binding.
    NotSupported,
    /// `y`: the client supports channel binding but thinks the server does not.
    ClientOnly,
    /// `p=<name>`: the client uses channel binding of type `name`.
    Requested(&'a str),
}

/// client-first-message = gs2-header client-first-message-bare
struct ClientFirst<'a> {
    cbind_flag: CbindFlag<'a>,
    gs2_header: &'a str,
    bare: &'a str,
    nonce: &'a str,
}

impl<'a> ClientFirst<'a> {
    fn parse(message: &'a str) -> Result<Self, ScramError> {
        let mut gs2 = message.splitn(3, ',');
        let (Some(flag), Some(authzid), Some(bare)) = (gs2.next(), gs2.next(), gs2.next()) else {
            return Err(ScramError::Malformed(
                "client-first-message lacks a gs2 header",
            ));
        };
        let cbind_flag = match flag {
            "n" => CbindFlag::NotSupported,
            "y" => CbindFlag::ClientOnly,
            _ => match flag.strip_prefix("p=") {
                Some(name) => CbindFlag::Requested(name),
                None => return Err(ScramError::Malformed("invalid channel-binding flag")),
            },
        };
        if !authzid.is_empty() {
            return Err(ScramError::Malformed(
                "authorization identities are not supported",
            ));
        }
        let gs2_header = message
            .get(..message.len() - bare.len())
            .ok_or(ScramError::Malformed(
                "client-first-message lacks a gs2 header",
            ))?;

        let mut attributes = bare.split(',');
        let user = attributes.next().unwrap_or_default();
        if user.starts_with("m=") {
            return Err(ScramError::Malformed(
                "mandatory SCRAM extensions are not supported",
            ));
        }
        // The user name is ignored: the role comes from the startup packet.
        if user.strip_prefix("n=").is_none() {
            return Err(ScramError::Malformed("expected the username attribute"));
        }
        let nonce = attributes
            .next()
            .and_then(|attribute| attribute.strip_prefix("r="))
            .ok_or(ScramError::Malformed("expected the nonce attribute"))?;
        if !is_valid_nonce(nonce) {
            return Err(ScramError::Malformed("invalid nonce"));
        }
        // Optional extensions are allowed and ignored, but must be well-formed.
        if !attributes.all(is_attribute) {
            return Err(ScramError::Malformed(
                "invalid attribute in client-first-message",
            ));
        }
        Ok(Self {
            cbind_flag,
            gs2_header,
            bare,
            nonce,
        })
    }
}

/// client-final-message = channel-binding "," nonce ["," extensions] "," proof
struct ClientFinal<'a> {
    channel_binding: &'a str,
    nonce: &'a str,
    without_proof: &'a str,
    proof: [u8; 32],
}

impl<'a> ClientFinal<'a> {
    fn parse(message: &'a str) -> Result<Self, ScramError> {
        let (without_proof, proof) = message
            .rsplit_once(',')
            .ok_or(ScramError::Malformed("client-final-message lacks a proof"))?;
        let proof = proof.strip_prefix("p=").ok_or(ScramError::Malformed(
            "client-final-message must end with the proof",
        ))?;
        let proof = decode_key(proof).ok_or(ScramError::Malformed("invalid proof"))?;

        let mut attributes = without_proof.split(',');
        let channel_binding = attributes
            .next()
            .and_then(|attribute| attribute.strip_prefix("c="))
            .ok_or(ScramError::Malformed(
                "expected the channel-binding attribute",
            ))?;
        let nonce = attributes
            .next()
            .and_then(|attribute| attribute.strip_prefix("r="))
            .ok_or(ScramError::Malformed("expected the nonce attribute"))?;
        // Extensions are ignored; a second proof among them is not an extension.
        if !attributes.all(|attribute| is_attribute(attribute) && !attribute.starts_with("p=")) {
            return Err(ScramError::Malformed(
                "invalid attribute in client-final-message",
            ));
        }
        Ok(Self {
            channel_binding,
            nonce,
            without_proof,
            proof,
        })
    }
}

/// A client message as text, bounded in size.
fn client_message(data: &[u8]) -> Result<&str, ScramError> {
    if data.len() > MAX_CLIENT_MESSAGE_LEN {
        return Err(ScramError::Malformed("message too long"));
    }
    std::str::from_utf8(data).map_err(|_| ScramError::Malformed("message is not valid UTF-8"))
}

/// RFC 5802: `printable = %x21-2B / %x2D-7E` (visible ASCII except ',').
fn is_valid_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| matches!(b, 0x21..=0x2B | 0x2D..=0x7E))
}

/// RFC 5802: `attr-val = ALPHA "=" value`.
fn is_attribute(attribute: &str) -> bool {
    let bytes = attribute.as_bytes();
    bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b'='
}

/// Canonical padded base64 of exactly 32 bytes.
fn decode_key(encoded: &str) -> Option<[u8; 32]> {
    let mut decoded = Zeroizing::new(STANDARD.decode(encoded).ok()?);
    let key = <[u8; 32]>::try_from(decoded.as_slice()).ok();
    decoded.zeroize();
    key
}

fn random_salt() -> [u8; SALT_LEN] {
    let mut salt = [0u8; SALT_LEN];
    rand::fill(&mut salt);
    salt
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// HMAC-SHA-256 keyed with a 32-byte key over the concatenation of `parts`.
fn hmac_sha256(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC pads keys shorter than the hash block with zeros (RFC 2104 section 2), so this
    // block-sized key is the same key, and `KeyInit::new` takes it without a fallible length
    // check.
    let mut block = hmac::digest::Key::<HmacSha256>::default();
    for (dst, src) in block.iter_mut().zip(key) {
        *dst = *src;
    }
    let mut mac = HmacSha256::new(&block);
    block.as_mut_slice().zeroize();
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// The per-process secret behind mock verifiers for unknown users.
fn mock_secret() -> &'static [u8; 32] {
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    SECRET.get_or_init(|| {
        let mut secret = [0u8; 32];
        rand::fill(&mut secret);
        secret
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    use rand::rngs::StdRng;
    use rand::{RngExt as _, SeedableRng as _};

    /// `SET password_encryption='scram-sha-256'; CREATE ROLE ... PASSWORD 'probe-pass'` on
    /// PostgreSQL 15.20, read back from `pg_authid.rolpassword`.
    const PG15_PROBE_PASS: &str = "SCRAM-SHA-256$4096:P46x4u1l8BhVgNu/XO3H0A==$HFikufgdN3qTlTOxoHqy0a2yO17lCWgaMJAgirkweK8=:okuZjZqofdhMVAU+11MAwiAcoPmSLMSq1qAnFAN1xi0=";

    /// The same for the password U&'\FB01x\00A0y' ("ﬁx" NBSP "y"), which SASLprep turns into
    /// "fix y".
    const PG15_SASLPREP: &str = "SCRAM-SHA-256$4096:j4it+MJJUJlRQtDUqlT7og==$Oa2q5+4bgV4ifumK0dzD9p3glHGgJapWzAB7tAKJzTA=:xpMaAoUCgVR3H8+eweoRCbc/t28cQcbVbxg7baggLko=";

    const CB_DATA: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn secret(password: &str) -> SecretString {
        SecretString::from(password.to_owned())
    }

    /// Runs a whole exchange with the rust-postgres client; Ok only if both sides agree.
    fn exchange(
        server: &mut ScramServer,
        mechanism: &str,
        password: &str,
        binding: ChannelBinding,
    ) -> Result<(), ScramError> {
        let mut client = ScramSha256::new(password.as_bytes(), binding);
        let server_first = server.client_first(mechanism, client.message())?;
        client
            .update(&server_first)
            .expect("client accepts server-first");
        let server_final = server.client_final(client.message())?;
        client
            .finish(&server_final)
            .expect("client verifies the server signature");
        assert!(server.is_authenticated());
        Ok(())
    }

    fn server_for(password: &str, channel_binding: Option<Vec<u8>>) -> ScramServer {
        let verifier = ScramVerifier::generate(&secret(password));
        ScramServer::new("alice", Some(verifier), channel_binding)
    }

    /// Runs client-first with a real client and returns (server, client-final-message).
    fn up_to_client_final(
        channel_binding: Option<Vec<u8>>,
        mechanism: &str,
        binding: ChannelBinding,
        password: &str,
    ) -> (ScramServer, String) {
        let mut server = server_for("correct horse", channel_binding);
        let mut client = ScramSha256::new(password.as_bytes(), binding);
        let server_first = server.client_first(mechanism, client.message()).unwrap();
        client.update(&server_first).unwrap();
        let client_final = String::from_utf8(client.message().to_vec()).unwrap();
        (server, client_final)
    }

    #[test]
    fn plain_exchange_succeeds() {
        let mut server = server_for("correct horse", None);
        assert_eq!(server.mechanisms(), &[SCRAM_SHA_256]);
        exchange(
            &mut server,
            SCRAM_SHA_256,
            "correct horse",
            ChannelBinding::unsupported(),
        )
        .unwrap();
        assert!(!server.channel_binding_used());
    }

    #[test]
    fn plain_exchange_with_y_flag_succeeds_without_server_binding() {
        let mut server = server_for("correct horse", None);
        exchange(
            &mut server,
            SCRAM_SHA_256,
            "correct horse",
            ChannelBinding::unrequested(),
        )
        .unwrap();
    }

    #[test]
    fn plus_exchange_succeeds() {
        let mut server = server_for("correct horse", Some(CB_DATA.to_vec()));
        assert_eq!(server.mechanisms(), &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]);
        exchange(
            &mut server,
            SCRAM_SHA_256_PLUS,
            "correct horse",
            ChannelBinding::tls_server_end_point(CB_DATA.to_vec()),
        )
        .unwrap();
        assert!(server.channel_binding_used());
    }

    #[test]
    fn plain_n_flag_is_accepted_when_plus_is_offered() {
        let mut server = server_for("correct horse", Some(CB_DATA.to_vec()));
        exchange(
            &mut server,
            SCRAM_SHA_256,
            "correct horse",
            ChannelBinding::unsupported(),
        )
        .unwrap();
        assert!(!server.channel_binding_used());
    }

    #[test]
    fn wrong_password_fails() {
        let mut server = server_for("correct horse", None);
        let err = exchange(
            &mut server,
            SCRAM_SHA_256,
            "battery staple",
            ChannelBinding::unsupported(),
        )
        .unwrap_err();
        assert_eq!(err, ScramError::AuthenticationFailed);
        assert_eq!(err.sqlstate(), "28P01");
        assert!(!server.is_authenticated());
    }

    #[test]
    fn unknown_user_fails_like_a_wrong_password() {
        let mut client = ScramSha256::new(b"whatever", ChannelBinding::unsupported());
        let mut unknown = ScramServer::new("mallory", None, None);
        let server_first = unknown
            .client_first(SCRAM_SHA_256, client.message())
            .unwrap();
        let text = String::from_utf8(server_first.clone()).unwrap();
        // Same shape as for a real user: nonce, 16-byte salt, default iterations.
        let salt = text.split(',').nth(1).unwrap().strip_prefix("s=").unwrap();
        assert_eq!(STANDARD.decode(salt).unwrap().len(), SALT_LEN);
        assert!(text.ends_with(",i=4096"));
        client.update(&server_first).unwrap();
        let err = unknown.client_final(client.message()).unwrap_err();
        assert_eq!(err, ScramError::AuthenticationFailed);
        assert_eq!(
            err.to_string(),
            ScramError::AuthenticationFailed.to_string()
        );
    }

    #[test]
    fn unknown_user_salt_is_stable_per_name() {
        let salt_of = |user: &str| {
            let mut server = ScramServer::new(user, None, None);
            let reply = server.client_first(SCRAM_SHA_256, b"n,,n=,r=abc").unwrap();
            String::from_utf8(reply)
                .unwrap()
                .split(',')
                .nth(1)
                .unwrap()
                .to_owned()
        };
        assert_eq!(salt_of("mallory"), salt_of("mallory"));
        assert_ne!(salt_of("mallory"), salt_of("trudy"));
    }

    #[test]
    fn unknown_user_cannot_log_in_even_with_a_matching_proof() {
        // A verifier the client's password does match, flagged as a stand-in: still refused.
        let verifier = ScramVerifier::generate(&secret("x"));
        let mut server = ScramServer::new("mallory", Some(verifier), None);
        server.mock = true;
        let mut client = ScramSha256::new(b"x", ChannelBinding::unsupported());
        let first = server
            .client_first(SCRAM_SHA_256, client.message())
            .unwrap();
        client.update(&first).unwrap();
        assert_eq!(
            server.client_final(client.message()),
            Err(ScramError::AuthenticationFailed)
        );
    }

    #[test]
    fn tampered_proof_fails() {
        let (mut server, client_final) = up_to_client_final(
            None,
            SCRAM_SHA_256,
            ChannelBinding::unsupported(),
            "correct horse",
        );
        let (head, proof) = client_final.rsplit_once(",p=").unwrap();
        let mut proof = STANDARD.decode(proof).unwrap();
        proof[0] ^= 1;
        let tampered = format!("{head},p={}", STANDARD.encode(proof));
        assert_eq!(
            server.client_final(tampered.as_bytes()),
            Err(ScramError::AuthenticationFailed)
        );
    }

    #[test]
    fn tampered_nonce_fails() {
        let (mut server, client_final) = up_to_client_final(
            None,
            SCRAM_SHA_256,
            ChannelBinding::unsupported(),
            "correct horse",
        );
        let tampered = client_final.replacen(",r=", ",r=X", 1);
        let err = server.client_final(tampered.as_bytes()).unwrap_err();
        assert_eq!(err, ScramError::Malformed("nonce does not match"));
        assert_eq!(err.sqlstate(), "08P01");
    }

    #[test]
    fn channel_binding_mismatch_fails() {
        let mut server = server_for("correct horse", Some(CB_DATA.to_vec()));
        let err = exchange(
            &mut server,
            SCRAM_SHA_256_PLUS,
            "correct horse",
            ChannelBinding::tls_server_end_point(b"another certificate's hash".to_vec()),
        )
        .unwrap_err();
        assert_eq!(err, ScramError::ChannelBindingMismatch);
        assert_eq!(err.sqlstate(), "28000");
    }

    #[test]
    fn channel_binding_value_must_match_the_gs2_header() {
        // Client-first said "n,,", client-final claims "y,," (base64 "eSws").
        let (mut server, client_final) = up_to_client_final(
            None,
            SCRAM_SHA_256,
            ChannelBinding::unsupported(),
            "correct horse",
        );
        let tampered = client_final.replacen("c=biws", "c=eSws", 1);
        assert_eq!(
            server.client_final(tampered.as_bytes()),
            Err(ScramError::ChannelBindingMismatch)
        );
    }

    #[test]
    fn downgrade_y_flag_is_refused_when_plus_is_offered() {
        let mut server = server_for("correct horse", Some(CB_DATA.to_vec()));
        let err = exchange(
            &mut server,
            SCRAM_SHA_256,
            "correct horse",
            ChannelBinding::unrequested(),
        )
        .unwrap_err();
        assert_eq!(err, ScramError::ChannelBindingDowngrade);
        assert_eq!(err.sqlstate(), "08P01");
    }

    #[test]
    fn mechanism_and_flag_rules() {
        // (server binding data, mechanism, client-first-message, expected error)
        type Case = (
            Option<&'static [u8]>,
            &'static str,
            &'static [u8],
            ScramError,
        );
        let cases: &[Case] = &[
            (
                None,
                SCRAM_SHA_256_PLUS,
                b"p=tls-server-end-point,,n=,r=abc",
                ScramError::UnsupportedMechanism,
            ),
            (
                None,
                "SCRAM-SHA-1",
                b"n,,n=,r=abc",
                ScramError::UnsupportedMechanism,
            ),
            (
                Some(CB_DATA),
                "",
                b"n,,n=,r=abc",
                ScramError::UnsupportedMechanism,
            ),
            (
                Some(CB_DATA),
                SCRAM_SHA_256,
                b"p=tls-server-end-point,,n=,r=abc",
                ScramError::Malformed(
                    "SCRAM-SHA-256 was selected but the message requests channel binding",
                ),
            ),
            (
                Some(CB_DATA),
                SCRAM_SHA_256_PLUS,
                b"n,,n=,r=abc",
                ScramError::Malformed(
                    "SCRAM-SHA-256-PLUS was selected but the message does not use channel binding",
                ),
            ),
            (
                Some(CB_DATA),
                SCRAM_SHA_256_PLUS,
                b"y,,n=,r=abc",
                ScramError::Malformed(
                    "SCRAM-SHA-256-PLUS was selected but the message does not use channel binding",
                ),
            ),
            (
                Some(CB_DATA),
                SCRAM_SHA_256_PLUS,
                b"p=tls-unique,,n=,r=abc",
                ScramError::Malformed("unsupported channel-binding type"),
            ),
            (
                None,
                SCRAM_SHA_256,
                b"n,a=admin,n=,r=abc",
                ScramError::Malformed("authorization identities are not supported"),
            ),
            (
                None,
                SCRAM_SHA_256,
                b"n,,m=ext,n=,r=abc",
                ScramError::Malformed("mandatory SCRAM extensions are not supported"),
            ),
            (
                None,
                SCRAM_SHA_256,
                b"n,,n=,r=",
                ScramError::Malformed("invalid nonce"),
            ),
            (
                None,
                SCRAM_SHA_256,
                b"n,,n=,r=a\x7fb",
                ScramError::Malformed("invalid nonce"),
            ),
            (
                None,
                SCRAM_SHA_256,
                b"x,,n=,r=abc",
                ScramError::Malformed("invalid channel-binding flag"),
            ),
        ];
        for (cb, mechanism, message, expected) in cases {
            let mut server = server_for("pw", cb.map(<[u8]>::to_vec));
            assert_eq!(
                server.client_first(mechanism, message),
                Err(*expected),
                "{mechanism} {}",
                String::from_utf8_lossy(message)
            );
        }
    }

    #[test]
    fn user_name_in_client_first_is_ignored() {
        let mut server = server_for("pw", None);
        let reply = server
            .client_first(SCRAM_SHA_256, b"n,,n=someone-else,r=abc,x=extension")
            .unwrap();
        assert!(reply.starts_with(b"r=abc"));
    }

    #[test]
    fn server_nonce_extends_client_nonce_with_18_random_bytes() {
        let mut server = server_for("pw", None);
        let reply =
            String::from_utf8(server.client_first(SCRAM_SHA_256, b"n,,n=,r=abc").unwrap()).unwrap();
        let nonce = reply
            .split(',')
            .next()
            .unwrap()
            .strip_prefix("r=abc")
            .unwrap();
        assert_eq!(STANDARD.decode(nonce).unwrap().len(), SERVER_NONCE_LEN);
    }

    #[test]
    fn messages_out_of_order_are_malformed() {
        let mut server = server_for("pw", None);
        assert!(matches!(
            server.client_final(b"c=biws,r=abc,p=AAAA"),
            Err(ScramError::Malformed(_))
        ));
        // The failed exchange stays failed.
        assert!(matches!(
            server.client_first(SCRAM_SHA_256, b"n,,n=,r=abc"),
            Err(ScramError::Malformed(_))
        ));

        let mut server = server_for("pw", None);
        server.client_first(SCRAM_SHA_256, b"n,,n=,r=abc").unwrap();
        assert!(matches!(
            server.client_first(SCRAM_SHA_256, b"n,,n=,r=abc"),
            Err(ScramError::Malformed(_))
        ));

        let mut server = server_for("correct horse", None);
        exchange(
            &mut server,
            SCRAM_SHA_256,
            "correct horse",
            ChannelBinding::unsupported(),
        )
        .unwrap();
        assert!(matches!(
            server.client_final(b"c=biws,r=abc,p=AAAA"),
            Err(ScramError::Malformed(_))
        ));
        // A finished exchange keeps no authenticated state after misuse.
        assert!(!server.is_authenticated());
    }

    #[test]
    fn garbage_never_panics_and_never_authenticates() {
        let (_, valid_final) =
            up_to_client_final(None, SCRAM_SHA_256, ChannelBinding::unsupported(), "pw");
        let valid_first = b"n,,n=,r=fyko+d2lbbFgONRv9qkxdawL".to_vec();
        let mut rng = StdRng::seed_from_u64(0x5c4a);
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        for message in [valid_first.clone(), valid_final.clone().into_bytes()] {
            for cut in 0..=message.len() {
                inputs.push(message[..cut].to_vec());
            }
            for _ in 0..200 {
                let mut mutated = message.clone();
                let at = rng.random_range(0..mutated.len());
                mutated[at] = rng.random();
                inputs.push(mutated);
            }
        }
        for _ in 0..500 {
            let len = rng.random_range(0..64);
            let alphabet = b"nyp=,ra-cbiws+/09\x00\xff";
            inputs.push(
                (0..len)
                    .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                    .collect(),
            );
        }
        inputs.push(vec![b'a'; MAX_CLIENT_MESSAGE_LEN + 1]);

        // One verifier for all: PBKDF2 is slow in unoptimised test builds.
        let verifier = ScramVerifier::generate(&secret("pw"));
        for input in &inputs {
            for cb in [None, Some(CB_DATA.to_vec())] {
                for mechanism in [SCRAM_SHA_256, SCRAM_SHA_256_PLUS] {
                    let mut server = ScramServer::new("u", Some(verifier.clone()), cb.clone());
                    let _ = server.client_first(mechanism, input);
                    assert!(!server.is_authenticated());

                    let mut server = ScramServer::new("u", Some(verifier.clone()), cb.clone());
                    if server.client_first(mechanism, &valid_first).is_ok() {
                        assert!(server.client_final(input).is_err());
                        assert!(!server.is_authenticated());
                    }
                }
            }
        }
    }

    #[test]
    fn verifier_round_trip() {
        let verifier = ScramVerifier::parse(PG15_PROBE_PASS).unwrap();
        assert_eq!(verifier.iterations(), 4096);
        assert_eq!(verifier.salt().len(), 16);
        assert_eq!(verifier.to_string(), PG15_PROBE_PASS);
        assert_eq!(PG15_PROBE_PASS.parse::<ScramVerifier>().unwrap(), verifier);

        let generated = ScramVerifier::generate(&secret("pw"));
        assert_eq!(
            ScramVerifier::parse(&generated.to_string()).unwrap(),
            generated
        );
        assert_ne!(
            ScramVerifier::generate(&secret("pw")),
            generated,
            "salt is random"
        );
    }

    #[test]
    fn verifier_parse_refuses_malformed_strings() {
        let good = PG15_PROBE_PASS;
        let bad = [
            String::new(),
            good.replace("SCRAM-SHA-256$", "SCRAM-SHA-1$"),
            good.replace("$4096:", "$0:"),
            good.replace("$4096:", "$+4096:"),
            good.replace("$4096:", "$-1:"),
            good.replace("$4096:", "$99999999999:"),
            good.replace("$4096:", "$:"),
            good.replace("$4096:", "$4096"),
            good.replace("P46x4u1l8BhVgNu/XO3H0A==", ""),
            good.replace("P46x4u1l8BhVgNu/XO3H0A==", "P46x4u1l8BhVgNu/XO3H0A"),
            good.replace("P46x4u1l8BhVgNu/XO3H0A==", "!!!!"),
            good.replace("HFikufgdN3qTlTOxoHqy0a2yO17lCWgaMJAgirkweK8=", "AAAA"),
            good.replace(":okuZ", "okuZ"),
            format!("{good} "),
            format!(" {good}"),
            format!("{good}$extra"),
        ];
        for candidate in &bad {
            assert!(ScramVerifier::parse(candidate).is_err(), "{candidate:?}");
        }
    }

    #[test]
    fn verifier_debug_redacts_keys() {
        let verifier = ScramVerifier::parse(PG15_PROBE_PASS).unwrap();
        let debug = format!("{verifier:?}");
        assert!(debug.contains("[redacted]"));
        assert!(!debug.contains("HFikufgdN3qT"));
        assert!(!debug.contains("okuZjZqofdhM"));
        let server = ScramServer::new("alice", Some(verifier), None);
        assert!(!format!("{server:?}").contains("HFikufgdN3qT"));
    }

    #[test]
    fn postgres_15_verifier_authenticates() {
        let verifier = ScramVerifier::parse(PG15_PROBE_PASS).unwrap();
        let mut server = ScramServer::new("portcullis_scram_probe", Some(verifier.clone()), None);
        exchange(
            &mut server,
            SCRAM_SHA_256,
            "probe-pass",
            ChannelBinding::unsupported(),
        )
        .unwrap();

        let mut server = ScramServer::new(
            "portcullis_scram_probe",
            Some(verifier.clone()),
            Some(CB_DATA.to_vec()),
        );
        exchange(
            &mut server,
            SCRAM_SHA_256_PLUS,
            "probe-pass",
            ChannelBinding::tls_server_end_point(CB_DATA.to_vec()),
        )
        .unwrap();

        let mut server = ScramServer::new("portcullis_scram_probe", Some(verifier), None);
        assert_eq!(
            exchange(
                &mut server,
                SCRAM_SHA_256,
                "probe-pass!",
                ChannelBinding::unsupported()
            ),
            Err(ScramError::AuthenticationFailed)
        );
    }

    #[test]
    fn own_derivation_matches_postgres() {
        let pg = ScramVerifier::parse(PG15_PROBE_PASS).unwrap();
        let ours = ScramVerifier::derive(b"probe-pass", pg.salt(), pg.iterations());
        assert_eq!(ours.to_string(), PG15_PROBE_PASS);
    }

    #[test]
    fn saslprep_passwords_match_postgres() {
        // The PostgreSQL verifier accepts both spellings, since clients SASLprep them alike.
        let pg = ScramVerifier::parse(PG15_SASLPREP).unwrap();
        for password in ["\u{FB01}x\u{00A0}y", "fix y"] {
            let mut server = ScramServer::new("u", Some(pg.clone()), None);
            exchange(
                &mut server,
                SCRAM_SHA_256,
                password,
                ChannelBinding::unsupported(),
            )
            .unwrap();
        }
        // And so does a verifier we generate from the un-normalised password.
        let ours = ScramVerifier::generate(&secret("\u{FB01}x\u{00A0}y"));
        let mut server = ScramServer::new("u", Some(ours), None);
        exchange(
            &mut server,
            SCRAM_SHA_256,
            "fix y",
            ChannelBinding::unsupported(),
        )
        .unwrap();
    }

    #[test]
    fn generate_with_iterations() {
        let verifier = ScramVerifier::generate_with_iterations(&secret("pw"), 10).unwrap();
        assert_eq!(verifier.iterations(), 10);
        let mut server = ScramServer::new("u", Some(verifier), None);
        exchange(
            &mut server,
            SCRAM_SHA_256,
            "pw",
            ChannelBinding::unsupported(),
        )
        .unwrap();

        assert!(ScramVerifier::generate_with_iterations(&secret("pw"), 0).is_err());
        assert_eq!(
            ScramVerifier::generate_with_iterations(&secret("p\u{e9}"), 10),
            Err(VerifierError::NonAsciiNeedsDefaultIterations)
        );
        assert!(
            ScramVerifier::generate_with_iterations(&secret("p\u{e9}"), DEFAULT_ITERATIONS).is_ok()
        );
    }

    #[test]
    fn hmac_helper_matches_rfc_4231_style_reference() {
        // Cross-check the block-padding shortcut against the ordinary variable-length API.
        let key = [7u8; 32];
        let mut reference = HmacSha256::new_from_slice(&key).unwrap();
        reference.update(b"Client Key");
        let expected: [u8; 32] = reference.finalize().into_bytes().into();
        assert_eq!(hmac_sha256(&key, &[b"Client", b" Key"]), expected);
    }

    fn certificate(algorithm: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(algorithm).unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn tls_server_end_point_uses_the_signature_hash() {
        let p256 = certificate(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            try_tls_server_end_point(&p256),
            Some(Sha256::digest(&p256).to_vec())
        );
        assert_eq!(tls_server_end_point(&p256), Sha256::digest(&p256).to_vec());
        let p384 = certificate(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(
            try_tls_server_end_point(&p384),
            Some(Sha384::digest(&p384).to_vec())
        );
        assert_eq!(tls_server_end_point(&p384), Sha384::digest(&p384).to_vec());
    }

    #[test]
    fn tls_server_end_point_is_undefined_for_ed25519_and_garbage() {
        let ed25519 = certificate(&rcgen::PKCS_ED25519);
        assert_eq!(try_tls_server_end_point(&ed25519), None);
        assert_eq!(
            tls_server_end_point(&ed25519),
            Sha256::digest(&ed25519).to_vec()
        );
        assert_eq!(try_tls_server_end_point(b""), None);
        assert_eq!(try_tls_server_end_point(b"not a certificate"), None);
        assert_eq!(tls_server_end_point(b"not a certificate").len(), 32);
        let mut trailing = certificate(&rcgen::PKCS_ECDSA_P256_SHA256);
        trailing.push(0);
        assert_eq!(try_tls_server_end_point(&trailing), None);
    }

    #[test]
    fn end_point_hash_table() {
        assert_eq!(
            EndPointHash::for_digest("1.3.14.3.2.26"),
            Some(EndPointHash::Sha256)
        );
        assert_eq!(
            EndPointHash::for_digest("1.2.840.113549.2.5"),
            Some(EndPointHash::Sha256)
        );
        assert_eq!(
            EndPointHash::for_digest("2.16.840.1.101.3.4.2.3"),
            Some(EndPointHash::Sha512)
        );
        assert_eq!(EndPointHash::for_digest("2.16.840.1.101.3.4.2.8"), None);
    }
}
