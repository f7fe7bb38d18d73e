//! `[[command]]`: a program's standard output as a snapshot.
//!
//! The program runs directly (no shell) in a process group of its own,
//! with only the environment its entry gives it plus a few basics
//! ([`PASSED_ENV`]): pitr's own environment may hold destination
//! credentials that a dump has no business seeing. Its standard output is
//! streamed into the repository as it comes (never held whole, invariant 7
//! in docs/ARCHITECTURE.md); its standard error is drained beside it into
//! a bounded tail ([`STDERR_TAIL`]) for the error message. The snapshot is
//! committed only after the output ended AND the program exited 0; a
//! non-zero exit, a signal or the timeout (which kills the whole group)
//! records nothing.

use std::ffi::CString;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, ChildStdout, Command};

use super::{SnapshotError, SnapshotInfo, SourceKind, store_when};
use crate::config::CommandConfig;
use crate::repo::Repository;

/// Bytes of standard error kept for the error message: its end, where
/// programs say why they failed.
pub const STDERR_TAIL: usize = 4096;

/// Variables of pitr's environment a command inherits; everything else
/// comes from its `env` / `env_file`.
pub const PASSED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

/// Why a command gave no snapshot. Each names the entry and its program
/// (never its arguments or environment, which may hold passwords) and
/// carries the end of its standard error.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The program could not be started.
    #[error(
        "[[command]] {name:?}: cannot start {program:?}: {source}. Check `run`: the program \
         must exist and be executable by the user it runs as (give a full path, or make sure \
         it is on PATH)"
    )]
    Spawn {
        /// The entry.
        name: String,
        /// `run`'s program.
        program: String,
        /// The error.
        source: std::io::Error,
    },
    /// `user` names no OS user.
    #[error(
        "[[command]] {name:?}: user {user:?} does not exist on this host. Create it, or change \
         or remove `user`"
    )]
    NoUser {
        /// The entry.
        name: String,
        /// The user named.
        user: String,
    },
    /// The program exited with a non-zero status.
    #[error(
        "[[command]] {name:?} ({program}) exited with status {code}: no snapshot was \
         recorded. The end of its standard error:\n{stderr}"
    )]
    Exit {
        /// The entry.
        name: String,
        /// `run`'s program.
        program: String,
        /// The exit status.
        code: i32,
        /// The end of its standard error.
        stderr: String,
    },
    /// The program was killed by a signal (not by pitr's timeout).
    #[error(
        "[[command]] {name:?} ({program}) was killed by signal {signal}: no snapshot was \
         recorded (something outside pitr killed it, or it crashed; the OOM killer is a usual \
         suspect). The end of its standard error:\n{stderr}"
    )]
    Signal {
        /// The entry.
        name: String,
        /// `run`'s program.
        program: String,
        /// The signal's name.
        signal: String,
        /// The end of its standard error.
        stderr: String,
    },
    /// The program ran past `timeout`; its process group was killed.
    #[error(
        "[[command]] {name:?} ({program}) ran longer than its timeout of {timeout_secs} s and \
         was killed with its process group: no snapshot was recorded. Raise `timeout` if it \
         needs longer, or find out why it hangs. The end of its standard error:\n{stderr}"
    )]
    Timeout {
        /// The entry.
        name: String,
        /// `run`'s program.
        program: String,
        /// The timeout, in seconds.
        timeout_secs: u64,
        /// The end of its standard error.
        stderr: String,
    },
    /// Waiting for the program failed.
    #[error("[[command]] {name:?} ({program}): waiting for it failed: {source}")]
    Wait {
        /// The entry.
        name: String,
        /// `run`'s program.
        program: String,
        /// The error.
        source: std::io::Error,
    },
}

/// A running command: its child, and what the timeout and the stderr
/// drain share.
struct Running {
    child: Child,
    stderr: tokio::task::JoinHandle<Vec<u8>>,
    timer: tokio::task::JoinHandle<()>,
    timed_out: Arc<AtomicBool>,
    /// The program's process group; `None` if its pid was not known.
    pgid: Option<nix::unistd::Pid>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.timer.abort();
        // Dropped before the program was reaped (pitr stopping mid-run):
        // its whole group goes with it, not only the direct child that
        // `kill_on_drop` kills.
        if let Ok(None) = self.child.try_wait() {
            kill_group(self.pgid);
        }
    }
}

