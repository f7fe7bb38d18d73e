//! The simulated fleet: the rows a year of 1,000 sidecars leaves in the fleet
//! database, written server-side (`INSERT … SELECT … generate_series`) as the
//! tables' owner. Filling is setup, not measured.
//!
//! Per instance `inst-NNNNN` (labels `service`, `region`, `deployment`), three
//! databases: PostgreSQL `main` and `analytics`, SQLite `auth`. Per database
//! and day one base backup (SQLite: a snapshot), per week one test restore,
//! one restore window per timeline. The hourly WAL ranges of a year are not
//! rows of the schema (it has no WAL-range table): a sidecar publishes them
//! summarised as its restore windows, and as the CIDs of the hourly packs on a
//! content-addressed destination, which every `storacha_every`-th instance
//! has (an `s3` destination every instance has).
//!
//! Made wrong on purpose, and what `pitr fleet list` must find again:
//! - **stale**: `analytics` of every instance `i % 50 == 37` stopped archiving
//!   `2 + i % 5` days ago (its window ends there; its stream check fails);
//! - **never restorable**: `auth` of every instance `i % 100 == 11` has no
//!   snapshot and no window (`newest_restorable` NULL; its watch check fails);
//! - **failing test restore**: the newest test restore of `main` of every
//!   instance `i % 40 == 3` failed (and its `verify` check fails).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_postgres::Client;

/// The `published_seq` every filled instance starts from.
pub const FILLED_SEQ: i64 = 1000;

/// The databases of every instance: kind and name.
pub const DATABASES: [(&str, &str); 3] = [
    ("postgres", "main"),
    ("postgres", "analytics"),
    ("sqlite", "auth"),
];

/// Bytes of WAL per hour in the simulated history: one 16 MiB segment.
pub const WAL_PER_HOUR: u64 = 16 << 20;

/// The fleet's shape.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Instances (sidecars).
    pub instances: u32,
    /// Days of history.
    pub days: u32,
    /// Every this many instances has a content-addressed destination, with a
    /// CID per hourly pack and per backup.
    pub storacha_every: u32,
}

/// What state the fill leaves a database in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Restorable up to seconds ago; its publisher moves the window.
    Fresh,
    /// Its window ended this many days ago.
    Stale(u32),
    /// No restorable point at all.
    Never,
}

/// The instance's name.
pub fn instance(i: u32) -> String {
    format!("inst-{i:05}")
}

/// The instance's login role.
pub fn role(i: u32) -> String {
    format!("pitr_inst_{i:05}")
}

/// The instance's labels, as the fill writes them.
pub fn labels(i: u32) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("service".to_owned(), format!("svc-{}", i % 50)),
        (
            "region".to_owned(),
            ["eu", "us", "ap"][(i % 3) as usize].to_owned(),
        ),
        (
            "deployment".to_owned(),
            if i % 4 == 0 { "staging" } else { "prod" }.to_owned(),
        ),
    ])
}

/// The state the fill leaves database `name` of instance `i` in (mirrors
/// `bench_dbs` in [`fill`]).
pub fn state(i: u32, name: &str) -> State {
    match name {
        "analytics" if i % 50 == 37 => State::Stale(2 + i % 5),
        "auth" if i % 100 == 11 => State::Never,
        _ => State::Fresh,
    }
}

/// Whether `main` of instance `i` is on timeline 2 (a restore promoted a new
/// timeline a third of the history ago).
pub fn second_timeline(i: u32) -> bool {
    i % 7 == 0
}

/// The databases `pitr fleet list --stale 24h` must list, as
/// `instance/name`.
pub fn expected_stale(shape: Shape) -> std::collections::BTreeSet<String> {
    (0..shape.instances)
        .flat_map(|i| {
            DATABASES
                .iter()
                .filter(move |(_, n)| state(i, n) != State::Fresh)
                .map(move |(_, n)| format!("{}/{n}", instance(i)))
        })
        .collect()
}

