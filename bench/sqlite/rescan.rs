//! The `rescan` part: what a forced rescan of every page costs and whether
//! it holds up the captures after it. A database of `PITR_BENCH_RESCAN_PAGES`
//! 4 KiB pages (default 4000: random rows, incompressible) under the release
//! `pitr run` (interval 1 s); `writer.py` commits 1000 rows a second for
//! 8 s and takes a TRUNCATE checkpoint at 3 s, which throws away WAL frames
//! wherever the watcher was: the next capture compares every page. Each
//! stored capture's `read_ms` (poll, WAL, read transaction, hashing,
//! spooling) and `store_ms` (chunking, compression, encryption, upload,
//! commit) come from its log line.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::{Setup, Sidecar, common, env_u64, writer_script};

/// One stored capture, from its JSON log line.
struct Stored {
    logged_ns: i128,
    reason: String,
    pages: u64,
    snapshot: bool,
    read_ms: u64,
    store_ms: u64,
}

fn stored(log: &std::path::Path) -> Vec<Stored> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "stored an SQLite capture")
        .filter_map(|v| {
            let f = &v["fields"];
            let ts: jiff::Timestamp = v["timestamp"].as_str()?.parse().ok()?;
            Some(Stored {
                logged_ns: ts.as_nanosecond(),
                reason: f["reason"].as_str()?.to_owned(),
                pages: f["pages"].as_u64()?,
                snapshot: f["snapshot"].as_bool()?,
                read_ms: f["read_ms"].as_u64()?,
                store_ms: f["store_ms"].as_u64()?,
            })
        })
        .collect()
}

/// Runs the part; its markdown.
pub fn run() -> anyhow::Result<String> {
    let pages = env_u64("PITR_BENCH_RESCAN_PAGES", 4000);
    let setup = Setup::new()?;
    let db = setup.path("rescan.db");
    // writer.py's table, filled with rows of 3000 random bytes: about one
    // page each.
    let fill = format!(
        "import sqlite3\n\
         c = sqlite3.connect({db:?}, isolation_level=None)\n\
         c.execute('PRAGMA journal_mode=WAL')\n\
         c.execute('CREATE TABLE t (id INTEGER PRIMARY KEY, at_ns INTEGER NOT NULL, pad BLOB)')\n\
         c.execute('WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < {pages}) \
         INSERT INTO t (at_ns, pad) SELECT 0, randomblob(3000) FROM n')\n\
         c.close()\n",
        db = db.display().to_string()
    );
    let out = Command::new("python3").args(["-c", &fill]).output()?;
    if !out.status.success() {
        bail!("filling: {}", String::from_utf8_lossy(&out.stderr));
    }
    let cfg = setup.config("rescan", &db)?;
    let load_before = common::load_average();
    let sidecar = Sidecar::start(&cfg)?;
    sidecar.wait_captures(1, Duration::from_secs(60))?;
    let out = Command::new("python3")
        .arg(writer_script())
        .arg(&db)
        .args(["wal", "8", "1", "3:checkpoint"])
        .output()
        .context("python3")?;
    if !out.status.success() {
        bail!(
            "the writer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The captures of the writer's last second.
    std::thread::sleep(Duration::from_secs(3));
    let log = sidecar.log.clone();
    sidecar.stop()?;
    let load_after = common::load_average();
    let all = stored(&log);
    let Some(first) = all.iter().position(|s| s.reason.starts_with("rescan")) else {
        bail!(
            "no rescan was forced: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    };

    let mut md = String::new();
    writeln!(
        md,
        "Command: `PITR_BENCH_PARTS=rescan cargo bench --bench sqlite`; a {pages}-page \
         database (random rows), 1000 commits/s for 8 s, a TRUNCATE checkpoint at 3 s; load \
         (1 min) before / after: {} / {}.\n",
        load_before.map_or("?".into(), |l| format!("{l:.2}")),
        load_after.map_or("?".into(), |l| format!("{l:.2}")),
    )?;
    writeln!(
        md,
        "| capture | reason | pages stored | read (ms) | store (ms) | since the capture before |"
    )?;
    writeln!(md, "| ---: | --- | ---: | ---: | ---: | ---: |")?;
    for (i, s) in all.iter().enumerate().skip(first.saturating_sub(1)) {
        let gap = i
            .checked_sub(1)
            .map(|j| format!("{:.2} s", (s.logged_ns - all[j].logged_ns) as f64 / 1e9))
            .unwrap_or_default();
        let reason = s.reason.split(':').next().unwrap_or_default();
        writeln!(
            md,
            "| {} | {reason}{} | {} | {} | {} | {gap} |",
            i + 1,
            if s.snapshot { " (snapshot)" } else { "" },
            s.pages,
            s.read_ms,
            s.store_ms
        )?;
    }
    Ok(md)
}
