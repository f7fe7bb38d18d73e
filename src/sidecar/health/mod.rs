//! What the sidecar knows about itself: every part's state gathered into one
//! [`Report`], judged against the `[health]` thresholds into [`Check`]s,
//! served on `/health` and `/metrics` (see [`server`]) and handed to the
//! alerts. The parts publish their state (watch channels, counters); this
//! module only reads them, so a stuck part can never stall the endpoint.

pub mod confine;
pub mod server;
pub mod snapshot;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;
use tokio::sync::watch;

use crate::basebackup::schedule::ScheduleStatus;
use crate::config::{Config, HealthConfig};
use crate::repo::Repository;
use crate::sqlite::Stats;
use crate::wal::{Link, Progress};

/// Where a supervised task is in its life (shown lowercase on `/health`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Not started yet.
    #[default]
    Starting,
    /// Doing its work.
    Running,
    /// Failed; waiting to start again.
    Restarting,
    /// Failed for good: not restarted until pitr is.
    Failed,
    /// Ended (shutdown, or nothing left to do).
    Stopped,
}

/// How a supervised task is doing, as its supervisor publishes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TaskState {
    /// Where it is.
    pub state: Phase,
    /// Since when it is in that state.
    pub since: Option<Timestamp>,
    /// The newest failure.
    pub last_error: Option<String>,
    /// Restarts since the sidecar started.
    pub restarts: u64,
}

/// A [`TaskState`] shared between a supervisor and the health endpoint.
pub type TaskCell = Arc<Mutex<TaskState>>;

/// A new [`TaskCell`] in state `starting`.
pub fn task_cell() -> TaskCell {
    Arc::new(Mutex::new(TaskState {
        state: Phase::Starting,
        since: Some(Timestamp::now()),
        ..TaskState::default()
    }))
}

fn read_task(cell: &TaskCell) -> TaskState {
    cell.lock().map(|t| t.clone()).unwrap_or_default()
}

/// A job of the sidecar's registry ([`crate::sidecar::jobs`]), as `/health`
/// reads it.
#[derive(Debug, Clone)]
pub struct Job {
    /// Its stable key (`retention`, `postgres/main/stream`, ...).
    pub name: String,
    /// What the log and the check call it.
    pub what: String,
    /// When it runs (`continuous`, `cron ...`, `every N s`, `off`).
    pub schedule: String,
    /// Its supervisor's state.
    pub task: TaskCell,
    /// Whether another check judges its state (the stream and watcher
    /// checks); otherwise it is the check `job/NAME`.
    pub checked_by_health: bool,
}

/// One job in the report.
#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    /// Its key.
    pub name: String,
    /// When it runs.
    pub schedule: String,
    /// Its supervisor's state.
    #[serde(flatten)]
    pub task: TaskState,
}

/// One `[[postgres]]` entry's published state.
#[derive(Debug, Clone)]
pub struct PgSource {
    /// The entry's name.
    pub name: String,
    /// The stream's positions.
    pub progress: watch::Receiver<Progress>,
    /// The stream's connection.
    pub link: watch::Receiver<Link>,
    /// The base-backup schedule.
    pub schedule: watch::Receiver<ScheduleStatus>,
    /// The stream task's supervisor state.
    pub task: TaskCell,
    /// Past this age the newest restorable backup is a failure; `None`:
    /// no limit.
    pub backup_max_age: Option<Duration>,
    /// Whether a schedule takes backups (an initial one among them).
    pub schedule_active: bool,
}

/// One `[[sqlite]]` entry's published state.
#[derive(Debug, Clone)]
pub struct SqliteSource {
    /// The entry's name.
    pub name: String,
    /// The watcher task's supervisor state.
    pub task: TaskCell,
    /// The watcher's counters, once it started.
    pub stats: Arc<Mutex<Option<Arc<Stats>>>>,
}

/// Extra JSON sections other parts publish (verification, retention,
/// alert channels): each a function returning its current state.
pub type Section = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// Checks a part contributes, judged at each evaluation.
pub type CheckFn = Arc<dyn Fn() -> Vec<Check> + Send + Sync>;

