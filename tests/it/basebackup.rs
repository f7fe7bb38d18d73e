//! Base backups against real clusters, judged by PostgreSQL's own tools: a
//! backup restored with the WAL pitr streamed passes `pg_verifybackup`,
//! recovers, passes `pg_checksums --check` and `pg_amcheck
//! --heapallindexed`, and holds what the source held; a second backup of
//! unchanged data costs almost nothing; a server restart mid-backup leaves
//! nothing restorable and the next backup works.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pitr::basebackup::{
    self, BackupError, BackupOptions, BackupProgress, BackupRecord, RestoreOptions,
};
use pitr::pg::{Checkpoint, ConnInfo, Segment};
use pitr::repo::Repository;
use pitr::wal::WalStore;
use tokio::sync::watch;

use crate::support::{PgCluster, Streamer, TestRepo, run_as_pg_user};

const SEG: u64 = 16 << 20;

fn options(pg: &PgCluster, max_rate_kb: Option<u32>) -> BackupOptions {
    BackupOptions {
        database: "main".into(),
        conninfo: ConnInfo::parse(&pg.conninfo("postgres")).expect("conninfo"),
        label: "pitr test".into(),
        checkpoint: Checkpoint::Fast,
        max_rate_kb,
        incremental_max_chain: 0,
        manifest_checksums: Default::default(),
    }
}

async fn take(repo: &Repository, pg: &PgCluster) -> BackupRecord {
    let (tx, _rx) = watch::channel(BackupProgress::default());
    let record = basebackup::take(repo, &options(pg, None), &tx)
        .await
        .expect("base backup");
    basebackup::wait_restorable(
        repo,
        "main",
        &record.id,
        Duration::from_secs(60),
        Duration::from_millis(200),
    )
    .await
    .expect("the WAL of the backup is stored");
    record
}

use crate::support::pg::run_checked as run_tool;

fn pgbench_init(pg: &PgCluster, scale: u32) {
    pg.pgbench(&["-i", "-q", "-s", &scale.to_string()]);
}

/// Restores `record` into `restored`'s data directory with the WAL from its
/// start to its end segment in `pg_wal`.
pub(crate) async fn restore_with_wal(
    repo: &Repository,
    record: &BackupRecord,
    data: &Path,
    opts: &RestoreOptions,
) {
    let summary = basebackup::restore(repo, "main", &record.id, data, opts)
        .await
        .expect("restore");
    assert_eq!(summary.files, record.files);
    assert_eq!(summary.bytes, record.bytes);
    let store = WalStore::new(repo.clone(), "main");
    let mut seg = Segment::containing(record.start_timeline, record.start_lsn, SEG);
    let last = Segment::containing(record.end_timeline, record.end_lsn, SEG);
    loop {
        let name = seg.file_name(SEG);
        store
            .fetch_to(&name, &data.join("pg_wal").join(&name))
            .await
            .expect("fetch WAL")
            .unwrap_or_else(|| panic!("{name} is stored"));
        if seg == last {
            break;
        }
        seg = seg.next();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restored_backup_verifies_recovers_and_matches_the_source() {
    let pg = PgCluster::start();
    let t = TestRepo::new().await;
    let repo = t.open().await;
    let streamer = Streamer::start(&repo, &pg, "pitr");
    pgbench_init(&pg, 5);
    pg.psql("UPDATE pgbench_accounts SET abalance = aid % 97 WHERE aid % 10 = 0");
    let sum_query = "SELECT sum(abalance) FROM pgbench_accounts";
    let source_sum = pg.psql(sum_query);

    let first = take(&repo, &pg).await;
    assert!(first.files > 500, "{} files", first.files);
    let second = take(&repo, &pg).await;
    assert!(second.start_lsn > first.end_lsn);
    // Changes after the backup must not appear in its restore.
    pg.psql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= 1000");
    streamer.stop().await;
    let listed = basebackup::backups(&repo, "main").expect("backups");
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|b| b.restorable));

    // Not into a directory that holds something.
    let busy = tempfile::tempdir().expect("tempdir");
    std::fs::write(busy.path().join("x"), b"x").expect("write");
    let err = basebackup::restore(
        &repo,
        "main",
        &first.id,
        busy.path(),
        &RestoreOptions::default(),
    )
    .await
    .expect_err("a non-empty target is refused");
    assert!(matches!(err, BackupError::TargetNotEmpty { .. }), "{err}");
    assert!(err.to_string().contains("not empty"), "{err}");

    let mut restored = PgCluster::empty();
    let data = restored.data_dir();
    restore_with_wal(&repo, &first, &data, &RestoreOptions::default()).await;
    let mtime = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .expect("mtime")
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
    };
    assert_eq!(
        mtime(&data.join("PG_VERSION")),
        mtime(&pg.data_dir().join("PG_VERSION")),
        "modification times are restored"
    );
    run_tool(
        Command::new(pg.bin("pg_verifybackup"))
            .arg("--wal-directory")
            .arg(data.join("pg_wal"))
            .arg(&data),
        "pg_verifybackup",
    );
    std::fs::write(data.join("recovery.signal"), b"").expect("recovery.signal");
    restored.start_filled(
        "restore_command = 'false'\nrecovery_target = 'immediate'\n\
         recovery_target_action = 'promote'",
    );
    wait_writable(&restored);
    restored.stop();
    run_tool(
        run_as_pg_user(&mut Command::new(pg.bin("pg_checksums")))
            .arg("--check")
            .arg("-D")
            .arg(&data),
        "pg_checksums --check",
    );
    restored.start_again();
    assert_eq!(restored.psql(sum_query), source_sum);
    run_tool(
        Command::new(pg.bin("pg_amcheck"))
            .args(["-h", restored.host(), "-p", &restored.port().to_string()])
            .args(["-U", "postgres", "--heapallindexed", "--install-missing"])
            .arg("postgres"),
        "pg_amcheck --heapallindexed",
    );
}

