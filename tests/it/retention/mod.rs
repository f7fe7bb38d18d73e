//! Retention and garbage collection: the repository-level rules on a real
//! fs destination (mark, grace, re-check, delete; a writer that decided to
//! reuse a chunk before the mark; a rebuild after deletions), and against
//! real clusters: backups forgotten, the kept ones restoring exactly, packs
//! deleted, and a base backup written while garbage is collected.

mod pg;
mod sqlite;

use std::path::Path;
use std::time::Duration;

use pitr::config::Config;
use pitr::repo::{Chunking, Forget, Repository};
use pitr::retention::{self, RunOptions, Scope};

use crate::repo::{TestRepo, data};

/// Runs retention through the API with grace `grace`.
async fn gc(repo: &Repository, config: &Config, grace: Duration) -> retention::RetentionPlan {
    let opts = RunOptions {
        now: jiff::Timestamp::now(),
        grace,
        scope: Scope::All,
    };
    let (plan, report) = retention::run(repo, config, &opts, false)
        .await
        .expect("retention run");
    let report = report.expect("applied");
    assert!(report.gc.failures.is_empty(), "{:?}", report.gc.failures);
    plan
}

async fn put(repo: &Repository, name: &str, bytes: Vec<u8>) {
    let mut w = repo.writer();
    w.put(
        name,
        "test",
        serde_json::json!({}),
        Chunking::Cdc,
        &bytes[..],
    )
    .await
    .expect("put");
    w.commit().await.expect("commit");
}

async fn read(repo: &Repository, name: &str) -> Vec<u8> {
    let item = repo
        .catalog()
        .latest_item(name)
        .expect("catalog")
        .unwrap_or_else(|| panic!("item {name} is in the catalog"));
    let mut out = Vec::new();
    repo.reader()
        .expect("reader")
        .read_to(&item.manifest, &mut out)
        .await
        .expect("read");
    out
}

/// Forgets every item of this name.
async fn forget(repo: &Repository, name: &str) {
    let items = repo.catalog().items(name).expect("items");
    let forget: Vec<Forget> = items
        .iter()
        .filter(|i| i.name == name)
        .map(|i| Forget {
            commit: i.commit.clone(),
            names: vec![i.name.clone()],
        })
        .collect();
    assert!(!forget.is_empty());
    repo.commit_removals(forget, Default::default(), jiff::Timestamp::now())
        .await
        .expect("forget");
}

fn pack_exists(store: &Path, id: &str) -> bool {
    store.join("packs").join(&id[..2]).join(id).exists()
}

fn config(t: &TestRepo) -> Config {
    let path = t.write_config(&[]);
    let mut text = std::fs::read_to_string(&path).expect("config");
    text.push_str(
        "\n[verify]\nschedule = \"off\"\n\n[retention]\nschedule = \"off\"\nkeep_last = 1\n",
    );
    std::fs::write(&path, text).expect("config");
    Config::load(&path).expect("config loads")
}

/// A writer reused a chunk before its pack was marked and commits after:
/// the pack is not deleted while the writer is in flight, and the re-check
/// unmarks it once the writer's item is seen.
#[tokio::test]
async fn a_pack_reused_before_its_mark_is_kept_and_unmarked() {
    let t = TestRepo::new().await;
    let config = config(&t);
    let repo = t.open().await;
    let a = data(1, 300_000, 0);
    put(&repo, "x/a", a.clone()).await;
    put(&repo, "x/b", data(2, 300_000, 0)).await;
    let first = repo
        .catalog()
        .latest_item("x/a")
        .unwrap()
        .unwrap()
        .manifest
        .chunks[0]
        .0;
    forget(&repo, "x/a").await;

    // The writer decides to reuse x/a's chunks (their pack is not marked).
    let mut w = repo.writer();
    w.put("x/a2", "test", serde_json::json!({}), Chunking::Cdc, &a[..])
        .await
        .expect("put");

    let plan = gc(&repo, &config, Duration::ZERO).await;
    assert_eq!(plan.gc.mark.len(), 1, "{}", plan.render());
    let pack = plan.gc.mark[0].id.clone();
    // Marked: a new writer would not reuse it, a reader still finds it.
    assert!(!repo.catalog().has_chunk(&first).unwrap());
    assert!(repo.catalog().holds_chunk(&first).unwrap());

    // Grace 0, yet the writer in flight began before the mark: kept.
    let plan = gc(&repo, &config, Duration::ZERO).await;
    assert!(plan.gc.delete.is_empty(), "{}", plan.render());
    assert_eq!(plan.gc.waiting.len(), 1, "{}", plan.render());
    assert!(pack_exists(&t.store(), &pack));

    w.commit().await.expect("commit");
    let plan = gc(&repo, &config, Duration::ZERO).await;
    assert_eq!(plan.gc.unmark.len(), 1, "{}", plan.render());
    assert!(plan.gc.delete.is_empty());
    assert!(pack_exists(&t.store(), &pack));
    assert_eq!(read(&repo, "x/a2").await, a);
    let verified = repo.verify().await.expect("verify");
    assert!(verified.problems.is_empty(), "{:?}", verified.problems);
}

