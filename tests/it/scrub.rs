//! The background scrub on two real fs destinations: the listing pass finds
//! missing and short objects and repairs them from the other destination;
//! the content window finds a flipped byte (same size, invisible to a
//! listing) over successive bounded runs; what cannot be repaired is named.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pitr::repo::{Chunking, Repository, ScrubOptions};
use pitr::ship::fault::{FaultPlan, FaultyDestination};
use pitr::ship::{Destination, Fanout, FsDestination};

use crate::support::data;

/// A repository on destinations `a` (plain) and `b` (behind the fault
/// layer), with five committed items in at least three packs.
struct TwoDests {
    dir: tempfile::TempDir,
    b: Arc<FaultyDestination<FsDestination>>,
    repo: Repository,
}

impl TwoDests {
    async fn new() -> TwoDests {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = crate::support::test_options(dir.path(), 1 << 20);
        let a = Arc::new(FsDestination::new("a", dir.path().join("a"))) as Arc<dyn Destination>;
        let b = Arc::new(FaultyDestination::new(FsDestination::new(
            "b",
            dir.path().join("b"),
        )));
        let fanout = Fanout::new(vec![a, b.clone() as Arc<dyn Destination>]);
        Repository::init(&fanout, &opts).await.expect("init");
        let repo = Repository::open(fanout, opts).await.expect("open");
        for i in 0..5u64 {
            let mut w = repo.writer();
            w.put(
                &format!("item-{i}"),
                "test",
                serde_json::json!({}),
                Chunking::Fixed(64 << 10),
                &data(100 + i, 200 << 10, 0)[..],
            )
            .await
            .expect("put");
            w.commit().await.expect("commit");
        }
        TwoDests { dir, b, repo }
    }

    fn root(&self, dest: &str) -> PathBuf {
        self.dir.path().join(dest)
    }

