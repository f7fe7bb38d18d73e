//! Retention and garbage collection (docs/RETENTION.md).
//!
//! A run is planned first ([`plan`]: which backups the policy keeps and
//! why, which WAL and SQLite captures go with the forgotten ones (and the
//! test-restore reports from before the oldest kept backup), which
//! packs to mark, unmark and delete) and then applied ([`apply`]): one
//! commit forgets the items and marks the packs no live item references;
//! packs marked at least `gc_grace` ago that are still unreferenced after a
//! fresh sync are deleted from every destination and recorded in a second
//! commit; then commit objects left with nothing are deleted. Writers never
//! deduplicate against a marked pack (`Catalog::has_chunk`), so a pack
//! marked stays unreferenced unless a writer that decided before the mark
//! commits within the grace period, which the re-check sees.

mod gc;
pub mod policy;
mod schedule;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

use crate::basebackup::{self, BackupError};
use crate::config::{Config, RetentionConfig};
use crate::pg::Lsn;
use crate::repo::catalog::{CatalogError, ItemRow};
use crate::repo::{Forget, RepoError, Repository};
use crate::sqlite::store as sqlite_store;
use crate::verify::{DatabaseKind, ITEM_PREFIX as VERIFY_PREFIX, KIND_VERIFY, VerifyReport};
use crate::wal::{KIND_HISTORY, KIND_PARTIAL, KIND_SEGMENT, WalAttrs};

pub use gc::{GcOutcome, GcPlan, PackAction};
pub use policy::{BackupPoint, Decision, KeepReason, decide};
pub use schedule::{RetentionStatus, run_scheduled};

/// A retention run failed (nothing was forgotten or deleted past the step
/// that failed; a later run continues).
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// The repository or a destination failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The local catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A base-backup record does not read.
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// A catalog item's attributes do not read.
    #[error("catalog item {item}: {what}; retention leaves this database alone until it is fixed")]
    BadItem {
        /// The item.
        item: String,
        /// What is wrong.
        what: String,
    },
    /// `--postgres` / `--sqlite` / `--snapshot` named no configured entry.
    #[error("no [[{kind}]] entry named {name:?} in the config")]
    UnknownDatabase {
        /// The section: `postgres`, `sqlite`, or the snapshot sources'.
        kind: &'static str,
        /// The name given.
        name: String,
    },
}

/// Which databases a run applies the policy to. Garbage collection always
/// covers the whole repository: packs are shared between databases.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Scope {
    /// Every configured database.
    #[default]
    All,
    /// One `[[postgres]]` entry.
    Postgres(String),
    /// One `[[sqlite]]` entry.
    Sqlite(String),
    /// One snapshot source (`[[command]]`, `[[infisical]]`).
    Snapshot(String),
}

/// A contiguous run of WAL files forgotten on one timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalRange {
    /// The timeline.
    pub timeline: u32,
    /// Start of the first file.
    pub start: Lsn,
    /// End of the last file.
    pub end: Lsn,
    /// How many items (segments and partials).
    pub items: usize,
}

/// What the policy does to one database.
#[derive(Debug, Clone, Serialize)]
pub struct DatabasePlan {
    /// `postgres`, `sqlite` or `command` (a snapshot source).
    pub kind: &'static str,
    /// The entry's name.
    pub name: String,
    /// Every backup (PostgreSQL) or snapshot (SQLite), oldest first, kept
    /// with reasons or forgotten.
    pub backups: Vec<Decision>,
    /// WAL before the oldest kept backup's start, forgotten.
    pub wal_forgotten: Vec<WalRange>,
    /// Partials superseded by their complete segment or a newer partial.
    pub partials_superseded: usize,
    /// File sets of backups that never got a record (failed), forgotten.
    pub orphans: Vec<String>,
    /// SQLite captures (page sets) forgotten before the oldest kept snapshot.
    pub captures_forgotten: usize,
    /// Test-restore reports recorded before the oldest kept backup or
    /// snapshot, forgotten (the newest and the newest passing one stay).
    pub verify_reports_forgotten: usize,
    /// Items forgotten in total.
    pub items_forgotten: usize,
}

