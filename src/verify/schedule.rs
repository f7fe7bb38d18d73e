//! Test restores on the `[verify]` schedule, with the state the health
//! endpoint serves: configured or why not, the next run, the one running,
//! and the newest report of each database.

use std::pin::pin;
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;
use tokio::sync::watch;

use super::{Selection, VerifyError, VerifyReport, last_reports, reading_repo, run_now};
use crate::config::Config;
use crate::cron::every;
use crate::repo::Repository;

/// Test restores as `/health` shows them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VerifyStatus {
    /// Whether scheduled test restores run.
    pub configured: bool,
    /// Why not, when they do not (`not configured: no identity_file`,
    /// `off`).
    pub not_configured: Option<String>,
    /// When the next one starts.
    pub next_run: Option<Timestamp>,
    /// When the one running now started.
    pub running_since: Option<Timestamp>,
    /// The newest report of each database (from the catalog at start, then
    /// from each run).
    pub last: Vec<VerifyReport>,
    /// Runs completed since `pitr run` started.
    pub runs: u64,
    /// The newest failure to record a report in the repository.
    pub record_error: Option<String>,
    /// Databases the newest run skipped because nothing of them is
    /// restorable yet, each with why.
    pub skipped: Vec<String>,
    /// `[health] verify_max_age`: an older newest report fails the check
    /// (only while the schedule runs).
    #[serde(skip)]
    pub max_age: Option<Duration>,
}

impl VerifyStatus {
    /// Whether the newest report of any database failed.
    pub fn failing(&self) -> bool {
        self.last.iter().any(|r| !r.ok)
    }

    /// The health check: whether it fails, and a sentence saying why or
    /// that all is well. A missing identity is not a failure (the sidecar
    /// need not hold it, invariant 5); it is said.
    pub fn check(&self) -> (bool, String) {
        self.check_at(Timestamp::now())
    }

    /// [`Self::check`] as of `now`.
    fn check_at(&self, now: Timestamp) -> (bool, String) {
        let failed: Vec<String> = self
            .last
            .iter()
            .filter(|r| !r.ok)
            .map(|r| {
                format!(
                    "the test restore of [[{}]] {:?} at {} failed: {}",
                    r.kind.as_str(),
                    r.database,
                    r.started,
                    r.error.as_deref().unwrap_or("no reason recorded")
                )
            })
            .collect();
        if !failed.is_empty() {
            return (
                true,
                format!(
                    "{}. `pitr verify --restore` runs it again now",
                    failed.join("; ")
                ),
            );
        }
        if let Some(why) = &self.not_configured {
            return (false, format!("scheduled test restores are {why}"));
        }
        if let Some(max) = self.max_age.filter(|_| self.configured) {
            let stale: Vec<String> = self
                .last
                .iter()
                .filter(|r| {
                    now.duration_since(r.started)
                        .as_secs()
                        .try_into()
                        .is_ok_and(|age: u64| age > max.as_secs())
                })
                .map(|r| format!("[[{}]] {:?} at {}", r.kind.as_str(), r.database, r.started))
                .collect();
            if !stale.is_empty() {
                return (
                    true,
                    format!(
                        "the newest test restore is older than [health] verify_max_age ({}s) \
                         for {}: check that `pitr run` keeps its [verify] schedule and that the \
                         test restores finish (logs), or run `pitr verify --restore`",
                        max.as_secs(),
                        stale.join(", ")
                    ),
                );
            }
        }
        match self.last.iter().map(|r| r.started).min() {
            Some(oldest) => (
                false,
                format!(
                    "the newest test restore of each database passed (oldest of them {oldest})"
                ),
            ),
            None => (false, "no test restore has run yet".to_owned()),
        }
    }
}

/// Runs test restores of every database at each time of
/// `config.verify.schedule` until `shutdown` fires, publishing to `status`.
/// Never fails the sidecar: without an identity, or with the schedule off,
/// it says so in `status` and waits for `shutdown`; a failed test restore
/// is a report.
pub async fn run_scheduled(
    config: Config,
    repo: Repository,
    status: watch::Sender<VerifyStatus>,
    shutdown: impl Future<Output = ()>,
) {
    let shutdown = pin!(shutdown);
    tokio::select! {
        biased;
        () = shutdown => {}
        () = forever(config, repo, status) => {}
    }
}

