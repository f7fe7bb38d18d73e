//! Retention against real clusters (see the parent module): backups
//! forgotten through `pitr retention`, the kept ones restoring exactly, the
//! WAL before them and their packs gone; and a base backup written while
//! garbage is collected, reusing chunks of forgotten backups.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use pitr::basebackup::{self, BackupOptions, BackupProgress};
use pitr::config::Config;
use pitr::pg::{Checkpoint, ConnInfo};
use pitr::repo::Repository;
use pitr::retention::{self, RunOptions, Scope};
use tokio::sync::watch;

use crate::support::{PgCluster, text};
use crate::support::{Streamer, write_row};
use crate::support::{TestRepo, data};

struct Env {
    t: TestRepo,
    config: PathBuf,
}

impl Env {
    /// A repository with 1 MiB packs (so whole packs fall out of use) and a
    /// config keeping `keep_last` backups and nothing by period.
    async fn new(pg: &PgCluster, keep_last: u32) -> Env {
        let mut t = TestRepo::new().await;
        t.opts.pack_size = 1 << 20;
        let config = t.write_config(&[("main", &pg.conninfo("postgres"))]);
        let text = std::fs::read_to_string(&config)
            .expect("config")
            .replace("[repository]\n", "[repository]\npack_size = \"1MiB\"\n");
        std::fs::write(&config, text).expect("config");
        super::with_retention(
            &config,
            &format!(
                "keep_last = {keep_last}\nkeep_daily = 0\nkeep_weekly = 0\n\
                 keep_monthly = 0\ngc_grace = \"1h\"\n"
            ),
        );
        Env { t, config }
    }

    fn config(&self) -> Config {
        Config::load(&self.config).expect("config loads")
    }

    fn pitr(&self, args: &[&str]) -> Output {
        crate::support::pitr_with(&self.config, args)
    }

    fn pitr_ok(&self, args: &[&str]) -> String {
        let out = self.pitr(args);
        assert!(out.status.success(), "pitr {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Packs in the fs destination.
    fn packs(&self) -> Vec<String> {
        let mut out = Vec::new();
        let root = self.t.store().join("packs");
        for d in std::fs::read_dir(&root).into_iter().flatten() {
            for f in std::fs::read_dir(d.expect("entry").path()).expect("read_dir") {
                out.push(f.expect("entry").file_name().to_string_lossy().into_owned());
            }
        }
        out.sort();
        out
    }

    fn listed_backups(&self) -> Vec<String> {
        let out = self.pitr_ok(&["list", "--json"]);
        let list: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        list["postgres"][0]["backups"]
            .as_array()
            .expect("backups")
            .iter()
            .map(|b| b["record"]["id"].as_str().expect("id").to_owned())
            .collect()
    }

    /// Restores with the binary into a fresh directory, starts it and
    /// returns it with its oracle rows.
    fn restore(&self, args: &[&str]) -> (PgCluster, Vec<u32>) {
        let mut restored = PgCluster::empty();
        let dir = restored.data_dir();
        let mut all = vec!["restore", "--target", dir.to_str().expect("utf-8")];
        all.extend_from_slice(args);
        let report = self.pitr_ok(&all);
        assert!(report.contains("recovery checked"), "{report}");
        restored.start_filled("");
        let ids = restored
            .psql("SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM oracle")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().expect("an id"))
            .collect();
        (restored, ids)
    }
}

/// A base backup through the API, restorable once the streamer stored its
/// WAL; ids are whole seconds, so the next one starts a second later.
async fn backup(repo: &Repository, pg: &PgCluster, max_rate_kb: Option<u32>) -> String {
    let opts = BackupOptions {
        database: "main".into(),
        conninfo: ConnInfo::parse(&pg.conninfo("postgres")).expect("conninfo"),
        label: "pitr retention test".into(),
        checkpoint: Checkpoint::Fast,
        max_rate_kb,
        incremental_max_chain: 0,
        manifest_checksums: Default::default(),
    };
    let (tx, _rx) = watch::channel(BackupProgress::default());
    let record = basebackup::take(repo, &opts, &tx).await.expect("backup");
    pg.psql("SELECT pg_switch_wal()");
    basebackup::wait_restorable(
        repo,
        "main",
        &record.id,
        Duration::from_secs(60),
        Duration::from_millis(200),
    )
    .await
    .expect("the backup's WAL is stored");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    record.id
}

fn extra_file(pg: &PgCluster) -> PathBuf {
    pg.data_dir().join("pitr_test_extra.bin")
}

fn put_extra(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("write the extra file");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
}

/// Three backups with WAL streamed; `pitr retention --dry-run` changes
/// nothing; `pitr retention` forgets the oldest backup and the WAL before
/// the oldest kept one and marks their packs; after the grace period (run
/// through the API with grace 0) those packs are deleted from the
/// destination; the kept backups restore exactly, an earlier time is
/// refused, and `pitr verify` finds nothing missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgotten_backups_go_and_kept_ones_restore_exactly() {
    let pg = PgCluster::start();
    let env = Env::new(&pg, 2).await;
    let repo = env.t.open().await;
    let streamer = Streamer::start(&repo, &pg, "pitr");
    pg.psql("CREATE TABLE oracle (id int PRIMARY KEY, at timestamptz NOT NULL)");
    // Data only the first backup holds: its packs fall out of use.
    put_extra(&extra_file(&pg), &data(7, 4 << 20, 0));
    let mut rows = vec![(1, write_row(&pg, 1))];
    let b1 = backup(&repo, &pg, None).await;
    std::fs::remove_file(extra_file(&pg)).expect("remove");
    rows.push((2, write_row(&pg, 2)));
    let b2 = backup(&repo, &pg, None).await;
    rows.push((3, write_row(&pg, 3)));
    let b3 = backup(&repo, &pg, None).await;
    rows.push((4, write_row(&pg, 4)));
    streamer.caught_up(&pg).await;
    assert_eq!(
        env.listed_backups(),
        vec![b1.clone(), b2.clone(), b3.clone()]
    );

