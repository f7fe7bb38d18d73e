//! The `kind = "http"` transport's client: the publisher reads the
//! fleet's `published_seq` with `GET {url}/v1/instance?name=INSTANCE` and
//! sends each [`Batch`] with `POST {url}/v1/batches`, as JSON with a bearer
//! token (docs/FLEET.md, "HTTP transport"). The receiver (`pitr fleet
//! receive`, or a platform's own) applies them to the fleet database.
//!
//! Answers are hostile input: bodies are read up to [`MAX_ANSWER`],
//! messages cut to [`MAX_MESSAGE`], redirects not followed (the token
//! would go with them).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::FleetError;
use super::batch::Batch;
use super::schema::SCHEMA_VERSION;
use crate::backoff::causes;
use crate::config::FleetConfig;

/// The largest answer read from the receiver.
pub const MAX_ANSWER: usize = 64 * 1024;
/// The longest receiver message shown.
const MAX_MESSAGE: usize = 500;
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request may take: a batch is up to 500 statements, each
/// bounded by the receiver's statement timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// What `GET /v1/instance?name=INSTANCE` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceState {
    /// The instance asked about.
    pub instance: String,
    /// The commit sequence number the fleet reflects; `null` before the
    /// first complete publish.
    pub published_seq: Option<i64>,
    /// The fleet database's schema version.
    pub schema_version: i64,
}

/// An error answer's body.
#[derive(Deserialize)]
struct ErrorAnswer {
    error: String,
}

/// The client of one receiver.
pub struct Sender {
    http: reqwest::Client,
    url: String,
    token: String,
}

/// The certificates of `[fleet] ca_file` (PEM), read with a bound: a
/// file of certificates is small.
fn ca_certificates(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, String> {
    use std::io::Read;
    const MAX: u64 = 1 << 20;
    let what = |e: &dyn std::fmt::Display| format!("[fleet] ca_file {}: {e}", path.display());
    let mut pem = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX + 1).read_to_end(&mut pem))
        .map_err(|e| what(&e))?;
    if pem.len() as u64 > MAX {
        return Err(what(&"is over 1 MiB: give a PEM file of CA certificates"));
    }
    match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        Ok(_) => Err(what(
            &"holds no certificate: give the PEM file of the CA that signed the receiver's certificate",
        )),
        Err(e) => Err(what(&e)),
    }
}

impl Sender {
    /// A client of `cfg`'s receiver (`kind = "http"`).
    pub fn new(cfg: &FleetConfig) -> Result<Sender, FleetError> {
        let fail = |message: String| FleetError::Http {
            url: cfg.url.clone(),
            message,
        };
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("pitr/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &cfg.ca_file {
            for cert in ca_certificates(path).map_err(fail)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| fail(format!("cannot build an HTTP client: {e}")))?;
        Ok(Sender {
            http,
            url: cfg.url.trim_end_matches('/').to_owned(),
            token: cfg.token.clone().unwrap_or_default(),
        })
    }

    /// What the receiver says of `instance`.
    pub async fn instance(&self, instance: &str) -> Result<InstanceState, FleetError> {
        let url = format!("{}/v1/instance", self.url);
        let req = self.http.get(&url).query(&[("name", instance)]);
        let body = self.call(req, &url).await?;
        serde_json::from_slice(&body).map_err(|e| FleetError::Http {
            url,
            message: format!("the answer is not the instance's state: {e}"),
        })
    }

    /// The sequence number the fleet reflects for `instance` (`None`:
    /// nothing published yet); refuses a schema this pitr does not write.
    pub async fn published_seq(&self, instance: &str) -> Result<Option<i64>, FleetError> {
        let state = self.instance(instance).await?;
        let fix = match state.schema_version.cmp(&SCHEMA_VERSION) {
            std::cmp::Ordering::Equal => return Ok(state.published_seq),
            std::cmp::Ordering::Greater => {
                "upgrade this pitr to the version that migrated the fleet database"
            }
            std::cmp::Ordering::Less => {
                "the fleet database's DBA runs `pitr fleet migrate` against it (docs/FLEET.md)"
            }
        };
        Err(FleetError::SchemaVersion {
            found: state.schema_version,
            want: SCHEMA_VERSION,
            fix,
        })
    }

    /// Sends one batch; the receiver applies it in one transaction.
    pub async fn send(&self, batch: &Batch) -> Result<(), FleetError> {
        let url = format!("{}/v1/batches", self.url);
        let req = self.http.post(&url).json(batch);
        self.call(req, &url).await.map(drop)
    }

    /// Sends `req` with the token; the body of a 2xx answer, else the
    /// error the status calls for.
    async fn call(&self, req: reqwest::RequestBuilder, url: &str) -> Result<Vec<u8>, FleetError> {
        let http = |message: String| FleetError::Http {
            url: url.to_owned(),
            message,
        };
        let mut resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| http(causes(&e.without_url())))?;
        let status = resp.status();
        // Never sized by the receiver's Content-Length: grown as bytes
        // arrive, up to the bound.
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| http(causes(&e.without_url())))?
        {
            if body.len() + chunk.len() > MAX_ANSWER {
                return Err(http(format!(
                    "answered {status} with more than {MAX_ANSWER} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        if status.is_success() {
            return Ok(body);
        }
        let message = match serde_json::from_slice::<ErrorAnswer>(&body) {
            Ok(a) => a.error,
            Err(_) => String::from_utf8_lossy(&body).into_owned(),
        };
        let message: String = message.chars().take(MAX_MESSAGE).collect();
        let fix = match status.as_u16() {
            401 => {
                "Check [fleet] token_file: the receiver's tokens file must list this token's SHA-256 for the instance's role (docs/FLEET.md)"
            }
            403 => {
                "The token's role may not write this instance's rows: the DBA maps it with INSERT INTO pitr_fleet.instance_roles (role, instance), or fix [fleet] instance (docs/FLEET.md)"
            }
            _ => return Err(http(format!("answered {status}: {message}"))),
        };
        Err(FleetError::Refused {
            url: url.to_owned(),
            status: status.as_u16(),
            message,
            fix,
        })
    }
}