fn set_last(status: &watch::Sender<VerifyStatus>, reports: &[VerifyReport]) {
    status.send_modify(|s| {
        for r in reports {
            match s
                .last
                .iter_mut()
                .find(|o| o.kind == r.kind && o.database == r.database)
            {
                Some(o) => *o = r.clone(),
                None => s.last.push(r.clone()),
            }
        }
    });
}

async fn forever(config: Config, repo: Repository, status: watch::Sender<VerifyStatus>) {
    match last_reports(&repo) {
        Ok(last) => set_last(&status, &last),
        Err(e) => tracing::warn!(error = %e, "cannot read earlier test restores from the catalog"),
    }
    let Some(cron) = config.verify.schedule.clone() else {
        status.send_modify(|s| {
            s.configured = false;
            s.not_configured = Some("off: [verify] schedule = \"off\"".to_owned());
        });
        return std::future::pending().await;
    };
    let reader = match reading_repo(&config, &repo).await {
        Ok(r) => r,
        Err(e) => {
            let why = match e {
                VerifyError::NoIdentity => "not configured: no identity_file".to_owned(),
                e => format!("not configured: {e}"),
            };
            tracing::warn!(reason = %why, "scheduled test restores do not run");
            status.send_modify(|s| {
                s.configured = false;
                s.not_configured = Some(why);
            });
            return std::future::pending().await;
        }
    };
    status.send_modify(|s| {
        s.configured = true;
        s.not_configured = None;
        s.max_age = Some(config.health.verify_max_age);
    });
    tracing::info!(cron = %cron, "test restore schedule started");
    let (config, reader, status) = (&config, &reader, &status);
    let announce = |due| status.send_modify(|s| s.next_run = Some(due));
    // `run_scheduled` stops this on shutdown, so it waits for nothing else.
    let shutdown = std::future::pending::<()>();
    every(&cron, "test restore", shutdown, announce, |_| async move {
        status.send_modify(|s| {
            s.running_since = Some(Timestamp::now());
            s.next_run = None;
        });
        match run_now(config, reader, &Selection::Restorable).await {
            Ok(run) => {
                set_last(status, &run.reports);
                status.send_modify(|s| {
                    s.record_error = run.record_errors.last().map(|(db, e)| format!("{db}: {e}"));
                    s.skipped = run
                        .skipped
                        .iter()
                        .map(|(db, why)| format!("{db}: {why}"))
                        .collect();
                });
            }
            Err(e) => {
                tracing::error!(error = %e, "scheduled test restores could not run");
                status.send_modify(|s| s.record_error = Some(e.to_string()));
            }
        }
        status.send_modify(|s| {
            s.running_since = None;
            s.runs += 1;
        });
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::DatabaseKind;

    #[test]
    fn a_failed_report_fails_the_check_and_says_why() {
        let mut s = VerifyStatus {
            configured: true,
            ..VerifyStatus::default()
        };
        assert_eq!(s.check(), (false, "no test restore has run yet".to_owned()));
        let mut r = VerifyReport::new(DatabaseKind::Postgres, "main");
        r.error = Some("object packs/ab/abc was altered".into());
        s.last.push(r);
        let (failing, why) = s.check();
        assert!(failing && s.failing());
        assert!(
            why.contains("packs/ab/abc") && why.contains("\"main\""),
            "{why}"
        );
        s.last[0].ok = true;
        s.last[0].error = None;
        assert!(!s.check().0);
    }

    #[test]
    fn a_report_older_than_verify_max_age_fails_the_check() {
        let mut r = VerifyReport::new(DatabaseKind::Postgres, "main");
        r.ok = true;
        let started = r.started;
        let mut s = VerifyStatus {
            configured: true,
            max_age: Some(Duration::from_secs(3 * 86400)),
            last: vec![r],
            ..VerifyStatus::default()
        };
        let day = jiff::SignedDuration::from_hours(24);
        assert!(!s.check_at(started + day).0);
        let (failing, why) = s.check_at(started + day * 4);
        assert!(failing, "{why}");
        assert!(
            why.contains("verify_max_age") && why.contains("\"main\""),
            "{why}"
        );
        // Off (or without an identity) the age is not held against it.
        s.configured = false;
        assert!(!s.check_at(started + day * 4).0);
    }
}
