//! The restore planner: from the catalog alone, which base backup and which
//! WAL files (following timeline switches) reach a target, checked for gaps
//! before anything is downloaded. The plan is a value: `pitr plan` prints it,
//! `pitr restore` executes it.
//!
//! Timelines. A WAL segment number is read from the newest timeline of the
//! target's lineage that had begun by that segment (PostgreSQL's
//! `XLogFileReadAnyTLI`): the segment holding a switch point comes from the
//! child timeline, whose copy starts with the parent's WAL. A time target
//! picks the timeline that was current at that time: the newest one created
//! at or before it (a timeline is created when its history file was stored or
//! when its first own transaction ended, whichever is earlier).

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Serialize;

use super::target::{Target, pg_time};
use crate::basebackup::{BackupError, BackupRecord, backups};
use crate::pg::{Lsn, Segment, history_file_name};
use crate::repo::Repository;
use crate::wal::{Lineage, SegmentIndex, WalAttrs, WalStore};

/// Why no plan could be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Nothing is stored for the database.
    #[error(
        "the repository holds no restorable base backup of [[postgres]] {database:?}: take one \
         with `pitr backup` while `pitr run` streams its WAL"
    )]
    NothingStored {
        /// The `[[postgres]]` entry.
        database: String,
    },
    /// The target is outside what the repository can restore.
    #[error(
        "{target} is outside the restore window of [[postgres]] {database:?} on timeline \
         {timeline}: {window}"
    )]
    OutsideWindow {
        /// The `[[postgres]]` entry.
        database: String,
        /// The target, described.
        target: String,
        /// The timeline planned on.
        timeline: u32,
        /// The window, described.
        window: String,
    },
    /// No restore point of that name is stored.
    #[error(
        "no restore point named {name:?} is in the stored WAL of [[postgres]] {database:?}; \
         `pitr list` shows the restore window"
    )]
    NoSuchName {
        /// The `[[postgres]]` entry.
        database: String,
        /// The name asked for.
        name: String,
    },
    /// `--timeline` names a timeline nothing is stored of.
    #[error(
        "timeline {timeline} of [[postgres]] {database:?} is not in the repository (stored: \
         {stored}); omit --timeline to let pitr choose"
    )]
    UnknownTimeline {
        /// The `[[postgres]]` entry.
        database: String,
        /// The timeline asked for.
        timeline: u32,
        /// The timelines stored, listed.
        stored: String,
    },
    /// The target is on another branch of history than the timeline asked
    /// for.
    #[error(
        "{target} is not on timeline {timeline}: at that time timeline {current} was current, \
         and it had gone on past the point where timeline {timeline} branched off at {fork}; \
         restore with --timeline {current} (or without --timeline)"
    )]
    NotOnTimeline {
        /// The target, described.
        target: String,
        /// The timeline asked for.
        timeline: u32,
        /// The timeline current at the target.
        current: u32,
        /// Where `timeline` branched off `current`'s history.
        fork: Lsn,
    },
    /// A WAL file the chain needs is not stored: restoring past it is
    /// impossible (invariant 2: a gap is an error, never skipped).
    #[error(
        "the WAL chain of [[postgres]] {database:?} has a gap: {file} is not stored{detail}; \
         recovery cannot go past {at}. Restore to an earlier target, or from a destination \
         that holds it (`pitr verify` checks every destination)"
    )]
    Gap {
        /// The `[[postgres]]` entry.
        database: String,
        /// The missing file.
        file: String,
        /// More about it (e.g. only a partial is stored).
        detail: String,
        /// Where the stored WAL before the gap ends.
        at: Lsn,
    },
    /// A timeline's history file is not stored.
    #[error(
        "timeline {timeline} of [[postgres]] {database:?} has stored WAL but no history file \
         ({file}): its lineage is unknown"
    )]
    NoHistory {
        /// The `[[postgres]]` entry.
        database: String,
        /// The timeline.
        timeline: u32,
        /// The file's name.
        file: String,
    },
    /// A stored WAL segment has no index, so a time or name cannot be found
    /// in it.
    #[error(
        "{file} of [[postgres]] {database:?} was stored without an index (its records did not \
         decode), so pitr cannot tell where {target} falls in it; restore with --lsn or --latest"
    )]
    NoIndex {
        /// The `[[postgres]]` entry.
        database: String,
        /// The segment.
        file: String,
        /// The target, described.
        target: String,
    },
    /// The catalog says something inconsistent.
    #[error("the catalog of [[postgres]] {database:?}: {what}")]
    Catalog {
        /// The `[[postgres]]` entry.
        database: String,
        /// What is wrong.
        what: String,
    },
    /// Reading the catalog or the repository failed.
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// Reading WAL attributes failed.
    #[error(transparent)]
    Wal(#[from] crate::wal::WalStoreError),
    /// Reading the catalog failed.
    #[error(transparent)]
    CatalogRead(#[from] crate::repo::catalog::CatalogError),
    /// Reading a history file from the repository failed.
    #[error(transparent)]
    Repo(#[from] crate::repo::RepoError),
}

impl PlanError {
    /// Whether the target simply cannot be reached (exit 1), as opposed to
    /// the repository being damaged or unreadable (a failure).
    pub fn is_not_possible(&self) -> bool {
        matches!(
            self,
            PlanError::NothingStored { .. }
                | PlanError::OutsideWindow { .. }
                | PlanError::NoSuchName { .. }
                | PlanError::UnknownTimeline { .. }
                | PlanError::NotOnTimeline { .. }
        )
    }
}

/// One WAL file of a plan.
#[derive(Debug, Clone, Serialize)]
pub struct WalFile {
    /// The name PostgreSQL asks for (`%f`).
    pub file: String,
    /// The repository item that holds it.
    pub item: String,
    /// Its timeline.
    pub timeline: u32,
    /// Where its WAL starts (segment start; 0/0 for a history file).
    pub start: Lsn,
    /// Where its stored WAL ends.
    pub end: Lsn,
    /// Only the beginning of the segment is stored (it was still being
    /// written): served padded with zeros, which recovery reads as the end.
    pub partial: bool,
    /// Bytes stored.
    pub bytes: u64,
}

/// The base backup a plan starts from.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedBackup {
    /// Its id.
    pub id: String,
    /// Where its WAL starts.
    pub start_lsn: Lsn,
    /// Where it becomes consistent.
    pub end_lsn: Lsn,
    /// Its timeline at the end.
    pub timeline: u32,
    /// When the server finished sending it.
    pub finished: Timestamp,
    /// Its files' bytes.
    pub bytes: u64,
    /// Its files.
    pub files: u64,
    /// `server_version` of the server it came from.
    pub server_version: String,
}

/// What is restorable on one timeline (its whole lineage).
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    /// The timeline.
    pub timeline: u32,
    /// The earliest restorable time: when the oldest usable base backup
    /// finished. `None` when no base backup is restorable on this lineage.
    pub earliest: Option<Timestamp>,
    /// The latest restorable time: the last transaction end in the stored
    /// WAL that follows it without a gap. A later `--at` has nothing to stop
    /// at; `--latest` restores everything stored.
    pub latest: Option<Timestamp>,
    /// Where the stored WAL that follows without a gap ends.
    pub end: Option<Lsn>,
}

