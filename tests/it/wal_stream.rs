//! The WAL streamer against a real server: segments stored byte-identical to
//! `pg_wal`, the flush position the server sees never ahead of what is stored
//! (invariant 1), and a failing destination holding the slot back until it
//! recovers, with no gap.

use std::time::{Duration, Instant};

use pitr::pg::{ConnInfo, Lsn, Segment};
use pitr::repo::Repository;
use pitr::ship::fault::FaultPlan;
use pitr::wal::{Progress, StreamOptions, WalStore, stream};
use tokio::sync::{oneshot, watch};

use crate::support::PgCluster;
use crate::support::TestRepo;
use crate::support::query_lsn as lsn;

const SEG: u64 = 16 << 20;

/// Checks that saw a flush position: the invariant must not pass by never
/// seeing one.
static FLUSH_SEEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn options(pg: &PgCluster) -> StreamOptions {
    let info = ConnInfo::parse(&pg.conninfo("postgres")).expect("conninfo");
    let mut o = StreamOptions::new("main", info, "pitr");
    o.partial_interval = Duration::from_millis(200);
    o.status_interval = Duration::from_millis(500);
    o
}

/// The server's view of our flush position must never pass what the
/// catalog says is stored. Reads the server first: the catalog only grows.
async fn check_invariant(db: &tokio_postgres::Client, store: &WalStore) -> Option<Lsn> {
    let flush = lsn(db, "SELECT flush_lsn::text FROM pg_stat_replication").await;
    let stored = store
        .stored_end(1)
        .expect("catalog")
        .map(|(end, _)| end)
        .unwrap_or_default();
    if let Some(f) = flush {
        FLUSH_SEEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(
            f <= stored,
            "the server was told {f} is flushed, but only {stored} is stored"
        );
    }
    flush
}

async fn write_wal(db: &tokio_postgres::Client, rounds: usize) -> Lsn {
    for i in 0..rounds {
        db.batch_execute(&format!(
            "INSERT INTO t (v) SELECT md5(i::text || '{i}') FROM generate_series(1, 20000) i;
             SELECT pg_switch_wal();"
        ))
        .await
        .expect("write WAL");
    }
    lsn(db, "SELECT pg_current_wal_flush_lsn()::text")
        .await
        .expect("flush lsn")
}

