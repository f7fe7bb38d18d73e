//! The background scrub inside `pitr run`: a run at every time of
//! `[scrub] schedule` (cron, UTC), its outcome published for `/health` (the
//! `scrub` check), `/metrics` and the alerts. A run that cannot read the
//! catalog is logged and reported, never fatal: the next time tries again.

use jiff::Timestamp;
use serde::Serialize;
use tokio::sync::watch;

use super::health::Check;
use crate::config::ScrubConfig;
use crate::cron::every;
use crate::repo::{Repository, ScrubOptions, ScrubReport, Unrepaired};

/// How many unrepaired objects the `/health` summary names; the rest are
/// counted (the `scrub` section lists them all).
const NAMED_IN_SUMMARY: usize = 5;

/// The scheduled scrub runs as `/health` shows them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScrubStatus {
    /// When the last run started.
    pub last_run: Option<Timestamp>,
    /// When it finished.
    pub last_finished: Option<Timestamp>,
    /// Its error, when it could not run at all.
    pub last_error: Option<String>,
    /// Objects the repository needs.
    pub objects: usize,
    /// Objects read in full and checked by the content window.
    pub content_checked: usize,
    /// Objects the listing found missing or of the wrong size, per
    /// destination.
    pub listing_problems: usize,
    /// Copies made by the last run: (destination, object, what was wrong,
    /// copied from).
    pub repaired: Vec<(String, String, String, String)>,
    /// What the last run could not repair.
    pub unrepaired: Vec<Unrepaired>,
    /// Bytes the last run read.
    pub bytes_read: u64,
    /// When the content window last came round to the first object.
    pub last_wrapped: Option<Timestamp>,
    /// The next scheduled run.
    pub next_run: Option<Timestamp>,
}

impl ScrubStatus {
    fn record(&mut self, report: &ScrubReport, started: Timestamp) {
        self.last_run = Some(started);
        self.last_finished = Some(Timestamp::now());
        self.last_error = None;
        self.objects = report.objects;
        self.content_checked = report.content_checked;
        self.listing_problems = report.listing_problems.len();
        self.repaired = report
            .repaired
            .iter()
            .map(|r| {
                (
                    r.destination.clone(),
                    r.object.clone(),
                    r.was.clone(),
                    r.from.clone(),
                )
            })
            .collect();
        self.unrepaired = report.unrepaired.clone();
        self.bytes_read = report.bytes_read;
        if report.wrapped {
            self.last_wrapped = Some(started);
        }
    }

    /// The `scrub` check: failing while the last run left something
    /// unrepaired (naming destinations and objects) or could not run.
    pub fn check(&self) -> Check {
        if let Some(e) = &self.last_error {
            return Check::new(
                "scrub".to_owned(),
                true,
                format!(
                    "the last scrub could not run: {e}. Fix the cause; `pitr repair` runs the same checks by hand"
                ),
            );
        }
        if self.unrepaired.is_empty() {
            let summary = match self.last_run {
                None => "no scrub has run yet".to_owned(),
                Some(t) => format!(
                    "the scrub at {t} checked {} objects by listing and {} by content; {} repaired, nothing left wrong",
                    self.objects,
                    self.content_checked,
                    self.repaired.len()
                ),
            };
            return Check::new("scrub".to_owned(), false, summary);
        }
        let named: Vec<String> = self
            .unrepaired
            .iter()
            .take(NAMED_IN_SUMMARY)
            .map(|u| format!("{} in {}: {}", u.object, u.destination, u.why))
            .collect();
        let more = self.unrepaired.len().saturating_sub(NAMED_IN_SUMMARY);
        let mut destinations: Vec<&str> = self
            .unrepaired
            .iter()
            .map(|u| u.destination.as_str())
            .collect();
        destinations.sort_unstable();
        destinations.dedup();
        let mut check = Check::new(
            "scrub".to_owned(),
            true,
            format!(
                "the scrub could not repair {} object(s) in {}: {}{}. Restore a good copy to that destination (or fix its access) and run `pitr repair`; an object damaged everywhere means those backups cannot be restored, so take a new base backup",
                self.unrepaired.len(),
                destinations.join(", "),
                named.join("; "),
                if more > 0 {
                    format!("; and {more} more (see the scrub section)")
                } else {
                    String::new()
                }
            ),
        );
        if destinations.len() == 1 {
            check.destination = Some(destinations[0].to_owned());
        }
        check
    }
}