/// After a mark, a writer stores the chunk again instead of reusing the
/// marked pack; the marked pack is deleted after the grace period, every
/// live item still reads, and a catalog rebuilt from the destination holds
/// the same live state.
#[tokio::test]
async fn a_marked_pack_is_not_reused_then_deleted_and_a_rebuild_agrees() {
    let t = TestRepo::new().await;
    let config = config(&t);
    let repo = t.open().await;
    let a = data(3, 300_000, 0);
    let b = data(4, 300_000, 0);
    put(&repo, "x/a", a.clone()).await;
    put(&repo, "x/b", b.clone()).await;
    let first_commit = repo.catalog().latest_item("x/a").unwrap().unwrap().commit;
    forget(&repo, "x/a").await;

    // A long grace: marked, not deleted.
    let plan = gc(&repo, &config, Duration::from_secs(3600)).await;
    assert_eq!(plan.gc.mark.len(), 1, "{}", plan.render());
    let pack = plan.gc.mark[0].id.clone();
    let plan = gc(&repo, &config, Duration::from_secs(3600)).await;
    assert!(plan.gc.delete.is_empty());
    assert_eq!(plan.gc.waiting.len(), 1);

    // The same content again: stored anew, not deduplicated against the
    // marked pack.
    let mut w = repo.writer();
    w.put("x/a3", "test", serde_json::json!({}), Chunking::Cdc, &a[..])
        .await
        .expect("put");
    let info = w.commit().await.expect("commit").expect("a commit");
    assert_eq!(info.packs, 1, "the chunks were stored again");
    assert!(info.pack_bytes > 100_000);

    let plan = gc(&repo, &config, Duration::ZERO).await;
    assert_eq!(
        plan.gc
            .delete
            .iter()
            .map(|p| p.id.clone())
            .collect::<Vec<_>>(),
        vec![pack.clone()],
        "{}",
        plan.render()
    );
    assert!(!pack_exists(&t.store(), &pack));
    assert_eq!(read(&repo, "x/a3").await, a);
    assert_eq!(read(&repo, "x/b").await, b);
    assert!(repo.catalog().latest_item("x/a").unwrap().is_none());
    let verified = repo.verify().await.expect("verify");
    assert!(verified.problems.is_empty(), "{:?}", verified.problems);
    // The commit that introduced x/a and its pack holds nothing live: gone.
    assert!(
        !t.store().join(&first_commit).exists(),
        "{first_commit} is deleted"
    );
    assert!(t.store().join("catalog").read_dir().unwrap().count() >= 4);

    let live = |r: &Repository| -> String {
        r.catalog()
            .dump()
            .expect("dump")
            .lines()
            .filter(|l| !l.starts_with("\"commit\""))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let original = live(&repo);
    drop(repo);
    let rebuilt = Repository::rebuild_catalog(t.fanout(), t.opts.clone())
        .await
        .expect("rebuild");
    assert_eq!(live(&rebuilt), original);
    assert_eq!(read(&rebuilt, "x/a3").await, a);
}

/// A destination that refuses a deletion: the run reports it and leaves
/// the pack marked (nothing recorded as deleted that a destination still
/// holds); the next run deletes it there and records it.
#[tokio::test]
async fn a_failed_deletion_is_reported_and_retried_next_run() {
    use std::sync::Arc;

    use pitr::ship::fault::{FaultPlan, FaultyDestination};
    use pitr::ship::{Destination, Fanout, FsDestination};

    let t = TestRepo::new().await;
    let config = config(&t);
    let second = t.dir.path().join("second");
    let faulty = Arc::new(FaultyDestination::new(FsDestination::new(
        "second", &second,
    )));
    let fanout = Fanout::new(vec![
        Arc::new(FsDestination::new("local", t.store())) as Arc<dyn Destination>,
        faulty.clone() as Arc<dyn Destination>,
    ]);
    Repository::init(&fanout, &t.opts).await.expect("init both");
    let repo = Repository::open(fanout, t.opts.clone())
        .await
        .expect("open");
    put(&repo, "x/a", data(5, 300_000, 0)).await;
    put(&repo, "x/b", data(6, 300_000, 0)).await;
    forget(&repo, "x/a").await;
    let plan = gc(&repo, &config, Duration::ZERO).await;
    let pack = plan.gc.mark[0].id.clone();

    faulty.set_plan(FaultPlan {
        fail_deletes: 1,
        ..FaultPlan::default()
    });
    let opts = RunOptions {
        now: jiff::Timestamp::now(),
        grace: Duration::ZERO,
        scope: Scope::All,
    };
    let (_, report) = retention::run(&repo, &config, &opts, false)
        .await
        .expect("a failed deletion does not fail the run");
    let report = report.expect("applied");
    assert_eq!(report.gc.deleted, 0);
    assert_eq!(report.gc.failures.len(), 1, "{:?}", report.gc.failures);
    assert!(
        report.gc.failures[0].starts_with("second: deleting packs/"),
        "{:?}",
        report.gc.failures
    );
    assert!(!pack_exists(&t.store(), &pack));
    assert!(pack_exists(&second, &pack), "the refused deletion left it");
    assert!(matches!(
        repo.catalog().pack_gc_states().unwrap().get(&pack),
        Some(pitr::catalog::PackGcState::Marked(_))
    ));

    let plan = gc(&repo, &config, Duration::ZERO).await;
    assert_eq!(plan.gc.delete.len(), 1, "retried: {}", plan.render());
    assert!(!pack_exists(&second, &pack));
    assert!(matches!(
        repo.catalog().pack_gc_states().unwrap().get(&pack),
        Some(pitr::catalog::PackGcState::Deleted(_))
    ));
}
