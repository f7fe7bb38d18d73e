//! The publisher: a sidecar job that sends the fleet database what changed
//! in the local catalog since its last successful publish.
//!
//! - Driven by the catalog's commits: the rows of databases, backups,
//!   windows, destinations and CIDs are built again (from `listing`) only
//!   when the catalog's newest commit sequence number moved; health rows
//!   are compared at every interval.
//! - What was published is remembered in `state_dir` (`fleet-published.json`:
//!   the sequence number and a digest per row), so only changed rows are
//!   upserted and only rows the catalog forgot are deleted.
//! - Idempotent: upserts conflict on natural keys and change nothing when
//!   the row is the same; a retried batch therefore changes nothing.
//!   Each batch ([`batch`](super::batch)) is one transaction of at most
//!   [`MAX_BATCH`] rows, applied on the sidecar's own connection (`kind =
//!   "postgres"`) or POSTed to a receiver that applies it (`kind =
//!   "http"`, [`http`](super::http)).
//! - When the fleet database's `published_seq` is not what the local record
//!   says (a new fleet database, the instance's rows deleted, a lost state
//!   file), checked at every publish, everything is sent again and rows
//!   not written by this publish are swept.
//! - Its own task and connection, statement and connect timeouts, retries
//!   with the one backoff policy: a down or slow fleet database never
//!   delays WAL acknowledgement, backups or `/health` (invariant 1,
//!   docs/ARCHITECTURE.md, holds without it).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use super::batch::MAX_BATCH;
use super::batch::{Batch, Plan, Session};
use super::http::Sender;
use super::rows::{self, HealthRow, Row, TABLES, Table};
use super::{FleetError, connect, schema};
use crate::backoff::Backoff;
use crate::config::{Config, FleetConfig, FleetKind};
use crate::repo::Repository;
/// How a failed publish is retried: 1 s doubling to 60 s, for as long as
/// pitr runs; the next interval's publish resumes where it left off.
pub const RETRY: Backoff = Backoff::forever(Duration::from_secs(1), Duration::from_secs(60));
/// The local record of what was published, in `state_dir`.
pub const STATE_FILE: &str = "fleet-published.json";

/// What the publisher needs.
#[derive(Clone)]
pub struct PublishOptions {
    /// `[fleet]`.
    pub fleet: FleetConfig,
    /// The whole config: the listing is built from its entries.
    pub config: Arc<Config>,
    /// The current health checks.
    pub health: Arc<dyn Fn() -> Vec<HealthRow> + Send + Sync>,
    /// Whether to apply missing migrations (a role without DDL rights
    /// carries on when the schema is already current).
    pub may_migrate: bool,
}

/// What `/health` shows of the publisher (section `fleet`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PublishStatus {
    /// This sidecar's instance name.
    pub instance: String,
    /// When the last publish succeeded.
    pub last_publish: Option<Timestamp>,
    /// The catalog's commit sequence number the fleet reflects.
    pub published_seq: Option<u64>,
    /// The local catalog's newest commit sequence number.
    pub catalog_seq: Option<u64>,
    /// Commits not yet published.
    pub lag_commits: u64,
    /// How long the fleet has been behind the local catalog.
    pub lag_seconds: f64,
    /// The last failure, until a publish succeeds.
    pub last_error: Option<String>,
    /// Since when every publish has failed (the first failure after the
    /// last success), until one succeeds.
    pub failing_since: Option<Timestamp>,
    /// Failed attempts since start.
    pub failures: u64,
    /// Rows upserted since start.
    pub rows_upserted: u64,
    /// Rows deleted since start.
    pub rows_deleted: u64,
}

/// The local record of the last successful publish.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Published {
    instance: String,
    seq: u64,
    /// Row id → digest of its values.
    rows: BTreeMap<String, String>,
}

/// The catalog rows built for one commit sequence number.
struct Built {
    seq: u64,
    rows: Vec<Row>,
}

/// Runs until `stop` resolves: publishes every `publish_interval`,
/// reconnecting with [`RETRY`] after failures, which show in `status`.
pub async fn run(
    repo: Repository,
    opts: PublishOptions,
    status: watch::Sender<PublishStatus>,
    stop: impl Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    let path = opts.config.repository.state_dir.join(STATE_FILE);
    let mut publisher = Publisher {
        published: load(&path, &opts.fleet.instance),
        path,
        repo,
        opts,
        status,
        built: None,
        behind_since: None,
    };
    publisher
        .status
        .send_modify(|s| s.instance = publisher.opts.fleet.instance.clone());
    let mut delays = RETRY.delays();
    loop {
        let e = tokio::select! {
            e = publisher.session(&mut delays) => e,
            () = &mut stop => return,
        };
        tracing::warn!(error = %e, "fleet publish failed; retrying");
        metrics::counter!("pitr_fleet_publish_failures_total").increment(1);
        publisher.status.send_modify(|s| {
            s.failures += 1;
            s.last_error = Some(e.to_string());
            s.failing_since.get_or_insert_with(Timestamp::now);
        });
        // The catalog moves on while the fleet is away: the lag shows it.
        let head = publisher.head().ok();
        publisher.note_lag(head);
        let wait = delays.next_delay().unwrap_or(RETRY.max_delay);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = &mut stop => return,
        }
    }
}

