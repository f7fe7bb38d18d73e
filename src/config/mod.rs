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
use std::time::Duration;

pub use error::ConfigError;
pub use validate::fleet::{MAX_LABEL_KEY, MAX_LABEL_VALUE, MAX_LABELS, valid_instance};
pub use validate::values::parse_duration;

use crate::cron::CronSchedule;
use crate::pg::{Checkpoint, ManifestChecksums};

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
    /// `[health]`: the HTTP endpoint and the thresholds past which it
    /// reports failure.
    pub health: HealthConfig,
    /// `[[alert]]`: where failures and recoveries are announced; names
    /// unique. Empty: failures show only in logs and `/health`.
    pub alerts: Vec<AlertConfig>,
    /// `[verify]`: scheduled test restores.
    pub verify: VerifyConfig,
    /// `[retention]`: which backups are kept, and garbage collection.
    pub retention: RetentionConfig,
    /// `[scrub]`: the background scrub that lists, checks and repairs
    /// every destination.
    pub scrub: ScrubConfig,
    /// `[restore]`: where the PostgreSQL server binaries restores run are.
    pub restore: RestoreConfig,
    /// `[[command]]`: snapshot sources whose standard output is stored on
    /// a schedule (docs/SNAPSHOTS.md); names unique.
    pub commands: Vec<CommandConfig>,
    /// `[[infisical]]`: Infisical projects whose secrets are snapshotted;
    /// names unique.
    pub infisical: Vec<InfisicalConfig>,
    /// `[fleet]`: where this sidecar publishes its catalog for the fleet
    /// (docs/FLEET.md); `None` without the section.
    pub fleet: Option<FleetConfig>,
}

/// One `[[infisical]]` snapshot source: the secrets of some environments
/// of an Infisical project, read by a machine identity with Universal Auth
/// (docs/SNAPSHOTS.md).
#[derive(Clone, PartialEq, Eq)]
pub struct InfisicalConfig {
    /// Unique among `[[infisical]]` entries; `[a-z0-9_-]+`.
    pub name: String,
    /// The instance (`site_url`, default Infisical Cloud US,
    /// `https://app.infisical.com`), http(s), without a trailing slash.
    pub site_url: String,
    /// The project's id.
    pub project_id: String,
    /// The environment slugs exported; at least one, no repeats.
    pub environments: Vec<String>,
    /// The folder exported with everything beneath it (`secret_path`,
    /// default `/`).
    pub secret_path: String,
    /// The machine identity's Universal Auth client id.
    pub client_id: String,
    /// Its client secret (`client_secret` or `client_secret_file`).
    /// `Debug` redacts it.
    pub client_secret: String,
    /// When snapshots are taken (`schedule`, cron in UTC, default hourly
    /// `0 * * * *`); `None` when written `"off"`.
    pub schedule: Option<CronSchedule>,
    /// How long one export may take (`timeout`, default 5 min).
    pub timeout: Duration,
    /// The source is failing when its newest snapshot is older than this
    /// (`max_age`); `None`: 1.5 × the schedule's interval.
    pub max_age: Option<Duration>,
}

impl std::fmt::Debug for InfisicalConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InfisicalConfig")
            .field("name", &self.name)
            .field("site_url", &self.site_url)
            .field("project_id", &self.project_id)
            .field("environments", &self.environments)
            .field("secret_path", &self.secret_path)
            .field("client_id", &self.client_id)
            .field("client_secret", &"(redacted)")
            .field("schedule", &self.schedule)
            .field("timeout", &self.timeout)
            .field("max_age", &self.max_age)
            .finish()
    }
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
    /// The repository key's id (32 hex digits, as `pitr init` and `pitr
    /// restore` print it), pinned: a restore refuses a store whose key has
    /// another id, so a key object replaced at a destination is not
    /// trusted on a host that has no `key_file` or local key.
    pub key_id: Option<String>,
}

