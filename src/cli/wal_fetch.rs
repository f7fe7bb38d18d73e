//! `pitr wal-fetch`, PostgreSQL's `restore_command`, and the detached
//! prefetcher it starts so the next segments are on disk when replay asks.

use std::path::Path;

use anyhow::Context;
use pitr::config::Config;

use super::exit::Exit;
use super::{CatalogSync, open_repo, postgres_entry};

/// PostgreSQL's `restore_command`: exit 0 with the file in place, exit 1
/// when the repository does not hold it (recovery then knows the WAL ends
/// there), anything else when something is wrong.
pub(super) async fn wal_fetch(
    config: &Config,
    config_path: &Path,
    postgres: Option<&str>,
    file: &str,
    path: &Path,
) -> anyhow::Result<()> {
    let db = postgres_entry(config, postgres)?;
    let wal_name = file.len() == 24 && file.bytes().all(|b| b.is_ascii_hexdigit());
    let history = file.len() == 16
        && file.ends_with(".history")
        && file[..8].bytes().all(|b| b.is_ascii_hexdigit());
    if !wal_name && !history {
        // Backup history files and anything else: pitr stores none.
        return Err(Exit::NotPossible(format!(
            "{file} is not a WAL segment or timeline history file; pitr stores none such"
        ))
        .into());
    }
    let prefetch = pitr::wal::Prefetch::new(&config.repository.state_dir, &db.name);
    if wal_name
        && prefetch
            .take(file, path)
            .with_context(|| format!("cannot move the prefetched {file} to {}", path.display()))?
    {
        spawn_prefetcher(config_path, &db.name, file);
        return Ok(());
    }
    let repo = open_repo(config, CatalogSync::AsOpened).await?;
    let store = pitr::wal::WalStore::new(repo, &db.name);
    match store.fetch_to(file, path).await? {
        Some(found) if found.partial => {
            let end = found.attrs.map(|a| a.end).unwrap_or_default();
            eprintln!(
                "pitr wal-fetch: served {file} from a partial segment ending at {end} \
                 (the rest reads as end of WAL)"
            );
            Ok(())
        }
        Some(_) => {
            if wal_name {
                spawn_prefetcher(config_path, &db.name, file);
            }
            Ok(())
        }
        None => Err(Exit::NotPossible(format!(
            "{file} is not in the repository of [[postgres]] {:?}",
            db.name
        ))
        .into()),
    }
}

/// How many segments a prefetcher fetches ahead of replay.
const PREFETCH_SEGMENTS: usize = 4;

/// Starts a detached `pitr wal-fetch --prefetch-only` for the segments after
/// `file`. PostgreSQL waits only for this process, not for the prefetcher; a
/// prefetcher that cannot start costs speed, never correctness.
fn spawn_prefetcher(config_path: &Path, database: &str, file: &str) {
    use std::os::unix::process::CommandExt;

    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let spawned = std::process::Command::new(exe)
        .arg("wal-fetch")
        .arg("-c")
        .arg(config_path)
        .args(["--postgres", database, "--prefetch-only", file, "-"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        // Its own process group: a signal to the restore_command's group
        // does not reach it, and it outlives this process.
        .process_group(0)
        .spawn();
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the WAL prefetcher");
    }
}

/// `pitr wal-fetch --prefetch-only`: the spool filled with the segments
/// after `file`.
pub(super) async fn prefetch_fill(
    config: &Config,
    postgres: Option<&str>,
    file: &str,
) -> anyhow::Result<()> {
    let db = postgres_entry(config, postgres)?;
    let repo = open_repo(config, CatalogSync::AsOpened).await?;
    let store = pitr::wal::WalStore::new(repo, &db.name);
    pitr::wal::Prefetch::new(&config.repository.state_dir, &db.name)
        .fill(&store, file, PREFETCH_SEGMENTS)
        .await?;
    Ok(())
}
