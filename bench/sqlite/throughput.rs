//! Issue 6's "the writer's throughput with the watcher running is at least
//! 95% of its throughput without it", as a figure: a writer process
//! (`writer.py`: one INSERT per transaction, as fast as it can, SQLite's
//! default `synchronous` unless `PITR_BENCH_TP_SYNC` says otherwise) runs
//! for a fixed time on a database, alternately without any pitr process and
//! with `pitr run` watching that same file at the default interval (a real
//! repository on an fs destination). The order alternates per round
//! (without, with, with, without, …) so that a drifting load hits both
//! sides alike. Reported per journal mode: inserts/s median and spread of
//! each side, the ratio of the medians, the captures pitr stored during the
//! "with" runs (the watcher was really working), its CPU, and the writer's
//! commit latencies and WAL size (what a capture's read transaction can do
//! to a writer: delay its commit in rollback mode, keep the WAL from being
//! reset in WAL mode).
//!
//! Environment: `PITR_BENCH_TP_ROUNDS` (rounds, each one run per side,
//! default 6), `PITR_BENCH_TP_SECS` (seconds per run, default 5),
//! `PITR_BENCH_TP_MODES` (default `wal,delete`), `PITR_BENCH_TP_SYNC`
//! (`default`, or a `PRAGMA synchronous` value such as `NORMAL`).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::{Setup, Sidecar, common, writer_script};

/// What one writer run printed.
#[derive(Debug, Clone, Default)]
struct WriterRun {
    /// `journal_mode synchronous` as SQLite reported them.
    settings: String,
    rate: f64,
    p99_us: f64,
    max_us: f64,
    /// The `-wal` file's size when the writer finished, before it closed.
    wal_bytes: u64,
}

