//! Snapshot sources (`[[command]]`, docs/SNAPSHOTS.md) through the real
//! binary: a real `pg_dump -Fc` restored with `pg_restore`, a 2 GiB output
//! streamed in bounded memory, failing commands that record nothing,
//! deduplication, `--at` between two snapshots and the `--output` rules.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{PgCluster, TestRepo, pitr, run_as_pg_user, text};

/// A config of `repo` with `commands` (TOML of `[[command]]` entries)
/// appended.
fn config_with(repo: &TestRepo, commands: &str) -> PathBuf {
    let path = repo.write_config(&[]);
    let mut text = std::fs::read_to_string(&path).expect("config");
    text.push_str(commands);
    std::fs::write(&path, text).expect("write config");
    path
}

/// One `[[command]]` entry named `name` running `argv`, with `extra` keys.
fn command_toml(name: &str, argv: &[&str], extra: &str) -> String {
    let argv: Vec<String> = argv.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "\n[[command]]\nname = \"{name}\"\nrun = [{}]\nschedule = \"off\"\n{extra}",
        argv.join(", ")
    )
}

fn run_ok(args: &[&str]) -> Output {
    let out = pitr(args);
    assert_eq!(out.status.code(), Some(0), "pitr {args:?}: {}", text(&out));
    out
}

/// The snapshots `pitr list --json` shows for source `name`.
fn listed(cfg: &Path, name: &str) -> Vec<serde_json::Value> {
    let out = run_ok(&["list", "-c", path(cfg), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("list --json");
    v["snapshots"]
        .as_array()
        .expect("snapshots")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("source {name} in {v}"))["snapshots"]
        .as_array()
        .expect("its snapshots")
        .clone()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The OS user the harness runs PostgreSQL as, when the tests run as root.
fn pg_os_user() -> Option<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    ["postgres", "nobody"]
        .into_iter()
        .find(|u| nix::unistd::User::from_name(u).ok().flatten().is_some())
}

/// A real `pg_dump -Fc` as a `[[command]]` (as the harness's unprivileged
/// user when the tests run as root, which also exercises `user`): the
/// restored dump is a file of mode 0600 that `pg_restore` loads into a
/// fresh database with the same row counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pg_dump_snapshot_restores_with_pg_restore() {
    let pg = PgCluster::start();
    pg.psql("CREATE DATABASE app");
    let app = pg.conninfo("app");
    pg.psql_at(
        &app,
        "CREATE TABLE orders (id int PRIMARY KEY, note text);
         INSERT INTO orders SELECT g, 'order ' || g FROM generate_series(1, 5000) g;
         CREATE TABLE users (id int PRIMARY KEY);
         INSERT INTO users SELECT generate_series(1, 321);",
    );
    let repo = TestRepo::new().await;
    let user = pg_os_user().map_or(String::new(), |u| format!("user = \"{u}\"\n"));
    let dump = pg.bin("pg_dump");
    let cfg = config_with(
        &repo,
        &command_toml(
            "app-dump",
            &[path(&dump), "-Fc", "--dbname", &app],
            &format!("{user}env = {{ PGCONNECT_TIMEOUT = \"10\" }}\n"),
        ),
    );
    let out = run_ok(&["backup", "-c", path(&cfg), "--snapshot", "app-dump"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Snapshot"),
        "{}",
        text(&out)
    );
    let snaps = listed(&cfg, "app-dump");
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(snaps[0]["kind"], "command");
    assert!(snaps[0]["bytes"].as_u64().expect("bytes") > 1000);

    // Written for the PostgreSQL user to read when it loads it.
    let outdir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(outdir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let file = outdir.path().join("app.dump");
    run_ok(&[
        "restore",
        "-c",
        path(&cfg),
        "--snapshot",
        "app-dump",
        "--latest",
        "--output",
        path(&file),
    ]);
    let mode = std::fs::metadata(&file)
        .expect("restored")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "restored dump mode {mode:o}");
    if let Some(u) = pg_os_user() {
        let u = nix::unistd::User::from_name(u)
            .ok()
            .flatten()
            .expect("user");
        nix::unistd::chown(&file, Some(u.uid), None).expect("chown for pg_restore");
    }

    pg.psql("CREATE DATABASE restored");
    let restored = pg.conninfo("restored");
    let load = run_as_pg_user(&mut Command::new(pg.bin("pg_restore")))
        .args(["--exit-on-error", "--no-owner", "--dbname", &restored])
        .arg(&file)
        .output()
        .expect("run pg_restore");
    assert!(load.status.success(), "pg_restore: {}", text(&load));
    for table in ["orders", "users"] {
        let count = |c: &str| pg.psql_at(c, &format!("SELECT count(*) FROM {table}"));
        assert_eq!(count(&restored), count(&app), "rows of {table}");
    }
    assert_eq!(pg.psql_at(&restored, "SELECT count(*) FROM users"), "321");
}

/// Runs `cmd` and returns its status, its output, and its peak resident
/// memory in KiB: the largest `VmHWM` of /proc/<pid>/status seen while it
/// runs (read every 50 ms; a high-water mark, so a peak between reads is
/// still seen at the next). Not `wait4`'s `ru_maxrss`: Linux carries the
/// spawning process's high-water mark over exec into it, so in a large
/// test process it measures the test binary, not pitr.
fn run_peak_rss(cmd: &mut Command) -> (std::process::ExitStatus, String, u64) {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let status_file = format!("/proc/{}/status", child.id());
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0u64;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let hwm = std::fs::read_to_string(&status_file).ok().and_then(|t| {
                    let line = t.lines().find(|l| l.starts_with("VmHWM:"))?.to_owned();
                    line.split_whitespace().nth(1)?.parse::<u64>().ok()
                });
                peak = peak.max(hwm.unwrap_or(0));
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            peak
        })
    };
    let out = child.wait_with_output().expect("wait");
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let peak = poller.join().expect("poller");
    (out.status, text(&out), peak)
}

