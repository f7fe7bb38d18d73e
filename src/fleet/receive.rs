//! `pitr fleet receive`: the server of the `kind = "http"` transport
//! (docs/FLEET.md, "HTTP transport"). It applies the batches sidecars
//! POST to the fleet database, each in one transaction as the database
//! role the request's bearer token maps to (`SET LOCAL ROLE`), so that
//! PostgreSQL, not the receiver, decides which instance's rows a token
//! may write: the row-level security and the trigger of the V1 migration
//! refuse another instance's rows exactly as for a direct connection.
//!
//! - Tokens are kept as SHA-256 digests (`receive_tokens_file`: lines
//!   `ROLE HEX`), compared without early exit. The file is read again
//!   when it changes, so a token is added or revoked without a restart; a
//!   file that no longer parses refuses every request until it is fixed.
//! - Requests are hostile: the token is checked before the body is read,
//!   bodies are read up to [`MAX_BODY`], at most [`CONCURRENCY`] requests
//!   are served at once (each with one connection of a small pool), and a
//!   batch is checked ([`Batch`]) before any SQL.
//! - Errors are JSON `{"error": "…"}`; SQLSTATE 42501 is 403.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::batch::{Batch, MAX_BODY, Role, Session};
use super::http::InstanceState;
use super::schema::{self, SCHEMA_VERSION};
use super::{FleetError, connect};
use crate::config::{FleetConfig, valid_instance};

/// Requests served at once (and connections to the fleet database).
pub const CONCURRENCY: usize = 8;
/// How long a request waits for its turn before it is answered 503.
const QUEUE_WAIT: Duration = Duration::from_secs(10);
/// How long reading a body may take.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the receiver cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// `receive_tokens_file` is missing, unreadable or malformed.
    #[error("[fleet] receive_tokens_file {path}: {message}")]
    Tokens {
        /// The file (or the key, when unset).
        path: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// The listen address cannot be bound.
    #[error("[fleet] receive_listen {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// `receive_tls_cert_file` / `receive_tls_key_file` cannot be used.
    #[error("[fleet] {key} {source}")]
    Tls {
        /// The key.
        key: String,
        /// What is wrong with the file.
        source: crate::https::TlsError,
    },
    /// The fleet database cannot be reached, or its schema is not current.
    #[error(transparent)]
    Fleet(#[from] FleetError),
}

/// The tokens the receiver accepts: each a role and the SHA-256 of the
/// token.
#[derive(Debug, Clone)]
pub struct Tokens(Vec<(Role, [u8; 32])>);

impl Tokens {
    /// Reads `path`: `ROLE SHA256-HEX` per line, `#` comments and blank
    /// lines skipped.
    pub fn read(path: &Path) -> Result<Tokens, ReceiveError> {
        let bad = |message: String| ReceiveError::Tokens {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        Tokens::parse(&text).map_err(bad)
    }

    /// Parses the file's text; the message names the line and the fix.
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let role = words.next().and_then(Role::new);
            let digest = words
                .next()
                .and_then(|h| hex::decode(h).ok())
                .and_then(|d| <[u8; 32]>::try_from(d).ok());
            match (role, digest, words.next()) {
                (Some(role), Some(digest), None) => out.push((role, digest)),
                _ => {
                    return Err(format!(
                        "line {} is not `ROLE SHA256-HEX`: write the database role (letters, digits, `_`, `.`, `-`) and the 64 hex digits of the token's SHA-256, e.g. from `printf %s TOKEN | sha256sum`",
                        n + 1
                    ));
                }
            }
        }
        if out.is_empty() {
            return Err("lists no token: add a line `ROLE SHA256-HEX` per sidecar".to_owned());
        }
        Ok(Tokens(out))
    }

    /// The role `token` maps to. Every entry is compared, each without
    /// early exit, so the time says nothing about which digest is close.
    pub fn role_of(&self, token: &str) -> Option<&Role> {
        let given: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (role, digest) in &self.0 {
            let diff = digest
                .iter()
                .zip(given.iter())
                .fold(0u8, |d, (a, b)| d | (a ^ b));
            if diff == 0 && found.is_none() {
                found = Some(role);
            }
        }
        found
    }
}

