//! Test restores (`pitr verify --restore`, `pitr::verify::run_scheduled`)
//! against real clusters and real SQLite files: a healthy repository passes
//! with `pg_amcheck` / `integrity_check` having run, the report is recorded
//! in the catalog (and survives a rebuild); a flipped byte in a pack the
//! restore needs fails it, names the object and leaves no scratch behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use pitr::repo::Repository;
use pitr::sqlite::{Step, WatchOptions, Watcher};
use pitr::verify::{DatabaseKind, VerifyStatus, last_reports};

use crate::pitr_restore::{hang_pack_of, interrupt, processes_in, while_running};
use crate::support::TestRepo;
use crate::support::{PgCluster, text};
use crate::support::{Streamer, write_row};

/// A config for `repo` (with its identity) whose other schedules are off,
/// test restores staged in a scratch directory PostgreSQL's user can enter.
struct Env {
    repo: TestRepo,
    config: PathBuf,
    scratch: PathBuf,
}

impl Env {
    async fn new(postgres: Option<&PgCluster>) -> Env {
        let repo = TestRepo::new().await;
        let entries: Vec<(&str, String)> = postgres
            .iter()
            .map(|pg| ("main", pg.conninfo("postgres")))
            .collect();
        let entries: Vec<(&str, &str)> = entries.iter().map(|(n, c)| (*n, c.as_str())).collect();
        let config = repo.write_config(&entries);
        let scratch = repo.enable_test_restores(&config, "off");
        Env {
            repo,
            config,
            scratch,
        }
    }

    /// Appends a `[[sqlite]]` entry.
    fn add_sqlite(&self, name: &str, db: &Path) {
        let mut text = std::fs::read_to_string(&self.config).expect("config");
        text.push_str(&format!(
            "\n[[sqlite]]\nname = \"{name}\"\npath = \"{}\"\n",
            db.display()
        ));
        std::fs::write(&self.config, text).expect("write config");
    }

    fn pitr(&self, args: &[&str]) -> Output {
        crate::support::pitr_with(&self.config, args)
    }

    /// Run directories left in the scratch directory.
    fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(&self.scratch)
            .expect("scratch")
            .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with("run-"))
            .collect()
    }

    /// Flips bytes in the middle of the blob of the first chunk of `item`
    /// in the only destination; returns the pack's object name.
    fn corrupt_first_chunk_of(&self, repo: &Repository, item: &str) -> String {
        let row = repo
            .catalog()
            .latest_item(item)
            .expect("catalog")
            .expect("the item");
        let chunk = row.manifest.chunks.first().expect("a chunk").0;
        let loc = repo
            .catalog()
            .chunk_location(&chunk)
            .expect("catalog")
            .expect("a location");
        let object = loc.pack.object_name();
        let path = self.repo.store().join(&object);
        let mut bytes = std::fs::read(&path).expect("pack");
        let mid = (loc.entry.offset + u64::from(loc.entry.length) / 2) as usize;
        for b in &mut bytes[mid..mid + 8] {
            *b ^= 0x5a;
        }
        std::fs::write(&path, bytes).expect("write pack");
        object
    }
}

