//! The configuration: one TOML file plus `PITR_*` environment overrides,
//! validated at load into a [`Config`] that cannot be invalid.
//!
//! Loading runs in four steps, each in its own module:
//! 1. `raw`: the file as written, every key optional, unknown keys refused;
//! 2. `env`: `PITR_<SECTION>_<KEY>` / `PITR_<SECTION>_<NAME>_<KEY>` replace
//!    values of the file; an unknown `PITR_*` variable is an error;
//! 3. `secrets`: `*_file` keys (`conninfo_file`, `recipients_file`) are read;
//! 4. `validate`: required keys, ranges, names, kinds → [`Config`].
//!
//! Relative paths, whether from the file or the environment, are taken from
//! the config file's directory, so a config means the same thing whatever
//! directory pitr starts in.
//!
//! Every error names the config file and the key and says what to do.

mod env;
mod error;
mod raw;
mod redact;
mod secrets;
mod validate;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use error::ConfigError;

use crate::basebackup::Checkpoint;
use crate::basebackup::schedule::CronSchedule;

/// A loaded and checked configuration. Every field holds a valid value:
/// code past loading never re-validates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file the configuration was loaded from, for messages.
    pub path: PathBuf,
    /// `[repository]`: encryption, compression, local state.
    pub repository: RepositoryConfig,
    /// `[[destination]]`: where backups are stored; at least one, names unique.
    pub destinations: Vec<DestinationConfig>,
    /// `[[postgres]]`: clusters to stream; names unique.
    pub postgres: Vec<PostgresConfig>,
    /// `[[sqlite]]`: database files to watch; names unique.
    pub sqlite: Vec<SqliteConfig>,
    /// `[health]`: the HTTP endpoint.
    pub health: HealthConfig,
}

/// `[repository]`: how objects are encrypted, compressed and packed, and
/// where local state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryConfig {
    /// age recipients every object is encrypted to; never empty. Writing
    /// needs only these (invariant 5).
    pub recipients: Vec<age::x25519::Recipient>,
    /// The age identity, needed only to restore and verify. Not read at
    /// load: the sidecar should not have it.
    pub identity_file: Option<PathBuf>,
    /// The repository key kept as a secret beside the config (written by
    /// `pitr init` into `state_dir/repository.key`): lets a sidecar that lost
    /// its disk keep deduplicating without the identity. Read when the
    /// repository opens, not at load.
    pub key_file: Option<PathBuf>,
    /// Local catalog and spool; rebuildable from the destinations.
    pub state_dir: PathBuf,
    /// zstd level, 1..=19; default 3.
    pub zstd_level: i32,
    /// Target pack size in bytes, 1 MiB..=512 MiB; default 16 MiB.
    pub pack_size: u64,
    /// How many destinations must hold an object before it counts as
    /// stored (WAL acknowledged, backup restorable); `None`: all of them.
    pub quorum: Option<usize>,
    /// Where objects wait for the destinations outside the quorum
    /// (default `<state_dir>/spool`).
    pub spool_dir: PathBuf,
    /// The spool's size limit; when full, writes wait (and WAL is not
    /// acknowledged) rather than drop anything.
    pub spool_max_bytes: u64,
}

/// One `[[destination]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationConfig {
    /// Unique among destinations; `[a-z0-9_-]+`.
    pub name: String,
    /// What kind of store, with its settings.
    pub kind: DestinationKind,
}

/// The kind of a destination and the settings that kind needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationKind {
    /// `kind = "fs"`: a directory on a local or mounted filesystem.
    Fs {
        /// The directory objects are written under.
        path: PathBuf,
    },
    /// `kind = "s3"`: an S3 bucket or an S3-compatible store.
    S3(S3Config),
}

