//! SASLInitialResponse and SASLResponse (both 'p').

use super::{DecodeError, Reader};

/// A decoded SASLInitialResponse.
#[derive(Debug, PartialEq, Eq)]
pub struct InitialResponse<'a> {
    /// The chosen mechanism.
    pub mechanism: &'a str,
    /// The client-first-message (empty when the client sent length -1).
    pub data: &'a [u8],
}

/// Decodes a SASLInitialResponse body.
pub fn decode_initial(body: &[u8]) -> Result<InitialResponse<'_>, DecodeError> {
    let mut r = Reader::new(body, "SASLInitialResponse");
    let mechanism = r.cstr()?;
    let len = r.i32()?;
    let data = match len {
        -1 => &[][..],
        n => {
            r.bytes(usize::try_from(n).map_err(|_| DecodeError::Malformed("SASLInitialResponse"))?)?
        }
    };
    r.finish()?;
    Ok(InitialResponse { mechanism, data })
}

/// Decodes a SASLResponse body: the whole body is the message.
pub fn decode_response(body: &[u8]) -> &[u8] {
    Reader::new(body, "SASLResponse").rest()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_response_layouts() {
        let ok = b"SCRAM-SHA-256\0\0\0\0\x03n,,";
        assert_eq!(
            decode_initial(ok),
            Ok(InitialResponse {
                mechanism: "SCRAM-SHA-256",
                data: b"n,,"
            })
        );
        assert_eq!(
            decode_initial(b"SCRAM-SHA-256\0\xff\xff\xff\xff").map(|r| r.data.len()),
            Ok(0)
        );
        for cut in 0..ok.len() {
            assert!(decode_initial(&ok[..cut]).is_err(), "cut at {cut}");
        }
        assert!(
            decode_initial(b"SCRAM-SHA-256\0\xff\xff\xff\xfe").is_err(),
            "negative length"
        );
        assert!(
            decode_initial(b"SCRAM-SHA-256\0\x7f\0\0\0n,,").is_err(),
            "length past the end"
        );
        assert!(
            decode_initial(b"SCRAM-SHA-256\0\0\0\0\x01n,,").is_err(),
            "trailing bytes"
        );
    }
}
