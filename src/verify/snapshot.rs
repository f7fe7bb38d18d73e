//! The test restore of a snapshot source: a snapshot picked at a random
//! time between the oldest and the newest, read back into a scratch
//! directory (every chunk decrypted and its id recomputed, the whole
//! compared with its manifest: invariant 3, docs/ARCHITECTURE.md); then,
//! for a `[[command]]` with `verify`, that program run on the copy with
//! `{file}` replaced by its path, and for an `[[infisical]]` source the copy
//! parsed as the canonical export; then the directory is removed.

use super::{DatabaseKind, Failure, Scratch, VerifyReport, random_time};
use crate::config::{CommandConfig, Config, VERIFY_FILE_PLACEHOLDER};
use crate::repo::Repository;
use crate::snapshot::{Point, SnapshotError, Source};

/// Why `name` has nothing to test-restore yet (no snapshot stored), or
/// `None` when it has.
pub(super) fn nothing_to_restore(repo: &Repository, name: &str) -> Option<String> {
    match crate::snapshot::list(&repo.catalog(), name) {
        Ok(all) if all.is_empty() => {
            Some("no snapshot stored yet (the snapshot check reports that)".to_owned())
        }
        _ => None,
    }
}

/// Reads a snapshot of `source` picked at a random time back into a
/// scratch directory, checks it as its kind allows, and removes it; fills
/// `report`.
pub(super) async fn test_restore(
    config: &Config,
    repo: &Repository,
    source: &Source,
    report: &mut VerifyReport,
) -> Result<(), Failure> {
    let name = source.name();
    let all = crate::snapshot::list(&repo.catalog(), name).map_err(explain)?;
    let point = match (all.first(), all.last()) {
        (Some(a), Some(b)) if b.attrs.time > a.attrs.time => {
            Point::At(random_time(a.attrs.time, b.attrs.time))
        }
        _ => Point::Latest,
    };
    report.target = Some(point.to_string());
    let snap = crate::snapshot::pick(&repo.catalog(), name, &point).map_err(explain)?;
    report.backup = Some(snap.item.clone());
    let kind = DatabaseKind::of_source(source.kind());
    let scratch = Scratch::create(&config.verify.scratch_dir, kind, name)?;
    let file = scratch.path().join("snapshot");
    let result = async {
        let mut out = tokio::fs::File::create(&file)
            .await
            .map_err(|e| format!("{}: {e}", file.display()))?;
        let n = crate::snapshot::read_to(repo, &snap, &mut out)
            .await
            .map_err(explain)?;
        drop(out);
        report.reached = Some(format!("snapshot {} ({n} bytes)", snap.id));
        report.checks.push(format!(
            "read back {n} bytes: every chunk decrypted and checked, the whole matches its manifest"
        ));
        match source {
            Source::Command(cmd) => {
                if let Some(check) = run_verify(cmd, scratch.path(), &file).await? {
                    report.checks.push(check);
                }
            }
            Source::Infisical(_) => {
                let bytes = tokio::fs::read(&file)
                    .await
                    .map_err(|e| format!("{}: {e}", file.display()))?;
                let export = crate::snapshot::infisical::Snapshot::from_json(&bytes)
                    .map_err(|e| format!("the snapshot is not an Infisical export: {e}"))?;
                report.checks.push(format!(
                    "parsed as an Infisical export: {} secrets in {} environments",
                    export.secrets.len(),
                    export.environments.len()
                ));
            }
        }
        Ok::<(), String>(())
    }
    .await;
    let removed = scratch.remove();
    match (result, removed) {
        (Err(e), _) | (Ok(()), Some(e)) => Err(Failure::Other(e)),
        (Ok(()), None) => Ok(()),
    }
}

/// Runs a `[[command]]`'s `verify` (if any) on the copy at `file`; the
/// check it passed, for the report.
async fn run_verify(
    cmd: &CommandConfig,
    dir: &std::path::Path,
    file: &std::path::Path,
) -> Result<Option<String>, String> {
    let Some(verify) = &cmd.verify else {
        return Ok(None);
    };
    give_to_user(cmd, dir, file)?;
    let path = file.display().to_string();
    let argv: Vec<String> = verify
        .iter()
        .map(|a| a.replace(VERIFY_FILE_PLACEHOLDER, &path))
        .collect();
    crate::snapshot::command::run_check(cmd, &argv)
        .await
        .map_err(|e| format!("verify: {e}"))?;
    Ok(Some(format!("verify ({}) exited 0", verify[0])))
}

/// Lets `verify` read the copy when it runs as the entry's `user` (pitr
/// root): the scratch run directory and the file become that user's.
fn give_to_user(
    cmd: &CommandConfig,
    dir: &std::path::Path,
    file: &std::path::Path,
) -> Result<(), String> {
    let Some(user) = &cmd.user else { return Ok(()) };
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let Some(u) = nix::unistd::User::from_name(user).ok().flatten() else {
        return Err(format!(
            "[[command]] {:?}: user {user:?} does not exist on this host",
            cmd.name
        ));
    };
    for p in [dir, file] {
        nix::unistd::chown(p, Some(u.uid), Some(u.gid))
            .map_err(|e| format!("cannot give {} to {user:?}: {e}", p.display()))?;
    }
    Ok(())
}

/// A snapshot error as a report's error; a damaged object gets the repair.
fn explain(e: SnapshotError) -> String {
    match &e {
        SnapshotError::Repo(_) => format!(
            "{e}. Run `pitr verify` to list every damaged object and `pitr repair` to copy good \
             copies from another destination"
        ),
        _ => e.to_string(),
    }
}
