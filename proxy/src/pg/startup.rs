//! The untyped first packet of a connection: SSLRequest, GSSENCRequest,
//! CancelRequest or StartupMessage.

use std::collections::BTreeMap;

use bytes::{BufMut, BytesMut};
use pgwire::messages::startup::Startup;
use pgwire::messages::{DecodeContext, Message, ProtocolVersion};
use tokio::io::{AsyncRead, AsyncReadExt};

/// PostgreSQL's own limit on the first packet (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET: usize = 10_000;

const SSL_REQUEST_CODE: i32 = 80_877_103;
const GSSENC_REQUEST_CODE: i32 = 80_877_104;
const CANCEL_REQUEST_CODE: i32 = 80_877_102;

/// First byte of a TLS handshake record: a client using direct TLS.
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What a client opened with.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstPacket {
    /// Asks to switch to TLS.
    SslRequest,
    /// Asks for GSSAPI encryption, which the proxy declines.
    GssEncRequest,
    /// Cancels the running statement of another session.
    Cancel {
        /// Process id from BackendKeyData.
        pid: i32,
        /// Secret from BackendKeyData.
        secret: i32,
    },
    /// Starts a session.
    Startup(StartupParams),
}

/// A decoded StartupMessage.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct StartupParams {
    /// Requested protocol major version (always 3 here).
    pub major: u16,
    /// Requested protocol minor version.
    pub minor: u16,
    /// Parameters (user, database, application_name, GUCs, `_pq_.` options).
    pub params: BTreeMap<String, String>,
}

/// Why the first packet was refused.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Length outside 8..=10000 bytes.
    #[error("invalid startup packet length {0}")]
    InvalidLength(i32),
    /// Not a protocol this proxy speaks.
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0")]
    UnsupportedProtocol {
        /// Major version asked for.
        major: u16,
        /// Minor version asked for.
        minor: u16,
    },
    /// Malformed body.
    #[error("invalid startup packet layout")]
    Malformed,
    /// The client went away.
    #[error("connection closed during startup")]
    Closed,
    /// Socket error.
    #[error(transparent)]
    Io(std::io::Error),
}

/// Reads and decodes the first packet.
pub async fn read_first_packet<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<FirstPacket, StartupError> {
    let mut len_bytes = [0u8; 4];
    read_exact(reader, &mut len_bytes).await?;
    let len = i32::from_be_bytes(len_bytes);
    let len_usize = usize::try_from(len).map_err(|_| StartupError::InvalidLength(len))?;
    if !(8..=MAX_STARTUP_PACKET).contains(&len_usize) {
        return Err(StartupError::InvalidLength(len));
    }
    let mut packet = BytesMut::with_capacity(len_usize);
    packet.put_slice(&len_bytes);
    packet.resize(len_usize, 0);
    read_exact(reader, &mut packet[4..]).await?;
    decode_first_packet(packet)
}

async fn read_exact<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
) -> Result<(), StartupError> {
    match reader.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(StartupError::Closed),
        Err(e) => Err(StartupError::Io(e)),
    }
}

/// Decodes a complete first packet (length included).
pub fn decode_first_packet(mut packet: BytesMut) -> Result<FirstPacket, StartupError> {
    let code = i32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    match code {
        SSL_REQUEST_CODE if packet.len() == 8 => return Ok(FirstPacket::SslRequest),
        GSSENC_REQUEST_CODE if packet.len() == 8 => return Ok(FirstPacket::GssEncRequest),
        CANCEL_REQUEST_CODE if packet.len() == 16 => {
            let pid = i32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
            let secret = i32::from_be_bytes([packet[12], packet[13], packet[14], packet[15]]);
            return Ok(FirstPacket::Cancel { pid, secret });
        }
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE | CANCEL_REQUEST_CODE => {
            return Err(StartupError::Malformed);
        }
        _ => {}
    }
    let major = (code >> 16) as u16;
    let minor = (code & 0xffff) as u16;
    if major != 3 {
        return Err(StartupError::UnsupportedProtocol { major, minor });
    }
    // The body must end with the terminating NUL of the parameter list.
    if packet.last() != Some(&0) {
        return Err(StartupError::Malformed);
    }
    let ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
    match Startup::decode(&mut packet, &ctx) {
        Ok(Some(startup)) => Ok(FirstPacket::Startup(StartupParams {
            major: startup.protocol_number_major,
            minor: startup.protocol_number_minor,
            params: startup.parameters,
        })),
        _ => Err(StartupError::Malformed),
    }
}

