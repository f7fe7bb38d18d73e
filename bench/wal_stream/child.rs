//! The pitr child: `pitr::wal::stream` in a process of its own, so that its
//! CPU time and peak RSS are pitr's alone.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use pitr::pg::{ConnInfo, Lsn};
use pitr::repo::{RepoOptions, Repository};
use pitr::ship::{Destination, Fanout, FsDestination};
use pitr::wal::{Progress, StreamOptions, stream};
use serde::{Deserialize, Serialize};

use crate::common::{cpu_secs, vm_hwm_kb};
use crate::{PACK_SIZE, ZSTD_LEVEL};

/// What the streaming child prints on its last line of stdout when its stdin
/// closes and the streamer has stopped.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChildReport {
    /// CPU seconds of the whole child, user + system, all threads.
    pub cpu_secs: f64,
    /// Peak resident set size of the whole child, kB (`VmHWM`).
    pub vm_hwm_kb: u64,
    /// The streamer's last progress.
    pub received: Lsn,
    pub flushed: Lsn,
}

/// Streams from `PITR_BENCH_CONNINFO` through slot `PITR_BENCH_SLOT` into a
/// new repository at `PITR_BENCH_REPO` (fs destination, one recipient,
/// zstd 3) until stdin closes, as the sidecar would: the default tokio
/// runtime and `StreamOptions` defaults.
pub fn child_stream() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .try_init();
    // The sidecar's runtime (`Runtime::new()`) unless PITR_BENCH_THREADS
    // asks for a number of workers (an experiment, reported as such).
    let threads: usize = std::env::var("PITR_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        rt.worker_threads(threads);
    }
    let result = rt
        .enable_all()
        .build()
        .context("tokio runtime")
        .and_then(|rt| rt.block_on(child_stream_async()));
    match result {
        Ok(report) => {
            println!(
                "{}",
                serde_json::to_string(&report).expect("a report serializes")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wal_stream child: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub async fn child_stream_async() -> anyhow::Result<ChildReport> {
    let env = |k: &str| std::env::var(k).with_context(|| format!("the child needs {k}"));
    let repo_dir = PathBuf::from(env("PITR_BENCH_REPO")?);
    let recipient: age::x25519::Recipient = env("PITR_BENCH_RECIPIENT")?
        .parse()
        .map_err(|e| anyhow::anyhow!("PITR_BENCH_RECIPIENT: {e}"))?;
    let conninfo = ConnInfo::parse(&env("PITR_BENCH_CONNINFO")?).context("PITR_BENCH_CONNINFO")?;
    let slot = env("PITR_BENCH_SLOT")?;
    let fanout = Fanout::new(vec![
        Arc::new(FsDestination::new("local", repo_dir.join("store"))) as Arc<dyn Destination>,
    ]);
    let opts = RepoOptions {
        recipients: vec![recipient],
        identities: vec![],
        key_file: None,
        state_dir: repo_dir.join("state"),
        zstd_level: ZSTD_LEVEL,
        pack_size: PACK_SIZE,
    };
    Repository::init(&fanout, &opts)
        .await
        .context("repository init")?;
    let repo = Repository::open(fanout, opts)
        .await
        .context("repository open")?;
    // Stop when the parent closes our stdin (or dies).
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        let _ = stop.send(());
    });
    let (tx, rx) = tokio::sync::watch::channel(Progress::default());
    let mut stream_opts = StreamOptions::new("bench", conninfo, &slot);
    if let Some(ms) = std::env::var("PITR_BENCH_PARTIAL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        stream_opts.partial_interval = Duration::from_millis(ms);
    }
    stream(repo, stream_opts, tx, async {
        let _ = stopped.await;
    })
    .await
    .context("pitr::wal::stream")?;
    let progress = *rx.borrow();
    Ok(ChildReport {
        cpu_secs: cpu_secs(None).context("CPU time in /proc/self/stat")?,
        vm_hwm_kb: vm_hwm_kb(None).context("VmHWM in /proc/self/status")?,
        received: progress.received,
        flushed: progress.flushed,
    })
}