/// 2 GiB of output (distinct, compressible lines, so nothing deduplicates
/// and the store stays small) streams through `pitr backup --snapshot`
/// with pitr's peak RSS under 128 MiB (invariant 7, docs/ARCHITECTURE.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_gib_output_streams_in_bounded_memory() {
    const SIZE: u64 = 2 << 30;
    let repo = TestRepo::new().await;
    // Lines of 64 bytes: a counter and its hex, padded; none repeats.
    let script = format!(
        "import sys\nw=sys.stdout.buffer.write\nn={}\nfor i in range(0,n,1024):\n    \
         w(b''.join(b'%016d %016x pitr snapshots line %08d.\\n' % (j, j*2654435761, j%99991) for j in range(i,min(i+1024,n))))\n",
        SIZE / 64
    );
    let cfg = config_with(&repo, &command_toml("big", &["python3", "-c", &script], ""));
    let (status, out, peak_kib) = run_peak_rss(Command::new(env!("CARGO_BIN_EXE_pitr")).args([
        "backup",
        "-c",
        path(&cfg),
        "--snapshot",
        "big",
    ]));
    assert!(
        status.success(),
        "pitr backup --snapshot big: {status}\n{out}"
    );
    eprintln!(
        "peak RSS of pitr backup --snapshot for 2 GiB: {} MiB",
        peak_kib / 1024
    );
    assert!(
        peak_kib < 128 * 1024,
        "peak RSS {} MiB for a 2 GiB snapshot",
        peak_kib / 1024
    );
    let snaps = listed(&cfg, "big");
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["bytes"].as_u64(), Some(SIZE), "{snaps:?}");
}

