//! One consistent capture of an SQLite database: which pages changed since
//! the last capture, read inside one short read transaction through
//! `sqlite_dbpage`, spooled to a local file for the repository to store.
//!
//! WAL mode, the consistency rule: let `P` be the last commit frame already
//! captured. Parse the WAL to its last valid commit frame `F1`; begin a read
//! transaction (its snapshot `S` is at least `F1`); parse again to `F2 ≥ S`;
//! read the pages of frames `(P, F2]` as of `S`. Every page that changed up
//! to `S` is among them, so the pages stored plus the previous state are
//! exactly the database at `S`. Then `P = F1` (frames after `F1` may be
//! newer than `S`, so they are read again next time).
//!
//! When that chain is broken — the WAL restarted before its last frames were
//! read, the file was replaced (new inode), it shrank, its page size or
//! journal mode changed — and in rollback-journal mode always, every page is
//! hashed and compared with the page hashes of the last capture.
//!
//! Never a lock between captures, never a write: the connection is opened
//! read-only, with a busy timeout, and holds a transaction only while
//! reading pages.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use rusqlite::{Connection, OpenFlags};

use super::pageset::{PageSetHeader, page_hash};
use super::wal::{FrameId, WalCursor};

/// How many times, a millisecond apart, a read asks again for a lock a
/// writer holds before the capture is skipped (and tried again at the next
/// tick): about half a second. A waiting reader holds no lock, so the
/// writer never waits on it. SQLite's own busy timeout backs off to 100 ms
/// between tries, which in rollback-journal mode misses the sub-millisecond
/// gaps between a busy writer's commits almost every time: captures
/// starved (bench/sqlite, throughput part).
const BUSY_RETRIES: i32 = 500;

/// The busy handler of a capture's connection: retry every millisecond,
/// [`BUSY_RETRIES`] times.
fn retry_soon(attempts: i32) -> bool {
    if attempts >= BUSY_RETRIES {
        return false;
    }
    std::thread::sleep(Duration::from_millis(1));
    true
}

/// Counters of the watcher's own work, for tests, benchmarks and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Bytes of database pages read through `sqlite_dbpage`.
    pub db_bytes_read: AtomicU64,
    /// Bytes read from the WAL file.
    pub wal_bytes_read: AtomicU64,
    /// Captures stored.
    pub captures: AtomicU64,
    /// Captures that hashed every page.
    pub full_scans: AtomicU64,
    /// Snapshots stored.
    pub snapshots: AtomicU64,
    /// Pages stored.
    pub pages_stored: AtomicU64,
    /// Bytes of packs uploaded for captures.
    pub bytes_stored: AtomicU64,
    /// Captures that failed (logged, retried).
    pub failures: AtomicU64,
}

impl Stats {
    /// A counter's value.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Why a capture could not be taken. Every case is retried by the watcher.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The database file does not exist.
    #[error("SQLite database {0} does not exist (waiting for it to appear)")]
    Missing(PathBuf),
    /// The file is not an SQLite database.
    #[error("{path} is not an SQLite database: {what}")]
    NotSqlite {
        /// The file.
        path: PathBuf,
        /// What was found.
        what: String,
    },
    /// A writer held its lock longer than the busy timeout.
    #[error("SQLite database {0} is locked by a writer; the capture is retried at the next tick")]
    Busy(PathBuf),
    /// SQLite failed.
    #[error("SQLite database {path}: {source}")]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// The error.
        source: rusqlite::Error,
    },
    /// SQLite answered something a consistent read cannot give.
    #[error("SQLite database {path}: {what}")]
    Unexpected {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// Reading the WAL or writing the spool failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The journal mode a capture saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Write-ahead log.
    Wal,
    /// Rollback journal (delete, truncate, persist, memory, off).
    Rollback,
}

impl Mode {
    /// As recorded in the catalog.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Wal => "wal",
            Mode::Rollback => "rollback",
        }
    }
}

/// What the last stored capture left: the page hashes it implies.
#[derive(Debug, Clone)]
struct State {
    page_size: u32,
    hashes: Vec<u64>,
    checksum: u64,
    inode: (u64, u64),
    mode: Mode,
}

