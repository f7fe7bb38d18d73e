//! The `pitr` binary: one command run to its end, or `pitr run` in the
//! background.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// The `pitr` binary with `args`, its environment cleared of `PITR_*`
/// variables (so no setting of the test's own environment leaks in).
pub fn pitr_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pitr"));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("PITR_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Runs `pitr` with a clean `PITR_*` environment.
pub fn pitr(args: &[&str]) -> Output {
    pitr_command(args).output().expect("run pitr")
}

/// Runs `pitr <args> -c <config>` with a clean `PITR_*` environment.
pub fn pitr_with(config: &Path, args: &[&str]) -> Output {
    pitr_command(args)
        .arg("-c")
        .arg(config)
        .output()
        .expect("run pitr")
}

/// The id `pitr backup` printed (the word after `backup`); fails the test
/// when the command failed.
pub fn backup_id(out: &Output) -> String {
    assert!(out.status.success(), "{}", super::text(out));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "backup")
        .nth(1)
        .expect("the backup id in pitr backup's output")
        .to_owned()
}

/// `pitr run` in the background; stopped with SIGTERM when dropped.
pub struct Sidecar {
    child: Child,
    pub log: PathBuf,
}

impl Sidecar {
    pub fn start(cfg: &Path) -> Sidecar {
        Sidecar::start_with(&["run"], cfg)
    }

    /// `pitr ARGS -c CFG` in the background (`["fleet", "receive"]`).
    pub fn start_with(args: &[&str], cfg: &Path) -> Sidecar {
        let log = cfg.with_file_name(format!(
            "pitr-run-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_nanos()
        ));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pitr"));
        for (k, _) in std::env::vars() {
            if k.starts_with("PITR_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .args(args)
            .arg("-c")
            .arg(cfg)
            .env("PITR_LOG", "pitr=info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .unwrap_or_else(|e| panic!("start pitr {args:?}: {e}"));
        Sidecar { child, log }
    }

    /// The process id of this `pitr run`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has `n` stored captures.
    pub fn wait_captures(&self, n: usize, within: Duration) {
        super::eventually_blocking(format!("{n} stored captures"), within, || {
            let log = self.log_text();
            if log.matches("stored an SQLite capture").count() >= n {
                Ok(())
            } else {
                Err(log)
            }
        })
    }

    /// SIGTERM, then waits; asserts a clean exit.
    pub fn stop(mut self) -> String {
        self.terminate();
        let status = self.child.wait().expect("wait");
        let log = self.log_text();
        assert_eq!(status.code(), Some(0), "pitr run exit:\n{log}");
        log
    }

    fn terminate(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
            let _ = self.child.wait();
        }
    }
}
