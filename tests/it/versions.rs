//! The core scenarios on every supported PostgreSQL major (14 to 18), each
//! against a real server of that major and judged by that major's own tools:
//! WAL streamed under pgbench is fetched back with `pitr wal-fetch`
//! byte-identical to the server's `pg_wal`; pitr's decoder lists the same
//! records, positions and commit times as that major's `pg_waldump`; a base
//! backup (that major's `BASE_BACKUP` syntax and stream framing; CRC-32C
//! or SHA-256 manifest) restored with the streamed WAL passes its `pg_verifybackup`.
//!
//! Kept cheap (pgbench scale 2, 400 transactions): the whole group is
//! minutes on two cores. Run one major with `cargo test --test it
//! versions::pg17`. A cluster of major N comes from
//! `PgCluster::start_major(N)` (binaries as `support::pg::pg_bin_dir_for`
//! finds them: `.ci/setup` installs them).

use std::fs;
use std::process::Command;
use std::time::Duration;

use pitr::basebackup::{self, BackupOptions, BackupProgress, RestoreOptions};
use pitr::pg::{Checkpoint, ConnInfo, Lsn, ManifestChecksums, Segment, WalFormat};
use pitr::repo::Repository;
use pitr::wal::{Decoder, RecordKind, WalStore};
use tokio::sync::watch;

use crate::support::PgCluster;
use crate::support::Streamer;
use crate::wal_decode::{Dumped, dumped_time, parse_dump_line, pg_waldump};
use crate::wal_fetch::Setup;

const SEG: u64 = 16 << 20;
/// pgbench transactions in each major's run (two clients).
const PGBENCH_TRANSACTIONS: usize = 400;

