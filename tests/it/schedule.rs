//! The base-backup schedule inside `pitr run`, the binary as an operator
//! runs it against real clusters: a seconds-granularity cron schedule takes
//! restorable backups while WAL streams; the WAL-size rule takes one after
//! enough WAL; a bad cron expression is a config error; a backup cut by a
//! server restart is retried and the stream goes on.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pitr::basebackup::{self, BackupInfo};
use pitr::pg::Lsn;
use pitr::repo::{RepoOptions, Repository};
use pitr::wal::WalStore;

use crate::support::PgCluster;
use crate::support::TestRepo;

/// `pitr run` on a test repository, its log in a file.
struct Sidecar {
    repo: TestRepo,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Sidecar {
    /// The config of `TestRepo::write_config` for `pg`, with `extra` lines
    /// added to its `[[postgres]]` entry.
    fn new(repo: TestRepo, pg: &PgCluster, extra: &str) -> Sidecar {
        let config = repo.write_config(&[("main", &pg.conninfo("postgres"))]);
        // write_config turns the schedule off; `extra` sets it.
        let mut text = std::fs::read_to_string(&config)
            .expect("read config")
            .replace("base_backup = \"off\"\n", "");
        text.push_str(extra);
        text.push('\n');
        std::fs::write(&config, text).expect("write config");
        let log = repo.dir.path().join("pitr-run.log");
        Sidecar {
            repo,
            config,
            log,
            child: None,
        }
    }

    fn start(&mut self) {
        let log = std::fs::File::create(&self.log).expect("create log");
        let child = Command::new(env!("CARGO_BIN_EXE_pitr"))
            .args(["run", "-c"])
            .arg(&self.config)
            .env_remove("PITR_CONFIG")
            .env("PITR_LOG", "pitr=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn pitr run");
        self.child = Some(child);
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test, with the sidecar's log, when `pitr run` exited.
    fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("started");
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("pitr run exited {status}:\n{}", self.log_text());
        }
    }

    /// SIGTERM; `pitr run` must exit 0 within a minute.
    fn terminate(&mut self) {
        let mut child = self.child.take().expect("started");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let status = crate::support::eventually_blocking(
            "pitr run stopped on SIGTERM",
            Duration::from_secs(60),
            || child.try_wait().expect("wait").ok_or("still running"),
        );
        assert!(
            status.success(),
            "pitr run exited {status}:\n{}",
            self.log_text()
        );
    }

    /// A reader of the store with its own catalog, as another process sees
    /// what `pitr run` stored.
    async fn reader(&self) -> Repository {
        let opts = RepoOptions {
            state_dir: self.repo.dir.path().join("reader-state"),
            ..self.repo.opts.clone()
        };
        Repository::open(self.repo.fanout(), opts)
            .await
            .expect("open the store")
    }