/// The databases `pitr fleet list --failing` must list, as
/// `instance/name`: every database of an instance with a failing check (the
/// stale, the never restorable and the failed test restores each fail one)
/// or whose newest test restore failed.
pub fn expected_failing(shape: Shape) -> std::collections::BTreeSet<String> {
    (0..shape.instances)
        .filter(|i| i % 40 == 3 || i % 50 == 37 || i % 100 == 11)
        .flat_map(|i| {
            DATABASES
                .iter()
                .map(move |(_, n)| format!("{}/{n}", instance(i)))
        })
        .collect()
}

/// How the fill went: row counts per table, sizes, time.
pub struct Filled {
    /// The fill's `now()`, in microseconds since the epoch: every time of the
    /// history is relative to it.
    pub t0_us: i64,
    /// `(table, rows, bytes with indexes)`, in the schema's order.
    pub tables: Vec<(String, i64, i64)>,
    /// `pg_database_size('fleet')`.
    pub database_bytes: i64,
    /// Wall time of the fill (inserts, then `VACUUM ANALYZE`).
    pub took: Duration,
}

/// Creates the per-instance roles and their mappings and the read role, then
/// fills the tables. `admin` is the superuser on the fleet database.
pub async fn fill(admin: &Client, shape: Shape) -> anyhow::Result<Filled> {
    let started = Instant::now();
    let Shape {
        instances: n,
        days,
        storacha_every: se,
    } = shape;
    anyhow::ensure!((1..100_000).contains(&n), "instances: 1 to 99,999");
    anyhow::ensure!(days >= 8, "days: at least 8 (a week of test restores)");
    let se = se.max(1);
    let split = days / 3;
    let weeks = (days / 7).min(52);
    // The integers are the benchmark's own, not outside input: formatted in.
    let sql = format!(
        r#"
-- The fill is consistent by construction (parents before children): foreign
-- key triggers would only make it slower.
SET session_replication_role = replica;
CREATE TEMP TABLE fill_t AS SELECT now() AS t;

DO $$
BEGIN
    FOR i IN 0..{n} - 1 LOOP
        EXECUTE format('CREATE ROLE %I LOGIN IN ROLE pitr_fleet_writer', format('pitr_inst_%s', lpad(i::text, 5, '0')));
    END LOOP;
END
$$;
CREATE ROLE fleet_reader LOGIN IN ROLE pitr_fleet_reader;
INSERT INTO pitr_fleet.instance_roles (role, instance)
SELECT format('pitr_inst_%s', lpad(i::text, 5, '0')), format('inst-%s', lpad(i::text, 5, '0'))
  FROM generate_series(0, {n} - 1) i;

CREATE TEMP TABLE bench_dbs AS
SELECT i, format('inst-%s', lpad(i::text, 5, '0')) AS instance, d.kind, d.name,
       CASE WHEN d.name = 'analytics' AND i % 50 = 37 THEN 'stale'
            WHEN d.name = 'auth' AND i % 100 = 11 THEN 'never'
            ELSE 'fresh' END AS state,
       CASE WHEN d.name = 'analytics' AND i % 50 = 37 THEN 2 + i % 5 ELSE 0 END AS stale_days
  FROM generate_series(0, {n} - 1) i,
       (VALUES ('postgres', 'main'), ('postgres', 'analytics'), ('sqlite', 'auth')) d(kind, name);

INSERT INTO pitr_fleet.instances (instance, labels, version, last_seen, published_seq, published_at)
SELECT format('inst-%s', lpad(i::text, 5, '0')),
       jsonb_build_object('service', format('svc-%s', i % 50),
                          'region', (ARRAY['eu', 'us', 'ap'])[i % 3 + 1],
                          'deployment', CASE WHEN i % 4 = 0 THEN 'staging' ELSE 'prod' END),
       '0.1.0', t - make_interval(secs => i % 30), {FILLED_SEQ}, t
  FROM generate_series(0, {n} - 1) i, fill_t;

INSERT INTO pitr_fleet.databases (instance, kind, name, newest_restorable, seq)
SELECT instance, kind, name,
       CASE state WHEN 'never' THEN NULL
                  WHEN 'stale' THEN t - make_interval(days => stale_days)
                  ELSE t - interval '20 seconds' END,
       {FILLED_SEQ}
  FROM bench_dbs, fill_t;

-- One window per timeline: timeline 1 (SQLite: 0) over the whole history,
-- ending now (or where a stale database stopped); `main` of every 7th
-- instance switched to timeline 2 {split} days ago.
INSERT INTO pitr_fleet.restore_windows (instance, kind, database, timeline, earliest, latest, end_lsn, seq)
SELECT instance, kind, name,
       CASE kind WHEN 'sqlite' THEN 0 ELSE 1 END,
       t - make_interval(days => {days}),
       CASE WHEN name = 'main' AND i % 7 = 0 THEN t - make_interval(days => {split})
            WHEN state = 'stale' THEN t - make_interval(days => stale_days)
            ELSE t - interval '20 seconds' END,
       CASE kind WHEN 'postgres' THEN '0/0'::pg_lsn + ({days}::numeric * 24 * {WAL_PER_HOUR}) END,
       {FILLED_SEQ}
  FROM bench_dbs, fill_t WHERE state <> 'never'
UNION ALL
SELECT instance, kind, name, 2, t - make_interval(days => {split}), t - interval '20 seconds',
       '0/0'::pg_lsn + ({days}::numeric * 24 * {WAL_PER_HOUR}), {FILLED_SEQ}
  FROM bench_dbs, fill_t WHERE name = 'main' AND i % 7 = 0;

-- A base backup a day at 03:00 (id base-NNNNN, 0 the oldest), incremental
-- on the day before except on every 7th; SQLite: a snapshot, no LSNs.
INSERT INTO pitr_fleet.backups (instance, kind, database, id, started, finished, start_lsn, stop_lsn,
                                timeline, bytes, stored_bytes, restorable, incremental_parent, seq)
SELECT b.instance, b.kind, b.name, format('base-%s', lpad(d::text, 5, '0')),
       s, s + interval '12 minutes',
       CASE b.kind WHEN 'postgres' THEN '0/0'::pg_lsn + (d::numeric * 24 * {WAL_PER_HOUR}) END,
       CASE b.kind WHEN 'postgres' THEN '0/0'::pg_lsn + (d::numeric * 24 * {WAL_PER_HOUR} + 16777216) END,
       CASE b.kind WHEN 'postgres' THEN
            CASE WHEN b.name = 'main' AND b.i % 7 = 0 AND d >= {days} - {split} THEN 2 ELSE 1 END END,
       2000000000::bigint + d * 1000000,
       CASE b.kind WHEN 'postgres' THEN CASE WHEN d % 7 = 0 THEN 500000000 ELSE 20000000 END END,
       true,
       CASE WHEN b.kind = 'postgres' AND d % 7 <> 0 THEN format('base-%s', lpad((d - 1)::text, 5, '0')) END,
       {FILLED_SEQ}
  FROM bench_dbs b, fill_t, generate_series(0, {days} - 1) d,
       LATERAL (SELECT t - make_interval(days => {days} - d) + interval '3 hours' AS s) x
 WHERE b.state <> 'never' AND d < {days} - b.stale_days;

-- A test restore a week; the newest of `main` of every 40th instance failed.
INSERT INTO pitr_fleet.test_restores (instance, kind, database, started, ok, detail, seq)
SELECT b.instance, b.kind, b.name, t - make_interval(days => 7 * w + 1) + interval '5 hours',
       NOT (w = 0 AND b.name = 'main' AND b.i % 40 = 3),
       CASE WHEN w = 0 AND b.name = 'main' AND b.i % 40 = 3
            THEN 'the restored cluster did not reach a consistent state: invalid record length at 2A/3F000060' END,
       {FILLED_SEQ}
  FROM bench_dbs b, fill_t, generate_series(0, {weeks} - 1) w
 WHERE b.state <> 'never';

INSERT INTO pitr_fleet.destinations (instance, name, kind, seq)
SELECT format('inst-%s', lpad(i::text, 5, '0')), 's3', 's3', {FILLED_SEQ}
  FROM generate_series(0, {n} - 1) i
UNION ALL
SELECT format('inst-%s', lpad(i::text, 5, '0')), 'archive', 'storacha', {FILLED_SEQ}
  FROM generate_series(0, {n} - 1) i WHERE i % {se} = 0;

-- Per database on a content-addressed destination: a pack a day of the base
-- backup and a pack an hour of WAL (SQLite: of captures).
INSERT INTO pitr_fleet.cids (instance, destination, object, cid, seq)
SELECT b.instance, 'archive', 'packs/' || md5(b.instance || '/' || b.name || '/' || h),
       'bafkrei' || md5(h || '/' || b.name || '/' || b.instance) || substr(md5(b.instance || h), 1, 20),
       {FILLED_SEQ}
  FROM bench_dbs b, generate_series(0, {days} * 25 - 1) h
 WHERE b.i % {se} = 0 AND b.state <> 'never';

INSERT INTO pitr_fleet.health_checks (instance, id, ok, summary, seq)
SELECT format('inst-%s', lpad(i::text, 5, '0')), c.id,
       NOT ((c.id = 'postgres/analytics/stream' AND i % 50 = 37)
            OR (c.id = 'sqlite/auth/watch' AND i % 100 = 11)
            OR (c.id = 'verify' AND i % 40 = 3)),
       CASE WHEN c.id = 'postgres/analytics/stream' AND i % 50 = 37 THEN 'not connected: connection refused'
            WHEN c.id = 'sqlite/auth/watch' AND i % 100 = 11 THEN 'no capture yet: unable to open database file'
            WHEN c.id = 'verify' AND i % 40 = 3 THEN 'the last test restore of main failed'
            ELSE 'ok' END,
       {FILLED_SEQ}
  FROM generate_series(0, {n} - 1) i,
       unnest(ARRAY['postgres/main/stream', 'postgres/main/backup', 'postgres/analytics/stream',
                    'postgres/analytics/backup', 'sqlite/auth/watch', 'destination/s3', 'verify']) c(id)
UNION ALL
SELECT format('inst-%s', lpad(i::text, 5, '0')), 'destination/archive', true, 'ok', {FILLED_SEQ}
  FROM generate_series(0, {n} - 1) i WHERE i % {se} = 0;

SET session_replication_role = DEFAULT;
"#
    );
    admin
        .batch_execute(&sql)
        .await
        .context("fill the fleet database")?;
    // What autovacuum would have done by the time a fleet is this old: the
    // planner's statistics and the visibility map.
    admin
        .batch_execute("VACUUM ANALYZE")
        .await
        .context("VACUUM ANALYZE")?;
    admin
        .batch_execute("CHECKPOINT")
        .await
        .context("CHECKPOINT")?;
    let took = started.elapsed();
    let t0_us: i64 = admin
        .query_one(
            "SELECT (extract(epoch FROM t) * 1000000)::bigint FROM fill_t",
            &[],
        )
        .await?
        .get(0);
    let mut tables = Vec::new();
    let published = pitr::fleet::rows::TABLES.map(|t| t.name);
    for t in ["instance_roles", "instances"].into_iter().chain(published) {
        let row = admin
            .query_one(
                &format!(
                    "SELECT count(*), pg_total_relation_size('pitr_fleet.{t}') FROM pitr_fleet.{t}"
                ),
                &[],
            )
            .await
            .with_context(|| format!("count {t}"))?;
        tables.push((t.to_owned(), row.get(0), row.get(1)));
    }
    let database_bytes: i64 = admin
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await?
        .get(0);
    Ok(Filled {
        t0_us,
        tables,
        database_bytes,
        took,
    })
}
