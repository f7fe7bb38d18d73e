//! Replication commands answered with rows, checked against what the server
//! says through ordinary SQL; the end of a historic timeline; a CopyOut.

use std::fs;
use std::time::Duration;

use pitr::pg::{
    Lsn,
    conn::{ConnError, CopyOutEvent, Host, ReplMessage},
    history_file_name,
};

use super::{connect, connect_err, conninfo, eventually, info, within};
use crate::support::PgCluster;

#[tokio::test]
async fn commands_agree_with_sql_and_timelines_end_with_the_next_one() {
    let mut pg = PgCluster::start();
    let sql = pg.connect().await;
    let mut client = connect(&conninfo(&pg, "application_name=pitr-it")).await;
    assert!(!client.is_tls());
    assert!(
        client
            .server_param("server_version")
            .is_some_and(|v| v.starts_with("15")),
        "{:?}",
        client.server_params()
    );

    // IDENTIFY_SYSTEM against pg_control_system() and pg_current_wal_flush_lsn().
    let system = within("identify", client.identify_system())
        .await
        .expect("identify");
    let expected: i64 = sql
        .query_one("SELECT system_identifier FROM pg_control_system()", &[])
        .await
        .expect("system_identifier")
        .get(0);
    assert_eq!(system.system_id, expected.to_string());
    assert_eq!(system.timeline, 1);
    assert_eq!(system.dbname, None);
    let flush: String = sql
        .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
        .await
        .expect("flush lsn")
        .get(0);
    assert!(
        system.xlogpos <= flush.parse().expect("lsn"),
        "{system:?} vs {flush}"
    );
    let app: String = sql
        .query_one(
            "SELECT application_name FROM pg_stat_activity WHERE pid = $1",
            &[&client.backend_pid()],
        )
        .await
        .expect("our walsender")
        .get(0);
    assert_eq!(app, "pitr-it");

    // SHOW works on a replication connection.
    assert_eq!(client.wal_segment_size().await.expect("segsize"), 16 << 20);
    assert_eq!(
        client.check_wal_level().await.expect("wal_level"),
        "replica"
    );
    assert_eq!(client.show("max_wal_senders").await.expect("show"), "10");

    // Slots: created with RESERVE_WAL, seen by pg_replication_slots and by
    // READ_REPLICATION_SLOT alike.
    let created = client
        .create_physical_slot("pitr_it", true)
        .await
        .expect("create slot");
    let row = sql
        .query_one(
            "SELECT slot_type, restart_lsn::text FROM pg_replication_slots WHERE slot_name = 'pitr_it'",
            &[],
        )
        .await
        .expect("slot row");
    let (kind, restart): (String, String) = (row.get(0), row.get(1));
    assert_eq!(kind, "physical");
    let restart: Lsn = restart.parse().expect("lsn");
    assert!(restart.0 > 0, "{restart}");
    assert_eq!(
        created.restart_lsn,
        Some(restart),
        "RESERVE_WAL reserves at once"
    );
    let slot = client
        .read_replication_slot("pitr_it")
        .await
        .expect("read slot")
        .expect("slot exists");
    assert_eq!(slot.slot_type, "physical");
    assert_eq!(slot.restart_lsn, Some(restart));
    assert_eq!(slot.restart_tli, Some(1));
    assert_eq!(
        client.read_replication_slot("nope").await.expect("read"),
        None
    );

    let err = client
        .create_physical_slot("pitr_it", true)
        .await
        .expect_err("exists");
    assert!(matches!(err, ConnError::SlotExists { .. }), "{err:?}");
    let lazy = client
        .create_physical_slot("lazy", false)
        .await
        .expect("lazy");
    assert_eq!((lazy.restart_lsn, lazy.restart_tli), (None, None));
    client.drop_slot("lazy", false).await.expect("drop");
    assert_eq!(
        client.read_replication_slot("lazy").await.expect("read"),
        None
    );
    let err = client.drop_slot("lazy", false).await.expect_err("gone");
    assert!(matches!(err, ConnError::SlotMissing { .. }), "{err:?}");
    assert!(err.to_string().contains("does not exist"), "{err}");
    let err = client
        .read_replication_slot("Bad-Name")
        .await
        .expect_err("invalid");
    assert!(matches!(err, ConnError::InvalidSlotName(_)), "{err:?}");
    // A failed command leaves the connection usable.
    assert_eq!(
        client
            .identify_system()
            .await
            .expect("still works")
            .timeline,
        1
    );

    // Plain TLS negotiation against a server without ssl: prefer falls back,
    // require says what to change.
    let plain = connect(&info(&format!(
        "{} sslmode=prefer",
        pg.conninfo("postgres")
    )))
    .await;
    assert!(!plain.is_tls());
    let err = connect_err(&info(&format!(
        "{} sslmode=require",
        pg.conninfo("postgres")
    )))
    .await;
    assert!(err.to_string().contains("does not accept TLS"), "{err}");

    // The unix socket.
    let local_info = info(&format!(
        "host={} port={} user=postgres",
        pg.dir().display(),
        pg.port()
    ));
    assert!(matches!(local_info.host, Host::Unix(_)));
    let mut local = connect(&local_info).await;
    assert_eq!(
        local.identify_system().await.expect("identify").system_id,
        system.system_id
    );

    // A CopyOut between result sets: BASE_BACKUP's shape.
    base_backup_events(&mut local).await;
    // A COPY where rows were expected is an error, and the connection
    // stays usable.
    let cmd = format!(
        "START_REPLICATION PHYSICAL {} TIMELINE 1",
        system.xlogpos.segment_start(16 << 20)
    );
    let err = within("copy in simple_query", local.simple_query(&cmd))
        .await
        .expect_err("COPY is not rows");
    assert!(err.to_string().contains("started a COPY"), "{err}");
    assert_eq!(local.identify_system().await.expect("usable").timeline, 1);
    local.close().await.expect("close");
    client.close().await.expect("close");
    drop(sql);

    // Archive recovery from our own pg_wal ends on a new timeline 2.
    let seg = 16 << 20;
    pg.psql("ALTER SYSTEM SET restore_command = 'false'");
    pg.stop();
    fs::write(pg.data_dir().join("recovery.signal"), "").expect("recovery.signal");
    pg.start_again();
    // Hot standby lets pg_ctl return while recovery still runs.
    eventually("recovery ends", Duration::from_secs(20), async || match pg
        .psql("SELECT pg_is_in_recovery()")
        .as_str()
    {
        "f" => Ok(()),
        _ => Err("in recovery"),
    })
    .await;
    let mut client = connect(&conninfo(&pg, "")).await;
    let system = client.identify_system().await.expect("identify");
    assert_eq!(
        system.timeline,
        2,
        "archive recovery switches timeline; log:\n{}",
        pg.log_tail()
    );

    let history = client.timeline_history(2).await.expect("history");
    assert_eq!(history.file_name, history_file_name(2));
    let on_disk = fs::read(pg.data_dir().join("pg_wal").join(&history.file_name)).expect("read");
    assert_eq!(&history.content[..], &on_disk[..]);
    // "1\t0/3000060\tno recovery target specified"
    let text = String::from_utf8(on_disk).expect("utf-8");
    let switch: Lsn = text
        .split('\t')
        .nth(1)
        .expect("switch point field")
        .parse()
        .expect("lsn");

    // Stream timeline 1 from the slot to its end: CopyDone, then the next
    // timeline's row.
    let start = restart.segment_start(seg);
    let mut stream = within("start", client.start_replication(Some("pitr_it"), start, 1))
        .await
        .expect("start replication on the old timeline");
    let mut pos = start;
    while let Some(msg) = within("stream", stream.next()).await.expect("stream") {
        if let ReplMessage::XLogData { start, data, .. } = msg {
            assert_eq!(start, pos, "contiguous WAL");
            pos = Lsn(pos.0 + data.len() as u64);
        }
    }
    let end = stream.ended().expect("the server names the next timeline");
    assert_eq!((end.next_tli, end.start), (2, switch));
    assert_eq!(pos, switch, "timeline 1's WAL ends at the switch point");
    let client = stream.into_client().expect("client back");

    // Starting exactly at the switch point: no COPY at all.
    let mut stream = client
        .start_replication(None, switch, 1)
        .await
        .expect("start at the switch point");
    assert_eq!(stream.next().await.expect("next"), None);
    assert_eq!(stream.ended().map(|e| e.next_tli), Some(2));
    let mut client = stream.into_client().expect("client back");
    assert_eq!(
        client.identify_system().await.expect("identify").timeline,
        2
    );

    // Streaming from a slot that does not exist.
    let err = client
        .start_replication(Some("missing"), switch, 2)
        .await
        .expect_err("no such slot");
    assert!(matches!(err, ConnError::SlotMissing { .. }), "{err:?}");
    assert!(
        err.to_string().contains("CREATE_REPLICATION_SLOT missing"),
        "{err}"
    );
}

