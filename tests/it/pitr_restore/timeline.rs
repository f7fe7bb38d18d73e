//! Timelines: a restored cluster becomes the new primary (timeline 2) and
//! is streamed by pitr into the same repository; times on timeline 2, and
//! on timeline 1 after the fork, both restore exactly.

use std::time::Duration;

use super::{Env, Streamer, backup, between, create_oracle, restore_and_read, text, write_row};
use crate::support::PgCluster;

#[tokio::test(flavor = "multi_thread")]
async fn times_on_both_sides_of_a_fork_restore_exactly() {
    let mut old = PgCluster::start();
    let env = Env::new(&old).await;
    let repo = env.open().await;
    create_oracle(&old);
    let streamer = Streamer::start(&repo, &old, "pitr");
    streamer.caught_up(&old).await;
    backup(&env);
    let mut tl1 = Vec::new();
    for id in 1..=10 {
        tl1.push((id, write_row(&old, id)));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    streamer.caught_up(&old).await;
    streamer.stop().await;
    old.stop();

    // The fork: back to between rows 5 and 6, promoted to timeline 2.
    let fork = between(tl1[4].1, tl1[5].1);
    let after_fork_on_1 = between(tl1[7].1, tl1[8].1);
    let (new, ids, report) = restore_and_read(&env, &["--at", &pitr::restore::pg_time(fork)]);
    assert_eq!(ids, [1, 2, 3, 4, 5], "{report}");
    assert!(report.contains("new timeline               2"), "{report}");

    // The restored cluster is the new primary; pitr streams it.
    let streamer = Streamer::start(&repo, &new, "pitr");
    streamer.caught_up(&new).await;
    let mut tl2 = Vec::new();
    for id in 101..=105 {
        tl2.push((id, write_row(&new, id)));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    streamer.caught_up(&new).await;

    // A time on timeline 2: the history up to the fork, then timeline 2.
    let on_2 = between(tl2[1].1, tl2[2].1);
    let out = env.pitr(&["plan", "--at", &pitr::restore::pg_time(on_2), "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(plan["timeline"], 2, "{plan}");
    let (_r, ids, report) = restore_and_read(&env, &["--at", &pitr::restore::pg_time(on_2)]);
    assert_eq!(ids, [1, 2, 3, 4, 5, 101, 102], "{report}");

    // A time on timeline 1 after the fork: timeline 1 was current then.
    let out = env.pitr(&[
        "plan",
        "--at",
        &pitr::restore::pg_time(after_fork_on_1),
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(plan["timeline"], 1, "{plan}");
    let (_r, ids, report) =
        restore_and_read(&env, &["--at", &pitr::restore::pg_time(after_fork_on_1)]);
    assert_eq!(ids, (1..=8).collect::<Vec<_>>(), "{report}");
    // Timeline 2 is taken (the repository holds it): the branch made by
    // this restore must not reuse its number.
    assert!(report.contains("new timeline               3"), "{report}");

    // Asking for that time on timeline 2, which does not contain it, is
    // refused, not silently answered with timeline 2's past.
    let nowhere = tempfile::tempdir().expect("tempdir");
    let target = nowhere.path().join("data");
    let out = env.pitr(&[
        "restore",
        "--at",
        &pitr::restore::pg_time(after_fork_on_1),
        "--timeline",
        "2",
        "--target",
        target.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("is not on timeline 2") && text(&out).contains("--timeline 1"),
        "{}",
        text(&out)
    );
    assert!(!target.exists());

    // --latest follows the newest timeline to its end.
    let (_r, ids, report) = restore_and_read(&env, &["--latest"]);
    assert_eq!(ids, [1, 2, 3, 4, 5, 101, 102, 103, 104, 105], "{report}");
    streamer.stop().await;
}
