//! The sidecar's HTTP endpoint (axum): `GET /health` (200 or 503 with the
//! [`Report`] as JSON), `GET /metrics` (Prometheus text),
//! and behind a bearer token `GET /backups` (what `pitr list --json`
//! prints) and the restore API, `POST /restore`, `GET /restore/{id}` and
//! `GET /snapshots/{source}` ([`super::snapshot`]); without a configured
//! token those answer 404.
//!
//! Whoever can reach the port gets `/health`'s verdict and figures, never
//! its free text: error messages name hosts, users and paths, so they are
//! shown only to a caller with the token (and are always in the log).
//! Restores go only beneath `[health] restore_root` ([`super::confine`]),
//! at most [`MAX_RESTORE_JOBS`] at a time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::Report;
use crate::config::Config;
use crate::repo::Repository;
use crate::restore::{RestoreOptions, Target};

/// Restores the API runs at once; more are refused (429) until one ends.
pub const MAX_RESTORE_JOBS: usize = 2;
/// Finished restore jobs remembered for `GET /restore/{id}`.
const KEEP_FINISHED_JOBS: usize = 100;

/// What the endpoint serves from.
#[derive(Clone)]
pub struct Endpoint {
    /// The newest report (the sidecar's evaluator refreshes it).
    pub report: watch::Receiver<Option<Arc<Report>>>,
    /// Renders `/metrics`.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// The repository (catalog reads, restores).
    pub repo: Repository,
    /// The configuration (restore API token, identity, paths).
    pub config: Arc<Config>,
    /// Restores started through the API.
    pub restores: Arc<Mutex<HashMap<String, RestoreJob>>>,
}

/// A restore started through `POST /restore`.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreJob {
    /// Its id.
    pub id: String,
    /// `running`, `done` or `failed`.
    pub state: &'static str,
    /// The database.
    pub database: String,
    /// The target as asked.
    pub target: String,
    /// The data directory restored into.
    pub target_dir: PathBuf,
    /// When it started.
    pub started: Timestamp,
    /// When it ended.
    pub finished: Option<Timestamp>,
    /// Base-backup bytes written so far.
    pub backup_bytes: u64,
    /// WAL files handed to recovery so far.
    pub wal_files: usize,
    /// Where recovery stopped, once done.
    pub reached: Option<crate::restore::Reached>,
    /// Why it failed.
    pub error: Option<String>,
}

/// `POST /restore`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// The `[[postgres]]` entry; may be left out when there is one.
    pub postgres: Option<String>,
    /// A time (RFC 3339 or PostgreSQL's format, with a zone).
    pub at: Option<String>,
    /// An LSN.
    pub lsn: Option<String>,
    /// A restore point name.
    pub name: Option<String>,
    /// The newest stored point.
    #[serde(default)]
    pub latest: bool,
    /// The directory to restore into (missing or empty, unless `force`).
    pub target_dir: PathBuf,
    /// Empty a non-empty target directory first.
    #[serde(default)]
    pub force: bool,
    /// The timeline to follow.
    pub timeline: Option<u32>,
}

/// Serves on `addr` (https with `tls`) until `shutdown`; returns once the
/// listener is bound (so a taken port fails `pitr run` at start, with its
/// address).
pub async fn serve(
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    endpoint: Endpoint,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(endpoint);
    let handle = tokio::spawn(async move {
        if let Err(e) = crate::https::serve(listener, tls, app, shutdown).await {
            tracing::error!(error = %e, "the health endpoint stopped");
        }
    });
    Ok((bound, handle))
}

/// The routes.
pub fn router(endpoint: Endpoint) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/backups", get(backups))
        .route("/restore", post(start_restore))
        .route("/restore/{id}", get(restore_status))
        .route("/snapshots/{source}", get(super::snapshot::get_snapshot))
        .with_state(endpoint)
}

async fn health(State(e): State<Endpoint>, headers: HeaderMap) -> Response {
    let trusted = authorize(&e, &headers).is_none();
    let report = e.report.borrow().clone();
    match report {
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "starting"})),
        )
            .into_response(),
        Some(r) => {
            let code = if r.is_ok() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let body = serde_json::to_value(r.as_ref()).unwrap_or_default();
            let body = if trusted { body } else { public(body) };
            (code, Json(body)).into_response()
        }
    }
}

