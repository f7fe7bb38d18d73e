//! An Infisical server on loopback (axum) that answers the parts of
//! Infisical's published API that `pitr::snapshot::infisical` uses, as the
//! API reference and the backend's route schemas describe them (the module
//! doc of `snapshot::infisical` says where they were read):
//!
//! - `POST /api/v1/auth/universal-auth/login` `{clientId, clientSecret}` →
//!   `{accessToken, expiresIn, accessTokenMaxTTL, tokenType: "Bearer"}`;
//! - `POST /api/v1/auth/token/renew` `{accessToken}` → the same shape, the
//!   TTL counted again; 401 once expired or past the max TTL;
//! - `GET /api/v4/secrets?projectId&environment&secretPath&recursive&include_imports&expandSecretReferences&viewSecretValue`
//!   → `{secrets: [...], imports: [...]}`, not paginated (the real
//!   endpoint has no pagination), every secret with the fields the schema
//!   lists;
//! - errors as `{reqId, statusCode, message, error}`; 429 with a
//!   `retry-after` header in seconds.
//!
//! Knobs: the token TTL and max TTL, 429s with `Retry-After`, 500s on
//! chosen listing calls, the data (changed between calls), revoking every
//! token; and it records the credentials, tokens and queries it saw.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// One secret the server holds.
#[derive(Debug, Clone)]
pub struct StoredSecret {
    /// Environment slug.
    pub environment: String,
    /// Folder.
    pub path: String,
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
    /// Comment.
    pub comment: String,
    /// Tag slugs.
    pub tags: Vec<String>,
    /// Bumped at every change, as Infisical's `version` is.
    pub version: u64,
}

/// A folder of one environment importing another's.
#[derive(Debug, Clone)]
pub struct StoredImport {
    /// The importing environment.
    pub environment: String,
    /// The imported folder's environment.
    pub from_environment: String,
    /// The imported folder's path.
    pub from_path: String,
}

struct TokenState {
    created: Instant,
    renewed: Instant,
}

struct Inner {
    client_id: String,
    client_secret: String,
    project_id: String,
    environments: Vec<String>,
    ttl: Duration,
    max_ttl: Duration,
    tokens: HashMap<String, TokenState>,
    secrets: Vec<StoredSecret>,
    imports: Vec<StoredImport>,
    /// 429s still to answer, and the `retry-after` they carry.
    rate_limited: usize,
    retry_after: u64,
    /// Listing calls (1-based) answered 500.
    failing_calls: Vec<usize>,
    listing_calls: usize,
    logins: usize,
    renewals: usize,
    answered_429: usize,
    seen_credentials: Vec<(String, String)>,
    issued_tokens: Vec<String>,
    seen_queries: Vec<HashMap<String, String>>,
    next_req: u64,
}

type Shared = Arc<Mutex<Inner>>;

