//! `pitr export` against a real cluster: the newest restorable set copied
//! out, the original store deleted, and a restore from the copy alone that
//! holds exactly the rows the oracle says.

use std::path::{Path, PathBuf};

use crate::support::TestRepo;
use crate::support::{PgCluster, text};
use crate::support::{Streamer, between, write_row};

use crate::support::pitr_with as pitr;

fn ok(config: &Path, args: &[&str]) -> String {
    let out = pitr(config, args);
    assert!(out.status.success(), "pitr {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The config of `repo` rewritten to read from `store` with its own state
/// directory: what an operator writes to restore from an export.
fn config_for(repo: &TestRepo, original: &Path, store: &Path, state: &Path) -> PathBuf {
    let text = std::fs::read_to_string(original).expect("config");
    let text = text
        .replace(
            &format!("path = \"{}\"", repo.store().display()),
            &format!("path = \"{}\"", store.display()),
        )
        .replace(
            &format!("state_dir = \"{}\"", repo.opts.state_dir.display()),
            &format!("state_dir = \"{}\"", state.display()),
        );
    assert!(text.contains(&store.display().to_string()), "{text}");
    let path = store.with_extension("toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Every file under `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, p: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(p).expect("read_dir") {
            let e = e.expect("entry");
            if e.file_type().expect("type").is_dir() {
                walk(root, &e.path(), out);
            } else {
                let rel = e.path().strip_prefix(root).expect("under root").to_owned();
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Restores `args` from `config` into a fresh directory, starts it without
/// pitr and returns the oracle's ids.
fn restore_ids(config: &Path, args: &[&str]) -> Vec<u32> {
    let mut restored = PgCluster::empty();
    let data = restored.data_dir();
    let mut all = vec!["restore", "--target", data.to_str().expect("utf-8")];
    all.extend_from_slice(args);
    let report = ok(config, &all);
    assert!(report.contains("recovery checked"), "{report}");
    restored.start_filled("");
    restored
        .psql("SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM oracle")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("an id"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn export_restores_alone_after_the_original_store_is_gone() {
    let pg = PgCluster::start();
    let repo = TestRepo::new().await;
    let config = repo.write_config(&[("main", &pg.conninfo("postgres"))]);
    let opened = repo.open().await;
    pg.psql("CREATE TABLE oracle (id int PRIMARY KEY, at timestamptz NOT NULL)");
    let streamer = Streamer::start(&opened, &pg, "pitr");
    streamer.caught_up(&pg).await;
    // Two backups: the export must carry the newer one only.
    ok(&config, &["backup", "--wait-wal", "60"]);
    for id in 1..=3 {
        write_row(&pg, id);
    }
    pg.psql("SELECT pg_switch_wal()");
    let newest = ok(&config, &["backup", "--wait-wal", "60"]);
    let mut stamps = Vec::new();
    for id in 4..=7 {
        stamps.push(write_row(&pg, id));
    }
    pg.psql("SELECT pg_switch_wal()");
    write_row(&pg, 8);
    streamer.caught_up(&pg).await;
    streamer.stop().await;
    drop(opened);

    // The export runs as the GitHub workflow runs it: no identity, the
    // repository key from a file, a fresh state directory.
    let out_dir = tempfile::tempdir().expect("tempdir");
    let key = out_dir.path().join("repository.key");
    std::fs::copy(repo.opts.state_dir.join("repository.key"), &key).expect("copy the key");
    let original_config = std::fs::read_to_string(&config).expect("config");
    let no_identity: String = original_config
        .lines()
        .filter(|l| !l.starts_with("identity_file"))
        .map(|l| match l {
            "[repository]" => format!("[repository]\nkey_file = \"{}\"", key.display()),
            l if l.starts_with("state_dir") => format!(
                "state_dir = \"{}\"",
                out_dir.path().join("export-state").display()
            ),
            l => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!no_identity.contains("identity_file"), "{no_identity}");
    let export_config = out_dir.path().join("export.toml");
    std::fs::write(&export_config, no_identity).expect("write");
    let export = out_dir.path().join("export");
    let report = ok(
        &export_config,
        &["export", "--to", export.to_str().expect("utf-8")],
    );
    assert!(
        report.contains("Exported the newest restorable set"),
        "{report}"
    );

    // What an fs destination holds: the descriptor, the key, exactly one
    // catalog commit, and packs that the original also holds.
    let exported = files(&export);
    let original = files(&repo.store());
    assert!(exported.contains(&"config".to_owned()), "{exported:?}");
    assert_eq!(
        exported.iter().filter(|f| f.starts_with("keys/")).count(),
        1,
        "{exported:?}"
    );
    assert_eq!(
        exported
            .iter()
            .filter(|f| f.starts_with("catalog/"))
            .count(),
        1,
        "{exported:?}"
    );
    let packs: Vec<_> = exported
        .iter()
        .filter(|f| f.starts_with("packs/"))
        .collect();
    assert!(!packs.is_empty(), "{exported:?}");
    assert!(packs.iter().all(|p| original.contains(p)), "{exported:?}");
    for f in &exported {
        if f.starts_with("packs/") || f == "config" || f.starts_with("keys/") {
            assert_eq!(
                std::fs::read(export.join(f)).expect("exported"),
                std::fs::read(repo.store().join(f)).expect("original"),
                "{f} is a byte-for-byte copy"
            );
        }
    }

    // A second export into the same directory is refused, exit 2.
    let again = pitr(
        &config,
        &["export", "--to", export.to_str().expect("utf-8")],
    );
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("is not empty"),
        "{}",
        text(&again)
    );

    // The original is gone, with the sidecar's state: only the export and
    // the identity are left.
    std::fs::remove_dir_all(repo.store()).expect("delete the original store");
    std::fs::remove_dir_all(&repo.opts.state_dir).expect("delete the state");
    let state = out_dir.path().join("state");
    let from_export = config_for(&repo, &config, &export, &state);

    // It lists the newest backup only, and checks out whole.
    let list: serde_json::Value =
        serde_json::from_str(&ok(&from_export, &["list", "--json"])).expect("JSON");
    let backups = list["postgres"][0]["backups"].as_array().expect("backups");
    assert_eq!(backups.len(), 1, "{list}");
    let id = backups[0]["record"]["id"].as_str().expect("id");
    assert!(newest.contains(id), "the newest backup {id}: {newest}");
    assert_eq!(backups[0]["restorable"], true, "{list}");
    let verify = pitr(&from_export, &["verify"]);
    assert!(verify.status.success(), "{}", text(&verify));

    // Restores from it are exact: --latest has every row, a time between
    // rows 5 and 6 exactly rows 1 to 5.
    assert_eq!(
        restore_ids(&from_export, &["--latest"]),
        (1..=8).collect::<Vec<_>>()
    );
    let at = between(stamps[1], stamps[2]).to_string();
    assert_eq!(
        restore_ids(&from_export, &["--at", &at]),
        vec![1, 2, 3, 4, 5]
    );
}

#[tokio::test]
async fn export_of_an_empty_repository_is_not_possible() {
    let repo = TestRepo::new().await;
    // Nothing is ever streamed: the conninfo is never dialled.
    let config = repo.write_config(&[("main", "host=127.0.0.1 port=1 user=nobody")]);
    let dir = tempfile::tempdir().expect("tempdir");
    let to = dir.path().join("export");
    let out = pitr(&config, &["export", "--to", to.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    // Nothing was written that could pass for a repository.
    assert!(!to.join("config").exists());
    let out = pitr(
        &config,
        &[
            "export",
            "--postgres",
            "other",
            "--to",
            to.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("\"other\""),
        "{}",
        text(&out)
    );
}

#[test]
fn sqlite_export_restores_alone() {
    use crate::sqlite::{restore_ok, sqlite_config, sqlite3};
    use crate::support::Sidecar;
    use std::time::Duration;

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let repo = rt.block_on(TestRepo::new());
    let db = repo.dir.path().join("app.db");
    sqlite3(
        &db,
        "PRAGMA journal_mode=WAL; CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); \
         INSERT INTO t (v) VALUES ('one'), ('two');",
    );
    let config = sqlite_config(&repo, "app", &db);
    let sidecar = Sidecar::start(&config);
    sidecar.wait_captures(1, Duration::from_secs(30));
    sqlite3(&db, "INSERT INTO t (v) VALUES ('three')");
    sidecar.wait_captures(2, Duration::from_secs(30));
    sidecar.stop();
    let expected = sqlite3(&db, "SELECT group_concat(v) FROM t");
    assert_eq!(expected, "one,two,three");

    let out_dir = tempfile::tempdir().expect("tempdir");
    let export = out_dir.path().join("export");
    let report = ok(
        &config,
        &[
            "export",
            "--sqlite",
            "app",
            "--to",
            export.to_str().expect("utf-8"),
        ],
    );
    assert!(report.contains("[[sqlite]] \"app\""), "{report}");

    std::fs::remove_dir_all(repo.store()).expect("delete the original store");
    std::fs::remove_dir_all(&repo.opts.state_dir).expect("delete the state");
    let from_export = config_for(&repo, &config, &export, &out_dir.path().join("state"));
    let target = out_dir.path().join("restored.db");
    restore_ok(&from_export, "app", None, &target);
    assert_eq!(sqlite3(&target, "SELECT group_concat(v) FROM t"), expected);
}

/// Snapshot sources are exported too (the newest snapshot of each), and
/// the copy restores alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_sources_export_and_restore_alone() {
    let repo = TestRepo::new().await;
    let data = repo.dir.path().join("data.txt");
    let config = repo.write_config(&[]);
    let mut toml = std::fs::read_to_string(&config).expect("config");
    toml.push_str(&format!(
        "\n[[command]]\nname = \"dump\"\nrun = [\"cat\", {:?}]\nschedule = \"off\"\n",
        data.display().to_string()
    ));
    std::fs::write(&config, toml).expect("write config");
    std::fs::write(&data, "the first version\n").expect("write");
    ok(&config, &["backup", "--snapshot", "dump"]);
    let between = jiff::Timestamp::now().to_string();
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&data, "the second version\n").expect("write");
    ok(&config, &["backup", "--snapshot", "dump"]);

    let out_dir = tempfile::tempdir().expect("tempdir");
    let export = out_dir.path().join("export");
    let report = ok(
        &config,
        &["export", "--to", export.to_str().expect("utf-8")],
    );
    assert!(report.contains("snapshot source \"dump\""), "{report}");
    assert!(
        report.contains(": 1 items"),
        "only the newest snapshot: {report}"
    );

    std::fs::remove_dir_all(repo.store()).expect("delete the original store");
    std::fs::remove_dir_all(&repo.opts.state_dir).expect("delete the state");
    let from_export = config_for(&repo, &config, &export, &out_dir.path().join("state"));
    let latest = ok(&from_export, &["restore", "--snapshot", "dump", "--latest"]);
    assert_eq!(latest, "the second version\n");
    // The older snapshot was not exported: nothing that old is there.
    let out = pitr(
        &from_export,
        &["restore", "--snapshot", "dump", "--at", &between],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}