impl Window {
    fn describe(&self) -> String {
        match (self.earliest, self.latest, self.end) {
            (None, _, _) => "no base backup is restorable on it".to_owned(),
            (Some(e), Some(l), Some(end)) => format!(
                "restorable from {} to {} (WAL stored up to {end})",
                pg_time(e),
                pg_time(l)
            ),
            (Some(e), _, end) => format!(
                "restorable from {} on, but the WAL after it holds no transaction yet (stored up \
                 to {})",
                pg_time(e),
                end.map_or("-".to_owned(), |l| l.to_string())
            ),
        }
    }
}

/// Where recovery is expected to stop, for checking it afterwards.
#[derive(Debug, Clone, Serialize)]
pub struct Stop {
    /// The WAL file holding the record recovery stops at (or the last file,
    /// for `--latest`).
    pub file: String,
    /// Where that file starts.
    pub start: Lsn,
    /// Where the stored WAL of that file ends: recovery cannot replay past
    /// it.
    pub end: Lsn,
    /// Where the last whole record stored starts, when the index knows:
    /// for `--latest`, exactly where redo must end.
    pub last_record: Option<Lsn>,
}

/// A restore, planned.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The `[[postgres]]` entry.
    pub database: String,
    /// The target.
    pub target: Target,
    /// The timeline recovery follows to the target.
    pub timeline: u32,
    /// Its lineage: `(timeline, switch point)` of each ancestor, oldest
    /// first.
    pub lineage: Vec<(u32, Lsn)>,
    /// The base backup to start from.
    pub backup: PlannedBackup,
    /// History files of the lineage.
    pub history: Vec<WalFile>,
    /// WAL segments from the backup's start to the target, in order.
    pub segments: Vec<WalFile>,
    /// Where recovery should stop.
    pub stop: Stop,
    /// Bytes of WAL to fetch.
    pub wal_bytes: u64,
    /// What is restorable on this timeline.
    pub window: Window,
}

