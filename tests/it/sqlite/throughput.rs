//! The watcher does not stall the writer: a writer committing one row per
//! transaction as fast as it can, with a busy timeout of one second, runs
//! for several seconds under `pitr run` in each journal mode and never fails
//! with "database is locked" — in rollback-journal mode every capture takes
//! a SHARED lock that delays the writer's commit, so a capture that held it
//! for a second would show here — while the watcher stores captures, and
//! the latest restore holds every row it committed.
//!
//! How fast the writer is with and without the watcher (target: at least
//! 95%) is a timing, measured by `cargo bench --bench sqlite`
//! (`PITR_BENCH_PARTS=throughput`) and recorded in `BENCHMARKS.md`: on a
//! shared 2-core machine a test asserting it swung 0.5–2.7 between adjacent
//! runs.

use std::process::{Command, Stdio};
use std::time::Duration;

use super::*;

const STORED: &str = "stored an SQLite capture";

fn writer_is_not_stalled(mode: &str) {
    let _heavy = heavy();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let repo = rt.block_on(TestRepo::new());
    let db = repo.dir.path().join("app.db");
    run_writer(&db, mode, 0.0, 0, &[]);
    let cfg = sqlite_config(&repo, "app", &db);
    let sidecar = Sidecar::start(&cfg);
    sidecar.wait_captures(1, Duration::from_secs(30));
    let before = sidecar.log_text().matches(STORED).count();

    let mut cmd = Command::new("python3");
    for (k, _) in std::env::vars() {
        if k.starts_with("PITR_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .arg(writer_script())
        .arg(&db)
        .arg(mode)
        .args(["8", "0"])
        .env("TIMEOUT", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("python3 (installed by .ci/setup)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the writer failed under the watcher ({mode} mode; a lock held past its 1 s busy \
         timeout says 'database is locked'):\n{stderr}\n{stdout}\npitr run:\n{}",
        sidecar.log_text()
    );
    let during = sidecar.log_text().matches(STORED).count() - before;
    let committed: usize = sqlite3(&db, "SELECT count(*) FROM t")
        .parse()
        .expect("a count");
    assert!(committed > 0, "the writer committed nothing:\n{stdout}");
    assert!(
        during >= 2,
        "the watcher stored {during} captures while the writer ran for 8 s:\n{}",
        sidecar.log_text()
    );

    // A capture after the writer closed holds every row it committed.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut attempt = 0;
    let restored = loop {
        attempt += 1;
        let target = repo.dir.path().join(format!("restored-{attempt}.db"));
        restore_ok(&cfg, "app", None, &target);
        let restored: usize = sqlite3(&target, "SELECT count(*) FROM t")
            .parse()
            .expect("a count");
        if restored == committed || std::time::Instant::now() > deadline {
            break restored;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let log = sidecar.stop();
    assert_eq!(
        restored, committed,
        "30 s after the writer ended, the latest restore still lacks rows it committed:\n{log}"
    );
    eprintln!(
        "{mode}: {committed} rows committed, {during} captures while writing ({} rescans in \
         all); writer: {}",
        log.matches("reason=rescan").count(),
        stdout.trim().replace('\n', "; ")
    );
}

#[test]
fn wal_writer_is_not_stalled_by_the_watcher() {
    writer_is_not_stalled("wal");
}

#[test]
fn rollback_writer_is_not_stalled_by_the_watcher() {
    writer_is_not_stalled("delete");
}
