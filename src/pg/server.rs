//! Servers pitr starts itself on data it restored: the checked recovery of
//! a restore, the checks of a test restore. Each is isolated — reachable
//! only through a socket in a private directory, with nothing the source's
//! own configuration says about the world around it (archiving, upstream,
//! synchronous standbys) — and is stopped before the directory under it is
//! removed, also when the work around it is abandoned (the user interrupts
//! `pitr restore`, the sidecar shuts down mid test restore), instead of
//! being left running as an orphan.

use std::io::{Read, Seek, SeekFrom};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::PgBin;

/// How long a drop waits for an immediate shutdown before SIGKILL.
const IMMEDIATE_SHUTDOWN_WAIT: Duration = Duration::from_secs(10);
/// What the server logs once it accepts connections (recovery, if any,
/// has ended); its messages are untranslated (`lc_messages=C`).
const READY: &str = "database system is ready to accept connections";

/// A running postmaster, stopped (immediate shutdown) on drop unless it
/// has already exited.
#[derive(Debug)]
pub struct Postmaster(tokio::process::Child);

impl Postmaster {
    /// Takes charge of a spawned postmaster.
    pub fn new(child: tokio::process::Child) -> Postmaster {
        Postmaster(child)
    }

    /// Sends `signal` to the postmaster, if it still runs.
    pub fn signal(&self, signal: Signal) {
        if let Some(pid) = self.0.id() {
            let _ = kill(Pid::from_raw(pid as i32), signal);
        }
    }

    /// Fast shutdown (a clean checkpoint, so the directory starts again
    /// without recovery), waiting at most `within`; past it, the server is
    /// left to the drop's immediate shutdown.
    pub async fn stop_fast(&mut self, within: Duration) -> Result<(), StopError> {
        self.signal(Signal::SIGINT);
        match tokio::time::timeout(within, self.0.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(StopError::Failed(status)),
            Ok(Err(e)) => Err(StopError::Wait(e)),
            Err(_) => Err(StopError::Timeout(within)),
        }
    }
}

impl Deref for Postmaster {
    type Target = tokio::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Postmaster {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Postmaster {
    fn drop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(None)) {
            return;
        }
        // SIGQUIT is PostgreSQL's immediate shutdown: the postmaster stops
        // its children (the startup process, backends) and exits without a
        // checkpoint. A SIGKILL (tokio's kill_on_drop) would leave the
        // children running until they notice. This blocks: a drop happens
        // only when the work is abandoned, and the caller removes the data
        // directory right after, which must not happen under a live server.
        self.signal(Signal::SIGQUIT);
        let deadline = Instant::now() + IMMEDIATE_SHUTDOWN_WAIT;
        while Instant::now() < deadline {
            match self.0.try_wait() {
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                _ => return,
            }
        }
        tracing::warn!("the PostgreSQL server ignored an immediate shutdown; killing it");
        let _ = self.0.start_kill();
    }
}

/// `-c` settings for a server pitr starts on a restored directory:
/// reachable only through `socket_dir`, and isolated from whatever the
/// source's own configuration (`postgresql.auto.conf` travels in the base
/// backup) says about the world around it. A source that is a delayed
/// standby would stall the recovery for its `recovery_min_apply_delay`; a
/// synchronous primary's `synchronous_standby_names` would hang every
/// commit of the checks; its `archive_cleanup_command` and
/// `recovery_end_command` would run against production's archive; its
/// archiving and `primary_conninfo` would write into or follow production.
pub fn isolated_server_settings(socket_dir: &Path) -> Vec<String> {
    vec![
        "listen_addresses=".to_owned(),
        format!("unix_socket_directories={}", socket_dir.display()),
        "port=5432".to_owned(),
        // No TCP: certificates the source names need not exist here.
        "ssl=off".to_owned(),
        "archive_mode=off".to_owned(),
        "primary_conninfo=".to_owned(),
        "primary_slot_name=".to_owned(),
        "recovery_min_apply_delay=0".to_owned(),
        "archive_cleanup_command=".to_owned(),
        "recovery_end_command=".to_owned(),
        "synchronous_standby_names=".to_owned(),
        "logging_collector=off".to_owned(),
        "log_destination=stderr".to_owned(),
        "lc_messages=C".to_owned(),
    ]
}