/// The tokens file as the receiver serves it: read again when its inode,
/// length or modification time changes (a rewrite, or a secret volume
/// swapping its link). A file that no longer reads or parses refuses every
/// request until it is fixed: keeping the old tokens would keep a token
/// someone meant to revoke.
struct TokensFile {
    path: PathBuf,
    /// The file's signature when last read, and what it held.
    current: Mutex<(Option<FileSig>, Result<Tokens, String>)>,
}

/// Inode, length and modification time (ns) of a file.
type FileSig = (u64, u64, i64, i64);

fn file_sig(path: &Path) -> Option<FileSig> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.len(), m.mtime(), m.mtime_nsec()))
}

impl TokensFile {
    /// Reads `path`; it must parse now.
    fn open(path: &Path) -> Result<TokensFile, ReceiveError> {
        let sig = file_sig(path);
        let tokens = Tokens::read(path)?;
        Ok(TokensFile {
            path: path.to_owned(),
            current: Mutex::new((sig, Ok(tokens))),
        })
    }

    /// The role `token` maps to in the file as it is now; `Err` says why
    /// the file cannot be used.
    fn role_of(&self, token: &str) -> Result<Option<Role>, String> {
        let sig = file_sig(&self.path);
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if sig != current.0 {
            current.1 = Tokens::read(&self.path).map_err(|e| e.to_string());
            current.0 = sig;
            match &current.1 {
                Ok(_) => {
                    tracing::info!(path = %self.path.display(), "re-read the fleet tokens file")
                }
                Err(e) => {
                    tracing::error!(error = %e, "the fleet tokens file changed and cannot be used: every request is refused until it is fixed")
                }
            }
        }
        match &current.1 {
            Ok(tokens) => Ok(tokens.role_of(token).cloned()),
            Err(e) => Err(e.clone()),
        }
    }
}

/// The receiver's shared state.
#[derive(Clone)]
struct Receiver(Arc<Inner>);

struct Inner {
    fleet: FleetConfig,
    tokens: TokensFile,
    /// Idle connections; at most [`CONCURRENCY`] exist, one per request.
    pool: Mutex<Vec<Session>>,
    turns: Semaphore,
}

/// Starts `pitr fleet receive` for `fleet` (its `url` is the fleet
/// database): reads the tokens, checks that the database is reachable and
/// its schema current, binds `receive_listen`, and serves until
/// `shutdown`. Returns the bound address once it is listening.
pub async fn serve(
    fleet: FleetConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), ReceiveError> {
    let Some(path) = fleet.receive.tokens_file.clone() else {
        return Err(ReceiveError::Tokens {
            path: "(unset)".to_owned(),
            message: "pitr fleet receive needs it: add receive_tokens_file = \"/etc/pitr/fleet-tokens\" to [fleet], a file of `ROLE SHA256-HEX` lines (docs/FLEET.md)".to_owned(),
        });
    };
    let tokens = TokensFile::open(&path)?;
    let tls = match &fleet.receive.tls {
        None => None,
        Some(files) => Some(
            crate::https::acceptor(files).map_err(|e| ReceiveError::Tls {
                key: e.file.key("receive_"),
                source: e,
            })?,
        ),
    };
    let mut client = connect(&fleet).await?;
    schema::ensure(&mut client, false).await?;
    let addr = fleet.receive.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ReceiveError::Listen { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ReceiveError::Listen { addr, source })?;
    let state = Receiver(Arc::new(Inner {
        fleet,
        tokens,
        pool: Mutex::new(vec![Session::new(client)]),
        turns: Semaphore::new(CONCURRENCY),
    }));
    let app = axum::Router::new()
        .route("/v1/instance", get(instance))
        .route("/v1/batches", post(batches))
        .fallback(async || {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint: the receiver serves GET /v1/instance?name=INSTANCE and POST /v1/batches".to_owned(),
            )
        })
        .with_state(state);
    let handle = tokio::spawn(async move {
        if let Err(e) = crate::https::serve(listener, tls, app, shutdown).await {
            tracing::error!(error = %e, "the fleet receiver stopped");
        }
    });
    Ok((bound, handle))
}

