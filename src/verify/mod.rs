//! Test restores (invariant 6 applied to every backup, not only to the ones
//! someone restores): a database is restored to a random time inside its
//! restore window into a scratch directory, checked by independent judges
//! (PostgreSQL: the checked recovery, `pg_amcheck`, `pg_checksums`; SQLite:
//! `PRAGMA integrity_check` and the whole-file checksum), and the scratch
//! directory is removed again. Each result is a [`VerifyReport`], recorded
//! in the repository as an item (so it survives a catalog rebuild) and in
//! metrics; `pitr verify --restore` runs one now, [`run_scheduled`] on the
//! `[verify]` schedule.
//!
//! - `postgres`: the PostgreSQL test restore;
//! - `sqlite`: the SQLite test restore;
//! - `snapshot`: the test restore of a snapshot source (`[[command]]`);
//! - `schedule`: the cron loop and the [`VerifyStatus`] it publishes.

mod postgres;
mod schedule;
mod snapshot;
mod sqlite;

use std::path::{Path, PathBuf};
use std::time::Instant;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::repo::{RepoError, Repository};

pub use postgres::TOOLS as TEST_RESTORE_TOOLS;
pub use schedule::{VerifyStatus, run_scheduled};

/// The item kind of a recorded test restore.
pub const KIND_VERIFY: &str = "verify";

/// The item name prefix of every recorded test restore.
pub const ITEM_PREFIX: &str = "verify/";

/// Which kind of database a report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseKind {
    /// A `[[postgres]]` entry.
    Postgres,
    /// A `[[sqlite]]` entry.
    Sqlite,
    /// A `[[command]]` snapshot source: a snapshot read back and, when the
    /// entry has `verify`, checked by that program.
    Command,
    /// An `[[infisical]]` snapshot source: a snapshot read back and parsed
    /// as the canonical export.
    Infisical,
}

impl DatabaseKind {
    /// `postgres`, `sqlite`, `command` or `infisical`, as item names and the config
    /// spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            DatabaseKind::Postgres => "postgres",
            DatabaseKind::Sqlite => "sqlite",
            DatabaseKind::Command => "command",
            DatabaseKind::Infisical => "infisical",
        }
    }

    /// The kind a snapshot source's reports are filed under.
    pub fn of_source(kind: crate::snapshot::SourceKind) -> DatabaseKind {
        match kind {
            crate::snapshot::SourceKind::Command => DatabaseKind::Command,
            crate::snapshot::SourceKind::Infisical => DatabaseKind::Infisical,
        }
    }
}

/// The result of one test restore.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// The `[[postgres]]` or `[[sqlite]]` name.
    pub database: String,
    /// Which kind of database.
    pub kind: DatabaseKind,
    /// When the test restore started.
    pub started: Timestamp,
    /// How long it took, in seconds (restore and checks).
    pub duration_secs: f64,
    /// The target restored to, described (`2026-11-25 03:10:00.123456+00`,
    /// or `the latest stored state` with the reason).
    pub target: Option<String>,
    /// Where the restore ended, from its checked report (PostgreSQL: last
    /// transaction replayed and where redo ended; SQLite: the state's time).
    pub reached: Option<String>,
    /// The base backup (PostgreSQL) or snapshot item (SQLite) it started
    /// from.
    pub backup: Option<String>,
    /// WAL files replayed (PostgreSQL) or captures applied (SQLite).
    pub wal_files: usize,
    /// What was checked and what each check said, in order.
    pub checks: Vec<String>,
    /// Whether the restore and every check passed.
    pub ok: bool,
    /// What failed and what to do, when `ok` is false.
    pub error: Option<String>,
}

impl VerifyReport {
    fn new(kind: DatabaseKind, database: &str) -> VerifyReport {
        VerifyReport {
            database: database.to_owned(),
            kind,
            started: Timestamp::now(),
            duration_secs: 0.0,
            target: None,
            reached: None,
            backup: None,
            wal_files: 0,
            checks: Vec::new(),
            ok: false,
            error: None,
        }
    }

    /// The item name this report is recorded under.
    pub fn item_name(&self) -> String {
        format!(
            "{ITEM_PREFIX}{}/{}/{}",
            self.kind.as_str(),
            self.database,
            self.started.strftime("%Y%m%dT%H%M%S%.6fZ")
        )
    }
}

