//! The proxy's connection to the real database: TCP or TLS, then startup and
//! authentication (SCRAM-SHA-256, MD5, cleartext or trust) with credentials taken by
//! reference from the configuration.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pgwire::messages::startup::{Authentication, Password, SASLInitialResponse, SASLResponse};
use pgwire::messages::{DecodeContext, Message, ProtocolVersion};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use rustls::ClientConfig;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{ConfigError, UpstreamConfig, UpstreamSslMode};
use crate::pg::error::{field, sqlstate};
use crate::pg::startup::{encode_cancel, encode_ssl_request, encode_startup};
use crate::pg::{Framer, PgError, RawMessage};
use crate::stream::Stream;
use crate::tls::load_certs;

/// Largest message accepted from the server before the session is established.
const MAX_STARTUP_MESSAGE: usize = 1024 * 1024;

/// Why the upstream session could not be established.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect failed or timed out.
    #[error("could not connect to {addr}: {source}")]
    Connect {
        /// host:port.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// TLS negotiation failed.
    #[error("TLS with upstream: {0}")]
    Tls(String),
    /// The server answered with an ErrorResponse during startup.
    #[error("upstream refused the session: {code} {message}")]
    Refused {
        /// Its SQLSTATE.
        code: String,
        /// Its message.
        message: String,
        /// The raw ErrorResponse, to be relayed to the client.
        raw: BytesMut,
    },
    /// The server asked for an authentication method the proxy cannot satisfy.
    #[error("upstream authentication: {0}")]
    Auth(String),
    /// The server broke the protocol.
    #[error("upstream protocol violation: {0}")]
    Protocol(String),
    /// The connection timed out.
    #[error("upstream did not finish startup within {0:?}")]
    Timeout(Duration),
    /// Socket error after connect.
    #[error("upstream I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl UpstreamError {
    /// What the client is told: a FATAL with 08001 (or the server's own error when it
    /// is about the client's request, such as an unknown database).
    pub fn client_error(&self) -> PgError {
        match self {
            Self::Refused { code, message, .. } if code.starts_with("3D") || code == "53300" => {
                // Unknown database or too many connections: the client may know.
                PgError::fatal(
                    if code == "53300" {
                        sqlstate::TOO_MANY_CONNECTIONS
                    } else {
                        "3D000"
                    },
                    message.clone(),
                )
            }
            _ => PgError::fatal(
                sqlstate::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
                "portcullis: could not establish a connection to the database server",
            )
            .with_hint("the proxy's log has the details"),
        }
    }
}

/// An authenticated upstream session, ready for queries.
pub struct Upstream {
    /// The connection.
    pub stream: Stream,
    /// ParameterStatus messages the server sent, raw, to relay to the client.
    pub parameter_status: Vec<RawMessage>,
    /// The server's BackendKeyData (pid, secret) for cancellation.
    pub backend_key: (i32, i32),
    /// Bytes read past ReadyForQuery (normally none).
    pub leftover: BytesMut,
}

/// Where and how to cancel a statement on the upstream server.
#[derive(Clone)]
pub struct CancelTarget {
    connector: Arc<Connector>,
    pid: i32,
    secret: i32,
}

impl CancelTarget {
    /// The upstream backend's process id.
    pub fn backend_pid(&self) -> i32 {
        self.pid
    }

    /// Sends the CancelRequest to the server on a new connection.
    pub async fn cancel(&self) -> Result<(), UpstreamError> {
        let mut stream = self.connector.open().await?;
        let mut buf = BytesMut::new();
        encode_cancel(self.pid, self.secret, &mut buf);
        stream.write_all(&buf).await?;
        stream.flush().await?;
        // The server closes the connection once it has read the request.
        let mut sink = [0u8; 16];
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut sink)).await;
        Ok(())
    }
}

/// Opens upstream sessions according to `[upstream]`.
pub struct Connector {
    host: String,
    port: u16,
    default_user: String,
    password: Option<SecretString>,
    database: Option<String>,
    sslmode: UpstreamSslMode,
    tls: Option<Arc<ClientConfig>>,
    timeout: Duration,
}

impl Connector {
    /// Resolves the password reference and builds the TLS client configuration.
    pub fn new(cfg: &UpstreamConfig) -> Result<Self, ConfigError> {
        let password = cfg.password.as_ref().map(|r| r.resolve()).transpose()?;
        let tls = match cfg.sslmode {
            UpstreamSslMode::Disable => None,
            mode => Some(Arc::new(client_tls_config(mode, cfg.ca_file.as_deref())?)),
        };
        Ok(Self {
            host: cfg.host.clone(),
            port: cfg.port,
            default_user: cfg.user.clone(),
            password,
            database: cfg.database.clone(),
            sslmode: cfg.sslmode,
            tls,
            timeout: Duration::from_secs(cfg.connect_timeout_secs.max(1)),
        })
    }

    /// The role used when a user record names none.
    pub fn default_user(&self) -> &str {
        &self.default_user
    }

