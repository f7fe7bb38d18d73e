//! The simulated publishers: one per instance, each over its own connection
//! as the instance's own login role (so row-level security and the trigger
//! run as in production), sending what a sidecar sends at every interval
//! through pitr's own code (`pitr::fleet::batch`: `Session::published_seq`,
//! `Plan::batches`, `Session::apply`): the published sequence number, then
//! batches that each hold the heartbeat and changed rows, the last one the
//! new `published_seq`.
//!
//! What changed since the last interval, per instance (a sidecar streaming
//! WAL into its repository commits every few seconds):
//! - per database still archiving (not the stale and never-restorable ones):
//!   its restore window's `latest` and `end_lsn` moved, so its window row and
//!   its `databases.newest_restorable`;
//! - one health check's summary (`postgres/main/stream`);
//! - about two publishes a minute over the fleet (3,000 databases, one base
//!   backup each a day): a new base backup of `main`, and retention deleting
//!   its oldest.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use jiff::Timestamp;
use pitr::config::{FleetConfig, FleetKind};
use pitr::fleet::batch::{self, Session};
use pitr::fleet::rows::{self, Row, Table};

use crate::fill::{self, FILLED_SEQ, Shape, State, WAL_PER_HOUR};

/// One publisher's connection and state.
pub struct Publisher {
    /// Its instance number.
    pub i: u32,
    session: Session,
    /// The server process serving its connection.
    pub backend_pid: u32,
    /// The local catalog's commit sequence number it last published.
    seq: i64,
}

/// What one publisher measured.
#[derive(Default)]
pub struct Outcome {
    /// Wall time of each publish (heartbeat to the last commit).
    pub latencies: Vec<Duration>,
    /// Publishes that failed, and the first error.
    pub failures: u64,
    pub first_error: Option<String>,
    /// Publishes that found the fleet's `published_seq` not the one they
    /// last wrote (would have resent everything): must stay 0.
    pub resyncs: u64,
    /// Transactions and statements sent (as the publish code sends them:
    /// the heartbeat and the sequence number read are one each).
    pub transactions: u64,
    pub statements: u64,
    /// Rows upserted and deleted.
    pub upserted: u64,
    pub deleted: u64,
}

/// Connects every instance's publisher as its own role (at most 50
/// connections opening at once), through `pitr::fleet::connect`, and checks
/// the schema as a sidecar's session does.
pub async fn connect_all(port: u16, shape: Shape) -> anyhow::Result<Vec<Publisher>> {
    let sem = Arc::new(tokio::sync::Semaphore::new(50));
    let mut tasks = Vec::new();
    for i in 0..shape.instances {
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let cfg = fleet_config(port, i);
            let mut client = pitr::fleet::connect(&cfg)
                .await
                .with_context(|| format!("connect as {}", fill::role(i)))?;
            pitr::fleet::schema::ensure(&mut client, false).await?;
            let backend_pid: i32 = client
                .query_one("SELECT pg_backend_pid()", &[])
                .await?
                .get(0);
            anyhow::Ok(Publisher {
                i,
                session: Session::new(client),
                backend_pid: backend_pid as u32,
                seq: FILLED_SEQ,
            })
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await??);
    }
    Ok(out)
}

/// `[fleet]` of instance `i`: its role, no password (the benchmark's cluster
/// trusts loopback).
fn fleet_config(port: u16, i: u32) -> FleetConfig {
    FleetConfig {
        kind: FleetKind::Postgres,
        url: format!(
            "host=127.0.0.1 port={port} user={} dbname=fleet",
            fill::role(i)
        ),
        password: None,
        allow_insecure_password: false,
        instance: fill::instance(i),
        labels: fill::labels(i),
        publish_interval: Duration::from_secs(30),
        token: None,
        allow_insecure_http: false,
        ca_file: None,
        receive: pitr::config::ReceiveConfig {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 9188)),
            tokens_file: None,
            tls: None,
        },
    }
}

/// What the run needs to build rows that continue the filled history.
#[derive(Clone, Copy)]
pub struct Plan {
    pub shape: Shape,
    /// The fill's `now()`, µs since the epoch.
    pub t0_us: i64,
    /// When the first publish starts.
    pub start: Instant,
    pub interval: Duration,
    pub duration: Duration,
}

impl Plan {
    /// When publish `k` of instance `i` starts, after `start`: the instances
    /// are spread evenly over one interval (sidecars start at random
    /// times), then every `interval`.
    pub fn offset(&self, i: u32, k: u32) -> Duration {
        self.interval
            .mul_f64(f64::from(i) / f64::from(self.shape.instances))
            + self.interval * k
    }

    /// Publishes every instance makes within `duration`.
    pub fn expected(&self) -> u64 {
        (0..self.shape.instances)
            .map(|i| {
                (0..)
                    .take_while(|&k| self.offset(i, k) < self.duration)
                    .count() as u64
            })
            .sum()
    }
}

