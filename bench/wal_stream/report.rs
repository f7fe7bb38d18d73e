//! The markdown report.

use std::fmt::Write as _;

use crate::common::{MB, command_line};
use crate::contender::Contender;
use crate::lag::quantile;
use crate::{Bench, CATCH_UP, Run, SAMPLE_EVERY};

pub fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or("n/a".to_owned(), |v| format!("{v:.decimals$}"))
}

/// Seconds with two decimals: a lag is counted to the first sample that
/// shows it gone, and samples are about, not exactly, 100 ms apart, so 1.03
/// must not print as 1.0 beside a 1 s target.
pub fn fmt_secs(v: Option<f64>) -> String {
    match v {
        None => "n/a".to_owned(),
        Some(v) if v.is_infinite() => format!("> {}", CATCH_UP.as_secs()),
        Some(v) => format!("{v:.2}"),
    }
}

pub fn fmt_mb(v: Option<u64>) -> String {
    v.map_or("n/a".to_owned(), |b| format!("{:.1}", b as f64 / MB))
}

/// The command line that reproduces this run.
pub fn command() -> String {
    let mut cmd = String::new();
    for var in [
        "PITR_BENCH_SECS",
        "PITR_BENCH_SCALE",
        "PITR_BENCH_CLIENTS",
        "PITR_BENCH_JOBS",
        "PITR_BENCH_SYNC_COMMIT",
        "PITR_BENCH_ONLY",
        "PITR_BENCH_THREADS",
        "PITR_BENCH_PARTIAL_MS",
        "PITR_BENCH_COALESCE_MS",
        "PITR_BENCH_DIR",
    ] {
        if let Ok(v) = std::env::var(var) {
            let _ = write!(cmd, "{var}={v} ");
        }
    }
    cmd.push_str("cargo bench --bench wal_stream -- --write-md");
    cmd
}

