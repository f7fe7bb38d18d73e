//! A destination wrapper that injects failures, for tests of every failure
//! path (Neon's `remote_storage` does the same). Not used in production paths.

use std::ops::Range;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Destination, ObjectMeta, PutOutcome, ShipError};

/// Which failures to inject next.
#[derive(Debug, Default, Clone)]
pub struct FaultPlan {
    /// Fail this many upcoming puts.
    pub fail_puts: usize,
    /// Fail this many upcoming gets (whole or ranged).
    pub fail_gets: usize,
    /// Fail this many upcoming deletes.
    pub fail_deletes: usize,
    /// Whether injected failures are transient (retried by the retry layer).
    pub transient: bool,
    /// Flip one bit in every byte string returned by gets.
    pub corrupt_reads: bool,
    /// Fail this many upcoming lists.
    pub fail_lists: usize,
    /// Answer every get, ranged get and head this much later: a slow
    /// destination.
    pub read_delay: std::time::Duration,
    /// Hold every put until this reads `true`: a destination that takes
    /// writes only when the test says, to act while a store is under way.
    pub hold_puts: Option<tokio::sync::watch::Receiver<bool>>,
}

/// Wraps a destination and fails requests as its [`FaultPlan`] says.
#[derive(Debug)]
pub struct FaultyDestination<D> {
    inner: D,
    plan: Mutex<FaultPlan>,
    puts_seen: Mutex<usize>,
    gets_seen: Mutex<usize>,
}

impl<D: Destination> FaultyDestination<D> {
    /// Wraps `inner` with no faults planned.
    pub fn new(inner: D) -> Self {
        FaultyDestination {
            inner,
            plan: Mutex::new(FaultPlan::default()),
            puts_seen: Mutex::new(0),
            gets_seen: Mutex::new(0),
        }
    }

    /// Replaces the fault plan.
    pub fn set_plan(&self, plan: FaultPlan) {
        *lock(&self.plan) = plan;
    }

    /// How many put requests reached this layer (including failed ones).
    pub fn puts_seen(&self) -> usize {
        *lock(&self.puts_seen)
    }

    /// How many get requests (whole or ranged) reached this layer.
    pub fn gets_seen(&self) -> usize {
        *lock(&self.gets_seen)
    }

    fn take(&self, op: &'static str, key: &str) -> Result<(), ShipError> {
        let mut plan = lock(&self.plan);
        let counter = match op {
            "put" => &mut plan.fail_puts,
            "delete" => &mut plan.fail_deletes,
            "list" => &mut plan.fail_lists,
            _ => &mut plan.fail_gets,
        };
        if *counter > 0 {
            *counter -= 1;
            return Err(ShipError::Injected {
                dest: self.inner.name().to_owned(),
                op,
                key: key.to_owned(),
                transient: plan.transient,
            });
        }
        Ok(())
    }

    async fn delay(&self) {
        let d = lock(&self.plan).read_delay;
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }

    fn maybe_corrupt(&self, b: Bytes) -> Bytes {
        if lock(&self.plan).corrupt_reads && !b.is_empty() {
            let mut v = b.to_vec();
            let mid = v.len() / 2;
            v[mid] ^= 0x01;
            Bytes::from(v)
        } else {
            b
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[async_trait]
impl<D: Destination> Destination for FaultyDestination<D> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn prepare(&self) -> Result<(), ShipError> {
        self.inner.prepare().await
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome, ShipError> {
        *lock(&self.puts_seen) += 1;
        self.take("put", key)?;
        let gate = lock(&self.plan).hold_puts.clone();
        if let Some(mut gate) = gate {
            // A closed sender opens the gate: nothing is left to wait for.
            let _ = gate.wait_for(|open| *open).await;
        }
        self.inner.put_if_absent(key, data).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, ShipError> {
        *lock(&self.gets_seen) += 1;
        self.take("get", key)?;
        self.delay().await;
        Ok(self.maybe_corrupt(self.inner.get(key).await?))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, ShipError> {
        *lock(&self.gets_seen) += 1;
        self.take("get", key)?;
        self.delay().await;
        Ok(self.maybe_corrupt(self.inner.get_range(key, range).await?))
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, ShipError> {
        self.delay().await;
        self.inner.head(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ShipError> {
        self.take("list", prefix)?;
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<(), ShipError> {
        self.take("delete", key)?;
        self.inner.delete(key).await
    }

    fn content_id(&self, key: &str, data: &[u8]) -> Option<String> {
        self.inner.content_id(key, data)
    }

    async fn stored_content_id(&self, key: &str) -> Result<Option<String>, ShipError> {
        self.inner.stored_content_id(key).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{FsDestination, Retrying};
    use super::*;
    use crate::backoff::Backoff;

    /// The next `n` puts fail, transiently or not.
    fn failing_puts(n: usize, transient: bool) -> FaultPlan {
        FaultPlan {
            fail_puts: n,
            transient,
            ..FaultPlan::default()
        }
    }

    fn fast() -> Backoff {
        Backoff::forever(Duration::from_millis(1), Duration::from_millis(5)).times(3)
    }

    #[tokio::test]
    async fn retry_layer_retries_transient_failures_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let faulty = FaultyDestination::new(FsDestination::new("local", dir.path()));
        faulty.set_plan(failing_puts(2, true));
        let d = Retrying::new(faulty, fast());
        let out = d.put_if_absent("k", Bytes::from_static(b"v")).await;
        assert_eq!(out.expect("retried put succeeds"), PutOutcome::Created);
        assert_eq!(d.inner().puts_seen(), 3);

        d.inner().set_plan(failing_puts(1, false));
        let err = d
            .put_if_absent("k2", Bytes::from_static(b"v"))
            .await
            .expect_err("permanent");
        assert!(
            matches!(
                err,
                ShipError::Injected {
                    transient: false,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            d.inner().puts_seen(),
            4,
            "a permanent failure is not retried"
        );

        d.inner().set_plan(failing_puts(10, true));
        let err = d
            .put_if_absent("k3", Bytes::from_static(b"v"))
            .await
            .expect_err("gives up");
        assert!(err.to_string().contains("k3"), "{err}");
        assert_eq!(d.inner().puts_seen(), 8, "one try plus three retries");
    }
}
