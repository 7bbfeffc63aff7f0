//! Query ('Q'): one SQL string.

use bytes::{BufMut, BytesMut};

use super::{DecodeError, Reader};

/// Decodes a Query body: exactly one NUL-terminated UTF-8 string.
pub fn decode(body: &[u8]) -> Result<&str, DecodeError> {
    let mut r = Reader::new(body, "Query");
    let sql = r.cstr()?;
    r.finish()?;
    Ok(sql)
}

/// Appends a Query message carrying `sql`.
pub fn encode(sql: &str, out: &mut BytesMut) {
    out.put_u8(b'Q');
    out.put_i32(i32::try_from(sql.len() + 5).unwrap_or(i32::MAX));
    out.put_slice(sql.as_bytes());
    out.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut out = BytesMut::new();
        encode("SELECT 1", &mut out);
        assert_eq!(&out[..5], &[b'Q', 0, 0, 0, 13]);
        assert_eq!(decode(&out[5..]), Ok("SELECT 1"));
    }

    #[test]
    fn refuses_missing_or_extra_terminators_and_bad_utf8() {
        assert_eq!(decode(b"SELECT 1"), Err(DecodeError::Malformed("Query")));
        assert_eq!(
            decode(b"SELECT 1\0DROP TABLE t\0"),
            Err(DecodeError::Malformed("Query"))
        );
        assert_eq!(
            decode(b"SELECT '\xff'\0"),
            Err(DecodeError::InvalidUtf8("Query"))
        );
        assert_eq!(decode(b"\0"), Ok(""));
    }
}
