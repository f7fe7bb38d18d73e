//! The watcher must not slow the writer down: inserts per second (one
//! transaction each, WAL mode, synchronous=NORMAL) on a watched database are
//! at least 95% of those on an unwatched one.
//!
//! Both databases live side by side and are written alternately (B A A B B
//! A …) while one `pitr run` watches only A, so drift in the machine's load
//! hits both sides alike; medians of five runs each are compared.

use std::time::Duration;

use super::*;

#[test]
fn writer_throughput_with_the_watcher_is_at_least_95_percent() {
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
    for round in 0..10 {
        let watched_turn = matches!(round % 4, 1 | 2);
        let db = if watched_turn { &watched } else { &unwatched };
        let rate = run_writer(db, "wal", 2.0, 0, &[]).rate;
        if watched_turn {
            with.push(rate);
        } else {
            without.push(rate);
        }
    }
    let log = sidecar.stop();
    let captures = log.matches("stored an SQLite capture").count();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (w, wo) = (median(&mut with), median(&mut without));
    eprintln!(
        "inserts/s with the watcher {with:?} (median {w:.0}), without {without:?} (median \
         {wo:.0}); ratio {:.3}; {captures} captures",
        w / wo
    );
    assert!(captures >= 8, "the watcher did not keep up: {captures} captures\n{log}");
    assert!(
        w >= 0.95 * wo,
        "the watched writer ran at {w:.0}/s, under 95% of {wo:.0}/s"
    );
}
