//! Retention of SQLite captures: snapshots kept by the policy, page sets
//! (and test-restore reports) before the oldest kept snapshot forgotten,
//! the window after it intact.

use std::time::Duration;

use pitr::sqlite::{Step, WatchOptions, Watcher};

use crate::sqlite::{add_sqlite, restore_ok, rows, text};
use crate::support::TestRepo;
use crate::support::pitr;

async fn capture(w: &mut Watcher, snapshot: bool) {
    match w.step(true).await {
        Ok(Step::Stored { snapshot: s, .. }) => assert_eq!(s, snapshot),
        other => panic!("expected a stored capture, got {other:?}"),
    }
}

/// Three snapshots, each followed by a page set; keeping two snapshots
/// forgets the first snapshot and its page set only, and the test-restore
/// report made before the second (the newest report stays); the latest
/// state and a time inside the kept window restore, a time before it is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_captures_before_the_oldest_kept_snapshot_are_forgotten() {
    let t = TestRepo::new().await;
    let db = t.dir.path().join("app.db");
    // A writer that stays open in WAL mode, as an application does: the
    // watcher reads its changes from the WAL.
    let conn = rusqlite::Connection::open(&db).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
         CREATE TABLE t (id INTEGER PRIMARY KEY, at_ns INTEGER);",
    )
    .expect("create");
    let cfg = t.write_config(&[]);
    add_sqlite(&cfg, "app", &db, "");
    super::with_retention(
        &cfg,
        "keep_last = 2\nkeep_daily = 0\nkeep_weekly = 0\nkeep_monthly = 0\n",
    );
    t.enable_test_restores(&cfg, "off");
    let c = cfg.to_str().expect("utf-8");
    let repo = t.open().await;
    let opts = || WatchOptions {
        name: "app".into(),
        path: db.clone(),
        interval: Duration::from_secs(1),
        snapshot_interval: Duration::from_secs(86400),
        spool_dir: t.dir.path().join("spool"),
    };
    let mut marks = Vec::new();
    for round in 0..3i64 {
        // A new watcher starts with a snapshot, then stores page sets.
        let mut w = Watcher::new(repo.clone(), opts()).expect("watcher");
        conn.execute(&format!("INSERT INTO t VALUES ({}, 0)", 2 * round + 1), [])
            .expect("insert");
        capture(&mut w, true).await;
        marks.push(jiff::Timestamp::now());
        conn.execute(&format!("INSERT INTO t VALUES ({}, 0)", 2 * round + 2), [])
            .expect("insert");
        capture(&mut w, false).await;
        if round == 0 || round == 2 {
            let out = pitr(&["verify", "-c", c, "--restore", "--sqlite", "app"]);
            assert!(out.status.success(), "{}", text(&out));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = pitr(&["retention", "-c", c, "--sqlite", "app", "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
    let plan = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(plan.contains("forget  sqlite/app/000000000001"), "{plan}");
    assert!(
        plan.contains("keep    sqlite/app/000000000003  (last)"),
        "{plan}"
    );
    assert!(
        plan.contains("keep    sqlite/app/000000000005  (newest restorable, last)"),
        "{plan}"
    );
    assert!(
        plan.contains("forget  1 page sets before the oldest kept snapshot"),
        "{plan}"
    );
    assert!(
        plan.contains("forget  1 test-restore reports from before the oldest kept backup"),
        "{plan}"
    );
    assert!(plan.contains("items forgotten: 3"), "{plan}");
    let before = pitr::verify::last_reports(&repo).expect("reports");

    let out = pitr(&["retention", "-c", c, "--sqlite", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    repo.sync_catalog().await.expect("sync");
    let left: Vec<String> = pitr::sqlite::store::captures(&repo, "app")
        .expect("captures")
        .iter()
        .map(|c| c.item.name.clone())
        .collect();
    assert_eq!(
        left,
        [3, 4, 5, 6].map(|s| format!("sqlite/app/{s:012}")).to_vec()
    );
    let reports = repo.catalog().items("verify/").expect("items");
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].name, before[0].item_name());

    let target = t.dir.path().join("latest.db");
    restore_ok(&cfg, "app", None, &target);
    assert_eq!(rows(&target).len(), 6);
    // Just after the second snapshot: inside the kept window.
    let target = t.dir.path().join("second.db");
    restore_ok(&cfg, "app", Some(&marks[1].to_string()), &target);
    assert_eq!(
        rows(&target).iter().map(|r| r.0).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    // Just after the first: forgotten.
    let target = t.dir.path().join("first.db");
    let out = pitr(&[
        "restore",
        "-c",
        c,
        "--sqlite",
        "app",
        "--at",
        &marks[0].to_string(),
        "--target",
        target.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // An unknown name is a usage error.
    let out = pitr(&["retention", "-c", c, "--sqlite", "nope", "--dry-run"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("no [[sqlite]] entry named \"nope\""),
        "{}",
        text(&out)
    );
}
