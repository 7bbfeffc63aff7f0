//! Client certificates: with `client_certificates = "required"` only clients with a
//! certificate from the configured CA get past the handshake.

use anyhow::Result;
use portcullis_tests::{ADMIN, EnvOptions, TestEnv};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_client_certificate() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Portcullis test client CA");
    let ca_key = KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    let ca_path = dir.path().join("client-ca.pem");
    std::fs::write(&ca_path, ca.pem())?;

    let mut client_params = CertificateParams::new(Vec::<String>::new())?;
    client_params
        .distinguished_name
        .push(DnType::CommonName, "billing-service");
    let client_key = KeyPair::generate()?;
    let client_cert = client_params.signed_by(&client_key, &ca, &ca_key)?;

    let env = TestEnv::start_with(EnvOptions {
        extra_config: String::new(),
        tls_extra: format!(
            "client_ca = \"{}\"\nclient_certificates = \"required\"",
            ca_path.display()
        ),
        ..EnvOptions::default()
    })
    .await?;

    let dsn = env.proxy_dsn(ADMIN, "sslmode=require");
    // With the certificate: the session works.
    let with_cert = portcullis_tests::client_tls_with_cert(
        &env.cert_path,
        vec![CertificateDer::from(client_cert.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(client_key.serialize_der())),
    )?;
    let (client, conn) = tokio_postgres::connect(
        &dsn,
        tokio_postgres_rustls::MakeRustlsConnect::new(with_cert),
    )
    .await?;
    tokio::spawn(conn);
    let n: i64 = client
        .query_one("SELECT count(*) FROM tenants", &[])
        .await?
        .get(0);
    assert_eq!(n, 3);

    // Without one: refused during the handshake.
    let without = portcullis_tests::client_tls(&env.cert_path)?;
    let refused =
        tokio_postgres::connect(&dsn, tokio_postgres_rustls::MakeRustlsConnect::new(without)).await;
    assert!(
        refused.is_err(),
        "a client without certificate must be refused"
    );
    Ok(())
}
