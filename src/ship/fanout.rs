//! Fan-out over every configured destination. For now a write succeeds only
//! when every destination stored it (the quorum rule and the spool arrive with
//! the destinations issue); a read is served by the first destination that has
//! the object.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::join_all;

use super::{Destination, ObjectMeta, PutOutcome, ShipError};

/// Every configured destination, in configuration order.
#[derive(Debug, Clone)]
pub struct Fanout {
    dests: Vec<Arc<dyn Destination>>,
}

impl Fanout {
    /// A fan-out over `dests` (at least one).
    pub fn new(dests: Vec<Arc<dyn Destination>>) -> Self {
        Fanout { dests }
    }

    /// The destinations, in configuration order.
    pub fn destinations(&self) -> &[Arc<dyn Destination>] {
        &self.dests
    }

    /// Stores the object in every destination, concurrently. Fails with the
    /// first destination's error if any failed: the object is not safe yet.
    pub async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<(), ShipError> {
        let results = join_all(
            self.dests
                .iter()
                .map(|d| d.put_if_absent(key, data.clone())),
        )
        .await;
        for r in results {
            match r? {
                PutOutcome::Created | PutOutcome::AlreadyExists => {}
            }
        }
        Ok(())
    }

    /// Calls `f` on each destination in order until one succeeds; returns the
    /// first error when all fail (a `NotFound` is reported only if every
    /// destination said so).
    async fn first_ok<'a, T, F, Fut>(&'a self, mut f: F) -> Result<T, ShipError>
    where
        F: FnMut(&'a Arc<dyn Destination>) -> Fut,
        Fut: Future<Output = Result<T, ShipError>>,
    {
        let mut first_err: Option<ShipError> = None;
        for d in &self.dests {
            match f(d).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    tracing::warn!(destination = d.name(), error = %e, "read failed, trying the next destination");
                    let replace = match (&first_err, &e) {
                        (None, _) => true,
                        (Some(ShipError::NotFound { .. }), ShipError::NotFound { .. }) => false,
                        (Some(ShipError::NotFound { .. }), _) => true,
                        _ => false,
                    };
                    if replace {
                        first_err = Some(e);
                    }
                }
            }
        }
        Err(first_err.unwrap_or_else(|| ShipError::NotFound {
            dest: "(none configured)".into(),
            key: String::new(),
        }))
    }

    /// Reads a whole object from the first destination that has it.
    pub async fn get(&self, key: &str) -> Result<Bytes, ShipError> {
        self.first_ok(|d| d.get(key)).await
    }

    /// Reads part of an object from the first destination that has it.
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, ShipError> {
        self.first_ok(|d| d.get_range(key, range.clone())).await
    }

    /// Lists from the first destination that answers.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ShipError> {
        self.first_ok(|d| d.list(prefix)).await
    }
}
