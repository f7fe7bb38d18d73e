//! Taking a base backup: `BASE_BACKUP` on a replication connection, its tar
//! stream parsed on the fly (`receive`), each file streamed into its own
//! item.
//!
//! The connection task parses; a store task owns the repository writer and
//! stores one file at a time, fed through a small bounded channel, so memory
//! stays a few CopyData messages plus the writer's packs whatever the size
//! of a file or of the database.

use std::collections::BTreeMap;

use jiff::Timestamp;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::pgmanifest;
use super::receive::{ChannelReader, FileJob, Run, STORE_GONE};
use super::record::BackupRecord;
use super::{BackupError, KIND_BACKUP, KIND_FILE, KIND_META, files_prefix, record_name};
use crate::pg::{Checkpoint, ConnInfo, ManifestChecksums, ReplicationClient};
use crate::repo::{Chunking, RepoError, Repository, Writer};

/// Commit the files stored so far after this many bytes, so a long backup
/// does not hold every manifest until its end.
const COMMIT_EVERY: u64 = 1 << 30;

/// What to back up and how.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// The `[[postgres]]` entry's name.
    pub database: String,
    /// How to reach the server (a replication connection is opened).
    pub conninfo: ConnInfo,
    /// The label the server records in `backup_label`.
    pub label: String,
    /// The checkpoint mode.
    pub checkpoint: Checkpoint,
    /// The server's sending rate limit, kB/s (32 to 1048576), if any.
    pub max_rate_kb: Option<u32>,
    /// How many incremental backups may follow a full one (PostgreSQL 17+
    /// with `summarize_wal = on`); 0: full backups only.
    pub incremental_max_chain: u32,
    /// The manifest's per-file checksum.
    pub manifest_checksums: ManifestChecksums,
}

/// The `BASE_BACKUP` command for a server of `major`: the option list in
/// parentheses from 15 on; before, the older keyword syntax (14's protocol
/// documentation), where `NOWAIT` is `WAIT false` and `FAST` is
/// `CHECKPOINT 'fast'`.
pub(super) fn base_backup_command(major: u32, opts: &BackupOptions) -> String {
    let label = opts.label.replace('\'', "''");
    let checksums = opts.manifest_checksums.as_manifest();
    if major >= 15 {
        format!(
            "BASE_BACKUP (LABEL '{label}', PROGRESS, CHECKPOINT '{}', WAIT false, MANIFEST 'yes', \
             MANIFEST_CHECKSUMS '{checksums}'{})",
            match opts.checkpoint {
                Checkpoint::Fast => "fast",
                Checkpoint::Spread => "spread",
            },
            opts.max_rate_kb
                .map(|r| format!(", MAX_RATE {r}"))
                .unwrap_or_default()
        )
    } else {
        format!(
            "BASE_BACKUP LABEL '{label}' PROGRESS{} NOWAIT{} MANIFEST 'yes' \
             MANIFEST_CHECKSUMS '{checksums}'",
            match opts.checkpoint {
                Checkpoint::Fast => " FAST",
                Checkpoint::Spread => "",
            },
            opts.max_rate_kb
                .map(|r| format!(" MAX_RATE {r}"))
                .unwrap_or_default()
        )
    }
}

/// How far a backup is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackupProgress {
    /// Bytes the server sent so far.
    pub done: u64,
    /// The server's estimate of the total, once known.
    pub total: Option<u64>,
    /// Files stored so far.
    pub files: u64,
}

type StoreTask = JoinHandle<Result<(Writer, u64), RepoError>>;