/// A command that fails (exit 1 after some output, killed by a signal,
/// past its timeout) records nothing: `pitr backup` fails with its stderr
/// tail and names it, `pitr list` shows no snapshot, and a restore exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_commands_record_nothing_and_show_their_stderr() {
    let repo = TestRepo::new().await;
    let mut toml = command_toml(
        "exits",
        &[
            "sh",
            "-c",
            "echo partial output; echo 'pg_dump: error: connection refused' >&2; exit 1",
        ],
        "",
    );
    toml.push_str(&command_toml(
        "killed",
        &[
            "sh",
            "-c",
            "echo partial; echo 'about to die' >&2; kill -9 $$",
        ],
        "",
    ));
    toml.push_str(&command_toml(
        "hangs",
        &[
            "sh",
            "-c",
            "echo 'waiting forever' >&2; echo partial; sleep 600",
        ],
        "timeout = \"2s\"\n",
    ));
    // A script that echoes its settings: the password stays out of the
    // message (and so out of the log, /health and the alerts).
    toml.push_str(&command_toml(
        "echoes",
        &[
            "sh",
            "-c",
            "echo \"connecting as app:$DUMP_PASSWORD\" >&2; exit 2",
        ],
        "env = { DUMP_PASSWORD = \"hunter2-s3cret\" }\n",
    ));
    let cfg = config_with(&repo, &toml);
    for (name, expect) in [
        ("exits", &["exited with status 1", "connection refused"][..]),
        (
            "echoes",
            &[
                "exited with status 2",
                "connecting as app:[env DUMP_PASSWORD]",
            ],
        ),
        ("killed", &["killed by signal SIGKILL", "about to die"]),
        (
            "hangs",
            &["longer than its timeout of 2 s", "waiting forever"],
        ),
    ] {
        let out = pitr(&["backup", "-c", path(&cfg), "--snapshot", name]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{name}: {}", text(&out));
        assert!(
            err.contains(&format!("[[command]] \"{name}\"")),
            "{name}: {err}"
        );
        for e in expect {
            assert!(err.contains(e), "{name}: {e:?} not in {err}");
        }
        assert!(!err.contains("hunter2"), "{name}: {err}");
        assert!(listed(&cfg, name).is_empty(), "{name} recorded a snapshot");
        let restore = pitr(&[
            "restore",
            "-c",
            path(&cfg),
            "--snapshot",
            name,
            "--latest",
            "--output",
            path(&repo.dir.path().join("out")),
        ]);
        assert_eq!(restore.status.code(), Some(1), "{name}: {}", text(&restore));
    }
}

/// Packs in the store.
fn packs(repo: &TestRepo) -> usize {
    walkdir(&repo.store().join("packs"))
}

fn walkdir(p: &Path) -> usize {
    std::fs::read_dir(p).map_or(0, |d| {
        d.flatten()
            .map(|e| {
                if e.path().is_dir() {
                    walkdir(&e.path())
                } else {
                    1
                }
            })
            .sum()
    })
}

