//! `[[command]]`: snapshot sources whose standard output is stored.

use std::time::Duration;

use super::super::error::{ConfigError, Ctx, KeyName};
use super::super::raw::{RawCommand, Section, Val};
use super::super::secrets;
use super::super::{CommandConfig, VERIFY_FILE_PLACEHOLDER};
use super::values::{cron, duration, each_entry};
use crate::cron::CronSchedule;

/// Default schedule: daily, before the seed's 03:00 base backup.
const DEFAULT_SCHEDULE: &str = "30 2 * * *";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
/// A dump of a large database takes hours, not days.
const TIMEOUTS: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(7 * 86400);
const MAX_AGES: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(60)..=Duration::from_secs(366 * 86400);

pub(super) fn commands(
    ctx: &Ctx<'_>,
    raw: Vec<RawCommand>,
) -> Result<Vec<CommandConfig>, ConfigError> {
    each_entry(ctx, Section::Command, raw, |key, name, c| {
        let Some(run) = argv(ctx, &key("run"), c.run)? else {
            return Err(ctx.missing(
                &key("run"),
                "the command has nothing to run",
                "Add run = [\"program\", \"arg\", …] (run directly, no shell), e.g. run = [\"pg_dump\", \"-Fc\", \"--dbname=app\"]",
            ));
        };
        let verify = argv(ctx, &key("verify"), c.verify.clone())?;
        if let (Some(v), Some(raw)) = (&verify, &c.verify)
            && !v.iter().any(|a| a.contains(VERIFY_FILE_PLACEHOLDER))
        {
            return Err(ctx.invalid(
                &key("verify"),
                &raw.origin,
                "does not name the restored copy",
                "Put {file} where the copy's path goes, e.g. verify = [\"pg_restore\", \"--list\", \"{file}\"]",
            ));
        }
        let env = secrets::env_table(ctx, &key("env"), c.env, c.env_file)?;
        let schedule = match c.schedule {
            None => CronSchedule::parse(DEFAULT_SCHEDULE).ok(),
            Some(s) => cron(ctx, &key("schedule"), s)?,
        };
        let timeout = match c.timeout {
            None => DEFAULT_TIMEOUT,
            Some(v) => duration(ctx, &key("timeout"), &v, TIMEOUTS, "1h")?,
        };
        let max_age = match c.max_age {
            None => None,
            Some(v) => Some(duration(ctx, &key("max_age"), &v, MAX_AGES, "36h")?),
        };
        let user = match c.user {
            None => None,
            Some(u) if !u.value.trim().is_empty() => Some(u.value.trim().to_owned()),
            Some(u) => {
                return Err(ctx.invalid(
                    &key("user"),
                    &u.origin,
                    "is empty",
                    "Name the OS user the command runs as when pitr runs as root, e.g. user = \"postgres\", or remove the key",
                ));
            }
        };
        Ok(CommandConfig {
            name,
            run,
            env,
            schedule,
            timeout,
            user,
            verify,
            max_age,
        })
    })
}

/// An argument vector: `None` when unset; an empty list or an empty
/// program is an error.
fn argv(
    ctx: &Ctx<'_>,
    key: &KeyName,
    v: Option<Val<Vec<Val<String>>>>,
) -> Result<Option<Vec<String>>, ConfigError> {
    let Some(v) = v else { return Ok(None) };
    match v.value.first() {
        Some(program) if !program.value.trim().is_empty() => {
            Ok(Some(v.value.into_iter().map(|a| a.value).collect()))
        }
        _ => Err(ctx.invalid(
            key,
            &v.origin,
            "has no program",
            &format!(
                "Give the program first, then its arguments, e.g. {}",
                key.section.key(&key.key).map_or("", |s| s.example)
            ),
        )),
    }
}
