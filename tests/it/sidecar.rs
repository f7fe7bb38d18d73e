//! `pitr run` as users deploy it: a real cluster, a real SQLite file written
//! by another process, the health endpoint, metrics, the restore API,
//! supervision and shutdown.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::sqlite::add_sqlite;
use crate::support::Sidecar;
use crate::support::TestRepo;
use crate::support::pg::free_port;
use crate::support::{PgCluster, WebhookReceiver, eventually, with_log};

/// A config for `pitr run` with a health endpoint on a free port, an
/// initial base backup (schedule on, far away) and a 10 s stream threshold.
pub(crate) fn sidecar_config(
    repo: &TestRepo,
    pg: &PgCluster,
    extra: &str,
) -> (std::path::PathBuf, u16) {
    let cfg = repo.write_config(&[("main", &pg.conninfo("postgres"))]);
    let port = free_port();
    let text = std::fs::read_to_string(&cfg)
        .expect("read config")
        .replace("base_backup = \"off\"", "base_backup = \"0 3 1 1 *\"");
    std::fs::write(
        &cfg,
        format!("{text}\n[health]\nlisten = \"127.0.0.1:{port}\"\nstream_down_max = 10\n{extra}\n"),
    )
    .expect("write config");
    (cfg, port)
}

/// GET `path` on the endpoint: status and body (`None` while nothing
/// listens).
pub(crate) async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    get_as(port, path, None).await
}

/// [`get`] with a bearer token.
pub(crate) async fn get_as(port: u16, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    let mut req = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .timeout(Duration::from_secs(10));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.unwrap_or_default()))
}

/// Polls `/health` until it answers `want`; returns the body.
async fn wait_health(
    port: u16,
    want: u16,
    within: Duration,
    sidecar: &Sidecar,
) -> serde_json::Value {
    wait_health_until(port, want, within, sidecar, |_| true).await
}

/// Polls `/health` until it answers `want` with a body `ready` accepts.
async fn wait_health_until(
    port: u16,
    want: u16,
    within: Duration,
    sidecar: &Sidecar,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_health_as(port, None, want, within, sidecar, ready).await
}

/// [`wait_health_until`] with a bearer token (the whole report).
async fn wait_health_as(
    port: u16,
    token: Option<&str>,
    want: u16,
    within: Duration,
    sidecar: &Sidecar,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = None;
    let log = || sidecar.log_text();
    eventually(format!("/health answers {want}"), within, async || {
        if let Some((status, body)) = get_as(port, "/health", token).await {
            if status == want {
                let json: serde_json::Value = serde_json::from_str(&body).expect("health is JSON");
                if ready(&json) {
                    return Ok(json);
                }
            }
            last = Some((status, body));
        }
        Err(with_log(format!("last answer {last:?}"), &log))
    })
    .await
}