/// Which databases a test restore covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every `[[postgres]]` and `[[sqlite]]` entry.
    All,
    /// One `[[postgres]]` entry.
    Postgres(String),
    /// One `[[sqlite]]` entry.
    Sqlite(String),
    /// One snapshot source (`[[command]]`, `[[infisical]]`).
    Snapshot(String),
    /// Every entry that has something to restore; the others are skipped
    /// and said in [`VerifyRun::skipped`]. The schedule uses it: a database
    /// with no base backup yet (a fresh deployment before its initial
    /// backup) is the backup check's business, not a failed test restore.
    Restorable,
}

/// Why test restores could not run at all (a failed test restore is a
/// [`VerifyReport`] with `ok: false`, not an error).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Reading backups needs the identity (invariant 5).
    #[error(
        "not configured: no identity_file. A test restore reads the backups, which needs the \
         age identity: set [repository] identity_file (the sidecar can write without it, but \
         cannot verify)"
    )]
    NoIdentity,
    /// The identity file could not be read.
    #[error("opening the repository for reading: {0}")]
    Identity(#[source] crate::config::ConfigError),
    /// The repository could not be opened for reading.
    #[error("opening the repository for reading: {0}")]
    Open(#[source] RepoError),
    /// A database named on the command line is not in the config.
    #[error("{config}: no [[{kind}]] entry is named {name:?} (configured: {known})")]
    UnknownDatabase {
        /// The config file.
        config: PathBuf,
        /// The section: `postgres`, `sqlite`, or the snapshot sources'.
        kind: &'static str,
        /// The name given.
        name: String,
        /// The names configured.
        known: String,
    },
}

/// What [`run_now`] did.
#[derive(Debug, Clone, Default)]
pub struct VerifyRun {
    /// One report per database, in config order (PostgreSQL first).
    pub reports: Vec<VerifyReport>,
    /// Reports that could not be recorded in the repository (a destination
    /// down): the database, then the error.
    pub record_errors: Vec<(String, String)>,
    /// Databases not tested because nothing of them is restorable yet
    /// ([`Selection::Restorable`] only): the database, then why.
    pub skipped: Vec<(String, String)>,
    /// PostgreSQL databases whose test restore could not run because the
    /// server binaries of their backup's major are not installed (or not
    /// configured): an installation problem, not a damaged backup.
    pub missing_binaries: Vec<String>,
}

impl VerifyRun {
    /// Whether every test restore passed.
    pub fn all_ok(&self) -> bool {
        self.reports.iter().all(|r| r.ok)
    }
}

/// A repository that can read: `repo` itself when it holds the identity,
/// else one opened over the same destinations with the configured identity.
pub async fn reading_repo(config: &Config, repo: &Repository) -> Result<Repository, VerifyError> {
    if repo.reader().is_ok() {
        return Ok(repo.clone());
    }
    if config.repository.identity_file.is_none() {
        return Err(VerifyError::NoIdentity);
    }
    let opts = crate::wiring::repo_options(config).map_err(VerifyError::Identity)?;
    Repository::open(repo.fanout().clone(), opts)
        .await
        .map_err(VerifyError::Open)
}

/// Runs a test restore now of every selected database, one after another,
/// records each report in the repository and in metrics, and returns them.
/// A failed test restore is a report, not an error.
pub async fn run_now(
    config: &Config,
    repo: &Repository,
    selection: &Selection,
) -> Result<VerifyRun, VerifyError> {
    let unknown = |kind: &'static str, name: &str, known: Vec<&str>| VerifyError::UnknownDatabase {
        config: config.path.clone(),
        kind,
        name: name.to_owned(),
        known: if known.is_empty() {
            "none".to_owned()
        } else {
            known.join(", ")
        },
    };
    let pg_names: Vec<&str> = config.postgres.iter().map(|p| p.name.as_str()).collect();
    let sq_names: Vec<&str> = config.sqlite.iter().map(|s| s.name.as_str()).collect();
    let (postgres, sqlite): (Vec<&str>, Vec<&str>) = match selection {
        Selection::All | Selection::Restorable => (pg_names.clone(), sq_names.clone()),
        Selection::Postgres(n) => {
            if !pg_names.contains(&n.as_str()) {
                return Err(unknown("postgres", n, pg_names));
            }
            (vec![n.as_str()], vec![])
        }
        Selection::Sqlite(n) => {
            if !sq_names.contains(&n.as_str()) {
                return Err(unknown("sqlite", n, sq_names));
            }
            (vec![], vec![n.as_str()])
        }
        Selection::Snapshot(n) => {
            if crate::snapshot::find(config, n).is_none() {
                let names: Vec<_> = crate::snapshot::sources(config).collect();
                let known = names.iter().map(|s| s.name()).collect();
                return Err(unknown("command]] or [[infisical", n, known));
            }
            (vec![], vec![])
        }
    };
    let reader = reading_repo(config, repo).await?;
    // Another writer (the sidecar) may have stored backups since.
    if let Err(e) = reader.sync_catalog().await {
        tracing::warn!(error = %e, "cannot bring the catalog up to date before a test restore");
    }
    let mut run = VerifyRun::default();
    let only_restorable = *selection == Selection::Restorable;
    for name in postgres {
        let Some(pg) = config.postgres.iter().find(|p| p.name == name) else {
            continue;
        };
        if only_restorable && let Some(why) = postgres::nothing_to_restore(&reader, name) {
            tracing::info!(database = %name, reason = %why, "test restore skipped");
            run.skipped.push((format!("[[postgres]] {name:?}"), why));
            continue;
        }
        let mut report = VerifyReport::new(DatabaseKind::Postgres, name);
        let clock = Instant::now();
        tracing::info!(database = %name, "PostgreSQL test restore starting");
        let result = postgres::test_restore(config, &reader, pg, &mut report).await;
        if let Err(Failure::Binaries(_)) = &result {
            run.missing_binaries.push(name.to_owned());
        }
        conclude(&mut report, clock, result);
        finish(&reader, report, &mut run).await;
    }
    for name in sqlite {
        if only_restorable && let Some(why) = sqlite::nothing_to_restore(&reader, name) {
            tracing::info!(database = %name, reason = %why, "test restore skipped");
            run.skipped.push((format!("[[sqlite]] {name:?}"), why));
            continue;
        }
        let mut report = VerifyReport::new(DatabaseKind::Sqlite, name);
        let clock = Instant::now();
        tracing::info!(database = %name, "SQLite test restore starting");
        let result = sqlite::test_restore(config, &reader, name, &mut report).await;
        conclude(&mut report, clock, result);
        finish(&reader, report, &mut run).await;
    }
    // Snapshot sources with every database, or the one named.
    let sources: Vec<crate::snapshot::Source> = match selection {
        Selection::All | Selection::Restorable => crate::snapshot::sources(config).collect(),
        Selection::Snapshot(n) => crate::snapshot::find(config, n).into_iter().collect(),
        Selection::Postgres(_) | Selection::Sqlite(_) => Vec::new(),
    };
    for source in &sources {
        let name = source.name();
        if only_restorable && let Some(why) = snapshot::nothing_to_restore(&reader, name) {
            tracing::info!(source = %name, reason = %why, "test restore skipped");
            run.skipped.push((source.label(), why));
            continue;
        }
        let mut report = VerifyReport::new(DatabaseKind::of_source(source.kind()), name);
        let clock = Instant::now();
        tracing::info!(source = %name, "snapshot test restore starting");
        let result = snapshot::test_restore(config, &reader, source, &mut report).await;
        conclude(&mut report, clock, result);
        finish(&reader, report, &mut run).await;
    }
    Ok(run)
}

