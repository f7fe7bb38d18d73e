//! The restore oracle: restores at many targets each hold exactly
//! the rows committed before the target.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use jiff::Timestamp;

use super::{
    Env, Streamer, backup, between, create_oracle, expected, restore_and_read, text, write_row,
};
use crate::support::PgCluster;

/// `pitr plan --at t --json`, parsed.
fn plan_json(env: &Env, t: Timestamp) -> serde_json::Value {
    let at = pitr::restore::pg_time(t);
    let out = env.pitr(&["plan", "--at", &at, "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).expect("plan --json is JSON")
}

/// When backup `id` finished by its record (`pitr list --json`): the time
/// `pitr restore --at` compares targets with.
fn recorded_finish(env: &Env, id: &str) -> Timestamp {
    let out = env.pitr(&["list", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("list --json is JSON");
    let backup = list["postgres"][0]["backups"]
        .as_array()
        .expect("backups")
        .iter()
        .find(|b| b["record"]["id"] == id)
        .unwrap_or_else(|| panic!("backup {id} is listed: {list}"));
    backup["record"]["finished"]
        .as_str()
        .expect("finished")
        .parse()
        .expect("a timestamp")
}

#[tokio::test(flavor = "multi_thread")]
async fn restores_at_ten_targets_hold_exactly_the_rows_committed_before_each() {
    let pg = Arc::new(PgCluster::start());
    let env = Env::new(&pg).await;
    let repo = env.open().await;
    create_oracle(&pg);
    let streamer = Streamer::start(&repo, &pg, "pitr");
    streamer.caught_up(&pg).await;
    let first = backup(&env);
    let before_rows = Timestamp::now();

    // The writer: a row about every 100 ms, while backups and segment
    // switches happen beside it.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (pg, stop, written) = (pg.clone(), stop.clone(), written.clone());
        std::thread::spawn(move || {
            let mut rows = Vec::new();
            let mut id = 0;
            while !stop.load(Ordering::Relaxed) && id < 200 {
                id += 1;
                rows.push((id, write_row(&pg, id)));
                written.store(rows.len(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
            rows
        })
    };
    let pause = |ms| tokio::time::sleep(Duration::from_millis(ms));
    pause(1500).await;
    pg.psql("SELECT pg_switch_wal()");
    pause(1000).await;
    let second_started = Timestamp::now();
    let second = backup(&env);
    // A restore to a time starts from the newest backup whose record says
    // it finished by then. That is earlier than the test's clock once
    // `pitr backup` returned (the command then waits for the backup's WAL
    // to be stored, and exits): a target in between is restored from the
    // second backup, so the record's time is what the targets are judged by.
    let second_finished = recorded_finish(&env, &second);
    pause(1000).await;
    pg.psql("SELECT pg_switch_wal()");
    pause(1000).await;
    pg.psql("SELECT pg_switch_wal()");
    // The last rows stay in the open segment, stored as a partial.
    pause(1500).await;
    // On a busy machine each row takes longer than 100 ms: the writer goes
    // on (into the open segment) until there are rows enough for the
    // targets below, however long that takes (bounded).
    for _ in 0..1200 {
        if written.load(Ordering::Relaxed) >= 40 {
            break;
        }
        pause(100).await;
    }
    stop.store(true, Ordering::Relaxed);
    let rows = writer.join().expect("the writer");
    streamer.caught_up(&pg).await;
    let n = rows.len();
    assert!(n >= 40, "the writer wrote {n} rows");

    let at = |k: usize| rows[k].1;
    let last_before_second = rows
        .iter()
        .rposition(|(_, t)| *t < second_started)
        .expect("rows before the second backup");
    let first_after_second = rows
        .iter()
        .position(|(_, t)| *t > second_finished)
        .expect("rows after the second backup");
    assert!(first_after_second + 3 < n, "rows after the second backup");
    let mut targets = vec![
        ("before any row", between(before_rows, at(0))),
        ("after row 1", between(at(0), at(1))),
        ("early", between(at(5), at(6))),
        (
            "just before the second backup",
            between(at(last_before_second - 1), at(last_before_second)),
        ),
        (
            "just after the second backup",
            between(at(first_after_second), at(first_after_second + 1)),
        ),
        (
            "later",
            between(at(first_after_second + 3), at(first_after_second + 4)),
        ),
        ("three from the end", between(at(n - 4), at(n - 3))),
        ("two from the end", between(at(n - 3), at(n - 2))),
        ("between the last two rows", between(at(n - 2), at(n - 1))),
    ];
    // A target right on a row's stamp: that row committed just after its
    // stamp, so it is not included.
    targets.push(("on a stamp", at(n / 2)));

    for (what, t) in &targets {
        let plan = plan_json(&env, *t);
        let chosen = plan["backup"]["id"].as_str().expect("backup id");
        // pitr gets the target in microseconds (`pg_time`).
        let sent = pitr::restore::parse_time(&pitr::restore::pg_time(*t)).expect("a time");
        if sent < second_finished {
            assert_eq!(chosen, first, "{what}: {plan}");
        } else {
            assert_eq!(chosen, second, "{what}: {plan}");
        }
        if *what == "between the last two rows" {
            let segments = plan["segments"].as_array().expect("segments");
            assert_eq!(
                segments.last().expect("a segment")["partial"],
                true,
                "{what}: the target is in the open segment: {plan}"
            );
        }
        let at = pitr::restore::pg_time(*t);
        let (_restored, ids, report) = restore_and_read(&env, &["--at", &at]);
        assert_eq!(ids, expected(&rows, *t), "{what} ({at}):\n{report}");
    }
    streamer.stop().await;
}