/// One `[[destination]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationConfig {
    /// Unique among destinations; `[a-z0-9_-]+`.
    pub name: String,
    /// What kind of store, with its settings.
    pub kind: DestinationKind,
    /// `batch_interval`: when set, the destination takes no write as it
    /// happens; at this interval it receives what the other destinations
    /// hold, consolidated into few objects (docs/DESTINATIONS.md, "Batched
    /// destinations"). It does not count toward the acknowledgement quorum.
    pub batch_interval: Option<std::time::Duration>,
}

impl DestinationConfig {
    /// Whether the destination is batched (takes no write as it happens).
    pub fn is_batched(&self) -> bool {
        self.batch_interval.is_some()
    }
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
    /// `kind = "storacha"`: a Storacha space, written with ucanto
    /// invocations and read through an IPFS gateway.
    Storacha(StorachaConfig),
}

/// How to reach a Storacha space (`kind = "storacha"`).
#[derive(Clone, PartialEq, Eq)]
pub struct StorachaConfig {
    /// The space's DID (`did:key:z6Mk…`), the subject of every invocation.
    pub space: String,
    /// The agent's private key as `storacha key create` prints it (`M…`,
    /// users' `W3_PRINCIPAL`). `Debug` redacts it.
    pub principal: String,
    /// The delegation from the space to the agent, as `storacha delegation
    /// create … --base64` writes it (users' `W3_PROOF`), or the CAR bytes
    /// of one. `Debug` redacts it.
    pub proof: String,
    /// The upload service's URL (`https://up.storacha.network`).
    pub service: String,
    /// The upload service's DID, the audience of every invocation
    /// (`did:web:up.storacha.network`).
    pub service_did: String,
    /// The IPFS trustless gateway reads go through (`https://storacha.link`).
    pub gateway: String,
    /// How long one request may take before it is retried.
    pub request_timeout: std::time::Duration,
}

impl std::fmt::Debug for StorachaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorachaConfig")
            .field("space", &self.space)
            .field("principal", &"(redacted)")
            .field("proof", &"(redacted)")
            .field("service", &self.service)
            .field("service_did", &self.service_did)
            .field("gateway", &self.gateway)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
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

/// `incremental_max_chain` when the config does not say.
pub const DEFAULT_INCREMENTAL_MAX_CHAIN: u32 = 7;

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
    /// How many incremental base backups may follow a full one before the
    /// next full one (`incremental_max_chain`, default 7; 0 takes only full
    /// backups). Incremental backups need PostgreSQL 17 or later with
    /// `summarize_wal = on`; otherwise every backup is full.
    pub incremental_max_chain: u32,
    /// The per-file checksum of the server's `backup_manifest`
    /// (`manifest_checksums`, `"crc32c"` by default, or `"sha256"`).
    pub manifest_checksums: ManifestChecksums,
    /// Send a cleartext or md5 password over an unencrypted TCP connection
    /// (`allow_insecure_password`, default false): off, pitr refuses such a
    /// request and says why. SCRAM, TLS and unix sockets need no such leave.
    pub allow_insecure_password: bool,
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
            .field("incremental_max_chain", &self.incremental_max_chain)
            .field("manifest_checksums", &self.manifest_checksums)
            .field("allow_insecure_password", &self.allow_insecure_password)
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

