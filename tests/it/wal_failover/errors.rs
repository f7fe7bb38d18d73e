//! The failures that need an operator, through the streamer: each is a
//! specific error whose message says what to do; the transient one (a slot
//! held by another process) is retried until it clears, the others end
//! [`stream`](pitr::wal::stream).

use std::time::Duration;

use pitr::pg::{Lsn, ReplicationClient, conn::ConnError};
use pitr::repo::Repository;
use pitr::wal::{Progress, StreamError, StreamOptions, WalStore, stream_once};
use tokio::sync::watch;

use super::{Streamer, lsn, options, options_for, stored_end, within, write_wal};
use crate::support::PgCluster;
use crate::support::TestRepo;

/// One pass of the streamer, which must fail.
async fn pass_fails(repo: &Repository, opts: &StreamOptions) -> StreamError {
    let (tx, _rx) = watch::channel(Progress::default());
    let shutdown = std::pin::pin!(std::future::pending::<()>());
    match within(
        "stream_once",
        stream_once(repo.clone(), opts, &tx, shutdown),
    )
    .await
    {
        Ok(ended) => panic!("stream_once ended with {ended:?} instead of an error"),
        Err(e) => e,
    }
}

/// The whole streamer, which must give up with an error.
async fn stream_fails(repo: &Repository, opts: &StreamOptions) -> StreamError {
    let streamer = Streamer::spawn(repo.clone(), opts.clone());
    within("stream() gives up", streamer.task)
        .await
        .expect("no panic")
        .expect_err("stream() returns the error")
}

