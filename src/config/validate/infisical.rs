//! `[[infisical]]`: an Infisical project's secrets as a snapshot source.

use std::time::Duration;

use super::super::InfisicalConfig;
use super::super::error::{ConfigError, Ctx, KeyName};
use super::super::raw::{RawInfisical, Section, Val};
use super::super::secrets;
use super::values::{cron, duration, each_entry, http_url};
use crate::cron::CronSchedule;

/// Infisical Cloud's US region; the EU one and self-hosted instances are
/// set with `site_url`.
const DEFAULT_SITE_URL: &str = "https://app.infisical.com";
/// Hourly: secrets change rarely, and an unchanged project stores nothing.
const DEFAULT_SCHEDULE: &str = "0 * * * *";
/// An export is a login and one request per environment; five minutes
/// leaves room for rate-limit waits.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
const TIMEOUTS: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(3600);
const MAX_AGES: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(60)..=Duration::from_secs(90 * 86400);

pub(super) fn infisical(
    ctx: &Ctx<'_>,
    raw: Vec<RawInfisical>,
) -> Result<Vec<InfisicalConfig>, ConfigError> {
    each_entry(ctx, Section::Infisical, raw, |key, name, e| {
        let site_url = http_url(
            ctx,
            &key("site_url"),
            e.site_url,
            DEFAULT_SITE_URL,
            "Give the instance's URL: https://app.infisical.com (US, the default), https://eu.infisical.com (EU) or your own instance's",
        )?;
        let project_id = required(
            ctx,
            &key("project_id"),
            e.project_id,
            "Add project_id = \"…\": the project's id, shown in the project's settings in Infisical",
        )?;
        let environments = environments(ctx, &key("environments"), e.environments)?;
        let secret_path = match e.secret_path {
            None => "/".to_owned(),
            Some(v) if v.value.starts_with('/') && !v.value.contains(char::is_whitespace) => {
                match v.value.trim_end_matches('/') {
                    "" => "/".to_owned(),
                    p => p.to_owned(),
                }
            }
            Some(v) => {
                return Err(ctx.invalid(
                    &key("secret_path"),
                    &v.origin,
                    &format!("{:?} is not a folder path", v.value),
                    "Give a folder starting with `/`, e.g. secret_path = \"/\" (the whole environment, the default) or \"/backend\"; everything beneath it is exported",
                ));
            }
        };
        let client_id = required(
            ctx,
            &key("client_id"),
            e.client_id,
            "Add client_id = \"…\": the Universal Auth client id of the machine identity pitr logs in as",
        )?;
        let client_secret = secrets::required_text(
            ctx,
            &key("client_secret"),
            e.client_secret,
            e.client_secret_file,
            (
                "no client secret is configured",
                &format!(
                    "Add client_secret_file = \"/run/secrets/…\" naming a file that holds the machine identity's Universal Auth client secret, or set PITR_INFISICAL_{}_CLIENT_SECRET_FILE",
                    super::super::env::env_name(&name)
                ),
            ),
            "Put the client secret Infisical showed when it was created there",
        )?
        .trim()
        .to_owned();
        let schedule = match e.schedule {
            None => Some(CronSchedule::parse(DEFAULT_SCHEDULE).expect("the default parses")),
            Some(v) => cron(ctx, &key("schedule"), v)?,
        };
        let timeout = match e.timeout {
            None => DEFAULT_TIMEOUT,
            Some(v) => duration(ctx, &key("timeout"), &v, TIMEOUTS, "5m")?,
        };
        let max_age = match e.max_age {
            None => None,
            Some(v) => Some(duration(ctx, &key("max_age"), &v, MAX_AGES, "3h")?),
        };
        Ok(InfisicalConfig {
            name,
            site_url,
            project_id,
            environments,
            secret_path,
            client_id,
            client_secret,
            schedule,
            timeout,
            max_age,
        })
    })
}

/// A required text key, trimmed and not empty.
fn required(
    ctx: &Ctx<'_>,
    key: &KeyName,
    v: Option<Val<String>>,
    fix: &str,
) -> Result<String, ConfigError> {
    match v {
        None => Err(ctx.missing(key, "is not set", fix)),
        Some(v) if v.value.trim().is_empty() => Err(ctx.invalid(key, &v.origin, "is empty", fix)),
        Some(v) => Ok(v.value.trim().to_owned()),
    }
}

/// `environments`: at least one slug, each once.
fn environments(
    ctx: &Ctx<'_>,
    key: &KeyName,
    v: Option<Val<Vec<Val<String>>>>,
) -> Result<Vec<String>, ConfigError> {
    let fix = "List the environment slugs to export, e.g. environments = [\"dev\", \"staging\", \"prod\"] (the slugs shown in the project's environment settings)";
    let Some(list) = v else {
        return Err(ctx.missing(key, "no environments are listed", fix));
    };
    if list.value.is_empty() {
        return Err(ctx.invalid(key, &list.origin, "is empty", fix));
    }
    let mut out: Vec<String> = Vec::with_capacity(list.value.len());
    for item in list.value {
        let slug = item.value.trim();
        if slug.is_empty() || slug.contains(|c: char| c.is_whitespace() || c == '/') {
            return Err(ctx.invalid(
                key,
                &item.origin,
                &format!("{:?} is not an environment slug", item.value),
                fix,
            ));
        }
        if out.iter().any(|s| s == slug) {
            return Err(ctx.invalid(
                key,
                &item.origin,
                &format!("{slug:?} is listed twice"),
                "List each environment once",
            ));
        }
        out.push(slug.to_owned());
    }
    Ok(out)
}
