//! The PostgreSQL harness itself: every later test trusts these clusters to
//! be what pitr meets in production, so check that they are.

use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

use crate::support::pg::effective_uid;
use crate::support::{PgCluster, run_as_pg_user};

/// The real, effective, saved and filesystem uids of a process.
fn process_uids(pid: u32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .expect("/proc/<pid>/status has a Uid line");
    line.split_whitespace()
        .map(|uid| uid.parse().expect("a numeric uid"))
        .collect()
}

#[tokio::test]
async fn cluster_has_the_settings_pitr_needs_and_serves_queries() {
    let mut pg = PgCluster::start();
    let client = pg.connect().await;

    let setting = async |sql: &str| -> String {
        client
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    };
    assert_eq!(
        setting("SELECT current_setting('wal_level')").await,
        "replica"
    );
    assert_eq!(setting("SHOW data_checksums").await, "on");
    assert_eq!(setting("SHOW fsync").await, "on");
    assert_eq!(setting("SHOW synchronous_commit").await, "on");
    assert_eq!(setting("SHOW max_wal_senders").await, "10");
    assert_eq!(setting("SHOW max_replication_slots").await, "10");
    assert_eq!(setting("SHOW port").await, pg.port().to_string());
    assert_eq!(setting("SELECT current_user::text").await, "postgres");

    client
        .batch_execute(
            "CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL);
             INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 100) g;",
        )
        .await
        .expect("create and fill a table");
    let rows = client
        .query("SELECT id, body FROM notes WHERE id <= 3 ORDER BY id", &[])
        .await
        .expect("select rows");
    let rows: Vec<(i32, String)> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    assert_eq!(
        rows,
        [
            (1, "note 1".to_owned()),
            (2, "note 2".to_owned()),
            (3, "note 3".to_owned())
        ]
    );
    let count: i64 = client
        .query_one("SELECT count(*) FROM notes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 100);
    // psql sees what tokio-postgres committed.
    assert_eq!(pg.psql("SELECT sum(id) FROM notes"), "5050");

    // The server runs as the owner of its data directory, and never as root.
    let pid = pg
        .server_pid()
        .expect("a running server has a postmaster.pid");
    let uids = process_uids(pid);
    let data_owner = std::fs::metadata(pg.data_dir()).unwrap().uid();
    assert_eq!(
        uids, [data_owner; 4],
        "postmaster {pid} uids vs data dir owner"
    );
    if effective_uid() == 0 {
        assert_ne!(
            data_owner, 0,
            "as root, the cluster must belong to an unprivileged user"
        );
    } else {
        assert_eq!(data_owner, effective_uid());
    }

    pg.stop();
    assert_eq!(pg.server_pid(), None, "postmaster.pid is gone after a stop");
    assert!(
        client.query_one("SELECT 1", &[]).await.is_err(),
        "a connection to a stopped server must fail"
    );
    assert!(
        tokio_postgres::connect(&pg.conninfo("postgres"), tokio_postgres::NoTls)
            .await
            .is_err(),
        "a new connection to a stopped server must fail"
    );
    assert!(
        TcpStream::connect((pg.host(), pg.port())).is_err(),
        "nothing listens on the port of a stopped server"
    );
}