/// A whole run's plan: printed before anything is changed.
#[derive(Debug, Clone, Serialize)]
pub struct RetentionPlan {
    /// The time the policy was judged at.
    pub now: Timestamp,
    /// Per database.
    pub databases: Vec<DatabasePlan>,
    /// The items to forget, by the commit that introduced them.
    #[serde(skip)]
    pub forget: Vec<Forget>,
    /// Packs to mark, unmark and delete.
    pub gc: GcPlan,
}

/// What [`apply`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RetentionReport {
    /// The commit that forgot items and marked packs, if one was needed.
    pub forget_commit: Option<String>,
    /// Backups forgotten.
    pub backups_forgotten: usize,
    /// Items forgotten.
    pub items_forgotten: usize,
    /// Garbage collection.
    pub gc: GcOutcome,
}

/// Options of a run beyond the config: the clock and the grace period are
/// injectable for tests.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The time the policy is judged at and marks are dated.
    pub now: Timestamp,
    /// How long a pack stays marked before it may be deleted.
    pub grace: Duration,
    /// Which databases the policy applies to.
    pub scope: Scope,
}

impl RunOptions {
    /// Now, with the config's grace period, for every database.
    pub fn from_config(config: &Config) -> RunOptions {
        RunOptions {
            now: Timestamp::now(),
            grace: config.retention.gc_grace,
            scope: Scope::All,
        }
    }
}

/// Plans a run: syncs the catalog from the destinations, applies the policy
/// to each database in scope, and works out garbage collection as it will
/// be once those items are forgotten. Changes nothing.
pub async fn plan(
    repo: &Repository,
    config: &Config,
    opts: &RunOptions,
) -> Result<RetentionPlan, RetentionError> {
    repo.sync_catalog().await?;
    let mut databases = Vec::new();
    let mut forgotten: Vec<(String, String)> = Vec::new();
    match &opts.scope {
        Scope::Postgres(n) if !config.postgres.iter().any(|p| &p.name == n) => {
            return Err(RetentionError::UnknownDatabase {
                kind: "postgres",
                name: n.clone(),
            });
        }
        Scope::Sqlite(n) if !config.sqlite.iter().any(|p| &p.name == n) => {
            return Err(RetentionError::UnknownDatabase {
                kind: "sqlite",
                name: n.clone(),
            });
        }
        Scope::Snapshot(n) if crate::snapshot::find(config, n).is_none() => {
            return Err(RetentionError::UnknownDatabase {
                kind: "command]] or [[infisical",
                name: n.clone(),
            });
        }
        _ => {}
    }
    let wanted = |kind: &str, name: &str| match &opts.scope {
        Scope::All => true,
        Scope::Postgres(n) => kind == "postgres" && n == name,
        Scope::Sqlite(n) => kind == "sqlite" && n == name,
        Scope::Snapshot(n) => kind == "snapshot" && n == name,
    };
    for pg in &config.postgres {
        if !wanted("postgres", &pg.name) {
            continue;
        }
        let (p, f) = plan_postgres(repo, &pg.name, &config.retention, opts)?;
        databases.push(p);
        forgotten.extend(f);
    }
    for sq in &config.sqlite {
        if !wanted("sqlite", &sq.name) {
            continue;
        }
        let (p, f) = plan_sqlite(repo, &sq.name, &config.retention, opts.now)?;
        databases.push(p);
        forgotten.extend(f);
    }
    for source in crate::snapshot::sources(config) {
        if !wanted("snapshot", source.name()) {
            continue;
        }
        let (p, f) = plan_snapshots(repo, &source, &config.retention, opts.now)?;
        databases.push(p);
        forgotten.extend(f);
    }
    let forget = group_forgets(forgotten);
    let gc = gc::plan(repo, &forget, opts.now, opts.grace).await?;
    Ok(RetentionPlan {
        now: opts.now,
        databases,
        forget,
        gc,
    })
}

