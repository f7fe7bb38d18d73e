//! An Infisical project's secrets as one snapshot: a machine identity logs
//! in with Universal Auth, lists every secret of the configured
//! environments under `secret_path` (recursively), and [`export`] returns
//! them in one canonical JSON form, so that an unchanged project gives the
//! same bytes and the repository stores nothing new.
//!
//! # The API this module speaks, and where it was read
//!
//! Read from Infisical's own repository (`Infisical/infisical`): the API
//! reference pages `docs/api-reference/endpoints/universal-auth/login.mdx`
//! (`POST /api/v1/auth/universal-auth/login`),
//! `.../universal-auth/renew-access-token.mdx` (`POST
//! /api/v1/auth/token/renew`) and `.../secrets/list.mdx` (`GET
//! /api/v4/secrets`) are generated from the backend's route schemas, which
//! were read for the fields:
//!
//! - `backend/src/server/routes/v1/identity-universal-auth-router.ts`:
//!   login takes a JSON body `{clientId, clientSecret}` and answers
//!   `{accessToken, expiresIn, accessTokenMaxTTL, tokenType: "Bearer"}`
//!   (seconds).
//! - `backend/src/server/routes/v1/identity-access-token-router.ts` and
//!   `backend/src/services/identity-access-token/identity-access-token-service.ts`:
//!   renewal takes `{accessToken}` and answers the same shape with the same
//!   token, its TTL counted again from now; it is refused with 401 once the
//!   token expired or when the renewed TTL would pass `accessTokenMaxTTL`
//!   counted from the login. Then only a new login helps, which is what
//!   this client does. A TTL of 0 means the token does not expire.
//! - `backend/src/server/routes/v4/secret-router.ts` (`listSecretsV4`): the
//!   query takes `projectId`, `environment` (a slug), `secretPath`
//!   (default `/`), and the text booleans `recursive`,
//!   `include_imports`, `expandSecretReferences` and `viewSecretValue`
//!   (default true). The answer is `{secrets: [...], imports?: [...]}`;
//!   each secret has `secretKey`, `secretValue`, `secretComment`,
//!   `secretPath` (with `recursive`), `type`, `secretValueHidden` and
//!   `tags: [{id, slug, name, color}]`; each import has `environment`,
//!   `secretPath` and `secrets`. **The endpoint has no pagination**: no
//!   offset, limit or cursor in the query, no continuation in the answer;
//!   one call returns the whole environment. So this client makes one call
//!   per environment and bounds the answer's size instead
//!   ([`MAX_RESPONSE_BYTES`]).
//! - `backend/src/server/plugins/error-handler.ts` and
//!   `backend/src/server/routes/sanitizedSchemas.ts`
//!   (`DefaultResponseErrorsSchema`): errors are JSON `{reqId, statusCode,
//!   message, error}`. An expired or unknown identity token is a 401
//!   (`UnauthorizedError`); a token whose JWT itself expired is a 403 with
//!   `error: "TokenError"`. Both make the client log in again, once.
//! - `backend/src/server/config/rateLimiter.ts` with `@fastify/rate-limit`:
//!   a rate-limited request is answered 429 (`error: "RateLimitError"`,
//!   "Please try again in N seconds") with a `retry-after` header in
//!   seconds. The retry layer ([`crate::backoff`]) waits at least that long.
//!
//! # Imports and references: kept as references
//!
//! A folder may import another folder's secrets, and a value may refer to
//! another secret (`${prod.db.PASSWORD}`). The snapshot keeps both as
//! written: values are listed with `expandSecretReferences=false`, and of
//! each import only where it comes from (its environment and path) is kept,
//! never the imported values. A restore pushed back into Infisical then
//! reproduces this project's own secrets and its imports and references
//! keep pointing at their sources, instead of freezing copies of values
//! that belong elsewhere (and may live in folders, or projects, this
//! identity should not write, or that are backed up on their own). The
//! listing names each imported folder but not which of the listed folders
//! imports it, so an import is recorded per environment.
//!
//! # Secrets stay secret
//!
//! The client secret, the access token and every secret value are held in
//! types whose `Debug` redacts them, never logged, and scrubbed from any
//! text the server sends back before it goes into an error. A response
//! that would need more than [`MAX_RESPONSE_BYTES`] is an error, not an
//! allocation. An export that fails anywhere (a 500 on the second
//! environment, a timeout) returns an error and no bytes: a partial
//! snapshot is never produced.

