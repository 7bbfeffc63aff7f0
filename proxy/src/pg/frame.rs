//! Framing of typed messages (`tag`, `length`, `body`) with a size limit.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes read from the socket at a time when the buffer has room.
const READ_CHUNK: usize = 16 * 1024;

/// One complete typed message, its raw bytes kept so it can be forwarded untouched.
#[derive(Debug)]
pub struct RawMessage {
    /// The type byte.
    pub tag: u8,
    /// Tag, length and body, exactly as received.
    pub raw: BytesMut,
}

impl RawMessage {
    /// The body, after the tag and the length.
    pub fn body(&self) -> &[u8] {
        self.raw.get(5..).unwrap_or_default()
    }
}

/// Why a message stream could not be framed. All of these end the session.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection in the middle of a message.
    #[error("connection closed in the middle of a message")]
    Truncated,
    /// A length below 4 cannot be a message.
    #[error("invalid message length {0}")]
    InvalidLength(i32),
    /// The message is larger than the configured maximum.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Splits a byte stream into [`RawMessage`]s, refusing any larger than `max`.
pub struct Framer {
    buf: BytesMut,
    max: usize,
}

impl Framer {
    /// A framer that accepts messages of at most `max` bytes (length field included).
    pub fn new(max: usize) -> Self {
        Self {
            buf: BytesMut::with_capacity(READ_CHUNK),
            max,
        }
    }

    /// A framer that continues with bytes already read past the startup packet.
    pub fn with_buffer(buf: BytesMut, max: usize) -> Self {
        Self { buf, max }
    }

    /// The next complete message already buffered, without reading.
    pub fn try_next(&mut self) -> Result<Option<RawMessage>, FrameError> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        let len_usize = usize::try_from(len).map_err(|_| FrameError::InvalidLength(len))?;
        if len_usize < 4 {
            return Err(FrameError::InvalidLength(len));
        }
        if len_usize > self.max {
            return Err(FrameError::TooLarge {
                len: len_usize,
                max: self.max,
            });
        }
        let total = len_usize + 1;
        if self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        let raw = self.buf.split_to(total);
        Ok(Some(RawMessage { tag: raw[0], raw }))
    }

    /// The bytes read but not yet framed.
    pub fn into_buffer(self) -> BytesMut {
        self.buf
    }

    /// Whether a complete message is waiting in the buffer.
    pub fn has_buffered_message(&self) -> bool {
        if self.buf.len() < 5 {
            return false;
        }
        let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        usize::try_from(len).is_ok_and(|l| self.buf.len() > l)
    }

    /// The next message, reading as needed. `Ok(None)` is a clean end of stream
    /// between messages.
    pub async fn next<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
    ) -> Result<Option<RawMessage>, FrameError> {
        loop {
            if let Some(msg) = self.try_next()? {
                return Ok(Some(msg));
            }
            if self.buf.capacity() - self.buf.len() < 1024 {
                self.buf.reserve(READ_CHUNK);
            }
            if reader.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.has_remaining() {
                    Err(FrameError::Truncated)
                } else {
                    Ok(None)
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn frames(input: &[u8], max: usize) -> Result<Vec<u8>, FrameError> {
        let mut framer = Framer::new(max);
        let mut reader = input;
        let mut tags = Vec::new();
        while let Some(m) = framer.next(&mut reader).await? {
            tags.push(m.tag);
        }
        Ok(tags)
    }

    #[tokio::test]
    async fn frames_consecutive_messages() {
        let input = [b'S', 0, 0, 0, 4, b'Q', 0, 0, 0, 6, b'x', 0];
        assert_eq!(frames(&input, 1024).await.expect("ok"), vec![b'S', b'Q']);
    }

    #[tokio::test]
    async fn refuses_oversized_before_reading_body() {
        let input = [b'Q', 0x10, 0, 0, 0];
        assert!(matches!(
            frames(&input, 1024).await,
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn refuses_negative_and_short_lengths() {
        assert!(matches!(
            frames(&[b'Q', 0xff, 0xff, 0xff, 0xff], 1024).await,
            Err(FrameError::InvalidLength(-1))
        ));
        assert!(matches!(
            frames(&[b'Q', 0, 0, 0, 3], 1024).await,
            Err(FrameError::InvalidLength(3))
        ));
    }

    #[tokio::test]
    async fn truncated_message_is_an_error() {
        assert!(matches!(
            frames(&[b'Q', 0, 0, 0, 9, b'x'], 1024).await,
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            frames(&[b'Q', 0, 0], 1024).await,
            Err(FrameError::Truncated)
        ));
    }
}
