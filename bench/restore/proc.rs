//! CPU time of a whole process tree. This process makes itself a child
//! subreaper, so that whatever a measured command leaves behind (PostgreSQL's
//! postmaster and its children, pgBackRest's detached `archive-get` worker)
//! is reparented here instead of to init; once every descendant has been
//! reaped, the growth of `getrusage(RUSAGE_CHILDREN)` is the CPU time of the
//! tree, its own processes and theirs.

use std::time::{Duration, Instant};

use anyhow::Context as _;

/// Makes this process the reaper of its orphaned descendants.
pub fn become_subreaper() -> anyhow::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    anyhow::ensure!(
        rc == 0,
        "prctl(PR_SET_CHILD_SUBREAPER): {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// User + system CPU seconds of every descendant reaped so far.
pub fn children_cpu() -> f64 {
    // SAFETY: getrusage writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    if rc != 0 {
        return f64::NAN;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// Reaps every descendant, waiting up to `within` for those still running;
/// returns the pids of those that outlived it (then killed and reaped).
pub fn reap_all(within: Duration) -> anyhow::Result<Vec<i32>> {
    let deadline = Instant::now() + within;
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a pointer to a local.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            continue;
        }
        if pid < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ECHILD) {
                return Ok(Vec::new());
            }
            return Err(e).context("waitpid");
        }
        // Some still run.
        if Instant::now() >= deadline {
            let left = children();
            for &p in &left {
                // SAFETY: a signal to a child of ours.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            for &p in &left {
                // SAFETY: as above.
                unsafe { libc::waitpid(p, &mut status, 0) };
            }
            return Ok(left);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// This process's live children, from `/proc/*/stat`.
pub fn children() -> Vec<i32> {
    crate::common::children_of(std::process::id())
        .into_iter()
        .filter_map(|p| i32::try_from(p).ok())
        .collect()
}
