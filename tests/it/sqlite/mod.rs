//! The SQLite watcher and `pitr restore --sqlite` against real writers in
//! other processes (`writer.py`, the `sqlite3` shell), with the `sqlite3`
//! shell's `PRAGMA integrity_check` as an independent judge.

mod bad;
mod big;
mod oracle;
mod rescan;
mod throughput;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::TestRepo;
pub use crate::support::{Sidecar, pitr, text};

/// Held by the tests that measure time or push a gigabyte (the oracles, the
/// throughput ratio, the 1 GiB capture): run side by side on a 2-core
/// machine they would measure each other.
pub static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes [`HEAVY`], whatever a failed test left in it.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}

/// The writer script.
pub fn writer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/sqlite/writer.py")
}

/// Appends a `[[sqlite]]` entry to the config at `cfg`.
pub fn add_sqlite(cfg: &Path, name: &str, db: &Path, extra: &str) {
    let mut text = std::fs::read_to_string(cfg).expect("read config");
    text.push_str(&format!(
        "\n[[sqlite]]\nname = \"{name}\"\npath = \"{}\"\n{extra}\n",
        db.display()
    ));
    std::fs::write(cfg, text).expect("write config");
}

/// A config for `repo` with one `[[sqlite]]` entry.
pub fn sqlite_config(repo: &TestRepo, name: &str, db: &Path) -> PathBuf {
    let cfg = repo.write_config(&[]);
    add_sqlite(&cfg, name, db, "");
    cfg
}

/// The `sqlite3` shell's answer to `sql` on `db`, trimmed.
pub fn sqlite3(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("the sqlite3 shell (installed by .ci/setup)");
    assert!(out.status.success(), "sqlite3 {sql}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// One commit the writer reported.
#[derive(Debug, Clone, Copy)]
pub struct Commit {
    pub id: i64,
    /// Wall clock read just before the commit.
    pub at_ns: i128,
    /// Wall clock once the commit returned.
    pub done_ns: i128,
}

/// What a writer run printed.
#[derive(Debug, Default)]
pub struct WriterRun {
    pub commits: Vec<Commit>,
    pub events: Vec<String>,
    pub rate: f64,
}

/// Runs `writer.py` to the end.
pub fn run_writer(
    db: &Path,
    mode: &str,
    seconds: f64,
    period_ms: u32,
    events: &[&str],
) -> WriterRun {
    let mut child = Command::new("python3")
        .arg(writer_script())
        .arg(db)
        .arg(mode)
        .arg(seconds.to_string())
        .arg(period_ms.to_string())
        .args(events)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (installed by .ci/setup)");
    let mut run = WriterRun::default();
    for line in BufReader::new(child.stdout.take().expect("stdout")).lines() {
        let line = line.expect("line");
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.first() {
            Some(&"commit") => run.commits.push(Commit {
                id: f[1].parse().expect("id"),
                at_ns: f[2].parse().expect("at"),
                done_ns: f[3].parse().expect("done"),
            }),
            Some(&"rate") => run.rate = f[1].parse().expect("rate"),
            Some(&"event") => run.events.push(line.clone()),
            _ => {}
        }
    }
    let out = child.wait_with_output().expect("writer");
    assert!(
        out.status.success(),
        "writer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    run
}

/// A timestamp from Unix nanoseconds, as `--at` takes it.
pub fn at_text(ns: i128) -> String {
    jiff::Timestamp::from_nanosecond(ns)
        .expect("a valid time")
        .to_string()
}

/// Restores `name` at `at` (or `--latest` for `None`) into `target`;
/// asserts success and the sqlite3 shell's integrity_check.
pub fn restore_ok(cfg: &Path, name: &str, at: Option<&str>, target: &Path) {
    let cfg = cfg.to_str().expect("utf-8");
    let target_s = target.to_str().expect("utf-8");
    let mut args = vec!["restore", "-c", cfg, "--sqlite", name, "--target", target_s];
    match at {
        Some(t) => args.extend(["--at", t]),
        None => args.push("--latest"),
    }
    let out = pitr(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "restore at {at:?}: {}",
        text(&out)
    );
    assert_eq!(sqlite3(target, "PRAGMA integrity_check"), "ok");
}

/// The `(id, at_ns)` rows of table `t`.
pub fn rows(db: &Path) -> Vec<(i64, i128)> {
    let out = sqlite3(db, "SELECT id, at_ns FROM t ORDER BY id");
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (id, at) = l.split_once('|').expect("two columns");
            (id.parse().expect("id"), at.parse().expect("at"))
        })
        .collect()
}

/// The dbpage virtual table is in the bundled SQLite (`.cargo/config.toml`
/// sets LIBSQLITE3_FLAGS): the watcher cannot read pages without it.
#[test]
fn sqlite_dbpage_is_compiled_in() {
    let conn = rusqlite::Connection::open_in_memory().expect("open");
    conn.execute_batch("CREATE TABLE x(a); INSERT INTO x VALUES (1);")
        .expect("create");
    let (pages, size): (i64, i64) = conn
        .query_row(
            "SELECT count(*), sum(length(data)) FROM sqlite_dbpage",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect(
            "sqlite_dbpage must exist: build with LIBSQLITE3_FLAGS=-DSQLITE_ENABLE_DBPAGE_VTAB",
        );
    assert!(pages >= 2);
    assert_eq!(size, pages * 4096);
}
