//! The bad cases of a restore, each a clear error that leaves nothing
//! misleading behind: a busy target directory, a time without a zone, a
//! target outside the window, the wrong identity, a corrupt object, a gap in
//! the WAL chain.

use std::path::Path;

use pitr::repo::{Chunking, Repository};

use super::{
    Env, Streamer, backup, create_oracle, hang_pack_of, interrupt, is_empty_or_missing,
    processes_in, restore_and_read, text, while_running, write_row,
};
use crate::support::PgCluster;
use crate::support::TestRepo;

/// A cluster with a backup, three rows, a few switched segments and three
/// more rows in the open segment, all stored; the streamer stopped.
async fn stored(pg: &PgCluster) -> Env {
    let env = Env::new(pg).await;
    let repo = env.open().await;
    create_oracle(pg);
    let streamer = Streamer::start(&repo, pg, "pitr");
    streamer.caught_up(pg).await;
    backup(&env);
    for id in 1..=3 {
        write_row(pg, id);
        pg.psql("SELECT pg_switch_wal()");
    }
    for id in 4..=6 {
        write_row(pg, id);
    }
    streamer.caught_up(pg).await;
    streamer.stop().await;
    env
}

fn latest_plan(env: &Env) -> serde_json::Value {
    let out = env.pitr(&["plan", "--latest", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn restore_to(env: &Env, target: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["restore", "--target", target.to_str().expect("utf-8")];
    all.extend_from_slice(args);
    env.pitr(&all)
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_targets_and_a_busy_directory_leave_everything_as_it_was() {
    let pg = PgCluster::start();
    let env = stored(&pg).await;
    let dir = tempfile::tempdir().expect("tempdir");

    // A directory with something in it is not overwritten...
    let busy = dir.path().join("busy");
    std::fs::create_dir(&busy).expect("mkdir");
    std::fs::write(busy.join("keep.txt"), b"precious").expect("write");
    let out = restore_to(&env, &busy, &["--latest"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("not empty") && text(&out).contains("--force"),
        "{}",
        text(&out)
    );
    let left: Vec<_> = std::fs::read_dir(&busy).expect("ls").flatten().collect();
    assert_eq!(left.len(), 1, "only what was there");
    assert_eq!(
        std::fs::read(busy.join("keep.txt")).expect("read"),
        b"precious"
    );

    // ... unless asked to.
    let (_r, ids, report) = restore_and_read(&env, &["--latest", "--force"]);
    assert_eq!(ids, [1, 2, 3, 4, 5, 6], "{report}");

    let nowhere = dir.path().join("nowhere");
    // A time without a zone is refused, not guessed.
    let out = restore_to(&env, &nowhere, &["--at", "2026-11-23 03:00:00"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("no time zone"), "{}", text(&out));
    // Before the first backup and after the last transaction: exit 1, with
    // the window in the message.
    for at in ["2000-01-01T00:00:00Z", "2999-01-01 00:00:00+00"] {
        let out = restore_to(&env, &nowhere, &["--at", at]);
        assert_eq!(out.status.code(), Some(1), "{at}: {}", text(&out));
        let t = text(&out);
        assert!(
            t.contains("outside the restore window") && t.contains("restorable from "),
            "{at}: {t}"
        );
    }
    assert!(!nowhere.exists(), "nothing written for refused targets");

    // Another identity cannot read this repository: with this repository's
    // recipients it is refused at once (it matches none of them); with its
    // own recipients, the destination says the repository is not theirs.
    let stranger = TestRepo::new().await;
    let stranger_identity = dir.path().join("stranger.txt");
    std::fs::write(
        &stranger_identity,
        format!(
            "{}\n",
            age::secrecy::ExposeSecret::expose_secret(&stranger.opts.identities[0].to_string())
        ),
    )
    .expect("write identity");
    let ours = std::fs::read_to_string(&env.config).expect("config");
    let ours = ours
        .replace(
            &env.repo
                .dir
                .path()
                .join("identity.txt")
                .display()
                .to_string(),
            &stranger_identity.display().to_string(),
        )
        .replace(
            &env.repo.opts.state_dir.display().to_string(),
            &dir.path().join("stranger-state").display().to_string(),
        );
    let theirs = ours.replace(
        &env.repo.opts.recipients[0].to_string(),
        &stranger.opts.recipients[0].to_string(),
    );
    for (config, code, says) in [
        (ours, 2, "identity"),
        (theirs, 3, "made for other age recipients"),
    ] {
        let path = dir.path().join("stranger.toml");
        std::fs::write(&path, config).expect("write config");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pitr"))
            .args(["restore", "--latest", "--target"])
            .arg(&nowhere)
            .arg("-c")
            .arg(&path)
            .env_remove("PITR_CONFIG")
            .output()
            .expect("run pitr");
        assert_eq!(out.status.code(), Some(code), "{}", text(&out));
        assert!(text(&out).contains(says), "{}", text(&out));
    }
    assert!(!nowhere.exists(), "nothing written with the wrong identity");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_wal_object_fails_the_restore_naming_it_and_leaves_nothing() {
    let pg = PgCluster::start();
    let env = stored(&pg).await;
    let repo = env.open().await;
    let plan = latest_plan(&env);
    // A complete segment in the middle of the chain: the base backup
    // restores, recovery starts, then meets it.
    let victim = plan["segments"][2]["item"]
        .as_str()
        .expect("item")
        .to_owned();
    let pack = {
        let catalog = repo.catalog();
        let item = catalog
            .latest_item(&victim)
            .expect("catalog")
            .expect("item");
        let chunk = item.manifest.chunks[0].0;
        let at = catalog
            .chunk_location(&chunk)
            .expect("catalog")
            .expect("location");
        let path = env.repo.store().join(at.pack.object_name());
        let mut bytes = std::fs::read(&path).expect("read pack");
        let mid = at.entry.offset as usize + at.entry.length as usize / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(&path, bytes).expect("write pack");
        at.pack.object_name()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("data");
    let out = restore_to(&env, &target, &["--latest"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains(&pack), "the message names {pack}: {t}");
    assert!(
        t.contains("recovery of the restored directory failed"),
        "{t}"
    );
    assert!(
        is_empty_or_missing(&target),
        "nothing half-restored is left"
    );
    assert!(
        std::fs::read_dir(dir.path()).expect("ls").count() == 0,
        "no spool or temp files left beside it"
    );
}

/// Copies every item of `main` from `from` to `to`, except `skip`.
async fn copy_items(from: &Repository, to: &Repository, skip: &str) {
    let items = from.catalog().items("pg/main/").expect("items");
    let reader = from.reader().expect("reader");
    let mut w = to.writer();
    for item in items.iter().filter(|i| i.name != skip) {
        let mut bytes = Vec::new();
        reader
            .read_to(&item.manifest, &mut bytes)
            .await
            .expect("read");
        w.put(
            &item.name,
            &item.kind,
            item.attrs.clone(),
            Chunking::Cdc,
            &bytes[..],
        )
        .await
        .expect("put");
    }
    w.commit().await.expect("commit");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gap_in_the_wal_chain_is_named_before_anything_is_downloaded() {
    let pg = PgCluster::start();
    let env = stored(&pg).await;
    let plan = latest_plan(&env);
    let segments = plan["segments"].as_array().expect("segments");
    assert!(segments.len() >= 4, "{plan}");
    let missing = segments[2]["file"].as_str().expect("file").to_owned();
    let item = segments[2]["item"].as_str().expect("item").to_owned();

    // A repository like this one, but without that segment.
    let holed = TestRepo::new().await;
    copy_items(&env.open().await, &holed.open().await, &item).await;
    let config = holed.write_config(&[("main", &pg.conninfo("postgres"))]);
    let holed_env = Env {
        repo: holed,
        config,
    };
    let out = holed_env.pitr(&["plan", "--latest"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("has a gap") && text(&out).contains(&missing),
        "{}",
        text(&out)
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("data");
    let out = restore_to(&holed_env, &target, &["--latest"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains(&missing), "{}", text(&out));
    assert!(!target.exists(), "nothing downloaded past a known gap");

    // Before the gap, the same repository restores.
    let (_r, ids, report) = restore_and_read(
        &holed_env,
        &["--lsn", segments[1]["start"].as_str().expect("start")],
    );
    assert!(ids.len() < 3, "{report}");
}

/// A restore interrupted while recovery waits on a destination that stopped
/// answering (a pack the WAL server reads is a FIFO nobody writes: the read
/// blocks, as on a hung mount): pitr stops the server it started, removes
/// what it wrote, says so and exits 128 + 15, leaving nothing running.
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_restore_stops_its_server_and_removes_the_target() {
    let pg = PgCluster::start();
    let env = stored(&pg).await;
    let repo = env.open().await;
    let plan = latest_plan(&env);
    // The newest segment: written after the backup finished, so its pack
    // holds WAL only and the base backup restores; recovery then waits.
    let last = plan["segments"]
        .as_array()
        .and_then(|s| s.last())
        .and_then(|s| s["item"].as_str())
        .expect("segments")
        .to_owned();
    hang_pack_of(&repo, &env.repo.store(), &last);

    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("data");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pitr"))
        .args(["restore", "--latest", "--target"])
        .arg(&target)
        .arg("-c")
        .arg(&env.config)
        .env_remove("PITR_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run pitr");
    // Recovery has started once the server wrote its pid file.
    let postmaster = while_running(&mut child, "recovery started", || {
        std::fs::read_to_string(target.join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
    });
    assert!(
        !processes_in(&target).is_empty(),
        "the server runs on the target"
    );
    let out = interrupt(child, nix::sys::signal::Signal::SIGTERM);
    assert_eq!(out.status.code(), Some(143), "{}", text(&out));
    assert!(
        text(&out).contains("interrupted by SIGTERM"),
        "{}",
        text(&out)
    );
    // pitr waited for its server: not running, not even a zombie.
    assert!(
        !Path::new(&format!("/proc/{postmaster}")).exists(),
        "the postmaster {postmaster} is still there"
    );
    assert_eq!(processes_in(&target), Vec::<String>::new(), "left running");
    assert!(
        is_empty_or_missing(&target),
        "the partial restore is removed"
    );
    assert!(
        std::fs::read_dir(dir.path()).expect("ls").count() == 0,
        "no spool or temp files left beside it"
    );
}

/// A package upgrade may replace or remove the `pitr` binary while a
/// restore runs. The restore_command recovery runs is a copy of the running
/// image (not of the path it was started from, which would be gone), so the
/// restore completes with every row.
#[tokio::test(flavor = "multi_thread")]
async fn a_restore_completes_when_its_binary_is_removed_while_it_runs() {
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};

    let pg = PgCluster::start();
    let env = stored(&pg).await;
    // Installed where only root may run it, so the restore must hand the
    // PostgreSQL user a copy.
    let bin_dir = tempfile::tempdir().expect("tempdir");
    let exe = bin_dir.path().join("pitr");
    std::fs::copy(env!("CARGO_BIN_EXE_pitr"), &exe).expect("copy the binary");
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let mut restored = PgCluster::empty();
    let data = restored.data_dir();
    let child = Command::new(&exe)
        .args([
            "restore",
            "--target",
            data.to_str().expect("utf-8"),
            "--latest",
        ])
        .arg("-c")
        .arg(&env.config)
        .env_remove("PITR_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pitr restore");
    // `spawn` returns once the new process runs the file: removing it now
    // is an upgrade that landed at the restore's very start.
    std::fs::remove_file(&exe).expect("remove the binary");
    let out = child.wait_with_output().expect("pitr restore");
    assert!(out.status.success(), "{}", text(&out));
    restored.start_filled("");
    assert_eq!(
        restored.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM oracle"),
        "1,2,3,4,5,6"
    );
}
