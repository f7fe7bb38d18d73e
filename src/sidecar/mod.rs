//! `pitr run`: every part of the sidecar started, supervised and stopped.
//!
//! Per `[[postgres]]` entry a WAL stream and a base-backup schedule, per
//! `[[sqlite]]` entry a watcher, plus destination probes, the health
//! evaluation (which feeds `/health`, `/metrics` and the alerts) and the HTTP
//! endpoint. A part that fails is restarted with exponential backoff and
//! jitter and shows as failing in `/health` meanwhile; it never takes the
//! others down. On shutdown every part is told to stop, streams store and
//! acknowledge what they received, and whatever has not stopped within
//! [`SHUTDOWN_GRACE`] is abandoned: nothing is acknowledged before it is
//! stored, so an abandoned upload only means the server keeps that WAL in
//! the slot for the next start.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::sync::watch;

use crate::basebackup::schedule::{self, ScheduleOptions, ScheduleStatus};
use crate::config::Config;
use crate::repo::{RepoError, Repository};
use crate::wal::{ConnInfo, Link, Progress, StreamOptions};
use health::server::Endpoint;
use health::{Evaluator, PgSource, Phase, Report, Sources, SqliteSource, TaskCell};

pub mod alert;
mod batch;
pub mod health;
mod scrub;

/// How long stopping may take before what is still running is abandoned.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);
/// How often the health of everything is evaluated (and alerts decided).
const EVALUATE_EVERY: Duration = Duration::from_secs(2);
/// How often each destination is asked for a small object, so one that is
/// down shows even while nothing is written.
const PROBE_EVERY: Duration = Duration::from_secs(60);
/// Restart backoff: first delay and cap.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A part that ran this long before failing starts again from the first
/// delay.
const BACKOFF_RESET: Duration = Duration::from_secs(300);

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// No `[[postgres]]` and no `[[sqlite]]` entry.
    #[error(
        "{0} has no [[postgres]] and no [[sqlite]] entry: nothing to back up. Add one (`pitr init` writes an example; docs/OPERATIONS.md explains each key)"
    )]
    NothingToDo(String),
    /// A conninfo that does not parse.
    #[error("{config}: [[postgres]] {name:?} conninfo: {message}")]
    Conninfo {
        /// The config file.
        config: String,
        /// The entry.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// The repository cannot be opened.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The configuration is incomplete for the repository.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Another `pitr run` holds the state directory.
    #[error(
        "another `pitr run` (pid {pid}) runs on the state directory {state_dir:?}: two sidecars on one state directory would stream, spool and acknowledge over each other. Stop it first, or give this one its own [repository] state_dir"
    )]
    AlreadyRunning {
        /// The state directory.
        state_dir: std::path::PathBuf,
        /// The holder's process id, as it wrote it (`?` if unreadable).
        pid: String,
    },
    /// The state directory's lock file cannot be used.
    #[error(
        "cannot lock {path:?} ([repository] state_dir): {source}; check that the directory exists and pitr may write it"
    )]
    StateLock {
        /// The lock file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The health endpoint cannot listen.
    #[error(
        "cannot listen on {addr} for the health endpoint ([health] listen): {source}. Free the port or choose another address"
    )]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

impl SidecarError {
    /// Whether the operator's configuration is at fault (exit 2).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            SidecarError::NothingToDo(_)
                | SidecarError::Conninfo { .. }
                | SidecarError::Listen { .. }
                | SidecarError::Config(_)
                | SidecarError::AlreadyRunning { .. }
        )
    }
}

/// What a running sidecar exposes to whoever started it (tests, `main`).
#[derive(Clone)]
pub struct Handle {
    /// The address the health endpoint is bound to, if any.
    pub health_addr: Option<SocketAddr>,
    /// The newest health report.
    pub report: watch::Receiver<Option<Arc<Report>>>,
}