/// Takes one base backup of `opts.database` and records it (not yet
/// restorable: see [`super::wait_restorable`]). On any error nothing is
/// recorded as a backup (files committed on the way are unreferenced).
///
/// On PostgreSQL 17 and later with `summarize_wal = on` the backup is
/// incremental on the newest backup in the repository (up to
/// `incremental_max_chain` in a row); when the server cannot take it so, a
/// full one is taken instead and the log says why.
pub async fn take(
    repo: &Repository,
    opts: &BackupOptions,
    progress: &watch::Sender<BackupProgress>,
) -> Result<BackupRecord, BackupError> {
    match take_once(repo, opts, progress, true).await {
        Err(BackupError::IncrementalRefused { parent, source }) => {
            tracing::warn!(
                database = %opts.database, %parent, error = %source,
                "the server cannot take this base backup incrementally; taking a full one instead"
            );
            take_once(repo, opts, progress, false).await
        }
        r => r,
    }
}

async fn take_once(
    repo: &Repository,
    opts: &BackupOptions,
    progress: &watch::Sender<BackupProgress>,
    incremental: bool,
) -> Result<BackupRecord, BackupError> {
    // Connecting refuses majors pitr does not support.
    let mut client = ReplicationClient::connect(&opts.conninfo).await?;
    let version = client
        .server_param("server_version")
        .unwrap_or("")
        .to_owned();
    let major = client.server_major();
    let system = client.identify_system().await?;
    let id = new_id(repo, &opts.database).await?;
    let started = Timestamp::now();
    let sql = base_backup_command(major, opts);
    let (jobs_tx, mut jobs_rx) = mpsc::channel::<FileJob>(1);
    let writer = repo.writer();
    let store: StoreTask = tokio::spawn(async move {
        let mut w = writer;
        let mut since = 0u64;
        let mut stored = 0u64;
        while let Some(job) = jobs_rx.recv().await {
            let reader = ChannelReader::new(job.rx);
            let m = w
                .put(&job.name, KIND_FILE, job.attrs, job.chunking, reader)
                .await?;
            since += m.size;
            if since >= COMMIT_EVERY {
                stored += w.commit().await?.map_or(0, |c| c.pack_bytes);
                since = 0;
            }
        }
        stored += w.commit().await?.map_or(0, |c| c.pack_bytes);
        Ok((w, stored))
    });
    let mut run = Run {
        db: opts.database.clone(),
        id: id.clone(),
        jobs: Some(jobs_tx),
        current: None,
        received: BTreeMap::new(),
        listing: Vec::new(),
        files: 0,
        bytes: 0,
        progress,
        checksums: opts.manifest_checksums,
    };
    // Incremental on a parent (17+, summaries on): its manifest goes up on
    // this connection first.
    let parent = match incremental {
        true => {
            let system_id = system.system_id.to_string();
            let max = opts.incremental_max_chain;
            super::incremental::prepare(repo, &opts.database, &mut client, major, &system_id, max)
                .await?
        }
        false => None,
    };
    let sql = match parent {
        Some(_) => sql.replacen("BASE_BACKUP (", "BASE_BACKUP (INCREMENTAL, ", 1),
        None => sql,
    };
    let streamed = run.stream(&mut client, &sql, major < 15).await;
    let streamed = match streamed {
        Ok(s) => s,
        Err(e) => {
            // The store task's own error explains a send that failed.
            drop(run.jobs.take());
            drop(run.current.take());
            // Without its senders the store task ends at once (a file cut
            // short is an input error, never stored as complete).
            let stored = tokio::time::timeout(std::time::Duration::from_secs(30), store).await;
            if matches!(&e, BackupError::Protocol(m) if m == STORE_GONE)
                && let Ok(Ok(Err(stored))) = stored
            {
                return Err(stored.into());
            }
            return Err(match (e, &parent) {
                (BackupError::Conn(c), Some(p)) if super::incremental::refused(&c) => {
                    BackupError::IncrementalRefused {
                        parent: p.id.clone(),
                        source: c,
                    }
                }
                (e, _) => e,
            });
        }
    };
    drop(run.jobs.take());
    let (mut w, stored_bytes) = join_store(store).await?;
    let _ = client.close().await;

    pgmanifest::check(&streamed.manifest, &run.received).map_err(|what| {
        BackupError::ManifestMismatch {
            id: id.clone(),
            what,
        }
    })?;
    let prefix = files_prefix(&opts.database, &id);
    let manifest_item = format!("{prefix}backup_manifest");
    let listing_item = format!("{prefix}listing");
    let attrs = serde_json::json!({ "backup": id });
    w.put(
        &manifest_item,
        KIND_META,
        attrs.clone(),
        Chunking::Cdc,
        &streamed.manifest[..],
    )
    .await?;
    let listing = serde_json::to_vec(&run.listing).expect("a listing serializes");
    w.put(&listing_item, KIND_META, attrs, Chunking::Cdc, &listing[..])
        .await?;
    let record = BackupRecord {
        id: id.clone(),
        label: opts.label.clone(),
        database: opts.database.clone(),
        system_id: system.system_id.to_string(),
        server_version: version,
        start_lsn: streamed.start.0,
        start_timeline: streamed.start.1,
        end_lsn: streamed.end.0,
        end_timeline: streamed.end.1,
        started,
        finished: Timestamp::now(),
        tablespaces: streamed.tablespaces,
        files: run.files,
        bytes: run.bytes,
        stored_bytes,
        listing: listing_item,
        manifest: manifest_item,
        restorable: false,
        parent: parent.map(|p| p.id),
    };
    let attrs = serde_json::to_value(&record).expect("a record serializes");
    w.put_record(&record_name(&opts.database, &id), KIND_BACKUP, attrs)
        .await?;
    w.commit().await?;
    Ok(record)
}

