//! The repository format end to end on a real fs destination: round trips,
//! deduplication, every corruption case, catalog rebuild, init rules.

use std::path::PathBuf;
use std::sync::Arc;

use pitr::repo::{Chunking, RepoError, RepoOptions, Repository};
use pitr::ship::fault::FaultPlan;
use pitr::ship::{Destination, Fanout, FsDestination};
use proptest::prelude::*;

use crate::support::{TestRepo, data};

async fn put_commit(
    repo: &Repository,
    name: &str,
    chunking: Chunking,
    bytes: &[u8],
) -> pitr::repo::Manifest {
    let mut w = repo.writer();
    let m = w
        .put(name, "test", serde_json::json!({}), chunking, bytes)
        .await
        .expect("put");
    w.commit().await.expect("commit");
    m
}

async fn read_all(repo: &Repository, m: &pitr::repo::Manifest) -> Result<Vec<u8>, RepoError> {
    let mut out = Vec::new();
    repo.reader()?.read_to(m, &mut out).await?;
    Ok(out)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any input from 0 bytes to 64 MiB comes back byte-identical, with both
    /// chunkers, compressible or not.
    #[test]
    fn round_trip_any_size(
        size in prop_oneof![Just(0usize), 1usize..70_000, 70_000usize..4 << 20, (4usize << 20)..=(64 << 20)],
        seed in any::<u64>(),
        runs in 0u8..4,
        fixed in any::<bool>(),
    ) {
        rt().block_on(async {
            let t = TestRepo::new().await;
            let repo = t.open().await;
            let input = data(seed, size, runs);
            let chunking = if fixed { Chunking::PAGES } else { Chunking::Cdc };
            let m = put_commit(&repo, "item", chunking, &input).await;
            prop_assert_eq!(m.size, size as u64);
            let back = read_all(&repo, &m).await.expect("read back");
            prop_assert!(back == input, "content differs ({} bytes)", size);
            Ok(())
        })?;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn same_content_twice_is_stored_once() {
    let t = TestRepo::new().await;
    let repo = t.open().await;
    let input = data(7, 100 << 20, 0);
    let before = t.store_bytes();
    put_commit(&repo, "first", Chunking::Cdc, &input).await;
    let after_first = t.store_bytes();
    put_commit(&repo, "second", Chunking::Cdc, &input).await;
    let added = t.store_bytes() - after_first;
    assert!(
        after_first - before >= 100 << 20,
        "the first copy is stored"
    );
    assert!(
        added * 100 < (100 << 20),
        "the second copy added {added} bytes, over 1% of 100 MiB"
    );
    // A new writer process (fresh catalog sync from the store) deduplicates too.
    let again = t.open().await;
    let before_third = t.store_bytes();
    put_commit(&again, "third", Chunking::Cdc, &input).await;
    assert!((t.store_bytes() - before_third) * 100 < (100 << 20));
    let m = again
        .catalog()
        .latest_item("third")
        .expect("query")
        .expect("item");
    assert_eq!(read_all(&again, &m.manifest).await.expect("read"), input);
}

/// The only pack object in the store, for the corruption tests.
fn only_pack(t: &TestRepo) -> PathBuf {
    let mut packs = Vec::new();
    for d in std::fs::read_dir(t.store().join("packs")).expect("packs") {
        for f in std::fs::read_dir(d.expect("dir").path()).expect("pack dir") {
            packs.push(f.expect("file").path());
        }
    }
    assert_eq!(packs.len(), 1, "{packs:?}");
    packs.remove(0)
}

async fn one_item_repo(input: &[u8]) -> (TestRepo, Repository, pitr::repo::Manifest) {
    let t = TestRepo::new().await;
    let repo = t.open().await;
    let m = put_commit(&repo, "victim", Chunking::Cdc, input).await;
    (t, repo, m)
}

#[tokio::test]
async fn a_flipped_byte_is_reported_as_altered() {
    let input = data(1, 500_000, 0);
    let (t, repo, m) = one_item_repo(&input).await;
    let pack = only_pack(&t);
    let mut bytes = std::fs::read(&pack).expect("read");
    bytes[4000] ^= 0x20;
    std::fs::write(&pack, &bytes).expect("write");
    let err = read_all(&repo, &m).await.expect_err("must fail");
    assert!(matches!(err, RepoError::Tampered { .. }), "{err:?}");
    assert!(
        err.to_string().contains("packs/"),
        "names the object: {err}"
    );
    let report = repo.verify().await.expect("verify");
    assert_eq!(report.problems.len(), 1, "{report:?}");
    assert!(
        matches!(report.problems[0].error, RepoError::Tampered { .. }),
        "{report:?}"
    );
}

#[tokio::test]
async fn a_truncated_object_is_reported_as_truncated() {
    let input = data(2, 500_000, 0);
    let (t, repo, m) = one_item_repo(&input).await;
    let pack = only_pack(&t);
    let bytes = std::fs::read(&pack).expect("read");
    std::fs::write(&pack, &bytes[..bytes.len() / 2]).expect("write");
    let err = read_all(&repo, &m).await.expect_err("must fail");
    assert!(matches!(err, RepoError::Truncated { .. }), "{err:?}");
    assert!(
        err.to_string().contains("truncated") && err.to_string().contains("packs/"),
        "{err}"
    );
    let report = repo.verify().await.expect("verify");
    assert!(
        matches!(
            report.problems.first().map(|p| &p.error),
            Some(RepoError::Truncated { .. })
        ),
        "{report:?}"
    );
}

#[tokio::test]
async fn a_swapped_object_is_reported_as_swapped() {
    // Two items of equal size: each pack holds one chunk at the same offset,
    // so swapping the objects gives blobs that decrypt but are the wrong chunk.
    let t = TestRepo::new().await;
    let repo = t.open().await;
    let a = put_commit(&repo, "a", Chunking::Fixed(8192), &data(3, 8192, 0)).await;
    let b = put_commit(&repo, "b", Chunking::Fixed(8192), &data(4, 8192, 0)).await;
    let pa = repo
        .catalog()
        .chunk_location(&a.chunks[0].0)
        .expect("q")
        .expect("loc");
    let pb = repo
        .catalog()
        .chunk_location(&b.chunks[0].0)
        .expect("q")
        .expect("loc");
    let (fa, fb) = (
        t.store().join(pa.pack.object_name()),
        t.store().join(pb.pack.object_name()),
    );
    let (ba, bb) = (
        std::fs::read(&fa).expect("a"),
        std::fs::read(&fb).expect("b"),
    );
    std::fs::write(&fa, &bb).expect("swap");
    std::fs::write(&fb, &ba).expect("swap");
    let err = read_all(&repo, &a).await.expect_err("must fail");
    assert!(matches!(err, RepoError::Swapped { .. }), "{err:?}");
    assert!(err.to_string().contains(&pa.pack.object_name()), "{err}");
    let report = repo.verify().await.expect("verify");
    assert_eq!(report.problems.len(), 2, "{report:?}");
    assert!(
        report
            .problems
            .iter()
            .all(|p| matches!(p.error, RepoError::Swapped { .. }))
    );
}

#[tokio::test]
async fn a_wrong_identity_is_reported_as_such() {
    let input = data(5, 100_000, 1);
    let (t, _repo, m) = one_item_repo(&input).await;
    let mut opts = t.opts.clone();
    opts.identities = vec![age::x25519::Identity::generate()];
    let repo = Repository::open(t.fanout(), opts)
        .await
        .expect("open with the key in state_dir");
    let err = read_all(&repo, &m).await.expect_err("must fail");
    assert!(matches!(err, RepoError::WrongIdentity { .. }), "{err:?}");
    assert!(
        err.to_string().contains("identity") && err.to_string().contains("packs/"),
        "{err}"
    );
}

#[tokio::test]
async fn the_writer_cannot_read_its_own_backups() {
    let input = data(6, 10_000, 1);
    let (t, _repo, _m) = one_item_repo(&input).await;
    let mut opts = t.opts.clone();
    opts.identities.clear();
    let repo = Repository::open(t.fanout(), opts)
        .await
        .expect("open as the sidecar");
    assert!(matches!(repo.reader(), Err(RepoError::NoIdentity)));
    // Yet it writes and deduplicates.
    let before = t.store_bytes();
    put_commit(&repo, "again", Chunking::Cdc, &input).await;
    assert!(t.store_bytes() - before < 5_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_catalog_is_rebuilt_from_the_destination_alone() {
    let t = TestRepo::new().await;
    let repo = t.open().await;
    for i in 0..5u64 {
        let mut w = repo.writer();
        for j in 0..3u64 {
            let attrs = serde_json::json!({ "i": i, "j": j });
            let input = data(i * 10 + j, 50_000 * (j as usize + 1), (i % 3) as u8);
            w.put(
                &format!("item/{i}/{j}"),
                "test",
                attrs,
                Chunking::Cdc,
                &input[..],
            )
            .await
            .expect("put");
        }
        w.commit().await.expect("commit");
    }
    let original = repo.catalog().dump().expect("dump");
    let count = |kind: &str| {
        original
            .lines()
            .filter(|l| l.starts_with(&format!("{kind:?}\t")))
            .count()
    };
    assert_eq!(count("commit"), 5, "{original}");
    assert_eq!(count("item"), 15, "{original}");
    assert!(count("pack") >= 1 && count("chunk") >= 15, "{original}");
    drop(repo);

    // Lose the catalog only.
    std::fs::remove_file(t.opts.state_dir.join("catalog.db")).expect("rm");
    let rebuilt = t.open().await;
    assert_eq!(rebuilt.catalog().dump().expect("dump"), original);
    drop(rebuilt);

    // Lose the whole state dir: the identity recovers the key from the store.
    std::fs::remove_dir_all(&t.opts.state_dir).expect("rm state");
    let rebuilt = Repository::rebuild_catalog(t.fanout(), t.opts.clone())
        .await
        .expect("rebuild");
    assert_eq!(rebuilt.catalog().dump().expect("dump"), original);
    let item = rebuilt
        .catalog()
        .latest_item("item/4/2")
        .expect("q")
        .expect("item");
    assert_eq!(
        read_all(&rebuilt, &item.manifest).await.expect("read"),
        data(42, 150_000, 1)
    );
    drop(rebuilt);

    // Without key nor identity, a clear refusal.
    std::fs::remove_dir_all(&t.opts.state_dir).expect("rm state");
    let mut sidecar = t.opts.clone();
    sidecar.identities.clear();
    let err = Repository::open(t.fanout(), sidecar.clone())
        .await
        .expect_err("no key");
    assert!(matches!(err, RepoError::NoRepositoryKey { .. }), "{err:?}");
    assert!(err.to_string().contains("key_file"), "{err}");

    // With key_file, the sidecar rebuilds and keeps deduplicating.
    let key_file = t.dir.path().join("key");
    let key = Repository::rebuild_catalog(t.fanout(), t.opts.clone())
        .await
        .expect("rebuild")
        .key()
        .to_text();
    std::fs::write(&key_file, key).expect("write key");
    std::fs::remove_dir_all(&t.opts.state_dir).expect("rm state");
    sidecar.key_file = Some(key_file);
    let repo = Repository::open(t.fanout(), sidecar)
        .await
        .expect("open with key_file");
    assert_eq!(repo.catalog().dump().expect("dump"), original);
}

#[tokio::test]
async fn init_is_idempotent_and_refuses_other_recipients() {
    let t = TestRepo::new().await;
    let again = Repository::init(&t.fanout(), &t.opts)
        .await
        .expect("second init");
    assert!(!again.created && again.seeded.is_empty());

    let mut other = t.opts.clone();
    other.recipients = vec![age::x25519::Identity::generate().to_public()];
    let err = Repository::init(&t.fanout(), &other)
        .await
        .expect_err("other recipients");
    assert!(
        matches!(err, RepoError::RecipientsMismatch { .. }),
        "{err:?}"
    );
    let err = Repository::open(t.fanout(), other)
        .await
        .expect_err("other recipients");
    assert!(err.to_string().contains("recipients"), "{err}");

    // A destination added later is seeded with the same repository.
    let second = t.dir.path().join("second");
    let both = Fanout::new(vec![
        Arc::new(FsDestination::new("local", t.store())) as Arc<dyn Destination>,
        Arc::new(FsDestination::new("second", &second)),
    ]);
    let r = Repository::init(&both, &t.opts).await.expect("init both");
    assert_eq!(r.seeded, ["second"]);
    assert_eq!(
        std::fs::read(second.join("config")).expect("config"),
        std::fs::read(t.store().join("config")).expect("config")
    );
}

#[tokio::test]
async fn another_format_version_is_refused() {
    let t = TestRepo::new().await;
    let path = t.store().join("config");
    let text = std::fs::read_to_string(&path).expect("config");
    std::fs::write(&path, text.replace("\"version\": 1", "\"version\": 2")).expect("write");
    let err = Repository::open(t.fanout(), t.opts.clone())
        .await
        .expect_err("v2");
    assert!(
        matches!(
            err,
            RepoError::UnsupportedVersion {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("version 2"), "{err}");
}

#[tokio::test]
async fn an_uninitialized_destination_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fanout = Fanout::new(vec![
        Arc::new(FsDestination::new("empty", dir.path())) as Arc<dyn Destination>
    ]);
    let opts = RepoOptions {
        recipients: vec![age::x25519::Identity::generate().to_public()],
        identities: vec![],
        key_file: None,
        state_dir: dir.path().join("state"),
        zstd_level: 3,
        pack_size: 1 << 20,
    };
    let err = Repository::open(fanout, opts)
        .await
        .expect_err("not initialized");
    assert!(matches!(err, RepoError::NotInitialized { .. }), "{err:?}");
    assert!(err.to_string().contains("pitr init"), "{err}");
}

#[tokio::test]
async fn a_failed_upload_commits_nothing_and_a_retry_stores_everything() {
    let t = TestRepo::new().await;
    let (repo, faulty) = t.open_faulty().await;
    let input = data(9, 300_000, 2);
    faulty.set_plan(FaultPlan {
        fail_puts: 1,
        ..FaultPlan::default()
    });
    let mut w = repo.writer();
    w.put(
        "x",
        "test",
        serde_json::json!({}),
        Chunking::Cdc,
        &input[..],
    )
    .await
    .expect("put");
    let err = w.commit().await.expect_err("the upload fails");
    assert!(err.to_string().contains("injected"), "{err}");
    assert!(
        repo.catalog().items("").expect("items").is_empty(),
        "nothing recorded"
    );
    assert!(
        !t.store().join("catalog").exists()
            || std::fs::read_dir(t.store().join("catalog"))
                .expect("dir")
                .count()
                == 0
    );

    let m = put_commit(&repo, "x", Chunking::Cdc, &input).await;
    assert_eq!(read_all(&repo, &m).await.expect("read"), input);
}

/// Writers of one repository share its writer id: commits made at the same
/// time must still get distinct objects, or put-if-absent keeps only one
/// and the other's items vanish (the WAL streamer and a base backup commit
/// concurrently in one process).
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_commits_of_one_repository_all_land() {
    let t = TestRepo::new().await;
    let repo = t.open().await;
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let repo = repo.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10u64 {
                let mut writer = repo.writer();
                let body = data(w * 100 + i, 1000, 0);
                writer
                    .put(
                        &format!("c/{w}/{i}"),
                        "test",
                        serde_json::json!({}),
                        Chunking::Cdc,
                        &body[..],
                    )
                    .await
                    .expect("put");
                writer.commit().await.expect("commit");
            }
        }));
    }
    for task in tasks {
        task.await.expect("no panic");
    }
    assert_eq!(repo.catalog().items("c/").expect("items").len(), 40);
    let rebuilt = Repository::rebuild_catalog(t.fanout(), t.opts.clone())
        .await
        .expect("rebuild");
    assert_eq!(rebuilt.catalog().items("c/").expect("items").len(), 40);
}

/// A restore reads from the next destination when a copy is missing or
/// fails authentication, and fails naming the object only when no copy
/// checks out.
#[tokio::test(flavor = "multi_thread")]
async fn reads_fall_back_to_the_next_destination_past_a_bad_copy() {
    let t = TestRepo::new().await;
    let second = t.dir.path().join("second");
    let two = || {
        Fanout::new(vec![
            Arc::new(FsDestination::new("first", t.store())) as Arc<dyn Destination>,
            Arc::new(FsDestination::new("second", second.clone())) as Arc<dyn Destination>,
        ])
    };
    Repository::init(&two(), &t.opts)
        .await
        .expect("init the second");
    let repo = Repository::open(two(), t.opts.clone()).await.expect("open");
    let bytes = data(99, 3 << 20, 3);
    let m = put_commit(&repo, "x/item", Chunking::Cdc, &bytes).await;
    // A byte inside the first chunk's blob.
    let loc = repo
        .catalog()
        .chunk_location(&m.chunks[0].0)
        .expect("catalog")
        .expect("located");
    let pack = loc.pack.object_name();
    let at = (loc.entry.offset + u64::from(loc.entry.length) / 2) as usize;

    // The first copy flipped: read from the second.
    let first_copy = t.store().join(&pack);
    let original = std::fs::read(&first_copy).expect("read");
    let mut flipped = original.clone();
    flipped[at] ^= 0x04;
    std::fs::write(&first_copy, &flipped).expect("write");
    assert!(read_all(&repo, &m).await.expect("served by the second") == bytes);
    // (Without the second, that copy is an error: the flip was seen.)
    let alone = Repository::open(
        Fanout::new(vec![
            Arc::new(FsDestination::new("first", t.store())) as Arc<dyn Destination>
        ]),
        t.opts.clone(),
    )
    .await
    .expect("open");
    assert!(
        read_all(&alone, &m).await.is_err(),
        "the flipped copy alone fails"
    );
    // The first copy gone: the same.
    std::fs::remove_file(&first_copy).expect("rm");
    assert!(read_all(&repo, &m).await.expect("served by the second") == bytes);
    // Both bad: an error naming the object.
    std::fs::write(&first_copy, &flipped).expect("write");
    std::fs::write(second.join(&pack), &flipped).expect("write");
    let err = match read_all(&repo, &m).await {
        Ok(_) => panic!("no good copy, yet the read succeeded"),
        Err(e) => e,
    };
    assert!(err.to_string().contains(&pack), "{err}");
}
