//! The glue between the config and the layers that must not read it: the
//! repository's options (`repo::RepoOptions`), the destinations' (`ship`
//! options, and the fan-outs opened from them) and the snapshot sources'
//! (`snapshot::infisical::InfisicalOptions`), built from a loaded
//! [`Config`]. Every command and the sidecar open the repository and the
//! destinations through here, so the config's structs stay out of `repo`
//! and `ship`.

use std::path::Path;

use crate::backoff::Backoff;
use crate::config::{
    Config, ConfigError, DestinationConfig, PostgresConfig, S3Config, StorachaConfig,
};
use crate::pg::{ConnInfo, conn::ConnInfoError};
use crate::repo::{IdentityError, RepoOptions};
use crate::ship::{
    Batched, DestinationKind, DestinationSpec, Fanout, FanoutOptions, REQUEST_RETRY, S3Options,
    SpoolConfig, StorachaOptions,
};

/// The repository options a config gives. Reads `identity_file` when it is
/// set (restore and verify need it; a sidecar's config should not set it).
pub fn repo_options(config: &Config) -> Result<RepoOptions, ConfigError> {
    let r = &config.repository;
    let identities = match &r.identity_file {
        None => Vec::new(),
        Some(file) => identities(config, file)?,
    };
    Ok(RepoOptions {
        recipients: r.recipients.clone(),
        identities,
        key_file: r.key_file.clone(),
        state_dir: r.state_dir.clone(),
        zstd_level: r.zstd_level,
        // The config bounds pack_size to 512 MiB.
        pack_size: usize::try_from(r.pack_size).unwrap_or(usize::MAX),
    })
}

/// The identities of `identity_file`, its errors as errors of that key.
fn identities(config: &Config, file: &Path) -> Result<Vec<age::x25519::Identity>, ConfigError> {
    let key = "[repository] identity_file".to_owned();
    crate::repo::read_identities(file, &config.repository.recipients).map_err(|e| match e {
        IdentityError::Read { file, source } => ConfigError::SecretFile {
            path: config.path.clone(),
            key,
            file,
            source,
        },
        e => ConfigError::Invalid {
            path: config.path.clone(),
            key,
            message: e.to_string(),
        },
    })
}

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

/// The connection of a `[[postgres]]` entry: its conninfo resolved, with
/// the entry's pitr-only settings applied.
pub fn conninfo(pg: &PostgresConfig) -> Result<ConnInfo, ConnInfoError> {
    let mut info = ConnInfo::parse(&pg.conninfo)?;
    info.allow_insecure_password = pg.allow_insecure_password;
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config whose `identity_file` holds `identity_text`, and its path.
    fn config_with_identity(dir: &Path, identity_text: Option<&str>) -> Config {
        let recipient = age::x25519::Identity::generate().to_public();
        let identity = dir.join("identity.txt");
        if let Some(text) = identity_text {
            std::fs::write(&identity, text).expect("identity");
        }
        let path = dir.join("pitr.toml");
        std::fs::write(
            &path,
            format!(
                "[repository]\nrecipients = [\"{recipient}\"]\nidentity_file = \"{}\"\n\
                 state_dir = \"{}\"\n\n[[destination]]\nname = \"local\"\nkind = \"fs\"\npath = \"{}\"\n",
                identity.display(),
                dir.join("state").display(),
                dir.join("store").display(),
            ),
        )
        .expect("config");
        Config::load(&path).expect("config loads")
    }

    /// The identity file's errors read as they did when `repo` phrased
    /// them as config errors: same key, same words, byte for byte.
    #[test]
    fn identity_file_errors_are_config_errors_of_their_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let (cfg, identity) = (d.join("pitr.toml"), d.join("identity.txt"));

        let config = config_with_identity(d, Some("# a comment\n\nnot-a-key\n"));
        let err = repo_options(&config).expect_err("not an identity");
        assert!(matches!(err, ConfigError::Invalid { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "{}: [repository] identity_file: line 3 of {} is not an age X25519 identity \
                 (AGE-SECRET-KEY-1…). Create one with `pitr keygen --output FILE`; plugin and \
                 passphrase identities are not supported",
                cfg.display(),
                identity.display()
            )
        );

        let other = age::x25519::Identity::generate();
        let config = config_with_identity(
            d,
            Some(&format!(
                "{}\n",
                age::secrecy::ExposeSecret::expose_secret(&other.to_string())
            )),
        );
        let err = repo_options(&config).expect_err("another recipient's identity");
        assert_eq!(
            err.to_string(),
            format!(
                "{}: [repository] identity_file: {} holds no identity for any of the configured \
                 recipients, so it cannot read this repository. Point identity_file at the \
                 identity whose public key (`age-keygen -y FILE`) is in [repository] recipients",
                cfg.display(),
                identity.display()
            )
        );

        std::fs::remove_file(&identity).expect("remove");
        let config = config_with_identity(d, None);
        let err = repo_options(&config).expect_err("no file");
        assert!(matches!(err, ConfigError::SecretFile { .. }), "{err:?}");
        assert!(
            err.to_string().starts_with(&format!(
                "{}: [repository] identity_file: cannot read secret file {}: ",
                cfg.display(),
                identity.display()
            )),
            "{err}"
        );
    }

    #[test]
    fn destinations_keep_their_settings_and_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config_with_identity(dir.path(), None);
        let opts = fanout_options(&config, REQUEST_RETRY);
        assert_eq!(opts.destinations.len(), 1);
        assert_eq!(opts.destinations[0].name, "local");
        assert_eq!(
            opts.destinations[0].kind,
            DestinationKind::Fs {
                path: dir.path().join("store")
            }
        );
        assert_eq!(opts.quorum, config.repository.quorum);
        assert_eq!(opts.spool.dir, config.repository.spool_dir);
        assert!(batched(&config).is_empty());
    }
}
