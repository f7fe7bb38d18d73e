//! `[retention]`.

use std::time::Duration;

use super::super::RetentionConfig;
use super::super::error::{ConfigError, Ctx, KeyName};
use super::super::raw::{RawRetention, Section, Val};
use super::values::{cron, duration};
use crate::cron::CronSchedule;

/// Default retention run: daily, after the test restore.
const DEFAULT_RETENTION_SCHEDULE: &str = "30 4 * * *";
pub(super) fn retention(ctx: &Ctx<'_>, r: RawRetention) -> Result<RetentionConfig, ConfigError> {
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