/// Runs the writer as fast as it can for `secs` seconds.
fn write_flat_out(db: &Path, mode: &str, secs: f64, sync: &str) -> anyhow::Result<WriterRun> {
    let mut cmd = Command::new("python3");
    // The writer is no pitr, but nothing of the benchmark's own settings
    // should reach a child.
    for (k, _) in std::env::vars() {
        if k.starts_with("PITR_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .arg(writer_script())
        .arg(db)
        .arg(mode)
        .arg(secs.to_string())
        .arg("0")
        .env("SYNC", sync)
        .stdout(Stdio::piped())
        .spawn()
        .context("python3")?;
    let mut run = WriterRun::default();
    for line in BufReader::new(child.stdout.take().context("stdout")?).lines() {
        let line = line?;
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["settings", jm, sync] => run.settings = format!("{jm} {sync}"),
            ["rate", r] => run.rate = r.parse()?,
            ["latency", _p50, p99, max] => {
                run.p99_us = p99.parse()?;
                run.max_us = max.parse()?;
            }
            ["wal", b] => run.wal_bytes = b.parse()?,
            _ => {}
        }
    }
    if !child.wait()?.success() {
        bail!("the writer failed on {}", db.display());
    }
    Ok(run)
}

/// One side's runs.
#[derive(Debug, Default)]
struct Side {
    runs: Vec<WriterRun>,
}

impl Side {
    fn sorted(&self, f: impl Fn(&WriterRun) -> f64) -> Vec<f64> {
        let mut v: Vec<f64> = self.runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v
    }

    fn median(&self, f: impl Fn(&WriterRun) -> f64) -> f64 {
        median(&self.sorted(f))
    }

    fn rates(&self) -> Vec<f64> {
        self.sorted(|r| r.rate)
    }
}

fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// One journal mode's result.
pub struct ModeRow {
    mode: String,
    settings: String,
    without: Side,
    with: Side,
    /// Captures stored while the "with" writers ran.
    captures: usize,
    /// Captures that gave up on the writer's lock (logged `Busy`).
    busy: usize,
    /// pitr's CPU seconds while the "with" writers ran.
    pitr_cpu: f64,
    secs: f64,
    load_before: Option<f64>,
    load_after: Option<f64>,
}

impl ModeRow {
    fn ratio(&self) -> f64 {
        self.with.median(|r| r.rate) / self.without.median(|r| r.rate)
    }
}

/// Log lines of a capture that gave up on the writer's lock.
fn busy_lines(sidecar: &Sidecar) -> usize {
    std::fs::read_to_string(&sidecar.log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("is locked by a writer"))
        .count()
}

fn now_ns() -> i128 {
    jiff::Timestamp::now().as_nanosecond()
}

/// Alternates runs without and with the watcher on one database.
fn run_mode(
    setup: &Setup,
    mode: &str,
    rounds: usize,
    secs: f64,
    sync: &str,
) -> anyhow::Result<ModeRow> {
    let name = format!("tp-{mode}");
    let db = setup.path(&format!("{name}.db"));
    // The schema (and the journal mode) before pitr sees the file.
    write_flat_out(&db, mode, 0.0, sync)?;
    let cfg = setup.config(&name, &db)?;
    let load_before = common::load_average();
    let (mut without, mut with) = (Side::default(), Side::default());
    let (mut captures, mut busy, mut pitr_cpu) = (0, 0, 0.0);
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for watched in order {
            if !watched {
                let r = write_flat_out(&db, mode, secs, sync)?;
                eprintln!("sqlite: {mode} round {round} without pitr: {:.0}/s", r.rate);
                without.runs.push(r);
                continue;
            }
            let sidecar = Sidecar::start(&cfg)?;
            // Its start snapshot is stored before the writer begins: what
            // is measured is the steady state, one capture per interval.
            sidecar.wait_captures(1, Duration::from_secs(120))?;
            let cpu0 = common::cpu_secs(Some(sidecar.pid())).unwrap_or(0.0);
            let t0 = now_ns();
            let r = write_flat_out(&db, mode, secs, sync)?;
            let t1 = now_ns();
            pitr_cpu += common::cpu_secs(Some(sidecar.pid())).unwrap_or(0.0) - cpu0;
            let n = sidecar
                .captures()
                .iter()
                .filter(|c| c.0 >= t0 && c.0 <= t1)
                .count();
            captures += n;
            busy += busy_lines(&sidecar);
            sidecar.stop()?;
            eprintln!(
                "sqlite: {mode} round {round} with pitr run: {:.0}/s, {n} captures",
                r.rate
            );
            with.runs.push(r);
        }
    }
    Ok(ModeRow {
        mode: mode.to_owned(),
        settings: without
            .runs
            .first()
            .map_or(String::new(), |r| r.settings.clone()),
        without,
        with,
        captures,
        busy,
        pitr_cpu,
        secs,
        load_before,
        load_after: common::load_average(),
    })
}

/// What `PRAGMA synchronous` printed, named.
fn sync_name(n: &str) -> &str {
    match n {
        "0" => "OFF",
        "1" => "NORMAL",
        "2" => "FULL",
        "3" => "EXTRA",
        other => other,
    }
}

