//! `pitr run` killed with SIGKILL at several points while pgbench writes:
//! after each restart streaming resumes with no gap, nothing is stored twice
//! as different content, and the flush position the server was told never
//! passed what the destination held (checked against the store itself, the
//! source of truth, not against the killed process's catalog).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pitr::pg::{Lsn, Segment};
use pitr::repo::{RepoOptions, Repository};
use pitr::ship::{Destination, Fanout, FsDestination};
use pitr::wal::WalStore;

use crate::support::query_lsn as server_lsn;
use crate::support::{PgCluster, run_as_pg_user};

const SEG: u64 = 16 << 20;

/// How many invariant checks saw a flush position at all: the check must
/// not pass by never seeing one.
static FLUSH_SEEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

struct Sidecar {
    dir: tempfile::TempDir,
    identity: age::x25519::Identity,
    child: Option<Child>,
}

impl Sidecar {
    fn new(pg: &PgCluster) -> Sidecar {
        let dir = tempfile::tempdir().expect("tempdir");
        let identity = age::x25519::Identity::generate();
        std::fs::write(
            dir.path().join("pitr.toml"),
            format!(
                r#"[repository]
recipients = ["{}"]
state_dir = "state"

[[destination]]
name = "local"
kind = "fs"
path = "store"

[[postgres]]
name = "main"
conninfo = "{}"
slot = "pitr"
base_backup = "off"

[verify]
schedule = "off"

[retention]
schedule = "off"

[scrub]
schedule = "off"
"#,
                identity.to_public(),
                pg.conninfo("postgres")
            ),
        )
        .expect("config");
        let s = Sidecar {
            dir,
            identity,
            child: None,
        };
        let out = s.pitr(&["init"]).output().expect("pitr init");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        s
    }

    fn pitr(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pitr"));
        c.args(args)
            .arg("-c")
            .arg(self.dir.path().join("pitr.toml"))
            .env_remove("PITR_CONFIG");
        c
    }