/// Everything the health endpoint reads.
#[derive(Clone)]
pub struct Sources {
    /// When the sidecar started.
    pub started: Timestamp,
    /// The thresholds.
    pub thresholds: HealthConfig,
    /// The repository (catalog for backups, fan-out for destinations).
    pub repo: Repository,
    /// Per `[[postgres]]`.
    pub postgres: Vec<PgSource>,
    /// Per `[[sqlite]]`.
    pub sqlite: Vec<SqliteSource>,
    /// Every registered job.
    pub jobs: Vec<Job>,
    /// Named extra sections of the report.
    pub sections: Vec<(String, Section)>,
    /// Checks other parts contribute (e.g. verification results).
    pub extra_checks: Vec<CheckFn>,
}

/// One condition the sidecar watches, failing or not: shown on `/health`
/// and handed to the alerts ([`crate::sidecar::alert::Alerter::observe`]), which
/// fire on the transitions of `failing`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable key, e.g. `postgres/main/stream`, `postgres/main/slot`,
    /// `postgres/main/backup`, `sqlite/auth/watcher`, `destination/s3/down`,
    /// `verify/main`, `spool/full`: transitions are tracked per id.
    pub id: String,
    /// The `[[postgres]]`/`[[sqlite]]` entry it concerns, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// The `[[destination]]` it concerns, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// Whether it is past its threshold.
    pub failing: bool,
    /// One line an on-call engineer understands: what is wrong (or right),
    /// and what to do.
    pub summary: String,
}

impl Check {
    /// A check of nothing in particular (no database, no destination).
    pub fn new(id: String, failing: bool, summary: String) -> Check {
        Check {
            id,
            database: None,
            destination: None,
            failing,
            summary,
        }
    }

    /// The same check, about database `name`.
    pub fn db(mut self, name: &str) -> Check {
        self.database = Some(name.to_owned());
        self
    }
}

/// `/health`'s body.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `ok` or `failing`.
    pub status: &'static str,
    /// When this report was made.
    pub time: Timestamp,
    /// When the sidecar started.
    pub started: Timestamp,
    /// pitr's version.
    pub version: &'static str,
    /// Per `[[postgres]]`.
    pub postgres: Vec<PgReport>,
    /// Per `[[sqlite]]`.
    pub sqlite: Vec<SqliteReport>,
    /// Per destination.
    pub destinations: Vec<DestinationReport>,
    /// The spool of objects not yet on every destination.
    pub spool: SpoolReport,
    /// Every job of the sidecar, with its supervisor's state.
    pub jobs: Vec<JobReport>,
    /// Extra sections (verification, retention, alert channels).
    #[serde(flatten)]
    pub sections: serde_json::Map<String, serde_json::Value>,
    /// Every failing check.
    pub problems: Vec<Check>,
    /// Every check, failing or not.
    #[serde(skip)]
    pub checks: Vec<Check>,
}

