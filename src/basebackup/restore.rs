//! Restoring a base backup into an empty directory: directories from the
//! listing, files fetched a few at a time (each verified by the repository
//! reader), tablespaces into a directory the caller names with
//! `pg_tblspc/<oid>` links to them, and the server's `backup_manifest`.
//! Files get the modes and modification times the server sent.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use futures::{StreamExt, TryStreamExt};
use tokio::io::AsyncWriteExt;

use super::record::{BackupRecord, ListingEntry, backups};
use super::{BackupError, files_prefix, local};
use crate::beneath::{Beneath, check_relative};
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

    check_listing(&record, &listing)?;
    if let Some(ts_root) = &ts_root {
        for t in &record.tablespaces {
            tracing::info!(
                "tablespace {} (on the server at {}) goes to {}",
                t.oid,
                t.location,
                ts_root.join(t.oid.to_string()).display()
            );
        }
    }

    // Roots: the data directory, and one directory per tablespace. Below
    // them every name is created without following links.
    let mut roots: HashMap<String, Beneath> = HashMap::new();
    mkdir(target, 0o700)?;
    roots.insert("base".into(), Beneath::open(target).map_err(local(target))?);
    let mut ts_dirs: HashMap<String, PathBuf> = HashMap::new();
    if let Some(ts_root) = &ts_root {
        std::fs::create_dir_all(ts_root).map_err(local(ts_root))?;
        let parent = Beneath::open(ts_root).map_err(local(ts_root))?;
        for t in &record.tablespaces {
            let oid = t.oid.to_string();
            let dir = ts_root.join(&oid);
            check_empty(&dir)?;
            parent.mkdir(&oid, 0o700).map_err(local(&dir))?;
            roots.insert(oid.clone(), Beneath::open(&dir).map_err(local(&dir))?);
            ts_dirs.insert(oid, dir);
        }
    }
    let roots = std::sync::Arc::new(roots);
    let root = |archive: &str| {
        roots.get(archive).ok_or_else(|| BackupError::BadRecord {
            item: record.listing.clone(),
            what: format!("archive {archive:?} is no tablespace of the backup"),
        })
    };
    let place = |e: &ListingEntry| -> Result<PathBuf, BackupError> {
        Ok(root(&e.archive)?.path().join(placed(&e.path)))
    };
    // Directories first, parents before children (the listing is in tar
    // order, which is that).
    for e in listing.iter().filter(|e| e.kind == "dir") {
        root(&e.archive)?
            .mkdir(placed(&e.path), dir_mode(e.mode))
            .map_err(local(&place(e)?))?;
    }
    let base = root("base")?;
    for d in EMPTY_DIRS {
        base.mkdir(d, 0o700).map_err(local(&target.join(d)))?;
    }
    // The only links: `pg_tblspc/<oid>` to where the caller put the
    // tablespace, never to what the listing says.
    for t in &record.tablespaces {
        let oid = t.oid.to_string();
        let rel = format!("pg_tblspc/{oid}");
        let at = target.join(&rel);
        let to = ts_dirs.get(&oid).ok_or_else(|| BackupError::BadRecord {
            item: record.listing.clone(),
            what: format!("tablespace {oid} has no directory"),
        })?;
        if !base.exists(&rel).map_err(local(&at))? {
            base.symlink(&rel, to).map_err(local(&at))?;
        }
    }

    let prefix = files_prefix(db, id);
    let mut jobs = Vec::new();
    for e in listing.iter().filter(|e| e.kind == "file") {
        let name = format!("{prefix}{}/{}", e.archive, e.path);
        let mtime = u64::try_from(e.mtime)
            .ok()
            .map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s));
        jobs.push((
            item(&name)?.clone(),
            e.archive.clone(),
            placed(&e.path).to_owned(),
            file_mode(e.mode),
            mtime,
        ));
    }
    let manifest_size = item(&record.manifest)?.size;
    jobs.push((
        item(&record.manifest)?.clone(),
        "base".to_owned(),
        "backup_manifest".to_owned(),
        0o600,
        None,
    ));
    let (files, bytes) = futures::stream::iter(jobs)
        .map(|(manifest, archive, rel, mode, mtime)| {
            let reader = reader.clone();
            let roots = roots.clone();
            async move {
                let root = roots.get(&archive).ok_or_else(|| BackupError::BadRecord {
                    item: rel.clone(),
                    what: format!("archive {archive:?} is no tablespace of the backup"),
                })?;
                let path = root.path().join(&rel);
                let f = root.create_file(&rel, mode).map_err(local(&path))?;
                let mut f = tokio::fs::File::from_std(f);
                // A write error (disk full) names the file, not "(output)".
                let n = match reader.read_to(&manifest, &mut f).await {
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
        files: files - 1,
        bytes: bytes - manifest_size,
    })
}

/// Where an entry goes beneath its root: its path without the leading
/// `./` that PostgreSQL's tar gives some members (`./pg_wal/...`), which
/// the listing keeps as received (it names the entry's item).
fn placed(path: &str) -> &str {
    path.strip_prefix("./").unwrap_or(path)
}

/// A directory's mode: what the server had, but never more than group
/// read and search (PostgreSQL's own choices are 0700 and 0750).
fn dir_mode(mode: u32) -> u32 {
    (mode & 0o750) | 0o700
}

/// A file's mode: what the server had, but never more than group read
/// (0600 or 0640); no set-id bits, nothing for others.
fn file_mode(mode: u32) -> u32 {
    (mode & 0o640) | 0o600
}

/// Checks every entry of a listing before anything is written: plain
/// relative paths in a known archive, no kind but file, dir and symlink,
/// links only as `pg_tblspc/<oid>` of the backup's own tablespaces, and
/// nothing beneath a link.
fn check_listing(record: &BackupRecord, listing: &[ListingEntry]) -> Result<(), BackupError> {
    let oids: HashSet<String> = record
        .tablespaces
        .iter()
        .map(|t| t.oid.to_string())
        .collect();
    let refuse = |e: &ListingEntry, why: String| BackupError::UnsafeEntry {
        listing: record.listing.clone(),
        entry: format!("{}/{}", e.archive, e.path),
        why,
    };
    let mut links: HashSet<String> = HashSet::new();
    for e in listing {
        if let Some(why) = check_relative(placed(&e.path)) {
            return Err(refuse(e, format!("has a path that {why}")));
        }
        if e.archive != "base" && !oids.contains(&e.archive) {
            return Err(refuse(
                e,
                format!(
                    "belongs to archive {:?}, no tablespace of the backup",
                    e.archive
                ),
            ));
        }
        match e.kind.as_str() {
            "file" | "dir" => {}
            "symlink" => {
                let tablespace = e.archive == "base"
                    && placed(&e.path)
                        .strip_prefix("pg_tblspc/")
                        .is_some_and(|oid| oids.contains(oid));
                if !tablespace {
                    return Err(refuse(
                        e,
                        format!(
                            "is a symbolic link (to {:?}); the only links a restore makes are \
                             pg_tblspc/<oid> for the backup's own tablespaces",
                            e.link
                        ),
                    ));
                }
                links.insert(placed(&e.path).to_owned());
            }
            other => {
                return Err(refuse(
                    e,
                    format!("is of kind {other:?}, not file, dir or symlink"),
                ));
            }
        }
    }
    for t in &record.tablespaces {
        links.insert(format!("pg_tblspc/{}", t.oid));
    }
    for e in listing.iter().filter(|e| e.archive == "base") {
        let mut at = placed(&e.path);
        while let Some((parent, _)) = at.rsplit_once('/') {
            if links.contains(parent) {
                return Err(refuse(
                    e,
                    format!("lies beneath the link {parent:?}, which a restore does not follow"),
                ));
            }
            at = parent;
        }
    }
    Ok(())
}
