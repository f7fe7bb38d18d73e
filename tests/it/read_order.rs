//! Reads go to the fastest healthy destination: with the first-configured
//! destination slow (the fault layer delays its reads), an item is served by
//! the second; a missing or tampered copy on the serving destination is
//! skipped for the other's, and the skip is recorded naming both.

use std::sync::Arc;
use std::time::Duration;

use pitr::repo::{Chunking, Manifest, RepoOptions, Repository};
use pitr::ship::fault::{FaultPlan, FaultyDestination};
use pitr::ship::{Destination, DestinationHealth, Fanout, FsDestination, Tracked};

use crate::support::data;

type Slow = Tracked<FaultyDestination<FsDestination>>;

struct Setup {
    dir: tempfile::TempDir,
    opts: RepoOptions,
    manifest: Manifest,
    input: Vec<u8>,
}

/// A repository on fs destinations `a` and `b` holding one 2 MiB item of
/// 64 chunks.
async fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = crate::support::test_options(dir.path(), 4 << 20);
    let fanout = Fanout::new(vec![
        Arc::new(FsDestination::new("a", dir.path().join("a"))) as Arc<dyn Destination>,
        Arc::new(FsDestination::new("b", dir.path().join("b"))),
    ]);
    Repository::init(&fanout, &opts).await.expect("init");
    let repo = Repository::open(fanout, opts.clone()).await.expect("open");
    let input = data(42, 2 << 20, 0);
    let mut w = repo.writer();
    let manifest = w
        .put(
            "item",
            "test",
            serde_json::json!({}),
            Chunking::Fixed(32 << 10),
            &input[..],
        )
        .await
        .expect("put");
    w.commit().await.expect("commit");
    Setup {
        dir,
        opts,
        manifest,
        input,
    }
}

/// Opens the repository with both destinations tracked and behind the fault
/// layer, `a` answering every read `delay` late.
async fn open(s: &Setup, delay: Duration) -> (Repository, Arc<Slow>, Arc<Slow>) {
    let track = |name: &str, delay| {
        let f = FaultyDestination::new(FsDestination::new(name, s.dir.path().join(name)));
        f.set_plan(FaultPlan {
            read_delay: delay,
            ..FaultPlan::default()
        });
        let h = DestinationHealth::new(name);
        (Arc::new(Tracked::new(f, h.clone())), h)
    };
    let (a, ha) = track("a", delay);
    let (b, hb) = track("b", Duration::ZERO);
    let fanout = Fanout::new(vec![
        a.clone() as Arc<dyn Destination>,
        b.clone() as Arc<dyn Destination>,
    ])
    .with_health(vec![ha, hb]);
    let repo = Repository::open(fanout, s.opts.clone())
        .await
        .expect("open");
    (repo, a, b)
}

