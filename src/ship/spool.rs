//! The spool: objects that a quorum of destinations holds but not every
//! destination yet, kept on local disk until every destination has them.
//! Crash-safe (a spooled object is on disk before the write counts, and a
//! restart replays the spool to every destination; `put_if_absent` makes the
//! replay idempotent) and bounded: when it is full, new writes wait — which
//! stops WAL acknowledgement, so the slot keeps the WAL on the server — and
//! nothing is ever dropped to make room.
//!
//! Each process owns its own spool: a subdirectory `<spool_dir>/<pid>-<n>/`
//! holding a `.lock` file the process keeps locked (`flock`) while it
//! lives. Several processes on one state directory (`pitr run` beside
//! `pitr backup` or `pitr retention`) therefore never touch each other's
//! objects. A spool whose lock is free belongs to a process that ended: the
//! next writer adopts its objects ([`Spool::adopt`]) and replays them.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use nix::fcntl::Flock;

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
    /// This process's own directory and its held lock, once claimed.
    own: OnceLock<(PathBuf, Flock<File>)>,
    /// Objects found gone from the spool that a destination still lacks:
    /// `(destination, key)`, newest last, bounded.
    lost: Mutex<Vec<(String, String)>>,
}

/// The lock file in each owned spool directory.
const LOCK: &str = ".lock";
/// Held (briefly) while a process claims or adopts spool directories.
const ADOPT_LOCK: &str = ".adopt.lock";
/// Lost objects remembered for `/health`.
const LOST_KEPT: usize = 100;

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Spool {
    pub(super) fn new(config: SpoolConfig) -> Spool {
        Spool {
            config,
            state: Mutex::new(State::default()),
            room: tokio::sync::Notify::new(),
            own: OnceLock::new(),
            lost: Mutex::new(Vec::new()),
        }
    }

    /// This process's spool directory (the shared one until claimed,
    /// which a writer always is before its first `add`).
    fn own_dir(&self) -> &Path {
        self.own.get().map_or(&self.config.dir, |(d, _)| d)
    }

    /// `key` as a file name: `/` cannot be in one, `~` cannot be in a key.
    fn path(&self, key: &str) -> PathBuf {
        self.own_dir().join(key.replace('/', "~"))
    }

    /// Creates and locks this process's own spool directory, once.
    fn claim(&self) -> std::io::Result<&Path> {
        if let Some((d, _)) = self.own.get() {
            return Ok(d);
        }
        std::fs::create_dir_all(&self.config.dir)?;
        let _adopting = adopt_lock(&self.config.dir)?;
        if let Some((d, _)) = self.own.get() {
            return Ok(d);
        }
        // Made under a dot name (which adopters skip), locked, then
        // renamed: no other process ever sees it unlocked.
        let name = format!("{}-{:08x}", std::process::id(), rand::random::<u32>());
        let staging = self.config.dir.join(format!(".new-{name}"));
        std::fs::create_dir(&staging)?;
        std::fs::write(staging.join(LOCK), format!("{}\n", std::process::id()))?;
        let lock = crate::crashsafe::try_lock(File::open(staging.join(LOCK))?)?
            .map_err(|_| std::io::Error::other("a new spool directory is locked already"))?;
        let dir = self.config.dir.join(&name);
        std::fs::rename(&staging, &dir)?;
        let _ = self.own.set((dir, lock));
        Ok(self.own_dir())
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
        if let Err(e) = self.claim() {
            self.release(key);
            return Err(e);
        }
        let path = self.path(key);
        let dir = self.own_dir().to_owned();
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

    /// Claims this process's spool and adopts every spool left by a
    /// process that ended (its lock is free), plus objects of the older
    /// shared layout lying in the spool directory itself: they move into
    /// this process's directory and are registered for `dests`
    /// destinations. Returns their keys: each must be offered to every
    /// destination again. Safe to call again at any time.
    pub(super) fn adopt(&self, dests: usize) -> std::io::Result<Vec<String>> {
        let own = self.claim()?.to_owned();
        let _adopting = adopt_lock(&self.config.dir)?;
        for e in std::fs::read_dir(&self.config.dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            if name.starts_with('.') || path == own {
                continue;
            }
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_file() {
                // The shared layout of earlier versions.
                let _ = std::fs::rename(&path, own.join(&name));
                continue;
            }
            if !kind.is_dir() {
                continue;
            }
            let Ok(file) = File::open(path.join(LOCK)) else {
                continue;
            };
            let Ok(Ok(_held)) = crate::crashsafe::try_lock(file) else {
                continue; // Its process lives: never touched.
            };
            tracing::info!(spool = %path.display(), "adopting the spool of a process that ended");
            if let Ok(entries) = std::fs::read_dir(&path) {
                for f in entries.flatten() {
                    let n = f.file_name().to_string_lossy().into_owned();
                    if !n.starts_with('.') {
                        let _ = std::fs::rename(f.path(), own.join(&n));
                    }
                }
            }
            let _ = std::fs::remove_dir_all(&path);
        }
        let mut keys = Vec::new();
        let mut s = lock(&self.state);
        for e in std::fs::read_dir(&own)?.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            // The lock, and temp files of writes in flight in this process
            // (an ended process's went with its directory).
            if name.starts_with('.') {
                continue;
            }
            let size = e.metadata().map_or(0, |m| m.len());
            let key = name.replace('~', "/");
            if s.pending.insert(key.clone(), (size, dests)).is_none() {
                s.used += size;
                keys.push(key);
            }
        }
        Ok(keys)
    }

    /// `key` was gone from the spool while `dest` still lacked it: nothing
    /// can send it there any more. Recorded for `/health` (a scrub or
    /// `pitr repair` copies it from a destination that has it) and counted
    /// as handled so the queue moves on.
    pub(super) fn lost(&self, dest: &str, key: &str) {
        if let Ok(mut l) = self.lost.lock() {
            if l.len() >= LOST_KEPT {
                l.remove(0);
            }
            l.push((dest.to_owned(), key.to_owned()));
        }
        self.done(key);
    }

    /// Objects lost from the spool before reaching a destination:
    /// `(destination, key)`.
    pub(super) fn lost_objects(&self) -> Vec<(String, String)> {
        self.lost.lock().map(|l| l.clone()).unwrap_or_default()
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

    /// This process's spool directory.
    pub(super) fn dir(&self) -> &Path {
        self.own_dir()
    }
}

impl Drop for Spool {
    /// An empty spool of a process that ends goes with it (one with objects
    /// stays for the next writer to adopt).
    fn drop(&mut self) {
        let Some((dir, _)) = self.own.get() else {
            return;
        };
        let only_lock = std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .flatten()
                .all(|e| e.file_name().to_string_lossy() == LOCK)
        });
        if only_lock {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Locks `<dir>/.adopt.lock` until the returned file is dropped: claims and
/// adoptions of one spool directory happen one at a time.
fn adopt_lock(dir: &Path) -> std::io::Result<Flock<File>> {
    crate::crashsafe::lock(File::create(dir.join(ADOPT_LOCK))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool(dir: &Path) -> Spool {
        Spool::new(SpoolConfig {
            dir: dir.to_owned(),
            max_bytes: 1 << 20,
        })
    }

    #[tokio::test]
    async fn two_spools_on_one_directory_never_share_objects() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let a = spool(tmp.path());
        let b = spool(tmp.path());
        assert!(
            a.add("x/1", &Bytes::from_static(b"one"), 2)
                .await
                .expect("add")
        );
        // `b` claims and adopts while `a` lives: `a`'s object stays `a`'s.
        assert!(b.adopt(2).expect("adopt").is_empty());
        assert_ne!(a.dir(), b.dir());
        assert_eq!(
            a.read("x/1").await.expect("still a's"),
            Bytes::from_static(b"one")
        );
        assert!(!b.holds("x/1"));
        // `a` ends (its process, here its value): the next adoption takes
        // its objects over.
        let a_dir = a.dir().to_owned();
        drop(a);
        assert_eq!(b.adopt(2).expect("adopt"), ["x/1"]);
        assert_eq!(
            b.read("x/1").await.expect("b's now"),
            Bytes::from_static(b"one")
        );
        assert!(!a_dir.exists());
        // A write in flight in this process (its temp file) survives the
        // periodic adoption.
        let temp = b.dir().join(".x~2.tmp0001");
        std::fs::write(&temp, b"partial").expect("temp");
        assert!(b.adopt(2).expect("adopt").is_empty());
        assert!(temp.exists());
        std::fs::remove_file(&temp).expect("rm");
        // An empty spool leaves with its process.
        let c = spool(tmp.path());
        assert!(c.adopt(2).expect("adopt").is_empty());
        let c_dir = c.dir().to_owned();
        assert!(c_dir.exists());
        drop(c);
        assert!(!c_dir.exists());
    }
}
