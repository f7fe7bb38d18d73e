//! Base backups over the replication protocol (`BASE_BACKUP`), stored file
//! by file in the repository, and their restore into a directory.
//!
//! - [`take`]: runs `BASE_BACKUP`, parses the tar stream on the fly
//!   ([`tar`]), stores each file as its own item (relation files in
//!   page-aligned fixed chunks, so an unchanged page range is never stored
//!   twice), checks what arrived against the server's `backup_manifest`, and
//!   records the backup (`pg/<db>/backups/<id>`, not yet restorable);
//! - [`mark_restorable`] / [`wait_restorable`]: a backup becomes restorable
//!   once the WAL from its start to its end LSN is stored, recorded as a
//!   second item `pg/<db>/backups/<id>.restorable` (items are immutable);
//! - [`incremental`]: on PostgreSQL 17 and later, backups incremental on
//!   the newest one (`UPLOAD_MANIFEST` + `BASE_BACKUP (INCREMENTAL)`), and
//!   the `INCREMENTAL.*` file format;
//! - [`restore`]: materialises a backup into an empty directory; an
//!   incremental one is combined from its chain straight from the
//!   repository (`combine`), as `pg_combinebackup` would;
//! - [`schedule`]: the backups `pitr run` takes on a cron schedule and when
//!   WAL accumulates, retried with backoff, with figures for the health
//!   endpoint.

pub mod incremental;
pub mod schedule;
pub mod tar;

mod combine;
mod pgmanifest;
mod receive;
mod record;
mod restore;
mod take;

pub use incremental::chain_ids;
pub use record::{
    BackupInfo, BackupRecord, ListingEntry, TablespaceInfo, backups, mark_restorable,
    wait_restorable,
};
pub use restore::{RestoreOptions, RestoreSummary, restore};
pub use take::{BackupOptions, BackupProgress, take};

use crate::pg::{ConnError, Lsn};
use crate::repo::RepoError;

/// Item kind of a backup record.
pub const KIND_BACKUP: &str = "base-backup";
/// Item kind of the marker that a backup's WAL is stored.
pub const KIND_RESTORABLE: &str = "base-backup-restorable";
/// Item kind of a file of a base backup.
pub const KIND_FILE: &str = "base-file";
/// Item kind of a backup's listing and of its `backup_manifest`.
pub const KIND_META: &str = "base-meta";

/// `pg/<db>/backups/<id>`: the record of a backup.
pub fn record_name(db: &str, id: &str) -> String {
    format!("pg/{db}/backups/{id}")
}

/// `pg/<db>/base/<id>/`: where the files of a backup live.
pub fn files_prefix(db: &str, id: &str) -> String {
    format!("pg/{db}/base/{id}/")
}

/// What can go wrong taking, marking or restoring a base backup.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The replication connection failed (a server restart during a backup
    /// lands here: nothing was recorded; take it again).
    #[error("base backup: {0}")]
    Conn(#[from] ConnError),
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] crate::repo::catalog::CatalogError),
    /// The WAL store failed.
    #[error(transparent)]
    Wal(#[from] crate::wal::WalStoreError),
    /// The server cannot take an incremental backup on `parent` (WAL
    /// summaries missing for its range, ...); [`take`] then takes a full
    /// one.
    #[error(
        "the server cannot take an incremental backup on {parent}: {source}. A full backup does not need it: take one"
    )]
    IncrementalRefused {
        /// The parent asked for.
        parent: String,
        /// The server's answer.
        source: ConnError,
    },
    /// The server sent something the protocol does not allow.
    #[error("base backup: unexpected answer from the server: {0}")]
    Protocol(String),
    /// The tar stream is malformed.
    #[error("base backup, archive {archive}: {source}")]
    Tar {
        /// The archive.
        archive: String,
        /// What is wrong.
        source: tar::TarError,
    },
    /// What arrived differs from the server's `backup_manifest`.
    #[error(
        "base backup {id}: what arrived does not match the server's backup_manifest: {what}. The backup was not recorded; take it again"
    )]
    ManifestMismatch {
        /// The backup.
        id: String,
        /// The differences.
        what: String,
    },
    /// No such backup.
    #[error(
        "no base backup {id} of [[postgres]] {db:?} in the repository (`pitr list` shows them)"
    )]
    NotFound {
        /// The database.
        db: String,
        /// The backup.
        id: String,
    },
    /// A stored record or listing does not parse.
    #[error("{item}: unreadable: {what}")]
    BadRecord {
        /// The item.
        item: String,
        /// What is wrong.
        what: String,
    },
    /// A listing entry would write outside the restore's target, or
    /// through a link: the listing is not what pitr writes, so it may be
    /// forged (invariant 8). Nothing was written for it.
    #[error(
        "{listing}: entry {entry:?} {why}; refusing to restore it. A restore writes only \
         beneath its target and follows no link, and pitr never writes such an entry: the \
         listing (or the catalog commit holding it) may have been forged by someone who can \
         write to a destination. Check the destinations' access and the repository key \
         (see `pitr restore`'s key line), and restore from a backup you trust"
    )]
    UnsafeEntry {
        /// The listing item.
        listing: String,
        /// The entry, as `<archive>/<path>`.
        entry: String,
        /// What is wrong with it.
        why: String,
    },
    /// The restore target is not empty.
    #[error(
        "{path} is not empty: a base backup is restored only into an empty or new directory. Choose another target or empty it first"
    )]
    TargetNotEmpty {
        /// The directory.
        path: std::path::PathBuf,
    },
    /// The backup has tablespaces and the caller gave no place for them.
    #[error(
        "base backup {id} has tablespaces ({oids}) outside the data directory: give a directory to restore them into"
    )]
    NoTablespaceDir {
        /// The backup.
        id: String,
        /// Their OIDs.
        oids: String,
    },
    /// The WAL a backup needs did not arrive in time.
    #[error(
        "base backup {id} is stored but not restorable yet: WAL up to {end} on timeline {timeline} is not in the repository after {waited_secs} s (stored there: {stored}). Is `pitr run` streaming this database? Once the WAL is stored, the next `pitr backup` marks it restorable"
    )]
    WalNotStored {
        /// The backup.
        id: String,
        /// Its end LSN.
        end: Lsn,
        /// Its timeline.
        timeline: u32,
        /// How long was waited.
        waited_secs: u64,
        /// What is stored on that timeline.
        stored: String,
    },
    /// A local file failed.
    #[error("{path}: {source}")]
    Local {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl BackupError {
    /// Whether taking the backup again later may succeed (server restart,
    /// connection lost, destination down).
    pub fn is_transient(&self) -> bool {
        match self {
            BackupError::Conn(e) | BackupError::IncrementalRefused { source: e, .. } => {
                e.is_transient()
            }
            BackupError::Repo(RepoError::Ship(_)) => true,
            _ => false,
        }
    }
}

pub(crate) fn local(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Local {
        path: path.to_owned(),
        source,
    }
}
