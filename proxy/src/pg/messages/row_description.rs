//! RowDescription ('T'): the columns of the rows that follow.

use super::{DecodeError, Reader};

/// Bytes each column takes after its name: table OID, column number, type OID, type
/// size, type modifier, format code.
const FIELD_FIXED_BYTES: usize = 4 + 2 + 4 + 2 + 4 + 2;

/// One column of a RowDescription, borrowing from the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field<'a> {
    /// The column's name.
    pub name: &'a str,
    /// The OID of its data type.
    pub type_oid: i32,
    /// 0 for text, 1 for binary.
    pub format: i16,
}

/// Decodes a RowDescription body. Refuses a negative or overstated column count, a
/// name without its terminator or not in UTF-8, and trailing bytes.
pub fn decode(body: &[u8]) -> Result<Vec<Field<'_>>, DecodeError> {
    const WHAT: &str = "RowDescription";
    let mut r = Reader::new(body, WHAT);
    let count = usize::try_from(r.i16()?).map_err(|_| DecodeError::Malformed(WHAT))?;
    // The count comes from the server: size the vector by what the body can hold.
    let mut fields = Vec::with_capacity(count.min(body.len() / (FIELD_FIXED_BYTES + 1)));
    for _ in 0..count {
        let name = r.cstr()?;
        let _table_oid = r.i32()?;
        let _column = r.i16()?;
        let type_oid = r.i32()?;
        let _size = r.i16()?;
        let _modifier = r.i32()?;
        let format = r.i16()?;
        fields.push(Field {
            name,
            type_oid,
            format,
        });
    }
    r.finish()?;
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, type_oid: i32, format: i16) -> Vec<u8> {
        let mut v = name.as_bytes().to_vec();
        v.push(0);
        v.extend_from_slice(&0i32.to_be_bytes());
        v.extend_from_slice(&0i16.to_be_bytes());
        v.extend_from_slice(&type_oid.to_be_bytes());
        v.extend_from_slice(&(-1i16).to_be_bytes());
        v.extend_from_slice(&(-1i32).to_be_bytes());
        v.extend_from_slice(&format.to_be_bytes());
        v
    }

    #[test]
    fn decodes_columns_in_order() {
        let mut body = 2i16.to_be_bytes().to_vec();
        body.extend(field("nspname", 25, 0));
        body.extend(field("relname", 25, 1));
        let fields = decode(&body).expect("valid");
        assert_eq!(
            fields,
            vec![
                Field {
                    name: "nspname",
                    type_oid: 25,
                    format: 0
                },
                Field {
                    name: "relname",
                    type_oid: 25,
                    format: 1
                },
            ]
        );
        assert_eq!(decode(&0i16.to_be_bytes()).expect("no columns"), vec![]);
    }

    #[test]
    fn refuses_bad_counts_truncation_and_trailing_bytes() {
        let mut body = 2i16.to_be_bytes().to_vec();
        body.extend(field("a", 25, 0));
        assert!(decode(&body).is_err(), "count says 2, body has 1");
        let mut body = (-1i16).to_be_bytes().to_vec();
        body.extend(field("a", 25, 0));
        assert!(decode(&body).is_err(), "negative count");
        let mut body = 1i16.to_be_bytes().to_vec();
        body.extend(field("a", 25, 0));
        body.push(0);
        assert!(decode(&body).is_err(), "trailing byte");
        let mut body = 1i16.to_be_bytes().to_vec();
        body.extend(field("\u{e9}", 25, 0));
        body[2] = 0xff;
        assert_eq!(
            decode(&body),
            Err(DecodeError::InvalidUtf8("RowDescription"))
        );
        assert!(decode(&[0]).is_err(), "short count");
        assert!(decode(&i16::MAX.to_be_bytes()).is_err());
    }
}
