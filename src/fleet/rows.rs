//! The rows a sidecar publishes, one table spec per `pitr_fleet` table
//! (docs/FLEET.md), built from what `pitr list` reports ([`Listing`]) so
//! that the fleet shows the same windows, backups and test restores as
//! `pitr list --json`: nothing here derives them again.
//!
//! Every value travels as text and is cast by the statement
//! (`$2::text::timestamptz`), so one row type serves every table.

use std::collections::BTreeMap;

use crate::config::{DestinationConfig, DestinationKind};
use crate::listing::Listing;
use crate::repo::catalog::CidRow;
use crate::verify::VerifyReport;

/// A column and the SQL type its text is cast to.
#[derive(Debug, Clone, Copy)]
pub struct Col {
    /// The column.
    pub name: &'static str,
    /// The SQL type (`text`, `timestamptz`, `pg_lsn`, `integer`, ...).
    pub ty: &'static str,
}

const fn col(name: &'static str, ty: &'static str) -> Col {
    Col { name, ty }
}

/// One published table: besides these, every row has `instance` (first
/// key column) and `seq` (the local catalog's commit sequence number the
/// publish reflected).
#[derive(Debug)]
pub struct Table {
    /// The table, in schema `pitr_fleet`.
    pub name: &'static str,
    /// The natural key after `instance`: what an upsert conflicts on.
    pub key: &'static [Col],
    /// The other columns.
    pub values: &'static [Col],
}

/// `pitr_fleet.databases`.
pub const DATABASES: Table = Table {
    name: "databases",
    key: &[col("kind", "text"), col("name", "text")],
    values: &[col("newest_restorable", "timestamptz")],
};
/// `pitr_fleet.backups`.
pub const BACKUPS: Table = Table {
    name: "backups",
    key: &[
        col("kind", "text"),
        col("database", "text"),
        col("id", "text"),
    ],
    values: &[
        col("started", "timestamptz"),
        col("finished", "timestamptz"),
        col("start_lsn", "pg_lsn"),
        col("stop_lsn", "pg_lsn"),
        col("timeline", "integer"),
        col("bytes", "bigint"),
        col("stored_bytes", "bigint"),
        col("restorable", "boolean"),
        col("incremental_parent", "text"),
    ],
};
/// `pitr_fleet.restore_windows`.
pub const WINDOWS: Table = Table {
    name: "restore_windows",
    key: &[
        col("kind", "text"),
        col("database", "text"),
        col("timeline", "integer"),
    ],
    values: &[
        col("earliest", "timestamptz"),
        col("latest", "timestamptz"),
        col("end_lsn", "pg_lsn"),
    ],
};
/// `pitr_fleet.destinations`.
pub const DESTINATIONS: Table = Table {
    name: "destinations",
    key: &[col("name", "text")],
    values: &[col("kind", "text")],
};
/// `pitr_fleet.cids`.
pub const CIDS: Table = Table {
    name: "cids",
    key: &[col("destination", "text"), col("object", "text")],
    values: &[col("cid", "text")],
};
/// `pitr_fleet.test_restores`.
pub const TEST_RESTORES: Table = Table {
    name: "test_restores",
    key: &[
        col("kind", "text"),
        col("database", "text"),
        col("started", "timestamptz"),
    ],
    values: &[col("ok", "boolean"), col("detail", "text")],
};
/// `pitr_fleet.health_checks`.
pub const HEALTH_CHECKS: Table = Table {
    name: "health_checks",
    key: &[col("id", "text")],
    values: &[col("ok", "boolean"), col("summary", "text")],
};

/// Every published table, parents before children: upserts go in this
/// order, deletes in the reverse.
pub const TABLES: [&Table; 7] = [
    &DATABASES,
    &DESTINATIONS,
    &BACKUPS,
    &WINDOWS,
    &CIDS,
    &TEST_RESTORES,
    &HEALTH_CHECKS,
];

