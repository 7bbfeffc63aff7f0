//! The file sink: append events to a local file, with rotation and retention.
//!
//! - Every [`FileSink::write_batch`] appends the whole batch with one write and then
//!   `fsync`s the data: once it returns `Ok`, the batch is on disk.
//! - When the active file would grow past `max_bytes`, it is renamed to
//!   `<name>.<YYYYmmddTHHMMSS>.<N>` (UTC; `N` from 0, for rotations within one second)
//!   and a fresh file is started. A single batch larger than `max_bytes` is still
//!   written whole.
//! - After every rotation (and at open), rotated files beyond `retain_count` or older
//!   than `retain_age` (by modification time) are deleted, oldest first.
//! - Files are created with mode 0600 on Unix: an audit trail names users and tables.
//! - A file whose last line was cut short by a crash gets a newline before the next
//!   write, so the torn record stays one unparseable line (which `verify` reports)
//!   instead of corrupting the next event.
//!
//! Synchronous by design: it is meant to run on the audit writer's own thread or in
//! `spawn_blocking`, never on the query path.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use time::OffsetDateTime;

use crate::AuditError;
use crate::chain::Link;
use crate::event::AuditEvent;
use crate::format::Format;

/// How much of a file's end [`last_sealed`] reads to find the last event.
const TAIL: u64 = 2 * 1024 * 1024;

/// File sink settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSinkConfig {
    /// The active file; rotated files go next to it.
    pub path: PathBuf,
    /// Encoding of each event. Chain resumption and `verify` need [`Format::Json`].
    pub format: Format,
    /// Rotate when the file would exceed this many bytes; 0 never rotates.
    pub max_bytes: u64,
    /// Keep at most this many rotated files.
    pub retain_count: Option<usize>,
    /// Delete rotated files older than this.
    pub retain_age: Option<Duration>,
}

impl FileSinkConfig {
    /// JSON lines to `path`, rotating at 100 MiB, keeping 30 rotated files.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileSinkConfig {
            path: path.into(),
            format: Format::Json,
            max_bytes: 100 * 1024 * 1024,
            retain_count: Some(30),
            retain_age: None,
        }
    }
}

/// An open audit file.
#[derive(Debug)]
pub struct FileSink {
    config: FileSinkConfig,
    file: File,
    size: u64,
    buf: Vec<u8>,
    /// A write failed part-way; the file may end in a torn line.
    dirty: bool,
}

impl FileSink {
    /// Opens (or creates) the active file for appending, repairs a torn last line and
    /// applies retention. Refuses a path without a file name.
    pub fn open(config: FileSinkConfig) -> Result<Self, AuditError> {
        if config.path.file_name().is_none() {
            return Err(AuditError::Config(format!(
                "audit file path {} has no file name",
                config.path.display()
            )));
        }
        let file = open_append(&config.path)?;
        let size = file
            .metadata()
            .map_err(|e| AuditError::io("stat", &config.path, e))?
            .len();
        let mut sink = FileSink {
            config,
            file,
            size,
            buf: Vec::with_capacity(64 * 1024),
            dirty: true,
        };
        sink.repair_tail()?;
        sink.apply_retention()?;
        Ok(sink)
    }

    /// The active file.
    pub fn path(&self) -> &Path {
        &self.config.path
    }

