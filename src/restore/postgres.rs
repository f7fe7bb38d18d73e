//! Executing a plan: the base backup materialised into an empty directory,
//! recovery settings written, then (by default) PostgreSQL's recovery run on
//! it by pitr — private socket, no TCP listener, as an unprivileged user —
//! and checked: it must stop exactly where the plan says, promote, and shut
//! down cleanly. Only then is the restore reported done (invariant 6). On
//! any failure, what was written is removed: nothing half-restored is left
//! looking like a database.

use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;

use super::plan::Plan;
use super::serve::WalServer;
use super::target::{Target, parse_time, pg_time};
use crate::basebackup::{self, BackupError};
use crate::pg::{self, Lsn, PgBin};
use crate::repo::Repository;
use crate::wal::WalStore;

/// The marker lines around the settings pitr writes into
/// `postgresql.auto.conf`.
const BLOCK_BEGIN: &str = "# BEGIN pitr restore: recovery settings";
const BLOCK_END: &str = "# END pitr restore";

/// How to restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The data directory to create (missing or empty).
    pub target_dir: PathBuf,
    /// Empty a non-empty target directory first.
    pub force: bool,
    /// Run and check recovery (the default); `false` stops after staging.
    pub recover: bool,
    /// The OS user PostgreSQL runs as when pitr runs as root.
    pub os_user: String,
    /// The one directory of PostgreSQL's server binaries to use
    /// (`--pg-bin`); when `None` they are found for the backup's major in
    /// `bin_dirs`, then the usual places.
    pub pg_bin: Option<PathBuf>,
    /// Directories searched first for the backup's major (`[restore]
    /// bin_dirs`).
    pub bin_dirs: Vec<PathBuf>,
    /// The config file, for the `restore_command` left behind by
    /// `--no-recover`.
    pub config_path: PathBuf,
    /// Files fetched at once.
    pub parallel: usize,
    /// Where tablespaces go (`<dir>/<oid>`).
    pub tablespace_dir: Option<PathBuf>,
    /// How long recovery may take before pitr gives up.
    pub recovery_timeout: Duration,
    /// Where a failed recovery's server log is kept.
    pub log_dir: PathBuf,
    /// Where the restore stands, for a progress bar.
    pub progress: Option<tokio::sync::watch::Sender<RestoreProgress>>,
}

/// Where a restore stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreProgress {
    /// Base backup bytes written.
    pub backup_bytes: u64,
    /// WAL files handed to recovery.
    pub wal_files: usize,
    /// Whether recovery is running (the base backup is in place).
    pub recovering: bool,
}

/// Where a checked recovery stopped.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Reached {
    /// The server's own words about where it stopped, if it stopped at a
    /// target.
    pub stopped: Option<String>,
    /// The last transaction replayed, by its commit (or abort) time.
    pub last_transaction: Option<Timestamp>,
    /// Where the last replayed record starts.
    pub redo_done: Option<Lsn>,
    /// The timeline the restored cluster now runs on.
    pub new_timeline: Option<u32>,
    /// WAL files recovery fetched.
    pub wal_files: usize,
}

/// What a restore did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreReport {
    /// The data directory.
    pub target_dir: PathBuf,
    /// Base backup files written.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The checked end of recovery; `None` with `--no-recover`.
    pub reached: Option<Reached>,
    /// The server that ran recovery (`PostgreSQL 17.11 in <dir>`); `None`
    /// with `--no-recover`.
    pub postgres: Option<String>,
}

