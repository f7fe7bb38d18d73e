//! `pitr backup`: one base backup now.

use pitr::config::Config;

use super::exit::Exit;
use super::{CatalogSync, mib, open_repo, postgres_entry};

/// `pitr backup`: one base backup now, then waits (bounded) until its WAL
/// is stored and marks it restorable. WAL is streamed by `pitr run`, which
/// holds the replication slot; this command does not stream itself.
pub(super) async fn backup(
    config: &Config,
    postgres: Option<&str>,
    checkpoint: pitr::pg::Checkpoint,
    max_rate_kb: Option<u32>,
    wait_wal: std::time::Duration,
) -> anyhow::Result<()> {
    use std::io::IsTerminal;

    let db = postgres_entry(config, postgres)?;
    let conninfo = pitr::wiring::conninfo(db).map_err(|e| {
        Exit::Usage(format!(
            "{}: [[postgres]] {:?} conninfo: {e}",
            config.path.display(),
            db.name
        ))
    })?;
    let repo = open_repo(config, CatalogSync::AsOpened).await?;
    // A long backup must see marks of a retention run elsewhere, as the
    // sidecar's writers do (docs/RETENTION.md).
    repo.refresh_catalog_every(config.retention.gc_grace / 2);
    let refresh = {
        let repo = repo.clone();
        tokio::spawn(async move { repo.keep_catalog_fresh(std::future::pending()).await })
    };
    let options = pitr::basebackup::BackupOptions {
        database: db.name.clone(),
        conninfo,
        label: format!("pitr backup of {}", db.name),
        checkpoint,
        // The flag wins over the entry's `max_rate`.
        max_rate_kb: max_rate_kb.or(db.max_rate_kb),
        incremental_max_chain: db.incremental_max_chain,
        manifest_checksums: db.manifest_checksums,
    };
    let (tx, mut rx) = tokio::sync::watch::channel(pitr::basebackup::BackupProgress::default());
    // A bar (bytes, rate, ETA) only for a person watching a terminal.
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {bytes}/{total_bytes} {bar:30} {binary_bytes_per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let reporter = {
        let bar = bar.clone();
        tokio::spawn(async move {
            let Some(bar) = bar else { return };
            while rx.changed().await.is_ok() {
                let p = rx.borrow_and_update().clone();
                if let Some(total) = p.total {
                    bar.set_length(total.max(p.done));
                }
                bar.set_position(p.done);
                bar.set_message(format!("{} files", p.files));
            }
        })
    };
    let taken = pitr::basebackup::take(&repo, &options, &tx).await;
    refresh.abort();
    drop(tx);
    let _ = reporter.await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let record = taken?;
    println!(
        "Base backup {} of [[postgres]] {:?}: {} files, {} from server version {}, WAL {} to {} \
         on timeline {}; {} of new data stored (the rest was already in the repository).",
        record.id,
        db.name,
        record.files,
        mib(record.bytes),
        record.server_version,
        record.start_lsn,
        record.end_lsn,
        record.end_timeline,
        mib(record.stored_bytes)
    );
    if let Some(parent) = &record.parent {
        println!("It is incremental on {parent}: a restore combines it with that backup's chain.");
    }
    println!(
        "Waiting up to {} s for the WAL up to {} to be stored by `pitr run`...",
        wait_wal.as_secs(),
        record.end_lsn
    );
    pitr::basebackup::wait_restorable(
        &repo,
        &db.name,
        &record.id,
        wait_wal,
        std::time::Duration::from_secs(1),
    )
    .await?;
    println!(
        "Base backup {} is restorable: the WAL from {} to {} is stored.",
        record.id, record.start_lsn, record.end_lsn
    );
    Ok(())
}