/// `[health]`: the HTTP endpoint and its thresholds. Each threshold is the
/// point past which `/health` answers 503 and an alert fires.
#[derive(Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// Where `/health`, `/metrics` and the restore API are served; `None`
    /// for no endpoint.
    pub listen: Option<SocketAddr>,
    /// A stream is failing when no WAL was acknowledged for this long while
    /// the server produced some (`wal_ack_max_age`, default 5 min).
    pub wal_ack_max_age: Duration,
    /// A stream (or an SQLite watcher) is failing when it has not been
    /// connected (or has failed every capture) for this long
    /// (`stream_down_max`, default 1 min): a stopped server produces no WAL,
    /// so only the connection shows it.
    pub stream_down_max: Duration,
    /// A database is failing when its newest restorable base backup is older
    /// than this (`backup_max_age`); `None`: 1.5 × the interval of its
    /// `base_backup` schedule (no limit when the schedule is off).
    pub backup_max_age: Option<Duration>,
    /// A destination is failing when it has been unreachable, or behind, for
    /// this long (`destination_down_max`, default 10 min).
    pub destination_down_max: Duration,
    /// A slot is failing when the server retains more WAL than this for it
    /// (`slot_retained_max`, default 4 GiB): long before the server's disk
    /// fills or `max_slot_wal_keep_size` invalidates the slot. When the server
    /// sets `max_slot_wal_keep_size`, half of it is used if smaller.
    pub slot_retained_max: u64,
    /// Verification is failing when the last test restore failed, or when
    /// none succeeded for this long although one is scheduled
    /// (`verify_max_age`, default 3 days).
    pub verify_max_age: Duration,
    /// The bearer token of `POST /restore` (`restore_token` or
    /// `restore_token_file`); `None`: the restore API is off. `Debug`
    /// redacts it.
    pub restore_token: Option<String>,
    /// Every restore the API runs goes into a directory beneath this one
    /// (`restore_root`, default `<state_dir>/restores`): the API refuses any
    /// other target.
    pub restore_root: PathBuf,
    /// Serve https with this certificate and key (`tls_cert_file`,
    /// `tls_key_file`); `None`: plain http.
    pub tls: Option<TlsFiles>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            listen: None,
            wal_ack_max_age: Duration::from_secs(300),
            stream_down_max: Duration::from_secs(60),
            backup_max_age: None,
            destination_down_max: Duration::from_secs(600),
            slot_retained_max: 4 << 30,
            verify_max_age: Duration::from_secs(3 * 86400),
            restore_token: None,
            restore_root: PathBuf::from("/var/lib/pitr/restores"),
            tls: None,
        }
    }
}

impl std::fmt::Debug for HealthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthConfig")
            .field("listen", &self.listen)
            .field("wal_ack_max_age", &self.wal_ack_max_age)
            .field("stream_down_max", &self.stream_down_max)
            .field("backup_max_age", &self.backup_max_age)
            .field("destination_down_max", &self.destination_down_max)
            .field("slot_retained_max", &self.slot_retained_max)
            .field("verify_max_age", &self.verify_max_age)
            .field(
                "restore_token",
                &self.restore_token.as_ref().map(|_| "(redacted)"),
            )
            .field("restore_root", &self.restore_root)
            .field("tls", &self.tls)
            .finish()
    }
}

/// One `[[alert]]` channel.
#[derive(Clone, PartialEq, Eq)]
pub struct AlertConfig {
    /// Unique among `[[alert]]` entries; `[a-z0-9_-]+`.
    pub name: String,
    /// Where and how alerts are delivered.
    pub kind: AlertKind,
    /// While a condition persists, repeat its alert this often
    /// (`renotify`); `None` (the default, or `"off"`): once per transition.
    pub renotify: Option<Duration>,
}

/// The kind of an alert channel and what it needs. URLs hold tokens:
/// `Debug` shows only their scheme and host.
#[derive(Clone, PartialEq, Eq)]
pub enum AlertKind {
    /// `kind = "slack"`: a Slack incoming webhook (`{"text": ...}`).
    Slack {
        /// The webhook URL (http or https).
        url: String,
    },
    /// `kind = "discord"`: a Discord webhook (`{"content": ...}`).
    Discord {
        /// The webhook URL (http or https).
        url: String,
    },
    /// `kind = "webhook"`: a generic JSON POST of the alert's fields.
    Webhook {
        /// The URL (http or https).
        url: String,
    },
    /// `kind = "email"`: SMTP. `smtp://` requires STARTTLS unless the URL
    /// says `?tls=opportunistic` or `?tls=none` (a relay on loopback);
    /// `smtps://` is implicit TLS.
    Email {
        /// `smtp://user:pass@host:587` or `smtps://…:465`.
        smtp_url: String,
        /// The sender mailbox.
        from: String,
        /// The recipient mailboxes; never empty.
        to: Vec<String>,
    },
}

