//! Incremental base backups on PostgreSQL 17 and 18 (`summarize_wal = on`),
//! judged by PostgreSQL's own `pg_combinebackup` and by the PITR oracle:
//!
//! - a full backup and two incrementals (with rows updated, a table
//!   created, one dropped and one truncated by VACUUM in between) restore
//!   to the very files `pg_combinebackup` writes from the same three
//!   backups written out as `pg_basebackup` would have written them;
//! - a chain whose changes are in a tablespace restores exactly with
//!   `--tablespace-dir`;
//! - such a chain restores exactly to a time after the second incremental
//!   (`pitr restore --at`, checked recovery, the oracle's rows),
//!   retention with `keep_last = 1` keeps the whole chain, and `pitr
//!   export` exports it whole (a restore from the export alone works);
//! - with `summarize_wal = off` the backup is full and the log and `pitr
//!   check` say how to turn summaries on; once on, a backup whose parent
//!   the summaries do not cover is refused by the server and pitr takes a
//!   full one at once, saying why; the next is incremental.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use pitr::basebackup::{self, BackupOptions, BackupProgress, BackupRecord};
use pitr::pg::{Checkpoint, ConnInfo};
use pitr::repo::Repository;
use tokio::sync::watch;

use crate::support::TestRepo;
use crate::support::{PgCluster, run_as_pg_user, text};
use crate::support::{Streamer, between, write_row};

/// A cluster of `major` with WAL summaries on or off.
fn cluster(major: u32, summaries: bool) -> PgCluster {
    PgCluster::start_major_with(major, |c| {
        c.set("summarize_wal", if summaries { "on" } else { "off" });
    })
}

use crate::support::pg::run_checked as run_tool;

fn pgbench_init(pg: &PgCluster, scale: u32) {
    pg.pgbench(&["-i", "-q", "-s", &scale.to_string()]);
}

async fn take(repo: &Repository, pg: &PgCluster) -> BackupRecord {
    let opts = BackupOptions {
        database: "main".into(),
        conninfo: ConnInfo::parse(&pg.conninfo("postgres")).expect("conninfo"),
        label: "pitr incremental test".into(),
        checkpoint: Checkpoint::Fast,
        max_rate_kb: None,
        incremental_max_chain: 7,
        manifest_checksums: Default::default(),
    };
    let (tx, _rx) = watch::channel(BackupProgress::default());
    let record = basebackup::take(repo, &opts, &tx).await.expect("backup");
    // Ids are whole seconds.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    record
}

/// Writes backup `record` into `dir` as `pg_basebackup -Fp` would have
/// written it (its `INCREMENTAL.*` files as they are, its manifest), from
/// the repository: the input `pg_combinebackup` needs.
async fn write_plain(repo: &Repository, record: &BackupRecord, dir: &Path) {
    let reader = repo.reader().expect("reader");
    let items: BTreeMap<String, pitr::repo::Manifest> = repo
        .catalog()
        .items(&basebackup::files_prefix("main", &record.id))
        .expect("items")
        .into_iter()
        .map(|i| (i.name, i.manifest))
        .collect();
    let mut listing = Vec::new();
    reader
        .read_to(&items[&record.listing], &mut listing)
        .await
        .expect("listing");
    let listing: Vec<basebackup::ListingEntry> =
        serde_json::from_slice(&listing).expect("listing parses");
    std::fs::create_dir_all(dir).expect("mkdir");
    for e in &listing {
        assert_eq!(e.archive, "base", "no tablespaces in this test");
        let at = dir.join(&e.path);
        match e.kind.as_str() {
            "dir" => std::fs::create_dir_all(&at).expect("mkdir"),
            "file" => {
                let name = format!(
                    "{}base/{}",
                    basebackup::files_prefix("main", &record.id),
                    e.path
                );
                let mut f = tokio::fs::File::create(&at).await.expect("create");
                reader.read_to(&items[&name], &mut f).await.expect("read");
            }
            other => panic!("unexpected {other} {}", e.path),
        }
    }
    let mut f = tokio::fs::File::create(dir.join("backup_manifest"))
        .await
        .expect("create");
    reader
        .read_to(&items[&record.manifest], &mut f)
        .await
        .expect("manifest");
}

