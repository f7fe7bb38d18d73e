//! Which PostgreSQL runs a restore: the binaries of the backup's major
//! (its restored `PG_VERSION`), found in `[restore] bin_dirs` and then the
//! usual places, each checked by its `postgres --version`. Without them a
//! restore and a test restore exit 2 naming the major and every place
//! looked in, and leave nothing behind.

use std::path::PathBuf;
use std::process::{Command, Output};

use super::{Env, Streamer, backup, create_oracle, is_empty_or_missing, text, write_row};
use crate::support::PgCluster;

/// The majors pitr supports, each installed here by `.ci/setup`.
const MAJORS: [u32; 5] = [14, 15, 16, 17, 18];

/// Where `.ci/setup` puts the binaries of `major`.
pub(super) fn ci_bin_dir(major: u32) -> PathBuf {
    let dir = if major == 15 {
        PathBuf::from("/usr/lib/postgresql/15/bin")
    } else {
        PathBuf::from(format!("/opt/pitr-ci/postgresql/{major}/bin"))
    };
    assert!(
        dir.join("postgres").is_file(),
        "{} lacks postgres: run .ci/setup, which installs PostgreSQL 14 to 18",
        dir.display()
    );
    dir
}

#[test]
fn each_major_is_found_in_bin_dirs() {
    // Listed newest first: the version check picks, not the position.
    let dirs: Vec<PathBuf> = MAJORS.iter().rev().map(|m| ci_bin_dir(*m)).collect();
    let tools = ["postgres", "pg_amcheck", "pg_checksums", "psql", "initdb"];
    for major in MAJORS {
        let bin = pitr::pg::find(major, &dirs, &tools)
            .unwrap_or_else(|e| panic!("PostgreSQL {major}: {e}"));
        assert_eq!(bin.dir(), ci_bin_dir(major), "PostgreSQL {major}");
        assert_eq!(bin.major(), major);
        assert!(
            bin.version().starts_with(&format!("{major}.")),
            "{}",
            bin.version()
        );
    }
    // A major none of them is: every configured directory is named with
    // what it holds.
    let e = pitr::pg::find(13, &dirs, &tools).expect_err("no 13 here");
    let msg = e.to_string();
    assert_eq!(e.major(), Some(13));
    assert!(msg.contains("PostgreSQL 13's server binaries"), "{msg}");
    for major in MAJORS {
        let dir = ci_bin_dir(major);
        assert!(
            msg.contains(&format!(
                "{} ([restore] bin_dirs): PostgreSQL {major}.",
                dir.display()
            )) || msg.contains(&format!("{} ([restore] bin_dirs, ", dir.display())),
            "{msg}"
        );
    }
}

/// Runs `pitr <args> -c <config>` with `PITR_RESTORE_BIN_DIRS` set.
pub(super) fn pitr_with_bin_dirs(env: &Env, bin_dirs: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pitr"))
        .args(args)
        .arg("-c")
        .arg(&env.config)
        .env_remove("PITR_CONFIG")
        .env("PITR_RESTORE_BIN_DIRS", bin_dirs)
        .output()
        .expect("run pitr")
}

/// The message names the major and every place looked in.
#[track_caller]
fn names_major_and_places(out: &Output, only17: &str) {
    let all = text(out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    for part in [
        "PostgreSQL 99's server binaries",
        &format!("{only17} ([restore] bin_dirs): PostgreSQL 17."),
        "/usr/lib/postgresql/99/bin (Debian): does not exist",
        "/usr/pgsql-99/bin (PGDG RPM): does not exist",
        "pg_config --bindir",
        "PostgreSQL 15.",
        "PITR_RESTORE_BIN_DIRS",
    ] {
        assert!(all.contains(part), "lacks {part:?}: {all}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_major_without_binaries_exits_2_naming_it_and_every_place() {
    let pg = PgCluster::start();
    let env = Env::new(&pg).await;
    let scratch = env.repo.enable_test_restores(&env.config, "off");
    let repo = env.open().await;
    create_oracle(&pg);
    let streamer = Streamer::start(&repo, &pg, "pitr");
    streamer.caught_up(&pg).await;
    // A base backup whose PG_VERSION says 99: the running server never
    // reads it again, BASE_BACKUP sends it as it is, and no place here
    // holds PostgreSQL 99. The catalog still says 15, so this checks that
    // the restored PG_VERSION decides.
    let pg_version = pg.data_dir().join("PG_VERSION");
    let real = std::fs::read_to_string(&pg_version).expect("PG_VERSION");
    std::fs::write(&pg_version, "99\n").expect("forge PG_VERSION");
    backup(&env);
    std::fs::write(&pg_version, real).expect("put PG_VERSION back");
    write_row(&pg, 1);
    streamer.caught_up(&pg).await;
    streamer.stop().await;

    // Only 17 configured; the usual places hold 15.
    let only17 = ci_bin_dir(17).display().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("restored");
    let out = pitr_with_bin_dirs(
        &env,
        &only17,
        &[
            "restore",
            "--latest",
            "--target",
            target.to_str().expect("utf-8"),
        ],
    );
    names_major_and_places(&out, &only17);
    assert!(
        is_empty_or_missing(&target),
        "nothing half-restored is left"
    );

    // A test restore says the same, as an installation problem (exit 2),
    // not as damaged backups.
    let out = pitr_with_bin_dirs(&env, &only17, &["verify", "--restore"]);
    names_major_and_places(&out, &only17);
    assert!(text(&out).contains("test restore"), "{}", text(&out));
    let left: Vec<_> = std::fs::read_dir(&scratch)
        .expect("scratch")
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    assert!(left.is_empty(), "scratch left behind: {left:?}");
}
