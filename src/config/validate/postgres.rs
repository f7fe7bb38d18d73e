//! `[[postgres]]`.

use super::super::PostgresConfig;
use super::super::error::{ConfigError, Ctx, KeyName};
use super::super::raw::{RawPostgres, Section, Val};
use super::super::secrets;
use super::values::{GIB, boolean, cron, each_entry, int_in};
use crate::cron::CronSchedule;
use crate::pg::{Checkpoint, ManifestChecksums};

const DEFAULT_SLOT: &str = "pitr";
/// The seed's 3 AM daily: the schedule the scripts pitr replaces ran at.
const DEFAULT_BASE_BACKUP: &str = "0 3 * * *";
/// More WAL than any sane rule (1 PiB): keeps the conversion to bytes exact.
const MAX_WAL_GIB: f64 = 1024.0 * 1024.0;
/// PostgreSQL's MAX_RATE bounds, kB/s.
const MAX_RATES: std::ops::RangeInclusive<u32> = 32..=1_048_576;
/// The longest chain of incremental backups `incremental_max_chain` allows:
/// every restore reads each backup of the chain, so a long one costs.
const MAX_INCREMENTAL_CHAIN: u32 = 1000;
/// What to do about an `allow_insecure_password` that is not a boolean
/// (`[[postgres]]` and `[fleet]`).
pub(super) const INSECURE_PASSWORD_FIX: &str = "Leave it out (false): pitr then refuses to send a cleartext or md5 password over a connection without TLS. Set allow_insecure_password = true only where the network path is trusted";

pub(super) fn postgres(
    ctx: &Ctx<'_>,
    raw: Vec<RawPostgres>,
) -> Result<Vec<PostgresConfig>, ConfigError> {
    each_entry(ctx, Section::Postgres, raw, |key, name, p| {
        let conninfo = secrets::required_text(
            ctx,
            &key("conninfo"),
            p.conninfo,
            p.conninfo_file,
            (
                "no connection string is configured",
                &format!(
                    "Add conninfo = \"host=… port=5432 user=replicator dbname=postgres\", or conninfo_file = \"…\" naming a file that holds it, or set PITR_POSTGRES_{}_CONNINFO",
                    super::super::env::env_name(&name)
                ),
            ),
            "Give a libpq connection string, e.g. \"host=127.0.0.1 port=5432 user=replicator dbname=postgres\"",
        )?;
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
            Some(v) => Some(int_in(
                ctx,
                &key("max_rate"),
                &v,
                MAX_RATES,
                "Give the server's sending limit for base backups in kB/s, from 32 to 1048576 (PostgreSQL's MAX_RATE), e.g. max_rate = 102400 for 100 MB/s; leave it out for no limit",
            )?),
        };
        let incremental_max_chain = match p.incremental_max_chain {
            None => super::super::DEFAULT_INCREMENTAL_MAX_CHAIN,
            Some(v) => int_in(
                ctx,
                &key("incremental_max_chain"),
                &v,
                0..=MAX_INCREMENTAL_CHAIN,
                &format!(
                    "Give how many incremental base backups may follow a full one before the next full one, from 0 (only full backups) to {MAX_INCREMENTAL_CHAIN}; the default is 7"
                ),
            )?,
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
        let allow_insecure_password = boolean(
            ctx,
            &key("allow_insecure_password"),
            p.allow_insecure_password,
            INSECURE_PASSWORD_FIX,
        )?;
        Ok(PostgresConfig {
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
        })
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