impl AlertKind {
    /// The `kind` value as written in the config.
    pub fn name(&self) -> &'static str {
        match self {
            AlertKind::Slack { .. } => "slack",
            AlertKind::Discord { .. } => "discord",
            AlertKind::Webhook { .. } => "webhook",
            AlertKind::Email { .. } => "email",
        }
    }
}

/// `scheme://host[:port]` of a URL, without credentials, path or query:
/// URLs of alert channels hold tokens, so only this much is ever logged or
/// shown.
pub fn url_origin(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => "(unparsable URL)".to_owned(),
    }
}

impl std::fmt::Debug for AlertKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AlertKind::Slack { url } | AlertKind::Discord { url } | AlertKind::Webhook { url } => f
                .debug_struct(self.name())
                .field("url", &format!("{}/(redacted)", url_origin(url)))
                .finish(),
            AlertKind::Email { smtp_url, from, to } => f
                .debug_struct("email")
                .field(
                    "smtp_url",
                    &format!("{} (credentials redacted)", url_origin(smtp_url)),
                )
                .field("from", from)
                .field("to", to)
                .finish(),
        }
    }
}

impl std::fmt::Debug for AlertConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("renotify", &self.renotify)
            .finish()
    }
}

/// `[verify]`: scheduled test restores (invariant 6). They need the
/// identity (`[repository] identity_file`); without it `pitr run` does not
/// schedule them and `/health` says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyConfig {
    /// When test restores run, cron in UTC (`schedule`, default
    /// `0 4 * * *`); `None` when written `"off"`.
    pub schedule: Option<CronSchedule>,
    /// Where test restores are staged and removed again (`scratch_dir`,
    /// default `<state_dir>/verify`).
    pub scratch_dir: PathBuf,
    /// The OS user PostgreSQL runs as during a test restore when pitr runs
    /// as root (`os_user`, default `postgres`).
    pub os_user: String,
}

/// What a `[[command]]`'s `verify` writes where the path of the restored
/// copy goes.
pub const VERIFY_FILE_PLACEHOLDER: &str = "{file}";

/// One `[[command]]`: a program whose standard output is stored as a
/// snapshot (a `pg_dump`, an export), on a schedule (docs/SNAPSHOTS.md).
#[derive(Clone, PartialEq, Eq)]
pub struct CommandConfig {
    /// Unique among `[[command]]` entries; `[a-z0-9_-]+`.
    pub name: String,
    /// The program and its arguments (`run`), run directly: no shell, so
    /// nothing in it is expanded or split. Never empty.
    pub run: Vec<String>,
    /// Variables added to the program's environment (`env` or `env_file`).
    /// May hold passwords: `Debug` shows the names only.
    pub env: Vec<(String, String)>,
    /// When a snapshot is taken, cron in UTC (`schedule`, default
    /// `30 2 * * *`); `None` when written `"off"`.
    pub schedule: Option<CronSchedule>,
    /// How long one run may take before its whole process group is killed
    /// and the run counts as failed (`timeout`, default 1 h).
    pub timeout: Duration,
    /// The OS user the program runs as when pitr runs as root (`user`);
    /// `None`: pitr's own user.
    pub user: Option<String>,
    /// A program run on a restored copy during test restores (`verify`),
    /// with `{file}` replaced by the copy's path; `None`: the copy is only
    /// read back and checked.
    pub verify: Option<Vec<String>>,
    /// `/health` fails when the newest snapshot is older than this
    /// (`max_age`); `None`: 1.5 × the schedule's interval (no limit when
    /// the schedule is off).
    pub max_age: Option<Duration>,
}