/// A running server; stops on drop.
pub struct InfisicalServer {
    addr: SocketAddr,
    inner: Shared,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Infisical's error body.
fn error(inner: &mut Inner, status: StatusCode, error: &str, message: &str) -> Response {
    inner.next_req += 1;
    let body = json!({
        "reqId": format!("req-{}", inner.next_req),
        "statusCode": status.as_u16(),
        "message": message,
        "error": error,
    });
    (status, Json(body)).into_response()
}

fn token_answer(inner: &Inner, token: &str) -> Response {
    Json(json!({
        "accessToken": token,
        "expiresIn": inner.ttl.as_secs(),
        "accessTokenMaxTTL": inner.max_ttl.as_secs(),
        "tokenType": "Bearer",
    }))
    .into_response()
}

/// The rate limiter runs before validation and authentication, as
/// `@fastify/rate-limit`'s `preValidation` hook does.
fn rate_limited(inner: &mut Inner) -> Option<Response> {
    if inner.rate_limited == 0 {
        return None;
    }
    inner.rate_limited -= 1;
    inner.answered_429 += 1;
    let after = inner.retry_after;
    let mut resp = error(
        inner,
        StatusCode::TOO_MANY_REQUESTS,
        "RateLimitError",
        &format!("Rate limit exceeded. Please try again in {after} seconds"),
    );
    resp.headers_mut()
        .insert("retry-after", HeaderValue::from(after));
    Some(resp)
}

async fn login(State(s): State<Shared>, Json(body): Json<Value>) -> Response {
    let mut inner = s.lock().unwrap();
    if let Some(r) = rate_limited(&mut inner) {
        return r;
    }
    let id = body["clientId"].as_str().unwrap_or_default().to_owned();
    let secret = body["clientSecret"].as_str().unwrap_or_default().to_owned();
    inner.seen_credentials.push((id.clone(), secret.clone()));
    if id != inner.client_id || secret != inner.client_secret {
        return error(
            &mut inner,
            StatusCode::UNAUTHORIZED,
            "UnauthorizedError",
            "Invalid credentials",
        );
    }
    inner.logins += 1;
    let token = format!("st.{}", hex(rand::random()));
    let now = Instant::now();
    inner.tokens.insert(
        token.clone(),
        TokenState {
            created: now,
            renewed: now,
        },
    );
    inner.issued_tokens.push(token.clone());
    token_answer(&inner, &token)
}

async fn renew(State(s): State<Shared>, Json(body): Json<Value>) -> Response {
    let mut inner = s.lock().unwrap();
    if let Some(r) = rate_limited(&mut inner) {
        return r;
    }
    let token = body["accessToken"].as_str().unwrap_or_default().to_owned();
    let (ttl, max_ttl) = (inner.ttl, inner.max_ttl);
    let now = Instant::now();
    let Some(state) = inner.tokens.get(&token) else {
        return error(
            &mut inner,
            StatusCode::UNAUTHORIZED,
            "UnauthorizedError",
            "Unauthorized",
        );
    };
    let expired = !ttl.is_zero() && now > state.renewed + ttl;
    let past_max = !max_ttl.is_zero() && now + ttl > state.created + max_ttl;
    if expired || past_max {
        inner.tokens.remove(&token);
        let message = if expired {
            "Failed to renew MI access token due to TTL expiration"
        } else {
            "Failed to renew MI access token past its Max TTL expiration"
        };
        return error(
            &mut inner,
            StatusCode::UNAUTHORIZED,
            "UnauthorizedError",
            message,
        );
    }
    if let Some(state) = inner.tokens.get_mut(&token) {
        state.renewed = now;
    }
    inner.renewals += 1;
    token_answer(&inner, &token)
}

/// The answer to give when the request's token is refused; `None` when
/// it is good.
fn refused_token(inner: &mut Inner, headers: &HeaderMap) -> Option<Response> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let now = Instant::now();
    let (ttl, max_ttl) = (inner.ttl, inner.max_ttl);
    let refused = match inner.tokens.get(&token) {
        None => Some((
            StatusCode::UNAUTHORIZED,
            "UnauthorizedError",
            "Unauthorized",
        )),
        // The JWT's own expiry (the max TTL): a 403 TokenError.
        Some(t) if !max_ttl.is_zero() && now > t.created + max_ttl => Some((
            StatusCode::FORBIDDEN,
            "TokenError",
            "Your token has expired. Please re-authenticate.",
        )),
        Some(t) if !ttl.is_zero() && now > t.renewed + ttl => Some((
            StatusCode::UNAUTHORIZED,
            "UnauthorizedError",
            "Failed to renew MI access token due to TTL expiration",
        )),
        Some(_) => None,
    };
    refused.map(|(status, kind, message)| error(inner, status, kind, message))
}

fn secret_json(s: &StoredSecret, with_path: bool) -> Value {
    let id = format!(
        "{:x}",
        fxhash(&format!("{}{}{}", s.environment, s.path, s.key))
    );
    let mut v = json!({
        "id": id,
        "_id": id,
        "workspace": "p",
        "environment": s.environment,
        "version": s.version,
        "type": "shared",
        "secretKey": s.key,
        "secretValue": s.value,
        "secretComment": s.comment,
        "secretReminderNote": null,
        "secretReminderRepeatDays": null,
        "skipMultilineEncoding": false,
        "createdAt": "2025-01-01T00:00:00.000Z",
        "updatedAt": format!("2025-01-01T00:00:{:02}.000Z", s.version % 60),
        "secretValueHidden": false,
        "secretMetadata": [],
        "tags": s.tags.iter().map(|t| json!({"id": format!("tag-{t}"), "slug": t, "name": t, "color": "#aabbcc"})).collect::<Vec<_>>(),
    });
    if with_path {
        v["secretPath"] = json!(s.path);
    }
    v
}

