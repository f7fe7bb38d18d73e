//! The glue between the config and the layers that must not read it: the
//! destinations' options (`ship`'s, and the fan-outs opened from them),
//! built from a loaded [`Config`]. Every command and the sidecar open the
//! destinations through here, so the config's structs stay out of `ship`.

use crate::backoff::Backoff;
use crate::config::{Config, DestinationConfig, S3Config, StorachaConfig};
use crate::ship::{
    Batched, DestinationKind, DestinationSpec, Fanout, FanoutOptions, REQUEST_RETRY, S3Options,
    SpoolConfig, StorachaOptions,
};

/// The configured destinations that take every write, each behind the
/// retry layer, in config order. Batched destinations are not among them:
/// see [`batched`].
pub fn fanout(config: &Config) -> Fanout {
    fanout_with_retry(config, REQUEST_RETRY)
}

/// [`fanout`] with another retry policy: `pitr check` answers in seconds
/// rather than after the half minute of retries a sidecar's write deserves.
pub fn fanout_with_retry(config: &Config, retry: Backoff) -> Fanout {
    Fanout::open(&fanout_options(config, retry))
}

/// The fan-out's options: the destinations that are not batched, the
/// quorum and the spool of `[repository]`.
pub fn fanout_options(config: &Config, retry: Backoff) -> FanoutOptions {
    let r = &config.repository;
    FanoutOptions {
        destinations: config
            .destinations
            .iter()
            .filter(|d| !d.is_batched())
            .map(destination)
            .collect(),
        quorum: r.quorum,
        spool: SpoolConfig {
            dir: r.spool_dir.clone(),
            max_bytes: r.spool_max_bytes,
        },
        retry,
    }
}

/// The configured batched destinations, in config order.
pub fn batched(config: &Config) -> Vec<Batched> {
    config
        .destinations
        .iter()
        .filter_map(|d| Some(Batched::open(&destination(d), d.batch_interval?)))
        .collect()
}

/// One `[[destination]]` as `ship` takes it.
pub fn destination(d: &DestinationConfig) -> DestinationSpec {
    use crate::config::DestinationKind as Kind;
    DestinationSpec {
        name: d.name.clone(),
        kind: match &d.kind {
            Kind::Fs { path } => DestinationKind::Fs { path: path.clone() },
            Kind::S3(c) => DestinationKind::S3(s3(c)),
            Kind::Storacha(c) => DestinationKind::Storacha(storacha(c)),
        },
    }
}

/// An S3 destination's settings as `ship` takes them.
pub fn s3(c: &S3Config) -> S3Options {
    let S3Config {
        bucket,
        prefix,
        region,
        endpoint,
        access_key_id,
        secret_access_key,
        request_timeout,
    } = c.clone();
    S3Options {
        bucket,
        prefix,
        region,
        endpoint,
        access_key_id,
        secret_access_key,
        request_timeout,
    }
}

/// A Storacha destination's settings as `ship` takes them.
pub fn storacha(c: &StorachaConfig) -> StorachaOptions {
    let StorachaConfig {
        space,
        principal,
        proof,
        service,
        service_did,
        gateway,
        request_timeout,
    } = c.clone();
    StorachaOptions {
        space,
        principal,
        proof,
        service,
        service_did,
        gateway,
        request_timeout,
    }
}
