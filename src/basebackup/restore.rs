//! Restoring a base backup into an empty directory: directories from the
//! listing, files fetched a few at a time (each verified by the repository
//! reader), tablespaces into a directory the caller names with
//! `pg_tblspc/<oid>` links to them, and the server's `backup_manifest`.
//! Files get the modes and modification times the server sent.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use futures::{StreamExt, TryStreamExt};
use tokio::io::AsyncWriteExt;

use super::combine::{self, Chain, Source};
use super::record::{BackupRecord, ListingEntry, backups};
use super::{BackupError, files_prefix, local};
use crate::repo::{Manifest, RepoError, Repository};

/// Directories a data directory needs that a base backup may lack (their
/// contents are never backed up).
const EMPTY_DIRS: &[&str] = &[
    "pg_wal",
    "pg_wal/archive_status",
    "pg_replslot",
    "pg_stat_tmp",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_subtrans",
    "pg_dynshmem",
    "pg_commit_ts",
    "pg_logical",
    "pg_logical/snapshots",
    "pg_logical/mappings",
    "pg_tblspc",
    "pg_twophase",
    "pg_stat",
];

/// How to restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Where tablespaces go: `<dir>/<oid>` each. Required when the backup
    /// has tablespaces.
    pub tablespace_dir: Option<PathBuf>,
    /// Files fetched at once.
    pub parallel: usize,
    /// Bytes of files written so far, for a progress bar.
    pub progress: Option<tokio::sync::watch::Sender<u64>>,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            tablespace_dir: None,
            parallel: 4,
            progress: None,
        }
    }
}

/// What a restore wrote.
#[derive(Debug, Clone)]
pub struct RestoreSummary {
    /// The backup's record.
    pub record: BackupRecord,
    /// Files written.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Fails unless `dir` is missing or an empty directory.
fn check_empty(dir: &Path) -> Result<(), BackupError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(BackupError::TargetNotEmpty {
                path: dir.to_owned(),
            }),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            Err(BackupError::TargetNotEmpty {
                path: dir.to_owned(),
            })
        }
        Err(e) => Err(local(dir)(e)),
    }
}

fn mkdir(path: &Path, mode: u32) -> Result<(), BackupError> {
    match std::fs::create_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => {}
        Err(e) => return Err(local(path)(e)),
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(local(path))
}

