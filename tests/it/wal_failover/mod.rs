//! The WAL streamer when the server changes under it: a standby promoted
//! onto timeline 2, a server restarted or crashed mid-stream, and the
//! failures that need an operator (slot held elsewhere, no privilege, no WAL
//! senders, a slot that lost WAL or was advanced past what pitr stored),
//! each with the message that says what to do.
//!
//! Every wait is bounded; invariant 1 (the server's flush position for us
//! never ahead of what the catalog says is stored) is sampled in every wait.

mod errors;
mod restart;
mod timeline;

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use pitr::pg::{ConnInfo, Lsn, Segment, conn::DEFAULT_APPLICATION_NAME};
use pitr::repo::Repository;
use pitr::wal::{Progress, StreamError, StreamOptions, WalStore, stream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::support::query_lsn as lsn;
use crate::support::{PgCluster, eventually};

const SEG: u64 = 16 << 20;

/// The longest any wait in these tests may take.
const LIMIT: Duration = Duration::from_secs(30);

/// Streaming options for `pg` as the superuser, with short intervals.
fn options(pg: &PgCluster) -> StreamOptions {
    options_for(&pg.conninfo("postgres"))
}

fn options_for(conninfo: &str) -> StreamOptions {
    let info = ConnInfo::parse(conninfo).expect("conninfo");
    let mut o = StreamOptions::new("main", info, "pitr");
    o.partial_interval = Duration::from_millis(200);
    o.status_interval = Duration::from_millis(500);
    o
}

/// Awaits `fut` for at most [`LIMIT`].
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(LIMIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what} took longer than {LIMIT:?}"),
    }
}

async fn flush_lsn(db: &tokio_postgres::Client) -> Lsn {
    lsn(db, "SELECT pg_current_wal_flush_lsn()::text")
        .await
        .expect("flush lsn")
}

/// The furthest position stored on any timeline. The lineage is linear, so
/// this bounds every flush position pitr may have reported.
fn stored_end(store: &WalStore) -> Lsn {
    let mut end = Lsn(0);
    for tli in store.timelines().expect("catalog") {
        if let Some((e, _)) = store.stored_end(tli).expect("catalog") {
            end = end.max(e);
        }
    }
    end
}

/// Invariant 1: the server's view of our flush position never passes what
/// the catalog says is stored. Reads the server first: the catalog only
/// grows. `None` when no walsender of pitr is connected.
async fn check_invariant(db: &tokio_postgres::Client, store: &WalStore) -> Option<Lsn> {
    let row = db
        .query_opt(
            "SELECT max(flush_lsn)::text FROM pg_stat_replication WHERE application_name = $1",
            &[&DEFAULT_APPLICATION_NAME],
        )
        .await
        .ok()
        .flatten()?;
    let flush: Option<String> = row.get(0);
    let flush: Lsn = flush?.parse().expect("lsn");
    let stored = stored_end(store);
    assert!(
        flush <= stored,
        "the server was told {flush} is flushed, but only {stored} is stored"
    );
    Some(flush)
}

/// Writes `rounds` × about one segment of WAL, switching after each.
async fn write_wal(db: &tokio_postgres::Client, rounds: usize) -> Lsn {
    for i in 0..rounds {
        db.batch_execute(&format!(
            "INSERT INTO t (v) SELECT md5(i::text || '{i}') FROM generate_series(1, 20000) i;
             SELECT pg_switch_wal();"
        ))
        .await
        .expect("write WAL");
    }
    flush_lsn(db).await
}

/// A running [`stream`] with its progress and a shutdown switch.
struct Streamer {
    rx: watch::Receiver<Progress>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), StreamError>>,
    /// How many invariant samples saw a flush position: the check must not
    /// pass by never seeing one.
    flush_seen: usize,
}

impl Streamer {
    fn spawn(repo: Repository, opts: StreamOptions) -> Streamer {
        let (tx, rx) = watch::channel(Progress::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(stream(repo, opts, tx, async {
            let _ = stopped.await;
        }));
        Streamer {
            rx,
            stop,
            task,
            flush_seen: 0,
        }
    }

    /// Waits (bounded) until `done` holds for the progress, sampling
    /// invariant 1 on `db` meanwhile.
    async fn wait(
        &mut self,
        db: &tokio_postgres::Client,
        store: &WalStore,
        what: &str,
        done: impl Fn(&Progress) -> bool,
    ) {
        eventually(what, LIMIT, async || {
            if check_invariant(db, store).await.is_some() {
                self.flush_seen += 1;
            }
            if done(&self.rx.borrow()) {
                return Ok(());
            }
            if self.task.is_finished() {
                let ended = (&mut self.task).await;
                panic!("the streamer ended while waiting for {what}: {ended:?}");
            }
            Err(format!("progress {:?}", *self.rx.borrow()))
        })
        .await
    }

    /// Waits until everything before `target` is stored and acknowledged.
    async fn wait_flushed(&mut self, db: &tokio_postgres::Client, store: &WalStore, target: Lsn) {
        self.wait(db, store, &format!("flush to {target}"), |p| {
            p.flushed >= target
        })
        .await;
    }

    /// Shuts the streamer down and returns what [`stream`] returned.
    async fn stop(self) -> Result<(), StreamError> {
        assert!(
            self.flush_seen > 0,
            "invariant 1 was never checked against a real flush position"
        );
        let _ = self.stop.send(());
        within("the streamer stops", self.task)
            .await
            .expect("the streamer does not panic")
    }
}

/// Stored complete segments of `timeline`, ascending.
fn complete_segments(repo: &Repository, timeline: u32) -> Vec<Segment> {
    let mut out: Vec<Segment> = repo
        .catalog()
        .items("pg/main/wal/")
        .expect("items")
        .iter()
        .filter(|i| i.kind == "wal")
        .filter_map(|i| Segment::parse(i.name.rsplit('/').next().expect("name"), SEG))
        .filter(|s| s.timeline == timeline)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Fetches `file` from the repository (a partial comes zero-padded).
async fn fetch(store: &WalStore, file: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(file);
    store
        .fetch_to(file, &path)
        .await
        .expect("fetch")
        .unwrap_or_else(|| panic!("{file} is not stored"));
    std::fs::read(&path).expect("read fetched file")
}

/// Compares every stored complete segment of `timeline` with the server's
/// file where `pg_wal` still has it; returns how many were compared.
async fn compare_with_pg_wal(
    repo: &Repository,
    store: &WalStore,
    timeline: u32,
    pg_wal: &Path,
) -> usize {
    let mut compared = 0;
    for seg in complete_segments(repo, timeline) {
        let name = seg.file_name(SEG);
        if let Ok(server) = std::fs::read(pg_wal.join(&name)) {
            assert!(
                fetch(store, &name).await == server,
                "{name} differs from pg_wal"
            );
            compared += 1;
        }
    }
    compared
}

/// Invariant 2 as the catalog records it: each timeline's stored WAL is one
/// contiguous range; returns the ranges by timeline.
fn one_range_per_timeline(store: &WalStore) -> Vec<(u32, Lsn, Lsn)> {
    let mut out = Vec::new();
    for tli in store.timelines().expect("timelines") {
        let ranges = store.ranges(tli).expect("ranges");
        assert_eq!(ranges.len(), 1, "timeline {tli} has a gap: {ranges:?}");
        out.push((tli, ranges[0].0, ranges[0].1));
    }
    out
}