/// A capture spooled and ready to store.
#[derive(Debug)]
pub struct Spooled {
    /// The page set's header (its page list, for a diff).
    pub header: PageSetHeader,
    /// The pages, in header order, in this file.
    pub pages_file: PathBuf,
    /// When the read snapshot was taken.
    pub at: Timestamp,
    /// The whole-database checksum after it.
    pub checksum: u64,
    /// The journal mode seen.
    pub mode: Mode,
    /// Why it was taken.
    pub reason: String,
    update: Update,
    trim_to: Option<FrameId>,
    db_sig: Option<(u64, (i64, i64))>,
    inode: (u64, u64),
}

#[derive(Debug)]
enum Update {
    /// Every page's hash.
    Full(Vec<u64>),
    /// Changed pages' new hashes and the new size.
    Diff(Vec<(u32, u64)>, u32),
}

/// What a cheap look at the files found, to tell whether to capture.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Signals {
    inode: (u64, u64),
    size: u64,
    mtime: (i64, i64),
    wal: Option<(u64, (i64, i64), u64)>,
    /// The rollback-journal change counter (header offset 24).
    change_counter: Option<u32>,
}

/// Captures one database.
#[derive(Debug)]
pub struct Capturer {
    path: PathBuf,
    wal_path: PathBuf,
    spool: PathBuf,
    /// Open only during a capture: see `connection`.
    conn: Option<Connection>,
    cursor: WalCursor,
    /// `(frame, page)` of committed WAL frames after `P`.
    pending: Vec<(FrameId, u32)>,
    state: Option<State>,
    /// A continuity break seen while polling, for the next capture.
    rescan: Option<String>,
    /// The database file's size and mtime when the last capture began.
    db_sig: Option<(u64, (i64, i64))>,
    /// The `db_sig` of a capture taken but not yet stored or discarded:
    /// while it is stored, the WAL is still followed, and a new WAL's frames
    /// are new against it (see `advance_wal`).
    in_flight: Option<Option<(u64, (i64, i64))>>,
    /// A new WAL was judged against the capture in flight: if that capture
    /// is discarded, the judgement was against the wrong base.
    new_wal_in_flight: bool,
    signals: Option<Signals>,
    stats: Arc<Stats>,
}

fn inode_of(m: &std::fs::Metadata) -> (u64, u64) {
    (m.dev(), m.ino())
}

