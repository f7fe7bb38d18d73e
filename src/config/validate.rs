//! Raw values (file + environment) → a [`Config`] whose every field is
//! already checked, so nothing past loading validates again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::error::{ConfigError, Ctx, Entry, KeyName};
use super::raw::{
    RawAlert, RawConfig, RawDestination, RawHealth, RawPostgres, RawRepository, RawRestore,
    RawRetention, RawScrub, RawSqlite, RawVerify, Section, Val,
};
use super::secrets;
use super::{
    AlertConfig, AlertKind, Config, DestinationConfig, DestinationKind, HealthConfig,
    PostgresConfig, RepositoryConfig, RestoreConfig, RetentionConfig, S3Config, ScrubConfig,
    SqliteConfig, StorachaConfig, VerifyConfig,
};
use crate::cron::CronSchedule;
use crate::pg::{Checkpoint, ManifestChecksums};

const MIB: u64 = 1024 * 1024;
/// zstd levels pitr accepts; above 19 zstd needs much more memory per level
/// for little gain, which would break the bounded-memory invariant.
const ZSTD_LEVELS: std::ops::RangeInclusive<i64> = 1..=19;
const DEFAULT_ZSTD_LEVEL: i32 = 3;
/// Large enough to keep the object count low, small enough to buffer.
const PACK_SIZES: std::ops::RangeInclusive<u64> = MIB..=512 * MIB;
const DEFAULT_PACK_SIZE: u64 = 16 * MIB;
const DEFAULT_SPOOL_MAX: u64 = 1024 * MIB;
const DEFAULT_SLOT: &str = "pitr";
/// The seed's 3 AM daily (DESIGN.md).
const DEFAULT_BASE_BACKUP: &str = "0 3 * * *";
const GIB: u64 = 1024 * MIB;
/// More WAL than any sane rule (1 PiB): keeps the conversion to bytes exact.
const MAX_WAL_GIB: f64 = 1024.0 * 1024.0;
/// PostgreSQL's MAX_RATE bounds, kB/s.
const MAX_RATES: std::ops::RangeInclusive<u32> = 32..=1_048_576;
/// The longest chain of incremental backups `incremental_max_chain` allows:
/// every restore reads each backup of the chain, so a long one costs.
const MAX_INCREMENTAL_CHAIN: u32 = 1000;
/// How often an SQLite watcher polls: faster than 100 ms costs CPU for no
/// gain (file events wake it anyway), slower than an hour is no longer
/// "any second".
/// `batch_interval`: `0` (every write, the default but for Storacha), or
/// at least a second and at most a day.
const BATCH_INTERVALS: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(0)..=Duration::from_secs(86400);
/// A Storacha destination's default `batch_interval` when another
/// destination takes every write: each object costs several invocations and
/// an index there, and the gateway rate-limits reads.
const STORACHA_BATCH_INTERVAL: Duration = Duration::from_secs(300);
const SQLITE_INTERVALS: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(3600);
const DEFAULT_SQLITE_INTERVAL: Duration = Duration::from_secs(1);
/// Snapshots: more often than a minute would store the database over and
/// over; rarer than 30 days makes restores replay a month of page sets.
const SNAPSHOT_INTERVALS: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(60)..=Duration::from_secs(30 * 86400);
const DEFAULT_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(86400);
/// The destination kinds this build can write to.
const SUPPORTED_KINDS: &[&str] = &["fs", "s3", "storacha"];

/// Checks everything and builds the [`Config`].
pub(super) fn validate(ctx: &Ctx<'_>, raw: RawConfig) -> Result<Config, ConfigError> {
    let quorum_origin = raw
        .repository
        .as_ref()
        .and_then(|r| r.quorum.as_ref())
        .map(|q| q.origin.clone());
    let repository = repository(ctx, raw.repository.unwrap_or_default())?;
    let verify = verify(ctx, raw.verify.unwrap_or_default(), &repository.state_dir)?;
    let config = Config {
        path: ctx.path.to_path_buf(),
        destinations: destinations(ctx, raw.destination.unwrap_or_default())?,
        postgres: postgres(ctx, raw.postgres.unwrap_or_default())?,
        sqlite: sqlite(ctx, raw.sqlite.unwrap_or_default())?,
        health: health(ctx, raw.health.unwrap_or_default(), &repository.state_dir)?,
        alerts: alerts(ctx, raw.alert.unwrap_or_default())?,
        verify,
        retention: retention(ctx, raw.retention.unwrap_or_default())?,
        scrub: scrub(ctx, raw.scrub.unwrap_or_default())?,
        restore: restore(ctx, raw.restore.unwrap_or_default())?,
        repository,
    };
    let unbatched = config
        .destinations
        .iter()
        .filter(|d| !d.is_batched())
        .count();
    if let (Some(q), Some(origin)) = (config.repository.quorum, quorum_origin)
        && q > unbatched
    {
        let batched = config.destinations.len() - unbatched;
        return Err(ctx.invalid(
            &KeyName::plain(Section::Repository, "quorum"),
            &origin,
            &if batched == 0 {
                format!("{q} is more than the {unbatched} configured destinations")
            } else {
                format!(
                    "{q} is more than the {unbatched} destinations that take every write \
                     ({batched} more are batched, and batched destinations do not count toward the quorum)"
                )
            },
            "Lower quorum, or add destinations",
        ));
    }
    Ok(config)
}