/// How to reach an S3 bucket (`kind = "s3"`).
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// The bucket.
    pub bucket: String,
    /// Prepended to every object name (`pitr/`); empty for none.
    pub prefix: String,
    /// The region (`us-east-1` when the store does not care).
    pub region: String,
    /// A custom endpoint (`http://127.0.0.1:9000`); `None` for AWS. Plain
    /// http only when given here explicitly.
    pub endpoint: Option<String>,
    /// The access key id; `None` takes `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// The secret key (`secret_access_key` or `secret_access_key_file`);
    /// `None` takes `AWS_SECRET_ACCESS_KEY`. `Debug` redacts it.
    pub secret_access_key: Option<String>,
    /// How long one request may take before it is retried.
    pub request_timeout: std::time::Duration,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "(redacted)"),
            )
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// One `[[postgres]]` cluster.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// Unique among `[[postgres]]` entries; `[a-z0-9_-]+`.
    pub name: String,
    /// libpq connection string (keywords or URI), from `conninfo` or
    /// `conninfo_file`. May hold a password: `Debug` redacts it.
    pub conninfo: String,
    /// Replication slot name; default `pitr`.
    pub slot: String,
    /// Base-backup schedule (`base_backup`), cron in UTC: five fields, or six
    /// with seconds first; default `0 3 * * *`; `None` when written `"off"`.
    pub base_backup: Option<CronSchedule>,
    /// Also take a base backup once this many bytes of WAL were stored since
    /// the last one started (`base_backup_wal_gb`, in GiB, fractions allowed),
    /// so that replay from the newest backup stays bounded; `None`: no such
    /// rule.
    pub base_backup_wal: Option<u64>,
    /// How scheduled backups take their checkpoint (`checkpoint`, `"spread"`
    /// by default so a scheduled backup does not cause an I/O spike; `pitr
    /// backup` takes a fast one unless told `--spread-checkpoint`).
    pub checkpoint: Checkpoint,
    /// The server's sending rate limit for base backups in kB/s
    /// (`max_rate`, 32 to 1048576); `pitr backup --max-rate` overrides it.
    pub max_rate_kb: Option<u32>,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The config is logged at startup; passwords must not reach the logs.
        f.debug_struct("PostgresConfig")
            .field("name", &self.name)
            .field("conninfo", &redact::conninfo(&self.conninfo))
            .field("slot", &self.slot)
            .field("base_backup", &self.base_backup)
            .field("base_backup_wal", &self.base_backup_wal)
            .field("checkpoint", &self.checkpoint)
            .field("max_rate_kb", &self.max_rate_kb)
            .finish()
    }
}

/// One `[[sqlite]]` database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteConfig {
    /// Unique among `[[sqlite]]` entries; `[a-z0-9_-]+`.
    pub name: String,
    /// The database file.
    pub path: PathBuf,
    /// How often the watcher polls for changes (file events wake it
    /// sooner); 100 ms..=1 h, default 1 s.
    pub interval: std::time::Duration,
    /// How often a full snapshot is stored, so restores need not replay a
    /// long run of page sets; 1 min..=30 days, default 24 h.
    pub snapshot_interval: std::time::Duration,
}

/// `[health]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthConfig {
    /// Where `/health` and `/metrics` are served; `None` for no endpoint.
    pub listen: Option<SocketAddr>,
}

impl Config {
    /// Loads `path` with overrides from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_env(path, &process_env()?)
    }

    /// Loads `path` with overrides from `env` (name, value) instead of the
    /// process environment; later duplicates of a name win.
    pub fn load_with_env(path: &Path, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text, path, env)
    }

    /// Loads from `text`, as if read from `path`: messages name `path`, and
    /// relative paths resolve against its directory. `*_file` secrets are
    /// still read from disk.
    pub fn from_toml_str(
        text: &str,
        path: &Path,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let ctx = error::Ctx {
            path,
            text,
            base: path.parent().unwrap_or(Path::new("")),
        };
        let mut raw = raw::parse(&ctx)?;
        env::apply(&ctx, &mut raw, env)?;
        validate::validate(&ctx, raw)
    }
}

/// The override variables (`PITR_*`) of this process. One whose value is not
/// UTF-8 is an error rather than a silent skip; other variables are not the
/// config's business.
fn process_env() -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str().filter(|n| env::is_override(n)) else {
            continue;
        };
        let Some(value) = value.to_str() else {
            return Err(ConfigError::Env {
                var: name.to_owned(),
                message: "its value is not valid UTF-8. Set it to UTF-8 text".to_owned(),
            });
        };
        out.push((name.to_owned(), value.to_owned()));
    }
    Ok(out)
}