struct Publisher {
    repo: Repository,
    opts: PublishOptions,
    status: watch::Sender<PublishStatus>,
    path: PathBuf,
    published: Published,
    built: Option<Built>,
    /// Since when the fleet lags behind the local catalog.
    behind_since: Option<Instant>,
}

impl Publisher {
    /// Connects and publishes every interval; returns only on a failure.
    async fn session(&mut self, delays: &mut crate::backoff::Delays) -> FleetError {
        let mut transport = match Transport::open(&self.opts).await {
            Ok(t) => t,
            Err(e) => return e,
        };
        loop {
            if let Err(e) = self.publish(&mut transport).await {
                return e;
            }
            delays.reset();
            tokio::time::sleep(self.opts.fleet.publish_interval).await;
        }
    }

    /// The catalog's newest commit sequence number.
    fn head(&self) -> Result<u64, FleetError> {
        let next = self
            .repo
            .catalog()
            .next_seq()
            .map_err(crate::repo::RepoError::from)?;
        Ok(next.saturating_sub(1))
    }

    /// Updates the lag figures from `head`, the catalog's newest commit
    /// sequence number (`None`: the last one read).
    fn note_lag(&mut self, head: Option<u64>) {
        let head = match head.or(self.status.borrow().catalog_seq) {
            Some(h) => h,
            None => return,
        };
        let behind = head != self.published.seq || self.status.borrow().last_publish.is_none();
        let since = match (behind, self.behind_since) {
            (false, _) => None,
            (true, None) => Some(Instant::now()),
            (true, Some(t)) => Some(t),
        };
        self.behind_since = since;
        let lag_seconds = since.map_or(0.0, |t| t.elapsed().as_secs_f64());
        metrics::gauge!("pitr_fleet_publish_lag_seconds").set(lag_seconds);
        let published = self.published.seq;
        self.status.send_modify(|s| {
            s.catalog_seq = Some(head);
            s.lag_commits = head.saturating_sub(published);
            s.lag_seconds = lag_seconds;
        });
    }

    /// One publish: the instance's heartbeat, then every changed row in
    /// batches, then the sequence number the fleet now reflects.
    async fn publish(&mut self, transport: &mut Transport) -> Result<(), FleetError> {
        let head = self.head()?;
        self.note_lag(Some(head));
        let instance = self.opts.fleet.instance.clone();
        let fleet_seq = transport.published_seq(&instance).await?;
        // The fleet does not reflect what the local record says (a new or
        // restored fleet database, the instance's rows deleted, a lost
        // state file): send everything and sweep the rest.
        let resync = fleet_seq != Some(self.published.seq as i64);
        if resync {
            self.published.rows.clear();
        }
        if self.built.as_ref().is_none_or(|b| b.seq != head) {
            let listing = crate::listing::listing(&self.repo, &self.opts.config).await?;
            let cids = self
                .repo
                .catalog()
                .content_ids()
                .map_err(crate::repo::RepoError::from)?;
            self.built = Some(Built {
                seq: head,
                rows: rows::catalog_rows(&listing, &self.opts.config.destinations, &cids),
            });
        }
        let health = rows::health_rows(&(self.opts.health)());
        let current: Vec<&Row> = self
            .built
            .iter()
            .flat_map(|b| b.rows.iter())
            .chain(health.iter())
            .collect();

        let mut now: BTreeMap<String, String> = BTreeMap::new();
        let mut upserts: Vec<&Row> = Vec::new();
        for r in &current {
            let (id, digest) = (r.id(), r.digest());
            if self.published.rows.get(&id) != Some(&digest) {
                upserts.push(r);
            }
            now.insert(id, digest);
        }
        let deletes: Vec<&String> = self
            .published
            .rows
            .keys()
            .filter(|id| !now.contains_key(*id))
            .collect();
        // Parents first for upserts, children first for deletes.
        let order = |t: &Table| TABLES.iter().position(|x| x.name == t.name).unwrap_or(0);
        upserts.sort_by_key(|r| order(r.table));
        let mut deletes: Vec<(&'static Table, Vec<String>)> =
            deletes.into_iter().filter_map(|id| parse_id(id)).collect();
        deletes.sort_by_key(|(t, _)| std::cmp::Reverse(order(t)));

        let (upserted, deleted) = (upserts.len(), deletes.len());
        let plan = Plan {
            instance: &instance,
            labels: &self.opts.fleet.labels,
            seq: head,
            resync,
            upserts,
            deletes,
        };
        for batch in plan.batches() {
            transport.send(&batch).await?;
        }
        self.published.seq = head;
        self.published.rows = now;
        save(&self.path, &self.published)?;
        if upserted + deleted > 0 {
            tracing::debug!(
                upserted,
                deleted,
                seq = head,
                "published to the fleet catalog"
            );
        }
        self.status.send_modify(|s| {
            s.last_publish = Some(Timestamp::now());
            s.published_seq = Some(head);
            s.last_error = None;
            s.failing_since = None;
            s.rows_upserted += upserted as u64;
            s.rows_deleted += deleted as u64;
        });
        self.note_lag(Some(head));
        Ok(())
    }
}

/// How batches reach the fleet database (`[fleet] kind`).
enum Transport {
    /// The sidecar's own connection.
    Postgres(Session),
    /// A receiver, over HTTP.
    Http(Sender),
}

impl Transport {
    /// Connects (and for `postgres`, migrates when it may and must).
    async fn open(opts: &PublishOptions) -> Result<Transport, FleetError> {
        match opts.fleet.kind {
            FleetKind::Postgres => {
                let mut client = connect(&opts.fleet).await?;
                schema::ensure(&mut client, opts.may_migrate).await?;
                Ok(Transport::Postgres(Session::new(client)))
            }
            FleetKind::Http => Ok(Transport::Http(Sender::new(&opts.fleet)?)),
        }
    }

