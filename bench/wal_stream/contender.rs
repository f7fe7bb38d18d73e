//! The contenders: what each is, how it starts and stops, and how much CPU
//! and memory it used.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::child::ChildReport;
use crate::common::{cpu_secs, vm_hwm_kb};
use crate::pgbackrest::{archive_command, archiver_time_file, set_archive_command};
use crate::{Bench, CATCH_UP, INTERRUPTED, pg_args};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contender {
    /// `pitr::wal::stream` into an fs repository.
    Pitr,
    /// `pg_receivewal --synchronous`: fsync and report after every write.
    ReceiveWalSync,
    /// `pg_receivewal`: fsync at segment end, report every 10 s.
    ReceiveWal,
    /// `pg_receivewal --compress=lz4` (PostgreSQL 15 has no zstd for it).
    ReceiveWalLz4,
    /// `pgbackrest archive-push` as `archive_command`, zstd 3.
    PgBackRest,
    /// The same with `repo1-cipher-type=aes-256-cbc`: encrypted, as pitr is.
    PgBackRestAes,
}

impl Contender {
    pub const ALL: [Contender; 6] = [
        Contender::Pitr,
        Contender::ReceiveWalSync,
        Contender::ReceiveWal,
        Contender::ReceiveWalLz4,
        Contender::PgBackRest,
        Contender::PgBackRestAes,
    ];

    /// The name `PITR_BENCH_ONLY` takes.
    pub fn key(self) -> &'static str {
        match self {
            Contender::Pitr => "pitr",
            Contender::ReceiveWalSync => "receivewal-sync",
            Contender::ReceiveWal => "receivewal",
            Contender::ReceiveWalLz4 => "receivewal-lz4",
            Contender::PgBackRest => "pgbackrest",
            Contender::PgBackRestAes => "pgbackrest-aes",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Contender::Pitr => "pitr (zstd 3, age recipient)",
            Contender::ReceiveWalSync => "`pg_receivewal --synchronous`",
            Contender::ReceiveWal => "`pg_receivewal`",
            Contender::ReceiveWalLz4 => "`pg_receivewal --compress=lz4`",
            Contender::PgBackRest => "pgBackRest `archive-push` (zst 3)",
            Contender::PgBackRestAes => "pgBackRest `archive-push` (zst 3, aes-256-cbc)",
        }
    }

    /// The replication slot a streamer uses; the archivers use none.
    pub fn slot(self) -> Option<&'static str> {
        match self {
            Contender::Pitr => Some("pitr"),
            Contender::ReceiveWalSync => Some("recv_sync"),
            Contender::ReceiveWal => Some("recv"),
            Contender::ReceiveWalLz4 => Some("recv_lz4"),
            Contender::PgBackRest | Contender::PgBackRestAes => None,
        }
    }

    pub fn is_archiver(self) -> bool {
        self.slot().is_none()
    }
}

/// A child process that is killed (and reaped) on drop unless it exited.
pub struct Proc {
    pub child: Child,
    pub what: &'static str,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends `signal` (a `kill -s` name) to the process.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()
            .context("run kill")?;
        anyhow::ensure!(status.success(), "kill -s {signal} {}", self.pid());
        Ok(())
    }

    /// Waits (bounded) for the process to exit; kills it after `timeout`.
    pub async fn wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().context("wait")? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                anyhow::bail!("{} did not stop within {timeout:?}; killed", self.what);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A running contender, as far as measuring it goes.
pub enum Running {
    /// A streaming process: CPU and RSS from `/proc/PID`.
    Process {
        proc: Proc,
        /// pitr stops when its stdin closes; pg_receivewal on SIGINT.
        stdin: Option<std::process::ChildStdin>,
        /// The coalescing proxy pitr connects through, in that experiment.
        proxy: Option<crate::proxy::Proxy>,
    },
    /// `archive_command`: one process per segment, each under GNU time
    /// appending to `time_file`.
    Archiver { time_file: PathBuf },
}