/// Waits (bounded) until `flushed` reaches `target`, checking the invariant
/// all along.
async fn wait_flushed(
    rx: &watch::Receiver<Progress>,
    db: &tokio_postgres::Client,
    store: &WalStore,
    target: Lsn,
) {
    crate::support::eventually(
        format!("streaming reached {target}"),
        Duration::from_secs(90),
        async || {
            if rx.borrow().flushed >= target {
                return Ok(());
            }
            check_invariant(db, store).await;
            Err(format!("{:?}", *rx.borrow()))
        },
    )
    .await;
    check_invariant(db, store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_segments_are_byte_identical_and_never_acknowledged_early() {
    let pg = PgCluster::start();
    let t = TestRepo::new().await;
    let repo = t.open().await;
    let store = WalStore::new(repo.clone(), "main");
    let db = pg.connect().await;
    db.batch_execute("CREATE TABLE t (id serial PRIMARY KEY, v text)")
        .await
        .expect("create");

    let (tx, rx) = watch::channel(Progress::default());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(stream(repo.clone(), options(&pg), tx, async {
        let _ = stopped.await;
    }));
    let target = write_wal(&db, 4).await;
    wait_flushed(&rx, &db, &store, target).await;
    // A little more WAL, not a whole segment: stored as a partial.
    db.batch_execute("INSERT INTO t (v) VALUES ('tail')")
        .await
        .expect("insert");
    let tail = lsn(&db, "SELECT pg_current_wal_flush_lsn()::text")
        .await
        .expect("lsn");
    wait_flushed(&rx, &db, &store, tail).await;
    stop.send(()).expect("stop");
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the streamer stops")
        .expect("no panic")
        .expect("no error");

    assert!(
        FLUSH_SEEN.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the invariant was checked against real flush positions"
    );
    // The slot keeps nothing that was stored, and nothing that was not.
    let restart = lsn(
        &db,
        "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = 'pitr'",
    )
    .await
    .expect("the slot exists");
    assert!(restart <= tail, "slot at {restart}, stored up to {tail}");

    // Every stored complete segment equals the server's file.
    let items = repo.catalog().items("pg/main/wal/").expect("items");
    let segments: Vec<String> = items
        .iter()
        .filter(|i| i.kind == "wal")
        .map(|i| i.name.rsplit('/').next().expect("name").to_owned())
        .collect();
    assert!(segments.len() >= 4, "{segments:?}");
    // Each complete segment carries the decoder's index: the planner's input.
    let mut commits = 0;
    for item in items.iter().filter(|i| i.kind == "wal") {
        let attrs: pitr::wal::WalAttrs =
            serde_json::from_value(item.attrs.clone()).expect("WAL attributes");
        let index = attrs.index.expect("complete segments are indexed");
        assert!(index.records > 0, "{}: {index:?}", item.name);
        commits += index.commits.map_or(0, |c| c.count);
    }
    assert!(commits >= 4, "the four INSERT rounds committed: {commits}");
    let out = tempfile::tempdir().expect("tempdir");
    let pg_wal = pg.data_dir().join("pg_wal");
    let mut compared = 0;
    for name in &segments {
        let target = out.path().join(name);
        store
            .fetch_to(name, &target)
            .await
            .expect("fetch")
            .expect("stored");
        if let Ok(server) = std::fs::read(pg_wal.join(name)) {
            assert!(
                std::fs::read(&target).expect("read") == server,
                "{name} differs"
            );
            compared += 1;
        }
    }
    assert!(compared >= 3, "compared {compared} segments with pg_wal");
    // No gap: consecutive segment numbers from the first to the last.
    let nos: Vec<u64> = segments
        .iter()
        .map(|n| Segment::parse(n, SEG).expect("segment").no)
        .collect();
    let mut sorted = nos.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted,
        (sorted[0]..=sorted[sorted.len() - 1]).collect::<Vec<_>>()
    );
    // pg_waldump reads the fetched WAL end to end.
    let dump = std::process::Command::new(pg.bin("pg_waldump"))
        .arg("--path")
        .arg(out.path())
        .arg(&segments[0])
        .arg(&segments[segments.len() - 1])
        .output()
        .expect("pg_waldump");
    let text = String::from_utf8_lossy(&dump.stdout);
    assert!(
        text.lines().filter(|l| l.starts_with("rmgr:")).count() > 1000,
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    // The partial holds the tail.
    let (end, _) = store.stored_end(1).expect("catalog").expect("stored");
    assert!(end >= tail, "stored {end}, tail {tail}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_destination_holds_the_slot_back_and_streaming_catches_up() {
    let pg = PgCluster::start();
    let t = TestRepo::new().await;
    let (repo, faulty) = t.open_faulty().await;
    let store = WalStore::new(repo.clone(), "main");
    let db = pg.connect().await;
    db.batch_execute("CREATE TABLE t (id serial PRIMARY KEY, v text)")
        .await
        .expect("create");

    let (tx, rx) = watch::channel(Progress::default());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(stream(repo.clone(), options(&pg), tx, async {
        let _ = stopped.await;
    }));
    let first = write_wal(&db, 1).await;
    wait_flushed(&rx, &db, &store, first).await;

    // The destination goes down.
    faulty.set_plan(FaultPlan {
        fail_puts: usize::MAX,
        transient: true,
        ..FaultPlan::default()
    });
    let stored_before = store.stored_end(1).expect("catalog").expect("stored").0;
    let target = write_wal(&db, 3).await;
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        if let Some(f) = check_invariant(&db, &store).await {
            assert!(
                f <= stored_before,
                "acknowledged {f} while the destination was down"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        store.stored_end(1).expect("catalog").map(|(e, _)| e),
        Some(stored_before),
        "nothing was stored while the destination was down"
    );
    // The slot holds the WAL: the server still has every segment after it.
    let restart = lsn(
        &db,
        "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = 'pitr'",
    )
    .await
    .expect("slot");
    assert!(
        restart <= stored_before,
        "slot {restart}, stored {stored_before}"
    );
    let pg_wal = pg.data_dir().join("pg_wal");
    let kept = Segment::containing(1, restart, SEG);
    assert!(
        pg_wal.join(kept.file_name(SEG)).exists(),
        "the server kept {kept:?}"
    );

    // It comes back: streaming catches up, with no gap.
    faulty.set_plan(FaultPlan::default());
    wait_flushed(&rx, &db, &store, target).await;
    stop.send(()).expect("stop");
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the streamer stops")
        .expect("no panic")
        .expect("no error");
    let mut nos: Vec<u64> = repo
        .catalog()
        .items("pg/main/wal/")
        .expect("items")
        .iter()
        .filter(|i| i.kind == "wal")
        .map(|i| {
            Segment::parse(i.name.rsplit('/').next().expect("name"), SEG)
                .expect("segment")
                .no
        })
        .collect();
    nos.sort();
    nos.dedup();
    assert!(nos.len() >= 4, "{nos:?}");
    assert_eq!(
        nos,
        (nos[0]..=nos[nos.len() - 1]).collect::<Vec<_>>(),
        "no gap"
    );
}

/// Partials are stored from chunks prepared once as they arrive (each
/// partial adds its new chunks and names the earlier ones by id): what
/// `wal-fetch` serves of a partial must still be the server's bytes up to
/// its end, then zeros; its index must decode; and its manifest must be the
/// one storing those bytes whole would make. The complete segment that
/// supersedes them must equal the server's file.
#[tokio::test(flavor = "multi_thread")]
async fn partials_are_the_open_segments_bytes_and_decode() {
    let pg = PgCluster::start();
    let t = TestRepo::new().await;
    let repo = t.open().await;
    let store = WalStore::new(repo.clone(), "main");
    let db = pg.connect().await;
    db.batch_execute("CREATE TABLE t (id serial PRIMARY KEY, v text)")
        .await
        .expect("create");
    let (tx, rx) = watch::channel(Progress::default());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(stream(repo.clone(), options(&pg), tx, async {
        let _ = stopped.await;
    }));
    // Start the rounds at a segment's start: the open segment is theirs.
    let base = write_wal(&db, 1).await;
    wait_flushed(&rx, &db, &store, base).await;
    let segment = Segment::containing(1, base, SEG);
    let name = segment.file_name(SEG);
    let pg_wal = pg.data_dir().join("pg_wal");
    let out = tempfile::tempdir().expect("tempdir");
    let mut last_end = base;
    for round in 1..=3u64 {
        // A few hundred KiB of WAL: whole chunks and a tail each round.
        db.batch_execute(&format!(
            "INSERT INTO t (v) SELECT md5(i::text || 'r{round}') FROM generate_series(1, 3000) i"
        ))
        .await
        .expect("insert");
        let flushed = lsn(&db, "SELECT pg_current_wal_flush_lsn()::text")
            .await
            .expect("flush lsn");
        wait_flushed(&rx, &db, &store, flushed).await;

        let target = out.path().join(&name);
        let found = store
            .fetch_to(&name, &target)
            .await
            .expect("fetch")
            .expect("the partial is stored");
        assert!(found.partial, "round {round}: {}", found.item.name);
        let attrs = found.attrs.expect("WAL attributes");
        let end: Lsn = attrs.end.parse().expect("end");
        assert!(end >= flushed && end > last_end, "round {round}: {end}");
        last_end = end;
        let len = (end.0 - segment.start(SEG).0) as usize;
        assert!(len > 2 * 128 * 1024, "round {round}: {len} bytes");
        let fetched = std::fs::read(&target).expect("read");
        let server = std::fs::read(pg_wal.join(&name)).expect("pg_wal");
        assert_eq!(fetched.len() as u64, SEG, "padded to a segment");
        assert!(fetched[..len] == server[..len], "round {round}: differs");
        assert!(fetched[len..].iter().all(|&b| b == 0), "zeros after");

        let index = attrs.index.expect("the partial decodes");
        assert!(index.records > 0 && index.end_of_wal.is_some(), "{index:?}");
        let commits = index.commits.map_or(0, |c| c.count);
        assert!(commits >= round, "round {round}: {commits} commits");

        let mut w = repo.writer();
        let whole = store
            .put_bytes(&mut w, segment, SEG, true, &fetched[..len], None)
            .await
            .expect("put");
        w.abandon().await;
        assert_eq!(whole.chunks, found.item.manifest.chunks, "round {round}");
        assert_eq!(whole.hash, found.item.manifest.hash, "round {round}");
    }
    // Completing the segment supersedes the partials with the whole file.
    let done = write_wal(&db, 1).await;
    wait_flushed(&rx, &db, &store, done).await;
    stop.send(()).expect("stop");
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the streamer stops")
        .expect("no panic")
        .expect("no error");
    let target = out.path().join(&name);
    let found = store
        .fetch_to(&name, &target)
        .await
        .expect("fetch")
        .expect("the segment is stored");
    assert!(!found.partial);
    assert!(
        std::fs::read(&target).expect("read") == std::fs::read(pg_wal.join(&name)).expect("pg_wal"),
        "{name} differs from pg_wal"
    );
}

/// A restarted session re-reads the open segment from its start: it must
/// not store a partial until it has passed what is stored, or a newer,
/// shorter partial would hide the longer one from `wal-fetch` (which
/// serves the newest), and WAL already acknowledged would not be restored.
#[tokio::test(flavor = "multi_thread")]
async fn a_restart_never_stores_a_shorter_partial() {
    let pg = PgCluster::start();
    let t = TestRepo::new().await;
    let repo = t.open().await;
    let store = WalStore::new(repo.clone(), "main");
    let db = pg.connect().await;
    db.batch_execute("CREATE TABLE t (id serial PRIMARY KEY, v text)")
        .await
        .expect("create");
    let run = |repo: Repository| {
        let (tx, rx) = watch::channel(Progress::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(stream(repo, options(&pg), tx, async {
            let _ = stopped.await;
        }));
        (rx, stop, task)
    };
    let (rx, stop, task) = run(repo.clone());
    let base = write_wal(&db, 1).await;
    wait_flushed(&rx, &db, &store, base).await;
    // Several MiB into a fresh segment, so re-reading it takes a while.
    db.batch_execute("INSERT INTO t (v) SELECT md5(i::text) FROM generate_series(1, 60000) i")
        .await
        .expect("insert");
    let end = lsn(&db, "SELECT pg_current_wal_flush_lsn()::text")
        .await
        .expect("flush lsn");
    wait_flushed(&rx, &db, &store, end).await;
    stop.send(()).expect("stop");
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the streamer stops")
        .expect("no panic")
        .expect("no error");
    let name = Segment::containing(1, end, SEG).file_name(SEG);
    let served_end = |found: Option<pitr::wal::StoredWal>| -> Lsn {
        let attrs = found.expect("stored").attrs.expect("WAL attributes");
        attrs.end.parse().expect("end")
    };
    let before = served_end(store.find(&name).expect("catalog"));
    assert!(before >= end, "stored {before}, flushed {end}");

    let (rx, stop, task) = run(repo.clone());
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let now = served_end(store.find(&name).expect("catalog"));
        assert!(
            now >= before,
            "wal-fetch would serve {now}, stored was {before}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(rx.borrow().received >= end, "{:?}", *rx.borrow());
    stop.send(()).expect("stop");
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the streamer stops")
        .expect("no panic")
        .expect("no error");
}