/// One row: its table, its key values and its other values, as text
/// (`None` is NULL), in the table's column order.
#[derive(Debug, Clone)]
pub struct Row {
    /// The table.
    pub table: &'static Table,
    /// The key after `instance`.
    pub key: Vec<String>,
    /// The other columns.
    pub values: Vec<Option<String>>,
}

impl Row {
    /// The row's identity across publishes: table and natural key.
    pub fn id(&self) -> String {
        let mut id = self.table.name.to_owned();
        for k in &self.key {
            // A separator no key holds (names are checked at config load;
            // object names and times have no control characters).
            id.push('\u{1f}');
            id.push_str(k);
        }
        id
    }

    /// A digest of the values: what tells that a row changed.
    pub fn digest(&self) -> String {
        let mut h = blake3::Hasher::new();
        for v in &self.values {
            match v {
                None => h.update(&[0]),
                Some(s) => h
                    .update(&[1])
                    .update(&(s.len() as u64).to_le_bytes())
                    .update(s.as_bytes()),
            };
        }
        h.finalize().to_hex()[..32].to_owned()
    }
}

/// A health check as the fleet shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthRow {
    /// The check's stable id (`postgres/main/stream`).
    pub id: String,
    /// Whether it passes.
    pub ok: bool,
    /// What it says.
    pub summary: String,
}

fn row(table: &'static Table, key: Vec<String>, values: Vec<Option<String>>) -> Row {
    Row { table, key, values }
}

