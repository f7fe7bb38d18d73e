//! The `[[infisical]]` snapshot source through the real binary, against
//! the server of `support::infisical` (Infisical's documented API):
//! snapshots by `pitr backup --snapshot` and by `pitr run` on its
//! schedule, no new chunks for an unchanged project, a change visible at
//! the next snapshot, a restore `--at` between two snapshots byte-equal to
//! the older export, a partial export (a 500 mid-export) not recorded,
//! the dotenv and YAML forms, retention, `/health`, `/metrics`, a
//! scheduled test restore, and no credential or secret value in any
//! output or log line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use pitr::snapshot::infisical::export;

use crate::support::{InfisicalServer, TestRepo, text};

const CLIENT_ID: &str = "machine-identity-for-pitr";
const CLIENT_SECRET: &str = "cs-0f1e2d3c4b5a-the-client-secret";
const PROJECT: &str = "proj-e2e";

/// Every secret value the server holds in these tests: none may appear in
/// pitr's output or logs.
const VALUES: [&str; 4] = [
    "postgres://prod-password-e2e@db/app",
    "prod-api-key-e2e-value",
    "dev-password-e2e-value",
    "rotated-api-key-e2e-value",
];

async fn server() -> InfisicalServer {
    let s = InfisicalServer::start(CLIENT_ID, CLIENT_SECRET, PROJECT, &["dev", "prod"]).await;
    s.set("prod", "/", "DATABASE_URL", VALUES[0], "main db", &["db"]);
    s.set("prod", "/api", "API_KEY", VALUES[1], "", &[]);
    s.set("dev", "/", "DATABASE_URL", VALUES[2], "", &[]);
    s
}

/// The config of `repo` with one `[[infisical]]` entry "secrets" on
/// `server`, with `extra` keys.
fn config(repo: &TestRepo, server: &InfisicalServer, extra: &str) -> PathBuf {
    let path = repo.write_config(&[]);
    let secret = repo.dir.path().join("infisical-client-secret");
    std::fs::write(&secret, format!("{CLIENT_SECRET}\n")).expect("secret file");
    let mut text = std::fs::read_to_string(&path).expect("config");
    text.push_str(&format!(
        "\n[[infisical]]\nname = \"secrets\"\nsite_url = \"{}\"\nproject_id = \"{PROJECT}\"\n\
         environments = [\"prod\", \"dev\"]\nclient_id = \"{CLIENT_ID}\"\n\
         client_secret_file = {:?}\n{extra}",
        server.url(),
        secret.display().to_string()
    ));
    std::fs::write(&path, text).expect("write config");
    path
}

/// What the library exports from `server` now: the bytes a snapshot must
/// restore to.
async fn exported(server: &InfisicalServer) -> Vec<u8> {
    export(&server.options(&["prod", "dev"]))
        .await
        .expect("export")
}

/// `pitr args` with every log line of every crate (`PITR_LOG=trace`), so
/// that the scan for secrets sees all pitr could print.
fn pitr_traced(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pitr"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PITR_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .env("PITR_LOG", "trace")
        .env("NO_COLOR", "1")
        .output()
        .expect("run pitr")
}