/// Fills in a report's duration and outcome.
fn conclude(report: &mut VerifyReport, clock: Instant, result: Result<(), Failure>) {
    report.duration_secs = clock.elapsed().as_secs_f64();
    let kind = report.kind.as_str();
    match result {
        Ok(()) => {
            report.ok = true;
            tracing::info!(database = %report.database, kind, "test restore passed");
        }
        Err(e) => {
            tracing::error!(database = %report.database, kind, error = %e, "test restore FAILED");
            report.ok = false;
            report.error = Some(e.to_string());
        }
    }
}

/// Records `report` in the repository and in metrics, and adds it to `run`.
async fn finish(repo: &Repository, report: VerifyReport, run: &mut VerifyRun) {
    emit_metrics(&report);
    if let Err(e) = record(repo, &report).await {
        tracing::error!(
            database = %report.database,
            error = %e,
            "the test restore's report could not be recorded in the repository"
        );
        run.record_errors
            .push((report.database.clone(), e.to_string()));
    }
    run.reports.push(report);
}

/// Stores `report` as an empty item whose attributes are the report: a
/// catalog commit like any other, so it survives `pitr catalog rebuild`.
pub async fn record(repo: &Repository, report: &VerifyReport) -> Result<(), RepoError> {
    let attrs = serde_json::to_value(report).map_err(|e| RepoError::Input {
        item: report.item_name(),
        source: std::io::Error::other(e),
    })?;
    let mut w = repo.writer();
    w.put_record(&report.item_name(), KIND_VERIFY, attrs)
        .await?;
    w.commit().await?;
    Ok(())
}

