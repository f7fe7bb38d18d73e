//! `--name`, `--lsn` and `--latest` restore exactly too.

use super::{Env, Streamer, backup, create_oracle, restore_and_read, text, write_row};
use crate::support::PgCluster;

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

    // `pitr list`: the backup, one unbroken WAL range, the window.
    let out = env.pitr(&["list", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let main = &list["postgres"][0];
    assert_eq!(main["name"], "main", "{list}");
    assert_eq!(main["backups"].as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(main["backups"][0]["restorable"], true, "{list}");
    assert_eq!(main["wal"][0]["timeline"], 1, "{list}");
    assert_eq!(
        main["wal"][0]["ranges"].as_array().map(Vec::len),
        Some(1),
        "{list}"
    );
    let window = &main["windows"][0];
    let earliest: jiff::Timestamp = window["earliest"]
        .as_str()
        .expect("earliest")
        .parse()
        .expect("time");
    let latest: jiff::Timestamp = window["latest"]
        .as_str()
        .expect("latest")
        .parse()
        .expect("time");
    assert!(earliest < latest, "{list}");
    let out = env.pitr(&["list"]);
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        shown.contains("restorable") && shown.contains("timeline 1: "),
        "{shown}"
    );
    // No test restore ran: the list says nothing proves the backups yet.
    assert!(
        shown.contains("last test restore: none recorded: nothing proves these backups"),
        "{shown}"
    );

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

/// `--no-recover` stages the directory with `pitr wal-fetch` as the
/// restore_command; PostgreSQL started on it by hand (as its own user,
/// calling the binary itself) reaches the target.
#[tokio::test(flavor = "multi_thread")]
async fn no_recover_stages_a_directory_postgres_recovers_with_wal_fetch() {
    use std::os::unix::fs::PermissionsExt;
    let pg = PgCluster::start();
    let env = Env::new(&pg).await;
    let repo = env.open().await;
    create_oracle(&pg);
    let streamer = Streamer::start(&repo, &pg, "pitr");
    streamer.caught_up(&pg).await;
    backup(&env);
    let mut rows = Vec::new();
    for id in 1..=4 {
        rows.push(write_row(&pg, id));
        pg.psql("SELECT pg_switch_wal()");
    }
    streamer.caught_up(&pg).await;
    streamer.stop().await;
    // PostgreSQL's user runs `pitr wal-fetch` with this config: in this test
    // it may read the repository, the identity and the catalog.
    let mut cmd = std::process::Command::new("chmod");
    let status = cmd
        .args(["-R", "a+rwX"])
        .arg(env.repo.dir.path())
        .status()
        .expect("chmod");
    assert!(status.success());
    std::fs::set_permissions(env.repo.dir.path(), std::fs::Permissions::from_mode(0o777))
        .expect("chmod");

    let t = super::between(rows[1], rows[2]);
    let mut restored = PgCluster::empty();
    let data = restored.data_dir();
    let out = env.pitr(&[
        "restore",
        "--at",
        &pitr::restore::pg_time(t),
        "--no-recover",
        "--target",
        data.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("recovery was NOT run"),
        "{}",
        text(&out)
    );
    assert!(data.join("recovery.signal").exists());
    let auto = std::fs::read_to_string(data.join("postgresql.auto.conf")).expect("auto.conf");
    assert!(
        auto.contains("wal-fetch -c") && auto.contains("recovery_target_time = '20"),
        "{auto}"
    );
    // PostgreSQL 15 would refuse the RFC 3339 `Z` spelling here.
    assert!(auto.contains("+00'"), "{auto}");
    restored.start_filled("");
    crate::support::eventually_blocking(
        "the restored cluster left recovery",
        std::time::Duration::from_secs(60),
        || match restored.psql("SELECT pg_is_in_recovery()").as_str() {
            "f" => Ok(()),
            _ => Err(restored.log_tail()),
        },
    );
    assert_eq!(
        restored.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM oracle"),
        "1,2"
    );
}
