//! Client-facing TLS: rustls server configuration, reloadable on SIGHUP.
//!
//! Only TLS 1.2 and 1.3 are offered (rustls has nothing older). The ALPN protocol is
//! `postgresql`, which libpq 17+ sends and which direct TLS (`sslnegotiation=direct`)
//! requires. A reload builds a complete new configuration first and swaps it in
//! atomically; sessions already running keep the one they started with.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use crate::config::{ClientCertMode, TlsConfig};

/// ALPN protocol name PostgreSQL registered for its wire protocol.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or held nothing usable.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the material (e.g. key does not match certificate).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA could not be turned into a verifier.
    #[error("client CA: {0}")]
    Verifier(String),
}

/// One complete, immutable server TLS setup.
pub struct TlsState {
    /// What rustls uses for the handshake.
    pub config: Arc<ServerConfig>,
    /// DER of the leaf certificate presented, for SCRAM channel binding.
    pub cert_der: Arc<[u8]>,
}

/// The current TLS setup, swapped whole on reload.
pub struct ReloadableTls {
    source: TlsConfig,
    current: ArcSwap<TlsState>,
}

impl ReloadableTls {
    /// Builds the initial setup from the files named in `source`.
    pub fn new(source: TlsConfig) -> Result<Self, TlsError> {
        let state = build(&source)?;
        Ok(Self {
            source,
            current: ArcSwap::from_pointee(state),
        })
    }

    /// The setup a new connection should use.
    pub fn current(&self) -> Arc<TlsState> {
        self.current.load_full()
    }

    /// Re-reads the files; on error the previous setup stays in force.
    pub fn reload(&self) -> Result<(), TlsError> {
        let state = build(&self.source)?;
        self.current.store(Arc::new(state));
        Ok(())
    }
}

/// Installs ring as rustls's process-wide provider; harmless if already installed.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn build(source: &TlsConfig) -> Result<TlsState, TlsError> {
    install_crypto_provider();
    let certs = load_certs(&source.cert)?;
    let key = load_key(&source.key)?;
    let cert_der: Arc<[u8]> = certs
        .first()
        .map(|c| Arc::from(c.as_ref()))
        .ok_or_else(|| pem_error(&source.cert, "no certificate found"))?;

    let builder = ServerConfig::builder_with_protocol_versions(&[
        &rustls::version::TLS13,
        &rustls::version::TLS12,
    ]);
    let builder = match (source.client_certificates, &source.client_ca) {
        (ClientCertMode::None, _) | (_, None) => builder.with_no_client_auth(),
        (mode, Some(ca)) => {
            let mut roots = RootCertStore::empty();
            for cert in load_certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| pem_error(ca, &format!("bad CA certificate: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots));
            let verifier = if mode == ClientCertMode::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| TlsError::Verifier(e.to_string()))?,
            )
        }
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(TlsState {
        config: Arc::new(config),
        cert_der,
    })
}

fn pem_error(path: &Path, message: &str) -> TlsError {
    TlsError::Pem {
        path: path.display().to_string(),
        message: message.to_owned(),
    }
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file = File::open(path).map_err(|e| pem_error(path, &e.to_string()))?;
    let certs = CertificateDer::pem_reader_iter(BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, &e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error(path, "no certificate found"));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| pem_error(path, &format!("no usable private key: {e}")))
}

/// The subject of a client certificate, as an RFC 4514-style string.
pub fn certificate_subject(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.subject().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_self_signed(dir: &Path) -> TlsConfig {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("rcgen");
        let cert_path = dir.join("c.pem");
        let key_path = dir.join("k.pem");
        std::fs::write(&cert_path, cert.cert.pem()).expect("write");
        std::fs::write(&key_path, cert.key_pair.serialize_pem()).expect("write");
        TlsConfig {
            cert: cert_path,
            key: key_path,
            client_ca: None,
            client_certificates: ClientCertMode::None,
        }
    }

    #[test]
    fn reload_swaps_certificate_and_keeps_old_on_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = write_self_signed(dir.path());
        let tls = ReloadableTls::new(cfg.clone()).expect("builds");
        let first = tls.current().cert_der.clone();
        assert_eq!(
            tls.current().config.alpn_protocols,
            vec![b"postgresql".to_vec()]
        );

        write_self_signed(dir.path());
        tls.reload().expect("reload");
        let second = tls.current().cert_der.clone();
        assert_ne!(first, second, "new certificate in force");

        std::fs::write(&cfg.key, "garbage").expect("write");
        assert!(tls.reload().is_err());
        assert_eq!(tls.current().cert_der, second, "last good setup kept");
    }

    #[test]
    fn missing_file_names_path() {
        let err = load_certs(Path::new("/nonexistent/cert.pem")).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/cert.pem"));
    }
}