/// A cluster with table `t`, and a repository that streamed one segment of
/// it with slot `pitr`, then stopped; returns where stored WAL ends.
async fn streamed_once(
    pg: &PgCluster,
    db: &tokio_postgres::Client,
) -> (TestRepo, Repository, WalStore, Lsn) {
    db.batch_execute("CREATE TABLE t (id serial PRIMARY KEY, v text)")
        .await
        .expect("create");
    let t = TestRepo::new().await;
    let repo = t.open().await;
    let store = WalStore::new(repo.clone(), "main");
    let mut streamer = Streamer::spawn(repo.clone(), options(pg));
    let first = write_wal(db, 1).await;
    streamer.wait_flushed(db, &store, first).await;
    streamer.stop().await.expect("no error");
    let stored = stored_end(&store);
    (t, repo, store, stored)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_held_by_another_process_names_it_and_is_retried_until_free() {
    let pg = PgCluster::start();
    let db = pg.connect().await;
    db.batch_execute("CREATE TABLE t (id serial PRIMARY KEY, v text)")
        .await
        .expect("create");
    let t = TestRepo::new().await;
    let repo = t.open().await;
    let store = WalStore::new(repo.clone(), "main");
    let opts = options(&pg);

    // Another client creates the slot and streams from it.
    let mut other = within("connect", ReplicationClient::connect(&opts.conninfo))
        .await
        .expect("connect");
    let slot = other
        .create_physical_slot("pitr", true)
        .await
        .expect("create slot");
    let start = slot
        .restart_lsn
        .expect("reserved")
        .segment_start(super::SEG);
    let holder = within("hold", other.start_replication(Some("pitr"), start, 1))
        .await
        .expect("the other client streams");
    let pid = holder.client().backend_pid();

    let err = pass_fails(&repo, &opts).await;
    assert!(
        matches!(&err, StreamError::Conn(ConnError::SlotInUse { pid: Some(p), .. }) if *p as i32 == pid),
        "{err:?}"
    );
    assert!(err.is_transient(), "the other process may go away");
    let text = err.to_string();
    assert!(
        text.contains(&format!("in use by server process {pid}")),
        "{text}"
    );
    assert!(
        text.contains("stop that one, or give this pitr its own slot"),
        "{text}"
    );

    // stream() keeps retrying while the slot is held...
    let mut streamer = Streamer::spawn(repo.clone(), opts.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !streamer.task.is_finished(),
        "stream() gave up on a held slot"
    );
    assert_eq!(streamer.rx.borrow().flushed, Lsn(0), "nothing streamed yet");
    // ...and streams once the other process lets go.
    drop(holder);
    let target = write_wal(&db, 1).await;
    streamer.wait_flushed(&db, &store, target).await;
    streamer.stop().await.expect("no error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_replication_privilege_or_no_wal_senders_end_streaming_with_what_to_do() {
    let t = TestRepo::new().await;
    let repo = t.open().await;

    let pg = PgCluster::start();
    pg.psql("CREATE ROLE norepl LOGIN");
    let opts = options_for(&format!(
        "host={} port={} user=norepl dbname=postgres",
        pg.host(),
        pg.port()
    ));
    let err = stream_fails(&repo, &opts).await;
    assert!(
        matches!(
            err,
            StreamError::Conn(ConnError::NoReplicationPrivilege { .. })
        ),
        "{err:?}"
    );
    assert!(!err.is_transient());
    let text = err.to_string();
    assert!(text.contains("ALTER ROLE norepl REPLICATION"), "{text}");

    // max_wal_senders = 0, and wal_level = minimal (which requires it).
    for minimal in [false, true] {
        let pg = PgCluster::start_with(|c| {
            c.set("max_wal_senders", "0");
            if minimal {
                c.set("wal_level", "minimal");
            }
        });
        let err = stream_fails(&repo, &options(&pg)).await;
        assert!(
            matches!(err, StreamError::Conn(ConnError::TooManyWalSenders { .. })),
            "minimal {minimal}: {err:?}"
        );
        assert!(!err.is_transient());
        let text = err.to_string();
        assert!(text.contains("raise max_wal_senders"), "{text}");
        assert!(text.contains("(currently 0)"), "{text}");
        assert!(text.contains("wal_level must then be replica"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_invalidated_by_max_slot_wal_keep_size_says_wal_was_lost() {
    let pg = PgCluster::start_with(|c| {
        c.set("max_slot_wal_keep_size", "1MB");
    });
    let db = pg.connect().await;
    let (_t, repo, _store, stored) = streamed_once(&pg, &db).await;

    // pitr is down; more WAL than the slot may keep, and a checkpoint.
    write_wal(&db, 3).await;
    db.batch_execute("CHECKPOINT").await.expect("checkpoint");
    let status: String = db
        .query_one(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'pitr'",
            &[],
        )
        .await
        .expect("slot")
        .get(0);
    assert_eq!(status, "lost");

    let opts = options(&pg);
    let err = pass_fails(&repo, &opts).await;
    match &err {
        StreamError::SlotLost {
            slot,
            stored_end,
            timeline,
            server,
        } => {
            assert_eq!((slot.as_str(), *stored_end, *timeline), ("pitr", stored, 1));
            assert!(server.contains("has already been removed"), "{server}");
        }
        other => panic!("expected SlotLost, got {other:?}"),
    }
    assert!(!err.is_transient());
    let text = err.to_string();
    for what in [
        "lost WAL that pitr had not stored",
        &format!("after {stored} on timeline 1"),
        "max_slot_wal_keep_size",
        "wal_status 'lost'",
        "take a new base backup (`pitr backup`)",
        "SELECT pg_drop_replication_slot('pitr')",
    ] {
        assert!(text.contains(what), "{what:?} not in: {text}");
    }
    // stream() gives up with the same error rather than retrying.
    let err = stream_fails(&repo, &opts).await;
    assert!(matches!(err, StreamError::SlotLost { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_advanced_past_stored_wal_is_slot_ahead() {
    let pg = PgCluster::start();
    let db = pg.connect().await;
    let (_t, repo, _store, stored) = streamed_once(&pg, &db).await;

    // pitr is down; someone moves the slot past what pitr stored.
    write_wal(&db, 3).await;
    db.batch_execute("SELECT pg_replication_slot_advance('pitr', pg_current_wal_lsn())")
        .await
        .expect("advance the slot");
    let slot_start = lsn(
        &db,
        "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = 'pitr'",
    )
    .await
    .expect("slot");

    let opts = options(&pg);
    let err = pass_fails(&repo, &opts).await;
    match &err {
        StreamError::SlotAhead {
            slot,
            slot_start: s,
            stored_end,
            timeline,
        } => assert_eq!(
            (slot.as_str(), *s, *stored_end, *timeline),
            ("pitr", slot_start, stored, 1)
        ),
        other => panic!("expected SlotAhead, got {other:?}"),
    }
    assert!(!err.is_transient());
    let text = err.to_string();
    for what in [
        format!("starts at {slot_start}"),
        format!("only up to {stored} on timeline 1"),
        "take a new base backup (`pitr backup`)".to_owned(),
        "make sure nothing else uses the slot".to_owned(),
    ] {
        assert!(text.contains(&what), "{what:?} not in: {text}");
    }
    let err = stream_fails(&repo, &opts).await;
    assert!(matches!(err, StreamError::SlotAhead { .. }), "{err:?}");
}
