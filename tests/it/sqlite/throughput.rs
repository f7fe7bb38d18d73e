//! The watcher must not slow the writer down: inserts per second (one
//! transaction each, WAL mode) on a watched database are
//! at least 95% of those on an unwatched one. The writer uses
//! synchronous=NORMAL: no fsync per commit, so any cost of the watcher shows.
//!
//! Both databases live side by side and are written alternately (B A A B B
//! A …) while one `pitr run` watches only A, so drift in the machine's load
//! hits both sides alike; the median of the seven pairs' ratios is compared.

use std::time::Duration;

use super::*;

// A timing assertion: on a shared 2-core machine under the parallel test
// suite its ratio swings from 0.5 to 2.7 between adjacent runs, so it cannot
// gate CI (standards: timings belong in benchmarks). Run it alone on a quiet
// machine with `cargo test --test it sqlite::throughput -- --ignored`.
#[test]
#[ignore = "timing-sensitive: run alone on a quiet machine (--ignored)"]
fn writer_throughput_with_the_watcher_is_at_least_95_percent() {
    let _heavy = heavy();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let repo = rt.block_on(TestRepo::new());
    let watched = repo.dir.path().join("watched.db");
    let unwatched = repo.dir.path().join("unwatched.db");
    // Same starting state for both.
    run_writer(&watched, "wal", 0.2, 0, &[]);
    run_writer(&unwatched, "wal", 0.2, 0, &[]);
    let cfg = sqlite_config(&repo, "app", &watched);
    let sidecar = Sidecar::start(&cfg);
    sidecar.wait_captures(1, Duration::from_secs(30));
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for round in 0..14 {
        let watched_turn = matches!(round % 4, 1 | 2);
        let db = if watched_turn { &watched } else { &unwatched };
        let rate = run_writer(db, "wal", 1.5, 0, &[]).rate;
        if watched_turn {
            with.push(rate);
        } else {
            without.push(rate);
        }
    }
    let log = sidecar.stop();
    let captures = log.matches("stored an SQLite capture").count();
    // Each watched run against the unwatched run next to it: the load of a
    // shared machine drifts over the test, and adjacent runs see the same.
    let mut ratios: Vec<f64> = with.iter().zip(&without).map(|(w, wo)| w / wo).collect();
    ratios.sort_by(f64::total_cmp);
    let ratio = ratios[ratios.len() / 2];
    eprintln!(
        "inserts/s with the watcher {with:?}, without {without:?}; paired ratios {ratios:.3?}, \
         median {ratio:.3}; {captures} captures"
    );
    assert!(
        captures >= 8,
        "the watcher did not keep up: {captures} captures\n{log}"
    );
    assert!(
        ratio >= 0.95,
        "the watched writer ran at {ratio:.3} of the unwatched one's rate (median of pairs)"
    );
}
