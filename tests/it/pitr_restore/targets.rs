//! `--name`, `--lsn` and `--latest` restore exactly too.

use super::{Env, Streamer, backup, create_oracle, restore_and_read, text, write_row};
use crate::harness::PgCluster;

#[tokio::test(flavor = "multi_thread")]
async fn name_lsn_and_latest_targets_restore_exactly() {
    let pg = PgCluster::start();
    let env = Env::new(&pg).await;
    let repo = env.open().await;
    create_oracle(&pg);
    let streamer = Streamer::start(&repo, &pg, "pitr");
    streamer.caught_up(&pg).await;
    backup(&env);
    for id in 1..=3 {
        write_row(&pg, id);
    }
    pg.psql("SELECT pg_create_restore_point('before-4')");
    for id in 4..=5 {
        write_row(&pg, id);
    }
    // Where row 5's commit record ends: the next record starts here.
    let after_5 = pg.psql("SELECT pg_current_wal_lsn()");
    for id in 6..=7 {
        write_row(&pg, id);
    }
    pg.psql("SELECT pg_switch_wal()");
    // These stay in the open segment: --latest must reach them too.
    for id in 8..=9 {
        write_row(&pg, id);
    }
    streamer.caught_up(&pg).await;

    let (_r, ids, report) = restore_and_read(&env, &["--name", "before-4"]);
    assert_eq!(ids, [1, 2, 3], "{report}");
    assert!(report.contains("at restore point \"before-4\""), "{report}");

    let (_r, ids, report) = restore_and_read(&env, &["--lsn", &after_5]);
    assert_eq!(ids, [1, 2, 3, 4, 5], "{report}");

    let (_r, ids, report) = restore_and_read(&env, &["--latest"]);
    assert_eq!(ids, (1..=9).collect::<Vec<_>>(), "{report}");

    // A name never created and a position past the stored WAL are not
    // possible: exit 1, saying so, nothing written.
    let nowhere = tempfile::tempdir().expect("tempdir");
    let target = nowhere.path().join("data");
    let t = target.to_str().expect("utf-8");
    let out = env.pitr(&["restore", "--name", "no-such-point", "--target", t]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no restore point named \"no-such-point\""),
        "{}",
        text(&out)
    );
    let out = env.pitr(&["restore", "--lsn", "FF/0", "--target", t]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("outside the restore window"),
        "{}",
        text(&out)
    );
    assert!(!target.exists(), "nothing written for an impossible target");
    streamer.stop().await;
}