/// `pitr backup` through the binary, restorable once the streamer stored
/// its WAL; returns the backup id.
fn backup(env: &Env) -> String {
    crate::support::backup_id(&env.pitr(&["backup", "--wait-wal", "60"]))
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_test_restore_passes_is_recorded_and_a_corrupted_pack_fails_it() {
    let pg = PgCluster::start();
    let env = Env::new(Some(&pg)).await;
    let repo = env.repo.open().await;
    pg.psql("CREATE TABLE oracle (id int PRIMARY KEY, at timestamptz NOT NULL)");
    pg.psql("CREATE INDEX oracle_at ON oracle (at)");
    // The source's postgresql.auto.conf travels in the base backup. As a
    // delayed standby's it would stall recovery for an hour, as a
    // synchronous primary's hang the checks' commits, and its commands
    // would run against production: a test restore must override all of it.
    // ALTER SYSTEM without a reload leaves the source itself unchanged.
    let marker_dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        marker_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    let marker = marker_dir.path().join("ran");
    for setting in [
        "recovery_min_apply_delay = '1h'".to_owned(),
        "synchronous_standby_names = 'nobody'".to_owned(),
        format!("recovery_end_command = 'touch {}'", marker.display()),
        format!("archive_cleanup_command = 'touch {}'", marker.display()),
    ] {
        pg.psql(&format!("ALTER SYSTEM SET {setting}"));
    }
    let streamer = Streamer::start(&repo, &pg, "pitr");
    streamer.caught_up(&pg).await;
    let id = backup(&env);
    streamer.caught_up(&pg).await;
    // Right after the backup the window usually holds no transaction after
    // it: everything stored is restored instead of a random time, and said.
    let out = env.pitr(&["verify", "--restore"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        stdout.contains("everything stored is restored") || stdout.contains("target       time"),
        "{stdout}"
    );
    for i in 1..=20 {
        write_row(&pg, i);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pg.psql("SELECT pg_switch_wal()");
    write_row(&pg, 21);
    streamer.caught_up(&pg).await;

    // (a) A healthy repository passes, with pg_amcheck and pg_checksums run.
    let out = env.pitr(&["verify", "--restore"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(stdout.contains("PASSED"), "{stdout}");
    assert!(
        stdout.contains("pg_amcheck --all --install-missing: ok") && stdout.contains("relations"),
        "pg_amcheck's work is in the report: {stdout}"
    );
    assert!(
        stdout.contains("pg_checksums --check: ok"),
        "the harness's clusters have checksums: {stdout}"
    );
    assert!(stdout.contains(&id), "the backup id: {stdout}");
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
    assert!(
        !marker.exists(),
        "the source's recovery_end_command / archive_cleanup_command ran"
    );

    let check_recorded = |repo: &Repository| {
        let reports = last_reports(repo).expect("reports");
        assert_eq!(reports.len(), 1, "{reports:?}");
        let r = &reports[0];
        assert_eq!(
            (r.kind, r.database.as_str()),
            (DatabaseKind::Postgres, "main")
        );
        assert!(r.ok, "{r:?}");
        assert_eq!(r.backup.as_deref(), Some(id.as_str()));
        assert!(r.reached.is_some() && r.wal_files > 0, "{r:?}");
        assert!(
            r.checks.iter().any(|c| c.starts_with("pg_amcheck")),
            "{r:?}"
        );
        r.clone()
    };
    let first = check_recorded(&env.repo.open().await);
    let out = env.pitr(&["list"]);
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        listed.contains(&format!(
            "last test restore: passed {}",
            pitr::restore::pg_time(first.started)
        )) && listed.contains(&format!("from {id}")),
        "{listed}"
    );
    // The report lives in the destinations: a rebuilt catalog has it.
    let out = env.pitr(&["catalog", "rebuild"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(check_recorded(&env.repo.open().await), first);

    // (b) A flipped byte in a pack the base backup needs, in the only
    // destination: exit 3, the object named, `pitr repair` said, a failed
    // report recorded, no scratch left.
    let item = {
        let items = repo
            .catalog()
            .items(&format!("pg/main/base/{id}/base/"))
            .expect("items");
        items
            .into_iter()
            .filter(|i| i.manifest.size > 0)
            .max_by_key(|i| i.manifest.size)
            .expect("a base backup file")
            .name
    };
    let object = env.corrupt_first_chunk_of(&repo, &item);
    let out = env.pitr(&["verify", "--restore", "--postgres", "main"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("FAILED"), "{all}");
    assert!(
        all.contains(&object),
        "names the damaged object {object}: {all}"
    );
    assert!(all.contains("pitr repair"), "{all}");
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
    let reports = last_reports(&env.repo.open().await).expect("reports");
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert!(!reports[0].ok, "{reports:?}");
    assert!(
        reports[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains(&object)),
        "{reports:?}"
    );
    streamer.stop().await;
}

/// A real SQLite file captured by the watcher: a snapshot, then page sets.
async fn sqlite_repo() -> (Env, PathBuf) {
    let env = Env::new(None).await;
    let db = env.repo.dir.path().join("app.db");
    env.add_sqlite("app", &db);
    let mut w = Watcher::new(
        env.repo.open().await,
        WatchOptions {
            name: "app".into(),
            path: db.clone(),
            interval: Duration::from_secs(1),
            snapshot_interval: Duration::from_secs(86400),
            spool_dir: env.repo.dir.path().join("spool"),
        },
    )
    .expect("watcher");
    let conn = rusqlite::Connection::open(&db).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);
         CREATE INDEX t_v ON t (v);",
    )
    .expect("schema");
    for round in 0..4 {
        for i in 0..50 {
            conn.execute(
                "INSERT INTO t (v) VALUES (?1)",
                [format!("round {round} row {i} {}", "x".repeat(i * 7))],
            )
            .expect("insert");
        }
        match w.step(true).await {
            Ok(Step::Stored { .. }) => {}
            other => panic!("expected a stored capture, got {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    (env, db)
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_test_restore_passes_and_fails_on_a_corrupted_pack() {
    let (env, _db) = sqlite_repo().await;
    let out = env.pitr(&["verify", "--restore", "--sqlite", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(stdout.contains("PASSED"), "{stdout}");
    assert!(stdout.contains("PRAGMA integrity_check: ok"), "{stdout}");
    assert!(stdout.contains("matches the catalog"), "{stdout}");
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
    let repo = env.repo.open().await;
    let reports = last_reports(&repo).expect("reports");
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].kind, DatabaseKind::Sqlite);
    assert!(reports[0].ok, "{reports:?}");
    // `pitr list` shows it, as text and JSON.
    let out = env.pitr(&["list"]);
    assert!(out.status.success(), "{}", text(&out));
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    let when = pitr::restore::pg_time(reports[0].started);
    assert!(
        listed.contains(&format!("last test restore: passed {when}")),
        "{listed}"
    );
    let out = env.pitr(&["list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["sqlite"][0]["last_test_restore"]["ok"], true, "{v}");

    // Every restore starts from the snapshot: damage it.
    let snapshot = pitr::sqlite::store::item_name("app", 1);
    let object = env.corrupt_first_chunk_of(&repo, &snapshot);
    let out = env.pitr(&["verify", "--restore"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains(&object), "names {object}: {all}");
    assert!(all.contains("pitr repair"), "{all}");
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
    let reports = last_reports(&env.repo.open().await).expect("reports");
    assert!(!reports[0].ok, "{reports:?}");
    let out = env.pitr(&["list"]);
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        listed.contains("last test restore: FAILED") && listed.contains(&object),
        "the failure and the damaged object: {listed}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn run_scheduled_runs_on_a_seconds_cron_and_updates_its_status() {
    let (env, _db) = sqlite_repo().await;
    let mut config = pitr::config::Config::load(&env.config).expect("config");
    config.verify.schedule = Some(pitr::cron::CronSchedule::parse("*/2 * * * * *").expect("cron"));
    // A database nothing is stored of yet (a watcher not started): the
    // schedule skips it and says so instead of failing.
    let mut later = config.sqlite[0].clone();
    later.name = "later".to_owned();
    config.sqlite.push(later);
    let repo = env.repo.open().await;
    let (tx, mut rx) = tokio::sync::watch::channel(VerifyStatus::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(pitr::verify::run_scheduled(
        config.clone(),
        repo.clone(),
        tx,
        async {
            let _ = stopped.await;
        },
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut saw_next = false;
    loop {
        {
            let s = rx.borrow_and_update();
            saw_next |= s.next_run.is_some();
            if s.runs >= 1 {
                break;
            }
        }
        tokio::time::timeout_at(deadline, rx.changed())
            .await
            .expect("a scheduled run within 60 s")
            .expect("status sender alive");
    }
    let s = rx.borrow().clone();
    assert!(s.configured && s.not_configured.is_none(), "{s:?}");
    assert!(saw_next, "the next run was published: {s:?}");
    assert_eq!(s.last.len(), 1, "{s:?}");
    assert!(s.last[0].ok && s.last[0].database == "app", "{s:?}");
    assert!(
        s.skipped.len() == 1
            && s.skipped[0].contains("\"later\"")
            && s.skipped[0].contains("no capture stored yet"),
        "{s:?}"
    );
    assert!(!s.failing(), "{s:?}");
    assert!(!s.check().0, "{s:?}");
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("stops on shutdown")
        .expect("no panic");
    assert!(!last_reports(&repo).expect("reports").is_empty());

    // Without an identity the sidecar keeps running and says why.
    config.repository.identity_file = None;
    let mut opts = env.repo.opts.clone();
    opts.identities.clear();
    let writer_only = Repository::open(env.repo.fanout(), opts)
        .await
        .expect("open");
    let (tx, mut rx) = tokio::sync::watch::channel(VerifyStatus::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(pitr::verify::run_scheduled(
        config,
        writer_only,
        tx,
        async {
            let _ = stopped.await;
        },
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while rx.borrow_and_update().not_configured.is_none() {
        tokio::time::timeout_at(deadline, rx.changed())
            .await
            .expect("status within 30 s")
            .expect("status sender alive");
    }
    let s = rx.borrow().clone();
    assert_eq!(
        s.not_configured.as_deref(),
        Some("not configured: no identity_file"),
        "{s:?}"
    );
    assert!(!s.configured);
    let (failing, why) = s.check();
    assert!(!failing && why.contains("no identity_file"), "{why}");
    // The earlier report is still shown, read from the catalog.
    assert_eq!(s.last.len(), 1, "{s:?}");
    assert!(
        !task.is_finished(),
        "it waits for shutdown, it does not end"
    );
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("stops on shutdown")
        .expect("no panic");
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_restore_refuses_without_identity_or_with_an_unknown_name() {
    let env = Env::new(None).await;
    let db = env.repo.dir.path().join("app.db");
    env.add_sqlite("app", &db);
    let out = env.pitr(&["verify", "--restore", "--postgres", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("no [[postgres]] entry is named \"nope\""),
        "{}",
        text(&out)
    );
    // Nothing stored yet: a failed test restore that says what to do.
    let out = env.pitr(&["verify", "--restore"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("nothing is stored for [[sqlite]] \"app\""),
        "{}",
        text(&out)
    );
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
    // Without the identity: usage, naming the key to set.
    let cfg = std::fs::read_to_string(&env.config).expect("config");
    let cfg: String = cfg
        .lines()
        .filter(|l| !l.starts_with("identity_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&env.config, cfg).expect("write");
    let out = env.pitr(&["verify", "--restore"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("not configured: no identity_file"),
        "{}",
        text(&out)
    );
}

/// The first `postmaster.pid` under `dir` (a test restore's data directory
/// sits a few levels down in its run directory), with the pid it names.
fn find_postmaster(dir: &Path, depth: usize) -> Option<(PathBuf, i32)> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.file_name().is_some_and(|n| n == "postmaster.pid") {
            let pid = std::fs::read_to_string(&p)
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()));
            if let Some(pid) = pid {
                return Some((p, pid));
            }
        } else if depth > 0 && p.is_dir() {
            if let Some(found) = find_postmaster(&p, depth - 1) {
                return Some(found);
            }
        }
    }
    None
}

/// A test restore interrupted while recovery waits on a destination that
/// stopped answering (the first WAL pack it needs is a FIFO nobody writes:
/// the read blocks, as on a hung mount), as a cancelled CI job or Ctrl-C
/// does: pitr stops the server it started, removes its scratch run, exits
/// 128 + 2 and records no report (an interrupted check neither passed nor
/// failed: no alert, no recovery notice).
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_test_restore_stops_its_server_and_leaves_no_scratch_or_report() {
    let pg = PgCluster::start();
    let env = Env::new(Some(&pg)).await;
    let repo = env.repo.open().await;
    pg.psql("CREATE TABLE oracle (id int PRIMARY KEY, at timestamptz NOT NULL)");
    let streamer = Streamer::start(&repo, &pg, "pitr");
    streamer.caught_up(&pg).await;
    backup(&env);
    for i in 1..=3 {
        write_row(&pg, i);
        pg.psql("SELECT pg_switch_wal()");
    }
    streamer.caught_up(&pg).await;
    streamer.stop().await;
    let out = env.pitr(&["plan", "--latest", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    // The segment the backup starts in: every target needs it.
    let first = plan["segments"]
        .as_array()
        .and_then(|s| s.first())
        .and_then(|s| s["item"].as_str())
        .expect("segments")
        .to_owned();
    hang_pack_of(&repo, &env.repo.store(), &first);

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pitr"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PITR_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .args(["verify", "--restore", "--postgres", "main", "-c"])
        .arg(&env.config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run pitr");
    // Recovery has started once the server wrote its pid file and forked
    // its children (the startup process, soon waiting in restore_command):
    // they work in the data directory under the scratch run.
    let (pidfile, postmaster) = while_running(&mut child, "recovery started", || {
        find_postmaster(&env.scratch, 4).filter(|_| processes_in(&env.scratch).len() > 1)
    });
    assert!(
        Path::new(&format!("/proc/{postmaster}")).exists(),
        "the server {postmaster} ({}) runs",
        pidfile.display()
    );
    let out = interrupt(child, nix::sys::signal::Signal::SIGINT);
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert!(
        text(&out).contains("interrupted by SIGINT"),
        "{}",
        text(&out)
    );
    // pitr waited for its server: not running, not even a zombie.
    assert!(
        !Path::new(&format!("/proc/{postmaster}")).exists(),
        "the postmaster {postmaster} is still there"
    );
    assert_eq!(
        processes_in(&env.scratch),
        Vec::<String>::new(),
        "left running"
    );
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
    let reports = last_reports(&env.repo.open().await).expect("reports");
    assert!(reports.is_empty(), "{reports:?}");
}