/// What `/health` shows a caller without the token: the same document
/// with every free-text string (errors, summaries, paths) replaced, so
/// nothing names a host, user or file. Kept: numbers, booleans, times,
/// LSNs and identifiers (names, ids, states).
fn public(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    const IDENTIFIERS: &[&str] = &[
        "status",
        "version",
        "name",
        "id",
        "database",
        "destination",
        "state",
        "kind",
        "trigger",
        "event",
        "last_backup",
        "backup",
        "schedule",
    ];
    fn safe_text(s: &str) -> bool {
        s.parse::<Timestamp>().is_ok() || s.parse::<crate::pg::Lsn>().is_ok()
    }
    fn walk(key: Option<&str>, v: Value) -> Value {
        match v {
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| {
                        let v = walk(Some(&k), v);
                        (k, v)
                    })
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.into_iter().map(|i| walk(key, i)).collect()),
            Value::String(s) if safe_text(&s) => Value::String(s),
            Value::String(s) if key.is_some_and(|k| IDENTIFIERS.contains(&k)) && s.len() <= 128 => {
                Value::String(s)
            }
            Value::String(_) => Value::String(HIDDEN.to_owned()),
            other => other,
        }
    }
    walk(None, v)
}

/// What replaces free text on `/health` for a caller without the token.
pub const HIDDEN: &str =
    "(hidden: in the log, or send Authorization: Bearer <[health] restore_token>)";

async fn metrics(State(e): State<Endpoint>) -> Response {
    match &e.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled\n").into_response(),
    }
}

async fn backups(State(e): State<Endpoint>, headers: HeaderMap) -> Response {
    if let Some(denied) = authorize(&e, &headers) {
        return denied;
    }
    // The catalog reads are synchronous and take the catalog's lock, which
    // the WAL path needs too: never on the runtime's worker threads.
    let runtime = tokio::runtime::Handle::current();
    let (repo, config) = (e.repo.clone(), e.config.clone());
    let listed = tokio::task::spawn_blocking(move || {
        runtime.block_on(crate::listing::listing(&repo, &config))
    })
    .await;
    match listed {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(err)) => {
            tracing::error!(error = %err, "GET /backups failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string())
        }
        Err(err) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("listing the catalog failed: {err}"),
        ),
    }
}

