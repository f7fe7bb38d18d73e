//! One batch of a publish, and how it is applied to the fleet database.
//!
//! The publisher plans a publish as a sequence of [`Batch`]es (the same
//! for both transports); [`Session::apply`] applies one in one
//! transaction. The sidecar's `postgres` transport calls it on its own
//! connection; `pitr fleet receive` calls it for the batches an `http`
//! sidecar POSTs, after `SET LOCAL ROLE` to the role its token maps to,
//! so that PostgreSQL (row-level security and the trigger of the V1
//! migration) decides what a batch may write, exactly as for a direct
//! connection. The JSON of a batch is the HTTP transport's wire format
//! (docs/FLEET.md, "HTTP transport").
//!
//! A batch is checked before anything is sent to the database: table
//! names come from the fixed list [`TABLES`] and are the only names that
//! reach SQL text; every value is a bound parameter.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, Statement, Transaction};

use super::rows::{Col, Row, TABLES, Table};
use super::{FleetError, STATEMENT_TIMEOUT, bounded};
use crate::config::{MAX_LABEL_KEY, MAX_LABEL_VALUE, MAX_LABELS, valid_instance};

/// Rows per batch (and so per transaction): bounds the work a slow
/// database holds open and the memory of one batch.
pub const MAX_BATCH: usize = 500;
/// The longest text of one key or value (test-restore errors and check
/// summaries are the long ones).
pub const MAX_TEXT: usize = 64 * 1024;
/// The largest batch body the receiver reads; the publisher keeps its
/// batches under half of it ([`TARGET_BYTES`]).
pub const MAX_BODY: usize = 8 * 1024 * 1024;
/// The size the publisher closes a batch at, well under [`MAX_BODY`] even
/// with JSON escaping.
const TARGET_BYTES: usize = 2 * 1024 * 1024;
/// The longest `version` (pitr's version string).
const MAX_VERSION: usize = 64;

/// One batch: the instance's heartbeat (labels, version), rows to upsert
/// and rows to delete, and on the last batch of a publish the sequence
/// number the fleet then reflects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// `[fleet] instance`: every row of the batch is this instance's.
    pub instance: String,
    /// `[fleet] labels`.
    pub labels: BTreeMap<String, String>,
    /// The publishing pitr's version.
    pub version: String,
    /// The local catalog's commit sequence number this publish reflects.
    pub seq: i64,
    /// Rows to insert or update.
    #[serde(default)]
    pub upserts: Vec<Upsert>,
    /// Rows to delete.
    #[serde(default)]
    pub deletes: Vec<Delete>,
    /// The publish's last batch: records `seq` as the instance's
    /// `published_seq` (after sweeping, with `resync`).
    #[serde(default, rename = "final")]
    pub last: bool,
    /// With `final`: delete the instance's rows that this publish did not
    /// write (`seq` differs), since the fleet did not reflect the local
    /// record.
    #[serde(default)]
    pub resync: bool,
}

/// A row to insert or update: table, natural key (after `instance`) and
/// the other columns, as text (`null`: NULL), in the table's column order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upsert {
    /// One of the tables of [`TABLES`].
    pub table: String,
    /// The key columns' text.
    pub key: Vec<String>,
    /// The other columns' text.
    pub values: Vec<Option<String>>,
}

/// A row to delete: table and natural key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delete {
    /// One of the tables of [`TABLES`].
    pub table: String,
    /// The key columns' text.
    pub key: Vec<String>,
}

/// Why a batch is refused before it reaches the database.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid batch: {0}")]
pub struct BatchError(pub String);

/// One checked step of a batch.
enum Op<'a> {
    Upsert(&'static Table, &'a [String], &'a [Option<String>]),
    Delete(&'static Table, &'a [String]),
}

fn table(name: &str) -> Result<&'static Table, BatchError> {
    TABLES
        .iter()
        .copied()
        .find(|t| t.name == name)
        .ok_or_else(|| BatchError(format!("no table {:?} in the fleet schema", cut(name))))
}

/// At most 64 characters of `s`, for messages about hostile input.
fn cut(s: &str) -> String {
    s.chars().take(64).collect()
}

fn text_ok<'a>(what: &str, mut texts: impl Iterator<Item = &'a str>) -> Result<(), BatchError> {
    match texts.find(|t| t.len() > MAX_TEXT || t.contains('\0')) {
        None => Ok(()),
        Some(t) if t.contains('\0') => Err(BatchError(format!("{what}: a NUL character"))),
        Some(t) => Err(BatchError(format!(
            "{what}: a text of {} bytes (at most {MAX_TEXT})",
            t.len()
        ))),
    }
}

