//! `pitr run`: every part of the sidecar started, supervised and stopped.
//!
//! Per `[[postgres]]` entry a WAL stream and a base-backup schedule, per
//! `[[sqlite]]` entry a watcher, plus destination probes, the health
//! evaluation (which feeds `/health`, `/metrics` and the alerts) and the HTTP
//! endpoint. Each part is one registration in the job registry ([`jobs`]),
//! which supervises it: a part that fails is restarted with exponential
//! backoff and jitter and shows as failing in `/health` meanwhile; it
//! never takes the others down. On shutdown every part is told to stop, streams store and
//! acknowledge what they received, and whatever has not stopped within
//! [`SHUTDOWN_GRACE`] is abandoned: nothing is acknowledged before it is
//! stored, so an abandoned upload only means the server keeps that WAL in
//! the slot for the next start.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::watch;

use crate::basebackup::schedule::{self, ScheduleOptions, ScheduleStatus};
use crate::config::Config;
use crate::pg::ConnInfo;
use crate::repo::{RepoError, Repository};
use crate::wal::{Link, Progress, StreamOptions};
use health::server::Endpoint;
use health::{Check, Evaluator, PgSource, Report, Sources, SqliteSource};
use jobs::{Jobs, PartError, Schedule};

pub mod alert;
mod batch;
pub mod health;
pub mod jobs;
mod scrub;

