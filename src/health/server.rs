//! The sidecar's HTTP endpoint (axum): `GET /health` (200 or 503 with the
//! [`Report`](super::Report) as JSON), `GET /metrics` (Prometheus text),
//! `GET /backups` (the catalog's backups and restore windows), and the
//! restore API, `POST /restore` and `GET /restore/{id}`, behind a bearer
//! token; without a configured token the restore API answers 404.

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
use crate::pitr::{RestoreOptions, Target};
use crate::repo::Repository;

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
    pub reached: Option<crate::pitr::Reached>,
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

/// Serves on `addr` until `shutdown`; returns once the listener is bound
/// (so a taken port fails `pitr run` at start, with its address).
pub async fn serve(
    addr: SocketAddr,
    endpoint: Endpoint,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(endpoint);
    let handle = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
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
        .with_state(endpoint)
}

async fn health(State(e): State<Endpoint>) -> Response {
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
            (code, Json(r.as_ref().clone())).into_response()
        }
    }
}

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

async fn backups(State(e): State<Endpoint>) -> Response {
    match catalog_listing(&e.repo, &e.config).await {
        Ok(v) => Json(v).into_response(),
        Err(msg) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({"error": msg})),
        )
            .into_response(),
    }
}

/// The catalog's backups, WAL ranges and restore windows, as `pitr list
/// --json` shows them.
async fn catalog_listing(repo: &Repository, config: &Config) -> Result<serde_json::Value, String> {
    let mut postgres = Vec::new();
    for pg in &config.postgres {
        let backups = crate::basebackup::backups(repo, &pg.name).map_err(|e| e.to_string())?;
        let windows = crate::pitr::windows(repo, &pg.name)
            .await
            .map_err(|e| e.to_string())?;
        postgres.push(serde_json::json!({
            "name": pg.name,
            "backups": backups.iter().map(|b| serde_json::json!({
                "record": b.record,
                "restorable": b.restorable,
            })).collect::<Vec<_>>(),
            "windows": windows,
        }));
    }
    let mut sqlite = Vec::new();
    for s in &config.sqlite {
        let window = crate::sqlite::window(repo, &s.name).map_err(|e| e.to_string())?;
        sqlite.push(serde_json::json!({ "name": s.name, "window": window }));
    }
    Ok(serde_json::json!({ "postgres": postgres, "sqlite": sqlite }))
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

fn error(code: StatusCode, message: String) -> Response {
    (code, Json(serde_json::json!({ "error": message }))).into_response()
}

/// `None` when the request may use the restore API, else the answer.
fn authorize(e: &Endpoint, headers: &HeaderMap) -> Option<Response> {
    let Some(expected) = &e.config.health.restore_token else {
        return Some(error(
            StatusCode::NOT_FOUND,
            "the restore API is off: set [health] restore_token_file to enable it".to_owned(),
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
    if !req.target_dir.is_absolute() {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "target_dir {:?} is not an absolute path",
                req.target_dir.display()
            ),
        );
    }
    // Planned before answering: a target outside the window is the
    // caller's to fix, now, not a job that fails later.
    let plan = match crate::pitr::plan(&e.repo, &database, &target, req.timeline).await {
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
        target_dir: req.target_dir.clone(),
        started: Timestamp::now(),
        finished: None,
        backup_bytes: 0,
        wal_files: 0,
        reached: None,
        error: None,
    };
    if let Ok(mut jobs) = e.restores.lock() {
        jobs.insert(id.clone(), job.clone());
    }
    let (tx, mut rx) = watch::channel(crate::pitr::RestoreProgress::default());
    let opts = RestoreOptions {
        target_dir: req.target_dir,
        force: req.force,
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
    tokio::spawn(async move {
        tracing::info!(id = %job_id, database = %plan.database, target = %plan.target.describe(), "restore requested over HTTP");
        let result = crate::pitr::restore(&repo, &plan, &opts).await;
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
                    j.error = Some(err.to_string());
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
    use super::same_token;

    #[test]
    fn tokens_compare_exactly() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abd", "abc"));
        assert!(!same_token("ab", "abc"));
        assert!(!same_token("abcd", "abc"));
        assert!(!same_token("", "abc"));
    }
}
