//! A throw-away PostgreSQL cluster for benchmarks: `initdb` into a temp dir,
//! a free loopback port, `pg_ctl start`, and `pg_ctl stop -m immediate` on
//! drop, so a failing benchmark leaves no server behind.
//!
//! A small copy of what the integration tests' harness does
//! (`tests/it/support/pg.rs`, which a bench target cannot import): as root,
//! the server binaries run as `postgres` (else `nobody`), since PostgreSQL
//! refuses to run as root.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::Context as _;
use tempfile::TempDir;

/// Where Debian 12's `postgresql-15` package puts the server binaries.
const DEBIAN_PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// Seconds `pg_ctl` waits for a start or stop: every wait is bounded.
const PG_CTL_TIMEOUT_SECS: &str = "60";
const SUPERUSER: &str = "postgres";

/// The directory of the server binaries: `$PITR_BENCH_PG_BIN`, else
/// `$PITR_TEST_PG_BIN` (the tests' variable), else Debian's.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let dir = ["PITR_BENCH_PG_BIN", "PITR_TEST_PG_BIN"]
        .iter()
        .find_map(std::env::var_os)
        .map_or_else(|| PathBuf::from(DEBIAN_PG_BIN), PathBuf::from);
    anyhow::ensure!(
        ["initdb", "pg_ctl", "postgres", "pgbench"]
            .iter()
            .all(|b| dir.join(b).is_file()),
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres, pgbench) in {}: \
         `apt-get install postgresql-15`, or set PITR_BENCH_PG_BIN",
        dir.display()
    );
    Ok(dir)
}

/// The uid and gid the server runs as when we are root; `None` otherwise.
pub fn pg_user() -> anyhow::Result<Option<(u32, u32)>> {
    let status = std::fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    // "Uid: real effective saved fs"
    let euid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|u| u.parse::<u32>().ok())
        .context("no Uid line in /proc/self/status")?;
    if euid != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").context("read /etc/passwd")?;
    let ids = |name: &str| {
        passwd.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.first() != Some(&name) {
                return None;
            }
            Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
        })
    };
    let found = ids("postgres").or_else(|| ids("nobody"));
    anyhow::ensure!(
        found.is_some(),
        "running as root, and /etc/passwd has neither `postgres` nor `nobody` to run the server as"
    );
    Ok(found)
}

/// Runs `cmd` and fails, showing its output, unless it succeeds.
pub fn run_checked(cmd: &mut Command, what: &str) -> anyhow::Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: cannot run {:?}", cmd.get_program()))?;
    anyhow::ensure!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// A cluster in a temp dir (data directory, log, unix socket), listening on
/// 127.0.0.1 with trust authentication for everything, replication included.
pub struct Cluster {
    dir: TempDir,
    bin: PathBuf,
    user: Option<(u32, u32)>,
    port: u16,
}

