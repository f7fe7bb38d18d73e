//! The watcher loop of one `[[sqlite]]` entry: woken by file events
//! (`notify`, hints only) and by a poll at the interval, it takes captures
//! (`capture.rs`) and stores them through the repository, one commit each.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use super::capture::{CaptureError, Capturer, Spooled, Stats};
use super::pageset::{CHUNKING, checksum_text};
use super::store::{self, CaptureAttrs, KIND_PAGES, KIND_SNAPSHOT};
use crate::config::SqliteConfig;
use crate::repo::{RepoError, Repository};

/// How often a persisting problem (database missing, not SQLite) is logged
/// again after the first time.
const REPEAT_LOG: Duration = Duration::from_secs(60);

/// What a watcher is told.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// The `[[sqlite]]` name (items are `sqlite/<name>/…`).
    pub name: String,
    /// The database file.
    pub path: PathBuf,
    /// Poll interval, and the shortest time between two captures.
    pub interval: Duration,
    /// Snapshot schedule.
    pub snapshot_interval: Duration,
    /// Where captures are spooled before they are stored.
    pub spool_dir: PathBuf,
}

impl WatchOptions {
    /// The options of a configured entry, spooling under `state_dir`.
    pub fn from_config(c: &SqliteConfig, state_dir: &Path) -> WatchOptions {
        WatchOptions {
            name: c.name.clone(),
            path: c.path.clone(),
            interval: c.interval,
            snapshot_interval: c.snapshot_interval,
            spool_dir: state_dir.join("sqlite-spool").join(&c.name),
        }
    }
}

/// A watcher stopped for good (it retries everything else).
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The catalog could not be read at start.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// A task failed.
    #[error("the SQLite watcher of {0:?} failed: {1}")]
    Task(String, String),
}

/// One step's outcome, for the loop and for tests.
#[derive(Debug)]
pub enum Step {
    /// Nothing changed.
    Unchanged,
    /// A capture was stored as this item.
    Stored {
        /// The item's name.
        item: String,
        /// Whether it was a snapshot.
        snapshot: bool,
        /// Pages it holds.
        pages: u32,
    },
}

/// Failure of one step: logged, and the step is tried again.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Capturing failed.
    #[error(transparent)]
    Capture(#[from] CaptureError),
    /// Storing failed.
    #[error("storing a capture of {name:?} failed: {source}")]
    Store {
        /// The database.
        name: String,
        /// The repository error.
        source: RepoError,
    },
}

/// A watcher's capture state and its way into the repository: `step` takes
/// and stores one capture. `watch` runs it in a loop.
#[derive(Debug)]
pub struct Watcher {
    repo: Repository,
    opts: WatchOptions,
    capturer: Option<Capturer>,
    next_seq: u64,
    last_seq: Option<u64>,
    last_snapshot: Option<Instant>,
}

impl Watcher {
    /// A watcher of `opts.path`, numbering captures after those the catalog
    /// holds.
    pub fn new(repo: Repository, opts: WatchOptions) -> Result<Watcher, WatchError> {
        let next_seq = store::next_seq(&repo, &opts.name)?;
        let capturer = Capturer::new(&opts.path, &opts.spool_dir, Arc::new(Stats::default()));
        Ok(Watcher {
            repo,
            opts,
            capturer: Some(capturer),
            next_seq,
            last_seq: None,
            last_snapshot: None,
        })
    }

