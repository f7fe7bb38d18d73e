//! The file as written: serde structs that accept any subset of the known keys
//! and nothing else. Every field is optional so that a missing key gets our
//! own message (with the fix) instead of serde's, and every value remembers
//! where it came from so later errors can point at the line or the variable.

use serde::{Deserialize, Deserializer};
use serde_path_to_error::Segment;

use super::error::{ConfigError, Ctx, Entry, KeyName, Origin, closest};

/// A value and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Val<T> {
    pub value: T,
    pub origin: Origin,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Val<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // toml fills `Spanned` with the value's byte range in the file.
        let spanned = toml::Spanned::<T>::deserialize(d)?;
        Ok(Val {
            origin: Origin::File(spanned.span()),
            value: spanned.into_inner(),
        })
    }
}

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub repository: Option<RawRepository>,
    pub destination: Option<Vec<RawDestination>>,
    pub postgres: Option<Vec<RawPostgres>>,
    pub sqlite: Option<Vec<RawSqlite>>,
    pub health: Option<RawHealth>,
    pub alert: Option<Vec<RawAlert>>,
    pub verify: Option<RawVerify>,
    pub retention: Option<RawRetention>,
    pub scrub: Option<RawScrub>,
    pub restore: Option<RawRestore>,
}

/// `[repository]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRepository {
    pub recipients: Option<Val<Vec<Val<String>>>>,
    pub recipients_file: Option<Val<String>>,
    pub identity_file: Option<Val<String>>,
    pub key_file: Option<Val<String>>,
    pub state_dir: Option<Val<String>>,
    pub zstd_level: Option<Val<i64>>,
    /// An integer of bytes or a string with a unit; checked in validation.
    pub pack_size: Option<Val<toml::Value>>,
    pub quorum: Option<Val<i64>>,
    pub spool_dir: Option<Val<String>>,
    pub spool_max_bytes: Option<Val<toml::Value>>,
    pub key_id: Option<Val<String>>,
}

/// One `[[destination]]`. Keys of every kind live here, flat, as they are
/// written; validation checks which ones the entry's kind uses.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDestination {
    pub name: Option<Val<String>>,
    pub kind: Option<Val<String>>,
    pub path: Option<Val<String>>,
    pub bucket: Option<Val<String>>,
    pub prefix: Option<Val<String>>,
    pub region: Option<Val<String>>,
    pub endpoint: Option<Val<String>>,
    pub access_key_id: Option<Val<String>>,
    pub secret_access_key: Option<Val<String>>,
    pub secret_access_key_file: Option<Val<String>>,
    pub request_timeout: Option<Val<i64>>,
    pub space: Option<Val<String>>,
    pub principal: Option<Val<String>>,
    pub principal_file: Option<Val<String>>,
    pub proof: Option<Val<String>>,
    pub proof_file: Option<Val<String>>,
    pub service: Option<Val<String>>,
    pub service_did: Option<Val<String>>,
    pub gateway: Option<Val<String>>,
    /// Same form as `[[sqlite]] interval`.
    pub batch_interval: Option<Val<toml::Value>>,
}

/// One `[[postgres]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPostgres {
    pub name: Option<Val<String>>,
    pub conninfo: Option<Val<String>>,
    pub conninfo_file: Option<Val<String>>,
    pub slot: Option<Val<String>>,
    pub base_backup: Option<Val<String>>,
    /// An integer or a float; checked in validation.
    pub base_backup_wal_gb: Option<Val<toml::Value>>,
    pub checkpoint: Option<Val<String>>,
    pub max_rate: Option<Val<i64>>,
    pub incremental_max_chain: Option<Val<i64>>,
    pub manifest_checksums: Option<Val<String>>,
    /// `true`/`false`, or their text from the environment.
    pub allow_insecure_password: Option<Val<toml::Value>>,
}

/// One `[[sqlite]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSqlite {
    pub name: Option<Val<String>>,
    pub path: Option<Val<String>>,
    /// Seconds as an integer or a string with a unit; checked in validation.
    pub interval: Option<Val<toml::Value>>,
    /// Same form as `interval`.
    pub snapshot_interval: Option<Val<toml::Value>>,
}

/// `[health]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub listen: Option<Val<String>>,
    /// Durations and sizes: an integer or a string with a unit.
    pub wal_ack_max_age: Option<Val<toml::Value>>,
    pub stream_down_max: Option<Val<toml::Value>>,
    pub backup_max_age: Option<Val<toml::Value>>,
    pub destination_down_max: Option<Val<toml::Value>>,
    pub slot_retained_max: Option<Val<toml::Value>>,
    pub verify_max_age: Option<Val<toml::Value>>,
    pub restore_token: Option<Val<String>>,
    pub restore_token_file: Option<Val<String>>,
    pub restore_root: Option<Val<String>>,
}

