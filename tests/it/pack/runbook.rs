//! docs/RESTORE.md's runbook ("The day a restore is needed"), followed step
//! by step: its `sh` blocks are extracted in order and run as written
//! against a real cluster that pitr streamed and backed up, with the
//! variables the runbook names set. The restored cluster must hold exactly
//! the rows committed before the chosen time and pass `pg_amcheck`, and
//! the sidecar restarted on it must stream its new timeline and make a
//! base backup on it restorable.

use std::path::Path;
use std::process::{Child, Command};

use crate::support::TestRepo;
use crate::support::pg::{free_port, pg_bin_dir};
use crate::support::{PgCluster, run_as_pg_user};
use crate::support::{Streamer, between, write_row};

/// The commands of the runbook section, in order, without comments.
fn runbook_commands() -> Vec<String> {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/RESTORE.md"))
            .expect("docs/RESTORE.md");
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with("The day a restore is needed"))
        .expect("docs/RESTORE.md has the runbook section");
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

/// "pitr list" for pitr's commands, the program's name for the others.
fn step_name(command: &str) -> String {
    let mut words = command.split_whitespace();
    let program = words.next().unwrap_or("");
    match program {
        "pitr" => format!("pitr {}", words.next().unwrap_or("")),
        _ => program.to_owned(),
    }
}

/// Runs `sql` with `psql` as the superuser on the cluster at
/// `socket`/`port` (one the runbook started, not a test harness cluster).
fn psql(socket: &Path, port: u16, sql: &str) -> std::process::Output {
    run_as_pg_user(Command::new(pg_bin_dir().join("psql")).args([
        "-h",
        socket.to_str().expect("utf-8"),
        "-p",
        &port.to_string(),
        "-U",
        "postgres",
        "-d",
        "postgres",
        "-Atc",
        sql,
    ]))
    .output()
    .expect("psql")
}

/// Waits (bounded) until the slot `pitr` is active on the cluster at
/// `socket`/`port`.
fn wait_for_active_slot(socket: &Path, port: u16) {
    crate::support::eventually_blocking(
        "pitr run streams from the restored cluster",
        std::time::Duration::from_secs(60),
        || {
            let out = psql(
                socket,
                port,
                "SELECT active FROM pg_replication_slots WHERE slot_name = 'pitr'",
            );
            if String::from_utf8_lossy(&out.stdout).trim() == "t" {
                Ok(())
            } else {
                Err(format!("{out:?}"))
            }
        },
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_restore_runbook_works_as_written() {
    let commands = runbook_commands();
    let steps: Vec<String> = commands.iter().map(|c| step_name(c)).collect();
    assert_eq!(
        steps,
        [
            "pitr list",
            "pitr plan",
            "pitr restore",
            "pg_ctl",
            "psql",
            "pg_amcheck",
            "pitr check",
            "pitr run",
            "pitr backup"
        ],
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
    // The old primary is gone on the bad day: nothing else streams.
    drop(pg);

    // The damage happened after row 4: go back to between rows 4 and 5,
    // written the way PostgreSQL prints times.
    let time = pitr::restore::pg_time(between(stamps[3], stamps[4]));
    let restored = PgCluster::empty();
    let target = restored.data_dir();
    let socket = restored.dir().to_owned();
    let port = free_port();
    // The sidecar's config, its conninfo pointing at the restored cluster.
    let sidecar_config = config.with_file_name("sidecar.toml");
    let text = std::fs::read_to_string(&config).expect("read config");
    let (before, after) = text.split_once("conninfo = \"").expect("a conninfo");
    let (_, after) = after.split_once('"').expect("conninfo's end");
    std::fs::write(
        &sidecar_config,
        format!(
            "{before}conninfo = \"host={} port={port} user=postgres dbname=postgres\"{after}",
            socket.display()
        ),
    )
    .expect("write the sidecar's config");

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
    let mut background: Vec<Child> = Vec::new();
    let mut backup_stdout = String::new();
    for command in &commands {
        let (command, in_background) = match command.strip_suffix('&') {
            Some(c) => (c.trim_end(), true),
            None => (command.as_str(), false),
        };
        let mut cmd = Command::new("bash");
        cmd.args(["-euo", "pipefail", "-c", &format!("exec {command}")])
            .env("CFG", &config)
            .env("SIDECAR_CFG", &sidecar_config)
            .env("TIME", &time)
            .env("TARGET", &target)
            .env("PORT", port.to_string())
            .env("SOCKET", &socket)
            .env("PATH", &path)
            // The harness's superuser; the runbook's tools take the usual
            // libpq variables.
            .env("PGUSER", "postgres")
            .env_remove("PITR_CONFIG");
        // PostgreSQL's own tools run as the user owning the cluster, as
        // the runbook says; pitr itself runs as whoever runs the runbook.
        if !command.starts_with("pitr ") {
            run_as_pg_user(&mut cmd);
        }
        if in_background {
            background.push(cmd.spawn().expect("start a runbook command"));
            // The runbook's prose: wait until the sidecar streams, its slot
            // active on the restored cluster.
            wait_for_active_slot(&socket, port);
            continue;
        }
        let out = cmd.output().expect("run a runbook command");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "runbook command failed: {command}\nstdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
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
        if command.starts_with("pitr backup") {
            backup_stdout = stdout;
        }
    }
    for mut child in background {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let status = child.wait().expect("a background command exits");
        assert!(status.success(), "pitr run after SIGTERM: {status}");
    }

    // The cluster the runbook started holds exactly rows 1 to 4.
    let out = psql(
        &socket,
        port,
        "SELECT string_agg(id::text, ',' ORDER BY id) FROM oracle",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1,2,3,4",
        "{out:?}"
    );
    // Streaming resumed on the new timeline, and its first base backup is
    // restorable: the new restore window has begun.
    assert!(
        backup_stdout.contains("on timeline 2") && backup_stdout.contains("is restorable"),
        "{backup_stdout}"
    );
    // Dropping `restored` stops the server the runbook started.
    drop(restored);
}
