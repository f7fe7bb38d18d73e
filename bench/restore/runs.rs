//! The measured restores, alternately pitr and pgBackRest, and the check
//! that every restored cluster holds the same data.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::Settings;
use crate::common::pg::{pg_user, run_checked};
use crate::proc::{become_subreaper, children_cpu, reap_all};
use crate::source::{Prepared, STANZA, pitr_command};

/// How often a run is polled (peak RSS, staging done, server ready).
const POLL: Duration = Duration::from_millis(50);
/// How long the descendants a run leaves behind may take to exit.
const LEFTOVERS: Duration = Duration::from_secs(120);
/// The bound on a whole restore.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Pitr,
    PgBackRest,
}

impl Tool {
    pub fn key(self) -> &'static str {
        match self {
            Tool::Pitr => "pitr",
            Tool::PgBackRest => "pgbackrest",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Tool::Pitr => "pitr",
            Tool::PgBackRest => "pgBackRest",
        }
    }
}

/// One restore.
#[derive(Debug, Clone)]
pub struct Run {
    pub tool: Tool,
    pub n: u32,
    /// From the start of the first command to the exit of the last (for
    /// pgBackRest: the server's clean stop).
    pub wall: f64,
    /// Until the base backup is in place (pitr: the restored server's
    /// `postmaster.pid` appears; pgBackRest: `pgbackrest restore` exits).
    pub staged: f64,
    /// User + system CPU seconds of the whole process tree.
    pub cpu: f64,
    /// Peak RSS of `pitr restore` or of `pgbackrest restore`, kB.
    pub peak_rss_kb: u64,
    /// WAL files recovery restored from the tool.
    pub wal_files: Option<usize>,
    /// Where recovery stopped, in the server's words.
    pub stopped: Option<String>,
    /// `sum(abalance)` of `pgbench_accounts` and `count(*)` of
    /// `pgbench_history` in the restored cluster.
    pub abalance: i64,
    pub history: i64,
    /// Descendants that outlived the run by [`LEFTOVERS`] (killed).
    pub leftovers: usize,
}

/// Runs the restores, `settings.runs` per tool, alternately.
pub fn measure(
    settings: &Settings,
    prepared: &Prepared,
    pitr: &Path,
    pgbackrest: &Path,
) -> anyhow::Result<Vec<Run>> {
    become_subreaper()?;
    let dir = prepared.work.join("restores");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .context("chmod the restores dir")?;
    }
    let sock = dir.join("sock");
    std::fs::create_dir_all(&sock).context("create the socket dir")?;
    give(&sock)?;
    let mut results = Vec::new();
    for n in 1..=settings.runs {
        for tool in [Tool::Pitr, Tool::PgBackRest] {
            if !settings.wants(tool) {
                continue;
            }
            eprintln!(
                "restore: run {n} of {}, {}; load {:.2}",
                settings.runs,
                tool.label(),
                crate::common::load_average().unwrap_or(f64::NAN)
            );
            let target = dir.join(format!("{}-{n}", tool.key()));
            let run = match tool {
                Tool::Pitr => restore_pitr(settings, prepared, pitr, &target, n),
                Tool::PgBackRest => restore_pgbackrest(prepared, pgbackrest, &target, &sock, n),
            };
            let mut run = run.with_context(|| format!("{} restore {n}", tool.label()))?;
            let (abalance, history) = verify(prepared, &target, &sock)?;
            run.abalance = abalance;
            run.history = history;
            eprintln!(
                "restore: {} run {n}: {:.1} s wall ({:.1} s staging), {:.1} CPU s, peak RSS {:.1} MB, \
                 {} WAL files; sum(abalance) {abalance}, {history} history rows; stopped {}",
                tool.label(),
                run.wall,
                run.staged,
                run.cpu,
                run.peak_rss_kb as f64 / 1000.0,
                run.wal_files.map_or("?".to_owned(), |w| w.to_string()),
                run.stopped.as_deref().unwrap_or("?")
            );
            std::fs::remove_dir_all(&target)
                .with_context(|| format!("remove {}", target.display()))?;
            results.push(run);
        }
    }
    Ok(results)
}