/// One `[[alert]]` channel. Keys of every kind live here, flat; validation
/// checks which ones the entry's kind uses.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlert {
    pub name: Option<Val<String>>,
    pub kind: Option<Val<String>>,
    pub url: Option<Val<String>>,
    pub url_file: Option<Val<String>>,
    pub smtp_url: Option<Val<String>>,
    pub smtp_url_file: Option<Val<String>>,
    pub from: Option<Val<String>>,
    pub to: Option<Val<Vec<Val<String>>>>,
    pub renotify: Option<Val<toml::Value>>,
}

/// `[verify]`: scheduled test restores.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVerify {
    pub schedule: Option<Val<String>>,
    pub scratch_dir: Option<Val<String>>,
    pub os_user: Option<Val<String>>,
}

/// `[retention]`: which backups are kept, and garbage collection.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetention {
    pub keep_last: Option<Val<i64>>,
    pub keep_daily: Option<Val<i64>>,
    pub keep_weekly: Option<Val<i64>>,
    pub keep_monthly: Option<Val<i64>>,
    pub gc_grace: Option<Val<toml::Value>>,
    pub schedule: Option<Val<String>>,
}

/// `[scrub]`: the background scrub of every destination.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScrub {
    pub schedule: Option<Val<String>>,
    pub read_budget: Option<Val<toml::Value>>,
}

/// `[restore]`: how restores (and test restores) run PostgreSQL.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRestore {
    pub bin_dirs: Option<Val<Vec<Val<String>>>>,
}

/// The sections of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Section {
    Repository,
    Destination,
    Postgres,
    Sqlite,
    Health,
    Alert,
    Verify,
    Retention,
    Scrub,
    Restore,
}

/// How an environment variable's text becomes a value of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyType {
    Str,
    Int,
    /// Comma-separated in the environment.
    List,
    /// Bytes, or a number with a unit.
    Size,
    /// A number, whole or with a fraction.
    Number,
    /// Seconds, or a number with a unit (`500ms`, `1s`, `24h`).
    Duration,
}

/// One key of a section: its name, type, and an example line for messages.
#[derive(Debug, Clone, Copy)]
pub(super) struct KeySpec {
    pub name: &'static str,
    pub ty: KeyType,
    pub example: &'static str,
}

const fn key(name: &'static str, ty: KeyType, example: &'static str) -> KeySpec {
    KeySpec { name, ty, example }
}