/// An unchanged output stores no new pack; a changed one shows at the next
/// snapshot; `--at` between two snapshots returns the older, byte-equal;
/// `--id` picks one; `--output` refuses an existing file without
/// `--force`; `pitr plan --snapshot` names the one a restore would write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_and_restore_by_time() {
    let repo = TestRepo::new().await;
    let src = repo.dir.path().join("export.txt");
    let first: String = (0..200_000)
        .map(|i| format!("row {i} of the first export\n"))
        .collect();
    std::fs::write(&src, &first).expect("write");
    let cfg = config_with(&repo, &command_toml("export", &["cat", path(&src)], ""));
    let c = path(&cfg);
    run_ok(&["backup", "-c", c, "--snapshot", "export"]);
    let after_first = packs(&repo);
    assert!(after_first > 0);
    run_ok(&["backup", "-c", c, "--snapshot", "export"]);
    assert_eq!(
        packs(&repo),
        after_first,
        "an unchanged output stored a new pack"
    );
    let between = jiff::Timestamp::now();
    let second = first.replace("row 100000 of", "row 100000 (changed) of");
    std::fs::write(&src, &second).expect("write");
    let out = run_ok(&["backup", "-c", c, "--snapshot", "export"]);
    assert!(
        packs(&repo) > after_first,
        "the change stored nothing: {}",
        text(&out)
    );
    let snaps = listed(&cfg, "export");
    assert_eq!(snaps.len(), 3);

    let at = between.to_string();
    let plan = run_ok(&[
        "plan",
        "-c",
        c,
        "--snapshot",
        "export",
        "--at",
        &at,
        "--json",
    ]);
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).expect("plan json");
    assert_eq!(plan["id"], snaps[1]["id"], "plan at {at}");

    let out_dir = repo.dir.path();
    let older = out_dir.join("older.txt");
    let restore = |extra: &[&str]| {
        let mut args = vec!["restore", "-c", c, "--snapshot", "export"];
        args.extend_from_slice(extra);
        pitr(&args)
    };
    let r = restore(&["--at", &at, "--output", path(&older)]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    assert_eq!(std::fs::read_to_string(&older).expect("older"), first);
    // To standard output, the newest.
    let r = restore(&["--latest"]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    assert_eq!(String::from_utf8_lossy(&r.stdout), second);
    // By id.
    let id = snaps[2]["id"].as_str().expect("id");
    let r = restore(&["--id", id]);
    assert_eq!(String::from_utf8_lossy(&r.stdout), second, "{}", text(&r));

    // An existing file is refused (exit 2) and left alone, unless --force.
    let r = restore(&["--latest", "--output", path(&older)]);
    assert_eq!(r.status.code(), Some(2), "{}", text(&r));
    assert!(String::from_utf8_lossy(&r.stderr).contains("--force"));
    assert_eq!(std::fs::read_to_string(&older).expect("older"), first);
    let r = restore(&["--latest", "--output", path(&older), "--force"]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    assert_eq!(std::fs::read_to_string(&older).expect("replaced"), second);
    let mode = std::fs::metadata(&older)
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Before the first snapshot: nothing covers it.
    let r = restore(&["--at", "2001-01-01T00:00:00Z"]);
    assert_eq!(r.status.code(), Some(1), "{}", text(&r));
    // An unknown source is a usage error.
    let r = pitr(&["restore", "-c", c, "--snapshot", "nope", "--latest"]);
    assert_eq!(r.status.code(), Some(2), "{}", text(&r));
}

/// `pitr run` with two `[[command]]` sources, both due at start: the one
/// that works is stored, shown in `/health` and `/metrics`, and test
/// restored on the `[verify]` schedule (read back, then its `verify` run
/// on the copy); the one that fails records nothing, fails its check with
/// its stderr tail, and alerts exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pitr_run_takes_snapshots_on_schedule_with_health_metrics_alerts_and_test_restores() {
    use crate::sidecar::get_as;
    use crate::support::pg::free_port;
    use crate::support::{Sidecar, WebhookReceiver, eventually, with_log};
    use std::time::Duration;

    let repo = TestRepo::new().await;
    let hook = WebhookReceiver::start().await;
    let port = free_port();
    let token = "a-long-random-test-token-0123456789";
    // Far-away cron times: each runs once, at start, having no snapshot.
    let yearly = "schedule = \"0 3 1 1 *\"\n";
    let mut toml = command_toml(
        "export",
        &[
            "sh",
            "-c",
            "echo hello from the export; head -c 200000 /dev/zero | tr '\\\\0' x",
        ],
        "verify = [\"grep\", \"-q\", \"hello from\", \"{file}\"]\n",
    )
    .replace("schedule = \"off\"\n", yearly);
    toml.push_str(
        &command_toml(
            "broken",
            &[
                "sh",
                "-c",
                "echo 'export failed: HTTP 503 from the API' >&2; exit 1",
            ],
            "",
        )
        .replace("schedule = \"off\"\n", yearly),
    );
    toml.push_str(&format!(
        "\n[health]\nlisten = \"127.0.0.1:{port}\"\nrestore_token = \"{token}\"\n\n\
         [[alert]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n",
        hook.url("/hook")
    ));
    let cfg = config_with(&repo, &toml);
    repo.enable_test_restores(&cfg, "*/5 * * * * *");
    let sidecar = Sidecar::start(&cfg);
    let log = || sidecar.log_text();

    let health = eventually(
        "a stored snapshot, a failing check and a passing test restore in /health",
        Duration::from_secs(120),
        async || {
            let Some((status, body)) = get_as(port, "/health", Some(token)).await else {
                return Err(with_log("nothing listens yet".to_owned(), &log));
            };
            let h: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            let stored = !h["snapshot/export"]["last"].is_null()
                || !h["sections"]["snapshot/export"]["last"].is_null();
            let failing = h["problems"]
                .as_array()
                .is_some_and(|p| p.iter().any(|c| c["id"] == "snapshot/broken"));
            let verified = h.to_string().contains("verify (grep) exited 0");
            if status == 503 && stored && failing && verified {
                Ok(h)
            } else {
                Err(with_log(format!("{status}: {h:#}"), &log))
            }
        },
    )
    .await;
    let broken = health["problems"]
        .as_array()
        .and_then(|p| p.iter().find(|c| c["id"] == "snapshot/broken"))
        .expect("the check")
        .clone();
    assert!(
        broken["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("HTTP 503 from the API"),
        "{broken:#}"
    );
    assert!(
        !health["problems"].to_string().contains("snapshot/export"),
        "{health:#}"
    );

    let (_, metrics) = get_as(port, "/metrics", Some(token))
        .await
        .expect("metrics");
    for want in [
        "pitr_snapshot_bytes{source=\"export\"}",
        "pitr_snapshot_stored_bytes{source=\"export\"}",
        "pitr_snapshot_duration_seconds{source=\"export\"}",
        "pitr_snapshot_failures_total{source=\"broken\"} 1",
        "pitr_snapshot_failures_total{source=\"export\"} 0",
    ] {
        assert!(metrics.contains(want), "/metrics lacks {want}:\n{metrics}");
    }

    // One alert about the failing source; none more while it stays
    // failing (several evaluations later).
    hook.wait_accepted("/hook", 1, Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let alerts: Vec<_> = hook
        .accepted("/hook")
        .into_iter()
        .filter(|a| a["id"] == "snapshot/broken")
        .collect();
    assert_eq!(alerts.len(), 1, "{alerts:#?}\n{}", log());
    assert_eq!(alerts[0]["event"], "failing");
    assert!(
        alerts[0].to_string().contains("HTTP 503 from the API"),
        "{alerts:#?}"
    );

    sidecar.stop();
    assert_eq!(listed(&cfg, "export").len(), 1);
    assert!(listed(&cfg, "broken").is_empty());
    let out = run_ok(&["list", "-c", path(&cfg), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let export = v["snapshots"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "export"))
        .expect("export")
        .clone();
    assert_eq!(export["last_test_restore"]["ok"], true, "{export:#}");
    assert_eq!(export["last_test_restore"]["kind"], "command", "{export:#}");
}

/// The `[retention]` policy applies per snapshot source: with `keep_last =
/// 1` (and no daily, weekly or monthly keeps) `pitr retention` forgets all
/// but the newest snapshot, which still restores. `--snapshot NAME` makes
/// `pitr retention` and `pitr verify --restore` act on that source alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_policy_per_snapshot_source() {
    let repo = TestRepo::new().await;
    let src = repo.dir.path().join("data.txt");
    let mut toml = command_toml("a", &["cat", path(&src)], "");
    toml.push_str(&command_toml("b", &["echo", "the other source"], ""));
    let cfg = config_with(&repo, &toml);
    let toml = std::fs::read_to_string(&cfg).expect("config").replacen(
        "[retention]\n",
        "[retention]\nkeep_last = 1\nkeep_daily = 0\nkeep_weekly = 0\nkeep_monthly = 0\n",
        1,
    );
    std::fs::write(&cfg, toml).expect("write");
    let c = path(&cfg);
    for i in 0..3 {
        std::fs::write(&src, format!("version {i}\n")).expect("write");
        run_ok(&["backup", "-c", c, "--snapshot", "a"]);
    }
    for _ in 0..2 {
        run_ok(&["backup", "-c", c, "--snapshot", "b"]);
    }
    let before = listed(&cfg, "a");
    assert_eq!(before.len(), 3);
    assert_eq!(listed(&cfg, "b").len(), 2);

    // --snapshot NAME: that source alone, in retention and test restores.
    let out = run_ok(&["retention", "-c", c, "--snapshot", "b"]);
    assert_eq!(listed(&cfg, "b").len(), 1, "{}", text(&out));
    assert_eq!(listed(&cfg, "a").len(), 3, "{}", text(&out));
    let out = run_ok(&["verify", "-c", c, "--restore", "--snapshot", "a"]);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        said.contains("Test restore of [[command]] \"a\": PASSED"),
        "{said}"
    );
    assert!(!said.contains("\"b\""), "only a: {said}");
    for args in [
        &["retention", "-c", c, "--snapshot", "nope"][..],
        &["verify", "-c", c, "--restore", "--snapshot", "nope"],
    ] {
        let out = pitr(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains(
                "no [[command]] or [[infisical]] entry is named \"nope\" (configured: a, b)"
            ),
            "{args:?}: {}",
            text(&out)
        );
    }
    let out = pitr(&["verify", "-c", c, "--snapshot", "a"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("--snapshot select what"),
        "{}",
        text(&out)
    );
    let out = pitr(&["retention", "-c", c, "--snapshot", "a", "--sqlite", "x"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("cannot be used with"), "{}", text(&out));

    let out = run_ok(&["retention", "-c", c]);
    let after = listed(&cfg, "a");
    assert_eq!(after.len(), 1, "{}", text(&out));
    assert_eq!(after[0]["id"], before[2]["id"], "the newest stays");
    assert_eq!(listed(&cfg, "b").len(), 1, "the other source keeps its own");
    let r = run_ok(&["restore", "-c", c, "--snapshot", "a", "--latest"]);
    assert_eq!(String::from_utf8_lossy(&r.stdout), "version 2\n");
}