/// Runs the scrub at every time of `config.schedule` until `shutdown`
/// fires (the sidecar starts it only when the schedule is on).
pub async fn run_scheduled(
    repo: Repository,
    config: ScrubConfig,
    status: watch::Sender<ScrubStatus>,
    shutdown: impl Future<Output = ()>,
) {
    // Off, it waits: the supervisor would take an immediate return for a
    // failure and restart it.
    let Some(cron) = config.schedule.clone() else {
        return shutdown.await;
    };
    let (repo, status) = (&repo, &status);
    let announce = |next| status.send_modify(|s| s.next_run = Some(next));
    every(&cron, "scrub", shutdown, announce, |started| async move {
        let opts = ScrubOptions {
            read_budget: config.read_budget,
        };
        let result = repo.scrub(opts).await;
        record_metrics(&result, started);
        status.send_modify(|s| match &result {
            Ok(report) => {
                tracing::info!(
                    objects = report.objects,
                    content_checked = report.content_checked,
                    listing_problems = report.listing_problems.len(),
                    repaired = report.repaired.len(),
                    unrepaired = report.unrepaired.len(),
                    bytes_read = report.bytes_read,
                    "scrub run done"
                );
                for u in &report.unrepaired {
                    tracing::error!(
                        destination = u.destination,
                        object = u.object,
                        why = u.why,
                        "scrub: cannot repair"
                    );
                }
                s.record(report, started);
            }
            Err(e) => {
                tracing::error!(error = %e, "scrub run failed; the next scheduled run tries again");
                s.last_run = Some(started);
                s.last_finished = Some(Timestamp::now());
                s.last_error = Some(e.to_string());
            }
        });
    })
    .await;
}

fn record_metrics(result: &Result<ScrubReport, crate::repo::RepoError>, started: Timestamp) {
    metrics::gauge!("pitr_scrub_last_run_timestamp_seconds").set(started.as_second() as f64);
    match result {
        Ok(r) => {
            metrics::gauge!("pitr_scrub_last_ok").set(if r.unrepaired.is_empty() {
                1.0
            } else {
                0.0
            });
            metrics::counter!("pitr_scrub_objects_checked_total", "pass" => "listing")
                .increment(r.objects as u64);
            metrics::counter!("pitr_scrub_objects_checked_total", "pass" => "content")
                .increment(r.content_checked as u64);
            metrics::counter!("pitr_scrub_read_bytes_total").increment(r.bytes_read);
            metrics::counter!("pitr_scrub_repaired_total").increment(r.repaired.len() as u64);
            metrics::gauge!("pitr_scrub_unrepaired_objects").set(r.unrepaired.len() as f64);
        }
        Err(_) => metrics::gauge!("pitr_scrub_last_ok").set(0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_names_what_is_left_unrepaired() {
        let mut s = ScrubStatus::default();
        assert!(!s.check().failing);
        let report = ScrubReport {
            objects: 10,
            content_checked: 2,
            unrepaired: vec![Unrepaired {
                destination: "s3".into(),
                object: "packs/ab/abcd".into(),
                why: "damaged: tampered, and no destination holds a good copy".into(),
            }],
            ..Default::default()
        };
        s.record(&report, Timestamp::now());
        let c = s.check();
        assert!(c.failing);
        assert_eq!(c.destination.as_deref(), Some("s3"));
        for part in ["packs/ab/abcd", "in s3", "pitr repair"] {
            assert!(c.summary.contains(part), "{}", c.summary);
        }
        s.record(&ScrubReport::default(), Timestamp::now());
        assert!(!s.check().failing);
        s.last_error = Some("catalog unreadable".into());
        assert!(s.check().failing);
    }
}
