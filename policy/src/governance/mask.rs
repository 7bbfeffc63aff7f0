//! Column masks: SQL expressions that run in the database and keep the column's type.

use serde::Deserialize;

use crate::catalog::{Column, TypeCategory};
use crate::rewrite::write::{literal, quoted};

/// How a classified column looks to a role. Every mask is an SQL expression over the
/// column, cast back to the column's own type, so drivers and ORMs see the same
/// RowDescription as without the mask.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum Mask {
    /// The value as stored.
    Clear,
    /// `NULL` (redacted). What a role gets for a classified column no rule covers.
    Null,
    /// A fixed value (any type that the text converts to).
    Fixed {
        /// The value, as SQL text input for the column's type.
        value: String,
    },
    /// Text: every character but the last `keep` replaced by `*`.
    KeepLast {
        /// How many trailing characters stay readable.
        keep: u32,
    },
    /// Text: `***@domain` (everything before the `@` hidden).
    EmailDomain,
    /// Text or integers: a keyed HMAC-SHA-256 of the value (hex for text, leading bits
    /// for integers), so equal values stay equal (joins and GROUP BY still work) but
    /// cannot be reversed without the key.
    Pseudonym,
    /// Dates and timestamps: truncated to the start of the year or month.
    TruncateDate {
        /// `year` or `month`.
        to: DatePart,
    },
    /// Numbers: rounded down to a multiple of `width`.
    Bucket {
        /// The bucket width (positive).
        width: u64,
    },
}

/// What [`Mask::TruncateDate`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatePart {
    /// Keep the year.
    Year,
    /// Keep year and month.
    Month,
}

impl Mask {
    /// The method name, as written in `rules.toml`.
    pub fn method(&self) -> &'static str {
        match self {
            Mask::Clear => "clear",
            Mask::Null => "null",
            Mask::Fixed { .. } => "fixed",
            Mask::KeepLast { .. } => "keep_last",
            Mask::EmailDomain => "email_domain",
            Mask::Pseudonym => "pseudonym",
            Mask::TruncateDate { .. } => "truncate_date",
            Mask::Bucket { .. } => "bucket",
        }
    }

    /// Why this mask cannot apply to a column of `category`, if it cannot.
    pub fn unfit_for(&self, category: TypeCategory) -> Option<&'static str> {
        let fits = match self {
            Mask::Clear | Mask::Null | Mask::Fixed { .. } => true,
            Mask::KeepLast { .. } | Mask::EmailDomain => category == TypeCategory::String,
            Mask::Pseudonym => matches!(category, TypeCategory::String | TypeCategory::Integer),
            Mask::TruncateDate { .. } => category == TypeCategory::DateTime,
            Mask::Bucket { .. } => {
                matches!(category, TypeCategory::Integer | TypeCategory::Numeric)
            }
        };
        (!fits).then_some(match self {
            Mask::KeepLast { .. } | Mask::EmailDomain => "it applies to text columns only",
            Mask::Pseudonym => "it applies to text and integer columns only",
            Mask::TruncateDate { .. } => "it applies to date and timestamp columns only",
            _ => "it applies to number columns only",
        })
    }

    /// Checks parameters that do not depend on the column.
    pub(crate) fn validate(&self) -> Result<(), String> {
        match self {
            Mask::Bucket { width: 0 } => Err("bucket width must be positive".to_string()),
            Mask::KeepLast { keep } if *keep > 1000 => {
                Err("keep_last keeps at most 1000 characters".to_string())
            }
            _ => Ok(()),
        }
    }

    /// The select-list expression for `column` under this mask, `AS` the column's name.
    /// `key` is the pseudonym key; `None` refuses [`Mask::Pseudonym`].
    pub(crate) fn select_item(
        &self,
        column: &Column,
        key: Option<&[u8]>,
    ) -> Result<String, String> {
        if let Some(why) = self.unfit_for(column.category) {
            return Err(format!(
                "mask {} cannot apply to column {} of type {}: {why}",
                self.method(),
                column.name,
                column.type_name
            ));
        }
        let col = quoted(&column.name);
        let ty = &column.type_name;
        let expr = match self {
            Mask::Clear => return Ok(col),
            Mask::Null => format!("CAST(NULL AS {ty})"),
            Mask::Fixed { value } => format!("CAST({} AS {ty})", literal(value)),
            // The last `keep` characters, left-padded with `*` to the value's length
            // (all of it when shorter; NULL stays NULL, the functions being strict).
            // One call deep instead of a CASE over four functions: PostgreSQL parses
            // and plans this for every simple-protocol statement.
            Mask::KeepLast { keep } => {
                format!("CAST(lpad(right({col}, {keep}), length({col}), '*') AS {ty})")
            }
            Mask::EmailDomain => format!(
                "CAST(CASE WHEN {col} IS NULL THEN NULL WHEN strpos({col}, '@') > 0 THEN '***' || substr({col}, strpos({col}, '@')) ELSE '***' END AS {ty})"
            ),
            Mask::Pseudonym => {
                let key = key.ok_or_else(|| {
                    "mask pseudonym needs pseudonym_key in rules.toml".to_string()
                })?;
                let digest = hmac_sql(key, &format!("convert_to(CAST({col} AS text), 'UTF8')"));
                match column.category {
                    TypeCategory::Integer => {
                        let hex_digits = match ty.as_str() {
                            "smallint" => 3,
                            "integer" => 7,
                            _ => 15,
                        };
                        format!(
                            "CAST(CAST(CAST(('x' || substr(encode({digest}, 'hex'), 1, {hex_digits})) AS bit({})) AS bigint) AS {ty})",
                            hex_digits * 4
                        )
                    }
                    _ => format!("CAST(encode({digest}, 'hex') AS {ty})"),
                }
            }
            Mask::TruncateDate { to } => {
                let part = match to {
                    DatePart::Year => "year",
                    DatePart::Month => "month",
                };
                format!("CAST(date_trunc('{part}', {col}) AS {ty})")
            }
            Mask::Bucket { width } => format!("CAST(floor({col} / {width}) * {width} AS {ty})"),
        };
        Ok(format!("{expr} AS {col}"))
    }
}