fn repository(ctx: &Ctx<'_>, r: RawRepository) -> Result<RepositoryConfig, ConfigError> {
    let key = |k| KeyName::plain(Section::Repository, k);
    let add = "Add recipients = [\"age1…\"] (create one with `pitr keygen`), or recipients_file = \"…\" naming a file with one recipient per line";
    let Some(list) = secrets::list(ctx, &key("recipients"), r.recipients, r.recipients_file)?
    else {
        return Err(ctx.missing(
            &key("recipients"),
            "no age recipients are configured, and every backup is encrypted to them",
            add,
        ));
    };
    if list.items.is_empty() {
        return Err(ctx.invalid(&list.key, &list.origin, "holds no recipient", add));
    }
    let mut recipients = Vec::with_capacity(list.items.len());
    for item in &list.items {
        match item.value.parse::<age::x25519::Recipient>() {
            Ok(r) => recipients.push(r),
            Err(e) => {
                // Never echo something that looks like a secret key.
                let what = if item
                    .value
                    .to_ascii_uppercase()
                    .starts_with("AGE-SECRET-KEY-")
                {
                    format!(
                        "{} is an age identity (a secret key), not a recipient; the sidecar must not hold it",
                        item.place
                    )
                } else {
                    format!(
                        "{} {:?} is not an age X25519 recipient ({e})",
                        item.place, item.value
                    )
                };
                return Err(ctx.invalid(
                    &list.key,
                    &item.origin,
                    &what,
                    "A recipient is `age1` followed by 58 characters, as printed by `pitr keygen` (or `age-keygen -y IDENTITY_FILE`)",
                ));
            }
        }
    }

    let identity_file = match r.identity_file {
        None => None,
        Some(v) => Some(path(ctx, &key("identity_file"), &v)?),
    };
    let key_file = match r.key_file {
        None => None,
        Some(v) => Some(path(ctx, &key("key_file"), &v)?),
    };
    let state_dir = match r.state_dir {
        Some(v) => path(ctx, &key("state_dir"), &v)?,
        None => {
            return Err(ctx.missing(
                &key("state_dir"),
                "state_dir is required: pitr keeps its local catalog and spool there",
                "Add state_dir = \"/var/lib/pitr\" (any directory pitr may write; it can be rebuilt from the destinations)",
            ));
        }
    };

    let zstd_level = match r.zstd_level {
        None => DEFAULT_ZSTD_LEVEL,
        Some(v) => match i32::try_from(v.value) {
            Ok(level) if ZSTD_LEVELS.contains(&v.value) => level,
            _ => {
                return Err(ctx.invalid(
                    &key("zstd_level"),
                    &v.origin,
                    &format!("{} is out of range", v.value),
                    "Use a level from 1 (fastest) to 19 (smallest); 3 is the default",
                ));
            }
        },
    };
    let pack_size = match r.pack_size {
        None => DEFAULT_PACK_SIZE,
        Some(v) => pack_size(ctx, &key("pack_size"), &v)?,
    };
    let quorum = match r.quorum {
        None => None,
        Some(q) if q.value >= 1 => Some(q.value as usize),
        Some(q) => {
            return Err(ctx.invalid(
                &key("quorum"),
                &q.origin,
                &format!("{} is not a number of destinations", q.value),
                "Give how many destinations must hold an object before it counts, from 1 to \
                 the number of [[destination]] entries (the default: all of them)",
            ));
        }
    };
    let spool_dir = match r.spool_dir {
        Some(v) => path(ctx, &key("spool_dir"), &v)?,
        None => state_dir.join("spool"),
    };
    let spool_max_bytes = match r.spool_max_bytes {
        None => DEFAULT_SPOOL_MAX,
        Some(v) => {
            let fix = "Give a size of at least 1 MiB, as bytes or with a unit (spool_max_bytes = \"4GiB\"); 1 GiB is the default";
            let bytes = match &v.value {
                toml::Value::Integer(n) => u64::try_from(*n).ok(),
                toml::Value::String(s) => parse_size(s),
                _ => None,
            };
            match bytes {
                Some(b) if b >= MIB => b,
                _ => {
                    return Err(ctx.invalid(
                        &key("spool_max_bytes"),
                        &v.origin,
                        &format!("{} is not a size of at least 1 MiB", v.value),
                        fix,
                    ));
                }
            }
        }
    };
    let key_id = match r.key_id {
        None => None,
        Some(v) => {
            let id = v.value.trim().to_ascii_lowercase();
            if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ctx.invalid(
                    &key("key_id"),
                    &v.origin,
                    &format!("{:?} is not a key id", v.value),
                    "Give the 32 hex digits `pitr init` or `pitr restore` printed as the \
                     repository key's id, or leave key_id out",
                ));
            }
            Some(id)
        }
    };
    Ok(RepositoryConfig {
        key_id,
        recipients,
        identity_file,
        key_file,
        state_dir,
        zstd_level,
        pack_size,
        quorum,
        spool_dir,
        spool_max_bytes,
    })
}

fn pack_size(ctx: &Ctx<'_>, key: &KeyName, v: &Val<toml::Value>) -> Result<u64, ConfigError> {
    let fix = "Give a size from 1 MiB to 512 MiB, as bytes (pack_size = 16777216) or with a unit (pack_size = \"16MiB\"); 16 MiB is the default";
    let bytes = match &v.value {
        toml::Value::Integer(n) => u64::try_from(*n).ok(),
        toml::Value::String(s) => parse_size(s),
        _ => None,
    };
    let shown = match &v.value {
        toml::Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    };
    match bytes {
        None => Err(ctx.invalid(key, &v.origin, &format!("{shown} is not a size"), fix)),
        Some(b) if !PACK_SIZES.contains(&b) => Err(ctx.invalid(
            key,
            &v.origin,
            &format!("{shown} ({b} bytes) is out of range"),
            fix,
        )),
        Some(b) => Ok(b),
    }
}

/// `"16MiB"`, `"512 KiB"`, `"1G"`, `"1048576"`: binary units, since pack
/// sizes are about memory and files, not marketing.
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1024,
        "m" | "mib" => MIB,
        "g" | "gib" => 1024 * MIB,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// A path value: non-empty, relative ones resolved against the config file's
/// directory.
fn path(ctx: &Ctx<'_>, key: &KeyName, v: &Val<String>) -> Result<std::path::PathBuf, ConfigError> {
    if v.value.trim().is_empty() {
        let example = key.section.key(&key.key).map_or("", |s| s.example);
        return Err(ctx.invalid(
            key,
            &v.origin,
            "is empty",
            &format!("Give a path, e.g. {example}"),
        ));
    }
    Ok(ctx.resolve(&v.value))
}

/// Checks entry `index`'s name: present, well-formed, and not taken by an
/// earlier entry of the section (`seen`). Names end up in variable names,
/// object names and messages, hence the small alphabet.
fn entry_name(
    ctx: &Ctx<'_>,
    section: Section,
    index: usize,
    name: Option<Val<String>>,
    seen: &mut HashMap<String, usize>,
) -> Result<(Entry, String), ConfigError> {
    let at_index = KeyName::entry(section, &Entry::Index(index), "name");
    let example = section.key("name").map_or("", |s| s.example);
    let Some(name) = name else {
        return Err(ctx.missing(
            &at_index,
            &format!("this {} entry has no name", section.header()),
            &format!("Add a unique name, e.g. {example}"),
        ));
    };
    let well_formed = !name.value.is_empty()
        && name
            .value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !well_formed {
        return Err(ctx.invalid(
            &at_index,
            &name.origin,
            &format!("{:?} is not a valid name", name.value),
            "Use only lowercase letters a-z, digits, `_` and `-`",
        ));
    }
    let entry = Entry::Named(name.value.clone());
    if let Some(first) = seen.insert(name.value.clone(), index) {
        return Err(ctx.invalid(
            &KeyName::entry(section, &entry, "name"),
            &name.origin,
            &format!(
                "the name {:?} is already used by {} #{}",
                name.value,
                section.header(),
                first + 1
            ),
            &format!("Give each {} entry a unique name", section.header()),
        ));
    }
    Ok((entry, name.value))
}