    /// Bytes in the active file.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Encodes and appends `events`, rotating first if they would not fit, then
    /// `fsync`s. The events must already be sealed.
    ///
    /// On error nothing of the batch is left in the file (when the rollback itself
    /// succeeds): retry with the *same* sealed events. Resealing them would leave a
    /// gap in the chain, and dropping them must be recorded as an `audit_loss` event.
    pub fn write_batch(&mut self, events: &[AuditEvent]) -> Result<(), AuditError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let mut written = Ok(());
        for e in events {
            written = self.config.format.encode(e, &mut buf);
            if written.is_err() {
                break;
            }
        }
        if written.is_ok() {
            written = self.write_encoded(&buf);
        }
        self.buf = buf;
        written
    }

    /// Appends records already encoded in this sink's format (each ending with a
    /// newline, as [`Format::encode`] writes them), like [`FileSink::write_batch`]:
    /// rotating first if they would not fit, then `fsync`ing, and on error leaving
    /// nothing of them in the file. Refuses bytes that do not end with a newline.
    pub fn write_encoded(&mut self, records: &[u8]) -> Result<(), AuditError> {
        if records.is_empty() {
            return Ok(());
        }
        if records.last() != Some(&b'\n') {
            return Err(AuditError::Config(
                "audit records must end with a newline".into(),
            ));
        }
        self.repair_tail()?;
        let len = records.len() as u64;
        if self.config.max_bytes > 0
            && self.size > 0
            && self.size.saturating_add(len) > self.config.max_bytes
        {
            self.rotate()?;
        }
        let written = self
            .file
            .write_all(records)
            .map_err(|e| AuditError::io("write", &self.config.path, e))
            .and_then(|()| {
                self.file
                    .sync_data()
                    .map_err(|e| AuditError::io("fsync", &self.config.path, e))
            });
        if let Err(e) = written {
            // Roll the file back to the batch's start so that the caller can retry the
            // same sealed events without duplicating the part that did get written.
            // If even that fails, the next write first ends the torn line.
            self.dirty = self.file.set_len(self.size).is_err();
            return Err(e);
        }
        self.size = self.size.saturating_add(len);
        Ok(())
    }

    /// Renames the active file to its rotated name, starts a new one and applies
    /// retention. Returns the rotated file's path.
    pub fn rotate(&mut self) -> Result<PathBuf, AuditError> {
        let path = self.config.path.clone();
        self.file
            .sync_all()
            .map_err(|e| AuditError::io("fsync", &path, e))?;
        let stamp = rotation_stamp(OffsetDateTime::now_utc());
        // N continues after the highest N of this second still present, so that names
        // sort in rotation order even after retention removed a lower N.
        let first_n = rotated_keys(&path)?
            .into_iter()
            .filter(|((s, _), _)| *s == stamp)
            .map(|((_, n), _)| n.saturating_add(1))
            .max()
            .unwrap_or(0);
        let rotated = (first_n..)
            .map(|n| sibling(&path, &format!(".{stamp}.{n}")))
            .find(|p| !p.exists())
            .ok_or_else(|| AuditError::Config("no free rotation name".into()))?;
        fs::rename(&path, &rotated).map_err(|e| AuditError::io("rename", &path, e))?;
        self.file = open_append(&path)?;
        self.size = 0;
        sync_dir(&path);
        self.apply_retention()?;
        Ok(rotated)
    }

    /// Makes sure the file ends at a line boundary.
    fn repair_tail(&mut self) -> Result<(), AuditError> {
        if !self.dirty {
            return Ok(());
        }
        let path = &self.config.path;
        let mut f = File::open(path).map_err(|e| AuditError::io("open", path, e))?;
        let len = f
            .metadata()
            .map_err(|e| AuditError::io("stat", path, e))?
            .len();
        self.size = len;
        if len > 0 {
            let mut last = [0u8; 1];
            f.seek(SeekFrom::End(-1))
                .and_then(|_| f.read_exact(&mut last))
                .map_err(|e| AuditError::io("read", path, e))?;
            if last[0] != b'\n' {
                self.file
                    .write_all(b"\n")
                    .map_err(|e| AuditError::io("write", path, e))?;
                self.size += 1;
            }
        }
        self.dirty = false;
        Ok(())
    }

    /// Rotated files of this sink, oldest first.
    pub fn rotated_files(&self) -> Result<Vec<PathBuf>, AuditError> {
        rotated_files(&self.config.path)
    }

    fn apply_retention(&self) -> Result<(), AuditError> {
        let mut files = self.rotated_files()?;
        if let Some(max_age) = self.config.retain_age {
            let now = SystemTime::now();
            let mut kept = Vec::with_capacity(files.len());
            for f in files {
                let old = fs::metadata(&f)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| now.duration_since(t).ok())
                    .is_some_and(|age| age > max_age);
                if old {
                    remove(&f)?;
                } else {
                    kept.push(f);
                }
            }
            files = kept;
        }
        if let Some(count) = self.config.retain_count {
            let excess = files.len().saturating_sub(count);
            for f in &files[..excess] {
                remove(f)?;
            }
        }
        Ok(())
    }
}

fn remove(path: &Path) -> Result<(), AuditError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(AuditError::io("remove", path, e)),
    }
}

/// Opens `path` for appending, creating it owner-only (0600) if it is missing.
pub(crate) fn open_append(path: &Path) -> Result<File, AuditError> {
    let mut o = OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path).map_err(|e| AuditError::io("open", path, e))
}

/// Makes a rename durable; best effort (not every platform can open a directory).
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

