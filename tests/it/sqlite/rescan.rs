//! A rescan of every page does not hold up the captures after it. While a
//! capture is being stored — here on a destination that holds its puts
//! until the test lets them through, as a slow upload or a loaded machine
//! would — the watcher keeps reading the WAL, so that a writer committing
//! and restarting the WAL meanwhile costs no second rescan: the capture
//! after the rescan takes only the changed pages, and the latest restore
//! holds every row. And when a capture fails to store after the watcher
//! followed a new WAL against it, the next capture compares every page
//! (the frames were judged new against pages that never reached the
//! repository), and the latest restore still holds every row.

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

/// Commits `n` rows, one per transaction, and waits until the watcher
/// has read their frames.
async fn insert_and_read(app: &rusqlite::Connection, stats: &Stats, n: usize, what: &str) {
    let read = Stats::get(&stats.wal_bytes_read);
    insert(app, n);
    grown(&stats.wal_bytes_read, read, n as u64 * FRAME, what).await;
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

/// A watched database of 2000 rows (WAL mode, checkpoints taken by the
/// test) on a destination the test can hold and fail, its first capture
/// (a snapshot) stored.
struct Setup {
    repo: TestRepo,
    faulty: Arc<FaultyDestination<FsDestination>>,
    db: std::path::PathBuf,
    app: rusqlite::Connection,
    w: Watcher,
    stats: Arc<Stats>,
}

async fn setup() -> Setup {
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
    Setup {
        repo,
        faulty,
        db,
        app,
        w,
        stats,
    }
}

/// Holds every put at the destination until the returned sender says
/// `true`.
fn hold_puts(faulty: &FaultyDestination<FsDestination>) -> tokio::sync::watch::Sender<bool> {
    let (open, gate) = tokio::sync::watch::channel(false);
    faulty.set_plan(FaultPlan {
        hold_puts: Some(gate),
        ..FaultPlan::default()
    });
    open
}

/// While a capture is held at the destination: the writer commits 50
/// rows, restarts the WAL (a RESTART checkpoint) and commits 201 more, each
/// step read by the watcher before the next.
async fn restart_the_wal_while_held(app: &rusqlite::Connection, stats: &Stats) {
    insert_and_read(
        app,
        stats,
        50,
        "the watcher did not read the WAL while a capture was being stored",
    )
    .await;
    let (busy, _, _): (i64, i64, i64) = app
        .query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .expect("checkpoint");
    assert_eq!(busy, 0, "the RESTART checkpoint was blocked");
    insert_and_read(app, stats, 1, "the restarted WAL was not read").await;
    insert_and_read(app, stats, 200, "the restarted WAL was not read").await;
}

/// Restores the latest capture of `app` and checks it holds every row
/// committed so far.
async fn latest_restore_holds_every_row(s: &Setup) {
    let committed: i64 = s
        .app
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .expect("count");
    let cfg = sqlite_config(&s.repo, "app", &s.db);
    let target = s.repo.dir.path().join(format!("restored-{committed}.db"));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_is_followed_while_a_rescan_is_stored_so_captures_go_on() {
    let s = setup().await;
    let (app, stats) = (&s.app, s.stats.clone());

    // A TRUNCATE checkpoint throws frames away wherever the watcher was:
    // the next capture compares every page.
    insert(app, 10);
    app.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .expect("checkpoint");
    insert(app, 10);

    // The rescan is taken; its store waits at the destination.
    let open = hold_puts(&s.faulty);
    let scans = Stats::get(&stats.full_scans);
    let mut w = s.w;
    let storing = tokio::spawn(async move {
        let r = w.step(false).await;
        (w, r)
    });
    grown(&stats.full_scans, scans, 1, "the rescan was not taken").await;

    // Meanwhile the writer commits, restarts the WAL and writes over the
    // frames of the generation before: each step is read before the next.
    restart_the_wal_while_held(app, &stats).await;
    assert!(!storing.is_finished(), "the store did not wait at the gate");

    // The rescan is stored; the capture after it takes the frames followed
    // meanwhile, not every page again.
    open.send(true).expect("the destination holds the gate");
    let (mut w, r) = storing.await.expect("the step");
    assert!(matches!(r, Ok(Step::Stored { .. })), "{r:?}");
    insert(app, 5);
    match w.step(false).await.expect("the capture after the rescan") {
        Step::Stored {
            snapshot: false,
            pages,
            ..
        } => assert!(pages < 100, "{pages} pages stored"),
        other => panic!("expected a page set, got {other:?}"),
    }
    let reasons = reasons(&s.repo);
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert_eq!(reasons[0], "start");
    assert!(reasons[1].starts_with("rescan: "), "{reasons:?}");
    assert_eq!(reasons[2], "changes", "{reasons:?}");
    assert_eq!(Stats::get(&stats.full_scans), scans + 1);

    // Every committed row is in the latest restore.
    let s = Setup { w, ..s };
    latest_restore_holds_every_row(&s).await;
}

/// Takes a capture of the changes so far (a page set), holds its store at
/// the destination while `meanwhile` runs, then fails the store for good;
/// returns the watcher, the destination healthy again.
async fn fail_a_held_capture(
    mut w: Watcher,
    faulty: &FaultyDestination<FsDestination>,
    stats: &Stats,
    meanwhile: impl AsyncFnOnce(),
) -> Watcher {
    let open = hold_puts(faulty);
    let (scans, failures, puts) = (
        Stats::get(&stats.full_scans),
        Stats::get(&stats.failures),
        faulty.puts_seen(),
    );
    let storing = tokio::spawn(async move {
        let r = w.step(false).await;
        (w, r)
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while faulty.puts_seen() == puts {
        assert!(
            std::time::Instant::now() < deadline,
            "the capture never reached the destination"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        Stats::get(&stats.full_scans),
        scans,
        "the capture is a page set"
    );
    meanwhile().await;
    assert!(!storing.is_finished(), "the store did not wait at the gate");
    // Every put from now on fails for good; the held one goes through.
    faulty.set_plan(FaultPlan {
        fail_puts: usize::MAX,
        transient: false,
        ..FaultPlan::default()
    });
    open.send(true).expect("the destination holds the gate");
    let (w, r) = storing.await.expect("the step");
    assert!(r.is_err(), "the capture was stored: {r:?}");
    assert_eq!(Stats::get(&stats.failures), failures + 1);
    faulty.set_plan(FaultPlan::default());
    w
}

/// Stores the next capture; its reason.
async fn next_capture(w: &mut Watcher, repo: &TestRepo) -> String {
    match w.step(false).await.expect("the capture after the failure") {
        Step::Stored { .. } => {}
        other => panic!("expected a capture, got {other:?}"),
    }
    reasons(repo).pop().expect("a capture")
}

/// A capture that fails to store loses nothing. Its pages stay pending:
/// after a WAL restart followed while it was held, the next capture is an
/// ordinary page set that takes them again. After the writer closed
/// (SQLite checkpoints and removes the WAL) and reopened while it was
/// held, the next capture compares every page. Each time the latest
/// restore holds every row, and nothing of the failed capture is listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_that_fails_to_store_loses_nothing() {
    let mut s = setup().await;
    let stats = s.stats.clone();
    let scans = Stats::get(&stats.full_scans);

    insert(&s.app, 10);
    let app = &s.app;
    s.w = fail_a_held_capture(s.w, &s.faulty, &stats, async || {
        restart_the_wal_while_held(app, &stats).await;
    })
    .await;
    assert_eq!(reasons(&s.repo), ["start"], "nothing of the failed capture");
    insert(&s.app, 5);
    assert_eq!(next_capture(&mut s.w, &s.repo).await, "changes");
    assert_eq!(Stats::get(&stats.full_scans), scans, "no rescan");
    latest_restore_holds_every_row(&s).await;

    insert(&s.app, 10);
    let (app, db) = (&mut s.app, &s.db);
    s.w = fail_a_held_capture(s.w, &s.faulty, &stats, async || {
        // The last connection closing checkpoints and removes the WAL.
        let again = rusqlite::Connection::open(db).expect("open");
        drop(std::mem::replace(app, again));
        let wal = db.with_extension("db-wal");
        assert!(!wal.exists(), "SQLite kept {wal:?} after the last close");
        insert_and_read(app, &stats, 50, "the new WAL was not read").await;
    })
    .await;
    assert_eq!(reasons(&s.repo).len(), 2, "nothing of the failed capture");
    let reason = next_capture(&mut s.w, &s.repo).await;
    // Whether the watcher saw the WAL missing ("a new WAL appeared") or
    // only a new one in its place ("the WAL restarted") depends on when it
    // looked; either way it cannot know what it missed.
    assert!(reason.starts_with("rescan: "), "{reason}");
    assert_eq!(Stats::get(&stats.full_scans), scans + 1, "one rescan");
    latest_restore_holds_every_row(&s).await;
}
