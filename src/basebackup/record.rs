//! The record of a base backup, its listing, and the marker that makes it
//! restorable once its WAL is stored.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{BackupError, KIND_BACKUP, KIND_RESTORABLE, record_name};
use crate::pg::Lsn;
use crate::repo::Repository;
use crate::wal::WalStore;

/// What `pg/<db>/backups/<id>` holds in its attributes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    /// The backup's id (`20261125T010203Z`), also the last part of its name.
    pub id: String,
    /// The label given to the server.
    pub label: String,
    /// The `[[postgres]]` entry.
    pub database: String,
    /// The server's system identifier.
    pub system_id: String,
    /// `server_version` of the server.
    pub server_version: String,
    /// Where recovery starts (the backup's checkpoint redo point).
    pub start_lsn: Lsn,
    /// Timeline at the start.
    pub start_timeline: u32,
    /// Where the backup becomes consistent.
    pub end_lsn: Lsn,
    /// Timeline at the end.
    pub end_timeline: u32,
    /// When the backup started.
    pub started: Timestamp,
    /// When its files were stored (after the server finished sending them
    /// and the last upload; before its record is committed and before its
    /// WAL is waited for). `pitr restore --at` starts from the newest
    /// backup finished at or before the target.
    pub finished: Timestamp,
    /// Tablespaces outside the data directory.
    pub tablespaces: Vec<TablespaceInfo>,
    /// Regular files stored.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Bytes of new packs this backup uploaded (what it cost to store).
    pub stored_bytes: u64,
    /// The listing item (every file, directory and symlink).
    pub listing: String,
    /// The server's `backup_manifest`, as an item.
    pub manifest: String,
    /// Always false here: a record never changes. Restorable is a second
    /// item, `<record>.restorable`, written once the WAL is stored.
    pub restorable: bool,
    /// The backup this one is incremental on (PostgreSQL 17 and later): its
    /// `INCREMENTAL.*` files are restored from it and its own chain of
    /// parents. `None`: a full backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

/// A tablespace outside the data directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TablespaceInfo {
    /// Its OID (the name of its archive and of its `pg_tblspc` link).
    pub oid: u32,
    /// Its location on the server.
    pub location: String,
}

/// One member of a backup, as the listing item records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListingEntry {
    /// `base` for the data directory, else the tablespace OID.
    pub archive: String,
    /// Path inside the archive.
    pub path: String,
    /// `file`, `dir` or `symlink`.
    pub kind: String,
    /// Permission bits.
    pub mode: u32,
    /// Modification time (seconds since the epoch).
    pub mtime: i64,
    /// Size (files).
    #[serde(default)]
    pub size: u64,
    /// Link target (symlinks).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub link: String,
}

/// A backup found in the catalog.
#[derive(Debug, Clone)]
pub struct BackupInfo {
    /// Its record.
    pub record: BackupRecord,
    /// Whether its WAL is recorded as stored.
    pub restorable: bool,
}

/// The base backups of `db`, oldest first.
pub fn backups(repo: &Repository, db: &str) -> Result<Vec<BackupInfo>, BackupError> {
    let items = repo.catalog().items(&format!("pg/{db}/backups/"))?;
    let marked: std::collections::HashSet<String> = items
        .iter()
        .filter(|i| i.kind == KIND_RESTORABLE)
        .map(|i| i.name.clone())
        .collect();
    items
        .iter()
        .filter(|i| i.kind == KIND_BACKUP)
        .map(|i| {
            let record: BackupRecord =
                serde_json::from_value(i.attrs.clone()).map_err(|e| BackupError::BadRecord {
                    item: i.name.clone(),
                    what: e.to_string(),
                })?;
            Ok(BackupInfo {
                restorable: marked.contains(&format!("{}.restorable", i.name)),
                record,
            })
        })
        .collect()
}

/// Whether the stored WAL covers `record` from its start to its end.
fn wal_covers(store: &WalStore, record: &BackupRecord) -> Result<bool, BackupError> {
    if record.start_timeline != record.end_timeline {
        // Taken across a promotion: the planner must follow the lineage;
        // not marked here.
        return Ok(false);
    }
    let ranges = store.ranges(record.end_timeline)?;
    Ok(ranges
        .iter()
        .any(|&(s, e)| s <= record.start_lsn && e >= record.end_lsn))
}

/// Marks every backup of `db` whose WAL is now stored as restorable (one
/// commit); returns the ids marked.
pub async fn mark_restorable(repo: &Repository, db: &str) -> Result<Vec<String>, BackupError> {
    let store = WalStore::new(repo.clone(), db);
    let mut w = repo.writer();
    let mut marked = Vec::new();
    for b in backups(repo, db)? {
        if b.restorable || !wal_covers(&store, &b.record)? {
            continue;
        }
        let name = format!("{}.restorable", record_name(db, &b.record.id));
        let attrs = serde_json::json!({
            "id": b.record.id,
            "start_lsn": b.record.start_lsn,
            "end_lsn": b.record.end_lsn,
            "timeline": b.record.end_timeline,
        });
        w.put_record(&name, KIND_RESTORABLE, attrs).await?;
        marked.push(b.record.id);
    }
    w.commit().await?;
    Ok(marked)
}

/// Waits until backup `id` of `db` is restorable, marking it (and any other
/// backup whose WAL arrived) when its WAL is stored: polls the store's
/// catalog, so WAL stored by another process (`pitr run`) counts. The first
/// polls come quickly (the stream usually stores the backup's last segment
/// within a second), then further apart up to every `poll`. Gives up after `timeout` with
/// [`BackupError::WalNotStored`].
pub async fn wait_restorable(
    repo: &Repository,
    db: &str,
    id: &str,
    timeout: Duration,
    poll: Duration,
) -> Result<(), BackupError> {
    let started = Instant::now();
    let mut nap = poll.min(FIRST_POLL);
    loop {
        repo.sync_catalog().await?;
        mark_restorable(repo, db).await?;
        let all = backups(repo, db)?;
        let Some(b) = all.iter().find(|b| b.record.id == id) else {
            return Err(BackupError::NotFound {
                db: db.to_owned(),
                id: id.to_owned(),
            });
        };
        if b.restorable {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            let store = WalStore::new(repo.clone(), db);
            let ranges = store.ranges(b.record.end_timeline)?;
            let stored = if ranges.is_empty() {
                "nothing".to_owned()
            } else {
                ranges
                    .iter()
                    .map(|(s, e)| format!("{s}..{e}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(BackupError::WalNotStored {
                id: id.to_owned(),
                end: b.record.end_lsn,
                timeline: b.record.end_timeline,
                waited_secs: timeout.as_secs(),
                stored,
            });
        }
        tokio::time::sleep(nap).await;
        if started.elapsed() >= QUICK_POLLS {
            nap = (nap * 2).min(poll);
        }
    }
}

/// The first wait between two polls of [`wait_restorable`].
const FIRST_POLL: Duration = Duration::from_millis(100);
/// For this long polls stay [`FIRST_POLL`] apart: the stream stores a
/// partial every half second, so the backup's WAL is usually stored within
/// a second, and a doubling wait would find it up to twice as late (one
/// small catalog listing per poll).
const QUICK_POLLS: Duration = Duration::from_secs(3);
