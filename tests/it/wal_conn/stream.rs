//! START_REPLICATION: a whole segment byte for byte, status updates moving
//! the slot, keepalives answered within wal_sender_timeout, the slot held by
//! another stream, and a server shutdown mid-stream.

use std::time::{Duration, Instant};

use pitr::pg::{
    Lsn, Segment,
    conn::{ConnError, ReplMessage, ReplicationStream, pg_now_micros},
};

use super::{connect, conninfo, eventually, within};
use crate::support::PgCluster;

const SEG: u64 = 16 << 20;

/// How long the keepalive check streams: well past wal_sender_timeout.
const SURVIVE: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_a_segment_acknowledges_and_answers_keepalives() {
    let pg = PgCluster::start_with(|c| {
        c.set("wal_sender_timeout", "2s");
    });
    let sql = pg.connect().await;
    let info = conninfo(&pg, "");
    let mut client = connect(&info).await;
    client
        .create_physical_slot("pitr", true)
        .await
        .expect("slot");
    let system = client.identify_system().await.expect("identify");
    let start = system.xlogpos.segment_start(SEG);
    let seg_end = Lsn(start.0 + SEG);

    let mut stream = within("start", client.start_replication(Some("pitr"), start, 1))
        .await
        .expect("start replication");
    let pid = stream.client().backend_pid();

    // Fill and switch the segment from an ordinary connection.
    sql.batch_execute(
        "CREATE TABLE t (id int, pad text);
         INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g;",
    )
    .await
    .expect("write rows");
    sql.query_one("SELECT pg_switch_wal()", &[])
        .await
        .expect("switch");

    // Collect exactly one segment, checking the positions are contiguous.
    let mut segment = Vec::with_capacity(SEG as usize);
    while (segment.len() as u64) < SEG {
        match within("xlogdata", stream.next()).await.expect("next") {
            Some(ReplMessage::XLogData {
                start: at,
                data,
                send_time,
                ..
            }) => {
                assert_eq!(at.0, start.0 + segment.len() as u64, "contiguous WAL");
                // Both clocks count µs since 2000-01-01 (same machine).
                let skew = (send_time - pg_now_micros()).abs();
                assert!(skew < 60_000_000, "send_time {send_time} is {skew} µs off");
                let take = (SEG as usize - segment.len()).min(data.len());
                segment.extend_from_slice(&data[..take]);
            }
            Some(ReplMessage::Keepalive {
                reply_requested, ..
            }) => {
                // Flush 0/0 leaves the slot alone: nothing is stored yet.
                if reply_requested {
                    let written = Lsn(start.0 + segment.len() as u64);
                    stream
                        .send_status(written, Lsn(0), Lsn(0), false)
                        .await
                        .expect("status");
                }
            }
            None => panic!("stream ended on timeline 1"),
        }
    }
    let name = Segment::containing(1, start, SEG).file_name(SEG);
    let on_disk = std::fs::read(pg.data_dir().join("pg_wal").join(&name)).expect("read segment");
    assert!(
        segment == on_disk,
        "streamed {name} differs from pg_wal/{name}"
    );

    // Acknowledge the segment: the server shows it and moves the slot.
    let slot_before = restart_lsn(&sql).await;
    assert!(slot_before < seg_end);
    stream
        .send_status(seg_end, seg_end, seg_end, false)
        .await
        .expect("status");
    let flush = eventually("flush_lsn reported", Duration::from_secs(10), async || {
        let row = sql
            .query_opt(
                "SELECT flush_lsn::text FROM pg_stat_replication WHERE pid = $1",
                &[&pid],
            )
            .await
            .expect("pg_stat_replication");
        let flush: Option<String> = row.and_then(|r| r.get(0));
        match flush {
            Some(f) if f == seg_end.to_string() => Ok(f),
            other => Err(format!("flush_lsn {other:?}")),
        }
    })
    .await;
    assert_eq!(flush, seg_end.to_string());
    assert_eq!(
        restart_lsn(&sql).await,
        seg_end,
        "the slot advanced to the flush position"
    );

    // Another stream on the same slot is refused, naming our walsender.
    let other = connect(&info).await;
    let err = other
        .start_replication(Some("pitr"), seg_end, 1)
        .await
        .expect_err("slot is taken");
    assert!(
        matches!(err, ConnError::SlotInUse { pid: Some(p), .. } if p as i32 == pid),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&format!("server process {pid}")),
        "{err}"
    );

    // Past wal_sender_timeout: answering keepalives keeps us connected, a
    // silent slot-less stream of the same server is cut off.
    let silent = connect(&info)
        .await
        .start_replication(None, start, 1)
        .await
        .expect("silent stream");
    let (asked, silent_end) =
        tokio::join!(answer_keepalives(&mut stream, seg_end), ignore_all(silent));
    assert!(
        asked >= 1,
        "the server asked for a reply within {SURVIVE:?}"
    );
    assert!(
        matches!(silent_end, ConnError::ServerGone { .. }),
        "{silent_end:?}"
    );
    let alive: i64 = sql
        .query_one(
            "SELECT count(*) FROM pg_stat_replication WHERE pid = $1",
            &[&pid],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(alive, 1, "our walsender survived wal_sender_timeout");

    // Ending from our side gives the client back.
    let mut client = within("finish", stream.finish()).await.expect("finish");
    assert_eq!(
        client.identify_system().await.expect("identify").timeline,
        1
    );

    // A clean shutdown mid-stream is ServerGone once the server has sent
    // everything (it waits for our write position to catch up).
    let mut stream = client
        .start_replication(Some("pitr"), seg_end, 1)
        .await
        .expect("restart streaming");
    let stopper = tokio::task::spawn_blocking(move || {
        let mut pg = pg;
        pg.stop();
        pg
    });
    let err = within("shutdown", follow_until_error(&mut stream)).await;
    assert!(matches!(err, ConnError::ServerGone { .. }), "{err:?}");
    assert!(err.is_transient());
    let _pg = within("stop", stopper).await.expect("pg_ctl stop");
}

