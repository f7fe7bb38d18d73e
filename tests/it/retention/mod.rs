//! Retention and garbage collection: the repository-level rules on a real
//! fs destination (mark, grace, re-check, delete; a writer that decided to
//! reuse a chunk before the mark; a rebuild after deletions), and against
//! real clusters: backups forgotten, the kept ones restoring exactly, packs
//! deleted, and a base backup written while garbage is collected.

mod pg;
mod sqlite;

use std::path::Path;
use std::time::Duration;

use pitr::config::Config;
use pitr::repo::{Chunking, Forget, Repository};
use pitr::retention::{self, RunOptions, Scope};

use crate::support::{TestRepo, data};

/// Runs retention through the API with grace `grace`.
async fn gc(repo: &Repository, config: &Config, grace: Duration) -> retention::RetentionPlan {
    let opts = RunOptions {
        now: jiff::Timestamp::now(),
        grace,
        scope: Scope::All,
    };
    let (plan, report) = retention::run(repo, config, &opts, false)
        .await
        .expect("retention run");
    let report = report.expect("applied");
    assert!(report.gc.failures.is_empty(), "{:?}", report.gc.failures);
    plan
}

async fn put(repo: &Repository, name: &str, bytes: Vec<u8>) {
    let mut w = repo.writer();
    w.put(
        name,
        "test",
        serde_json::json!({}),
        Chunking::Cdc,
        &bytes[..],
    )
    .await
    .expect("put");
    w.commit().await.expect("commit");
}

async fn read(repo: &Repository, name: &str) -> Vec<u8> {
    let item = repo
        .catalog()
        .latest_item(name)
        .expect("catalog")
        .unwrap_or_else(|| panic!("item {name} is in the catalog"));
    let mut out = Vec::new();
    repo.reader()
        .expect("reader")
        .read_to(&item.manifest, &mut out)
        .await
        .expect("read");
    out
}

/// Forgets every item of this name.
async fn forget(repo: &Repository, name: &str) {
    let items = repo.catalog().items(name).expect("items");
    let forget: Vec<Forget> = items
        .iter()
        .filter(|i| i.name == name)
        .map(|i| Forget {
            commit: i.commit.clone(),
            names: vec![i.name.clone()],
        })
        .collect();
    assert!(!forget.is_empty());
    repo.commit_removals(forget, Default::default(), jiff::Timestamp::now())
        .await
        .expect("forget");
}

fn pack_exists(store: &Path, id: &str) -> bool {
    store.join("packs").join(&id[..2]).join(id).exists()
}

/// Adds `keys` to the `[retention]` section `TestRepo::write_config`
/// wrote (schedules off).
pub fn with_retention(path: &Path, keys: &str) {
    let text = std::fs::read_to_string(path).expect("config");
    let section = "[retention]\nschedule = \"off\"\n";
    assert!(text.contains(section), "{text}");
    let text = text.replacen(section, &format!("{section}{keys}"), 1);
    std::fs::write(path, text).expect("config");
}

fn config(t: &TestRepo) -> Config {
    let path = t.write_config(&[]);
    with_retention(&path, "keep_last = 1\n");
    Config::load(&path).expect("config loads")
}