/// Runs `cmd` now and stores its standard output as a snapshot of
/// `[[command]] cmd.name`; records nothing unless it exits 0. When storing
/// fails first (a destination down), the program's output pipe closes, so
/// it ends on its next write (or at its timeout), and is reaped.
pub async fn take(repo: &Repository, cmd: &CommandConfig) -> Result<SnapshotInfo, SnapshotError> {
    let (mut running, stdout) = spawn(cmd, cmd.run.iter().map(String::as_str), true)?;
    let Some(stdout) = stdout else {
        return Err(CommandError::Spawn {
            name: cmd.name.clone(),
            program: program(&cmd.run),
            source: std::io::Error::other("its standard output was not piped"),
        }
        .into());
    };
    let verdict = async {
        let status = running.child.wait().await;
        finish(&mut running, cmd, &program(&cmd.run), status)
            .await
            .map_err(SnapshotError::from)
    };
    store_when(repo, &cmd.name, SourceKind::Command, stdout, verdict).await
}

/// Runs `argv` with `cmd`'s user, environment and timeout, its standard
/// output discarded (what `verify` runs on a restored copy); `Ok` when it
/// exits 0, else the error with its standard error's end.
pub async fn run_check(cmd: &CommandConfig, argv: &[String]) -> Result<(), CommandError> {
    let (mut running, _) = spawn(cmd, argv.iter().map(String::as_str), false)?;
    let status = running.child.wait().await;
    finish(&mut running, cmd, &program(argv), status).await
}

/// The program of `argv`, as messages name it.
fn program<S: AsRef<str>>(argv: &[S]) -> String {
    argv.first()
        .map_or(String::new(), |p| p.as_ref().to_owned())
}

/// SIGKILL to a whole process group.
fn kill_group(pgid: Option<nix::unistd::Pid>) {
    if let Some(pgid) = pgid {
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    }
}

/// Starts `argv` as `cmd` says: no shell, its own process group, its
/// environment, its user; standard output piped (returned), standard error
/// drained into a tail, and a timer that kills the group at the timeout.
fn spawn<'a>(
    cmd: &CommandConfig,
    argv: impl IntoIterator<Item = &'a str>,
    pipe_stdout: bool,
) -> Result<(Running, Option<ChildStdout>), CommandError> {
    let mut argv = argv.into_iter();
    let program = argv.next().unwrap_or_default().to_owned();
    let mut c = Command::new(&program);
    c.args(argv)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(if pipe_stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for k in PASSED_ENV {
        if let Some(v) = std::env::var_os(k) {
            c.env(k, v);
        }
    }
    if let Some(user) = &cmd.user {
        as_user(&mut c, &cmd.name, user)?;
    }
    for (k, v) in &cmd.env {
        c.env(k, v);
    }
    let mut child = c.spawn().map_err(|source| CommandError::Spawn {
        name: cmd.name.clone(),
        program: program.clone(),
        source,
    })?;
    // The child leads its own group (`process_group(0)`), so its pid is the
    // group's id. Never 0: killpg(0) would signal pitr's own group.
    let pgid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .filter(|id| *id > 0)
        .map(nix::unistd::Pid::from_raw);
    let stdout = child.stdout.take();
    let Some(stderr) = child.stderr.take() else {
        return Err(CommandError::Spawn {
            name: cmd.name.clone(),
            program,
            source: std::io::Error::other("its standard error was not piped"),
        });
    };
    let stderr = tokio::spawn(tail(stderr, STDERR_TAIL));
    let timed_out = Arc::new(AtomicBool::new(false));
    let timer = {
        let (timed_out, timeout) = (timed_out.clone(), cmd.timeout);
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            timed_out.store(true, Ordering::SeqCst);
            kill_group(pgid);
        })
    };
    Ok((
        Running {
            child,
            stderr,
            timer,
            timed_out,
            pgid,
        },
        stdout,
    ))
}

