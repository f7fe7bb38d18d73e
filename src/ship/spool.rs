//! The spool: objects that a quorum of destinations holds but not every
//! destination yet, kept on local disk until every destination has them.
//! Crash-safe (a spooled object is on disk before the write counts, and a
//! restart replays the spool to every destination; `put_if_absent` makes the
//! replay idempotent) and bounded: when it is full, new writes wait — which
//! stops WAL acknowledgement, so the slot keeps the WAL on the server — and
//! nothing is ever dropped to make room.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;

/// Where the spool lives and how large it may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    /// The directory (created when needed).
    pub dir: PathBuf,
    /// The most bytes it holds; one object larger than this still passes
    /// when the spool is empty.
    pub max_bytes: u64,
}

#[derive(Debug, Default)]
struct State {
    used: u64,
    /// Spooled objects: size, and destinations still to receive them.
    pending: HashMap<String, (u64, usize)>,
    /// Since when a write has been waiting for room.
    full_since: Option<Instant>,
}

/// The spool of one fan-out.
#[derive(Debug)]
pub(super) struct Spool {
    config: SpoolConfig,
    state: Mutex<State>,
    room: tokio::sync::Notify,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Spool {
    pub(super) fn new(config: SpoolConfig) -> Spool {
        Spool {
            config,
            state: Mutex::new(State::default()),
            room: tokio::sync::Notify::new(),
        }
    }

    /// `key` as a file name: `/` cannot be in one, `~` cannot be in a key.
    fn path(&self, key: &str) -> PathBuf {
        self.config.dir.join(key.replace('/', "~"))
    }

    /// Writes `data` to the spool for `dests` destinations, waiting for room.
    /// Returns `false` when the object is spooled already (a second write
    /// of the same immutable object).
    pub(super) async fn add(&self, key: &str, data: &Bytes, dests: usize) -> std::io::Result<bool> {
        let size = data.len() as u64;
        loop {
            let notified = self.room.notified();
            {
                let mut s = lock(&self.state);
                if s.pending.contains_key(key) {
                    return Ok(false);
                }
                if s.used == 0 || s.used + size <= self.config.max_bytes {
                    s.used += size;
                    s.pending.insert(key.to_owned(), (size, dests));
                    s.full_since = None;
                    break;
                }
                if s.full_since.is_none() {
                    s.full_since = Some(Instant::now());
                    tracing::error!(
                        spool = %self.config.dir.display(),
                        used = s.used,
                        max = self.config.max_bytes,
                        "the spool is full: writes wait (WAL is not acknowledged, the \
                         replication slot keeps it on the server) until a lagging \
                         destination catches up"
                    );
                }
            }
            notified.await;
        }
        let path = self.path(key);
        let dir = self.config.dir.clone();
        let data = data.clone();
        let written = tokio::task::spawn_blocking(move || {
            crate::crashsafe::create_private_dir_all(&dir)?;
            crate::crashsafe::write_file(&path, &data, 0o600)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        if let Err(e) = written {
            self.release(key);
            return Err(e);
        }
        Ok(true)
    }

    /// Forgets `key` without waiting for destinations (its write failed).
    fn release(&self, key: &str) {
        let mut s = lock(&self.state);
        if let Some((size, _)) = s.pending.remove(key) {
            s.used -= size;
        }
        drop(s);
        self.room.notify_waiters();
    }

    /// One more destination holds `key`; the last one frees it.
    pub(super) fn done(&self, key: &str) {
        let mut s = lock(&self.state);
        let Some(entry) = s.pending.get_mut(key) else {
            return;
        };
        entry.1 = entry.1.saturating_sub(1);
        if entry.1 > 0 {
            return;
        }
        let (size, _) = entry.to_owned();
        s.pending.remove(key);
        s.used -= size;
        drop(s);
        if let Err(e) = std::fs::remove_file(self.path(key))
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(key, error = %e, "cannot remove a spooled object every destination holds");
        }
        self.room.notify_waiters();
    }

    /// Whether `key` still waits for some destination.
    pub(super) fn holds(&self, key: &str) -> bool {
        lock(&self.state).pending.contains_key(key)
    }

    /// Reads a spooled object.
    pub(super) async fn read(&self, key: &str) -> std::io::Result<Bytes> {
        tokio::fs::read(self.path(key)).await.map(Bytes::from)
    }

    /// Objects left by an earlier run, registered for `dests` destinations:
    /// each must be offered to every destination again.
    pub(super) fn recover(&self, dests: usize) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.config.dir) else {
            return Vec::new();
        };
        let mut keys = Vec::new();
        let mut s = lock(&self.state);
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            // Half-written files of a crash never counted as spooled.
            if name.starts_with('.') || name.ends_with(".tmp") {
                let _ = std::fs::remove_file(e.path());
                continue;
            }
            let size = e.metadata().map_or(0, |m| m.len());
            let key = name.replace('~', "/");
            if s.pending.insert(key.clone(), (size, dests)).is_none() {
                s.used += size;
                keys.push(key);
            }
        }
        keys
    }

    /// Bytes spooled now.
    pub(super) fn used(&self) -> u64 {
        lock(&self.state).used
    }

    /// Objects spooled now.
    pub(super) fn len(&self) -> usize {
        lock(&self.state).pending.len()
    }

    /// Since when writes have been waiting for room, if they are.
    pub(super) fn full_since(&self) -> Option<Instant> {
        lock(&self.state).full_since
    }

    /// The spool directory.
    pub(super) fn dir(&self) -> &Path {
        &self.config.dir
    }
}