/// Applies a plan: forgets and marks (one commit), deletes what is due from
/// every destination after re-checking it against a fresh sync (a second
/// commit), then deletes commit objects left with nothing. A destination
/// that fails a deletion is reported in the outcome and retried next run.
pub async fn apply(
    repo: &Repository,
    plan: &RetentionPlan,
) -> Result<RetentionReport, RetentionError> {
    let backups_forgotten = plan
        .databases
        .iter()
        .filter(|d| d.kind == "postgres")
        .flat_map(|d| &d.backups)
        .filter(|b| !b.keep())
        .count();
    let items_forgotten = plan.databases.iter().map(|d| d.items_forgotten).sum();
    let (forget_commit, gc) = gc::apply(repo, plan).await?;
    Ok(RetentionReport {
        forget_commit,
        backups_forgotten,
        items_forgotten,
        gc,
    })
}

/// Plans and applies (unless `dry_run`) in one call.
pub async fn run(
    repo: &Repository,
    config: &Config,
    opts: &RunOptions,
    dry_run: bool,
) -> Result<(RetentionPlan, Option<RetentionReport>), RetentionError> {
    let plan = plan(repo, config, opts).await?;
    if dry_run {
        return Ok((plan, None));
    }
    let report = apply(repo, &plan).await?;
    Ok((plan, Some(report)))
}

/// Garbage collection alone, for a repository whose items are forgotten by
/// other means (a batched destination's, whose batches forget what the
/// main repository no longer holds): marks unreferenced packs, deletes
/// those marked longer than `grace` ago.
pub async fn collect_garbage(
    repo: &Repository,
    now: Timestamp,
    grace: std::time::Duration,
) -> Result<RetentionReport, RetentionError> {
    repo.sync_catalog().await?;
    let gc = gc::plan(repo, &[], now, grace).await?;
    let plan = RetentionPlan {
        now,
        databases: Vec::new(),
        forget: Vec::new(),
        gc,
    };
    apply(repo, &plan).await
}

fn group_forgets(items: Vec<(String, String)>) -> Vec<Forget> {
    let mut by_commit: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (commit, name) in items {
        by_commit.entry(commit).or_default().push(name);
    }
    by_commit
        .into_iter()
        .map(|(commit, mut names)| {
            names.sort();
            names.dedup();
            Forget { commit, names }
        })
        .collect()
}

/// File sets without a record are left this long (or the grace period, if
/// longer) after their last file:
/// a backup in progress commits its files every GiB, and one taken by
/// another process (`pitr backup` beside `pitr run`) is not visible
/// otherwise.
const ORPHAN_AGE: Duration = Duration::from_secs(6 * 3600);

fn key(i: &ItemRow) -> (String, String) {
    (i.commit.clone(), i.name.clone())
}