impl Report {
    /// Whether nothing is past its threshold.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// One PostgreSQL database in the report.
#[derive(Debug, Clone, Serialize)]
pub struct PgReport {
    /// The `[[postgres]]` name.
    pub name: String,
    /// Whether all of its checks pass.
    pub ok: bool,
    /// The stream task: running, restarting, ...
    pub stream: TaskState,
    /// Whether WAL is being streamed now.
    pub connected: bool,
    /// Since when `connected` holds.
    pub connected_since: Option<Timestamp>,
    /// Why the stream was last interrupted.
    pub last_stream_error: Option<String>,
    /// The timeline streamed.
    pub timeline: u32,
    /// Everything before this is received.
    pub received_lsn: String,
    /// Everything before this is stored (the acknowledged flush position).
    pub acknowledged_lsn: String,
    /// The server's end of WAL, as last reported.
    pub server_lsn: String,
    /// Server WAL not yet stored: what the slot holds back, in bytes.
    pub lag_bytes: u64,
    /// How long WAL has waited to be stored (0 when caught up).
    pub lag_seconds: f64,
    /// The WAL the replication slot retains on the server, in bytes.
    pub slot_retained_bytes: u64,
    /// The threshold `slot_retained_bytes` is judged against.
    pub slot_retained_max: u64,
    /// When the acknowledged position last moved.
    pub last_acknowledged: Option<Timestamp>,
    /// The newest restorable base backup's id.
    pub last_backup: Option<String>,
    /// When it finished.
    pub last_backup_finished: Option<Timestamp>,
    /// Its age in seconds.
    pub last_backup_age_seconds: Option<f64>,
    /// The schedule's own state (running backup, last error, next due).
    pub schedule: ScheduleStatus,
}

/// One SQLite database in the report.
#[derive(Debug, Clone, Serialize)]
pub struct SqliteReport {
    /// The `[[sqlite]]` name.
    pub name: String,
    /// Whether its checks pass.
    pub ok: bool,
    /// The watcher task.
    pub watcher: TaskState,
    /// Captures stored since start.
    pub captures: u64,
    /// Snapshots stored since start.
    pub snapshots: u64,
    /// Captures that failed (retried) since start.
    pub failures: u64,
    /// When the newest capture was seen stored.
    pub last_capture: Option<Timestamp>,
}

/// The spool in the report.
#[derive(Debug, Clone, Serialize)]
pub struct SpoolReport {
    /// How many destinations must hold an object before it counts.
    pub quorum: usize,
    /// Objects held by a quorum, not yet by every destination.
    pub objects: usize,
    /// Their bytes.
    pub bytes: u64,
    /// How long writes have waited for room; `None` when there is room.
    pub full_for_seconds: Option<f64>,
}

/// One destination in the report.
#[derive(Debug, Clone, Serialize)]
pub struct DestinationReport {
    /// Whether it is within its threshold.
    pub ok: bool,
    /// What is known.
    #[serde(flatten)]
    pub state: crate::ship::DestinationState,
}

/// Per-database memory between evaluations: what moved when.
#[derive(Debug, Default)]
struct PgMemory {
    flushed: crate::pg::Lsn,
    flushed_at: Option<Timestamp>,
    /// When WAL not yet stored was first seen (lag start).
    behind_since: Option<Timestamp>,
    backups_read: Option<Timestamp>,
    newest_backup: Option<(String, Timestamp)>,
}

#[derive(Debug, Default)]
struct SqliteMemory {
    captures: u64,
    failures: u64,
    last_capture: Option<Timestamp>,
    failing_since: Option<Timestamp>,
}

/// Turns [`Sources`] into [`Report`]s; remembers what it needs between two
/// evaluations (when positions last moved).
pub struct Evaluator {
    sources: Sources,
    pg: HashMap<String, PgMemory>,
    sqlite: HashMap<String, SqliteMemory>,
}

/// How often the catalog is re-read for the newest base backup.
const BACKUPS_REFRESH: Duration = Duration::from_secs(30);

impl Evaluator {
    /// An evaluator of `sources`.
    pub fn new(sources: Sources) -> Evaluator {
        Evaluator {
            sources,
            pg: HashMap::new(),
            sqlite: HashMap::new(),
        }
    }

    /// The sources it reads.
    pub fn sources(&self) -> &Sources {
        &self.sources
    }