#[tokio::test(flavor = "multi_thread")]
async fn pg14() {
    core_scenarios(14).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pg15() {
    core_scenarios(15).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pg16() {
    core_scenarios(16).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pg17() {
    core_scenarios(17).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pg18() {
    core_scenarios(18).await;
}

/// Every supported major has its test above.
#[test]
fn every_supported_major_is_tested() {
    let majors: Vec<u32> = pitr::pg::FORMATS.iter().map(|f| f.major).collect();
    assert_eq!(
        majors,
        [14, 15, 16, 17, 18],
        "add a test per new major above"
    );
}

async fn core_scenarios(major: u32) {
    let pg = PgCluster::start_major(major);
    let version = pg.psql("SHOW server_version_num");
    assert!(
        version.starts_with(&major.to_string()),
        "a PostgreSQL {major} server: {version}"
    );
    let setup = Setup::new(&pg.conninfo("postgres")).await;
    let repo = Repository::open(setup.fanout(), setup.opts.clone())
        .await
        .expect("open the repository");
    let streamer = Streamer::start(&repo, &pg, "pitr");
    // Everything after the slot exists is streamed: wait for it, so that
    // every pgbench commit below is in the WAL compared.
    crate::support::eventually(
        "the streamer's slot",
        Duration::from_secs(60),
        async || match pg
            .psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pitr'")
            .as_str()
        {
            "1" => Ok(()),
            n => Err(format!("{n} slots named pitr")),
        },
    )
    .await;

    pg.pgbench(&["-i", "-s", "2", "-q"]);
    // A count of transactions, not a duration: the same WAL on any machine.
    pg.pgbench(&[
        "-t",
        &(PGBENCH_TRANSACTIONS / 2).to_string(),
        "-c",
        "2",
        "-j",
        "1",
    ]);

    // A base backup in that major's syntax and stream framing; the stream
    // stores its WAL.
    let (tx, _rx) = watch::channel(BackupProgress::default());
    let options = BackupOptions {
        database: "main".into(),
        conninfo: ConnInfo::parse(&pg.conninfo("postgres")).expect("conninfo"),
        label: format!("pitr test on {major}"),
        checkpoint: Checkpoint::Fast,
        max_rate_kb: None,
        manifest_checksums: checksums(major),
        incremental_max_chain: 0,
    };
    let record = basebackup::take(&repo, &options, &tx)
        .await
        .unwrap_or_else(|e| panic!("base backup of PostgreSQL {major}: {e}"));
    assert!(record.server_version.starts_with(&major.to_string()));
    assert!(record.files > 500, "{} files", record.files);
    basebackup::wait_restorable(
        &repo,
        "main",
        &record.id,
        Duration::from_secs(60),
        Duration::from_millis(200),
    )
    .await
    .expect("the WAL of the backup is stored");

    pg.psql("SELECT pg_create_restore_point('versions')");
    pg.psql(
        "BEGIN; CREATE TABLE rolled_back (x int); INSERT INTO rolled_back VALUES (1); ROLLBACK;",
    );
    pg.psql("INSERT INTO pgbench_history (tid, bid, aid, delta) VALUES (1, 1, 1, 1)");
    let switch: Lsn = pg.psql("SELECT pg_switch_wal()").parse().expect("an LSN");
    let last = Segment::containing(1, switch, SEG);
    wait_stored(&repo, Lsn(last.start(SEG).0 + SEG)).await;
    streamer.stop().await;

    // `pitr check` reads what streaming needs on this major, and names the
    // binaries a restore of it would use.
    let bin = crate::support::pg::pg_bin_dir_for(major);
    let check = Command::new(env!("CARGO_BIN_EXE_pitr"))
        .args(["check", "-c"])
        .arg(setup.config_path())
        .env_remove("PITR_CONFIG")
        .env("PITR_RESTORE_BIN_DIRS", &bin)
        .output()
        .expect("run pitr check");
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success()
            && said.contains(&format!("PostgreSQL {major}, wal_level=replica"))
            && said.contains(&format!(
                "postgres main: restores and test restores use PostgreSQL {major}."
            ))
            && said.contains(&format!("in {}", bin.display())),
        "pitr check on {major}: {said}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // Without them, and with test restores scheduled, the check fails and
    // names the major and where it looked. (Debian's 15 is found in its
    // usual place; the other majors are only where .ci/setup put them.)
    if major != crate::support::pg::DEFAULT_MAJOR {
        let check = Command::new(env!("CARGO_BIN_EXE_pitr"))
            .args(["check", "-c"])
            .arg(setup.config_path())
            .env_remove("PITR_CONFIG")
            .env("PITR_VERIFY_SCHEDULE", "0 4 * * *")
            .output()
            .expect("run pitr check");
        let said = String::from_utf8_lossy(&check.stdout);
        assert!(
            !check.status.success()
                && said.contains("postgres main: FAILED: test restores are scheduled")
                && said.contains(&format!("PostgreSQL {major}")),
            "pitr check on {major} without its binaries: {said}"
        );
    }

    let fetched = fetch_completed(&pg, &setup, last);
    decoder_agrees_with_pg_waldump(&pg, major, &fetched);
    backup_verifies(&pg, &repo, &record).await;
}

/// Every completed segment the stream stored, fetched with `pitr wal-fetch`
/// into a directory of its own and compared with the server's `pg_wal`
/// file; returns the directory and the segments, oldest first.
fn fetch_completed(
    pg: &PgCluster,
    setup: &Setup,
    last: Segment,
) -> (tempfile::TempDir, Vec<Segment>) {
    let out = tempfile::tempdir().expect("tempdir");
    let mut in_pg_wal: Vec<Segment> = fs::read_dir(pg.data_dir().join("pg_wal"))
        .expect("list pg_wal")
        .filter_map(|e| Segment::parse(e.ok()?.file_name().to_str()?, SEG))
        .filter(|s| s.timeline == 1 && s.no <= last.no)
        .collect();
    in_pg_wal.sort();
    let mut fetched = Vec::new();
    for seg in in_pg_wal {
        let name = seg.file_name(SEG);
        let target = out.path().join(&name);
        let o = setup.wal_fetch(&name, &target);
        match o.status.code() {
            Some(0) => {
                let ours = fs::read(&target).expect("read the fetched segment");
                let theirs = fs::read(pg.data_dir().join("pg_wal").join(&name))
                    .expect("read the server's segment");
                assert!(
                    ours == theirs,
                    "{name}: the fetched copy differs from pg_wal"
                );
                fetched.push(seg);
            }
            // Before the slot's start: never streamed.
            Some(1) if fetched.is_empty() => {}
            code => panic!(
                "wal-fetch {name}: exit {code:?}, {}",
                String::from_utf8_lossy(&o.stderr)
            ),
        }
    }
    assert!(fetched.len() >= 3, "segments fetched: {fetched:?}");
    assert_eq!(fetched.last(), Some(&last));
    for pair in fetched.windows(2) {
        assert_eq!(pair[0].next(), pair[1], "a hole in the fetched segments");
    }
    (out, fetched)
}

/// The decoder, told the major, lists what that major's `pg_waldump` lists
/// over the fetched segments: count, positions, lengths, xids, commit and
/// abort times, the restore point and the switch.
fn decoder_agrees_with_pg_waldump(
    pg: &PgCluster,
    major: u32,
    fetched: &(tempfile::TempDir, Vec<Segment>),
) {
    let (dir, segments) = fetched;
    let first = segments[0];
    let format = WalFormat::of_major(major).expect("a supported major");
    let mut decoder = Decoder::new(1, SEG, first.start(SEG)).with_format(format);
    let mut records = Vec::new();
    for seg in segments {
        let bytes = fs::read(dir.path().join(seg.file_name(SEG))).expect("read a segment");
        decoder
            .feed_with(&bytes, |r| records.push(r))
            .unwrap_or_else(|e| panic!("PostgreSQL {major} WAL: {e}"));
    }
    assert_eq!(decoder.format().map(|f| f.major), Some(major));

    let out = pg_waldump(
        pg,
        dir.path(),
        &first.file_name(SEG),
        &segments[segments.len() - 1].file_name(SEG),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pg_waldump {major}: {stderr}");
    let dumped: Vec<Dumped> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| parse_dump_line(l).unwrap_or_else(|| panic!("pg_waldump {major} line {l:?}")))
        .collect();
    assert_eq!(
        records.len(),
        dumped.len(),
        "record count on {major} ({stderr})"
    );
    let (mut commits, mut aborts, mut restore_points, mut switches) = (0, 0, 0, 0);
    for (ours, theirs) in records.iter().zip(&dumped) {
        let context = format!("PostgreSQL {major}: {ours:?} vs {theirs:?}");
        assert_eq!(ours.lsn, theirs.lsn, "{context}");
        assert_eq!(ours.total_len, theirs.total_len, "{context}");
        assert_eq!(ours.xid, theirs.xid, "{context}");
        assert_eq!(ours.rmgr == 1, theirs.rmgr == "Transaction", "{context}");
        match &ours.kind {
            RecordKind::Commit { time, .. } => {
                assert_eq!(
                    Some(*time),
                    dumped_time(&theirs.desc, "COMMIT"),
                    "{context}"
                );
                commits += 1;
            }
            RecordKind::Abort { time, .. } => {
                assert_eq!(Some(*time), dumped_time(&theirs.desc, "ABORT"), "{context}");
                aborts += 1;
            }
            RecordKind::RestorePoint { name, .. } => {
                assert_eq!(theirs.desc, format!("RESTORE_POINT {name}"), "{context}");
                restore_points += 1;
            }
            RecordKind::Switch => {
                assert_eq!(theirs.desc.trim_end(), "SWITCH", "{context}");
                switches += 1;
            }
            _ => {
                for verb in ["COMMIT ", "ABORT ", "RESTORE_POINT", "SWITCH"] {
                    let missed = theirs.rmgr == "Transaction" || theirs.rmgr == "XLOG";
                    assert!(!(missed && theirs.desc.starts_with(verb)), "{context}");
                }
            }
        }
    }
    assert!(
        commits > 100,
        "only {commits} commits under pgbench on {major}"
    );
    assert!(aborts >= 1, "no abort record on {major}");
    assert_eq!(restore_points, 1, "the restore point on {major}");
    assert!(switches >= 1, "the switch on {major}");
}

/// The backup, restored with the WAL from its start to its end segment,
/// passes that major's `pg_verifybackup` (files against the manifest's
/// checksums, and the WAL it needs).
async fn backup_verifies(pg: &PgCluster, repo: &Repository, record: &basebackup::BackupRecord) {
    let target = tempfile::tempdir().expect("tempdir");
    let data = target.path().join("data");
    crate::basebackup::restore_with_wal(repo, record, &data, &RestoreOptions::default()).await;
    let manifest = fs::read_to_string(data.join("backup_manifest")).expect("backup_manifest");
    let algorithm = checksums(pg.major()).as_manifest();
    assert!(
        manifest.contains(&format!("\"Checksum-Algorithm\": \"{algorithm}\"")),
        "{algorithm} asked for"
    );
    let out = Command::new(pg.bin("pg_verifybackup"))
        .arg("--wal-directory")
        .arg(data.join("pg_wal"))
        .arg(&data)
        .output()
        .expect("run pg_verifybackup");
    assert!(
        out.status.success(),
        "pg_verifybackup of PostgreSQL {}: {}{}",
        pg.major(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The manifest checksum each major's backup asks for: the default
/// (CRC-32C) on 15 and 17, SHA-256 on 14 (the older stream framing) and 18,
/// so both algorithms meet both framings.
fn checksums(major: u32) -> ManifestChecksums {
    match major {
        14 | 18 => ManifestChecksums::Sha256,
        _ => ManifestChecksums::default(),
    }
}

/// Waits (bounded) until the streamer stored WAL up to `end`.
async fn wait_stored(repo: &Repository, end: Lsn) {
    let store = WalStore::new(repo.clone(), "main");
    crate::support::eventually(
        format!("the streamer stored WAL up to {end}"),
        Duration::from_secs(60),
        async || match store.stored_end(1).expect("catalog") {
            Some((stored, _)) if stored >= end => Ok(()),
            stored => Err(format!("stored {stored:?}")),
        },
    )
    .await;
}

/// A loopback server that answers every startup as PostgreSQL 13 would
/// (trust authentication, `server_version` 13.16), then holds the connection
/// until the client goes; counts the connections.
async fn fake_pg13() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    let message = |tag: u8, body: &[u8]| {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    };
    let mut answer = message(b'R', &0u32.to_be_bytes());
    answer.extend(message(
        b'S',
        b"server_version\x0013.16 (Debian 13.16-0+deb11u1)\x00",
    ));
    answer.extend(message(b'K', &[0, 0, 0, 7, 0, 0, 0, 9]));
    answer.extend(message(b'Z', b"I"));
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let answer = answer.clone();
            tokio::spawn(async move {
                let Ok(len) = sock.read_u32().await else {
                    return;
                };
                let mut startup = vec![0; (len as usize).saturating_sub(4)];
                if sock.read_exact(&mut startup).await.is_err() {
                    return;
                }
                let _ = sock.write_all(&answer).await;
                let mut rest = Vec::new();
                let _ = sock.read_to_end(&mut rest).await;
            });
        }
    });
    (port, count)
}

/// `pitr run` in front of a PostgreSQL 13 server: one clear refusal naming
/// the supported majors, on `/health` and alerted once; not a reconnect
/// loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsupported_major_is_refused_once_shown_on_health_and_alerted_once() {
    const TOKEN: &str = "versions-test-token-0123456789abcdef";
    let (pg_port, connections) = fake_pg13().await;
    let repo = crate::support::TestRepo::new().await;
    let hook = crate::support::WebhookReceiver::start().await;
    let cfg = repo.write_config(&[(
        "main",
        &format!("host=127.0.0.1 port={pg_port} user=postgres dbname=postgres sslmode=disable"),
    )]);
    let port = crate::support::pg::free_port();
    let text = fs::read_to_string(&cfg).expect("read config");
    fs::write(
        &cfg,
        format!(
            "{text}\n[health]\nlisten = \"127.0.0.1:{port}\"\nrestore_token = \"{TOKEN}\"\n\n\
             [[alert]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n",
            hook.url("/hook")
        ),
    )
    .expect("write config");
    let sidecar = crate::support::Sidecar::start(&cfg);

    let log = || sidecar.log_text();
    let summary = crate::support::eventually(
        "/health shows the refusal",
        Duration::from_secs(60),
        async || {
            let body: Option<serde_json::Value> = async {
                // The refusal's text is behind the token (an unauthenticated
                // caller sees states and figures only).
                let r = reqwest::Client::new()
                    .get(format!("http://127.0.0.1:{port}/health"))
                    .bearer_auth(TOKEN)
                    .send()
                    .await
                    .ok()?;
                r.json().await.ok()
            }
            .await;
            let stream = body.as_ref().and_then(|b| {
                b["problems"]
                    .as_array()?
                    .iter()
                    .find(|p| p["id"] == "postgres/main/stream")
                    .and_then(|p| p["summary"].as_str().map(str::to_owned))
            });
            stream
                .filter(|s| s.contains("not retried"))
                .ok_or_else(|| crate::support::with_log(format!("{body:?}"), &log))
        },
    )
    .await;
    assert!(
        summary.contains("13.16") && summary.contains("14, 15, 16, 17 and 18"),
        "{summary}"
    );
    let alerts = hook
        .wait_accepted("/hook", 1, Duration::from_secs(30))
        .await;
    let about_stream = |alerts: &[serde_json::Value]| {
        alerts
            .iter()
            .filter(|a| a["id"] == "postgres/main/stream")
            .count()
    };
    assert_eq!(about_stream(&alerts), 1, "{alerts:#?}");
    // Longer than the supervisor's first backoffs (1 s, then 2 s, jittered)
    // and the stream's own (1 s): a retry loop would have reconnected.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "reconnected:\n{}",
        sidecar.log_text()
    );
    assert_eq!(about_stream(&hook.accepted("/hook")), 1);
    let log = sidecar.stop();
    let errors = log.lines().filter(|l| l.contains("ERROR")).count();
    assert_eq!(errors, 1, "{log}");
}
