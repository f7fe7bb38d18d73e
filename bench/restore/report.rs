//! The restore benchmark's markdown.

use std::fmt::Write as _;
use std::path::Path;

use crate::Settings;
use crate::common::{command_line, group_digits, machine};
use crate::runs::{Run, Tool};
use crate::source::Prepared;

/// The restore target: pitr's wall time at most this share of
/// pgBackRest's.
pub const TARGET_RATIO: f64 = 0.8;

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn of(runs: &[Run], tool: Tool, f: impl Fn(&Run) -> f64) -> Vec<f64> {
    runs.iter().filter(|r| r.tool == tool).map(f).collect()
}

fn range(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if v.is_empty() {
        "-".to_owned()
    } else if v.len() == 1 {
        format!("{lo:.1}")
    } else {
        format!("{lo:.1}-{hi:.1}")
    }
}

/// The command that reproduces the run: `PITR_BENCH_*` variables that were
/// set, then `cargo bench`.
fn command() -> String {
    let mut vars: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("PITR_BENCH_") && k != "PITR_BENCH_WRITE_MD")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    vars.sort();
    vars.push("cargo bench --bench restore -- --write-md".to_owned());
    vars.join(" ")
}

pub fn markdown(
    settings: &Settings,
    p: &Prepared,
    runs: &[Run],
    loads: [Option<f64>; 3],
    pgbackrest: &Path,
) -> String {
    let mut md = String::new();
    let load = |l: Option<f64>| l.map_or("?".to_owned(), |l| format!("{l:.2}"));
    let _ = writeln!(md, "Command: `{}`\n", command());
    let _ = writeln!(md, "### Machine\n\n| | |\n| --- | --- |");
    for (k, v) in machine() {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    let _ = writeln!(md, "| PostgreSQL | {} |", p.pg_version);
    let _ = writeln!(
        md,
        "| pgBackRest | {} |",
        command_line(pgbackrest, &["version"])
    );
    let _ = writeln!(
        md,
        "| load average (1 min) before setup / before the restores / after | {} / {} / {} |\n",
        load(loads[0]),
        load(loads[1]),
        load(loads[2])
    );
    let extra = if p.pg_settings.is_empty() {
        String::new()
    } else {
        format!(
            ", and {}",
            p.pg_settings
                .iter()
                .map(|(k, v)| format!("`{k} = {v}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let _ = writeln!(
        md,
        "Workload: one cluster (`initdb --data-checksums`, `wal_level = replica`, other settings \
         default{extra}), `pgbench -i -s {scale}` ({db:.2} GB), streamed by `pitr run` and archived \
         by pgBackRest `archive-push` (`compress-type=zst`, `compress-level=3`, `process-max=2`, no \
         encryption); `pitr backup` ({pb:.0} s) then `pgbackrest backup --type=full --start-fast` \
         ({bb:.0} s); then `pgbench -c {c} -j {j} -T {secs}`: {tps:.0} tps, {wal:.2} GB of WAL \
         ({replay:.2} GB from the backups to the end). Target: `{target}`, {before} s before the \
         load ended. Stored: pitr's repository {pr:.2} GB (encrypted), pgBackRest's {br:.2} GB.\n",
        scale = p.scale,
        db = p.database_bytes as f64 / 1e9,
        pb = p.pitr_backup_secs,
        bb = p.pgbackrest_backup_secs,
        c = p.clients,
        j = p.jobs,
        secs = p.secs,
        tps = p.tps,
        wal = p.load_wal_bytes as f64 / 1e9,
        replay = p.replay_wal_bytes as f64 / 1e9,
        target = p.target_time,
        before = p.before_end,
        pr = p.pitr_repo_bytes as f64 / 1e9,
        br = p.pgbackrest_repo_bytes as f64 / 1e9,
    );
    let parallel = settings
        .parallel
        .map_or(String::new(), |n| format!(" --parallel {n}"));
    let _ = writeln!(
        md,
        "- **pitr**: `pitr restore -c pitr.toml --at '{t}' --target DIR{parallel}` as root \
         (PostgreSQL runs as `postgres`): base backup materialised, recovery run and checked by \
         pitr, clean shutdown.\n\
         - **pgBackRest**: `pgbackrest --stanza=bench --pg1-path=DIR --type=time --target='{t}' \
         --target-action=promote --archive-mode=off restore` as `postgres`, then `postgres -D DIR` \
         with the settings pitr gives its recovery server (private socket, no TCP), the log \
         polled every 100 ms as pitr polls it until \"database system is ready to accept \
         connections\" (promoted), then SIGINT (fast shutdown) and wait. `archive-get` {async_}.\n\
         - **Wall**: from the first command's start to the last process's exit. **Staging**: \
         until the base backup is in place (pitr: the restored server's `postmaster.pid` \
         appears; pgBackRest: `pgbackrest restore` exits); **recovery** is the rest (replay, \
         promotion, shutdown). **CPU**: user + system of the whole process tree (the tool, \
         PostgreSQL and every `restore_command`; the benchmark is their subreaper and reaps \
         them). **Peak RSS**: `VmHWM` of the `pitr restore` / `pgbackrest restore` process, \
         sampled every 50 ms.\n\
         - **Check**: every restored cluster, started afterwards on its own, holds the same \
         `sum(abalance)` and `count(*)` of `pgbench_history`; the source had {bound} history \
         rows whose transaction started by the target (a restore holds at most these, and \
         at least these less one in-flight transaction per client).\n",
        t = p.target_time,
        async_ = if p.pgbr_async {
            "asynchronous (`archive-async=y` for `archive-get` only: a background process \
             fetches ahead into the spool, up to `archive-get-queue-max` 128 MiB, with \
             `process-max=2`), as pgBackRest advises for recovery"
        } else {
            "synchronous (one process per segment)"
        },
        bound = group_digits(p.history_started_by_target.max(0) as u64),
    );
    let _ = writeln!(md, "### Runs (in the order run)\n");
    let _ = writeln!(
        md,
        "| tool | run | wall s | staging s | recovery s | CPU s | peak RSS MB | WAL files | \
         sum(abalance) | history rows | recovery stopped |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    );
    for r in runs {
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {}{} |",
            r.tool.label(),
            r.n,
            r.wall,
            r.staged,
            r.wall - r.staged,
            r.cpu,
            r.peak_rss_kb as f64 / 1000.0,
            r.wal_files.map_or("?".to_owned(), |w| w.to_string()),
            r.abalance,
            group_digits(r.history.max(0) as u64),
            r.stopped.as_deref().unwrap_or("?"),
            if r.leftovers > 0 {
                format!(
                    " ({} processes still running {} s after, killed)",
                    r.leftovers, 120
                )
            } else {
                String::new()
            }
        );
    }
    let _ = writeln!(md, "\n### Medians\n");
    let _ = writeln!(
        md,
        "| tool | wall s | staging s | recovery s | CPU s | peak RSS MB |\n\
         | --- | ---: | ---: | ---: | ---: | ---: |"
    );
    for tool in [Tool::Pitr, Tool::PgBackRest] {
        let wall = of(runs, tool, |r| r.wall);
        if wall.is_empty() {
            continue;
        }
        let staged = of(runs, tool, |r| r.staged);
        let rec = of(runs, tool, |r| r.wall - r.staged);
        let cpu = of(runs, tool, |r| r.cpu);
        let rss = of(runs, tool, |r| r.peak_rss_kb as f64 / 1000.0);
        let _ = writeln!(
            md,
            "| {} | {:.1} ({}) | {:.1} ({}) | {:.1} ({}) | {:.1} ({}) | {:.1} |",
            tool.label(),
            median(wall.clone()),
            range(&wall),
            median(staged.clone()),
            range(&staged),
            median(rec.clone()),
            range(&rec),
            median(cpu.clone()),
            range(&cpu),
            rss.iter().copied().fold(0.0, f64::max),
        );
    }
    let _ = writeln!(
        md,
        "\n(ranges over the runs in parentheses; peak RSS is the highest)\n"
    );
    let pitr = median(of(runs, Tool::Pitr, |r| r.wall));
    let br = median(of(runs, Tool::PgBackRest, |r| r.wall));
    if pitr.is_finite() && br.is_finite() {
        let ratio = pitr / br;
        let _ = writeln!(
            md,
            "### Against the target\n\n- Wall time, medians: pitr {pitr:.1} s vs pgBackRest \
             {br:.1} s: {ratio:.2}x (target ≤ {TARGET_RATIO}x): **{}**.",
            if ratio <= TARGET_RATIO {
                "met"
            } else {
                "missed"
            }
        );
    }
    md
}