    /// The state now, judged.
    pub fn evaluate(&mut self, now: Timestamp) -> Report {
        let t = self.sources.thresholds.clone();
        let mut checks = Vec::new();
        let mut postgres = Vec::new();
        for src in self.sources.postgres.clone() {
            let (report, mut c) = self.postgres(&src, &t, now);
            postgres.push(report);
            checks.append(&mut c);
        }
        let mut sqlite = Vec::new();
        for src in self.sources.sqlite.clone() {
            let (report, check) = self.sqlite(&src, &t, now);
            sqlite.push(report);
            checks.push(check);
        }
        let fanout = self.sources.repo.fanout();
        let mut destinations = Vec::new();
        for state in fanout.destination_health() {
            let down_for = state.failing_since.map(|s| secs(now, s)).unwrap_or(0.0);
            let failing = down_for >= t.destination_down_max.as_secs_f64();
            let summary = if failing {
                format!(
                    "destination {:?} has failed every request for {}: {}. Objects wait in the spool for it (or writes wait, when it is needed for the quorum); check its endpoint, credentials and space",
                    state.name,
                    human(down_for),
                    state.last_error.as_deref().unwrap_or("no error recorded")
                )
            } else {
                format!("destination {:?} answers", state.name)
            };
            let mut check = Check::new(format!("destination/{}", state.name), failing, summary);
            check.destination = Some(state.name.clone());
            checks.push(check);
            destinations.push(DestinationReport {
                ok: !failing,
                state,
            });
        }
        let spool = fanout.status();
        let full_for = spool.spool_full_for.map_or(0.0, |d| d.as_secs_f64());
        // A full spool holds WAL acknowledgement back at once: worth an
        // alert as soon as it is more than a blip.
        let spool_full = full_for >= 10.0;
        checks.push(Check::new(
            "spool/full".to_owned(),
            spool_full,
            if spool_full {
                format!(
                    "the spool is full ({} bytes in {} objects) for {}: WAL is not acknowledged (the slot holds it on the server) until a lagging destination catches up. Bring the destination back or raise spool_max_bytes",
                    spool.spooled_bytes,
                    spool.spooled,
                    human(full_for)
                )
            } else {
                "the spool has room".to_owned()
            },
        ));
        // Objects gone from the spool before a destination got them: that
        // destination lacks them until a repair.
        let lost = !spool.lost.is_empty();
        checks.push(Check::new(
            "spool/lost".to_owned(),
            lost,
            if lost {
                let shown: Vec<String> = spool
                    .lost
                    .iter()
                    .take(5)
                    .map(|(d, k)| format!("{k} (for {d:?})"))
                    .collect();
                format!(
                    "{} spooled objects were deleted from the spool (not by pitr) before every destination held them: {}{}. Run `pitr repair -c CONFIG` to copy them from a destination that has them, and find what deletes files in the spool directory",
                    spool.lost.len(),
                    shown.join(", "),
                    if spool.lost.len() > 5 { ", ..." } else { "" }
                )
            } else {
                "no spooled object was lost".to_owned()
            },
        ));
        let mut jobs = Vec::new();
        for job in &self.sources.jobs {
            let task = read_task(&job.task);
            if !job.checked_by_health {
                checks.push(job_check(job, &task));
            }
            jobs.push(JobReport {
                name: job.name.clone(),
                schedule: job.schedule.clone(),
                task,
            });
        }
        for extra in &self.sources.extra_checks {
            checks.extend(extra());
        }
        let mut sections = serde_json::Map::new();
        for (name, f) in &self.sources.sections {
            sections.insert(name.clone(), f());
        }
        let problems: Vec<Check> = checks.iter().filter(|c| c.failing).cloned().collect();
        Report {
            status: if problems.is_empty() { "ok" } else { "failing" },
            time: now,
            started: self.sources.started,
            version: env!("CARGO_PKG_VERSION"),
            postgres,
            sqlite,
            destinations,
            spool: SpoolReport {
                quorum: spool.quorum,
                objects: spool.spooled,
                bytes: spool.spooled_bytes,
                full_for_seconds: spool.spool_full_for.map(|d| d.as_secs_f64()),
            },
            jobs,
            sections,
            problems,
            checks,
        }
    }