/// How long stopping may take before what is still running is abandoned.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);
/// How often the health of everything is evaluated (and alerts decided).
const EVALUATE_EVERY: Duration = Duration::from_secs(2);
/// How often each destination is asked for a small object, so one that is
/// down shows even while nothing is written.
const PROBE_EVERY: Duration = Duration::from_secs(60);
/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// No `[[postgres]]`, `[[sqlite]]` or `[[command]]` entry.
    #[error(
        "{0} has no [[postgres]], [[sqlite]] or [[command]] entry: nothing to back up. Add one (`pitr init` writes an example; docs/OPERATIONS.md and docs/SNAPSHOTS.md explain each key)"
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
    /// `[health] tls_cert_file` / `tls_key_file` cannot be served.
    #[error("[health] {key} {source}")]
    Tls {
        /// The key.
        key: String,
        /// What is wrong with the file.
        source: crate::https::TlsError,
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
                | SidecarError::Tls { .. }
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
    if config.postgres.is_empty()
        && config.sqlite.is_empty()
        && crate::snapshot::sources(&config).next().is_none()
    {
        return Err(SidecarError::NothingToDo(config.path.display().to_string()));
    }
    let mut streams = Vec::new();
    for pg in &config.postgres {
        let info = crate::wiring::conninfo(pg).map_err(|e| SidecarError::Conninfo {
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
    let fanout = crate::wiring::fanout(&config);
    let opts = crate::wiring::repo_options(&config)?;
    let repo = Repository::open(fanout, opts).await?;
    // Retention may run elsewhere too (CI, another host): its marks reach
    // this process's writers only through a sync (docs/RETENTION.md).
    repo.refresh_catalog_every(config.retention.gc_grace / 2);
    // Staging starts before any writer does: each chunk stored from now on
    // reaches the batched destinations without a copy of its whole pack.
    let mut batched = Vec::new();
    for b in crate::wiring::batched(&config) {
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
    let mut jobs = Jobs::new(stop_rx.clone());
    {
        let repo = repo.clone();
        jobs.add(
            "catalog-refresh",
            "catalog refresh".to_owned(),
            Schedule::Every(config.retention.gc_grace / 2),
            false,
            move |stop| {
                let repo = repo.clone();
                async move { repo.keep_catalog_fresh(stop).await }
            },
        );
    }
    let mut pg_sources = Vec::new();
    for (pg, info) in streams {
        let (progress_tx, progress_rx) = watch::channel(Progress::default());
        let (link_tx, link_rx) = watch::channel(Link::default());
        let (status_tx, status_rx) = watch::channel(ScheduleStatus::default());
        let mut opts = StreamOptions::new(&pg.name, info.clone(), &pg.slot);
        opts.link = Some(link_tx);
        let stream_cell = {
            let repo = repo.clone();
            let progress_tx = progress_tx.clone();
            jobs.add(
                &format!("postgres/{}/stream", pg.name),
                format!("WAL stream of [[postgres]] {:?}", pg.name),
                Schedule::Continuous,
                true,
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
            )
        };
        let schedule_opts = schedule_options(&pg, info);
        let schedule_active = schedule_opts.is_active();
        {
            let repo = repo.clone();
            jobs.add(
                &format!("postgres/{}/base-backups", pg.name),
                format!("base-backup schedule of [[postgres]] {:?}", pg.name),
                Schedule::of_cron(pg.base_backup.as_ref()),
                false,
                move |stop| {
                    schedule::run(
                        repo.clone(),
                        schedule_opts.clone(),
                        progress_rx.clone(),
                        status_tx.clone(),
                        stop,
                    )
                },
            );
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
        let stats: Arc<Mutex<Option<Arc<crate::sqlite::Stats>>>> = Arc::default();
        let opts = crate::sqlite::WatchOptions::from_config(s, &config.repository.state_dir);
        let (repo, slot) = (repo.clone(), stats.clone());
        let cell = jobs.add(
            &format!("sqlite/{}/watcher", s.name),
            format!("SQLite watcher of [[sqlite]] {:?}", s.name),
            Schedule::Continuous,
            true,
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
        );
        sqlite_sources.push(SqliteSource {
            name: s.name.clone(),
            task: cell,
            stats,
        });
    }
    for source in crate::snapshot::sources(&config) {
        register_snapshot(&mut jobs, &repo, source);
    }
    jobs.background(probe_destinations(repo.clone(), stop_rx.clone()));

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
        jobs.add(
            &format!("batch/{}", b.name),
            format!("batches to [[destination]] {:?}", b.name),
            Schedule::Every(b.every),
            false,
            move |stop| {
                batch::run(
                    repo.clone(),
                    b.clone(),
                    stage.clone(),
                    grace,
                    tx.clone(),
                    stop,
                )
            },
        );
        batch_rx.push(rx);
    }
    if !batch_rx.is_empty() {
        let rxs = batch_rx.clone();
        jobs.section(
            "batched",
            Arc::new(move || {
                serde_json::to_value(rxs.iter().map(|r| r.borrow().clone()).collect::<Vec<_>>())
                    .unwrap_or_default()
            }),
        );
        jobs.check(move || batch_rx.iter().map(|r| r.borrow().check()).collect());
    }

    // Retention runs in this process, beside the writers: that is what lets
    // garbage collection see their in-flight work (docs/RETENTION.md).
    {
        let (repo, cfg) = (repo.clone(), (*config).clone());
        jobs.scheduled(
            "retention",
            config.retention.schedule.as_ref(),
            "retention",
            jobs::judged("retention", crate::retention::RetentionStatus::check),
            move |tx, stop| crate::retention::run_scheduled(repo.clone(), cfg.clone(), tx, stop),
        );
    }
    // The scrub: lists every destination against the catalog, repairs
    // from a verified copy, and reads a rotating window of objects in full
    // (src/repo/scrub.rs). It needs no identity.
    {
        let (repo, cfg) = (repo.clone(), config.scrub.clone());
        jobs.scheduled(
            "scrub",
            config.scrub.schedule.as_ref(),
            "scrub",
            scrub::ScrubStatus::check,
            move |tx, stop| scrub::run_scheduled(repo.clone(), cfg.clone(), tx, stop),
        );
    }
    // Test restores (invariant 6, docs/ARCHITECTURE.md): they need the
    // identity; without it the schedule says so in /health and does
    // nothing.
    {
        let (repo, cfg) = (repo.clone(), (*config).clone());
        jobs.scheduled(
            "test-restores",
            config.verify.schedule.as_ref(),
            "verification",
            jobs::judged("verification", crate::verify::VerifyStatus::check),
            move |tx, stop| crate::verify::run_scheduled(cfg.clone(), repo.clone(), tx, stop),
        );
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
        jobs.section(
            "alert_channels",
            Arc::new(move || serde_json::to_value(alerter.channels()).unwrap_or_default()),
        );
    }
    let (report_tx, report_rx) = watch::channel(None);
    if let Some(fleet) = &config.fleet {
        fleet_publisher(&mut jobs, &repo, &config, fleet, report_rx.clone());
    }
    let (registered, sections, extra_checks) = jobs.for_health();
    let sources = Sources {
        started: Timestamp::now(),
        thresholds: config.health.clone(),
        repo: repo.clone(),
        postgres: pg_sources,
        sqlite: sqlite_sources,
        jobs: registered,
        sections,
        extra_checks,
    };
    jobs.background(evaluate_forever(
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
        if config.health.tls.is_none()
            && config.health.restore_token.is_some()
            && !addr.ip().is_loopback()
        {
            tracing::warn!(%addr, "the restore API listens on plain http beyond loopback: its token crosses the network in clear; set [health] tls_cert_file and tls_key_file, or serve it behind a TLS proxy");
        }
        let tls = match &config.health.tls {
            None => None,
            Some(files) => Some(
                crate::https::acceptor(files).map_err(|e| SidecarError::Tls {
                    key: e.file.key(""),
                    source: e,
                })?,
            ),
        };
        let mut stop = stop_rx.clone();
        let (bound, server) = health::server::serve(addr, tls, endpoint, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
        .map_err(|source| SidecarError::Listen { addr, source })?;
        let scheme = if config.health.tls.is_some() {
            "https"
        } else {
            "http"
        };
        tracing::info!(%bound, scheme, "health endpoint listening");
        health_addr = Some(bound);
        jobs.background(async move {
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
    jobs.wait_stopped(SHUTDOWN_GRACE).await;
    // Whatever was decided last (a failure seen while stopping) still goes
    // out, briefly.
    alerter.flush(Duration::from_secs(2)).await;
    tracing::info!("pitr run: stopped");
    Ok(())
}

/// Registers a snapshot source (`[[command]]`, `[[infisical]]`): its
/// schedule as the job `snapshot/<name>`, its status as the `/health`
/// section of that name, and its check (failing from a failed run until a
/// success, or when the newest snapshot is older than `max_age`), which
/// alerts.
fn register_snapshot(jobs: &mut Jobs, repo: &Repository, source: crate::snapshot::Source) {
    use crate::snapshot::schedule;
    let key = format!("snapshot/{}", source.name());
    let check_id = key.clone();
    let name = source.name().to_owned();
    let cron = source.schedule().cloned();
    let sched = schedule::SourceSchedule {
        source: name.clone(),
        kind: source.kind(),
        cron: cron.clone(),
        max_age: schedule::max_age(source.max_age(), cron.as_ref()),
    };
    let repo = repo.clone();
    jobs.scheduled(
        &key,
        cron.as_ref(),
        key.clone(),
        move |s: &schedule::SnapshotStatus| {
            let (failing, summary) = s.check();
            health::Check::new(check_id.clone(), failing, summary).db(&name)
        },
        move |tx, stop| {
            let (repo, source, sched) = (repo.clone(), source.clone(), sched.clone());
            async move {
                let take = || {
                    let (repo, source) = (repo.clone(), source.clone());
                    async move { crate::snapshot::take(&repo, &source).await }
                };
                schedule::run_scheduled(repo.clone(), sched, tx, stop, take).await
            }
        },
    );
}

/// Registers the fleet publisher (`fleet-publish`, docs/FLEET.md): its own
/// task and connection, so a down or slow fleet database delays nothing
/// else; `/health` shows its status as the section `fleet`.
fn fleet_publisher(
    jobs: &mut Jobs,
    repo: &Repository,
    config: &Arc<Config>,
    fleet: &crate::config::FleetConfig,
    report: watch::Receiver<Option<Arc<Report>>>,
) {
    use crate::fleet::publish::{self, PublishOptions, PublishStatus};
    use crate::fleet::rows::HealthRow;
    let health = move || {
        report.borrow().as_ref().map_or_else(Vec::new, |r| {
            r.checks
                .iter()
                .map(|c| HealthRow {
                    id: c.id.clone(),
                    ok: !c.failing,
                    summary: c.summary.clone(),
                })
                .collect()
        })
    };
    let opts = PublishOptions {
        fleet: fleet.clone(),
        config: config.clone(),
        health: Arc::new(health),
        may_migrate: true,
    };
    let (tx, rx) = watch::channel(PublishStatus::default());
    jobs.publish("fleet", rx.clone());
    let (down_max, instance) = (config.health.destination_down_max, fleet.instance.clone());
    jobs.check(move || {
        vec![fleet_check(
            &rx.borrow(),
            &instance,
            down_max,
            Timestamp::now(),
        )]
    });
    let repo = repo.clone();
    jobs.add(
        "fleet-publish",
        format!("publishing to the fleet catalog as {:?}", fleet.instance),
        Schedule::Every(fleet.publish_interval),
        false,
        move |stop| publish::run(repo.clone(), opts.clone(), tx.clone(), stop),
    );
}

/// The fleet publisher's check (`fleet/publish`): failing once every
/// publish has failed for `down_max` (`[health] destination_down_max`, as
/// for a destination: one failed attempt is retried, a long outage is
/// not). Backups go on meanwhile; what goes stale is the fleet's view.
fn fleet_check(
    s: &crate::fleet::publish::PublishStatus,
    instance: &str,
    down_max: Duration,
    now: Timestamp,
) -> Check {
    let id = "fleet/publish".to_owned();
    let down_for = s
        .failing_since
        .and_then(|t| now.duration_since(t).try_into().ok())
        .unwrap_or(Duration::ZERO);
    match (&s.last_error, s.failing_since) {
        (Some(e), Some(since)) if down_for >= down_max => Check::new(
            id,
            true,
            format!(
                "every publish to the fleet catalog has failed since {since} ({} s): {e}. \
                 Backups go on, but the fleet shows {instance:?} as of {}; \
                 check the fleet database (or receiver), its address and this instance's role \
                 (docs/FLEET.md)",
                down_for.as_secs(),
                s.last_publish
                    .map_or_else(|| "never published".to_owned(), |t| t.to_string())
            ),
        ),
        _ => Check::new(
            id,
            false,
            match s.last_publish {
                Some(t) => format!("published to the fleet catalog as {instance:?}; last at {t}"),
                None => format!("not yet published to the fleet catalog as {instance:?}"),
            },
        ),
    }
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
        retry: schedule::BACKUP_RETRY,
        // The stream stores a backup's last segment within seconds; an
        // hour covers a server that is down meanwhile.
        wait_wal: Duration::from_secs(3600),
    }
}

/// An error with every cause in its chain that its message does not
/// already hold ("a: b: c"): what `/health`, the log and the alerts show of
/// a failed part, so the root cause (a refused connection under a failed
/// read of the catalog, say) is not lost on the way; and what an alert
/// channel's failure says (reqwest's own message alone, "error sending
/// request", does not say that the connection was refused). The CLI prints
/// its errors this way too: a message that quotes its cause
/// (`{path}: {source}`) is not followed by the same cause again.
pub fn with_causes(e: &dyn std::error::Error) -> String {
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
    fn the_fleet_check_fails_only_after_the_outage_lasts_destination_down_max() {
        use crate::fleet::publish::PublishStatus;
        let t0: jiff::Timestamp = "2026-12-07T10:00:00Z".parse().expect("a time");
        let at = |s: i64| t0 + jiff::SignedDuration::from_secs(s);
        let max = std::time::Duration::from_secs(600);
        let check = |s: &PublishStatus, now| super::fleet_check(s, "api-1", max, now);

        let fresh = check(&PublishStatus::default(), t0);
        assert!(!fresh.failing);
        assert_eq!(fresh.id, "fleet/publish");
        assert!(
            fresh.summary.contains("not yet published"),
            "{}",
            fresh.summary
        );

        let down = PublishStatus {
            last_publish: Some(t0),
            last_error: Some("connection refused".into()),
            failing_since: Some(at(30)),
            ..PublishStatus::default()
        };
        // One failure, or an outage shorter than the threshold: retried.
        assert!(!check(&down, at(31)).failing);
        assert!(!check(&down, at(629)).failing);
        let failing = check(&down, at(630));
        assert!(failing.failing);
        for part in [
            "connection refused",
            "\"api-1\"",
            "as of 2026-12-07T10:00:00Z",
            "600 s",
        ] {
            assert!(
                failing.summary.contains(part),
                "{part}: {}",
                failing.summary
            );
        }
        // A success clears it.
        let back = PublishStatus {
            last_publish: Some(at(700)),
            ..PublishStatus::default()
        };
        let ok = check(&back, at(701));
        assert!(!ok.failing);
        assert!(ok.summary.contains("last at"), "{}", ok.summary);
    }

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
}
