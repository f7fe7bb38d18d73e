//! A whole repository written in format v1 is checked in under
//! `tests/golden/store-v1/`: every later build must still open it, rebuild its
//! catalog from it and read every item back byte-identical. The byte-level
//! encodings are pinned by the unit tests in `src/repo/golden.rs`.
//!
//! Regenerate (only for an intended format change, with a version bump) with
//! `PITR_UPDATE_GOLDEN=1 cargo test --test it golden`.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use pitr::repo::{Chunking, FORMAT_VERSION, RepoOptions, Repository};
use pitr::ship::{Destination, Fanout, FsDestination};

use crate::support::data;

fn golden_store() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/store-v1")
}

fn items() -> Vec<(&'static str, Chunking, Vec<u8>)> {
    vec![
        ("golden/empty", Chunking::Cdc, Vec::new()),
        (
            "golden/small",
            Chunking::Cdc,
            b"pitr golden item\n".to_vec(),
        ),
        ("golden/pages", Chunking::Fixed(8192), data(11, 40_000, 2)),
        ("golden/cdc", Chunking::Cdc, data(12, 300_000, 1)),
    ]
}

fn fanout(store: &Path) -> Fanout {
    Fanout::new(vec![
        Arc::new(FsDestination::new("golden", store.to_owned())) as Arc<dyn Destination>,
    ])
}

fn options(identity: age::x25519::Identity, state_dir: PathBuf) -> RepoOptions {
    RepoOptions {
        recipients: vec![identity.to_public()],
        identities: vec![identity],
        key_file: None,
        state_dir,
        zstd_level: 3,
        pack_size: 64 << 10,
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).expect("copy");
        }
    }
}

async fn regenerate() {
    let root = golden_store();
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("mkdir");
    let identity = age::x25519::Identity::generate();
    std::fs::write(
        root.join("identity.txt"),
        format!(
            "# TEST-ONLY identity of the golden store; it protects nothing.\n{}\n",
            age::secrecy::ExposeSecret::expose_secret(&identity.to_string())
        ),
    )
    .expect("write identity");
    let state = tempfile::tempdir().expect("tempdir");
    let opts = options(identity, state.path().to_owned());
    let store = root.join("store");
    Repository::init(&fanout(&store), &opts)
        .await
        .expect("init");
    let repo = Repository::open(fanout(&store), opts).await.expect("open");
    // Two commits, so the store holds more than one of each object kind.
    for batch in items().chunks(2) {
        let mut w = repo.writer();
        for (name, chunking, bytes) in batch {
            w.put(
                name,
                "golden",
                serde_json::json!({ "n": name }),
                *chunking,
                &bytes[..],
            )
            .await
            .expect("put");
        }
        w.commit().await.expect("commit");
    }
}

fn read_identity(path: &Path) -> age::x25519::Identity {
    let text = std::fs::read_to_string(path).expect("read identity");
    let line = text
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .expect("an identity line");
    age::x25519::Identity::from_str(line).expect("parse identity")
}

#[tokio::test]
async fn a_version_1_store_still_reads() {
    if std::env::var_os("PITR_UPDATE_GOLDEN").is_some() {
        regenerate().await;
    }
    // A copy: opening may create temp files, and the checked-in store must
    // stay byte-identical.
    let work = tempfile::tempdir().expect("tempdir");
    let store = work.path().join("store");
    copy_dir(&golden_store().join("store"), &store);
    let identity = read_identity(&golden_store().join("identity.txt"));
    let opts = options(identity, work.path().join("state"));

    // An empty state dir: the key comes from the store via the identity and
    // the catalog is rebuilt from the commits.
    let repo = Repository::open(fanout(&store), opts)
        .await
        .expect("open the v1 store");
    assert_eq!(repo.descriptor().version, FORMAT_VERSION);
    assert_eq!(repo.descriptor().version, 1);
    for (name, _, expected) in items() {
        let item = repo
            .catalog()
            .latest_item(name)
            .expect("query")
            .unwrap_or_else(|| panic!("{name} is in the golden store"));
        let mut out = Vec::new();
        repo.reader()
            .expect("reader")
            .read_to(&item.manifest, &mut out)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(out, expected, "{name} reads back byte-identical");
    }
    let report = repo.verify().await.expect("verify");
    assert!(report.problems.is_empty(), "{report:?}");
    assert!(report.chunks_checked >= 4, "{report:?}");
}