/// A writer reused a chunk before its pack was marked and commits after:
/// the pack is not deleted while the writer is in flight, and the re-check
/// unmarks it once the writer's item is seen.
#[tokio::test]
async fn a_pack_reused_before_its_mark_is_kept_and_unmarked() {
    let t = TestRepo::new().await;
    let config = config(&t);
    let repo = t.open().await;
    let a = data(1, 300_000, 0);
    put(&repo, "x/a", a.clone()).await;
    put(&repo, "x/b", data(2, 300_000, 0)).await;
    let first = repo
        .catalog()
        .latest_item("x/a")
        .unwrap()
        .unwrap()
        .manifest
        .chunks[0]
        .0;
    forget(&repo, "x/a").await;

    // The writer decides to reuse x/a's chunks (their pack is not marked).
    let mut w = repo.writer();
    w.put("x/a2", "test", serde_json::json!({}), Chunking::Cdc, &a[..])
        .await
        .expect("put");

    let plan = gc(&repo, &config, Duration::ZERO).await;
    assert_eq!(plan.gc.mark.len(), 1, "{}", plan.render());
    let pack = plan.gc.mark[0].id.clone();
    // Marked: a new writer would not reuse it, a reader still finds it.
    assert!(!repo.catalog().has_chunk(&first).unwrap());
    assert!(repo.catalog().holds_chunk(&first).unwrap());

    // Grace 0, yet the writer in flight began before the mark: kept.
    let plan = gc(&repo, &config, Duration::ZERO).await;
    assert!(plan.gc.delete.is_empty(), "{}", plan.render());
    assert_eq!(plan.gc.waiting.len(), 1, "{}", plan.render());
    assert!(pack_exists(&t.store(), &pack));

    w.commit().await.expect("commit");
    let plan = gc(&repo, &config, Duration::ZERO).await;
    assert_eq!(plan.gc.unmark.len(), 1, "{}", plan.render());
    assert!(plan.gc.delete.is_empty());
    assert!(pack_exists(&t.store(), &pack));
    assert_eq!(read(&repo, "x/a2").await, a);
    let verified = repo.verify().await.expect("verify");
    assert!(verified.problems.is_empty(), "{:?}", verified.problems);
}