pub mod render;

use std::fmt;
use std::time::{Duration, Instant};

use backon::Retryable;
use serde::{Deserialize, Serialize};

use crate::backoff::Backoff;
use crate::config::InfisicalConfig;

/// Infisical Cloud (US); `https://eu.infisical.com` is the EU region, and
/// self-hosted instances have their own URL.
pub const DEFAULT_SITE_URL: &str = "https://app.infisical.com";

/// The folder exported when the config names none: the whole environment.
pub const DEFAULT_SECRET_PATH: &str = "/";

/// The most one answer may hold. The listing is not paginated, so a whole
/// environment comes in one answer; 64 MiB is thousands of times what a
/// large project holds, and a bound on what pitr allocates for a server
/// that misbehaves.
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// How requests are retried on a 429, a 5xx or a lost connection: half a
/// second doubling to 30 s, five retries (a 429's `Retry-After` is waited
/// out in full, up to [`MAX_RETRY_AFTER`]).
pub const API_RETRY: Backoff =
    Backoff::forever(Duration::from_millis(500), Duration::from_secs(30)).times(5);

/// The longest `Retry-After` honoured; Infisical's windows are a minute.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// The format tag of the snapshot's JSON. It changes only when the form
/// does, never between two exports of the same project.
pub const FORMAT: &str = "pitr.infisical.v1";

/// What [`export`] needs: the `[[infisical]]` entry (where the project
/// is, how to log in; its `Debug` redacts the client secret) and how hard
/// to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfisicalOptions {
    /// The entry. Its `timeout` bounds one export, retries included, and
    /// each request.
    pub entry: InfisicalConfig,
    /// How failed requests are retried.
    pub retry: Backoff,
    /// The most one answer may hold ([`MAX_RESPONSE_BYTES`]).
    pub max_response_bytes: usize,
}

impl InfisicalOptions {
    /// An `[[infisical]]` entry's settings, with the API's retry policy
    /// and response bound.
    pub fn of_config(c: &InfisicalConfig) -> InfisicalOptions {
        InfisicalOptions {
            entry: c.clone(),
            retry: API_RETRY,
            max_response_bytes: MAX_RESPONSE_BYTES,
        }
    }
}