    /// Opens and authenticates a session as `user` on `database` (or the configured
    /// one), passing the client's allowed startup parameters along.
    pub async fn connect(
        self: &Arc<Self>,
        user: &str,
        database: &str,
        extra: &BTreeMap<String, String>,
    ) -> Result<(Upstream, CancelTarget), UpstreamError> {
        let fut = async {
            let mut stream = self.open().await?;
            let mut params = extra.clone();
            // The proxy analyses statements as UTF-8 with standard-conforming strings;
            // the server must read them the same way whatever its database or role
            // defaults say. Startup values are also what RESET ALL returns to.
            params.retain(|k, _| {
                !k.eq_ignore_ascii_case("client_encoding")
                    && !k.eq_ignore_ascii_case("standard_conforming_strings")
            });
            params.insert("client_encoding".into(), "UTF8".into());
            params.insert("standard_conforming_strings".into(), "on".into());
            params.insert("user".into(), user.into());
            params.insert(
                "database".into(),
                self.database.clone().unwrap_or_else(|| database.to_owned()),
            );
            let mut buf = BytesMut::new();
            encode_startup(&params, &mut buf);
            stream.write_all(&buf).await?;
            stream.flush().await?;
            let upstream = self.authenticate(stream, user).await?;
            let target = CancelTarget {
                connector: Arc::clone(self),
                pid: upstream.backend_key.0,
                secret: upstream.backend_key.1,
            };
            Ok((upstream, target))
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| UpstreamError::Timeout(self.timeout))?
    }

