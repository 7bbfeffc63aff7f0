//! Parse ('P'): statement name, SQL, parameter type OIDs.

use bytes::{BufMut, BytesMut};

use super::{DecodeError, Reader};

/// A decoded Parse message, borrowing from the body.
#[derive(Debug, PartialEq, Eq)]
pub struct Parse<'a> {
    /// Prepared statement name; empty for the unnamed statement.
    pub name: &'a str,
    /// The SQL text.
    pub query: &'a str,
    /// The parameter type OIDs, raw (4 bytes each), forwarded untouched.
    pub type_oids: &'a [u8],
    /// Number of OIDs in `type_oids`.
    pub type_count: i16,
}

/// Decodes a Parse body, checking the OID count against the bytes present.
pub fn decode(body: &[u8]) -> Result<Parse<'_>, DecodeError> {
    let mut r = Reader::new(body, "Parse");
    let name = r.cstr()?;
    let query = r.cstr()?;
    let type_count = r.i16()?;
    let n = usize::try_from(type_count).map_err(|_| DecodeError::Malformed("Parse"))?;
    let type_oids = r.bytes(n * 4)?;
    r.finish()?;
    Ok(Parse {
        name,
        query,
        type_oids,
        type_count,
    })
}

/// Appends a Parse message with `query` in place of the original SQL.
pub fn encode(parse: &Parse<'_>, query: &str, out: &mut BytesMut) {
    let len = 4 + parse.name.len() + 1 + query.len() + 1 + 2 + parse.type_oids.len();
    out.put_u8(b'P');
    out.put_i32(i32::try_from(len).unwrap_or(i32::MAX));
    out.put_slice(parse.name.as_bytes());
    out.put_u8(0);
    out.put_slice(query.as_bytes());
    out.put_u8(0);
    out.put_i16(parse.type_count);
    out.put_slice(parse.type_oids);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_types() {
        let body = b"s1\0SELECT $1\0\0\x01\0\0\0\x17";
        let p = decode(body).expect("valid");
        assert_eq!((p.name, p.query, p.type_count), ("s1", "SELECT $1", 1));
        let mut out = BytesMut::new();
        encode(&p, "SELECT $1", &mut out);
        assert_eq!(&out[5..], &body[..]);
        assert_eq!(
            out.len(),
            1 + i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize
        );
    }

    #[test]
    fn refuses_every_truncation_and_bad_counts() {
        let body = b"s1\0SELECT $1\0\0\x01\0\0\0\x17";
        for cut in 0..body.len() {
            assert!(decode(&body[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode(b"\0SELECT 1\0\xff\xff").is_err(), "negative count");
        assert!(
            decode(b"\0SELECT 1\0\0\x02\0\0\0\x17").is_err(),
            "fewer OIDs than announced"
        );
        assert!(decode(b"\0SELECT 1\0\0\0junk").is_err(), "trailing bytes");
    }
}