/// Runs `p`'s publishes on the plan's schedule; returns what it measured and
/// the publisher (its connection still open).
pub async fn run(mut p: Publisher, plan: Plan) -> (Publisher, Outcome) {
    let mut out = Outcome::default();
    for k in 0u32.. {
        let offset = plan.offset(p.i, k);
        if offset >= plan.duration {
            break;
        }
        tokio::time::sleep_until((plan.start + offset).into()).await;
        let began = Instant::now();
        match publish_once(&mut p, &plan, k, &mut out).await {
            Ok(()) => out.latencies.push(began.elapsed()),
            Err(e) => {
                out.failures += 1;
                out.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    (p, out)
}

/// Whether publish `k` of instance `i` carries a new base backup: 3,000
/// databases with a backup a day make about two a minute over the fleet,
/// i.e. one publish in 960 at 30 s (1,000 instances, 2 publishes a minute).
fn backs_up(i: u32, k: u32) -> bool {
    (i * 2 + k) % 960 == 7
}

/// One publish: what `Publisher::publish` in `src/fleet/publish.rs` does
/// once the rows are known (sequence number, then the batches).
async fn publish_once(
    p: &mut Publisher,
    plan: &Plan,
    k: u32,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let i = p.i;
    let instance = fill::instance(i);
    let fleet_seq = p.session.published_seq(&instance, None).await?;
    let resync = fleet_seq != Some(p.seq);
    if resync {
        out.resyncs += 1;
    }
    let head = p.seq + 1;
    let (upserts, deletes) = changed_rows(plan, i, k, head);
    let (u, d) = (upserts.len() as u64, deletes.len() as u64);
    let labels = fill::labels(i);
    let batches = batch::Plan {
        instance: &instance,
        labels: &labels,
        seq: u64::try_from(head).unwrap_or(0),
        resync,
        upserts: upserts.iter().collect::<Vec<&Row>>(),
        deletes,
    }
    .batches();
    for b in &batches {
        p.session.apply(b, None).await?;
    }
    p.seq = head;
    // What went over the wire: the sequence number read (one statement,
    // its own transaction), then per batch BEGIN, the heartbeat, its rows,
    // COMMIT; the last batch also records the sequence number (and sweeps
    // every table on a resync).
    let n = batches.len() as u64;
    out.transactions += 1 + n;
    out.statements += 1 + n * 3 + u + d + 1 + if resync { rows::TABLES.len() as u64 } else { 0 };
    out.upserted += u;
    out.deleted += d;
    Ok(())
}

/// The rows publish `k` of instance `i` sends, parents first (the order
/// `TABLES` gives), and the rows it deletes.
fn changed_rows(
    plan: &Plan,
    i: u32,
    k: u32,
    head: i64,
) -> (Vec<Row>, Vec<(&'static Table, Vec<String>)>) {
    let now = Timestamp::now();
    let days = plan.shape.days;
    let day_us = 86_400_000_000i64;
    let at = |us: i64| {
        Timestamp::from_microsecond(us).map_or_else(|_| now.to_string(), |t| t.to_string())
    };
    let t0 = plan.t0_us;
    let mut dbs = Vec::new();
    let mut backups = Vec::new();
    let mut windows = Vec::new();
    let mut deletes = Vec::new();
    // The WAL end moves a segment per publish past the filled history.
    let end = u64::from(days) * 24 * WAL_PER_HOUR + u64::from(k + 1) * (16 << 20);
    let lsn = format!("{:X}/{:X}", end >> 32, end & 0xffff_ffff);
    for (kind, name) in fill::DATABASES {
        if fill::state(i, name) != State::Fresh {
            continue;
        }
        dbs.push(Row {
            table: &rows::DATABASES,
            key: vec![kind.into(), name.into()],
            values: vec![Some(now.to_string())],
        });
        let (timeline, earliest) = match (kind, name) {
            ("sqlite", _) => (0, t0 - i64::from(days) * day_us),
            (_, "main") if fill::second_timeline(i) => (2, t0 - i64::from(days / 3) * day_us),
            _ => (1, t0 - i64::from(days) * day_us),
        };
        windows.push(Row {
            table: &rows::WINDOWS,
            key: vec![kind.into(), name.into(), timeline.to_string()],
            values: vec![
                Some(at(earliest)),
                Some(now.to_string()),
                (kind == "postgres").then(|| lsn.clone()),
            ],
        });
    }
    if backs_up(i, k) {
        let id = format!("base-{:05}", days + k);
        let start = now - jiff::SignedDuration::from_mins(12);
        let tl = if fill::second_timeline(i) { "2" } else { "1" };
        backups.push(Row {
            table: &rows::BACKUPS,
            key: vec!["postgres".into(), "main".into(), id],
            values: vec![
                Some(start.to_string()),
                Some(now.to_string()),
                Some(lsn.clone()),
                Some(lsn.clone()),
                Some(tl.into()),
                Some("2400000000".into()),
                Some("20000000".into()),
                Some("true".into()),
                Some(format!("base-{:05}", days - 1)),
            ],
        });
        // Retention: the oldest backup goes.
        deletes.push((
            &rows::BACKUPS,
            vec!["postgres".into(), "main".into(), format!("base-{k:05}")],
        ));
    }
    let health = Row {
        table: &rows::HEALTH_CHECKS,
        key: vec!["postgres/main/stream".into()],
        values: vec![
            Some("true".into()),
            Some(format!("streaming, flushed {lsn}, commit {head}")),
        ],
    };
    let mut upserts = dbs;
    upserts.extend(backups);
    upserts.extend(windows);
    upserts.push(health);
    (upserts, deletes)
}
