//! Opening destinations from their options: each one behind health
//! tracking and the retry layer, and the fan-outs over them. What the
//! options hold is the layer above's business (`crate::wiring` builds
//! them from the config); this module knows only the stores.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{
    Destination, DestinationHealth, Fanout, FsDestination, REQUEST_RETRY, Retrying, S3Destination,
    S3Options, SpoolConfig, StorachaDestination, StorachaOptions, Tracked,
};
use crate::backoff::Backoff;

/// One destination: its name and the store behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationSpec {
    /// Used in every message about the destination.
    pub name: String,
    /// What kind of store, with its settings.
    pub kind: DestinationKind,
}

/// The kind of a destination and the settings that kind needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationKind {
    /// A directory on a local or mounted filesystem.
    Fs {
        /// The directory objects are written under.
        path: PathBuf,
    },
    /// An S3 bucket or an S3-compatible store.
    S3(S3Options),
    /// A Storacha space.
    Storacha(StorachaOptions),
}

impl DestinationSpec {
    /// The destination, its health recorded in `health`, behind the retry
    /// layer with `retry`.
    pub fn open(&self, health: Arc<DestinationHealth>, retry: Backoff) -> Arc<dyn Destination> {
        match &self.kind {
            DestinationKind::Fs { path } => Arc::new(Retrying::new(
                Tracked::new(FsDestination::new(self.name.clone(), path.clone()), health),
                retry,
            )),
            DestinationKind::S3(s3) => Arc::new(Retrying::new(
                Tracked::new(S3Destination::new(&self.name, s3), health),
                retry,
            )),
            DestinationKind::Storacha(c) => Arc::new(Retrying::new(
                Tracked::new(StorachaDestination::new(&self.name, c), health),
                retry,
            )),
        }
    }
}

/// The destinations that take every write, and how many of them must hold
/// an object before it counts as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanoutOptions {
    /// The destinations, in order (health and reads follow it).
    pub destinations: Vec<DestinationSpec>,
    /// How many must hold an object; `None`: all of them.
    pub quorum: Option<usize>,
    /// Where objects wait for the destinations outside the quorum.
    pub spool: SpoolConfig,
    /// The retry policy of every destination.
    pub retry: Backoff,
}

impl Fanout {
    /// The fan-out over `opts.destinations`, each tracked and behind the
    /// retry layer; with a spool when the quorum is fewer than all.
    pub fn open(opts: &FanoutOptions) -> Fanout {
        let mut health = Vec::new();
        let dests = opts
            .destinations
            .iter()
            .map(|d| {
                let h = DestinationHealth::new(&d.name);
                health.push(h.clone());
                d.open(h, opts.retry)
            })
            .collect::<Vec<_>>();
        let fanout = match opts.quorum {
            Some(q) if q < dests.len() => Fanout::with_quorum(dests, q, opts.spool.clone()),
            _ => Fanout::new(dests),
        };
        fanout.with_health(health)
    }
}

/// A batched destination (`batch_interval`): its own one-destination
/// fan-out, outside the acknowledgement path.
#[derive(Debug, Clone)]
pub struct Batched {
    /// The destination's name.
    pub name: String,
    /// How often it receives a batch.
    pub every: Duration,
    /// The destination alone, behind the retry layer.
    pub fanout: Fanout,
}

impl Batched {
    /// The batched destination `spec`, receiving a batch `every` so often,
    /// tracked and behind the retry layer.
    pub fn open(spec: &DestinationSpec, every: Duration) -> Batched {
        let h = DestinationHealth::new(&spec.name);
        let dest = spec.open(h.clone(), REQUEST_RETRY);
        Batched {
            name: spec.name.clone(),
            every,
            fanout: Fanout::new(vec![dest]).with_health(vec![h]),
        }
    }
}