fn destinations(
    ctx: &Ctx<'_>,
    raw: Vec<RawDestination>,
) -> Result<Vec<DestinationConfig>, ConfigError> {
    let section = Section::Destination;
    if raw.is_empty() {
        return Err(ctx.missing(
            &KeyName::plain(section, ""),
            "no destination is configured, so backups would have nowhere to go",
            "Add one, e.g.\n[[destination]]\nname = \"local\"\nkind = \"fs\"\npath = \"/var/lib/pitr/repo\"",
        ));
    }
    let mut seen = HashMap::new();
    let mut out = Vec::with_capacity(raw.len());
    // Per destination: the key's origin and whether it was given at all.
    let mut batch_given = Vec::with_capacity(raw.len());
    for (i, mut d) in raw.into_iter().enumerate() {
        let (entry, name) = entry_name(ctx, section, i, d.name.take(), &mut seen)?;
        let key = |k| KeyName::entry(section, &entry, k);
        let batch_interval = match d.batch_interval.take() {
            None => None,
            Some(v) => {
                let k = key("batch_interval");
                let every = duration(ctx, &k, &v, BATCH_INTERVALS, "5m")?;
                if every > Duration::ZERO && every < Duration::from_secs(1) {
                    return Err(ctx.invalid(
                        &k,
                        &v.origin,
                        &format!("{} is less than a second", humantime(every)),
                        "Give 0 (every write, as it happens) or an interval of at least a second, e.g. \"5m\"",
                    ));
                }
                Some((every, v.origin, k))
            }
        };
        let supported = SUPPORTED_KINDS.join(", ");
        let Some(kind) = d.kind.take() else {
            return Err(ctx.missing(
                &key("kind"),
                "the destination has no kind",
                &format!("Add kind = \"fs\" (supported kinds: {supported})"),
            ));
        };
        let kind = match kind.value.as_str() {
            "fs" => {
                let Some(p) = d.path.take() else {
                    return Err(ctx.missing(
                        &key("path"),
                        "a destination of kind \"fs\" needs a path",
                        "Add path = \"/var/lib/pitr/repo\" (the directory backups are written to)",
                    ));
                };
                let s3_keys = [
                    ("bucket", d.bucket.is_some()),
                    ("prefix", d.prefix.is_some()),
                    ("region", d.region.is_some()),
                    ("endpoint", d.endpoint.is_some()),
                    ("access_key_id", d.access_key_id.is_some()),
                    ("secret_access_key", d.secret_access_key.is_some()),
                    ("secret_access_key_file", d.secret_access_key_file.is_some()),
                    ("request_timeout", d.request_timeout.is_some()),
                ];
                if let Some((k, _)) = s3_keys.iter().find(|(_, set)| *set) {
                    return Err(ctx.missing(
                        &key(k),
                        &format!("{k} is a key of kind \"s3\", not of kind \"fs\""),
                        "Remove it, or set kind = \"s3\"",
                    ));
                }
                if let Some(k) = storacha_key_set(&d) {
                    return Err(ctx.missing(
                        &key(k),
                        &format!("{k} is a key of kind \"storacha\", not of kind \"fs\""),
                        "Remove it, or set kind = \"storacha\"",
                    ));
                }
                DestinationKind::Fs {
                    path: path(ctx, &key("path"), &p)?,
                }
            }
            "s3" => s3(ctx, section, &entry, d)?,
            "storacha" => storacha(ctx, section, &entry, d)?,
            other => {
                return Err(ctx.invalid(
                    &key("kind"),
                    &kind.origin,
                    &format!("unknown kind {other:?}"),
                    &format!("Use one of the supported kinds: {supported}"),
                ));
            }
        };
        let storacha = matches!(kind, DestinationKind::Storacha(_));
        batch_given.push((batch_interval.clone(), storacha));
        out.push(DestinationConfig {
            name,
            kind,
            batch_interval: batch_interval
                .map(|(every, _, _)| every)
                .filter(|e| !e.is_zero()),
        });
    }
    // Storacha is batched unless told otherwise, when some other destination
    // takes every write (a lone Storacha destination takes them itself).
    // Those that take every write by choice or by kind (not Storacha left
    // at its default).
    let unbatched: Vec<bool> = out
        .iter()
        .zip(&batch_given)
        .map(|(d, (given, storacha))| !d.is_batched() && (given.is_some() || !storacha))
        .collect();
    for (i, d) in out.iter_mut().enumerate() {
        let elsewhere = unbatched.iter().enumerate().any(|(j, u)| j != i && *u);
        if batch_given[i].0.is_none() && batch_given[i].1 && elsewhere {
            d.batch_interval = Some(STORACHA_BATCH_INTERVAL);
        }
    }
    if out.iter().all(DestinationConfig::is_batched) {
        let (_, origin, k) = batch_given
            .iter()
            .rev()
            .find_map(|(b, _)| b.clone())
            .expect("every destination is batched, so one has the key");
        return Err(ctx.invalid(
            &k,
            &origin,
            "every destination is batched, so none takes each write as it happens: nothing \
             could acknowledge WAL, and the last minutes of every database would be at risk",
            "Leave at least one destination without batch_interval (or with batch_interval = 0); \
             to restore from a batched destination alone, write a config that names only it, without batch_interval",
        ));
    }
    Ok(out)
}

/// A `kind = "s3"` destination's keys.
fn s3(
    ctx: &Ctx<'_>,
    section: Section,
    entry: &Entry,
    d: RawDestination,
) -> Result<DestinationKind, ConfigError> {
    let key = |k: &str| KeyName::entry(section, entry, k);
    if let Some(k) = storacha_key_set(&d) {
        return Err(ctx.missing(
            &key(k),
            &format!("{k} is a key of kind \"storacha\", not of kind \"s3\""),
            "Remove it, or set kind = \"storacha\"",
        ));
    }
    let Some(bucket) = d.bucket else {
        return Err(ctx.missing(
            &key("bucket"),
            "a destination of kind \"s3\" needs a bucket",
            "Add bucket = \"backups\" (the bucket must exist)",
        ));
    };
    if bucket.value.trim().is_empty() {
        return Err(ctx.invalid(
            &key("bucket"),
            &bucket.origin,
            "is empty",
            "Give the bucket's name, e.g. bucket = \"backups\"",
        ));
    }
    let endpoint = match d.endpoint {
        None => None,
        Some(e) => {
            let ok = (e.value.starts_with("http://") || e.value.starts_with("https://"))
                && e.value.len() > "https://".len();
            if !ok {
                return Err(ctx.invalid(
                    &key("endpoint"),
                    &e.origin,
                    &format!("{:?} is not an http(s) URL", e.value),
                    "Give the store's URL, e.g. endpoint = \"https://s3.eu-central-1.amazonaws.com\" or \"http://127.0.0.1:9000\"",
                ));
            }
            Some(e.value)
        }
    };
    let secret = secrets::text(
        ctx,
        &key("secret_access_key"),
        d.secret_access_key,
        d.secret_access_key_file,
    )?;
    let request_timeout = match d.request_timeout {
        None => std::time::Duration::from_secs(60),
        Some(t) if (1..=3600).contains(&t.value) => std::time::Duration::from_secs(t.value as u64),
        Some(t) => {
            return Err(ctx.invalid(
                &key("request_timeout"),
                &t.origin,
                &format!("{} is not between 1 and 3600 seconds", t.value),
                "request_timeout = 60",
            ));
        }
    };
    let unused = [("path", d.path.is_some())];
    for (k, set) in unused {
        if set {
            return Err(ctx.missing(
                &key(k),
                &format!("{k} is not a key of a destination of kind \"s3\""),
                "Remove it; an s3 destination is bucket, prefix, region, endpoint, access_key_id and secret_access_key(_file)",
            ));
        }
    }
    Ok(DestinationKind::S3(S3Config {
        bucket: bucket.value,
        prefix: d.prefix.map(|p| p.value).unwrap_or_default(),
        region: d
            .region
            .map(|r| r.value)
            .unwrap_or_else(|| "us-east-1".to_owned()),
        endpoint,
        access_key_id: d.access_key_id.map(|a| a.value),
        secret_access_key: secret.map(|s| s.value),
        request_timeout,
    }))
}

