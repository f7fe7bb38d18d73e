//! docs/OPERATIONS.md's "The day a restore is needed", followed step by
//! step: its `sh` blocks are extracted in order and run as written against
//! a real cluster that pitr streamed and backed up, with the variables the
//! runbook names set; the restored cluster must then hold exactly the rows
//! committed before the chosen time.

use std::path::Path;
use std::process::Command;

use crate::harness::pg::{free_port, pg_bin_dir};
use crate::harness::{PgCluster, run_as_pg_user};
use crate::pitr_restore::{Streamer, between, write_row};
use crate::repo::TestRepo;

/// The commands of the runbook section, in order (continuation lines
/// joined), without comments.
fn runbook_commands() -> Vec<String> {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/OPERATIONS.md"))
            .expect("docs/OPERATIONS.md");
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with("The day a restore is needed"))
        .expect("the runbook section");
    assert!(
        section.contains("tests/it/pack/runbook.rs"),
        "the runbook says it is tested here"
    );
    let mut commands = Vec::new();
    let mut in_sh = false;
    for line in section.lines() {
        let t = line.trim();
        if t.starts_with("```") {
            in_sh = !in_sh && t == "```sh";
            continue;
        }
        if in_sh && !t.is_empty() && !t.starts_with('#') {
            commands.push(t.to_owned());
        }
    }
    commands
}

#[tokio::test(flavor = "multi_thread")]
async fn the_restore_runbook_works_as_written() {
    let commands = runbook_commands();
    let verbs: Vec<&str> = commands
        .iter()
        .map(|c| c.split_whitespace().take(2).last().unwrap_or(""))
        .collect();
    assert_eq!(
        verbs,
        ["list", "plan", "restore", "-D", "-h"],
        "the runbook's steps: {commands:#?}"
    );

    let pg = PgCluster::start();
    let repo = TestRepo::new().await;
    let config = repo.write_config(&[("main", &pg.conninfo("postgres"))]);
    let opened = repo.open().await;
    pg.psql("CREATE TABLE oracle (id int PRIMARY KEY, at timestamptz NOT NULL)");
    let streamer = Streamer::start(&opened, &pg, "pitr");
    streamer.caught_up(&pg).await;
    let out = Command::new(env!("CARGO_BIN_EXE_pitr"))
        .args(["backup", "--wait-wal", "60", "-c"])
        .arg(&config)
        .env_remove("PITR_CONFIG")
        .output()
        .expect("pitr backup");
    assert!(out.status.success(), "{out:?}");
    let stamps: Vec<_> = (1..=6).map(|id| write_row(&pg, id)).collect();
    pg.psql("SELECT pg_switch_wal()");
    streamer.caught_up(&pg).await;
    streamer.stop().await;
    drop(opened);

    // The damage happened after row 4: go back to between rows 4 and 5,
    // written the way PostgreSQL prints times.
    let time = pitr::pitr::pg_time(between(stamps[3], stamps[4]));
    let restored = PgCluster::empty();
    let target = restored.data_dir();
    let socket = restored.dir().to_owned();
    let port = free_port();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_pitr"))
        .parent()
        .expect("bin dir")
        .to_owned();
    let path = format!(
        "{}:{}:{}",
        bin_dir.display(),
        pg_bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for command in &commands {
        let mut cmd = Command::new("bash");
        cmd.args(["-euo", "pipefail", "-c", command])
            .env("CFG", &config)
            .env("TIME", &time)
            .env("TARGET", &target)
            .env("PORT", port.to_string())
            .env("SOCKET", &socket)
            .env("PATH", &path)
            .env_remove("PITR_CONFIG");
        // PostgreSQL's own tools run as the user owning the cluster, as
        // step 4 says; pitr itself runs as whoever runs the runbook.
        if !command.starts_with("pitr ") {
            run_as_pg_user(&mut cmd);
        }
        let out = cmd.output().expect("run a runbook command");
        assert!(
            out.status.success(),
            "runbook command failed: {command}\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        if command.starts_with("pitr restore") {
            assert!(stdout.contains("recovery checked"), "{stdout}");
        }
        if command.starts_with("psql") {
            assert_eq!(
                stdout.trim(),
                "f",
                "the restored cluster is out of recovery"
            );
        }
    }
    // The cluster the runbook started holds exactly rows 1 to 4.
    let out = run_as_pg_user(Command::new(pg_bin_dir().join("psql")).args([
        "-h",
        socket.to_str().expect("utf-8"),
        "-p",
        &port.to_string(),
        "-d",
        "postgres",
        "-Atc",
        "SELECT string_agg(id::text, ',' ORDER BY id) FROM oracle",
    ]))
    .output()
    .expect("psql");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1,2,3,4",
        "{out:?}"
    );
    // Dropping `restored` stops the server the runbook started.
    drop(restored);
}
