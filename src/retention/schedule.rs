//! Retention inside `pitr run`: a run at every time of
//! `[retention] schedule` (cron, UTC), its outcome published for the health
//! endpoint. A failed run is logged and reported, never fatal: the next
//! time tries again.

use jiff::Timestamp;
use serde::Serialize;
use tokio::sync::watch;

use super::{RunOptions, run};
use crate::config::Config;
use crate::cron::every;
use crate::repo::Repository;

/// The scheduled retention runs as `/health` shows them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RetentionStatus {
    /// When the last run started.
    pub last_run: Option<Timestamp>,
    /// Whether it succeeded (deletion failures on a destination count as
    /// success with `failures`: they are retried next run).
    pub last_ok: Option<bool>,
    /// Its error, when it failed.
    pub last_error: Option<String>,
    /// Backups it forgot.
    pub backups_forgotten: usize,
    /// Items it forgot.
    pub items_forgotten: usize,
    /// Packs it marked.
    pub packs_marked: usize,
    /// Packs it deleted.
    pub packs_deleted: usize,
    /// Bytes its deletions freed.
    pub bytes_freed: u64,
    /// Deletions that failed on a destination (retried next run).
    pub failures: Vec<String>,
    /// The next scheduled run.
    pub next_run: Option<Timestamp>,
}

impl RetentionStatus {
    /// Whether the last run failed, and the `/health` summary.
    pub fn check(&self) -> (bool, String) {
        match (&self.last_error, self.last_ok == Some(false)) {
            (Some(e), true) => (
                true,
                format!(
                    "the last retention run failed: {e}. Storage is not cleaned up until it succeeds; `pitr retention --dry-run` shows the plan"
                ),
            ),
            _ => (false, "retention runs as scheduled".to_owned()),
        }
    }
}

/// Runs retention at every time of `config.retention.schedule` until
/// `shutdown` fires, also when the schedule is off (the supervisor takes a
/// part that ends for a failure). Each run's outcome goes to `status` and
/// the log.
pub async fn run_scheduled(
    repo: Repository,
    config: Config,
    status: watch::Sender<RetentionStatus>,
    shutdown: impl Future<Output = ()>,
) {
    let Some(cron) = config.retention.schedule.clone() else {
        return shutdown.await;
    };
    let (repo, config, status) = (&repo, &config, &status);
    let announce = |next| status.send_modify(|s| s.next_run = Some(next));
    every(&cron, "retention", shutdown, announce, |started| async move {
        let opts = RunOptions::from_config(config);
        let result = run(repo, config, &opts, false).await;
        status.send_modify(|s| {
            s.last_run = Some(started);
            match &result {
                Ok((_, Some(report))) => {
                    tracing::info!(
                        backups_forgotten = report.backups_forgotten,
                        items_forgotten = report.items_forgotten,
                        packs_marked = report.gc.marked,
                        packs_deleted = report.gc.deleted,
                        bytes_freed = report.gc.bytes_freed,
                        failures = report.gc.failures.len(),
                        "retention run done"
                    );
                    s.last_ok = Some(true);
                    s.last_error = None;
                    s.backups_forgotten = report.backups_forgotten;
                    s.items_forgotten = report.items_forgotten;
                    s.packs_marked = report.gc.marked;
                    s.packs_deleted = report.gc.deleted;
                    s.bytes_freed = report.gc.bytes_freed;
                    s.failures = report.gc.failures.clone();
                }
                Ok((_, None)) => {}
                Err(e) => {
                    tracing::error!(error = %e, "retention run failed; the next scheduled run tries again");
                    s.last_ok = Some(false);
                    s.last_error = Some(e.to_string());
                }
            }
        });
    })
    .await;
}