    /// The pack objects, sorted.
    fn packs(&self) -> Vec<String> {
        let mut out = Vec::new();
        let base = self.root("a");
        for sub in std::fs::read_dir(base.join("packs")).expect("packs") {
            let sub = sub.expect("entry").path();
            for f in std::fs::read_dir(&sub).expect("pack dir") {
                let f = f.expect("entry").path();
                out.push(
                    f.strip_prefix(&base)
                        .expect("under root")
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
        out.sort();
        out
    }

    fn commits(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.root("a").join("catalog"))
            .expect("catalog")
            .map(|e| {
                format!(
                    "catalog/{}",
                    e.expect("entry").file_name().to_string_lossy()
                )
            })
            .collect();
        out.sort();
        out
    }
}

fn flip_byte(path: &Path) {
    let mut bytes = std::fs::read(path).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(path, bytes).expect("write");
}

fn truncate(path: &Path) {
    let bytes = std::fs::read(path).expect("read");
    std::fs::write(path, &bytes[..bytes.len() / 3]).expect("write");
}

#[tokio::test(flavor = "multi_thread")]
async fn scrub_repairs_what_the_listing_shows_and_reads_the_rest_over_runs() {
    let t = TwoDests::new().await;
    let packs = t.packs();
    let commits = t.commits();
    assert!(packs.len() >= 3, "{packs:?}");
    std::fs::remove_file(t.root("a").join(&packs[0])).expect("delete");
    truncate(&t.root("b").join(&packs[1]));
    std::fs::remove_file(t.root("b").join(&commits[0])).expect("delete");
    flip_byte(&t.root("a").join(&packs[2]));

    // Budget 0: the listing pass alone finds and fixes the missing and the
    // short objects, and reads nothing else.
    let r = t
        .repo
        .scrub(ScrubOptions { read_budget: 0 })
        .await
        .expect("scrub");
    assert_eq!(r.destinations_listed, ["a", "b"]);
    assert_eq!(r.listing_problems.len(), 3, "{r:?}");
    let fixed: Vec<(&str, &str)> = r
        .repaired
        .iter()
        .map(|x| (x.destination.as_str(), x.object.as_str()))
        .collect();
    assert!(fixed.contains(&("a", packs[0].as_str())), "{r:?}");
    assert!(fixed.contains(&("b", packs[1].as_str())), "{r:?}");
    assert!(fixed.contains(&("b", commits[0].as_str())), "{r:?}");
    assert_eq!(fixed.len(), 3, "{r:?}");
    assert!(r.unrepaired.is_empty(), "{r:?}");
    assert_eq!(r.content_checked, 0);
    let v = t.repo.verify().await.expect("verify");
    assert_eq!(v.problems.len(), 1, "only the flipped byte is left: {v:?}");
    assert_eq!(v.problems[0].object, packs[2]);

    // A budget of one byte reads one object per run, in turn; within one
    // round of the object list the flipped pack is found and repaired.
    let mut found = false;
    let mut wrapped = false;
    let mut runs = 0;
    while runs <= r.objects && !(found && wrapped) {
        let r = t
            .repo
            .scrub(ScrubOptions { read_budget: 1 })
            .await
            .expect("scrub");
        runs += 1;
        assert_eq!(r.content_checked, 1, "{r:?}");
        assert!(r.unrepaired.is_empty(), "{r:?}");
        wrapped |= r.wrapped;
        if let Some(x) = r.repaired.first() {
            assert_eq!(
                (x.destination.as_str(), x.object.as_str()),
                ("a", packs[2].as_str())
            );
            assert!(x.was.starts_with("damaged"), "{x:?}");
            assert_eq!(x.from, "b");
            found = true;
        }
    }
    assert!(found, "the flipped pack was not found in {runs} runs");
    assert!(wrapped, "the window did not come round in {runs} runs");

    let v = t.repo.verify().await.expect("verify");
    assert!(v.problems.is_empty(), "{v:?}");
    let r = t
        .repo
        .scrub(ScrubOptions {
            read_budget: u64::MAX,
        })
        .await
        .expect("scrub");
    assert_eq!(r.content_checked, r.objects, "{r:?}");
    assert!(r.repaired.is_empty() && r.unrepaired.is_empty(), "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn what_the_scrub_cannot_repair_is_named() {
    let t = TwoDests::new().await;
    let packs = t.packs();
    flip_byte(&t.root("a").join(&packs[2]));
    flip_byte(&t.root("b").join(&packs[2]));
    t.b.set_plan(FaultPlan {
        fail_lists: usize::MAX,
        ..FaultPlan::default()
    });
    let r = t
        .repo
        .scrub(ScrubOptions {
            read_budget: u64::MAX,
        })
        .await
        .expect("scrub");
    assert_eq!(r.destinations_listed, ["a"]);
    let listing = r
        .unrepaired
        .iter()
        .find(|u| u.object == "(listing)")
        .expect("the listing failure is reported");
    assert_eq!(listing.destination, "b");
    assert!(listing.why.contains("cannot be listed"), "{listing:?}");
    for dest in ["a", "b"] {
        let u = r
            .unrepaired
            .iter()
            .find(|u| u.destination == dest && u.object == packs[2])
            .unwrap_or_else(|| panic!("{dest} {} not reported: {r:?}", packs[2]));
        assert!(u.why.contains("no destination holds a good copy"), "{u:?}");
    }
    assert!(r.repaired.is_empty(), "nothing damaged is spread: {r:?}");
}

/// `pitr run` with the scrub scheduled every minute on a single fs
/// destination whose only copy of a pack is damaged: `/health` fails the
/// `scrub` check naming the destination and the object, and `/metrics`
/// counts it.
#[tokio::test(flavor = "multi_thread")]
async fn the_sidecar_scrub_reports_what_it_cannot_repair() {
    let t = crate::support::TestRepo::new().await;
    {
        let repo = t.open().await;
        let mut w = repo.writer();
        w.put(
            "victim",
            "test",
            serde_json::json!({}),
            Chunking::Fixed(64 << 10),
            &data(9, 256 << 10, 0)[..],
        )
        .await
        .expect("put");
        w.commit().await.expect("commit");
    }
    let pack = crate::support::first_pack(&t.store());
    let object = pack
        .strip_prefix(t.store())
        .expect("in the store")
        .to_string_lossy()
        .into_owned();
    flip_byte(&pack);

    let db = t.dir.path().join("app.db");
    rusqlite::Connection::open(&db)
        .and_then(|c| c.execute_batch("CREATE TABLE x (a); INSERT INTO x VALUES (1);"))
        .expect("sqlite");
    let cfg = crate::sqlite::sqlite_config(&t, "app", &db);
    let port = crate::support::pg::free_port();
    // /health's words (the summary checked below) are for the token only.
    let token = "a-long-random-test-token-0123456789";
    let text = std::fs::read_to_string(&cfg).expect("config").replace(
        "[scrub]\nschedule = \"off\"",
        "[scrub]\nschedule = \"* * * * *\"",
    );
    std::fs::write(
        &cfg,
        format!("{text}\n[health]\nlisten = \"127.0.0.1:{port}\"\nrestore_token = \"{token}\"\n"),
    )
    .expect("config");
    let sidecar = crate::support::Sidecar::start(&cfg);
    let client = reqwest::Client::new();
    let log = || sidecar.log_text();
    let problem = crate::support::eventually(
        "a failing scrub check",
        std::time::Duration::from_secs(100),
        async || {
            let body: Option<serde_json::Value> = async {
                let r = client
                    .get(format!("http://127.0.0.1:{port}/health"))
                    .bearer_auth(token)
                    .timeout(std::time::Duration::from_secs(5))
                    .send()
                    .await
                    .ok()?;
                serde_json::from_str(&r.text().await.ok()?).ok()
            }
            .await;
            let found = body.as_ref().and_then(|b| {
                b["problems"]
                    .as_array()?
                    .iter()
                    .find(|c| c["id"] == "scrub")
                    .cloned()
            });
            found.ok_or_else(|| crate::support::with_log(format!("{body:?}"), &log))
        },
    )
    .await;
    let summary = problem["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains(&object) && summary.contains("in local"),
        "{summary}"
    );
    assert!(summary.contains("pitr repair"), "{summary}");
    let metrics = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("pitr_scrub_unrepaired_objects") && l.ends_with(" 1")),
        "{metrics}"
    );
    sidecar.stop();
}