    fn start(&mut self) {
        let child = self
            .pitr(&["run"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pitr run");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        let mut c = self.child.take().expect("running");
        c.kill().expect("SIGKILL");
        c.wait().expect("reap");
    }

    /// SIGTERM: the sidecar stores its tail, acknowledges it, exits 0.
    fn terminate(&mut self) {
        let mut c = self.child.take().expect("running");
        let pid = c.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let status = crate::support::eventually_blocking(
            "pitr run stopped on SIGTERM",
            Duration::from_secs(60),
            || c.try_wait().expect("wait").ok_or("still running"),
        );
        let mut err = String::new();
        if let Some(mut e) = c.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        assert!(status.success(), "pitr run exited {status}: {err}");
    }

    /// A reader of the store with its own, fresh catalog.
    async fn reader(&self) -> Repository {
        let fanout =
            Fanout::new(vec![
                Arc::new(FsDestination::new("local", self.dir.path().join("store")))
                    as Arc<dyn Destination>,
            ]);
        let opts = RepoOptions {
            recipients: vec![self.identity.to_public()],
            identities: vec![self.identity.clone()],
            key_file: None,
            state_dir: self.dir.path().join("reader-state"),
            zstd_level: 3,
            pack_size: 16 << 20,
        };
        Repository::open(fanout, opts)
            .await
            .expect("open the store")
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Invariant 1 against the store: what the server was told is flushed is
/// stored. The server is read first; the store only grows.
async fn check_invariant(db: &tokio_postgres::Client, repo: &Repository) -> Lsn {
    let flush = server_lsn(db, "SELECT flush_lsn::text FROM pg_stat_replication").await;
    repo.sync_catalog().await.expect("sync catalog");
    let stored = WalStore::new(repo.clone(), "main")
        .stored_end(1)
        .expect("catalog")
        .map(|(e, _)| e)
        .unwrap_or_default();
    if let Some(f) = flush {
        FLUSH_SEEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(
            f <= stored,
            "server told {f} is flushed; the store holds up to {stored}"
        );
    }
    stored
}

fn pgbench(pg: &PgCluster, args: &[&str]) -> Command {
    let mut c = pg.client("pgbench", args);
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    run_as_pg_user(&mut c);
    c
}

fn read_item(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read")
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_pgbench_loses_nothing_and_acknowledges_nothing_early() {
    let pg = PgCluster::start();
    let init = pgbench(&pg, &["-i", "-s", "2", "-q"])
        .output()
        .expect("pgbench -i");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let db = pg.connect().await;
    let mut sidecar = Sidecar::new(&pg);
    let reader = sidecar.reader().await;

    let mut bench = pgbench(&pg, &["-c", "2", "-j", "2", "-T", "14", "-N"])
        .spawn()
        .expect("pgbench");
    sidecar.start();
    // Kill at different moments: early (maybe before the first store), mid
    // segment, and shortly after a restart.
    for pause in [700u64, 2500, 1300, 3100] {
        let until = Instant::now() + Duration::from_millis(pause);
        while Instant::now() < until {
            check_invariant(&db, &reader).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sidecar.kill();
        check_invariant(&db, &reader).await;
        sidecar.start();
    }
    let status = bench.wait().expect("pgbench ends");
    assert!(status.success(), "pgbench failed");
    db.batch_execute("SELECT pg_switch_wal()")
        .await
        .expect("switch");
    let target = server_lsn(&db, "SELECT pg_current_wal_flush_lsn()::text")
        .await
        .expect("lsn");
    crate::support::eventually(
        format!("streaming reached {target}"),
        Duration::from_secs(90),
        async || {
            let at = check_invariant(&db, &reader).await;
            if at >= target {
                Ok(())
            } else {
                Err(format!("at {at}"))
            }
        },
    )
    .await;
    sidecar.terminate();
    check_invariant(&db, &reader).await;
    assert!(
        FLUSH_SEEN.load(std::sync::atomic::Ordering::Relaxed) > 20,
        "the invariant was checked against real flush positions: {}",
        FLUSH_SEEN.load(std::sync::atomic::Ordering::Relaxed)
    );

    // No gap: complete segments are contiguous.
    let items = reader.catalog().items("pg/main/wal/").expect("items");
    let mut complete: Vec<&pitr::repo::catalog::ItemRow> =
        items.iter().filter(|i| i.kind == "wal").collect();
    complete.sort_by(|a, b| a.name.cmp(&b.name));
    let nos: Vec<u64> = complete
        .iter()
        .map(|i| {
            Segment::parse(i.name.rsplit('/').next().expect("name"), SEG)
                .expect("seg")
                .no
        })
        .collect();
    let mut distinct = nos.clone();
    distinct.dedup();
    assert!(distinct.len() >= 2, "{distinct:?}");
    assert_eq!(
        distinct,
        (distinct[0]..=distinct[distinct.len() - 1]).collect::<Vec<_>>(),
        "no gap"
    );
    // Nothing twice as different content: every copy of a segment is the
    // same bytes, and every partial is a prefix of its complete segment.
    let by_name = |name: &str| {
        complete
            .iter()
            .filter(move |i| i.name == name)
            .collect::<Vec<_>>()
    };
    for c in &complete {
        for other in by_name(&c.name) {
            assert_eq!(
                other.manifest.hash, c.manifest.hash,
                "{} stored twice, differently",
                c.name
            );
        }
    }
    let out = tempfile::tempdir().expect("tempdir");
    let store = WalStore::new(reader.clone(), "main");
    let pg_wal = pg.data_dir().join("pg_wal");
    let mut fetched: Vec<PathBuf> = Vec::new();
    for n in &distinct {
        let name = Segment {
            timeline: 1,
            no: *n,
        }
        .file_name(SEG);
        let path = out.path().join(&name);
        store
            .fetch_to(&name, &path)
            .await
            .expect("fetch")
            .expect("stored");
        if let Ok(server) = std::fs::read(pg_wal.join(&name)) {
            assert!(read_item(&path) == server, "{name} differs from pg_wal");
        }
        fetched.push(path);
    }
    let rd = reader.reader().expect("reader");
    for p in items.iter().filter(|i| i.kind == "wal-partial") {
        let seg_name = p
            .name
            .rsplit('/')
            .next()
            .expect("name")
            .trim_end_matches(".partial");
        let full = out.path().join(seg_name);
        if !full.exists() {
            continue; // the open segment at the end: no complete copy yet
        }
        let mut bytes = Vec::new();
        rd.read_to(&p.manifest, &mut bytes)
            .await
            .expect("read partial");
        let whole = read_item(&full);
        assert!(
            whole.starts_with(&bytes),
            "partial {} is not a prefix of its segment",
            p.name
        );
    }
    // pg_waldump reads the stored WAL end to end.
    let dump = Command::new(pg.bin("pg_waldump"))
        .arg("--path")
        .arg(out.path())
        .arg(fetched.first().expect("one").file_name().expect("name"))
        .arg(fetched.last().expect("one").file_name().expect("name"))
        .output()
        .expect("pg_waldump");
    let text = String::from_utf8_lossy(&dump.stdout);
    assert!(
        text.lines().filter(|l| l.starts_with("rmgr:")).count() > 1000,
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
}