/// Why a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The target directory has something in it.
    #[error(
        "{0}: the target directory is not empty; restore into an empty or missing directory, \
         or pass --force to empty it first"
    )]
    TargetNotEmpty(PathBuf),
    /// Materialising the base backup failed.
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// No usable server binaries of the backup's major.
    #[error(
        "recovery cannot run: {0}; or point --pg-bin at their directory, or restore with \
         --no-recover and start recovery yourself"
    )]
    NoPostgres(crate::pg::BinError),
    /// The OS user for PostgreSQL does not exist.
    #[error("{0}")]
    NoOsUser(crate::pg::NoOsUser),
    /// Recovery failed or stopped somewhere else than planned.
    #[error(
        "recovery of the restored directory failed: {why}. The restored files were removed; \
         the server log is kept at {log}. Last lines:\n{tail}"
    )]
    Recovery {
        /// What went wrong.
        why: String,
        /// The kept server log.
        log: PathBuf,
        /// Its last lines.
        tail: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RestoreError + '_ {
    move |source| RestoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Restores `plan` into `opts.target_dir`.
pub async fn restore(
    repo: &Repository,
    plan: &Plan,
    opts: &RestoreOptions,
) -> Result<RestoreReport, RestoreError> {
    let target = &opts.target_dir;
    let created = prepare_target(target, opts.force)?;
    // Declared before the work: when the future is dropped half-way (an
    // interrupted `pitr restore`, a sidecar shutting down), the work's
    // server is stopped first, then this removes what was written.
    let mut written = Written {
        target,
        created,
        opts,
        keep: false,
    };
    let result = restore_into(repo, plan, opts).await;
    written.keep = result.is_ok();
    result
}

/// What a restore has written, removed on drop unless `keep`.
struct Written<'a> {
    target: &'a Path,
    created: bool,
    opts: &'a RestoreOptions,
    keep: bool,
}

impl Drop for Written<'_> {
    fn drop(&mut self) {
        if !self.keep {
            discard(self.target, self.created, self.opts);
        }
    }
}

/// Checks the target is missing or empty (emptying it with `force`);
/// returns whether it did not exist.
fn prepare_target(target: &Path, force: bool) -> Result<bool, RestoreError> {
    match std::fs::read_dir(target) {
        Ok(entries) => {
            let entries: Vec<_> = entries.collect::<Result<_, _>>().map_err(io(target))?;
            if entries.is_empty() {
                return Ok(false);
            }
            if !force {
                return Err(RestoreError::TargetNotEmpty(target.to_owned()));
            }
            for e in entries {
                let p = e.path();
                let r = match e.file_type() {
                    Ok(t) if t.is_dir() => std::fs::remove_dir_all(&p),
                    _ => std::fs::remove_file(&p),
                };
                r.map_err(io(&p))?;
            }
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            Err(RestoreError::TargetNotEmpty(target.to_owned()))
        }
        Err(e) => Err(io(target)(e)),
    }
}