/// `GET /v1/instance?name=INSTANCE`: the instance's `published_seq`, read
/// as the token's role.
async fn instance(
    State(r): State<Receiver>,
    headers: HeaderMap,
    query: Result<Query<InstanceQuery>, QueryRejection>,
) -> Response {
    let role = match r.authorize(&headers) {
        Ok(role) => role,
        Err(answer) => return *answer,
    };
    let name = match query {
        Ok(Query(q)) if valid_instance(&q.name) => q.name,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "give the instance as ?name=INSTANCE (1 to 63 letters, digits, `_`, `-`, `.`)"
                    .to_owned(),
            );
        }
    };
    let _turn = match r.turn().await {
        Ok(t) => t,
        Err(busy) => return busy,
    };
    r.with_session(async |s: &mut Session| {
        let published_seq = s.published_seq(&name, Some(&role)).await?;
        Ok(Json(InstanceState {
            instance: name.clone(),
            published_seq,
            schema_version: SCHEMA_VERSION,
        })
        .into_response())
    })
    .await
}

#[derive(Deserialize)]
struct InstanceQuery {
    name: String,
}

/// `POST /v1/batches`: applies one batch as the token's role.
async fn batches(State(r): State<Receiver>, headers: HeaderMap, body: Body) -> Response {
    let role = match r.authorize(&headers) {
        Ok(role) => role,
        Err(answer) => return *answer,
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return too_large();
    }
    // The turn bounds the bodies held in memory; the connection is
    // taken only once the body is read and parsed.
    let _turn = match r.turn().await {
        Ok(t) => t,
        Err(busy) => return busy,
    };
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, read_body(body)).await {
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "the body took too long".to_owned(),
            );
        }
        Ok(Err(answer)) => return answer,
        Ok(Ok(b)) => b,
    };
    let batch: Batch = match serde_json::from_slice(&bytes) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the body is not a batch (docs/FLEET.md): {e}"),
            );
        }
    };
    r.with_session(async |s: &mut Session| {
        s.apply(&batch, Some(&role)).await?;
        Ok(Json(serde_json::json!({
            "upserts": batch.upserts.len(),
            "deletes": batch.deletes.len(),
        }))
        .into_response())
    })
    .await
}

/// The body, up to [`MAX_BODY`] bytes.
async fn read_body(body: Body) -> Result<Vec<u8>, Response> {
    let mut stream = body.into_data_stream();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                format!("reading the body failed: {e}"),
            )
        })?;
        if out.len() + chunk.len() > MAX_BODY {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The answer to a request without a known token.
fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(serde_json::json!({
            "error": "missing or unknown bearer token: send Authorization: Bearer <token>, whose SHA-256 the receiver's tokens file lists"
        })),
    )
        .into_response()
}

fn too_large() -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("a batch body is at most {MAX_BODY} bytes"),
    )
}

impl Receiver {
    /// The role of the request's bearer token, or the answer: 401 for a
    /// missing or unknown token, 503 while the tokens file is unusable.
    fn authorize(&self, headers: &HeaderMap) -> Result<Role, Box<Response>> {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Box::new(unauthorized()))?;
        match self.0.tokens.role_of(given.trim()) {
            Ok(Some(role)) => Ok(role),
            Ok(None) => Err(Box::new(unauthorized())),
            Err(e) => Err(Box::new(error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the receiver's tokens file cannot be used ({e}); its operator must fix it"
                ),
            ))),
        }
    }

    /// A turn among at most [`CONCURRENCY`] requests, or the 503 answer
    /// after waiting [`QUEUE_WAIT`].
    async fn turn(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Response> {
        match tokio::time::timeout(QUEUE_WAIT, self.0.turns.acquire()).await {
            Ok(Ok(turn)) => Ok(turn),
            _ => Err((
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                Json(serde_json::json!({"error": "busy: retry"})),
            )
                .into_response()),
        }
    }

    /// Runs `work` on a pooled connection (the caller holds a turn, so at
    /// most [`CONCURRENCY`] exist); a failure becomes its JSON answer.
    async fn with_session(
        &self,
        work: impl AsyncFnOnce(&mut Session) -> Result<Response, FleetError>,
    ) -> Response {
        let pooled = self.0.pool.lock().ok().and_then(|mut p| p.pop());
        let mut session = match pooled {
            Some(s) if !s.is_closed() => s,
            _ => match connect(&self.0.fleet).await {
                Ok(c) => Session::new(c),
                Err(e) => return failure(&e),
            },
        };
        let answer = work(&mut session).await;
        // A session whose statement timed out may be mid-query: dropped.
        let reusable = !session.is_closed() && !matches!(&answer, Err(FleetError::Timeout { .. }));
        if reusable && let Ok(mut pool) = self.0.pool.lock() {
            pool.push(session);
        }
        answer.unwrap_or_else(|e| failure(&e))
    }
}