    fn postgres(
        &mut self,
        src: &PgSource,
        t: &HealthConfig,
        now: Timestamp,
    ) -> (PgReport, Vec<Check>) {
        let progress = *src.progress.borrow();
        let link = src.link.borrow().clone();
        let schedule = src.schedule.borrow().clone();
        let task = read_task(&src.task);
        let started = self.sources.started;
        let repo = self.sources.repo.clone();
        let mem = self.pg.entry(src.name.clone()).or_default();
        let name = &src.name;

        if progress.flushed != mem.flushed || mem.flushed_at.is_none() {
            mem.flushed = progress.flushed;
            mem.flushed_at = Some(now);
        }
        let lag_bytes = progress.server_end.0.saturating_sub(progress.flushed.0);
        if lag_bytes == 0 {
            mem.behind_since = None;
        } else {
            mem.behind_since.get_or_insert(now);
        }
        let refresh = mem
            .backups_read
            .is_none_or(|r| secs(now, r) >= BACKUPS_REFRESH.as_secs_f64())
            // A backup just stored shows at once.
            || schedule.last.as_ref().is_some_and(|l| {
                l.restorable
                    && mem
                        .newest_backup
                        .as_ref()
                        .is_none_or(|(_, f)| l.finished > *f)
            });
        if refresh {
            mem.backups_read = Some(now);
            match crate::basebackup::backups(&repo, name) {
                Ok(all) => {
                    mem.newest_backup = all
                        .iter()
                        .filter(|b| b.restorable)
                        .max_by_key(|b| b.record.finished)
                        .map(|b| (b.record.id.clone(), b.record.finished));
                }
                Err(e) => {
                    tracing::warn!(database = %name, error = %e, "cannot read base backups for /health")
                }
            }
        }

        let mut checks = Vec::new();
        // The stream: a failed task, or no connection for too long.
        let down_since = if link.connected {
            None
        } else {
            Some(link.since.unwrap_or(started).max(started))
        };
        let down_for = down_since.map_or(0.0, |s| secs(now, s));
        let stream_failing = task.state == Phase::Restarting
            || task.state == Phase::Failed
            || (down_since.is_some() && down_for >= t.stream_down_max.as_secs_f64());
        checks.push(
            Check::new(
                format!("postgres/{name}/stream"),
                stream_failing,
                if stream_failing {
                    format!(
                        "WAL streaming of [[postgres]] {name:?} is down ({}): {}. Nothing is lost while the slot holds WAL on the server; check that the server is up and reachable with the configured conninfo",
                        if task.state == Phase::Restarting {
                            "the stream failed and restarts with backoff".to_owned()
                        } else if task.state == Phase::Failed {
                            "the stream failed and is not retried: fix what the error says, then restart pitr".to_owned()
                        } else {
                            format!("not connected for {}", human(down_for))
                        },
                        task.last_error
                            .as_deref()
                            .or(link.last_error.as_deref())
                            .unwrap_or("never connected")
                    )
                } else {
                    format!("WAL of [[postgres]] {name:?} is streaming")
                },
            )
            .db(name),
        );
        // Acknowledgement: WAL produced but not stored for too long.
        let behind_for = mem.behind_since.map_or(0.0, |s| secs(now, s));
        let since_ack = mem.flushed_at.map_or(0.0, |s| secs(now, s));
        let ack_failing =
            lag_bytes > 0 && behind_for.min(since_ack) >= t.wal_ack_max_age.as_secs_f64();
        checks.push(
            Check::new(
                format!("postgres/{name}/wal_ack"),
                ack_failing,
                if ack_failing {
                    format!(
                        "[[postgres]] {name:?}: no WAL acknowledged for {} while the server produced {lag_bytes} bytes more: the destinations do not take writes (see the destinations and the spool)",
                        human(since_ack)
                    )
                } else {
                    format!("[[postgres]] {name:?}: WAL is acknowledged as it is stored")
                },
            )
            .db(name),
        );
        // The slot: how much WAL the server keeps for pitr.
        let mut slot_max = t.slot_retained_max;
        if let Some(keep) = link.max_slot_wal_keep_size {
            slot_max = slot_max.min(keep / 2);
        }
        let slot_failing = lag_bytes > slot_max;
        checks.push(
            Check::new(
                format!("postgres/{name}/slot"),
                slot_failing,
                if slot_failing {
                    format!(
                        "[[postgres]] {name:?}: the replication slot retains {lag_bytes} bytes of WAL on the server, over the threshold of {slot_max}: the server's disk fills, and max_slot_wal_keep_size (if set) invalidates the slot and loses WAL. Fix what holds pitr back (destinations, spool) or give the server room"
                    )
                } else {
                    format!("[[postgres]] {name:?}: the slot retains {lag_bytes} bytes")
                },
            )
            .db(name),
        );
        // Base backups: one must exist and be fresh; the newest try must
        // not have failed for good.
        let age = mem.newest_backup.as_ref().map(|(_, f)| secs(now, *f));
        let initial_running = schedule
            .running
            .as_ref()
            .is_some_and(|r| r.trigger == crate::basebackup::schedule::Trigger::Initial)
            || (src.schedule_active
                && mem.newest_backup.is_none()
                && schedule.last_error.is_none()
                && secs(now, started) < 600.0);
        let (backup_failing, backup_summary) = match (&mem.newest_backup, age) {
            (None, _) if initial_running => (
                false,
                format!("[[postgres]] {name:?}: the first base backup is being taken"),
            ),
            (None, _) => (
                true,
                format!(
                    "[[postgres]] {name:?} has no restorable base backup: nothing can be restored. Run `pitr backup -c CONFIG --postgres {name}`{}",
                    schedule
                        .last_error
                        .as_ref()
                        .map(|e| format!(" (the last scheduled try failed: {})", e.message))
                        .unwrap_or_default()
                ),
            ),
            (Some((id, _)), Some(age))
                if src
                    .backup_max_age
                    .is_some_and(|max| age >= max.as_secs_f64()) =>
            {
                (
                    true,
                    format!(
                        "[[postgres]] {name:?}: the newest restorable base backup ({id}) is {} old, over the threshold of {}: restores replay ever more WAL. Check the schedule's errors (/health schedule.last_error) or run `pitr backup`",
                        human(age),
                        human(src.backup_max_age.map_or(0.0, |d| d.as_secs_f64()))
                    ),
                )
            }
            (Some((id, _)), _) => (
                false,
                format!("[[postgres]] {name:?}: newest restorable base backup {id}"),
            ),
        };
        checks.push(
            Check::new(
                format!("postgres/{name}/backup"),
                backup_failing,
                backup_summary,
            )
            .db(name),
        );
        let try_failed = match (&schedule.last_error, &schedule.last) {
            (Some(e), Some(l)) => !e.retrying && e.at > l.finished,
            (Some(e), None) => !e.retrying,
            _ => false,
        };
        checks.push(
            Check::new(
                format!("postgres/{name}/backup_failed"),
                try_failed,
                match &schedule.last_error {
                    Some(e) if try_failed => format!(
                        "[[postgres]] {name:?}: the scheduled base backup failed: {}. The next trigger tries again; `pitr backup` takes one now",
                        e.message
                    ),
                    _ => format!("[[postgres]] {name:?}: no failed base backup"),
                },
            )
            .db(name),
        );
        let ok = !checks.iter().any(|c| c.failing);
        let report = PgReport {
            name: name.clone(),
            ok,
            stream: task,
            connected: link.connected,
            connected_since: link.since,
            last_stream_error: link.last_error,
            timeline: progress.timeline,
            received_lsn: progress.received.to_string(),
            acknowledged_lsn: progress.flushed.to_string(),
            server_lsn: progress.server_end.to_string(),
            lag_bytes,
            lag_seconds: behind_for,
            slot_retained_bytes: lag_bytes,
            slot_retained_max: slot_max,
            last_acknowledged: mem.flushed_at,
            last_backup: mem.newest_backup.as_ref().map(|(id, _)| id.clone()),
            last_backup_finished: mem.newest_backup.as_ref().map(|(_, f)| *f),
            last_backup_age_seconds: age,
            schedule,
        };
        (report, checks)
    }

