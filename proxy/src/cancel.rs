//! CancelRequest routing: the proxy hands out its own BackendKeyData and maps a
//! cancel back to the upstream backend that runs the session's statement.

use std::collections::HashMap;

use parking_lot::Mutex;
use rand::RngExt;
use subtle::ConstantTimeEq;

use crate::upstream::CancelTarget;

/// Live sessions by their proxy-issued process id.
#[derive(Default)]
pub struct CancelRegistry {
    sessions: Mutex<Sessions>,
}

#[derive(Default)]
struct Sessions {
    /// Proxy pid -> (secret, upstream target).
    by_proxy_pid: HashMap<i32, (i32, CancelTarget)>,
    /// Upstream backend pid -> proxy pid, for NotificationResponse.
    by_upstream_pid: HashMap<i32, i32>,
}

/// Removes the session from the registry when dropped.
pub struct Registration<'a> {
    registry: &'a CancelRegistry,
    /// The process id handed to the client.
    pub pid: i32,
    /// The secret handed to the client.
    pub secret: i32,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut sessions = self.registry.sessions.lock();
        if let Some((_, target)) = sessions.by_proxy_pid.remove(&self.pid) {
            sessions.by_upstream_pid.remove(&target.backend_pid());
        }
    }
}

impl CancelRegistry {
    /// Issues a fresh (pid, secret) for a session and remembers its upstream.
    pub fn register(&self, target: CancelTarget) -> Registration<'_> {
        let mut rng = rand::rng();
        let secret: i32 = rng.random();
        let mut sessions = self.sessions.lock();
        let pid = loop {
            // Positive ids, like real backend pids, and never reused while live.
            let candidate = rng.random_range(1..i32::MAX);
            if !sessions.by_proxy_pid.contains_key(&candidate) {
                break candidate;
            }
        };
        sessions.by_upstream_pid.insert(target.backend_pid(), pid);
        sessions.by_proxy_pid.insert(pid, (secret, target));
        Registration {
            registry: self,
            pid,
            secret,
        }
    }

    /// The upstream to cancel for a client's CancelRequest, if pid and secret match.
    pub fn lookup(&self, pid: i32, secret: i32) -> Option<CancelTarget> {
        let sessions = self.sessions.lock();
        let (expected, target) = sessions.by_proxy_pid.get(&pid)?;
        bool::from(expected.to_be_bytes().ct_eq(&secret.to_be_bytes())).then(|| target.clone())
    }

    /// The pid the proxy handed out for the session on upstream backend `upstream_pid`.
    pub fn proxy_pid(&self, upstream_pid: i32) -> Option<i32> {
        self.sessions
            .lock()
            .by_upstream_pid
            .get(&upstream_pid)
            .copied()
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.sessions.lock().by_proxy_pid.len()
    }

    /// Whether no session is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
