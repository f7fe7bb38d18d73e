//! The fleet catalog (docs/FLEET.md) against real parts: a harness
//! cluster is the fleet database; two `pitr run` sidecars (two
//! repositories, a PostgreSQL and an SQLite source) publish into it as
//! roles of their own; `pitr fleet` reads it as the read role.

use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use serde_json::Value;

use crate::sidecar::{get, sidecar_config, slot_restart_lsn};
use crate::sqlite::add_sqlite;
use crate::support::{PgCluster, Sidecar, TestRepo, eventually, pitr};

/// `[fleet]` for `role` publishing as `instance` into `fleet`.
fn fleet_section(fleet: &PgCluster, role: &str, instance: &str, labels: &str) -> String {
    format!(
        "\n[fleet]\nurl = \"host={} port={} user={role} dbname=fleet\"\ninstance = \"{instance}\"\nlabels = {labels}\npublish_interval = \"1s\"\n",
        fleet.host(),
        fleet.port()
    )
}

/// A file holding only `[fleet]`: what a reader (or the DBA) needs.
pub(crate) fn reader_config(dir: &Path, name: &str, fleet: &PgCluster, role: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "[fleet]\nurl = \"host={} port={} user={role} dbname=fleet\"\n",
            fleet.host(),
            fleet.port()
        ),
    )
    .expect("write the reader's config");
    path
}