    /// TCP connect plus, if configured, SSLRequest and the TLS handshake.
    async fn open(&self) -> Result<Stream, UpstreamError> {
        let addr = format!("{}:{}", self.host, self.port);
        let tcp = tokio::time::timeout(self.timeout, TcpStream::connect(&addr))
            .await
            .map_err(|_| UpstreamError::Timeout(self.timeout))?
            .map_err(|source| UpstreamError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(Stream::Plain(tcp));
        };
        let mut tcp = tcp;
        let mut buf = BytesMut::new();
        encode_ssl_request(&mut buf);
        tcp.write_all(&buf).await?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await?;
        match answer[0] {
            b'S' => {}
            b'N' if self.sslmode == UpstreamSslMode::Prefer => return Ok(Stream::Plain(tcp)),
            b'N' => return Err(UpstreamError::Tls("server does not support TLS".into())),
            other => {
                return Err(UpstreamError::Protocol(format!(
                    "unexpected answer {other:#04x} to SSLRequest"
                )));
            }
        }
        let name = ServerName::try_from(self.host.clone())
            .map_err(|e| UpstreamError::Tls(format!("invalid server name {}: {e}", self.host)))?;
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(tls));
        let stream = connector
            .connect(name, tcp)
            .await
            .map_err(|e| UpstreamError::Tls(e.to_string()))?;
        Ok(Stream::ClientTls(Box::new(stream)))
    }

    async fn authenticate(
        &self,
        mut stream: Stream,
        user: &str,
    ) -> Result<Upstream, UpstreamError> {
        let mut framer = Framer::new(MAX_STARTUP_MESSAGE);
        let mut scram: Option<ScramSha256> = None;
        let mut parameter_status = Vec::new();
        let mut backend_key = (0, 0);
        let ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
        loop {
            let msg = framer
                .next(&mut stream)
                .await
                .map_err(|e| UpstreamError::Protocol(e.to_string()))?
                .ok_or_else(|| {
                    UpstreamError::Protocol("server closed the connection during startup".into())
                })?;
            match msg.tag {
                b'R' => {
                    let mut raw = msg.raw;
                    let auth = Authentication::decode(&mut raw, &ctx)
                        .map_err(|e| {
                            UpstreamError::Auth(format!("unsupported authentication request: {e}"))
                        })?
                        .ok_or_else(|| {
                            UpstreamError::Protocol("short authentication message".into())
                        })?;
                    let reply = self.answer_auth(auth, &mut scram, user, &stream)?;
                    if let Some(reply) = reply {
                        stream.write_all(&reply).await?;
                        stream.flush().await?;
                    }
                }
                b'S' => parameter_status.push(msg),
                b'K' => {
                    let body = msg.body();
                    if body.len() != 8 {
                        return Err(UpstreamError::Protocol(
                            "BackendKeyData of unexpected length".into(),
                        ));
                    }
                    backend_key = (
                        i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                        i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                    );
                }
                b'N' => {}
                b'Z' => {
                    return Ok(Upstream {
                        stream,
                        parameter_status,
                        backend_key,
                        leftover: framer.into_buffer(),
                    });
                }
                b'E' => {
                    let body = msg.body();
                    let code = field(body, b'C')
                        .map(String::from_utf8_lossy)
                        .unwrap_or_default()
                        .into_owned();
                    let message = field(body, b'M')
                        .map(String::from_utf8_lossy)
                        .unwrap_or_default()
                        .into_owned();
                    return Err(UpstreamError::Refused {
                        code,
                        message,
                        raw: msg.raw,
                    });
                }
                other => {
                    return Err(UpstreamError::Protocol(format!(
                        "unexpected message {:?} during startup",
                        char::from(other)
                    )));
                }
            }
        }
    }

    /// The reply to one authentication request, if it needs one.
    fn answer_auth(
        &self,
        auth: Authentication,
        scram: &mut Option<ScramSha256>,
        user: &str,
        stream: &Stream,
    ) -> Result<Option<BytesMut>, UpstreamError> {
        let mut out = BytesMut::new();
        let encode_err = |e: pgwire::error::PgWireError| UpstreamError::Protocol(e.to_string());
        let password = || {
            self.password.as_ref().ok_or_else(|| {
                UpstreamError::Auth(
                    "server wants a password but upstream.password is not set".into(),
                )
            })
        };
        match auth {
            Authentication::Ok => return Ok(None),
            Authentication::CleartextPassword => {
                Password::new(password()?.expose_secret().to_owned())
                    .encode(&mut out)
                    .map_err(encode_err)?;
            }
            Authentication::MD5Password(salt) => {
                let salt: [u8; 4] = salt
                    .as_slice()
                    .try_into()
                    .map_err(|_| UpstreamError::Protocol("MD5 salt of wrong length".into()))?;
                let hash = postgres_protocol::authentication::md5_hash(
                    user.as_bytes(),
                    password()?.expose_secret().as_bytes(),
                    salt,
                );
                Password::new(hash).encode(&mut out).map_err(encode_err)?;
            }
            Authentication::SASL(mechanisms) => {
                let plus = mechanisms.iter().any(|m| m == "SCRAM-SHA-256-PLUS");
                let plain = mechanisms.iter().any(|m| m == "SCRAM-SHA-256");
                let cert = match stream {
                    Stream::ClientTls(tls) => tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| c.as_ref().to_vec()),
                    _ => None,
                };
                let (mechanism, binding) = match (plus, cert) {
                    (true, Some(der)) => (
                        "SCRAM-SHA-256-PLUS",
                        ChannelBinding::tls_server_end_point(
                            crate::auth::scram::tls_server_end_point(&der),
                        ),
                    ),
                    (_, Some(_)) if plain => ("SCRAM-SHA-256", ChannelBinding::unrequested()),
                    (_, None) if plain => ("SCRAM-SHA-256", ChannelBinding::unsupported()),
                    _ => {
                        return Err(UpstreamError::Auth(format!(
                            "no supported SASL mechanism among {mechanisms:?}"
                        )));
                    }
                };
                let client = ScramSha256::new(password()?.expose_secret().as_bytes(), binding);
                SASLInitialResponse::new(
                    mechanism.to_owned(),
                    Some(Bytes::copy_from_slice(client.message())),
                )
                .encode(&mut out)
                .map_err(encode_err)?;
                *scram = Some(client);
            }
            Authentication::SASLContinue(data) => {
                let client = scram
                    .as_mut()
                    .ok_or_else(|| UpstreamError::Protocol("SASLContinue without SASL".into()))?;
                client
                    .update(&data)
                    .map_err(|e| UpstreamError::Auth(format!("SCRAM: {e}")))?;
                SASLResponse::new(Bytes::copy_from_slice(client.message()))
                    .encode(&mut out)
                    .map_err(encode_err)?;
            }
            Authentication::SASLFinal(data) => {
                let mut client = scram
                    .take()
                    .ok_or_else(|| UpstreamError::Protocol("SASLFinal without SASL".into()))?;
                client
                    .finish(&data)
                    .map_err(|e| UpstreamError::Auth(format!("SCRAM server signature: {e}")))?;
                return Ok(None);
            }
            other => {
                return Err(UpstreamError::Auth(format!("unsupported method {other:?}")));
            }
        }
        Ok(Some(out))
    }
}

fn client_tls_config(
    mode: UpstreamSslMode,
    ca_file: Option<&std::path::Path>,
) -> Result<ClientConfig, ConfigError> {
    crate::tls::install_crypto_provider();
    let invalid = |message: String| ConfigError::Invalid {
        path: ca_file.map(|p| p.to_owned()).unwrap_or_default(),
        message,
    };
    let builder = ClientConfig::builder_with_protocol_versions(&[
        &rustls::version::TLS13,
        &rustls::version::TLS12,
    ]);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = match (mode, ca_file) {
        (UpstreamSslMode::VerifyCa | UpstreamSslMode::VerifyFull, Some(ca)) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in load_certs(ca).map_err(|e| invalid(e.to_string()))? {
                roots.add(cert).map_err(|e| invalid(e.to_string()))?;
            }
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| invalid(e.to_string()))?;
            if mode == UpstreamSslMode::VerifyFull {
                builder.with_webpki_verifier(webpki).with_no_client_auth()
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly { inner: webpki }))
                    .with_no_client_auth()
            }
        }
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified { provider }))
            .with_no_client_auth(),
    };
    Ok(config)
}

/// `verify-ca`: the chain must be valid; the name is not checked (as in libpq).
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `prefer` / `require`: encryption without authentication of the server, exactly
/// what libpq gives for those modes. Handshake signatures are still checked.
#[derive(Debug)]
struct Unverified {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
