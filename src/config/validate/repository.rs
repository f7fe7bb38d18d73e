//! `[repository]`.

use super::super::RepositoryConfig;
use super::super::error::{ConfigError, Ctx, KeyName};
use super::super::raw::{RawRepository, Section, Val};
use super::super::secrets;
use super::values::{MIB, int_in, path, shown, size_at_least, size_bytes};

/// zstd levels pitr accepts; above 19 zstd needs much more memory per level
/// for little gain, which would break the bounded-memory invariant.
const ZSTD_LEVELS: std::ops::RangeInclusive<i32> = 1..=19;
const DEFAULT_ZSTD_LEVEL: i32 = 3;
/// Large enough to keep the object count low, small enough to buffer.
const PACK_SIZES: std::ops::RangeInclusive<u64> = MIB..=512 * MIB;
const DEFAULT_PACK_SIZE: u64 = 16 * MIB;
const DEFAULT_SPOOL_MAX: u64 = 1024 * MIB;
pub(super) fn repository(ctx: &Ctx<'_>, r: RawRepository) -> Result<RepositoryConfig, ConfigError> {
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
        Some(v) => int_in(
            ctx,
            &key("zstd_level"),
            &v,
            ZSTD_LEVELS,
            "Use a level from 1 (fastest) to 19 (smallest); 3 is the default",
        )?,
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
        Some(v) => size_at_least(
            ctx,
            &key("spool_max_bytes"),
            &v,
            MIB,
            "Give a size of at least 1 MiB, as bytes or with a unit (spool_max_bytes = \"4GiB\"); 1 GiB is the default",
        )?,
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
    let shown = shown(&v.value);
    match size_bytes(&v.value) {
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
