//! WAL streamed into a repository in the background, and the oracle's
//! rows that tests restore to.

use std::time::Duration;

use jiff::Timestamp;
use pitr::pg::{ConnInfo, Lsn};
use pitr::repo::Repository;
use pitr::wal::{Progress, StreamOptions, stream};
use tokio::sync::{oneshot, watch};

use super::PgCluster;

/// The WAL streamer in the background, as `pitr run` runs it.
pub struct Streamer {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), pitr::wal::StreamError>>,
    progress: watch::Receiver<Progress>,
}

impl Streamer {
    pub fn start(repo: &Repository, pg: &PgCluster, slot: &str) -> Streamer {
        let info = ConnInfo::parse(&pg.conninfo("postgres")).expect("conninfo");
        let mut o = StreamOptions::new("main", info, slot);
        o.partial_interval = Duration::from_millis(200);
        o.status_interval = Duration::from_millis(500);
        let (tx, progress) = watch::channel(Progress::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(stream(repo.clone(), o, tx, async {
            let _ = stopped.await;
        }));
        Streamer {
            stop: Some(stop),
            task,
            progress,
        }
    }

    /// The flush position acknowledged to the server so far.
    pub fn flushed(&self) -> Lsn {
        self.progress.borrow().flushed
    }

    /// Waits (bounded) until everything the server has written so far is
    /// stored and acknowledged.
    pub async fn caught_up(&self, pg: &PgCluster) {
        let lsn: Lsn = pg
            .psql("SELECT pg_current_wal_lsn()")
            .parse()
            .expect("an LSN");
        super::eventually(
            format!("the WAL up to {lsn} stored"),
            Duration::from_secs(30),
            async || {
                let progress = *self.progress.borrow();
                if progress.flushed >= lsn {
                    Ok(())
                } else {
                    Err(format!("{progress:?}"))
                }
            },
        )
        .await
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the streamer stops")
            .expect("no panic")
            .expect("no error");
    }
}

/// Commits row `id` and returns its stamp (`clock_timestamp()` inside the
/// insert, before the commit).
///
/// Returns only once [`between`] this stamp and any later row's is past
/// this row's commit: a commit waits for its WAL flush, which under a busy
/// disk takes longer than starting the next `psql`, so the midpoint of two
/// insert stamps alone could fall before the first commit and a restore to
/// it would rightly leave that row out.
pub fn write_row(pg: &PgCluster, id: u32) -> Timestamp {
    let (at, committed) = committed_stamps(
        pg,
        &format!("INSERT INTO oracle VALUES ({id}, clock_timestamp()) RETURNING at"),
    );
    // The next stamp comes after now; the midpoint is past `committed`
    // once now is at least `committed + (committed - at)`.
    let ahead = committed.duration_since(at) + jiff::SignedDuration::from_millis(1);
    let until = committed.checked_add(ahead).expect("a time");
    let wait = until.duration_since(Timestamp::now());
    if wait.is_positive() {
        std::thread::sleep(wait.unsigned_abs());
    }
    at
}

/// Runs `sql` (which returns one `timestamptz`) in its own transaction and
/// then reads the server's clock: the stamp `sql` returned, and a time at
/// which its commit had certainly happened.
pub fn committed_stamps(pg: &PgCluster, sql: &str) -> (Timestamp, Timestamp) {
    let out = pg.psql_each(&[sql, "SELECT clock_timestamp()"]);
    let mut lines = out
        .lines()
        .map(|l| pitr::restore::parse_time(l).expect("a timestamptz"));
    match (lines.next(), lines.next(), lines.next()) {
        (Some(at), Some(committed), None) => (at, committed),
        _ => panic!("two stamps from psql, got {out:?}"),
    }
}

/// The midpoint of two stamps.
pub fn between(a: Timestamp, b: Timestamp) -> Timestamp {
    let half = b.duration_since(a).as_nanos() / 2;
    a.checked_add(jiff::SignedDuration::from_nanos(half as i64))
        .expect("a time")
}