/// The first key of kind "storacha" set in `d`, if any.
fn storacha_key_set(d: &RawDestination) -> Option<&'static str> {
    [
        ("space", d.space.is_some()),
        ("principal", d.principal.is_some()),
        ("principal_file", d.principal_file.is_some()),
        ("proof", d.proof.is_some()),
        ("proof_file", d.proof_file.is_some()),
        ("service", d.service.is_some()),
        ("service_did", d.service_did.is_some()),
        ("gateway", d.gateway.is_some()),
    ]
    .into_iter()
    .find(|(_, set)| *set)
    .map(|(k, _)| k)
}

/// An http(s) URL without a trailing slash, or a config error naming `k`.
fn http_url(
    ctx: &Ctx<'_>,
    key: &KeyName,
    v: Option<Val<String>>,
    default: &str,
    example: &str,
) -> Result<String, ConfigError> {
    let Some(v) = v else {
        return Ok(default.to_owned());
    };
    let ok = (v.value.starts_with("http://") || v.value.starts_with("https://"))
        && v.value.len() > "https://".len()
        && !v.value.contains(char::is_whitespace);
    if !ok {
        return Err(ctx.invalid(
            key,
            &v.origin,
            &format!("{:?} is not an http(s) URL", v.value),
            example,
        ));
    }
    Ok(v.value.trim_end_matches('/').to_owned())
}

/// A `kind = "storacha"` destination's keys.
fn storacha(
    ctx: &Ctx<'_>,
    section: Section,
    entry: &Entry,
    d: RawDestination,
) -> Result<DestinationKind, ConfigError> {
    let key = |k: &str| KeyName::entry(section, entry, k);
    let other = [
        ("path", d.path.is_some()),
        ("bucket", d.bucket.is_some()),
        ("prefix", d.prefix.is_some()),
        ("region", d.region.is_some()),
        ("endpoint", d.endpoint.is_some()),
        ("access_key_id", d.access_key_id.is_some()),
        ("secret_access_key", d.secret_access_key.is_some()),
        ("secret_access_key_file", d.secret_access_key_file.is_some()),
    ];
    if let Some((k, _)) = other.iter().find(|(_, set)| *set) {
        return Err(ctx.missing(
            &key(k),
            &format!("{k} is not a key of a destination of kind \"storacha\""),
            "Remove it; a storacha destination is space, principal(_file), proof(_file), service, service_did, gateway and request_timeout",
        ));
    }
    let Some(space) = d.space else {
        return Err(ctx.missing(
            &key("space"),
            "a destination of kind \"storacha\" needs the space's DID",
            "Add space = \"did:key:z6Mk…\" (`storacha space ls` lists them)",
        ));
    };
    if !space.value.starts_with("did:") || space.value.contains(char::is_whitespace) {
        return Err(ctx.invalid(
            &key("space"),
            &space.origin,
            &format!("{:?} is not a DID", space.value),
            "Give the space's DID, e.g. space = \"did:key:z6Mk…\" (`storacha space ls` lists them)",
        ));
    }
    let mut creds = Vec::new();
    for (name, inline, file, what, how) in [
        (
            "principal",
            d.principal,
            d.principal_file,
            "the agent's private key (W3_PRINCIPAL)",
            "Run `storacha key create`, keep the private key it prints (M…) in a file and give principal_file = \"/run/secrets/w3-principal\"",
        ),
        (
            "proof",
            d.proof,
            d.proof_file,
            "the delegation from the space to the agent (W3_PROOF)",
            "Run `storacha delegation create <the agent's DID> --base64 …` (docs/DESTINATIONS.md lists the --can flags pitr needs) and give proof_file = \"/run/secrets/w3-proof\"",
        ),
    ] {
        match secrets::text(ctx, &key(name), inline, file)? {
            None => {
                return Err(ctx.missing(
                    &key(name),
                    &format!("a destination of kind \"storacha\" needs {name}: {what}"),
                    how,
                ));
            }
            Some(s)
                if s.value.trim().is_empty()
                    || s.value.trim().contains(char::is_whitespace)
                    // The shipped templates' `<PITR_...>` placeholders.
                    || (s.value.starts_with('<') && s.value.ends_with('>')) =>
            {
                return Err(ctx.invalid(
                    &s.key,
                    &s.origin,
                    "is empty, contains spaces or is a <PLACEHOLDER> left unfilled",
                    how,
                ));
            }
            Some(s) => creds.push(s.value.trim().to_owned()),
        }
    }
    let proof = creds.pop().unwrap_or_default();
    let principal = creds.pop().unwrap_or_default();
    let service = http_url(
        ctx,
        &key("service"),
        d.service,
        "https://up.storacha.network",
        "service = \"https://up.storacha.network\"",
    )?;
    let service_did = match d.service_did {
        None => "did:web:up.storacha.network".to_owned(),
        Some(v) if v.value.starts_with("did:") && !v.value.contains(char::is_whitespace) => v.value,
        Some(v) => {
            return Err(ctx.invalid(
                &key("service_did"),
                &v.origin,
                &format!("{:?} is not a DID", v.value),
                "service_did = \"did:web:up.storacha.network\"",
            ));
        }
    };
    let gateway = http_url(
        ctx,
        &key("gateway"),
        d.gateway,
        "https://storacha.link",
        "gateway = \"https://storacha.link\"",
    )?;
    let request_timeout = match d.request_timeout {
        None => std::time::Duration::from_secs(60),
        Some(t) if (1..=3600).contains(&t.value) => std::time::Duration::from_secs(t.value as u64),
        Some(t) => {
            return Err(ctx.invalid(
                &key("request_timeout"),
                &t.origin,
                &format!("{} is not between 1 and 3600 seconds", t.value),
                "request_timeout = 60",
            ));
        }
    };
    Ok(DestinationKind::Storacha(StorachaConfig {
        space: space.value,
        principal,
        proof,
        service,
        service_did,
        gateway,
        request_timeout,
    }))
}

