//! Streaming from a standby that is then promoted: pitr follows onto
//! timeline 2, live or after a restart that missed the promotion.

use pitr::pg::{Lsn, ReplicationClient, Segment, history_file_name};
use pitr::wal::{Lineage, WalStore};

use super::{
    LIMIT, SEG, Streamer, check_invariant, compare_with_pg_wal, complete_segments, eventually,
    fetch, flush_lsn, lsn, one_range_per_timeline, options, within, write_wal,
};
use crate::support::PgCluster;
use crate::support::TestRepo;

/// A primary with a table `t` and a hot standby of it, both connected.
struct Pair {
    primary: PgCluster,
    standby: PgCluster,
    pdb: tokio_postgres::Client,
    sdb: tokio_postgres::Client,
}

async fn pair() -> Pair {
    let primary = PgCluster::start();
    let pdb = primary.connect().await;
    pdb.batch_execute("CREATE TABLE t (id serial PRIMARY KEY, v text)")
        .await
        .expect("create");
    let standby = tokio::task::block_in_place(|| PgCluster::standby_of(&primary));
    let sdb = standby.connect().await;
    Pair {
        primary,
        standby,
        pdb,
        sdb,
    }
}

impl Pair {
    /// Waits (bounded) until the standby replayed everything the primary
    /// flushed.
    async fn standby_caught_up(&self) -> Lsn {
        let target = flush_lsn(&self.pdb).await;
        eventually("the standby replays", LIMIT, async || {
            match lsn(&self.sdb, "SELECT pg_last_wal_replay_lsn()::text").await {
                Some(replayed) if replayed >= target => Ok(target),
                replayed => Err(format!("replayed {replayed:?} of {target}")),
            }
        })
        .await
    }

