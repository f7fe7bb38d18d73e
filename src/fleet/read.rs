//! The queries behind `pitr fleet list`, `show` and `restore-command`:
//! read rights on `pitr_fleet` are all they need.
//!
//! What the fleet database answers is hostile input (any role that can
//! write it may have been compromised): every text is cut to a bound,
//! times travel as integers, JSON is parsed only below a size, and no
//! value read here ever names a path.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;
use tokio_postgres::Client;

use super::{FleetError, STATEMENT_TIMEOUT, bounded};

/// The longest text kept from any column (names, ids, summaries).
const MAX_TEXT: usize = 2000;
/// The largest JSON aggregate parsed (a database's windows, an instance's
/// failing checks).
const MAX_JSON: usize = 1 << 20;
/// The most rows one query returns.
const MAX_ROWS: i64 = 100_000;
/// The most CIDs `show` lists (the count says how many there are).
const MAX_CIDS: i64 = 1000;

/// Microseconds since the epoch: a time crosses as an integer.
macro_rules! epoch {
    ($col:literal) => {
        concat!("(extract(epoch FROM ", $col, ") * 1000000)::bigint")
    };
}

/// Which databases `list` shows.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Labels the instance must have (`--label k=v`, all of them).
    pub labels: BTreeMap<String, String>,
    /// Only databases whose newest restorable point is older than this, or
    /// that have none (`--stale 24h`).
    pub stale: Option<Duration>,
    /// Only databases whose last test restore failed or whose instance has
    /// a failing health check (`--failing`).
    pub failing: bool,
}

/// One database of the fleet, as `pitr fleet list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FleetDatabase {
    /// The sidecar that publishes it.
    pub instance: String,
    /// The instance's labels.
    pub labels: BTreeMap<String, String>,
    /// When the instance last reported.
    pub last_seen: Option<Timestamp>,
    /// `postgres`, `sqlite` or `snapshot`.
    pub kind: String,
    /// Its name in that sidecar's config.
    pub name: String,
    /// The newest restorable point.
    pub newest_restorable: Option<Timestamp>,
    /// What can be restored, per timeline (SQLite: timeline 0).
    pub windows: Vec<FleetWindow>,
    /// The newest test restore.
    pub last_test_restore: Option<FleetTestRestore>,
    /// The instance's failing health checks.
    pub failing_checks: Vec<String>,
}

/// A restore window as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct FleetWindow {
    /// The timeline (0 for SQLite).
    pub timeline: u32,
    /// The earliest restorable time.
    pub earliest: Option<Timestamp>,
    /// The latest restorable time.
    pub latest: Option<Timestamp>,
    /// Where the stored WAL without a gap ends (PostgreSQL).
    pub end: Option<String>,
}

/// A test restore as published.
#[derive(Debug, Clone, Serialize)]
pub struct FleetTestRestore {
    /// When it started.
    pub started: Option<Timestamp>,
    /// Whether it passed.
    pub ok: bool,
    /// What failed, when it did.
    pub detail: Option<String>,
}

/// One base backup (or SQLite snapshot) as published.
#[derive(Debug, Clone, Serialize)]
pub struct FleetBackup {
    /// Its id.
    pub id: String,
    /// When it started.
    pub started: Option<Timestamp>,
    /// When it finished.
    pub finished: Option<Timestamp>,
    /// Where recovery starts.
    pub start_lsn: Option<String>,
    /// Where it is consistent.
    pub stop_lsn: Option<String>,
    /// Its timeline.
    pub timeline: Option<i32>,
    /// Bytes of its files.
    pub bytes: Option<i64>,
    /// Whether its WAL is stored.
    pub restorable: bool,
    /// The backup it is incremental on.
    pub incremental_parent: Option<String>,
}

/// A destination of the instance and the CIDs it has.
#[derive(Debug, Clone, Serialize)]
pub struct FleetDestination {
    /// Its name in the sidecar's config.
    pub name: String,
    /// `fs`, `s3`, `storacha`.
    pub kind: String,
    /// How many CIDs are published for it.
    pub cid_count: i64,
    /// Up to the first 1000 (object, CID), by object name.
    pub cids: Vec<(String, String)>,
}