fn postgres(ctx: &Ctx<'_>, raw: Vec<RawPostgres>) -> Result<Vec<PostgresConfig>, ConfigError> {
    let section = Section::Postgres;
    let mut seen = HashMap::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, p) in raw.into_iter().enumerate() {
        let (entry, name) = entry_name(ctx, section, i, p.name, &mut seen)?;
        let key = |k| KeyName::entry(section, &entry, k);
        let conninfo = match secrets::text(ctx, &key("conninfo"), p.conninfo, p.conninfo_file)? {
            None => {
                return Err(ctx.missing(
                    &key("conninfo"),
                    "no connection string is configured",
                    &format!(
                        "Add conninfo = \"host=… port=5432 user=replicator dbname=postgres\", or conninfo_file = \"…\" naming a file that holds it, or set PITR_POSTGRES_{}_CONNINFO",
                        super::env::env_name(&name)
                    ),
                ));
            }
            Some(s) if s.value.trim().is_empty() => {
                let what = match &s.file {
                    Some(f) => format!("the secret file {} is empty", f.display()),
                    None => "is empty".to_owned(),
                };
                return Err(ctx.invalid(
                    &s.key,
                    &s.origin,
                    &what,
                    "Give a libpq connection string, e.g. \"host=127.0.0.1 port=5432 user=replicator dbname=postgres\"",
                ));
            }
            Some(s) => s.value,
        };
        let slot = match p.slot {
            None => DEFAULT_SLOT.to_owned(),
            Some(v) => {
                let ok = (1..=63).contains(&v.value.len())
                    && v.value
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                if !ok {
                    return Err(ctx.invalid(
                        &key("slot"),
                        &v.origin,
                        &format!("{:?} is not a valid replication slot name", v.value),
                        "PostgreSQL slot names use only lowercase letters, digits and `_`, at most 63 characters",
                    ));
                }
                v.value
            }
        };
        let base_backup = match p.base_backup {
            None => Some(CronSchedule::parse(DEFAULT_BASE_BACKUP).expect("the default parses")),
            Some(v) => cron(ctx, &key("base_backup"), v)?,
        };
        let base_backup_wal = match p.base_backup_wal_gb {
            None => None,
            Some(v) => Some(wal_gb(ctx, &key("base_backup_wal_gb"), &v)?),
        };
        let checkpoint = match p.checkpoint {
            None => Checkpoint::Spread,
            Some(v) => match v.value.trim() {
                "spread" => Checkpoint::Spread,
                "fast" => Checkpoint::Fast,
                other => {
                    return Err(ctx.invalid(
                        &key("checkpoint"),
                        &v.origin,
                        &format!("{other:?} is not a checkpoint mode"),
                        "Write checkpoint = \"spread\" (the default: the server spreads the backup's checkpoint over checkpoint_completion_target) or checkpoint = \"fast\" (at once, at full I/O)",
                    ));
                }
            },
        };
        let max_rate_kb = match p.max_rate {
            None => None,
            Some(v) => match u32::try_from(v.value) {
                Ok(kb) if MAX_RATES.contains(&kb) => Some(kb),
                _ => {
                    return Err(ctx.invalid(
                        &key("max_rate"),
                        &v.origin,
                        &format!("{} is out of range", v.value),
                        "Give the server's sending limit for base backups in kB/s, from 32 to 1048576 (PostgreSQL's MAX_RATE), e.g. max_rate = 102400 for 100 MB/s; leave it out for no limit",
                    ));
                }
            },
        };
        let incremental_max_chain = match p.incremental_max_chain {
            None => super::DEFAULT_INCREMENTAL_MAX_CHAIN,
            Some(v) => match u32::try_from(v.value) {
                Ok(n) if n <= MAX_INCREMENTAL_CHAIN => n,
                _ => {
                    return Err(ctx.invalid(
                        &key("incremental_max_chain"),
                        &v.origin,
                        &format!("{} is out of range", v.value),
                        &format!("Give how many incremental base backups may follow a full one before the next full one, from 0 (only full backups) to {MAX_INCREMENTAL_CHAIN}; the default is 7"),
                    ));
                }
            },
        };
        let manifest_checksums = match p.manifest_checksums {
            None => ManifestChecksums::Crc32c,
            Some(v) => match v.value.trim().to_ascii_lowercase().as_str() {
                "crc32c" => ManifestChecksums::Crc32c,
                "sha256" => ManifestChecksums::Sha256,
                other => {
                    return Err(ctx.invalid(
                        &key("manifest_checksums"),
                        &v.origin,
                        &format!("{other:?} is not a manifest checksum pitr asks for"),
                        "Write manifest_checksums = \"crc32c\" (the default, PostgreSQL's own: cheap for the server) or manifest_checksums = \"sha256\" (the server hashes every byte of the backup)",
                    ));
                }
            },
        };
        let allow_insecure_password = match p.allow_insecure_password {
            None => false,
            Some(v) => match &v.value {
                toml::Value::Boolean(b) => *b,
                toml::Value::String(t) if t.trim() == "true" => true,
                toml::Value::String(t) if t.trim() == "false" => false,
                other => {
                    return Err(ctx.invalid(
                        &key("allow_insecure_password"),
                        &v.origin,
                        &format!("{other} is not true or false"),
                        "Leave it out (false): pitr then refuses to send a cleartext or md5 password over a connection without TLS. Set allow_insecure_password = true only where the network path is trusted",
                    ));
                }
            },
        };
        out.push(PostgresConfig {
            name,
            conninfo,
            slot,
            base_backup,
            base_backup_wal,
            checkpoint,
            max_rate_kb,
            incremental_max_chain,
            manifest_checksums,
            allow_insecure_password,
        });
    }
    Ok(out)
}

/// Parses a cron schedule (`"off"` for none), so that a bad one stops the
/// sidecar at load rather than at 3 AM.
fn cron(ctx: &Ctx<'_>, key: &KeyName, v: Val<String>) -> Result<Option<CronSchedule>, ConfigError> {
    if v.value.trim() == "off" {
        return Ok(None);
    }
    CronSchedule::parse(&v.value).map(Some).map_err(|e| {
        ctx.invalid(
            key,
            &v.origin,
            &format!("{:?} is not a cron schedule ({e})", v.value),
            "Give five fields (minute hour day-of-month month day-of-week, UTC), e.g. \"0 3 * * *\" for 03:00 daily, or six with seconds first; \"off\" takes no scheduled backups",
        )
    })
}

