//! Walks the backend's byte stream message by message without buffering results.
//!
//! Messages the proxy must look at (ReadyForQuery, ErrorResponse, CommandComplete)
//! are held until complete; every other message — DataRow, CopyData, RowDescription —
//! is passed through as its bytes arrive, so a huge row or a million-row result costs
//! the proxy no more memory than one read buffer.

use bytes::BytesMut;

/// Largest inspected message accepted from the server; ErrorResponses and
/// CommandCompletes are small, so anything larger means a broken stream.
const MAX_INSPECTED: usize = 1024 * 1024;

/// What the scanner hands to its caller.
#[derive(Debug)]
pub enum Piece {
    /// Bytes to forward as they are (possibly part of a message).
    Forward(BytesMut),
    /// A complete message the caller wants to see.
    Message {
        /// The type byte.
        tag: u8,
        /// Tag, length and body.
        raw: BytesMut,
    },
}

/// The stream is not a valid sequence of backend messages.
#[derive(Debug, thiserror::Error)]
#[error("invalid backend message (type {tag:#04x}, length {len})")]
pub struct ScanError {
    tag: u8,
    len: i64,
}

/// Incremental scanner over the backend stream.
#[derive(Debug, Default)]
pub struct BackendScanner {
    /// Bytes of a passed-through message still to come.
    passthrough_left: usize,
}

/// Whether the proxy needs a complete copy of messages with this tag.
fn inspected(tag: u8) -> bool {
    // ReadyForQuery, ErrorResponse, CommandComplete, NoticeResponse, ParameterStatus,
    // NotificationResponse: all small.
    matches!(tag, b'Z' | b'E' | b'C' | b'N' | b'S' | b'A')
}

/// The command tag of a complete CommandComplete message (`raw` with its type byte and
/// length), without the terminating NUL: `INSERT 0 3`, `CREATE TABLE`. Empty when the
/// message is too short to hold one.
pub fn command_tag(raw: &[u8]) -> &[u8] {
    let body = raw.get(5..).unwrap_or_default();
    body.strip_suffix(&[0]).unwrap_or(body)
}

impl BackendScanner {
    /// Splits what is buffered in `buf` into pieces; incomplete inspected messages
    /// stay in `buf` until more bytes arrive.
    pub fn scan(&mut self, buf: &mut BytesMut, out: &mut Vec<Piece>) -> Result<(), ScanError> {
        let mut forward_len = 0usize;
        loop {
            let available = buf.len() - forward_len;
            if self.passthrough_left > 0 {
                let n = self.passthrough_left.min(available);
                forward_len += n;
                self.passthrough_left -= n;
                if self.passthrough_left > 0 {
                    break;
                }
                continue;
            }
            if available < 5 {
                break;
            }
            let head = &buf[forward_len..forward_len + 5];
            let tag = head[0];
            let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
            let len = match usize::try_from(len) {
                Ok(l) if l >= 4 => l,
                _ => {
                    return Err(ScanError {
                        tag,
                        len: i64::from(len),
                    });
                }
            };
            if inspected(tag) {
                if len > MAX_INSPECTED {
                    return Err(ScanError {
                        tag,
                        len: len as i64,
                    });
                }
                if available < len + 1 {
                    break;
                }
                if forward_len > 0 {
                    out.push(Piece::Forward(buf.split_to(forward_len)));
                    forward_len = 0;
                }
                out.push(Piece::Message {
                    tag,
                    raw: buf.split_to(len + 1),
                });
            } else {
                self.passthrough_left = len + 1;
            }
        }
        if forward_len > 0 {
            out.push(Piece::Forward(buf.split_to(forward_len)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn run(chunks: &[&[u8]]) -> (Vec<u8>, Vec<u8>) {
        let mut scanner = BackendScanner::default();
        let mut buf = BytesMut::new();
        let mut forwarded = Vec::new();
        let mut tags = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            let mut out = Vec::new();
            scanner.scan(&mut buf, &mut out).expect("valid");
            for p in out {
                match p {
                    Piece::Forward(b) => forwarded.extend_from_slice(&b),
                    Piece::Message { tag, raw } => {
                        tags.push(tag);
                        forwarded.extend_from_slice(&raw);
                    }
                }
            }
        }
        (forwarded, tags)
    }

    #[test]
    fn passes_rows_through_and_holds_ready_for_query() {
        let mut stream = msg(b'D', b"row-1");
        stream.extend(msg(b'D', &[7u8; 100]));
        stream.extend(msg(b'C', b"SELECT 2\0"));
        stream.extend(msg(b'Z', b"I"));
        // Feed it one byte at a time: the output must be identical.
        let chunks: Vec<&[u8]> = stream.chunks(1).collect();
        let (forwarded, tags) = run(&chunks);
        assert_eq!(forwarded, stream);
        assert_eq!(tags, vec![b'C', b'Z']);
        let (forwarded, _) = run(&[&stream]);
        assert_eq!(forwarded, stream);
    }

    #[test]
    fn large_row_is_not_buffered() {
        let mut scanner = BackendScanner::default();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&msg(b'D', &vec![1u8; 1_000_000])[..64 * 1024]);
        let mut out = Vec::new();
        scanner.scan(&mut buf, &mut out).expect("valid");
        assert!(buf.is_empty(), "partial row forwarded, not held");
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn command_tag_strips_header_and_terminator() {
        assert_eq!(command_tag(&msg(b'C', b"CREATE TABLE\0")), b"CREATE TABLE");
        assert_eq!(command_tag(&msg(b'C', b"")), b"");
        assert_eq!(command_tag(&[b'C', 0]), b"");
    }

    #[test]
    fn rejects_bad_lengths() {
        let mut scanner = BackendScanner::default();
        let mut buf = BytesMut::from(&[b'D', 0, 0, 0, 2][..]);
        assert!(scanner.scan(&mut buf, &mut Vec::new()).is_err());
        let mut buf = BytesMut::from(&[b'E', 0x7f, 0, 0, 0][..]);
        assert!(
            BackendScanner::default()
                .scan(&mut buf, &mut Vec::new())
                .is_err()
        );
    }

    #[test]
    fn random_streams_never_panic_and_never_lose_bytes() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for _ in 0..2000 {
            let mut scanner = BackendScanner::default();
            let mut buf = BytesMut::new();
            let mut seen = 0usize;
            let mut fed = 0usize;
            for _ in 0..8 {
                let n = rng.random_range(0..40usize);
                let chunk: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                fed += chunk.len();
                buf.extend_from_slice(&chunk);
                let mut out = Vec::new();
                if scanner.scan(&mut buf, &mut out).is_err() {
                    break;
                }
                for p in out {
                    seen += match p {
                        Piece::Forward(b) => b.len(),
                        Piece::Message { raw, .. } => raw.len(),
                    };
                }
                assert_eq!(
                    seen + buf.len(),
                    fed,
                    "bytes are forwarded or kept, never lost"
                );
            }
        }
    }
}