fn under(path: &str, folder: &str, recursive: bool) -> bool {
    if path == folder {
        return true;
    }
    recursive && (folder == "/" || path.starts_with(&format!("{folder}/")))
}

async fn list(
    State(s): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut inner = s.lock().unwrap();
    if let Some(r) = rate_limited(&mut inner) {
        return r;
    }
    if let Some(r) = refused_token(&mut inner, &headers) {
        return r;
    }
    inner.listing_calls += 1;
    inner.seen_queries.push(q.clone());
    let call = inner.listing_calls;
    if inner.failing_calls.contains(&call) {
        return error(
            &mut inner,
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            "Something went wrong",
        );
    }
    let (Some(project), Some(env)) = (q.get("projectId"), q.get("environment")) else {
        return error(
            &mut inner,
            StatusCode::BAD_REQUEST,
            "BadRequestError",
            "Missing project id or environment",
        );
    };
    if *project != inner.project_id || !inner.environments.contains(env) {
        let message =
            format!("Environment with slug '{env}' in project with ID '{project}' not found");
        return error(&mut inner, StatusCode::NOT_FOUND, "NotFoundError", &message);
    }
    let folder = q.get("secretPath").map(String::as_str).unwrap_or("/");
    let folder = match folder.trim_end_matches('/') {
        "" => "/",
        f => f,
    };
    let recursive = q.get("recursive").map(String::as_str) == Some("true");
    let mut secrets: Vec<Value> = inner
        .secrets
        .iter()
        .filter(|s| s.environment == *env && under(&s.path, folder, recursive))
        .map(|s| secret_json(s, recursive))
        .collect();
    // Any order: the client must not depend on it.
    if !secrets.is_empty() {
        let n = call % secrets.len();
        secrets.rotate_left(n);
    }
    let mut body = json!({ "secrets": secrets });
    if q.get("include_imports").map(String::as_str) == Some("true") {
        let imports: Vec<Value> = inner
            .imports
            .iter()
            .filter(|i| i.environment == *env)
            .map(|i| {
                let imported: Vec<Value> = inner
                    .secrets
                    .iter()
                    .filter(|s| s.environment == i.from_environment && s.path == i.from_path)
                    .map(|s| secret_json(s, false))
                    .collect();
                json!({
                    "secretPath": i.from_path,
                    "environment": i.from_environment,
                    "folderId": "folder-1",
                    "secrets": imported,
                })
            })
            .collect();
        body["imports"] = json!(imports);
    }
    Json(body).into_response()
}

