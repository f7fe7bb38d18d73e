//! Restoring an SQLite database: the plan (newest snapshot at or before the
//! target, then every later page set up to it, their chain checked) and its
//! execution (pages applied in order into a temp file beside the target,
//! truncated to the recorded size, fsynced, checked with
//! `PRAGMA integrity_check` and the whole-database checksum, renamed).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use jiff::Timestamp;
use serde::Serialize;

use super::Target;
use crate::repo::{RepoError, Repository};
use crate::sqlite::pageset::{PageSetHeader, checksum_text, page_hash};
use crate::sqlite::store::{self, StoredCapture};

/// One capture a restore applies.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedCapture {
    /// The item.
    pub item: String,
    /// Its number.
    pub seq: u64,
    /// Whether it is a snapshot.
    pub snapshot: bool,
    /// The time its read snapshot was taken.
    pub at: Timestamp,
    /// Pages it holds.
    pub pages: u32,
    /// Its size in the repository's plaintext.
    pub bytes: u64,
}

/// The earliest and latest time a database can be restored to.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct SqliteWindow {
    /// The first snapshot's time.
    pub earliest: Option<Timestamp>,
    /// The last capture's time.
    pub latest: Option<Timestamp>,
}

/// What a restore will apply.
#[derive(Debug, Clone, Serialize)]
pub struct SqlitePlan {
    /// The `[[sqlite]]` name.
    pub database: String,
    /// The target as given.
    pub target: Target,
    /// The snapshot, then the page sets, in order.
    pub captures: Vec<PlannedCapture>,
    /// The state restored: the last capture's time.
    pub at: Timestamp,
    /// The restored size in pages and the page size.
    pub db_pages: u32,
    /// Bytes per page.
    pub page_size: u32,
    /// The whole-database checksum the result must have.
    pub checksum: String,
    /// The restore window.
    pub window: SqliteWindow,
}

impl SqlitePlan {
    /// Bytes of items to fetch.
    pub fn bytes(&self) -> u64 {
        self.captures.iter().map(|c| c.bytes).sum()
    }
}

/// Why a plan or a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum SqliteRestoreError {
    /// Nothing is stored for this database.
    #[error(
        "nothing is stored for [[sqlite]] {0:?}: `pitr run` takes its first snapshot when it starts watching"
    )]
    NothingStored(String),
    /// The target is before the first snapshot or not a time.
    #[error("{0}")]
    NotReachable(String),
    /// A target kind that SQLite does not have.
    #[error("{0} is a PostgreSQL target; an SQLite restore takes --at TIME or --latest")]
    WrongTarget(String),
    /// The chain of captures has a hole.
    #[error(
        "capture {item} applies on top of capture {base:?}, but the one before it is {prev}: \
         the chain is broken, so no restore after {prev_at} is possible from this snapshot"
    )]
    Gap {
        /// The capture whose base is missing.
        item: String,
        /// Its base.
        base: Option<u64>,
        /// The previous capture's number.
        prev: u64,
        /// Its time.
        prev_at: Timestamp,
    },
    /// The target exists.
    #[error(
        "{0} exists: pitr does not overwrite a database (or a -wal/-journal beside it) unless \
         --force is given"
    )]
    TargetExists(PathBuf),
    /// The catalog failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The repository failed (missing, altered objects...).
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// A stored page set does not parse.
    #[error("capture {item} is not a valid page set: {what}")]
    Corrupt {
        /// The item.
        item: String,
        /// What is wrong.
        what: String,
    },
    /// Local I/O failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The result's checksum differs from the catalog's.
    #[error(
        "the restored database's checksum {got} differs from the recorded {expected}: the \
         restore is wrong and was not put in place"
    )]
    Checksum {
        /// Recorded.
        expected: String,
        /// Computed.
        got: String,
    },
    /// `PRAGMA integrity_check` failed.
    #[error("PRAGMA integrity_check on the restored database failed: {0}; it was not put in place")]
    Integrity(String),
}

impl SqliteRestoreError {
    /// Whether it means "that target cannot be reached" (exit 1).
    pub fn is_not_possible(&self) -> bool {
        matches!(
            self,
            SqliteRestoreError::NothingStored(_)
                | SqliteRestoreError::NotReachable(_)
                | SqliteRestoreError::Gap { .. }
        )
    }

    /// Whether it is bad usage (exit 2).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            SqliteRestoreError::WrongTarget(_) | SqliteRestoreError::TargetExists(_)
        )
    }
}

/// The restore window of database `name`.
pub fn window(repo: &Repository, name: &str) -> Result<SqliteWindow, SqliteRestoreError> {
    let caps = store::captures(repo, name)?;
    Ok(window_of(&caps))
}

fn window_of(caps: &[StoredCapture]) -> SqliteWindow {
    SqliteWindow {
        earliest: caps.iter().find(|c| c.snapshot).map(|c| c.attrs.at),
        latest: caps.last().map(|c| c.attrs.at),
    }
}

