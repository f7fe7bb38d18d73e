//! The PostgreSQL test restore: a random time after the newest restorable
//! base backup, restored with the checked recovery into a scratch
//! directory; then the restored cluster is started privately (a Unix socket
//! in a private directory, no TCP listener, trust only on that socket) and
//! `pg_amcheck --all --install-missing` judges its heaps and B-tree indexes;
//! after a clean shutdown `pg_checksums --check` reads every page when data
//! checksums are on. The scratch directory is removed whatever happened.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use jiff::Timestamp;

use super::{DatabaseKind, Failure, Scratch, VerifyReport, random_time};
use crate::config::{Config, PostgresConfig};
use crate::pg::{self, PgBin};
use crate::repo::{RepoError, Repository};
use crate::restore::{RestoreError, RestoreOptions, Target, pg_time};

/// How long recovery of a test restore may take.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
/// How long the restored cluster may take to start for the checks.
const START_TIMEOUT: Duration = Duration::from_secs(300);
/// How long `pg_amcheck` may take.
const AMCHECK_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// The programs a test restore runs, all of the backup's major.
/// What a test restore runs of the backup's major.
pub const TOOLS: &[&str] = &["postgres", "pg_amcheck", "pg_checksums", "psql"];

/// Restores `pg` to a random time into a scratch directory, checks it and
/// removes it; fills `report` as it goes.
pub(super) async fn test_restore(
    config: &Config,
    repo: &Repository,
    pg: &PostgresConfig,
    report: &mut VerifyReport,
) -> Result<(), Failure> {
    let (target, timeline, note) = choose_target(repo, &pg.name).await?;
    report.target = Some(match &note {
        Some(n) => format!("{} ({n})", target.describe()),
        None => target.describe(),
    });
    let plan = crate::restore::plan(repo, &pg.name, &target, timeline).await?;
    report.backup = Some(plan.backup.id.clone());
    // The catalog's server version, checked before the download; the
    // restored PG_VERSION is checked again after it.
    let bin = match pg::major_of(&plan.backup.server_version) {
        Some(major) => Some(find_tools(config, major)?),
        None => None,
    };
    let scratch = Scratch::create(&config.verify.scratch_dir, DatabaseKind::Postgres, &pg.name)?;
    let result = restore_and_check(config, repo, pg, &plan, bin, scratch.path(), report).await;
    let removed = scratch.remove();
    match (result, removed) {
        (Err(e), _) => Err(e),
        (Ok(()), Some(e)) => Err(e.into()),
        (Ok(()), None) => Ok(()),
    }
}

/// Why `db` has nothing to test-restore yet (no restorable base backup),
/// or `None` when it has; a catalog that cannot be read is left for the
/// test restore itself to report.
pub(super) fn nothing_to_restore(repo: &Repository, db: &str) -> Option<String> {
    match crate::basebackup::backups(repo, db) {
        Ok(b) if !b.iter().any(|b| b.restorable) => {
            Some("no restorable base backup yet (the backup check reports that)".to_owned())
        }
        _ => None,
    }
}

/// The target: a uniformly random time between the end of the newest
/// restorable base backup and the end of the restore window; `--latest`
/// (with the reason) when the window has no transaction after that backup.
///
/// A time comes with the timeline whose window it was drawn from: after a
/// promotion, a time between the old timeline's last transaction and the
/// fork lies in the new timeline's window (its history reaches it), but
/// the timeline current then is the old one, whose window ends at its last
/// transaction: planned without the timeline it would be refused.
async fn choose_target(
    repo: &Repository,
    db: &str,
) -> Result<(Target, Option<u32>, Option<String>), Failure> {
    let backups = crate::basebackup::backups(repo, db)?;
    let newest = backups
        .iter()
        .filter(|b| b.restorable)
        .max_by_key(|b| b.record.finished)
        .ok_or_else(|| {
            Failure::Other(format!(
                "the repository holds no restorable base backup of [[postgres]] {db:?}, so \
                 nothing can be test-restored: take one with `pitr backup` while `pitr run` \
                 streams its WAL"
            ))
        })?;
    let windows = crate::restore::windows(repo, db).await?;
    let window = windows
        .iter()
        .filter(|w| w.timeline >= newest.record.end_timeline && w.earliest.is_some())
        .max_by_key(|w| w.timeline);
    let from = newest.record.finished;
    match window.and_then(|w| Some((w.timeline, w.latest?))) {
        Some((timeline, latest)) if latest > from => Ok((
            Target::Time(random_time(from, latest)),
            Some(timeline),
            None,
        )),
        _ => Ok((
            Target::Latest,
            None,
            Some(format!(
                "the stored WAL holds no transaction after base backup {} finished at {}, so \
                 everything stored is restored instead of a random time",
                newest.record.id,
                pg_time(from)
            )),
        )),
    }
}