impl std::fmt::Debug for CommandConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The config is logged at startup; env values may be passwords.
        let env: Vec<String> = self
            .env
            .iter()
            .map(|(k, _)| format!("{k}=(redacted)"))
            .collect();
        f.debug_struct("CommandConfig")
            .field("name", &self.name)
            .field("run", &self.run)
            .field("env", &env)
            .field("schedule", &self.schedule)
            .field("timeout", &self.timeout)
            .field("user", &self.user)
            .field("verify", &self.verify)
            .field("max_age", &self.max_age)
            .finish()
    }
}

/// How the fleet catalog is reached (`[fleet] kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetKind {
    /// `kind = "postgres"` (the default): a PostgreSQL connection.
    Postgres,
    /// `kind = "http"`: batches POSTed as JSON to a receiver (`pitr fleet
    /// receive`, docs/FLEET.md "HTTP transport") with a bearer token.
    Http,
}

/// `[fleet]`: the fleet catalog this sidecar publishes into and `pitr
/// fleet` reads (docs/FLEET.md).
#[derive(Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// How the catalog is reached.
    pub kind: FleetKind,
    /// A libpq connection string or `postgres://` URL (`url`); TLS
    /// settings (`sslmode`, `sslrootcert`) go in it as for `[[postgres]]`.
    /// May hold a password: `Debug` redacts it. With `kind = "http"`, the
    /// receiver's base URL (https, or http to loopback or when
    /// `allow_insecure_http`), without a trailing slash.
    pub url: String,
    /// The role's password (`password` or `password_file`), used when the
    /// URL has none. `Debug` redacts it.
    pub password: Option<String>,
    /// Send a cleartext or md5 password over an unencrypted TCP connection
    /// (`allow_insecure_password`, default false), as for `[[postgres]]`.
    pub allow_insecure_password: bool,
    /// This sidecar's name in the fleet (`instance`, default the host
    /// name): the key of every row it writes. `[A-Za-z0-9_.-]`, 1 to 63.
    pub instance: String,
    /// Free key/values shown and filtered on (`labels`): service, region,
    /// deployment.
    pub labels: std::collections::BTreeMap<String, String>,
    /// How often the publisher looks for new commits and reports that the
    /// instance is alive (`publish_interval`, 1 s..=1 h, default 30 s).
    pub publish_interval: Duration,
    /// The bearer token sent to the receiver (`token` or `token_file`);
    /// set exactly when `kind = "http"`. `Debug` redacts it.
    pub token: Option<String>,
    /// Send the token over plain http to a host that is not loopback
    /// (`allow_insecure_http`, default false).
    pub allow_insecure_http: bool,
    /// A PEM file of the certificates that may sign the receiver's, trusted
    /// besides the system's (`ca_file`, `kind = "http"` only): for a
    /// receiver with its own CA.
    pub ca_file: Option<PathBuf>,
    /// `pitr fleet receive`'s settings (`receive_listen`,
    /// `receive_tokens_file`, `receive_tls_*`).
    pub receive: ReceiveConfig,
}

/// What `pitr fleet receive` serves (docs/FLEET.md "HTTP transport").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiveConfig {
    /// The address it listens on (`receive_listen`, default
    /// `127.0.0.1:9188`).
    pub listen: std::net::SocketAddr,
    /// The file of `ROLE SHA256-HEX-OF-TOKEN` lines (`receive_tokens_file`);
    /// `pitr fleet receive` refuses to start without it.
    pub tokens_file: Option<PathBuf>,
    /// Serve https with this certificate and key; `None`: plain http.
    pub tls: Option<TlsFiles>,
}

/// A server's own certificate (its chain in PEM, leaf first) and private
/// key (PEM), read when the server starts: `[health] tls_cert_file` /
/// `tls_key_file`, `[fleet] receive_tls_cert_file` / `receive_tls_key_file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain.
    pub cert_file: PathBuf,
    /// The private key.
    pub key_file: PathBuf,
}