/// Runs the sidecar until `shutdown` resolves; `started` receives the
/// [`Handle`] once everything is started. Returns `Ok` after a clean stop,
/// also when parts failed along the way (they were restarted, and shown).
pub async fn run(
    config: Config,
    started: Option<tokio::sync::oneshot::Sender<Handle>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SidecarError> {
    let config = Arc::new(config);
    if config.postgres.is_empty() && config.sqlite.is_empty() {
        return Err(SidecarError::NothingToDo(config.path.display().to_string()));
    }
    let mut streams = Vec::new();
    for pg in &config.postgres {
        let info = ConnInfo::of_entry(pg).map_err(|e| SidecarError::Conninfo {
            config: config.path.display().to_string(),
            name: pg.name.clone(),
            message: e.to_string(),
        })?;
        streams.push((pg.clone(), info));
    }
    // Held until this function returns (the process ends): one sidecar per
    // state directory. Other commands beside it need no such lock: each
    // process spools in its own directory.
    let _run_lock = lock_state_dir(&config.repository.state_dir)?;
    let metrics = install_metrics();
    let fanout = crate::ship::from_config(&config);
    let opts = crate::repo::RepoOptions::from_config(&config)?;
    let repo = Repository::open(fanout, opts).await?;
    // Retention may run elsewhere too (CI, another host): its marks reach
    // this process's writers only through a sync (docs/RETENTION.md).
    repo.refresh_catalog_every(config.retention.gc_grace / 2);
    // Staging starts before any writer does: each chunk stored from now on
    // reaches the batched destinations without a copy of its whole pack.
    let mut batched = Vec::new();
    for b in crate::ship::batched_from_config(&config) {
        let stage = Arc::new(crate::repo::BatchStage::new(
            &b.name,
            &config.repository.state_dir,
            &config.repository.recipients,
            repo.key(),
        )?);
        repo.attach_batch_stage(stage.clone());
        batched.push((b, stage));
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    {
        let repo = repo.clone();
        tasks.spawn(supervise(
            "catalog refresh".to_owned(),
            health::task_cell(),
            stop_rx.clone(),
            move |stop| {
                let repo = repo.clone();
                async move {
                    repo.keep_catalog_fresh(stop).await;
                    Ok::<(), String>(())
                }
            },
        ));
    }
    let mut pg_sources = Vec::new();
    for (pg, info) in streams {
        let (progress_tx, progress_rx) = watch::channel(Progress::default());
        let (link_tx, link_rx) = watch::channel(Link::default());
        let (status_tx, status_rx) = watch::channel(ScheduleStatus::default());
        let stream_cell = health::task_cell();
        let mut opts = StreamOptions::new(&pg.name, info.clone(), &pg.slot);
        opts.link = Some(link_tx);
        {
            let repo = repo.clone();
            let progress_tx = progress_tx.clone();
            tasks.spawn(supervise(
                format!("WAL stream of [[postgres]] {:?}", pg.name),
                stream_cell.clone(),
                stop_rx.clone(),
                move |stop| {
                    let (repo, opts, progress) = (repo.clone(), opts.clone(), progress_tx.clone());
                    async move {
                        crate::wal::stream(repo, opts, progress, stop)
                            .await
                            .map_err(|e| {
                                if e.is_permanent() {
                                    PartError::Permanent(with_causes(&e))
                                } else {
                                    PartError::Retry(with_causes(&e))
                                }
                            })
                    }
                },
            ));
        }
        let schedule_opts = schedule_options(&pg, info);
        let schedule_active = schedule_opts.is_active();
        {
            let repo = repo.clone();
            tasks.spawn(supervise(
                format!("base-backup schedule of [[postgres]] {:?}", pg.name),
                health::task_cell(),
                stop_rx.clone(),
                move |stop| {
                    let (repo, opts, wal, status) = (
                        repo.clone(),
                        schedule_opts.clone(),
                        progress_rx.clone(),
                        status_tx.clone(),
                    );
                    async move {
                        schedule::run(repo, opts, wal, status, stop).await;
                        Ok::<(), String>(())
                    }
                },
            ));
        }
        pg_sources.push(PgSource {
            name: pg.name.clone(),
            progress: progress_tx.subscribe(),
            link: link_rx,
            schedule: status_rx,
            task: stream_cell,
            backup_max_age: health::backup_max_age(&config, &pg),
            schedule_active,
        });
    }
    let mut sqlite_sources = Vec::new();
    for s in &config.sqlite {
        let cell = health::task_cell();
        let stats: Arc<Mutex<Option<Arc<crate::sqlite::Stats>>>> = Arc::default();
        let opts = crate::sqlite::WatchOptions::from_config(s, &config.repository.state_dir);
        let (repo, slot) = (repo.clone(), stats.clone());
        tasks.spawn(supervise(
            format!("SQLite watcher of [[sqlite]] {:?}", s.name),
            cell.clone(),
            stop_rx.clone(),
            move |stop| {
                let (repo, opts, slot) = (repo.clone(), opts.clone(), slot.clone());
                async move {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    tokio::spawn(async move {
                        if let Ok(stats) = rx.await
                            && let Ok(mut s) = slot.lock()
                        {
                            *s = Some(stats);
                        }
                    });
                    crate::sqlite::watch(repo, opts, Some(tx), stop)
                        .await
                        .map_err(|e| with_causes(&e))
                }
            },
        ));
        sqlite_sources.push(SqliteSource {
            name: s.name.clone(),
            task: cell,
            stats,
        });
    }
    tasks.spawn(probe_destinations(repo.clone(), stop_rx.clone()));
    let mut sections: Vec<(&'static str, health::Section)> = Vec::new();
    let mut extra_checks: Vec<Arc<dyn Fn() -> Vec<health::Check> + Send + Sync>> = Vec::new();

    // Batched destinations: outside the acknowledgement path, each on its
    // own interval.
    let mut batch_rx = Vec::new();
    for (b, stage) in batched {
        let (tx, rx) = watch::channel(batch::BatchStatus {
            destination: b.name.clone(),
            every_seconds: b.every.as_secs(),
            ..Default::default()
        });
        let (repo, grace) = (repo.clone(), config.retention.gc_grace);
        tasks.spawn(supervise(
            format!("batches to [[destination]] {:?}", b.name),
            health::task_cell(),
            stop_rx.clone(),
            move |stop| {
                let (repo, b, stage, tx) = (repo.clone(), b.clone(), stage.clone(), tx.clone());
                async move {
                    batch::run(repo, b, stage, grace, tx, stop).await;
                    Ok::<(), String>(())
                }
            },
        ));
        batch_rx.push(rx);
    }
    if !batch_rx.is_empty() {
        let rxs = batch_rx.clone();
        sections.push((
            "batched",
            Arc::new(move || {
                serde_json::to_value(rxs.iter().map(|r| r.borrow().clone()).collect::<Vec<_>>())
                    .unwrap_or_default()
            }),
        ));
        extra_checks.push(Arc::new(move || {
            batch_rx.iter().map(|r| r.borrow().check()).collect()
        }));
    }

    // Retention runs in this process, beside the writers: that is what lets
    // garbage collection see their in-flight work (docs/RETENTION.md).
    let (retention_tx, retention_rx) = watch::channel(crate::retention::RetentionStatus::default());
    {
        let (repo, cfg) = (repo.clone(), (*config).clone());
        tasks.spawn(supervise(
            "retention".to_owned(),
            health::task_cell(),
            stop_rx.clone(),
            move |stop| {
                let (repo, cfg, tx) = (repo.clone(), cfg.clone(), retention_tx.clone());
                async move {
                    crate::retention::run_scheduled(repo, cfg, tx, stop).await;
                    Ok::<(), String>(())
                }
            },
        ));
        let rx = retention_rx.clone();
        sections.push((
            "retention",
            Arc::new(move || serde_json::to_value(&*rx.borrow()).unwrap_or_default()),
        ));
        let rx = retention_rx;
        extra_checks.push(Arc::new(move || {
            let s = rx.borrow();
            let failing = s.last_ok == Some(false);
            vec![health::Check::new(
                "retention".to_owned(),
                failing,
                match (&s.last_error, failing) {
                    (Some(e), true) => format!(
                        "the last retention run failed: {e}. Storage is not cleaned up until it succeeds; `pitr retention --dry-run` shows the plan"
                    ),
                    _ => "retention runs as scheduled".to_owned(),
                },
            )]
        }));
    }

    // The scrub: lists every destination against the catalog, repairs
    // from a verified copy, and reads a rotating window of objects in full
    // (src/repo/scrub.rs). It needs no identity.
    let (scrub_tx, scrub_rx) = watch::channel(scrub::ScrubStatus::default());
    // Not spawned when off: `supervise` would take the part's immediate
    // return for a failure and restart it.
    if config.scrub.schedule.is_some() {
        let (repo, cfg) = (repo.clone(), config.scrub.clone());
        tasks.spawn(supervise(
            "scrub".to_owned(),
            health::task_cell(),
            stop_rx.clone(),
            move |stop| {
                let (repo, cfg, tx) = (repo.clone(), cfg.clone(), scrub_tx.clone());
                async move {
                    scrub::run_scheduled(repo, cfg, tx, stop).await;
                    Ok::<(), String>(())
                }
            },
        ));
    }
    {
        let rx = scrub_rx.clone();
        sections.push((
            "scrub",
            Arc::new(move || serde_json::to_value(&*rx.borrow()).unwrap_or_default()),
        ));
        let rx = scrub_rx;
        extra_checks.push(Arc::new(move || vec![rx.borrow().check()]));
    }

    // Test restores (invariant 6): they need the identity; without it the
    // schedule says so in /health and does nothing.
    let (verify_tx, verify_rx) = watch::channel(crate::verify::VerifyStatus::default());
    {
        let (repo, cfg) = (repo.clone(), (*config).clone());
        tasks.spawn(supervise(
            "test restores".to_owned(),
            health::task_cell(),
            stop_rx.clone(),
            move |stop| {
                let (repo, cfg, tx) = (repo.clone(), cfg.clone(), verify_tx.clone());
                async move {
                    crate::verify::run_scheduled(cfg, repo, tx, stop).await;
                    Ok::<(), String>(())
                }
            },
        ));
        let rx = verify_rx.clone();
        sections.push((
            "verification",
            Arc::new(move || serde_json::to_value(&*rx.borrow()).unwrap_or_default()),
        ));
        let rx = verify_rx;
        extra_checks.push(Arc::new(move || {
            let (failing, summary) = rx.borrow().check();
            vec![health::Check::new(
                "verification".to_owned(),
                failing,
                summary,
            )]
        }));
    }
    let instance = format!(
        "{} ({})",
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "unknown host".to_owned()),
        config.path.display()
    );
    let alerter = crate::sidecar::alert::Alerter::new(&config.alerts, &instance);
    {
        let alerter = alerter.clone();
        sections.push((
            "alert_channels",
            Arc::new(move || serde_json::to_value(alerter.channels()).unwrap_or_default()),
        ));
    }
    let sources = Sources {
        started: Timestamp::now(),
        thresholds: config.health.clone(),
        repo: repo.clone(),
        postgres: pg_sources,
        sqlite: sqlite_sources,
        sections,
        extra_checks,
    };
    let (report_tx, report_rx) = watch::channel(None);
    tasks.spawn(evaluate_forever(
        Evaluator::new(sources),
        alerter.clone(),
        report_tx,
        stop_rx.clone(),
    ));

    let mut health_addr = None;
    if config.health.listen.is_some() && config.health.restore_token.is_some() {
        // The restore API writes only beneath this; a missing root would
        // refuse every request.
        if let Err(e) = std::fs::create_dir_all(&config.health.restore_root) {
            tracing::warn!(restore_root = %config.health.restore_root.display(), error = %e, "cannot create [health] restore_root; API restores are refused until it exists");
        }
    }
    if let Some(addr) = config.health.listen {
        let endpoint = Endpoint {
            report: report_rx.clone(),
            metrics,
            repo: repo.clone(),
            config: config.clone(),
            restores: Arc::default(),
        };
        let mut stop = stop_rx.clone();
        let (bound, server) = health::server::serve(addr, endpoint, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
        .map_err(|source| SidecarError::Listen { addr, source })?;
        tracing::info!(%bound, "health endpoint listening");
        health_addr = Some(bound);
        tasks.spawn(async move {
            let _ = server.await;
        });
    }
    tracing::info!(
        postgres = config.postgres.len(),
        sqlite = config.sqlite.len(),
        "pitr run: started"
    );
    if let Some(tx) = started {
        let _ = tx.send(Handle {
            health_addr,
            report: report_rx,
        });
    }

    shutdown.await;
    tracing::info!("pitr run: stopping");
    let _ = stop_tx.send(true);
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    loop {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                tracing::warn!(
                    remaining = tasks.len(),
                    "parts still running {} s after the stop signal are abandoned; WAL they had not stored stays in the replication slot",
                    SHUTDOWN_GRACE.as_secs()
                );
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                break;
            }
        }
    }
    // Whatever was decided last (a failure seen while stopping) still goes
    // out, briefly.
    alerter.flush(Duration::from_secs(2)).await;
    tracing::info!("pitr run: stopped");
    Ok(())
}

/// The file `pitr run` keeps locked in the state directory, with its pid.
pub const RUN_LOCK: &str = "pitr-run.pid";

/// Locks `state_dir` for this `pitr run`: fails, naming the holder's pid,
/// when another one holds it. The lock lasts as long as the returned file
/// is open (and ends with the process, however it ends).
pub fn lock_state_dir(
    state_dir: &std::path::Path,
) -> Result<nix::fcntl::Flock<std::fs::File>, SidecarError> {
    use std::io::{Read, Seek, Write};
    let path = state_dir.join(RUN_LOCK);
    let fail = |source| SidecarError::StateLock {
        path: path.clone(),
        source,
    };
    use std::os::unix::fs::OpenOptionsExt;
    crate::crashsafe::create_private_dir_all(state_dir).map_err(fail)?;
    // Private like the rest of the state directory (it names a pid only,
    // but no file there is for other users).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(fail)?;
    let mut file = match crate::crashsafe::try_lock(file).map_err(fail)? {
        Ok(held) => held,
        Err(mut busy) => {
            let mut pid = String::new();
            let _ = busy.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(SidecarError::AlreadyRunning {
                state_dir: state_dir.to_owned(),
                pid: if pid.is_empty() {
                    "?".to_owned()
                } else {
                    pid.to_owned()
                },
            });
        }
    };
    file.set_len(0).map_err(fail)?;
    file.rewind().map_err(fail)?;
    writeln!(file, "{}", std::process::id()).map_err(fail)?;
    Ok(file)
}

/// The Prometheus recorder, installed once per process (a second
/// `pitr run` in the same process, as in tests, reuses the first).
fn install_metrics() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            match metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder() {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot install the metrics recorder; /metrics is off");
                    None
                }
            }
        })
        .clone()
}