/// Compares in time independent of where the first difference is.
fn same_token(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

pub(super) fn error(code: StatusCode, message: String) -> Response {
    (code, Json(serde_json::json!({ "error": message }))).into_response()
}

/// `None` when the request may use the restore API, else the answer.
pub(super) fn authorize(e: &Endpoint, headers: &HeaderMap) -> Option<Response> {
    let Some(expected) = &e.config.health.restore_token else {
        return Some(error(
            StatusCode::NOT_FOUND,
            "off: set [health] restore_token_file to enable /backups and the restore API"
                .to_owned(),
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if same_token(t.trim(), expected) => None,
        _ => Some(
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(serde_json::json!({
                    "error": "missing or wrong bearer token: send Authorization: Bearer <[health] restore_token>"
                })),
            )
                .into_response(),
        ),
    }
}

async fn start_restore(
    State(e): State<Endpoint>,
    headers: HeaderMap,
    body: Result<Json<RestoreRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Some(denied) = authorize(&e, &headers) {
        return denied;
    }
    let req = match body {
        Ok(Json(r)) => r,
        Err(rej) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "{rej}. Send JSON like {{\"at\": \"2026-11-23T03:00:00Z\", \"target_dir\": \"/restore/main\"}} (or \"lsn\", \"name\", \"latest\": true; \"postgres\": NAME when there are several)"
                ),
            );
        }
    };
    let target = if req.latest {
        Ok(Target::Latest)
    } else {
        Target::from_args(req.at.as_deref(), req.lsn.as_deref(), req.name.as_deref())
    };
    let target = match target {
        Ok(t) => t,
        Err(err) => return error(StatusCode::BAD_REQUEST, err.to_string()),
    };
    let database = match (&req.postgres, e.config.postgres.as_slice()) {
        (Some(n), all) if all.iter().any(|p| &p.name == n) => n.clone(),
        (None, [one]) => one.name.clone(),
        (asked, all) => {
            let names: Vec<&str> = all.iter().map(|p| p.name.as_str()).collect();
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "{}: give \"postgres\" as one of {names:?}",
                    match asked {
                        Some(n) => format!("no [[postgres]] entry is named {n:?}"),
                        None => "several [[postgres]] entries".to_owned(),
                    }
                ),
            );
        }
    };
    // Every check that can refuse runs here, before anything is removed.
    let root = &e.config.health.restore_root;
    let state_dir = &e.config.repository.state_dir;
    let confined = match super::confine::check(root, state_dir, &req.target_dir, req.force) {
        Ok(c) => c,
        Err(err) => {
            tracing::warn!(target_dir = %req.target_dir.display(), error = %err, "restore over HTTP refused");
            let code = match err {
                super::confine::ConfineError::Root { .. }
                | super::confine::ConfineError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
                super::confine::ConfineError::NotEmpty(_)
                | super::confine::ConfineError::Running(_)
                | super::confine::ConfineError::Busy(_) => StatusCode::CONFLICT,
                _ => StatusCode::FORBIDDEN,
            };
            return error(code, err.to_string());
        }
    };
    // Planned before answering: a target outside the window is the
    // caller's to fix, now, not a job that fails later.
    let plan = match crate::restore::plan(&e.repo, &database, &target, req.timeline).await {
        Ok(p) => p,
        Err(err) => {
            let code = if err.is_not_possible() {
                StatusCode::UNPROCESSABLE_ENTITY
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            return error(code, err.to_string());
        }
    };
    let id = format!(
        "{}-{}",
        Timestamp::now().strftime("%Y%m%dT%H%M%SZ"),
        hex::encode(rand::random::<[u8; 4]>())
    );
    let job = RestoreJob {
        id: id.clone(),
        state: "running",
        database: database.clone(),
        target: target.describe(),
        target_dir: confined.dir.clone(),
        started: Timestamp::now(),
        finished: None,
        backup_bytes: 0,
        wal_files: 0,
        reached: None,
        error: None,
    };
    // Admitted under one lock: the cap and the busy check cannot race.
    {
        let Ok(mut jobs) = e.restores.lock() else {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the restore job table is poisoned by an earlier panic: restart pitr run"
                    .to_owned(),
            );
        };
        let running: Vec<&RestoreJob> = jobs.values().filter(|j| j.state == "running").collect();
        if running.iter().any(|j| j.target_dir == confined.dir) {
            return error(
                StatusCode::CONFLICT,
                super::confine::ConfineError::Busy(req.target_dir).to_string(),
            );
        }
        if running.len() >= MAX_RESTORE_JOBS {
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "{} restores are running, the most pitr runs at once: wait for one to end (GET /restore/<id>)",
                    running.len()
                ),
            );
        }
        if jobs.len() >= KEEP_FINISHED_JOBS {
            let mut done: Vec<(Timestamp, String)> = jobs
                .values()
                .filter(|j| j.state != "running")
                .map(|j| (j.started, j.id.clone()))
                .collect();
            done.sort();
            for (_, old) in done.iter().take(jobs.len() + 1 - KEEP_FINISHED_JOBS) {
                jobs.remove(old);
            }
        }
        jobs.insert(id.clone(), job.clone());
    }
    let (tx, mut rx) = watch::channel(crate::restore::RestoreProgress::default());
    let opts = RestoreOptions {
        target_dir: confined.dir.clone(),
        // Only an earlier API restore, checked above, is ever emptied.
        force: confined.replace,
        recover: true,
        os_user: e.config.verify.os_user.clone(),
        pg_bin: None,
        bin_dirs: e.config.restore.bin_dirs.clone(),
        config_path: e.config.path.clone(),
        parallel: 4,
        tablespace_dir: None,
        recovery_timeout: std::time::Duration::from_secs(24 * 3600),
        log_dir: e.config.repository.state_dir.join("restore-logs"),
        progress: Some(tx),
    };
    let jobs = e.restores.clone();
    let progress_jobs = jobs.clone();
    let progress_id = id.clone();
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let p = rx.borrow_and_update().clone();
            if let Ok(mut all) = progress_jobs.lock()
                && let Some(j) = all.get_mut(&progress_id)
            {
                j.backup_bytes = p.backup_bytes;
                j.wal_files = p.wal_files;
            }
        }
    });
    let repo = e.repo.clone();
    let job_id = id.clone();
    let (root, state_dir, force) = (root.clone(), state_dir.clone(), req.force);
    tokio::spawn(async move {
        tracing::info!(id = %job_id, database = %plan.database, target = %plan.target.describe(), "restore requested over HTTP");
        // Checked again right before: the directory may have changed
        // since the request was answered.
        let result = match super::confine::check(&root, &state_dir, &opts.target_dir, force) {
            Ok(again) if again.replace == opts.force => {
                crate::restore::restore(&repo, &plan, &opts)
                    .await
                    .map_err(|e| crate::sidecar::with_causes(&e))
            }
            Ok(_) => Err(format!(
                "{}: the directory changed between the request and the restore; nothing was removed, ask again",
                opts.target_dir.display()
            )),
            Err(err) => Err(err.to_string()),
        };
        let result = result.and_then(|report| {
            super::confine::mark(&opts.target_dir, &job_id)
                .map(|()| report)
                .map_err(|err| {
                    format!(
                        "{}: cannot write the restore marker: {err}",
                        opts.target_dir.display()
                    )
                })
        });
        if let Ok(mut all) = jobs.lock()
            && let Some(j) = all.get_mut(&job_id)
        {
            j.finished = Some(Timestamp::now());
            match result {
                Ok(report) => {
                    j.state = "done";
                    j.reached = report.reached;
                }
                Err(err) => {
                    tracing::error!(id = %job_id, error = %err, "restore over HTTP failed");
                    j.state = "failed";
                    j.error = Some(err);
                }
            }
        }
    });
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/restore/{id}"))],
        Json(job),
    )
        .into_response()
}

