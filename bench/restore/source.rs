//! The source: a pgbench database streamed by `pitr run` and archived by
//! pgBackRest, backed up by both, loaded for `PITR_BENCH_SECS` (under the
//! bench lock), caught up and stopped. What the restores need afterwards is a
//! [`Prepared`], which can be kept on disk and reused for profiling.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::common::pg::{Cluster, run_checked};
use crate::{BenchLock, Settings};

/// pitr's `[[postgres]]` entry and replication slot.
pub const DB_NAME: &str = "main";
pub const SLOT: &str = "pitr";
pub const STANZA: &str = "bench";

/// How long a catch-up or a backup's WAL may take.
const CATCH_UP: Duration = Duration::from_secs(600);

/// Everything the restores need, and what the source says about the target.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Prepared {
    pub work: PathBuf,
    pub pitr_config: PathBuf,
    pub pgbackrest_conf: PathBuf,
    /// The recovery target, in PostgreSQL's spelling (`... +00`).
    pub target_time: String,
    /// `count(*)` of `pgbench_history` rows whose `mtime` (their
    /// transaction's start) is at or before the target, on the source: a
    /// restore to the target holds at most these, and at least these less
    /// the transactions in flight at the target (one per client).
    pub history_started_by_target: i64,
    pub scale: u32,
    pub database_bytes: i64,
    /// WAL the server wrote during the load, bytes.
    pub load_wal_bytes: i64,
    /// WAL from the base backups' start to the target, bytes (what a
    /// restore replays).
    pub replay_wal_bytes: i64,
    pub load_secs: f64,
    /// pgbench's `-T`, `-c`, `-j`, and how long before the end the target is.
    pub secs: u64,
    pub clients: u32,
    pub jobs: u32,
    pub before_end: u64,
    pub tps: f64,
    pub pitr_repo_bytes: u64,
    pub pgbackrest_repo_bytes: u64,
    pub pitr_backup_secs: f64,
    pub pgbackrest_backup_secs: f64,
    pub pg_bin: PathBuf,
    pub pg_version: String,
    pub pg_settings: Vec<(String, String)>,
    pub pgbr_async: bool,
}

impl Prepared {
    pub fn load(file: &Path) -> anyhow::Result<Prepared> {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parse {}", file.display()))
    }

    fn save(&self) -> anyhow::Result<()> {
        let file = self.work.join("prepared.json");
        std::fs::write(&file, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("write {}", file.display()))
    }
}