/// Encodes a StartupMessage for protocol 3.0.
pub fn encode_startup(params: &BTreeMap<String, String>, buf: &mut BytesMut) {
    let mut startup = Startup::new();
    startup.parameters = params.clone();
    if startup.encode(buf).is_err() {
        tracing::error!("startup message exceeds the protocol limit");
    }
}

/// Encodes a CancelRequest.
pub fn encode_cancel(pid: i32, secret: i32, buf: &mut BytesMut) {
    buf.put_i32(16);
    buf.put_i32(CANCEL_REQUEST_CODE);
    buf.put_i32(pid);
    buf.put_i32(secret);
}

/// Encodes an SSLRequest.
pub fn encode_ssl_request(buf: &mut BytesMut) {
    buf.put_i32(8);
    buf.put_i32(SSL_REQUEST_CODE);
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn first(bytes: &[u8]) -> Result<FirstPacket, StartupError> {
        let mut r = bytes;
        read_first_packet(&mut r).await
    }

    #[tokio::test]
    async fn decodes_each_kind() {
        assert_eq!(
            first(&[0, 0, 0, 8, 4, 210, 22, 47]).await.expect("ssl"),
            FirstPacket::SslRequest
        );
        assert_eq!(
            first(&[0, 0, 0, 8, 4, 210, 22, 48]).await.expect("gss"),
            FirstPacket::GssEncRequest
        );
        let mut cancel = BytesMut::new();
        encode_cancel(7, -9, &mut cancel);
        assert_eq!(
            first(&cancel).await.expect("cancel"),
            FirstPacket::Cancel { pid: 7, secret: -9 }
        );
        let mut params = BTreeMap::new();
        params.insert("user".to_owned(), "alice".to_owned());
        params.insert("database".to_owned(), "db".to_owned());
        let mut startup = BytesMut::new();
        encode_startup(&params, &mut startup);
        match first(&startup).await.expect("startup") {
            FirstPacket::Startup(s) => {
                assert_eq!((s.major, s.minor), (3, 0));
                assert_eq!(s.params, params);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn refuses_garbage() {
        assert!(matches!(
            first(b"GET / HTTP/1.1\r\n\r\n").await,
            Err(StartupError::InvalidLength(_))
        ));
        assert!(matches!(
            first(&[0, 0, 0, 4]).await,
            Err(StartupError::InvalidLength(4))
        ));
        assert!(matches!(
            first(&[0, 0, 0, 9, 0, 2, 0, 0, 0]).await,
            Err(StartupError::UnsupportedProtocol { major: 2, .. })
        ));
        assert!(matches!(
            first(&[0, 0, 0, 10, 0, 3, 0, 0, b'u', b'x']).await,
            Err(StartupError::Malformed)
        ));
        assert!(matches!(
            first(&[0, 0, 0, 12, 4, 210, 22, 47, 0, 0, 0, 0]).await,
            Err(StartupError::Malformed)
        ));
        assert!(matches!(
            first(&[0, 0, 0, 20, 0, 3]).await,
            Err(StartupError::Closed)
        ));
    }

    #[tokio::test]
    async fn random_packets_never_panic() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..5000 {
            let len = rng.random_range(0..64usize);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if len >= 8 && rng.random_bool(0.5) {
                // A plausible length and protocol code so the body parser is reached.
                bytes[..4].copy_from_slice(&(len as i32).to_be_bytes());
                bytes[4..8].copy_from_slice(&196_608i32.to_be_bytes());
            }
            let _ = first(&bytes).await;
        }
    }
}
