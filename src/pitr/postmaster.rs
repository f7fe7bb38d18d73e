//! A PostgreSQL server pitr started on restored data (checked recovery, a
//! test restore's checks). When the work around it is abandoned — the user
//! interrupts `pitr restore`, the sidecar shuts down in the middle of a test
//! restore — the server is stopped before the directory under it is
//! removed, instead of being left running as an orphan.

use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a drop waits for an immediate shutdown before SIGKILL.
const IMMEDIATE_SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// A running postmaster, stopped (immediate shutdown) on drop unless it
/// has already exited.
#[derive(Debug)]
pub(crate) struct Postmaster(tokio::process::Child);

impl Postmaster {
    /// Takes charge of a spawned postmaster.
    pub(crate) fn new(child: tokio::process::Child) -> Postmaster {
        Postmaster(child)
    }

    /// Sends `signal` to the postmaster, if it still runs.
    pub(crate) fn signal(&self, signal: Signal) {
        if let Some(pid) = self.0.id() {
            let _ = kill(Pid::from_raw(pid as i32), signal);
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
