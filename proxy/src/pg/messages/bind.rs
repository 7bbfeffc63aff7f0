//! Bind ('B'): only the portal and statement names are read; the rest is forwarded
//! untouched.

use super::{DecodeError, Reader};

/// Portal and statement names of a Bind body.
pub fn names(body: &[u8]) -> Result<(&str, &str), DecodeError> {
    let mut r = Reader::new(body, "Bind");
    let portal = r.cstr()?;
    let statement = r.cstr()?;
    Ok((portal, statement))
}

/// Portal name of an Execute body (followed by the row limit).
pub fn execute_portal(body: &[u8]) -> Result<&str, DecodeError> {
    let mut r = Reader::new(body, "Execute");
    let portal = r.cstr()?;
    r.i32()?;
    r.finish()?;
    Ok(portal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_and_refuses_truncation() {
        assert_eq!(names(b"p1\0s1\0\0\0"), Ok(("p1", "s1")));
        assert!(names(b"p1\0s1").is_err());
        assert_eq!(execute_portal(b"p1\0\0\0\0\0"), Ok("p1"));
        assert!(execute_portal(b"p1\0\0\0").is_err());
    }
}