async fn restart_lsn(sql: &tokio_postgres::Client) -> Lsn {
    let text: String = sql
        .query_one(
            "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = 'pitr'",
            &[],
        )
        .await
        .expect("slot")
        .get(0);
    text.parse().expect("lsn")
}

/// Streams for [`SURVIVE`], answering every keepalive that asks; returns
/// how many asked.
async fn answer_keepalives(stream: &mut ReplicationStream, flushed: Lsn) -> usize {
    let deadline = Instant::now() + SURVIVE;
    let mut asked = 0;
    let mut written = flushed;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(msg) = tokio::time::timeout(left, stream.next()).await else {
            break;
        };
        match msg.expect("stream stays up") {
            Some(ReplMessage::Keepalive {
                reply_requested: true,
                ..
            }) => {
                asked += 1;
                stream
                    .send_status(written, flushed, flushed, false)
                    .await
                    .expect("status");
            }
            Some(ReplMessage::XLogData { start, data, .. }) => {
                written = written.max(Lsn(start.0 + data.len() as u64));
            }
            Some(ReplMessage::Keepalive { .. }) => {}
            None => panic!("stream ended"),
        }
    }
    asked
}

/// Reads without ever answering, until the server gives up on us.
async fn ignore_all(mut stream: ReplicationStream) -> ConnError {
    loop {
        match within("silent stream", stream.next()).await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("silent stream ended without an error"),
            Err(e) => return e,
        }
    }
}

/// Streams, reporting everything received as flushed (as a pitr that stores
/// at once would), until an error.
///
/// A fast shutdown waits until the reported flush position (or the write
/// position when flush is 0/0) equals what the server sent, answering each
/// reply with another keepalive meanwhile: a client that never reports the
/// shutdown checkpoint as flushed keeps the server from stopping.
async fn follow_until_error(stream: &mut ReplicationStream) -> ConnError {
    let mut received = Lsn(0);
    loop {
        match stream.next().await {
            Ok(Some(ReplMessage::XLogData { start, data, .. })) => {
                received = received.max(Lsn(start.0 + data.len() as u64));
            }
            Ok(Some(ReplMessage::Keepalive { .. })) => {}
            Ok(None) => panic!("timeline ended instead of a shutdown"),
            Err(e) => return e,
        }
        if received.0 > 0 {
            if let Err(e) = stream
                .send_status(received, received, received, false)
                .await
            {
                return e;
            }
        }
    }
}