fn rotation_stamp(t: OffsetDateTime) -> String {
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Parses `<stamp>.<n>` after the base name: `(stamp, n)`.
fn rotation_key(suffix: &str) -> Option<RotationKey> {
    let (stamp, n) = suffix.split_once('.')?;
    let b = stamp.as_bytes();
    let stamp_ok = b.len() == 15
        && b[8] == b'T'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 8 || c.is_ascii_digit());
    if !stamp_ok || n.is_empty() || !n.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some((stamp.to_owned(), n.parse().ok()?))
}

/// Rotated files of the active file `path`, oldest first.
pub fn rotated_files(path: &Path) -> Result<Vec<PathBuf>, AuditError> {
    Ok(rotated_keys(path)?.into_iter().map(|(_, p)| p).collect())
}

type RotationKey = (String, u64);

fn rotated_keys(path: &Path) -> Result<Vec<(RotationKey, PathBuf)>, AuditError> {
    let Some(base) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let prefix = format!("{base}.");
    let mut found = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| AuditError::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| AuditError::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(key) = name.strip_prefix(&prefix).and_then(rotation_key) {
            found.push((key, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// The chain position of `instance`'s last sealed event in the JSON-lines file `path`,
/// or in its newest rotated file when the active one holds none; `None` for a new
/// trail. Reads only the end of each file; torn or foreign lines are skipped.
pub fn last_sealed(path: &Path, instance: &str) -> Result<Option<Link>, AuditError> {
    if path.exists() {
        if let Some(link) = last_in_file(path, instance)? {
            return Ok(Some(link));
        }
    }
    for rotated in rotated_files(path)?.iter().rev() {
        if let Some(link) = last_in_file(rotated, instance)? {
            return Ok(Some(link));
        }
    }
    Ok(None)
}

fn last_in_file(path: &Path, instance: &str) -> Result<Option<Link>, AuditError> {
    let mut f = File::open(path).map_err(|e| AuditError::io("open", path, e))?;
    let len = f
        .metadata()
        .map_err(|e| AuditError::io("stat", path, e))?
        .len();
    let start = len.saturating_sub(TAIL);
    let mut tail = Vec::new();
    f.seek(SeekFrom::Start(start))
        .and_then(|_| f.read_to_end(&mut tail))
        .map_err(|e| AuditError::io("read", path, e))?;
    let mut lines: Vec<&[u8]> = tail.split(|b| *b == b'\n').collect();
    if start > 0 && !lines.is_empty() {
        // The first piece starts mid-line.
        lines.remove(0);
    }
    let mut saw_event = false;
    for line in lines.into_iter().rev() {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        let (Some(inst), Some(seq), Some(hash)) = (
            v.get("instance").and_then(Value::as_str),
            v.get("seq").and_then(Value::as_u64),
            v.get("hash").and_then(Value::as_str),
        ) else {
            continue;
        };
        saw_event = true;
        if inst == instance && !hash.is_empty() {
            return Ok(Some(Link {
                instance: inst.to_owned(),
                seq,
                hash: hash.to_owned(),
            }));
        }
    }
    if start > 0 && !saw_event {
        // Restarting the chain at seq 1 would look like a forged chain to `verify`;
        // better to refuse and let an operator look.
        return Err(AuditError::Config(format!(
            "no audit event in the last {TAIL} bytes of {}; cannot resume the hash chain",
            path.display()
        )));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::Chainer;
    use crate::event::EventKind;
    use crate::verify::verify;

    fn sealed(c: &mut Chainer, n: usize) -> Vec<AuditEvent> {
        (0..n)
            .map(|_| {
                let mut e = AuditEvent::new(EventKind::Connection).with_user("alice");
                c.seal(&mut e).unwrap();
                e
            })
            .collect()
    }

    fn all_files_oldest_first(path: &Path) -> Vec<PathBuf> {
        let mut files = rotated_files(path).unwrap();
        files.push(path.to_path_buf());
        files
    }

    fn verify_files(files: &[PathBuf]) -> crate::verify::Report {
        let readers: Vec<_> = files
            .iter()
            .map(|p| std::io::BufReader::new(File::open(p).unwrap()))
            .collect();
        verify(readers, None)
    }

    #[test]
    fn appends_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut sink = FileSink::open(FileSinkConfig::new(&path)).unwrap();
        let mut c = Chainer::new("px-1", None);
        sink.write_batch(&sealed(&mut c, 3)).unwrap();
        sink.write_batch(&sealed(&mut c, 2)).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 5);
        assert_eq!(sink.size(), text.len() as u64);
        assert!(verify_files(std::slice::from_ref(&path)).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }

    #[test]
    fn rotates_by_size_and_chain_spans_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let config = FileSinkConfig {
            max_bytes: 600,
            retain_count: None,
            ..FileSinkConfig::new(&path)
        };
        let mut sink = FileSink::open(config).unwrap();
        let mut c = Chainer::new("px-1", None);
        for _ in 0..6 {
            sink.write_batch(&sealed(&mut c, 1)).unwrap();
        }
        let rotated = sink.rotated_files().unwrap();
        assert!(rotated.len() >= 2, "{rotated:?}");
        for r in &rotated {
            let name = r.file_name().unwrap().to_str().unwrap();
            let suffix = name.strip_prefix("audit.jsonl.").unwrap();
            assert!(rotation_key(suffix).is_some(), "{name}");
            assert!(fs::metadata(r).unwrap().len() <= 600);
        }
        let report = verify_files(&all_files_oldest_first(&path));
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!(report.events, 6);
    }

    #[test]
    fn retention_by_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let config = FileSinkConfig {
            max_bytes: 1,
            retain_count: Some(2),
            ..FileSinkConfig::new(&path)
        };
        let mut sink = FileSink::open(config).unwrap();
        let mut c = Chainer::new("px-1", None);
        for _ in 0..5 {
            sink.write_batch(&sealed(&mut c, 1)).unwrap();
        }
        let rotated = sink.rotated_files().unwrap();
        assert_eq!(rotated.len(), 2);
        // The newest are kept: seq 3 and 4 rotated, seq 5 active.
        let report = verify_files(&all_files_oldest_first(&path));
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!(report.instances["px-1"].first_seq, 3);
    }

    #[test]
    fn retention_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let old = dir.path().join("audit.jsonl.20000101T000000.0");
        fs::write(&old, b"{}\n").unwrap();
        let unrelated = dir.path().join("audit.jsonl.backup");
        fs::write(&unrelated, b"x").unwrap();
        let past = SystemTime::now() - Duration::from_secs(3 * 86400);
        File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(past)
            .unwrap();
        let config = FileSinkConfig {
            retain_age: Some(Duration::from_secs(86400)),
            ..FileSinkConfig::new(&path)
        };
        let _sink = FileSink::open(config).unwrap();
        assert!(!old.exists());
        assert!(unrelated.exists(), "only rotation names are touched");
    }

    #[test]
    fn resumes_chain_after_restart_and_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut c = Chainer::new("px-1", None);
        {
            let mut sink = FileSink::open(FileSinkConfig::new(&path)).unwrap();
            sink.write_batch(&sealed(&mut c, 3)).unwrap();
        }
        // A crash mid-write leaves half a record without a newline.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"time\":\"2026-").unwrap();
        drop(f);

        let link = last_sealed(&path, "px-1").unwrap().unwrap();
        assert_eq!(link.seq, 3);
        let mut c2 = Chainer::resume("px-1", None, Some(link)).unwrap();
        let mut sink = FileSink::open(FileSinkConfig::new(&path)).unwrap();
        sink.write_batch(&sealed(&mut c2, 2)).unwrap();

        let report = verify_files(std::slice::from_ref(&path));
        assert_eq!(report.events, 5);
        assert_eq!(report.problem_count, 1, "{:?}", report.problems);
        assert!(matches!(
            report.first_problem(),
            Some(crate::verify::Problem::Unparseable { at, truncated: false, .. }) if at.line == 4
        ));
    }

    #[test]
    fn last_sealed_falls_back_to_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut sink = FileSink::open(FileSinkConfig::new(&path)).unwrap();
        let mut c = Chainer::new("px-1", None);
        sink.write_batch(&sealed(&mut c, 2)).unwrap();
        sink.rotate().unwrap();
        assert_eq!(last_sealed(&path, "px-1").unwrap().unwrap().seq, 2);
        assert_eq!(last_sealed(&path, "px-2").unwrap(), None);
        assert_eq!(
            last_sealed(&dir.path().join("none.jsonl"), "px-1").unwrap(),
            None
        );
    }

    #[test]
    fn other_formats_are_written_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.cef");
        let config = FileSinkConfig {
            format: Format::Cef,
            ..FileSinkConfig::new(&path)
        };
        let mut sink = FileSink::open(config).unwrap();
        let mut c = Chainer::new("px-1", None);
        sink.write_batch(&sealed(&mut c, 2)).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().filter(|l| l.starts_with("CEF:0|")).count(), 2);
    }
}
