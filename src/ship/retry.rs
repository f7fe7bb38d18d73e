//! The retry layer every destination goes through: exponential backoff with
//! jitter on transient failures only (a missing object or a full disk is not
//! retried: it would fail the same way and hide the real problem for longer).

use std::ops::Range;
use std::time::Duration;

use async_trait::async_trait;
use backon::Retryable;
use bytes::Bytes;

use super::{Destination, ObjectMeta, PutOutcome, ShipError};
use crate::backoff::Backoff;

/// How destination requests are retried: 200 ms doubling to 10 s, 6
/// retries (about half a minute: a blip, not an outage; the fan-out's spool
/// rides out outages).
pub const REQUEST_RETRY: Backoff =
    Backoff::forever(Duration::from_millis(200), Duration::from_secs(10)).times(6);

/// Wraps a destination so transient failures are retried.
#[derive(Debug)]
pub struct Retrying<D> {
    inner: D,
    policy: Backoff,
}

impl<D: Destination> Retrying<D> {
    /// Wraps `inner` with `policy`.
    pub fn new(inner: D, policy: Backoff) -> Self {
        Retrying { inner, policy }
    }

    /// The wrapped destination.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    async fn run<T, F, Fut>(&self, f: F) -> Result<T, ShipError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ShipError>>,
    {
        f.retry(self.policy.builder())
            .when(ShipError::is_transient)
            .notify(|e, after| tracing::warn!(error = %e, retry_in = ?after, "retrying"))
            .await
    }
}

#[async_trait]
impl<D: Destination> Destination for Retrying<D> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn prepare(&self) -> Result<(), ShipError> {
        self.inner.prepare().await
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome, ShipError> {
        self.run(|| self.inner.put_if_absent(key, data.clone()))
            .await
    }

    async fn get(&self, key: &str) -> Result<Bytes, ShipError> {
        self.run(|| self.inner.get(key)).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, ShipError> {
        self.run(|| self.inner.get_range(key, range.clone())).await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, ShipError> {
        self.run(|| self.inner.head(key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ShipError> {
        self.run(|| self.inner.list(prefix)).await
    }

    async fn delete(&self, key: &str) -> Result<(), ShipError> {
        self.run(|| self.inner.delete(key)).await
    }

    fn content_id(&self, key: &str, data: &[u8]) -> Option<String> {
        self.inner.content_id(key, data)
    }

    async fn stored_content_id(&self, key: &str) -> Result<Option<String>, ShipError> {
        self.run(|| self.inner.stored_content_id(key)).await
    }
}
