//! Batched destinations (`batch_interval`): a real S3-compatible server
//! (moto) batched beside an fs destination under `pitr run` against a real
//! cluster. The acknowledgement never waits for the batched one, a failing
//! batch shows in `/health`, and a restore from the batched destination
//! alone (fresh state directory) is exact up to its last batch.

use std::time::Duration;

use jiff::Timestamp;

use crate::support::PgCluster;
use crate::support::Sidecar;
use crate::support::pg::free_port;
use crate::support::s3::S3Server;
use crate::support::{between, eventually, with_log, write_row};

use crate::support::pitr_with as pitr;

/// `/health` as JSON, whatever its status (`None` while nothing listens).
async fn health(port: u16) -> Option<serde_json::Value> {
    let r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/health"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    serde_json::from_str(&r.text().await.ok()?).ok()
}

/// Polls `/health` until `ready` accepts it; returns it.
async fn wait_for(
    port: u16,
    within: Duration,
    sidecar: &Sidecar,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = None;
    let log = || sidecar.log_text();
    eventually(what, within, async || {
        if let Some(b) = health(port).await {
            if ready(&b) {
                return Ok(b);
            }
            last = Some(b);
        }
        Err(with_log(format!("last /health {last:#?}"), &log))
    })
    .await
}

/// The batched destination's last successful batch, from `/health`.
fn last_batch(b: &serde_json::Value) -> Option<Timestamp> {
    b["batched"][0]["last_batch"].as_str()?.parse().ok()
}

