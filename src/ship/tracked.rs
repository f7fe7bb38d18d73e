//! Per-destination health: every request a destination answers (or fails)
//! is recorded, so `/health` can say since when a destination has been
//! failing and `/metrics` can count failures. Sits under the retry layer, so
//! each try counts, and a destination that fails every try shows failing
//! from the first one rather than after the retries gave up.

use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use jiff::Timestamp;

use super::{Destination, ObjectMeta, PutOutcome, ShipError};

/// What is known about one destination's health.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DestinationState {
    /// The destination's name.
    pub name: String,
    /// The last request it answered.
    pub last_ok: Option<Timestamp>,
    /// Since when every request failed; `None` while it answers.
    pub failing_since: Option<Timestamp>,
    /// The newest failure and when it happened (kept after recovery, for the
    /// record).
    pub last_error: Option<String>,
    /// When `last_error` happened.
    pub last_error_at: Option<Timestamp>,
    /// Failed requests since start.
    pub failures: u64,
    /// Bytes written since start.
    pub bytes_written: u64,
    /// How long a small read (a head, or a get of at most
    /// `SMALL_READ` bytes) has taken lately, in microseconds: an
    /// exponentially weighted moving average, `None` until one was timed.
    /// Reads go to the fastest healthy destination first.
    pub read_latency_us: Option<u64>,
}

/// The largest read timed for [`DestinationState::read_latency_us`]:
/// larger reads measure bandwidth more than responsiveness, and would make a
/// destination that served a whole pack look slow.
pub const SMALL_READ: usize = 1 << 20;
/// The weight of the newest sample in the read latency average: a few
/// reads are enough to notice a destination that became slow.
const LATENCY_WEIGHT: f64 = 0.3;

/// A shared, updatable [`DestinationState`].
#[derive(Debug, Default)]
pub struct DestinationHealth {
    state: Mutex<DestinationState>,
}

impl DestinationHealth {
    /// A health record for `name`, with nothing seen yet.
    pub fn new(name: &str) -> Arc<DestinationHealth> {
        Arc::new(DestinationHealth {
            state: Mutex::new(DestinationState {
                name: name.to_owned(),
                ..Default::default()
            }),
        })
    }

    /// The current state.
    pub fn state(&self) -> DestinationState {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Folds one timed small read into the latency average.
    pub fn record_read_latency(&self, took: std::time::Duration) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        let sample = took.as_micros().min(u128::from(u64::MAX)) as f64;
        let avg = match s.read_latency_us {
            None => sample,
            Some(old) => old as f64 * (1.0 - LATENCY_WEIGHT) + sample * LATENCY_WEIGHT,
        };
        s.read_latency_us = Some(avg.round() as u64);
    }

    fn record<T>(&self, result: &Result<T, ShipError>, written: u64) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        let now = Timestamp::now();
        match result {
            // A missing object is an answer: the destination is reachable.
            Ok(_) | Err(ShipError::NotFound { .. }) | Err(ShipError::InvalidKey { .. }) => {
                s.last_ok = Some(now);
                s.failing_since = None;
                s.bytes_written += written;
                if written > 0 {
                    metrics::counter!("pitr_upload_bytes_total", "destination" => s.name.clone())
                        .increment(written);
                }
            }
            Err(e) => {
                s.failing_since.get_or_insert(now);
                s.last_error = Some(e.to_string());
                s.last_error_at = Some(now);
                s.failures += 1;
                metrics::counter!("pitr_upload_failures_total", "destination" => s.name.clone())
                    .increment(1);
            }
        }
    }
}

/// Wraps a destination so its answers are recorded in a
/// [`DestinationHealth`].
#[derive(Debug)]
pub struct Tracked<D> {
    inner: D,
    health: Arc<DestinationHealth>,
}

impl<D: Destination> Tracked<D> {
    /// Wraps `inner`, recording into `health`.
    pub fn new(inner: D, health: Arc<DestinationHealth>) -> Self {
        Tracked { inner, health }
    }

    /// The wrapped destination.
    pub fn inner(&self) -> &D {
        &self.inner
    }
}

impl<D> Tracked<D> {
    /// Times a read that was answered (a missing object is an answer too)
    /// and small enough to measure responsiveness.
    fn timed<T>(&self, r: &Result<T, ShipError>, began: Instant, len: impl Fn(&T) -> usize) {
        let small = match r {
            Ok(v) => len(v) <= SMALL_READ,
            Err(ShipError::NotFound { .. }) => true,
            Err(_) => false,
        };
        if small {
            self.health.record_read_latency(began.elapsed());
        }
    }
}

#[async_trait]
impl<D: Destination> Destination for Tracked<D> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn prepare(&self) -> Result<(), ShipError> {
        let r = self.inner.prepare().await;
        self.health.record(&r, 0);
        r
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome, ShipError> {
        let len = data.len() as u64;
        let r = self.inner.put_if_absent(key, data).await;
        let written = matches!(r, Ok(PutOutcome::Created)).then_some(len);
        self.health.record(&r, written.unwrap_or(0));
        r
    }

    async fn get(&self, key: &str) -> Result<Bytes, ShipError> {
        let began = Instant::now();
        let r = self.inner.get(key).await;
        self.timed(&r, began, |b| b.len());
        self.health.record(&r, 0);
        r
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, ShipError> {
        let began = Instant::now();
        let r = self.inner.get_range(key, range).await;
        self.timed(&r, began, |b| b.len());
        self.health.record(&r, 0);
        r
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, ShipError> {
        let began = Instant::now();
        let r = self.inner.head(key).await;
        self.timed(&r, began, |_| 0);
        self.health.record(&r, 0);
        r
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ShipError> {
        let r = self.inner.list(prefix).await;
        self.health.record(&r, 0);
        r
    }

    async fn delete(&self, key: &str) -> Result<(), ShipError> {
        let r = self.inner.delete(key).await;
        self.health.record(&r, 0);
        r
    }

    fn content_id(&self, key: &str, data: &[u8]) -> Option<String> {
        self.inner.content_id(key, data)
    }

    async fn stored_content_id(&self, key: &str) -> Result<Option<String>, ShipError> {
        self.inner.stored_content_id(key).await
    }
}