/// Runs every mode and returns the Markdown section.
pub fn run() -> anyhow::Result<String> {
    let rounds = super::env_u64("PITR_BENCH_TP_ROUNDS", 6).max(1) as usize;
    let secs = super::env_u64("PITR_BENCH_TP_SECS", 5).max(1) as f64;
    let sync = std::env::var("PITR_BENCH_TP_SYNC").unwrap_or_else(|_| "default".into());
    let modes: Vec<String> = std::env::var("PITR_BENCH_TP_MODES")
        .unwrap_or_else(|_| "wal,delete".into())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    let setup = Setup::new()?;
    let mut rows = Vec::new();
    for mode in &modes {
        eprintln!(
            "sqlite: writer throughput, {mode} mode, {rounds} rounds of {secs} s per side..."
        );
        rows.push(run_mode(&setup, mode, rounds, secs, &sync)?);
    }

    let mut md = String::new();
    writeln!(
        md,
        "Command: `PITR_BENCH_PARTS=throughput{} cargo bench --bench sqlite -- --write-md`; \
         {rounds} rounds of {secs} s per side, sides alternating (without, with, with, without, …); \
         {} CPUs.\n",
        match std::env::var("PITR_BENCH_TP_SYNC") {
            Ok(s) => format!(" PITR_BENCH_TP_SYNC={s}"),
            Err(_) => String::new(),
        },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )?;
    writeln!(
        md,
        "| journal mode (synchronous) | without pitr: inserts/s, median (min–max) | with `pitr run`: median (min–max) | ratio of medians (target ≥ 0.95) | captures stored during the \"with\" runs | pitr CPU during them | load (1 min) before / after |"
    )?;
    writeln!(md, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |")?;
    for r in &rows {
        let (wo, w) = (r.without.rates(), r.with.rates());
        let (jm, sync) = r.settings.split_once(' ').unwrap_or((&r.settings, "?"));
        let ratio = r.ratio();
        writeln!(
            md,
            "| {jm} ({}) | {:.0} ({:.0}–{:.0}) | {:.0} ({:.0}–{:.0}) | **{ratio:.3}** {} | {} in {:.0} s{} | {:.2} s ({:.1}% of one CPU) | {} / {} |",
            sync_name(sync),
            median(&wo),
            wo.first().copied().unwrap_or(f64::NAN),
            wo.last().copied().unwrap_or(f64::NAN),
            median(&w),
            w.first().copied().unwrap_or(f64::NAN),
            w.last().copied().unwrap_or(f64::NAN),
            if ratio >= 0.95 { "met" } else { "NOT met" },
            r.captures,
            r.secs * r.with.runs.len() as f64,
            if r.busy > 0 {
                format!(" ({} gave up on the writer's lock)", r.busy)
            } else {
                String::new()
            },
            r.pitr_cpu,
            r.pitr_cpu * 100.0 / (r.secs * r.with.runs.len() as f64),
            r.load_before.map_or("?".into(), |l| format!("{l:.2}")),
            r.load_after.map_or("?".into(), |l| format!("{l:.2}")),
        )?;
    }
    writeln!(
        md,
        "\nWhat a capture's read transaction can do to the writer (medians over the runs of each side):\n"
    )?;
    writeln!(
        md,
        "| journal mode | commit p99 without / with | slowest commit without / with | `-wal` size at the writer's end without / with |"
    )?;
    writeln!(md, "| --- | ---: | ---: | ---: |")?;
    for r in &rows {
        let ms = |us: f64| format!("{:.1} ms", us / 1000.0);
        let mb = |b: f64| format!("{:.1} MB", b / common::MB);
        writeln!(
            md,
            "| {} | {} / {} | {} / {} | {} / {} |",
            r.mode,
            ms(r.without.median(|x| x.p99_us)),
            ms(r.with.median(|x| x.p99_us)),
            ms(r.without.median(|x| x.max_us)),
            ms(r.with.median(|x| x.max_us)),
            mb(r.without.median(|x| x.wal_bytes as f64)),
            mb(r.with.median(|x| x.wal_bytes as f64)),
        )?;
    }
    writeln!(md, "\nEvery run, inserts/s in the order run:\n")?;
    for r in &rows {
        let mut line = String::new();
        let (mut wo, mut w) = (r.without.runs.iter(), r.with.runs.iter());
        for round in 0..r.without.runs.len().max(r.with.runs.len()) {
            let pair = if round % 2 == 0 {
                [("without", wo.next()), ("with", w.next())]
            } else {
                [("with", w.next()), ("without", wo.next())]
            };
            for (side, run) in pair {
                if let Some(run) = run {
                    write!(
                        line,
                        "{}{side} {:.0}",
                        if line.is_empty() { "" } else { ", " },
                        run.rate
                    )?;
                }
            }
        }
        writeln!(md, "- {}: {line}", r.mode)?;
    }
    Ok(md)
}