fn hex(bytes: [u8; 16]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl InfisicalServer {
    /// Starts on a free port of 127.0.0.1 with one machine identity
    /// (`client_id`, `client_secret`) and one project with `environments`,
    /// empty; tokens live an hour, renewable for a day.
    pub async fn start(
        client_id: &str,
        client_secret: &str,
        project_id: &str,
        environments: &[&str],
    ) -> InfisicalServer {
        let inner = Arc::new(Mutex::new(Inner {
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            project_id: project_id.to_owned(),
            environments: environments.iter().map(|e| (*e).to_owned()).collect(),
            ttl: Duration::from_secs(3600),
            max_ttl: Duration::from_secs(86400),
            tokens: HashMap::new(),
            secrets: Vec::new(),
            imports: Vec::new(),
            rate_limited: 0,
            retry_after: 0,
            failing_calls: Vec::new(),
            listing_calls: 0,
            logins: 0,
            renewals: 0,
            answered_429: 0,
            seen_credentials: Vec::new(),
            issued_tokens: Vec::new(),
            seen_queries: Vec::new(),
            next_req: 0,
        }));
        let app = axum::Router::new()
            .route(
                "/api/v1/auth/universal-auth/login",
                axum::routing::post(login),
            )
            .route("/api/v1/auth/token/renew", axum::routing::post(renew))
            .route("/api/v4/secrets", axum::routing::get(list))
            .with_state(inner.clone());
        let (addr, stop) = super::serve(app).await;
        InfisicalServer {
            addr,
            inner,
            _stop: stop,
        }
    }

    /// Client options for this server's identity and project, exporting
    /// `environments` from `/`, with short retry delays (the tests wait
    /// for `Retry-After`, not for backoff).
    pub fn options(&self, environments: &[&str]) -> pitr::snapshot::infisical::InfisicalOptions {
        let (client_id, client_secret, project_id) = self.with(|i| {
            (
                i.client_id.clone(),
                i.client_secret.clone(),
                i.project_id.clone(),
            )
        });
        pitr::snapshot::infisical::InfisicalOptions {
            entry: pitr::config::InfisicalConfig {
                name: "secrets".to_owned(),
                site_url: self.url(),
                project_id,
                environments: environments.iter().map(|e| (*e).to_owned()).collect(),
                secret_path: "/".to_owned(),
                client_id,
                client_secret,
                schedule: None,
                timeout: Duration::from_secs(30),
                max_age: None,
            },
            retry: pitr::backoff::Backoff::forever(
                Duration::from_millis(10),
                Duration::from_millis(50),
            )
            .times(3),
            max_response_bytes: pitr::snapshot::infisical::MAX_RESPONSE_BYTES,
        }
    }

    /// `http://127.0.0.1:<port>`, the `site_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap())
    }

    /// Tokens' TTL and max TTL (whole seconds, as the API gives them).
    pub fn token_lifetime(&self, ttl: Duration, max_ttl: Duration) {
        self.with(|i| {
            i.ttl = ttl;
            i.max_ttl = max_ttl;
        });
    }

    /// Creates or changes a secret.
    pub fn set(&self, env: &str, path: &str, key: &str, value: &str, comment: &str, tags: &[&str]) {
        self.with(|i| {
            let tags: Vec<String> = tags.iter().map(|t| (*t).to_owned()).collect();
            match i
                .secrets
                .iter_mut()
                .find(|s| s.environment == env && s.path == path && s.key == key)
            {
                Some(s) => {
                    s.value = value.to_owned();
                    s.comment = comment.to_owned();
                    s.tags = tags;
                    s.version += 1;
                }
                None => i.secrets.push(StoredSecret {
                    environment: env.to_owned(),
                    path: path.to_owned(),
                    key: key.to_owned(),
                    value: value.to_owned(),
                    comment: comment.to_owned(),
                    tags,
                    version: 1,
                }),
            }
        });
    }

    /// Makes `env` import `from_env`'s folder `from_path`.
    pub fn import(&self, env: &str, from_env: &str, from_path: &str) {
        self.with(|i| {
            i.imports.push(StoredImport {
                environment: env.to_owned(),
                from_environment: from_env.to_owned(),
                from_path: from_path.to_owned(),
            })
        });
    }

    /// The next `n` requests (any endpoint) are answered 429 with
    /// `retry-after: seconds`.
    pub fn rate_limit_next(&self, n: usize, seconds: u64) {
        self.with(|i| {
            i.rate_limited = n;
            i.retry_after = seconds;
        });
    }

    /// Listing calls number `calls` (counted from 1 over the server's
    /// life) are answered 500.
    pub fn fail_listing_calls(&self, calls: impl IntoIterator<Item = usize>) {
        self.with(|i| i.failing_calls.extend(calls));
    }

    /// Forgets every token, as a revocation does: the next request with
    /// one is a 401.
    pub fn revoke_all_tokens(&self) {
        self.with(|i| i.tokens.clear());
    }

    /// Changes the identity's client secret (the old one stops working).
    pub fn rotate_client_secret(&self, secret: &str) {
        self.with(|i| i.client_secret = secret.to_owned());
    }

    /// Listing calls that reached the handler past authentication.
    pub fn listing_calls(&self) -> usize {
        self.with(|i| i.listing_calls)
    }

    /// Successful logins.
    pub fn logins(&self) -> usize {
        self.with(|i| i.logins)
    }

    /// Successful renewals.
    pub fn renewals(&self) -> usize {
        self.with(|i| i.renewals)
    }

    /// 429s answered.
    pub fn answered_429(&self) -> usize {
        self.with(|i| i.answered_429)
    }

    /// Every `(clientId, clientSecret)` a login carried.
    pub fn seen_credentials(&self) -> Vec<(String, String)> {
        self.with(|i| i.seen_credentials.clone())
    }

    /// Every access token issued.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.with(|i| i.issued_tokens.clone())
    }

    /// The query of every authenticated listing call.
    pub fn seen_queries(&self) -> Vec<HashMap<String, String>> {
        self.with(|i| i.seen_queries.clone())
    }

    /// Every secret value held, imported folders' included.
    pub fn values(&self) -> Vec<String> {
        self.with(|i| i.secrets.iter().map(|s| s.value.clone()).collect())
    }
}
