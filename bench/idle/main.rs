//! What `pitr run` costs while nothing happens: one PostgreSQL cluster and
//! three SQLite databases, all idle, with the health endpoint on. Measures
//! the sidecar's CPU share (user + system over the window) and its resident
//! memory (sampled every second; the peak and the end) after the initial base
//! backup is stored and things settled. Target: under 1 % of a core
//! and under 64 MB RSS.
//!
//! ```text
//! cargo bench --bench idle                  # prints the table
//! cargo bench --bench idle -- --write-md    # also rewrites BENCHMARKS.md
//! ```
//!
//! Environment: `PITR_BENCH_IDLE_SECS` (default 300), `PITR_BENCH_SETTLE_SECS`
//! (default 30).

#[path = "../common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `Command::env_remove` for several names.
trait EnvsRemove {
    fn envs_remove(&mut self, names: &[String]) -> &mut Self;
}

impl EnvsRemove for Command {
    fn envs_remove(&mut self, names: &[String]) -> &mut Self {
        for n in names {
            self.env_remove(n);
        }
        self
    }
}

/// `pitr run`, killed on drop.
struct Run(Child);

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `/health`'s JSON (any status), or `None` while nothing answers.
fn health(port: u16) -> Option<serde_json::Value> {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{port}/health"))
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

fn make_sqlite(path: &Path, rows: u32) -> anyhow::Result<()> {
    let c = rusqlite::Connection::open(path)?;
    c.pragma_update(None, "journal_mode", "wal")?;
    c.execute_batch(
        "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v BLOB);
         BEGIN;",
    )?;
    for _ in 0..rows {
        c.execute("INSERT INTO t (v) VALUES (randomblob(200))", [])?;
    }
    c.execute_batch("COMMIT;")?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let Some(write_md) = common::run_mode("idle") else {
        return Ok(());
    };
    let window = env_u64("PITR_BENCH_IDLE_SECS", 300);
    let settle = env_u64("PITR_BENCH_SETTLE_SECS", 30);

    let base = tempfile::Builder::new()
        .prefix("pitr-bench-idle-")
        .tempdir_in("/tmp")?;
    // The server's user must reach its temp dir inside.
    std::fs::set_permissions(
        base.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let cluster = common::pg::Cluster::start(base.path(), &[])?;
    let dir = base.path().join("pitr");
    std::fs::create_dir_all(&dir)?;
    let identity = age::x25519::Identity::generate();
    let mut sqlite = String::new();
    for name in ["auth", "jobs", "sessions"] {
        let db = dir.join(format!("{name}.db"));
        make_sqlite(&db, 5000)?;
        let _ = write!(
            sqlite,
            "\n[[sqlite]]\nname = \"{name}\"\npath = \"{}\"\n",
            db.display()
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = dir.join("pitr.toml");
    std::fs::write(
        &config,
        format!(
            "[repository]\nrecipients = [\"{}\"]\nstate_dir = \"state\"\n\n\
             [[destination]]\nname = \"local\"\nkind = \"fs\"\npath = \"store\"\n\n\
             [health]\nlisten = \"127.0.0.1:{port}\"\n\n\
             [verify]\nschedule = \"off\"\n\n[retention]\nschedule = \"off\"\n\n\
             [[postgres]]\nname = \"main\"\nconninfo = \"{}\"\n\
             base_backup = \"0 3 1 1 *\"\ncheckpoint = \"fast\"\n{sqlite}",
            identity.to_public(),
            cluster.conninfo()
        ),
    )?;
    let pitr = env!("CARGO_BIN_EXE_pitr");
    // pitr refuses unknown PITR_* variables; the benchmark's own are not
    // for it.
    let own: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("PITR_BENCH_"))
        .collect();
    let init = Command::new(pitr)
        .envs_remove(&own)
        .args(["init", "-c"])
        .arg(&config)
        .output()
        .context("pitr init")?;
    if !init.status.success() {
        bail!("pitr init: {}", String::from_utf8_lossy(&init.stderr));
    }
    let run = Run(Command::new(pitr)
        .envs_remove(&own)
        .args(["run", "-c"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("run.log"))?)
        .spawn()
        .context("pitr run")?);
    let pid = run.0.id();

    // Ready: streaming, the initial backup stored, every database captured.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(h) = health(port)
            && h["postgres"][0]["connected"] == true
            && h["postgres"][0]["last_backup"].is_string()
            && h["sqlite"]
                .as_array()
                .is_some_and(|a| a.iter().all(|s| s["captures"].as_u64().unwrap_or(0) > 0))
        {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "pitr run was not ready within 300 s:\n{}",
                std::fs::read_to_string(dir.join("run.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(settle));

    let cpu0 = common::cpu_secs(Some(pid)).context("cpu")?;
    let start = Instant::now();
    let mut rss_max = 0u64;
    while start.elapsed() < Duration::from_secs(window) {
        rss_max = rss_max.max(common::vm_rss_kb(Some(pid)).unwrap_or(0));
        std::thread::sleep(Duration::from_secs(1));
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = common::cpu_secs(Some(pid)).context("cpu")? - cpu0;
    let rss_end = common::vm_rss_kb(Some(pid)).unwrap_or(0);
    let hwm = common::vm_hwm_kb(Some(pid)).unwrap_or(0);
    let ok = health(port).is_some_and(|h| h["status"] == "ok");
    drop(run);

    let share = cpu / wall * 100.0;
    let mb = |kb: u64| kb as f64 * 1024.0 / common::MB;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "`cargo bench --bench idle` (window {window} s after {settle} s of settling; \
         1 PostgreSQL cluster streaming, 3 SQLite databases watched at the default 1 s \
         interval, health endpoint on, evaluated every 2 s; nothing written)\n"
    );
    let _ = writeln!(md, "| figure | value | target |");
    let _ = writeln!(md, "| --- | --- | --- |");
    let _ = writeln!(
        md,
        "| CPU, share of one core | {share:.2} % ({cpu:.2} s in {wall:.0} s) | < 1 % |"
    );
    let _ = writeln!(
        md,
        "| RSS, highest sample while idle | {:.1} MB | < 64 MB |",
        mb(rss_max)
    );
    let _ = writeln!(md, "| RSS at the end | {:.1} MB | |", mb(rss_end));
    let _ = writeln!(
        md,
        "| peak RSS of the whole run (VmHWM, initial base backup included) | {:.1} MB | |",
        mb(hwm)
    );
    let _ = writeln!(
        md,
        "| /health at the end | {} | ok |",
        if ok { "ok" } else { "FAILING" }
    );
    let _ = writeln!(md, "\nMachine:\n");
    for (k, v) in common::machine() {
        let _ = writeln!(md, "- {k}: {v}");
    }
    let _ = writeln!(
        md,
        "- load average at the end: {:.2}",
        common::load_average().unwrap_or(0.0)
    );
    common::report(
        "<!-- BEGIN idle results (generated by bench/idle/main.rs) -->",
        "<!-- END idle results -->",
        "## `pitr run` idle: 1 PostgreSQL + 3 SQLite (issue 8)",
        &md,
        write_md,
    )?;
    Ok(())
}
