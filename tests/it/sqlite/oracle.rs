//! The PITR oracle for SQLite: a writer in another process commits a row
//! stamped with its wall clock about every 100 ms for 20 s, checkpoints
//! (TRUNCATE) and VACUUMs on the way; `pitr run` watches; restores at
//! several times must hold a consistent prefix of the commits: nothing
//! committed after T, nothing committed before T − 2 × interval missing.

use std::time::Duration;

use super::*;

const INTERVAL_NS: i128 = 1_000_000_000;

fn oracle(mode: &str) {
    let _heavy = heavy();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let repo = rt.block_on(TestRepo::new());
    let db = repo.dir.path().join("app.db");
    let cfg = sqlite_config(&repo, "app", &db);
    // Started before the database exists: the watcher waits for it.
    let sidecar = Sidecar::start(&cfg);
    std::thread::sleep(Duration::from_millis(300));
    let run = run_writer(&db, mode, 20.0, 100, &["7:checkpoint", "13:vacuum"]);
    // The last commit is stored within an interval or two.
    std::thread::sleep(Duration::from_secs(3));
    let log = sidecar.stop();
    assert!(
        run.commits.len() >= 150,
        "too few commits: {}",
        run.commits.len()
    );
    assert_eq!(run.events.len(), 2, "{:?}", run.events);
    let snapshots = log.matches("snapshot=true").count();
    let rescans = log.matches("rescan: ").count();
    eprintln!(
        "{mode}: {} commits, {} captures ({snapshots} snapshots, {rescans} rescans)",
        run.commits.len(),
        log.matches("stored an SQLite capture").count()
    );
    // The start snapshot, and the VACUUM shrinks the file (most pages
    // change): a second one.
    assert!(snapshots >= 2, "{log}");
    assert!(rescans >= 1, "{log}");

    let first = run.commits[0].done_ns;
    let last = run.commits.last().expect("commits").done_ns;
    // Eight times from 1.5 s after the first commit to after the last,
    // plus two just around the checkpoint and the VACUUM.
    let mut times: Vec<i128> = (0..8)
        .map(|k| first + 1_500_000_000 + (last - first) * k / 7)
        .collect();
    times.push(first + 7_050_000_000);
    times.push(first + 13_300_000_000);
    for (k, &t) in times.iter().enumerate() {
        let target = repo.dir.path().join(format!("restored-{k}.db"));
        restore_ok(&cfg, "app", Some(&at_text(t)), &target);
        let got = rows(&target);
        // A prefix: ids 1..=n, nothing missing in between.
        for (i, (id, _)) in got.iter().enumerate() {
            assert_eq!(
                *id,
                i as i64 + 1,
                "restore at {} is not a prefix",
                at_text(t)
            );
        }
        let n = got.len() as i64;
        for c in &run.commits {
            if c.at_ns > t {
                assert!(
                    c.id > n,
                    "commit {} began after {} but is restored",
                    c.id,
                    at_text(t)
                );
            }
            if c.done_ns <= t - 2 * INTERVAL_NS {
                assert!(
                    c.id <= n,
                    "commit {} was done at {}, more than 2 intervals before {}, but is missing \
                     (restored {n} rows)",
                    c.id,
                    at_text(c.done_ns),
                    at_text(t)
                );
            }
        }
    }
    // --latest holds every commit.
    let latest = repo.dir.path().join("latest.db");
    restore_ok(&cfg, "app", None, &latest);
    assert_eq!(rows(&latest).len(), run.commits.len());
}

#[test]
fn oracle_wal_mode_with_checkpoint_and_vacuum() {
    oracle("wal");
}

#[test]
fn oracle_rollback_journal_mode_with_vacuum() {
    oracle("delete");
}