    fn sqlite(
        &mut self,
        src: &SqliteSource,
        t: &HealthConfig,
        now: Timestamp,
    ) -> (SqliteReport, Check) {
        let task = read_task(&src.task);
        let stats = src.stats.lock().ok().and_then(|s| s.clone());
        let get = |f: fn(&Stats) -> &std::sync::atomic::AtomicU64| {
            stats.as_ref().map_or(0, |s| Stats::get(f(s)))
        };
        let captures = get(|s| &s.captures);
        let snapshots = get(|s| &s.snapshots);
        let failures = get(|s| &s.failures);
        let mem = self.sqlite.entry(src.name.clone()).or_default();
        if captures != mem.captures {
            mem.captures = captures;
            mem.last_capture = Some(now);
            mem.failing_since = None;
        }
        if failures != mem.failures {
            mem.failures = failures;
            mem.failing_since.get_or_insert(now);
        }
        let name = &src.name;
        let failing_for = mem.failing_since.map_or(0.0, |s| secs(now, s));
        let failing =
            task.state == Phase::Restarting || failing_for >= t.stream_down_max.as_secs_f64();
        let check = Check::new(
            format!("sqlite/{name}/watcher"),
            failing,
            if failing {
                format!(
                    "the SQLite watcher of [[sqlite]] {name:?} {}: {}. Check that the file exists and is readable (see the log)",
                    if task.state == Phase::Restarting {
                        "failed and restarts with backoff".to_owned()
                    } else {
                        format!("has failed every capture for {}", human(failing_for))
                    },
                    task.last_error.as_deref().unwrap_or("captures fail")
                )
            } else {
                format!("[[sqlite]] {name:?} is watched")
            },
        )
        .db(name);
        let report = SqliteReport {
            name: name.clone(),
            ok: !failing,
            watcher: task,
            captures,
            snapshots,
            failures,
            last_capture: mem.last_capture,
        };
        (report, check)
    }
}

/// The backup age threshold of a schedule: 1.5 × its interval (the time
/// between its next two runs), unless configured.
pub fn backup_max_age(config: &Config, pg: &crate::config::PostgresConfig) -> Option<Duration> {
    if let Some(d) = config.health.backup_max_age {
        return Some(d);
    }
    Some(pg.base_backup.as_ref()?.interval()?.mul_f64(1.5))
}

fn secs(now: Timestamp, then: Timestamp) -> f64 {
    now.duration_since(then).as_secs_f64().max(0.0)
}

/// `95 s`, `12 min`, `3.5 h`, `2.0 d`.
/// The check of a job no other check judges: failing while it restarts
/// after a failure (a panic, an end it should not have) or failed for good.
fn job_check(job: &Job, task: &TaskState) -> Check {
    let error = task.last_error.as_deref().unwrap_or("no error recorded");
    let (failing, summary) = match task.state {
        Phase::Restarting => (
            true,
            format!(
                "{} failed and restarts with backoff ({} restarts so far): {error}. The log has each failure",
                job.what, task.restarts
            ),
        ),
        Phase::Failed => (
            true,
            format!(
                "{} failed and is not restarted: {error}. Fix the cause, then restart pitr",
                job.what
            ),
        ),
        _ => (false, format!("{} runs", job.what)),
    };
    Check::new(format!("job/{}", job.name), failing, summary)
}

fn human(secs: f64) -> String {
    if secs < 120.0 {
        format!("{secs:.0} s")
    } else if secs < 7200.0 {
        format!("{:.0} min", secs / 60.0)
    } else if secs < 172_800.0 {
        format!("{:.1} h", secs / 3600.0)
    } else {
        format!("{:.1} d", secs / 86400.0)
    }
}

/// Publishes a report's figures as Prometheus metrics (through the
/// `metrics` facade; the sidecar installs the exporter).
pub fn record_metrics(report: &Report) {
    use metrics::gauge;
    gauge!("pitr_health_ok").set(if report.is_ok() { 1.0 } else { 0.0 });
    for p in &report.postgres {
        let db = p.name.clone();
        gauge!("pitr_wal_lag_bytes", "database" => db.clone()).set(p.lag_bytes as f64);
        gauge!("pitr_wal_lag_seconds", "database" => db.clone()).set(p.lag_seconds);
        gauge!("pitr_slot_retained_bytes", "database" => db.clone())
            .set(p.slot_retained_bytes as f64);
        gauge!("pitr_wal_stream_up", "database" => db.clone()).set(if p.connected {
            1.0
        } else {
            0.0
        });
        gauge!("pitr_wal_stream_restarts", "database" => db.clone()).set(p.stream.restarts as f64);
        if let Some(f) = p.last_backup_finished {
            gauge!("pitr_backup_last_success_timestamp_seconds", "database" => db.clone())
                .set(f.as_second() as f64);
        }
        if let Some(last) = &p.schedule.last {
            gauge!("pitr_backup_duration_seconds", "database" => db.clone())
                .set(last.duration_secs);
            gauge!("pitr_backup_size_bytes", "database" => db.clone()).set(last.bytes as f64);
            gauge!("pitr_backup_stored_bytes", "database" => db.clone())
                .set(last.stored_bytes as f64);
        }
        gauge!("pitr_backup_failed_tries", "database" => db.clone())
            .set(p.schedule.failed_tries as f64);
        gauge!("pitr_database_ok", "database" => db).set(if p.ok { 1.0 } else { 0.0 });
    }
    for s in &report.sqlite {
        let db = s.name.clone();
        gauge!("pitr_sqlite_captures", "database" => db.clone()).set(s.captures as f64);
        gauge!("pitr_sqlite_capture_failures", "database" => db.clone()).set(s.failures as f64);
        if let Some(t) = s.last_capture {
            gauge!("pitr_sqlite_last_capture_timestamp_seconds", "database" => db.clone())
                .set(t.as_second() as f64);
        }
        gauge!("pitr_database_ok", "database" => db).set(if s.ok { 1.0 } else { 0.0 });
    }
    for d in &report.destinations {
        let dest = d.state.name.clone();
        gauge!("pitr_destination_up", "destination" => dest.clone()).set(
            if d.state.failing_since.is_none() {
                1.0
            } else {
                0.0
            },
        );
        gauge!("pitr_destination_ok", "destination" => dest).set(if d.ok { 1.0 } else { 0.0 });
    }
    for j in &report.jobs {
        let job = j.name.clone();
        gauge!("pitr_job_up", "job" => job.clone()).set(if j.task.state == Phase::Running {
            1.0
        } else {
            0.0
        });
        gauge!("pitr_job_restarts", "job" => job).set(j.task.restarts as f64);
    }
    gauge!("pitr_spool_bytes").set(report.spool.bytes as f64);
    gauge!("pitr_spool_objects").set(report.spool.objects as f64);
    for c in &report.checks {
        gauge!("pitr_check_failing", "check" => c.id.clone()).set(if c.failing {
            1.0
        } else {
            0.0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_no_other_check_judges_fails_while_restarting_or_failed() {
        let job = Job {
            name: "retention".to_owned(),
            what: "retention".to_owned(),
            schedule: "cron 30 4 * * *".to_owned(),
            task: task_cell(),
            checked_by_health: false,
        };
        let mut task = TaskState {
            state: Phase::Running,
            ..TaskState::default()
        };
        let ok = job_check(&job, &task);
        assert_eq!((ok.id.as_str(), ok.failing), ("job/retention", false));
        task.state = Phase::Restarting;
        task.restarts = 2;
        task.last_error = Some("it panicked: boom".to_owned());
        let restarting = job_check(&job, &task);
        assert!(restarting.failing);
        assert!(
            restarting.summary.contains("2 restarts") && restarting.summary.contains("boom"),
            "{}",
            restarting.summary
        );
        task.state = Phase::Failed;
        let failed = job_check(&job, &task);
        assert!(failed.failing);
        assert!(
            failed.summary.contains("restart pitr"),
            "{}",
            failed.summary
        );
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(5.0), "5 s");
        assert_eq!(human(600.0), "10 min");
        assert_eq!(human(3.5 * 3600.0), "3.5 h");
        assert_eq!(human(3.0 * 86400.0), "3.0 d");
    }
}
