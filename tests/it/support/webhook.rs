//! A real HTTP webhook receiver on loopback (axum), for the alert tests and
//! the sidecar's end-to-end test: it records every POST (path, answer, JSON
//! body) and answers 200, or the statuses it was told to answer next.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    /// The request path, e.g. `/hook`.
    pub path: String,
    /// The status it was answered with.
    pub status: u16,
    /// The body, parsed as JSON (`Null` if it was not JSON).
    pub body: serde_json::Value,
}

#[derive(Default)]
struct Shared {
    got: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<u16>>,
}

/// A running receiver; stops on drop.
pub struct WebhookReceiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn receive(State(s): State<Arc<Shared>>, uri: Uri, body: Bytes) -> StatusCode {
    let status = s.script.lock().unwrap().pop_front().unwrap_or(200);
    s.got.lock().unwrap().push(Received {
        path: uri.path().to_owned(),
        status,
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    });
    StatusCode::from_u16(status).unwrap()
}

impl WebhookReceiver {
    /// Starts on a free port of 127.0.0.1, on the current tokio runtime.
    pub async fn start() -> WebhookReceiver {
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new()
            .route("/{*path}", axum::routing::post(receive))
            .with_state(shared.clone());
        let (addr, stop) = super::serve(app).await;
        WebhookReceiver {
            addr,
            shared,
            _stop: stop,
        }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The next requests get these statuses, in order; then 200 again.
    pub fn answer_next(&self, statuses: &[u16]) {
        self.shared.script.lock().unwrap().extend(statuses);
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.got.lock().unwrap().clone()
    }

    /// The bodies of the requests to `path` answered 2xx.
    pub fn accepted(&self, path: &str) -> Vec<serde_json::Value> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path && (200..300).contains(&r.status))
            .map(|r| r.body)
            .collect()
    }

    /// Waits (at most `timeout`) until `path` accepted at least `n`
    /// requests; returns the accepted bodies either way.
    pub async fn wait_accepted(
        &self,
        path: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.accepted(path);
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
