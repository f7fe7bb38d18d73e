//! `GET /snapshots/{source}`: one snapshot of a snapshot source
//! (`[[command]]`, `[[infisical]]`) returned to a caller with the restore
//! token (docs/SIDECAR.md). The newest taken at or before `?at=TIME`, or
//! `?latest=true`, or `?id=ID`; an Infisical one also as
//! `?format=dotenv|yaml|json` and `&environment=ENV`.
//!
//! The body is streamed from the repository as it is read and checked
//! (invariant 3, docs/ARCHITECTURE.md), with its length declared, so a
//! read that fails midway ends the answer short and the client sees a
//! truncated transfer, never a complete-looking wrong file. Reading needs
//! the identity, which a sidecar usually does not hold (invariant 5):
//! without it the answer says so.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::io::AsyncReadExt;

use super::server::{Endpoint, authorize, error};
use crate::snapshot::infisical::render::{Format, render};
use crate::snapshot::{Point, SnapshotError, SourceKind};

/// `GET /snapshots/{source}`'s query.
#[derive(Debug, Deserialize)]
pub struct SnapshotQuery {
    /// A time (RFC 3339 or PostgreSQL's format, with a zone).
    pub at: Option<String>,
    /// The newest.
    #[serde(default)]
    pub latest: bool,
    /// A snapshot id, as `pitr list` shows it.
    pub id: Option<String>,
    /// Infisical only: `json`, `dotenv` or `yaml`.
    pub format: Option<String>,
    /// Infisical only: one environment.
    pub environment: Option<String>,
}

/// The largest Infisical snapshot rendered in memory for `format` or
/// `environment`.
const MAX_RENDERED: u64 = 256 << 20;

/// Bytes per piece of a streamed answer.
const PIECE: usize = 64 << 10;

/// `GET /snapshots/{source}`.
pub async fn get_snapshot(
    State(e): State<Endpoint>,
    headers: HeaderMap,
    Path(source): Path<String>,
    query: Result<Query<SnapshotQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Some(denied) = authorize(&e, &headers) {
        return denied;
    }
    let Ok(Query(q)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad query: use ?at=TIME, ?latest=true or ?id=ID (and for an Infisical source \
             &format=json|dotenv|yaml&environment=ENV)"
                .to_owned(),
        );
    };
    // Only a configured name is ever looked up: the path decides nothing
    // else.
    let Some(src) = crate::snapshot::find(&e.config, &source) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no [[command]] or [[infisical]] entry is named {source:?}"),
        );
    };
    let point = match (&q.at, q.latest, &q.id) {
        (Some(at), false, None) => match crate::restore::parse_time(at) {
            Ok(t) => Point::At(t),
            Err(err) => return error(StatusCode::BAD_REQUEST, err.to_string()),
        },
        (None, true, None) => Point::Latest,
        (None, false, Some(id)) => Point::Id(id.clone()),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "give exactly one of ?at=TIME, ?latest=true, ?id=ID".to_owned(),
            );
        }
    };
    let format = match (&q.format, &q.environment) {
        (None, None) => None,
        _ if src.kind() != SourceKind::Infisical => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "format and environment apply to [[infisical]] sources; {} is returned as \
                     stored",
                    src.label()
                ),
            );
        }
        (f, _) => match f.as_deref().unwrap_or("json").parse::<Format>() {
            Ok(f) => Some(f),
            Err(err) => return error(StatusCode::BAD_REQUEST, err),
        },
    };
    let picked = crate::snapshot::pick(&e.repo.catalog(), src.name(), &point);
    let snap = match picked {
        Ok(s) => s,
        Err(err @ SnapshotError::NotFound { .. }) => {
            return error(StatusCode::UNPROCESSABLE_ENTITY, err.to_string());
        }
        Err(err) => return error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    };
    if let Err(err) = e.repo.reader() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{err}: this pitr run cannot read backups (it holds no identity, \
                 docs/ARCHITECTURE.md invariant 5); use `pitr restore --snapshot` where the \
                 identity is"
            ),
        );
    }
    tracing::info!(source = %src.name(), id = %snap.id, "snapshot requested over HTTP");
    let mut headers = HeaderMap::new();
    let text = |v: &str| HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("-"));
    headers.insert("x-pitr-snapshot-id", text(&snap.id));
    headers.insert("x-pitr-snapshot-time", text(&snap.attrs.time.to_string()));
    if let Some(format) = format {
        if snap.attrs.bytes > MAX_RENDERED {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "snapshot {} is too large to be an Infisical export",
                    snap.id
                ),
            );
        }
        let mut stored = Vec::new();
        if let Err(err) = crate::snapshot::read_to(&e.repo, &snap, &mut stored).await {
            return error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string());
        }
        return match render(&stored, format, q.environment.as_deref()) {
            Ok(bytes) => (StatusCode::OK, headers, bytes).into_response(),
            Err(err) => error(StatusCode::UNPROCESSABLE_ENTITY, err.to_string()),
        };
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(snap.attrs.bytes));
    let (mut write, read) = tokio::io::duplex(PIECE);
    let repo = e.repo.clone();
    tokio::spawn(async move {
        if let Err(err) = crate::snapshot::read_to(&repo, &snap, &mut write).await {
            tracing::error!(id = %snap.id, error = %err, "snapshot over HTTP failed midway");
        }
    });
    // The state goes `None` after an error, which ends the stream.
    let body = futures::stream::unfold(Some(read), |r| async move {
        let mut r = r?;
        let mut buf = vec![0u8; PIECE];
        match r.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), Some(r)))
            }
            Err(err) => Some((Err::<bytes::Bytes, _>(err), None)),
        }
    });
    (StatusCode::OK, headers, Body::from_stream(body)).into_response()
}