fn columns(what: &str, given: usize, cols: &[Col]) -> Result<(), BatchError> {
    if given == cols.len() {
        return Ok(());
    }
    let names: Vec<&str> = cols.iter().map(|c| c.name).collect();
    Err(BatchError(format!(
        "{what}: {given} texts, the table has {} ({})",
        cols.len(),
        names.join(", ")
    )))
}

impl Batch {
    /// The batch's steps, every name and size checked: the instance name,
    /// labels, version, the number of rows, each row's table (from the
    /// fixed list), its number of key and value texts, and each text's
    /// length.
    fn checked(&self) -> Result<Vec<Op<'_>>, BatchError> {
        if !valid_instance(&self.instance) {
            return Err(BatchError(format!(
                "{:?} is not an instance name (1 to 63 letters, digits, `_`, `-`, `.`)",
                cut(&self.instance)
            )));
        }
        let labels_ok = self.labels.len() <= MAX_LABELS
            && self
                .labels
                .iter()
                .all(|(k, v)| (1..=MAX_LABEL_KEY).contains(&k.len()) && v.len() <= MAX_LABEL_VALUE);
        if !labels_ok {
            return Err(BatchError(format!(
                "labels: at most {MAX_LABELS}, keys of 1 to {MAX_LABEL_KEY} bytes, values of at most {MAX_LABEL_VALUE}"
            )));
        }
        text_ok(
            "labels",
            self.labels
                .iter()
                .flat_map(|(k, v)| [k, v])
                .map(String::as_str),
        )?;
        if self.version.len() > MAX_VERSION || self.version.contains('\0') {
            return Err(BatchError(format!("version: at most {MAX_VERSION} bytes")));
        }
        if self.seq < 0 {
            return Err(BatchError("seq is negative".to_owned()));
        }
        if self.upserts.len() + self.deletes.len() > MAX_BATCH {
            return Err(BatchError(format!("more than {MAX_BATCH} rows")));
        }
        let mut ops = Vec::with_capacity(self.upserts.len() + self.deletes.len());
        for (i, u) in self.upserts.iter().enumerate() {
            let what = format!("upserts[{i}]");
            let t = table(&u.table)?;
            columns(&format!("{what}.key"), u.key.len(), t.key)?;
            columns(&format!("{what}.values"), u.values.len(), t.values)?;
            let texts = u.key.iter().chain(u.values.iter().flatten());
            text_ok(&what, texts.map(String::as_str))?;
            ops.push(Op::Upsert(t, &u.key, &u.values));
        }
        for (i, d) in self.deletes.iter().enumerate() {
            let what = format!("deletes[{i}]");
            let t = table(&d.table)?;
            columns(&format!("{what}.key"), d.key.len(), t.key)?;
            text_ok(&what, d.key.iter().map(String::as_str))?;
            ops.push(Op::Delete(t, &d.key));
        }
        Ok(ops)
    }
}

/// What one publish sends, before it is cut into batches.
pub struct Plan<'a> {
    /// `[fleet] instance`.
    pub instance: &'a str,
    /// `[fleet] labels`.
    pub labels: &'a BTreeMap<String, String>,
    /// The catalog's commit sequence number published.
    pub seq: u64,
    /// Whether the fleet did not reflect the local record.
    pub resync: bool,
    /// Changed rows, parents first.
    pub upserts: Vec<&'a Row>,
    /// Forgotten rows (table, key), children first.
    pub deletes: Vec<(&'static Table, Vec<String>)>,
}