/// `base_backup_wal_gb`: a positive number of GiB, fractions allowed, as
/// bytes; at least one WAL segment's worth makes sense, but any positive
/// amount is accepted (a small one means a backup per segment).
fn wal_gb(ctx: &Ctx<'_>, key: &KeyName, v: &Val<toml::Value>) -> Result<u64, ConfigError> {
    let gib = match &v.value {
        toml::Value::Integer(n) => Some(*n as f64),
        toml::Value::Float(x) => Some(*x),
        _ => None,
    };
    let bytes = gib
        .filter(|g| g.is_finite() && *g > 0.0 && *g <= MAX_WAL_GIB)
        .map(|g| (g * GIB as f64).round() as u64)
        .filter(|b| *b > 0);
    bytes.ok_or_else(|| {
        ctx.invalid(
            key,
            &v.origin,
            &format!("{} is not a positive number of GiB", v.value),
            "Give how much WAL (in GiB, e.g. base_backup_wal_gb = 16 or 0.5) may accumulate after a base backup before the next is taken; leave it out to take backups on the cron schedule only",
        )
    })
}

fn sqlite(ctx: &Ctx<'_>, raw: Vec<RawSqlite>) -> Result<Vec<SqliteConfig>, ConfigError> {
    let section = Section::Sqlite;
    let mut seen = HashMap::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, s) in raw.into_iter().enumerate() {
        let (entry, name) = entry_name(ctx, section, i, s.name, &mut seen)?;
        let key = KeyName::entry(section, &entry, "path");
        let Some(p) = s.path else {
            return Err(ctx.missing(
                &key,
                "the SQLite database has no path",
                "Add path = \"/data/app.db\" (the database file to back up)",
            ));
        };
        let key = |k| KeyName::entry(section, &entry, k);
        let interval = match s.interval {
            None => DEFAULT_SQLITE_INTERVAL,
            Some(v) => duration(ctx, &key("interval"), &v, SQLITE_INTERVALS, "1s")?,
        };
        let snapshot_interval = match s.snapshot_interval {
            None => DEFAULT_SNAPSHOT_INTERVAL,
            Some(v) => duration(
                ctx,
                &key("snapshot_interval"),
                &v,
                SNAPSHOT_INTERVALS,
                "24h",
            )?,
        };
        out.push(SqliteConfig {
            name,
            path: path(ctx, &key("path"), &p)?,
            interval,
            snapshot_interval,
        });
    }
    Ok(out)
}

/// A duration value: whole seconds as an integer, or a string with a unit
/// (`ms`, `s`, `m`, `h`, `d`), within `range`.
fn duration(
    ctx: &Ctx<'_>,
    key: &KeyName,
    v: &Val<toml::Value>,
    range: std::ops::RangeInclusive<Duration>,
    example: &str,
) -> Result<Duration, ConfigError> {
    let show = |d: &Duration| humantime(*d);
    let fix = format!(
        "Give a duration from {} to {}, as seconds (1) or with a unit (\"{example}\", \"500ms\", \"2m\", \"24h\")",
        show(range.start()),
        show(range.end())
    );
    let parsed = match &v.value {
        toml::Value::Integer(n) => u64::try_from(*n).ok().map(Duration::from_secs),
        toml::Value::String(s) => parse_duration(s),
        _ => None,
    };
    let shown = match &v.value {
        toml::Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    };
    match parsed {
        None => Err(ctx.invalid(key, &v.origin, &format!("{shown} is not a duration"), &fix)),
        Some(d) if !range.contains(&d) => {
            Err(ctx.invalid(key, &v.origin, &format!("{shown} is out of range"), &fix))
        }
        Some(d) => Ok(d),
    }
}

/// `"500ms"`, `"1s"`, `"2m"`, `"24h"`, `"7d"`, `"30"` (seconds).
fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    let n: u64 = number.parse().ok()?;
    let ms: u64 = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(ms).map(Duration::from_millis)
}

fn humantime(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 86_400_000 == 0 {
        format!("{} d", ms / 86_400_000)
    } else if ms % 3_600_000 == 0 {
        format!("{} h", ms / 3_600_000)
    } else if ms % 1000 == 0 {
        format!("{} s", ms / 1000)
    } else {
        format!("{ms} ms")
    }
}

fn listen(ctx: &Ctx<'_>, v: Val<String>) -> Result<SocketAddr, ConfigError> {
    v.value.trim().parse().map_err(|e| {
        ctx.invalid(
            &KeyName::plain(Section::Health, "listen"),
            &v.origin,
            &format!("{:?} is not an IP address and port ({e})", v.value),
            "Give an IP and port, e.g. listen = \"0.0.0.0:9187\" or \"[::1]:9187\" (host names are not accepted)",
        )
    })
}

/// Default test-restore schedule: daily, after the seed's 03:00 base backup.
const DEFAULT_VERIFY_SCHEDULE: &str = "0 4 * * *";
/// Default retention run: daily, after the test restore.
const DEFAULT_RETENTION_SCHEDULE: &str = "30 4 * * *";
/// Default scrub: daily, clear of the base backup (03:00), the test restore
/// (04:00) and retention (04:30), so the three never compete for the
/// destinations' bandwidth.
const DEFAULT_SCRUB_SCHEDULE: &str = "15 5 * * *";
/// Default bytes the scrub downloads and checks per run: a nightly GiB
/// reads a 30 GiB repository through in a month.
const DEFAULT_SCRUB_READ_BUDGET: u64 = 1 << 30;
/// Thresholds shorter than a minute would flap on a slow network; longer
/// than 30 days would not be a health check any more.
const THRESHOLDS: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(10)..=Duration::from_secs(90 * 86400);