/// Removes what a failed restore wrote.
fn discard(target: &Path, created: bool, opts: &RestoreOptions) {
    if let Some(ts) = &opts.tablespace_dir
        && let Ok(entries) = std::fs::read_dir(target.join("pg_tblspc"))
    {
        for e in entries.flatten() {
            let _ = std::fs::remove_dir_all(ts.join(e.file_name()));
        }
    }
    if created {
        let _ = std::fs::remove_dir_all(target);
    } else if let Ok(entries) = std::fs::read_dir(target) {
        for e in entries.flatten() {
            let p = e.path();
            let _ = if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

async fn restore_into(
    repo: &Repository,
    plan: &Plan,
    opts: &RestoreOptions,
) -> Result<RestoreReport, RestoreError> {
    let target = &opts.target_dir;
    // Everything that can be refused is checked before the download.
    let owner = pg::server_owner(&opts.os_user, "--os-user").map_err(RestoreError::NoOsUser)?;
    // The catalog's server version, checked before the download; the
    // restored PG_VERSION decides below.
    let mut bin = match (opts.recover, pg::major_of(&plan.backup.server_version)) {
        (true, Some(major)) => Some(find_postgres(opts, major)?),
        _ => None,
    };
    // Bytes written, forwarded into the restore's own progress.
    let (bytes_tx, forward) = match &opts.progress {
        Some(p) => {
            let (tx, mut rx) = tokio::sync::watch::channel(0u64);
            let p = p.clone();
            let forward = tokio::spawn(async move {
                while rx.changed().await.is_ok() {
                    let done = *rx.borrow_and_update();
                    p.send_modify(|s| s.backup_bytes = done);
                }
            });
            (Some(tx), Some(forward))
        }
        None => (None, None),
    };
    let summary = basebackup::restore(
        repo,
        &plan.database,
        &plan.backup.id,
        target,
        &basebackup::RestoreOptions {
            tablespace_dir: opts.tablespace_dir.clone(),
            parallel: opts.parallel.max(1),
            progress: bytes_tx,
        },
    )
    .await;
    if let Some(f) = forward {
        f.abort();
    }
    let summary = summary?;
    // A standby's signal file would make the restored cluster a standby.
    for f in ["standby.signal", "recovery.signal", "postmaster.pid"] {
        match std::fs::remove_file(target.join(f)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&target.join(f))(e)),
        }
    }
    if opts.recover {
        let major = pg::data_dir_major(target).map_err(RestoreError::NoPostgres)?;
        if bin.as_ref().is_none_or(|b| b.major() != major) {
            bin = Some(find_postgres(opts, major)?);
        }
    }
    let mut report = RestoreReport {
        target_dir: target.clone(),
        files: summary.files,
        bytes: summary.bytes,
        reached: None,
        postgres: bin
            .as_ref()
            .map(|b| format!("PostgreSQL {} in {}", b.version(), b.dir().display())),
    };
    let Some(bin) = bin else {
        let exe = std::env::current_exe().map_err(io(Path::new("/proc/self/exe")))?;
        let config = std::path::absolute(&opts.config_path).map_err(io(&opts.config_path))?;
        let command = format!(
            "{} wal-fetch -c {} --postgres {} %f %p",
            command_arg(&exe.to_string_lossy()),
            command_arg(&config.to_string_lossy()),
            command_arg(&plan.database)
        );
        write_recovery(target, plan, &command, owner)?;
        if let Some((uid, gid)) = owner {
            chown_tree(target, uid, gid)?;
            chown_tablespaces(target, opts.tablespace_dir.as_deref(), uid, gid)?;
        }
        return Ok(report);
    };
    report.reached = Some(recover(repo, plan, opts, &bin, owner).await?);
    Ok(report)
}

/// The server binaries of `major`: `--pg-bin` alone when given, else
/// `[restore] bin_dirs` and the usual places.
fn find_postgres(opts: &RestoreOptions, major: u32) -> Result<PgBin, RestoreError> {
    match &opts.pg_bin {
        Some(dir) => pg::find_in(dir, "--pg-bin", major, &["postgres"]),
        None => pg::find(major, &opts.bin_dirs, &["postgres"]),
    }
    .map_err(RestoreError::NoPostgres)
}

/// Quotes for `sh`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Quotes a PostgreSQL config string: `'` doubled, backslashes and line
/// breaks escaped (the config file parser reads `\\`, `\n` and `\r` in
/// quoted values), so that no value, such as a restore point's name, can
/// end its line and start another setting.
fn conf_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A path or name for `restore_command`, where PostgreSQL replaces `%f`,
/// `%p`, `%r` and `%%`: every `%` doubled, shell-quoted.
fn command_arg(s: &str) -> String {
    shell_quote(&s.replace('%', "%%"))
}

/// Appends pitr's recovery settings to `postgresql.auto.conf` and creates
/// `recovery.signal`.
fn write_recovery(
    dir: &Path,
    plan: &Plan,
    restore_command: &str,
    owner: Option<(u32, u32)>,
) -> Result<(), RestoreError> {
    let mut block = format!(
        "\n{BLOCK_BEGIN} of [[postgres]] {:?} to {}\n",
        plan.database,
        plan.target.describe()
    );
    let mut set = |k: &str, v: &str| block.push_str(&format!("{k} = {}\n", conf_quote(v)));
    set("restore_command", restore_command);
    match &plan.target {
        Target::Time(t) => {
            set("recovery_target_time", &pg_time(*t));
            set("recovery_target_inclusive", "on");
            set("recovery_target_action", "promote");
        }
        Target::Lsn(l) => {
            set("recovery_target_lsn", &l.to_string());
            set("recovery_target_inclusive", "on");
            set("recovery_target_action", "promote");
        }
        Target::Name(n) => {
            set("recovery_target_name", n);
            set("recovery_target_action", "promote");
        }
        Target::Latest => {}
    }
    set("recovery_target_timeline", &plan.timeline.to_string());
    block.push_str(BLOCK_END);
    block.push('\n');
    // The directory may already belong to the server's user: no link it
    // holds is followed.
    let beneath = crate::beneath::Beneath::open(dir).map_err(io(dir))?;
    let auto = dir.join("postgresql.auto.conf");
    let text = beneath
        .read("postgresql.auto.conf")
        .map_err(io(&auto))?
        .unwrap_or_default();
    let mut text = strip_block(&String::from_utf8_lossy(&text));
    text.push_str(&block);
    beneath
        .replace_file("postgresql.auto.conf", text.as_bytes(), 0o600, owner)
        .map_err(io(&auto))?;
    let signal = dir.join("recovery.signal");
    beneath
        .replace_file("recovery.signal", b"", 0o600, owner)
        .map_err(io(&signal))
}

/// `text` without pitr's block.
fn strip_block(text: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with(BLOCK_BEGIN) {
            inside = true;
            continue;
        }
        if inside {
            if line.starts_with(BLOCK_END) {
                inside = false;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Gives the restored directory to the server's user without following
/// any link in it (a link the listing or the user put there changes owner
/// itself, never its target).
fn chown_tree(path: &Path, uid: u32, gid: u32) -> Result<(), RestoreError> {
    crate::beneath::chown_tree(path, uid, gid).map_err(io(path))
}

/// Gives the tablespace directories this restore created (`<tablespace
/// dir>/<oid>` for each `pg_tblspc/<oid>` link) to the server's user: by
/// the name pitr chose, never by where a link points.
fn chown_tablespaces(
    dir: &Path,
    tablespace_dir: Option<&Path>,
    uid: u32,
    gid: u32,
) -> Result<(), RestoreError> {
    let Some(ts) = tablespace_dir else {
        return Ok(());
    };
    let links = dir.join("pg_tblspc");
    let Ok(entries) = std::fs::read_dir(&links) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(oid) = name.to_str().filter(|n| n.parse::<u32>().is_ok()) else {
            continue;
        };
        let real = ts.join(oid);
        if real.is_dir() {
            chown_tree(&real, uid, gid)?;
        }
    }
    Ok(())
}

/// Whether `user` can reach and run `exe` (every directory above it
/// searchable by others, the file executable by others): else a copy is
/// made where it can.
fn others_can_run(exe: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let ok = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false)
    };
    ok(exe) && exe.ancestors().skip(1).all(ok)
}

/// Runs recovery on the staged directory and checks where it stopped.
async fn recover(
    repo: &Repository,
    plan: &Plan,
    opts: &RestoreOptions,
    bin: &PgBin,
    owner: Option<(u32, u32)>,
) -> Result<Reached, RestoreError> {
    use std::os::unix::fs::PermissionsExt;
    let target = &opts.target_dir;
    // A directory only the server's user (and root) can enter: the server's
    // socket and ours live there, so nobody else can connect to either.
    let private = tempfile::Builder::new()
        .prefix("pitr-restore-")
        .tempdir()
        .map_err(io(&std::env::temp_dir()))?;
    let private_path = private.path().to_owned();
    // Plaintext WAL read ahead: beside the target, as private as it.
    let spool_parent = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let spool = tempfile::Builder::new()
        .prefix(".pitr-wal-spool-")
        .tempdir_in(spool_parent)
        .map_err(io(spool_parent))?;
    let exe = std::env::current_exe().map_err(io(Path::new("/proc/self/exe")))?;
    let exe = if owner.is_some() && !others_can_run(&exe) {
        let copy = private_path.join("pitr");
        // From the running image, not its path: an upgrade that replaced
        // the file since this process started leaves that path empty (or a
        // different build), while /proc/self/exe still reads this one.
        let running = Path::new("/proc/self/exe");
        std::fs::copy(running, &copy).map_err(io(running))?;
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))
            .map_err(io(&copy))?;
        copy
    } else {
        exe
    };
    let socket = private_path.join("wal.sock");
    let command = format!(
        "{} restore-fetch {} %f %p",
        command_arg(&exe.to_string_lossy()),
        command_arg(&socket.to_string_lossy())
    );
    write_recovery(target, plan, &command, owner)?;
    if let Some((uid, gid)) = owner {
        chown_tree(target, uid, gid)?;
        chown_tablespaces(target, opts.tablespace_dir.as_deref(), uid, gid)?;
        std::os::unix::fs::chown(&private_path, Some(uid), Some(gid)).map_err(io(&private_path))?;
    }
    std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o700)).map_err(io(target))?;

    let server = WalServer::new(
        WalStore::new(repo.clone(), &plan.database),
        plan,
        spool.path(),
        target,
        owner,
        opts.parallel.max(2),
        opts.progress.clone(),
    )
    .map_err(io(target))?;
    if let Some(p) = &opts.progress {
        p.send_modify(|s| s.recovering = true);
    }
    let listener = tokio::net::UnixListener::bind(&socket).map_err(io(&socket))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&socket, Some(uid), Some(gid)).map_err(io(&socket))?;
    }
    // A set, not a bare handle: dropped with this future, it stops serving.
    let mut serving = tokio::task::JoinSet::new();
    serving.spawn(server.clone().run(listener));

    let log_path = private_path.join("postgres.log");
    let outcome = run_server(bin, target, &private_path, &log_path, owner, opts).await;
    serving.abort_all();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let fail = |why: String| {
        let kept = keep_log(&log, opts);
        RestoreError::Recovery {
            why,
            log: kept,
            tail: tail(&log, 15),
        }
    };
    // What the WAL server could not serve says more than the server's
    // "could not restore file".
    let outcome = match (outcome, server.first_error()) {
        (Err(why), Some(served)) => Err(format!("{why}; serving WAL failed: {served}")),
        (o, _) => o,
    };
    outcome.map_err(fail)?;
    let mut reached = parse_log(&log);
    reached.wal_files = server.served().len();
    check_reached(plan, &reached).map_err(fail)?;
    // The directory starts on its own now: pitr's settings go.
    // The server ran as its user, who owns the directory now: read and
    // replace without following a link planted there.
    let auto = target.join("postgresql.auto.conf");
    let beneath = crate::beneath::Beneath::open(target).map_err(io(target))?;
    let text = beneath
        .read("postgresql.auto.conf")
        .map_err(io(&auto))?
        .unwrap_or_default();
    beneath
        .replace_file(
            "postgresql.auto.conf",
            strip_block(&String::from_utf8_lossy(&text)).as_bytes(),
            0o600,
            owner,
        )
        .map_err(io(&auto))?;
    Ok(reached)
}