/// Waits (bounded) until the streamer stored the server's WAL up to now.
async fn wait_wal_stored(repo: &Repository, pg: &PgCluster) {
    let now: pitr::pg::Lsn = pg
        .psql("SELECT pg_current_wal_flush_lsn()")
        .parse()
        .expect("an LSN");
    let store = WalStore::new(repo.clone(), "main");
    crate::support::eventually(
        format!("the streamer stored WAL up to {now}"),
        Duration::from_secs(60),
        async || match store.stored_end(1).expect("catalog") {
            Some((end, _)) if end >= now => Ok(()),
            stored => Err(format!("stored {stored:?}")),
        },
    )
    .await;
}

/// Waits (bounded) until a restored cluster left recovery.
fn wait_writable(pg: &PgCluster) {
    crate::support::eventually_blocking(
        "the restored cluster finished recovery",
        Duration::from_secs(60),
        || match pg.psql("SELECT pg_is_in_recovery()").as_str() {
            "f" => Ok(()),
            _ => Err(pg.log_tail()),
        },
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_restart_mid_backup_leaves_nothing_restorable_and_the_next_works() {
    let mut pg = PgCluster::start();
    let t = TestRepo::new().await;
    let repo = t.open().await;
    let streamer = Streamer::start(&repo, &pg, "pitr");
    pgbench_init(&pg, 1);

    // Slowed to 1 MB/s by the server, so the restart lands mid-stream.
    let (tx, mut rx) = watch::channel(BackupProgress::default());
    let slow = {
        let repo = repo.clone();
        let o = options(&pg, Some(1024));
        tokio::spawn(async move { basebackup::take(&repo, &o, &tx).await })
    };
    tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|p| p.done > 2 << 20))
        .await
        .expect("the backup makes progress")
        .expect("progress");
    tokio::task::block_in_place(|| pg.restart());
    let err = tokio::time::timeout(Duration::from_secs(60), slow)
        .await
        .expect("the interrupted backup ends")
        .expect("no panic")
        .expect_err("a restart fails the backup");
    eprintln!("interrupted backup: {err}");
    assert!(err.is_transient(), "a restart is worth retrying: {err:?}");
    repo.sync_catalog().await.expect("sync");
    assert!(
        basebackup::backups(&repo, "main")
            .expect("backups")
            .is_empty(),
        "no record of the interrupted backup"
    );

    let record = take(&repo, &pg).await;
    let listed = basebackup::backups(&repo, "main").expect("backups");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].record.id, record.id);
    assert!(listed[0].restorable);
    streamer.stop().await;
}

