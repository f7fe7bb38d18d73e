//! `[health]`: the endpoint and its thresholds.

use std::net::SocketAddr;
use std::time::Duration;

use super::super::HealthConfig;
use super::super::error::{ConfigError, Ctx, KeyName};
use super::super::raw::{RawHealth, Section, Val};
use super::super::secrets;
use super::values::{MIB, duration, path, size_at_least, tls_files};

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

/// Thresholds shorter than 10 s would flap on an ordinary pause; longer
/// than 90 days would not be a health check any more.
const THRESHOLDS: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(10)..=Duration::from_secs(90 * 86400);

pub(super) fn health(
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
        Some(v) => size_at_least(
            ctx,
            &key("slot_retained_max"),
            &v,
            16 * MIB,
            "Give how much WAL the server may hold for pitr's slot before it is an alert, as bytes or with a unit (slot_retained_max = \"4GiB\", the default); keep it well below the free space of the server's pg_wal disk",
        )?,
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
        tls: tls_files(ctx, Section::Health, "", h.tls_cert_file, h.tls_key_file)?,
    })
}