fn health(
    ctx: &Ctx<'_>,
    h: RawHealth,
    state_dir: &std::path::Path,
) -> Result<HealthConfig, ConfigError> {
    let key = |k: &str| KeyName::plain(Section::Health, k);
    let d = HealthConfig::default();
    let threshold = |name: &str, v: Option<Val<toml::Value>>, default: Duration, example| match v {
        None => Ok(default),
        Some(v) => duration(ctx, &key(name), &v, THRESHOLDS, example),
    };
    let slot_retained_max = match h.slot_retained_max {
        None => d.slot_retained_max,
        Some(v) => {
            let bytes = match &v.value {
                toml::Value::Integer(n) => u64::try_from(*n).ok(),
                toml::Value::String(s) => parse_size(s),
                _ => None,
            };
            match bytes {
                Some(b) if b >= 16 * MIB => b,
                _ => {
                    return Err(ctx.invalid(
                        &key("slot_retained_max"),
                        &v.origin,
                        &format!("{} is not a size of at least 16 MiB", v.value),
                        "Give how much WAL the server may hold for pitr's slot before it is an alert, as bytes or with a unit (slot_retained_max = \"4GiB\", the default); keep it well below the free space of the server's pg_wal disk",
                    ));
                }
            }
        }
    };
    let token = secrets::text(
        ctx,
        &key("restore_token"),
        h.restore_token,
        h.restore_token_file,
    )?;
    let restore_token = match token {
        None => None,
        Some(t) if t.value.trim().len() < 16 => {
            return Err(ctx.invalid(
                &t.key,
                &t.origin,
                "is shorter than 16 characters",
                "Use a long random token (e.g. `openssl rand -hex 32`): it allows restores over HTTP",
            ));
        }
        Some(t) => Some(t.value.trim().to_owned()),
    };
    let restore_root = match &h.restore_root {
        None => state_dir.join("restores"),
        Some(v) => {
            let p = path(ctx, &key("restore_root"), v)?;
            // The root itself is never a target; "/" would make every
            // directory of the host one.
            if p.parent().is_none() {
                return Err(ctx.invalid(
                    &key("restore_root"),
                    &v.origin,
                    "is the file system's root",
                    "Give a directory that holds only restores, e.g. restore_root = \"/var/lib/pitr/restores\"",
                ));
            }
            p
        }
    };
    Ok(HealthConfig {
        listen: match h.listen {
            None => None,
            Some(v) => Some(listen(ctx, v)?),
        },
        stream_down_max: threshold(
            "stream_down_max",
            h.stream_down_max,
            d.stream_down_max,
            "1m",
        )?,
        wal_ack_max_age: threshold(
            "wal_ack_max_age",
            h.wal_ack_max_age,
            d.wal_ack_max_age,
            "5m",
        )?,
        backup_max_age: match h.backup_max_age {
            None => None,
            Some(v) => Some(duration(
                ctx,
                &key("backup_max_age"),
                &v,
                THRESHOLDS,
                "36h",
            )?),
        },
        destination_down_max: threshold(
            "destination_down_max",
            h.destination_down_max,
            d.destination_down_max,
            "10m",
        )?,
        slot_retained_max,
        verify_max_age: threshold("verify_max_age", h.verify_max_age, d.verify_max_age, "3d")?,
        restore_token,
        restore_root,
    })
}

const ALERT_KINDS: &str = "slack, discord, webhook, email";

fn alerts(ctx: &Ctx<'_>, raw: Vec<RawAlert>) -> Result<Vec<AlertConfig>, ConfigError> {
    let section = Section::Alert;
    let mut seen = HashMap::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, mut a) in raw.into_iter().enumerate() {
        let (entry, name) = entry_name(ctx, section, i, a.name.take(), &mut seen)?;
        let key = |k| KeyName::entry(section, &entry, k);
        let Some(kind) = a.kind.take() else {
            return Err(ctx.missing(
                &key("kind"),
                "the alert channel has no kind",
                &format!("Add kind = \"slack\" (kinds: {ALERT_KINDS})"),
            ));
        };
        let renotify = a.renotify.take();
        let is_email = kind.value == "email";
        // Keys of the other family are refused, not ignored: a channel
        // that silently drops its `to` would never page anyone.
        let wrong = if is_email {
            [("url", a.url.is_some()), ("url_file", a.url_file.is_some())]
                .into_iter()
                .find(|(_, set)| *set)
        } else {
            [
                ("smtp_url", a.smtp_url.is_some()),
                ("smtp_url_file", a.smtp_url_file.is_some()),
                ("from", a.from.is_some()),
                ("to", a.to.is_some()),
            ]
            .into_iter()
            .find(|(_, set)| *set)
        };
        if let Some((k, _)) = wrong {
            return Err(ctx.missing(
                &key(k),
                &format!("{k} is not a key of kind {:?}", kind.value),
                "Remove it, or change kind (email takes smtp_url, from, to; the others take url)",
            ));
        }
        let kind = match kind.value.as_str() {
            "slack" | "discord" | "webhook" => {
                let Some(url) = secrets::text(ctx, &key("url"), a.url.take(), a.url_file.take())?
                else {
                    return Err(ctx.missing(
                        &key("url"),
                        &format!("a {:?} alert channel needs a url", kind.value),
                        "Add url = \"https://…\" (the webhook URL), or url_file = \"/run/secrets/…\" naming a file that holds it",
                    ));
                };
                let value = url.value.trim().to_owned();
                let ok = reqwest::Url::parse(&value)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
                if ok.is_none() {
                    return Err(ctx.invalid(
                        &url.key,
                        &url.origin,
                        // Not echoed: a webhook URL is a credential.
                        "is not an http(s) URL",
                        "Give the webhook's full URL, e.g. https://hooks.slack.com/services/…",
                    ));
                }
                match kind.value.as_str() {
                    "slack" => AlertKind::Slack { url: value },
                    "discord" => AlertKind::Discord { url: value },
                    _ => AlertKind::Webhook { url: value },
                }
            }
            "email" => email(ctx, section, &entry, a)?,
            other => {
                return Err(ctx.invalid(
                    &key("kind"),
                    &kind.origin,
                    &format!("unknown kind {other:?}"),
                    &format!("Use one of: {ALERT_KINDS}"),
                ));
            }
        };
        let renotify = match renotify {
            None => None,
            Some(v) if matches!(&v.value, toml::Value::String(s) if s.trim() == "off") => None,
            Some(v) => Some(duration(
                ctx,
                &key("renotify"),
                &v,
                Duration::from_secs(60)..=Duration::from_secs(30 * 86400),
                "24h",
            )?),
        };
        out.push(AlertConfig {
            name,
            kind,
            renotify,
        });
    }
    Ok(out)
}