/// An isolated server to start.
#[derive(Debug, Clone)]
pub struct ServerStart<'a> {
    /// The binaries of the data directory's major.
    pub bin: &'a PgBin,
    /// The data directory.
    pub data: &'a Path,
    /// The private directory of its socket (short: socket paths are
    /// limited to about 100 bytes).
    pub socket_dir: &'a Path,
    /// `-c` settings added to [`isolated_server_settings`].
    pub settings: Vec<String>,
    /// Where its output goes.
    pub log: &'a Path,
    /// `(uid, gid)` it runs as (see [`super::server_owner`]).
    pub owner: Option<(u32, u32)>,
}

/// Why an isolated server did not become ready.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The server log cannot be created.
    #[error("{}: {source}", path.display())]
    Log {
        /// The log.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The program cannot be started.
    #[error("cannot start {}: {source}", path.display())]
    Spawn {
        /// The program.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The server exited before it was ready.
    #[error("the server exited ({status}) before it was ready")]
    Exited {
        /// How it exited.
        status: std::process::ExitStatus,
        /// The last lines of its log.
        log_tail: String,
    },
    /// It was not ready in time; it has been stopped.
    #[error("the server was not ready within {} s", .0.as_secs())]
    Timeout(Duration),
}

/// Why a fast shutdown ([`Postmaster::stop_fast`]) did not end cleanly.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    /// The postmaster exited, but not successfully.
    #[error("the server's shutdown failed ({0})")]
    Failed(std::process::ExitStatus),
    /// Waiting for it failed.
    #[error("waiting for the server to stop: {0}")]
    Wait(#[source] std::io::Error),
    /// It did not exit in time; the drop's immediate shutdown follows.
    #[error("the server did not shut down within {} s", .0.as_secs())]
    Timeout(Duration),
}

/// Starts an isolated server and waits (at most `ready_within`) until it
/// accepts connections; when recovery is configured, that is when recovery
/// has ended and the server has promoted.
pub async fn start_isolated(
    s: ServerStart<'_>,
    ready_within: Duration,
) -> Result<Postmaster, StartError> {
    let log_err = |source| StartError::Log {
        path: s.log.to_owned(),
        source,
    };
    let log = std::fs::File::create(s.log).map_err(log_err)?;
    if let Some((uid, gid)) = s.owner {
        // Readable by the server's user too, for whoever reads it later.
        let _ = std::os::unix::fs::chown(s.log, Some(uid), Some(gid));
    }
    let log2 = log.try_clone().map_err(log_err)?;
    let postgres = s.bin.tool("postgres");
    let mut cmd = tokio::process::Command::new(&postgres);
    cmd.arg("-D").arg(s.data);
    for setting in isolated_server_settings(s.socket_dir)
        .into_iter()
        .chain(s.settings)
    {
        cmd.arg("-c").arg(setting);
    }
    cmd.current_dir(s.data)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .kill_on_drop(true);
    if let Some((uid, gid)) = s.owner {
        cmd.uid(uid).gid(gid);
    }
    let mut server = Postmaster::new(cmd.spawn().map_err(|source| StartError::Spawn {
        path: postgres.clone(),
        source,
    })?);
    let started = Instant::now();
    let mut seen = 0u64;
    let mut text = String::new();
    loop {
        if let Ok(Some(status)) = server.try_wait() {
            read_more(s.log, &mut seen, &mut text);
            let lines: Vec<&str> = text.lines().collect();
            return Err(StartError::Exited {
                status,
                log_tail: lines[lines.len().saturating_sub(10)..].join("\n"),
            });
        }
        read_more(s.log, &mut seen, &mut text);
        if text.contains(READY) {
            return Ok(server);
        }
        if started.elapsed() > ready_within {
            // Dropping it shuts it down (immediate).
            return Err(StartError::Timeout(ready_within));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Appends what `path` gained since `seen` bytes to `text`.
fn read_more(path: &Path, seen: &mut u64, text: &mut String) {
    if let Ok(mut f) = std::fs::File::open(path)
        && f.seek(SeekFrom::Start(*seen)).is_ok()
    {
        let mut more = Vec::new();
        if let Ok(n) = f.read_to_end(&mut more) {
            *seen += n as u64;
            text.push_str(&String::from_utf8_lossy(&more));
        }
    }
}