impl Plan<'_> {
    /// The batches, in the order they must be applied: upserts then
    /// deletes, at most [`MAX_BATCH`] rows and about [`TARGET_BYTES`]
    /// each; the last one is `final` (and the only one when nothing
    /// changed, as the heartbeat).
    pub fn batches(&self) -> Vec<Batch> {
        let empty = || Batch {
            instance: self.instance.to_owned(),
            labels: self.labels.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            seq: i64::try_from(self.seq).unwrap_or(i64::MAX),
            upserts: Vec::new(),
            deletes: Vec::new(),
            last: false,
            resync: false,
        };
        let mut out = vec![];
        let mut cur = empty();
        let mut bytes = 0;
        let mut room = |cur: &mut Batch, bytes: &mut usize, size: usize| {
            if cur.upserts.len() + cur.deletes.len() >= MAX_BATCH
                || (*bytes + size > TARGET_BYTES && *bytes > 0)
            {
                out.push(std::mem::replace(cur, empty()));
                *bytes = 0;
            }
            *bytes += size;
        };
        for r in &self.upserts {
            // Each text plus JSON's quotes and commas; escaping is covered
            // by the margin under MAX_BODY.
            let size = r.key.iter().map(|k| k.len() + 3).sum::<usize>()
                + r.values
                    .iter()
                    .flatten()
                    .map(|v| v.len() + 3)
                    .sum::<usize>()
                + 64;
            room(&mut cur, &mut bytes, size);
            cur.upserts.push(Upsert {
                table: r.table.name.to_owned(),
                key: r.key.clone(),
                values: r.values.clone(),
            });
        }
        for (t, key) in &self.deletes {
            let size = key.iter().map(|k| k.len() + 3).sum::<usize>() + 64;
            room(&mut cur, &mut bytes, size);
            cur.deletes.push(Delete {
                table: t.name.to_owned(),
                key: key.clone(),
            });
        }
        cur.last = true;
        cur.resync = self.resync;
        out.push(cur);
        out
    }
}

/// A database role a receiver token maps to: `[A-Za-z_][A-Za-z0-9_.-]*`,
/// at most 63 bytes, so it needs no escaping inside double quotes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role(String);

impl Role {
    /// The role named `name`, if it is a name pitr accepts.
    pub fn new(name: &str) -> Option<Role> {
        let first_ok = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        let ok = first_ok
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        ok.then(|| Role(name.to_owned()))
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// The quoted identifier, for `SET LOCAL ROLE`.
    fn quoted(&self) -> String {
        format!("\"{}\"", self.0.replace('"', "\"\""))
    }
}

/// A connection to the fleet database and the statements prepared on it.
pub struct Session {
    client: Client,
    statements: Statements,
}

impl Session {
    /// A session on `client`.
    pub fn new(client: Client) -> Session {
        Session {
            client,
            statements: Statements::default(),
        }
    }

    /// Whether the connection is gone (a pool drops such a session).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// The connection.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// The sequence number the fleet says it reflects for `instance`
    /// (`None`: nothing published into it yet), read as `role` when given.
    pub async fn published_seq(
        &mut self,
        instance: &str,
        role: Option<&Role>,
    ) -> Result<Option<i64>, FleetError> {
        match role {
            None => published_seq(&self.client, instance).await,
            Some(_) => {
                let tx = begin(&mut self.client, role).await?;
                let seq = published_seq(&tx, instance).await?;
                bounded("committing", STATEMENT_TIMEOUT, tx.commit()).await?;
                Ok(seq)
            }
        }
    }

