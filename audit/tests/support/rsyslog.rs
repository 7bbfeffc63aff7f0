//! The configuration of the private rsyslogd that the audit crate's tests, its pipeline
//! bench and the end-to-end tests (`tests/src/receivers.rs`) start: `imtcp` on one port
//! (RFC 6587 octet-counted framing; TLS through gnutls when asked), every message
//! written as received (`%rawmsg%`) as one line of `received.log` in the receiver's
//! directory, its work files in `work/` beside it. Included by `#[path]` in each, so
//! that the three receivers stay one receiver.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The receiver's certificate, key and the CA that signed them (PEM files).
pub struct Tls<'a> {
    pub ca: &'a Path,
    pub cert: &'a Path,
    pub key: &'a Path,
}

/// Where the receiver writes what it received.
pub fn received_log(dir: &Path) -> PathBuf {
    dir.join("received.log")
}

/// The directory rsyslogd needs for its own files (to be created by the caller).
pub fn work_dir(dir: &Path) -> PathBuf {
    dir.join("work")
}

/// `rsyslog.conf` for a receiver on `port` with its files in `dir`.
pub fn config(dir: &Path, port: u16, tls: Option<Tls<'_>>) -> String {
    let mut conf = format!("global(workDirectory=\"{}\")\n", work_dir(dir).display());
    match tls {
        Some(t) => {
            conf.push_str(&format!(
                "global(DefaultNetstreamDriver=\"gtls\" DefaultNetstreamDriverCAFile=\"{}\" \
                 DefaultNetstreamDriverCertFile=\"{}\" DefaultNetstreamDriverKeyFile=\"{}\")\n",
                t.ca.display(),
                t.cert.display(),
                t.key.display()
            ));
            conf.push_str(
                "module(load=\"imtcp\" StreamDriver.Name=\"gtls\" StreamDriver.Mode=\"1\" \
                 StreamDriver.AuthMode=\"anon\")\n",
            );
        }
        None => conf.push_str("module(load=\"imtcp\")\n"),
    }
    conf.push_str(&format!("input(type=\"imtcp\" port=\"{port}\")\n"));
    conf.push_str("template(name=\"raw\" type=\"string\" string=\"%rawmsg%\\n\")\n");
    conf.push_str(&format!(
        "action(type=\"omfile\" file=\"{}\" template=\"raw\" flushOnTXEnd=\"on\")\n",
        received_log(dir).display()
    ));
    conf
}