/// The newest recorded report of each database, PostgreSQL first, then by
/// name: what the health endpoint shows as "last verification".
pub fn last_reports(repo: &Repository) -> Result<Vec<VerifyReport>, RepoError> {
    let items = repo.catalog().items(ITEM_PREFIX)?;
    let mut newest: std::collections::BTreeMap<(DatabaseKind, String), VerifyReport> =
        std::collections::BTreeMap::new();
    for item in items.into_iter().filter(|i| i.kind == KIND_VERIFY) {
        let report: VerifyReport = match serde_json::from_value(item.attrs) {
            Ok(r) => r,
            Err(e) => {
                // One unreadable record must not hide the others.
                tracing::warn!(item = %item.name, error = %e, "ignoring a verify record that does not parse");
                continue;
            }
        };
        let key = (report.kind, report.database.clone());
        match newest.get(&key) {
            Some(old) if old.started > report.started => {}
            _ => {
                newest.insert(key, report);
            }
        }
    }
    Ok(newest.into_values().collect())
}

/// Publishes a report in metrics (the lead's Prometheus recorder renders
/// them on `/metrics`).
fn emit_metrics(report: &VerifyReport) {
    let labels = [
        ("database", report.database.clone()),
        ("kind", report.kind.as_str().to_owned()),
    ];
    metrics::gauge!("pitr_verify_duration_seconds", &labels).set(report.duration_secs);
    metrics::gauge!("pitr_verify_last_ok", &labels).set(if report.ok { 1.0 } else { 0.0 });
    if report.ok {
        metrics::gauge!("pitr_verify_last_success_timestamp_seconds", &labels)
            .set(report.started.as_millisecond() as f64 / 1000.0);
        // Present at 0 from the first run on, so rate() sees the first failure.
        metrics::counter!("pitr_verify_failures_total", &labels).increment(0);
    } else {
        metrics::counter!("pitr_verify_failures_total", &labels).increment(1);
    }
}