    fn promote(&mut self) {
        tokio::task::block_in_place(|| self.standby.promote());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_a_standby_promoted_while_streaming_onto_timeline_2() {
    let mut p = pair().await;
    let t = TestRepo::new().await;
    let repo = t.open().await;
    let store = WalStore::new(repo.clone(), "main");

    // pitr streams from the standby (its slot lives there).
    let mut streamer = Streamer::spawn(repo.clone(), options(&p.standby));
    write_wal(&p.pdb, 2).await;
    // A little more, so the switch point lies inside a segment.
    p.pdb
        .batch_execute("INSERT INTO t (v) VALUES ('before promotion')")
        .await
        .expect("insert");
    let tail = p.standby_caught_up().await;
    streamer.wait_flushed(&p.sdb, &store, tail).await;
    assert_eq!(streamer.rx.borrow().timeline, 1);

    p.promote();
    check_invariant(&p.sdb, &store).await;
    let target = write_wal(&p.sdb, 2).await;
    p.sdb
        .batch_execute("INSERT INTO t (v) VALUES ('after promotion')")
        .await
        .expect("insert");
    let target = target.max(flush_lsn(&p.sdb).await);
    streamer
        .wait(&p.sdb, &store, "timeline 2 stored", |pr| {
            pr.timeline == 2 && pr.flushed >= target
        })
        .await;
    streamer.stop().await.expect("no error");

    check_timeline_2(&p, &repo, &store, tail, target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_missing_a_promotion_finishes_timeline_1_then_follows() {
    let mut p = pair().await;
    let t = TestRepo::new().await;
    let repo = t.open().await;
    let store = WalStore::new(repo.clone(), "main");

    let mut streamer = Streamer::spawn(repo.clone(), options(&p.standby));
    write_wal(&p.pdb, 1).await;
    let first = p.standby_caught_up().await;
    streamer.wait_flushed(&p.sdb, &store, first).await;
    streamer.stop().await.expect("no error");

    // While pitr is down: more WAL on timeline 1 (held by the slot on the
    // standby), the promotion, and WAL on timeline 2.
    write_wal(&p.pdb, 2).await;
    p.pdb
        .batch_execute("INSERT INTO t (v) VALUES ('before promotion')")
        .await
        .expect("insert");
    let tail = p.standby_caught_up().await;
    p.promote();
    let target = write_wal(&p.sdb, 2).await;

    // pitr comes back: the server is on timeline 2, the repository ends
    // inside timeline 1. It streams timeline 1 to its end, then 2.
    let mut streamer = Streamer::spawn(repo.clone(), options(&p.standby));
    streamer
        .wait(&p.sdb, &store, "timeline 2 stored", |pr| {
            pr.timeline == 2 && pr.flushed >= target
        })
        .await;
    streamer.stop().await.expect("no error");

    check_timeline_2(&p, &repo, &store, tail, target).await;
}

/// What both tests check after the streamer stopped: the history file, the
/// end of timeline 1 up to the switch point, timeline 2 from the segment
/// holding the switch point, no gap on either, byte-identical segments, and
/// the slot on timeline 2.
async fn check_timeline_2(
    p: &Pair,
    repo: &pitr::repo::Repository,
    store: &WalStore,
    tail: Lsn,
    target: Lsn,
) {
    let pg_wal = p.standby.data_dir().join("pg_wal");
    // 00000002.history, byte-identical to the promoted standby's.
    let history_name = history_file_name(2);
    let history = fetch(store, &history_name).await;
    let on_disk = std::fs::read(pg_wal.join(&history_name)).expect("standby's history file");
    assert_eq!(history, on_disk, "{history_name} differs");
    let lineage = Lineage::parse(2, &history).expect("history parses");
    let switch = lineage.entries()[0].end.expect("timeline 1 ends");
    assert!(
        switch >= tail,
        "switch {switch}, timeline 1 had WAL up to {tail}"
    );
    eprintln!("timeline 1 ends at {switch}");

    // One range per timeline: timeline 1 up to (at least) the switch point,
    // timeline 2 from the start of the segment holding it.
    let ranges = one_range_per_timeline(store);
    assert_eq!(
        ranges.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![1, 2],
        "{ranges:?}"
    );
    assert!(
        ranges[0].2 >= switch,
        "timeline 1 stored to {}, switch {switch}",
        ranges[0].2
    );
    assert_eq!(ranges[1].1, switch.segment_start(SEG), "{ranges:?}");
    assert!(
        ranges[1].2 >= target,
        "timeline 2 stored to {}, target {target}",
        ranges[1].2
    );

    // The last segment of timeline 1 (partial unless the switch is on a
    // boundary) agrees with the primary's copy and with the head of
    // timeline 2's first segment, up to the switch point.
    let last1 = Segment::containing(1, Lsn(switch.0 - 1), SEG);
    let first2 = Segment::containing(2, switch, SEG);
    let upto = (switch.0 - last1.start(SEG).0) as usize;
    let tl1 = fetch(store, &last1.file_name(SEG)).await;
    let primary = std::fs::read(
        p.primary
            .data_dir()
            .join("pg_wal")
            .join(last1.file_name(SEG)),
    )
    .expect("the primary still has the segment of the switch point");
    assert!(
        tl1[..upto] == primary[..upto],
        "timeline 1's last segment differs from the primary's"
    );
    if switch.segment_offset(SEG) != 0 {
        let tl2 = fetch(store, &first2.file_name(SEG)).await;
        assert!(
            tl2[..upto] == tl1[..upto],
            "timeline 2's first segment does not start with timeline 1's WAL"
        );
    }

    // Every complete segment equals the server's file where it still exists.
    let tl2_segments = complete_segments(repo, 2);
    assert!(tl2_segments.len() >= 2, "{tl2_segments:?}");
    assert_eq!(tl2_segments[0], first2);
    let compared = compare_with_pg_wal(repo, store, 2, &pg_wal).await;
    assert!(compared >= 2, "compared {compared} timeline 2 segments");
    compare_with_pg_wal(repo, store, 1, &p.primary.data_dir().join("pg_wal")).await;
    // Each complete segment was decoded (CRC-checked) and indexed, the
    // first of timeline 2 too, though its head is timeline 1's WAL.
    for item in repo.catalog().items("pg/main/wal/").expect("items") {
        if item.kind == "wal" {
            let attrs: pitr::wal::WalAttrs =
                serde_json::from_value(item.attrs.clone()).expect("WAL attributes");
            let index = attrs.index.expect("complete segments are indexed");
            assert!(index.records > 0, "{}: {index:?}", item.name);
        }
    }

    // The slot now lives on timeline 2.
    let info = super::options(&p.standby).conninfo;
    let mut client = within("connect", ReplicationClient::connect(&info))
        .await
        .expect("connect");
    let slot = client
        .read_replication_slot("pitr")
        .await
        .expect("read slot")
        .expect("slot exists");
    eprintln!("slot after promotion: {slot:?}");
    assert_eq!(slot.restart_tli, Some(2), "{slot:?}");
    assert!(slot.restart_lsn.is_some_and(|l| l >= switch), "{slot:?}");
}
