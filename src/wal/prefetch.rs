//! Prefetching for `pitr wal-fetch`. PostgreSQL runs `restore_command` once
//! per segment and waits for it, so replay would be bound by one fetch per
//! 16 MiB. After serving a segment, `wal-fetch` starts a detached process
//! that fetches the next few complete segments, verified, into a spool
//! directory under `state_dir`; the next `wal-fetch` finds its file there
//! and only moves it into place. This is WAL-G's `wal-prefetch` idea.
//!
//! The spool holds plaintext WAL on the machine that restores; it is
//! emptied of segments older than the one last asked for.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::store::{WalStore, WalStoreError};
use crate::pg::Segment;

/// A lock older than this belongs to a prefetcher that died.
const STALE_LOCK: Duration = Duration::from_secs(600);

/// The prefetch spool of one `[[postgres]]` entry.
#[derive(Debug, Clone)]
pub struct Prefetch {
    dir: PathBuf,
}

impl Prefetch {
    /// The spool of `database` under `state_dir`.
    pub fn new(state_dir: &Path, database: &str) -> Prefetch {
        Prefetch {
            dir: state_dir.join("prefetch").join(database),
        }
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Moves a prefetched `file` to `path` when the spool has it; `false`
    /// when it has not. The move is atomic for PostgreSQL: a rename, or on
    /// another filesystem a copy beside `path`, fsync, rename.
    pub fn take(&self, file: &str, path: &Path) -> io::Result<bool> {
        let spooled = self.dir.join(file);
        if !spooled.is_file() {
            return Ok(false);
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        if fs::rename(&spooled, path).is_err() {
            let tmp = tempfile::Builder::new()
                .prefix(".pitr-wal-fetch")
                .tempfile_in(&dir)?;
            fs::copy(&spooled, tmp.path())?;
            tmp.as_file().sync_all()?;
            tmp.persist(path).map_err(|e| e.error)?;
            fs::remove_file(&spooled)?;
        }
        fs::File::open(&dir)?.sync_all()?;
        Ok(true)
    }

    /// Fetches up to `count` complete segments after `after` (a segment file
    /// name) into the spool, skipping those spooled already and stopping at
    /// the first one the repository does not hold complete. Removes spooled
    /// segments before `after`. Returns how many were fetched; 0 when
    /// another prefetcher holds the lock.
    pub async fn fill(
        &self,
        store: &WalStore,
        after: &str,
        count: usize,
    ) -> Result<usize, WalStoreError> {
        let output = |source| WalStoreError::Output {
            path: self.dir.clone(),
            source,
        };
        crate::crashsafe::create_private_dir_all(&self.dir).map_err(output)?;
        let Some(_lock) = Lock::take(&self.dir.join(".lock")).map_err(output)? else {
            return Ok(0);
        };
        let Some(seg_size) = store
            .find(after)?
            .and_then(|f| f.attrs)
            .map(|a| a.segment_size)
        else {
            return Ok(0);
        };
        let Some(first) = Segment::parse(after, seg_size) else {
            return Ok(0);
        };
        self.remove_before(first, seg_size).map_err(output)?;
        let mut fetched = 0;
        let mut next = first;
        for _ in 0..count {
            next = next.next();
            let name = next.file_name(seg_size);
            let target = self.dir.join(&name);
            if target.exists() {
                continue;
            }
            match store.find(&name)? {
                Some(found) if !found.partial => {}
                // A partial may still grow: never spool it.
                _ => break,
            }
            store.fetch_to(&name, &target).await?;
            fetched += 1;
        }
        Ok(fetched)
    }

    fn remove_before(&self, first: Segment, seg_size: u64) -> io::Result<()> {
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(seg) = name.to_str().and_then(|n| Segment::parse(n, seg_size)) else {
                continue;
            };
            if seg.timeline == first.timeline && seg.no < first.no {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }
}

/// An exclusive lock file, removed on drop.
struct Lock(PathBuf);

impl Lock {
    fn take(path: &Path) -> io::Result<Option<Lock>> {
        for _ in 0..2 {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
            {
                Ok(_) => return Ok(Some(Lock(path.to_owned()))),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let age = fs::metadata(path)?
                        .modified()?
                        .elapsed()
                        .unwrap_or(Duration::ZERO);
                    if age < STALE_LOCK {
                        return Ok(None);
                    }
                    // Left by a prefetcher that died: take it over.
                    let _ = fs::remove_file(path);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}