async fn restore_status(
    State(e): State<Endpoint>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(denied) = authorize(&e, &headers) {
        return denied;
    }
    let job = e.restores.lock().ok().and_then(|j| j.get(&id).cloned());
    match job {
        Some(j) => Json(j).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no restore with id {id:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::{HIDDEN, public, same_token};

    #[test]
    fn public_health_keeps_figures_and_hides_free_text() {
        let full = serde_json::json!({
            "status": "failing",
            "time": "2026-12-06T21:00:00Z",
            "postgres": [{
                "name": "main",
                "connected": false,
                "acknowledged_lsn": "0/16B3748",
                "last_stream_error": "cannot connect to db.internal:5432 as replicator",
                "stream": {"state": "restarting", "last_error": "/var/lib/secret: denied"},
            }],
            "problems": [{"id": "postgres/main/stream", "failing": true,
                "summary": "WAL streaming is down: host db.internal refused"}],
        });
        let shown = public(full);
        let text = shown.to_string();
        for secret in ["db.internal", "replicator", "/var/lib/secret"] {
            assert!(!text.contains(secret), "{secret} leaks: {text}");
        }
        assert_eq!(shown["status"], "failing");
        assert_eq!(shown["time"], "2026-12-06T21:00:00Z");
        assert_eq!(shown["postgres"][0]["name"], "main");
        assert_eq!(shown["postgres"][0]["connected"], false);
        assert_eq!(shown["postgres"][0]["acknowledged_lsn"], "0/16B3748");
        assert_eq!(shown["postgres"][0]["stream"]["state"], "restarting");
        assert_eq!(shown["problems"][0]["id"], "postgres/main/stream");
        assert_eq!(shown["problems"][0]["summary"], HIDDEN);
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abd", "abc"));
        assert!(!same_token("ab", "abc"));
        assert!(!same_token("abcd", "abc"));
        assert!(!same_token("", "abc"));
    }
}
