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

/// Commits row `id` and returns its stamp.
pub fn write_row(pg: &PgCluster, id: u32) -> Timestamp {
    let at = pg.psql(&format!(
        "INSERT INTO oracle VALUES ({id}, clock_timestamp()) RETURNING at"
    ));
    pitr::restore::parse_time(&at).expect("a timestamptz")
}

/// The midpoint of two stamps.
pub fn between(a: Timestamp, b: Timestamp) -> Timestamp {
    let half = b.duration_since(a).as_nanos() / 2;
    a.checked_add(jiff::SignedDuration::from_nanos(half as i64))
        .expect("a time")
}
