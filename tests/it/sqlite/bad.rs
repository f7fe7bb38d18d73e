//! Bad cases: each a clear error or a logged event the watcher recovers
//! from — a database missing at start, deleted while watched, not SQLite,
//! locked for long, its page size changed — and restore refusals.

use std::time::Instant;

use pitr::sqlite::{CaptureError, Step, StepError, WatchOptions, Watcher};

use super::*;

fn options(repo: &TestRepo, db: &Path) -> WatchOptions {
    WatchOptions {
        name: "app".into(),
        path: db.to_owned(),
        interval: Duration::from_secs(1),
        snapshot_interval: Duration::from_secs(86400),
        spool_dir: repo.dir.path().join("spool"),
    }
}

fn stored(step: Result<Step, StepError>) -> (bool, u32) {
    match step {
        Ok(Step::Stored {
            snapshot, pages, ..
        }) => (snapshot, pages),
        other => panic!("expected a stored capture, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_deleted_replaced_and_not_sqlite() {
    let repo = TestRepo::new().await;
    let db = repo.dir.path().join("app.db");
    let mut w = Watcher::new(repo.open().await, options(&repo, &db)).expect("watcher");

    // Missing at start: an error naming the file; the watcher goes on.
    match w.step(false).await {
        Err(StepError::Capture(CaptureError::Missing(p))) => assert_eq!(p, db),
        other => panic!("expected Missing, got {other:?}"),
    }
    sqlite3(
        &db,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, at_ns INTEGER); INSERT INTO t VALUES (1, 1);",
    );
    assert!(
        stored(w.step(false).await).0,
        "the first capture is a snapshot"
    );

    // Deleted while watched.
    std::fs::remove_file(&db).expect("rm");
    assert!(matches!(
        w.step(false).await,
        Err(StepError::Capture(CaptureError::Missing(_)))
    ));
    // Not an SQLite file in its place.
    std::fs::write(&db, vec![b'x'; 8192]).expect("write");
    match w.step(false).await {
        Err(StepError::Capture(e @ CaptureError::NotSqlite { .. })) => {
            assert!(e.to_string().contains("is not an SQLite database"), "{e}")
        }
        other => panic!("expected NotSqlite, got {other:?}"),
    }
    // A new database in its place (new inode): every page compared.
    std::fs::remove_file(&db).expect("rm");
    sqlite3(
        &db,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, at_ns INTEGER); INSERT INTO t VALUES (1, 1), (2, 2);",
    );
    stored(w.step(false).await);
    let cfg = sqlite_config(&repo, "app", &db);
    let target = repo.dir.path().join("restored.db");
    restore_ok(&cfg, "app", None, &target);
    assert_eq!(rows(&target), vec![(1, 1), (2, 2)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_lock_is_waited_out_without_stalling_and_page_size_changes_snapshot() {
    let repo = TestRepo::new().await;
    let db = repo.dir.path().join("app.db");
    sqlite3(
        &db,
        "PRAGMA page_size = 4096; CREATE TABLE t (id INTEGER PRIMARY KEY, at_ns INTEGER); \
         INSERT INTO t VALUES (1, 1);",
    );
    let mut w = Watcher::new(repo.open().await, options(&repo, &db)).expect("watcher");
    stored(w.step(false).await);

    // Another process holds an exclusive lock (rollback mode) for 3 s.
    let mut locker = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import sqlite3, time\n\
                 c = sqlite3.connect({:?}, isolation_level=None)\n\
                 c.execute('BEGIN EXCLUSIVE'); c.execute('INSERT INTO t VALUES (2, 2)')\n\
                 print('locked', flush=True); time.sleep(3); c.execute('COMMIT')\n",
                db.display().to_string()
            ),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(locker.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    let t = Instant::now();
    let r = w.step(true).await;
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "the capture stalled {:?}",
        t.elapsed()
    );
    assert!(
        matches!(r, Err(StepError::Capture(CaptureError::Busy(_)))),
        "{r:?}"
    );
    assert!(locker.wait().expect("locker").success());
    stored(w.step(false).await);

    // A page size change (rollback mode: VACUUM applies it).
    sqlite3(
        &db,
        "PRAGMA page_size = 8192; VACUUM; INSERT INTO t VALUES (3, 3);",
    );
    let (snapshot, _) = stored(w.step(false).await);
    assert!(snapshot, "a page size change is stored as a snapshot");
    let cfg = sqlite_config(&repo, "app", &db);
    let target = repo.dir.path().join("restored.db");
    restore_ok(&cfg, "app", None, &target);
    assert_eq!(rows(&target), vec![(1, 1), (2, 2), (3, 3)]);
    assert_eq!(sqlite3(&target, "PRAGMA page_size"), "8192");
}

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refusals_and_a_wrong_checksum() {
    let repo = TestRepo::new().await;
    let db = repo.dir.path().join("app.db");
    sqlite3(
        &db,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, at_ns INTEGER); INSERT INTO t VALUES (1, 1);",
    );
    let mut w = Watcher::new(repo.open().await, options(&repo, &db)).expect("watcher");
    stored(w.step(false).await);
    drop(w);
    let cfg = sqlite_config(&repo, "app", &db);
    let c = cfg.to_str().expect("utf-8");
    let target = repo.dir.path().join("restored.db");
    let t = target.to_str().expect("utf-8");

    // Before the first snapshot: not possible (exit 1), nothing written.
    let out = pitr(&[
        "restore",
        "-c",
        c,
        "--sqlite",
        "app",
        "--at",
        "2000-01-01T00:00:00Z",
        "--target",
        t,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("restore window"), "{}", text(&out));
    assert!(!target.exists());
    // A PostgreSQL-only target, an unknown name: usage (exit 2).
    let out = pitr(&[
        "restore", "-c", c, "--sqlite", "app", "--lsn", "0/1", "--target", t,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = pitr(&["plan", "-c", c, "--sqlite", "nope", "--latest"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("no [[sqlite]] entry is named \"nope\""),
        "{}",
        text(&out)
    );
    // `pitr list` shows the captures and the window, as text and JSON.
    let out = pitr(&["list", "-c", c]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for needle in [
        "[[sqlite]] \"app\"",
        "1 snapshots",
        "restore window: 20",
        "last test restore: none recorded",
    ] {
        assert!(text(&out).contains(needle), "{needle}: {}", text(&out));
    }
    let out = pitr(&["list", "-c", c, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["sqlite"][0]["name"], "app");
    assert_eq!(v["sqlite"][0]["captures"], 1);
    assert!(v["sqlite"][0]["window"]["earliest"].is_string(), "{v}");
    assert!(v["sqlite"][0]["last_test_restore"].is_null(), "{v}");
    // The plan names the snapshot.
    let out = pitr(&["plan", "-c", c, "--sqlite", "app", "--latest"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("sqlite/app/000000000001"),
        "{}",
        text(&out)
    );
    // An existing target is not overwritten without --force.
    std::fs::write(&target, b"precious").expect("write");
    let out = pitr(&[
        "restore", "-c", c, "--sqlite", "app", "--latest", "--target", t,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(std::fs::read(&target).expect("read"), b"precious");
    let out = pitr(&[
        "restore", "-c", c, "--sqlite", "app", "--latest", "--target", t, "--force",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(rows(&target), vec![(1, 1)]);

    // A catalog whose checksum disagrees with the pages: the restore fails
    // and puts nothing in place (invariant 6).
    let catalog =
        rusqlite::Connection::open(repo.opts.state_dir.join("catalog.db")).expect("catalog");
    let n = catalog
        .execute(
            "UPDATE items SET attrs = json_set(attrs, '$.checksum', '0000000000000000') \
             WHERE name LIKE 'sqlite/app/%'",
            [],
        )
        .expect("update");
    assert_eq!(n, 1);
    drop(catalog);
    let other = repo.dir.path().join("other.db");
    let out = pitr(&[
        "restore",
        "-c",
        c,
        "--sqlite",
        "app",
        "--latest",
        "--target",
        other.to_str().expect("utf-8"),
    ]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("checksum"), "{}", text(&out));
    assert!(!other.exists());
}

#[test]
fn bad_sqlite_config_values_exit_2() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let repo = rt.block_on(TestRepo::new());
    for (extra, needle) in [
        ("interval = \"10ms\"", "interval"),
        ("interval = \"soon\"", "is not a duration"),
        ("snapshot_interval = 5", "snapshot_interval"),
    ] {
        let cfg = repo.write_config(&[]);
        add_sqlite(&cfg, "app", &repo.dir.path().join("app.db"), extra);
        let out = pitr(&[
            "plan",
            "-c",
            cfg.to_str().expect("utf-8"),
            "--sqlite",
            "app",
            "--latest",
        ]);
        assert_eq!(out.status.code(), Some(2), "{extra}: {}", text(&out));
        assert!(text(&out).contains(needle), "{extra}: {}", text(&out));
    }
}