pub async fn start_contender(
    bench: &Bench,
    db: &tokio_postgres::Client,
    contender: Contender,
    dir: &Path,
) -> anyhow::Result<Running> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let cluster = &bench.cluster;
    match contender {
        Contender::Pitr => {
            let exe = std::env::current_exe().context("the benchmark's own path")?;
            let proxy = match std::env::var("PITR_BENCH_COALESCE_MS") {
                Ok(ms) => {
                    let ms: u64 = ms
                        .parse()
                        .with_context(|| format!("PITR_BENCH_COALESCE_MS={ms:?}"))?;
                    Some(crate::proxy::start(cluster.port(), Duration::from_millis(ms)).await?)
                }
                Err(_) => None,
            };
            let conninfo = match &proxy {
                Some(p) => cluster.conninfo().replace(
                    &format!("port={}", cluster.port()),
                    &format!("port={}", p.port),
                ),
                None => cluster.conninfo(),
            };
            let mut child = Command::new(exe)
                .env("PITR_BENCH_CHILD", "stream")
                .env("PITR_BENCH_REPO", dir)
                .env("PITR_BENCH_RECIPIENT", &bench.recipient)
                .env("PITR_BENCH_CONNINFO", conninfo)
                .env("PITR_BENCH_SLOT", "pitr")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .context("start the pitr child")?;
            let stdin = child.stdin.take();
            let mut proc = Proc {
                child,
                what: "the pitr child",
            };
            wait_slot_active(db, "pitr", &mut proc).await?;
            Ok(Running::Process { proc, stdin, proxy })
        }
        Contender::ReceiveWalSync | Contender::ReceiveWal | Contender::ReceiveWalLz4 => {
            let slot = contender.slot().expect("a streamer has a slot");
            db.execute(
                "SELECT pg_create_physical_replication_slot($1, true)",
                &[&slot],
            )
            .await
            .with_context(|| format!("create slot {slot}"))?;
            let mut cmd = Command::new(cluster.bin("pg_receivewal"));
            cmd.arg("-D")
                .arg(dir)
                .args(["--slot", slot, "--no-loop"])
                .args(pg_args(cluster));
            match contender {
                Contender::ReceiveWalSync => {
                    cmd.arg("--synchronous");
                }
                Contender::ReceiveWalLz4 => {
                    cmd.arg("--compress=lz4");
                }
                _ => {}
            }
            let child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .context("start pg_receivewal")?;
            let mut proc = Proc {
                child,
                what: "pg_receivewal",
            };
            wait_slot_active(db, slot, &mut proc).await?;
            Ok(Running::Process {
                proc,
                stdin: None,
                proxy: None,
            })
        }
        Contender::PgBackRest | Contender::PgBackRestAes => {
            let time_file = archiver_time_file(bench, contender);
            set_archive_command(db, &archive_command(bench, contender)).await?;
            db.batch_execute("SELECT pg_reload_conf()")
                .await
                .context("reload")?;
            Ok(Running::Archiver { time_file })
        }
    }
}

/// Waits (bounded) until `slot` is in use, failing early when the process
/// that should use it exits.
pub async fn wait_slot_active(
    db: &tokio_postgres::Client,
    slot: &str,
    proc: &mut Proc,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        anyhow::ensure!(!INTERRUPTED.load(Ordering::Relaxed), "interrupted");
        let active = db
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .context("read pg_replication_slots")?
            .is_some_and(|row| row.get::<_, bool>(0));
        if active {
            return Ok(());
        }
        if let Some(status) = proc.exited() {
            anyhow::bail!("{} exited ({status}) before streaming", proc.what);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} did not start streaming from slot {slot} within {CATCH_UP:?}",
            proc.what
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops a streaming process: pitr by closing its stdin (it stores what it
/// received and reports), pg_receivewal by SIGINT. Returns pitr's report.
pub async fn stop_contender(running: &mut Running) -> anyhow::Result<Option<ChildReport>> {
    let Running::Process { proc, stdin, .. } = running else {
        return Ok(None);
    };
    if proc.exited().is_some() {
        return Ok(None);
    }
    if let Some(stdin) = stdin.take() {
        drop(stdin);
        let status = proc.wait(CATCH_UP).await?;
        anyhow::ensure!(status.success(), "the pitr child failed: {status}");
        let mut out = String::new();
        if let Some(mut stdout) = proc.child.stdout.take() {
            stdout
                .read_to_string(&mut out)
                .context("read the pitr child's report")?;
        }
        let last = out
            .lines()
            .last()
            .context("the pitr child printed nothing")?;
        let report = serde_json::from_str(last)
            .with_context(|| format!("the pitr child's report {last:?}"))?;
        return Ok(Some(report));
    }
    proc.signal("INT")?;
    proc.wait(CATCH_UP).await?;
    Ok(None)
}

/// CPU seconds so far and peak RSS (kB): of the streaming process from
/// `/proc`, of every `archive-push` from GNU time's lines.
pub fn usage(running: &Running) -> anyhow::Result<(f64, u64, usize)> {
    match running {
        Running::Process { proc, .. } => {
            let pid = Some(proc.pid());
            let cpu = cpu_secs(pid).with_context(|| format!("/proc/{}/stat", proc.pid()))?;
            let rss = vm_hwm_kb(pid).with_context(|| format!("/proc/{}/status", proc.pid()))?;
            Ok((cpu, rss, 1))
        }
        Running::Archiver { time_file } => {
            let text = std::fs::read_to_string(time_file)
                .with_context(|| format!("read {}", time_file.display()))?;
            let (mut cpu, mut rss, mut n) = (0.0, 0, 0);
            // `-f '%e %M %U %S'`; GNU time adds other lines for failed
            // commands, which have no four numbers.
            for line in text.lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                let nums: Option<(u64, f64, f64)> = (f.len() == 4)
                    .then(|| Some((f[1].parse().ok()?, f[2].parse().ok()?, f[3].parse().ok()?)))
                    .flatten();
                if let Some((kb, user, sys)) = nums {
                    cpu += user + sys;
                    rss = rss.max(kb);
                    n += 1;
                }
            }
            Ok((cpu, rss, n))
        }
    }
}