/// What went wrong talking to Infisical. No variant holds the client
/// secret, a token or a secret value: server text is scrubbed of them.
#[derive(Debug, thiserror::Error)]
pub enum InfisicalError {
    /// The HTTP client could not be built.
    #[error("[[infisical]] {name}: no HTTP client ({message})")]
    Setup {
        /// The source.
        name: String,
        /// Why.
        message: String,
    },
    /// No answer: connection refused, DNS, TLS, a request timeout.
    #[error(
        "[[infisical]] {name}: no answer from {url} ({message}). Check site_url and that the instance is reachable from here"
    )]
    Unreachable {
        /// The source.
        name: String,
        /// The request's URL (no credentials are in URLs).
        url: String,
        /// The transport's error.
        message: String,
    },
    /// Login or renewal refused: the credentials are wrong or revoked.
    #[error(
        "[[infisical]] {name}: Universal Auth login at {url} refused ({status} {error}: {message}). Check client_id and the client secret (client_secret_file): the machine identity must have Universal Auth with an unexpired, unrevoked client secret, and this host's address among its trusted IPs"
    )]
    Login {
        /// The source.
        name: String,
        /// The login URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// Infisical's `error` field.
        error: String,
        /// Infisical's `message` field, scrubbed.
        message: String,
    },
    /// Any other answer than success.
    #[error("[[infisical]] {name}: {url} answered {status} {error}: {message}. {}", hint(*status))]
    Status {
        /// The source.
        name: String,
        /// The request's URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// Infisical's `error` field.
        error: String,
        /// Infisical's `message` field, scrubbed.
        message: String,
        /// The `Retry-After` of a 429 (or 503).
        retry_after: Option<Duration>,
    },
    /// A redirect, not followed: the request carries credentials.
    #[error(
        "[[infisical]] {name}: {url} redirected to {location}; pitr does not follow redirects with credentials. Set site_url to the final address"
    )]
    Redirected {
        /// The source.
        name: String,
        /// The request's URL.
        url: String,
        /// Where it pointed.
        location: String,
    },
    /// An answer larger than the bound.
    #[error(
        "[[infisical]] {name}: the answer of {url} exceeds {limit} bytes, the most pitr reads. Export fewer environments or a narrower secret_path per [[infisical]] entry"
    )]
    TooLarge {
        /// The source.
        name: String,
        /// The request's URL.
        url: String,
        /// The bound.
        limit: usize,
    },
    /// An answer that is not the documented JSON.
    #[error(
        "[[infisical]] {name}: the answer of {url} is not what Infisical's API reference describes (JSON {category} error at line {line}, column {column}). Check that site_url is an Infisical instance"
    )]
    Malformed {
        /// The source.
        name: String,
        /// The request's URL.
        url: String,
        /// serde_json's category (syntax, data, eof); its message is not
        /// kept, since it may quote a value.
        category: String,
        /// Where in the answer.
        line: usize,
        /// Where in the line.
        column: usize,
    },
    /// The identity may list secrets but not read their values: a
    /// snapshot of masked values would restore nothing.
    #[error(
        "[[infisical]] {name}: the machine identity may list the secrets of environment {environment:?} but not read their values (secretValueHidden). Give its project role read access to secret values, or the snapshot would hold masks"
    )]
    ValueHidden {
        /// The source.
        name: String,
        /// The environment.
        environment: String,
    },
    /// The export did not finish within `timeout`.
    #[error(
        "[[infisical]] {name}: the export did not finish within {seconds} s (timeout); no snapshot was taken. Raise timeout, or check the instance's latency and rate limits"
    )]
    Timeout {
        /// The source.
        name: String,
        /// The limit.
        seconds: u64,
    },
}

impl InfisicalError {
    /// Whether trying the same request again may succeed: no answer, a
    /// 429, a 408 or a 5xx.
    pub fn is_retryable(&self) -> bool {
        match self {
            InfisicalError::Unreachable { .. } => true,
            InfisicalError::Status { status, .. } => {
                *status == 429 || *status == 408 || *status >= 500
            }
            _ => false,
        }
    }

    /// The wait the server asked for, if any.
    fn retry_after(&self) -> Option<Duration> {
        match self {
            InfisicalError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the token was refused: 401, or 403 `TokenError` (an expired
    /// JWT), so that logging in again may help.
    fn is_token_refused(&self) -> bool {
        matches!(self, InfisicalError::Status { status: 401, .. })
            || matches!(self, InfisicalError::Status { status: 403, error, .. } if error == "TokenError")
    }
}

/// One secret as the snapshot holds it. `Debug` redacts the value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    /// The environment's slug.
    pub environment: String,
    /// The folder (`/`, `/db`).
    pub path: String,
    /// The key (`DATABASE_URL`).
    pub key: String,
    /// The value as written, references (`${…}`) not expanded.
    pub value: String,
    /// The comment (empty when none).
    pub comment: String,
    /// The tags' slugs, sorted.
    pub tags: Vec<String>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("environment", &self.environment)
            .field("path", &self.path)
            .field("key", &self.key)
            .field("value", &"(redacted)")
            .field("comment", &self.comment)
            .field("tags", &self.tags)
            .finish()
    }
}

/// A folder an exported environment imports, kept as a reference.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Import {
    /// The exported environment that imports it.
    pub environment: String,
    /// The imported folder's environment slug.
    pub from_environment: String,
    /// The imported folder's path.
    pub from_path: String,
}

/// A whole export. [`Snapshot::canonical`] orders it; [`Snapshot::to_json`]
/// writes the bytes the repository stores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// [`FORMAT`].
    pub format: String,
    /// The project's id.
    pub project_id: String,
    /// The folder exported, recursively.
    pub secret_path: String,
    /// The environments exported, sorted.
    pub environments: Vec<String>,
    /// Every secret, sorted by environment, path, key.
    pub secrets: Vec<Secret>,
    /// Every import, sorted.
    pub imports: Vec<Import>,
}

