//! `[[sqlite]]`.

use std::collections::HashMap;
use std::time::Duration;

use super::super::SqliteConfig;
use super::super::error::{ConfigError, Ctx, KeyName};
use super::super::raw::{RawSqlite, Section};
use super::values::{duration, entry_name, path};

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
    let section = Section::Sqlite;
    let mut seen = HashMap::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, s) in raw.into_iter().enumerate() {
        let (entry, name) = entry_name(ctx, section, i, s.name, &mut seen)?;
        let key = KeyName::entry(section, &entry, "path");
        let Some(p) = s.path else {
            return Err(ctx.missing(
                &key,
                "the SQLite database has no path",
                "Add path = \"/data/app.db\" (the database file to back up)",
            ));
        };
        let key = |k| KeyName::entry(section, &entry, k);
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
        out.push(SqliteConfig {
            name,
            path: path(ctx, &key("path"), &p)?,
            interval,
            snapshot_interval,
        });
    }
    Ok(out)
}