    /// The sequence number the fleet reflects for `instance`.
    async fn published_seq(&mut self, instance: &str) -> Result<Option<i64>, FleetError> {
        match self {
            Transport::Postgres(s) => s.published_seq(instance, None).await,
            Transport::Http(h) => h.published_seq(instance).await,
        }
    }

    /// Applies one batch. Every batch starts with the instance's
    /// heartbeat, so a role the DBA has not mapped to this instance is
    /// told how to fix it at the first.
    async fn send(&mut self, batch: &Batch) -> Result<(), FleetError> {
        let s = match self {
            Transport::Http(h) => return h.send(batch).await,
            Transport::Postgres(s) => s,
        };
        match s.apply(batch, None).await {
            Err(FleetError::Sql { source, .. })
                if source.code().is_some_and(|c| c.code() == "42501") =>
            {
                let role = s
                    .client()
                    .query_one("SELECT current_user::text", &[])
                    .await
                    // Bounded: the answer is the fleet database's.
                    .map(|r| r.get::<_, String>(0).chars().take(63).collect())
                    .unwrap_or_else(|_| "?".to_owned());
                Err(FleetError::NotMapped {
                    role,
                    instance: batch.instance.clone(),
                    source,
                })
            }
            other => other,
        }
    }
}

/// A row id back into its table and key.
fn parse_id(id: &str) -> Option<(&'static Table, Vec<String>)> {
    let mut parts = id.split('\u{1f}');
    let name = parts.next()?;
    let table = *TABLES.iter().find(|t| t.name == name)?;
    let key: Vec<String> = parts.map(str::to_owned).collect();
    (key.len() == table.key.len()).then_some((table, key))
}

/// The local record; empty when missing, unreadable or of another
/// instance (then everything is sent again, which is safe).
fn load(path: &Path, instance: &str) -> Published {
    let read = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Published>(&b).ok());
    match read {
        Some(p) if p.instance == instance => p,
        _ => Published {
            instance: instance.to_owned(),
            ..Published::default()
        },
    }
}

fn save(path: &Path, p: &Published) -> Result<(), FleetError> {
    let bytes = serde_json::to_vec(p).unwrap_or_default();
    crate::crashsafe::write_file(path, &bytes, 0o600).map_err(|source| FleetError::State {
        path: path.to_owned(),
        source,
    })
}

/// Row ids in `set` as a set, for tests.
#[cfg(test)]
fn ids(rows: &[Row]) -> std::collections::HashSet<String> {
    rows.iter().map(Row::id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_id_names_its_table_and_key_again() {
        let r = rows::health_rows(&[HealthRow {
            id: "postgres/main/stream".into(),
            ok: true,
            summary: "streaming".into(),
        }]);
        let id = r[0].id();
        let (t, key) = parse_id(&id).expect("parses");
        assert_eq!(t.name, "health_checks");
        assert_eq!(key, vec!["postgres/main/stream".to_owned()]);
        assert!(parse_id("no_table\u{1f}x").is_none());
        assert_eq!(ids(&r).len(), 1);
    }
}
