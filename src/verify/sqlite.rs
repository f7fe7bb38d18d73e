//! The SQLite test restore: a random time inside the restore window,
//! restored into a scratch directory (the restore itself refuses a result
//! whose checksum or `PRAGMA integrity_check` fails), both checks run again
//! on the file as it lies on disk, then the directory is removed.

use super::{DatabaseKind, Failure, Scratch, VerifyReport, random_time};
use crate::config::Config;
use crate::repo::Repository;
use crate::restore::sqlite::{SqliteRestoreError, file_checksum, integrity_check};
use crate::restore::{Target, pg_time};

/// Why `name` has nothing to test-restore yet (no capture stored), or
/// `None` when it has; a catalog that cannot be read is left for the test
/// restore itself to report.
pub(super) fn nothing_to_restore(repo: &Repository, name: &str) -> Option<String> {
    match crate::restore::sqlite::window(repo, name) {
        Ok(w) if w.earliest.is_none() => {
            Some("no capture stored yet (the watcher check reports that)".to_owned())
        }
        _ => None,
    }
}

/// Restores `name` to a random time into a scratch directory, checks it and
/// removes it; fills `report` as it goes.
pub(super) async fn test_restore(
    config: &Config,
    repo: &Repository,
    name: &str,
    report: &mut VerifyReport,
) -> Result<(), Failure> {
    let window = crate::restore::sqlite::window(repo, name)?;
    let target = match (window.earliest, window.latest) {
        (Some(from), Some(to)) if to > from => Target::Time(random_time(from, to)),
        (Some(_), _) => Target::Latest,
        _ => {
            return Err(Failure::Other(format!(
                "nothing is stored for [[sqlite]] {name:?}, so nothing can be test-restored: \
                 `pitr run` takes its first snapshot when it starts watching the file"
            )));
        }
    };
    report.target = Some(target.describe());
    let plan = crate::restore::sqlite::plan(repo, name, &target)?;
    report.backup = plan.captures.first().map(|c| c.item.clone());
    report.wal_files = plan.captures.len();
    let scratch = Scratch::create(&config.verify.scratch_dir, DatabaseKind::Sqlite, name)?;
    let file = scratch.path().join("restored.db");
    let result = async {
        let restored = crate::restore::sqlite::restore(repo, &plan, &file, false)
            .await
            .map_err(explain)?;
        report.reached = Some(format!(
            "state at {} ({} captures, {} bytes)",
            pg_time(plan.at),
            restored.captures,
            restored.bytes
        ));
        // Again on the file as it lies on disk, independently of the
        // restore's own checks.
        let sum =
            file_checksum(&file, plan.page_size).map_err(|e| format!("{}: {e}", file.display()))?;
        let sum = crate::sqlite::pageset::checksum_text(sum);
        if sum != plan.checksum {
            return Err(format!(
                "the restored file's checksum {sum} differs from the recorded {}: run `pitr \
                 verify` and `pitr repair`",
                plan.checksum
            ));
        }
        report
            .checks
            .push(format!("checksum {sum}: matches the catalog"));
        integrity_check(&file).map_err(explain)?;
        report.checks.push("PRAGMA integrity_check: ok".to_owned());
        Ok(())
    }
    .await;
    let removed = scratch.remove();
    match (result, removed) {
        (Err(e), _) | (Ok(()), Some(e)) => Err(Failure::Other(e)),
        (Ok(()), None) => Ok(()),
    }
}

/// A restore error as a report's error; a damaged object gets the repair.
fn explain(e: SqliteRestoreError) -> String {
    match &e {
        SqliteRestoreError::Repo(_)
        | SqliteRestoreError::Corrupt { .. }
        | SqliteRestoreError::Checksum { .. }
        | SqliteRestoreError::Integrity(_) => format!(
            "{e}. Run `pitr verify` to list every damaged object and `pitr repair` to copy good \
             copies from another destination"
        ),
        _ => e.to_string(),
    }
}