fn start_writer(db: &Path, seconds: u32) -> std::process::Child {
    Command::new("python3")
        .arg(crate::sqlite::writer_script())
        .arg(db)
        .args(["wal", &seconds.to_string(), "100"])
        .stdout(Stdio::null())
        .spawn()
        .expect("start the SQLite writer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_server_down_and_up_and_metrics_and_backups_are_served() {
    let mut pg = PgCluster::start();
    let repo = TestRepo::new().await;
    let hook = WebhookReceiver::start().await;
    let (cfg, port) = sidecar_config(
        &repo,
        &pg,
        &format!(
            "\n[[alert]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n",
            hook.url("/hook")
        ),
    );
    let db = repo.dir.path().join("app.db");
    let mut writer = start_writer(&db, 600);
    // The writer creates the file; the watcher needs it to exist.
    eventually(
        "the writer created the database",
        Duration::from_secs(30),
        async || {
            if db.exists() {
                Ok(())
            } else {
                Err("no file yet")
            }
        },
    )
    .await;
    add_sqlite(&cfg, "app", &db, "");
    let sidecar = Sidecar::start(&cfg);

    // All well: streaming, the initial base backup stored and restorable,
    // the SQLite file captured, the destination answering.
    let body = wait_health_until(port, 200, Duration::from_secs(180), &sidecar, |b| {
        b["postgres"][0]["connected"] == true && b["postgres"][0]["last_backup"].is_string()
    })
    .await;
    assert_eq!(body["status"], "ok", "{body:#}");
    let main = &body["postgres"][0];
    assert_eq!(main["name"], "main");
    assert_eq!(main["connected"], true, "{body:#}");
    assert!(main["last_backup"].is_string(), "{body:#}");
    assert!(
        main["acknowledged_lsn"]
            .as_str()
            .is_some_and(|l| l != "0/0"),
        "{body:#}"
    );
    assert_eq!(body["destinations"][0]["name"], "local");
    assert_eq!(body["destinations"][0]["ok"], true);
    // Every part of `pitr run` is in the job registry, with its schedule
    // and its supervisor's state.
    let jobs: Vec<(&str, &str)> = body["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| {
            (
                j["name"].as_str().unwrap_or_default(),
                j["schedule"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    for name in [
        "catalog-refresh",
        "postgres/main/stream",
        "postgres/main/base-backups",
        "sqlite/app/watcher",
        "retention",
        "scrub",
        "test-restores",
    ] {
        assert!(
            jobs.iter().any(|(n, _)| *n == name),
            "{name} missing: {body:#}"
        );
    }
    assert!(
        jobs.contains(&("postgres/main/stream", "continuous")),
        "{body:#}"
    );
    assert!(
        body["jobs"]
            .as_array()
            .expect("jobs")
            .iter()
            .all(|j| j["state"] == "running" && j["restarts"] == 0),
        "{body:#}"
    );
    eventually("an SQLite capture", Duration::from_secs(60), async || {
        let (_, text) = get(port, "/health").await.expect("health answers");
        let b: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        if b["sqlite"][0]["captures"].as_u64().unwrap_or(0) > 0 {
            Ok(())
        } else {
            Err(format!("{b:#}"))
        }
    })
    .await;

    let (status, metrics) = get(port, "/metrics").await.expect("metrics answer");
    assert_eq!(status, 200);
    for name in [
        "pitr_wal_lag_bytes{database=\"main\"}",
        "pitr_wal_stream_up{database=\"main\"} 1",
        "pitr_backup_last_success_timestamp_seconds{database=\"main\"}",
        "pitr_backup_size_bytes{database=\"main\"}",
        "pitr_sqlite_captures{database=\"app\"}",
        "pitr_destination_up{destination=\"local\"} 1",
        "pitr_upload_bytes_total{destination=\"local\"}",
        "pitr_health_ok 1",
        "pitr_job_up{job=\"postgres/main/stream\"} 1",
        "pitr_job_restarts{job=\"retention\"} 0",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }
    // Without a token /backups and the restore API are off.
    let (status, _) = get(port, "/backups").await.expect("backups answer");
    assert_eq!(status, 404);
    let off = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/restore"))
        .json(&serde_json::json!({"latest": true, "target_dir": "/tmp/x"}))
        .send()
        .await
        .expect("restore answers");
    assert_eq!(off.status().as_u16(), 404);

    // All well so far: nothing was sent.
    assert!(
        hook.received().is_empty(),
        "alerts while all was well: {:?}",
        hook.received()
    );

    // The server goes away: failing within the 10 s threshold (plus an
    // evaluation), naming the stream.
    pg.stop();
    let body = wait_health(port, 503, Duration::from_secs(60), &sidecar).await;
    let problems: Vec<&str> = body["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .filter_map(|p| p["id"].as_str())
        .collect();
    assert!(problems.contains(&"postgres/main/stream"), "{body:#}");
    assert_eq!(body["postgres"][0]["connected"], false);
    // The words (which name the server's address) are not for callers
    // without the token; the log has them.
    let summary = body["problems"][0]["summary"].as_str().unwrap_or_default();
    assert_eq!(summary, pitr::sidecar::health::server::HIDDEN, "{body:#}");
    assert!(
        !body
            .to_string()
            .contains(&format!("127.0.0.1:{}", pg.port())),
        "{body:#}"
    );
    let (_, metrics) = get(port, "/metrics").await.expect("metrics answer");
    assert!(
        metrics.contains("pitr_wal_stream_up{database=\"main\"} 0"),
        "{metrics}"
    );
    assert!(metrics.contains("pitr_health_ok 0"), "{metrics}");
    // One alert, about the stream; none more while it stays down.
    let alerts = hook
        .wait_accepted("/hook", 1, Duration::from_secs(30))
        .await;
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0]["event"], "failing", "{alerts:#?}");
    assert_eq!(alerts[0]["id"], "postgres/main/stream", "{alerts:#?}");
    assert_eq!(alerts[0]["database"], "main", "{alerts:#?}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        hook.accepted("/hook").len(),
        1,
        "{:#?}",
        hook.accepted("/hook")
    );

    // And comes back: the stream reconnects (its backoff is at most 60 s),
    // and one recovery notice goes out.
    pg.start_again();
    wait_health(port, 200, Duration::from_secs(120), &sidecar).await;
    let alerts = hook
        .wait_accepted("/hook", 2, Duration::from_secs(30))
        .await;
    assert_eq!(alerts.len(), 2, "{alerts:#?}");
    assert_eq!(alerts[1]["event"], "recovered", "{alerts:#?}");
    assert_eq!(alerts[1]["id"], "postgres/main/stream", "{alerts:#?}");
    // /health shows the channel (its report is at most one evaluation old).
    let body = wait_health_until(port, 200, Duration::from_secs(30), &sidecar, |b| {
        b["alert_channels"][0]["delivered"] == 2
    })
    .await;
    assert_eq!(body["alert_channels"][0]["name"], "hook", "{body:#}");

    let _ = writer.kill();
    let _ = writer.wait();
    let stopped = Instant::now();
    let log = sidecar.stop();
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "pitr run took {:?} to stop:\n{log}",
        stopped.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_health_port_fails_at_start_with_the_address() {
    let pg = PgCluster::start();
    let repo = TestRepo::new().await;
    let (cfg, port) = sidecar_config(&repo, &pg, "");
    let _taken = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind");
    let out = crate::support::pitr(&["run", "-c", cfg.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2), "{}", crate::sqlite::text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}"))
            && err.contains("[health] listen"),
        "{err}"
    );
}

/// `pg_replication_slots.restart_lsn` of the `pitr` slot: for a physical
/// slot, the flush position pitr last acknowledged.
pub(crate) fn slot_restart_lsn(pg: &PgCluster) -> Option<pitr::pg::Lsn> {
    let text = pg.psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'pitr'");
    text.trim().parse().ok()
}

/// Stops the sidecar with SIGTERM; asserts exit 0 within 10 s.
fn stop_within_10s(sidecar: Sidecar, what: &str) {
    let stopped = Instant::now();
    let log = sidecar.stop();
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "pitr run took {:?} to stop {what}:\n{log}",
        stopped.elapsed()
    );
}

/// Nothing the server was told is stored is missing from the repository.
async fn acknowledged_is_stored(repo: &TestRepo, pg: &PgCluster) {
    let acked = slot_restart_lsn(pg).expect("the slot has a restart_lsn");
    let r = repo.open().await;
    r.sync_catalog().await.expect("sync");
    let store = pitr::wal::WalStore::new(r.clone(), "main");
    let (end, _) = store
        .stored_end(1)
        .expect("catalog")
        .expect("WAL is stored on timeline 1");
    assert!(
        acked <= end,
        "the server was told {acked} is stored, but WAL ends at {end}"
    );
    let ranges = store.ranges(1).expect("ranges");
    assert_eq!(ranges.len(), 1, "WAL has gaps: {ranges:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_base_backup_and_during_streaming_stops_within_10s_and_loses_nothing() {
    let pg = PgCluster::start();
    pg.psql("CREATE TABLE t (id serial PRIMARY KEY, pad text); INSERT INTO t (pad) SELECT repeat('x', 500) FROM generate_series(1, 20000)");
    let repo = TestRepo::new().await;
    // 32 kB/s: the initial base backup takes minutes, so the signal lands
    // in the middle of it.
    let (cfg, port) = sidecar_config(&repo, &pg, "");
    let text = std::fs::read_to_string(&cfg).expect("read");
    std::fs::write(
        &cfg,
        text.replace(
            "base_backup = \"0 3 1 1 *\"",
            "base_backup = \"0 3 1 1 *\"\nmax_rate = 32\ncheckpoint = \"fast\"",
        ),
    )
    .expect("write");

    let sidecar = Sidecar::start(&cfg);
    wait_health_until(port, 200, Duration::from_secs(120), &sidecar, |b| {
        b["postgres"][0]["connected"] == true
            && b["postgres"][0]["schedule"]["running"]["done"]
                .as_u64()
                .unwrap_or(0)
                > 0
    })
    .await;
    stop_within_10s(sidecar, "during a base backup");
    acknowledged_is_stored(&repo, &pg).await;
    let r = repo.open().await;
    r.sync_catalog().await.expect("sync");
    assert!(
        pitr::basebackup::backups(&r, "main")
            .expect("backups")
            .is_empty(),
        "a backup cut short must not be recorded"
    );

    // The next start continues streaming; now stop it while WAL flows.
    let text = std::fs::read_to_string(&cfg).expect("read");
    std::fs::write(&cfg, text.replace("\nmax_rate = 32", "")).expect("write");
    let sidecar = Sidecar::start(&cfg);
    wait_health_until(port, 200, Duration::from_secs(120), &sidecar, |b| {
        b["postgres"][0]["connected"] == true && b["postgres"][0]["last_backup"].is_string()
    })
    .await;
    let writer = {
        let conninfo = pg.conninfo("postgres");
        std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(6);
            let mut n = 0;
            while Instant::now() < end {
                let out = Command::new(crate::support::pg::pg_bin_dir().join("psql"))
                    .args([&conninfo, "-qAtc"])
                    .arg(
                        "INSERT INTO t (pad) SELECT repeat('y', 500) FROM generate_series(1, 2000)",
                    )
                    .output();
                if out.is_ok_and(|o| o.status.success()) {
                    n += 1;
                }
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_within_10s(sidecar, "while WAL streams");
    let inserts = writer.join().expect("writer");
    assert!(inserts > 0, "the writer wrote nothing");
    acknowledged_is_stored(&repo, &pg).await;

    // And again: the third start picks up where the second stopped.
    let sidecar = Sidecar::start(&cfg);
    let before = slot_restart_lsn(&pg).expect("slot");
    pg.psql("INSERT INTO t (pad) SELECT repeat('z', 500) FROM generate_series(1, 2000); SELECT pg_switch_wal()");
    wait_health_until(port, 200, Duration::from_secs(120), &sidecar, |b| {
        b["postgres"][0]["acknowledged_lsn"]
            .as_str()
            .and_then(|l| l.parse::<pitr::pg::Lsn>().ok())
            .is_some_and(|l| l > before)
    })
    .await;
    stop_within_10s(sidecar, "after a restart");
    acknowledged_is_stored(&repo, &pg).await;
}

/// Flips bytes in the middle of every pack in `store`; returns how many.
fn corrupt_every_pack(store: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![store.join("packs")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let mut bytes = std::fs::read(&p).expect("pack");
            if bytes.len() < 4096 {
                continue;
            }
            let mid = bytes.len() / 2;
            for b in &mut bytes[mid..mid + 64] {
                *b ^= 0x5a;
            }
            std::fs::write(&p, bytes).expect("write pack");
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_test_restores_show_in_health_metrics_and_catalog_and_a_corrupt_object_alerts() {
    let pg = PgCluster::start();
    pg.psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 1000)");
    let repo = TestRepo::new().await;
    let hook = WebhookReceiver::start().await;
    let token = "a-long-random-test-token-0123456789";
    let (cfg, port) = sidecar_config(
        &repo,
        &pg,
        &format!(
            "restore_token = \"{token}\"\n\n[[alert]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n",
            hook.url("/hook")
        ),
    );
    repo.enable_test_restores(&cfg, "*/15 * * * * *");
    let sidecar = Sidecar::start(&cfg);

    // A scheduled test restore passes: in /health (its details behind the
    // token), /metrics and the catalog.
    let body = wait_health_as(
        port,
        Some(token),
        200,
        Duration::from_secs(240),
        &sidecar,
        |b| {
            b["verification"]["last"]
                .as_array()
                .is_some_and(|l| l.iter().any(|r| r["database"] == "main" && r["ok"] == true))
        },
    )
    .await;
    let report = body["verification"]["last"]
        .as_array()
        .and_then(|l| l.iter().find(|r| r["database"] == "main"))
        .expect("a report")
        .clone();
    assert!(
        report["checks"].to_string().contains("pg_amcheck"),
        "pg_amcheck ran: {report:#}"
    );
    let (_, metrics) = get(port, "/metrics").await.expect("metrics");
    assert!(
        metrics.lines().any(|l| l.starts_with("pitr_verify_last_ok")
            && l.contains("main")
            && l.ends_with(" 1")),
        "{metrics}"
    );
    let r = repo.open().await;
    r.sync_catalog().await.expect("sync");
    let stored = pitr::verify::last_reports(&r).expect("reports");
    assert!(
        stored.iter().any(|s| s.database == "main" && s.ok),
        "{stored:?}"
    );
    // A test restore scheduled before the initial base backup existed was
    // skipped, not failed: nothing about verification was sent.
    let before = hook.accepted("/hook");
    assert!(
        before.iter().all(|a| a["id"] != "verification"),
        "{before:#?}"
    );

    // A corrupt object: the next test restore fails, /health is 503, an
    // alert names the verification.
    assert!(corrupt_every_pack(&repo.store()) > 0);
    let body = wait_health_as(
        port,
        Some(token),
        503,
        Duration::from_secs(240),
        &sidecar,
        |b| {
            b["problems"]
                .as_array()
                .is_some_and(|p| p.iter().any(|c| c["id"] == "verification"))
        },
    )
    .await;
    let failed = body["verification"]["last"]
        .as_array()
        .and_then(|l| l.iter().find(|r| r["database"] == "main"))
        .expect("a report")
        .clone();
    assert_eq!(failed["ok"], false, "{failed:#}");
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("packs/")),
        "{failed:#}"
    );
    let alerts = hook
        .wait_accepted("/hook", before.len() + 1, Duration::from_secs(30))
        .await;
    assert!(
        alerts[before.len()..]
            .iter()
            .any(|a| a["id"] == "verification" && a["event"] == "failing"),
        "{alerts:#?}"
    );
    let (_, metrics) = get(port, "/metrics").await.expect("metrics");
    assert!(
        metrics.lines().any(|l| l.starts_with("pitr_verify_last_ok")
            && l.contains("main")
            && l.ends_with(" 0")),
        "{metrics}"
    );
    drop(sidecar);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_restore_api_needs_the_token_stays_under_its_root_and_reports_the_reached_point() {
    let pg = PgCluster::start();
    pg.psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)");
    let repo = TestRepo::new().await;
    let token = "a-long-random-test-token-0123456789";
    // The root holds the running server's data directory: `force` must
    // still never touch it.
    let root = pg.dir().to_owned();
    let (cfg, port) = sidecar_config(
        &repo,
        &pg,
        &format!(
            "restore_token = \"{token}\"\nrestore_root = \"{}\"\n",
            root.display()
        ),
    );
    repo.enable_test_restores(&cfg, "off");
    let sidecar = Sidecar::start(&cfg);
    wait_health_until(port, 200, Duration::from_secs(180), &sidecar, |b| {
        b["postgres"][0]["last_backup"].is_string()
    })
    .await;
    pg.psql("INSERT INTO t SELECT generate_series(101, 150); SELECT pg_switch_wal()");

    let target = root.join("restored");
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/restore");

    // /backups: only with the token, and what `pitr list --json` prints.
    let (status, _) = get(port, "/backups").await.expect("answer");
    assert_eq!(status, 401, "/backups needs the token");
    let (status, text) = get_as(port, "/backups", Some(token)).await.expect("answer");
    assert_eq!(status, 200, "{text}");
    let served: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let out = crate::support::pitr(&["list", "-c", cfg.to_str().expect("utf-8"), "--json"]);
    assert!(out.status.success(), "{}", crate::sqlite::text(&out));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let keys = |v: &serde_json::Value| {
        v.as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(keys(&served), keys(&listed));
    assert_eq!(keys(&served["postgres"][0]), keys(&listed["postgres"][0]));
    assert_eq!(
        served["postgres"][0]["backups"], listed["postgres"][0]["backups"],
        "{served:#}\n{listed:#}"
    );
    assert_eq!(served["postgres"][0]["backups"][0]["restorable"], true);

    // Refused, and nothing removed or created: a directory outside the
    // root, a link out of it, and `force` on the running server's data
    // directory (which lies beneath the root here).
    let outside = repo.dir.path().join("outside");
    std::os::unix::fs::symlink(repo.dir.path(), root.join("link")).expect("symlink");
    for (dir, force, code) in [
        (outside.clone(), false, 403),
        (root.join("link/x"), false, 403),
        (pg.data_dir(), true, 409),
        (pg.data_dir(), false, 409),
    ] {
        let r = client
            .post(&url)
            .bearer_auth(token)
            .json(&serde_json::json!({"latest": true, "target_dir": dir, "force": force}))
            .send()
            .await
            .expect("answer");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        assert_eq!(status, code, "{}: {text}", dir.display());
    }
    assert!(!outside.exists(), "nothing is created outside restore_root");
    assert!(!repo.dir.path().join("x").exists());
    assert!(pg.data_dir().join("PG_VERSION").exists());
    assert_eq!(pg.psql("SELECT count(*) FROM t").trim(), "150");

    let body = serde_json::json!({"latest": true, "target_dir": target});
    let none = client.post(&url).json(&body).send().await.expect("answer");
    assert_eq!(none.status().as_u16(), 401);
    let wrong = client
        .post(&url)
        .bearer_auth("not-the-token-at-all-0000")
        .json(&body)
        .send()
        .await
        .expect("answer");
    assert_eq!(wrong.status().as_u16(), 401);
    assert!(!target.exists(), "nothing is restored without the token");
    let bad = client
        .post(&url)
        .bearer_auth(token)
        .json(&serde_json::json!({"at": "2026-11-23 03:00:00", "target_dir": target}))
        .send()
        .await
        .expect("answer");
    assert_eq!(
        bad.status().as_u16(),
        400,
        "a time without a zone is refused"
    );

    // Wait until the WAL with the second insert is stored, then restore.
    let job = eventually(
        "the restore request accepted (202)",
        Duration::from_secs(60),
        async || {
            let r = client
                .post(&url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .expect("answer");
            if r.status().as_u16() == 202 {
                Ok(r.json::<serde_json::Value>().await.expect("JSON"))
            } else {
                Err(format!("{:?}", r.text().await))
            }
        },
    )
    .await;
    let id = job["id"].as_str().expect("id").to_owned();
    let status = format!("http://127.0.0.1:{port}/restore/{id}");
    assert_eq!(
        client
            .get(&status)
            .send()
            .await
            .expect("answer")
            .status()
            .as_u16(),
        401
    );
    let log = || sidecar.log_text();
    let done = eventually(
        "the restore job ended",
        Duration::from_secs(300),
        async || {
            let j: serde_json::Value = client
                .get(&status)
                .bearer_auth(token)
                .send()
                .await
                .expect("answer")
                .json()
                .await
                .expect("JSON");
            if j["state"] != "running" {
                Ok(j)
            } else {
                Err(with_log(format!("{j:#}"), &log))
            }
        },
    )
    .await;
    assert_eq!(done["state"], "done", "{done:#}\n{}", sidecar.log_text());
    assert!(done["reached"]["redo_done"].is_string(), "{done:#}");
    assert!(
        done["reached"]["wal_files"].as_u64().unwrap_or(0) > 0,
        "{done:#}"
    );
    assert!(target.join("PG_VERSION").exists());
    // Retention, test restores and the scrub are off here: an off schedule
    // waits quietly, never ends and is restarted in a loop.
    let log = sidecar.log_text();
    assert!(!log.contains("restarting"), "{log}");
    drop(sidecar);
}

/// `[health] tls_cert_file` / `tls_key_file` (certificates made by the
/// openssl CLI): the endpoint serves https only, so the restore API's
/// token travels encrypted; plain http gets no answer; `pitr probe` reads
/// the status of `https://127.0.0.1:PORT/health` although the certificate
/// names `localhost` (it sends nothing and reads its own host); and a
/// certificate file that holds none stops `pitr run` at start, naming the
/// key (exit 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_endpoint_serves_https_with_its_certificate() {
    // A directory the openssl CLI may write as the PostgreSQL user.
    let holder = PgCluster::empty();
    let certs = holder.dir();
    crate::support::tls::make_ca(certs, "ca");
    crate::support::tls::make_server_cert(certs);
    let repo = TestRepo::new().await;
    let db = repo.dir.path().join("app.db");
    rusqlite::Connection::open(&db)
        .and_then(|c| c.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x INTEGER)"))
        .expect("write the SQLite file");
    let port = free_port();
    let token = "a-restore-token-of-32-characters";
    let config_with = |cert: &Path| {
        let cfg = repo.write_config(&[]);
        add_sqlite(&cfg, "app", &db, "");
        let mut text = std::fs::read_to_string(&cfg).expect("read config");
        text.push_str(&format!(
            "\n[health]\nlisten = \"127.0.0.1:{port}\"\nrestore_token = \"{token}\"\n\
             tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            cert.display(),
            certs.join("server.key").display()
        ));
        std::fs::write(&cfg, text).expect("write config");
        cfg
    };
    let cfg = config_with(&certs.join("server.crt"));
    let sidecar = Sidecar::start(&cfg);
    let ca = std::fs::read(certs.join("ca.crt")).expect("read the CA");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("a PEM certificate"))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let health: serde_json::Value = eventually(
        "/health answers over https",
        Duration::from_secs(60),
        async || {
            let r = client
                .get(format!("https://localhost:{port}/health"))
                .send()
                .await
                .map_err(|e| format!("{e:?}\n{}", sidecar.log_text()))?;
            r.json::<serde_json::Value>()
                .await
                .map_err(|e| e.to_string())
        },
    )
    .await;
    assert!(health["status"].is_string(), "{health:#}");
    let backups = client
        .get(format!("https://localhost:{port}/backups"))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET /backups");
    assert_eq!(backups.status().as_u16(), 200);
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/health"))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    assert!(plain.is_err(), "plain http got an answer: {plain:?}");
    let url = format!("https://127.0.0.1:{port}/health");
    let probe = crate::support::pitr(&["probe", &url]);
    let said = String::from_utf8_lossy(&probe.stderr).to_string();
    match probe.status.code() {
        Some(0) => {}
        Some(1) => assert!(said.contains("answered 503"), "{said}"),
        other => panic!("pitr probe exited {other:?}: {said}"),
    }
    sidecar.stop();

    let empty = repo.dir.path().join("empty.pem");
    std::fs::write(&empty, "").expect("write");
    let out = crate::support::pitr(&["run", "-c", config_with(&empty).to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("[health] tls_cert_file") && err.contains("holds no certificate"),
        "{err}"
    );
}