impl std::fmt::Debug for FleetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The config is logged at startup; passwords must not reach the logs.
        f.debug_struct("FleetConfig")
            .field("kind", &self.kind)
            .field("url", &redact::conninfo(&self.url))
            .field("password", &self.password.as_ref().map(|_| "(redacted)"))
            .field("allow_insecure_password", &self.allow_insecure_password)
            .field("instance", &self.instance)
            .field("labels", &self.labels)
            .field("publish_interval", &self.publish_interval)
            .field("token", &self.token.as_ref().map(|_| "(redacted)"))
            .field("allow_insecure_http", &self.allow_insecure_http)
            .field("ca_file", &self.ca_file)
            .field("receive", &self.receive)
            .finish()
    }
}

/// `[restore]`: how restores and test restores find PostgreSQL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreConfig {
    /// Directories searched first for the server binaries of a backup's
    /// major (`bin_dirs`, default none), before the usual places.
    pub bin_dirs: Vec<PathBuf>,
}

/// `[retention]`: which base backups (and SQLite snapshots) are kept, per
/// database, and how unreferenced objects are collected. The newest
/// restorable backup is always kept, with the WAL after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionConfig {
    /// Keep the newest N backups (`keep_last`, default 3).
    pub keep_last: u32,
    /// Keep the newest backup of each of the last N days with one, UTC
    /// (`keep_daily`, default 7).
    pub keep_daily: u32,
    /// Keep the newest backup of each of the last N ISO weeks with one
    /// (`keep_weekly`, default 4).
    pub keep_weekly: u32,
    /// Keep the newest backup of each of the last N months with one
    /// (`keep_monthly`, default 6).
    pub keep_monthly: u32,
    /// How long an unreferenced object stays marked before it is deleted
    /// (`gc_grace`, default 24 h), so a writer that still uses it is seen.
    pub gc_grace: Duration,
    /// When `pitr run` applies the policy and collects garbage, cron in UTC
    /// (`schedule`, default `30 4 * * *`); `None` when written `"off"`.
    pub schedule: Option<CronSchedule>,
}

/// `[scrub]`: the background scrub inside `pitr run`. Each run lists every
/// destination and compares names and sizes with the catalog (cheap), copies
/// a verified good copy over every missing or wrong-size object, and reads
/// and checks up to `read_budget` bytes of objects in full, continuing where
/// the last run stopped, so every object is read over successive runs
/// without downloading the whole repository each time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrubConfig {
    /// When the scrub runs, cron in UTC (`schedule`, default `15 5 * * *`);
    /// `None` when written `"off"`.
    pub schedule: Option<CronSchedule>,
    /// Bytes of objects downloaded and checked in full per run and
    /// destination (`read_budget`, default 1 GiB); 0 only lists.
    pub read_budget: u64,
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

impl FleetConfig {
    /// Loads only `[fleet]` of `path` (with the process's `PITR_FLEET_*`
    /// overrides): what `pitr fleet` needs to read the fleet catalog, so
    /// a reader's file may hold nothing else. Other sections are still
    /// parsed (unknown keys refused) but not validated.
    pub fn load(path: &Path) -> Result<FleetConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let ctx = error::Ctx {
            path,
            text: &text,
            base: path.parent().unwrap_or(Path::new("")),
        };
        let mut raw = raw::parse(&ctx)?;
        env::apply(&ctx, &mut raw, &process_env()?)?;
        match raw.fleet {
            Some(f) => validate::fleet_only(&ctx, f),
            None => Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                key: "[fleet]".to_owned(),
                message: "the file has no [fleet] section. Add [fleet] with url = \"postgres://…/fleet\" (docs/FLEET.md), or set PITR_FLEET_URL".to_owned(),
            }),
        }
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