/// Everything about one database: `pitr fleet show`.
#[derive(Debug, Clone, Serialize)]
pub struct FleetDetail {
    /// What `list` shows of it.
    pub database: FleetDatabase,
    /// Its backups, oldest first.
    pub backups: Vec<FleetBackup>,
    /// The instance's destinations.
    pub destinations: Vec<FleetDestination>,
}

/// Cuts `s` to [`MAX_TEXT`] bytes on a character boundary.
fn bound(mut s: String) -> String {
    if s.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

fn time(us: Option<i64>) -> Option<Timestamp> {
    Timestamp::from_microsecond(us?).ok()
}

/// Parses a JSON aggregate of bounded size; `None` (no rows) is empty.
fn json<T: serde::de::DeserializeOwned + Default>(text: Option<String>) -> T {
    text.filter(|t| t.len() <= MAX_JSON)
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

const LIST: &str = concat!(
    "SELECT d.instance, left(i.labels::text, 1048576), ",
    epoch!("i.last_seen"),
    ", d.kind, d.name, ",
    epoch!("d.newest_restorable"),
    ", (SELECT json_agg(json_build_object('timeline', w.timeline, 'earliest', ",
    epoch!("w.earliest"),
    ", 'latest', ",
    epoch!("w.latest"),
    ", 'end', w.end_lsn::text) ORDER BY w.timeline)::text ",
    "   FROM pitr_fleet.restore_windows w ",
    "   WHERE w.instance = d.instance AND w.kind = d.kind AND w.database = d.name), ",
    " t.started_us, t.ok, t.detail, h.failing ",
    "FROM pitr_fleet.databases d JOIN pitr_fleet.instances i ON i.instance = d.instance ",
    // An instance's failing checks once per instance, not once per database
    // (bench/fleet: a third of the listing's time at 1,000 instances).
    "LEFT JOIN (SELECT h.instance, json_agg(left(h.id, 200) ORDER BY h.id)::text AS failing ",
    "   FROM pitr_fleet.health_checks h WHERE NOT h.ok GROUP BY h.instance) h ",
    "   ON h.instance = d.instance ",
    "LEFT JOIN LATERAL (SELECT ",
    epoch!("t.started"),
    " AS started_us, t.ok, left(t.detail, 2000) AS detail ",
    "   FROM pitr_fleet.test_restores t ",
    "   WHERE t.instance = d.instance AND t.kind = d.kind AND t.database = d.name ",
    "   ORDER BY t.started DESC LIMIT 1) t ON true ",
    "WHERE i.labels @> $1::text::jsonb ",
    " AND ($2::bigint IS NULL OR d.newest_restorable IS NULL ",
    "      OR d.newest_restorable < now() - make_interval(secs => $2::bigint)) ",
    " AND (NOT $3::boolean OR t.ok = false OR h.failing IS NOT NULL) ",
    " AND ($4::text IS NULL OR d.name = $4::text) ",
    " AND ($5::text IS NULL OR d.instance = $5::text) ",
    "ORDER BY d.instance, d.kind, d.name LIMIT $6"
);

/// Every database `filter` selects, by instance, kind and name.
pub async fn list(client: &Client, filter: &Filter) -> Result<Vec<FleetDatabase>, FleetError> {
    query_databases(client, filter, None, None).await
}

async fn query_databases(
    client: &Client,
    filter: &Filter,
    name: Option<&str>,
    instance: Option<&str>,
) -> Result<Vec<FleetDatabase>, FleetError> {
    let labels = serde_json::to_string(&filter.labels).unwrap_or_else(|_| "{}".into());
    let stale = filter.stale.map(|d| d.as_secs() as i64);
    let rows = bounded(
        "listing the fleet's databases",
        STATEMENT_TIMEOUT,
        client.query(
            LIST,
            &[
                &labels,
                &stale,
                &filter.failing,
                &name,
                &instance,
                &MAX_ROWS,
            ],
        ),
    )
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let labels: BTreeMap<String, String> = json(r.get(1));
            FleetDatabase {
                instance: bound(r.get(0)),
                labels: labels
                    .into_iter()
                    .map(|(k, v)| (bound(k), bound(v)))
                    .collect(),
                last_seen: time(r.get(2)),
                kind: bound(r.get(3)),
                name: bound(r.get(4)),
                newest_restorable: time(r.get(5)),
                windows: json::<Vec<RawWindow>>(r.get(6))
                    .into_iter()
                    .map(RawWindow::into_window)
                    .collect(),
                last_test_restore: r.get::<_, Option<bool>>(8).map(|ok| FleetTestRestore {
                    started: time(r.get(7)),
                    ok,
                    detail: r.get::<_, Option<String>>(9).map(bound),
                }),
                failing_checks: json::<Vec<String>>(r.get(10))
                    .into_iter()
                    .map(bound)
                    .collect(),
            }
        })
        .collect())
}

