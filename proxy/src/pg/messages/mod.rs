//! Strict decoders for the frontend messages whose bodies the proxy reads, and for the
//! backend result messages (RowDescription, DataRow) its own catalog queries read.
//!
//! pgwire's decoders trust the peer (they read past the end of a short body and replace
//! invalid UTF-8), which is fine for a server library talking to well-behaved clients but
//! not for a security boundary. These decoders check every length, require exactly one
//! terminating NUL per string and no trailing bytes, and refuse invalid UTF-8, returning
//! a [`DecodeError`] the session turns into the right SQLSTATE. Encoding still uses
//! pgwire's message types.

pub mod bind;
pub mod data_row;
pub mod parse;
pub mod query;
pub mod row_description;
pub mod sasl;

/// Why a message body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body does not have the layout of the message (SQLSTATE 08P01).
    #[error("invalid {0} message")]
    Malformed(&'static str),
    /// A string is not valid UTF-8 (SQLSTATE 22021).
    #[error("invalid byte sequence for encoding \"UTF8\" in {0} message")]
    InvalidUtf8(&'static str),
}

/// A cursor over a message body that never reads past its end.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(body: &'a [u8], what: &'static str) -> Self {
        Self { rest: body, what }
    }

    fn malformed(&self) -> DecodeError {
        DecodeError::Malformed(self.what)
    }

    /// A NUL-terminated UTF-8 string.
    pub(crate) fn cstr(&mut self) -> Result<&'a str, DecodeError> {
        let end = self
            .rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.malformed())?;
        let (s, tail) = self.rest.split_at(end);
        self.rest = tail.get(1..).unwrap_or_default();
        std::str::from_utf8(s).map_err(|_| DecodeError::InvalidUtf8(self.what))
    }

    pub(crate) fn i16(&mut self) -> Result<i16, DecodeError> {
        let (head, tail) = self
            .rest
            .split_first_chunk::<2>()
            .ok_or_else(|| self.malformed())?;
        self.rest = tail;
        Ok(i16::from_be_bytes(*head))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, DecodeError> {
        let (head, tail) = self
            .rest
            .split_first_chunk::<4>()
            .ok_or_else(|| self.malformed())?;
        self.rest = tail;
        Ok(i32::from_be_bytes(*head))
    }

    /// Exactly `n` bytes.
    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(self.malformed());
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    /// Everything left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    /// Fails unless the body has been consumed completely.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(self.malformed())
        }
    }
}