/// The answer to a failed batch or read: PostgreSQL's refusal of the role
/// (42501) is 403, a batch the database cannot take (data exceptions,
/// constraint violations) 422, a malformed one 400; an unreachable or
/// failing database 503, which the sidecar retries.
fn failure(e: &FleetError) -> Response {
    let state = e.sqlstate();
    let status = match e {
        FleetError::Batch(_) => StatusCode::BAD_REQUEST,
        _ if state == Some("42501") => StatusCode::FORBIDDEN,
        _ if state.is_some_and(|c| c.starts_with("22") || c.starts_with("23")) => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    let message = e.server_message();
    if status.is_server_error() {
        tracing::warn!(error = %e, "fleet receiver: a request failed");
    } else {
        tracing::info!(status = status.as_u16(), error = %message, "fleet receiver: refused a request");
    }
    error(status, message)
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(token: &str) -> String {
        hex::encode(Sha256::digest(token.as_bytes()))
    }

    #[test]
    fn tokens_map_to_roles_by_their_digest() {
        let text = format!(
            "# the fleet's sidecars\n\npitr_api {}\npitr_auth   {}\n",
            sha("api-token"),
            sha("auth-token").to_uppercase()
        );
        let t = Tokens::parse(&text).expect("parses");
        assert_eq!(t.role_of("api-token").map(Role::name), Some("pitr_api"));
        assert_eq!(t.role_of("auth-token").map(Role::name), Some("pitr_auth"));
        assert!(t.role_of("api-token ").is_none());
        assert!(t.role_of("").is_none());
        assert!(
            t.role_of(&sha("api-token")).is_none(),
            "the digest is no token"
        );
    }

    /// A token added or revoked in the file counts from the next request;
    /// a file broken meanwhile refuses everyone until it is fixed.
    #[test]
    fn the_tokens_file_is_read_again_when_it_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens");
        std::fs::write(&path, format!("pitr_api {}\n", sha("old"))).expect("write");
        let file = TokensFile::open(&path).expect("open");
        let role = |t: &str| file.role_of(t).map(|r| r.map(|r| r.name().to_owned()));
        assert_eq!(role("old"), Ok(Some("pitr_api".to_owned())));
        assert_eq!(role("new"), Ok(None));
        // Rotated: the new token in, the old one out (a rename, as an
        // editor or a secret volume does it).
        let next = dir.path().join("tokens.next");
        std::fs::write(&next, format!("pitr_api {}\n", sha("new"))).expect("write");
        std::fs::rename(&next, &path).expect("rename");
        assert_eq!(role("new"), Ok(Some("pitr_api".to_owned())));
        assert_eq!(role("old"), Ok(None));
        // Broken: nobody gets in, and the error names the line.
        std::fs::write(&path, "pitr_api not-hex\n").expect("write");
        let e = role("new").expect_err("a broken file refuses");
        assert!(e.contains("line 1"), "{e}");
        // Removed: the same.
        std::fs::remove_file(&path).expect("remove");
        assert!(role("new").is_err());
        std::fs::write(&path, format!("pitr_api {}\n", sha("new"))).expect("write");
        assert_eq!(role("new"), Ok(Some("pitr_api".to_owned())));
    }

    #[test]
    fn a_bad_tokens_file_names_the_line_and_the_fix() {
        for (text, part) in [
            ("pitr_api\n", "line 1"),
            ("# c\npitr_api abcd\n", "line 2"),
            (&format!("\"x\" {}\n", sha("t")), "line 1"),
            (&format!("pitr_api {} extra\n", sha("t")), "line 1"),
            ("# only comments\n", "lists no token"),
        ] {
            let e = Tokens::parse(text)
                .err()
                .unwrap_or_else(|| panic!("{text:?} accepted"));
            assert!(e.contains(part), "{e}");
        }
    }
}