/// HMAC-SHA-256 (RFC 2104) of the bytea expression `message` under `key`, written with
/// PostgreSQL's built-in `sha256`, so no extension is needed:
/// `sha256((K ^ opad) || sha256((K ^ ipad) || m))`.
fn hmac_sql(key: &[u8], message: &str) -> String {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(key);
        block[..digest.len()].copy_from_slice(&digest);
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| -> String { block.iter().map(|b| format!("{:02x}", b ^ byte)).collect() };
    format!(
        "sha256(decode('{}', 'hex') || sha256(decode('{}', 'hex') || {message}))",
        pad(0x5c),
        pad(0x36)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, KeyInit, Mac};

    fn column(name: &str, ty: &str, category: TypeCategory) -> Column {
        Column {
            name: name.into(),
            type_name: ty.into(),
            category,
        }
    }

    #[test]
    fn masks_cast_back_to_the_column_type_and_refuse_unfit_columns() {
        let ssn = column("ssn", "character varying(11)", TypeCategory::String);
        let item = Mask::KeepLast { keep: 4 }.select_item(&ssn, None);
        assert_eq!(
            item.as_deref(),
            Ok(
                "CAST(lpad(right(\"ssn\", 4), length(\"ssn\"), '*') AS character varying(11)) AS \"ssn\""
            )
        );
        let born = column("birth_date", "date", TypeCategory::DateTime);
        assert!(
            Mask::EmailDomain
                .select_item(&born, None)
                .is_err_and(|e| e.contains("text columns only"))
        );
        assert_eq!(
            Mask::TruncateDate { to: DatePart::Year }
                .select_item(&born, None)
                .as_deref(),
            Ok("CAST(date_trunc('year', \"birth_date\") AS date) AS \"birth_date\"")
        );
        assert!(
            Mask::Pseudonym.select_item(&ssn, None).is_err(),
            "no key, no pseudonym"
        );
        assert_eq!(
            Mask::Fixed {
                value: "it's".into()
            }
            .select_item(&ssn, None)
            .as_deref(),
            Ok("CAST('it''s' AS character varying(11)) AS \"ssn\"")
        );
    }

    #[test]
    fn hmac_pads_are_those_of_rfc_2104() {
        // HMAC(K, m) = H((K ^ opad) || H((K ^ ipad) || m)): check the SQL's pads by
        // computing the same construction here and comparing with the hmac crate.
        use sha2::{Digest, Sha256};
        let key = b"pseudonym key";
        let sql = hmac_sql(key, "m");
        let hexes: Vec<&str> = sql.split("decode('").skip(1).map(|s| &s[..128]).collect();
        let bytes = |hex: &str| -> Vec<u8> {
            (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or(0))
                .collect()
        };
        let (outer, inner) = (bytes(hexes[0]), bytes(hexes[1]));
        let message = b"4111111111111111";
        let inner_hash = Sha256::digest([inner.as_slice(), message].concat());
        let ours = Sha256::digest([outer.as_slice(), inner_hash.as_slice()].concat());
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
        mac.update(message);
        assert_eq!(ours.as_slice(), mac.finalize().into_bytes().as_slice());
    }
}
