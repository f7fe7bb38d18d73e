//! The S3 destination against a real S3-compatible server on loopback
//! (moto's server): the destination contract, and a whole WAL stream and
//! base backup stored there, restored from it alone, exact against an
//! oracle.

use std::time::Duration;

use bytes::Bytes;
use pitr::config::DestinationKind;
use pitr::ship::{Destination, PutOutcome, S3Destination, S3Options, ShipError};

use crate::support::{PgCluster, S3Server};

fn settings(server: &S3Server, bucket: &str, prefix: &str) -> S3Options {
    S3Options {
        bucket: bucket.into(),
        prefix: prefix.into(),
        region: "us-east-1".into(),
        endpoint: Some(server.endpoint()),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
        request_timeout: Duration::from_secs(10),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_destination_keeps_the_destination_contract() {
    let server = S3Server::start("contract");
    let d = S3Destination::new("s3", &settings(&server, "contract", "pitr/"));
    d.prepare().await.expect("the bucket is reachable");

    let data = Bytes::from_static(b"immutable bytes");
    assert_eq!(
        d.put_if_absent("packs/ab/abc", data.clone())
            .await
            .expect("put"),
        PutOutcome::Created
    );
    // Never overwritten: the second put leaves the first bytes.
    assert_eq!(
        d.put_if_absent("packs/ab/abc", Bytes::from_static(b"other"))
            .await
            .expect("put again"),
        PutOutcome::AlreadyExists
    );
    assert_eq!(d.get("packs/ab/abc").await.expect("get"), data);
    assert_eq!(
        d.get_range("packs/ab/abc", 2..7).await.expect("range"),
        data.slice(2..7)
    );
    // A range past the end reads short, as truncation shows to callers.
    assert_eq!(
        d.get_range("packs/ab/abc", 10..100).await.expect("range"),
        data.slice(10..)
    );
    assert!(
        d.get_range("packs/ab/abc", 100..200)
            .await
            .expect("range")
            .is_empty()
    );
    let meta = d.head("packs/ab/abc").await.expect("head").expect("exists");
    assert_eq!(meta.size, data.len() as u64);
    assert!(d.head("packs/ab/none").await.expect("head").is_none());
    assert!(matches!(
        d.get("packs/ab/none").await,
        Err(ShipError::NotFound { .. })
    ));

    // Listing is by string prefix, inside the configured prefix only.
    for k in ["catalog/0001-a", "catalog/0002-a", "catalog-not", "config"] {
        d.put_if_absent(k, Bytes::from_static(b"x"))
            .await
            .expect("put");
    }
    let other = S3Destination::new("s3b", &settings(&server, "contract", "elsewhere"));
    other
        .put_if_absent("catalog/0003-b", Bytes::from_static(b"y"))
        .await
        .expect("put");
    let keys: Vec<String> = d
        .list("catalog/")
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(keys, ["catalog/0001-a", "catalog/0002-a"]);
    let keys: Vec<String> = d
        .list("catalog")
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(keys, ["catalog-not", "catalog/0001-a", "catalog/0002-a"]);
    assert_eq!(d.list("").await.expect("list").len(), 5);

    d.delete("catalog-not").await.expect("delete");
    d.delete("catalog-not")
        .await
        .expect("deleting what is gone is fine");
    assert!(d.head("catalog-not").await.expect("head").is_none());
    assert!(matches!(
        d.put_if_absent("../escape", Bytes::new()).await,
        Err(ShipError::InvalidKey { .. })
    ));

    // Above the multipart threshold: uploaded in parts, read back whole.
    let big: Bytes = (0..pitr::ship::MULTIPART_THRESHOLD + 1000)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    assert_eq!(
        d.put_if_absent("packs/big", big.clone())
            .await
            .expect("multipart put"),
        PutOutcome::Created
    );
    assert_eq!(
        d.put_if_absent("packs/big", big.clone())
            .await
            .expect("again"),
        PutOutcome::AlreadyExists
    );
    let back = d.get("packs/big").await.expect("get");
    assert_eq!(back.len(), big.len());
    assert!(back == big, "multipart object read back differs");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_store_is_a_transient_error_naming_the_destination() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let d = S3Destination::new(
        "s3-down",
        &S3Options {
            bucket: "b".into(),
            prefix: String::new(),
            region: "us-east-1".into(),
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            access_key_id: Some("x".into()),
            secret_access_key: Some("y".into()),
            request_timeout: Duration::from_secs(2),
        },
    );
    let err = tokio::time::timeout(Duration::from_secs(300), d.get("config"))
        .await
        .expect("bounded by the retry timeout")
        .expect_err("nothing listens");
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("s3-down"), "{err}");
}

/// A whole WAL stream and a base backup go to fs + S3; then the local
/// catalog and the fs destination are deleted, and a restore from S3 alone
/// is exact.
#[tokio::test(flavor = "multi_thread")]
async fn a_restore_from_s3_alone_is_exact() {
    use crate::support::{between, write_row};
    let server = S3Server::start("backups");
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (head, fs) = crate::support::repository_toml(dir.path(), "");
    let s3 = server.destination_toml("s3", "backups", "pitr/");
    let pgs = format!(
        "\n[[postgres]]\nname = \"main\"\nconninfo = \"{}\"\nbase_backup = \"off\"\n\n[verify]\nschedule = \"off\"\n\n[retention]\nschedule = \"off\"\n\n[scrub]\nschedule = \"off\"\n",
        pg.conninfo("postgres")
    );
    let both = dir.path().join("both.toml");
    std::fs::write(&both, format!("{head}{fs}{s3}{pgs}")).expect("config");
    let pitr = crate::support::pitr_with;
    let out = pitr(&both, &["init"]);
    assert!(out.status.success(), "{out:?}");

    let config = pitr::config::Config::load(&both).expect("config");
    assert!(matches!(
        config.destinations[1].kind,
        DestinationKind::S3(_)
    ));
    let repo = pitr::repo::Repository::open(
        pitr::wiring::fanout(&config),
        pitr::wiring::repo_options(&config).expect("options"),
    )
    .await
    .expect("open");
    pg.psql("CREATE TABLE oracle (id int PRIMARY KEY, at timestamptz NOT NULL)");
    let streamer = crate::support::Streamer::start(&repo, &pg, "pitr");
    streamer.caught_up(&pg).await;
    let out = pitr(&both, &["backup", "--wait-wal", "60"]);
    assert!(out.status.success(), "{out:?}");
    let mut rows = Vec::new();
    for id in 1..=6 {
        rows.push((id, write_row(&pg, id)));
        if id == 3 {
            pg.psql("SELECT pg_switch_wal()");
        }
    }
    streamer.caught_up(&pg).await;
    streamer.stop().await;
    drop(repo);

    // Only S3 is left.
    std::fs::remove_dir_all(dir.path().join("state")).expect("rm state");
    std::fs::remove_dir_all(dir.path().join("store")).expect("rm fs store");
    let only_s3 = dir.path().join("s3.toml");
    std::fs::write(&only_s3, format!("{head}{s3}{pgs}")).expect("config");
    let t = between(rows[3].1, rows[4].1);
    let mut restored = PgCluster::empty();
    let data = restored.data_dir();
    let out = pitr(
        &only_s3,
        &[
            "restore",
            "--at",
            &pitr::restore::pg_time(t),
            "--target",
            data.to_str().expect("utf-8"),
        ],
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    restored.start_filled("");
    assert_eq!(
        restored.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM oracle"),
        "1,2,3,4"
    );
}

/// Objects deleted and bytes flipped in one destination are found by `pitr
/// verify` and fixed by `pitr repair` from the other; afterwards both verify
/// clean. An object damaged everywhere is reported, not "repaired".
#[tokio::test(flavor = "multi_thread")]
async fn verify_finds_and_repair_fixes_damage_in_either_destination() {
    let server = S3Server::start("repair");
    let dir = tempfile::tempdir().expect("tempdir");
    let (identity, identity_file) = crate::support::new_identity(dir.path());
    let store = dir.path().join("store");
    let config_path = dir.path().join("pitr.toml");
    std::fs::write(
        &config_path,
        format!(
            "[repository]\nrecipients = [\"{}\"]\nidentity_file = \"{}\"\nstate_dir = \"{}\"\n\
             pack_size = \"1MiB\"\n\n[[destination]]\nname = \"local\"\nkind = \"fs\"\npath = \"{}\"\n{}",
            identity.to_public(),
            identity_file.display(),
            dir.path().join("state").display(),
            store.display(),
            server.destination_toml("s3", "repair", "")
        ),
    )
    .expect("config");
    let pitr = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pitr"))
            .args(args)
            .arg("-c")
            .arg(&config_path)
            .env_remove("PITR_CONFIG")
            .output()
            .expect("run pitr")
    };
    let show = |o: &std::process::Output| {
        format!(
            "{}\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let out = pitr(&["init"]);
    assert!(out.status.success(), "{}", show(&out));

    let config = pitr::config::Config::load(&config_path).expect("config");
    let repo = pitr::repo::Repository::open(
        pitr::wiring::fanout(&config),
        pitr::wiring::repo_options(&config).expect("options"),
    )
    .await
    .expect("open");
    let mut items = Vec::new();
    for i in 0..3u64 {
        let bytes = crate::support::data(i + 7, 3 << 20, 0);
        let mut w = repo.writer();
        let m = w
            .put(
                &format!("test/item{i}"),
                "test",
                serde_json::json!({}),
                pitr::repo::Chunking::Cdc,
                &bytes[..],
            )
            .await
            .expect("put");
        w.commit().await.expect("commit");
        items.push((m, bytes));
    }
    let packs = repo.catalog().packs().expect("packs");
    assert!(packs.len() >= 3, "{} packs", packs.len());
    let commits: Vec<String> = repo
        .catalog()
        .applied_commits()
        .expect("commits")
        .into_iter()
        .collect();

    // Damage: a pack gone from S3, a pack flipped on fs, a commit gone from fs.
    let s3 = S3Destination::new("s3", &settings(&server, "repair", ""));
    let gone = packs[0].0.object_name();
    s3.delete(&gone).await.expect("delete");
    let flipped = packs[1].0.object_name();
    let path = store.join(&flipped);
    let mut bytes = std::fs::read(&path).expect("read pack");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&path, bytes).expect("write pack");
    let lost_commit = &commits[0];
    std::fs::remove_file(store.join(lost_commit)).expect("remove commit");

    let out = pitr(&["verify"]);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    let t = show(&out);
    assert!(t.contains(&format!("PROBLEM s3 {gone}")), "{t}");
    assert!(t.contains(&format!("PROBLEM local {flipped}")), "{t}");

    let out = pitr(&["repair"]);
    assert!(out.status.success(), "{}", show(&out));
    let t = show(&out);
    for (dest, object) in [("s3", &gone), ("local", &flipped), ("local", lost_commit)] {
        assert!(
            t.contains(&format!("REPAIRED {dest} {object}")),
            "{dest} {object}: {t}"
        );
    }
    let out = pitr(&["verify"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(show(&out).contains("No problems found"), "{}", show(&out));
    assert!(store.join(lost_commit).exists());
    let out = pitr(&["repair"]);
    assert!(
        show(&out).contains(": 0 repaired, 0 still wrong"),
        "{}",
        show(&out)
    );

    // Each destination alone now reads every item back.
    for (m, bytes) in &items {
        for d in repo.fanout().destinations() {
            let only = pitr::ship::Fanout::new(vec![d.clone()]);
            let r = pitr::repo::Repository::open(
                only,
                pitr::wiring::repo_options(&config).expect("options"),
            )
            .await
            .expect("open one destination");
            let mut back = Vec::new();
            r.reader()
                .expect("reader")
                .read_to(m, &mut back)
                .await
                .expect("read");
            assert!(back == *bytes, "{} from {}", m.name, d.name());
        }
    }

    // The catalog comes back from either destination alone.
    let counts = |o: &std::process::Output| {
        String::from_utf8_lossy(&o.stdout)
            .split(": ")
            .nth(1)
            .unwrap_or_default()
            .to_owned()
    };
    let from_s3 = pitr(&["catalog", "rebuild", "--from", "s3"]);
    assert!(from_s3.status.success(), "{}", show(&from_s3));
    let from_fs = pitr(&["catalog", "rebuild", "--from", "local"]);
    assert!(from_fs.status.success(), "{}", show(&from_fs));
    assert_eq!(counts(&from_s3), counts(&from_fs));
    assert!(counts(&from_s3).contains("3 items"), "{}", show(&from_s3));
    let out = pitr(&["catalog", "rebuild", "--from", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        show(&out).contains("no such [[destination]]"),
        "{}",
        show(&out)
    );

    // Damaged everywhere: nothing good to copy; said so, exit 3.
    let victim = packs[2].0.object_name();
    let path = store.join(&victim);
    let mut bytes = std::fs::read(&path).expect("read pack");
    bytes[100] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write");
    s3.delete(&victim).await.expect("delete");
    let out = pitr(&["repair"]);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert!(
        show(&out).contains(&format!("NOT REPAIRED local {victim}"))
            && show(&out).contains("no destination holds a good copy"),
        "{}",
        show(&out)
    );
}

/// fs + S3 behind a fan-out with `quorum`, spooling into `spool`.
fn quorum_fanout(
    server: &S3Server,
    bucket: &str,
    store: &std::path::Path,
    spool: &std::path::Path,
    quorum: usize,
    max_bytes: u64,
) -> pitr::ship::Fanout {
    let fs: std::sync::Arc<dyn Destination> =
        std::sync::Arc::new(pitr::ship::FsDestination::new("local", store.to_owned()));
    let s3: std::sync::Arc<dyn Destination> =
        std::sync::Arc::new(S3Destination::new("s3", &settings(server, bucket, "")));
    pitr::ship::Fanout::with_quorum(
        vec![fs, s3],
        quorum,
        pitr::ship::SpoolConfig {
            dir: spool.to_owned(),
            max_bytes,
        },
    )
}

/// Objects in a spool directory: every process spools in a subdirectory
/// of its own (dot files are locks and temp files).
fn spooled_files(spool: &std::path::Path) -> usize {
    let mut n = 0;
    let mut stack = vec![spool.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else if !e.file_name().to_string_lossy().starts_with('.') {
                n += 1;
            }
        }
    }
    n
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    crate::support::eventually(what, Duration::from_secs(60), async || {
        if cond() { Ok(()) } else { Err("not yet") }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_destination_outside_the_quorum_catches_up_from_the_spool() {
    let server = S3Server::start("quorum");
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, spool) = (dir.path().join("store"), dir.path().join("spool"));
    let s3 = S3Destination::new("s3", &settings(&server, "quorum", ""));

    // quorum = 1: writes go on while S3 hangs.
    let fanout = quorum_fanout(&server, "quorum", &store, &spool, 1, 64 << 20);
    server.pause();
    for i in 0..5 {
        let key = format!("obj/{i}");
        let put = fanout.put_if_absent(&key, Bytes::from(vec![i as u8; 1000]));
        tokio::time::timeout(Duration::from_secs(20), put)
            .await
            .expect("a write does not wait for a hung destination outside the quorum")
            .expect("stored by the quorum");
    }
    assert_eq!(fanout.status().spooled, 5);
    server.resume();
    until("S3 catching up from the spool", || {
        fanout.status().spooled == 0
    })
    .await;
    for i in 0..5 {
        let got = s3.get(&format!("obj/{i}")).await.expect("on S3 now");
        assert_eq!(got, Bytes::from(vec![i as u8; 1000]));
    }
    assert_eq!(spooled_files(&spool), 0, "spool emptied");

    // quorum = 2 (all): a write waits for the hung destination.
    let fanout = quorum_fanout(&server, "quorum", &store, &spool, 2, 64 << 20);
    server.pause();
    let put = fanout.put_if_absent("obj/all", Bytes::from_static(b"all"));
    tokio::pin!(put);
    assert!(
        tokio::time::timeout(Duration::from_secs(3), &mut put)
            .await
            .is_err(),
        "with every destination in the quorum, a hung one holds the write"
    );
    server.resume();
    tokio::time::timeout(Duration::from_secs(120), put)
        .await
        .expect("the write completes once S3 answers")
        .expect("stored");
    assert!(s3.head("obj/all").await.expect("head").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_spool_holds_writes_back_and_drops_nothing() {
    let server = S3Server::start("spoolfull");
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, spool) = (dir.path().join("store"), dir.path().join("spool"));
    let fanout = quorum_fanout(&server, "spoolfull", &store, &spool, 1, 1 << 20);
    server.pause();
    let big = |b: u8| Bytes::from(vec![b; 600 << 10]);
    tokio::time::timeout(Duration::from_secs(20), fanout.put_if_absent("a/1", big(1)))
        .await
        .expect("room for the first")
        .expect("stored");
    let second = fanout.put_if_absent("a/2", big(2));
    tokio::pin!(second);
    assert!(
        tokio::time::timeout(Duration::from_secs(3), &mut second)
            .await
            .is_err(),
        "a full spool holds the write back"
    );
    let status = fanout.status();
    assert!(status.spool_full_for.is_some(), "{status:?}");
    assert_eq!(status.spooled, 1, "{status:?}");
    server.resume();
    tokio::time::timeout(Duration::from_secs(120), second)
        .await
        .expect("the write goes on once the spool drains")
        .expect("stored");
    until("the spool draining", || fanout.status().spooled == 0).await;
    let s3 = S3Destination::new("s3", &settings(&server, "spoolfull", ""));
    assert_eq!(s3.get("a/1").await.expect("a/1"), big(1));
    assert_eq!(s3.get("a/2").await.expect("a/2"), big(2));
}

#[test]
fn a_spool_left_by_a_crash_is_replayed_on_the_next_start() {
    let server = S3Server::start("replay");
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, spool) = (dir.path().join("store"), dir.path().join("spool"));
    server.pause();
    {
        // A run that dies (its runtime dropped: queues and all) while S3 hangs.
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let fanout = quorum_fanout(&server, "replay", &store, &spool, 1, 64 << 20);
        rt.block_on(async {
            for i in 0..3 {
                fanout
                    .put_if_absent(&format!("left/{i}"), Bytes::from(vec![7; 100]))
                    .await
                    .expect("quorum");
            }
        });
        // Its tasks (which hold the spool's lock, as a live process would)
        // end with it.
        drop(fanout);
        rt.shutdown_timeout(Duration::from_secs(10));
    }
    assert_eq!(spooled_files(&spool), 3);
    server.resume();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let fanout = quorum_fanout(&server, "replay", &store, &spool, 1, 64 << 20);
        // The next write starts the queues, which replay what was left.
        fanout
            .put_if_absent("next/0", Bytes::from_static(b"n"))
            .await
            .expect("quorum");
        until("the replay", || fanout.status().spooled == 0).await;
        let s3 = S3Destination::new("s3", &settings(&server, "replay", ""));
        for i in 0..3 {
            assert!(s3.head(&format!("left/{i}")).await.expect("head").is_some());
        }
    });
}

/// WAL streamed to fs + S3 under pgbench while S3 is paused for 30 s.
/// Returns the flush positions acknowledged at the pause, near its end and
/// at the end; checks no WAL is missing from S3 afterwards.
async fn stream_through_a_hung_s3(quorum: usize) -> (pitr::pg::Lsn, pitr::pg::Lsn, pitr::pg::Lsn) {
    let bucket = format!("hang{quorum}");
    let server = S3Server::start(&bucket);
    let pg = PgCluster::start();
    let t = crate::support::TestRepo::new().await;
    let spool = t.dir.path().join("spool");
    let fanout = quorum_fanout(&server, &bucket, &t.store(), &spool, quorum, 1 << 30);
    pitr::repo::Repository::init(&fanout, &t.opts)
        .await
        .expect("init on S3 too");
    let repo = pitr::repo::Repository::open(fanout.clone(), t.opts.clone())
        .await
        .expect("open");
    let pgbench = |args: &[&str]| {
        let mut c = pg.client("pgbench", args);
        c.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    };
    assert!(
        pgbench(&["-i", "-q", "-s", "1"])
            .status()
            .expect("pgbench -i")
            .success()
    );
    let streamer = crate::support::Streamer::start(&repo, &pg, "pitr");
    streamer.caught_up(&pg).await;
    let mut load = pgbench(&["-n", "-c", "2", "-T", "45"])
        .spawn()
        .expect("pgbench");
    tokio::time::sleep(Duration::from_secs(3)).await;

    server.pause();
    // Requests already under way finish or hang within a moment.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let at_pause = streamer.flushed();
    tokio::time::sleep(Duration::from_secs(27)).await;
    let before_resume = streamer.flushed();
    server.resume();
    let _ = load.wait();
    streamer.caught_up(&pg).await;
    let end = streamer.flushed();
    streamer.stop().await;
    until("S3 catching up", || fanout.status().spooled == 0).await;

    // S3 alone holds the WAL without a gap, to the end.
    let only = pitr::ship::Fanout::new(vec![std::sync::Arc::new(S3Destination::new(
        "s3",
        &settings(&server, &bucket, ""),
    )) as std::sync::Arc<dyn Destination>]);
    let mut opts = t.opts.clone();
    opts.state_dir = t.dir.path().join("state-s3-only");
    let s3_repo = pitr::repo::Repository::open(only, opts)
        .await
        .expect("open S3 alone");
    let ranges = pitr::wal::WalStore::new(s3_repo, "main")
        .ranges(1)
        .expect("ranges");
    assert_eq!(ranges.len(), 1, "one unbroken range on S3: {ranges:?}");
    assert!(ranges[0].1 >= end, "S3 holds the WAL to {end}: {ranges:?}");
    (at_pause, before_resume, end)
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_quorum_of_all_a_hung_s3_holds_the_flush_position_until_it_answers() {
    let (at_pause, before_resume, end) = stream_through_a_hung_s3(2).await;
    assert_eq!(
        at_pause, before_resume,
        "nothing is acknowledged that S3 does not hold"
    );
    assert!(
        end > before_resume,
        "acknowledgement catches up after the pause"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_quorum_of_one_streaming_goes_on_and_s3_catches_up_from_the_spool() {
    let (at_pause, before_resume, end) = stream_through_a_hung_s3(1).await;
    assert!(
        before_resume > at_pause,
        "the fs destination alone is a quorum: acknowledgement goes on"
    );
    assert!(end >= before_resume);
}
