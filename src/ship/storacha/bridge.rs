//! The client side of Storacha's UCAN-HTTP bridge, as specified in
//! <https://github.com/storacha/specs/blob/main/w3-ucan-bridge.md> and shown
//! in <https://docs.storacha.network/how-to/http-bridge/>: a `POST` of a
//! JSON body `{"tasks": [[ability, space DID, arguments]]}` with the
//! `X-Auth-Secret` and `Authorization` headers that `storacha bridge
//! generate-tokens` prints; the answer is a dag-json array of receipts,
//! one per task, whose `p.out` is `{"ok": …}` or `{"error": …}`. CIDs are
//! written as dag-json links, `{"/": "bafy…"}`.

use std::time::Duration;

use cid::Cid;
use serde_json::{Value, json};

/// Why a bridge call failed.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The request did not get an answer (connection, timeout).
    #[error("no answer from the bridge {url}: {source}")]
    Transport {
        /// The bridge URL.
        url: String,
        /// The client's error.
        source: reqwest::Error,
    },
    /// The bridge refused the tokens (401/403).
    #[error(
        "the bridge {url} refused the tokens (HTTP {status}: {body}); generate new ones with `storacha bridge generate-tokens <space DID> --can store/add --can upload/add --can upload/list --can store/remove --can upload/remove` and update auth_secret / authorization"
    )]
    Unauthorized {
        /// The bridge URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The answer's body, shortened.
        body: String,
    },
    /// Any other non-2xx status.
    #[error("the bridge {url} answered HTTP {status}: {body}")]
    Status {
        /// The bridge URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The answer's body, shortened.
        body: String,
    },
    /// A 2xx answer that is not the documented receipt shape.
    #[error(
        "malformed answer from the bridge {url} to {ability}: {detail}; is `bridge` the Storacha bridge endpoint (https://up.storacha.network/bridge)?"
    )]
    Malformed {
        /// The bridge URL.
        url: String,
        /// The task's ability.
        ability: String,
        /// What is wrong.
        detail: String,
    },
    /// The service ran the task and returned an error.
    #[error("Storacha refused {ability}: {name}: {message}")]
    Refused {
        /// The task's ability.
        ability: String,
        /// The error's name.
        name: String,
        /// The error's message.
        message: String,
    },
}

impl BridgeError {
    /// Whether the same request may succeed if tried again.
    pub fn is_transient(&self) -> bool {
        match self {
            BridgeError::Transport { .. } => true,
            BridgeError::Status { status, .. } => {
                *status >= 500 || *status == 429 || *status == 408
            }
            BridgeError::Unauthorized { .. }
            | BridgeError::Malformed { .. }
            | BridgeError::Refused { .. } => false,
        }
    }
}

/// A dag-json link.
pub fn link(cid: &Cid) -> Value {
    json!({ "/": cid.to_string() })
}

/// Reads a dag-json link back.
pub fn parse_link(v: &Value) -> Option<Cid> {
    v.get("/")?.as_str()?.parse().ok()
}

/// A bridge endpoint with its tokens.
#[derive(Clone)]
pub struct Bridge {
    http: reqwest::Client,
    url: String,
    space: String,
    auth_secret: String,
    authorization: String,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("url", &self.url)
            .field("space", &self.space)
            .finish_non_exhaustive()
    }
}

fn shorten(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

impl Bridge {
    /// A client for `url`, invoking on `space` with the two tokens.
    pub fn new(
        http: reqwest::Client,
        url: &str,
        space: &str,
        auth_secret: &str,
        authorization: &str,
    ) -> Bridge {
        Bridge {
            http,
            url: url.to_owned(),
            space: space.to_owned(),
            auth_secret: auth_secret.to_owned(),
            authorization: authorization.to_owned(),
        }
    }

    /// Runs one task (`ability` on the space with `args`) and returns its
    /// receipt's `out.ok`.
    pub async fn invoke(
        &self,
        ability: &str,
        args: Value,
        timeout: Duration,
    ) -> Result<Value, BridgeError> {
        let body = json!({ "tasks": [[ability, self.space, args]] });
        let resp = self
            .http
            .post(&self.url)
            .timeout(timeout)
            .header("X-Auth-Secret", &self.auth_secret)
            .header("Authorization", &self.authorization)
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|source| BridgeError::Transport {
                url: self.url.clone(),
                source,
            })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|source| BridgeError::Transport {
            url: self.url.clone(),
            source,
        })?;
        if status == 401 || status == 403 {
            return Err(BridgeError::Unauthorized {
                url: self.url.clone(),
                status,
                body: shorten(&text),
            });
        }
        if !(200..300).contains(&status) {
            return Err(BridgeError::Status {
                url: self.url.clone(),
                status,
                body: shorten(&text),
            });
        }
        let malformed = |detail: &str| BridgeError::Malformed {
            url: self.url.clone(),
            ability: ability.to_owned(),
            detail: detail.to_owned(),
        };
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| malformed(&format!("not JSON ({e}): {}", shorten(&text))))?;
        let out = v
            .as_array()
            .and_then(|a| a.first())
            .and_then(|r| r.get("p"))
            .and_then(|p| p.get("out"))
            .ok_or_else(|| malformed("no receipt with p.out"))?;
        if let Some(ok) = out.get("ok") {
            return Ok(ok.clone());
        }
        if let Some(err) = out.get("error") {
            let s = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
            return Err(BridgeError::Refused {
                ability: ability.to_owned(),
                name: s("name"),
                message: s("message"),
            });
        }
        Err(malformed("p.out has neither ok nor error"))
    }
}