impl Snapshot {
    /// An empty snapshot of `project_id`.
    pub fn new(project_id: &str, secret_path: &str, environments: &[String]) -> Snapshot {
        Snapshot {
            format: FORMAT.to_owned(),
            project_id: project_id.to_owned(),
            secret_path: secret_path.to_owned(),
            environments: environments.to_vec(),
            secrets: Vec::new(),
            imports: Vec::new(),
        }
    }

    /// The same snapshot in its one order: environments, tags and imports
    /// sorted and without repeats; secrets sorted by (environment, path,
    /// key), ties by value and comment so that even a server answering
    /// the same key twice gives one order.
    pub fn canonical(mut self) -> Snapshot {
        self.environments.sort();
        self.environments.dedup();
        for s in &mut self.secrets {
            s.tags.sort();
            s.tags.dedup();
        }
        self.secrets.sort_by(|a, b| {
            (
                &a.environment,
                &a.path,
                &a.key,
                &a.value,
                &a.comment,
                &a.tags,
            )
                .cmp(&(
                    &b.environment,
                    &b.path,
                    &b.key,
                    &b.value,
                    &b.comment,
                    &b.tags,
                ))
        });
        self.secrets.dedup();
        self.imports.sort();
        self.imports.dedup();
        self
    }

    /// The bytes: pretty JSON, fields in declaration order, a final
    /// newline. Equal snapshots give equal bytes.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain strings and vectors into memory cannot fail.
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Reads a snapshot back (for restores).
    pub fn from_json(bytes: &[u8]) -> Result<Snapshot, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// The answer to a login or a renewal.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenAnswer {
    access_token: String,
    expires_in: u64,
    #[serde(rename = "accessTokenMaxTTL")]
    access_token_max_ttl: u64,
}

/// The answer to a listing; only the fields pitr keeps.
#[derive(Deserialize)]
struct ListAnswer {
    secrets: Vec<ListedSecret>,
    #[serde(default)]
    imports: Vec<ListedImport>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListedSecret {
    secret_key: String,
    secret_value: String,
    #[serde(default)]
    secret_comment: Option<String>,
    #[serde(default)]
    secret_path: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    secret_value_hidden: bool,
    #[serde(default)]
    tags: Option<Vec<ListedTag>>,
}

#[derive(Deserialize)]
struct ListedTag {
    slug: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListedImport {
    environment: String,
    secret_path: String,
}

/// Infisical's error body.
#[derive(Deserialize)]
struct ErrorAnswer {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    message: Option<serde_json::Value>,
}

/// An access token and when it stops working.
struct Token {
    value: String,
    /// When to renew: some way before the TTL ends; `None`: no TTL.
    renew_at: Option<Instant>,
    /// Whether a renewal can still extend it (its TTL fits before the max
    /// TTL counted from the login).
    renewable_until: Option<Instant>,
    ttl: Duration,
}

impl Token {
    fn new(answer: &TokenAnswer, logged_in: Instant) -> Token {
        let now = Instant::now();
        let ttl = Duration::from_secs(answer.expires_in);
        Token {
            value: answer.access_token.clone(),
            renew_at: (!ttl.is_zero()).then(|| now + ttl - renew_margin(ttl)),
            renewable_until: (answer.access_token_max_ttl > 0)
                .then(|| logged_in + Duration::from_secs(answer.access_token_max_ttl)),
            ttl,
        }
    }

    /// Whether it is time to renew (or log in again).
    fn due(&self) -> bool {
        self.renew_at.is_some_and(|at| Instant::now() >= at)
    }