/// The measure: after `pgbench -i -s 30`, a second backup of
/// unchanged data adds under 1 % of the first's stored bytes; after 1 % of
/// `pgbench_accounts` is updated in a contiguous range, under 3 %.
#[tokio::test(flavor = "multi_thread")]
async fn unchanged_pages_are_not_stored_again() {
    let pg = PgCluster::start();
    let t = TestRepo::new().await;
    let repo = t.open().await;
    let streamer = Streamer::start(&repo, &pg, "pitr");
    pgbench_init(&pg, 30);
    // pgbench's WAL stored first, so the store's growth is the backups'.
    wait_wal_stored(&repo, &pg).await;
    let before = t.store_bytes();
    let first = take(&repo, &pg).await;
    let first_bytes = t.store_bytes() - before;
    let mid = t.store_bytes();
    let second = take(&repo, &pg).await;
    let second_bytes = t.store_bytes() - mid;
    pg.psql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= 30000");
    wait_wal_stored(&repo, &pg).await;
    let mid = t.store_bytes();
    let third = take(&repo, &pg).await;
    let third_bytes = t.store_bytes() - mid;
    streamer.stop().await;
    let pct = |b: u64| b as f64 * 100.0 / first_bytes as f64;
    eprintln!(
        "first backup: {} files, {} bytes, store grew {first_bytes} (new packs {}); \
         unchanged: {second_bytes} ({:.2} %, new packs {}); 1 % updated: {third_bytes} \
         ({:.2} %, new packs {})",
        first.files,
        first.bytes,
        first.stored_bytes,
        pct(second_bytes),
        second.stored_bytes,
        pct(third_bytes),
        third.stored_bytes,
    );
    assert!(
        second_bytes * 100 < first_bytes,
        "unchanged: {:.2} %; files that differ: {:?}",
        pct(second_bytes),
        differing(&repo, &first, &second)
    );
    assert!(
        third_bytes * 100 < first_bytes * 3,
        "1 % updated: {:.2} %",
        pct(third_bytes)
    );
}