async fn read(repo: &Repository, m: &Manifest) -> Vec<u8> {
    let mut out = Vec::new();
    repo.reader()
        .expect("reader")
        .read_to(m, &mut out)
        .await
        .expect("read");
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_are_served_by_the_faster_destination() {
    let s = setup().await;
    let (repo, a, b) = open(&s, Duration::from_millis(300)).await;
    let (a0, b0) = (a.inner().gets_seen(), b.inner().gets_seen());
    assert_eq!(read(&repo, &s.manifest).await, s.input);
    let from_a = a.inner().gets_seen() - a0;
    let from_b = b.inner().gets_seen() - b0;
    // Until `a` is timed, the few chunks read ahead may go to it (each a
    // key prefix, a wrapped key and a blob); the rest go to `b`.
    assert!(from_a <= 16, "the slow destination served {from_a} reads");
    assert!(
        from_b >= 64 - 4,
        "the fast destination served only {from_b} reads"
    );
    let health = repo.fanout().destination_health();
    let (la, lb) = (
        health[0].read_latency_us.expect("a timed"),
        health[1].read_latency_us.expect("b timed"),
    );
    assert!(la > lb, "a {la} µs, b {lb} µs");
    assert!(
        repo.skipped_reads().is_empty(),
        "{:?}",
        repo.skipped_reads()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_copy_is_skipped_and_named() {
    let s = setup().await;
    let pack = crate::support::first_pack(&s.dir.path().join("b"));
    let object = pack
        .strip_prefix(s.dir.path().join("b"))
        .expect("under b")
        .to_string_lossy()
        .into_owned();
    // Tampered on the fast destination: flip a byte in the middle.
    let mut bytes = std::fs::read(&pack).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&pack, bytes).expect("write");
    let (repo, a, b) = open(&s, Duration::from_millis(400)).await;
    assert_eq!(read(&repo, &s.manifest).await, s.input);
    let skipped = repo.skipped_reads();
    let hit = skipped
        .iter()
        .find(|k| k.destination == "b" && k.object == object)
        .unwrap_or_else(|| {
            panic!(
                "b's tampered copy is not named: {skipped:?}; gets: a {}, b {}",
                a.inner().gets_seen(),
                b.inner().gets_seen()
            )
        });
    assert_eq!(hit.served_by, "a");
    assert!(hit.why.contains(&object), "{hit:?}");

    // Missing on the fast destination: the whole pack is gone.
    std::fs::remove_file(&pack).expect("delete");
    let (repo, a, _b) = open(&s, Duration::from_millis(400)).await;
    // `a` has been timed slow; now it answers at once, so the test is quick.
    a.inner().set_plan(FaultPlan::default());
    assert_eq!(read(&repo, &s.manifest).await, s.input);
    let skipped = repo.skipped_reads();
    let hit = skipped
        .iter()
        .find(|k| k.destination == "b" && k.object == object)
        .unwrap_or_else(|| panic!("b's missing copy is not named: {skipped:?}"));
    assert!(hit.why.contains("does not exist"), "{hit:?}");
    assert_eq!(hit.served_by, "a");
}

/// Every file under `dir`, relative to it.
fn files(dir: &std::path::Path) -> std::collections::BTreeSet<std::path::PathBuf> {
    let mut out = std::collections::BTreeSet::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).expect("under dir").to_owned());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lagging_first_destination_does_not_hide_newer_commits() {
    let s = setup().await;
    let (repo, _a, _b) = open(&s, Duration::ZERO).await;
    let catalog_a = s.dir.path().join("a/catalog");
    let before = files(&catalog_a);
    let mut w = repo.writer();
    w.put(
        "newer",
        "test",
        serde_json::json!({}),
        Chunking::Fixed(32 << 10),
        &data(7, 64 << 10, 0)[..],
    )
    .await
    .expect("put");
    w.commit().await.expect("commit");
    // `a`, listed first, lags: the newest commit reached only `b`.
    let newer: Vec<_> = files(&catalog_a).difference(&before).cloned().collect();
    assert!(!newer.is_empty(), "the commit is on a");
    for f in &newer {
        std::fs::remove_file(catalog_a.join(f)).expect("delete");
    }
    // A reader with an empty state directory (another host, a restore)
    // builds its catalog from both destinations.
    let mut opts = s.opts.clone();
    opts.state_dir = s.dir.path().join("reader-state");
    let fanout = Fanout::new(vec![
        Arc::new(FsDestination::new("a", s.dir.path().join("a"))) as Arc<dyn Destination>,
        Arc::new(FsDestination::new("b", s.dir.path().join("b"))),
    ]);
    let reader = Repository::open(fanout, opts).await.expect("open");
    reader.sync_catalog().await.expect("sync");
    let names: Vec<String> = reader
        .catalog()
        .items("")
        .expect("items")
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert!(
        names.iter().any(|n| n == "newer"),
        "the commit only b holds is missing: {names:?}"
    );
    assert!(names.iter().any(|n| n == "item"), "{names:?}");
}
