//! The file as written: serde structs that accept any subset of the known keys
//! and nothing else. Every field is optional so that a missing key gets our
//! own message (with the fix) instead of serde's, and every value remembers
//! where it came from so later errors can point at the line or the variable.
//!
//! Each section is declared once, with `section!`: its struct, its key table
//! (names, types, examples for messages) and the by-name access through which
//! `env` sets keys all come from that one list.

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
    pub command: Option<Vec<RawCommand>>,
    pub infisical: Option<Vec<RawInfisical>>,
    pub fleet: Option<RawFleet>,
}

impl RawConfig {
    /// The keys of `section`, of its entry `index` for array sections, for
    /// the environment to set. A plain section the file lacks is created;
    /// an entry the file lacks is `None`, since entries are found by name.
    pub fn keys_mut(&mut self, section: Section, index: Option<usize>) -> Option<&mut dyn Keys> {
        fn nth<T: Keys>(
            entries: &mut Option<Vec<T>>,
            index: Option<usize>,
        ) -> Option<&mut dyn Keys> {
            Some(entries.as_mut()?.get_mut(index?)? as &mut dyn Keys)
        }
        fn plain<T: Keys + Default>(s: &mut Option<T>) -> Option<&mut dyn Keys> {
            Some(s.get_or_insert_with(Default::default) as &mut dyn Keys)
        }
        match section {
            Section::Repository => plain(&mut self.repository),
            Section::Destination => nth(&mut self.destination, index),
            Section::Postgres => nth(&mut self.postgres, index),
            Section::Sqlite => nth(&mut self.sqlite, index),
            Section::Health => plain(&mut self.health),
            Section::Alert => nth(&mut self.alert, index),
            Section::Verify => plain(&mut self.verify),
            Section::Retention => plain(&mut self.retention),
            Section::Scrub => plain(&mut self.scrub),
            Section::Restore => plain(&mut self.restore),
            Section::Command => nth(&mut self.command, index),
            Section::Infisical => nth(&mut self.infisical, index),
            Section::Fleet => plain(&mut self.fleet),
        }
    }
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
    Command,
    Infisical,
    Fleet,
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
    /// A table of strings (`{ A = "1" }`); `A=1,B=2` in the environment.
    Table,
}

/// One key of a section: its name, type, and an example line for messages.
#[derive(Debug, Clone, Copy)]
pub(super) struct KeySpec {
    pub name: &'static str,
    /// The same type [`Slot`] has for the key (one declaration gives both);
    /// only the tests that walk the table read it here.
    #[cfg_attr(not(test), allow(dead_code))]
    pub ty: KeyType,
    pub example: &'static str,
}