    /// Whether a renewal would be accepted: the renewed TTL must end
    /// before the max TTL does.
    fn renewable(&self) -> bool {
        self.renewable_until
            .is_none_or(|until| Instant::now() + self.ttl < until)
    }
}

/// How long before the end of its TTL a token is renewed: a fifth of the
/// TTL, at most a minute, so a slow request does not outlive it.
fn renew_margin(ttl: Duration) -> Duration {
    (ttl / 5).min(Duration::from_secs(60))
}

/// A logged-in session with one Infisical instance. `Debug` shows no
/// credential.
pub struct Client {
    name: String,
    base: String,
    http: reqwest::Client,
    client_id: String,
    client_secret: String,
    retry: Backoff,
    max_response_bytes: usize,
    token: Option<Token>,
    /// When the current token came from a login (renewals keep it).
    logged_in: Instant,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.name)
            .field("base", &self.base)
            .field("client_id", &self.client_id)
            .field("logged_in", &self.token.is_some())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `opts`' instance; it logs in at its first request.
    pub fn new(opts: &InfisicalOptions) -> Result<Client, InfisicalError> {
        let http = reqwest::Client::builder()
            .timeout(opts.entry.timeout)
            .connect_timeout(opts.entry.timeout.min(Duration::from_secs(30)))
            // A redirect would carry the client secret or the token to
            // wherever it points.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("pitr/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| InfisicalError::Setup {
                name: opts.entry.name.clone(),
                message: e.to_string(),
            })?;
        Ok(Client {
            name: opts.entry.name.clone(),
            base: opts.entry.site_url.trim_end_matches('/').to_owned(),
            http,
            client_id: opts.entry.client_id.clone(),
            client_secret: opts.entry.client_secret.clone(),
            retry: opts.retry,
            max_response_bytes: opts.max_response_bytes,
            token: None,
            logged_in: Instant::now(),
        })
    }

    /// Logs in with Universal Auth and keeps the token.
    pub async fn login(&mut self) -> Result<(), InfisicalError> {
        let url = format!("{}/api/v1/auth/universal-auth/login", self.base);
        let body = serde_json::json!({
            "clientId": self.client_id,
            "clientSecret": self.client_secret,
        });
        let started = Instant::now();
        let answer: TokenAnswer = self
            .call(&url, || self.http.post(&url).json(&body))
            .await
            .map_err(|e| self.as_login_error(e))?;
        self.logged_in = started;
        self.token = Some(Token::new(&answer, started));
        tracing::debug!(source = %self.name, expires_in = answer.expires_in, "logged in to Infisical");
        Ok(())
    }

    /// Renews the token (its TTL starts again); a token that cannot be
    /// renewed any more, or a refused renewal, means a new login.
    pub async fn renew(&mut self) -> Result<(), InfisicalError> {
        let Some(token) = self.token.as_ref().filter(|t| t.renewable()) else {
            return self.login().await;
        };
        let url = format!("{}/api/v1/auth/token/renew", self.base);
        let body = serde_json::json!({ "accessToken": token.value });
        match self
            .call::<TokenAnswer>(&url, || self.http.post(&url).json(&body))
            .await
        {
            Ok(answer) => {
                self.token = Some(Token::new(&answer, self.logged_in));
                tracing::debug!(source = %self.name, expires_in = answer.expires_in, "renewed the Infisical token");
                Ok(())
            }
            Err(e) if !e.is_retryable() => {
                tracing::debug!(source = %self.name, "renewal refused, logging in again: {e}");
                self.login().await
            }
            Err(e) => Err(e),
        }
    }

    /// A token good for the next request: logs in or renews first when
    /// needed.
    async fn token(&mut self) -> Result<String, InfisicalError> {
        match &self.token {
            None => self.login().await?,
            Some(t) if t.due() => self.renew().await?,
            Some(_) => {}
        }
        Ok(self
            .token
            .as_ref()
            .map(|t| t.value.clone())
            .unwrap_or_default())
    }

    /// Every secret of `environment` under `secret_path` (recursively) and
    /// the folders it imports. A refused token gets one new login.
    pub async fn list(
        &mut self,
        project_id: &str,
        environment: &str,
        secret_path: &str,
    ) -> Result<(Vec<Secret>, Vec<Import>), InfisicalError> {
        let url = format!("{}/api/v4/secrets", self.base);
        let query = [
            ("projectId", project_id),
            ("environment", environment),
            ("secretPath", secret_path),
            ("recursive", "true"),
            ("include_imports", "true"),
            // References stay as written (module doc, "Imports").
            ("expandSecretReferences", "false"),
            ("viewSecretValue", "true"),
        ];
        let mut relogged = false;
        let answer: ListAnswer = loop {
            let token = self.token().await?;
            let result = self
                .call(&url, || {
                    self.http.get(&url).query(&query).bearer_auth(&token)
                })
                .await;
            match result {
                Err(e) if e.is_token_refused() && !relogged => {
                    tracing::debug!(source = %self.name, "token refused, logging in again: {e}");
                    relogged = true;
                    self.token = None;
                }
                other => break other?,
            }
        };
        let mut secrets = Vec::with_capacity(answer.secrets.len());
        for s in answer.secrets {
            // Personal overrides belong to users, not to the project; a
            // machine identity has none, and they would shadow shared keys.
            if s.kind.as_deref().is_some_and(|k| k != "shared") {
                continue;
            }
            if s.secret_value_hidden {
                return Err(InfisicalError::ValueHidden {
                    name: self.name.clone(),
                    environment: environment.to_owned(),
                });
            }
            secrets.push(Secret {
                environment: environment.to_owned(),
                path: s.secret_path.unwrap_or_else(|| secret_path.to_owned()),
                key: s.secret_key,
                value: s.secret_value,
                comment: s.secret_comment.unwrap_or_default(),
                tags: s
                    .tags
                    .unwrap_or_default()
                    .into_iter()
                    .map(|t| t.slug)
                    .collect(),
            });
        }
        let imports = answer
            .imports
            .into_iter()
            .map(|i| Import {
                environment: environment.to_owned(),
                from_environment: i.environment,
                from_path: i.secret_path,
            })
            .collect();
        Ok((secrets, imports))
    }

    /// Sends the request `build` makes, retrying what may succeed later,
    /// and decodes the answer.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<T, InfisicalError> {
        let max_delay = MAX_RETRY_AFTER;
        let body = (|| async { self.once(url, build()).await })
            .retry(self.retry.builder())
            .when(InfisicalError::is_retryable)
            // A rate-limited answer says how long to wait: wait at least
            // that, so the next try is not refused again.
            .adjust(|e, wait| match (e.retry_after(), wait) {
                (Some(asked), Some(wait)) => Some(wait.max(asked.min(max_delay))),
                (_, wait) => wait,
            })
            .notify(|e, wait| {
                tracing::warn!(
                    source = %self.name,
                    "Infisical request failed, retrying in {:.1}s: {e}",
                    wait.as_secs_f64()
                );
            })
            .await?;
        serde_json::from_slice(&body).map_err(|e| InfisicalError::Malformed {
            name: self.name.clone(),
            url: url.to_owned(),
            category: format!("{:?}", e.classify()).to_ascii_lowercase(),
            line: e.line(),
            column: e.column(),
        })
    }

    /// One try: the body of a 2xx answer, or the error the answer means.
    async fn once(
        &self,
        url: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<Vec<u8>, InfisicalError> {
        let unreachable = |e: reqwest::Error| InfisicalError::Unreachable {
            name: self.name.clone(),
            url: url.to_owned(),
            message: crate::backoff::causes(&e.without_url()),
        };
        let mut resp = request.send().await.map_err(unreachable)?;
        let status = resp.status();
        if status.is_redirection() {
            return Err(InfisicalError::Redirected {
                name: self.name.clone(),
                url: url.to_owned(),
                location: resp
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("(no location)")
                    .to_owned(),
            });
        }
        let retry_after = crate::backoff::retry_after(resp.headers());
        // Never sized by the server's Content-Length: grown as bytes
        // arrive, up to the bound.
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(unreachable)? {
            if body.len() + chunk.len() > self.max_response_bytes {
                return Err(InfisicalError::TooLarge {
                    name: self.name.clone(),
                    url: url.to_owned(),
                    limit: self.max_response_bytes,
                });
            }
            body.extend_from_slice(&chunk);
        }
        if status.is_success() {
            return Ok(body);
        }
        let (error, message) = match serde_json::from_slice::<ErrorAnswer>(&body) {
            Ok(a) => (
                a.error.unwrap_or_default(),
                match a.message {
                    Some(serde_json::Value::String(s)) => s,
                    Some(other) => other.to_string(),
                    None => String::new(),
                },
            ),
            Err(_) => (String::new(), String::from_utf8_lossy(&body).into_owned()),
        };
        let code = status.as_u16();
        Err(InfisicalError::Status {
            name: self.name.clone(),
            url: url.to_owned(),
            status: code,
            error: shorten(&self.scrub(&error)),
            message: shorten(&self.scrub(&message)),
            retry_after,
        })
    }

    /// `text` without the client secret or the token in it.
    fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        let token = self.token.as_ref().map(|t| t.value.as_str());
        for secret in [Some(self.client_secret.as_str()), token]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
        {
            out = out.replace(secret, "(redacted)");
        }
        out
    }

    /// A refused login as a login error; other failures as they are.
    fn as_login_error(&self, e: InfisicalError) -> InfisicalError {
        match e {
            InfisicalError::Status {
                url,
                status,
                error,
                message,
                ..
            } if (400..500).contains(&status) && status != 429 => InfisicalError::Login {
                name: self.name.clone(),
                url,
                status,
                error,
                message,
            },
            e => e,
        }
    }
}

