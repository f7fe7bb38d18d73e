//! Point-in-time restore on every supported major (14 to 18), one cluster
//! each, judged by that major's own tools: pitr streams a hot standby while
//! `pitr backup` takes two base backups of its primary; four times spread
//! over both backups restore exactly (the restored cluster, started with
//! that major's binaries found through `[restore] bin_dirs`, holds exactly
//! the rows committed before the time, and passes that major's
//! `pg_amcheck` and `pg_checksums --check`); the standby is promoted, pitr
//! follows it onto timeline 2, and a time on timeline 2 restores exactly
//! too; a test restore (`pitr verify --restore`) passes with that major's
//! tools. Without that major's binaries a restore exits 2 naming it.
//!
//! Run one major with `cargo test --test it pitr_restore::majors::pg17`.

use std::process::Command;

use jiff::Timestamp;

use super::binaries::{ci_bin_dir, pitr_with_bin_dirs};
use super::{
    Env, Streamer, backup, between, create_oracle, expected, restore_and_read_major, text,
    write_row,
};
use crate::support::{PgCluster, run_as_pg_user};

#[tokio::test(flavor = "multi_thread")]
async fn pg14() {
    restores_exactly(14).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pg15() {
    restores_exactly(15).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pg16() {
    restores_exactly(16).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pg17() {
    restores_exactly(17).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pg18() {
    restores_exactly(18).await;
}

/// Every supported major has its test above.
#[test]
fn every_supported_major_is_restored() {
    let majors: Vec<u32> = pitr::pg::FORMATS.iter().map(|f| f.major).collect();
    assert_eq!(
        majors,
        [14, 15, 16, 17, 18],
        "add a test per new major above"
    );
}

async fn restores_exactly(major: u32) {
    let mut primary = PgCluster::start_major(major);
    let mut standby = tokio::task::block_in_place(|| PgCluster::standby_of(&primary));
    // `pitr backup` reads the primary; restores find this major's binaries
    // through [restore] bin_dirs.
    let env = Env::new(&primary).await;
    let bin_dir = ci_bin_dir(major);
    let mut config = std::fs::read_to_string(&env.config).expect("config");
    config.push_str(&format!(
        "\n[restore]\nbin_dirs = [\"{}\"]\n",
        bin_dir.display()
    ));
    std::fs::write(&env.config, config).expect("write config");
    let repo = env.open().await;
    create_oracle(&primary);
    // pitr streams the standby (its slot lives there): the primary's
    // current position, once stored, has passed through the standby.
    let streamer = Streamer::start(&repo, &standby, "pitr");
    streamer.caught_up(&primary).await;

    let mut rows: Vec<(u32, Timestamp)> = Vec::new();
    let mut backups = vec![backup(&env)];
    for id in 1..=3 {
        rows.push((id, write_row(&primary, id)));
    }
    primary.psql("SELECT pg_switch_wal()");
    streamer.caught_up(&primary).await;
    backups.push(backup(&env));
    for id in 4..=6 {
        rows.push((id, write_row(&primary, id)));
    }
    streamer.caught_up(&primary).await;

    // The promotion: the primary goes away, the standby takes over on
    // timeline 2 and pitr follows it.
    primary.stop();
    // A quiet spell before the fork: most of the test restore's random
    // range (from the second backup to the last commit) then lies between
    // timeline 1's last commit and the fork, where the timeline current at
    // the time is 1 but the time is restorable only on timeline 2's window.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| standby.promote());
    // pitr has followed onto timeline 2 (its history stored) before the
    // rows there: the planner dates a timeline by the earlier of its
    // history's storing and its first transaction outside the fork's
    // segment, so rows committed before the history was stored, in that
    // segment, would date it after them.
    streamer.caught_up(&standby).await;
    for id in 101..=103 {
        rows.push((id, write_row(&standby, id)));
    }
    streamer.caught_up(&standby).await;
    streamer.stop().await;
    let out = env.pitr(&["list", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let timelines: Vec<u64> = list["postgres"][0]["wal"]
        .as_array()
        .expect("WAL per timeline")
        .iter()
        .filter_map(|w| w["timeline"].as_u64())
        .collect();
    assert_eq!(timelines, [1, 2], "{list}");

    // Four times over the two backups, one on timeline 2.
    let at = |a: usize, b: usize| between(rows[a].1, rows[b].1);
    let targets = [
        (at(0, 1), 1, 1),
        (at(1, 2), 1, 1),
        (at(3, 4), 2, 1),
        (at(4, 5), 2, 1),
        (at(6, 7), 2, 2),
    ];
    for (t, nth_backup, timeline) in targets {
        let time = pitr::restore::pg_time(t);
        let out = env.pitr(&["plan", "--at", &time, "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(plan["timeline"], timeline, "{plan}");
        assert_eq!(
            plan["backup"]["id"].as_str(),
            Some(backups[nth_backup - 1].as_str()),
            "{plan}"
        );
        let (mut restored, ids, report) = restore_and_read_major(&env, major, &["--at", &time]);
        assert_eq!(
            ids,
            expected(&rows, t),
            "PostgreSQL {major} at {time}: {report}"
        );
        // Recovery ran on the configured binaries of this major.
        assert!(
            report.contains(&format!("recovery ran on            PostgreSQL {major}."))
                && report.contains(&format!(" in {}", bin_dir.display())),
            "{report}"
        );
        assert_eq!(
            restored.psql("SHOW server_version_num")[..2],
            major.to_string(),
            "started with PostgreSQL {major}"
        );
        judge(&mut restored);
    }

    // A test restore finds this major's postgres, pg_amcheck,
    // pg_checksums and psql the same way, and passes.
    env.repo.enable_test_restores(&env.config, "off");
    let out = env.pitr(&["verify", "--restore"]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("PASSED")
            && shown.contains("pg_amcheck --all --install-missing: ok")
            && shown.contains("pg_checksums --check: ok"),
        "{shown}"
    );

    // Without this major's binaries (another one configured, none in the
    // usual places): exit 2, naming the major.
    if major != 15 {
        let other = ci_bin_dir(if major == 17 { 16 } else { 17 });
        let nowhere = tempfile::tempdir().expect("tempdir");
        let target = nowhere.path().join("data");
        let out = pitr_with_bin_dirs(
            &env,
            &other.display().to_string(),
            &[
                "restore",
                "--latest",
                "--target",
                target.to_str().expect("utf-8"),
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(
            text(&out).contains(&format!("PostgreSQL {major}'s server binaries"))
                && text(&out).contains(&other.display().to_string()),
            "{}",
            text(&out)
        );
        assert!(!target.exists(), "nothing written");
    }
}

/// That major's `pg_amcheck` on the running restored cluster, then
/// `pg_checksums --check` after a clean shutdown.
fn judge(restored: &mut PgCluster) {
    let out = run_as_pg_user(&mut Command::new(restored.bin("pg_amcheck")))
        .args(["-h", restored.host(), "-p", &restored.port().to_string()])
        .args(["-U", "postgres", "--all", "--install-missing"])
        .output()
        .expect("run pg_amcheck");
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "pg_amcheck: {}",
        text(&out)
    );
    restored.stop();
    let out = run_as_pg_user(&mut Command::new(restored.bin("pg_checksums")))
        .arg("--check")
        .arg("-D")
        .arg(restored.data_dir())
        .output()
        .expect("run pg_checksums");
    let report = text(&out);
    assert!(
        out.status.success() && report.contains("Bad checksums:  0"),
        "pg_checksums: {report}"
    );
}
