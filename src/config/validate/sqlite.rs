//! `[[sqlite]]`.

use std::time::Duration;

use super::super::SqliteConfig;
use super::super::error::{ConfigError, Ctx};
use super::super::raw::{RawSqlite, Section};
use super::values::{duration, each_entry, path};

/// How often an SQLite watcher polls: faster than 100 ms costs CPU for no
/// gain (file events wake it anyway), slower than an hour is no longer
/// "any second".
const SQLITE_INTERVALS: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(3600);
const DEFAULT_SQLITE_INTERVAL: Duration = Duration::from_secs(1);
/// Snapshots: more often than a minute would store the database over and
/// over; rarer than 30 days makes restores replay a month of page sets.
const SNAPSHOT_INTERVALS: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(60)..=Duration::from_secs(30 * 86400);
const DEFAULT_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(86400);
pub(super) fn sqlite(ctx: &Ctx<'_>, raw: Vec<RawSqlite>) -> Result<Vec<SqliteConfig>, ConfigError> {
    each_entry(ctx, Section::Sqlite, raw, |key, name, s| {
        let Some(p) = s.path else {
            return Err(ctx.missing(
                &key("path"),
                "the SQLite database has no path",
                "Add path = \"/data/app.db\" (the database file to back up)",
            ));
        };
        let interval = match s.interval {
            None => DEFAULT_SQLITE_INTERVAL,
            Some(v) => duration(ctx, &key("interval"), &v, SQLITE_INTERVALS, "1s")?,
        };
        let snapshot_interval = match s.snapshot_interval {
            None => DEFAULT_SNAPSHOT_INTERVAL,
            Some(v) => duration(
                ctx,
                &key("snapshot_interval"),
                &v,
                SNAPSHOT_INTERVALS,
                "24h",
            )?,
        };
        Ok(SqliteConfig {
            name,
            path: path(ctx, &key("path"), &p)?,
            interval,
            snapshot_interval,
        })
    })
}
