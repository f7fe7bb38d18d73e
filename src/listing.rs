//! What the repository holds, per configured database: base backups, WAL
//! ranges per timeline, restore windows, SQLite captures, snapshots of
//! snapshot sources and the newest test restore. One document, built here, is what `pitr list --json`
//! prints and what the sidecar's `GET /backups` answers, so the two never
//! drift apart.

use jiff::Timestamp;
use serde::Serialize;

use crate::basebackup::{BackupError, BackupRecord};
use crate::config::Config;
use crate::pg::Lsn;
use crate::repo::{RepoError, Repository};
use crate::restore::sqlite::SqliteWindow;
use crate::restore::{PlanError, Window};
use crate::verify::{DatabaseKind, VerifyReport};
use crate::wal::WalStore;

/// The whole document.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    /// Per `[[postgres]]` entry, in config order.
    pub postgres: Vec<PgListing>,
    /// Per `[[sqlite]]` entry, in config order.
    pub sqlite: Vec<SqliteListing>,
    /// Per snapshot source (`[[command]]` entries), in config order.
    pub snapshots: Vec<SnapshotListing>,
}

/// One snapshot source.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotListing {
    /// The source's name.
    pub name: String,
    /// Its kind.
    pub kind: crate::snapshot::SourceKind,
    /// Its snapshots, oldest first.
    pub snapshots: Vec<crate::snapshot::Snapshot>,
    /// The newest recorded test restore.
    pub last_test_restore: Option<VerifyReport>,
}

/// One PostgreSQL database.
#[derive(Debug, Clone, Serialize)]
pub struct PgListing {
    /// The `[[postgres]]` name.
    pub name: String,
    /// Its base backups, oldest first.
    pub backups: Vec<BackupEntry>,
    /// Stored WAL per timeline.
    pub wal: Vec<WalTimeline>,
    /// What can be restored, per timeline.
    pub windows: Vec<Window>,
    /// The newest recorded test restore.
    pub last_test_restore: Option<VerifyReport>,
}

/// One base backup.
#[derive(Debug, Clone, Serialize)]
pub struct BackupEntry {
    /// Its record.
    pub record: BackupRecord,
    /// Whether the WAL it needs is stored.
    pub restorable: bool,
}

/// The stored WAL of one timeline.
#[derive(Debug, Clone, Serialize)]
pub struct WalTimeline {
    /// The timeline.
    pub timeline: u32,
    /// Contiguous stored ranges (start, end); more than one means gaps.
    pub ranges: Vec<(Lsn, Lsn)>,
}

/// One SQLite database.
#[derive(Debug, Clone, Serialize)]
pub struct SqliteListing {
    /// The `[[sqlite]]` name.
    pub name: String,
    /// The file it watches.
    pub path: std::path::PathBuf,
    /// Captures stored (snapshots and page sets).
    pub captures: usize,
    /// The snapshots among them.
    pub snapshots: Vec<SqliteSnapshot>,
    /// The newest capture.
    pub last: Option<SqliteLast>,
    /// The restore window.
    pub window: SqliteWindow,
    /// The newest recorded test restore.
    pub last_test_restore: Option<VerifyReport>,
}

/// One SQLite snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct SqliteSnapshot {
    /// Its catalog item.
    pub item: String,
    /// When it was taken.
    pub at: Timestamp,
    /// Pages in the database then.
    pub db_pages: u32,
    /// The page size.
    pub page_size: u32,
    /// Why it was taken.
    pub reason: String,
}

/// The newest SQLite capture.
#[derive(Debug, Clone, Serialize)]
pub struct SqliteLast {
    /// Its catalog item.
    pub item: String,
    /// When it was taken.
    pub at: Timestamp,
}

/// Why the listing could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ListingError {
    /// The catalog failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// Base-backup records could not be read.
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// WAL items could not be read.
    #[error(transparent)]
    Wal(#[from] crate::wal::WalStoreError),
    /// The restore windows could not be computed.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// SQLite captures could not be read.
    #[error(transparent)]
    Sqlite(#[from] crate::sqlite::store::StoreError),
    /// The SQLite window could not be computed.
    #[error(transparent)]
    SqliteWindow(#[from] crate::restore::sqlite::SqliteRestoreError),
    /// Snapshots could not be read.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
}

/// Builds the listing of every configured database from the local catalog
/// (the caller syncs it first when it must be current).
pub async fn listing(repo: &Repository, config: &Config) -> Result<Listing, ListingError> {
    let reports = crate::verify::last_reports(repo)?;
    let tested = |kind: DatabaseKind, name: &str| {
        reports
            .iter()
            .find(|r| r.kind == kind && r.database == name)
            .cloned()
    };
    let mut postgres = Vec::new();
    for pg in &config.postgres {
        let backups = crate::basebackup::backups(repo, &pg.name)?
            .into_iter()
            .map(|b| BackupEntry {
                record: b.record,
                restorable: b.restorable,
            })
            .collect();
        let store = WalStore::new(repo.clone(), &pg.name);
        let mut wal = Vec::new();
        for timeline in store.timelines()? {
            wal.push(WalTimeline {
                timeline,
                ranges: store.ranges(timeline)?,
            });
        }
        postgres.push(PgListing {
            name: pg.name.clone(),
            backups,
            wal,
            windows: crate::restore::windows(repo, &pg.name).await?,
            last_test_restore: tested(DatabaseKind::Postgres, &pg.name),
        });
    }
    let mut sqlite = Vec::new();
    for s in &config.sqlite {
        let caps = crate::sqlite::store::captures(repo, &s.name)?;
        sqlite.push(SqliteListing {
            name: s.name.clone(),
            path: s.path.clone(),
            captures: caps.len(),
            snapshots: caps
                .iter()
                .filter(|c| c.snapshot)
                .map(|c| SqliteSnapshot {
                    item: c.item.name.clone(),
                    at: c.attrs.at,
                    db_pages: c.attrs.db_pages,
                    page_size: c.attrs.page_size,
                    reason: c.attrs.reason.clone(),
                })
                .collect(),
            last: caps.last().map(|c| SqliteLast {
                item: c.item.name.clone(),
                at: c.attrs.at,
            }),
            window: crate::restore::sqlite::window(repo, &s.name)?,
            last_test_restore: tested(DatabaseKind::Sqlite, &s.name),
        });
    }
    let mut snapshots = Vec::new();
    for source in crate::snapshot::sources(config) {
        let (name, kind) = (source.name(), source.kind());
        snapshots.push(SnapshotListing {
            name: name.to_owned(),
            kind,
            snapshots: crate::snapshot::list(&repo.catalog(), name)?,
            last_test_restore: tested(DatabaseKind::of_source(kind), name),
        });
    }
    Ok(Listing {
        postgres,
        sqlite,
        snapshots,
    })
}
