//! Destinations: where objects are stored, and the layers every destination goes
//! through (retry, fan-out, fault injection for tests).
//!
//! A destination is a flat store of immutable objects named by `/`-separated
//! keys. It knows nothing of WAL, packs or catalogs: the repository format lives
//! in `crate::repo`.

mod fanout;
#[cfg(any(test, feature = "fault-injection"))]
pub mod fault;
mod fs;
mod open;
mod retry;
mod s3;
mod spool;
pub mod storacha;
mod tracked;

use std::fmt;
use std::io;
use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;

pub use fanout::{Fanout, FanoutStatus};
pub use fs::FsDestination;
pub use open::{Batched, DestinationKind, DestinationSpec, FanoutOptions};
pub use retry::{REQUEST_RETRY, Retrying};
pub use s3::{MULTIPART_THRESHOLD, S3Destination, S3Options, S3SettingsRefused};
pub use spool::SpoolConfig;
pub use storacha::{StorachaDestination, StorachaOptions};
pub use tracked::{DestinationHealth, DestinationState, Tracked};

/// What `put_if_absent` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object did not exist and now holds the given bytes.
    Created,
    /// An object of that name already existed; it was left untouched.
    AlreadyExists,
}

/// One object found by `list` or `head`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The object's key, relative to the destination's root.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
}

/// A failure of a destination. Every variant names the destination and the
/// object, so an operator can act on the message alone.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    /// The object does not exist.
    #[error("destination {dest}: object {key} does not exist")]
    NotFound {
        /// Destination name.
        dest: String,
        /// Object key.
        key: String,
    },
    /// The destination has no space left.
    #[error(
        "destination {dest}: no space left while writing {key}; free space or grow the volume, nothing was acknowledged"
    )]
    NoSpace {
        /// Destination name.
        dest: String,
        /// Object key.
        key: String,
    },
    /// The key is not a valid object name.
    #[error("destination {dest}: {key:?} is not a valid object name")]
    InvalidKey {
        /// Destination name.
        dest: String,
        /// Object key.
        key: String,
    },
    /// An I/O or transport error.
    #[error("destination {dest}: {op} {key}: {source}")]
    Io {
        /// Destination name.
        dest: String,
        /// The operation that failed (`put`, `get`, ...).
        op: &'static str,
        /// Object key or prefix.
        key: String,
        /// The underlying error.
        source: io::Error,
        /// Whether trying again may succeed.
        transient: bool,
    },
    /// A failure injected by `fault::FaultyDestination` (the `fault-injection`
    /// feature, which only the tests turn on).
    #[error("destination {dest}: {op} {key}: injected fault")]
    Injected {
        /// Destination name.
        dest: String,
        /// The operation that failed.
        op: &'static str,
        /// Object key.
        key: String,
        /// Whether the retry layer should retry it.
        transient: bool,
    },
}

impl ShipError {
    /// Whether the same request may succeed if tried again (network blips,
    /// timeouts, server errors), as opposed to failures that will repeat.
    pub fn is_transient(&self) -> bool {
        match self {
            ShipError::Io { transient, .. } | ShipError::Injected { transient, .. } => *transient,
            ShipError::NotFound { .. }
            | ShipError::NoSpace { .. }
            | ShipError::InvalidKey { .. } => false,
        }
    }
}

/// A place objects are stored. Objects are immutable: there is no overwrite.
#[async_trait]
pub trait Destination: Send + Sync + fmt::Debug {
    /// The configured name, used in every message about this destination.
    fn name(&self) -> &str;

    /// Creates whatever the destination needs before the first write (a
    /// directory, a bucket check). Idempotent.
    async fn prepare(&self) -> Result<(), ShipError> {
        Ok(())
    }

    /// Stores `data` under `key` unless an object of that name exists.
    /// Returns only once the object is durable.
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome, ShipError>;

    /// Reads a whole object.
    async fn get(&self, key: &str) -> Result<Bytes, ShipError>;

    /// Reads `range` of an object; the result is shorter than asked when the
    /// object ends first (callers check lengths: that is how truncation shows).
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, ShipError>;

    /// The object's size, or `None` when it does not exist.
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, ShipError>;

    /// Every object whose key starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ShipError>;

    /// Removes an object; removing a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<(), ShipError>;

    /// The content identifier this destination stores `data` under as
    /// `key`, for content-addressed stores (Storacha: the upload's root
    /// CID), computed from the bytes alone; `None` for stores that name
    /// objects by key only. It must equal what [`Self::stored_content_id`]
    /// reports once the object is stored.
    fn content_id(&self, key: &str, data: &[u8]) -> Option<String> {
        let _ = (key, data);
        None
    }

    /// The content identifier the store itself reports for `key` (Storacha:
    /// the root its upload listing resolves to the key); `None` when the
    /// object is missing or the store is not content-addressed.
    async fn stored_content_id(&self, key: &str) -> Result<Option<String>, ShipError> {
        let _ = key;
        Ok(None)
    }
}

/// Checks that `key` is a safe, portable object name: `/`-separated
/// components of `[A-Za-z0-9._-]`, none empty, none starting with a dot.
pub fn validate_key(dest: &str, key: &str) -> Result<(), ShipError> {
    let ok = !key.is_empty()
        && key.len() <= 512
        && key.split('/').all(|part| {
            !part.is_empty()
                && !part.starts_with('.')
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(ShipError::InvalidKey {
            dest: dest.to_owned(),
            key: key.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated() {
        for good in ["config", "packs/ab/abcdef", "catalog/0000000000000001-00ff"] {
            assert!(validate_key("d", good).is_ok(), "{good}");
        }
        for bad in [
            "", "/abs", "a//b", "../x", "a/../b", ".tmp/x", "a b", "a/", "ü",
        ] {
            assert!(validate_key("d", bad).is_err(), "{bad}");
        }
    }
}