impl Plan {
    /// Every file `restore_command` may be asked for, in replay order:
    /// history files first.
    pub fn files(&self) -> impl Iterator<Item = &WalFile> {
        self.history.iter().chain(self.segments.iter())
    }
}

/// A stored segment (the complete one, else the furthest partial).
#[derive(Debug, Clone)]
struct Seg {
    file: WalFile,
    index: Option<SegmentIndex>,
}

/// A stored history file.
#[derive(Debug, Clone)]
struct Hist {
    file: WalFile,
    stored: Timestamp,
    lineage: Lineage,
}

/// What the catalog holds about one database, read once.
struct View {
    database: String,
    seg_size: u64,
    segs: BTreeMap<(u32, u64), Seg>,
    hists: BTreeMap<u32, Hist>,
    backups: Vec<BackupRecord>,
}

fn latest_xact(index: &SegmentIndex) -> Option<Timestamp> {
    let c = index.commits.map(|c| c.latest);
    let a = index.aborts.map(|a| a.latest);
    c.max(a)
}

fn earliest_xact(index: &SegmentIndex) -> Option<Timestamp> {
    match (
        index.commits.map(|c| c.earliest),
        index.aborts.map(|a| a.earliest),
    ) {
        (Some(c), Some(a)) => Some(c.min(a)),
        (c, a) => c.or(a),
    }
}

impl View {
    async fn load(repo: &Repository, database: &str) -> Result<View, PlanError> {
        let store = WalStore::new(repo.clone(), database);
        let items = repo.catalog().items(&store.item_name(""))?;
        let bad = |what: String| PlanError::Catalog {
            database: database.to_owned(),
            what,
        };
        let mut segs: BTreeMap<(u32, u64), Seg> = BTreeMap::new();
        let mut seg_size = 0;
        let mut hist_items = Vec::new();
        for item in items {
            let file = item.name.rsplit('/').next().unwrap_or_default().to_owned();
            match item.kind.as_str() {
                crate::wal::KIND_HISTORY => hist_items.push(item),
                crate::wal::KIND_SEGMENT | crate::wal::KIND_PARTIAL => {
                    let attrs: WalAttrs = serde_json::from_value(item.attrs.clone())
                        .map_err(|e| bad(format!("{}: {e}", item.name)))?;
                    let partial = item.kind == crate::wal::KIND_PARTIAL;
                    let file = file.trim_end_matches(".partial").to_owned();
                    let seg = Segment::parse(&file, attrs.segment_size)
                        .ok_or_else(|| bad(format!("{}: not a WAL segment name", item.name)))?;
                    let start: Lsn = attrs
                        .start
                        .parse()
                        .map_err(|e| bad(format!("{}: {e}", item.name)))?;
                    let end: Lsn = attrs
                        .end
                        .parse()
                        .map_err(|e| bad(format!("{}: {e}", item.name)))?;
                    seg_size = attrs.segment_size;
                    let new = Seg {
                        file: WalFile {
                            file,
                            item: item.name.clone(),
                            timeline: seg.timeline,
                            start,
                            end,
                            partial,
                            bytes: item.manifest.size,
                        },
                        index: attrs.index,
                    };
                    let key = (seg.timeline, seg.no);
                    // The complete segment wins; else the furthest partial.
                    let better = match segs.get(&key) {
                        None => true,
                        Some(old) => {
                            (old.file.partial && !partial)
                                || (old.file.partial == partial && end > old.file.end)
                        }
                    };
                    if better {
                        segs.insert(key, new);
                    }
                }
                _ => {}
            }
        }
        let mut hists = BTreeMap::new();
        for item in hist_items {
            let timeline = item
                .attrs
                .get("timeline")
                .and_then(|t| t.as_u64())
                .and_then(|t| u32::try_from(t).ok())
                .ok_or_else(|| bad(format!("{}: no timeline attribute", item.name)))?;
            let parents: Option<Vec<(u32, Lsn)>> = item
                .attrs
                .get("parents")
                .cloned()
                .and_then(|p| serde_json::from_value(p).ok());
            let lineage = match parents {
                Some(p) => Lineage::from_parents(timeline, &p)
                    .map_err(|e| bad(format!("{}: {e}", item.name)))?,
                None => {
                    // Stored before the lineage went into the attributes:
                    // read the file itself (needs the identity).
                    let mut content = Vec::new();
                    repo.reader()?.read_to(&item.manifest, &mut content).await?;
                    Lineage::parse(timeline, &content)
                        .map_err(|e| bad(format!("{}: {e}", item.name)))?
                }
            };
            hists.insert(
                timeline,
                Hist {
                    file: WalFile {
                        file: history_file_name(timeline),
                        item: item.name.clone(),
                        timeline,
                        start: Lsn(0),
                        end: Lsn(0),
                        partial: false,
                        bytes: item.manifest.size,
                    },
                    stored: item.time,
                    lineage,
                },
            );
        }
        let backups = backups(repo, database)?
            .into_iter()
            .filter(|b| b.restorable)
            .map(|b| b.record)
            .collect();
        Ok(View {
            database: database.to_owned(),
            seg_size,
            segs,
            hists,
            backups,
        })
    }