    /// Applies `batch` in one transaction, as `role` when given: the
    /// instance's heartbeat, its upserts, its deletes, and for the final
    /// batch the sweep (with `resync`) and `published_seq`. Idempotent:
    /// applied twice, the second changes nothing but `last_seen`.
    pub async fn apply(&mut self, batch: &Batch, role: Option<&Role>) -> Result<(), FleetError> {
        let ops = batch.checked()?;
        let Session { client, statements } = self;
        let tx = begin(client, role).await?;
        let instance = &batch.instance;
        let labels = serde_json::to_string(&batch.labels).unwrap_or_else(|_| "{}".into());
        bounded(
            "updating the instance",
            STATEMENT_TIMEOUT,
            tx.execute(
                "INSERT INTO pitr_fleet.instances (instance, labels, version, last_seen) \
                 VALUES ($1, $2::text::jsonb, $3, now()) \
                 ON CONFLICT (instance) DO UPDATE SET labels = excluded.labels, \
                 version = excluded.version, last_seen = excluded.last_seen",
                &[instance, &labels, &batch.version],
            ),
        )
        .await?;
        let seq = batch.seq;
        for op in ops {
            let (t, key, values) = match op {
                Op::Upsert(t, key, values) => (t, key, Some(values)),
                Op::Delete(t, key) => (t, key, None),
            };
            let (cache, sql, what): (_, fn(&Table) -> String, _) = match values {
                Some(_) => (&mut statements.upsert, upsert_sql, "upserting into"),
                None => (&mut statements.delete, delete_sql, "deleting from"),
            };
            let st = prepared(cache, &tx, t, sql).await?;
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![instance];
            params.extend(key.iter().map(|k| k as &(dyn ToSql + Sync)));
            if let Some(values) = values {
                params.extend(values.iter().map(|v| v as &(dyn ToSql + Sync)));
                params.push(&seq);
            }
            bounded(
                &format!("{what} {}", t.name),
                STATEMENT_TIMEOUT,
                tx.execute(&st, &params),
            )
            .await?;
        }
        if batch.last {
            // Sweep what an earlier publish left that this one did not
            // write (after a resync), and record the sequence number the
            // fleet now reflects.
            if batch.resync {
                for t in TABLES.iter().rev() {
                    let sql = format!(
                        "DELETE FROM pitr_fleet.{} WHERE instance = $1 AND seq <> $2",
                        t.name
                    );
                    bounded(
                        &format!("sweeping {}", t.name),
                        STATEMENT_TIMEOUT,
                        tx.execute(&sql, &[instance, &seq]),
                    )
                    .await?;
                }
            }
            bounded(
                "recording the published sequence number",
                STATEMENT_TIMEOUT,
                tx.execute(
                    "UPDATE pitr_fleet.instances SET published_seq = $2, published_at = now() WHERE instance = $1",
                    &[instance, &seq],
                ),
            )
            .await?;
        }
        bounded("committing", STATEMENT_TIMEOUT, tx.commit()).await
    }
}

/// A transaction on `client`, as `role` when given.
async fn begin<'c>(
    client: &'c mut Client,
    role: Option<&Role>,
) -> Result<Transaction<'c>, FleetError> {
    let tx = bounded(
        "starting a transaction",
        STATEMENT_TIMEOUT,
        client.transaction(),
    )
    .await?;
    if let Some(role) = role {
        let sql = format!("SET LOCAL ROLE {}", role.quoted());
        bounded("switching role", STATEMENT_TIMEOUT, tx.batch_execute(&sql)).await?;
    }
    Ok(tx)
}