/// Files whose content differs between two backups (with their sizes).
fn differing(repo: &Repository, a: &BackupRecord, b: &BackupRecord) -> Vec<String> {
    let files = |r: &BackupRecord| {
        let prefix = basebackup::files_prefix("main", &r.id);
        repo.catalog()
            .items(&prefix)
            .expect("items")
            .into_iter()
            .map(|i| (i.name[prefix.len()..].to_owned(), i.manifest))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let (fa, fb) = (files(a), files(b));
    fb.iter()
        .filter(|(n, m)| fa.get(*n).is_none_or(|o| o.chunks != m.chunks))
        .map(|(n, m)| format!("{n} ({} B)", m.size))
        .take(15)
        .collect()
}

/// `pitr backup` as an operator runs it: without `pitr run` the backup is
/// taken but not marked restorable, with a message saying why; beside a
/// running `pitr run` it is restorable.
#[tokio::test(flavor = "multi_thread")]
async fn pitr_backup_waits_for_the_wal_of_pitr_run() {
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (identity, _) = crate::support::new_identity(dir.path());
    let config = dir.path().join("pitr.toml");
    std::fs::write(
        &config,
        format!(
            "[repository]\nrecipients = [\"{}\"]\nidentity_file = \"identity.txt\"\n\
             state_dir = \"state\"\n\n[[destination]]\nname = \"local\"\nkind = \"fs\"\n\
             path = \"store\"\n\n[[postgres]]\nname = \"main\"\nconninfo = \"{}\"\nbase_backup = \"off\"\n\n[verify]\nschedule = \"off\"\n\n[retention]\nschedule = \"off\"\n\n[scrub]\nschedule = \"off\"\n",
            identity.to_public(),
            pg.conninfo("postgres")
        ),
    )
    .expect("write config");
    let pitr = |args: &[&str]| crate::support::pitr_with(&config, args);
    let out = pitr(&["init"]);
    assert!(out.status.success(), "{out:?}");

    let out = pitr(&["backup", "--wait-wal", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert!(stdout.contains("Base backup "), "{stdout}");
    assert!(
        stderr.contains("not restorable yet") && stderr.contains("pitr run"),
        "{stderr}"
    );

    let mut run = Command::new(env!("CARGO_BIN_EXE_pitr"))
        .arg("run")
        .arg("-c")
        .arg(&config)
        .env_remove("PITR_CONFIG")
        .spawn()
        .expect("start pitr run");
    // The slot must hold WAL from before the backup starts.
    crate::support::eventually_blocking("pitr run streams", Duration::from_secs(30), || {
        match pg
            .psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pitr' AND active")
            .as_str()
        {
            "1" => Ok(()),
            n => Err(format!("{n} active slots named pitr")),
        }
    });
    let out = pitr(&["backup", "--wait-wal", "60"]);
    let _ = Command::new("kill")
        .args(["-TERM", &run.id().to_string()])
        .status();
    let stopped = run.wait().expect("pitr run exits");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("is restorable"), "{stdout}");
    assert!(stopped.success(), "pitr run: {stopped}");
}

/// A tablespace outside the data directory is backed up as its own archive
/// and restored where the caller says, linked from `pg_tblspc`.
#[tokio::test(flavor = "multi_thread")]
async fn a_tablespace_outside_the_data_directory_is_restored_where_asked() {
    let pg = PgCluster::start();
    let t = TestRepo::new().await;
    let repo = t.open().await;
    let streamer = Streamer::start(&repo, &pg, "pitr");
    let location = pg.dir().join("ts");
    run_tool(
        run_as_pg_user(Command::new("mkdir").arg(&location)),
        "mkdir the tablespace",
    );
    pg.psql(&format!(
        "CREATE TABLESPACE ts LOCATION '{}'",
        location.display()
    ));
    pg.psql(
        "CREATE TABLE t (id int PRIMARY KEY, v text) TABLESPACE ts;
         INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, 20000) i",
    );
    let query = "SELECT count(*), sum(id), md5(string_agg(v, ',' ORDER BY id)) FROM t";
    let source = pg.psql(query);
    let record = take(&repo, &pg).await;
    streamer.stop().await;
    assert_eq!(record.tablespaces.len(), 1);
    assert_eq!(
        record.tablespaces[0].location,
        location.display().to_string()
    );

    let mut restored = PgCluster::empty();
    let data = restored.data_dir();
    let err = basebackup::restore(&repo, "main", &record.id, &data, &RestoreOptions::default())
        .await
        .expect_err("tablespaces need a place");
    assert!(matches!(err, BackupError::NoTablespaceDir { .. }), "{err}");
    let ts_dir = restored.dir().join("tablespaces");
    let opts = RestoreOptions {
        tablespace_dir: Some(ts_dir.clone()),
        ..RestoreOptions::default()
    };
    restore_with_wal(&repo, &record, &data, &opts).await;
    run_tool(
        Command::new(pg.bin("pg_verifybackup"))
            .arg("--wal-directory")
            .arg(data.join("pg_wal"))
            .arg(&data),
        "pg_verifybackup",
    );
    if crate::support::pg::effective_uid() == 0 {
        run_tool(
            Command::new("chown")
                .arg("-R")
                .arg("--reference")
                .arg(restored.dir())
                .arg(&ts_dir),
            "chown the tablespaces",
        );
    }
    std::fs::write(data.join("recovery.signal"), b"").expect("recovery.signal");
    restored.start_filled(
        "restore_command = 'false'\nrecovery_target = 'immediate'\n\
         recovery_target_action = 'promote'",
    );
    wait_writable(&restored);
    assert_eq!(restored.psql(query), source);
    let oid = restored.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts'");
    assert_eq!(
        restored.psql("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts'"),
        ts_dir.join(oid).display().to_string()
    );
}

/// A restore onto a disk that fills up fails naming the file it could not
/// write.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_on_restore_is_a_clear_error() {
    let Some(disk) = crate::disk_full::SmallDisk::mount("4m") else {
        return;
    };
    let pg = PgCluster::start();
    let t = TestRepo::new().await;
    let repo = t.open().await;
    let (tx, _rx) = watch::channel(BackupProgress::default());
    let record = basebackup::take(&repo, &options(&pg, None), &tx)
        .await
        .expect("base backup");
    assert!(record.bytes > 8 << 20, "{} bytes", record.bytes);
    let target = disk.mount.join("data");
    let err = basebackup::restore(
        &repo,
        "main",
        &record.id,
        &target,
        &RestoreOptions::default(),
    )
    .await
    .expect_err("the disk is too small");
    let text = err.to_string();
    assert!(
        matches!(&err, BackupError::Local { path, .. } if path.starts_with(&target)),
        "{text}"
    );
    assert!(text.contains("No space left on device"), "{text}");
}