/// The binaries of `major` with every tool a test restore runs.
fn find_tools(config: &Config, major: u32) -> Result<PgBin, Failure> {
    pg::find(major, &config.restore.bin_dirs, TOOLS).map_err(Failure::Binaries)
}

async fn restore_and_check(
    config: &Config,
    repo: &Repository,
    pg: &PostgresConfig,
    plan: &crate::restore::Plan,
    bin: Option<PgBin>,
    run_dir: &Path,
    report: &mut VerifyReport,
) -> Result<(), Failure> {
    let owner = pg::server_owner(&config.verify.os_user, "[verify] os_user")?;
    if let Some((uid, gid)) = owner {
        // The server (os_user) must reach its data directory inside.
        std::os::unix::fs::chown(run_dir, Some(uid), Some(gid))
            .map_err(|e| format!("{}: {e}", run_dir.display()))?;
        if let Some(blocked) = run_dir
            .ancestors()
            .skip(1)
            .find(|p| !searchable_by_others(p))
        {
            return Err(Failure::Other(format!(
                "[verify] scratch_dir {} is inside {}, which [verify] os_user {:?} cannot \
                 enter: PostgreSQL runs as that user during a test restore; make it searchable \
                 (chmod o+x) or point scratch_dir elsewhere",
                config.verify.scratch_dir.display(),
                blocked.display(),
                config.verify.os_user
            )));
        }
    }
    let data = run_dir.join("data");
    let opts = RestoreOptions {
        target_dir: data.clone(),
        force: false,
        recover: true,
        os_user: config.verify.os_user.clone(),
        // Restore finds `postgres` for the restored PG_VERSION the same way.
        pg_bin: None,
        bin_dirs: config.restore.bin_dirs.clone(),
        config_path: config.path.clone(),
        parallel: 4,
        tablespace_dir: Some(run_dir.join("tablespaces")),
        recovery_timeout: RECOVERY_TIMEOUT,
        // Beside the reports, outside the directory that is removed.
        log_dir: config.verify.scratch_dir.clone(),
        progress: None,
    };
    let restored = match crate::restore::restore(repo, plan, &opts).await {
        Err(RestoreError::NoPostgres(e)) => return Err(Failure::Binaries(e)),
        r => r.map_err(explain_restore_error)?,
    };
    let reached = restored
        .reached
        .as_ref()
        .ok_or_else(|| "recovery was not run".to_owned())?;
    report.wal_files = reached.wal_files;
    report.reached = Some(describe_reached(reached));
    report.checks.push(format!(
        "recovery: checked ({} base backup files, {} WAL files replayed)",
        restored.files, reached.wal_files
    ));
    // The restored PG_VERSION decides the major of the checks' tools.
    let major = pg::data_dir_major(&data).map_err(Failure::DataDir)?;
    let bin = match bin {
        Some(b) if b.major() == major => b,
        _ => find_tools(config, major)?,
    };
    let bin = &bin;
    let checksums = run_checks(config, pg, bin, &data, owner, report).await?;
    if checksums {
        let out = run_tool(
            tokio::process::Command::new(bin.tool("pg_checksums"))
                .arg("--check")
                .arg("-D")
                .arg(&data),
            owner,
            AMCHECK_TIMEOUT,
        )
        .await?;
        if !out.status.success() {
            return Err(Failure::Other(format!(
                "pg_checksums --check found bad pages in the restored cluster ({}): {}{}. The \
                 backup or its WAL holds damaged data pages: run `pitr verify` and `pitr \
                 repair`, then take a new base backup",
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let summary: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("Blocks scanned") || l.starts_with("Bad checksums"))
            .map(str::trim)
            .collect();
        report
            .checks
            .push(format!("pg_checksums --check: ok ({})", summary.join(", ")));
    } else {
        report
            .checks
            .push("pg_checksums: skipped (data checksums are off in this cluster)".to_owned());
    }
    Ok(())
}

/// Whether others may enter `dir` (the `x` bit for others).
fn searchable_by_others(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
}

/// A restore error as a report's error, naming a damaged object and the
/// repair.
fn explain_restore_error(e: RestoreError) -> String {
    let damaged = match &e {
        RestoreError::Backup(crate::basebackup::BackupError::Repo(r)) => damaged_object(r),
        _ => None,
    };
    match damaged {
        Some(object) => format!(
            "{e}. Run `pitr repair` to copy a good copy of {object} from another destination \
             (`pitr verify` lists every damaged object); with no good copy left, take a new \
             base backup (`pitr backup`)"
        ),
        None => {
            let text = e.to_string();
            if text.contains("altered")
                || text.contains("truncated")
                || text.contains("wrong content")
            {
                format!(
                    "{text}. Run `pitr verify` to list damaged objects and `pitr repair` to \
                     restore them from another destination"
                )
            } else {
                text
            }
        }
    }
}

/// The object a repository error says is damaged.
fn damaged_object(e: &RepoError) -> Option<&str> {
    match e {
        RepoError::Tampered { object, .. }
        | RepoError::Truncated { object, .. }
        | RepoError::Swapped { object, .. }
        | RepoError::Malformed { object, .. }
        | RepoError::MetadataAuth { object } => Some(object),
        _ => None,
    }
}

fn describe_reached(r: &crate::restore::Reached) -> String {
    let mut parts = Vec::new();
    parts.push(match r.last_transaction {
        Some(t) => format!("last transaction {}", pg_time(t)),
        None => "no transaction replayed".to_owned(),
    });
    if let Some(l) = r.redo_done {
        parts.push(format!("redo done at {l}"));
    }
    if let Some(s) = &r.stopped {
        parts.push(format!("stopped {s}"));
    }
    if let Some(t) = r.new_timeline {
        parts.push(format!("new timeline {t}"));
    }
    parts.join(", ")
}

/// Output of a finished tool.
struct ToolOutput {
    status: std::process::ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Runs a client tool (as the server's user when root), bounded in time.
async fn run_tool(
    cmd: &mut tokio::process::Command,
    owner: Option<(u32, u32)>,
    timeout: Duration,
) -> Result<ToolOutput, String> {
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("PGCONNECT_TIMEOUT", "30")
        .kill_on_drop(true);
    let what = format!("{:?}", cmd.as_std().get_program());
    let child = cmd.spawn().map_err(|e| format!("cannot run {what}: {e}"))?;
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| format!("{what} did not finish within {} s", timeout.as_secs()))?
        .map_err(|e| format!("{what}: {e}"))?;
    Ok(ToolOutput {
        status: out.status,
        stdout: out.stdout,
        stderr: out.stderr,
    })
}

/// Starts the restored cluster privately, runs `pg_amcheck`, stops it.
/// Returns whether data checksums are on.
async fn run_checks(
    config: &Config,
    pg: &PostgresConfig,
    bin: &PgBin,
    data: &Path,
    owner: Option<(u32, u32)>,
    report: &mut VerifyReport,
) -> Result<bool, String> {
    use std::os::unix::fs::PermissionsExt;
    // The socket's directory: short (socket paths are limited to ~100
    // bytes), and only the server's user (and root) may enter it, so the
    // trust rule below admits nobody else.
    let private = tempfile::Builder::new()
        .prefix("pitr-verify-")
        .tempdir()
        .map_err(|e| format!("cannot create a private socket directory: {e}"))?;
    let sock = private.path().to_owned();
    let hba = sock.join("pg_hba.conf");
    std::fs::write(&hba, "local all all trust\n").map_err(|e| format!("{}: {e}", hba.display()))?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("{}: {e}", sock.display()))?;
    if let Some((uid, gid)) = owner {
        for p in [&sock, &hba] {
            std::os::unix::fs::chown(p, Some(uid), Some(gid))
                .map_err(|e| format!("{}: {e}", p.display()))?;
        }
    }
    let log_path = sock.join("postgres.log");
    let start = pg::ServerStart {
        bin,
        data,
        socket_dir: &sock,
        settings: vec![
            format!("hba_file={}", hba.display()),
            // Small: the checks need few connections and little memory.
            "max_connections=20".to_owned(),
            "shared_buffers=32MB".to_owned(),
        ],
        log: &log_path,
        owner,
    };
    let mut server = pg::start_isolated(start, START_TIMEOUT)
        .await
        .map_err(|e| match e {
            pg::StartError::Exited { status, log_tail } => format!(
                "the restored cluster exited ({status}) instead of starting for the checks: {}",
                log_tail.lines().rev().collect::<Vec<_>>().join(" | ")
            ),
            e => format!("the restored cluster did not start for the checks: {e}"),
        })?;
    let checked = amcheck(pg, bin, &sock, owner, report).await;
    let stopped = server
        .stop_fast(Duration::from_secs(300))
        .await
        .map_err(|e| format!("the restored cluster: {e}"));
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let fail = |why: String| {
        let kept = keep_log(&config.verify.scratch_dir, &log);
        format!("{why}; the server log is kept at {kept}")
    };
    let checksums = checked.map_err(&fail)?;
    stopped.map_err(&fail)?;
    Ok(checksums)
}

/// Keeps a failed check's server log in the scratch directory (beside, not
/// inside, the removed run directory).
fn keep_log(scratch: &Path, log: &str) -> String {
    let path = scratch.join(format!(
        "verify-{}.log",
        Timestamp::now().strftime("%Y%m%dT%H%M%S%.6fZ")
    ));
    match std::fs::write(&path, log) {
        Ok(()) => path.display().to_string(),
        Err(e) => format!("(not kept: {e})"),
    }
}

/// Finds the bootstrap superuser, runs `pg_amcheck` on every database,
/// notes what it checked; returns whether data checksums are on.
async fn amcheck(
    pg: &PostgresConfig,
    bin: &PgBin,
    sock: &Path,
    owner: Option<(u32, u32)>,
    report: &mut VerifyReport,
) -> Result<bool, String> {
    // Any role that exists can ask who the bootstrap superuser (oid 10) is;
    // the one the sidecar connects as exists for sure.
    let mut candidates = Vec::new();
    if let Ok(info) = crate::wiring::conninfo(pg) {
        candidates.push(info.user);
    }
    candidates.push("postgres".to_owned());
    if let Ok(Some(u)) = nix::unistd::User::from_uid(nix::unistd::geteuid()) {
        candidates.push(u.name);
    }
    let mut last_error = String::new();
    let mut found = None;
    for user in &candidates {
        let out = run_tool(
            tokio::process::Command::new(bin.tool("psql"))
                .arg("-X")
                .args(["-h", &sock.to_string_lossy(), "-p", "5432", "-U", user])
                .args(["-d", "template1", "-At"])
                .args(["-c", "SELECT rolname FROM pg_roles WHERE oid = 10"])
                .args(["-c", "SHOW data_checksums"])
                .args([
                    "-c",
                    "SELECT count(*) FROM pg_class WHERE relkind IN ('r', 'i', 'm', 't')",
                ]),
            owner,
            Duration::from_secs(120),
        )
        .await?;
        if out.status.success() {
            found = Some(String::from_utf8_lossy(&out.stdout).to_string());
            break;
        }
        last_error = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    }
    let text = found.ok_or_else(|| {
        format!("cannot connect to the restored cluster to check it: {last_error}")
    })?;
    let mut lines = text.lines();
    let superuser = lines.next().unwrap_or("postgres").trim().to_owned();
    let checksums = lines.next().is_some_and(|l| l.trim() == "on");
    let out = run_tool(
        tokio::process::Command::new(bin.tool("pg_amcheck"))
            .args([
                "-h",
                &sock.to_string_lossy(),
                "-p",
                "5432",
                "-U",
                &superuser,
            ])
            .args(["--maintenance-db", "template1"])
            .args(["--all", "--install-missing", "--progress"]),
        owner,
        AMCHECK_TIMEOUT,
    )
    .await?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    // --progress redraws one line with \r; its last state is the total.
    let progress = stderr
        .rsplit(['\r', '\n'])
        .map(str::trim)
        .find(|l| l.contains("relations"))
        .unwrap_or("")
        .to_owned();
    if !out.status.success() || !stdout.is_empty() {
        let mut detail: String = stdout.lines().take(20).collect::<Vec<_>>().join("\n");
        if detail.is_empty() {
            detail = stderr.lines().rev().take(10).collect::<Vec<_>>().join("\n");
        }
        return Err(format!(
            "pg_amcheck found corruption in the restored cluster ({}):\n{detail}\nThe backup \
             or its WAL restores to a damaged database: run `pitr verify` and `pitr repair`, \
             then take a new base backup; check the source server's storage too",
            out.status
        ));
    }
    report.checks.push(format!(
        "pg_amcheck --all --install-missing: ok ({})",
        if progress.is_empty() {
            "no progress reported".to_owned()
        } else {
            progress
        }
    ));
    Ok(checksums)
}
