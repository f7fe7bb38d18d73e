//! Point-in-time restore against real clusters, judged by an oracle: a
//! writer commits rows stamped with `clock_timestamp()` while pitr streams;
//! a restore to a time must hold exactly the rows committed before it. The
//! restores run through the `pitr` binary, as an operator runs them, with the
//! checked recovery it does by default; the restored directory is then
//! started by the test on its own, without pitr.

mod binaries;
mod errors;
mod majors;
mod oracle;
mod targets;
mod timeline;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use jiff::Timestamp;
use pitr::repo::Repository;

pub use crate::support::text;
use crate::support::{PgCluster, Streamer, TestRepo, between, write_row};

/// A repository with a config file the binary uses, for one `[[postgres]]`
/// entry named `main`.
struct Env {
    repo: TestRepo,
    config: PathBuf,
}

impl Env {
    async fn new(pg: &PgCluster) -> Env {
        let repo = TestRepo::new().await;
        let config = repo.write_config(&[("main", &pg.conninfo("postgres"))]);
        Env { repo, config }
    }

    async fn open(&self) -> Repository {
        self.repo.open().await
    }

    /// Runs `pitr <args> -c <config>`.
    fn pitr(&self, args: &[&str]) -> Output {
        crate::support::pitr_with(&self.config, args)
    }
}

/// Takes a base backup with `pitr backup` (the binary), restorable once the
/// streamer has stored its WAL; returns its id.
fn backup(env: &Env) -> String {
    crate::support::backup_id(&env.pitr(&["backup", "--wait-wal", "60"]))
}

/// The oracle's table: one row per commit, stamped by the server.
fn create_oracle(pg: &PgCluster) {
    pg.psql("CREATE TABLE oracle (id int PRIMARY KEY, at timestamptz NOT NULL)");
}

/// Restores with the binary into a fresh cluster directory, starts it on
/// its own and returns it with the ids of its oracle rows.
fn restore_and_read(env: &Env, args: &[&str]) -> (PgCluster, Vec<u32>, String) {
    restore_and_read_major(env, crate::support::pg::DEFAULT_MAJOR, args)
}

/// [`restore_and_read`] for a backup of PostgreSQL `major`, started with
/// that major's binaries.
fn restore_and_read_major(env: &Env, major: u32, args: &[&str]) -> (PgCluster, Vec<u32>, String) {
    let mut restored = PgCluster::empty_major(major);
    let data = restored.data_dir();
    let mut all = vec!["restore", "--target", data.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    let out = env.pitr(&all);
    assert!(out.status.success(), "pitr {all:?}: {}", text(&out));
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(report.contains("recovery checked"), "{report}");
    // What pitr hands back starts without pitr: no recovery, no settings.
    assert!(!data.join("recovery.signal").exists());
    let auto = std::fs::read_to_string(data.join("postgresql.auto.conf")).expect("auto.conf");
    assert!(!auto.contains("restore_command"), "{auto}");
    restored.start_filled("");
    assert_eq!(restored.psql("SELECT pg_is_in_recovery()"), "f");
    let ids = restored
        .psql("SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM oracle")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("an id"))
        .collect();
    (restored, ids, report)
}

/// The ids of rows stamped before `t`.
fn expected(rows: &[(u32, Timestamp)], t: Timestamp) -> Vec<u32> {
    rows.iter()
        .filter(|(_, at)| *at < t)
        .map(|(id, _)| *id)
        .collect()
}

/// The processes whose working directory is `dir` or under it: a server
/// on that data directory, its children, a restore_command they run.
pub fn processes_in(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(cwd) = std::fs::read_link(e.path().join("cwd"))
            && cwd.starts_with(dir)
        {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            found.push(format!(
                "{name}: {}",
                String::from_utf8_lossy(&cmd).replace('\0', " ")
            ));
        }
    }
    found
}

/// Replaces the pack holding the first chunk of `item`, in the fs
/// destination at `store`, with a FIFO nobody writes: a read of it blocks,
/// as on a hung mount.
pub fn hang_pack_of(repo: &Repository, store: &Path, item: &str) {
    let catalog = repo.catalog();
    let row = catalog.latest_item(item).expect("catalog").expect("item");
    let at = catalog
        .chunk_location(&row.manifest.chunks[0].0)
        .expect("catalog")
        .expect("location");
    let pack = store.join(at.pack.object_name());
    std::fs::remove_file(&pack).expect("remove pack");
    nix::unistd::mkfifo(&pack, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
}

/// Polls `found` until it gives something, at most 120 s, while `child`
/// (a `pitr` whose output is piped) runs; panics with its output if it ends
/// first.
pub fn while_running<T>(
    child: &mut std::process::Child,
    what: &str,
    mut found: impl FnMut() -> Option<T>,
) -> T {
    crate::support::eventually_blocking(what, Duration::from_secs(120), || {
        if let Some(status) = child.try_wait().expect("try_wait") {
            use std::io::Read;
            let (mut stdout, mut stderr) = (String::new(), String::new());
            if let Some(mut o) = child.stdout.take() {
                let _ = o.read_to_string(&mut stdout);
            }
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut stderr);
            }
            panic!("pitr ended ({status}) before {what}:\nstdout:\n{stdout}\nstderr:\n{stderr}");
        }
        found().ok_or("pitr runs, nothing yet")
    })
}

/// Sends `signal` to `child` and waits at most 60 s for it to exit.
pub fn interrupt(mut child: std::process::Child, signal: nix::sys::signal::Signal) -> Output {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).expect("kill");
    crate::support::eventually_blocking(
        format!("pitr exited after {signal}"),
        Duration::from_secs(60),
        || match child.try_wait().expect("try_wait") {
            Some(_) => Ok(()),
            None => Err("still running"),
        },
    );
    child.wait_with_output().expect("output")
}

fn is_empty_or_missing(p: &Path) -> bool {
    std::fs::read_dir(p).map_or(true, |mut d| d.next().is_none())
}