fn keep_log(log: &str, opts: &RestoreOptions) -> PathBuf {
    let name = format!(
        "restore-{}.log",
        Timestamp::now().strftime("%Y%m%dT%H%M%SZ")
    );
    let path = opts.log_dir.join(name);
    let _ = crate::crashsafe::create_private_dir_all(&opts.log_dir);
    // A server log names users, databases and paths: pitr's user only.
    let written = crate::crashsafe::create_private_file(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, log.as_bytes()));
    match written {
        Ok(()) => path,
        Err(_) => PathBuf::from("(not kept: the log directory is not writable)"),
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Starts PostgreSQL on the restored directory, waits until recovery has
/// promoted it, and shuts it down cleanly.
async fn run_server(
    bin: &PgBin,
    target: &Path,
    private: &Path,
    log_path: &Path,
    owner: Option<(u32, u32)>,
    opts: &RestoreOptions,
) -> Result<(), String> {
    let start = pg::ServerStart {
        bin,
        data: target,
        socket_dir: private,
        // What pitr reads back from the log: untranslated, in UTC.
        settings: vec![
            "timezone=UTC".to_owned(),
            "log_timezone=UTC".to_owned(),
            "log_line_prefix=".to_owned(),
        ],
        log: log_path,
        owner,
    };
    let mut server = pg::start_isolated(start, opts.recovery_timeout)
        .await
        .map_err(|e| match e {
            pg::StartError::Exited { status, .. } => {
                format!("the server exited ({status}) before recovery reached the target")
            }
            pg::StartError::Timeout(t) => {
                format!("recovery did not finish within {} s", t.as_secs())
            }
            e => e.to_string(),
        })?;
    // Fast shutdown: a clean checkpoint, so the directory starts without
    // recovery and without pitr.
    server
        .stop_fast(Duration::from_secs(300))
        .await
        .map_err(|e| e.to_string())
}

/// What the server's log says about the end of recovery.
fn parse_log(log: &str) -> Reached {
    let mut r = Reached {
        stopped: None,
        last_transaction: None,
        redo_done: None,
        new_timeline: None,
        wal_files: 0,
    };
    for line in log.lines() {
        let line = line.trim();
        let msg = line.strip_prefix("LOG:").map_or(line, str::trim);
        if let Some(rest) = msg.strip_prefix("recovery stopping ") {
            r.stopped = Some(rest.to_owned());
        } else if let Some(t) = msg.strip_prefix("last completed transaction was at log time ") {
            r.last_transaction = parse_time(t).ok();
        } else if let Some(rest) = msg.strip_prefix("redo done at ") {
            r.redo_done = rest.split_whitespace().next().and_then(|l| l.parse().ok());
        } else if let Some(t) = msg.strip_prefix("selected new timeline ID: ") {
            r.new_timeline = t.trim().parse().ok();
        }
    }
    r
}

/// The time at the end of a "recovery stopping ..., time T" message.
fn stop_time(stopped: &str) -> Option<Timestamp> {
    stopped
        .rsplit_once(", time ")
        .and_then(|(_, t)| parse_time(t).ok())
}

/// Checks that recovery stopped where the plan says it must.
fn check_reached(plan: &Plan, r: &Reached) -> Result<(), String> {
    let redo = r
        .redo_done
        .ok_or("the server log does not say where redo ended")?;
    if redo < plan.backup.end_lsn {
        return Err(format!(
            "redo ended at {redo}, before the backup's consistent point {}",
            plan.backup.end_lsn
        ));
    }
    if redo > plan.stop.end {
        return Err(format!(
            "redo ended at {redo}, past the WAL the plan holds ({})",
            plan.stop.end
        ));
    }
    match &plan.target {
        Target::Time(t) => {
            let stopped = r.stopped.as_deref().ok_or(
                "recovery ended without stopping at the target time: the WAL ran out first",
            )?;
            let at = stop_time(stopped).ok_or_else(|| format!("unexpected stop: {stopped}"))?;
            if !(stopped.starts_with("before commit") || stopped.starts_with("before abort"))
                || at <= *t
            {
                return Err(format!(
                    "recovery stopped {stopped}, which is not the first transaction after {}",
                    pg_time(*t)
                ));
            }
            if let Some(last) = r.last_transaction
                && last > *t
            {
                return Err(format!(
                    "the last replayed transaction ended at {}, after the target {}",
                    pg_time(last),
                    pg_time(*t)
                ));
            }
        }
        Target::Lsn(l) => {
            let stopped = r
                .stopped
                .as_deref()
                .ok_or("recovery ended without reaching the target position")?;
            // "after WAL location (LSN) "0/3000060"": the first record at
            // or after the target, within what the plan holds.
            let at: Option<Lsn> = stopped.split('"').nth(1).and_then(|x| x.parse().ok());
            if !stopped.starts_with("after WAL location") || at.is_none_or(|a| a < *l) {
                return Err(format!("recovery stopped {stopped}, not at {l}"));
            }
        }
        Target::Name(n) => {
            let stopped = r
                .stopped
                .as_deref()
                .ok_or("recovery ended without reaching the restore point")?;
            if !stopped.starts_with(&format!("at restore point \"{n}\"")) {
                return Err(format!("recovery stopped {stopped}, not at {n:?}"));
            }
        }
        Target::Latest => {
            if let Some(stopped) = &r.stopped {
                return Err(format!(
                    "recovery stopped {stopped} instead of replaying all stored WAL"
                ));
            }
            match plan.stop.last_record {
                Some(last) if redo != last => {
                    return Err(format!(
                        "redo ended at {redo}, but the last record stored starts at {last}"
                    ));
                }
                None if redo < plan.stop.start => {
                    return Err(format!(
                        "redo ended at {redo}, before the last stored WAL file {}",
                        plan.stop.file
                    ));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
LOG:  starting archive recovery
LOG:  restored log file \"000000010000000000000003\" from archive
LOG:  consistent recovery state reached at 0/3000100
LOG:  recovery stopping before commit of transaction 745, time 2026-11-25 02:50:10.4321+00
LOG:  pausing at the end of recovery
LOG:  redo done at 0/3001F28 system usage: CPU: user: 0.00 s, system: 0.00 s, elapsed: 0.10 s
LOG:  last completed transaction was at log time 2026-11-25 02:50:10.31+00
LOG:  selected new timeline ID: 2
LOG:  archive recovery complete
LOG:  database system is ready to accept connections
";

    #[test]
    fn the_log_says_where_recovery_stopped() {
        let r = parse_log(LOG);
        assert_eq!(
            r.stopped.as_deref(),
            Some("before commit of transaction 745, time 2026-11-25 02:50:10.4321+00")
        );
        assert_eq!(
            r.last_transaction,
            Some("2026-11-25T02:50:10.31Z".parse().expect("ts"))
        );
        assert_eq!(r.redo_done, Some(Lsn(0x3001F28)));
        assert_eq!(r.new_timeline, Some(2));
        assert_eq!(
            stop_time(r.stopped.as_deref().expect("stopped")),
            Some("2026-11-25T02:50:10.4321Z".parse().expect("ts"))
        );
    }

    #[test]
    fn settings_are_quoted_for_postgres_and_the_shell() {
        assert_eq!(conf_quote("it's"), "'it''s'");
        assert_eq!(shell_quote("/a b/it's"), r"'/a b/it'\''s'");
    }

    #[test]
    fn a_value_cannot_start_another_setting() {
        let name = "x'\nrestore_command = 'touch /tmp/owned' # \\";
        let quoted = conf_quote(name);
        assert!(!quoted.contains('\n') && !quoted.contains('\r'), "{quoted}");
        assert_eq!(
            quoted,
            r"'x''\nrestore_command = ''touch /tmp/owned'' # \\'"
        );
        assert_eq!(conf_quote("a\rb"), r"'a\rb'");
    }

    #[test]
    fn percent_signs_in_restore_command_paths_are_doubled() {
        assert_eq!(command_arg("/srv/100%p/pitr"), "'/srv/100%%p/pitr'");
        assert_eq!(command_arg("/a b/%f"), "'/a b/%%f'");
    }

    #[test]
    fn pitr_block_is_replaced_not_stacked() {
        let text = format!(
            "# Do not edit\nwork_mem = '8MB'\n\n{BLOCK_BEGIN} x\nrestore_command = 'a'\n{BLOCK_END}\n"
        );
        let stripped = strip_block(&text);
        assert_eq!(stripped, "# Do not edit\nwork_mem = '8MB'\n\n");
    }
}