    fn timelines(&self) -> Vec<u32> {
        let mut t: Vec<u32> = self.segs.keys().map(|k| k.0).collect();
        t.dedup();
        t
    }

    fn lineage(&self, timeline: u32) -> Result<Lineage, PlanError> {
        if timeline == 1 {
            return Ok(Lineage::first());
        }
        self.hists
            .get(&timeline)
            .map(|h| h.lineage.clone())
            .ok_or_else(|| PlanError::NoHistory {
                database: self.database.clone(),
                timeline,
                file: history_file_name(timeline),
            })
    }

    fn segno(&self, lsn: Lsn) -> u64 {
        lsn.segment_no(self.seg_size)
    }

    /// The timeline segment `no` is read from on `lineage`.
    fn timeline_for(&self, lineage: &Lineage, no: u64) -> u32 {
        lineage
            .entries()
            .iter()
            .rev()
            .find(|e| {
                lineage
                    .begin(e.timeline)
                    .is_some_and(|b| self.segno(b) <= no)
            })
            .map_or(1, |e| e.timeline)
    }

    fn file_name(&self, timeline: u32, no: u64) -> String {
        Segment { timeline, no }.file_name(self.seg_size)
    }

    /// When `timeline` came to be (see the module doc); `None` for the
    /// first timeline of history, current since the beginning.
    fn created(&self, timeline: u32) -> Option<Timestamp> {
        let hist = self.hists.get(&timeline)?;
        let begin = hist.lineage.begin(timeline).unwrap_or(Lsn(0));
        let first_own = self
            .segs
            .range((timeline, self.segno(begin) + 1)..(timeline, u64::MAX))
            .filter_map(|(_, s)| s.index.as_ref().and_then(earliest_xact))
            .min();
        Some(first_own.map_or(hist.stored, |t| t.min(hist.stored)))
    }

    /// The timeline current at `t`: the newest created at or before it.
    fn current_at(&self, t: Timestamp) -> Option<u32> {
        self.timelines()
            .into_iter()
            .filter(|&tl| tl == 1 || self.hists.contains_key(&tl))
            .filter(|&tl| self.created(tl).is_none_or(|c| c <= t))
            .max_by_key(|&tl| (self.created(tl), tl))
    }