/// Where one key's value lives in a raw section, by the key's type; the
/// environment overrides write through it.
pub(super) enum Slot<'a> {
    Str(&'a mut Option<Val<String>>),
    Int(&'a mut Option<Val<i64>>),
    List(&'a mut Option<Val<Vec<Val<String>>>>),
    /// Sizes, durations and numbers stay TOML values until validation, which
    /// accepts an integer or a string with a unit.
    Size(&'a mut Option<Val<toml::Value>>),
    Number(&'a mut Option<Val<toml::Value>>),
    Duration(&'a mut Option<Val<toml::Value>>),
    /// Checked in validation: every value must be a string.
    Table(&'a mut Option<Val<toml::Table>>),
}

impl Slot<'_> {
    /// Where the current value came from; `None` when unset.
    pub fn origin(&self) -> Option<&Origin> {
        match self {
            Slot::Str(v) => v.as_ref().map(|v| &v.origin),
            Slot::Int(v) => v.as_ref().map(|v| &v.origin),
            Slot::List(v) => v.as_ref().map(|v| &v.origin),
            Slot::Size(v) | Slot::Number(v) | Slot::Duration(v) => v.as_ref().map(|v| &v.origin),
            Slot::Table(v) => v.as_ref().map(|v| &v.origin),
        }
    }

    /// Unsets the key.
    pub fn clear(self) {
        match self {
            Slot::Str(v) => *v = None,
            Slot::Int(v) => *v = None,
            Slot::List(v) => *v = None,
            Slot::Size(v) | Slot::Number(v) | Slot::Duration(v) => *v = None,
            Slot::Table(v) => *v = None,
        }
    }
}

/// A raw section's keys, addressed by name.
pub(super) trait Keys {
    /// The slot of `key`; `None` for a key the section does not have.
    fn slot(&mut self, key: &str) -> Option<Slot<'_>>;
}

/// The raw field type of a key of type `$ty`.
macro_rules! raw_type {
    (Str) => { String };
    (Int) => { i64 };
    (List) => { Vec<Val<String>> };
    (Size) => { toml::Value };
    (Number) => { toml::Value };
    (Duration) => { toml::Value };
    (Table) => { toml::Table };
}

/// Declares a section's raw struct, its key table and its [`Keys`] from one
/// list, so that a key exists in all three or in none: the file, the
/// messages and the environment overrides all know the same keys. The list's
/// order is the order messages list the keys in.
macro_rules! section {
    (
        $(#[$meta:meta])*
        struct $name:ident, table $table:ident {
            $( $(#[$field_meta:meta])* $field:ident: $ty:ident = $example:expr, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(super) struct $name {
            $( $(#[$field_meta])* pub $field: Option<Val<raw_type!($ty)>>, )*
        }

        const $table: &[KeySpec] = &[
            $( KeySpec { name: stringify!($field), ty: KeyType::$ty, example: $example }, )*
        ];

        impl Keys for $name {
            fn slot(&mut self, key: &str) -> Option<Slot<'_>> {
                match key {
                    $( stringify!($field) => Some(Slot::$ty(&mut self.$field)), )*
                    _ => None,
                }
            }
        }
    };
}

section! {
    /// `[repository]`.
    struct RawRepository, table REPOSITORY_KEYS {
        recipients: List = r#"recipients = ["age1…"]"#,
        recipients_file: Str = r#"recipients_file = "/run/secrets/recipients""#,
        identity_file: Str = r#"identity_file = "/run/secrets/age""#,
        key_file: Str = r#"key_file = "/run/secrets/pitr-repository.key""#,
        state_dir: Str = r#"state_dir = "/var/lib/pitr""#,
        zstd_level: Int = "zstd_level = 3",
        /// An integer of bytes or a string with a unit; checked in validation.
        pack_size: Size = r#"pack_size = "16MiB""#,
        quorum: Int = "quorum = 2",
        spool_dir: Str = r#"spool_dir = "/var/lib/pitr/spool""#,
        spool_max_bytes: Size = r#"spool_max_bytes = "4GiB""#,
        key_id: Str = r#"key_id = "0123456789abcdef0123456789abcdef""#,
    }
}

section! {
    /// One `[[destination]]`. Keys of every kind live here, flat, as they are
    /// written; validation checks which ones the entry's kind uses.
    struct RawDestination, table DESTINATION_KEYS {
        name: Str = r#"name = "local""#,
        kind: Str = r#"kind = "fs""#,
        path: Str = r#"path = "/var/lib/pitr/repo""#,
        bucket: Str = r#"bucket = "backups""#,
        prefix: Str = r#"prefix = "pitr/""#,
        region: Str = r#"region = "eu-central-1""#,
        endpoint: Str = r#"endpoint = "https://s3.eu-central-1.amazonaws.com""#,
        access_key_id: Str = r#"access_key_id = "AKIA…""#,
        secret_access_key: Str = r#"secret_access_key_file = "/run/secrets/s3-secret""#,
        secret_access_key_file: Str = r#"secret_access_key_file = "/run/secrets/s3-secret""#,
        request_timeout: Int = "request_timeout = 60",
        /// Same form as `[[sqlite]] interval`.
        batch_interval: Duration = r#"batch_interval = "5m""#,
        space: Str = r#"space = "did:key:z6Mk…""#,
        principal: Str = r#"principal_file = "/run/secrets/w3-principal""#,
        principal_file: Str = r#"principal_file = "/run/secrets/w3-principal""#,
        proof: Str = r#"proof_file = "/run/secrets/w3-proof""#,
        proof_file: Str = r#"proof_file = "/run/secrets/w3-proof""#,
        service: Str = r#"service = "https://up.storacha.network""#,
        service_did: Str = r#"service_did = "did:web:up.storacha.network""#,
        gateway: Str = r#"gateway = "https://storacha.link""#,
    }
}

section! {
    /// One `[[postgres]]`.
    struct RawPostgres, table POSTGRES_KEYS {
        name: Str = r#"name = "main""#,
        conninfo: Str =
            r#"conninfo = "host=127.0.0.1 port=5432 user=replicator dbname=postgres""#,
        conninfo_file: Str = r#"conninfo_file = "/run/secrets/pg-conninfo""#,
        slot: Str = r#"slot = "pitr""#,
        base_backup: Str = r#"base_backup = "0 3 * * *""#,
        /// An integer or a float; checked in validation.
        base_backup_wal_gb: Number = "base_backup_wal_gb = 16",
        checkpoint: Str = r#"checkpoint = "spread""#,
        max_rate: Int = "max_rate = 102400",
        incremental_max_chain: Int = "incremental_max_chain = 7",
        manifest_checksums: Str = r#"manifest_checksums = "crc32c""#,
        /// `true`/`false`, or their text from the environment.
        allow_insecure_password: Number = "allow_insecure_password = false",
    }
}

section! {
    /// One `[[sqlite]]`.
    struct RawSqlite, table SQLITE_KEYS {
        name: Str = r#"name = "auth""#,
        path: Str = r#"path = "/data/auth.db""#,
        /// Seconds as an integer or a string with a unit; checked in validation.
        interval: Duration = r#"interval = "1s""#,
        /// Same form as `interval`.
        snapshot_interval: Duration = r#"snapshot_interval = "24h""#,
    }
}

section! {
    /// `[health]`. Durations and sizes: an integer or a string with a unit.
    struct RawHealth, table HEALTH_KEYS {
        listen: Str = r#"listen = "0.0.0.0:9187""#,
        wal_ack_max_age: Duration = r#"wal_ack_max_age = "5m""#,
        stream_down_max: Duration = r#"stream_down_max = "1m""#,
        backup_max_age: Duration = r#"backup_max_age = "36h""#,
        destination_down_max: Duration = r#"destination_down_max = "10m""#,
        slot_retained_max: Size = r#"slot_retained_max = "4GiB""#,
        verify_max_age: Duration = r#"verify_max_age = "3d""#,
        restore_token: Str = r#"restore_token_file = "/run/secrets/pitr-restore-token""#,
        restore_token_file: Str = r#"restore_token_file = "/run/secrets/pitr-restore-token""#,
        restore_root: Str = r#"restore_root = "/var/lib/pitr/restores""#,
        tls_cert_file: Str = r#"tls_cert_file = "/etc/pitr/health.crt""#,
        tls_key_file: Str = r#"tls_key_file = "/etc/pitr/health.key""#,
    }
}

section! {
    /// One `[[alert]]` channel. Keys of every kind live here, flat;
    /// validation checks which ones the entry's kind uses.
    struct RawAlert, table ALERT_KEYS {
        name: Str = r#"name = "ops""#,
        kind: Str = r#"kind = "slack""#,
        url: Str = r#"url_file = "/run/secrets/slack-webhook""#,
        url_file: Str = r#"url_file = "/run/secrets/slack-webhook""#,
        smtp_url: Str = r#"smtp_url = "smtp://user:password@mail.example.com:587""#,
        smtp_url_file: Str = r#"smtp_url_file = "/run/secrets/smtp-url""#,
        from: Str = r#"from = "pitr@example.com""#,
        to: List = r#"to = ["oncall@example.com"]"#,
        renotify: Duration = r#"renotify = "24h""#,
    }
}

section! {
    /// `[verify]`: scheduled test restores.
    struct RawVerify, table VERIFY_KEYS {
        schedule: Str = r#"schedule = "0 4 * * *""#,
        scratch_dir: Str = r#"scratch_dir = "/var/lib/pitr/verify""#,
        os_user: Str = r#"os_user = "postgres""#,
    }
}

section! {
    /// `[retention]`: which backups are kept, and garbage collection.
    struct RawRetention, table RETENTION_KEYS {
        keep_last: Int = "keep_last = 3",
        keep_daily: Int = "keep_daily = 7",
        keep_weekly: Int = "keep_weekly = 4",
        keep_monthly: Int = "keep_monthly = 6",
        gc_grace: Duration = r#"gc_grace = "24h""#,
        schedule: Str = r#"schedule = "30 4 * * *""#,
    }
}

section! {
    /// `[scrub]`: the background scrub of every destination.
    struct RawScrub, table SCRUB_KEYS {
        schedule: Str = r#"schedule = "15 5 * * *""#,
        read_budget: Size = r#"read_budget = "1GiB""#,
    }
}

section! {
    /// `[restore]`: how restores (and test restores) run PostgreSQL.
    struct RawRestore, table RESTORE_KEYS {
        bin_dirs: List = r#"bin_dirs = ["/usr/lib/postgresql/17/bin"]"#,
    }
}

section! {
    /// One `[[command]]`: a snapshot source whose standard output is
    /// stored (docs/SNAPSHOTS.md).
    struct RawCommand, table COMMAND_KEYS {
        name: Str = r#"name = "app-dump""#,
        run: List = r#"run = ["pg_dump", "-Fc", "--dbname=app"]"#,
        env: Table = r#"env = { PGHOST = "127.0.0.1" }"#,
        env_file: Str = r#"env_file = "/run/secrets/app-dump.env""#,
        schedule: Str = r#"schedule = "30 2 * * *""#,
        timeout: Duration = r#"timeout = "1h""#,
        user: Str = r#"user = "postgres""#,
        verify: List = r#"verify = ["pg_restore", "--list", "{file}"]"#,
        max_age: Duration = r#"max_age = "36h""#,
    }
}

section! {
    /// One `[[infisical]]` snapshot source: an Infisical project's secrets.
    struct RawInfisical, table INFISICAL_KEYS {
        name: Str = r#"name = "secrets""#,
        site_url: Str = r#"site_url = "https://app.infisical.com""#,
        project_id: Str = r#"project_id = "6f1c…""#,
        environments: List = r#"environments = ["dev", "prod"]"#,
        secret_path: Str = r#"secret_path = "/""#,
        client_id: Str = r#"client_id = "…""#,
        client_secret: Str = r#"client_secret_file = "/run/secrets/infisical-client-secret""#,
        client_secret_file: Str =
            r#"client_secret_file = "/run/secrets/infisical-client-secret""#,
        schedule: Str = r#"schedule = "0 * * * *""#,
        /// Same form as `[[sqlite]] interval`.
        timeout: Duration = r#"timeout = "5m""#,
        max_age: Duration = r#"max_age = "3h""#,
    }
}

section! {
    /// `[fleet]`: publishing into the fleet catalog (docs/FLEET.md).
    struct RawFleet, table FLEET_KEYS {
        kind: Str = r#"kind = "postgres""#,
        url: Str = r#"url = "postgres://pitr_cloud_api@catalog.internal/fleet""#,
        password: Str = r#"password_file = "/run/secrets/fleet-password""#,
        password_file: Str = r#"password_file = "/run/secrets/fleet-password""#,
        /// `true`/`false`, or their text from the environment.
        allow_insecure_password: Number = "allow_insecure_password = false",
        instance: Str = r#"instance = "cloud-api-prod""#,
        labels: Table = r#"labels = { service = "cloud-api", region = "eu" }"#,
        publish_interval: Duration = r#"publish_interval = "30s""#,
        token: Str = r#"token_file = "/run/secrets/fleet-token""#,
        token_file: Str = r#"token_file = "/run/secrets/fleet-token""#,
        /// `true`/`false`, or their text from the environment.
        allow_insecure_http: Number = "allow_insecure_http = false",
        ca_file: Str = r#"ca_file = "/etc/pitr/fleet-ca.pem""#,
        receive_listen: Str = r#"receive_listen = "127.0.0.1:9188""#,
        receive_tokens_file: Str = r#"receive_tokens_file = "/etc/pitr/fleet-tokens""#,
        receive_tls_cert_file: Str = r#"receive_tls_cert_file = "/etc/pitr/receiver.crt""#,
        receive_tls_key_file: Str = r#"receive_tls_key_file = "/etc/pitr/receiver.key""#,
    }
}

impl Section {
    /// Every section, in the order the design card writes them.
    pub const ALL: [Section; 13] = [
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
        Section::Command,
        Section::Infisical,
        Section::Fleet,
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
            Section::Command => "command",
            Section::Infisical => "infisical",
            Section::Fleet => "fleet",
        }
    }

    /// Whether it is written `[[name]]` (many named entries).
    pub fn is_array(self) -> bool {
        matches!(
            self,
            Section::Destination
                | Section::Postgres
                | Section::Sqlite
                | Section::Alert
                | Section::Command
                | Section::Infisical
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
            Section::Command => COMMAND_KEYS,
            Section::Infisical => INFISICAL_KEYS,
            Section::Fleet => FLEET_KEYS,
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
