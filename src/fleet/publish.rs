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
//!   Each batch is one transaction of at most [`MAX_BATCH`] rows.
//! - When the fleet database's `published_seq` is not what the local record
//!   says (a new fleet database, the instance's rows deleted, a lost state
//!   file), checked at every publish, everything is sent again and rows
//!   not written by this publish are swept.
//! - Its own task and connection, statement and connect timeouts, retries
//!   with the one backoff policy: a down or slow fleet database never
//!   delays WAL acknowledgement, backups or `/health` (invariant 1,
//!   docs/ARCHITECTURE.md, holds without it).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use super::rows::{self, HealthRow, Row, TABLES, Table};
use super::{FleetError, STATEMENT_TIMEOUT, bounded, connect, schema};
use crate::backoff::Backoff;
use crate::config::{Config, FleetConfig};
use crate::repo::Repository;

/// Rows per transaction: bounds the work a slow database holds open and
/// the memory of one batch.
pub const MAX_BATCH: usize = 500;
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
        let mut client = match connect(&self.opts.fleet).await {
            Ok(c) => c,
            Err(e) => return e,
        };
        if let Err(e) = schema::ensure(&mut client, self.opts.may_migrate).await {
            return e;
        }
        let mut statements = Statements::default();
        loop {
            if let Err(e) = self.publish(&mut client, &mut statements).await {
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
    async fn publish(
        &mut self,
        client: &mut Client,
        statements: &mut Statements,
    ) -> Result<(), FleetError> {
        let head = self.head()?;
        self.note_lag(Some(head));
        let instance = self.opts.fleet.instance.clone();
        heartbeat(client, &instance, &self.opts.fleet.labels).await?;
        let fleet_seq = published_seq(client, &instance).await?;
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

        let seq = head as i64;
        let (upserted, deleted) = (upserts.len(), deletes.len());
        send(
            client, statements, &instance, seq, &upserts, &deletes, resync,
        )
        .await?;

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
            s.rows_upserted += upserted as u64;
            s.rows_deleted += deleted as u64;
        });
        self.note_lag(Some(head));
        Ok(())
    }
}

/// Upserts the instance row: labels, version, last seen. The first
/// statement of a publish, so a role the DBA has not mapped to this
/// instance is told here how to fix it. Public for `bench/fleet`.
pub async fn heartbeat(
    client: &Client,
    instance: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), FleetError> {
    let labels = serde_json::to_string(labels).unwrap_or_else(|_| "{}".into());
    let done = bounded(
        "updating the instance",
        STATEMENT_TIMEOUT,
        client.execute(
            "INSERT INTO pitr_fleet.instances (instance, labels, version, last_seen) \
             VALUES ($1, $2::text::jsonb, $3, now()) \
             ON CONFLICT (instance) DO UPDATE SET labels = excluded.labels, \
             version = excluded.version, last_seen = excluded.last_seen",
            &[&instance, &labels, &env!("CARGO_PKG_VERSION")],
        ),
    )
    .await;
    match done {
        Err(FleetError::Sql { source, .. })
            if source.code().is_some_and(|c| c.code() == "42501") =>
        {
            let role = client
                .query_one("SELECT current_user::text", &[])
                .await
                // Bounded: the answer is the fleet database's.
                .map(|r| r.get::<_, String>(0).chars().take(63).collect())
                .unwrap_or_else(|_| "?".to_owned());
            Err(FleetError::NotMapped {
                role,
                instance: instance.to_owned(),
                source,
            })
        }
        other => other.map(|_| ()),
    }
}