/// How the schedule of `pg` runs.
fn schedule_options(pg: &crate::config::PostgresConfig, conninfo: ConnInfo) -> ScheduleOptions {
    ScheduleOptions {
        backup: crate::basebackup::BackupOptions {
            database: pg.name.clone(),
            conninfo,
            label: format!("pitr scheduled backup of {}", pg.name),
            checkpoint: pg.checkpoint,
            max_rate_kb: pg.max_rate_kb,
            incremental_max_chain: pg.incremental_max_chain,
            manifest_checksums: pg.manifest_checksums,
        },
        cron: pg.base_backup.clone(),
        wal_bytes: pg.base_backup_wal,
        retry: schedule::RetryPolicy::default(),
        // The stream stores a backup's last segment within seconds; an
        // hour covers a server that is down meanwhile.
        wait_wal: Duration::from_secs(3600),
    }
}

/// How a supervised part failed.
enum PartError {
    /// Another start may succeed: start it again after a backoff.
    Retry(String),
    /// Nothing changes by trying again (an unsupported server, ...): the
    /// part stays failed, on `/health` and alerted, until pitr restarts.
    Permanent(String),
}

impl From<String> for PartError {
    fn from(e: String) -> PartError {
        PartError::Retry(e)
    }
}

/// Runs the part `make` builds until `stop` is set, starting it again
/// with exponential backoff and jitter whenever it fails, panics or ends on
/// its own; a [`PartError::Permanent`] failure leaves it failed (state
/// `failed`), logged once. Its state goes to `cell` for `/health`.
async fn supervise<F, Fut, E>(
    what: String,
    cell: TaskCell,
    stop: watch::Receiver<bool>,
    mut make: F,
) where
    F: FnMut(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<PartError> + Send + 'static,
{
    let set = |state: Phase, error: Option<String>, restart: bool| {
        if let Ok(mut t) = cell.lock() {
            t.state = state;
            t.since = Some(Timestamp::now());
            if error.is_some() {
                t.last_error = error;
            }
            if restart {
                t.restarts += 1;
            }
        }
    };
    let mut delay = BACKOFF_MIN;
    loop {
        if *stop.borrow() {
            set(Phase::Stopped, None, false);
            return;
        }
        set(Phase::Running, None, false);
        let began = Instant::now();
        let mut part_stop = stop.clone();
        let part = make(Box::pin(async move {
            let _ = part_stop.wait_for(|s| *s).await;
        }));
        // Spawned, so that a panic is a failure of this part only.
        let outcome = tokio::spawn(part).await;
        if *stop.borrow() {
            set(Phase::Stopped, None, false);
            return;
        }
        let error = match outcome {
            Ok(Ok(())) => "it ended without an error".to_owned(),
            Ok(Err(e)) => match e.into() {
                PartError::Retry(e) => e,
                PartError::Permanent(e) => {
                    tracing::error!(part = %what, error = %e, "failed; not restarting: this needs a change (see the error), then a restart of pitr");
                    set(Phase::Failed, Some(e), false);
                    let mut stop_wait = stop.clone();
                    let _ = stop_wait.wait_for(|s| *s).await;
                    set(Phase::Stopped, None, false);
                    return;
                }
            },
            Err(e) if e.is_panic() => format!("it panicked: {e}"),
            Err(e) => format!("it was cancelled: {e}"),
        };
        if began.elapsed() >= BACKOFF_RESET {
            delay = BACKOFF_MIN;
        }
        let wait = jitter(delay);
        tracing::error!(part = %what, error = %error, restart_in = ?wait, "failed; restarting");
        set(Phase::Restarting, Some(error), true);
        let mut stop_wait = stop.clone();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop_wait.wait_for(|s| *s) => {}
        }
        delay = (delay * 2).min(BACKOFF_MAX);
    }
}