// These lists must match the raw structs above; `tests::every_key_is_known`
// checks that each listed key deserializes.
const REPOSITORY_KEYS: &[KeySpec] = &[
    key("recipients", KeyType::List, r#"recipients = ["age1…"]"#),
    key(
        "recipients_file",
        KeyType::Str,
        r#"recipients_file = "/run/secrets/recipients""#,
    ),
    key(
        "identity_file",
        KeyType::Str,
        r#"identity_file = "/run/secrets/age""#,
    ),
    key(
        "key_file",
        KeyType::Str,
        r#"key_file = "/run/secrets/pitr-repository.key""#,
    ),
    key("state_dir", KeyType::Str, r#"state_dir = "/var/lib/pitr""#),
    key("zstd_level", KeyType::Int, "zstd_level = 3"),
    key("pack_size", KeyType::Size, r#"pack_size = "16MiB""#),
    key("quorum", KeyType::Int, "quorum = 2"),
    key(
        "spool_dir",
        KeyType::Str,
        r#"spool_dir = "/var/lib/pitr/spool""#,
    ),
    key(
        "spool_max_bytes",
        KeyType::Size,
        r#"spool_max_bytes = "4GiB""#,
    ),
    key(
        "key_id",
        KeyType::Str,
        r#"key_id = "0123456789abcdef0123456789abcdef""#,
    ),
];
const DESTINATION_KEYS: &[KeySpec] = &[
    key("name", KeyType::Str, r#"name = "local""#),
    key("kind", KeyType::Str, r#"kind = "fs""#),
    key("path", KeyType::Str, r#"path = "/var/lib/pitr/repo""#),
    key("bucket", KeyType::Str, r#"bucket = "backups""#),
    key("prefix", KeyType::Str, r#"prefix = "pitr/""#),
    key("region", KeyType::Str, r#"region = "eu-central-1""#),
    key(
        "endpoint",
        KeyType::Str,
        r#"endpoint = "https://s3.eu-central-1.amazonaws.com""#,
    ),
    key("access_key_id", KeyType::Str, r#"access_key_id = "AKIA…""#),
    key(
        "secret_access_key",
        KeyType::Str,
        r#"secret_access_key_file = "/run/secrets/s3-secret""#,
    ),
    key(
        "secret_access_key_file",
        KeyType::Str,
        r#"secret_access_key_file = "/run/secrets/s3-secret""#,
    ),
    key("request_timeout", KeyType::Int, "request_timeout = 60"),
    key(
        "batch_interval",
        KeyType::Duration,
        r#"batch_interval = "5m""#,
    ),
    key("space", KeyType::Str, r#"space = "did:key:z6Mk…""#),
    key(
        "principal",
        KeyType::Str,
        r#"principal_file = "/run/secrets/w3-principal""#,
    ),
    key(
        "principal_file",
        KeyType::Str,
        r#"principal_file = "/run/secrets/w3-principal""#,
    ),
    key(
        "proof",
        KeyType::Str,
        r#"proof_file = "/run/secrets/w3-proof""#,
    ),
    key(
        "proof_file",
        KeyType::Str,
        r#"proof_file = "/run/secrets/w3-proof""#,
    ),
    key(
        "service",
        KeyType::Str,
        r#"service = "https://up.storacha.network""#,
    ),
    key(
        "service_did",
        KeyType::Str,
        r#"service_did = "did:web:up.storacha.network""#,
    ),
    key(
        "gateway",
        KeyType::Str,
        r#"gateway = "https://storacha.link""#,
    ),
];
const POSTGRES_KEYS: &[KeySpec] = &[
    key("name", KeyType::Str, r#"name = "main""#),
    key(
        "conninfo",
        KeyType::Str,
        r#"conninfo = "host=127.0.0.1 port=5432 user=replicator dbname=postgres""#,
    ),
    key(
        "conninfo_file",
        KeyType::Str,
        r#"conninfo_file = "/run/secrets/pg-conninfo""#,
    ),
    key("slot", KeyType::Str, r#"slot = "pitr""#),
    key("base_backup", KeyType::Str, r#"base_backup = "0 3 * * *""#),
    key(
        "base_backup_wal_gb",
        KeyType::Number,
        "base_backup_wal_gb = 16",
    ),
    key("checkpoint", KeyType::Str, r#"checkpoint = "spread""#),
    key("max_rate", KeyType::Int, "max_rate = 102400"),
    key(
        "incremental_max_chain",
        KeyType::Int,
        "incremental_max_chain = 7",
    ),
    key(
        "manifest_checksums",
        KeyType::Str,
        r#"manifest_checksums = "crc32c""#,
    ),
    key(
        "allow_insecure_password",
        KeyType::Number,
        "allow_insecure_password = false",
    ),
];
const SQLITE_KEYS: &[KeySpec] = &[
    key("name", KeyType::Str, r#"name = "auth""#),
    key("path", KeyType::Str, r#"path = "/data/auth.db""#),
    key("interval", KeyType::Duration, r#"interval = "1s""#),
    key(
        "snapshot_interval",
        KeyType::Duration,
        r#"snapshot_interval = "24h""#,
    ),
];
const HEALTH_KEYS: &[KeySpec] = &[
    key("listen", KeyType::Str, r#"listen = "0.0.0.0:9187""#),
    key(
        "wal_ack_max_age",
        KeyType::Duration,
        r#"wal_ack_max_age = "5m""#,
    ),
    key(
        "stream_down_max",
        KeyType::Duration,
        r#"stream_down_max = "1m""#,
    ),
    key(
        "backup_max_age",
        KeyType::Duration,
        r#"backup_max_age = "36h""#,
    ),
    key(
        "destination_down_max",
        KeyType::Duration,
        r#"destination_down_max = "10m""#,
    ),
    key(
        "slot_retained_max",
        KeyType::Size,
        r#"slot_retained_max = "4GiB""#,
    ),
    key(
        "verify_max_age",
        KeyType::Duration,
        r#"verify_max_age = "3d""#,
    ),
    key(
        "restore_token",
        KeyType::Str,
        r#"restore_token_file = "/run/secrets/pitr-restore-token""#,
    ),
    key(
        "restore_token_file",
        KeyType::Str,
        r#"restore_token_file = "/run/secrets/pitr-restore-token""#,
    ),
    key(
        "restore_root",
        KeyType::Str,
        r#"restore_root = "/var/lib/pitr/restores""#,
    ),
];
const ALERT_KEYS: &[KeySpec] = &[
    key("name", KeyType::Str, r#"name = "ops""#),
    key("kind", KeyType::Str, r#"kind = "slack""#),
    key(
        "url",
        KeyType::Str,
        r#"url_file = "/run/secrets/slack-webhook""#,
    ),
    key(
        "url_file",
        KeyType::Str,
        r#"url_file = "/run/secrets/slack-webhook""#,
    ),
    key(
        "smtp_url",
        KeyType::Str,
        r#"smtp_url = "smtp://user:password@mail.example.com:587""#,
    ),
    key(
        "smtp_url_file",
        KeyType::Str,
        r#"smtp_url_file = "/run/secrets/smtp-url""#,
    ),
    key("from", KeyType::Str, r#"from = "pitr@example.com""#),
    key("to", KeyType::List, r#"to = ["oncall@example.com"]"#),
    key("renotify", KeyType::Duration, r#"renotify = "24h""#),
];
const VERIFY_KEYS: &[KeySpec] = &[
    key("schedule", KeyType::Str, r#"schedule = "0 4 * * *""#),
    key(
        "scratch_dir",
        KeyType::Str,
        r#"scratch_dir = "/var/lib/pitr/verify""#,
    ),
    key("os_user", KeyType::Str, r#"os_user = "postgres""#),
];
const RETENTION_KEYS: &[KeySpec] = &[
    key("keep_last", KeyType::Int, "keep_last = 3"),
    key("keep_daily", KeyType::Int, "keep_daily = 7"),
    key("keep_weekly", KeyType::Int, "keep_weekly = 4"),
    key("keep_monthly", KeyType::Int, "keep_monthly = 6"),
    key("gc_grace", KeyType::Duration, r#"gc_grace = "24h""#),
    key("schedule", KeyType::Str, r#"schedule = "30 4 * * *""#),
];
const RESTORE_KEYS: &[KeySpec] = &[key(
    "bin_dirs",
    KeyType::List,
    r#"bin_dirs = ["/usr/lib/postgresql/17/bin"]"#,
)];
const SCRUB_KEYS: &[KeySpec] = &[
    key("schedule", KeyType::Str, r#"schedule = "15 5 * * *""#),
    key("read_budget", KeyType::Size, r#"read_budget = "1GiB""#),
];

impl Section {
    /// Every section, in the order the design card writes them.
    pub const ALL: [Section; 10] = [
        Section::Repository,
        Section::Destination,
        Section::Postgres,
        Section::Sqlite,
        Section::Health,
        Section::Alert,
        Section::Verify,
        Section::Retention,
        Section::Scrub,
        Section::Restore,
    ];

    /// The section's name in the file.
    pub fn name(self) -> &'static str {
        match self {
            Section::Repository => "repository",
            Section::Destination => "destination",
            Section::Postgres => "postgres",
            Section::Sqlite => "sqlite",
            Section::Health => "health",
            Section::Alert => "alert",
            Section::Verify => "verify",
            Section::Retention => "retention",
            Section::Scrub => "scrub",
            Section::Restore => "restore",
        }
    }

    /// Whether it is written `[[name]]` (many named entries).
    pub fn is_array(self) -> bool {
        matches!(
            self,
            Section::Destination | Section::Postgres | Section::Sqlite | Section::Alert
        )
    }

    /// The section's header as written in the file.
    pub fn header(self) -> String {
        if self.is_array() {
            format!("[[{}]]", self.name())
        } else {
            format!("[{}]", self.name())
        }
    }

    /// The keys the section accepts.
    pub fn keys(self) -> &'static [KeySpec] {
        match self {
            Section::Repository => REPOSITORY_KEYS,
            Section::Destination => DESTINATION_KEYS,
            Section::Postgres => POSTGRES_KEYS,
            Section::Sqlite => SQLITE_KEYS,
            Section::Health => HEALTH_KEYS,
            Section::Alert => ALERT_KEYS,
            Section::Verify => VERIFY_KEYS,
            Section::Retention => RETENTION_KEYS,
            Section::Scrub => SCRUB_KEYS,
            Section::Restore => RESTORE_KEYS,
        }
    }

    /// The spec of one key.
    pub fn key(self, name: &str) -> Option<&'static KeySpec> {
        self.keys().iter().find(|k| k.name == name)
    }

    /// The section named `name` in the file.
    pub fn from_name(name: &str) -> Option<Section> {
        Section::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The valid keys, for "valid keys are …" messages.
    pub fn key_list(self) -> String {
        let names: Vec<&str> = self.keys().iter().map(|k| k.name).collect();
        names.join(", ")
    }
}

/// Parses the file's text into the raw structs. Syntax errors become
/// [`ConfigError::Parse`]; unknown keys and wrong types become
/// [`ConfigError::Invalid`] naming the key, its line, and the valid keys.
pub(super) fn parse(ctx: &Ctx<'_>) -> Result<RawConfig, ConfigError> {
    let de = toml::Deserializer::parse(ctx.text).map_err(|e| {
        let at = e
            .span()
            .map(|s| format!(" at {}", ctx.position(s.start)))
            .unwrap_or_default();
        ConfigError::Parse {
            path: ctx.path.to_path_buf(),
            message: format!("not valid TOML{at}: {}. {}", e.message(), syntax_hint(&e)),
        }
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| shape_error(ctx, e))
}

/// What to do about a syntax error.
fn syntax_hint(e: &toml::de::Error) -> &'static str {
    if e.message().contains("duplicate") {
        "Each key, and each [section], may appear only once; repeated entries are written [[section]]"
    } else {
        "Fix the syntax there"
    }
}

/// Turns a serde error (valid TOML, wrong shape) into a message about the key.
fn shape_error(ctx: &Ctx<'_>, e: serde_path_to_error::Error<toml::de::Error>) -> ConfigError {
    let at = e
        .inner()
        .span()
        .map(|s| format!(" at {}", ctx.position(s.start)))
        .unwrap_or_default();
    let detail = e.inner().message().to_owned();
    // `Val` goes through toml's `Spanned`, whose private field names show up
    // in the path; they mean nothing to an operator.
    let segments: Vec<&Segment> = e
        .path()
        .iter()
        .filter(|s| !matches!(s, Segment::Map { key } if key.starts_with("$__serde_spanned")))
        .collect();
    let invalid = |key: String, message: String| ConfigError::Invalid {
        path: ctx.path.to_path_buf(),
        key,
        message,
    };
    let sections: Vec<String> = Section::ALL.iter().map(|s| s.header()).collect();
    let sections = sections.join(", ");

    let Some(Segment::Map { key: top }) = segments.first() else {
        return ConfigError::Parse {
            path: ctx.path.to_path_buf(),
            message: format!(
                "{detail}{at}. The file must be a TOML document with the sections {sections}"
            ),
        };
    };
    let Some(section) = Section::from_name(top) else {
        let hint = closest(top, Section::ALL.iter().map(|s| s.name()))
            .map(|s| format!(" Did you mean `{s}`?"))
            .unwrap_or_default();
        return invalid(
            top.clone(),
            format!(
                "unknown section or top-level key{at}. Valid sections are {sections}.{hint} Remove or rename it"
            ),
        );
    };

    // Find the entry (for array sections) and the key within the section.
    let mut rest = segments.get(1..).unwrap_or_default().iter();
    let entry = if section.is_array() {
        match rest.next() {
            Some(Segment::Seq { index }) => entry_of(ctx, section, *index),
            _ => {
                return invalid(
                    section.header(),
                    format!(
                        "{detail}{at}. Write each entry as its own {} table, e.g.\n{}\nname = \"…\"",
                        section.header(),
                        section.header()
                    ),
                );
            }
        }
    } else {
        Entry::None
    };
    let Some(Segment::Map { key: name }) = rest.next() else {
        return invalid(
            KeyName::entry(section, &entry, "").to_string(),
            format!(
                "{detail}{at}. {} must be a table of keys ({})",
                section.header(),
                section.key_list()
            ),
        );
    };
    let key = KeyName::entry(section, &entry, name);
    match section.key(name) {
        None => {
            let hint = closest(name, section.keys().iter().map(|k| k.name))
                .map(|k| format!(" Did you mean `{k}`?"))
                .unwrap_or_default();
            invalid(
                key.to_string(),
                format!(
                    "unknown key{at}. Valid keys in {} are: {}.{hint} Remove or rename it",
                    section.header(),
                    section.key_list()
                ),
            )
        }
        Some(spec) => invalid(
            key.to_string(),
            format!("wrong type{at}: {detail}. Write it like {}", spec.example),
        ),
    }
}

/// Names entry `index` of an array section for a message: by its `name` when
/// the file gives one, else by position. Parsed loosely, since the strict
/// parse is what failed.
fn entry_of(ctx: &Ctx<'_>, section: Section, index: usize) -> Entry {
    let name = toml::from_str::<toml::Table>(ctx.text).ok().and_then(|t| {
        t.get(section.name())?
            .as_array()?
            .get(index)?
            .get("name")?
            .as_str()
            .map(str::to_owned)
    });
    match name {
        Some(n) => Entry::Named(n),
        None => Entry::Index(index),
    }
}