/// Sends one publish's rows for `instance` as the sidecar does, after its
/// heartbeat: `upserts` (parents first) in transactions of at most
/// [`MAX_BATCH`] rows, then `deletes` (children first) likewise, then one
/// last transaction that sweeps the rows an earlier publish left when
/// `resync` (those whose `seq` is not `seq`) and records `seq` as the
/// instance's `published_seq`. Public so that `bench/fleet` drives the
/// fleet database with exactly the statements a sidecar sends.
pub async fn send(
    client: &mut Client,
    statements: &mut Statements,
    instance: &str,
    seq: i64,
    upserts: &[&Row],
    deletes: &[(&'static Table, Vec<String>)],
    resync: bool,
) -> Result<(), FleetError> {
    for batch in upserts.chunks(MAX_BATCH) {
        let tx = bounded(
            "starting a transaction",
            STATEMENT_TIMEOUT,
            client.transaction(),
        )
        .await?;
        for r in batch {
            let st = statements.upsert(&tx, r.table).await?;
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&instance];
            params.extend(r.key.iter().map(|k| k as &(dyn ToSql + Sync)));
            params.extend(r.values.iter().map(|v| v as &(dyn ToSql + Sync)));
            params.push(&seq);
            bounded(
                &format!("upserting into {}", r.table.name),
                STATEMENT_TIMEOUT,
                tx.execute(&st, &params),
            )
            .await?;
        }
        bounded("committing", STATEMENT_TIMEOUT, tx.commit()).await?;
    }
    for batch in deletes.chunks(MAX_BATCH) {
        let tx = bounded(
            "starting a transaction",
            STATEMENT_TIMEOUT,
            client.transaction(),
        )
        .await?;
        for (table, key) in batch {
            let st = statements.delete(&tx, table).await?;
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&instance];
            params.extend(key.iter().map(|k| k as &(dyn ToSql + Sync)));
            bounded(
                &format!("deleting from {}", table.name),
                STATEMENT_TIMEOUT,
                tx.execute(&st, &params),
            )
            .await?;
        }
        bounded("committing", STATEMENT_TIMEOUT, tx.commit()).await?;
    }
    // The last transaction: sweep what an earlier publish left that
    // this one did not write (after a resync), and record the sequence
    // number the fleet now reflects.
    let tx = bounded(
        "starting a transaction",
        STATEMENT_TIMEOUT,
        client.transaction(),
    )
    .await?;
    if resync {
        for t in TABLES.iter().rev() {
            let sql = format!(
                "DELETE FROM pitr_fleet.{} WHERE instance = $1 AND seq <> $2",
                t.name
            );
            bounded(
                &format!("sweeping {}", t.name),
                STATEMENT_TIMEOUT,
                tx.execute(&sql, &[&instance, &seq]),
            )
            .await?;
        }
    }
    bounded(
        "recording the published sequence number",
        STATEMENT_TIMEOUT,
        tx.execute(
            "UPDATE pitr_fleet.instances SET published_seq = $2, published_at = now() WHERE instance = $1",
            &[&instance, &seq],
        ),
    )
    .await?;
    bounded("committing", STATEMENT_TIMEOUT, tx.commit()).await?;
    Ok(())
}