/// A new backup id: the UTC time, unique among this database's backups.
async fn new_id(repo: &Repository, db: &str) -> Result<String, BackupError> {
    loop {
        let id = Timestamp::now().strftime("%Y%m%dT%H%M%SZ").to_string();
        if repo.catalog().latest_item(&record_name(db, &id))?.is_none()
            && repo.catalog().items(&files_prefix(db, &id))?.is_empty()
        {
            return Ok(id);
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

async fn join_store(store: StoreTask) -> Result<(Writer, u64), BackupError> {
    match store.await {
        Ok(r) => Ok(r?),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(BackupError::Protocol(format!("the store task ended: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(checkpoint: Checkpoint, max_rate_kb: Option<u32>) -> BackupOptions {
        BackupOptions {
            database: "main".into(),
            conninfo: ConnInfo::parse_with("host=/tmp user=u", &BTreeMap::<&str, &str>::new())
                .expect("conninfo"),
            label: "pitr's backup".into(),
            checkpoint,
            max_rate_kb,
            manifest_checksums: ManifestChecksums::default(),
            incremental_max_chain: 0,
        }
    }

    #[test]
    fn the_command_per_major() {
        let fast = options(Checkpoint::Fast, Some(1024));
        assert_eq!(
            base_backup_command(14, &fast),
            "BASE_BACKUP LABEL 'pitr''s backup' PROGRESS FAST NOWAIT MAX_RATE 1024 \
             MANIFEST 'yes' MANIFEST_CHECKSUMS 'CRC32C'"
        );
        let spread = options(Checkpoint::Spread, None);
        assert_eq!(
            base_backup_command(14, &spread),
            "BASE_BACKUP LABEL 'pitr''s backup' PROGRESS NOWAIT MANIFEST 'yes' \
             MANIFEST_CHECKSUMS 'CRC32C'"
        );
        for major in 15..=18 {
            assert_eq!(
                base_backup_command(major, &fast),
                "BASE_BACKUP (LABEL 'pitr''s backup', PROGRESS, CHECKPOINT 'fast', WAIT false, \
                 MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C', MAX_RATE 1024)"
            );
        }
        let sha = BackupOptions {
            manifest_checksums: ManifestChecksums::Sha256,
            ..spread
        };
        assert!(base_backup_command(17, &sha).contains("MANIFEST_CHECKSUMS 'SHA256'"));
    }
}
