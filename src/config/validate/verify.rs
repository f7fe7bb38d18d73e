//! `[verify]`: scheduled test restores.

use super::super::VerifyConfig;
use super::super::error::{ConfigError, Ctx, KeyName};
use super::super::raw::{RawVerify, Section};
use super::values::{cron, path};
use crate::cron::CronSchedule;

/// Default test-restore schedule: daily, after the seed's 03:00 base backup.
const DEFAULT_VERIFY_SCHEDULE: &str = "0 4 * * *";
pub(super) fn verify(
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