/// Plans a restore of database `name` to `target` from the catalog alone.
pub fn plan(
    repo: &Repository,
    name: &str,
    target: &Target,
) -> Result<SqlitePlan, SqliteRestoreError> {
    let until = match target {
        Target::Time(t) => Some(*t),
        Target::Latest => None,
        other => return Err(SqliteRestoreError::WrongTarget(other.describe())),
    };
    let caps = store::captures(repo, name)?;
    if caps.is_empty() {
        return Err(SqliteRestoreError::NothingStored(name.to_owned()));
    }
    let window = window_of(&caps);
    let upto: Vec<&StoredCapture> = caps
        .iter()
        .filter(|c| until.is_none_or(|t| c.attrs.at <= t))
        .collect();
    let Some(start) = upto.iter().rposition(|c| c.snapshot) else {
        let w = match (window.earliest, window.latest) {
            (Some(e), Some(l)) => format!("{e} to {l}"),
            _ => "empty (no snapshot stored yet)".to_owned(),
        };
        return Err(SqliteRestoreError::NotReachable(format!(
            "no snapshot of [[sqlite]] {name:?} was taken at or before {}; the restore window is {w}",
            target.describe()
        )));
    };
    let chain = &upto[start..];
    for pair in chain.windows(2) {
        if pair[1].attrs.base != Some(pair[0].attrs.seq) {
            return Err(SqliteRestoreError::Gap {
                item: pair[1].item.name.clone(),
                base: pair[1].attrs.base,
                prev: pair[0].attrs.seq,
                prev_at: pair[0].attrs.at,
            });
        }
    }
    let last = chain.last().expect("at least the snapshot");
    Ok(SqlitePlan {
        database: name.to_owned(),
        target: target.clone(),
        captures: chain
            .iter()
            .map(|c| PlannedCapture {
                item: c.item.name.clone(),
                seq: c.attrs.seq,
                snapshot: c.snapshot,
                at: c.attrs.at,
                pages: c.attrs.pages,
                bytes: c.item.manifest.size,
            })
            .collect(),
        at: last.attrs.at,
        db_pages: last.attrs.db_pages,
        page_size: last.attrs.page_size,
        checksum: last.attrs.checksum.clone(),
        window,
    })
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct SqliteRestoreReport {
    /// The file written.
    pub target: PathBuf,
    /// Captures applied.
    pub captures: usize,
    /// Pages written (a page rewritten by several captures counts each time).
    pub pages_written: u64,
    /// The restored size in bytes.
    pub bytes: u64,
    /// The checked checksum.
    pub checksum: String,
}

/// The side files SQLite would apply to or pair with a database at `p`.
fn side_files(p: &Path) -> Vec<PathBuf> {
    ["-wal", "-journal", "-shm"]
        .iter()
        .map(|s| {
            let mut n = p.as_os_str().to_owned();
            n.push(s);
            PathBuf::from(n)
        })
        .collect()
}

/// Executes `plan` into the file `target`: nothing is put in place unless
/// the checksum and `PRAGMA integrity_check` both pass (invariant 6).
pub async fn restore(
    repo: &Repository,
    plan: &SqlitePlan,
    target: &Path,
    force: bool,
) -> Result<SqliteRestoreReport, SqliteRestoreError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| SqliteRestoreError::Io {
            path: path.clone(),
            source,
        }
    };
    let sides = side_files(target);
    if !force {
        for p in std::iter::once(target.to_owned()).chain(sides.iter().cloned()) {
            if p.symlink_metadata().is_ok() {
                return Err(SqliteRestoreError::TargetExists(p));
            }
        }
    }
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".pitr-sqlite-restore")
        .tempfile_in(&dir)
        .map_err(io(&dir))?;
    let file = tmp.as_file().try_clone().map_err(io(tmp.path()))?;
    let reader = repo.reader()?;
    let mut pages_written = 0u64;
    for c in &plan.captures {
        let item = repo
            .catalog()
            .latest_item(&c.item)
            .map_err(store::StoreError::from)?
            .ok_or_else(|| SqliteRestoreError::Corrupt {
                item: c.item.clone(),
                what: "no longer in the catalog".into(),
            })?;
        let mut apply = Applier::new(&file, &c.item, item.manifest.size);
        let mut s = std::pin::pin!(reader.stream(&item.manifest));
        while let Some(bytes) = s.try_next().await? {
            apply.feed(&bytes)?;
        }
        pages_written += apply.finish()?;
    }
    let size = u64::from(plan.db_pages) * u64::from(plan.page_size);
    file.set_len(size).map_err(io(tmp.path()))?;
    file.sync_all().map_err(io(tmp.path()))?;
    let got = checksum_text(file_checksum(tmp.path(), plan.page_size).map_err(io(tmp.path()))?);
    if got != plan.checksum {
        return Err(SqliteRestoreError::Checksum {
            expected: plan.checksum.clone(),
            got,
        });
    }
    integrity_check(tmp.path())?;
    if force {
        // Only now: a stale WAL or journal beside the target would be
        // applied to the restored file the first time it is opened.
        for p in &sides {
            match std::fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(p)(e)),
            }
        }
    }
    tmp.persist(target).map_err(|e| io(target)(e.error))?;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io(&dir))?;
    Ok(SqliteRestoreReport {
        target: target.to_owned(),
        captures: plan.captures.len(),
        pages_written,
        bytes: size,
        checksum: got,
    })
}

