//! `pitr wal-fetch`, PostgreSQL's `restore_command`, on real WAL: segments
//! written by a real server, stored through the repository, fetched back by
//! the binary byte-identical and readable by `pg_waldump`; a partial segment
//! served zero-padded; exit 1 for what is not there; a damaged store fails
//! loudly and leaves no file behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use pitr::pg::Segment;
use pitr::repo::{RepoOptions, Repository};
use pitr::ship::{Destination, Fanout, FsDestination};
use pitr::wal::WalStore;

use crate::support::PgCluster;

const SEG: u64 = 16 << 20;

/// A repository with a config file the binary can use (also the `versions`
/// tests').
pub(crate) struct Setup {
    dir: tempfile::TempDir,
    pub(crate) opts: RepoOptions,
}

impl Setup {
    pub(crate) async fn new(conninfo: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let (identity, _) = crate::support::new_identity(dir.path());
        std::fs::write(
            dir.path().join("pitr.toml"),
            format!(
                r#"[repository]
recipients = ["{}"]
identity_file = "identity.txt"
state_dir = "state"

[[destination]]
name = "local"
kind = "fs"
path = "store"

[[postgres]]
name = "main"
conninfo = "{conninfo}"
base_backup = "off"

[verify]
schedule = "off"

[retention]
schedule = "off"

[scrub]
schedule = "off"
"#,
                identity.to_public()
            ),
        )
        .expect("write config");
        let opts = RepoOptions {
            recipients: vec![identity.to_public()],
            identities: vec![identity],
            key_file: None,
            state_dir: dir.path().join("writer-state"),
            zstd_level: 3,
            pack_size: 16 << 20,
        };
        let s = Setup { dir, opts };
        Repository::init(&s.fanout(), &s.opts).await.expect("init");
        s
    }

    pub(crate) fn fanout(&self) -> Fanout {
        Fanout::new(vec![
            Arc::new(FsDestination::new("local", self.dir.path().join("store")))
                as Arc<dyn Destination>,
        ])
    }

    /// The config file the binary reads.
    pub(crate) fn config_path(&self) -> PathBuf {
        self.dir.path().join("pitr.toml")
    }

    pub(crate) fn wal_fetch(&self, file: &str, out: &Path) -> Output {
        Command::new(env!("CARGO_BIN_EXE_pitr"))
            .arg("wal-fetch")
            .arg("-c")
            .arg(self.dir.path().join("pitr.toml"))
            .arg(file)
            .arg(out)
            .env_remove("PITR_CONFIG")
            .output()
            .expect("run pitr wal-fetch")
    }
}