fn text(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

/// The rows of the local catalog: databases, backups, windows and test
/// restores from `listing`, the configured `destinations`, the CIDs the
/// catalog holds for them.
pub fn catalog_rows(
    listing: &Listing,
    destinations: &[DestinationConfig],
    cids: &[CidRow],
) -> Vec<Row> {
    let mut out = Vec::new();
    for pg in &listing.postgres {
        let kind = "postgres";
        let newest = pg.windows.iter().filter_map(|w| w.latest).max();
        out.push(row(
            &DATABASES,
            vec![kind.into(), pg.name.clone()],
            vec![newest.map(|t| t.to_string())],
        ));
        for b in &pg.backups {
            let r = &b.record;
            out.push(row(
                &BACKUPS,
                vec![kind.into(), pg.name.clone(), r.id.clone()],
                vec![
                    text(r.started),
                    text(r.finished),
                    text(r.start_lsn),
                    text(r.end_lsn),
                    text(r.start_timeline),
                    text(r.bytes),
                    text(r.stored_bytes),
                    text(b.restorable),
                    r.parent.clone(),
                ],
            ));
        }
        for w in &pg.windows {
            out.push(row(
                &WINDOWS,
                vec![kind.into(), pg.name.clone(), w.timeline.to_string()],
                vec![
                    w.earliest.map(|t| t.to_string()),
                    w.latest.map(|t| t.to_string()),
                    w.end.map(|l| l.to_string()),
                ],
            ));
        }
        out.extend(test_restore(kind, &pg.name, pg.last_test_restore.as_ref()));
    }
    for s in &listing.sqlite {
        let kind = "sqlite";
        out.push(row(
            &DATABASES,
            vec![kind.into(), s.name.clone()],
            vec![s.window.latest.map(|t| t.to_string())],
        ));
        for snap in &s.snapshots {
            out.push(row(
                &BACKUPS,
                vec![kind.into(), s.name.clone(), snap.item.clone()],
                vec![
                    text(snap.at),
                    text(snap.at),
                    None,
                    None,
                    None,
                    text(u64::from(snap.db_pages) * u64::from(snap.page_size)),
                    None,
                    text(true),
                    None,
                ],
            ));
        }
        // SQLite has no timelines: its one window is timeline 0.
        out.push(row(
            &WINDOWS,
            vec![kind.into(), s.name.clone(), "0".into()],
            vec![
                s.window.earliest.map(|t| t.to_string()),
                s.window.latest.map(|t| t.to_string()),
                None,
            ],
        ));
        out.extend(test_restore(kind, &s.name, s.last_test_restore.as_ref()));
    }
    // Snapshot sources ([[command]], [[infisical]]): restorable only to a
    // snapshot's time, so they have backups and no window.
    for src in &listing.snapshots {
        let kind = "snapshot";
        let newest = src.snapshots.iter().map(|s| s.attrs.time).max();
        out.push(row(
            &DATABASES,
            vec![kind.into(), src.name.clone()],
            vec![newest.map(|t| t.to_string())],
        ));
        for snap in &src.snapshots {
            let finished = snap
                .attrs
                .time
                .checked_add(jiff::SignedDuration::from_secs_f64(
                    snap.attrs.duration_secs.max(0.0),
                ))
                .unwrap_or(snap.attrs.time);
            out.push(row(
                &BACKUPS,
                vec![kind.into(), src.name.clone(), snap.id.clone()],
                vec![
                    text(snap.attrs.time),
                    text(finished),
                    None,
                    None,
                    None,
                    text(snap.attrs.bytes),
                    None,
                    text(true),
                    None,
                ],
            ));
        }
        out.extend(test_restore(
            kind,
            &src.name,
            src.last_test_restore.as_ref(),
        ));
    }
    for d in destinations {
        let kind = match d.kind {
            DestinationKind::Fs { .. } => "fs",
            DestinationKind::S3(_) => "s3",
            DestinationKind::Storacha(_) => "storacha",
        };
        out.push(row(&DESTINATIONS, vec![d.name.clone()], vec![text(kind)]));
    }
    for c in cids {
        if destinations.iter().any(|d| d.name == c.destination) {
            out.push(row(
                &CIDS,
                vec![c.destination.clone(), c.object.clone()],
                vec![text(&c.cid)],
            ));
        }
    }
    out
}

fn test_restore(kind: &str, name: &str, report: Option<&VerifyReport>) -> Option<Row> {
    let r = report?;
    Some(row(
        &TEST_RESTORES,
        vec![kind.into(), name.to_owned(), r.started.to_string()],
        vec![text(r.ok), r.error.clone()],
    ))
}

/// The rows of the current health checks.
pub fn health_rows(checks: &[HealthRow]) -> Vec<Row> {
    // One row per id: the last one wins, as the key demands.
    let by_id: BTreeMap<&str, &HealthRow> = checks.iter().map(|c| (c.id.as_str(), c)).collect();
    by_id
        .values()
        .map(|c| {
            row(
                &HEALTH_CHECKS,
                vec![c.id.clone()],
                vec![text(c.ok), text(&c.summary)],
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listing::{PgListing, SqliteListing};
    use crate::restore::Window;
    use crate::restore::sqlite::SqliteWindow;

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().expect("a time")
    }

    fn listing() -> Listing {
        Listing {
            postgres: vec![PgListing {
                name: "main".into(),
                backups: vec![],
                wal: vec![],
                windows: vec![
                    Window {
                        timeline: 1,
                        earliest: Some(at("2026-12-01T00:00:00Z")),
                        latest: Some(at("2026-12-02T00:00:00.123456789Z")),
                        end: Some("0/3000060".parse().expect("an LSN")),
                    },
                    Window {
                        timeline: 2,
                        earliest: None,
                        latest: None,
                        end: None,
                    },
                ],
                last_test_restore: None,
            }],
            sqlite: vec![SqliteListing {
                name: "auth".into(),
                path: "/data/auth.db".into(),
                captures: 0,
                snapshots: vec![],
                last: None,
                window: SqliteWindow {
                    earliest: Some(at("2026-12-01T00:00:00Z")),
                    latest: Some(at("2026-12-03T00:00:00Z")),
                },
                last_test_restore: None,
            }],
            snapshots: vec![crate::listing::SnapshotListing {
                name: "vault".into(),
                kind: crate::snapshot::SourceKind::Command,
                snapshots: ["2026-12-01T00:00:00Z", "2026-12-02T00:00:00Z"]
                    .into_iter()
                    .map(|t| crate::snapshot::Snapshot {
                        id: t.into(),
                        item: format!("snapshot/vault/{t}"),
                        attrs: crate::snapshot::SnapshotAttrs {
                            source: "vault".into(),
                            kind: crate::snapshot::SourceKind::Command,
                            time: at(t),
                            bytes: 10,
                            duration_secs: 1.5,
                        },
                        manifest: crate::repo::Manifest {
                            name: format!("snapshot/vault/{t}"),
                            size: 10,
                            chunker: crate::repo::Chunking::Cdc,
                            hash: String::new(),
                            chunks: vec![],
                        },
                        commit: String::new(),
                    })
                    .collect(),
                last_test_restore: None,
            }],
        }
    }

    #[test]
    fn snapshot_sources_are_databases_with_one_backup_per_snapshot_and_no_window() {
        let rows = catalog_rows(&listing(), &[], &[]);
        let of = |t: &str, kind: &str| {
            rows.iter()
                .filter(|r| r.table.name == t && r.key[0] == kind)
                .collect::<Vec<_>>()
        };
        let dbs = of("databases", "snapshot");
        assert_eq!(dbs.len(), 1);
        assert_eq!(dbs[0].key, ["snapshot", "vault"]);
        assert_eq!(dbs[0].values, [Some("2026-12-02T00:00:00Z".to_owned())]);
        let backups = of("backups", "snapshot");
        assert_eq!(backups.len(), 2);
        assert_eq!(
            backups[1].key,
            ["snapshot", "vault", "2026-12-02T00:00:00Z"]
        );
        assert_eq!(
            backups[1].values[1],
            Some("2026-12-02T00:00:01.5Z".to_owned())
        );
        assert_eq!(backups[1].values[5], Some("10".to_owned()));
        assert!(of("restore_windows", "snapshot").is_empty());
    }

    #[test]
    fn windows_and_newest_points_are_the_listings() {
        let cids = [CidRow {
            object: "packs/x".into(),
            destination: "gone".into(),
            cid: "bafy".into(),
            commit: None,
        }];
        let rows = catalog_rows(&listing(), &[], &cids);
        let of = |t: &str| {
            rows.iter()
                .filter(|r| r.table.name == t)
                .collect::<Vec<_>>()
        };
        let windows = of("restore_windows");
        assert_eq!(
            windows.len(),
            3,
            "one per timeline, and SQLite's as timeline 0"
        );
        assert_eq!(windows[0].key, ["postgres", "main", "1"]);
        assert_eq!(
            windows[0].values,
            [
                Some("2026-12-01T00:00:00Z".to_owned()),
                Some("2026-12-02T00:00:00.123456789Z".to_owned()),
                Some("0/3000060".to_owned())
            ]
        );
        assert_eq!(windows[2].key, ["sqlite", "auth", "0"]);
        let dbs = of("databases");
        assert_eq!(
            dbs[0].values,
            [Some("2026-12-02T00:00:00.123456789Z".to_owned())]
        );
        assert_eq!(dbs[1].values, [Some("2026-12-03T00:00:00Z".to_owned())]);
        assert!(
            of("cids").is_empty(),
            "no CID of a destination not configured"
        );
    }

    #[test]
    fn a_changed_value_changes_the_digest_not_the_id() {
        let a = health_rows(&[HealthRow {
            id: "postgres/main/stream".into(),
            ok: true,
            summary: "streaming".into(),
        }]);
        let b = health_rows(&[HealthRow {
            id: "postgres/main/stream".into(),
            ok: false,
            summary: "streaming".into(),
        }]);
        assert_eq!(a[0].id(), b[0].id());
        assert_ne!(a[0].digest(), b[0].digest());
        assert_eq!(
            a[0].digest(),
            health_rows(&[HealthRow {
                id: "postgres/main/stream".into(),
                ok: true,
                summary: "streaming".into(),
            }])[0]
                .digest()
        );
    }
}
