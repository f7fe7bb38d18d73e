//! Batched destinations inside `pitr run` (`batch_interval`;
//! docs/DESTINATIONS.md, "Batched destinations"): one batch per interval
//! through [`Repository::send_batch`], garbage collection of what the
//! batches forgot, and the outcome for `/health`, `/metrics` and alerts.
//! A failed batch is reported and tried again at the next interval; it
//! never touches the writes to the other destinations.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;
use tokio::sync::watch;

use super::health::Check;
use super::with_causes;
use crate::repo::{BatchReport, BatchStage, Repository};
use crate::ship::Batched;

/// Garbage collection of a batched destination runs at most this often:
/// each run may store a commit, and requests are what batching saves.
const GC_EVERY: Duration = Duration::from_secs(3600);

/// One batched destination as `/health` shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BatchStatus {
    /// The destination.
    pub destination: String,
    /// Its interval, in seconds.
    pub every_seconds: u64,
    /// When the last batch that succeeded started: the batched destination
    /// alone restores up to about then.
    pub last_batch: Option<Timestamp>,
    /// What it did.
    pub last_report: Option<BatchReport>,
    /// When the last attempt started.
    pub last_attempt: Option<Timestamp>,
    /// Its error, when it failed.
    pub last_error: Option<String>,
    /// Since when batches fail (the first failure after a success).
    pub failing_since: Option<Timestamp>,
    /// Objects stored in it by this process.
    pub objects_stored: u64,
    /// Bytes staged for its next batch.
    pub staged_bytes: u64,
    /// The next batch.
    pub next_batch: Option<Timestamp>,
}

impl BatchStatus {
    /// The `/health` check of this destination's batches.
    pub fn check(&self) -> Check {
        let id = format!("destination/{}/batch", self.destination);
        match (&self.last_error, self.failing_since) {
            (Some(e), Some(since)) => Check::new(
                id,
                true,
                format!(
                    "batches to destination {} fail since {since}: {e}. The other destinations hold every write; \
                     this one alone restores only up to its last batch ({})",
                    self.destination,
                    self.last_batch
                        .map_or_else(|| "none yet".to_owned(), |t| t.to_string())
                ),
            ),
            _ => Check::new(
                id,
                false,
                format!(
                    "destination {} receives a batch every {} s; last at {}",
                    self.destination,
                    self.every_seconds,
                    self.last_batch
                        .map_or_else(|| "none yet".to_owned(), |t| t.to_string())
                ),
            ),
        }
    }
}

/// Sends `batched` a batch every interval until `shutdown`; the first one
/// at start, so that a destination added to a running repository catches
/// up at once.
pub async fn run(
    primary: Repository,
    batched: Batched,
    stage: Arc<BatchStage>,
    gc_grace: Duration,
    status: watch::Sender<BatchStatus>,
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = pin!(shutdown);
    let mut repo: Option<Repository> = None;
    let mut last_gc: Option<std::time::Instant> = None;
    loop {
        let started = Timestamp::now();
        status.send_modify(|s| {
            s.last_attempt = Some(started);
            s.staged_bytes = stage.staged_bytes();
        });
        let outcome = tokio::select! {
            () = &mut shutdown => return,
            r = once(&primary, &batched, &stage, gc_grace, &mut repo, &mut last_gc) => r,
        };
        let name = batched.name.as_str();
        match &outcome {
            Ok(report) => {
                if report.commit.is_some() {
                    tracing::info!(
                        destination = name,
                        items = report.items,
                        forgotten = report.forgotten,
                        packs_built = report.packs_built,
                        packs_copied = report.packs_copied,
                        bytes = report.pack_bytes,
                        "batch stored"
                    );
                }
                metrics::counter!("pitr_batch_objects_total", "destination" => name.to_owned())
                    .increment(report.objects as u64);
                metrics::gauge!("pitr_batch_last_success_timestamp_seconds", "destination" => name.to_owned())
                    .set(started.as_second() as f64);
            }
            Err(e) => {
                tracing::error!(destination = name, error = %e,
                    "batch failed; the next interval tries again (the other destinations are not affected)");
                metrics::counter!("pitr_batch_failures_total", "destination" => name.to_owned())
                    .increment(1);
            }
        }
        status.send_modify(|s| match outcome {
            Ok(report) => {
                s.last_batch = Some(started);
                s.objects_stored += report.objects as u64;
                s.last_report = Some(report);
                s.last_error = None;
                s.failing_since = None;
                s.staged_bytes = stage.staged_bytes();
            }
            Err(e) => {
                s.last_error = Some(e);
                s.failing_since.get_or_insert(started);
            }
        });
        let next = started
            .checked_add(jiff::SignedDuration::try_from(batched.every).unwrap_or_default())
            .unwrap_or(started);
        status.send_modify(|s| s.next_batch = Some(next));
        let wait = batched
            .every
            .saturating_sub(Timestamp::now().duration_since(started).unsigned_abs());
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// One batch, opening the batched destination's repository first when it
/// is not open yet; garbage collection when due.
async fn once(
    primary: &Repository,
    batched: &Batched,
    stage: &BatchStage,
    gc_grace: Duration,
    repo: &mut Option<Repository>,
    last_gc: &mut Option<std::time::Instant>,
) -> Result<BatchReport, String> {
    let target = match repo {
        Some(r) => r.clone(),
        None => {
            let r = primary
                .open_batched(batched.fanout.clone())
                .await
                .map_err(|e| format!("cannot open the repository there: {}", with_causes(&e)))?;
            *repo = Some(r.clone());
            r
        }
    };
    let report = primary
        .send_batch(&target, Some(stage), &crate::wal::superseded_by)
        .await
        .map_err(|e| with_causes(&e))?;
    if last_gc.is_none_or(|t| t.elapsed() >= GC_EVERY) {
        // A failure here loses nothing: unreferenced packs wait for the
        // next run.
        match crate::retention::collect_garbage(&target, Timestamp::now(), gc_grace).await {
            Ok(_) => *last_gc = Some(std::time::Instant::now()),
            Err(e) => tracing::warn!(destination = %batched.name, error = %e,
                "garbage collection of the batched destination failed; trying again after the next batch"),
        }
    }
    Ok(report)
}