/// Why a test restore failed: what failed and what to do. Its text is the
/// report's `error`.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// The backup's major has no server binaries here: an installation
    /// problem, not a damaged backup.
    #[error("the test restore cannot run: {0}")]
    Binaries(#[source] crate::pg::BinError),
    /// The catalog's base backups cannot be read.
    #[error(transparent)]
    Backups(#[from] crate::basebackup::BackupError),
    /// The PostgreSQL restore window or plan cannot be had.
    #[error(transparent)]
    Plan(#[from] crate::restore::PlanError),
    /// The SQLite restore window or plan cannot be had.
    #[error(transparent)]
    SqlitePlan(#[from] crate::restore::sqlite::SqliteRestoreError),
    /// `[verify] os_user` does not exist.
    #[error(transparent)]
    OsUser(#[from] crate::pg::NoOsUser),
    /// The restored directory's `PG_VERSION` cannot be read.
    #[error(transparent)]
    DataDir(crate::pg::BinError),
    /// The scratch directory cannot be made.
    #[error(transparent)]
    Scratch(#[from] ScratchError),
    /// Anything else, said as the check found it.
    #[error("{0}")]
    Other(String),
}

impl From<String> for Failure {
    fn from(s: String) -> Failure {
        Failure::Other(s)
    }
}

/// Why a test restore's scratch directory cannot be made.
#[derive(Debug, thiserror::Error)]
enum ScratchError {
    /// `[verify] scratch_dir` itself.
    #[error(
        "cannot create [verify] scratch_dir {}: {source}; create it or point scratch_dir at \
         a writable directory",
        dir.display()
    )]
    Create {
        /// `scratch_dir`.
        dir: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The run's directory inside it.
    #[error("cannot create a directory in {}: {source}", dir.display())]
    Inside {
        /// `scratch_dir`.
        dir: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// One test restore's directory under `scratch_dir`: removed by
/// [`Scratch::remove`], or on drop when the run is cancelled (sidecar
/// shutdown) half-way.
struct Scratch {
    dir: PathBuf,
    armed: bool,
}

impl Scratch {
    /// A fresh directory for one test restore under `scratch_dir`.
    fn create(scratch_dir: &Path, kind: DatabaseKind, name: &str) -> Result<Scratch, ScratchError> {
        crate::crashsafe::create_private_dir_all(scratch_dir).map_err(|source| {
            ScratchError::Create {
                dir: scratch_dir.to_owned(),
                source,
            }
        })?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("run-{}-{name}-", kind.as_str()))
            .tempdir_in(scratch_dir)
            .map_err(|source| ScratchError::Inside {
                dir: scratch_dir.to_owned(),
                source,
            })?;
        Ok(Scratch {
            dir: dir.keep(),
            armed: true,
        })
    }

    fn path(&self) -> &Path {
        &self.dir
    }

    /// Removes the directory; says so when that failed (the next run uses
    /// a fresh one, but the disk space is not given back).
    fn remove(mut self) -> Option<String> {
        self.armed = false;
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => None,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "cannot remove a test restore's scratch directory");
                Some(format!(
                    "cannot remove the scratch directory {}: {e}; remove it by hand",
                    self.dir.display()
                ))
            }
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A uniformly random time in `[from, to)`, to the microsecond (the
/// precision PostgreSQL keeps).
fn random_time(from: Timestamp, to: Timestamp) -> Timestamp {
    use rand::Rng;
    let from_us = from.as_microsecond();
    let to_us = to.as_microsecond();
    if to_us <= from_us + 1 {
        return from;
    }
    let us = rand::thread_rng().gen_range(from_us..to_us);
    Timestamp::from_microsecond(us).unwrap_or(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_times_stay_inside_the_window() {
        let a: Timestamp = "2026-11-25T03:00:00Z".parse().expect("ts");
        let b: Timestamp = "2026-11-25T03:00:01Z".parse().expect("ts");
        for _ in 0..1000 {
            let t = random_time(a, b);
            assert!(t >= a && t < b, "{t}");
            assert_eq!(t.subsec_nanosecond() % 1000, 0);
        }
        assert_eq!(random_time(a, a), a);
    }

    #[test]
    fn a_report_round_trips_through_its_attrs() {
        let mut r = VerifyReport::new(DatabaseKind::Sqlite, "auth");
        r.checks.push("PRAGMA integrity_check: ok".into());
        let v = serde_json::to_value(&r).expect("json");
        assert_eq!(v["kind"], "sqlite");
        let back: VerifyReport = serde_json::from_value(v).expect("parse");
        assert_eq!(back, r);
        assert!(r.item_name().starts_with("verify/sqlite/auth/"));
    }

    #[test]
    fn reports_become_prometheus_metrics() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let mut ok = VerifyReport::new(DatabaseKind::Postgres, "main");
            ok.ok = true;
            ok.duration_secs = 12.5;
            emit_metrics(&ok);
            let mut bad = VerifyReport::new(DatabaseKind::Sqlite, "auth");
            bad.error = Some("object packs/aa/aa.. was altered".into());
            emit_metrics(&bad);
            emit_metrics(&bad);
        });
        let text = handle.render();
        let line = |name: &str, db: &str| {
            text.lines()
                .find(|l| l.starts_with(name) && l.contains(&format!("database=\"{db}\"")))
                .unwrap_or_else(|| panic!("{name} {db} in:\n{text}"))
                .rsplit(' ')
                .next()
                .expect("a value")
                .to_owned()
        };
        assert_eq!(line("pitr_verify_last_ok", "main"), "1");
        assert_eq!(line("pitr_verify_duration_seconds", "main"), "12.5");
        assert_eq!(line("pitr_verify_failures_total", "main"), "0");
        assert_eq!(line("pitr_verify_last_ok", "auth"), "0");
        assert_eq!(line("pitr_verify_failures_total", "auth"), "2");
        assert!(text.contains("pitr_verify_last_success_timestamp_seconds{database=\"main\""));
        assert!(!text.contains("pitr_verify_last_success_timestamp_seconds{database=\"auth\""));
    }
}
