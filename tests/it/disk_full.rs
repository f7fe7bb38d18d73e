//! A destination whose disk fills up: a real, tiny tmpfs. The write fails
//! with a clear error, nothing is committed, no partial object is left
//! behind, and once there is room the same writer succeeds.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use pitr::repo::{Chunking, RepoError, RepoOptions, Repository};
use pitr::ship::{Destination, Fanout, FsDestination, ShipError};

use crate::support::data;

/// A tmpfs of a few MiB, unmounted on drop.
pub struct SmallDisk {
    _dir: tempfile::TempDir,
    /// Where the tmpfs is mounted.
    pub mount: PathBuf,
}

impl SmallDisk {
    /// `None` when this process may not mount (not root): the test says so
    /// and checks nothing rather than pretending. CI runs as root.
    pub fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mount = dir.path().join("disk");
        std::fs::create_dir(&mount).expect("mkdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mount)
            .output()
            .expect("run mount");
        if !out.status.success() {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs here ({}); run the tests as root to cover disk-full",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(SmallDisk { _dir: dir, mount })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}

fn files_under(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                out.extend(files_under(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

#[tokio::test]
async fn a_full_destination_fails_clearly_and_leaves_nothing_half_written() {
    let Some(disk) = SmallDisk::mount("3m") else {
        return;
    };
    let state = tempfile::tempdir().expect("tempdir");
    let identity = age::x25519::Identity::generate();
    let opts = RepoOptions {
        recipients: vec![identity.to_public()],
        identities: vec![identity],
        key_file: None,
        state_dir: state.path().join("state"),
        zstd_level: 3,
        pack_size: 1 << 20,
    };
    let store = disk.mount.join("store");
    let fanout = Fanout::new(vec![
        Arc::new(FsDestination::new("small", store.clone())) as Arc<dyn Destination>
    ]);
    Repository::init(&fanout, &opts).await.expect("init");
    let repo = Repository::open(fanout, opts).await.expect("open");

    // 8 MiB of incompressible data into a 3 MiB disk.
    let big = data(99, 8 << 20, 0);
    let mut w = repo.writer();
    let result = async {
        w.put(
            "big",
            "test",
            serde_json::json!({}),
            Chunking::Fixed(131072),
            &big[..],
        )
        .await?;
        w.commit().await
    }
    .await;
    let err = result.expect_err("the disk is too small");
    assert!(
        matches!(err, RepoError::Ship(ShipError::NoSpace { .. })),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("no space left") && msg.contains("small") && msg.contains("packs/"),
        "{msg}"
    );
    w.abandon().await;
    assert!(
        repo.catalog().latest_item("big").expect("query").is_none(),
        "nothing committed"
    );
    // No temp file or torn object: every pack left is whole (its name is the
    // hash of its bytes); no commit references anything.
    for f in files_under(&store) {
        let name = f
            .strip_prefix(&store)
            .expect("under store")
            .to_string_lossy()
            .into_owned();
        assert!(!name.contains(".tmp"), "temp file left behind: {name}");
        if let Some(id) = name
            .strip_prefix("packs/")
            .and_then(|n| n.split('/').nth(1))
        {
            let bytes = std::fs::read(&f).expect("read pack");
            assert_eq!(
                blake3::hash(&bytes).to_hex().as_str(),
                id,
                "torn pack {name}"
            );
        }
        assert!(
            !name.starts_with("catalog/"),
            "a commit was written: {name}"
        );
    }

    // Room again (the orphan packs of the failed write are garbage a prune
    // removes; here we remove them by hand): a small item goes through.
    let _ = std::fs::remove_dir_all(store.join("packs"));
    let small = data(7, 100_000, 2);
    let mut w = repo.writer();
    w.put(
        "small",
        "test",
        serde_json::json!({}),
        Chunking::Cdc,
        &small[..],
    )
    .await
    .expect("put after space was freed");
    w.commit().await.expect("commit after space was freed");
    let item = repo
        .catalog()
        .latest_item("small")
        .expect("query")
        .expect("item");
    let mut out = Vec::new();
    repo.reader()
        .expect("reader")
        .read_to(&item.manifest, &mut out)
        .await
        .expect("read");
    assert_eq!(out, small);
}
