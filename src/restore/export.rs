//! `pitr export`: the newest restorable set of each database, copied out of
//! the repository into a directory laid out as an `fs` destination, still
//! encrypted. What "restorable set" means is the planner's business, so it
//! is decided here: for PostgreSQL the plan of a `--latest` restore (its
//! base backup and every WAL and history file after it), for SQLite the
//! newest snapshot and every page set after it, for a snapshot source its
//! newest snapshot. The copying itself is [`Repository::export_items`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::plan::{PlanError, plan};
use super::target::Target;
use crate::repo::{ExportReport, RepoError, Repository};
use crate::ship::{Destination, FsDestination};

/// Why an export did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The target directory holds something already.
    #[error(
        "{dir} is not empty: `pitr export` writes a complete repository into an empty or new \
         directory. Remove its contents or choose another directory"
    )]
    NotEmpty {
        /// The directory.
        dir: PathBuf,
    },
    /// The target directory cannot be read or made.
    #[error("{dir}: {source}")]
    Local {
        /// The directory.
        dir: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A database has nothing restorable to export.
    #[error(
        "[[sqlite]] {name:?} has no snapshot in the repository yet: nothing restorable to export"
    )]
    NoSnapshot {
        /// The `[[sqlite]]` entry.
        name: String,
    },
    /// A snapshot source has no snapshot yet.
    #[error(
        "snapshot source {name:?} has no snapshot in the repository yet: nothing to export \
         (`pitr backup --snapshot {name}` takes one)"
    )]
    NoSourceSnapshot {
        /// The `[[command]]` or `[[infisical]]` entry.
        name: String,
    },
    /// Nothing was selected.
    #[error(
        "nothing to export: the config has no [[postgres]], [[sqlite]], [[command]] or \
         [[infisical]] entry"
    )]
    NothingSelected,
    /// Planning a PostgreSQL database's newest restore failed.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Reading or copying failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl ExportError {
    /// Whether the repository simply holds nothing restorable yet (exit 1),
    /// as opposed to a failure.
    pub fn is_not_possible(&self) -> bool {
        match self {
            ExportError::NoSnapshot { .. } | ExportError::NoSourceSnapshot { .. } => true,
            ExportError::Plan(p) => p.is_not_possible(),
            _ => false,
        }
    }
}

/// Which databases to export.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// `[[postgres]]` entry names.
    pub postgres: Vec<String>,
    /// `[[sqlite]]` entry names.
    pub sqlite: Vec<String>,
    /// Snapshot source (`[[command]]`, `[[infisical]]`) names.
    pub snapshots: Vec<String>,
}

/// The names of the items the newest restorable set of each selected
/// database needs.
pub async fn restorable_set(
    repo: &Repository,
    selection: &Selection,
) -> Result<BTreeSet<String>, ExportError> {
    if selection.postgres.is_empty()
        && selection.sqlite.is_empty()
        && selection.snapshots.is_empty()
    {
        return Err(ExportError::NothingSelected);
    }
    let mut names = BTreeSet::new();
    for db in &selection.postgres {
        let plan = plan(repo, db, &Target::Latest, None).await?;
        let record = crate::basebackup::record_name(db, &plan.backup.id);
        // The marker exists when `pitr backup` or the schedule saw the
        // backup's WAL stored; the planner may choose a backup without it.
        let marker = format!("{record}.restorable");
        if repo
            .catalog()
            .latest_item(&marker)
            .map_err(RepoError::from)?
            .is_some()
        {
            names.insert(marker);
        }
        names.insert(record);
        // An incremental backup restores from its whole chain.
        for id in
            crate::basebackup::chain_ids(repo, db, &plan.backup.id).map_err(PlanError::from)?
        {
            names.insert(crate::basebackup::record_name(db, &id));
            let files = repo
                .catalog()
                .items(&crate::basebackup::files_prefix(db, &id))
                .map_err(RepoError::from)?;
            names.extend(files.into_iter().map(|i| i.name));
        }
        names.extend(plan.files().map(|f| f.item.clone()));
    }
    for name in &selection.sqlite {
        let captures =
            crate::sqlite::store::captures(repo, name).map_err(|e| RepoError::Malformed {
                object: "(catalog)".into(),
                what: e.to_string(),
            })?;
        let Some(start) = captures.iter().rposition(|c| c.snapshot) else {
            return Err(ExportError::NoSnapshot { name: name.clone() });
        };
        names.extend(captures[start..].iter().map(|c| c.item.name.clone()));
    }
    for name in &selection.snapshots {
        use crate::snapshot::{Point, SnapshotError, pick};
        match pick(&repo.catalog(), name, &Point::Latest) {
            Ok(snap) => names.insert(snap.item),
            Err(SnapshotError::NotFound { .. }) => {
                return Err(ExportError::NoSourceSnapshot { name: name.clone() });
            }
            Err(e) => {
                return Err(RepoError::Malformed {
                    object: "(catalog)".into(),
                    what: e.to_string(),
                }
                .into());
            }
        };
    }
    Ok(names)
}

/// Exports the newest restorable set of `selection`, read from `from`,
/// into `dir` (created when missing; must be empty), laid out as an `fs`
/// destination: a config whose only destination is `kind = "fs"`,
/// `path = dir` restores from it with the identity.
pub async fn export(
    repo: &Repository,
    from: &dyn Destination,
    dir: &Path,
    selection: &Selection,
) -> Result<ExportReport, ExportError> {
    let local = |source| ExportError::Local {
        dir: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(local)?;
    if std::fs::read_dir(dir).map_err(local)?.next().is_some() {
        return Err(ExportError::NotEmpty {
            dir: dir.to_owned(),
        });
    }
    let names = restorable_set(repo, selection).await?;
    let to = FsDestination::new("export", dir);
    Ok(repo.export_items(from, &to, &names).await?)
}
