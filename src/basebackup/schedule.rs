//! The base-backup schedule `pitr run` keeps for each `[[postgres]]` entry:
//! a backup at every time of its cron expression (UTC), and also whenever
//! the WAL stored since the newest backup started passes a size, so restore
//! replay stays bounded.
//!
//! A failed backup (server restart, destination down) is retried with
//! exponential backoff and jitter; it never touches the WAL stream, and a
//! backup is marked restorable only once the stream has stored its WAL
//! ([`super::wait_restorable`]). What happened is published as a
//! [`ScheduleStatus`] for the health endpoint.

use std::pin::pin;
use std::time::Duration;

use backon::Retryable;
use jiff::Timestamp;
use serde::Serialize;
use tokio::sync::watch;

use super::{BackupError, BackupOptions, BackupProgress, BackupRecord, take, wait_restorable};
use crate::backoff::Backoff;
use crate::cron::CronSchedule;
use crate::pg::Lsn;
use crate::repo::Repository;
use crate::wal::Progress;

/// How failed scheduled backups are retried: 5 s doubling to 5 min, 8
/// retries: rides out a server restart or a destination outage of about a
/// quarter of an hour; then the backup waits for its next trigger.
pub const BACKUP_RETRY: Backoff =
    Backoff::forever(Duration::from_secs(5), Duration::from_secs(300)).times(8);

/// When and how the scheduled backups of one database are taken.
#[derive(Debug, Clone)]
pub struct ScheduleOptions {
    /// The backup itself (its checkpoint mode and rate limit included).
    pub backup: BackupOptions,
    /// Take a backup at each time this matches; `None`: no timed backups.
    pub cron: Option<CronSchedule>,
    /// Also take one once this many bytes of WAL were stored since the
    /// newest backup started; `None`: no such rule.
    pub wal_bytes: Option<u64>,
    /// Retries of a failed backup.
    pub retry: Backoff,
    /// How long to wait for a backup's WAL to be stored before leaving it
    /// unmarked (a later backup's wait marks it once the WAL arrives).
    pub wait_wal: Duration,
}

impl ScheduleOptions {
    /// Whether anything ever triggers a backup.
    pub fn is_active(&self) -> bool {
        self.cron.is_some() || self.wal_bytes.is_some()
    }
}

/// Why a scheduled backup started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Its cron time came.
    Cron,
    /// The WAL since the newest backup passed `base_backup_wal_gb`.
    Wal,
    /// The database had no base backup at all when the schedule started:
    /// until one exists nothing can be restored, so it is taken at once.
    Initial,
}

/// The newest scheduled backup that was stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LastBackup {
    /// The backup's id.
    pub id: String,
    /// What started it.
    pub trigger: Trigger,
    /// When the first try started.
    pub started: Timestamp,
    /// When it was stored.
    pub finished: Timestamp,
    /// From the first try's start to the end, in seconds (retries included).
    pub duration_secs: f64,
    /// Bytes of the database's files.
    pub bytes: u64,
    /// Bytes of new packs it uploaded.
    pub stored_bytes: u64,
    /// Whether its WAL is stored (it is restorable).
    pub restorable: bool,
}

/// The newest failure of a try.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastError {
    /// When it failed.
    pub at: Timestamp,
    /// The error.
    pub message: String,
    /// Whether it will be tried again soon (else at the next trigger).
    pub retrying: bool,
}

/// A backup being taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Running {
    /// What started it.
    pub trigger: Trigger,
    /// When the first try started.
    pub started: Timestamp,
    /// The try (1 for the first).
    pub attempt: u32,
    /// Bytes the server sent in this try.
    pub done: u64,
    /// The server's estimate of the total, once known.
    pub total: Option<u64>,
    /// Files stored in this try.
    pub files: u64,
}

/// The scheduled backups of one database as the health endpoint shows them
/// (on `/health` and `/metrics`; `pitr run` keeps one per `[[postgres]]`
/// entry in a `watch` channel).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ScheduleStatus {
    /// The `[[postgres]]` entry.
    pub database: String,
    /// The newest scheduled backup stored.
    pub last: Option<LastBackup>,
    /// The newest failed try (kept after a later success, for the record).
    pub last_error: Option<LastError>,
    /// The backup being taken now.
    pub running: Option<Running>,
    /// The next cron time.
    pub next_due: Option<Timestamp>,
    /// WAL bytes stored since the newest backup started.
    pub wal_since_last: u64,
    /// Scheduled backups stored since `pitr run` started.
    pub taken: u64,
    /// Tries that failed since `pitr run` started.
    pub failed_tries: u64,
}