/// `psql -At -c SQL` on the cluster's socket.
pub fn psql(cluster: &Cluster, sql: &str) -> anyhow::Result<String> {
    let out = run_checked(
        cluster
            .command("psql")
            .arg("-h")
            .arg(cluster.dir())
            .args(["-p", &cluster.port().to_string(), "-U", "postgres"])
            .args([
                "-d",
                "postgres",
                "-X",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ]),
        "psql",
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A `pitr` command with the config, without any `PITR_*` variable of
/// ours (pitr would take them for config overrides).
pub fn pitr_command<S: AsRef<std::ffi::OsStr>>(
    pitr: &Path,
    args: impl IntoIterator<Item = S>,
    config: &Path,
) -> Command {
    let mut cmd = Command::new(pitr);
    cmd.args(args).arg("-c").arg(config);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PITR_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// `pitr run` as a child, stopped with SIGTERM on drop.
struct Sidecar(Child);

impl Sidecar {
    fn stop(mut self) -> anyhow::Result<()> {
        // SAFETY: a signal to our child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let status = self.0.wait().context("wait for pitr run")?;
        anyhow::ensure!(status.success(), "pitr run exited with {status}");
        Ok(())
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn give_tree(cluster: &Cluster, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    cluster.give(dir)
}

/// Setup, then (under the lock, which is returned held) the load and the
/// catch-up.
pub fn prepare(
    settings: &Settings,
    work: &Path,
    pitr: &Path,
    pgbackrest: &Path,
) -> anyhow::Result<(Prepared, BenchLock)> {
    use std::os::unix::fs::PermissionsExt;
    // The server's user must get through to its directories below.
    std::fs::set_permissions(work, std::fs::Permissions::from_mode(0o755))
        .context("chmod the work dir")?;
    let pg_settings: Vec<(&str, String)> = settings
        .pg_settings
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    let cluster = Cluster::start(work, &pg_settings)?;
    let port = cluster.port().to_string();
    let pg_version = crate::common::command_line(cluster.bin("postgres"), &["--version"]);
    eprintln!("restore: pgbench -i -s {}", settings.scale);
    let t = Instant::now();
    run_checked(
        cluster
            .command("pgbench")
            .args(["-i", "-q", "-s", &settings.scale.to_string()])
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "postgres"]),
        "pgbench -i",
    )?;
    let database_bytes: i64 = psql(&cluster, "SELECT pg_database_size('postgres')")?.parse()?;
    eprintln!(
        "restore: loaded {:.2} GB in {:.0} s",
        database_bytes as f64 / 1e9,
        t.elapsed().as_secs_f64()
    );

    // pgBackRest: configuration, stanza, archive_command.
    let br = work.join("pgbackrest");
    for sub in ["", "repo", "log", "lock", "spool"] {
        give_tree(&cluster, &br.join(sub))?;
    }
    let conf = br.join("pgbackrest.conf");
    let archive_get = if settings.pgbr_async {
        "\n[global:archive-get]\narchive-async=y\n"
    } else {
        ""
    };
    std::fs::write(
        &conf,
        format!(
            "[global]\n\
             repo1-path={repo}\n\
             repo1-retention-full=1\n\
             lock-path={lock}\n\
             log-path={log}\n\
             spool-path={spool}\n\
             log-level-console=warn\n\
             log-level-stderr=warn\n\
             log-level-file=off\n\
             compress-type=zst\n\
             compress-level=3\n\
             process-max=2\n\
             archive-async=n\n\
             {archive_get}\n\
             [{STANZA}]\n\
             pg1-path={data}\n\
             pg1-port={port}\n\
             pg1-socket-path={socket}\n",
            repo = br.join("repo").display(),
            lock = br.join("lock").display(),
            log = br.join("log").display(),
            spool = br.join("spool").display(),
            data = cluster.data_dir().display(),
            socket = cluster.dir().display(),
        ),
    )
    .with_context(|| format!("write {}", conf.display()))?;
    cluster.give(&conf)?;
    let br_conf = format!("--config={}", conf.display());
    run_checked(
        cluster.command(pgbackrest).args([
            br_conf.as_str(),
            &format!("--stanza={STANZA}"),
            "stanza-create",
        ]),
        "pgbackrest stanza-create",
    )?;
    psql(&cluster, "ALTER SYSTEM SET archive_mode = 'on'")?;
    let archive_command = format!(
        "{} {br_conf} --stanza={STANZA} archive-push %p",
        pgbackrest.display()
    );
    psql(
        &cluster,
        &format!(
            "ALTER SYSTEM SET archive_command = '{}'",
            archive_command.replace('\'', "''")
        ),
    )?;
    cluster.restart()?;

    // pitr: identity, config, repository, `pitr run`.
    let pd = work.join("pitr");
    std::fs::create_dir_all(&pd).context("create the pitr dir")?;
    let identity = pd.join("identity.txt");
    let out = run_checked(
        Command::new(pitr)
            .arg("keygen")
            .arg("--output")
            .arg(&identity),
        "pitr keygen",
    )?;
    let recipient = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let config = pd.join("pitr.toml");
    std::fs::write(
        &config,
        format!(
            "[repository]\n\
             recipients = [\"{recipient}\"]\n\
             identity_file = \"{identity}\"\n\
             state_dir = \"{state}\"\n\n\
             [[destination]]\n\
             name = \"local\"\n\
             kind = \"fs\"\n\
             path = \"{repo}\"\n\n\
             [[postgres]]\n\
             name = \"{DB_NAME}\"\n\
             conninfo = \"host=127.0.0.1 port={port} user=postgres dbname=postgres\"\n\
             slot = \"{SLOT}\"\n\
             base_backup = \"off\"\n\n[verify]\nschedule = \"off\"\n\n[retention]\nschedule = \"off\"\n",
            identity = identity.display(),
            state = pd.join("state").display(),
            repo = pd.join("repo").display(),
        ),
    )
    .context("write pitr.toml")?;
    run_checked(&mut pitr_command(pitr, ["init"], &config), "pitr init")?;
    let log = std::fs::File::create(pd.join("run.log")).context("create run.log")?;
    let sidecar = Sidecar(
        pitr_command(pitr, ["run"], &config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start pitr run")?,
    );
    eprintln!("restore: pitr backup");
    let t = Instant::now();
    run_checked(
        &mut pitr_command(pitr, ["backup", "--wait-wal", "600"], &config),
        "pitr backup",
    )?;
    let pitr_backup_secs = t.elapsed().as_secs_f64();
    let backup_start: String = psql(
        &cluster,
        "SELECT pg_current_wal_lsn()", // the WAL replay starts about here
    )?;
    eprintln!("restore: pgbackrest backup --type=full");
    let t = Instant::now();
    run_checked(
        cluster.command(pgbackrest).args([
            br_conf.as_str(),
            &format!("--stanza={STANZA}"),
            "--type=full",
            "--start-fast",
            "backup",
        ]),
        "pgbackrest backup",
    )?;
    let pgbackrest_backup_secs = t.elapsed().as_secs_f64();

    // The measured phase starts here: the load is what the restores replay.
    let lock = BenchLock::take()?;
    eprintln!(
        "restore: uptime before the load: {}",
        crate::common::command_line("uptime", &[])
    );
    let load_start = psql(&cluster, "SELECT pg_current_wal_lsn()")?;
    let started = Instant::now();
    let pgbench = cluster
        .command("pgbench")
        .args([
            "-c",
            &settings.clients.to_string(),
            "-j",
            &settings.jobs.to_string(),
            "-T",
            &settings.secs.to_string(),
        ])
        .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "postgres"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start pgbench")?;
    let at = Duration::from_secs(settings.secs.saturating_sub(settings.before_end));
    std::thread::sleep(at.saturating_sub(started.elapsed()));
    let target_time = psql(
        &cluster,
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    )?;
    eprintln!("restore: target time {target_time}");
    let out = pgbench.wait_with_output().context("wait for pgbench")?;
    let load_secs = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "pgbench failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tps = stdout
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|t| t.parse().ok())
        .unwrap_or(f64::NAN);

    // Both tools catch up.
    let end = psql(&cluster, "SELECT pg_current_wal_lsn()")?;
    let load_wal_bytes: i64 = psql(
        &cluster,
        &format!("SELECT pg_wal_lsn_diff('{end}', '{load_start}')::bigint"),
    )?
    .parse()?;
    let replay_wal_bytes: i64 = psql(
        &cluster,
        &format!("SELECT pg_wal_lsn_diff('{end}', '{backup_start}')::bigint"),
    )?
    .parse()?;
    wait_for(
        &cluster,
        "pitr to store the WAL up to the end of the load",
        || {
            Ok(psql(
                &cluster,
                &format!(
                    "SELECT coalesce(restart_lsn >= '{end}', false) FROM pg_replication_slots \
                 WHERE slot_name = '{SLOT}'"
                ),
            )? == "t")
        },
    )?;
    let last = psql(&cluster, "SELECT pg_walfile_name(pg_switch_wal())")?;
    wait_for(&cluster, "pgBackRest to archive the last segment", || {
        Ok(psql(
            &cluster,
            &format!("SELECT coalesce(last_archived_wal >= '{last}', false) FROM pg_stat_archiver"),
        )? == "t")
    })?;
    let history_started_by_target: i64 = psql(
        &cluster,
        &format!("SELECT count(*) FROM pgbench_history WHERE mtime <= '{target_time}'"),
    )?
    .parse()?;
    let failed = psql(&cluster, "SELECT failed_count FROM pg_stat_archiver")?;
    anyhow::ensure!(
        failed == "0",
        "archive_command failed {failed} times:\n{}",
        cluster.log_tail()
    );

    // Stop the source and the sidecar.
    run_checked(
        cluster
            .command("pg_ctl")
            .arg("-D")
            .arg(cluster.data_dir())
            .args(["-m", "fast", "-w", "-t", "120", "stop"]),
        "pg_ctl stop",
    )?;
    sidecar.stop()?;
    drop(cluster);
    let prepared = Prepared {
        work: work.to_owned(),
        pitr_config: config,
        pgbackrest_conf: conf,
        target_time,
        history_started_by_target,
        scale: settings.scale,
        database_bytes,
        load_wal_bytes,
        replay_wal_bytes,
        load_secs,
        secs: settings.secs,
        clients: settings.clients,
        jobs: settings.jobs,
        before_end: settings.before_end,
        tps,
        pitr_repo_bytes: crate::common::dir_bytes(&pd.join("repo"))?,
        pgbackrest_repo_bytes: crate::common::dir_bytes(&br.join("repo"))?,
        pitr_backup_secs,
        pgbackrest_backup_secs,
        pg_bin: crate::common::pg::bin_dir()?,
        pg_version,
        pg_settings: settings.pg_settings.clone(),
        pgbr_async: settings.pgbr_async,
    };
    prepared.save()?;
    Ok((prepared, lock))
}

fn wait_for(
    cluster: &Cluster,
    what: &str,
    mut done: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + CATCH_UP;
    let started = Instant::now();
    while !done()? {
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out after {CATCH_UP:?} waiting for {what}:\n{}",
            cluster.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "restore: {what}: {:.1} s after the load",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