fn plan_postgres(
    repo: &Repository,
    db: &str,
    policy: &RetentionConfig,
    opts: &RunOptions,
) -> Result<(DatabasePlan, Vec<(String, String)>), RetentionError> {
    let now = opts.now;
    let backups = basebackup::backups(repo, db)?;
    let points: Vec<BackupPoint> = backups
        .iter()
        .map(|b| BackupPoint {
            id: b.record.id.clone(),
            time: b.record.started,
            restorable: b.restorable,
        })
        .collect();
    let mut decisions = decide(&points, policy, now);
    let parents: std::collections::HashMap<String, String> = backups
        .iter()
        .filter_map(|b| Some((b.record.id.clone(), b.record.parent.clone()?)))
        .collect();
    policy::keep_chains(&mut decisions, &parents);
    let mut forget: Vec<(String, String)> = Vec::new();
    let forgotten_ids: HashSet<&str> = decisions
        .iter()
        .filter(|d| !d.keep())
        .map(|d| d.id.as_str())
        .collect();
    let kept_ids: HashSet<&str> = decisions
        .iter()
        .filter(|d| d.keep())
        .map(|d| d.id.as_str())
        .collect();
    // Records and restorable markers.
    for item in repo.catalog().items(&format!("pg/{db}/backups/"))? {
        let id = item.name.rsplit('/').next().unwrap_or("");
        let id = id.strip_suffix(".restorable").unwrap_or(id);
        if forgotten_ids.contains(id) {
            forget.push(key(&item));
        }
    }
    // Files: of forgotten backups, and of backups that never got a record
    // (failed), once they are old and older than a recorded backup.
    let newest_record = points.iter().map(|p| p.id.as_str()).max();
    let mut orphans: BTreeMap<String, (Timestamp, Vec<(String, String)>)> = BTreeMap::new();
    for item in repo.catalog().items(&format!("pg/{db}/base/"))? {
        let rest = &item.name[format!("pg/{db}/base/").len()..];
        let id = rest.split('/').next().unwrap_or("");
        if forgotten_ids.contains(id) {
            forget.push(key(&item));
        } else if !kept_ids.contains(id) && !points.iter().any(|p| p.id == id) {
            let e = orphans
                .entry(id.to_owned())
                .or_insert((item.time, Vec::new()));
            e.0 = e.0.max(item.time);
            e.1.push(key(&item));
        }
    }
    let mut orphan_ids = Vec::new();
    for (id, (last, items)) in orphans {
        let old = now
            .duration_since(last)
            .try_into()
            .is_ok_and(|d: Duration| d >= ORPHAN_AGE.max(opts.grace));
        if old && newest_record.is_some_and(|n| id.as_str() < n) {
            orphan_ids.push(id);
            forget.extend(items);
        }
    }
    let kept: Vec<_> = backups
        .iter()
        .filter(|b| kept_ids.contains(b.record.id.as_str()))
        .map(|b| &b.record)
        .collect();
    // WAL: everything from the oldest kept backup's start stays.
    let cutoff = kept.iter().map(|r| r.start_lsn).min();
    let wal_items = repo.catalog().items(&format!("pg/{db}/wal/"))?;
    let mut segs: Vec<(ItemRow, WalAttrs, Lsn, Lsn)> = Vec::new();
    for item in wal_items {
        if item.kind == KIND_HISTORY {
            continue;
        }
        if item.kind != KIND_SEGMENT && item.kind != KIND_PARTIAL {
            continue;
        }
        let bad = |what: String| RetentionError::BadItem {
            item: item.name.clone(),
            what,
        };
        let attrs: WalAttrs =
            serde_json::from_value(item.attrs.clone()).map_err(|e| bad(e.to_string()))?;
        let start: Lsn = attrs.start.parse().map_err(|e| bad(format!("{e}")))?;
        let end: Lsn = attrs.end.parse().map_err(|e| bad(format!("{e}")))?;
        segs.push((item, attrs, start, end));
    }
    let mut wal_forgotten: Vec<WalRange> = Vec::new();
    let mut before: HashSet<(String, String)> = HashSet::new();
    if let Some(cutoff) = cutoff {
        let mut old: Vec<&(ItemRow, WalAttrs, Lsn, Lsn)> =
            segs.iter().filter(|s| s.3 <= cutoff).collect();
        old.sort_by_key(|s| (s.1.timeline, s.2, s.3));
        for (item, attrs, start, end) in old {
            before.insert(key(item));
            match wal_forgotten.last_mut() {
                Some(r) if r.timeline == attrs.timeline && r.end >= *start => {
                    r.end = r.end.max(*end);
                    r.items += 1;
                }
                _ => wal_forgotten.push(WalRange {
                    timeline: attrs.timeline,
                    start: *start,
                    end: *end,
                    items: 1,
                }),
            }
        }
    }
    // Partials superseded: by the complete segment, or by a partial of the
    // same segment that reaches further (or as far, stored later).
    let complete: HashSet<String> = segs
        .iter()
        .filter(|s| s.0.kind == KIND_SEGMENT)
        .map(|s| format!("{}.partial", s.0.name))
        .collect();
    let mut best: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, s) in segs.iter().enumerate() {
        if s.0.kind == KIND_PARTIAL {
            let e = best.entry(s.0.name.as_str()).or_insert(i);
            // Items come oldest first: `>=` prefers the later of equals.
            if s.3 >= segs[*e].3 {
                *e = i;
            }
        }
    }
    let mut partials_superseded = 0;
    for (i, s) in segs.iter().enumerate() {
        if s.0.kind != KIND_PARTIAL || before.contains(&key(&s.0)) {
            continue;
        }
        if complete.contains(&s.0.name) || best.get(s.0.name.as_str()) != Some(&i) {
            partials_superseded += 1;
            forget.push(key(&s.0));
        }
    }
    forget.extend(before);
    let keep_from = kept.iter().map(|r| r.started).min();
    let reports = verify_reports_to_forget(repo, DatabaseKind::Postgres, db, keep_from)?;
    let verify_reports_forgotten = reports.len();
    forget.extend(reports);
    let items_forgotten = forget.len();
    Ok((
        DatabasePlan {
            kind: "postgres",
            name: db.to_owned(),
            backups: decisions,
            wal_forgotten,
            partials_superseded,
            orphans: orphan_ids,
            captures_forgotten: 0,
            verify_reports_forgotten,
            items_forgotten,
        },
        forget,
    ))
}