/// Takes the backups `opts` asks for until `shutdown` fires. `wal` is the
/// database's stream progress (its `flushed` position drives the WAL-size
/// rule and shows when a backup's WAL is stored); `status` receives every
/// change. Errors are logged and published, never returned: a backup that
/// fails must not stop the sidecar or its WAL stream.
pub async fn run(
    repo: Repository,
    opts: ScheduleOptions,
    wal: watch::Receiver<Progress>,
    status: watch::Sender<ScheduleStatus>,
    shutdown: impl Future<Output = ()>,
) {
    status.send_modify(|s| s.database = opts.backup.database.clone());
    if !opts.is_active() {
        // Until shutdown: the supervisor takes a part that ends for a
        // failure and would restart it over and over.
        return shutdown.await;
    }
    let mut scheduler = Scheduler {
        repo,
        opts,
        wal,
        status,
        baseline: None,
        wal_rule_after: None,
    };
    let shutdown = pin!(shutdown);
    tokio::select! {
        biased;
        () = shutdown => {}
        () = scheduler.forever() => {}
    }
}

struct Scheduler {
    repo: Repository,
    opts: ScheduleOptions,
    wal: watch::Receiver<Progress>,
    status: watch::Sender<ScheduleStatus>,
    /// Where the newest backup started: the WAL-size rule counts from here.
    baseline: Option<Lsn>,
    /// After a backup that failed for good, the WAL-size rule (which would
    /// fire again at once) waits until then.
    wal_rule_after: Option<tokio::time::Instant>,
}

/// A wait for the next cron time is cut into steps this long, so a wall
/// clock that jumps (suspend, NTP) delays a backup by at most this much.
const CLOCK_STEP: Duration = Duration::from_secs(30);

impl Scheduler {
    async fn forever(&mut self) {
        let db = self.opts.backup.database.clone();
        self.baseline = self.newest_start();
        tracing::info!(
            database = %db,
            cron = ?self.opts.cron.as_ref().map(CronSchedule::as_str),
            wal_bytes = ?self.opts.wal_bytes,
            "base-backup schedule started"
        );
        let mut first = self.baseline.is_none() && self.no_backup_at_all();
        loop {
            let trigger = if std::mem::take(&mut first) {
                Trigger::Initial
            } else {
                self.next_trigger().await
            };
            tracing::info!(database = %db, ?trigger, "scheduled base backup starting");
            let started = Timestamp::now();
            match self.take_with_retries(trigger, started).await {
                Ok(record) => self.finish(record, trigger, started).await,
                Err(e) => {
                    tracing::error!(
                        database = %db,
                        error = %e,
                        "scheduled base backup failed; the next trigger tries again"
                    );
                    self.status.send_modify(|s| {
                        s.running = None;
                        s.last_error = Some(LastError {
                            at: Timestamp::now(),
                            message: e.to_string(),
                            retrying: false,
                        });
                    });
                    self.wal_rule_after =
                        Some(tokio::time::Instant::now() + self.opts.retry.max_delay);
                }
            }
        }
    }

    /// Waits for the next cron time or for the WAL-size rule, whichever
    /// comes first.
    async fn next_trigger(&mut self) -> Trigger {
        let due = self
            .opts
            .cron
            .as_ref()
            .and_then(|c| c.next_after(Timestamp::now()));
        self.status.send_modify(|s| s.next_due = due);
        // Only the WAL-size rule needs the stream's progress (it changes
        // with every message); once the stream is gone only the clock
        // counts.
        let mut wal_open = self.opts.wal_bytes.is_some();
        loop {
            if self.wal_rule_fires() {
                // Another process (`pitr backup`) may have taken one since:
                // the catalog decides.
                if let Err(e) = self.repo.sync_catalog().await {
                    tracing::warn!(error = %e, "cannot read the catalog from the destinations");
                }
                self.baseline = self.baseline.max(self.newest_start());
                if self.wal_rule_fires() {
                    return Trigger::Wal;
                }
            }
            let step = match due {
                Some(due) => {
                    let left = Timestamp::now().duration_until(due);
                    if left.is_negative() || left.is_zero() {
                        return Trigger::Cron;
                    }
                    Duration::try_from(left)
                        .unwrap_or(CLOCK_STEP)
                        .min(CLOCK_STEP)
                }
                None => CLOCK_STEP,
            };
            tokio::select! {
                () = tokio::time::sleep(step) => {}
                changed = self.wal.changed(), if wal_open => wal_open = changed.is_ok(),
            }
        }
    }

    /// Whether the WAL stored since the baseline reached the rule's size;
    /// publishes the amount. Without any backup, the baseline is the first
    /// stored position seen.
    fn wal_rule_fires(&mut self) -> bool {
        let flushed = self.wal.borrow_and_update().flushed;
        if flushed == Lsn(0) {
            return false;
        }
        let base = *self.baseline.get_or_insert(flushed);
        let since = flushed.0.saturating_sub(base.0);
        self.status.send_if_modified(|s| {
            let changed = s.wal_since_last != since;
            s.wal_since_last = since;
            changed
        });
        let resting = self
            .wal_rule_after
            .is_some_and(|t| tokio::time::Instant::now() < t);
        !resting && self.opts.wal_bytes.is_some_and(|limit| since >= limit)
    }