    /// Whether a backup lies on `lineage`: both ends on the timelines the
    /// lineage has at those positions.
    fn on_lineage(lineage: &Lineage, b: &BackupRecord) -> bool {
        let at = |tl: u32, lsn: Lsn| {
            lineage.entries().iter().any(|e| {
                e.timeline == tl
                    && lineage.begin(tl).is_some_and(|begin| begin <= lsn)
                    && e.end.is_none_or(|end| lsn <= end)
            })
        };
        at(b.start_timeline, b.start_lsn) && at(b.end_timeline, b.end_lsn)
    }

    /// Walks the stored WAL on `lineage` from the segment of `from`, until
    /// `stop` says a segment holds the stopping point, the stored WAL ends
    /// or a gap. Returns the files and whether `stop` was met.
    fn walk(
        &self,
        lineage: &Lineage,
        from: Lsn,
        must_reach: Lsn,
        mut stop: impl FnMut(&Seg) -> Result<bool, PlanError>,
    ) -> Result<(Vec<WalFile>, bool), PlanError> {
        let mut files: Vec<WalFile> = Vec::new();
        let last_needed = self.segno(Lsn(must_reach.0.saturating_sub(1)));
        let mut no = self.segno(from);
        loop {
            let tl = self.timeline_for(lineage, no);
            let at = files.last().map_or(from, |f| f.end);
            let seg = self.segs.get(&(tl, no));
            let Some(seg) = seg else {
                if no <= last_needed || self.stored_after(lineage, no) {
                    return Err(PlanError::Gap {
                        database: self.database.clone(),
                        file: self.file_name(tl, no),
                        detail: String::new(),
                        at,
                    });
                }
                return Ok((files, false));
            };
            files.push(seg.file.clone());
            if no >= last_needed && stop(seg)? {
                return Ok((files, true));
            }
            if seg.file.partial {
                if no < last_needed || self.stored_after(lineage, no) {
                    return Err(PlanError::Gap {
                        database: self.database.clone(),
                        file: seg.file.file.clone(),
                        detail: format!(" whole (only its first part, up to {})", seg.file.end),
                        at: seg.file.end,
                    });
                }
                return Ok((files, false));
            }
            no += 1;
        }
    }

    /// Whether any segment after `no` is stored on the lineage.
    fn stored_after(&self, lineage: &Lineage, no: u64) -> bool {
        lineage.entries().iter().any(|e| {
            self.segs
                .range((e.timeline, no + 1)..(e.timeline, u64::MAX))
                .any(|((_, n), _)| self.timeline_for(lineage, *n) == e.timeline)
        })
    }

    /// What is restorable on `timeline`.
    fn window(&self, timeline: u32) -> Result<Window, PlanError> {
        let lineage = self.lineage(timeline)?;
        let oldest = self
            .backups
            .iter()
            .filter(|b| View::on_lineage(&lineage, b))
            .min_by_key(|b| (b.end_lsn, b.finished));
        let Some(b) = oldest else {
            return Ok(Window {
                timeline,
                earliest: None,
                latest: None,
                end: None,
            });
        };
        // Up to the first gap: what is beyond it is not restorable.
        let mut files = Vec::new();
        let mut latest: Option<Timestamp> = None;
        let mut no = self.segno(b.start_lsn);
        loop {
            let tl = self.timeline_for(&lineage, no);
            let Some(seg) = self.segs.get(&(tl, no)) else {
                break;
            };
            latest = latest.max(seg.index.as_ref().and_then(latest_xact));
            files.push(seg.file.end);
            if seg.file.partial {
                break;
            }
            no += 1;
        }
        let end = files.last().copied();
        Ok(Window {
            timeline,
            earliest: end.filter(|&e| e >= b.end_lsn).map(|_| b.finished),
            latest: latest.filter(|&l| l >= b.finished),
            end,
        })
    }
}