fn plan_sqlite(
    repo: &Repository,
    name: &str,
    policy: &RetentionConfig,
    now: Timestamp,
) -> Result<(DatabasePlan, Vec<(String, String)>), RetentionError> {
    let captures = sqlite_store::captures(repo, name).map_err(|e| match e {
        sqlite_store::StoreError::Catalog(c) => RetentionError::Catalog(c),
        sqlite_store::StoreError::BadAttrs { item, what } => RetentionError::BadItem { item, what },
    })?;
    let points: Vec<BackupPoint> = captures
        .iter()
        .filter(|c| c.snapshot)
        .map(|c| BackupPoint {
            id: c.item.name.clone(),
            time: c.attrs.at,
            restorable: true,
        })
        .collect();
    let mut decisions = decide(&points, policy, now);
    // Every capture from the oldest kept snapshot on stays: later page sets
    // build on the snapshots before them, so a snapshot inside the window
    // is kept for them (the restore window stays one piece, as WAL does).
    let kept_snapshots = || {
        captures
            .iter()
            .filter(|c| c.snapshot)
            .zip(&decisions)
            .filter(|(_, d)| d.keep())
            .map(|(c, _)| c)
    };
    let oldest_kept = kept_snapshots().map(|c| c.attrs.seq).min();
    let keep_from = kept_snapshots().map(|c| c.attrs.at).min();
    let mut forget = Vec::new();
    let mut captures_forgotten = 0;
    if let Some(oldest) = oldest_kept {
        for c in &captures {
            if c.attrs.seq < oldest {
                forget.push(key(&c.item));
                if !c.snapshot {
                    captures_forgotten += 1;
                }
            }
        }
        for (c, d) in captures.iter().filter(|c| c.snapshot).zip(&mut decisions) {
            if !d.keep() && c.attrs.seq > oldest {
                d.reasons.push(KeepReason::Window);
            }
        }
    }
    let reports = verify_reports_to_forget(repo, DatabaseKind::Sqlite, name, keep_from)?;
    let verify_reports_forgotten = reports.len();
    forget.extend(reports);
    let items_forgotten = forget.len();
    Ok((
        DatabasePlan {
            kind: "sqlite",
            name: name.to_owned(),
            backups: decisions,
            wal_forgotten: Vec::new(),
            partials_superseded: 0,
            orphans: Vec::new(),
            captures_forgotten,
            verify_reports_forgotten,
            items_forgotten,
        },
        forget,
    ))
}

/// The policy applied to one snapshot source, per source: each snapshot
/// stands alone (nothing builds on it), so a forgotten one is one item, and
/// the test-restore reports from before the oldest kept one go with it.
fn plan_snapshots(
    repo: &Repository,
    source: &crate::snapshot::Source,
    policy: &RetentionConfig,
    now: Timestamp,
) -> Result<(DatabasePlan, Vec<(String, String)>), RetentionError> {
    use crate::snapshot::SnapshotError;
    let (name, kind) = (source.name(), DatabaseKind::of_source(source.kind()));
    let snaps = crate::snapshot::list(&repo.catalog(), name).map_err(|e| match e {
        SnapshotError::Catalog(c) => RetentionError::Catalog(c),
        other => RetentionError::BadItem {
            item: crate::snapshot::prefix(name),
            what: other.to_string(),
        },
    })?;
    let points: Vec<BackupPoint> = snaps
        .iter()
        .map(|s| BackupPoint {
            id: s.item.clone(),
            time: s.attrs.time,
            restorable: true,
        })
        .collect();
    let decisions = decide(&points, policy, now);
    let mut forget = Vec::new();
    let mut keep_from = None::<Timestamp>;
    for (s, d) in snaps.iter().zip(&decisions) {
        if d.keep() {
            keep_from = Some(keep_from.map_or(s.attrs.time, |k| k.min(s.attrs.time)));
        } else {
            forget.push((s.commit.clone(), s.item.clone()));
        }
    }
    let reports = verify_reports_to_forget(repo, kind, name, keep_from)?;
    let verify_reports_forgotten = reports.len();
    forget.extend(reports);
    let items_forgotten = forget.len();
    Ok((
        DatabasePlan {
            kind: kind.as_str(),
            name: name.to_owned(),
            backups: decisions,
            wal_forgotten: Vec::new(),
            partials_superseded: 0,
            orphans: Vec::new(),
            captures_forgotten: 0,
            verify_reports_forgotten,
            items_forgotten,
        },
        forget,
    ))
}