    /// Waits (bounded by `secs`) until the store holds at least `n`
    /// restorable backups; returns every backup.
    async fn wait_restorable(
        &mut self,
        reader: &Repository,
        n: usize,
        secs: u64,
    ) -> Vec<BackupInfo> {
        crate::support::eventually(
            format!("{n} restorable backups"),
            Duration::from_secs(secs),
            async || {
                self.assert_running();
                reader.sync_catalog().await.expect("sync catalog");
                let all = basebackup::backups(reader, "main").expect("backups");
                if all.iter().filter(|b| b.restorable).count() >= n {
                    return Ok(all);
                }
                Err(format!("{} recorded:\n{}", all.len(), self.log_text()))
            },
        )
        .await
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn pgbench_init(pg: &PgCluster, scale: u32) {
    pg.pgbench(&["-i", "-q", "-s", &scale.to_string()]);
}

/// The server's flush position.
fn flush_lsn(pg: &PgCluster) -> Lsn {
    pg.psql("SELECT pg_current_wal_flush_lsn()")
        .trim()
        .parse()
        .expect("an LSN")
}

/// Writes about `segments` WAL segments cheaply: a row, then a switch to
/// the next segment, each time.
fn generate_wal(pg: &PgCluster, segments: usize) {
    pg.psql("CREATE TABLE IF NOT EXISTS filler (x int)");
    for i in 0..segments {
        pg.psql(&format!(
            "INSERT INTO filler VALUES ({i}); SELECT pg_switch_wal()"
        ));
    }
}

/// Waits (bounded) until the stored WAL of timeline 1 reaches `lsn`.
async fn wait_wal_stored(side: &mut Sidecar, reader: &Repository, lsn: Lsn) {
    crate::support::eventually(
        format!("WAL up to {lsn} stored"),
        Duration::from_secs(60),
        async || {
            side.assert_running();
            reader.sync_catalog().await.expect("sync catalog");
            let end = WalStore::new(reader.clone(), "main")
                .stored_end(1)
                .expect("stored end")
                .map(|(end, _)| end);
            if end.is_some_and(|e| e >= lsn) {
                return Ok(());
            }
            Err(format!("stored: {end:?}\n{}", side.log_text()))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn pitr_run_takes_restorable_backups_on_a_seconds_schedule() {
    let pg = PgCluster::start();
    // The default checkpoint of a scheduled backup: spread.
    let mut side = Sidecar::new(
        TestRepo::new().await,
        &pg,
        "base_backup = \"*/3 * * * * *\"",
    );
    side.start();
    let reader = side.reader().await;
    let all = side.wait_restorable(&reader, 2, 180).await;
    let restorable: Vec<&BackupInfo> = all.iter().filter(|b| b.restorable).collect();
    for b in &restorable {
        assert_eq!(b.record.label, "pitr scheduled backup of main");
        assert!(b.record.files > 500, "{} files", b.record.files);
    }
    assert!(restorable[1].record.start_lsn > restorable[0].record.end_lsn);

    // The stream went on meanwhile and still does.
    pg.psql("CREATE TABLE after_backups AS SELECT 1 AS x");
    let lsn = flush_lsn(&pg);
    wait_wal_stored(&mut side, &reader, lsn).await;
    side.terminate();
    let log = side.log_text();
    assert!(log.contains("scheduled base backup stored"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pitr_run_takes_a_backup_when_wal_accumulates() {
    let pg = PgCluster::start();
    // 0.05 GiB: a bit over three 16 MiB segments; no timed backups.
    let threshold = (0.05 * (1u64 << 30) as f64) as u64;
    let mut side = Sidecar::new(
        TestRepo::new().await,
        &pg,
        "base_backup = \"off\"\nbase_backup_wal_gb = 0.05\ncheckpoint = \"fast\"",
    );
    side.start();
    let reader = side.reader().await;
    // A database without any base backup gets one at once (nothing could
    // be restored otherwise); the WAL rule counts from its start.
    let all = side.wait_restorable(&reader, 1, 120).await;
    let first = all[0].record.clone();
    let log = side.log_text();
    assert!(
        log.contains("Initial"),
        "the first backup is the initial one:\n{log}"
    );

    generate_wal(&pg, 5);
    let all = side.wait_restorable(&reader, 2, 120).await;
    let second = &all[1].record;
    assert!(
        second.start_lsn.0 >= first.start_lsn.0 + threshold,
        "backup at {} although only {} bytes of WAL followed {}",
        second.start_lsn,
        second.start_lsn.0.saturating_sub(first.start_lsn.0),
        first.start_lsn
    );

    // Counted again from that backup's start.
    generate_wal(&pg, 5);
    let all = side.wait_restorable(&reader, 3, 120).await;
    let third = &all[2].record;
    assert!(third.start_lsn.0 >= second.start_lsn.0 + threshold);
    side.terminate();
}

#[test]
fn a_bad_cron_expression_is_a_config_error_naming_key_and_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let identity = age::x25519::Identity::generate();
    let config = dir.path().join("pitr.toml");
    for (bad, says) in [
        ("*/5 * * *", "not a cron schedule"),
        ("0 25 * * *", "not a cron schedule"),
        ("0 0 31 2 *", "no time in the future"),
    ] {
        std::fs::write(
            &config,
            format!(
                "[repository]\nrecipients = [\"{}\"]\nstate_dir = \"state\"\n\n\
                 [[destination]]\nname = \"local\"\nkind = \"fs\"\npath = \"store\"\n\n\
                 [[postgres]]\nname = \"main\"\nconninfo = \"host=127.0.0.1 port=1\"\n\
                 base_backup = \"{bad}\"\n",
                identity.to_public()
            ),
        )
        .expect("write config");
        let out = Command::new(env!("CARGO_BIN_EXE_pitr"))
            .args(["run", "-c"])
            .arg(&config)
            .env_remove("PITR_CONFIG")
            .output()
            .expect("run pitr");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        for part in [
            config.to_str().expect("utf-8"),
            "[[postgres]] \"main\" base_backup",
            says,
            "line 13",
        ] {
            assert!(err.contains(part), "{bad}: {part:?} missing from: {err}");
        }
    }
}

/// pg_stat_progress_basebackup's bytes streamed, 0 when none runs.
fn backup_streamed(pg: &PgCluster) -> u64 {
    pg.psql("SELECT coalesce(max(backup_streamed), 0) FROM pg_stat_progress_basebackup")
        .trim()
        .parse()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scheduled_backup_cut_by_a_restart_is_retried_and_the_stream_goes_on() {
    let mut pg = PgCluster::start();
    pgbench_init(&pg, 1);
    // Slowed to 4 MB/s by the server, so the restart lands mid-backup.
    let mut side = Sidecar::new(
        TestRepo::new().await,
        &pg,
        "base_backup = \"*/2 * * * * *\"\ncheckpoint = \"fast\"\nmax_rate = 4096",
    );
    side.start();
    crate::support::eventually(
        "a scheduled backup got going",
        Duration::from_secs(60),
        async || {
            let streamed = backup_streamed(&pg);
            if streamed >= 2 << 20 {
                return Ok(());
            }
            side.assert_running();
            Err(format!("{streamed} bytes streamed\n{}", side.log_text()))
        },
    )
    .await;
    tokio::task::block_in_place(|| pg.restart());

    let reader = side.reader().await;
    let all = side.wait_restorable(&reader, 1, 180).await;
    let log = side.log_text();
    assert!(
        log.contains("scheduled base backup failed; retrying"),
        "the cut backup was retried:\n{log}"
    );
    // Nothing half-taken was recorded: every backup is whole and its WAL
    // stored, or still waiting for it.
    assert!(all.iter().all(|b| b.record.files > 500));

    // The stream survived the backup's failure and the restart.
    generate_wal(&pg, 1);
    let lsn = flush_lsn(&pg);
    wait_wal_stored(&mut side, &reader, lsn).await;
    side.terminate();
}