/// Makes `path` the server user's (when root).
fn give(path: &Path) -> anyhow::Result<()> {
    if let Some((uid, gid)) = pg_user()? {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

/// A command run as the server's user (when root).
fn as_pg_user(program: impl AsRef<std::ffi::OsStr>) -> anyhow::Result<Command> {
    let mut cmd = Command::new(program);
    if let Some((uid, gid)) = pg_user()? {
        cmd.uid(uid).gid(gid);
    }
    Ok(cmd)
}

/// Waits for `child`, polling its peak RSS and `on_poll`; fails on a
/// non-zero exit or after [`RESTORE_TIMEOUT`].
fn watch(
    child: &mut Child,
    what: &str,
    peak_kb: &mut u64,
    mut on_poll: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if let Some(hwm) = crate::common::vm_hwm_kb(Some(child.id())) {
            *peak_kb = (*peak_kb).max(hwm);
        }
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("wait for {what}"))?
        {
            anyhow::ensure!(status.success(), "{what} exited with {status}");
            return Ok(());
        }
        if on_poll()? {
            return Ok(());
        }
        if started.elapsed() > RESTORE_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("{what} did not finish within {RESTORE_TIMEOUT:?}");
        }
        std::thread::sleep(POLL);
    }
}

fn fresh_target(target: &Path) -> anyhow::Result<()> {
    if target.exists() {
        std::fs::remove_dir_all(target).with_context(|| format!("remove {}", target.display()))?;
    }
    Ok(())
}

fn restore_pitr(
    settings: &Settings,
    prepared: &Prepared,
    pitr: &Path,
    target: &Path,
    n: u32,
) -> anyhow::Result<Run> {
    fresh_target(target)?;
    let out_path = prepared.work.join("restores").join(format!("pitr-{n}.out"));
    let out = std::fs::File::create(&out_path).context("create the output file")?;
    let mut args: Vec<std::ffi::OsString> = vec![
        "restore".into(),
        "--at".into(),
        prepared.target_time.clone().into(),
        "--target".into(),
        target.as_os_str().to_owned(),
    ];
    if let Some(p) = settings.parallel {
        args.push("--parallel".into());
        args.push(p.to_string().into());
    }
    let mut cmd = pitr_command(pitr, args, &prepared.pitr_config);
    reap_all(Duration::from_secs(5))?;
    let cpu0 = children_cpu();
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("start pitr restore")?;
    let mut peak = 0;
    let mut staged = None;
    let pid_file = target.join("postmaster.pid");
    let watched = watch(&mut child, "pitr restore", &mut peak, || {
        if staged.is_none() && pid_file.exists() {
            staged = Some(started.elapsed().as_secs_f64());
        }
        Ok(false)
    });
    let wall = started.elapsed().as_secs_f64();
    let left = reap_all(LEFTOVERS)?;
    let cpu = children_cpu() - cpu0;
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    watched.with_context(|| format!("pitr restore said:\n{text}"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name).map(|r| r.trim().to_owned()))
    };
    Ok(Run {
        tool: Tool::Pitr,
        n,
        wall,
        staged: staged.unwrap_or(f64::NAN),
        cpu,
        peak_rss_kb: peak,
        wal_files: field("WAL files replayed")
            .and_then(|r| r.split_whitespace().next().and_then(|w| w.parse().ok())),
        stopped: field("recovery stopped"),
        abalance: 0,
        history: 0,
        leftovers: left.len(),
    })
}

