//! A sink's on-disk spool: an append-only file of records that could not be delivered.
//!
//! Layout of `<dir>/spool.dat`: records one after another, each
//! `u32 BE length | 32-byte SHA-256 of the payload | payload`. `<dir>/spool.pos` holds
//! the offset (u64 BE) of the first record not yet delivered; it is rewritten after
//! every delivered batch (without fsync: losing it only means records are delivered
//! again, which the at-least-once contract allows). When every record is delivered the
//! file is truncated to zero.
//!
//! At open the file is scanned from the saved offset: a record that is cut short or
//! whose digest does not match (a crash during an append that was never acknowledged)
//! ends the spool, and the file is truncated there so that later appends stay readable.
//!
//! Synchronous; the pipeline calls it from `spawn_blocking`.
//!
//! TODO: compaction. While a receiver is slower than the input the file only grows
//! (it is truncated only when fully drained); `spool_max_bytes` bounds it.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::AuditError;

const HEADER: u64 = 4 + 32;
/// Largest record accepted when reading back (a corrupt length must not allocate GiBs).
const MAX_RECORD: u32 = 64 * 1024 * 1024;

/// The spool of one sink.
#[derive(Debug)]
pub(crate) struct Spool {
    path: PathBuf,
    pos_path: PathBuf,
    file: File,
    /// Offset of the first undelivered record.
    read_pos: u64,
    /// End of the last valid record (= file length).
    len: u64,
    max_bytes: u64,
    /// Offset of the newest record, if any.
    last_at: Option<u64>,
}

/// The spool cannot take a batch: it would grow past its bound (or is disabled).
#[derive(Debug)]
pub(crate) struct SpoolFull;

impl Spool {
    /// Opens (creating if needed, mode 0700) the spool in `dir`, bounded to `max_bytes`
    /// (0 disables spooling: every append is refused).
    pub(crate) fn open(dir: &Path, max_bytes: u64) -> Result<Self, AuditError> {
        create_private_dir(dir)?;
        let path = dir.join("spool.dat");
        let pos_path = dir.join("spool.pos");
        let mut o = OpenOptions::new();
        o.create(true).read(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(0o600);
        }
        let file = o
            .open(&path)
            .map_err(|e| AuditError::io("open", &path, e))?;
        let file_len = file
            .metadata()
            .map_err(|e| AuditError::io("stat", &path, e))?
            .len();
        let saved = fs::read(&pos_path)
            .ok()
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        let mut spool = Spool {
            path,
            pos_path,
            file,
            read_pos: 0,
            len: file_len,
            max_bytes,
            last_at: None,
        };
        // A saved offset that is not a record boundary (or lies past the end) is
        // distrusted: start from 0 and deliver everything again.
        let start = if saved <= file_len { saved } else { 0 };
        let valid_end = match spool.scan(start)? {
            Some(end) => {
                spool.read_pos = start;
                end
            }
            None => {
                spool.read_pos = 0;
                spool.scan(0)?.unwrap_or(0)
            }
        };
        if valid_end < file_len {
            tracing::warn!(
                spool = %spool.path.display(),
                valid_end,
                file_len,
                "audit spool ends in a torn or corrupt record; truncating it"
            );
            spool
                .file
                .set_len(valid_end)
                .map_err(|e| AuditError::io("truncate", &spool.path, e))?;
        }
        spool.len = valid_end;
        if spool.is_empty() && spool.len > 0 {
            spool.reset()?;
        }
        Ok(spool)
    }

    /// Walks records from `start`; the end of the last valid one, or `None` when
    /// `start` is not at a record boundary that validates.
    fn scan(&mut self, start: u64) -> Result<Option<u64>, AuditError> {
        let mut f = File::open(&self.path).map_err(|e| AuditError::io("open", &self.path, e))?;
        f.seek(SeekFrom::Start(start))
            .map_err(|e| AuditError::io("seek", &self.path, e))?;
        let mut r = BufReader::new(f);
        let mut pos = start;
        let mut first = true;
        loop {
            match read_record(&mut r) {
                Ok(Some(rec)) => {
                    self.last_at = Some(pos);
                    pos += HEADER + rec.len() as u64;
                }
                Ok(None) => return Ok(Some(pos)),
                Err(_) if first && start > 0 => return Ok(None),
                Err(_) => return Ok(Some(pos)),
            }
            first = false;
        }
    }

    /// Whether every spooled record has been delivered.
    pub(crate) fn is_empty(&self) -> bool {
        self.read_pos >= self.len
    }

    /// Bytes on disk.
    pub(crate) fn len_bytes(&self) -> u64 {
        self.len
    }