/// XOR of every page's hash, streaming the file.
pub fn file_checksum(path: &Path, page_size: u32) -> std::io::Result<u64> {
    let mut f = std::io::BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut page = vec![0u8; page_size as usize];
    let mut sum = 0u64;
    let mut pgno = 1u32;
    loop {
        let mut n = 0;
        while n < page.len() {
            match f.read(&mut page[n..])? {
                0 => break,
                k => n += k,
            }
        }
        if n == 0 {
            return Ok(sum);
        }
        if n < page.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file is not a whole number of pages",
            ));
        }
        sum ^= page_hash(pgno, &page);
        pgno += 1;
    }
}

/// A path as an SQLite URI filename, so it can be opened `immutable`.
fn uri(path: &Path) -> String {
    let mut out = String::from("file:");
    for b in path.as_os_str().as_encoded_bytes() {
        match b {
            b'?' | b'#' | b'%' => out.push_str(&format!("%{b:02X}")),
            _ => out.push(*b as char),
        }
    }
    out.push_str("?immutable=1");
    out
}

/// Runs `PRAGMA integrity_check` without creating a `-wal` or `-shm`.
pub fn integrity_check(path: &Path) -> Result<(), SqliteRestoreError> {
    use rusqlite::{Connection, OpenFlags};
    let fail = |e: rusqlite::Error| SqliteRestoreError::Integrity(e.to_string());
    let conn = Connection::open_with_flags(
        uri(path),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(fail)?;
    let mut st = conn.prepare("PRAGMA integrity_check").map_err(fail)?;
    let rows: Vec<String> = st
        .query_map([], |r| r.get(0))
        .map_err(fail)?
        .collect::<Result<_, _>>()
        .map_err(fail)?;
    if rows != ["ok"] {
        return Err(SqliteRestoreError::Integrity(rows.join("; ")));
    }
    Ok(())
}

/// Writes one page set's pages into place as its bytes stream in; holds
/// only the header and one partial page.
struct Applier<'a> {
    file: &'a File,
    item: &'a str,
    buf: Vec<u8>,
    header: Option<PageSetHeader>,
    /// The item's size: no header is longer.
    size: u64,
    header_len: Option<u64>,
    next: usize,
    written: u64,
}

impl<'a> Applier<'a> {
    fn new(file: &'a File, item: &'a str, size: u64) -> Self {
        Applier {
            file,
            item,
            size,
            buf: Vec::new(),
            header: None,
            header_len: None,
            next: 0,
            written: 0,
        }
    }

    fn corrupt(&self, what: impl Into<String>) -> SqliteRestoreError {
        SqliteRestoreError::Corrupt {
            item: self.item.to_owned(),
            what: what.into(),
        }
    }

    fn feed(&mut self, mut data: &[u8]) -> Result<(), SqliteRestoreError> {
        while !data.is_empty() {
            let Some(h) = &self.header else {
                let want = match self.header_len {
                    Some(n) => n as usize,
                    None => 24,
                };
                let take = (want - self.buf.len()).min(data.len());
                self.buf.extend_from_slice(&data[..take]);
                data = &data[take..];
                if self.buf.len() == want {
                    if self.header_len.is_none() {
                        let n = PageSetHeader::len_from_prefix(&self.buf)
                            .map_err(|e| self.corrupt(e.0))?;
                        if n > self.size {
                            return Err(self.corrupt(format!(
                                "its header claims {n} bytes, more than the whole item ({})",
                                self.size
                            )));
                        }
                        self.header_len = Some(n);
                    } else {
                        let h = PageSetHeader::decode(&self.buf).map_err(|e| self.corrupt(e.0))?;
                        self.header = Some(h);
                        self.buf.clear();
                    }
                }
                continue;
            };
            let ps = h.page_size as usize;
            if self.next >= h.count() as usize {
                return Err(self.corrupt("bytes after the last page"));
            }
            let take = (ps - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == ps {
                let pgno = if h.snapshot {
                    self.next as u32 + 1
                } else {
                    h.pages[self.next]
                };
                let at = u64::from(pgno - 1) * ps as u64;
                self.file
                    .write_all_at(&self.buf, at)
                    .map_err(|source| SqliteRestoreError::Io {
                        path: PathBuf::from("(restore temp file)"),
                        source,
                    })?;
                self.buf.clear();
                self.next += 1;
                self.written += 1;
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<u64, SqliteRestoreError> {
        match &self.header {
            Some(h) if self.next == h.count() as usize && self.buf.is_empty() => Ok(self.written),
            Some(h) => Err(self.corrupt(format!("{} of {} pages present", self.next, h.count()))),
            None => Err(self.corrupt("no header")),
        }
    }
}