/// A backup taken while pgbench writes restores to a consistent state:
/// pgbench's own invariant (every transaction adds the same delta to an
/// account, a teller, a branch and a history row) holds in the restored
/// cluster, and PostgreSQL's tools find nothing wrong.
#[tokio::test(flavor = "multi_thread")]
async fn a_backup_taken_under_write_load_restores_consistent() {
    let pg = PgCluster::start();
    let t = TestRepo::new().await;
    let repo = t.open().await;
    let streamer = Streamer::start(&repo, &pg, "pitr");
    pgbench_init(&pg, 2);
    let mut load = Command::new(pg.bin("pgbench"))
        .args(["-n", "-c", "2", "-T", "8"])
        .args([
            "-h",
            pg.host(),
            "-p",
            &pg.port().to_string(),
            "-U",
            "postgres",
        ])
        .arg("postgres")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start pgbench");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let record = take(&repo, &pg).await;
    let finished = tokio::task::block_in_place(|| load.wait()).expect("pgbench ends");
    assert!(finished.success(), "pgbench: {finished}");
    streamer.stop().await;

    let mut restored = PgCluster::empty();
    let data = restored.data_dir();
    restore_with_wal(&repo, &record, &data, &RestoreOptions::default()).await;
    run_tool(
        Command::new(pg.bin("pg_verifybackup"))
            .arg("--wal-directory")
            .arg(data.join("pg_wal"))
            .arg(&data),
        "pg_verifybackup",
    );
    std::fs::write(data.join("recovery.signal"), b"").expect("recovery.signal");
    restored.start_filled(
        "restore_command = 'false'\nrecovery_target = 'immediate'\n\
         recovery_target_action = 'promote'",
    );
    wait_writable(&restored);
    let sums = restored.psql(
        "SELECT (SELECT sum(abalance) FROM pgbench_accounts) || ' ' ||
                (SELECT sum(tbalance) FROM pgbench_tellers) || ' ' ||
                (SELECT sum(bbalance) FROM pgbench_branches) || ' ' ||
                (SELECT coalesce(sum(delta), 0) FROM pgbench_history) || ' ' ||
                (SELECT count(*) FROM pgbench_history)",
    );
    let v: Vec<&str> = sums.split(' ').collect();
    assert!(
        v[0] == v[3] && v[1] == v[3] && v[2] == v[3],
        "pgbench's balances disagree: {sums}"
    );
    assert_ne!(v[4], "0", "the backup saw some of the load: {sums}");
    restored.stop();
    run_tool(
        run_as_pg_user(&mut Command::new(pg.bin("pg_checksums")))
            .arg("--check")
            .arg("-D")
            .arg(&data),
        "pg_checksums --check",
    );
    restored.start_again();
    run_tool(
        Command::new(pg.bin("pg_amcheck"))
            .args(["-h", restored.host(), "-p", &restored.port().to_string()])
            .args(["-U", "postgres", "--heapallindexed", "--install-missing"])
            .arg("postgres"),
        "pg_amcheck --heapallindexed",
    );
}