/// Plans a restore of `database` to `target`, on `timeline` or (when
/// `None`) the one current at the target.
pub async fn plan(
    repo: &Repository,
    database: &str,
    target: &Target,
    timeline: Option<u32>,
) -> Result<Plan, PlanError> {
    let view = View::load(repo, database).await?;
    let stored = view.timelines();
    if stored.is_empty() || view.backups.is_empty() {
        return Err(PlanError::NothingStored {
            database: database.to_owned(),
        });
    }
    let describe = target.describe();
    let timeline = match timeline {
        Some(tl) => {
            if !stored.contains(&tl) {
                return Err(PlanError::UnknownTimeline {
                    database: database.to_owned(),
                    timeline: tl,
                    stored: stored
                        .iter()
                        .map(|t| t.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            if let Target::Time(t) = target {
                check_on_timeline(repo, &view, tl, *t, &describe).await?;
            }
            tl
        }
        None => match target {
            Target::Time(t) => view.current_at(*t).unwrap_or(stored[0]),
            Target::Name(name) => view
                .segs
                .iter()
                .rev()
                .find(|(_, s)| {
                    s.index
                        .as_ref()
                        .is_some_and(|i| i.restore_points.iter().any(|p| &p.name == name))
                })
                .map_or(stored[stored.len() - 1], |((tl, _), _)| *tl),
            Target::Lsn(_) | Target::Latest => stored[stored.len() - 1],
        },
    };
    let lineage = view.lineage(timeline)?;
    let window = view.window(timeline)?;
    let outside = || PlanError::OutsideWindow {
        database: database.to_owned(),
        target: describe.clone(),
        timeline,
        window: window.describe(),
    };
    // The newest restorable backup on the lineage that is consistent
    // before the target.
    let backup = view
        .backups
        .iter()
        .filter(|b| View::on_lineage(&lineage, b))
        .filter(|b| match target {
            Target::Time(t) => b.finished <= *t,
            Target::Lsn(l) => b.end_lsn <= *l,
            Target::Name(_) | Target::Latest => true,
        })
        .max_by_key(|b| (b.end_lsn, b.finished))
        .ok_or_else(outside)?;

    let no_index = |seg: &Seg| PlanError::NoIndex {
        database: database.to_owned(),
        file: seg.file.file.clone(),
        target: describe.clone(),
    };
    let (segments, met) = match target {
        Target::Time(t) => view.walk(&lineage, backup.start_lsn, backup.end_lsn, |seg| {
            let index = seg.index.as_ref().ok_or_else(|| no_index(seg))?;
            Ok(latest_xact(index).is_some_and(|l| l > *t))
        })?,
        Target::Lsn(l) => view.walk(&lineage, backup.start_lsn, backup.end_lsn, |seg| {
            Ok(match &seg.index {
                Some(index) => index.last_record.is_some_and(|r| r >= *l),
                None => seg.file.end > *l && !seg.file.partial,
            })
        })?,
        Target::Name(name) => {
            // Only restore points after the backup's end count: recovery
            // checks them once consistent.
            view.walk(&lineage, backup.start_lsn, backup.end_lsn, |seg| {
                let index = seg.index.as_ref().ok_or_else(|| no_index(seg))?;
                Ok(index
                    .restore_points
                    .iter()
                    .any(|p| &p.name == name && p.lsn >= backup.end_lsn))
            })?
        }
        Target::Latest => {
            let (files, _) =
                view.walk(&lineage, backup.start_lsn, backup.end_lsn, |_| Ok(false))?;
            (files, true)
        }
    };
    if !met {
        return Err(match target {
            Target::Name(name) => PlanError::NoSuchName {
                database: database.to_owned(),
                name: name.clone(),
            },
            _ => outside(),
        });
    }
    let last = segments.last().ok_or_else(outside)?;
    if last.end < backup.end_lsn {
        return Err(outside());
    }
    let last_record = segments.iter().rev().find_map(|f| {
        view.segs
            .get(&(f.timeline, view.segno(f.start)))
            .and_then(|s| s.index.as_ref())
            .and_then(|i| i.last_record)
    });
    let stop = Stop {
        file: last.file.clone(),
        start: last.start,
        end: last.end,
        last_record,
    };
    let history = lineage
        .entries()
        .iter()
        .filter(|e| e.timeline > 1)
        .filter_map(|e| view.hists.get(&e.timeline).map(|h| h.file.clone()))
        .collect();
    let wal_bytes = segments.iter().map(|s| s.bytes).sum();
    Ok(Plan {
        database: database.to_owned(),
        target: target.clone(),
        timeline,
        lineage: lineage
            .entries()
            .iter()
            .filter_map(|e| e.end.map(|end| (e.timeline, end)))
            .collect(),
        backup: PlannedBackup {
            id: backup.id.clone(),
            start_lsn: backup.start_lsn,
            end_lsn: backup.end_lsn,
            timeline: backup.end_timeline,
            finished: backup.finished,
            bytes: backup.bytes,
            files: backup.files,
            server_version: backup.server_version.clone(),
        },
        history,
        segments,
        stop,
        wal_bytes,
        window,
    })
}

/// Refuses a time on `timeline`'s lineage when, at that time, another
/// timeline was current that had gone on past `timeline`'s branch point:
/// recovery on `timeline` would silently miss those transactions.
async fn check_on_timeline(
    repo: &Repository,
    view: &View,
    timeline: u32,
    t: Timestamp,
    describe: &str,
) -> Result<(), PlanError> {
    let Some(current) = view.current_at(t) else {
        return Ok(());
    };
    if current == timeline {
        return Ok(());
    }
    let lineage = view.lineage(timeline)?;
    let Some(fork) = lineage
        .entries()
        .iter()
        .find(|e| e.timeline == current)
        .and_then(|e| e.end)
    else {
        // `current` is not an ancestor: a different branch altogether
        // (or a descendant, whose past `timeline` holds).
        let current_lineage = view.lineage(current)?;
        if current_lineage
            .entries()
            .iter()
            .any(|e| e.timeline == timeline)
        {
            return Ok(());
        }
        let fork = current_lineage
            .entries()
            .iter()
            .zip(lineage.entries())
            .take_while(|(a, b)| a.timeline == b.timeline)
            .last()
            .and_then(|(a, b)| a.end.min(b.end))
            .unwrap_or(Lsn(0));
        return Err(PlanError::NotOnTimeline {
            target: describe.to_owned(),
            timeline,
            current,
            fork,
        });
    };
    // `current` is an ancestor that `timeline` left at `fork`: did it
    // commit anything after the fork and at or before `t`?
    let went_on = view
        .segs
        .range((current, view.segno(fork) + 1)..(current, u64::MAX))
        .any(|(_, s)| {
            s.index
                .as_ref()
                .and_then(earliest_xact)
                .is_some_and(|e| e <= t)
        });
    // The segment holding the fork mixes both sides: decode the ancestor's
    // copy of it (one segment) to see what it did after the fork.
    let went_on = went_on || {
        let seg = view.segs.get(&(current, view.segno(fork)));
        match seg {
            Some(seg) if seg.file.end > fork => committed_after(repo, view, seg, fork, t).await?,
            _ => false,
        }
    };
    if went_on {
        return Err(PlanError::NotOnTimeline {
            target: describe.to_owned(),
            timeline,
            current,
            fork,
        });
    }
    Ok(())
}

/// Whether `seg` holds a transaction end at or after `from` with a time at
/// or before `t`.
async fn committed_after(
    repo: &Repository,
    view: &View,
    seg: &Seg,
    from: Lsn,
    t: Timestamp,
) -> Result<bool, PlanError> {
    let item = repo
        .catalog()
        .latest_item(&seg.file.item)?
        .ok_or_else(|| PlanError::Catalog {
            database: view.database.clone(),
            what: format!("{} vanished", seg.file.item),
        })?;
    let mut bytes = Vec::with_capacity(item.manifest.size as usize);
    repo.reader()?.read_to(&item.manifest, &mut bytes).await?;
    let mut decoder = crate::wal::Decoder::new(seg.file.timeline, view.seg_size, seg.file.start);
    let mut found = false;
    decoder
        .feed_with(&bytes, |r| {
            if let crate::wal::RecordKind::Commit { time, .. }
            | crate::wal::RecordKind::Abort { time, .. } = r.kind
                && r.lsn >= from
                && time <= t
            {
                found = true;
            }
        })
        .map_err(|e| PlanError::Catalog {
            database: view.database.clone(),
            what: format!("{}: {e}", seg.file.item),
        })?;
    Ok(found)
}

/// The restore window of every timeline of `database`, oldest first.
pub async fn windows(repo: &Repository, database: &str) -> Result<Vec<Window>, PlanError> {
    let view = View::load(repo, database).await?;
    view.timelines()
        .into_iter()
        .map(|tl| view.window(tl))
        .collect()
}