/// Completed segments of a real server, oldest first, with their bytes.
fn completed_segments(pg: &PgCluster) -> Vec<(String, Vec<u8>)> {
    pg.psql("CREATE TABLE t (id serial PRIMARY KEY, v text)");
    for round in 0..3 {
        pg.psql(&format!(
            "INSERT INTO t (v) SELECT md5(i::text || '{round}') FROM generate_series(1, 20000) i"
        ));
        pg.psql("SELECT pg_switch_wal()");
    }
    let current = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    let current = current.trim();
    let wal = pg.data_dir().join("pg_wal");
    let mut names: Vec<String> = std::fs::read_dir(&wal)
        .expect("read pg_wal")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24 && n.as_str() < current)
        .collect();
    names.sort();
    assert!(names.len() >= 2, "the server completed segments: {names:?}");
    names
        .into_iter()
        .map(|n| {
            let bytes = std::fs::read(wal.join(&n)).expect("read segment");
            assert_eq!(bytes.len() as u64, SEG);
            (n, bytes)
        })
        .collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn wal_fetch_serves_real_segments_byte_identical() {
    let pg = PgCluster::start();
    let segments = completed_segments(&pg);
    let setup = Setup::new(&pg.conninfo("postgres")).await;
    let repo = Repository::open(setup.fanout(), setup.opts.clone())
        .await
        .expect("open");
    let store = WalStore::new(repo.clone(), "main");
    let mut w = repo.writer();
    for (name, bytes) in &segments {
        let seg = Segment::parse(name, SEG).expect("segment name");
        store
            .put_bytes(&mut w, seg, SEG, false, bytes, None)
            .await
            .expect("put segment");
    }
    // The segment after the last one, only partly there.
    let (last_name, last_bytes) = segments.last().expect("one");
    let next = Segment::parse(last_name, SEG).expect("name").next();
    let partial = &last_bytes[..3 << 20];
    store
        .put_bytes(&mut w, next, SEG, true, partial, None)
        .await
        .expect("put partial");
    let history = b"1\t0/3000000\tno recovery target specified\n";
    store
        .put_history(&mut w, 2, history)
        .await
        .expect("put history");
    w.commit().await.expect("commit");
    drop(w);

    let out = tempfile::tempdir().expect("tempdir");
    // Every complete segment: byte-identical, and pg_waldump reads it whole.
    for (name, bytes) in &segments {
        let target = out.path().join(name);
        let o = setup.wal_fetch(name, &target);
        assert_eq!(o.status.code(), Some(0), "{name}: {}", stderr(&o));
        assert!(
            std::fs::read(&target).expect("fetched") == *bytes,
            "{name} differs"
        );
    }
    let first = &segments[0].0;
    let last = &segments[segments.len() - 1].0;
    let dump = Command::new(pg.bin("pg_waldump"))
        .arg("--path")
        .arg(out.path())
        .arg(first)
        .arg(last)
        .output()
        .expect("run pg_waldump");
    let text = String::from_utf8_lossy(&dump.stdout);
    assert!(
        text.lines().filter(|l| l.starts_with("rmgr:")).count() > 1000,
        "pg_waldump read the fetched WAL: {}",
        String::from_utf8_lossy(&dump.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&dump.stderr).contains("invalid"),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );

    // The partial segment: its bytes, then zeros to the segment size.
    let next_name = next.file_name(SEG);
    let target = out.path().join(&next_name);
    let o = setup.wal_fetch(&next_name, &target);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("partial"), "{}", stderr(&o));
    let got = std::fs::read(&target).expect("fetched partial");
    assert_eq!(got.len() as u64, SEG);
    assert!(got[..partial.len()] == *partial);
    assert!(got[partial.len()..].iter().all(|b| *b == 0));

    // A history file.
    let target = out.path().join("00000002.history");
    let o = setup.wal_fetch("00000002.history", &target);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(std::fs::read(&target).expect("history"), history);

    // What is not there: exit 1, PostgreSQL's "no such file", nothing written.
    for missing in [
        "0000000100000000000000FF",
        "00000003.history",
        "000000010000000000000001.00000028.backup",
    ] {
        let target = out.path().join("missing");
        let o = setup.wal_fetch(missing, &target);
        assert_eq!(o.status.code(), Some(1), "{missing}: {}", stderr(&o));
        assert!(!target.exists());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wal_fetch_of_a_damaged_store_fails_loudly_and_writes_nothing() {
    let pg = PgCluster::start();
    let segments = completed_segments(&pg);
    let setup = Setup::new(&pg.conninfo("postgres")).await;
    let repo = Repository::open(setup.fanout(), setup.opts.clone())
        .await
        .expect("open");
    let store = WalStore::new(repo.clone(), "main");
    let (name, bytes) = &segments[0];
    let mut w = repo.writer();
    store
        .put_bytes(
            &mut w,
            Segment::parse(name, SEG).expect("name"),
            SEG,
            false,
            bytes,
            None,
        )
        .await
        .expect("put");
    w.commit().await.expect("commit");
    drop(w);

    // Flip a byte in the middle of the (only) pack.
    let packs: Vec<PathBuf> = walk(&setup.dir.path().join("store/packs"));
    assert_eq!(packs.len(), 1);
    let mut pack = std::fs::read(&packs[0]).expect("read pack");
    let mid = pack.len() / 2;
    pack[mid] ^= 0x01;
    std::fs::write(&packs[0], &pack).expect("write pack");

    let out = tempfile::tempdir().expect("tempdir");
    let target = out.path().join(name);
    let o = setup.wal_fetch(name, &target);
    let err = stderr(&o);
    // Above 125: PostgreSQL aborts recovery instead of taking the failure
    // for the end of the WAL.
    assert_eq!(
        o.status.code(),
        Some(255),
        "a damaged object is neither success nor 'not there': {:?} {err}",
        o.status
    );
    assert!(
        err.contains("packs/") && err.contains("authenticate"),
        "{err}"
    );
    assert!(!target.exists(), "no file PostgreSQL could replay");
    assert_eq!(
        std::fs::read_dir(out.path()).expect("ls").count(),
        0,
        "no temp file left behind"
    );
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).expect("read_dir").flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn wal_fetch_prefetches_the_next_segments() {
    let pg = PgCluster::start();
    let segments = completed_segments(&pg);
    let setup = Setup::new(&pg.conninfo("postgres")).await;
    let repo = Repository::open(setup.fanout(), setup.opts.clone())
        .await
        .expect("open");
    let store = WalStore::new(repo.clone(), "main");
    let mut w = repo.writer();
    for (name, bytes) in &segments {
        let seg = Segment::parse(name, SEG).expect("segment name");
        store
            .put_bytes(&mut w, seg, SEG, false, bytes, None)
            .await
            .expect("put segment");
    }
    w.commit().await.expect("commit");
    drop(w);

    let out = tempfile::tempdir().expect("tempdir");
    let (first, _) = &segments[0];
    let o = setup.wal_fetch(first, &out.path().join(first));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // The detached prefetcher spools the following segments (bounded wait).
    let spool = setup.dir.path().join("state/prefetch/main");
    let expected: Vec<&String> = segments[1..].iter().take(4).map(|(n, _)| n).collect();
    crate::support::eventually_blocking(
        format!("the prefetcher spooled {expected:?}"),
        std::time::Duration::from_secs(60),
        || {
            let missing: Vec<_> = expected
                .iter()
                .filter(|n| !spool.join(n).is_file())
                .collect();
            let locked = spool.join(".lock").exists();
            if missing.is_empty() && !locked {
                Ok(())
            } else {
                Err(format!("missing {missing:?}, lock held: {locked}"))
            }
        },
    );
    // With the store gone, the next segment still comes, from the spool,
    // byte-identical; the spool gives it up.
    std::fs::remove_dir_all(setup.dir.path().join("store/packs")).expect("rm packs");
    let (second, bytes) = &segments[1];
    let target = out.path().join(second);
    let o = setup.wal_fetch(second, &target);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(std::fs::read(&target).expect("fetched") == *bytes);
    assert!(!spool.join(second).exists(), "moved, not copied");
}
