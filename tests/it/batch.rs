//! Batched destinations (`batch_interval`): a real S3-compatible server
//! (moto) batched beside an fs destination under `pitr run` against a real
//! cluster. The acknowledgement never waits for the batched one, a failing
//! batch shows in `/health`, and a restore from the batched destination
//! alone (fresh state directory) is exact up to its last batch.

use std::path::Path;
use std::time::{Duration, Instant};

use jiff::Timestamp;

use crate::harness::PgCluster;
use crate::harness::pg::free_port;
use crate::harness::s3::S3Server;
use crate::pitr_restore::{between, write_row};
use crate::sqlite::Sidecar;

fn pitr(config: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_pitr"))
        .args(args)
        .arg("-c")
        .arg(config)
        .env_remove("PITR_CONFIG")
        .output()
        .expect("run pitr")
}

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
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < within {
        if let Some(b) = health(port).await {
            if ready(&b) {
                return b;
            }
            last = Some(b);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!(
        "{what}: not within {within:?}; last /health {last:#?}\nlog:\n{}",
        sidecar.log_text()
    );
}

/// The batched destination's last successful batch, from `/health`.
fn last_batch(b: &serde_json::Value) -> Option<Timestamp> {
    b["batched"][0]["last_batch"].as_str()?.parse().ok()
}

/// `pg_replication_slots.restart_lsn` of the `pitr` slot: for a physical
/// slot, the flush position pitr last acknowledged.
fn acknowledged(pg: &PgCluster) -> Option<pitr::wal::Lsn> {
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
    let (head, fs) = crate::harness::repository_toml(
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
    let show = crate::harness::text;

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
    let lsn: pitr::wal::Lsn = pg
        .psql("SELECT pg_current_wal_lsn()")
        .parse()
        .expect("an LSN");
    let start = Instant::now();
    loop {
        if acknowledged(&pg).is_some_and(|f| f >= lsn) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "WAL up to {lsn} was not acknowledged within 60 s while the batched destination hung:\n{}",
            sidecar.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
                &pitr::pitr::pg_time(at),
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