/// Makes `c` run as `user` when pitr is root: its uid, its primary group
/// and its supplementary groups, and HOME/USER/LOGNAME to match (a
/// `.pgpass` is looked up in HOME). As another user, nothing: only root
/// can switch, and the entry then runs as pitr's user.
fn as_user(c: &mut Command, name: &str, user: &str) -> Result<(), CommandError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let no_user = || CommandError::NoUser {
        name: name.to_owned(),
        user: user.to_owned(),
    };
    let u = nix::unistd::User::from_name(user)
        .ok()
        .flatten()
        .ok_or_else(no_user)?;
    let cname = CString::new(user).map_err(|_| no_user())?;
    let groups = nix::unistd::getgrouplist(&cname, u.gid).unwrap_or_else(|_| vec![u.gid]);
    let (uid, gid) = (u.uid, u.gid);
    c.env("HOME", &u.dir).env("USER", user).env("LOGNAME", user);
    // SAFETY: the closure runs in the child between fork and exec; it only
    // makes three system calls on values computed before the fork (no
    // allocation, no lock), which is async-signal-safe.
    unsafe {
        c.pre_exec(move || {
            nix::unistd::setgroups(&groups).map_err(std::io::Error::from)?;
            nix::unistd::setgid(gid).map_err(std::io::Error::from)?;
            nix::unistd::setuid(uid).map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    Ok(())
}

/// Values shorter than this are left in a stderr tail: a `1` or `on`
/// replaced everywhere would garble the message and hide nothing.
const REDACT_MIN: usize = 4;

/// `stderr` with every value of the entry's `env` replaced by `[env NAME]`:
/// the tail goes into the log, `/health` and the alerts, and a script that
/// echoes its settings (`set -x`, a connection string in an error) must
/// not carry the password there. Longest values first, so one that
/// contains another is replaced whole.
fn redact(stderr: &str, env: &[(String, String)]) -> String {
    let mut secrets: Vec<&(String, String)> =
        env.iter().filter(|(_, v)| v.len() >= REDACT_MIN).collect();
    secrets.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
    let mut out = stderr.to_owned();
    for (name, value) in secrets {
        out = out.replace(value.as_str(), &format!("[env {name}]"));
    }
    out
}

/// Reads `r` to its end, keeping only its last `max` bytes.
async fn tail(mut r: impl AsyncRead + Unpin, max: usize) -> Vec<u8> {
    let mut kept: std::collections::VecDeque<u8> = std::collections::VecDeque::with_capacity(max);
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend(&buf[..n]);
                let excess = kept.len().saturating_sub(max);
                kept.drain(..excess);
            }
        }
    }
    kept.into()
}

/// The command's verdict once it exited: stops the timer, collects the
/// stderr tail, and turns the status into `Ok` (exit 0) or the error.
async fn finish(
    running: &mut Running,
    cmd: &CommandConfig,
    program: &str,
    status: std::io::Result<ExitStatus>,
) -> Result<(), CommandError> {
    let (name, timeout) = (cmd.name.as_str(), cmd.timeout);
    running.timer.abort();
    // Children it left behind in its group would hold standard error open.
    if status.as_ref().map(|s| !s.success()).unwrap_or(true) {
        kill_group(running.pgid);
    }
    let stderr_bytes = (&mut running.stderr).await.unwrap_or_default();
    let stderr = redact(String::from_utf8_lossy(&stderr_bytes).trim_end(), &cmd.env);
    let status = status.map_err(|source| CommandError::Wait {
        name: name.to_owned(),
        program: program.to_owned(),
        source,
    })?;
    if status.success() {
        return Ok(());
    }
    let (name, program) = (name.to_owned(), program.to_owned());
    if running.timed_out.load(Ordering::SeqCst) {
        return Err(CommandError::Timeout {
            name,
            program,
            timeout_secs: timeout.as_secs(),
            stderr,
        });
    }
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => Err(CommandError::Exit {
            name,
            program,
            code,
            stderr,
        }),
        (None, Some(sig)) => Err(CommandError::Signal {
            name,
            program,
            signal: nix::sys::signal::Signal::try_from(sig)
                .map_or_else(|_| sig.to_string(), |s| s.as_str().to_owned()),
            stderr,
        }),
        (None, None) => Err(CommandError::Exit {
            name,
            program,
            code: -1,
            stderr,
        }),
    }
}