    /// Appends `records` and fsyncs, or refuses them all when they would not fit.
    pub(crate) fn append(
        &mut self,
        records: &[Vec<u8>],
    ) -> Result<Result<(), SpoolFull>, AuditError> {
        let add: u64 = records.iter().map(|r| HEADER + r.len() as u64).sum();
        if self.max_bytes == 0 || self.len.saturating_add(add) > self.max_bytes {
            return Ok(Err(SpoolFull));
        }
        let mut buf = Vec::with_capacity(usize::try_from(add).unwrap_or(0));
        let mut last_at = None;
        for r in records {
            last_at = Some(self.len + buf.len() as u64);
            let len = u32::try_from(r.len())
                .ok()
                .filter(|l| *l <= MAX_RECORD)
                .ok_or_else(|| AuditError::Config("audit record too large to spool".into()))?;
            buf.extend_from_slice(&len.to_be_bytes());
            buf.extend_from_slice(&Sha256::digest(r));
            buf.extend_from_slice(r);
        }
        let written = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // Cut back whatever part did get written so that the file stays readable.
            let _ = self.file.set_len(self.len);
            return Err(AuditError::io("write", &self.path, e));
        }
        self.len += add;
        if last_at.is_some() {
            self.last_at = last_at;
        }
        Ok(Ok(()))
    }

    /// Up to `max` undelivered records, oldest first, and the offset after them (to
    /// pass to [`Spool::advance`] once they are delivered).
    pub(crate) fn peek(&self, max: usize) -> Result<(Vec<Vec<u8>>, u64), AuditError> {
        let mut f = File::open(&self.path).map_err(|e| AuditError::io("open", &self.path, e))?;
        f.seek(SeekFrom::Start(self.read_pos))
            .map_err(|e| AuditError::io("seek", &self.path, e))?;
        let mut r = BufReader::new(f.take(self.len - self.read_pos));
        let mut out = Vec::new();
        let mut pos = self.read_pos;
        while out.len() < max {
            match read_record(&mut r).map_err(|e| AuditError::io("read", &self.path, e))? {
                Some(rec) => {
                    pos += HEADER + rec.len() as u64;
                    out.push(rec);
                }
                None => break,
            }
        }
        Ok((out, pos))
    }

    /// The newest record still in the spool (delivered or not), to resume a chain
    /// from.
    pub(crate) fn last(&self) -> Result<Option<Vec<u8>>, AuditError> {
        let Some(at) = self.last_at.filter(|a| *a < self.len) else {
            return Ok(None);
        };
        let mut f = File::open(&self.path).map_err(|e| AuditError::io("open", &self.path, e))?;
        f.seek(SeekFrom::Start(at))
            .map_err(|e| AuditError::io("seek", &self.path, e))?;
        read_record(&mut BufReader::new(f)).map_err(|e| AuditError::io("read", &self.path, e))
    }

    /// Marks the next undelivered records, `bytes` of spool (see [`stored_len`]),
    /// delivered: for a batch [`Spool::peek`] returned that was only partly delivered.
    pub(crate) fn advance_by(&mut self, bytes: u64) -> Result<(), AuditError> {
        self.advance(self.read_pos.saturating_add(bytes))
    }

    /// Marks everything before `pos` delivered; truncates the file once all is.
    pub(crate) fn advance(&mut self, pos: u64) -> Result<(), AuditError> {
        self.read_pos = pos.min(self.len);
        if self.is_empty() {
            return self.reset();
        }
        fs::write(&self.pos_path, self.read_pos.to_be_bytes())
            .map_err(|e| AuditError::io("write", &self.pos_path, e))
    }

    fn reset(&mut self) -> Result<(), AuditError> {
        self.file
            .set_len(0)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| AuditError::io("truncate", &self.path, e))?;
        self.len = 0;
        self.read_pos = 0;
        self.last_at = None;
        fs::write(&self.pos_path, 0u64.to_be_bytes())
            .map_err(|e| AuditError::io("write", &self.pos_path, e))
    }
}

/// The room `record` takes in the spool.
pub(crate) fn stored_len(record: &[u8]) -> u64 {
    HEADER + record.len() as u64
}

/// One record, `None` at a clean end; an error for a torn or corrupt record.
fn read_record(r: &mut impl Read) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len);
    if len > MAX_RECORD {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "spool record length out of range",
        ));
    }
    let mut digest = [0u8; 32];
    r.read_exact(&mut digest)?;
    let mut rec = vec![0u8; len as usize];
    r.read_exact(&mut rec)?;
    if Sha256::digest(&rec).as_slice() != digest {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "spool record digest mismatch",
        ));
    }
    Ok(Some(rec))
}

pub(crate) fn create_private_dir(dir: &Path) -> Result<(), AuditError> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir).map_err(|e| AuditError::io("mkdir", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(range: std::ops::Range<u32>) -> Vec<Vec<u8>> {
        range
            .map(|i| format!("record {i}\n").into_bytes())
            .collect()
    }

    #[test]
    fn append_peek_advance_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(s.is_empty());
        s.append(&recs(0..5)).unwrap().unwrap();
        s.append(&recs(5..8)).unwrap().unwrap();
        let (got, pos) = s.peek(3).unwrap();
        assert_eq!(got, recs(0..3));
        // Partly delivered first, then the rest.
        s.advance_by(stored_len(&got[0])).unwrap();
        assert_eq!(s.peek(1).unwrap().0, recs(1..2));
        s.advance(pos).unwrap();
        drop(s);
        // A restart resumes after the delivered records.
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        let (got, pos) = s.peek(100).unwrap();
        assert_eq!(got, recs(3..8));
        s.advance(pos).unwrap();
        assert!(s.is_empty());
        assert_eq!(s.len_bytes(), 0);
    }

    #[test]
    fn torn_tail_is_cut_and_bound_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 200).unwrap();
        s.append(&recs(0..2)).unwrap().unwrap();
        assert!(s.append(&recs(0..10)).unwrap().is_err(), "over the bound");
        drop(s);
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("spool.dat"))
            .unwrap();
        f.write_all(&[0, 0, 0, 9, 1, 2, 3]).unwrap();
        drop(f);
        let mut s = Spool::open(dir.path(), 200).unwrap();
        s.append(&recs(2..3)).unwrap().unwrap();
        assert_eq!(s.peek(100).unwrap().0, recs(0..3));
        assert!(
            Spool::open(&dir.path().join("off"), 0)
                .unwrap()
                .append(&recs(0..1))
                .unwrap()
                .is_err()
        );
    }
}