/// A `kind = "email"` channel's keys.
fn email(
    ctx: &Ctx<'_>,
    section: Section,
    entry: &Entry,
    mut a: RawAlert,
) -> Result<AlertKind, ConfigError> {
    let key = |k: &str| KeyName::entry(section, entry, k);
    let Some(smtp) = secrets::text(
        ctx,
        &key("smtp_url"),
        a.smtp_url.take(),
        a.smtp_url_file.take(),
    )?
    else {
        return Err(ctx.missing(
            &key("smtp_url"),
            "an email alert channel needs an SMTP server",
            "Add smtp_url = \"smtp://user:password@mail.example.com:587\" (STARTTLS) or \"smtps://…:465\", or smtp_url_file naming a file that holds it",
        ));
    };
    let smtp_url = smtp.value.trim().to_owned();
    let parsed = reqwest::Url::parse(&smtp_url)
        .ok()
        .filter(|u| matches!(u.scheme(), "smtp" | "smtps") && u.host().is_some());
    if parsed.is_none() {
        return Err(ctx.invalid(
            &smtp.key,
            &smtp.origin,
            "is not an smtp:// or smtps:// URL",
            "Write it as smtp://user:password@host:587 (STARTTLS required), smtps://user:password@host:465 (TLS), or smtp://host:25?tls=none for a relay on loopback",
        ));
    }
    // The TLS mode is the only parameter; a misspelt one must not quietly
    // leave STARTTLS required (or worse, be read as off).
    if let Some(u) = &parsed {
        let implicit = u.scheme() == "smtps";
        for (k, v) in u.query_pairs() {
            let known = k == "tls"
                && !implicit
                && matches!(v.as_ref(), "required" | "opportunistic" | "none");
            if !known {
                return Err(ctx.invalid(
                    &smtp.key,
                    &smtp.origin,
                    &format!("has the parameter {k}={v:?}, which pitr does not know"),
                    "The only parameter is tls: smtp://… requires STARTTLS, smtp://…?tls=opportunistic uses it when offered, smtp://…?tls=none is plain text (a relay on loopback); smtps:// is always TLS and takes none",
                ));
            }
        }
    }
    let mailbox = |k: &str, v: &Val<String>| -> Result<String, ConfigError> {
        match v.value.trim().parse::<lettre::message::Mailbox>() {
            Ok(_) => Ok(v.value.trim().to_owned()),
            Err(e) => Err(ctx.invalid(
                &key(k),
                &v.origin,
                &format!("{:?} is not an email address ({e})", v.value),
                "Give an address like pitr@example.com or \"pitr <pitr@example.com>\"",
            )),
        }
    };
    let Some(from) = a.from.take() else {
        return Err(ctx.missing(
            &key("from"),
            "an email alert channel needs a sender",
            "Add from = \"pitr@example.com\"",
        ));
    };
    let from = mailbox("from", &from)?;
    let to = match a.to.take() {
        Some(list) if !list.value.is_empty() => list
            .value
            .iter()
            .map(|v| mailbox("to", v))
            .collect::<Result<Vec<_>, _>>()?,
        _ => {
            return Err(ctx.missing(
                &key("to"),
                "an email alert channel needs at least one recipient",
                "Add to = [\"oncall@example.com\"]",
            ));
        }
    };
    Ok(AlertKind::Email { smtp_url, from, to })
}

fn verify(
    ctx: &Ctx<'_>,
    v: RawVerify,
    state_dir: &std::path::Path,
) -> Result<VerifyConfig, ConfigError> {
    let key = |k| KeyName::plain(Section::Verify, k);
    let schedule = match v.schedule {
        None => CronSchedule::parse(DEFAULT_VERIFY_SCHEDULE).ok(),
        Some(s) => cron(ctx, &key("schedule"), s)?,
    };
    let scratch_dir = match v.scratch_dir {
        None => state_dir.join("verify"),
        Some(p) => path(ctx, &key("scratch_dir"), &p)?,
    };
    let os_user = match v.os_user {
        None => "postgres".to_owned(),
        Some(u) if !u.value.trim().is_empty() => u.value.trim().to_owned(),
        Some(u) => {
            return Err(ctx.invalid(
                &key("os_user"),
                &u.origin,
                "is empty",
                "Give the OS user PostgreSQL runs as during test restores, e.g. os_user = \"postgres\"",
            ));
        }
    };
    Ok(VerifyConfig {
        schedule,
        scratch_dir,
        os_user,
    })
}

fn restore(ctx: &Ctx<'_>, r: RawRestore) -> Result<RestoreConfig, ConfigError> {
    let key = KeyName::plain(Section::Restore, "bin_dirs");
    let bin_dirs = match r.bin_dirs {
        None => Vec::new(),
        Some(dirs) => dirs
            .value
            .iter()
            .map(|d| path(ctx, &key, d))
            .collect::<Result<_, _>>()?,
    };
    Ok(RestoreConfig { bin_dirs })
}

fn retention(ctx: &Ctx<'_>, r: RawRetention) -> Result<RetentionConfig, ConfigError> {
    let key = |k: &str| KeyName::plain(Section::Retention, k);
    let count = |name: &str, v: Option<Val<i64>>, default: u32| -> Result<u32, ConfigError> {
        match v {
            None => Ok(default),
            Some(v) => u32::try_from(v.value)
                .ok()
                .filter(|n| *n <= 10_000)
                .ok_or_else(|| {
                    ctx.invalid(
                        &key(name),
                        &v.origin,
                        &format!("{} is not a count from 0 to 10000", v.value),
                        &format!("Give how many backups to keep, e.g. {name} = 7; 0 keeps none by this rule (the newest restorable backup is always kept)"),
                    )
                }),
        }
    };
    let keep_last = count("keep_last", r.keep_last, 3)?;
    let keep_daily = count("keep_daily", r.keep_daily, 7)?;
    let keep_weekly = count("keep_weekly", r.keep_weekly, 4)?;
    let keep_monthly = count("keep_monthly", r.keep_monthly, 6)?;
    let gc_grace = match r.gc_grace {
        None => Duration::from_secs(86400),
        // Shorter than a minute could delete what a writer is still
        // committing; the default gives a day.
        Some(v) => duration(
            ctx,
            &key("gc_grace"),
            &v,
            Duration::from_secs(60)..=Duration::from_secs(90 * 86400),
            "24h",
        )?,
    };
    let schedule = match r.schedule {
        None => CronSchedule::parse(DEFAULT_RETENTION_SCHEDULE).ok(),
        Some(s) => cron(ctx, &key("schedule"), s)?,
    };
    Ok(RetentionConfig {
        keep_last,
        keep_daily,
        keep_weekly,
        keep_monthly,
        gc_grace,
        schedule,
    })
}

fn scrub(ctx: &Ctx<'_>, r: RawScrub) -> Result<ScrubConfig, ConfigError> {
    let key = |k: &str| KeyName::plain(Section::Scrub, k);
    let schedule = match r.schedule {
        None => CronSchedule::parse(DEFAULT_SCRUB_SCHEDULE).ok(),
        Some(s) => cron(ctx, &key("schedule"), s)?,
    };
    let read_budget = match r.read_budget {
        None => DEFAULT_SCRUB_READ_BUDGET,
        Some(v) => {
            let bytes = match &v.value {
                toml::Value::Integer(n) => u64::try_from(*n).ok(),
                toml::Value::String(s) => parse_size(s),
                _ => None,
            };
            bytes.ok_or_else(|| {
                ctx.invalid(
                    &key("read_budget"),
                    &v.origin,
                    &format!("{} is not a size", v.value),
                    "Give the bytes a scrub run may download and check, as bytes or with a unit (read_budget = \"1GiB\"); 0 only lists and compares sizes",
                )
            })?
        }
    };
    Ok(ScrubConfig {
        schedule,
        read_budget,
    })
}
