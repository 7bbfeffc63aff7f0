//! DataRow ('D'): one row of a result, each value as its length and bytes.

use super::{DecodeError, Reader};

/// Decodes a DataRow body into its values (`None` for SQL NULL, announced as length
/// -1). Refuses a negative column count, lengths below -1, values that run past the
/// body, and trailing bytes.
pub fn decode(body: &[u8]) -> Result<Vec<Option<&[u8]>>, DecodeError> {
    const WHAT: &str = "DataRow";
    let mut r = Reader::new(body, WHAT);
    let count = usize::try_from(r.i16()?).map_err(|_| DecodeError::Malformed(WHAT))?;
    // Every value takes at least its 4-byte length: never trust the count for sizing.
    let mut values = Vec::with_capacity(count.min(body.len() / 4));
    for _ in 0..count {
        let len = r.i32()?;
        let value = match len {
            -1 => None,
            len => {
                let len = usize::try_from(len).map_err(|_| DecodeError::Malformed(WHAT))?;
                Some(r.bytes(len)?)
            }
        };
        values.push(value);
    }
    r.finish()?;
    Ok(values)
}

/// Like [`decode`], for text-format values: refuses any value that is not UTF-8.
pub fn decode_text(body: &[u8]) -> Result<Vec<Option<&str>>, DecodeError> {
    decode(body)?
        .into_iter()
        .map(|value| {
            value
                .map(|v| std::str::from_utf8(v).map_err(|_| DecodeError::InvalidUtf8("DataRow")))
                .transpose()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: &[Option<&[u8]>]) -> Vec<u8> {
        let mut body = i16::try_from(values.len())
            .expect("few columns")
            .to_be_bytes()
            .to_vec();
        for value in values {
            match value {
                None => body.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    body.extend_from_slice(&i32::try_from(v.len()).expect("short").to_be_bytes());
                    body.extend_from_slice(v);
                }
            }
        }
        body
    }

    #[test]
    fn decodes_values_nulls_and_empty_strings() {
        let body = row(&[Some(b"public"), None, Some(b""), Some("Grüße".as_bytes())]);
        assert_eq!(
            decode_text(&body).expect("valid"),
            vec![Some("public"), None, Some(""), Some("Grüße")]
        );
        assert_eq!(
            decode(&row(&[])).expect("no columns"),
            Vec::<Option<&[u8]>>::new()
        );
    }

    #[test]
    fn refuses_malformed_rows() {
        let good = row(&[Some(b"abc"), None]);
        for cut in 0..good.len() {
            assert!(decode(&good[..cut]).is_err(), "truncated at {cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(decode(&trailing).is_err(), "trailing byte");
        let mut bad_len = 1i16.to_be_bytes().to_vec();
        bad_len.extend_from_slice(&(-2i32).to_be_bytes());
        assert_eq!(decode(&bad_len), Err(DecodeError::Malformed("DataRow")));
        let mut huge = 1i16.to_be_bytes().to_vec();
        huge.extend_from_slice(&i32::MAX.to_be_bytes());
        assert!(decode(&huge).is_err(), "length past the body");
        assert!(decode(&(-1i16).to_be_bytes()).is_err(), "negative count");
        assert_eq!(
            decode_text(&row(&[Some(&[0xc3, 0x28])])),
            Err(DecodeError::InvalidUtf8("DataRow"))
        );
    }

    #[test]
    fn random_bodies_never_panic() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..5000 {
            let n = rng.random_range(0..24usize);
            let body: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            let _ = decode_text(&body);
            let _ = super::super::row_description::decode(&body);
        }
    }
}