#[tokio::test]
async fn replication_connections_are_allowed() {
    let pg = PgCluster::start();
    let client = pg.connect().await;
    let system_id: i64 = client
        .query_one("SELECT system_identifier FROM pg_control_system()", &[])
        .await
        .unwrap()
        .get(0);

    // A logical-capable walsender (replication=database) answers with the
    // database name; a physical one (replication=true, what pitr's WAL
    // receiver uses) with an empty one.
    for (mode, dbname) in [("database", "postgres"), ("true", "")] {
        let conninfo = format!("{} replication={mode}", pg.conninfo("postgres"));
        let out = pg.psql_at(&conninfo, "IDENTIFY_SYSTEM");
        let fields: Vec<&str> = out.split('|').collect();
        assert_eq!(fields.len(), 4, "IDENTIFY_SYSTEM row: {out:?}");
        assert_eq!(fields[0], system_id.to_string(), "systemid");
        assert_eq!(fields[1], "1", "timeline of a fresh cluster");
        let (hi, lo) = fields[2].split_once('/').expect("xlogpos is X/X");
        assert!(
            u32::from_str_radix(hi, 16).is_ok() && u32::from_str_radix(lo, 16).is_ok(),
            "xlogpos {:?} is not an LSN",
            fields[2]
        );
        assert_eq!(fields[3], dbname, "dbname for replication={mode}");
    }

    // pg_controldata, an independent judge, reads the same id from disk.
    let out = run_as_pg_user(&mut Command::new(pg.bin("pg_controldata")))
        .arg(pg.data_dir())
        .output()
        .expect("run pg_controldata");
    assert!(out.status.success(), "pg_controldata: {out:?}");
    let control = String::from_utf8(out.stdout).unwrap();
    let on_disk = control
        .lines()
        .find_map(|line| line.strip_prefix("Database system identifier:"))
        .expect("pg_controldata prints the system identifier")
        .trim();
    // pg_control stores it unsigned; SQL shows the same 64 bits as bigint.
    assert_eq!(on_disk.parse::<u64>().unwrap(), system_id as u64);
}

#[tokio::test]
async fn two_clusters_run_side_by_side() {
    let a = PgCluster::start();
    let b = PgCluster::start_with(|conf| {
        conf.set("work_mem", "7MB").set("cluster_name", "it's b");
    });
    assert_ne!(a.port(), b.port());
    assert_ne!(a.data_dir(), b.data_dir());

    let (ca, cb) = (a.connect().await, b.connect().await);
    let show = |rows: Vec<tokio_postgres::Row>| -> String { rows[0].get(0) };
    assert_eq!(show(ca.query("SHOW work_mem", &[]).await.unwrap()), "4MB");
    assert_eq!(show(cb.query("SHOW work_mem", &[]).await.unwrap()), "7MB");
    assert_eq!(b.psql("SHOW cluster_name"), "it's b");

    let id = |client: tokio_postgres::Client| async move {
        let id: i64 = client
            .query_one("SELECT system_identifier FROM pg_control_system()", &[])
            .await
            .unwrap()
            .get(0);
        (client, id)
    };
    let ((ca, id_a), (cb, id_b)) = (id(ca).await, id(cb).await);
    assert_ne!(id_a, id_b, "two initdb runs make two systems");

    ca.batch_execute("CREATE TABLE only_in_a (x int)")
        .await
        .unwrap();
    let in_b: Option<String> = cb
        .query_one("SELECT to_regclass('only_in_a')::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        in_b, None,
        "a table made in cluster a appeared in cluster b"
    );
    assert_eq!(a.psql("SELECT to_regclass('only_in_a')::text"), "only_in_a");
}

#[tokio::test]
async fn a_crashed_cluster_recovers_its_committed_rows() {
    let mut pg = PgCluster::start();
    let client = pg.connect().await;
    client
        .batch_execute(
            "CREATE TABLE ledger (id int PRIMARY KEY);
             INSERT INTO ledger SELECT generate_series(1, 1000);",
        )
        .await
        .unwrap();
    drop(client);

    pg.crash();
    assert_eq!(pg.server_pid(), None);
    pg.start_again();

    assert_eq!(pg.psql("SELECT count(*) FROM ledger"), "1000");
    // An immediate stop skips the shutdown checkpoint: the restart had to
    // replay WAL, which is what makes `crash` worth having.
    let log = std::fs::read_to_string(pg.log_path()).unwrap();
    assert!(
        log.contains("database system was interrupted")
            || log.contains("not properly shut down; automatic recovery in progress"),
        "no crash recovery in the log:\n{}",
        pg.log_tail()
    );
}