impl Capturer {
    /// A capturer of the database at `path`, spooling into `spool_dir`.
    pub fn new(path: &Path, spool_dir: &Path, stats: Arc<Stats>) -> Capturer {
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let file = path
            .file_name()
            .map_or("db".into(), |f| f.to_string_lossy().into_owned());
        Capturer {
            path: path.to_owned(),
            wal_path: PathBuf::from(wal),
            spool: spool_dir.join(format!("{file}.pages")),
            conn: None,
            cursor: WalCursor::new(),
            pending: Vec::new(),
            state: None,
            rescan: None,
            db_sig: None,
            in_flight: None,
            new_wal_in_flight: false,
            signals: None,
            stats,
        }
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Whether a capture has been stored (so the next one can be a diff).
    pub fn has_state(&self) -> bool {
        self.state.is_some()
    }

    fn sql_err(&self) -> impl Fn(rusqlite::Error) -> CaptureError + '_ {
        move |source| match source.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked) => {
                CaptureError::Busy(self.path.clone())
            }
            Some(rusqlite::ErrorCode::NotADatabase) => CaptureError::NotSqlite {
                path: self.path.clone(),
                what: source.to_string(),
            },
            _ => CaptureError::Sqlite {
                path: self.path.clone(),
                source,
            },
        }
    }

    fn io_err(path: &Path) -> impl Fn(std::io::Error) -> CaptureError + '_ {
        move |source| CaptureError::Io {
            path: path.to_owned(),
            source,
        }
    }

    fn stat(&self) -> Result<std::fs::Metadata, CaptureError> {
        std::fs::metadata(&self.path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => CaptureError::Missing(self.path.clone()),
            _ => CaptureError::Io {
                path: self.path.clone(),
                source: e,
            },
        })
    }

    /// Checks the header's magic and reads the journal mode from it
    /// (bytes 18 and 19 are 2 in WAL mode).
    fn read_mode(&self) -> Result<Mode, CaptureError> {
        use std::io::Read;
        let mut f = File::open(&self.path).map_err(Self::io_err(&self.path))?;
        let mut head = [0u8; 100];
        let mut n = 0;
        while n < head.len() {
            match f.read(&mut head[n..]).map_err(Self::io_err(&self.path))? {
                0 => break,
                k => n += k,
            }
        }
        if n == 0 {
            // SQLite creates the file empty and writes the header with the
            // first transaction: nothing to capture yet, not an error.
            return Err(CaptureError::NotSqlite {
                path: self.path.clone(),
                what: "the file is empty (no transaction committed yet)".into(),
            });
        }
        if n < 100 || &head[..16] != b"SQLite format 3\0" {
            return Err(CaptureError::NotSqlite {
                path: self.path.clone(),
                what: "it does not start with the SQLite header".into(),
            });
        }
        Ok(if head[18] == 2 && head[19] == 2 {
            Mode::Wal
        } else {
            Mode::Rollback
        })
    }

    /// A fresh read-only connection for one capture. Never one kept
    /// between captures: an idle read-only connection holds no lock, so a
    /// writer closing last checkpoints and deletes the WAL and `-shm` under
    /// it, and a connection that opened while no WAL existed reads the file
    /// as a rollback database — either way it could serve a stale snapshot.
    fn connection(&mut self) -> Result<&Connection, CaptureError> {
        self.conn = None;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(&self.path, flags).map_err(self.sql_err())?;
        conn.busy_handler(Some(retry_soon))
            .map_err(self.sql_err())?;
        Ok(self.conn.insert(conn))
    }

    fn look(&mut self) -> Result<Signals, CaptureError> {
        let m = self.stat()?;
        let inode = inode_of(&m);
        let wal = std::fs::metadata(&self.wal_path)
            .ok()
            .map(|w| (w.len(), (w.mtime(), w.mtime_nsec()), w.ino()));
        // The change counter moves with every rollback-mode commit, even
        // within one mtime tick; WAL commits are seen by `poll` reading the
        // new frames.
        let change_counter = {
            use std::io::Read;
            let mut b = [0u8; 28];
            File::open(&self.path)
                .and_then(|mut f| f.read_exact(&mut b))
                .ok()
                .map(|()| u32::from_be_bytes([b[24], b[25], b[26], b[27]]))
        };
        Ok(Signals {
            inode,
            size: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            wal,
            change_counter,
        })
    }

    /// A cheap check: file stats, the change counter, and the WAL frames
    /// committed since the last look (read into the pending list, so the
    /// capture reads only what came after). Whether anything may have
    /// changed since the last capture. True at first.
    pub fn poll(&mut self) -> Result<bool, CaptureError> {
        let now = self.look()?;
        let mut changed = self.signals.as_ref() != Some(&now) || self.state.is_none();
        self.signals = Some(now);
        if self.wal_path.exists() || self.cursor.position().is_some() {
            let before = self.pending.len();
            if let Some(lost) = self.advance_wal()? {
                self.rescan.get_or_insert(lost);
                changed = true;
            }
            changed |= self.pending.len() != before;
        }
        Ok(changed || self.rescan.is_some() || !self.pending.is_empty())
    }

    /// Reads the WAL frames committed since the last look into the pending
    /// list, and nothing else (no file signals: [`Self::poll`] still sees
    /// what changed). Called often while a writer is busy, so that a WAL
    /// its checkpoints restart several times per interval is read before
    /// the restarts overwrite frames this watcher has not seen, which would
    /// cost a rescan of every page — also while a capture is being stored,
    /// between [`Self::capture`] and [`Self::stored`] or [`Self::discard`].
    pub fn follow(&mut self) -> Result<(), CaptureError> {
        if self.wal_path.exists() || self.cursor.position().is_some() {
            if let Some(lost) = self.advance_wal()? {
                self.rescan.get_or_insert(lost);
            }
        }
        Ok(())
    }

    /// Takes a capture: the changed pages (every page when `snapshot` or
    /// when no capture was stored yet) spooled to a file. `None` when
    /// nothing changed. Nothing is remembered until [`Self::stored`] says
    /// the capture is safe in the repository: a capture that fails to store
    /// is taken again, whole, next time.
    pub fn capture(&mut self, snapshot: bool) -> Result<Option<Spooled>, CaptureError> {
        // A capture the caller neither stored nor discarded is not a base.
        self.in_flight = None;
        self.new_wal_in_flight = false;
        let m = self.stat()?;
        let inode = inode_of(&m);
        let mode = self.read_mode()?;
        let mut rescan = self.rescan.take();
        let mut full = snapshot || self.state.is_none();
        if let Some(s) = &self.state {
            if s.inode != inode {
                rescan = Some("the database file was replaced (new inode)".into());
            } else if s.mode != mode {
                rescan = Some(format!("the journal mode changed to {}", mode.as_str()));
            }
        }
        // F1: the WAL as committed before the transaction begins.
        let mut trim_to = None;
        let db_sig = Some((m.len(), (m.mtime(), m.mtime_nsec())));
        if mode == Mode::Wal {
            if let Some(lost) = self.advance_wal()? {
                rescan.get_or_insert(lost);
            }
            trim_to = self.cursor.position();
            if trim_to.is_none() && self.state.is_some() && db_sig != self.db_sig {
                // No readable WAL, yet the file changed: a writer's WAL was
                // checkpointed into it and removed (or truncated) between two
                // looks, with frames this watcher never read.
                rescan.get_or_insert_with(|| {
                    "the database changed while no WAL was readable (a checkpoint of frames \
                     the watcher never saw)"
                        .into()
                });
            }
        }
        let spool = self.spool.clone();
        let begun = self.connection()?.execute_batch("BEGIN");
        if let Err(e) = begun {
            self.conn = None;
            if let Some(r) = rescan {
                self.rescan = Some(r);
            }
            return Err(self.sql_err()(e));
        }
        let out = self.in_transaction(mode, inode, &mut full, &mut rescan, &spool);
        if let Some(conn) = self.conn.take() {
            // Ends the read; a failed COMMIT of a read-only transaction
            // leaves nothing behind, and closing releases every lock.
            if conn.execute_batch("COMMIT").is_err() {
                let _ = conn.execute_batch("ROLLBACK");
            }
        }
        let mut spooled = match out {
            Ok(None) => {
                // Nothing changed up to S: the frames up to F1 are settled.
                self.trim(trim_to);
                self.db_sig = db_sig;
                return Ok(None);
            }
            Ok(Some(s)) => s,
            Err(e) => {
                // Whatever made this capture break it must not be forgotten.
                if let Some(r) = rescan {
                    self.rescan = Some(r);
                }
                return Err(e);
            }
        };
        spooled.trim_to = trim_to;
        spooled.db_sig = db_sig;
        self.in_flight = Some(db_sig);
        Ok(Some(spooled))
    }

    /// Reads the WAL's new commits into `pending`; `Some(why)` when frames
    /// were lost.
    fn advance_wal(&mut self) -> Result<Option<String>, CaptureError> {
        let file = match File::open(&self.wal_path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Self::io_err(&self.wal_path)(e)),
        };
        let adv = self
            .cursor
            .advance(file.as_ref())
            .map_err(Self::io_err(&self.wal_path))?;
        add(&self.stats.wal_bytes_read, adv.bytes_read);
        self.pending.extend(adv.frames);
        // The capture the new frames build on: the one being stored, if
        // any (it becomes the base once stored), else the last stored.
        let base = match self.in_flight {
            Some(sig) => Some(sig),
            None => self.state.is_some().then_some(self.db_sig),
        };
        if adv.first_look
            && let Some(base) = base
        {
            // A WAL appeared since the last look (the last one was removed
            // when its writer closed). Its frames are all new unless a
            // checkpoint wrote some of them into the database meanwhile,
            // which changes the file.
            self.new_wal_in_flight |= self.in_flight.is_some();
            let m = self.stat()?;
            if Some((m.len(), (m.mtime(), m.mtime_nsec()))) != base {
                return Ok(Some(
                    "a new WAL appeared and the database file changed since the last capture"
                        .into(),
                ));
            }
        }
        Ok(adv.lost)
    }

    fn trim(&mut self, to: Option<FrameId>) {
        if let Some(f) = to {
            self.pending.retain(|&(id, _)| id > f);
        }
    }

    fn in_transaction(
        &mut self,
        mode: Mode,
        inode: (u64, u64),
        full: &mut bool,
        rescan: &mut Option<String>,
        spool: &Path,
    ) -> Result<Option<Spooled>, CaptureError> {
        let conn = self.conn.as_ref().expect("connected");
        let err = self.sql_err();
        // The first read fixes the snapshot S; `at` is taken after it, so
        // every transaction the capture holds committed before `at`.
        let db_pages: u32 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .map_err(&err)?;
        let page_size: u32 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(&err)?;
        let at = Timestamp::now();
        drop(err);
        // F2: everything committed up to S is in frames up to here.
        if mode == Mode::Wal
            && let Some(lost) = self.advance_wal()?
        {
            rescan.get_or_insert(lost);
        }
        if let Some(s) = &self.state {
            if s.page_size != page_size {
                *full = true;
                rescan.get_or_insert(format!(
                    "the page size changed from {} to {page_size}",
                    s.page_size
                ));
            } else if (db_pages as usize) < s.hashes.len() {
                rescan.get_or_insert(format!(
                    "the database shrank from {} to {db_pages} pages",
                    s.hashes.len()
                ));
            }
        }
        if mode == Mode::Rollback {
            // No log says what changed: compare every page's hash.
            rescan.get_or_insert_with(|| "rollback-journal mode".into());
        }
        let conn = self.conn.as_ref().expect("connected");
        let reader = PageReader {
            conn,
            path: &self.path,
            page_size,
            stats: &self.stats,
        };
        let state = self.state.as_ref().filter(|_| !*full);
        let (header, update, checksum, reason) = match (state, rescan.as_ref()) {
            (None, _) => {
                add(&self.stats.full_scans, 1);
                let (hashes, checksum) = reader.snapshot(db_pages, spool)?;
                let reason = match (self.state.is_some(), rescan.as_ref()) {
                    (false, _) => "start".to_owned(),
                    (true, Some(r)) => format!("rescan: {r}"),
                    (true, None) => "schedule".to_owned(),
                };
                (
                    snapshot_header(page_size, db_pages),
                    Update::Full(hashes),
                    checksum,
                    reason,
                )
            }
            (Some(state), Some(why)) => {
                add(&self.stats.full_scans, 1);
                // One pass: every page hashed, the changed ones spooled as
                // they are read.
                let (changed, hashes) = reader.rescan(db_pages, state, spool)?;
                let checksum = hashes.iter().fold(0, |a, h| a ^ h);
                let reason = format!("rescan: {why}");
                if changed.is_empty() && db_pages as usize == state.hashes.len() {
                    let _ = std::fs::remove_file(spool);
                    return Ok(None);
                }
                if changed.len() as u64 * 2 > u64::from(db_pages) {
                    // Most pages changed: a snapshot costs as much and
                    // shortens every later restore. Only the unchanged
                    // pages are read again, in the same transaction.
                    reader.fill_snapshot(db_pages, &changed, spool)?;
                    (
                        snapshot_header(page_size, db_pages),
                        Update::Full(hashes),
                        checksum,
                        reason,
                    )
                } else {
                    let updates = changed
                        .iter()
                        .map(|&p| (p, hashes[p as usize - 1]))
                        .collect();
                    (
                        diff_header(page_size, db_pages, changed),
                        Update::Diff(updates, db_pages),
                        checksum,
                        reason,
                    )
                }
            }
            (Some(state), None) => {
                // WAL continuity kept: only the pages of frames (P, F2].
                let old_len = state.hashes.len() as u32;
                let mut candidates: Vec<u32> = self
                    .pending
                    .iter()
                    .map(|&(_, p)| p)
                    .chain(old_len + 1..=db_pages)
                    .filter(|&p| p >= 1 && p <= db_pages)
                    .collect();
                candidates.sort_unstable();
                candidates.dedup();
                let (changed, new_hashes) = reader.changed_pages(&candidates, state, spool)?;
                if changed.is_empty() && db_pages == old_len {
                    return Ok(None);
                }
                let mut checksum = state.checksum;
                for (p, h) in changed.iter().zip(&new_hashes) {
                    if let Some(old) = state.hashes.get(*p as usize - 1) {
                        checksum ^= old;
                    }
                    checksum ^= h;
                }
                let updates = changed.iter().copied().zip(new_hashes).collect();
                (
                    diff_header(page_size, db_pages, changed),
                    Update::Diff(updates, db_pages),
                    checksum,
                    "changes".to_owned(),
                )
            }
        };
        Ok(Some(Spooled {
            header,
            pages_file: spool.to_owned(),
            at,
            checksum,
            mode,
            reason,
            update,
            trim_to: None,
            db_sig: None,
            inode,
        }))
    }

    /// Records that `s` is stored: its pages become the base of the next
    /// capture, and WAL frames up to its `F1` are settled.
    pub fn stored(&mut self, s: Spooled) {
        add(&self.stats.captures, 1);
        if s.header.snapshot {
            add(&self.stats.snapshots, 1);
        }
        add(&self.stats.pages_stored, u64::from(s.header.count()));
        let hashes = match (s.update, self.state.take()) {
            (Update::Full(h), _) => h,
            (Update::Diff(changes, db_pages), Some(st)) => {
                let mut h = st.hashes;
                h.resize(db_pages as usize, 0);
                for (p, v) in changes {
                    h[p as usize - 1] = v;
                }
                h
            }
            (Update::Diff(..), None) => unreachable!("a diff is taken only with a state"),
        };
        self.state = Some(State {
            page_size: s.header.page_size,
            hashes,
            checksum: s.checksum,
            inode: s.inode,
            mode: s.mode,
        });
        self.trim(s.trim_to);
        self.db_sig = s.db_sig;
        self.in_flight = None;
        self.new_wal_in_flight = false;
        let _ = std::fs::remove_file(&s.pages_file);
    }

    /// Forgets a capture that could not be stored; the next capture takes
    /// its pages again.
    pub fn discard(&mut self, s: Spooled) {
        add(&self.stats.failures, 1);
        if s.reason.starts_with("rescan: ") {
            self.rescan = Some(s.reason["rescan: ".len()..].to_owned());
        }
        if std::mem::take(&mut self.new_wal_in_flight) && self.state.is_some() {
            // Its frames were judged new against this capture, which is not
            // the base after all: compare every page instead.
            self.rescan.get_or_insert_with(|| {
                "a new WAL appeared while a capture that failed to store was in flight".into()
            });
        }
        self.in_flight = None;
        let _ = std::fs::remove_file(&s.pages_file);
    }

    /// Notes a continuity break seen outside a capture, so the next one
    /// compares every page.
    pub fn force_rescan(&mut self, why: &str) {
        self.rescan = Some(why.to_owned());
    }
}

