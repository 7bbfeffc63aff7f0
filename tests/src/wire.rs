//! Raw-protocol and client helpers shared by the end-to-end tests.

use anyhow::{Context, Result, bail};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::{
    ANALYST, TestEnv, client_tls, error_fields, frontend_message, panics_so_far,
    read_message_within, startup_message,
};

/// A TLS connection to the proxy.
pub type Tls = tokio_rustls::client::TlsStream<TcpStream>;
/// Messages as (type byte, body).
pub type Messages = Vec<(u8, Vec<u8>)>;
/// Protocol 3.0 in a StartupMessage.
pub const PROTOCOL_3_0: i32 = 3 << 16;

/// Sends a StartupMessage and runs SCRAM-SHA-256 (or -PLUS when `cert` is the server's
/// certificate and the proxy offers it) until ReadyForQuery. Returns every message the
/// proxy sent that is not an authentication request, and the mechanism used.
pub async fn scram_login<S>(
    s: &mut S,
    env: &TestEnv,
    (user, password): (&str, &str),
    version: i32,
    extra: &[(&str, &str)],
    cert: Option<&[u8]>,
) -> Result<(Messages, String)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut params = vec![("user", user), ("database", env.database.as_str())];
    params.extend_from_slice(extra);
    s.write_all(&startup_message(version, &params)).await?;
    let mut scram: Option<ScramSha256> = None;
    let mut used = String::new();
    let mut seen = Vec::new();
    loop {
        let (tag, body) = read_message_within(s, 10)
            .await?
            .context("proxy closed during login")?;
        match tag {
            b'R' => {
                let kind = i32::from_be_bytes(body[..4].try_into()?);
                let data = &body[4..];
                match kind {
                    0 => {}
                    10 => {
                        let mechanisms: Vec<&[u8]> =
                            data.split(|&b| b == 0).filter(|m| !m.is_empty()).collect();
                        let plus = mechanisms.contains(&&b"SCRAM-SHA-256-PLUS"[..]);
                        let (mechanism, binding) = match cert {
                            Some(der) if plus => (
                                "SCRAM-SHA-256-PLUS",
                                ChannelBinding::tls_server_end_point(
                                    portcullis::auth::tls_server_end_point(der),
                                ),
                            ),
                            _ => ("SCRAM-SHA-256", ChannelBinding::unsupported()),
                        };
                        used = mechanism.to_owned();
                        let client = ScramSha256::new(password.as_bytes(), binding);
                        let mut msg = mechanism.as_bytes().to_vec();
                        msg.push(0);
                        msg.extend_from_slice(
                            &i32::try_from(client.message().len())?.to_be_bytes(),
                        );
                        msg.extend_from_slice(client.message());
                        s.write_all(&frontend_message(b'p', &msg)).await?;
                        scram = Some(client);
                    }
                    11 => {
                        let client = scram.as_mut().context("SASLContinue before SASL")?;
                        client.update(data)?;
                        s.write_all(&frontend_message(b'p', client.message()))
                            .await?;
                    }
                    12 => scram
                        .as_mut()
                        .context("SASLFinal before SASL")?
                        .finish(data)?,
                    other => bail!("unexpected authentication request {other}"),
                }
            }
            b'E' => bail!("login refused: {:?}", error_fields(&body)),
            b'Z' => {
                seen.push((tag, body));
                return Ok((seen, used));
            }
            _ => seen.push((tag, body)),
        }
    }
}

/// The certificate the proxy presented on `s`.
pub fn server_cert(s: &Tls) -> Vec<u8> {
    s.get_ref()
        .1
        .peer_certificates()
        .expect("server certificate")[0]
        .as_ref()
        .to_vec()
}

/// A tokio-postgres session through the proxy over TLS.
pub async fn pg_connect(env: &TestEnv, who: (&str, &str)) -> Result<Client> {
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(client_tls(&env.cert_path)?);
    let (client, connection) =
        tokio_postgres::connect(&env.proxy_dsn(who, "sslmode=require"), tls).await?;
    tokio::spawn(connection);
    Ok(client)
}

pub async fn scalar(client: &Client, sql: &str) -> Result<String> {
    for m in client.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(row) = m {
            return Ok(row.get(0).unwrap_or_default().to_owned());
        }
    }
    bail!("no row from {sql}")
}

/// The proxy still serves: the session opened before works, a fresh one works, and
/// no thread panicked.
pub async fn assert_still_serving(
    env: &TestEnv,
    before: &Client,
    panics_at_start: usize,
) -> Result<()> {
    assert_eq!(
        scalar(before, "SELECT 41 + 1")
            .await
            .context("session opened before")?,
        "42"
    );
    let fresh = pg_connect(env, ANALYST).await.context("fresh session")?;
    assert_eq!(scalar(&fresh, "SELECT 'still here'").await?, "still here");
    assert_eq!(
        panics_so_far(),
        panics_at_start,
        "a thread panicked (see the output above)"
    );
    Ok(())
}

/// A superuser session straight to the database.
pub async fn direct(env: &TestEnv) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(&env.direct_dsn(), NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}