/// Restores backup `id` of `db` into `target` (missing or empty). The
/// result still needs the WAL from the backup's start to its end LSN to be
/// consistent.
pub async fn restore(
    repo: &Repository,
    db: &str,
    id: &str,
    target: &Path,
    opts: &RestoreOptions,
) -> Result<RestoreSummary, BackupError> {
    let record = backups(repo, db)?
        .into_iter()
        .find(|b| b.record.id == id)
        .map(|b| b.record)
        .ok_or_else(|| BackupError::NotFound {
            db: db.to_owned(),
            id: id.to_owned(),
        })?;
    check_empty(target)?;
    let ts_root = match (&opts.tablespace_dir, record.tablespaces.is_empty()) {
        (_, true) => None,
        (Some(d), false) => Some(d.clone()),
        (None, false) => {
            return Err(BackupError::NoTablespaceDir {
                id: id.to_owned(),
                oids: record
                    .tablespaces
                    .iter()
                    .map(|t| t.oid.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    };
    let reader = repo.reader()?;
    let items: HashMap<String, Manifest> = repo
        .catalog()
        .items(&files_prefix(db, id))?
        .into_iter()
        .map(|i| (i.name, i.manifest))
        .collect();
    let item = |name: &str| {
        items.get(name).ok_or_else(|| BackupError::BadRecord {
            item: name.to_owned(),
            what: "the backup record names it, but the catalog does not hold it".into(),
        })
    };
    let mut listing_bytes = Vec::new();
    reader
        .read_to(item(&record.listing)?, &mut listing_bytes)
        .await?;
    let listing: Vec<ListingEntry> =
        serde_json::from_slice(&listing_bytes).map_err(|e| BackupError::BadRecord {
            item: record.listing.clone(),
            what: e.to_string(),
        })?;

    // Roots: the data directory, and one directory per tablespace.
    let mut roots: HashMap<String, PathBuf> = HashMap::new();
    mkdir(target, 0o700)?;
    roots.insert("base".into(), target.to_owned());
    if let Some(ts_root) = &ts_root {
        std::fs::create_dir_all(ts_root).map_err(local(ts_root))?;
        for t in &record.tablespaces {
            let dir = ts_root.join(t.oid.to_string());
            check_empty(&dir)?;
            mkdir(&dir, 0o700)?;
            roots.insert(t.oid.to_string(), dir);
        }
    }
    let root = |archive: &str| {
        roots.get(archive).ok_or_else(|| BackupError::BadRecord {
            item: record.listing.clone(),
            what: format!("archive {archive:?} is no tablespace of the backup"),
        })
    };
    // Directories first, parents before children (the listing is in tar
    // order, which is that).
    for e in listing.iter().filter(|e| e.kind == "dir") {
        mkdir(&root(&e.archive)?.join(&e.path), e.mode | 0o700)?;
    }
    for d in EMPTY_DIRS {
        mkdir(&target.join(d), 0o700)?;
    }
    // Tablespace links point at where the caller put them, not at the
    // server's location; other symlinks are kept as they were.
    for e in listing.iter().filter(|e| e.kind == "symlink") {
        let at = root(&e.archive)?.join(&e.path);
        let to = match (e.archive.as_str(), e.path.strip_prefix("pg_tblspc/")) {
            ("base", Some(oid)) if roots.contains_key(oid) => roots[oid].clone(),
            _ => PathBuf::from(&e.link),
        };
        std::os::unix::fs::symlink(&to, &at).map_err(local(&at))?;
    }
    for t in &record.tablespaces {
        let at = target.join("pg_tblspc").join(t.oid.to_string());
        if at.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(root(&t.oid.to_string())?, &at).map_err(local(&at))?;
        }
    }

    let prefix = files_prefix(db, id);
    // An incremental backup is combined with its chain as it is written.
    let chain = Chain::load(repo, db, &record)?;
    let mut jobs = Vec::new();
    for e in listing.iter().filter(|e| e.kind == "file") {
        let (path, source) = match &chain {
            Some(chain) => chain.source(e)?,
            None => {
                let name = format!("{prefix}{}/{}", e.archive, e.path);
                (e.path.clone(), Source::Item(item(&name)?.clone()))
            }
        };
        let mtime = u64::try_from(e.mtime)
            .ok()
            .map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s));
        jobs.push((source, root(&e.archive)?.join(&path), e.mode, mtime));
    }
    // The server's manifest of an incremental backup lists its
    // INCREMENTAL.* files, which a combined directory does not have: it is
    // written for full backups only (pg_verifybackup checks those).
    let manifest_size = match &chain {
        Some(_) => 0,
        None => {
            jobs.push((
                Source::Item(item(&record.manifest)?.clone()),
                target.join("backup_manifest"),
                0o600,
                None,
            ));
            item(&record.manifest)?.size
        }
    };
    let (files, bytes) = futures::stream::iter(jobs)
        .map(|(source, path, mode, mtime)| {
            let reader = reader.clone();
            async move {
                let mut f = tokio::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode | 0o600)
                    .open(&path)
                    .await
                    .map_err(local(&path))?;
                // A write error (disk full) names the file, not "(output)".
                let n = match combine::write(&reader, &source, &mut f).await {
                    Ok(n) => n,
                    Err(RepoError::Local { source, .. }) => return Err(local(&path)(source)),
                    Err(e) => return Err(e.into()),
                };
                f.flush().await.map_err(local(&path))?;
                if let Some(mtime) = mtime {
                    let f = f.into_std().await;
                    f.set_modified(mtime).map_err(local(&path))?;
                    f.sync_all().map_err(local(&path))?;
                } else {
                    f.sync_all().await.map_err(local(&path))?;
                }
                Ok::<u64, BackupError>(n)
            }
        })
        .buffer_unordered(opts.parallel.max(1))
        .inspect_ok(|n| {
            if let Some(p) = &opts.progress {
                p.send_modify(|done| *done += n);
            }
        })
        .try_fold((0u64, 0u64), |(f, b), n| async move { Ok((f + 1, b + n)) })
        .await?;
    Ok(RestoreSummary {
        record,
        files: files - u64::from(chain.is_none()),
        bytes: bytes - manifest_size,
    })
}
