//! Server restart mid-stream: pitr reconnects with backoff and continues,
//! after a clean restart and after a crash, with no gap and no error.

use pitr::wal::WalStore;

use super::{
    Streamer, compare_with_pg_wal, complete_segments, flush_lsn, one_range_per_timeline, options,
    write_wal,
};
use crate::support::PgCluster;
use crate::support::TestRepo;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_a_restart_and_a_crash_and_continues() {
    let mut pg = PgCluster::start();
    let db = pg.connect().await;
    db.batch_execute("CREATE TABLE t (id serial PRIMARY KEY, v text)")
        .await
        .expect("create");
    let t = TestRepo::new().await;
    let repo = t.open().await;
    let store = WalStore::new(repo.clone(), "main");

    let mut streamer = Streamer::spawn(repo.clone(), options(&pg));
    let first = write_wal(&db, 1).await;
    streamer.wait_flushed(&db, &store, first).await;

    // A clean restart while WAL is still arriving: a fast shutdown sends
    // the rest and waits for pitr to acknowledge it.
    write_wal(&db, 1).await;
    db.batch_execute("INSERT INTO t (v) VALUES ('before restart')")
        .await
        .expect("insert");
    drop(db);
    tokio::task::block_in_place(|| pg.restart());
    let db = pg.connect().await;
    let second = write_wal(&db, 1).await;
    streamer.wait_flushed(&db, &store, second).await;

    // A crash right after writing, before pitr has stored it all.
    write_wal(&db, 1).await;
    db.batch_execute("INSERT INTO t (v) VALUES ('before crash')")
        .await
        .expect("insert");
    drop(db);
    tokio::task::block_in_place(|| {
        pg.crash();
        pg.start_again();
    });
    let db = pg.connect().await;
    write_wal(&db, 1).await;
    db.batch_execute("INSERT INTO t (v) VALUES ('tail')")
        .await
        .expect("insert");
    let target = flush_lsn(&db).await;
    streamer.wait_flushed(&db, &store, target).await;
    assert_eq!(streamer.rx.borrow().timeline, 1);
    streamer.stop().await.expect("no error after restarts");

    // No gap, and every complete segment is the server's file.
    let ranges = one_range_per_timeline(&store);
    assert_eq!(ranges.len(), 1, "{ranges:?}");
    assert!(ranges[0].2 >= target, "{ranges:?}, target {target}");
    let segments = complete_segments(&repo, 1);
    assert!(segments.len() >= 4, "{segments:?}");
    let compared = compare_with_pg_wal(&repo, &store, 1, &pg.data_dir().join("pg_wal")).await;
    assert!(compared >= 3, "compared {compared} segments with pg_wal");
}