/// The sequence number the fleet says it reflects for `instance`; `None`
/// when nothing was published into it yet.
async fn published_seq(
    client: &impl GenericClient,
    instance: &str,
) -> Result<Option<i64>, FleetError> {
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

/// Statements prepared once per connection.
#[derive(Default)]
struct Statements {
    upsert: HashMap<&'static str, Statement>,
    delete: HashMap<&'static str, Statement>,
}

/// The statement `sql` makes for `t`, prepared on first use.
async fn prepared(
    cache: &mut HashMap<&'static str, Statement>,
    tx: &Transaction<'_>,
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
    let cols: Vec<&Col> = t.key.iter().chain(t.values).collect();
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
    let list = |f: &dyn Fn(&str) -> String| set.iter().map(|c| f(c)).collect::<Vec<_>>().join(", ");
    format!(
        "INSERT INTO pitr_fleet.{table} AS t ({names}) VALUES ({params}) \
         ON CONFLICT ({conflict}) DO UPDATE SET {assign} \
         WHERE ({old}) IS DISTINCT FROM ({new})",
        table = t.name,
        names = names.join(", "),
        params = params.join(", "),
        conflict = conflict.join(", "),
        assign = list(&|c| format!("{c} = excluded.{c}")),
        old = list(&|c| format!("t.{c}")),
        new = list(&|c| format!("excluded.{c}")),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::rows;

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

    fn health(n: usize) -> Vec<Row> {
        rows::health_rows(
            &(0..n)
                .map(|i| rows::HealthRow {
                    id: format!("check/{i}"),
                    ok: true,
                    summary: "fine".into(),
                })
                .collect::<Vec<_>>(),
        )
    }

    fn plan<'a>(rows: &'a [Row], labels: &'a BTreeMap<String, String>) -> Plan<'a> {
        Plan {
            instance: "api-prod",
            labels,
            seq: 7,
            resync: true,
            upserts: rows.iter().collect(),
            deletes: vec![(&rows::DESTINATIONS, vec!["gone".into()])],
        }
    }

    #[test]
    fn a_plan_is_cut_into_bounded_batches_with_one_final() {
        let labels = BTreeMap::from([("service".to_owned(), "api".to_owned())]);
        let rows = health(2 * MAX_BATCH + 10);
        let batches = plan(&rows, &labels).batches();
        assert_eq!(batches.len(), 3);
        assert!(
            batches
                .iter()
                .all(|b| b.upserts.len() + b.deletes.len() <= MAX_BATCH)
        );
        assert_eq!(batches.iter().filter(|b| b.last).count(), 1);
        let last = batches.last().expect("a batch");
        assert!(last.last && last.resync);
        assert_eq!(last.deletes.len(), 1);
        assert!(batches.iter().all(|b| b.checked().is_ok() && b.seq == 7));
        // Nothing changed: one final batch, the heartbeat.
        let none = Plan {
            upserts: vec![],
            deletes: vec![],
            resync: false,
            ..plan(&rows, &labels)
        };
        let b = none.batches();
        assert_eq!(b.len(), 1);
        assert!(b[0].last && b[0].upserts.is_empty());
        // Large rows close a batch by size, long before MAX_BATCH rows.
        let big = rows::health_rows(
            &(0..100)
                .map(|i| rows::HealthRow {
                    id: format!("check/{i}"),
                    ok: false,
                    summary: "x".repeat(MAX_TEXT),
                })
                .collect::<Vec<_>>(),
        );
        let batches = plan(&big, &labels).batches();
        assert!(batches.len() >= 4, "{}", batches.len());
        for b in &batches {
            let body = serde_json::to_vec(b).expect("serializes");
            assert!(body.len() < MAX_BODY / 2, "{}", body.len());
        }
    }

    #[test]
    fn the_wire_form_is_plain_json_and_reads_back() {
        let labels = BTreeMap::new();
        let rows = health(1);
        let b = &plan(&rows, &labels).batches()[0];
        let json = serde_json::to_value(b).expect("serializes");
        assert_eq!(json["final"], true);
        assert_eq!(json["upserts"][0]["table"], "health_checks");
        assert_eq!(json["upserts"][0]["key"][0], "check/0");
        assert_eq!(
            json["upserts"][0]["values"],
            serde_json::json!(["true", "fine"])
        );
        assert_eq!(
            json["deletes"][0],
            serde_json::json!({"table": "destinations", "key": ["gone"]})
        );
        let back: Batch = serde_json::from_value(json).expect("reads back");
        assert_eq!(&back, b);
    }

    #[test]
    fn a_batch_is_checked_before_it_reaches_the_database() {
        let labels = BTreeMap::new();
        let rows = health(1);
        let good = plan(&rows, &labels).batches().remove(0);
        let refused = |f: &dyn Fn(&mut Batch), part: &str| {
            let mut b = good.clone();
            f(&mut b);
            let e = b
                .checked()
                .err()
                .unwrap_or_else(|| panic!("{part}: accepted"));
            assert!(e.0.contains(part), "{e}");
        };
        refused(&|b| b.instance = "a b".into(), "not an instance name");
        refused(&|b| b.instance = String::new(), "not an instance name");
        refused(
            &|b| b.upserts[0].table = "instance_roles".into(),
            "no table \"instance_roles\"",
        );
        refused(
            &|b| b.upserts[0].table = "backups; DROP TABLE x".into(),
            "no table",
        );
        refused(
            &|b| b.upserts[0].key.push("x".into()),
            "upserts[0].key: 2 texts",
        );
        refused(
            &|b| b.upserts[0].values.pop().map(drop).unwrap_or(()),
            "upserts[0].values: 1 texts",
        );
        refused(
            &|b| b.upserts[0].values[1] = Some("x".repeat(MAX_TEXT + 1)),
            "at most 65536",
        );
        refused(&|b| b.upserts[0].key[0] = "a\0b".into(), "NUL");
        refused(&|b| b.deletes[0].key.clear(), "deletes[0].key: 0 texts");
        refused(&|b| b.seq = -1, "negative");
        refused(&|b| b.version = "v".repeat(65), "version");
        refused(
            &|b| {
                b.labels = (0..=MAX_LABELS)
                    .map(|i| (i.to_string(), String::new()))
                    .collect();
            },
            "labels",
        );
        refused(
            &|b| {
                let d = b.deletes[0].clone();
                b.deletes = vec![d; MAX_BATCH];
            },
            "more than 500 rows",
        );
        let unknown = serde_json::json!({
            "instance": "a", "labels": {}, "version": "1", "seq": 1, "sql": "DROP"
        });
        assert!(
            serde_json::from_value::<Batch>(unknown).is_err(),
            "unknown fields refused"
        );
    }

    #[test]
    fn roles_are_plain_names() {
        assert_eq!(
            Role::new("pitr_api").map(|r| r.quoted()),
            Some("\"pitr_api\"".into())
        );
        for bad in ["", "1abc", "a\"b", "a b", "a;b", &"r".repeat(64)] {
            assert!(Role::new(bad).is_none(), "{bad:?}");
        }
    }
}
