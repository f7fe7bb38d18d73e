//! Raw values (file + environment) → a [`Config`] whose every field is
//! already checked, so nothing past loading validates again.
//!
//! One module per section; `values` holds the checks several sections share
//! (sizes, durations, paths, cron schedules, entry names). Only checks that
//! span sections (the quorum against the destinations) live here.

mod alert;
mod command;
mod destination;
pub(super) mod fleet;
mod health;
mod infisical;
mod postgres;
mod repository;
mod restore;
mod retention;
mod scrub;
mod sqlite;
pub(super) mod values;
mod verify;

use super::Config;
use super::error::{ConfigError, Ctx, Entry, KeyName};
use super::raw::{RawConfig, Section};

use alert::alerts;
use command::commands;
use destination::destinations;
use fleet::fleet;
use health::health;
use infisical::infisical;
use postgres::postgres;
use repository::repository;
use restore::restore;
use retention::retention;
use scrub::scrub;
use sqlite::sqlite;
use verify::verify;

/// Checks `[fleet]` alone (`pitr fleet`'s readers need nothing else).
pub(super) fn fleet_only(
    ctx: &Ctx<'_>,
    raw: super::raw::RawFleet,
) -> Result<super::FleetConfig, ConfigError> {
    fleet(ctx, raw)
}

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
        commands: commands(ctx, raw.command.unwrap_or_default())?,
        infisical: infisical(ctx, raw.infisical.unwrap_or_default())?,
        fleet: match raw.fleet {
            None => None,
            Some(f) => Some(fleet(ctx, f)?),
        },
        repository,
    };
    // Both kinds of snapshot source store under `snapshot/<name>/`: one
    // name in both sections would mix their snapshots.
    if let Some(i) = config
        .infisical
        .iter()
        .find(|i| config.commands.iter().any(|c| c.name == i.name))
    {
        return Err(ConfigError::Invalid {
            path: ctx.path.to_path_buf(),
            key: KeyName::entry(Section::Infisical, &Entry::Named(i.name.clone()), "name")
                .to_string(),
            message: format!(
                "the name {:?} is already used by a [[command]] entry: snapshot sources share \
                 one namespace in the repository. Give each [[command]] and [[infisical]] entry \
                 a unique name",
                i.name
            ),
        });
    }
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