/// What to do about a status.
fn hint(status: u16) -> &'static str {
    match status {
        401 => {
            "The access token was refused twice; check the machine identity's access token trusted IPs and TTLs"
        }
        403 => {
            "Give the machine identity a project role that may read secrets (and secret values) of these environments and path"
        }
        404 => "Check project_id, the environment slugs and secret_path",
        400 | 422 => "Check project_id, the environment slugs and secret_path",
        429 => {
            "Infisical's rate limit; pitr retried with the wait it asked for. Take snapshots less often or raise the instance's limits"
        }
        _ if status >= 500 => "The instance failed; pitr retried. Check its status and logs",
        _ => "Check the [[infisical]] entry",
    }
}

/// At most 300 characters of server text for a message.
fn shorten(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(300) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// Logs in, lists every configured environment and returns the canonical
/// JSON of the whole project ([`Snapshot::to_json`]). Any failure, or not
/// finishing within `opts.entry.timeout`, is an error and no bytes.
pub async fn export(opts: &InfisicalOptions) -> Result<Vec<u8>, InfisicalError> {
    let work = async {
        let mut client = Client::new(opts)?;
        let mut snapshot = Snapshot::new(
            &opts.entry.project_id,
            &opts.entry.secret_path,
            &opts.entry.environments,
        );
        let mut environments = opts.entry.environments.clone();
        environments.sort();
        environments.dedup();
        for env in &environments {
            let (secrets, imports) = client
                .list(&opts.entry.project_id, env, &opts.entry.secret_path)
                .await?;
            snapshot.secrets.extend(secrets);
            snapshot.imports.extend(imports);
        }
        let snapshot = snapshot.canonical();
        tracing::info!(
            source = %opts.entry.name,
            environments = snapshot.environments.len(),
            secrets = snapshot.secrets.len(),
            imports = snapshot.imports.len(),
            "exported the Infisical project"
        );
        Ok(snapshot.to_json())
    };
    tokio::time::timeout(opts.entry.timeout, work)
        .await
        .unwrap_or_else(|_| {
            Err(InfisicalError::Timeout {
                name: opts.entry.name.clone(),
                seconds: opts.entry.timeout.as_secs(),
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(env: &str, path: &str, key: &str, value: &str, tags: &[&str]) -> Secret {
        Secret {
            environment: env.to_owned(),
            path: path.to_owned(),
            key: key.to_owned(),
            value: value.to_owned(),
            comment: String::new(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    fn sample(order: &[usize]) -> Snapshot {
        let all = [
            secret("prod", "/", "B", "2", &["z", "a"]),
            secret("dev", "/db", "A", "3", &[]),
            secret("dev", "/", "Z", "1", &["x"]),
            secret("dev", "/", "A", "0", &["b", "a", "b"]),
        ];
        let mut s = Snapshot::new("p1", "/", &["prod".to_owned(), "dev".to_owned()]);
        s.secrets = order.iter().map(|i| all[*i].clone()).collect();
        s.imports = vec![
            Import {
                environment: "prod".into(),
                from_environment: "shared".into(),
                from_path: "/".into(),
            },
            Import {
                environment: "dev".into(),
                from_environment: "shared".into(),
                from_path: "/".into(),
            },
        ];
        s
    }

    #[test]
    fn canonical_form_sorts_by_environment_path_key() {
        let s = sample(&[0, 1, 2, 3]).canonical();
        let order: Vec<(&str, &str, &str)> = s
            .secrets
            .iter()
            .map(|s| (s.environment.as_str(), s.path.as_str(), s.key.as_str()))
            .collect();
        assert_eq!(
            order,
            [
                ("dev", "/", "A"),
                ("dev", "/", "Z"),
                ("dev", "/db", "A"),
                ("prod", "/", "B")
            ]
        );
        assert_eq!(s.environments, ["dev", "prod"]);
        assert_eq!(s.secrets[0].tags, ["a", "b"], "tags sorted, no repeats");
        assert_eq!(s.imports[0].environment, "dev");
    }

    #[test]
    fn canonical_bytes_do_not_depend_on_the_order_of_the_answer() {
        let a = sample(&[0, 1, 2, 3]).canonical().to_json();
        let b = sample(&[3, 2, 1, 0]).canonical().to_json();
        let c = sample(&[2, 0, 3, 1]).canonical().to_json();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert!(a.ends_with(b"}\n"));
        // And they read back to the same snapshot.
        let back = Snapshot::from_json(&a).expect("reads back");
        assert_eq!(back.clone().canonical().to_json(), a);
        assert_eq!(back.format, FORMAT);
    }

    #[test]
    fn canonical_form_pins_its_fields() {
        let mut s = Snapshot::new("p1", "/", &["dev".to_owned()]);
        s.secrets = vec![secret("dev", "/", "K", "v \"quoted\"\n", &["t"])];
        let text = String::from_utf8(s.canonical().to_json()).expect("utf-8");
        assert_eq!(
            text,
            r#"{
  "format": "pitr.infisical.v1",
  "project_id": "p1",
  "secret_path": "/",
  "environments": [
    "dev"
  ],
  "secrets": [
    {
      "environment": "dev",
      "path": "/",
      "key": "K",
      "value": "v \"quoted\"\n",
      "comment": "",
      "tags": [
        "t"
      ]
    }
  ],
  "imports": []
}
"#
        );
    }

    #[test]
    fn a_changed_value_changes_the_bytes() {
        let a = sample(&[0, 1, 2, 3]).canonical().to_json();
        let mut changed = sample(&[0, 1, 2, 3]);
        changed.secrets[1].value.push('!');
        assert_ne!(a, changed.canonical().to_json());
    }

    #[test]
    fn debug_redacts_values_and_credentials() {
        let s = secret("dev", "/", "K", "hunter2-value", &[]);
        assert!(!format!("{s:?}").contains("hunter2"));
        let opts = InfisicalOptions::of_config(&InfisicalConfig {
            name: "n".into(),
            site_url: DEFAULT_SITE_URL.into(),
            project_id: "p".into(),
            environments: vec!["dev".into()],
            secret_path: "/".into(),
            client_id: "id".into(),
            client_secret: "hunter2-secret".into(),
            schedule: None,
            timeout: Duration::from_secs(1),
            max_age: None,
        });
        assert!(!format!("{opts:?}").contains("hunter2"));
    }

    #[test]
    fn renewal_comes_before_the_end_of_the_ttl() {
        assert_eq!(
            renew_margin(Duration::from_secs(10)),
            Duration::from_secs(2)
        );
        assert_eq!(
            renew_margin(Duration::from_secs(7200)),
            Duration::from_secs(60)
        );
        let answer = TokenAnswer {
            access_token: "t".into(),
            expires_in: 0,
            access_token_max_ttl: 0,
        };
        let t = Token::new(&answer, Instant::now());
        assert!(!t.due() && t.renewable(), "a TTL of 0 never expires");
    }
}
