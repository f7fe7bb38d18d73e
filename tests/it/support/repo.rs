//! A throw-away repository on an fs destination, and deterministic data to
//! put in it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pitr::repo::{RepoOptions, Repository};
use pitr::ship::fault::FaultyDestination;
use pitr::ship::{Destination, Fanout, FsDestination};

/// A repository on an fs destination in a temp dir; `opts` holds its identity.
pub struct TestRepo {
    pub dir: tempfile::TempDir,
    pub opts: RepoOptions,
}

/// Options of a throw-away repository in `dir` (state in `dir/state`),
/// with a new identity that can both write and read.
pub fn test_options(dir: &Path, pack_size: usize) -> RepoOptions {
    let identity = age::x25519::Identity::generate();
    RepoOptions {
        recipients: vec![identity.to_public()],
        identities: vec![identity],
        key_file: None,
        state_dir: dir.join("state"),
        zstd_level: 3,
        pack_size,
    }
}

/// The path of some pack object in the fs destination rooted at `root`.
pub fn first_pack(root: &Path) -> PathBuf {
    let first = |dir: &Path| {
        std::fs::read_dir(dir)
            .expect("read_dir")
            .next()
            .expect("an entry")
            .expect("entry")
            .path()
    };
    first(&first(&root.join("packs")))
}

impl TestRepo {
    pub async fn new() -> TestRepo {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = test_options(dir.path(), 4 << 20);
        let t = TestRepo { dir, opts };
        Repository::init(&t.fanout(), &t.opts).await.expect("init");
        t
    }

    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub fn fanout(&self) -> Fanout {
        Fanout::new(vec![
            Arc::new(FsDestination::new("local", self.store())) as Arc<dyn Destination>
        ])
    }

    pub async fn open(&self) -> Repository {
        Repository::open(self.fanout(), self.opts.clone())
            .await
            .expect("open")
    }

    /// Opens the repository through a fault-injecting wrapper of its fs
    /// destination; returns the wrapper too, to plan its failures.
    pub async fn open_faulty(&self) -> (Repository, Arc<FaultyDestination<FsDestination>>) {
        let faulty = Arc::new(FaultyDestination::new(FsDestination::new(
            "local",
            self.store(),
        )));
        let fanout = Fanout::new(vec![faulty.clone() as Arc<dyn Destination>]);
        let repo = Repository::open(fanout, self.opts.clone())
            .await
            .expect("open");
        (repo, faulty)
    }

    /// Writes `pitr.toml` (and the identity beside it) for the binary to
    /// use this repository, with a `[[postgres]]` entry per `(name,
    /// conninfo)`; returns its path.
    pub fn write_config(&self, postgres: &[(&str, &str)]) -> PathBuf {
        let identity = self.dir.path().join("identity.txt");
        std::fs::write(
            &identity,
            format!(
                "{}\n",
                age::secrecy::ExposeSecret::expose_secret(&self.opts.identities[0].to_string())
            ),
        )
        .expect("write identity");
        let mut text = format!(
            "[repository]\nrecipients = [\"{}\"]\nidentity_file = \"{}\"\nstate_dir = \"{}\"\n\n\
             [[destination]]\nname = \"local\"\nkind = \"fs\"\npath = \"{}\"\n",
            self.opts.recipients[0],
            identity.display(),
            self.opts.state_dir.display(),
            self.store().display()
        );
        // Schedules stay off unless a test is about them: the defaults
        // (03:00, 04:00, 04:30, 05:15 UTC) would fire in the middle of some
        // run. Written before the entries, since tests append keys to the
        // last.
        text.push_str(
            "\n[verify]\nschedule = \"off\"\n\n[retention]\nschedule = \"off\"\n\n[scrub]\nschedule = \"off\"\n",
        );
        for (name, conninfo) in postgres {
            text.push_str(&format!(
                "\n[[postgres]]\nname = \"{name}\"\nconninfo = \"{conninfo}\"\nbase_backup = \"off\"\n"
            ));
        }
        let path = self.dir.path().join("pitr.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// Total bytes of every object in the store.
    pub fn store_bytes(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            std::fs::read_dir(p)
                .expect("read_dir")
                .map(|e| {
                    let e = e.expect("entry");
                    let m = e.metadata().expect("metadata");
                    if m.is_dir() { walk(&e.path()) } else { m.len() }
                })
                .sum()
        }
        walk(&self.store())
    }

    /// Makes the config at `config` (from [`Self::write_config`]) able to
    /// run test restores: a scratch directory PostgreSQL's user can reach
    /// (this directory is private to root), that user as `[verify]
    /// os_user`, and `schedule` (`"off"` for `pitr verify --restore`
    /// only). Returns the scratch directory.
    pub fn enable_test_restores(&self, config: &Path, schedule: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let scratch = self.dir.path().join("scratch");
        std::fs::create_dir_all(&scratch).expect("scratch");
        for p in [self.dir.path(), scratch.as_path()] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let os_user = if nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .is_some()
        {
            "postgres"
        } else {
            "nobody"
        };
        let text = std::fs::read_to_string(config).expect("config");
        let verify = "[verify]\nschedule = \"off\"\n";
        assert!(text.contains(verify), "{text}");
        let text = text.replacen(
            verify,
            &format!(
                "[verify]\nschedule = \"{schedule}\"\nscratch_dir = \"{}\"\nos_user = \"{os_user}\"\n",
                scratch.display()
            ),
            1,
        );
        std::fs::write(config, text).expect("write config");
        scratch
    }
}

/// Deterministic test data: `size` bytes from `seed`; `runs` > 0 makes it
/// compressible by repeating short runs.
pub fn data(seed: u64, size: usize, runs: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(size);
    let mut x = seed | 1;
    while out.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = if runs == 0 {
            8
        } else {
            1 + (x as usize % (runs as usize * 8))
        };
        if runs == 0 {
            out.extend_from_slice(&x.to_le_bytes());
        } else {
            out.extend(std::iter::repeat_n((x >> 56) as u8, n));
        }
    }
    out.truncate(size);
    out
}