/// The sequence number the fleet says it reflects for `instance`; `None`
/// when nothing was published into it yet. Public for `bench/fleet`.
pub async fn published_seq(client: &Client, instance: &str) -> Result<Option<i64>, FleetError> {
    let row = bounded(
        "reading the published sequence number",
        STATEMENT_TIMEOUT,
        client.query_opt(
            "SELECT published_seq FROM pitr_fleet.instances \
             WHERE instance = $1 AND published_at IS NOT NULL",
            &[&instance],
        ),
    )
    .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Statements prepared once per connection (an empty set for a new
/// connection: `Statements::default()`).
#[derive(Default)]
pub struct Statements {
    upsert: HashMap<&'static str, Statement>,
    delete: HashMap<&'static str, Statement>,
}

impl Statements {
    async fn upsert(
        &mut self,
        tx: &tokio_postgres::Transaction<'_>,
        t: &'static Table,
    ) -> Result<Statement, FleetError> {
        prepared(&mut self.upsert, tx, t, upsert_sql).await
    }

    async fn delete(
        &mut self,
        tx: &tokio_postgres::Transaction<'_>,
        t: &'static Table,
    ) -> Result<Statement, FleetError> {
        prepared(&mut self.delete, tx, t, delete_sql).await
    }
}

/// The statement `sql` makes for `t`, prepared on first use.
async fn prepared(
    cache: &mut HashMap<&'static str, Statement>,
    tx: &tokio_postgres::Transaction<'_>,
    t: &'static Table,
    sql: fn(&Table) -> String,
) -> Result<Statement, FleetError> {
    if let Some(s) = cache.get(t.name) {
        return Ok(s.clone());
    }
    let st = bounded(
        "preparing a statement",
        STATEMENT_TIMEOUT,
        tx.prepare(&sql(t)),
    )
    .await?;
    cache.insert(t.name, st.clone());
    Ok(st)
}

/// `INSERT ... ON CONFLICT (natural key) DO UPDATE ... WHERE changed`:
/// a row that is already there as sent is left alone.
fn upsert_sql(t: &Table) -> String {
    let cols: Vec<&rows::Col> = t.key.iter().chain(t.values).collect();
    let mut names = vec!["instance".to_owned()];
    names.extend(cols.iter().map(|c| c.name.to_owned()));
    names.push("seq".to_owned());
    let mut params = vec!["$1".to_owned()];
    params.extend(
        cols.iter()
            .enumerate()
            .map(|(i, c)| format!("${}::text::{}", i + 2, c.ty)),
    );
    params.push(format!("${}::bigint", cols.len() + 2));
    let mut conflict = vec!["instance"];
    conflict.extend(t.key.iter().map(|c| c.name));
    let mut set: Vec<&str> = t.values.iter().map(|c| c.name).collect();
    set.push("seq");
    format!(
        "INSERT INTO pitr_fleet.{table} AS t ({names}) VALUES ({params}) \
         ON CONFLICT ({conflict}) DO UPDATE SET {assign} \
         WHERE ({old}) IS DISTINCT FROM ({new})",
        table = t.name,
        names = names.join(", "),
        params = params.join(", "),
        conflict = conflict.join(", "),
        assign = set
            .iter()
            .map(|c| format!("{c} = excluded.{c}"))
            .collect::<Vec<_>>()
            .join(", "),
        old = set
            .iter()
            .map(|c| format!("t.{c}"))
            .collect::<Vec<_>>()
            .join(", "),
        new = set
            .iter()
            .map(|c| format!("excluded.{c}"))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// `DELETE ... WHERE instance = $1 AND key = ...`.
fn delete_sql(t: &Table) -> String {
    let conds: Vec<String> = t
        .key
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} = ${}::text::{}", c.name, i + 2, c.ty))
        .collect();
    format!(
        "DELETE FROM pitr_fleet.{} WHERE instance = $1 AND {}",
        t.name,
        conds.join(" AND ")
    )
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
    fn upserts_conflict_on_natural_keys_and_skip_unchanged_rows() {
        let sql = upsert_sql(&rows::HEALTH_CHECKS);
        assert_eq!(
            sql,
            "INSERT INTO pitr_fleet.health_checks AS t (instance, id, ok, summary, seq) \
             VALUES ($1, $2::text::text, $3::text::boolean, $4::text::text, $5::bigint) \
             ON CONFLICT (instance, id) DO UPDATE SET ok = excluded.ok, summary = excluded.summary, seq = excluded.seq \
             WHERE (t.ok, t.summary, t.seq) IS DISTINCT FROM (excluded.ok, excluded.summary, excluded.seq)"
        );
        assert_eq!(
            delete_sql(&rows::BACKUPS),
            "DELETE FROM pitr_fleet.backups WHERE instance = $1 AND kind = $2::text::text AND database = $3::text::text AND id = $4::text::text"
        );
    }

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
