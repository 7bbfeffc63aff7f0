//! A sink's dead-letter file: records its receiver refused for good
//! ([`SinkError::Refused`](crate::sink::SinkError::Refused)).
//!
//! Two files next to the sink's spool:
//!
//! - `dead-letter.records`: the refused records exactly as the sink was given them
//!   (its format, each record ending with a newline), one after another, so that an
//!   operator can read them and, once the cause is fixed, resend them byte for byte.
//! - `dead-letter.reasons.jsonl`: one JSON line per refusal:
//!   `{"time":"<RFC 3339>","sink":"<name>","records":<n>,"offset":<o>,"bytes":<b>,"reason":"<why>"}`;
//!   `offset` and `bytes` locate the refused records in the first file. The reason is
//!   the sink's error message, which names the receiver's status and error type, never
//!   the records' contents.
//!
//! Both are append-only, created with mode 0600 in the spool's private directory, and
//! fsynced after every append. Their combined size is bounded by the sink's
//! `spool_max_bytes` (0 disables the dead-letter file like the spool). The pipeline
//! never reads, truncates or rotates them: the operator moves them away once handled,
//! and the next refusal starts new ones.
//!
//! Synchronous; the pipeline calls it from `spawn_blocking`.

use std::io::Write;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::spool::{SpoolFull, create_private_dir};
use crate::AuditError;
use crate::sink::file::open_append;

/// Name of the file holding the refused records, in the spool directory.
pub(crate) const RECORDS_FILE: &str = "dead-letter.records";
/// Name of the file holding one line per refusal, in the spool directory.
pub(crate) const REASONS_FILE: &str = "dead-letter.reasons.jsonl";

/// One sink's dead-letter files.
#[derive(Debug)]
pub(crate) struct DeadLetter {
    dir: PathBuf,
    records: PathBuf,
    reasons: PathBuf,
    max_bytes: u64,
}

impl DeadLetter {
    /// The dead-letter files in `dir` (the sink's spool directory), bounded to
    /// `max_bytes` together. Nothing is created until the first refusal.
    pub(crate) fn new(dir: &Path, max_bytes: u64) -> Self {
        DeadLetter {
            dir: dir.to_path_buf(),
            records: dir.join(RECORDS_FILE),
            reasons: dir.join(REASONS_FILE),
            max_bytes,
        }
    }

    /// Where the refused records go.
    pub(crate) fn records_path(&self) -> &Path {
        &self.records
    }

    /// Appends `records` (refused by `sink`'s receiver because of `reason`) and the
    /// line that says so, each fsynced; refuses them all when they would not fit.
    pub(crate) fn append(
        &self,
        sink: &str,
        records: &[Vec<u8>],
        reason: &str,
    ) -> Result<Result<(), SpoolFull>, AuditError> {
        let bytes: u64 = records.iter().map(|r| r.len() as u64).sum();
        let used = file_len(&self.records) + file_len(&self.reasons);
        // The reasons line is small; 1 KiB of room for it keeps the bound honest.
        if self.max_bytes == 0 || used.saturating_add(bytes + 1024) > self.max_bytes {
            return Ok(Err(SpoolFull));
        }
        create_private_dir(&self.dir)?;
        let mut file = open_append(&self.records)?;
        let offset = file
            .metadata()
            .map_err(|e| AuditError::io("stat", &self.records, e))?
            .len();
        let mut buf = Vec::with_capacity(usize::try_from(bytes).unwrap_or(0));
        for r in records {
            buf.extend_from_slice(r);
        }
        if let Err(e) = file.write_all(&buf).and_then(|()| file.sync_data()) {
            // Cut back whatever part did get written: a half record helps nobody.
            let _ = file.set_len(offset);
            return Err(AuditError::io("write", &self.records, e));
        }

        let line = serde_json::json!({
            "time": OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default(),
            "sink": sink,
            "records": records.len(),
            "offset": offset,
            "bytes": bytes,
            "reason": reason,
        });
        let mut line = serde_json::to_vec(&line)?;
        line.push(b'\n');
        let noted = open_append(&self.reasons).and_then(|mut f| {
            f.write_all(&line)
                .and_then(|()| f.sync_data())
                .map_err(|e| AuditError::io("write", &self.reasons, e))
        });
        if let Err(e) = noted {
            // The records are kept, which is what matters; writing them again would
            // only duplicate them.
            tracing::warn!(sink, error = %e, "could not note why audit records were dead-lettered");
        }
        Ok(Ok(()))
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_records_byte_exact_with_reasons_and_keeps_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        let dl = DeadLetter::new(&spool, 4096);
        let a = vec![b"{\"seq\":1}\n".to_vec()];
        let b = vec![b"CEF:0|x\n".to_vec(), b"{\"seq\":3}\n".to_vec()];
        dl.append("siem", &a, "HTTP 400: mapper_parsing_exception")
            .unwrap()
            .unwrap();
        dl.append("siem", &b, "HTTP 413").unwrap().unwrap();
        let kept = std::fs::read(dl.records_path()).unwrap();
        assert_eq!(kept, [a.concat(), b.concat()].concat());

        let reasons = std::fs::read_to_string(spool.join(REASONS_FILE)).unwrap();
        let lines: Vec<serde_json::Value> = reasons
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["sink"], "siem");
        assert_eq!(lines[0]["records"], 1);
        assert_eq!(lines[1]["offset"], a[0].len());
        assert_eq!(lines[1]["bytes"], b[0].len() + b[1].len());
        assert_eq!(lines[1]["reason"], "HTTP 413");
        let off = lines[1]["offset"].as_u64().unwrap() as usize;
        let len = lines[1]["bytes"].as_u64().unwrap() as usize;
        assert_eq!(kept[off..off + len], b.concat());

        #[cfg(unix)]
        for f in [RECORDS_FILE, REASONS_FILE] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(spool.join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }

        assert!(
            dl.append("siem", &[vec![b'x'; 4096]], "big")
                .unwrap()
                .is_err()
        );
        assert!(
            DeadLetter::new(&dir.path().join("off"), 0)
                .append("s", &a, "r")
                .unwrap()
                .is_err(),
            "0 disables it"
        );
    }
}