pub(crate) fn json_of(args: &[&str]) -> Result<Value, String> {
    let out = pitr(args);
    if !out.status.success() {
        return Err(format!(
            "pitr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("pitr {args:?}: {e}"))
}

/// A time of a JSON document, `None` for null.
fn time(v: &Value) -> Option<Timestamp> {
    v.as_str().and_then(|s| s.parse().ok())
}

/// Whether two times are the same to PostgreSQL's resolution: the fleet
/// stores `timestamptz`, microseconds, rounded.
fn same_time(a: &Value, b: &Value) -> bool {
    match (time(a), time(b)) {
        (None, None) => true,
        (Some(a), Some(b)) => a.duration_since(b).abs() < jiff::SignedDuration::from_micros(1),
        _ => false,
    }
}

/// The fleet's entry for `instance`/`name` in `list`.
pub(crate) fn entry<'a>(list: &'a Value, instance: &str, name: &str) -> Option<&'a Value> {
    list.as_array()?
        .iter()
        .find(|d| d["instance"] == instance && d["name"] == name)
}

/// Compares the fleet's windows of `instance`/`name` with what `pitr list
/// --json` says of the same database; `Err` says how they differ.
pub(crate) fn windows_agree(
    fleet_list: &Value,
    local: &Value,
    instance: &str,
    kind: &str,
    name: &str,
) -> Result<(), String> {
    let fleet = entry(fleet_list, instance, name)
        .ok_or(format!("no {instance}/{name} in the fleet yet"))?;
    let fleet_windows = fleet["windows"].as_array().cloned().unwrap_or_default();
    let ours = local[kind]
        .as_array()
        .and_then(|a| a.iter().find(|d| d["name"] == name))
        .ok_or(format!("pitr list has no {kind} {name}"))?;
    // SQLite has one window, published as timeline 0.
    let local_windows: Vec<Value> = match kind {
        "postgres" => ours["windows"].as_array().cloned().unwrap_or_default(),
        _ => vec![serde_json::json!({
            "timeline": 0,
            "earliest": ours["window"]["earliest"],
            "latest": ours["window"]["latest"],
            "end": null,
        })],
    };
    let agree = fleet_windows.len() == local_windows.len()
        && local_windows.iter().all(|l| {
            l["latest"].is_string()
                && fleet_windows.iter().any(|f| {
                    f["timeline"] == l["timeline"]
                        && same_time(&f["earliest"], &l["earliest"])
                        && same_time(&f["latest"], &l["latest"])
                        && f["end"] == l["end"]
                })
        });
    if agree {
        Ok(())
    } else {
        Err(format!(
            "fleet {fleet_windows:?} vs pitr list {local_windows:?}"
        ))
    }
}

/// The number of base backups `pitr list --json` reports for `main`.
pub(crate) fn local_backups(cfg: &Path) -> Result<usize, String> {
    let l = json_of(&["list", "--json", "-c", cfg.to_str().expect("utf-8 path")])?;
    Ok(l["postgres"][0]["backups"].as_array().map_or(0, Vec::len))
}

/// A harness cluster holding the database `fleet`, migrated by `pitr fleet
/// migrate` as the cluster's owner (the config `dir/admin.toml`), with the
/// DBA's `roles` SQL run in it.
pub(crate) fn fleet_database(dir: &Path, roles: &str) -> PgCluster {
    let fleet = PgCluster::start();
    fleet.psql("CREATE DATABASE fleet");
    let admin = reader_config(dir, "admin.toml", &fleet, "postgres");
    let out = pitr(&[
        "fleet",
        "migrate",
        "-c",
        admin.to_str().expect("utf-8 path"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fleet.psql_at(&fleet.conninfo("fleet"), roles);
    fleet
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_publish_their_own_rows_and_a_stopped_fleet_database_delays_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The DBA's part (docs/FLEET.md): a login role per instance, mapped,
    // and a read role.
    let mut fleet = fleet_database(
        dir.path(),
        "CREATE ROLE pitr_pg LOGIN IN ROLE pitr_fleet_writer; \
         CREATE ROLE pitr_lite LOGIN IN ROLE pitr_fleet_writer; \
         CREATE ROLE fleet_reader LOGIN IN ROLE pitr_fleet_reader; \
         INSERT INTO pitr_fleet.instance_roles VALUES ('pitr_pg', 'pg-side'), ('pitr_lite', 'lite-side')",
    );
    let reader = reader_config(dir.path(), "reader.toml", &fleet, "fleet_reader");
    let reader_s = reader.to_str().expect("utf-8 path");

    // Sidecar A: a PostgreSQL source with a health endpoint.
    let pg = PgCluster::start();
    let repo_a = TestRepo::new().await;
    let (cfg_a, port_a) = sidecar_config(
        &repo_a,
        &pg,
        &fleet_section(&fleet, "pitr_pg", "pg-side", "{ service = \"api\" }"),
    );
    let cfg_a_s = cfg_a.to_str().expect("utf-8 path");
    // Sidecar B: an SQLite source, written before it starts.
    let repo_b = TestRepo::new().await;
    let cfg_b = repo_b.write_config(&[]);
    let db = repo_b.dir.path().join("app.db");
    {
        let c = rusqlite::Connection::open(&db).expect("open the SQLite file");
        c.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t (x INTEGER); \
             INSERT INTO t VALUES (1), (2), (3);",
        )
        .expect("write the SQLite file");
    }
    add_sqlite(&cfg_b, "app", &db, "");
    let mut text = std::fs::read_to_string(&cfg_b).expect("read config");
    text.push_str(&fleet_section(
        &fleet,
        "pitr_lite",
        "lite-side",
        "{ service = \"auth\" }",
    ));
    // And a snapshot source, with one snapshot taken before it starts.
    text.push_str(
        "\n[[command]]\nname = \"settings\"\nrun = [\"echo\", \"feature_flags=on\"]\nschedule = \"off\"\n",
    );
    std::fs::write(&cfg_b, text).expect("write config");
    let cfg_b_s = cfg_b.to_str().expect("utf-8 path");
    let out = pitr(&["backup", "--snapshot", "settings", "-c", cfg_b_s]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let sidecar_a = Sidecar::start(&cfg_a);
    let sidecar_b = Sidecar::start(&cfg_b);

    // Both publish; the fleet's windows are what each `pitr list` says.
    // Both sources are idle, so the windows settle and the two agree.
    let list = eventually(
        "both sidecars' windows in the fleet equal their pitr list",
        Duration::from_secs(180),
        async || {
            let list = json_of(&["fleet", "list", "--json", "-c", reader_s])?;
            let a = json_of(&["list", "--json", "-c", cfg_a_s])?;
            let b = json_of(&["list", "--json", "-c", cfg_b_s])?;
            windows_agree(&list, &a, "pg-side", "postgres", "main")
                .and_then(|()| windows_agree(&list, &b, "lite-side", "sqlite", "app"))
                .map(|()| list)
                .map_err(|e| {
                    format!(
                        "{e}\nA:\n{}\nB:\n{}",
                        sidecar_a.log_text(),
                        sidecar_b.log_text()
                    )
                })
        },
    )
    .await;
    let main = entry(&list, "pg-side", "main").expect("listed");
    assert_eq!(main["kind"], "postgres");
    assert_eq!(main["labels"]["service"], "api");
    assert_eq!(
        entry(&list, "lite-side", "app").expect("listed")["kind"],
        "sqlite"
    );
    // The snapshot source: its newest restorable point is its snapshot's
    // time as `pitr list` reports it, and the snapshot is a backup.
    let settings = entry(&list, "lite-side", "settings").expect("the snapshot source is listed");
    assert_eq!(settings["kind"], "snapshot", "{settings:#}");
    let local_b = json_of(&["list", "--json", "-c", cfg_b_s]).expect("pitr list");
    let snap = &local_b["snapshots"][0]["snapshots"][0];
    assert!(
        same_time(&settings["newest_restorable"], &snap["time"]),
        "fleet {settings:#} vs pitr list {snap:#}"
    );
    let show = json_of(&[
        "fleet",
        "show",
        "--json",
        "lite-side/settings",
        "-c",
        reader_s,
    ])
    .expect("show the snapshot source");
    assert_eq!(show["backups"][0]["id"], snap["id"], "{show:#}");

    // Filters: by label, and nothing is stale a minute after its backup.
    let auth = json_of(&[
        "fleet",
        "list",
        "--json",
        "--label",
        "service=auth",
        "-c",
        reader_s,
    ])
    .expect("list by label");
    let auth = auth.as_array().expect("a list");
    assert_eq!(
        auth.len(),
        2,
        "the SQLite file and the snapshot source: {auth:#?}"
    );
    assert!(
        auth.iter().all(|d| d["instance"] == "lite-side"),
        "{auth:#?}"
    );
    let stale = json_of(&["fleet", "list", "--json", "--stale", "24h", "-c", reader_s])
        .expect("list stale");
    assert!(entry(&stale, "pg-side", "main").is_none(), "{stale:#}");
    let show = json_of(&["fleet", "show", "--json", "pg-side/main", "-c", reader_s]).expect("show");
    assert!(
        !show["backups"].as_array().expect("backups").is_empty(),
        "{show:#}"
    );
    assert_eq!(show["destinations"][0]["name"], "local");
    let latest = main["windows"][0]["latest"]
        .as_str()
        .expect("a latest time")
        .to_owned();
    let out = pitr(&[
        "fleet",
        "restore-command",
        "main",
        "--at",
        &latest,
        "-c",
        reader_s,
    ]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.contains("pitr restore -c pitr.toml --postgres 'main' --at"),
        "{printed}"
    );
    assert!(
        printed.contains("[[destination]]\nname = \"local\"\nkind = \"fs\""),
        "{printed}"
    );
    let out = pitr(&[
        "fleet",
        "restore-command",
        "main",
        "--at",
        "2001-01-01T00:00:00Z",
        "-c",
        reader_s,
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a time no window covers is not possible"
    );

    // --failing: a failed test restore (recorded here by the fleet's
    // owner, as a failing report would be) puts the database in the list.
    fleet.psql_at(
        &fleet.conninfo("fleet"),
        "INSERT INTO pitr_fleet.test_restores VALUES \
         ('lite-side', 'sqlite', 'app', now() + interval '1 hour', false, 'checksum mismatch', 0)",
    );
    let failing =
        json_of(&["fleet", "list", "--json", "--failing", "-c", reader_s]).expect("list failing");
    let app = entry(&failing, "lite-side", "app").expect("the failed database is listed");
    assert_eq!(app["last_test_restore"]["ok"], false, "{failing:#}");
    assert_eq!(app["last_test_restore"]["detail"], "checksum mismatch");

    // /health shows the publisher.
    let (_, body) = get(port_a, "/health").await.expect("health answers");
    let health: Value = serde_json::from_str(&body).expect("health is JSON");
    assert!(health["fleet"]["published_seq"].is_u64(), "{health:#}");
    assert!(health["fleet"]["last_publish"].is_string(), "{health:#}");

    // Each role writes only its own rows: PostgreSQL refuses the other's.
    let lite = connect_as(&fleet, "pitr_lite").await;
    let pg_rows = "SELECT count(*)::text || ':' || coalesce(string_agg(id || restorable::text, ',' ORDER BY id), '') \
                   FROM pitr_fleet.backups WHERE instance = 'pg-side'";
    let before = fleet.psql_at(&fleet.conninfo("fleet"), pg_rows);
    for (sql, message) in [
        (
            "UPDATE pitr_fleet.backups SET restorable = false WHERE instance = 'pg-side'",
            "may not update rows of fleet instance pg-side",
        ),
        (
            "DELETE FROM pitr_fleet.backups WHERE instance = 'pg-side'",
            "may not delete rows of fleet instance pg-side",
        ),
        (
            "UPDATE pitr_fleet.databases SET instance = 'lite-side' WHERE instance = 'pg-side'",
            "may not update rows of fleet instance pg-side",
        ),
        (
            "INSERT INTO pitr_fleet.health_checks VALUES ('pg-side', 'forged', false, 'x', 0)",
            "row-level security",
        ),
    ] {
        let e = lite.batch_execute(sql).await.expect_err(sql);
        let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e}"));
        assert_eq!(db.code().code(), "42501", "{sql}: {db}");
        assert!(db.message().contains(message), "{sql}: {}", db.message());
    }
    assert_eq!(
        fleet.psql_at(&fleet.conninfo("fleet"), pg_rows),
        before,
        "rows unchanged"
    );

    // The fleet database stopped for a minute delays nothing: WAL is
    // acknowledged, a base backup completes and the SQLite sidecar goes on
    // capturing meanwhile.
    let backups_before = local_backups(&cfg_a).expect("pitr list");
    let lite_latest = |l: &Value| time(&l["sqlite"][0]["window"]["latest"]);
    let lite_before = lite_latest(&json_of(&["list", "--json", "-c", cfg_b_s]).expect("pitr list"))
        .expect("SQLite has a window");
    let acknowledged = slot_restart_lsn(&pg).expect("the slot has a restart LSN");
    fleet.stop();
    let stopped = std::time::Instant::now();
    pg.psql("CREATE TABLE during_outage AS SELECT g FROM generate_series(1, 50000) g; SELECT pg_switch_wal()");
    let out = pitr(&["backup", "-c", cfg_a_s]);
    assert!(
        out.status.success(),
        "a base backup while the fleet is down: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        "WAL acknowledged while the fleet is down",
        Duration::from_secs(60),
        async || {
            pg.psql("SELECT pg_switch_wal()");
            match slot_restart_lsn(&pg) {
                Some(l) if l > acknowledged => Ok(()),
                other => Err(format!("restart_lsn {other:?}, was {acknowledged}")),
            }
        },
    )
    .await;
    assert_eq!(
        local_backups(&cfg_a).expect("pitr list"),
        backups_before + 1
    );
    rusqlite::Connection::open(&db)
        .and_then(|c| c.execute_batch("INSERT INTO t VALUES (4)"))
        .expect("write the SQLite file during the outage");
    eventually(
        "the SQLite sidecar captures while the fleet is down",
        Duration::from_secs(60),
        async || {
            let l = json_of(&["list", "--json", "-c", cfg_b_s])?;
            match lite_latest(&l) {
                Some(t) if t > lite_before => Ok(()),
                other => Err(format!("latest {other:?}, was {lite_before}")),
            }
        },
    )
    .await;
    eventually(
        "the publisher notices the outage",
        Duration::from_secs(60),
        async || {
            let (_, body) = get(port_a, "/health").await.ok_or("no answer")?;
            let h: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            // How far behind it is: the backup is a commit it has not sent.
            if h["fleet"]["last_error"].is_string()
                && h["fleet"]["lag_commits"].as_u64().is_some_and(|n| n > 0)
            {
                Ok(())
            } else {
                Err(format!("{:#}", h["fleet"]))
            }
        },
    )
    .await;
    if let Some(rest) = Duration::from_secs(60).checked_sub(stopped.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    fleet.start_again();

    // It catches up: the new backup and windows arrive, with no duplicates.
    eventually(
        "the fleet caught up after the outage",
        Duration::from_secs(180),
        async || {
            let list = json_of(&["fleet", "list", "--json", "-c", reader_s])?;
            let a = json_of(&["list", "--json", "-c", cfg_a_s])?;
            windows_agree(&list, &a, "pg-side", "postgres", "main")?;
            let b = json_of(&["list", "--json", "-c", cfg_b_s])?;
            windows_agree(&list, &b, "lite-side", "sqlite", "app")?;
            let show = json_of(&["fleet", "show", "--json", "pg-side/main", "-c", reader_s])?;
            let n = show["backups"].as_array().map_or(0, Vec::len);
            if n == backups_before + 1 {
                Ok(())
            } else {
                Err(format!("{n} backups in the fleet"))
            }
        },
    )
    .await;
    assert_no_duplicates(&fleet);

    // The DBA deletes an instance (its rows cascade): its sidecar notices
    // at the next publish and sends everything again.
    fleet.psql_at(
        &fleet.conninfo("fleet"),
        "DELETE FROM pitr_fleet.instances WHERE instance = 'lite-side'",
    );
    eventually(
        "lite-side published again in full",
        Duration::from_secs(120),
        async || {
            let list = json_of(&["fleet", "list", "--json", "-c", reader_s])?;
            let b = json_of(&["list", "--json", "-c", cfg_b_s])?;
            windows_agree(&list, &b, "lite-side", "sqlite", "app")
        },
    )
    .await;
    sidecar_a.stop();
    sidecar_b.stop();
}

/// Asserts that no table of the fleet holds a key twice, and that each
/// holds rows.
pub(crate) fn assert_no_duplicates(fleet: &PgCluster) {
    for (table, key) in [
        ("instances", "instance"),
        ("databases", "instance, kind, name"),
        ("backups", "instance, kind, database, id"),
        ("restore_windows", "instance, kind, database, timeline"),
        ("destinations", "instance, name"),
        ("health_checks", "instance, id"),
    ] {
        let counts = fleet.psql_at(
            &fleet.conninfo("fleet"),
            &format!("SELECT count(*) || ' ' || count(DISTINCT ({key})) FROM pitr_fleet.{table}"),
        );
        let (rows, distinct) = counts.split_once(' ').expect("two counts");
        assert_eq!(rows, distinct, "duplicate rows in {table}");
        assert_ne!(rows, "0", "{table} is empty");
    }
}

/// A connection to the fleet database as `role`.
pub(crate) async fn connect_as(fleet: &PgCluster, role: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(
        &format!(
            "host={} port={} user={role} dbname=fleet",
            fleet.host(),
            fleet.port()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect to the fleet database");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// `pitr run` applies the migrations at start when its role may; a role
/// without DDL rights facing an empty fleet database is told, in
/// `/health`, what to run, and backs nothing up any worse for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_migrates_at_start_when_its_role_may_and_says_what_to_run_when_not() {
    let fleet = PgCluster::start();
    fleet.psql("CREATE DATABASE fleet");
    fleet.psql("CREATE ROLE plain LOGIN");
    let repo = TestRepo::new().await;
    let db = repo.dir.path().join("app.db");
    rusqlite::Connection::open(&db)
        .and_then(|c| c.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x INTEGER)"))
        .expect("write the SQLite file");
    let config_as = |role: &str, instance: &str| {
        let cfg = repo.write_config(&[]);
        add_sqlite(&cfg, "app", &db, "");
        let port = crate::support::pg::free_port();
        let mut text = std::fs::read_to_string(&cfg).expect("read config");
        // A publisher failing for 10 s (the least allowed) is past its
        // threshold.
        text.push_str(&format!(
            "\n[health]\nlisten = \"127.0.0.1:{port}\"\ndestination_down_max = 10\n"
        ));
        text.push_str(&fleet_section(&fleet, role, instance, "{}"));
        std::fs::write(&cfg, text).expect("write config");
        (cfg, port)
    };

    let (cfg, port) = config_as("plain", "early");
    let sidecar = Sidecar::start(&cfg);
    // The reason is in the log (and in /health for a caller with the
    // restore token); /health shows the failures to anyone.
    let fleet_health = eventually(
        "the publisher says the schema is missing",
        Duration::from_secs(60),
        async || {
            let (_, body) = get(port, "/health").await.ok_or("no answer")?;
            let h: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            let log = sidecar.log_text();
            if h["fleet"]["failures"].as_u64().is_some_and(|n| n > 0)
                && log.contains("pitr fleet migrate")
                && log.contains("permission denied")
            {
                Ok(h["fleet"].clone())
            } else {
                Err(format!("{:#}\n{log}", h["fleet"]))
            }
        },
    )
    .await;
    assert!(fleet_health["published_seq"].is_null(), "{fleet_health:#}");
    // Past the threshold it is a problem: /health fails and alerts fire.
    eventually(
        "the fleet check fails once publishing has failed for 10 s",
        Duration::from_secs(60),
        async || {
            let (status, body) = get(port, "/health").await.ok_or("no answer")?;
            let h: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            let listed = h["problems"]
                .as_array()
                .is_some_and(|p| p.iter().any(|c| c["id"] == "fleet/publish"));
            if status == 503 && listed {
                Ok(())
            } else {
                Err(format!("{status} {:#}", h["problems"]))
            }
        },
    )
    .await;
    let tables = "SELECT count(*) FROM pg_namespace WHERE nspname = 'pitr_fleet'";
    assert_eq!(fleet.psql_at(&fleet.conninfo("fleet"), tables), "0");
    sidecar.stop();

    // A role that may (here the cluster's owner) migrates and publishes.
    let (cfg, port) = config_as("postgres", "owner");
    let sidecar = Sidecar::start(&cfg);
    let admin = reader_config(repo.dir.path(), "admin.toml", &fleet, "postgres");
    let admin_s = admin.to_str().expect("utf-8 path");
    eventually(
        "the sidecar migrated the fleet database and published",
        Duration::from_secs(60),
        async || {
            let list = json_of(&["fleet", "list", "--json", "-c", admin_s])?;
            entry(&list, "owner", "app")
                .map(|_| ())
                .ok_or_else(|| format!("{list:#}\n{}", sidecar.log_text()))
        },
    )
    .await;
    assert_eq!(
        fleet.psql_at(
            &fleet.conninfo("fleet"),
            "SELECT version FROM pitr_fleet.schema_version"
        ),
        "1"
    );
    // Publishing, the fleet check passes.
    eventually(
        "the fleet check passes once publishing works",
        Duration::from_secs(60),
        async || {
            let (_, body) = get(port, "/health").await.ok_or("no answer")?;
            let h: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            let listed = h["problems"]
                .as_array()
                .is_none_or(|p| p.iter().any(|c| c["id"] == "fleet/publish"));
            if h["fleet"]["last_publish"].is_string() && !listed {
                Ok(())
            } else {
                Err(format!("{h:#}"))
            }
        },
    )
    .await;
    sidecar.stop();
}