/// A window as the JSON aggregate has it.
#[derive(Default, serde::Deserialize)]
struct RawWindow {
    timeline: u32,
    earliest: Option<i64>,
    latest: Option<i64>,
    end: Option<String>,
}

impl RawWindow {
    fn into_window(self) -> FleetWindow {
        FleetWindow {
            timeline: self.timeline,
            earliest: time(self.earliest),
            latest: time(self.latest),
            end: self.end.map(bound),
        }
    }
}

/// The one database `spec` names: `NAME` when only one instance has a
/// database of that name, else `INSTANCE/NAME`.
pub async fn find(client: &Client, spec: &str) -> Result<FleetDatabase, FleetError> {
    let (instance, name) = match spec.split_once('/') {
        Some((i, n)) => (Some(i), n),
        None => (None, spec),
    };
    let mut found = query_databases(client, &Filter::default(), Some(name), instance).await?;
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(FleetError::NotFound(format!(
            "the fleet catalog has no database {spec:?}; `pitr fleet list` shows which it has"
        ))),
        _ => {
            let names: Vec<String> = found
                .iter()
                .map(|d| format!("{}/{}", d.instance, d.name))
                .collect();
            Err(FleetError::NotFound(format!(
                "{spec:?} names a database of several instances ({}); give it as INSTANCE/NAME",
                names.join(", ")
            )))
        }
    }
}

/// Everything about the database `spec` names (see [`find`]).
pub async fn show(client: &Client, spec: &str) -> Result<FleetDetail, FleetError> {
    let database = find(client, spec).await?;
    let backups = bounded(
        "reading backups",
        STATEMENT_TIMEOUT,
        client.query(
            concat!(
                "SELECT left(id, 2000), ",
                epoch!("started"),
                ", ",
                epoch!("finished"),
                ", start_lsn::text, stop_lsn::text, timeline, bytes, restorable, ",
                "left(incremental_parent, 2000) FROM pitr_fleet.backups ",
                "WHERE instance = $1 AND kind = $2 AND database = $3 ORDER BY finished, id LIMIT $4"
            ),
            &[
                &database.instance,
                &database.kind,
                &database.name,
                &MAX_ROWS,
            ],
        ),
    )
    .await?
    .into_iter()
    .map(|r| FleetBackup {
        id: bound(r.get(0)),
        started: time(r.get(1)),
        finished: time(r.get(2)),
        start_lsn: r.get::<_, Option<String>>(3).map(bound),
        stop_lsn: r.get::<_, Option<String>>(4).map(bound),
        timeline: r.get(5),
        bytes: r.get(6),
        restorable: r.get(7),
        incremental_parent: r.get::<_, Option<String>>(8).map(bound),
    })
    .collect();
    let mut destinations = Vec::new();
    let rows = bounded(
        "reading destinations",
        STATEMENT_TIMEOUT,
        client.query(
            "SELECT left(name, 2000), left(kind, 2000), \
             (SELECT count(*) FROM pitr_fleet.cids c WHERE c.instance = d.instance AND c.destination = d.name) \
             FROM pitr_fleet.destinations d WHERE instance = $1 ORDER BY name LIMIT 1000",
            &[&database.instance],
        ),
    )
    .await?;
    for r in rows {
        let name: String = bound(r.get(0));
        let cids = bounded(
            "reading CIDs",
            STATEMENT_TIMEOUT,
            client.query(
                "SELECT left(object, 2000), left(cid, 2000) FROM pitr_fleet.cids \
                 WHERE instance = $1 AND destination = $2 ORDER BY object LIMIT $3",
                &[&database.instance, &name, &MAX_CIDS],
            ),
        )
        .await?
        .into_iter()
        .map(|c| (bound(c.get(0)), bound(c.get(1))))
        .collect();
        destinations.push(FleetDestination {
            name,
            kind: bound(r.get(1)),
            cid_count: r.get(2),
            cids,
        });
    }
    Ok(FleetDetail {
        database,
        backups,
        destinations,
    })
}