/// The settings pitr gives the server it recovers with (src/pitr/restore.rs
/// `run_server`), given to pgBackRest's restored server too.
fn server_settings(sock: &Path) -> Vec<String> {
    vec![
        "listen_addresses=".to_owned(),
        format!("unix_socket_directories={}", sock.display()),
        "port=5432".to_owned(),
        "archive_mode=off".to_owned(),
        "primary_conninfo=".to_owned(),
        "primary_slot_name=".to_owned(),
        "logging_collector=off".to_owned(),
        "log_destination=stderr".to_owned(),
        "lc_messages=C".to_owned(),
        "timezone=UTC".to_owned(),
        "log_timezone=UTC".to_owned(),
        "log_line_prefix=".to_owned(),
    ]
}

fn restore_pgbackrest(
    prepared: &Prepared,
    pgbackrest: &Path,
    target: &Path,
    sock: &Path,
    n: u32,
) -> anyhow::Result<Run> {
    use std::os::unix::fs::PermissionsExt;
    fresh_target(target)?;
    std::fs::create_dir(target).with_context(|| format!("create {}", target.display()))?;
    std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o700))?;
    give(target)?;
    let dir = prepared.work.join("restores");
    let out_path = dir.join(format!("pgbackrest-{n}.out"));
    let log_path = dir.join(format!("pgbackrest-{n}.postgres.log"));
    let out = std::fs::File::create(&out_path).context("create the output file")?;
    let log = std::fs::File::create(&log_path).context("create the server log")?;
    let mut restore = as_pg_user(pgbackrest)?;
    restore
        .arg(format!("--config={}", prepared.pgbackrest_conf.display()))
        .arg(format!("--stanza={STANZA}"))
        .arg(format!("--pg1-path={}", target.display()))
        .arg("--type=time")
        .arg(format!("--target={}", prepared.target_time))
        .args(["--target-action=promote", "--archive-mode=off", "restore"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let mut server = as_pg_user(prepared.pg_bin.join("postgres"))?;
    server.arg("-D").arg(target);
    for s in server_settings(sock) {
        server.arg("-c").arg(s);
    }
    server
        .current_dir(target)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);

    reap_all(Duration::from_secs(5))?;
    let cpu0 = children_cpu();
    let started = Instant::now();
    let mut peak = 0;
    let mut child = restore.spawn().context("start pgbackrest restore")?;
    let restored = watch(&mut child, "pgbackrest restore", &mut peak, || Ok(false));
    let staged = started.elapsed().as_secs_f64();
    let recovered = restored.and_then(|()| {
        let mut child = server.spawn().context("start postgres")?;
        let mut seen = 0u64;
        let mut text = String::new();
        let mut rss = 0;
        let ready = watch(&mut child, "postgres", &mut rss, || {
            if let Ok(mut f) = std::fs::File::open(&log_path)
                && f.seek(SeekFrom::Start(seen)).is_ok()
            {
                let mut more = String::new();
                if let Ok(k) = f.read_to_string(&mut more) {
                    seen += k as u64;
                    text.push_str(&more);
                }
            }
            Ok(text.contains("database system is ready to accept connections"))
        });
        // A clean stop, as pitr does: SIGINT is a fast shutdown.
        // SAFETY: a signal to our child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let status = child.wait().context("wait for postgres")?;
        ready?;
        anyhow::ensure!(
            status.success(),
            "postgres exited with {status} on shutdown"
        );
        Ok(())
    });
    let wall = started.elapsed().as_secs_f64();
    let left = reap_all(LEFTOVERS)?;
    let cpu = children_cpu() - cpu0;
    let out_text = std::fs::read_to_string(&out_path).unwrap_or_default();
    let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
    recovered.with_context(|| {
        format!(
            "pgbackrest restore said:\n{out_text}\nserver log (last lines):\n{}",
            tail(&log_text, 20)
        )
    })?;
    let stopped = log_text.lines().find_map(|l| {
        l.trim()
            .strip_prefix("LOG:")
            .map(str::trim)
            .and_then(|m| m.strip_prefix("recovery stopping "))
            .map(str::to_owned)
    });
    Ok(Run {
        tool: Tool::PgBackRest,
        n,
        wall,
        staged,
        cpu,
        peak_rss_kb: peak,
        wal_files: Some(
            log_text
                .lines()
                .filter(|l| l.contains("restored log file"))
                .count(),
        ),
        stopped,
        abalance: 0,
        history: 0,
        leftovers: left.len(),
    })
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Starts the restored cluster on its own (no pitr, no pgBackRest), reads
/// `sum(abalance)` and the history row count, and stops it.
fn verify(prepared: &Prepared, target: &Path, sock: &Path) -> anyhow::Result<(i64, i64)> {
    let log: PathBuf = prepared.work.join("restores").join("verify.log");
    std::fs::write(&log, "").with_context(|| format!("create {}", log.display()))?;
    give(&log)?;
    let pg_ctl = prepared.pg_bin.join("pg_ctl");
    let opts = format!(
        "-c listen_addresses='' -c unix_socket_directories='{}' -c port=5432 -c archive_mode=off",
        sock.display()
    );
    let dir = prepared.work.join("restores");
    run_checked(
        as_pg_user(&pg_ctl)?
            .current_dir(&dir)
            .arg("-D")
            .arg(target)
            .arg("-l")
            .arg(&log)
            .args(["-o", &opts, "-w", "-t", "600", "start"]),
        "pg_ctl start (verification)",
    )?;
    let query = run_checked(
        as_pg_user(prepared.pg_bin.join("psql"))?
            .current_dir(&dir)
            .arg("-h")
            .arg(sock)
            .args([
                "-p", "5432", "-U", "postgres", "-d", "postgres", "-X", "-At",
            ])
            .args(["-F", " ", "-v", "ON_ERROR_STOP=1", "-c"])
            .arg(
                "SELECT sum(abalance), (SELECT count(*) FROM pgbench_history), \
                 pg_is_in_recovery() FROM pgbench_accounts",
            ),
        "psql (verification)",
    );
    let stop = run_checked(
        as_pg_user(&pg_ctl)?
            .current_dir(&dir)
            .arg("-D")
            .arg(target)
            .args(["-m", "fast", "-w", "-t", "600", "stop"]),
        "pg_ctl stop (verification)",
    );
    let out = query?;
    stop?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let f: Vec<&str> = text.split(' ').collect();
    anyhow::ensure!(
        f.len() == 3 && f[2] == "f",
        "the restored cluster in {} answered {text:?} (sum, count, in recovery)",
        target.display()
    );
    Ok((
        f[0].parse()
            .with_context(|| format!("sum(abalance) {text:?}"))?,
        f[1].parse().with_context(|| format!("count {text:?}"))?,
    ))
}

/// Fails unless every restore holds the same data, no more history rows
/// than had started by the target, and at most one in-flight transaction
/// per client fewer.
pub fn check_agreement(runs: &[Run], prepared: &Prepared) -> anyhow::Result<()> {
    let clients = prepared.clients;
    let Some(first) = runs.first() else {
        anyhow::bail!("no restore ran");
    };
    for r in runs {
        anyhow::ensure!(
            (r.abalance, r.history) == (first.abalance, first.history),
            "{} run {} restored sum(abalance) {} and {} history rows, but {} run {} restored {} \
             and {}: the restores disagree",
            r.tool.label(),
            r.n,
            r.abalance,
            r.history,
            first.tool.label(),
            first.n,
            first.abalance,
            first.history
        );
    }
    let bound = prepared.history_started_by_target;
    anyhow::ensure!(
        first.history <= bound,
        "the restores hold {} history rows, but only {bound} transactions had started by the \
         target: they replayed past it",
        first.history
    );
    if first.history < bound - i64::from(clients) {
        eprintln!(
            "restore: WARNING: the restores hold {} history rows, {} fewer than the {bound} \
             transactions started by the target, more than the {clients} that can have been in \
             flight",
            first.history,
            bound - first.history
        );
    }
    Ok(())
}