/// Fails if `what` holds the client secret, a token the server issued or
/// a secret value.
fn no_secrets(server: &InfisicalServer, what: &str, label: &str) {
    let mut secrets: Vec<String> = VALUES.iter().map(|v| (*v).to_owned()).collect();
    secrets.push(CLIENT_SECRET.to_owned());
    secrets.extend(server.issued_tokens());
    for s in &secrets {
        assert!(
            !what.contains(s.as_str()),
            "{label} shows a secret:\n{what}"
        );
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The snapshots `pitr list --json` shows for "secrets".
fn listed(cfg: &Path) -> Vec<serde_json::Value> {
    let out = pitr_traced(&["list", "-c", path(cfg), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("list --json");
    let src = v["snapshots"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "secrets"))
        .unwrap_or_else(|| panic!("no source secrets in {v}"))
        .clone();
    assert_eq!(src["kind"], "infisical", "{src:#}");
    src["snapshots"].as_array().expect("snapshots").clone()
}

fn pack_count(repo: &TestRepo) -> usize {
    fn walk(p: &Path) -> usize {
        std::fs::read_dir(p).map_or(0, |rd| {
            rd.flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        walk(&p)
                    } else {
                        usize::from(p.to_string_lossy().contains("/packs/"))
                    }
                })
                .sum()
        })
    }
    walk(repo.dir.path())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infisical_snapshots_dedup_restore_by_time_and_refuse_a_partial_export() {
    let server = server().await;
    let repo = TestRepo::new().await;
    let cfg = config(&repo, &server, "schedule = \"off\"\n");
    let c = path(&cfg);
    let outputs = std::cell::RefCell::new(String::new());
    let run = |args: &[&str]| {
        let out = pitr_traced(args);
        outputs.borrow_mut().push_str(&text(&out));
        out
    };
    let ok = |args: &[&str]| {
        let out = run(args);
        assert_eq!(out.status.code(), Some(0), "pitr {args:?}: {}", text(&out));
        out
    };

    let first_export = exported(&server).await;
    ok(&["backup", "-c", c, "--snapshot", "secrets"]);
    let packs_after_first = pack_count(&repo);
    // Unchanged: a new snapshot, no new chunk.
    ok(&["backup", "-c", c, "--snapshot", "secrets"]);
    assert_eq!(
        pack_count(&repo),
        packs_after_first,
        "an unchanged project stored new chunks"
    );
    let between = jiff::Timestamp::now();
    std::thread::sleep(Duration::from_millis(50));

    // A change is visible at the next snapshot.
    server.set("prod", "/api", "API_KEY", VALUES[3], "rotated", &[]);
    ok(&["backup", "-c", c, "--snapshot", "secrets"]);
    assert!(
        pack_count(&repo) > packs_after_first,
        "the change stored nothing"
    );
    let snaps = listed(&cfg);
    assert_eq!(snaps.len(), 3, "{snaps:#?}");

    let dir = repo.dir.path();
    // `pitr restore --snapshot secrets POINT... --output FILE`, read back.
    let restored = |point: &[&str], file: &str| {
        let out = dir.join(file);
        let mut args = vec!["restore", "-c", c, "--snapshot", "secrets"];
        args.extend_from_slice(point);
        args.extend_from_slice(&["--output", path(&out)]);
        ok(&args);
        std::fs::read(&out).expect("restored file")
    };
    assert_eq!(
        restored(&["--latest"], "latest.json"),
        exported(&server).await
    );

    // --at between the second and the third: the second, byte-equal to
    // what the server served then.
    let at = between.to_string();
    let older = restored(&["--at", &at], "older.json");
    assert_eq!(older, first_export);

    // One environment as dotenv and YAML.
    let as_text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("UTF-8");
    let dotenv = as_text(restored(
        &["--latest", "--format", "dotenv", "--environment", "prod"],
        "prod.env",
    ));
    assert!(
        dotenv.contains(&format!("DATABASE_URL='{}'\n", VALUES[0])),
        "{dotenv}"
    );
    assert!(
        dotenv.contains(&format!("API_KEY='{}'\n", VALUES[3])),
        "{dotenv}"
    );
    assert!(
        !dotenv.contains(VALUES[2]),
        "dev's value in prod's file: {dotenv}"
    );
    let yaml = as_text(restored(
        &["--latest", "--format", "yaml", "--environment", "dev"],
        "dev.yaml",
    ));
    let y: serde_yaml_ng::Value = serde_yaml_ng::from_str(&yaml).expect("YAML");
    assert_eq!(y["DATABASE_URL"].as_str(), Some(VALUES[2]));
    // dotenv of two environments without --environment: usage error.
    let out = run(&[
        "restore",
        "-c",
        c,
        "--snapshot",
        "secrets",
        "--latest",
        "--format",
        "dotenv",
        "--output",
        path(&dir.join("both.env")),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--environment"), "{}", text(&out));

    // A 500 on the second environment's listing, on every retry too
    // (five, `API_RETRY`): an error, and nothing recorded.
    let calls = server.listing_calls();
    server.fail_listing_calls(calls + 2..=calls + 7);
    let out = run(&["backup", "-c", c, "--snapshot", "secrets"]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "a partial export succeeded: {}",
        text(&out)
    );
    assert!(text(&out).contains("500"), "{}", text(&out));
    assert_eq!(listed(&cfg).len(), 3, "the partial export was recorded");

    // Retention keeps the policy per source.
    let toml = std::fs::read_to_string(&cfg).expect("config").replacen(
        "[retention]\n",
        "[retention]\nkeep_last = 1\nkeep_daily = 0\nkeep_weekly = 0\nkeep_monthly = 0\n",
        1,
    );
    std::fs::write(&cfg, toml).expect("write");
    ok(&["retention", "-c", c]);
    let kept = listed(&cfg);
    assert_eq!(kept.len(), 1, "{kept:#?}");
    assert_eq!(kept[0]["id"], snaps[2]["id"], "the newest stays");

    no_secrets(&server, &outputs.borrow(), "pitr's output and trace logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pitr_run_snapshots_infisical_on_schedule_with_health_metrics_and_test_restores() {
    use crate::sidecar::get_as;
    use crate::support::pg::free_port;
    use crate::support::{Sidecar, eventually, with_log};

    let server = server().await;
    let repo = TestRepo::new().await;
    let port = free_port();
    let token = "a-long-random-test-token-0123456789";
    let cfg = config(
        &repo,
        &server,
        &format!(
            "schedule = \"* * * * *\"\n\n[health]\nlisten = \"127.0.0.1:{port}\"\n\
             restore_token = \"{token}\"\n"
        ),
    );
    repo.enable_test_restores(&cfg, "*/5 * * * * *");
    let sidecar = Sidecar::start(&cfg);
    let log = || sidecar.log_text();

    // One at start (there is none), one at the next minute.
    let health = eventually(
        "two scheduled snapshots and a passing test restore in /health",
        Duration::from_secs(150),
        async || {
            let Some((status, body)) = get_as(port, "/health", Some(token)).await else {
                return Err(with_log("nothing listens yet".to_owned(), &log));
            };
            let h: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            let text = h.to_string();
            let parsed = text.contains("parsed as an Infisical export");
            let two = log().matches("stored a snapshot").count() >= 2;
            if status == 200 && parsed && two {
                Ok(h)
            } else {
                Err(with_log(format!("{status}: {h:#}"), &log))
            }
        },
    )
    .await;
    assert!(
        !health["problems"].to_string().contains("snapshot/secrets"),
        "{health:#}"
    );
    let (_, metrics) = get_as(port, "/metrics", Some(token))
        .await
        .expect("metrics");
    for want in [
        "pitr_snapshot_bytes{source=\"secrets\"}",
        "pitr_snapshot_failures_total{source=\"secrets\"} 0",
        "pitr_job_up{job=\"snapshot/secrets\"} 1",
    ] {
        assert!(metrics.contains(want), "/metrics lacks {want}:\n{metrics}");
    }
    // The restore API returns a snapshot to a caller with the token.
    let (status, body) = get_as(port, "/snapshots/secrets?latest=true", Some(token))
        .await
        .expect("GET /snapshots");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_bytes(), exported(&server).await.as_slice());
    let (status, dotenv) = get_as(
        port,
        "/snapshots/secrets?latest=true&format=dotenv&environment=prod",
        Some(token),
    )
    .await
    .expect("GET /snapshots dotenv");
    assert_eq!(status, 200, "{dotenv}");
    assert!(
        dotenv.contains(&format!("DATABASE_URL='{}'", VALUES[0])),
        "{dotenv}"
    );
    for (path, who, want) in [
        ("/snapshots/secrets?latest=true", None, 401),
        ("/snapshots/nothing?latest=true", Some(token), 404),
        ("/snapshots/secrets?latest=true&id=x", Some(token), 400),
        (
            "/snapshots/secrets?at=2001-01-01T00:00:00Z",
            Some(token),
            422,
        ),
    ] {
        let (status, body) = get_as(port, path, who).await.expect("GET");
        assert_eq!(status, want, "{path}: {body}");
        no_secrets(&server, &body, path);
    }
    let run_log = sidecar.stop();
    let snaps = listed(&cfg);
    assert!(snaps.len() >= 2, "{snaps:#?}\n{run_log}");
    let out = pitr_traced(&["list", "-c", path(&cfg), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let src = v["snapshots"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "secrets"))
        .expect("secrets")
        .clone();
    assert_eq!(src["last_test_restore"]["ok"], true, "{src:#}");
    assert_eq!(src["last_test_restore"]["kind"], "infisical", "{src:#}");
    no_secrets(&server, &run_log, "the pitr run log");
    no_secrets(&server, &health.to_string(), "/health");
    no_secrets(&server, &metrics, "/metrics");
}
