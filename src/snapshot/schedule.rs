//! The schedule `pitr run` keeps for each snapshot source: one snapshot at
//! each time of its cron expression, one at start when the newest is
//! older than the schedule's interval (or there is none), a few retries of
//! a failed one, and the [`SnapshotStatus`] `/health` shows and judges.

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;
use tokio::sync::watch;

use super::{SnapshotError, SnapshotInfo, SourceKind};
use crate::backoff::Backoff;
use crate::cron::{CronSchedule, wait_for_next};
use crate::repo::Repository;

/// How a failed scheduled snapshot is retried: 30 s doubling to 10 min,
/// 3 retries; then it waits for its next time. The health check fails
/// (and alerts, once) from the first failure until one succeeds.
pub const SNAPSHOT_RETRY: Backoff =
    Backoff::forever(Duration::from_secs(30), Duration::from_secs(600)).times(3);

/// The newest snapshot of a source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LastSnapshot {
    /// Its id.
    pub id: String,
    /// When it was started.
    pub time: Timestamp,
    /// Bytes of content.
    pub bytes: u64,
    /// Bytes of new packs it stored (`None` for one found in the catalog
    /// at start).
    pub stored_bytes: Option<u64>,
    /// How long the source took, in seconds.
    pub duration_secs: f64,
}

/// The newest failed run of a source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastFailure {
    /// When it failed.
    pub at: Timestamp,
    /// The error (with the command's stderr tail; never its environment).
    pub message: String,
}

/// A snapshot source's schedule as `/health` shows it (a section per
/// source, `snapshot/<name>`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SnapshotStatus {
    /// The source's name.
    pub source: String,
    /// Its kind.
    pub kind: Option<SourceKind>,
    /// The newest snapshot stored (from the catalog at start, then from
    /// each run).
    pub last: Option<LastSnapshot>,
    /// The newest failed run; kept after a later success, for the record.
    pub last_error: Option<LastFailure>,
    /// When the run going on now started.
    pub running_since: Option<Timestamp>,
    /// The next scheduled time.
    pub next_due: Option<Timestamp>,
    /// Snapshots stored since `pitr run` started.
    pub taken: u64,
    /// Runs that failed since `pitr run` started.
    pub failures: u64,
    /// The check fails when the newest snapshot is older than this.
    pub max_age_secs: Option<u64>,
}

impl SnapshotStatus {
    /// The health check: failing while the newest run failed (until one
    /// succeeds) or the newest snapshot is older than `max_age`; a summary
    /// that says why and what to do.
    pub fn check(&self) -> (bool, String) {
        self.check_at(Timestamp::now())
    }

    fn check_at(&self, now: Timestamp) -> (bool, String) {
        let section = self.kind.map_or("[[command]]", SourceKind::section);
        let name = &self.source;
        let last_ok = self.last.as_ref().map(|l| l.time);
        if let Some(e) = &self.last_error
            && last_ok.is_none_or(|ok| ok < e.at)
        {
            return (
                true,
                format!(
                    "the newest snapshot of {section} {name:?} failed at {}: {}. Nothing was \
                     recorded; fix the cause, then `pitr backup --snapshot {name}` takes one now",
                    e.at, e.message
                ),
            );
        }
        let age = |t: Timestamp| now.duration_since(t).as_secs().max(0) as u64;
        match (&self.last, self.max_age_secs) {
            (Some(l), Some(max)) if age(l.time) > max => (
                true,
                format!(
                    "the newest snapshot of {section} {name:?} ({}) is older than max_age \
                     ({max} s): check that `pitr run` keeps its schedule, or take one with \
                     `pitr backup --snapshot {name}`",
                    l.time
                ),
            ),
            (Some(l), _) => (
                false,
                format!(
                    "the newest snapshot of {section} {name:?} is from {}",
                    l.time
                ),
            ),
            (None, _) => (false, format!("{section} {name:?} has no snapshot yet")),
        }
    }
}

/// How old the newest snapshot may be before `/health` fails: `max_age`
/// when the source sets it, else 1.5 × its schedule's interval (as base
/// backups are judged), else no limit.
pub fn max_age(configured: Option<Duration>, cron: Option<&CronSchedule>) -> Option<Duration> {
    configured.or_else(|| Some(cron?.interval()?.mul_f64(1.5)))
}

/// One source's schedule, as [`run_scheduled`] keeps it.
#[derive(Debug, Clone)]
pub struct SourceSchedule {
    /// The source's name.
    pub source: String,
    /// Its kind.
    pub kind: SourceKind,
    /// When it is taken; `None`: never on a schedule.
    pub cron: Option<CronSchedule>,
    /// Its health check fails past this age ([`max_age`]).
    pub max_age: Option<Duration>,
}