impl Cluster {
    /// `initdb --data-checksums`, `wal_level = replica`, ten WAL senders and
    /// slots, then `settings` (`name = 'value'` lines, later ones win), then
    /// start. `base` is where the temp dir goes; every directory above it must
    /// let the server's user through.
    pub fn start(base: &Path, settings: &[(&str, String)]) -> anyhow::Result<Cluster> {
        let bin = bin_dir()?;
        let user = pg_user()?;
        let dir = tempfile::Builder::new()
            .prefix("pitr-bench-pg-")
            .tempdir_in(base)
            .with_context(|| format!("temp dir in {}", base.display()))?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .context("hand the cluster's temp dir to the PostgreSQL user")?;
        }
        let mut cluster = Cluster {
            dir,
            bin,
            user,
            port: 0,
        };
        let data = cluster.data_dir();
        run_checked(
            cluster
                .command("initdb")
                .arg("-D")
                .arg(&data)
                .args(["--data-checksums", "--no-sync", "-U", SUPERUSER])
                .args(["--auth=trust", "-E", "UTF8", "--locale=C"]),
            "initdb",
        )?;
        let mut conf = String::from("\n# Added by pitr's benchmark.\n");
        let base_settings = [
            ("listen_addresses", "127.0.0.1".to_owned()),
            (
                "unix_socket_directories",
                cluster.dir().to_string_lossy().into_owned(),
            ),
            ("wal_level", "replica".to_owned()),
            ("max_wal_senders", "10".to_owned()),
            ("max_replication_slots", "10".to_owned()),
            ("logging_collector", "off".to_owned()),
        ];
        for (name, value) in base_settings.iter().chain(settings) {
            let quoted = value.replace('\\', "\\\\").replace('\'', "''");
            let _ = writeln!(conf, "{name} = '{quoted}'");
        }
        cluster.append_conf(&conf)?;
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all         all                trust\n\
             host  all         all  127.0.0.1/32  trust\n\
             local replication all                trust\n\
             host  replication all  127.0.0.1/32  trust\n",
        )
        .context("write pg_hba.conf")?;
        // The port is free when probed; another process may take it before
        // the server binds it, so a few tries.
        let mut last = String::new();
        for _ in 0..5 {
            cluster.port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .context("find a free port")?
                .port();
            cluster.append_conf(&format!("port = {}\n", cluster.port))?;
            let out = cluster
                .pg_ctl()
                .arg("start")
                .output()
                .context("pg_ctl start")?;
            if out.status.success() {
                return Ok(cluster);
            }
            last = format!(
                "{}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                cluster.log_tail()
            );
            if !last.contains("Address already in use") {
                break;
            }
        }
        anyhow::bail!("pg_ctl start failed:\n{last}")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir().join("data")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The uid and gid the server runs as (when we are root).
    pub fn user(&self) -> Option<(u32, u32)> {
        self.user
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// `host=127.0.0.1 port=P user=postgres dbname=postgres`.
    pub fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user={SUPERUSER} dbname=postgres",
            self.port
        )
    }

    /// A server binary (or any program, by path), run as the server's user.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let program = program.as_ref();
        let mut cmd = if Path::new(program).components().count() > 1 {
            Command::new(program)
        } else {
            Command::new(self.bin.join(program))
        };
        cmd.current_dir(self.dir());
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// Makes `path` (a file or directory we created) the server user's.
    pub fn give(&self, path: &Path) -> anyhow::Result<()> {
        if let Some((uid, gid)) = self.user {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .with_context(|| format!("chown {}", path.display()))?;
        }
        Ok(())
    }

    /// Connects with tokio-postgres; the connection runs on the current
    /// runtime.
    pub async fn connect(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, connection) = tokio_postgres::connect(&self.conninfo(), tokio_postgres::NoTls)
            .await
            .with_context(|| format!("connect to the benchmark cluster on port {}", self.port))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// `pg_ctl restart -m fast`, e.g. after `ALTER SYSTEM` of a setting that
    /// needs it.
    pub fn restart(&self) -> anyhow::Result<()> {
        let out = self
            .pg_ctl()
            .args(["-m", "fast", "restart"])
            .output()
            .context("pg_ctl restart")?;
        anyhow::ensure!(
            out.status.success(),
            "pg_ctl restart failed:\n{}",
            self.log_tail()
        );
        Ok(())
    }

    /// The last lines of the server log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir().join("postgres.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn pg_ctl(&self) -> Command {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.dir().join("postgres.log"))
            .args(["-w", "-t", PG_CTL_TIMEOUT_SECS, "-s"]);
        cmd
    }

    fn append_conf(&self, text: &str) -> anyhow::Result<()> {
        std::fs::OpenOptions::new()
            .append(true)
            .open(self.data_dir().join("postgresql.conf"))
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .context("append to postgresql.conf")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Immediate: a throw-away cluster needs no checkpoint. The server may
        // never have started, or be gone already.
        if self.data_dir().join("postmaster.pid").exists() {
            let _ = self.pg_ctl().args(["-m", "immediate", "stop"]).output();
        }
    }
}