/// Runs a small BASE_BACKUP and checks the order of what comes back.
async fn base_backup_events(client: &mut pitr::pg::ReplicationClient) {
    let mut stream = client
        .simple_query_copy_out(
            "BASE_BACKUP (LABEL 'pitr-it', CHECKPOINT 'fast', WAIT false, MANIFEST 'no')",
        )
        .await
        .expect("send BASE_BACKUP");
    let mut shape = Vec::new();
    let mut first_row = None;
    let mut last_row = None;
    let mut tar_bytes = 0usize;
    while let Some(event) = within("base backup", stream.next()).await.expect("event") {
        let step = match &event {
            CopyOutEvent::RowDescription(cols) => format!("T{cols:?}"),
            CopyOutEvent::Row(row) => {
                if first_row.is_none() {
                    first_row = Some(row.clone());
                }
                last_row = Some(row.clone());
                "D".to_owned()
            }
            CopyOutEvent::CopyStart => "H".to_owned(),
            CopyOutEvent::CopyData(d) => {
                if d.first() == Some(&b'd') {
                    tar_bytes += d.len() - 1;
                }
                format!("d{}", d.first().map_or('?', |b| *b as char))
            }
            CopyOutEvent::CopyDone => "c".to_owned(),
            CopyOutEvent::CommandComplete(tag) => format!("C({tag})"),
        };
        if shape.last() != Some(&step) {
            shape.push(step);
        }
    }
    let first = first_row.expect("a start row");
    let begin: Lsn = first.get_str(0).expect("start lsn").parse().expect("lsn");
    assert_eq!(first.get_str(1), Some("1"));
    let last = last_row.expect("an end row");
    let end: Lsn = last.get_str(0).expect("end lsn").parse().expect("lsn");
    assert!(end >= begin, "{end} < {begin}");
    assert!(
        tar_bytes > 1 << 20,
        "a cluster's tar is megabytes, got {tar_bytes}"
    );
    let shape = shape.join(" ");
    assert!(shape.contains("H dn dd"), "{shape}");
    eprintln!("BASE_BACKUP answer: {shape}");
    // The client is ready for the next command.
    assert!(client.identify_system().await.is_ok());
}