/// After a mark, a writer stores the chunk again instead of reusing the
/// marked pack; the marked pack is deleted after the grace period, every
/// live item still reads, and a catalog rebuilt from the destination holds
/// the same live state.
#[tokio::test]
async fn a_marked_pack_is_not_reused_then_deleted_and_a_rebuild_agrees() {
    let t = TestRepo::new().await;
    let config = config(&t);
    let repo = t.open().await;
    let a = data(3, 300_000, 0);
    let b = data(4, 300_000, 0);
    put(&repo, "x/a", a.clone()).await;
    put(&repo, "x/b", b.clone()).await;
    let first_commit = repo.catalog().latest_item("x/a").unwrap().unwrap().commit;
    forget(&repo, "x/a").await;

    // A long grace: marked, not deleted.
    let plan = gc(&repo, &config, Duration::from_secs(3600)).await;
    assert_eq!(plan.gc.mark.len(), 1, "{}", plan.render());
    let pack = plan.gc.mark[0].id.clone();
    let plan = gc(&repo, &config, Duration::from_secs(3600)).await;
    assert!(plan.gc.delete.is_empty());
    assert_eq!(plan.gc.waiting.len(), 1);

    // The same content again: stored anew, not deduplicated against the
    // marked pack.
    let mut w = repo.writer();
    w.put("x/a3", "test", serde_json::json!({}), Chunking::Cdc, &a[..])
        .await
        .expect("put");
    let info = w.commit().await.expect("commit").expect("a commit");
    assert_eq!(info.packs, 1, "the chunks were stored again");
    assert!(info.pack_bytes > 100_000);

    let plan = gc(&repo, &config, Duration::ZERO).await;
    assert_eq!(
        plan.gc
            .delete
            .iter()
            .map(|p| p.id.clone())
            .collect::<Vec<_>>(),
        vec![pack.clone()],
        "{}",
        plan.render()
    );
    assert!(!pack_exists(&t.store(), &pack));
    assert_eq!(read(&repo, "x/a3").await, a);
    assert_eq!(read(&repo, "x/b").await, b);
    assert!(repo.catalog().latest_item("x/a").unwrap().is_none());
    let verified = repo.verify().await.expect("verify");
    assert!(verified.problems.is_empty(), "{:?}", verified.problems);
    // The commit that introduced x/a and its pack holds nothing live: gone.
    assert!(
        !t.store().join(&first_commit).exists(),
        "{first_commit} is deleted"
    );
    assert!(t.store().join("catalog").read_dir().unwrap().count() >= 4);

    let live = |r: &Repository| -> String {
        r.catalog()
            .dump()
            .expect("dump")
            .lines()
            .filter(|l| !l.starts_with("\"commit\""))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let original = live(&repo);
    drop(repo);
    let rebuilt = Repository::rebuild_catalog(t.fanout(), t.opts.clone())
        .await
        .expect("rebuild");
    assert_eq!(live(&rebuilt), original);
    assert_eq!(read(&rebuilt, "x/a3").await, a);
}

/// A destination that refuses a deletion: the run reports it and leaves
/// the pack marked (nothing recorded as deleted that a destination still
/// holds); the next run deletes it there and records it.
#[tokio::test]
async fn a_failed_deletion_is_reported_and_retried_next_run() {
    use std::sync::Arc;

    use pitr::ship::fault::{FaultPlan, FaultyDestination};
    use pitr::ship::{Destination, Fanout, FsDestination};

    let t = TestRepo::new().await;
    let config = config(&t);
    let second = t.dir.path().join("second");
    let faulty = Arc::new(FaultyDestination::new(FsDestination::new(
        "second", &second,
    )));
    let fanout = Fanout::new(vec![
        Arc::new(FsDestination::new("local", t.store())) as Arc<dyn Destination>,
        faulty.clone() as Arc<dyn Destination>,
    ]);
    Repository::init(&fanout, &t.opts).await.expect("init both");
    let repo = Repository::open(fanout, t.opts.clone())
        .await
        .expect("open");
    put(&repo, "x/a", data(5, 300_000, 0)).await;
    put(&repo, "x/b", data(6, 300_000, 0)).await;
    forget(&repo, "x/a").await;
    let plan = gc(&repo, &config, Duration::ZERO).await;
    let pack = plan.gc.mark[0].id.clone();

    faulty.set_plan(FaultPlan {
        fail_deletes: 1,
        ..FaultPlan::default()
    });
    let opts = RunOptions {
        now: jiff::Timestamp::now(),
        grace: Duration::ZERO,
        scope: Scope::All,
    };
    let (_, report) = retention::run(&repo, &config, &opts, false)
        .await
        .expect("a failed deletion does not fail the run");
    let report = report.expect("applied");
    assert_eq!(report.gc.deleted, 0);
    assert_eq!(report.gc.failures.len(), 1, "{:?}", report.gc.failures);
    assert!(
        report.gc.failures[0].starts_with("second: deleting packs/"),
        "{:?}",
        report.gc.failures
    );
    assert!(!pack_exists(&t.store(), &pack));
    assert!(pack_exists(&second, &pack), "the refused deletion left it");
    assert!(matches!(
        repo.catalog().pack_gc_states().unwrap().get(&pack),
        Some(pitr::repo::catalog::PackGcState::Marked(_))
    ));

    let plan = gc(&repo, &config, Duration::ZERO).await;
    assert_eq!(plan.gc.delete.len(), 1, "retried: {}", plan.render());
    assert!(!pack_exists(&second, &pack));
    assert!(matches!(
        repo.catalog().pack_gc_states().unwrap().get(&pack),
        Some(pitr::repo::catalog::PackGcState::Deleted(_))
    ));
}

/// A PostgreSQL history made by hand (records, files, WAL segments,
/// partials, a history file, test-restore reports): the plan forgets
/// exactly the expected items and applying it leaves exactly the rest.
#[tokio::test]
async fn a_synthetic_postgres_history_forgets_exactly_the_expected_items() {
    use pitr::basebackup::{BackupRecord, KIND_BACKUP, KIND_FILE, KIND_RESTORABLE};
    use pitr::pg::Lsn;
    use pitr::verify::{DatabaseKind, VerifyReport};
    use pitr::wal::{KIND_HISTORY, KIND_PARTIAL, KIND_SEGMENT, WalAttrs};

    let t = TestRepo::new().await;
    let path = t.write_config(&[("main", "host=127.0.0.1 port=1 user=x dbname=postgres")]);
    with_retention(
        &path,
        "keep_last = 1\nkeep_daily = 0\nkeep_weekly = 0\nkeep_monthly = 0\n",
    );
    let config = Config::load(&path).expect("config");
    let repo = t.open().await;
    let mut w = repo.writer();
    let mut item = async |name: &str, kind: &str, attrs: serde_json::Value, body: &[u8]| {
        w.put(name, kind, attrs, Chunking::Cdc, body)
            .await
            .expect("put");
        w.commit().await.expect("commit");
    };
    let record = |id: &str, start: &str| {
        let t: jiff::Timestamp = jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", id)
            .expect("id")
            .to_zoned(jiff::tz::TimeZone::UTC)
            .expect("zoned")
            .timestamp();
        serde_json::to_value(BackupRecord {
            id: id.into(),
            label: "x".into(),
            database: "main".into(),
            system_id: "1".into(),
            server_version: "150000".into(),
            start_lsn: start.parse().expect("lsn"),
            start_timeline: 1,
            end_lsn: start.parse().expect("lsn"),
            end_timeline: 1,
            started: t,
            finished: t,
            tablespaces: vec![],
            files: 1,
            bytes: 1,
            stored_bytes: 1,
            listing: String::new(),
            manifest: String::new(),
            restorable: false,
            parent: None,
        })
        .expect("record")
    };
    let wal = |start: u64, end: u64| {
        serde_json::to_value(WalAttrs {
            timeline: 1,
            start: Lsn(start).to_string(),
            end: Lsn(end).to_string(),
            segment_size: 16 << 20,
            index: None,
        })
        .expect("attrs")
    };
    let seg = 16u64 << 20;
    let (b1, b2, b3) = ("20261120T000000Z", "20261121T000000Z", "20261122T000000Z");
    let (orphan, running) = ("20261119T000000Z", "20261123T000000Z");
    for (id, start, restorable) in [
        (b1, "0/1000028", true),
        (b2, "0/3000028", true),
        (b3, "0/5000028", false),
    ] {
        let name = format!("pg/main/backups/{id}");
        item(&name, KIND_BACKUP, record(id, start), b"").await;
        if restorable {
            item(
                &format!("{name}.restorable"),
                KIND_RESTORABLE,
                serde_json::json!({}),
                b"",
            )
            .await;
        }
    }
    for id in [b1, b2, b3, orphan, running] {
        let name = format!("pg/main/base/{id}/base/PG_VERSION");
        item(&name, KIND_FILE, serde_json::json!({}), id.as_bytes()).await;
    }
    let p = |n: u64| format!("pg/main/wal/0000000100000000{n:08X}");
    item(
        &format!("{}.partial", p(1)),
        KIND_PARTIAL,
        wal(seg, seg + 8192),
        b"p1",
    )
    .await;
    item(&p(1), KIND_SEGMENT, wal(seg, 2 * seg), b"s1").await;
    item(&p(2), KIND_SEGMENT, wal(2 * seg, 3 * seg), b"s2").await;
    item(
        &format!("{}.partial", p(3)),
        KIND_PARTIAL,
        wal(3 * seg, 3 * seg + 8192),
        b"p3",
    )
    .await;
    item(&p(3), KIND_SEGMENT, wal(3 * seg, 4 * seg), b"s3").await;
    for (i, end) in [8192u64, 16384, 16384].iter().enumerate() {
        let body = format!("p4 {i}");
        item(
            &format!("{}.partial", p(4)),
            KIND_PARTIAL,
            wal(4 * seg, 4 * seg + end),
            body.as_bytes(),
        )
        .await;
    }
    item(
        "pg/main/wal/00000002.history",
        KIND_HISTORY,
        serde_json::json!({}),
        b"h",
    )
    .await;
    // Test-restore reports, recorded as `pitr verify --restore` records
    // them. The oldest kept backup is b2 (2026-11-21 00:00): v1 and v3 go;
    // v2 stays as the newest passing one, v4 as the newest and after b2;
    // another database's report is not this database's.
    let report = |db: &str, at: &str, ok: bool| VerifyReport {
        database: db.into(),
        kind: DatabaseKind::Postgres,
        started: at.parse().expect("time"),
        duration_secs: 1.0,
        target: None,
        reached: None,
        backup: Some(b1.into()),
        wal_files: 0,
        checks: vec![],
        ok,
        error: (!ok).then(|| "pg_amcheck found corruption".to_owned()),
    };
    let reports = [
        report("main", "2026-11-20T01:00:00Z", true),
        report("main", "2026-11-20T12:00:00Z", true),
        report("main", "2026-11-20T18:00:00Z", false),
        report("main", "2026-11-21T12:00:00Z", false),
        report("main2", "2026-11-19T00:00:00Z", true),
    ];
    for r in &reports {
        pitr::verify::record(&repo, r).await.expect("record");
    }

    let opts = RunOptions {
        // Past the failed backup's waiting time.
        now: jiff::Timestamp::now() + jiff::SignedDuration::from_hours(7),
        grace: Duration::from_secs(3600),
        scope: Scope::Postgres("main".into()),
    };
    let plan = retention::plan(&repo, &config, &opts).await.expect("plan");
    let d = &plan.databases[0];
    let verdicts: Vec<(&str, bool)> = d
        .backups
        .iter()
        .map(|b| (b.id.as_str(), b.keep()))
        .collect();
    assert_eq!(
        verdicts,
        [(b1, false), (b2, true), (b3, true)],
        "{}",
        plan.render()
    );
    assert_eq!(d.orphans, [orphan]);
    assert_eq!(d.partials_superseded, 3, "{}", plan.render());
    assert_eq!(d.wal_forgotten.len(), 1, "{}", plan.render());
    assert_eq!(
        (
            d.wal_forgotten[0].start,
            d.wal_forgotten[0].end,
            d.wal_forgotten[0].items
        ),
        (Lsn(seg), Lsn(3 * seg), 3)
    );
    assert_eq!(d.verify_reports_forgotten, 2, "{}", plan.render());
    // b1: record, marker, file; orphan file; 01.partial, 01, 02; 03.partial
    // and two of the three 04.partials; reports v1 and v3.
    assert_eq!(d.items_forgotten, 12, "{}", plan.render());

    let report = retention::apply(&repo, &plan).await.expect("apply");
    // Each forgotten item had a commit of its own. Those of the four without
    // a body (b1's record and marker, reports v1 and v3) hold nothing now
    // and go; the others hold packs that wait out the grace period.
    assert_eq!(report.gc.commits_deleted, 4, "{report:?}");
    let mut left: Vec<String> = repo
        .catalog()
        .items("pg/main/")
        .expect("items")
        .into_iter()
        .map(|i| i.name)
        .collect();
    left.sort();
    let mut expected = vec![
        format!("pg/main/backups/{b2}"),
        format!("pg/main/backups/{b2}.restorable"),
        format!("pg/main/backups/{b3}"),
        format!("pg/main/base/{b2}/base/PG_VERSION"),
        format!("pg/main/base/{b3}/base/PG_VERSION"),
        format!("pg/main/base/{running}/base/PG_VERSION"),
        p(3),
        format!("{}.partial", p(4)),
        "pg/main/wal/00000002.history".to_owned(),
    ];
    expected.sort();
    assert_eq!(left, expected);
    let mut reports_left: Vec<String> = repo
        .catalog()
        .items("verify/")
        .expect("items")
        .into_iter()
        .map(|i| i.name)
        .collect();
    reports_left.sort();
    let mut expected: Vec<String> = [1, 3, 4].iter().map(|&n| reports[n].item_name()).collect();
    expected.sort();
    assert_eq!(reports_left, expected);
    // /health's "last verification" is unchanged: v4 for main.
    let last = pitr::verify::last_reports(&repo).expect("reports");
    assert!(last.contains(&reports[3]), "{last:?}");
    // The newest 04.partial (the later of the two that reach as far) stays.
    let kept = repo
        .catalog()
        .latest_item(&format!("{}.partial", p(4)))
        .unwrap()
        .unwrap();
    assert_eq!(read(&repo, &kept.name).await, b"p4 2");
}

/// Commits replayed out of order (a commit of another process synced after
/// the one that forgot its item and deleted its pack) do not bring either
/// back: the catalog keeps tombstones.
#[test]
fn a_commit_applied_after_its_removal_stays_removed() {
    use pitr::repo::catalog::Catalog;
    use pitr::repo::{Commit, GcRecord, ItemRecord, Manifest, PackRecord};

    let dir = tempfile::tempdir().expect("tempdir");
    let mut cat = Catalog::open(&dir.path().join("catalog.db")).expect("catalog");
    let time: jiff::Timestamp = "2026-11-24T06:00:00Z".parse().unwrap();
    let pack = "ab".repeat(32);
    let data_commit = Commit {
        version: 1,
        seq: 1,
        writer: "0123456789abcdef".into(),
        time,
        packs: vec![PackRecord {
            id: pack.clone(),
            size: 10,
            chunks: vec![],
        }],
        items: vec![ItemRecord {
            kind: "test".into(),
            time,
            attrs: serde_json::json!({}),
            manifest: Manifest {
                name: "x/a".into(),
                size: 0,
                chunker: Chunking::Cdc,
                hash: String::new(),
                chunks: vec![],
            },
        }],
        forget: vec![],
        gc: GcRecord::default(),
        cids: Default::default(),
    };
    let removal = Commit {
        version: 2,
        seq: 2,
        writer: "fedcba9876543210".into(),
        time,
        packs: vec![],
        items: vec![],
        forget: vec![Forget {
            commit: data_commit.object_name(),
            names: vec!["x/a".into()],
        }],
        gc: GcRecord {
            delete: vec![pack.clone()],
            ..GcRecord::default()
        },
        cids: Default::default(),
    };
    cat.apply(&removal.object_name(), &removal).expect("apply");
    cat.apply(&data_commit.object_name(), &data_commit)
        .expect("apply");
    assert!(cat.items("x/").expect("items").is_empty());
    assert!(cat.packs().expect("packs").is_empty());
    assert_eq!(
        cat.empty_commits().expect("empty"),
        [data_commit.object_name()]
    );
}

/// `run_scheduled` runs at its cron times, publishes each outcome, and
/// returns when shut down.
#[tokio::test]
async fn scheduled_runs_publish_their_status() {
    let t = TestRepo::new().await;
    let mut config = config(&t);
    config.retention.schedule = Some(pitr::cron::CronSchedule::parse("* * * * * *").expect("cron"));
    let repo = t.open().await;
    put(&repo, "x/a", data(8, 100_000, 0)).await;
    forget(&repo, "x/a").await;
    let (tx, mut rx) = tokio::sync::watch::channel(retention::RetentionStatus::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(retention::run_scheduled(repo, config, tx, async {
        let _ = stopped.await;
    }));
    let status = tokio::time::timeout(
        Duration::from_secs(30),
        rx.wait_for(|s| s.last_run.is_some()),
    )
    .await
    .expect("a run within 30 s")
    .expect("status")
    .clone();
    assert_eq!(status.last_ok, Some(true), "{status:?}");
    assert_eq!(status.packs_marked, 1, "{status:?}");
    assert!(status.next_run.is_some());
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("stops")
        .expect("no panic");
}

/// A scheduled run that fails (here: the destination refuses reads while
/// the catalog syncs) is published as failed with its error, and the
/// schedule goes on.
#[tokio::test]
async fn a_failed_scheduled_run_is_published_and_the_schedule_goes_on() {
    use std::sync::Arc;

    use pitr::ship::fault::{FaultPlan, FaultyDestination};
    use pitr::ship::{Destination, Fanout, FsDestination};

    let t = TestRepo::new().await;
    let mut config = config(&t);
    config.retention.schedule = Some(pitr::cron::CronSchedule::parse("* * * * * *").expect("cron"));
    let faulty = Arc::new(FaultyDestination::new(FsDestination::new(
        "local",
        t.store(),
    )));
    let mut opts = t.opts.clone();
    opts.state_dir = t.dir.path().join("state-2");
    let repo = Repository::open(
        Fanout::new(vec![faulty.clone() as Arc<dyn Destination>]),
        opts,
    )
    .await
    .expect("open");
    // Another writer's commit, which the sync must read.
    put(&t.open().await, "x/a", data(9, 1000, 0)).await;
    faulty.set_plan(FaultPlan {
        fail_gets: usize::MAX,
        ..FaultPlan::default()
    });
    let (tx, mut rx) = tokio::sync::watch::channel(retention::RetentionStatus::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(retention::run_scheduled(repo, config, tx, async {
        let _ = stopped.await;
    }));
    let status = tokio::time::timeout(
        Duration::from_secs(30),
        rx.wait_for(|s| s.last_run.is_some()),
    )
    .await
    .expect("a run within 30 s")
    .expect("status")
    .clone();
    assert_eq!(status.last_ok, Some(false), "{status:?}");
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("injected")),
        "{status:?}"
    );
    // Reads work again: a later run succeeds.
    faulty.set_plan(FaultPlan::default());
    tokio::time::timeout(
        Duration::from_secs(30),
        rx.wait_for(|s| s.last_ok == Some(true)),
    )
    .await
    .expect("a successful run within 30 s")
    .expect("status");
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("stops")
        .expect("no panic");
}

/// Packs no commit names: one an abandoned writer left is marked, then
/// deleted after the grace period; one a writer in flight uploaded is
/// kept until it commits, then unmarked.
#[tokio::test]
async fn packs_no_commit_names_are_collected_but_not_a_writers_in_flight() {
    let t = TestRepo::new().await;
    let config = config(&t);
    let repo = t.open().await;
    let packs = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(t.store().join("packs"))
            .into_iter()
            .flatten()
            .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
            .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    // Larger than a pack (4 MiB here): a pack is uploaded during the put.
    let mut abandoned = repo.writer();
    abandoned
        .put(
            "x/lost",
            "test",
            serde_json::json!({}),
            Chunking::Cdc,
            &data(12, 5 << 20, 0)[..],
        )
        .await
        .expect("put");
    abandoned.abandon().await;
    let lost = packs();
    assert_eq!(lost.len(), 1, "one pack uploaded, never committed");

    let plan = gc(&repo, &config, Duration::ZERO).await;
    assert_eq!(plan.gc.mark.len(), 1, "{}", plan.render());
    assert!(plan.gc.mark[0].orphan && plan.gc.mark[0].id == lost[0]);
    assert!(plan.render().contains("no commit names it"));

    // A writer in flight uploads a pack of its own meanwhile.
    let content = data(13, 5 << 20, 0);
    let mut w = repo.writer();
    w.put(
        "x/kept",
        "test",
        serde_json::json!({}),
        Chunking::Cdc,
        &content[..],
    )
    .await
    .expect("put");
    // Its first pack uploads in the background: wait (bounded) until the
    // destination lists it.
    crate::support::eventually(
        "the writer's pack uploaded",
        Duration::from_secs(30),
        async || {
            let packs = repo.fanout().list("packs/").await.expect("list").len();
            if packs >= 2 {
                Ok(())
            } else {
                Err(format!("{packs} packs listed"))
            }
        },
    )
    .await;
    let plan = gc(&repo, &config, Duration::ZERO).await;
    assert_eq!(
        plan.gc
            .delete
            .iter()
            .map(|p| p.id.clone())
            .collect::<Vec<_>>(),
        lost,
        "{}",
        plan.render()
    );
    assert_eq!(
        plan.gc.mark.len(),
        1,
        "the writer's uploaded pack: {}",
        plan.render()
    );
    let theirs = plan.gc.mark[0].id.clone();
    assert!(!packs().contains(&lost[0]));

    let plan = gc(&repo, &config, Duration::ZERO).await;
    assert!(plan.gc.delete.is_empty(), "{}", plan.render());
    assert_eq!(plan.gc.waiting.len(), 1, "{}", plan.render());
    w.commit().await.expect("commit");
    let plan = gc(&repo, &config, Duration::ZERO).await;
    assert!(
        plan.gc.unmark.iter().any(|p| p.id == theirs),
        "{}",
        plan.render()
    );
    assert!(plan.gc.delete.is_empty(), "{}", plan.render());
    assert_eq!(read(&repo, "x/kept").await, content);
    let verified = repo.verify().await.expect("verify");
    assert!(verified.problems.is_empty(), "{:?}", verified.problems);
}

/// A retention run whose plan is dated before a writer began, but which
/// lists the destinations after that writer uploaded a pack: the pack's
/// mark is dated once the listing was taken, not when the plan began, so
/// the in-flight rule keeps it until the writer commits (dated at the
/// plan's start, the next run deleted it under the writer).
#[tokio::test]
async fn a_writer_begun_while_garbage_is_planned_keeps_its_pack() {
    let t = TestRepo::new().await;
    let config = config(&t);
    let repo = t.open().await;
    let planned = jiff::Timestamp::now();
    // The writer begins strictly after the plan's time.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let content = data(14, 5 << 20, 0);
    let mut w = repo.writer();
    w.put(
        "x/late",
        "test",
        serde_json::json!({}),
        Chunking::Cdc,
        &content[..],
    )
    .await
    .expect("put");
    crate::support::eventually(
        "the writer's pack uploaded",
        Duration::from_secs(30),
        async || {
            let packs = repo.fanout().list("packs/").await.expect("list").len();
            if packs >= 1 {
                Ok(())
            } else {
                Err("no pack listed")
            }
        },
    )
    .await;
    let opts = RunOptions {
        now: planned,
        grace: Duration::ZERO,
        scope: Scope::All,
    };
    let (plan, _) = retention::run(&repo, &config, &opts, false)
        .await
        .expect("retention run");
    assert_eq!(plan.gc.mark.len(), 1, "{}", plan.render());
    assert!(plan.gc.marked_at > planned, "marks dated after the listing");
    let plan = gc(&repo, &config, Duration::ZERO).await;
    assert!(plan.gc.delete.is_empty(), "{}", plan.render());
    assert_eq!(plan.gc.waiting.len(), 1, "{}", plan.render());
    w.commit().await.expect("commit");
    assert_eq!(read(&repo, "x/late").await, content);
    let verified = repo.verify().await.expect("verify");
    assert!(verified.problems.is_empty(), "{:?}", verified.problems);
}

/// Retention run from another state directory (another host, CI) marks and,
/// after the grace period, deletes a pack; a live writer elsewhere that
/// re-reads the catalog at least every `gc_grace / 2` never references it
/// afterwards: what it writes with the same content reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retention_run_from_another_state_directory_never_deletes_what_a_live_writer_references()
{
    let t = TestRepo::new().await;
    let config = config(&t);
    let grace = Duration::from_secs(2);
    // The live writer, with the refresh `pitr run` and `pitr backup` use.
    let writer = t.open().await;
    writer.refresh_catalog_every(grace / 2);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let refresher = {
        let writer = writer.clone();
        tokio::spawn(async move {
            writer
                .keep_catalog_fresh(async {
                    let _ = stop_rx.await;
                })
                .await
        })
    };
    let a = data(21, 300_000, 0);
    put(&writer, "x/a", a.clone()).await;
    put(&writer, "x/b", data(22, 300_000, 0)).await;

    // Elsewhere: its own state directory, the same destination.
    let mut other_opts = t.opts.clone();
    other_opts.state_dir = t.dir.path().join("other-state");
    let other = Repository::open(t.fanout(), other_opts)
        .await
        .expect("open elsewhere");
    forget(&other, "x/a").await;
    let plan = gc(&other, &config, grace).await;
    assert_eq!(plan.gc.mark.len(), 1, "{}", plan.render());
    let pack = plan.gc.mark[0].id.clone();
    tokio::time::sleep(grace + Duration::from_millis(200)).await;
    let plan = gc(&other, &config, grace).await;
    assert_eq!(plan.gc.delete.len(), 1, "{}", plan.render());
    assert!(!pack_exists(&t.store(), &pack));

    // The writer stores x/a's content again: never against the deleted
    // pack.
    put(&writer, "x/a-again", a.clone()).await;
    let _ = stop_tx.send(());
    refresher.await.expect("refresher");
    let mut reader_opts = t.opts.clone();
    reader_opts.state_dir = t.dir.path().join("reader-state");
    let reader = Repository::open(t.fanout(), reader_opts)
        .await
        .expect("open a reader");
    assert_eq!(read(&reader, "x/a-again").await, a);
    let verified = reader.verify().await.expect("verify");
    assert!(verified.problems.is_empty(), "{:?}", verified.problems);
}
