//! pgBackRest as the server's `archive_command`: configuration, stanzas,
//! and the archiver's state.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::common::pg::{Cluster, run_checked};
use crate::contender::Contender;
use crate::{Bench, CATCH_UP, INTERRUPTED, ZSTD_LEVEL};

/// pgBackRest's files for `contender`, in the cluster's dir (the server's
/// user runs `archive-push` and must write there).
pub fn pgbackrest_dir(bench: &Bench, contender: Contender) -> PathBuf {
    bench.cluster.dir().join(contender.key())
}

pub fn archiver_time_file(bench: &Bench, contender: Contender) -> PathBuf {
    pgbackrest_dir(bench, contender).join("archive-push.time")
}

/// `archive_command`: `archive-push` under GNU time, which appends
/// `elapsed maxrss_kB user system` per run. `%%` is a literal `%` there.
pub fn archive_command(bench: &Bench, contender: Contender) -> String {
    let dir = pgbackrest_dir(bench, contender);
    format!(
        "{} -a -o {} -f '%%e %%M %%U %%S' {} --config={} --stanza=bench archive-push %p",
        bench
            .time
            .as_deref()
            .unwrap_or(Path::new("/usr/bin/time"))
            .display(),
        archiver_time_file(bench, contender).display(),
        bench
            .pgbackrest
            .as_deref()
            .unwrap_or(Path::new("pgbackrest"))
            .display(),
        dir.join("pgbackrest.conf").display()
    )
}

/// Writes each pgBackRest configuration, creates its stanza, and restarts
/// the server with `archive_mode = on`.
pub async fn enable_archiving(bench: &Bench) -> anyhow::Result<()> {
    let cluster = &bench.cluster;
    let pgbackrest = bench.pgbackrest.as_deref().context("no pgbackrest")?;
    for contender in [Contender::PgBackRest, Contender::PgBackRestAes] {
        let dir = pgbackrest_dir(bench, contender);
        for sub in ["", "repo", "log", "lock", "spool"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
            cluster.give(&d)?;
        }
        let cipher = if contender == Contender::PgBackRestAes {
            format!(
                "repo1-cipher-type=aes-256-cbc\nrepo1-cipher-pass={}\n",
                hex::encode(rand::random::<[u8; 24]>())
            )
        } else {
            String::new()
        };
        let conf = dir.join("pgbackrest.conf");
        std::fs::write(
            &conf,
            format!(
                "[global]\n\
                 repo1-path={repo}\n\
                 {cipher}\
                 lock-path={lock}\n\
                 log-path={log}\n\
                 spool-path={spool}\n\
                 log-level-console=warn\n\
                 log-level-stderr=warn\n\
                 log-level-file=off\n\
                 compress-type=zst\n\
                 compress-level={ZSTD_LEVEL}\n\
                 archive-async=n\n\
                 \n\
                 [bench]\n\
                 pg1-path={data}\n\
                 pg1-port={port}\n\
                 pg1-socket-path={socket}\n",
                repo = dir.join("repo").display(),
                lock = dir.join("lock").display(),
                log = dir.join("log").display(),
                spool = dir.join("spool").display(),
                data = cluster.data_dir().display(),
                port = cluster.port(),
                socket = cluster.dir().display(),
            ),
        )
        .with_context(|| format!("write {}", conf.display()))?;
        cluster.give(&conf)?;
        let time_file = archiver_time_file(bench, contender);
        std::fs::write(&time_file, "").context("create the time file")?;
        cluster.give(&time_file)?;
        run_checked(
            cluster
                .command(pgbackrest)
                .arg(format!("--config={}", conf.display()))
                .args(["--stanza=bench", "stanza-create"]),
            "pgbackrest stanza-create",
        )?;
    }
    // With archive_mode off until now, no old segment waits for archiving;
    // the first command is pgBackRest's (the stanza exists).
    let db = cluster.connect().await?;
    // ALTER SYSTEM refuses to run in a transaction: one statement per call.
    db.batch_execute("ALTER SYSTEM SET archive_mode = 'on'")
        .await
        .context("ALTER SYSTEM SET archive_mode")?;
    set_archive_command(&db, &archive_command(bench, Contender::PgBackRest)).await?;
    drop(db);
    eprintln!("wal_stream: restarting the server with archive_mode = on");
    cluster.restart()
}

pub async fn set_archive_command(db: &tokio_postgres::Client, command: &str) -> anyhow::Result<()> {
    db.batch_execute(&format!(
        "ALTER SYSTEM SET archive_command = '{}'",
        command.replace('\'', "''")
    ))
    .await
    .context("ALTER SYSTEM SET archive_command")
}

/// Waits (bounded) until no segment waits for `archive_command`.
pub async fn wait_archiver_idle(cluster: &Cluster) -> anyhow::Result<()> {
    let status = cluster.data_dir().join("pg_wal").join("archive_status");
    let deadline = Instant::now() + CATCH_UP;
    loop {
        anyhow::ensure!(!INTERRUPTED.load(Ordering::Relaxed), "interrupted");
        let ready = std::fs::read_dir(&status)
            .with_context(|| format!("read {}", status.display()))?
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().ends_with(".ready"));
        if !ready {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "segments still wait for archive-push after {CATCH_UP:?}:\n{}",
            cluster.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `: archive_command failed for X` when pg_stat_archiver says so.
pub async fn archiver_failure(db: &tokio_postgres::Client) -> String {
    let row = db
        .query_opt(
            "SELECT failed_count, last_failed_wal FROM pg_stat_archiver WHERE failed_count > 0",
            &[],
        )
        .await
        .ok()
        .flatten();
    match row {
        Some(r) => format!(
            ": archive_command failed {} times, last for {} (see the server log)",
            r.get::<_, i64>(0),
            r.get::<_, Option<String>>(1).unwrap_or_default()
        ),
        None => String::new(),
    }
}