/// `pg_replication_slots.restart_lsn` of the `pitr` slot: for a physical
/// slot, the flush position pitr last acknowledged.
fn acknowledged(pg: &PgCluster) -> Option<pitr::pg::Lsn> {
    pg.psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'pitr'")
        .trim()
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_s3_destination_never_holds_up_the_acknowledgement_and_restores_alone_to_its_last_batch()
 {
    let pg = PgCluster::start();
    let s3 = S3Server::start("batched");
    let dir = tempfile::tempdir().expect("tempdir");
    let (head, fs) = crate::support::repository_toml(
        dir.path(),
        "\n[verify]\nschedule = \"off\"\n\n[retention]\nschedule = \"off\"\n\n[scrub]\nschedule = \"off\"\n",
    );
    let s3_dest = s3.destination_toml("s3", "batched", "pitr/");
    let pgs = format!(
        "\n[[postgres]]\nname = \"main\"\nconninfo = \"{}\"\nslot = \"pitr\"\nbase_backup = \"off\"\n",
        pg.conninfo("postgres")
    );
    let port = free_port();
    let both = dir.path().join("both.toml");
    std::fs::write(
        &both,
        format!(
            "{head}{fs}{s3_dest}batch_interval = \"2s\"\n{pgs}\n[health]\nlisten = \"127.0.0.1:{port}\"\n"
        ),
    )
    .expect("config");
    let show = crate::support::text;

    let out = pitr(&both, &["init"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        show(&out).contains("Batched destination s3 holds repository"),
        "{}",
        show(&out)
    );
    let out = pitr(&both, &["check"]);
    let text = show(&out);
    assert!(
        text.contains(
            "destination s3: batched every 2s: not counted toward the acknowledgement quorum"
        ) && text.contains("destination local: repository")
            && text.contains("takes every write"),
        "{text}"
    );

    pg.psql("CREATE TABLE oracle (id int PRIMARY KEY, at timestamptz NOT NULL)");
    let sidecar = Sidecar::start(&both);
    wait_for(
        port,
        Duration::from_secs(120),
        &sidecar,
        "streaming and a first batch",
        |b| b["postgres"][0]["connected"] == true && last_batch(b).is_some(),
    )
    .await;
    // A base backup by another process: its chunks reach the batched
    // destination as copies of its packs, not from the sidecar's staging.
    let out = pitr(&both, &["backup", "--wait-wal", "60"]);
    assert!(out.status.success(), "{}", show(&out));
    let mut rows = Vec::new();
    for id in 1..=6 {
        rows.push((id, write_row(&pg, id)));
        if id == 3 {
            pg.psql("SELECT pg_switch_wal()");
        }
    }

    // Batches follow: one after the sixth row (the backup's packs copied,
    // the sidecar's staged chunks packed).
    let sixth = rows[5].1;
    wait_for(
        port,
        Duration::from_secs(120),
        &sidecar,
        "a batch after the sixth row",
        |b| last_batch(b).is_some_and(|t| t > sixth) && b["batched"][0]["last_error"].is_null(),
    )
    .await;

    // The batched destination hangs: every write is still acknowledged
    // (the fs destination holds it), and /health says batches fail.
    s3.pause();
    let seventh = write_row(&pg, 7);
    let lsn: pitr::pg::Lsn = pg
        .psql("SELECT pg_current_wal_lsn()")
        .parse()
        .expect("an LSN");
    let log = || sidecar.log_text();
    eventually(
        format!("WAL up to {lsn} acknowledged while the batched destination hung"),
        Duration::from_secs(60),
        async || match acknowledged(&pg) {
            Some(f) if f >= lsn => Ok(()),
            f => Err(with_log(format!("acknowledged {f:?}"), &log)),
        },
    )
    .await;
    let failing = wait_for(
        port,
        Duration::from_secs(240),
        &sidecar,
        "the failing batch shown",
        |b| b["batched"][0]["last_error"].is_string(),
    )
    .await;
    let problem = |b: &serde_json::Value| {
        b["problems"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["id"] == "destination/s3/batch"))
            .cloned()
    };
    assert_eq!(
        problem(&failing).map(|p| p["failing"].clone()),
        Some(serde_json::Value::Bool(true)),
        "{failing:#}"
    );
    assert!(
        sidecar
            .log_text()
            .contains("batch failed; the next interval tries again"),
        "{}",
        sidecar.log_text()
    );
    // Only the batched destination is affected.
    assert_eq!(failing["postgres"][0]["connected"], true, "{failing:#}");
    s3.resume();

    let eighth = write_row(&pg, 8);
    let done_after = eighth
        .checked_add(jiff::SignedDuration::from_secs(2))
        .expect("a time");
    let ok = wait_for(
        port,
        Duration::from_secs(240),
        &sidecar,
        "a batch after the eighth row",
        |b| {
            last_batch(b).is_some_and(|t| t > done_after) && b["batched"][0]["last_error"].is_null()
        },
    )
    .await;
    assert_eq!(problem(&ok), None, "{ok:#}");
    sidecar.stop();

    // The batched destination alone: a config naming only it, a fresh
    // state directory.
    std::fs::remove_dir_all(dir.path().join("state")).expect("rm state");
    let only = dir.path().join("s3.toml");
    std::fs::write(&only, format!("{head}{s3_dest}{pgs}")).expect("config");
    for (at, want) in [
        (between(rows[3].1, rows[4].1), "1,2,3,4"),
        (between(seventh, eighth), "1,2,3,4,5,6,7"),
    ] {
        std::fs::remove_dir_all(dir.path().join("state")).ok();
        let mut restored = PgCluster::empty();
        let data = restored.data_dir();
        let out = pitr(
            &only,
            &[
                "restore",
                "--at",
                &pitr::restore::pg_time(at),
                "--target",
                data.to_str().expect("utf-8"),
            ],
        );
        assert!(out.status.success(), "restore to {at}: {}", show(&out));
        restored.start_filled("");
        assert_eq!(
            restored.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM oracle"),
            want,
            "restore to {at} from the batched destination alone"
        );
    }
}

/// The batch itself, on fs destinations: chunks staged by one process are
/// packed by the next one (staging survives a restart), a staged record
/// damaged on disk is never packed (its chunk comes with a copy of the
/// pack that holds it), a superseded item is forgotten, and the batched
/// destination alone reads back every item exactly.
#[tokio::test(flavor = "multi_thread")]
async fn staging_survives_a_restart_damage_is_never_packed_and_the_batched_copy_reads_back() {
    use pitr::repo::{BatchStage, Chunking, Repository};
    use pitr::ship::{Destination, Fanout, FsDestination};
    use std::sync::Arc;

    let t = crate::support::TestRepo::new().await;
    let batched_fanout = || {
        Fanout::new(vec![
            Arc::new(FsDestination::new("far", t.dir.path().join("far"))) as Arc<dyn Destination>,
        ])
    };
    let stage_of = |repo: &Repository| {
        let s = Arc::new(
            BatchStage::new("far", &t.opts.state_dir, &t.opts.recipients, repo.key())
                .expect("stage"),
        );
        repo.attach_batch_stage(s.clone());
        s
    };
    let data = |seed: u8, len: usize| -> Vec<u8> {
        let mut x = u64::from(seed) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let put = |repo: &Repository, name: &str, kind: &str, bytes: Vec<u8>| {
        let repo = repo.clone();
        let (name, kind) = (name.to_owned(), kind.to_owned());
        async move {
            let mut w = repo.writer();
            let m = w
                .put(
                    &name,
                    &kind,
                    serde_json::json!({}),
                    Chunking::Cdc,
                    &bytes[..],
                )
                .await
                .expect("put");
            w.commit().await.expect("commit");
            m
        }
    };

    // One process stages three items' chunks, then stops.
    let repo = t.open().await;
    let stage = stage_of(&repo);
    let a = data(1, 3 << 20);
    let b = data(2, 2 << 20);
    let p = data(3, 1 << 20);
    put(&repo, "x/a", "test", a.clone()).await;
    put(&repo, "x/b", "test", b.clone()).await;
    put(&repo, "x/seg.partial", "wal-partial", p.clone()).await;
    let staged = stage.staged_bytes();
    assert!(staged > (5 << 20), "staged {staged} bytes");
    drop((repo, stage));

    // Damage one record's blob: the first record starts after the header
    // (12 bytes and the wrapped key); its blob after 72 bytes more.
    let dir = t.opts.state_dir.join("batch").join("far");
    let file = std::fs::read_dir(&dir)
        .expect("stage dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "stage"))
        .expect("a staging file");
    let mut bytes = std::fs::read(&file).expect("read");
    let wrapped = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
    let at = 12 + wrapped + 72 + 100;
    bytes[at] ^= 0x40;
    std::fs::write(&file, &bytes).expect("write");

    // The next process packs what the first staged.
    let repo = t.open().await;
    let stage = stage_of(&repo);
    assert_eq!(
        stage.staged_bytes(),
        staged,
        "the staging file was recovered"
    );
    let far = repo
        .open_batched(batched_fanout())
        .await
        .expect("open batched");
    let supersedes = |kind: &str, name: &str| pitr::wal::superseded_by(kind, name);
    let first = repo
        .send_batch(&far, Some(&stage), &supersedes)
        .await
        .expect("batch");
    assert_eq!(first.items, 3, "{first:?}");
    assert!(first.packs_built >= 1, "{first:?}");
    assert_eq!(
        first.packs_copied, 1,
        "the damaged record's chunk comes with its pack: {first:?}"
    );
    assert_eq!(first.forgotten, 0, "{first:?}");
    // Nothing new: nothing sent.
    let again = repo
        .send_batch(&far, Some(&stage), &supersedes)
        .await
        .expect("batch");
    assert_eq!(again.commit, None, "{again:?}");
    // The whole segment supersedes its partial.
    put(&repo, "x/seg", "wal", p.clone()).await;
    let second = repo
        .send_batch(&far, Some(&stage), &supersedes)
        .await
        .expect("batch");
    assert_eq!((second.items, second.forgotten), (1, 1), "{second:?}");
    assert_eq!(
        second.packs_built + second.packs_copied,
        0,
        "its chunks are there: {second:?}"
    );
    drop((repo, stage, far));

    // The batched destination alone, with a fresh state directory.
    let mut alone = t.opts.clone();
    alone.state_dir = t.dir.path().join("fresh");
    alone.key_file = Some(t.opts.state_dir.join("repository.key"));
    let far = Repository::open(batched_fanout(), alone)
        .await
        .expect("open far alone");
    let names: Vec<String> = far
        .catalog()
        .items("x/")
        .expect("items")
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["x/a", "x/b", "x/seg"]);
    for (name, want) in [("x/a", &a), ("x/b", &b), ("x/seg", &p)] {
        let item = far
            .catalog()
            .latest_item(name)
            .expect("catalog")
            .expect("item");
        let mut out = Vec::new();
        far.reader()
            .expect("reader")
            .read_to(&item.manifest, &mut out)
            .await
            .expect("read");
        assert!(&out == want, "{name} differs");
    }
}