    // The store is compared whole below, before and after retention: the
    // streamer must not add packs meanwhile. An idle server still writes
    // WAL now and then (the background writer logs running transactions
    // every 15 s after activity), and the streamer stores each piece as a
    // partial in a pack of its own; the slot keeps that WAL until streaming
    // resumes.
    streamer.stop().await;
    let before = env.packs();
    let dry = env.pitr_ok(&["retention", "--dry-run"]);
    assert!(dry.contains(&format!("forget  {b1}")), "{dry}");
    assert!(dry.contains(&format!("keep    {b2}  (last)")), "{dry}");
    assert!(
        dry.contains(&format!("keep    {b3}  (newest restorable, last)")),
        "{dry}"
    );
    assert!(dry.contains("forget  WAL timeline 1"), "{dry}");
    assert!(dry.contains("Dry run: nothing was changed."), "{dry}");
    assert_eq!(env.listed_backups().len(), 3, "a dry run changes nothing");

    let out = env.pitr_ok(&["retention", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let marked: Vec<String> = v["plan"]["gc"]["mark"]
        .as_array()
        .expect("mark")
        .iter()
        .map(|p| p["id"].as_str().expect("id").to_owned())
        .collect();
    assert!(marked.len() >= 4, "the extra file's packs at least: {out}");
    assert_eq!(v["report"]["backups_forgotten"], 1, "{out}");
    assert_eq!(env.listed_backups(), vec![b2.clone(), b3.clone()]);
    // Within the grace period nothing is deleted.
    assert_eq!(env.packs(), before);
    let again = env.pitr_ok(&["retention", "--dry-run"]);
    assert!(again.contains("grace period"), "{again}");
    assert_eq!(env.packs(), before);
    let streamer = Streamer::start(&repo, &pg, "pitr");

    // The grace period over (the API with grace 0): deleted.
    let config = env.config();
    let opts = RunOptions {
        now: Timestamp::now(),
        grace: Duration::ZERO,
        scope: Scope::Postgres("main".into()),
    };
    let (plan, report) = retention::run(&repo, &config, &opts, false)
        .await
        .expect("retention");
    let report = report.expect("applied");
    assert!(report.gc.failures.is_empty(), "{:?}", report.gc.failures);
    assert!(report.gc.deleted >= marked.len() - plan.gc.unmark.len());
    let after = env.packs();
    for id in &marked {
        let unmarked = plan.gc.unmark.iter().any(|p| &p.id == id);
        assert_eq!(after.contains(id), unmarked, "pack {id}\n{}", plan.render());
    }
    // At least the packs that held nothing but the extra file.
    assert!(report.gc.bytes_freed >= 2 << 20, "{report:?}");

    // What is kept is whole: every object checks out, and the oldest kept
    // backup restores to a time after it; before it, nothing can.
    rows.push((5, write_row(&pg, 5)));
    streamer.caught_up(&pg).await;
    let verify = env.pitr_ok(&["verify"]);
    assert!(verify.contains("No problems found."), "{verify}");
    let between = |a: Timestamp, b: Timestamp| {
        a.checked_add(jiff::SignedDuration::from_nanos(
            (b.duration_since(a).as_nanos() / 2) as i64,
        ))
        .expect("time")
    };
    let t = between(rows[2].1, rows[3].1);
    let (_r, ids) = env.restore(&["--at", &t.to_string()]);
    assert_eq!(ids, [1, 2, 3]);
    let (_r, ids) = env.restore(&["--latest"]);
    assert_eq!(ids, [1, 2, 3, 4, 5]);
    let early = between(rows[0].1, rows[1].1);
    let mut target = PgCluster::empty();
    let out = env.pitr(&[
        "restore",
        "--at",
        &early.to_string(),
        "--target",
        target.data_dir().to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let _ = &mut target;

    // A catalog rebuilt from the destination agrees.
    let out = env.pitr_ok(&["catalog", "rebuild"]);
    let _ = out;
    assert_eq!(env.listed_backups(), vec![b2, b3]);
    streamer.stop().await;
}

/// A base backup is written while retention forgets the backups it
/// deduplicates against and garbage collection marks and deletes: every
/// pack the kept backups need stays (`pitr verify`), and the new backup
/// restores with the content of a file only a forgotten backup held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_written_during_garbage_collection_restores() {
    let pg = PgCluster::start();
    let env = Env::new(&pg, 2).await;
    let repo = env.t.open().await;
    let streamer = Streamer::start(&repo, &pg, "pitr");
    pg.psql("CREATE TABLE oracle (id int PRIMARY KEY, at timestamptz NOT NULL)");
    pg.psql("CREATE TABLE filler AS SELECT g, md5(g::text) AS h FROM generate_series(1, 200000) g");
    let extra = data(11, 6 << 20, 0);
    put_extra(&extra_file(&pg), &extra);
    write_row(&pg, 1);
    let _b1 = backup(&repo, &pg, None).await;
    std::fs::remove_file(extra_file(&pg)).expect("remove");
    write_row(&pg, 2);
    let _b2 = backup(&repo, &pg, None).await;
    write_row(&pg, 3);
    let b3 = backup(&repo, &pg, None).await;

    // Keep two: the first backup goes, its packs are marked.
    let mut config = env.config();
    let pass = |config: Config| {
        let repo = repo.clone();
        async move {
            let opts = RunOptions {
                now: Timestamp::now(),
                grace: Duration::ZERO,
                scope: Scope::All,
            };
            let (plan, report) = retention::run(&repo, &config, &opts, false)
                .await
                .expect("retention");
            let report = report.expect("applied");
            assert!(report.gc.failures.is_empty(), "{:?}", report.gc.failures);
            (plan, report)
        }
    };
    let (plan, report) = pass(config.clone()).await;
    assert_eq!(report.backups_forgotten, 1, "{}", plan.render());
    assert!(report.gc.marked > 0, "{}", plan.render());

    // The file only the forgotten backup held comes back; a slow backup
    // starts while garbage collection goes on, now keeping one backup.
    put_extra(&extra_file(&pg), &extra);
    write_row(&pg, 4);
    let taking = {
        let repo = repo.clone();
        let pg_conn = pg.conninfo("postgres");
        tokio::spawn(async move {
            let opts = BackupOptions {
                database: "main".into(),
                conninfo: ConnInfo::parse(&pg_conn).expect("conninfo"),
                label: "during gc".into(),
                checkpoint: Checkpoint::Fast,
                max_rate_kb: Some(4096),
                incremental_max_chain: 0,
                manifest_checksums: Default::default(),
            };
            let (tx, _rx) = watch::channel(BackupProgress::default());
            basebackup::take(&repo, &opts, &tx).await.expect("backup")
        })
    };
    config.retention.keep_last = 1;
    let deadline = Instant::now() + Duration::from_secs(180);
    let (mut passes, mut deleted_during, mut waited) = (0, 0, 0);
    while !taking.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the backup did not finish in 180 s"
        );
        let (plan, report) = pass(config.clone()).await;
        passes += 1;
        deleted_during += report.gc.deleted;
        waited += plan.gc.waiting.len();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let record = taking.await.expect("no panic");
    pg.psql("SELECT pg_switch_wal()");
    basebackup::wait_restorable(
        &repo,
        "main",
        &record.id,
        Duration::from_secs(60),
        Duration::from_millis(200),
    )
    .await
    .expect("restorable");
    write_row(&pg, 5);
    streamer.caught_up(&pg).await;
    eprintln!("{passes} passes during the backup, {deleted_during} packs deleted, {waited} waits");
    assert!(passes > 0);

    // Settle: the backups before the new one go, everything due is deleted.
    for _ in 0..3 {
        pass(config.clone()).await;
    }
    let listed = env.listed_backups();
    assert_eq!(listed, vec![record.id.clone()], "{b3} and older forgotten");
    let verify = env.pitr_ok(&["verify"]);
    assert!(verify.contains("No problems found."), "{verify}");
    let (restored, ids) = env.restore(&["--latest"]);
    assert_eq!(ids, [1, 2, 3, 4, 5]);
    let got = std::fs::read(restored.data_dir().join("pitr_test_extra.bin")).expect("extra");
    assert!(got == extra, "the extra file restores byte for byte");
    streamer.stop().await;
}