/// Every regular file under `root` (relative path → bytes).
fn files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).expect("read_dir") {
            let e = e.expect("entry");
            let t = e.file_type().expect("type");
            if t.is_dir() {
                walk(root, &e.path(), out);
            } else if t.is_file() {
                let rel = e.path().strip_prefix(root).expect("under root").to_owned();
                out.insert(rel, std::fs::read(e.path()).expect("read"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Changes between backups that exercise every case of reconstruction:
/// changed blocks, a table created (a whole new file), a table dropped
/// (a file gone), a relation truncated by VACUUM.
fn churn(pg: &PgCluster, round: u32) {
    let lo = round * 20_000;
    pg.psql(&format!(
        "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN {lo} AND {};",
        lo + 3000
    ));
    match round {
        1 => pg.psql(
            "CREATE TABLE gone AS SELECT g FROM generate_series(1, 100000) g; \
             CREATE TABLE shrinks AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 50000) g;",
        ),
        _ => {
            pg.psql("DROP TABLE gone; DELETE FROM shrinks WHERE g > 500");
            // VACUUM truncates the table's tail; it cannot run in the
            // transaction psql -c makes of several statements.
            pg.psql("VACUUM shrinks");
            pg.psql("CREATE TABLE fresh AS SELECT g FROM generate_series(1, 1000) g")
        }
    };
    pg.psql("CHECKPOINT");
}

async fn combined_equals_pg_combinebackup(major: u32) {
    let pg = cluster(major, true);
    let t = TestRepo::new().await;
    let repo = t.open().await;
    pgbench_init(&pg, 2);
    let full = take(&repo, &pg).await;
    assert_eq!(full.parent, None, "the first backup is full");
    churn(&pg, 1);
    let inc1 = take(&repo, &pg).await;
    assert_eq!(inc1.parent.as_deref(), Some(full.id.as_str()));
    churn(&pg, 2);
    let inc2 = take(&repo, &pg).await;
    assert_eq!(inc2.parent.as_deref(), Some(inc1.id.as_str()));
    assert!(
        inc2.bytes * 4 < full.bytes,
        "the incremental received {} bytes, the full {}",
        inc2.bytes,
        full.bytes
    );
    let incremental_files = repo
        .catalog()
        .items(&basebackup::files_prefix("main", &inc2.id))
        .expect("items")
        .into_iter()
        .filter(|i| i.name.contains("/INCREMENTAL."))
        .count();
    assert!(
        incremental_files > 100,
        "{incremental_files} INCREMENTAL files"
    );

    // The oracle: pg_combinebackup on the three backups as pg_basebackup
    // writes them.
    let work = tempfile::tempdir().expect("tempdir");
    let mut dirs = Vec::new();
    for (i, b) in [&full, &inc1, &inc2].into_iter().enumerate() {
        let dir = work.path().join(format!("b{i}"));
        write_plain(&repo, b, &dir).await;
        dirs.push(dir);
    }
    let oracle = work.path().join("combined");
    run_tool(
        Command::new(pg.bin("pg_combinebackup"))
            .arg("-o")
            .arg(&oracle)
            .args(&dirs),
        "pg_combinebackup",
    );

    let ours = work.path().join("restored");
    basebackup::restore(&repo, "main", &inc2.id, &ours, &Default::default())
        .await
        .expect("restore of the chain");

    let mut expected = files(&oracle);
    let mut got = files(&ours);
    // pg_combinebackup writes a new manifest; pitr writes none for a
    // combined directory.
    expected.remove(Path::new("backup_manifest"));
    got.remove(Path::new("backup_manifest"));
    let names = |m: &BTreeMap<PathBuf, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&got), names(&expected), "the same files");
    let differ: Vec<&PathBuf> = expected
        .iter()
        .filter(|(p, bytes)| got.get(*p) != Some(*bytes))
        .map(|(p, _)| p)
        .collect();
    assert!(
        differ.is_empty(),
        "files differ from pg_combinebackup's: {differ:?}"
    );
    let label = String::from_utf8_lossy(&got[Path::new("backup_label")]).to_string();
    assert!(!label.contains("INCREMENTAL"), "{label}");
    // Dropped between the backups: not restored (pg_combinebackup agrees).
    assert!(
        !got.keys()
            .any(|p| p.to_string_lossy().contains("INCREMENTAL.")),
        "no INCREMENTAL file is left"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn combined_chain_equals_pg_combinebackup_17() {
    combined_equals_pg_combinebackup(17).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn combined_chain_equals_pg_combinebackup_18() {
    combined_equals_pg_combinebackup(18).await;
}

/// Runs the binary with `config`, the major's binaries first on `PATH`
/// (where `pitr restore` looks for `postgres`).
fn pitr(config: &Path, pg: &PgCluster, args: &[&str]) -> Output {
    let bin = pg.bin("postgres");
    let dir = bin.parent().expect("bin dir");
    let path = std::env::join_paths(std::iter::once(dir.to_owned()).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .expect("PATH");
    crate::support::pitr_command(args)
        .arg("-c")
        .arg(config)
        .env("PATH", path)
        .output()
        .expect("run pitr")
}

use crate::support::backup_id;

async fn a_chain_restores_exactly(major: u32) {
    let pg = cluster(major, true);
    let t = TestRepo::new().await;
    let config = t.write_config(&[("main", &pg.conninfo("postgres"))]);
    let repo = t.open().await;
    let streamer = Streamer::start(&repo, &pg, "pitr");
    pgbench_init(&pg, 1);
    pg.psql("CREATE TABLE oracle (id int PRIMARY KEY, at timestamptz NOT NULL)");
    let mut rows = Vec::new();
    let mut id = 0;
    let mut backups = Vec::new();
    for round in 0..3 {
        for _ in 0..3 {
            id += 1;
            rows.push((id, write_row(&pg, id)));
        }
        if round > 0 {
            pg.psql(&format!(
                "UPDATE pgbench_accounts SET abalance = {round} WHERE aid % 50 = 0"
            ));
        }
        let out = pitr(&config, &pg, &["backup", "--wait-wal", "60"]);
        let printed = String::from_utf8_lossy(&out.stdout).to_string();
        backups.push(backup_id(&out));
        assert_eq!(
            printed.contains("It is incremental on"),
            round > 0,
            "{printed}"
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    for _ in 0..4 {
        id += 1;
        rows.push((id, write_row(&pg, id)));
    }
    streamer.caught_up(&pg).await;
    streamer.stop().await;
    let listed = basebackup::backups(&repo, "main").expect("backups");
    let parents: Vec<Option<String>> = listed.iter().map(|b| b.record.parent.clone()).collect();
    assert_eq!(
        parents,
        vec![None, Some(backups[0].clone()), Some(backups[1].clone())]
    );

    let out = pitr(&config, &pg, &["list"]);
    let list = text(&out);
    assert!(
        list.contains(&format!("incremental on {}", backups[1])),
        "pitr list names the parent: {list}"
    );

    // A time after the second incremental, between two rows.
    let target = between(rows[10].1, rows[11].1);
    let want: Vec<u32> = rows
        .iter()
        .filter(|(_, at)| *at < target)
        .map(|(id, _)| *id)
        .collect();
    let mut restored = PgCluster::empty_major(major);
    let data = restored.data_dir();
    let at = pitr::restore::pg_time(target);
    let out = pitr(
        &config,
        &pg,
        &[
            "restore",
            "--at",
            &at,
            "--target",
            data.to_str().expect("utf-8"),
        ],
    );
    assert!(out.status.success(), "pitr restore: {}", text(&out));
    assert!(text(&out).contains("recovery checked"), "{}", text(&out));
    restored.start_filled("");
    let ids: Vec<u32> = restored
        .psql("SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM oracle")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("an id"))
        .collect();
    assert_eq!(ids, want, "exactly the rows committed before {at}");
    assert_eq!(
        restored.psql("SELECT count(*) FROM pgbench_accounts WHERE abalance = 2"),
        "2000",
        "the second incremental's changes are there"
    );
    run_tool(
        run_as_pg_user(&mut Command::new(restored.bin("pg_amcheck")))
            .args(["-h", restored.host(), "-p", &restored.port().to_string()])
            .args(["-U", "postgres", "--heapallindexed", "--install-missing"])
            .arg("postgres"),
        "pg_amcheck",
    );

    // Retention keeping only the newest keeps the chain it is built on.
    crate::retention::with_retention(
        &config,
        "keep_last = 1\nkeep_daily = 0\nkeep_weekly = 0\nkeep_monthly = 0\n",
    );
    let out = pitr(&config, &pg, &["retention", "--dry-run"]);
    let plan = text(&out);
    assert!(out.status.success(), "{plan}");
    for (i, b) in backups.iter().enumerate() {
        assert!(plan.contains(&format!("keep    {b}")), "{b} kept: {plan}");
        if i < 2 {
            let child = &backups[i + 1];
            assert!(
                plan.contains(&format!("kept backup {child} is incremental on it")),
                "{plan}"
            );
        }
    }
    assert!(
        !plan.contains("forget  2"),
        "no backup is forgotten: {plan}"
    );

    // pitr export takes the whole chain: a restore from the export alone
    // (a fresh state directory) works.
    let dir = tempfile::tempdir().expect("tempdir");
    let to = dir.path().join("export");
    let out = pitr(
        &config,
        &pg,
        &["export", "--to", to.to_str().expect("utf-8")],
    );
    assert!(out.status.success(), "pitr export: {}", text(&out));
    let original = std::fs::read_to_string(&config).expect("config");
    let store = t.store().display().to_string();
    let exported: String = original
        .lines()
        .map(|l| {
            if l.starts_with("state_dir = ") {
                format!("state_dir = \"{}\"", dir.path().join("state").display())
            } else {
                l.replace(&store, &to.display().to_string())
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let export_config = dir.path().join("export.toml");
    std::fs::write(&export_config, exported).expect("write");
    let mut again = PgCluster::empty_major(major);
    let data = again.data_dir();
    let out = pitr(
        &export_config,
        &pg,
        &[
            "restore",
            "--latest",
            "--target",
            data.to_str().expect("utf-8"),
        ],
    );
    assert!(
        out.status.success(),
        "restore from the export: {}",
        text(&out)
    );
    again.start_filled("");
    assert_eq!(
        again.psql("SELECT count(*) FROM oracle"),
        rows.len().to_string(),
        "everything stored"
    );
}

/// A chain whose changes are in a tablespace outside the data directory:
/// the incremental carries that tablespace's `INCREMENTAL.*` files in its
/// own archive, and `pitr restore --at --tablespace-dir` puts the combined
/// files there, exactly (rows, and `pg_amcheck` on the result).
#[tokio::test(flavor = "multi_thread")]
async fn a_chain_with_a_tablespace_restores_exactly_17() {
    let pg = cluster(17, true);
    let t = TestRepo::new().await;
    let config = t.write_config(&[("main", &pg.conninfo("postgres"))]);
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
         INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, 50000) i",
    );
    let out = pitr(&config, &pg, &["backup", "--wait-wal", "60"]);
    assert!(out.status.success(), "{}", text(&out));
    let full = backup_id(&out);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Changed blocks, a new relation, both in the tablespace.
    pg.psql("UPDATE t SET v = md5(v) WHERE id BETWEEN 1000 AND 1500");
    pg.psql("CREATE TABLE u TABLESPACE ts AS SELECT g FROM generate_series(1, 5000) g");
    pg.psql("CHECKPOINT");
    let out = pitr(&config, &pg, &["backup", "--wait-wal", "60"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("It is incremental on"),
        "{}",
        text(&out)
    );
    let inc = backup_id(&out);
    let record = basebackup::backups(&repo, "main")
        .expect("backups")
        .into_iter()
        .find(|b| b.record.id == inc)
        .expect("the incremental")
        .record;
    assert_eq!(record.parent.as_deref(), Some(full.as_str()));
    assert_eq!(record.tablespaces.len(), 1, "{record:?}");
    let prefix = basebackup::files_prefix("main", &inc);
    let in_ts = repo
        .catalog()
        .items(&prefix)
        .expect("items")
        .into_iter()
        .filter(|i| {
            i.name.contains("/INCREMENTAL.") && !i.name.starts_with(&format!("{prefix}base/"))
        })
        .count();
    assert!(in_ts > 0, "no INCREMENTAL file in the tablespace's archive");
    let query = "SELECT count(*), sum(id), md5(string_agg(v, ',' ORDER BY id)) FROM t";
    let want_t = pg.psql(query);
    let want_u = pg.psql("SELECT count(*), sum(g) FROM u");
    let after = write_row_plain(&pg);
    streamer.caught_up(&pg).await;
    streamer.stop().await;

    let mut restored = PgCluster::empty_major(17);
    let data = restored.data_dir();
    let ts_dir = restored.dir().join("tablespaces");
    let at = pitr::restore::pg_time(after);
    let out = pitr(
        &config,
        &pg,
        &[
            "restore",
            "--at",
            &at,
            "--target",
            data.to_str().expect("utf-8"),
            "--tablespace-dir",
            ts_dir.to_str().expect("utf-8"),
        ],
    );
    assert!(out.status.success(), "pitr restore: {}", text(&out));
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
    restored.start_filled("");
    assert_eq!(restored.psql(query), want_t);
    assert_eq!(restored.psql("SELECT count(*), sum(g) FROM u"), want_u);
    run_tool(
        run_as_pg_user(&mut Command::new(restored.bin("pg_amcheck")))
            .args(["-h", restored.host(), "-p", &restored.port().to_string()])
            .args(["-U", "postgres", "--heapallindexed", "--install-missing"])
            .arg("postgres"),
        "pg_amcheck",
    );
}

/// A commit after everything else, and its time plus a little: a target
/// for `--at` that includes all that came before.
fn write_row_plain(pg: &PgCluster) -> jiff::Timestamp {
    pg.psql("CREATE TABLE IF NOT EXISTS marker (at timestamptz)");
    let (_, committed) = crate::support::committed_stamps(
        pg,
        "INSERT INTO marker VALUES (clock_timestamp()) RETURNING at",
    );
    std::thread::sleep(Duration::from_millis(50));
    pg.psql("INSERT INTO marker VALUES (clock_timestamp())");
    committed
        .checked_add(jiff::SignedDuration::from_millis(20))
        .expect("a time")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chain_of_two_incrementals_restores_exactly_17() {
    a_chain_restores_exactly(17).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chain_of_two_incrementals_restores_exactly_18() {
    a_chain_restores_exactly(18).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_summaries_the_backup_is_full_and_the_log_says_why() {
    let pg = cluster(17, false);
    let t = TestRepo::new().await;
    let config = t.write_config(&[("main", &pg.conninfo("postgres"))]);
    let repo = t.open().await;
    let first = take(&repo, &pg).await;
    assert_eq!(first.parent, None);
    // Nothing streams the WAL here: pitr backup stores the backup and then
    // says it is not restorable yet (exit 3), after logging why it is full.
    let out = pitr(&config, &pg, &["backup", "--wait-wal", "0"]);
    let log = text(&out);
    assert!(
        log.contains("summarize_wal is off") && log.contains("ALTER SYSTEM SET summarize_wal = on"),
        "{log}"
    );
    assert!(!log.contains("It is incremental on"), "{log}");
    let listed = basebackup::backups(&repo, "main").expect("backups");
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|b| b.record.parent.is_none()));

    let out = pitr(&config, &pg, &["check"]);
    let check = text(&out);
    assert!(
        check.contains("base backups are FULL: summarize_wal = off")
            && check.contains("ALTER SYSTEM SET summarize_wal = on"),
        "{check}"
    );

    // Summaries turned on as the log says, after a checkpoint past the
    // newest backup's start (the summarizer begins at the newest redo
    // point): the parent's range has none, so the server refuses the
    // incremental backup and pitr takes a full one at once, saying why;
    // the next one is incremental on it.
    pg.psql("CREATE TABLE before AS SELECT g FROM generate_series(1, 1000) g");
    pg.psql("SELECT pg_switch_wal()");
    pg.psql("CHECKPOINT");
    pg.psql("ALTER SYSTEM SET summarize_wal = on");
    pg.psql("SELECT pg_reload_conf()");
    pg.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let out = pitr(&config, &pg, &["backup", "--wait-wal", "0"]);
    let log = text(&out);
    assert!(
        log.contains("cannot take this base backup incrementally; taking a full one instead")
            && log.contains("WAL summaries are required"),
        "{log}"
    );
    assert!(!log.contains("It is incremental on"), "{log}");
    pg.psql("INSERT INTO t SELECT g FROM generate_series(1, 1000) g");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let out = pitr(&config, &pg, &["backup", "--wait-wal", "0"]);
    let listed = basebackup::backups(&repo, "main").expect("backups");
    assert_eq!(listed.len(), 4, "{}", text(&out));
    assert_eq!(listed[2].record.parent, None, "the refused one is full");
    assert_eq!(
        listed[3].record.parent.as_deref(),
        Some(listed[2].record.id.as_str()),
        "{}",
        text(&out)
    );
    let out = pitr(&config, &pg, &["check"]);
    assert!(
        text(&out).contains("base backups are incremental (summarize_wal = on"),
        "{}",
        text(&out)
    );
}
