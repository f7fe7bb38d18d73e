//! `[scrub]`.

use super::super::ScrubConfig;
use super::super::error::{ConfigError, Ctx, KeyName};
use super::super::raw::{RawScrub, Section};
use super::values::{cron, size_bytes};
use crate::cron::CronSchedule;

/// Default scrub: daily, clear of the base backup (03:00), the test restore
/// (04:00) and retention (04:30), so the three never compete for the
/// destinations' bandwidth.
const DEFAULT_SCRUB_SCHEDULE: &str = "15 5 * * *";
/// Default bytes the scrub downloads and checks per run: a nightly GiB
/// reads a 30 GiB repository through in a month.
const DEFAULT_SCRUB_READ_BUDGET: u64 = 1 << 30;
pub(super) fn scrub(ctx: &Ctx<'_>, r: RawScrub) -> Result<ScrubConfig, ConfigError> {
    let key = |k: &str| KeyName::plain(Section::Scrub, k);
    let schedule = match r.schedule {
        None => CronSchedule::parse(DEFAULT_SCRUB_SCHEDULE).ok(),
        Some(s) => cron(ctx, &key("schedule"), s)?,
    };
    let read_budget = match r.read_budget {
        None => DEFAULT_SCRUB_READ_BUDGET,
        Some(v) => {
            size_bytes(&v.value).ok_or_else(|| {
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
