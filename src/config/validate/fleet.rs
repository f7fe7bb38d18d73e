//! `[fleet]`: where this sidecar publishes its catalog for the fleet.

use std::collections::BTreeMap;
use std::time::Duration;

use super::super::error::{ConfigError, Ctx, KeyName};
use super::super::raw::{RawFleet, Section};
use super::super::secrets;
use super::super::{FleetConfig, FleetKind};
use super::postgres::INSECURE_PASSWORD_FIX;
use super::values::{boolean, duration};

/// Shorter would hammer the fleet database; longer would not say the
/// instance is alive.
const INTERVALS: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(3600);
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// Bounds that keep every row a sidecar writes small.
const MAX_LABELS: usize = 32;
const MAX_LABEL_KEY: usize = 63;
const MAX_LABEL_VALUE: usize = 255;

pub(super) fn fleet(ctx: &Ctx<'_>, f: RawFleet) -> Result<FleetConfig, ConfigError> {
    let key = |k: &str| KeyName::plain(Section::Fleet, k);
    let kind = match f.kind {
        None => FleetKind::Postgres,
        Some(v) => match v.value.trim() {
            "postgres" => FleetKind::Postgres,
            other => {
                return Err(ctx.invalid(
                    &key("kind"),
                    &v.origin,
                    &format!("{other:?} is not a fleet transport pitr has"),
                    "Write kind = \"postgres\" (the default: the sidecar connects to the fleet database itself)",
                ));
            }
        },
    };
    let url = match f.url {
        None => {
            return Err(ctx.missing(
                &key("url"),
                "[fleet] has no url: the sidecar cannot know where the fleet catalog is",
                "Add url = \"postgres://pitr_INSTANCE@catalog.internal/fleet\" (or a conninfo string), or set PITR_FLEET_URL; remove [fleet] to publish nothing",
            ));
        }
        Some(v) if v.value.trim().is_empty() => {
            return Err(ctx.invalid(
                &key("url"),
                &v.origin,
                "is empty",
                "Give a PostgreSQL URL or conninfo string of the fleet database, e.g. \"host=catalog.internal user=pitr_api dbname=fleet sslmode=verify-full\"",
            ));
        }
        Some(v) => v.value,
    };
    let password =
        secrets::text(ctx, &key("password"), f.password, f.password_file)?.map(|s| s.value);
    let allow_insecure_password = boolean(
        ctx,
        &key("allow_insecure_password"),
        f.allow_insecure_password,
        INSECURE_PASSWORD_FIX,
    )?;
    let instance = match f.instance {
        None => {
            let host = nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_default();
            if !valid_instance(&host) {
                return Err(ctx.missing(
                    &key("instance"),
                    &format!("the host name {host:?} cannot serve as the fleet instance name"),
                    "Set instance = \"NAME\" (letters, digits, `_`, `-`, `.`, at most 63) in [fleet]",
                ));
            }
            host
        }
        Some(v) if !valid_instance(v.value.trim()) => {
            return Err(ctx.invalid(
                &key("instance"),
                &v.origin,
                &format!("{:?} is not a valid instance name", v.value),
                "Use 1 to 63 letters, digits, `_`, `-` or `.`, unique in the fleet (e.g. the deployment's name)",
            ));
        }
        Some(v) => v.value.trim().to_owned(),
    };
    let mut labels = BTreeMap::new();
    if let Some(v) = f.labels {
        let fix = format!(
            "Write labels as a table of short strings, e.g. labels = {{ service = \"api\", region = \"eu\" }} (or PITR_FLEET_LABELS=\"service=api,region=eu\"): at most {MAX_LABELS} labels, keys of at most {MAX_LABEL_KEY} characters, values of at most {MAX_LABEL_VALUE}"
        );
        let table = &v.value;
        if table.len() > MAX_LABELS {
            return Err(ctx.invalid(
                &key("labels"),
                &v.origin,
                &format!("has {} labels", table.len()),
                &fix,
            ));
        }
        for (k, value) in table {
            let text = value.as_str().filter(|s| s.len() <= MAX_LABEL_VALUE);
            match text {
                Some(text) if !k.is_empty() && k.len() <= MAX_LABEL_KEY => {
                    labels.insert(k.clone(), text.to_owned());
                }
                _ => {
                    return Err(ctx.invalid(
                        &key("labels"),
                        &v.origin,
                        &format!("label {k:?} = {value} is not a short string"),
                        &fix,
                    ));
                }
            }
        }
    }
    let publish_interval = match f.publish_interval {
        None => DEFAULT_INTERVAL,
        Some(v) => duration(ctx, &key("publish_interval"), &v, INTERVALS, "30s")?,
    };
    Ok(FleetConfig {
        kind,
        url,
        password,
        allow_insecure_password,
        instance,
        labels,
        publish_interval,
    })
}

/// What an instance may be called: it keys rows and roles map to it.
fn valid_instance(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}