    /// The start of the newest backup the catalog records, restorable or
    /// not (replay bounds count from any stored backup).
    /// Whether the catalog (synced from the destinations: another sidecar
    /// or `pitr backup` may have stored one) holds no base backup of the
    /// database. An unreadable catalog counts as "has one": a spurious
    /// backup is cheap, but this is only about the first.
    fn no_backup_at_all(&self) -> bool {
        matches!(super::backups(&self.repo, &self.opts.backup.database), Ok(b) if b.is_empty())
    }

    fn newest_start(&self) -> Option<Lsn> {
        match super::backups(&self.repo, &self.opts.backup.database) {
            Ok(all) => all.iter().map(|b| b.record.start_lsn).max(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the base backups from the catalog");
                None
            }
        }
    }

    /// One backup, retried on transient failures as the policy says.
    async fn take_with_retries(
        &self,
        trigger: Trigger,
        started: Timestamp,
    ) -> Result<BackupRecord, BackupError> {
        let attempt = std::sync::atomic::AtomicU32::new(0);
        let backoff = self.opts.retry.builder();
        let db = &self.opts.backup.database;
        (|| async {
            let n = attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            self.take_once(trigger, started, n).await
        })
        .retry(backoff)
        .when(BackupError::is_transient)
        .notify(|e, after| {
            tracing::warn!(
                database = %db,
                error = %e,
                retry_in = ?after,
                "scheduled base backup failed; retrying"
            );
            self.status.send_modify(|s| {
                s.last_error = Some(LastError {
                    at: Timestamp::now(),
                    message: e.to_string(),
                    retrying: true,
                });
            });
        })
        .await
    }

    /// One try, its progress forwarded into the status.
    async fn take_once(
        &self,
        trigger: Trigger,
        started: Timestamp,
        attempt: u32,
    ) -> Result<BackupRecord, BackupError> {
        self.status.send_modify(|s| {
            s.running = Some(Running {
                trigger,
                started,
                attempt,
                done: 0,
                total: None,
                files: 0,
            });
        });
        let (tx, mut rx) = watch::channel(BackupProgress::default());
        let forward = async {
            while rx.changed().await.is_ok() {
                let p = rx.borrow_and_update().clone();
                self.status.send_modify(|s| {
                    if let Some(r) = s.running.as_mut() {
                        r.done = p.done;
                        r.total = p.total;
                        r.files = p.files;
                    }
                });
            }
        };
        let backup = async move {
            let taken = take(&self.repo, &self.opts.backup, &tx).await;
            // Ends the forwarding.
            drop(tx);
            taken
        };
        let (taken, ()) = tokio::join!(backup, forward);
        if taken.is_err() {
            self.status.send_modify(|s| s.failed_tries += 1);
        }
        taken
    }

    /// After a stored backup: the WAL rule counts from its start; it is
    /// marked restorable once the stream stored its WAL.
    async fn finish(&mut self, record: BackupRecord, trigger: Trigger, started: Timestamp) {
        let db = self.opts.backup.database.clone();
        self.baseline = Some(record.start_lsn);
        let restorable = match wait_restorable(
            &self.repo,
            &db,
            &record.id,
            self.opts.wait_wal,
            Duration::from_secs(1),
        )
        .await
        {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(database = %db, id = %record.id, error = %e, "scheduled base backup stored, not restorable yet");
                false
            }
        };
        let finished = Timestamp::now();
        let duration_secs = started.duration_until(finished).as_secs_f64();
        tracing::info!(
            database = %db,
            id = %record.id,
            ?trigger,
            duration_secs,
            bytes = record.bytes,
            stored_bytes = record.stored_bytes,
            restorable,
            "scheduled base backup stored"
        );
        self.status.send_modify(|s| {
            s.running = None;
            s.taken += 1;
            s.last = Some(LastBackup {
                id: record.id.clone(),
                trigger,
                started,
                finished: record.finished,
                duration_secs,
                bytes: record.bytes,
                stored_bytes: record.stored_bytes,
                restorable,
            });
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("a timestamp")
    }

    #[test]
    fn five_fields_fire_on_the_minute_in_utc() {
        let c = CronSchedule::parse("0  3 * * *").expect("parses");
        assert_eq!(c.as_str(), "0 3 * * *");
        assert_eq!(
            c.next_after(at("2026-11-25T02:59:59Z")),
            Some(at("2026-11-25T03:00:00Z"))
        );
        // Strictly after: the time that just fired is not due again.
        assert_eq!(
            c.next_after(at("2026-11-25T03:00:00Z")),
            Some(at("2026-11-26T03:00:00Z"))
        );
    }

    #[test]
    fn six_fields_have_seconds_first() {
        let c = CronSchedule::parse("*/5 * * * * *").expect("parses");
        assert_eq!(
            c.next_after(at("2026-11-25T02:59:57Z")),
            Some(at("2026-11-25T03:00:00Z"))
        );
    }

    #[test]
    fn bad_expressions_are_refused() {
        for bad in [
            "",
            "daily",
            "61 * * * *",
            "* * * *",
            "0 0 0 1 1 * 2030",
            "0 0 30 2 *",
        ] {
            assert!(CronSchedule::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