    /// The counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.capturer
            .as_ref()
            .map(|c| c.stats().clone())
            .unwrap_or_default()
    }

    fn snapshot_due(&self) -> bool {
        self.last_snapshot
            .is_some_and(|t| t.elapsed() >= self.opts.snapshot_interval)
    }

    /// Reads the WAL's newly committed frames (see [`Capturer::follow`]);
    /// a failure is left for the next step to meet and report.
    pub async fn follow_wal(&mut self) {
        let Some(cap) = self.capturer.take() else {
            return;
        };
        self.capturer = Some(follow(cap, &self.opts.name).await);
    }

    /// Polls; when something may have changed (or `always`), captures and
    /// stores.
    pub async fn step(&mut self, always: bool) -> Result<Step, StepError> {
        let snapshot = self.snapshot_due();
        let mut cap = self
            .capturer
            .take()
            .expect("capturer present between steps");
        let began = Instant::now();
        let (mut cap, taken) = tokio::task::spawn_blocking(move || {
            let r = (|| {
                let changed = cap.poll()?;
                if !(changed || always || snapshot) {
                    return Ok(None);
                }
                cap.capture(snapshot)
            })();
            (cap, r)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let spooled = match taken {
            Ok(Some(s)) => s,
            Ok(None) => {
                self.capturer = Some(cap);
                return Ok(Step::Unchanged);
            }
            Err(e) => {
                self.capturer = Some(cap);
                return Err(e.into());
            }
        };
        let read = began.elapsed();
        // The WAL is followed while the capture is stored: a busy writer's
        // checkpoints restart it several times a second, and frames they
        // overwrite before the watcher read them would make the next
        // capture a rescan of every page — which takes longer to store, so
        // that rescans would follow one another.
        let name = self.opts.name.clone();
        let stored = {
            let store = self.store(&spooled);
            let mut store = std::pin::pin!(store);
            loop {
                tokio::select! {
                    r = &mut store => break r,
                    _ = tokio::time::sleep(FOLLOW_STEP) => cap = follow(cap, &name).await,
                }
            }
        };
        let store_time = began.elapsed() - read;
        self.capturer = Some(cap);
        match stored {
            Ok((item, info_bytes)) => {
                let snapshot = spooled.header.snapshot;
                let pages = spooled.header.count();
                let cap = self.capturer.as_mut().expect("present");
                cap.stats()
                    .bytes_stored
                    .fetch_add(info_bytes, std::sync::atomic::Ordering::Relaxed);
                if snapshot {
                    self.last_snapshot = Some(Instant::now());
                }
                tracing::info!(
                    database = %self.opts.name, item = %item, snapshot, pages,
                    reason = %spooled.reason, at = %spooled.at,
                    read_ms = read.as_millis() as u64, store_ms = store_time.as_millis() as u64,
                    "stored an SQLite capture"
                );
                cap.stored(spooled);
                Ok(Step::Stored {
                    item,
                    snapshot,
                    pages,
                })
            }
            Err(source) => {
                self.capturer.as_mut().expect("present").discard(spooled);
                Err(StepError::Store {
                    name: self.opts.name.clone(),
                    source,
                })
            }
        }
    }

    async fn store(&mut self, s: &Spooled) -> Result<(String, u64), RepoError> {
        let seq = self.next_seq;
        let name = store::item_name(&self.opts.name, seq);
        let attrs = CaptureAttrs {
            seq,
            base: if s.header.snapshot {
                None
            } else {
                self.last_seq
            },
            at: s.at,
            page_size: s.header.page_size,
            db_pages: s.header.db_pages,
            pages: s.header.count(),
            checksum: checksum_text(s.checksum),
            mode: s.mode.as_str().to_owned(),
            reason: s.reason.clone(),
        };
        let kind = if s.header.snapshot {
            KIND_SNAPSHOT
        } else {
            KIND_PAGES
        };
        let local = |source| RepoError::Local {
            path: s.pages_file.clone(),
            source,
        };
        let file = tokio::fs::File::open(&s.pages_file).await.map_err(local)?;
        let reader = std::io::Cursor::new(s.header.encode()).chain(file);
        let attrs = serde_json::to_value(attrs).expect("capture attributes always serialize");
        let mut w = self.repo.writer();
        w.put(&name, kind, attrs, CHUNKING, reader).await?;
        let info = w.commit().await?;
        self.next_seq += 1;
        self.last_seq = Some(seq);
        Ok((name, info.map_or(0, |i| i.pack_bytes)))
    }
}

/// Reads the WAL's newly committed frames into `cap` on the blocking pool
/// (see [`Capturer::follow`]); a failure is left for the next step to meet
/// and report.
async fn follow(mut cap: Capturer, name: &str) -> Capturer {
    let (cap, r) = tokio::task::spawn_blocking(move || {
        let r = cap.follow();
        (cap, r)
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    if let Err(e) = r {
        tracing::debug!(database = %name, error = %e, "following the WAL");
    }
    cap
}

/// How often the WAL is read while a capture waits for its interval or is
/// being stored: well
/// within the time a busy writer takes to fill and restart a WAL of
/// SQLite's default 1000-page autocheckpoint (about 0.2 s at 5000 commits
/// a second).
const FOLLOW_STEP: Duration = Duration::from_millis(50);

/// Watches one database until `shutdown` resolves. Problems are logged and
/// retried; only a failure to start returns an error.
pub async fn watch(
    repo: Repository,
    opts: WatchOptions,
    stats_out: Option<tokio::sync::oneshot::Sender<Arc<Stats>>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), WatchError> {
    let mut watcher = Watcher::new(repo, opts.clone())?;
    if let Some(tx) = stats_out {
        let _ = tx.send(watcher.stats());
    }
    let wake = Arc::new(tokio::sync::Notify::new());
    // Without it, polling alone works.
    let mut events = file_events(&opts.path, wake.clone());
    let mut shutdown = std::pin::pin!(shutdown);
    let mut last_capture: Option<Instant> = None;
    let mut last_logged: Option<(String, Instant)> = None;
    let mut last_step: Option<Instant> = None;
    loop {
        // Polls once per interval, captures at most once per interval:
        // events only bring the next step forward to the earliest moment a
        // capture is allowed.
        let now = Instant::now();
        let earliest = last_capture.map_or(now, |t| t + opts.interval);
        let tick = last_step.map_or(now, |t| t + opts.interval).max(earliest);
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep_until(tick.into()) => {}
            _ = wake.notified() => {
                // A busy writer makes an event per write, thousands a
                // second, each a wake-up here and work in the writer's
                // write(): the first one is all the loop needs, so the
                // watch is off until the next step.
                if let Some(e) = &mut events {
                    e.pause();
                }
                // Until the capture is due, the WAL is followed: a busy
                // writer's checkpoints restart it several times a second.
                loop {
                    let now = Instant::now();
                    if now >= earliest {
                        break;
                    }
                    tokio::select! {
                        _ = &mut shutdown => return Ok(()),
                        _ = tokio::time::sleep_until((now + FOLLOW_STEP).min(earliest).into()) => {}
                    }
                    watcher.follow_wal().await;
                }
            }
        }
        // Bursts of events are one poll: at most ten steps per interval.
        if let Some(t) = last_step {
            tokio::time::sleep_until((t + opts.interval / 10).into()).await;
        }
        // Back on before the step looks: a write after this wakes the loop.
        if let Some(e) = &mut events {
            e.resume();
        }
        let started = Instant::now();
        last_step = Some(started);
        match watcher.step(false).await {
            Ok(Step::Unchanged) => tracing::trace!(database = %opts.name, "unchanged"),
            Ok(Step::Stored { .. }) => {
                last_capture = Some(started);
                last_logged = None;
            }
            Err(e) => {
                let text = e.to_string();
                let repeat = match &last_logged {
                    Some((t, at)) => *t != text || at.elapsed() >= REPEAT_LOG,
                    None => true,
                };
                if repeat {
                    match &e {
                        StepError::Capture(CaptureError::Busy(_)) => {
                            tracing::info!(database = %opts.name, "{text}")
                        }
                        _ => tracing::warn!(database = %opts.name, "{text}"),
                    }
                    last_logged = Some((text, Instant::now()));
                }
            }
        }
    }
}

/// The watch on the database's directory, which the loop turns off while it
/// waits for a capture it already knows it will take.
struct FileEvents {
    watcher: notify::RecommendedWatcher,
    dir: PathBuf,
    on: bool,
}

impl FileEvents {
    fn pause(&mut self) {
        use notify::Watcher as _;
        if self.on {
            // Failing to remove it costs only the wake-ups it would save.
            let _ = self.watcher.unwatch(&self.dir);
            self.on = false;
        }
    }

    fn resume(&mut self) {
        use notify::Watcher as _;
        if !self.on {
            match self
                .watcher
                .watch(&self.dir, notify::RecursiveMode::NonRecursive)
            {
                Ok(()) => self.on = true,
                // The poll still runs; the next step tries again.
                Err(e) => tracing::debug!(error = %e, dir = %self.dir.display(), "file events off"),
            }
        }
    }
}

/// Watches the database's directory (the files come and go: `-wal` and
/// `-journal` are deleted and recreated) and wakes the loop on events about
/// the database, its WAL or its journal. `None` when the platform refuses:
/// the poll still runs.
fn file_events(path: &Path, wake: Arc<tokio::sync::Notify>) -> Option<FileEvents> {
    use notify::Watcher as _;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let base = path.file_name()?.to_os_string();
    let names: Vec<std::ffi::OsString> = ["", "-wal", "-journal"]
        .iter()
        .map(|s| {
            let mut n = base.clone();
            n.push(s);
            n
        })
        .collect();
    let handler = move |ev: notify::Result<notify::Event>| {
        let Ok(ev) = ev else { return };
        // Opens and reads (the watcher's own among them) are not changes.
        let change = matches!(
            ev.kind,
            notify::EventKind::Create(_)
                | notify::EventKind::Modify(_)
                | notify::EventKind::Remove(_)
        );
        if change
            && ev
                .paths
                .iter()
                .any(|p| p.file_name().is_some_and(|f| names.iter().any(|n| n == f)))
        {
            wake.notify_one();
        }
    };
    let mut w = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::info!(error = %e, "no file events; polling only");
            return None;
        }
    };
    if let Err(e) = w.watch(&dir, notify::RecursiveMode::NonRecursive) {
        tracing::info!(error = %e, dir = %dir.display(), "no file events; polling only");
        return None;
    }
    Some(FileEvents {
        watcher: w,
        dir,
        on: true,
    })
}
