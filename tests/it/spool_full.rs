//! The spool-full case through a live `pitr run`: fs + S3 with a quorum of
//! one and a 1 MiB spool, S3 hung (SIGSTOP) while the database writes WAL.
//! Acknowledgement stops (the slot keeps the WAL on the server), `/health`
//! says `spool/full` with 503, nothing is lost; once S3 answers again the
//! spool drains, acknowledgement catches up and both destinations hold the
//! WAL without a gap.

use std::time::Duration;

use pitr::pg::Lsn;

use crate::support::pg::free_port;
use crate::support::{PgCluster, S3Server};
use crate::support::{Sidecar, eventually, with_log};

fn restart_lsn(pg: &PgCluster) -> Option<Lsn> {
    pg.psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'pitr'")
        .trim()
        .parse()
        .ok()
}

fn current_lsn(pg: &PgCluster) -> Lsn {
    pg.psql("SELECT pg_current_wal_lsn()")
        .trim()
        .parse()
        .expect("an LSN")
}

/// The bearer token the sidecar here is given: `/health` shows its words
/// only to callers that send it.
const TOKEN: &str = "a-long-random-test-token-0123456789";

/// `/health` as seen with the token: status and body, `None` while nothing
/// answers.
async fn health(port: u16) -> Option<(u16, serde_json::Value)> {
    let r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/health"))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    let body = serde_json::from_str(&r.text().await.ok()?).ok()?;
    Some((status, body))
}

/// Polls until `cond` holds, for at most `within`.
async fn until<T>(
    what: &str,
    within: Duration,
    sidecar: &Sidecar,
    mut cond: impl AsyncFnMut() -> Option<T>,
) -> T {
    let log = || sidecar.log_text();
    eventually(what, within, async || {
        cond().await.ok_or_else(|| with_log("not yet", &log))
    })
    .await
}

/// The `spool/full` entry of `/health`'s `problems`, if it is failing.
fn spool_full_problem(body: &serde_json::Value) -> Option<serde_json::Value> {
    body["problems"]
        .as_array()?
        .iter()
        .find(|c| c["id"] == "spool/full")
        .cloned()
}

/// About 12 MiB of WAL that does not compress away.
fn write_wal(pg: &PgCluster) {
    pg.psql(
        "INSERT INTO t (pad) SELECT string_agg(md5(random()::text), '') \
         FROM generate_series(1, 20000) g, generate_series(1, 20) h GROUP BY g",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_spool_stops_acknowledgement_and_reports_it_until_s3_is_back() {
    let server = S3Server::start("spoolfull");
    let pg = PgCluster::start();
    pg.psql("CREATE TABLE t (id serial PRIMARY KEY, pad text)");
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let (head, fs) =
        crate::support::repository_toml(dir.path(), "quorum = 1\nspool_max_bytes = \"1MiB\"\n");
    let s3 = server.destination_toml("s3", "spoolfull", "");
    let rest = format!(
        "\n[[postgres]]\nname = \"main\"\nconninfo = \"{}\"\nbase_backup = \"off\"\n\n\
         [verify]\nschedule = \"off\"\n\n[retention]\nschedule = \"off\"\n\n\
         [scrub]\nschedule = \"off\"\n\n[health]\nlisten = \"127.0.0.1:{port}\"\nrestore_token = \"{TOKEN}\"\n",
        pg.conninfo("postgres")
    );
    let cfg = dir.path().join("pitr.toml");
    std::fs::write(&cfg, format!("{head}{fs}{s3}{rest}")).expect("config");
    let pitr = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pitr"))
            .args(args)
            .arg("-c")
            .arg(&cfg)
            .env_remove("PITR_CONFIG")
            .output()
            .expect("run pitr")
    };
    let out = pitr(&["init"]);
    assert!(out.status.success(), "{out:?}");

    let sidecar = Sidecar::start(&cfg);
    // Streaming and caught up with both destinations answering.
    write_wal(&pg);
    let target = current_lsn(&pg);
    until(
        "the first acknowledgement",
        Duration::from_secs(120),
        &sidecar,
        async || restart_lsn(&pg).filter(|l| *l >= target),
    )
    .await;

    server.pause();
    for _ in 0..4 {
        write_wal(&pg);
    }
    let written = current_lsn(&pg);
    let body = until(
        "/health: spool/full",
        Duration::from_secs(120),
        &sidecar,
        async || {
            let (status, body) = health(port).await?;
            let check = spool_full_problem(&body)?;
            (status == 503 && check["failing"] == true).then_some(body)
        },
    )
    .await;
    let check = spool_full_problem(&body).expect("the check");
    let summary = check["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains("the spool is full") && summary.contains("spool_max_bytes"),
        "{summary}"
    );
    assert!(
        body["spool"]["full_for_seconds"].as_f64().is_some(),
        "{body:#}"
    );
    // Acknowledgement has stopped short of what was written, and stays put.
    let held = restart_lsn(&pg).expect("restart_lsn");
    assert!(
        held < written,
        "acknowledged {held} of {written} with the spool full"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        restart_lsn(&pg),
        Some(held),
        "acknowledgement moved while the spool was full"
    );

    server.resume();
    until(
        "acknowledgement catching up",
        Duration::from_secs(180),
        &sidecar,
        async || restart_lsn(&pg).filter(|l| *l >= written),
    )
    .await;
    until(
        "the spool draining",
        Duration::from_secs(120),
        &sidecar,
        async || {
            // 503 stays: no base backup was taken (`postgres/main/backup`).
            let (_, body) = health(port).await?;
            let drained = body["spool"]["objects"] == 0 && spool_full_problem(&body).is_none();
            drained.then_some(())
        },
    )
    .await;
    let acked = restart_lsn(&pg).expect("restart_lsn");
    sidecar.stop();

    // Each destination alone holds the WAL as one unbroken range to at
    // least what was acknowledged.
    let config = pitr::config::Config::load(&cfg).expect("config");
    let dests = pitr::wiring::fanout(&config);
    for (i, name) in ["local", "s3"].into_iter().enumerate() {
        let only = pitr::ship::Fanout::new(vec![dests.destinations()[i].clone()]);
        assert_eq!(only.destinations()[0].name(), name);
        let mut opts = pitr::wiring::repo_options(&config).expect("options");
        opts.state_dir = dir.path().join(format!("state-{name}-only"));
        let repo = pitr::repo::Repository::open(only, opts)
            .await
            .expect("open one destination");
        let ranges = pitr::wal::WalStore::new(repo, "main")
            .ranges(1)
            .expect("ranges");
        assert_eq!(ranges.len(), 1, "{name}: one unbroken range: {ranges:?}");
        assert!(
            ranges[0].1 >= acked,
            "{name} holds the WAL to {acked}: {ranges:?}"
        );
    }
    let out = pitr(&["verify"]);
    assert!(
        out.status.success(),
        "verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