pub fn report_markdown(
    bench: &Bench,
    runs: &[Run],
    load: (Option<f64>, Option<f64>),
    notes: &[String],
) -> String {
    let s = &bench.settings;
    let mut md = String::new();
    let _ = writeln!(md, "Command: `{}`\n", command());
    let _ = writeln!(md, "### Machine\n");
    let _ = writeln!(md, "| | |\n| --- | --- |");
    let mut machine = crate::common::machine();
    machine.push((
        "PostgreSQL".into(),
        command_line(bench.cluster.bin("postgres"), &["--version"]),
    ));
    if let Some(p) = &bench.pgbackrest {
        machine.push(("pgBackRest".into(), command_line(p, &["version"])));
    }
    for (k, v) in machine {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    let load_fmt = |l: Option<f64>| l.map_or("unknown".to_owned(), |l| format!("{l:.2}"));
    let _ = writeln!(
        md,
        "| load average (1 min) before / after | {} / {} |",
        load_fmt(load.0),
        load_fmt(load.1)
    );
    let _ = writeln!(
        md,
        "\nWorkload: one cluster (`initdb --data-checksums`, `wal_level = replica`, \
         `fsync = on`, other settings default: `max_wal_size = 1GB`, \
         `shared_buffers = 128MB`), `pgbench -i -s {}`, then per contender and \
         `synchronous_commit` setting a `CHECKPOINT`, a `pg_switch_wal()` and \
         `pgbench -N -c {} -j {} -T {}` while the parent samples the server every {} ms. \
         **WAL MB**: the server's flush LSN advance during pgbench. **CPU**: the contender's, \
         from the window's start until it holds the segment that a `pg_switch_wal()` after \
         pgbench closed. **Lag** (seconds) of a sample: the time until the contender's safe \
         position (`pg_stat_replication.flush_lsn` of its slot; for `archive-push` the end of \
         `pg_stat_archiver.last_archived_wal`) passed the server's flush LSN of that sample, \
         counted to the first later sample that shows it (an upper bound at {} ms \
         resolution); **lag MB**: the distance at the sample. **Stored**: what the contender \
         added to its storage in the window, with the WAL it covers / stored. \
         MB = 10^6 bytes, GB = 10^9.",
        s.scale,
        s.clients,
        s.jobs,
        s.secs,
        SAMPLE_EVERY.as_millis(),
        SAMPLE_EVERY.as_millis()
    );
    for sync_commit in &s.sync_commits {
        let runs: Vec<&Run> = runs
            .iter()
            .filter(|r| &r.sync_commit == sync_commit)
            .collect();
        if !runs.is_empty() {
            setting_markdown(&mut md, sync_commit, &runs);
        }
    }

    let _ = writeln!(md, "\n### Against the targets\n");
    let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
    for sync_commit in &s.sync_commits {
        let find = |c: Contender| {
            runs.iter()
                .find(|r| r.contender == c && &r.sync_commit == sync_commit)
        };
        let Some(p) = find(Contender::Pitr) else {
            continue;
        };
        let p99 = quantile(&p.lag_secs, 0.99);
        let _ = writeln!(
            md,
            "- `synchronous_commit = {sync_commit}`, lag: pitr's p99 {} s vs 1 s: {}.",
            fmt_secs(p99),
            verdict(p99.is_some_and(|v| v <= 1.0) && p.caught_up)
        );
        for c in [Contender::PgBackRest, Contender::PgBackRestAes] {
            if let (Some(q), Some(pc), Some(qc)) =
                (find(c), p.cpu_per_gb(), find(c).and_then(Run::cpu_per_gb))
            {
                let ratio = pc / qc;
                let _ = writeln!(
                    md,
                    "- `synchronous_commit = {sync_commit}`, CPU per GB of WAL: pitr {pc:.2} s \
                     vs {} {qc:.2} s ({ratio:.2}x, target 0.5x): {}.",
                    q.contender.label(),
                    verdict(ratio <= 0.5)
                );
            }
        }
        let rss = p.rss_kb.map(|kb| kb as f64 * 1024.0 / MB);
        let _ = writeln!(
            md,
            "- `synchronous_commit = {sync_commit}`, peak RSS: pitr {} MB vs 64 MB: {}.",
            fmt_opt(rss, 1),
            verdict(rss.is_some_and(|v| v <= 64.0))
        );
    }
    if !runs.iter().any(|r| r.contender == Contender::Pitr) {
        let _ = writeln!(md, "- pitr was not measured.");
    }
    for n in notes {
        let _ = writeln!(md, "- {n}");
    }
    md
}

/// The tables of one `synchronous_commit` setting.
fn setting_markdown(md: &mut String, sync_commit: &str, runs: &[&Run]) {
    let _ = writeln!(
        md,
        "\n### `synchronous_commit = {sync_commit}`\n\n\
         | contender | WAL MB | pgbench tps | CPU s | CPU s per GB | peak RSS (MB) | \
         lag p50 / p99 / max (s) | lag p50 / p99 / max (MB) | stored MB | note |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | --- |"
    );
    for r in runs {
        let stored = r.stored.map_or("n/a".to_owned(), |b| {
            format!(
                "{:.1} ({:.1}x)",
                b as f64 / MB,
                r.covered_bytes as f64 / b.max(1) as f64
            )
        });
        let lag_mb = |p: f64| fmt_mb(quantile(&r.lag_bytes, p));
        let _ = writeln!(
            md,
            "| {} | {:.0} | {} | {} | {} | {} | {} / {} / {} | {} / {} / {} | {} | {} |",
            r.contender.label(),
            r.wal_bytes as f64 / MB,
            fmt_opt(r.tps, 0),
            fmt_opt(r.cpu, 2),
            fmt_opt(r.cpu_per_gb(), 2),
            fmt_opt(r.rss_kb.map(|kb| kb as f64 * 1024.0 / MB), 1),
            fmt_secs(quantile(&r.lag_secs, 0.5)),
            fmt_secs(quantile(&r.lag_secs, 0.99)),
            fmt_secs(quantile(&r.lag_secs, 1.0)),
            lag_mb(0.5),
            lag_mb(0.99),
            lag_mb(1.0),
            stored,
            r.note
        );
    }
    let archivers: Vec<&&Run> = runs.iter().filter(|r| r.contender.is_archiver()).collect();
    if !archivers.is_empty() {
        let _ = writeln!(
            md,
            "\n`archive-push` is segment-granular: the server hands it a segment only once the \
             segment is complete, so its lag above includes the time a segment takes to fill. \
             From segment complete to archived alone:\n"
        );
        for r in archivers {
            let _ = writeln!(
                md,
                "- {}: p50 {} s, p99 {} s over {} segments ({:.1} s of pgbench).",
                r.contender.label(),
                fmt_secs(quantile(&r.segment_secs, 0.5)),
                fmt_secs(quantile(&r.segment_secs, 0.99)),
                r.segment_secs.len(),
                r.pgbench_secs
            );
        }
    }
    let streamers: Vec<&&Run> = runs.iter().filter(|r| r.counters.is_some()).collect();
    if !streamers.is_empty() {
        let _ = writeln!(
            md,
            "\nWhere a streamer's time goes, per MB of WAL in the window: file read/write \
             calls (`syscr` + `syscw` of `/proc/PID/io`, which count `read(2)`/`write(2)` \
             but not a socket's `recv`/`send`; pg_receivewal writes each XLogData message \
             with one `write`, so its count is about its messages), context switches \
             (summed over the live threads), and the median `VmRSS` while pgbench ran:\n\n\
             | contender | file read/write calls per MB | context switches per MB | threads | \
             RSS median / peak (MB) |\n| --- | ---: | ---: | ---: | --- |"
        );
        for r in streamers {
            let c = r.counters.unwrap_or_default();
            let per_mb = |n: u64| n as f64 / (r.wal_bytes.max(1) as f64 / MB);
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.0} | {} | {} / {} |",
                r.contender.label(),
                per_mb(c.rw_syscalls),
                per_mb(c.context_switches),
                c.threads,
                fmt_opt(r.rss_median_kb.map(|kb| kb as f64 * 1024.0 / MB), 1),
                fmt_opt(r.rss_kb.map(|kb| kb as f64 * 1024.0 / MB), 1),
            );
        }
    }
}
