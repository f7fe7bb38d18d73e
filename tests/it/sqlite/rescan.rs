//! A rescan of every page does not hold up the captures after it. While a
//! capture is being stored — here on a destination that holds its puts
//! until the test lets them through, as a slow upload or a loaded machine
//! would — the watcher keeps reading the WAL, so that a writer committing
//! and restarting the WAL meanwhile costs no second rescan: the capture
//! after the rescan takes only the changed pages, and the latest restore
//! holds every row.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use pitr::repo::Repository;
use pitr::ship::fault::{FaultPlan, FaultyDestination};
use pitr::ship::{Destination, Fanout, FsDestination};
use pitr::sqlite::{Stats, Step, WatchOptions, Watcher};

use super::*;

/// A WAL frame of a 4 KiB page: its header and the page.
const FRAME: u64 = 24 + 4096;

/// Waits until `counter` has grown by at least `by` since `since`.
async fn grown(counter: &AtomicU64, since: u64, by: u64, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while Stats::get(counter) < since + by {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Commits `n` rows, one per transaction.
fn insert(app: &rusqlite::Connection, n: usize) {
    for _ in 0..n {
        app.execute("INSERT INTO t (pad) VALUES (randomblob(100))", [])
            .expect("insert");
    }
}

/// The `reason` of every stored capture of `app`, in order.
fn reasons(repo: &TestRepo) -> Vec<String> {
    let catalog =
        rusqlite::Connection::open(repo.opts.state_dir.join("catalog.db")).expect("catalog");
    let mut st = catalog
        .prepare(
            "SELECT json_extract(attrs, '$.reason') FROM items \
             WHERE name LIKE 'sqlite/app/%' ORDER BY name",
        )
        .expect("prepare");
    st.query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_is_followed_while_a_rescan_is_stored_so_captures_go_on() {
    let repo = TestRepo::new().await;
    let faulty = Arc::new(FaultyDestination::new(FsDestination::new(
        "local",
        repo.store(),
    )));
    let fanout = Fanout::new(vec![faulty.clone() as Arc<dyn Destination>]);
    let db = repo.dir.path().join("app.db");
    // The application: WAL mode, its checkpoints taken by the test.
    let app = rusqlite::Connection::open(&db).expect("open");
    app.busy_timeout(Duration::from_secs(10)).expect("timeout");
    app.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
         CREATE TABLE t (id INTEGER PRIMARY KEY, pad BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
         INSERT INTO t (pad) SELECT randomblob(3000) FROM n;",
    )
    .expect("fill");
    let opts = WatchOptions {
        name: "app".into(),
        path: db.clone(),
        interval: Duration::from_secs(1),
        snapshot_interval: Duration::from_secs(86400),
        spool_dir: repo.dir.path().join("spool"),
    };
    let repository = Repository::open(fanout, repo.opts.clone())
        .await
        .expect("open");
    let mut w = Watcher::new(repository, opts).expect("watcher");
    let stats = w.stats();
    assert!(matches!(
        w.step(false).await.expect("start"),
        Step::Stored { snapshot: true, .. }
    ));

    // A TRUNCATE checkpoint throws frames away wherever the watcher was:
    // the next capture compares every page.
    insert(&app, 10);
    app.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .expect("checkpoint");
    insert(&app, 10);

    // The rescan is taken; its store waits at the destination.
    let (open, gate) = tokio::sync::watch::channel(false);
    faulty.set_plan(FaultPlan {
        hold_puts: Some(gate),
        ..FaultPlan::default()
    });
    let scans = Stats::get(&stats.full_scans);
    let storing = tokio::spawn(async move {
        let r = w.step(false).await;
        (w, r)
    });
    grown(&stats.full_scans, scans, 1, "the rescan was not taken").await;

    // Meanwhile the writer commits, restarts the WAL and writes over the
    // frames of the generation before: each step is read before the next.
    let read = Stats::get(&stats.wal_bytes_read);
    insert(&app, 50);
    grown(
        &stats.wal_bytes_read,
        read,
        50 * FRAME,
        "the watcher did not read the WAL while a capture was being stored",
    )
    .await;
    let (busy, _, _): (i64, i64, i64) = app
        .query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .expect("checkpoint");
    assert_eq!(busy, 0, "the RESTART checkpoint was blocked");
    let read = Stats::get(&stats.wal_bytes_read);
    insert(&app, 1);
    grown(
        &stats.wal_bytes_read,
        read,
        FRAME,
        "the restarted WAL was not read",
    )
    .await;
    let read = Stats::get(&stats.wal_bytes_read);
    insert(&app, 200);
    grown(
        &stats.wal_bytes_read,
        read,
        200 * FRAME,
        "the restarted WAL was not read",
    )
    .await;
    assert!(!storing.is_finished(), "the store did not wait at the gate");

    // The rescan is stored; the capture after it takes the frames followed
    // meanwhile, not every page again.
    open.send(true).expect("the destination holds the gate");
    let (mut w, r) = storing.await.expect("the step");
    assert!(matches!(r, Ok(Step::Stored { .. })), "{r:?}");
    insert(&app, 5);
    match w.step(false).await.expect("the capture after the rescan") {
        Step::Stored {
            snapshot: false,
            pages,
            ..
        } => assert!(pages < 100, "{pages} pages stored"),
        other => panic!("expected a page set, got {other:?}"),
    }
    let reasons = reasons(&repo);
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert_eq!(reasons[0], "start");
    assert!(reasons[1].starts_with("rescan: "), "{reasons:?}");
    assert_eq!(reasons[2], "changes", "{reasons:?}");
    assert_eq!(Stats::get(&stats.full_scans), scans + 1);

    // Every committed row is in the latest restore.
    let committed: i64 = app
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .expect("count");
    let cfg = sqlite_config(&repo, "app", &db);
    let target = repo.dir.path().join("restored.db");
    tokio::task::spawn_blocking(move || {
        restore_ok(&cfg, "app", None, &target);
        assert_eq!(
            sqlite3(&target, "SELECT count(*) FROM t"),
            committed.to_string()
        );
    })
    .await
    .expect("restore");
}
