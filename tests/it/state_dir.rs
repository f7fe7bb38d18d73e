//! One state directory, several processes: a second `pitr run` is refused
//! naming the first one's pid, while `pitr backup` and `pitr retention`
//! beside the running sidecar work, each process spooling in a directory
//! of its own that no other touches.

use std::path::Path;
use std::time::Duration;

use crate::support::PgCluster;
use crate::support::pg::free_port;
use crate::support::{Sidecar, pitr, text};

/// The spool subdirectories (one per writing process) beneath `spool`.
fn spools(spool: &Path) -> Vec<String> {
    std::fs::read_dir(spool)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beside_a_running_sidecar_backup_and_retention_work_and_a_second_run_is_refused() {
    let pg = PgCluster::start();
    pg.psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)");
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    // Two destinations with a quorum of one: every write goes through a
    // spool.
    let (head, fs) = crate::support::repository_toml(dir.path(), "quorum = 1\n");
    let second = format!(
        "\n[[destination]]\nname = \"second\"\nkind = \"fs\"\npath = \"{}\"\n",
        dir.path().join("store2").display()
    );
    let rest = format!(
        "\n[[postgres]]\nname = \"main\"\nconninfo = \"{}\"\nbase_backup = \"off\"\n\n\
         [verify]\nschedule = \"off\"\n\n[retention]\nschedule = \"off\"\n\n\
         [scrub]\nschedule = \"off\"\n\n[health]\nlisten = \"127.0.0.1:{port}\"\n",
        pg.conninfo("postgres")
    );
    let cfg = dir.path().join("pitr.toml");
    std::fs::write(&cfg, format!("{head}{fs}{second}{rest}")).expect("config");
    let c = cfg.to_str().expect("utf-8");
    let out = pitr(&["init", "-c", c]);
    assert!(out.status.success(), "{}", text(&out));

    let sidecar = Sidecar::start(&cfg);
    // Streaming: WAL stored (and so the sidecar's spool claimed).
    pg.psql("SELECT pg_switch_wal()");
    let spool = dir.path().join("state/spool");
    let mine = format!("{}-", sidecar.pid());
    let log = || sidecar.log_text();
    crate::support::eventually(
        format!("pitr run claimed a spool of its own in {}", spool.display()),
        Duration::from_secs(120),
        async || {
            let found = spools(&spool);
            if found.iter().any(|s| s.starts_with(&mine)) {
                return Ok(());
            }
            pg.psql("INSERT INTO t SELECT max(id) + 1 FROM t; SELECT pg_switch_wal()");
            Err(crate::support::with_log(format!("{found:?}"), &log))
        },
    )
    .await;

    // A second sidecar on the same state directory: refused, naming the
    // first one's pid.
    let out = pitr(&["run", "-c", c]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("another `pitr run` (pid {})", sidecar.pid())),
        "{err}"
    );

    // The documented uses beside it keep working.
    let out = pitr(&["backup", "-c", c]);
    assert!(out.status.success(), "{}", text(&out));
    let out = pitr(&["retention", "-c", c]);
    assert!(out.status.success(), "{}", text(&out));
    let out = pitr(&["list", "-c", c, "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    // The sidecar's spool is still its own: nobody adopted it while it runs.
    assert!(
        spools(&spool).iter().any(|s| s.starts_with(&mine)),
        "{:?}",
        spools(&spool)
    );
    sidecar.stop();
    // Its spool, empty, left with it.
    assert!(
        !spools(&spool).iter().any(|s| s.starts_with(&mine)),
        "{:?}",
        spools(&spool)
    );
}