/// Runs the schedule of one source until `stop`: `take` takes one
/// snapshot (a command's run, an export); each result is published to
/// `status` and in metrics. Takes one at once when the newest is older than
/// the schedule's interval or there is none.
pub async fn run_scheduled<T, Fut>(
    repo: Repository,
    sched: SourceSchedule,
    status: watch::Sender<SnapshotStatus>,
    stop: impl Future<Output = ()>,
    mut take: T,
) -> Result<(), String>
where
    T: FnMut() -> Fut,
    Fut: Future<Output = Result<SnapshotInfo, SnapshotError>>,
{
    let SourceSchedule {
        source,
        kind,
        cron,
        max_age,
    } = sched;
    let newest = super::list(&repo.catalog(), &source)
        .map_err(|e| e.to_string())?
        .pop();
    status.send_modify(|s| {
        s.source = source.clone();
        s.kind = Some(kind);
        s.max_age_secs = max_age.map(|d| d.as_secs());
        s.last = newest.as_ref().map(|n| LastSnapshot {
            id: n.id.clone(),
            time: n.attrs.time,
            bytes: n.attrs.bytes,
            stored_bytes: None,
            duration_secs: n.attrs.duration_secs,
        });
    });
    metrics::counter!("pitr_snapshot_failures_total", "source" => source.clone()).increment(0);
    let Some(cron) = cron else {
        stop.await;
        return Ok(());
    };
    let mut stop = pin!(stop);
    let overdue = match (&newest, cron.interval()) {
        (None, _) => true,
        (Some(n), Some(every)) => {
            Timestamp::now().duration_since(n.attrs.time).as_secs() as u64 >= every.as_secs()
        }
        (Some(_), None) => false,
    };
    if overdue {
        tokio::select! {
            () = stop.as_mut() => return Ok(()),
            () = take_with_retries(&source, &status, &mut take) => {}
        }
    }
    loop {
        let announce = |next| status.send_modify(|s| s.next_due = Some(next));
        if !wait_for_next(&cron, "snapshot", &mut stop, announce).await {
            return Ok(());
        }
        tokio::select! {
            () = stop.as_mut() => return Ok(()),
            () = take_with_retries(&source, &status, &mut take) => {}
        }
    }
}

/// One scheduled snapshot, retried with [`SNAPSHOT_RETRY`] when it fails.
async fn take_with_retries<T, Fut>(
    source: &str,
    status: &watch::Sender<SnapshotStatus>,
    take: &mut T,
) where
    T: FnMut() -> Fut,
    Fut: Future<Output = Result<SnapshotInfo, SnapshotError>>,
{
    let mut delays = SNAPSHOT_RETRY.delays();
    loop {
        let started = Timestamp::now();
        status.send_modify(|s| s.running_since = Some(started));
        let result = take().await;
        let labels = [("source", source.to_owned())];
        match result {
            Ok(info) => {
                let snap = &info.snapshot;
                tracing::info!(
                    source,
                    id = %snap.id,
                    bytes = snap.attrs.bytes,
                    stored_bytes = info.stored_bytes,
                    "stored a snapshot"
                );
                metrics::gauge!("pitr_snapshot_duration_seconds", &labels)
                    .set(snap.attrs.duration_secs);
                metrics::gauge!("pitr_snapshot_bytes", &labels).set(snap.attrs.bytes as f64);
                metrics::gauge!("pitr_snapshot_stored_bytes", &labels)
                    .set(info.stored_bytes as f64);
                metrics::gauge!("pitr_snapshot_last_success_timestamp_seconds", &labels)
                    .set(snap.attrs.time.as_second() as f64);
                status.send_modify(|s| {
                    s.running_since = None;
                    s.taken += 1;
                    s.last = Some(LastSnapshot {
                        id: snap.id.clone(),
                        time: snap.attrs.time,
                        bytes: snap.attrs.bytes,
                        stored_bytes: Some(info.stored_bytes),
                        duration_secs: snap.attrs.duration_secs,
                    });
                });
                return;
            }
            Err(e) => {
                let message = e.to_string();
                tracing::error!(source, error = %message, "snapshot failed; nothing was recorded");
                metrics::counter!("pitr_snapshot_failures_total", &labels).increment(1);
                status.send_modify(|s| {
                    s.running_since = None;
                    s.failures += 1;
                    s.last_error = Some(LastFailure {
                        at: started,
                        message,
                    });
                });
                let Some(wait) = delays.next_delay() else {
                    return;
                };
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> SnapshotStatus {
        SnapshotStatus {
            source: "dump".into(),
            kind: Some(SourceKind::Command),
            max_age_secs: Some(3600),
            ..Default::default()
        }
    }

    fn last(at: Timestamp) -> Option<LastSnapshot> {
        Some(LastSnapshot {
            id: "x".into(),
            time: at,
            bytes: 1,
            stored_bytes: None,
            duration_secs: 0.1,
        })
    }

    #[test]
    fn the_check_fails_on_a_failure_until_a_success_and_on_age() {
        let now: Timestamp = "2026-12-07T12:00:00Z".parse().expect("time");
        let hour = jiff::SignedDuration::from_secs(3600);
        let mut s = status();
        assert!(!s.check_at(now).0, "no snapshot yet is not a failure");
        s.last = last(now - hour / 2);
        assert!(!s.check_at(now).0);
        s.last_error = Some(LastFailure {
            at: now - hour / 4,
            message: "exit 1".into(),
        });
        let (failing, summary) = s.check_at(now);
        assert!(failing && summary.contains("exit 1"), "{summary}");
        s.last = last(now - hour / 8);
        assert!(!s.check_at(now).0, "a later success clears it");
        s.last = last(now - hour * 2);
        s.last_error = None;
        let (failing, summary) = s.check_at(now);
        assert!(failing && summary.contains("max_age"), "{summary}");
    }
}