fn snapshot_header(page_size: u32, db_pages: u32) -> PageSetHeader {
    PageSetHeader {
        page_size,
        db_pages,
        snapshot: true,
        pages: Vec::new(),
    }
}

fn diff_header(page_size: u32, db_pages: u32, pages: Vec<u32>) -> PageSetHeader {
    PageSetHeader {
        page_size,
        db_pages,
        snapshot: false,
        pages,
    }
}

/// Reads pages through `sqlite_dbpage` inside the open transaction.
struct PageReader<'a> {
    conn: &'a Connection,
    path: &'a Path,
    page_size: u32,
    stats: &'a Stats,
}

impl PageReader<'_> {
    fn err(&self, source: rusqlite::Error) -> CaptureError {
        match source.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked) => {
                CaptureError::Busy(self.path.to_owned())
            }
            _ => CaptureError::Sqlite {
                path: self.path.to_owned(),
                source,
            },
        }
    }

    fn spool(&self, spool: &Path) -> Result<BufWriter<File>, CaptureError> {
        if let Some(dir) = spool.parent() {
            crate::crashsafe::create_private_dir_all(dir).map_err(Capturer::io_err(dir))?;
        }
        // Plaintext pages: for pitr's user only.
        let f = crate::crashsafe::create_private_file(spool).map_err(Capturer::io_err(spool))?;
        Ok(BufWriter::with_capacity(1 << 20, f))
    }

    /// Calls `f(pgno, page)` for every page, ascending, streaming.
    fn each_page(
        &self,
        db_pages: u32,
        mut f: impl FnMut(u32, &[u8]) -> Result<(), CaptureError>,
    ) -> Result<(), CaptureError> {
        let mut st = self
            .conn
            .prepare("SELECT pgno, data FROM sqlite_dbpage WHERE pgno <= ?1 ORDER BY pgno")
            .map_err(|e| self.err(e))?;
        let mut rows = st.query([db_pages]).map_err(|e| self.err(e))?;
        let mut expect = 1u32;
        while let Some(row) = rows.next().map_err(|e| self.err(e))? {
            let pgno: u32 = row.get(0).map_err(|e| self.err(e))?;
            let data = row.get_ref(1).map_err(|e| self.err(e))?;
            let data = data.as_blob().map_err(|e| self.err(e.into()))?;
            if pgno != expect || data.len() != self.page_size as usize {
                return Err(CaptureError::Unexpected {
                    path: self.path.to_owned(),
                    what: format!(
                        "sqlite_dbpage returned page {pgno} ({} bytes), expected page {expect} \
                         ({} bytes)",
                        data.len(),
                        self.page_size
                    ),
                });
            }
            add(&self.stats.db_bytes_read, data.len() as u64);
            f(pgno, data)?;
            expect += 1;
        }
        Ok(())
    }

    /// Every page's hash, in one scan that spools the pages whose hash
    /// differs from `state`'s as it goes; the changed page numbers.
    fn rescan(
        &self,
        db_pages: u32,
        state: &State,
        spool: &Path,
    ) -> Result<(Vec<u32>, Vec<u64>), CaptureError> {
        let mut out = self.spool(spool)?;
        let mut hashes = Vec::with_capacity(db_pages as usize);
        let mut changed = Vec::new();
        self.each_page(db_pages, |p, d| {
            let h = page_hash(p, d);
            hashes.push(h);
            if state.hashes.get(p as usize - 1) != Some(&h) {
                changed.push(p);
                out.write_all(d).map_err(Capturer::io_err(spool))?;
            }
            Ok(())
        })?;
        out.into_inner()
            .map_err(|e| Capturer::io_err(spool)(e.into_error()))?;
        Ok((changed, hashes))
    }

    /// Turns the spool of the `changed` pages (ascending, as [`Self::rescan`]
    /// wrote it) into every page of a snapshot: the changed ones copied from
    /// it, the others read again. A page in memory at a time.
    fn fill_snapshot(
        &self,
        db_pages: u32,
        changed: &[u32],
        spool: &Path,
    ) -> Result<(), CaptureError> {
        use std::io::Read;
        let mut diff_path = spool.as_os_str().to_owned();
        diff_path.push(".changed");
        let diff_path = PathBuf::from(diff_path);
        std::fs::rename(spool, &diff_path).map_err(Capturer::io_err(spool))?;
        let filled = (|| {
            let mut diff = std::io::BufReader::with_capacity(
                1 << 20,
                File::open(&diff_path).map_err(Capturer::io_err(&diff_path))?,
            );
            let mut out = self.spool(spool)?;
            let mut st = self
                .conn
                .prepare_cached("SELECT data FROM sqlite_dbpage WHERE pgno = ?1")
                .map_err(|e| self.err(e))?;
            let mut buf = vec![0u8; self.page_size as usize];
            let mut next = changed.iter().peekable();
            for p in 1..=db_pages {
                if next.next_if_eq(&&p).is_some() {
                    buf.resize(self.page_size as usize, 0);
                    diff.read_exact(&mut buf)
                        .map_err(Capturer::io_err(&diff_path))?;
                } else {
                    self.read_page(&mut st, p, &mut buf)?;
                    if buf.len() != self.page_size as usize {
                        return Err(CaptureError::Unexpected {
                            path: self.path.to_owned(),
                            what: format!(
                                "sqlite_dbpage returned {} bytes for page {p}, expected {}",
                                buf.len(),
                                self.page_size
                            ),
                        });
                    }
                }
                out.write_all(&buf).map_err(Capturer::io_err(spool))?;
            }
            out.into_inner()
                .map_err(|e| Capturer::io_err(spool)(e.into_error()))?;
            Ok(())
        })();
        let _ = std::fs::remove_file(&diff_path);
        filled
    }

    /// Every page into the spool; their hashes and the checksum.
    fn snapshot(&self, db_pages: u32, spool: &Path) -> Result<(Vec<u64>, u64), CaptureError> {
        let mut out = self.spool(spool)?;
        let mut hashes = Vec::with_capacity(db_pages as usize);
        self.each_page(db_pages, |p, d| {
            hashes.push(page_hash(p, d));
            out.write_all(d).map_err(Capturer::io_err(spool))
        })?;
        out.into_inner()
            .map_err(|e| Capturer::io_err(spool)(e.into_error()))?;
        let checksum = hashes.iter().fold(0, |a, h| a ^ h);
        Ok((hashes, checksum))
    }

    fn read_page(
        &self,
        st: &mut rusqlite::CachedStatement<'_>,
        pgno: u32,
        buf: &mut Vec<u8>,
    ) -> Result<(), CaptureError> {
        buf.clear();
        st.query_row([pgno], |r| {
            buf.extend_from_slice(r.get_ref(0)?.as_blob()?);
            Ok(())
        })
        .map_err(|e| self.err(e))?;
        add(&self.stats.db_bytes_read, buf.len() as u64);
        Ok(())
    }

    /// Of `candidates`, the pages whose hash differs from `state`'s, spooled;
    /// with their new hashes. A page rewritten with the same bytes is not
    /// stored again.
    fn changed_pages(
        &self,
        candidates: &[u32],
        state: &State,
        spool: &Path,
    ) -> Result<(Vec<u32>, Vec<u64>), CaptureError> {
        let mut hashes = Vec::new();
        let changed = self.spool_pages(candidates, spool, |p, page| {
            let h = page_hash(p, page);
            let differs = state.hashes.get(p as usize - 1) != Some(&h);
            if differs {
                hashes.push(h);
            }
            differs
        })?;
        Ok((changed, hashes))
    }

    /// Reads each of `candidates` and spools those `keep` accepts, in
    /// order, one page in memory at a time; returns the spooled ones.
    fn spool_pages(
        &self,
        candidates: &[u32],
        spool: &Path,
        mut keep: impl FnMut(u32, &[u8]) -> bool,
    ) -> Result<Vec<u32>, CaptureError> {
        let mut out = self.spool(spool)?;
        let mut st = self
            .conn
            .prepare_cached("SELECT data FROM sqlite_dbpage WHERE pgno = ?1")
            .map_err(|e| self.err(e))?;
        let mut buf = Vec::with_capacity(self.page_size as usize);
        let mut kept = Vec::new();
        for &p in candidates {
            self.read_page(&mut st, p, &mut buf)?;
            if keep(p, &buf) {
                out.write_all(&buf).map_err(Capturer::io_err(spool))?;
                kept.push(p);
            }
        }
        out.into_inner()
            .map_err(|e| Capturer::io_err(spool)(e.into_error()))?;
        Ok(kept)
    }
}