/// The test-restore reports of one database recorded before `keep_from`
/// (the oldest kept backup's start): they are about restores of data the
/// policy forgets, and each one holds a catalog commit alive. The newest
/// report and the newest passing one always stay (`/health` and
/// `verify_max_age` read them); nothing goes while no backup is kept, and a
/// report that does not parse is left alone.
fn verify_reports_to_forget(
    repo: &Repository,
    kind: DatabaseKind,
    name: &str,
    keep_from: Option<Timestamp>,
) -> Result<Vec<(String, String)>, RetentionError> {
    let Some(keep_from) = keep_from else {
        return Ok(Vec::new());
    };
    let prefix = format!("{VERIFY_PREFIX}{}/{name}/", kind.as_str());
    let mut reports: Vec<(ItemRow, VerifyReport)> = repo
        .catalog()
        .items(&prefix)?
        .into_iter()
        .filter(|i| i.kind == KIND_VERIFY)
        .filter_map(|i| {
            let r = serde_json::from_value::<VerifyReport>(i.attrs.clone()).ok()?;
            Some((i, r))
        })
        .collect();
    reports.sort_by_key(|(_, r)| r.started);
    let newest = reports.len().checked_sub(1);
    let newest_passing = reports.iter().rposition(|(_, r)| r.ok);
    Ok(reports
        .iter()
        .enumerate()
        .filter(|&(n, (_, r))| {
            r.started < keep_from && Some(n) != newest && Some(n) != newest_passing
        })
        .map(|(_, (i, _))| key(i))
        .collect())
}

impl RetentionPlan {
    /// The plan as text for people: every backup kept with its reasons or
    /// forgotten, the WAL and captures forgotten, the packs to mark, unmark
    /// and delete, and the bytes freed.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        for d in &self.databases {
            let _ = writeln!(s, "[{}] {}", d.kind, d.name);
            if d.backups.is_empty() {
                let _ = writeln!(s, "  no backups");
            }
            for b in &d.backups {
                if b.keep() {
                    let reasons: Vec<String> = b.reasons.iter().map(|r| r.to_string()).collect();
                    let _ = writeln!(s, "  keep    {}  ({})", b.id, reasons.join(", "));
                } else {
                    let _ = writeln!(s, "  forget  {}", b.id);
                }
            }
            for r in &d.wal_forgotten {
                let _ = writeln!(
                    s,
                    "  forget  WAL timeline {} {}..{} ({} files)",
                    r.timeline, r.start, r.end, r.items
                );
            }
            if d.partials_superseded > 0 {
                let _ = writeln!(
                    s,
                    "  forget  {} superseded partial segments",
                    d.partials_superseded
                );
            }
            for o in &d.orphans {
                let _ = writeln!(s, "  forget  files of failed backup {o} (no record)");
            }
            if d.captures_forgotten > 0 {
                let _ = writeln!(
                    s,
                    "  forget  {} page sets before the oldest kept snapshot",
                    d.captures_forgotten
                );
            }
            if d.verify_reports_forgotten > 0 {
                let _ = writeln!(
                    s,
                    "  forget  {} test-restore reports from before the oldest kept backup",
                    d.verify_reports_forgotten
                );
            }
            let _ = writeln!(s, "  items forgotten: {}", d.items_forgotten);
        }
        s.push_str(&self.gc.render());
        s
    }
}
