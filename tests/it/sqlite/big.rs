//! Work per capture grows with the pages changed, not with the database: on
//! a 1 GB database, the capture after a 10-row update reads under 1 MB
//! (database pages and WAL bytes, by the watcher's own counters).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;

use pitr::sqlite::{Stats, Step, WatchOptions, Watcher};

use super::*;

/// Builds a ~1 GB database fast: a blob table written in a few large
/// transactions with journaling and syncing off, then WAL mode.
pub fn build_big_db(db: &Path, mib: u32) {
    let script = format!(
        "import sqlite3\n\
         c = sqlite3.connect({db:?}, isolation_level=None)\n\
         c.execute('PRAGMA journal_mode=OFF'); c.execute('PRAGMA synchronous=OFF')\n\
         c.execute('CREATE TABLE big (b BLOB)')\n\
         for _ in range({batches}):\n\
         \x20   c.execute('BEGIN')\n\
         \x20   c.execute('WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 64) INSERT INTO big SELECT zeroblob(1048576) FROM n')\n\
         \x20   c.execute('COMMIT')\n\
         c.execute('CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)')\n\
         c.execute('WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 1000) INSERT INTO t SELECT i, 0 FROM n')\n\
         c.execute('PRAGMA journal_mode=WAL')\n\
         c.close()\n",
        db = db.display().to_string(),
        batches = mib / 64
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read(stats: &Stats) -> u64 {
    stats.db_bytes_read.load(Ordering::Relaxed) + stats.wal_bytes_read.load(Ordering::Relaxed)
}

// The guard serializes whole tests (each has its own runtime); nothing
// else in this runtime waits for it.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_after_a_10_row_update_on_1_gb_reads_under_1_mb() {
    let _heavy = heavy();
    let repo = TestRepo::new().await;
    let db = repo.dir.path().join("big.db");
    build_big_db(&db, 1024);
    let size = std::fs::metadata(&db).expect("db").len();
    assert!(size >= 1 << 30, "database is {size} bytes");
    let opts = WatchOptions {
        name: "big".into(),
        path: db.clone(),
        interval: Duration::from_secs(1),
        snapshot_interval: Duration::from_secs(86400),
        spool_dir: repo.dir.path().join("spool"),
    };
    let mut watcher = Watcher::new(repo.open().await, opts).expect("watcher");
    let stats = watcher.stats();
    match watcher.step(false).await.expect("snapshot") {
        Step::Stored { snapshot: true, .. } => {}
        other => panic!("expected the start snapshot, got {other:?}"),
    }
    let after_snapshot = read(&stats);
    assert!(
        after_snapshot >= size,
        "the snapshot read {after_snapshot} bytes"
    );

    // An application that keeps its connection open (as applications do):
    // its WAL stays until it closes.
    let mut app = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import sqlite3, sys\n\
                 c = sqlite3.connect({:?}, isolation_level=None)\n\
                 c.execute('UPDATE t SET v = v + 1 WHERE id <= 10')\n\
                 print('updated', flush=True)\n\
                 sys.stdin.read()\n",
                db.display().to_string()
            ),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(app.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line.trim(), "updated");

    let before = read(&stats);
    let step = watcher.step(false).await.expect("capture");
    let used = read(&stats) - before;
    eprintln!(
        "1 GiB database: snapshot read {after_snapshot} bytes; the capture after a 10-row update \
         read {used} bytes ({step:?})"
    );
    match step {
        Step::Stored {
            snapshot: false,
            pages,
            ..
        } => assert!((1..=4).contains(&pages), "{pages} pages stored"),
        other => panic!("expected a page set, got {other:?}"),
    }
    assert!(used < 1 << 20, "the capture read {used} bytes");
    drop(app.stdin.take().map(|mut s| s.flush()));
    let _ = app.wait();

    // The page set restores to exactly the database.
    let cfg = sqlite_config(&repo, "big", &db);
    let target = repo.dir.path().join("restored.db");
    restore_ok(&cfg, "big", None, &target);
    assert_eq!(
        sqlite3(&target, "SELECT sum(v) FROM t"),
        "10",
        "the update is restored"
    );
}