/// An error with every cause in its chain that its message does not
/// already hold ("a: b: c"): what `/health`, the log and the alerts show of
/// a failed part, so the root cause (a refused connection under a failed
/// read of the catalog, say) is not lost on the way.
pub(crate) fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let t = c.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        cause = c.source();
    }
    text
}

/// 50 % to 100 % of `d`: parts that failed together do not retry together.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

/// Asks every destination for the repository descriptor now and then, so
/// that one that is down shows failing in `/health` even while idle.
async fn probe_destinations(repo: Repository, mut stop: watch::Receiver<bool>) {
    loop {
        for d in repo.fanout().destinations() {
            let d = d.clone();
            // Own tasks: a hung destination must not delay the others'
            // probes; the tracked layer records each answer.
            tokio::spawn(async move {
                let _ = tokio::time::timeout(PROBE_EVERY, d.head("config")).await;
            });
        }
        tokio::select! {
            () = tokio::time::sleep(PROBE_EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Evaluates health every [`EVALUATE_EVERY`], publishing the report and the
/// metrics, and handing every check to the alerts (which act on
/// transitions).
async fn evaluate_forever(
    mut evaluator: Evaluator,
    alerter: crate::sidecar::alert::Alerter,
    report: watch::Sender<Option<Arc<Report>>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let r = evaluator.evaluate(Timestamp::now());
        health::record_metrics(&r);
        alerter.observe(&r.checks);
        for c in &r.problems {
            tracing::debug!(check = %c.id, "{}", c.summary);
        }
        report.send_replace(Some(Arc::new(r)));
        tokio::select! {
            () = tokio::time::sleep(EVALUATE_EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_failed_part_shows_every_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("the catalog cannot be read")]
        struct Outer(#[source] std::io::Error);
        #[derive(Debug, thiserror::Error)]
        #[error("the stream failed: {0}")]
        struct Echoing(#[source] std::io::Error);
        let refused = || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(
            super::with_causes(&Outer(refused())),
            "the catalog cannot be read: refused"
        );
        assert_eq!(
            super::with_causes(&Echoing(refused())),
            "the stream failed: refused"
        );
    }

    use super::*;

    #[test]
    fn jitter_stays_within_half_and_whole() {
        for _ in 0..1000 {
            let j = jitter(Duration::from_secs(10));
            assert!(
                j >= Duration::from_secs(5) && j <= Duration::from_secs(10),
                "{j:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_failing_part_is_restarted_and_shown_until_stopped() {
        let cell = health::task_cell();
        let (stop_tx, stop_rx) = watch::channel(false);
        let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = runs.clone();
        let task = tokio::spawn(supervise(
            "test part".to_owned(),
            cell.clone(),
            stop_rx,
            move |_stop| {
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    if n == 1 {
                        panic!("second run panics");
                    }
                    Err(format!("run {n} failed"))
                }
            },
        ));
        // Two restarts take 0.5–1 s plus 1–2 s of backoff.
        let deadline = Instant::now() + Duration::from_secs(10);
        while runs.load(std::sync::atomic::Ordering::SeqCst) < 3 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(runs.load(std::sync::atomic::Ordering::SeqCst) >= 3);
        let state = cell.lock().map(|t| t.clone()).expect("lock");
        assert!(state.restarts >= 2, "{state:?}");
        assert!(state.last_error.is_some(), "{state:?}");
        stop_tx.send(true).expect("send");
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("stops promptly")
            .expect("no panic escapes");
        assert_eq!(cell.lock().map(|t| t.state).expect("lock"), Phase::Stopped);
    }

    #[tokio::test]
    async fn a_permanent_failure_is_shown_and_not_restarted() {
        let cell = health::task_cell();
        let (stop_tx, stop_rx) = watch::channel(false);
        let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = runs.clone();
        let task = tokio::spawn(supervise(
            "test part".to_owned(),
            cell.clone(),
            stop_rx,
            move |_stop| {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move { Err::<(), _>(PartError::Permanent("PostgreSQL 13 is refused".into())) }
            },
        ));
        let deadline = Instant::now() + Duration::from_secs(10);
        while cell.lock().map(|t| t.state).expect("lock") != Phase::Failed
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Longer than the first backoff (0.5 to 1 s): a retry would have run.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let state = cell.lock().map(|t| t.clone()).expect("lock");
        assert_eq!(state.state, Phase::Failed, "{state:?}");
        assert_eq!(state.restarts, 0, "{state:?}");
        assert_eq!(
            state.last_error.as_deref(),
            Some("PostgreSQL 13 is refused")
        );
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
        stop_tx.send(true).expect("send");
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("stops promptly")
            .expect("no panic escapes");
        assert_eq!(cell.lock().map(|t| t.state).expect("lock"), Phase::Stopped);
    }
}
