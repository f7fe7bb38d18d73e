//! Throw-away PostgreSQL clusters: `initdb` into a temp dir, a free port,
//! `pg_ctl start`, and `pg_ctl stop -m immediate` plus removal on drop.
//!
//! PostgreSQL refuses to run as root, and CI runs the tests as root, so every
//! server-side binary runs as an unprivileged user (`postgres`, else `nobody`)
//! when we are root; see [`run_as_pg_user`].

use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use tempfile::TempDir;

/// Names the directory holding `initdb`, `pg_ctl`, `postgres` and friends.
pub const PG_BIN_ENV: &str = "PITR_TEST_PG_BIN";
/// Where Debian 12's `postgresql-15` package puts the server binaries.
const DEBIAN_PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The superuser `initdb` creates; every connection the harness makes uses it.
const SUPERUSER: &str = "postgres";
/// How many fresh ports to try when another process takes ours between the
/// probe and the server's bind.
const PORT_ATTEMPTS: usize = 5;
/// Seconds `pg_ctl` waits for a start or stop before giving up: every wait is
/// bounded, so a stuck server fails the test instead of hanging CI.
const PG_CTL_TIMEOUT_SECS: &str = "60";
/// How much of the server log [`PgCluster::log_tail`] returns.
const LOG_TAIL_LINES: usize = 60;

/// The directory holding the PostgreSQL server binaries.
///
/// `$PITR_TEST_PG_BIN` if set, else Debian's `/usr/lib/postgresql/15/bin`,
/// else `pg_config --bindir`. Panics with install instructions when none holds
/// a server.
pub fn pg_bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(find_pg_bin_dir)
}

fn find_pg_bin_dir() -> PathBuf {
    let has_server = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    if let Some(dir) = std::env::var_os(PG_BIN_ENV) {
        let dir = PathBuf::from(dir);
        assert!(
            has_server(&dir),
            "{PG_BIN_ENV}={} holds no initdb, pg_ctl and postgres: point it at the bin \
             directory of a PostgreSQL server installation (Debian: {DEBIAN_PG_BIN})",
            dir.display()
        );
        return dir;
    }
    let debian = PathBuf::from(DEBIAN_PG_BIN);
    if has_server(&debian) {
        return debian;
    }
    // pg_config may come from libpq-dev alone, which names a bindir without a
    // server in it: check before trusting it.
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    if let Some(dir) = from_pg_config.filter(|dir| has_server(dir)) {
        return dir;
    }
    panic!(
        "PostgreSQL server binaries not found: {PG_BIN_ENV} is unset, {DEBIAN_PG_BIN} has no \
         server, and `pg_config --bindir` names none. The tests start their own clusters: \
         install the server with `apt-get install postgresql-15` (Debian 12; `bash .ci/run` \
         does this), or set {PG_BIN_ENV} to a directory holding initdb, pg_ctl and postgres."
    );
}

/// The PostgreSQL major the harness runs unless told another.
pub const DEFAULT_MAJOR: u32 = 15;
/// Where `.ci/setup` installs the other majors: `<dir>/<major>/bin`.
const CI_PG_ROOT: &str = "/opt/pitr-ci/postgresql";

/// The directory holding the server binaries of PostgreSQL `major`:
/// [`pg_bin_dir`] for 15; `$PITR_TEST_PG_BIN_<major>` if set, else
/// `/opt/pitr-ci/postgresql/<major>/bin` (what `.ci/setup` installs),
/// else `/usr/lib/postgresql/<major>/bin`. Panics with install instructions
/// when none holds a server of that major.
pub fn pg_bin_dir_for(major: u32) -> PathBuf {
    if major == DEFAULT_MAJOR {
        return pg_bin_dir().to_owned();
    }
    let env = format!("{PG_BIN_ENV}_{major}");
    let candidates: Vec<PathBuf> = match std::env::var_os(&env) {
        Some(dir) => vec![PathBuf::from(dir)],
        None => vec![
            Path::new(CI_PG_ROOT).join(major.to_string()).join("bin"),
            PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")),
        ],
    };
    for dir in &candidates {
        if ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| dir.join(b).is_file())
        {
            return dir.clone();
        }
    }
    panic!(
        "PostgreSQL {major} server binaries not found in {candidates:?}: run `bash .ci/setup` \
         (it installs 14, 16, 17 and 18 under {CI_PG_ROOT}), or set {env} to a directory \
         holding that major's initdb, pg_ctl and postgres"
    );
}

/// The effective uid of this process.
///
/// std has no `geteuid`; a new file belongs to the effective uid, which saves a
/// libc dependency for one number.
pub fn effective_uid() -> u32 {
    tempfile::tempfile()
        .and_then(|file| file.metadata())
        .expect("create a temp file to learn our effective uid")
        .uid()
}

/// The uid and gid the server runs as: `None` unless we are root, because only
/// root has to (and can) switch users.
fn pg_user() -> Option<(u32, u32)> {
    static USER: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *USER.get_or_init(|| {
        if effective_uid() != 0 {
            return None;
        }
        let passwd = fs::read_to_string("/etc/passwd")
            .expect("read /etc/passwd to find an unprivileged user for PostgreSQL");
        let found = ["postgres", "nobody"]
            .iter()
            .find_map(|name| passwd_ids(&passwd, name));
        assert!(
            found.is_some(),
            "running as root, and /etc/passwd has neither `postgres` nor `nobody`: PostgreSQL \
             refuses to run as root; `apt-get install postgresql-15` creates `postgres`"
        );
        found
    })
}

/// The uid and gid of `name` in the text of /etc/passwd.
fn passwd_ids(passwd: &str, name: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some((uid, gid))
    })
}

/// Makes `cmd` run as the unprivileged PostgreSQL user when we are root, and
/// leaves it alone otherwise.
///
/// For the server binaries (`initdb`, `pg_ctl`, `postgres` refuse root) and
/// for tools that must read or write a cluster's data directory, which belongs
/// to that user. std drops supplementary groups when root sets a uid.
pub fn run_as_pg_user(cmd: &mut Command) -> &mut Command {
    if let Some((uid, gid)) = pg_user() {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// Runs `cmd` and panics, showing its output, unless it succeeds.
/// Runs `cmd` to its end; fails the test, with its output, unless it
/// succeeds.
pub fn run_checked(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {:?}: {e}", cmd.get_program()));
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Extra `postgresql.conf` settings for [`PgCluster::start_with`], written
/// after the harness's own, so they win.
#[derive(Debug, Default)]
pub struct PgConf {
    text: String,
}

impl PgConf {
    /// Sets `name` to `value`, quoted as postgresql.conf requires (any value
    /// may be quoted, so numbers and units work too: `set("work_mem", "8MB")`).
    pub fn set(&mut self, name: &str, value: &str) -> &mut Self {
        let quoted = value.replace('\\', "\\\\").replace('\'', "''");
        writeln!(self.text, "{name} = '{quoted}'").expect("write to a String");
        self
    }

    /// Appends one raw line, for what [`PgConf::set`] cannot say (`include`).
    pub fn line(&mut self, line: &str) -> &mut Self {
        self.text.push_str(line);
        self.text.push('\n');
        self
    }
}

/// A PostgreSQL cluster of its own for one test: data directory, socket and
/// log in a temp dir, listening on a free loopback port.
///
/// Blocking: call [`PgCluster::start`] from a `#[tokio::test]` before spawning
/// work, or inside `spawn_blocking`. Dropping it stops the server immediately
/// and removes the temp dir; when the test is panicking, the server log's tail
/// is printed first.
pub struct PgCluster {
    /// Holds `data/`, `postgres.log` and the unix socket. Dropped after
    /// `Drop::drop` stopped the server.
    dir: TempDir,
    port: u16,
    /// The server binaries: those of the cluster's major.
    bin: PathBuf,
    /// The cluster's major.
    major: u32,
}

impl PgCluster {
    /// Starts a cluster with the harness's settings.
    pub fn start() -> PgCluster {
        PgCluster::start_with(|_| {})
    }

    /// Starts a cluster after `configure` added `postgresql.conf` settings.
    ///
    /// The cluster has data checksums, `wal_level = replica`, room for ten WAL
    /// senders and slots, `fsync` and `synchronous_commit` on (durability is
    /// what pitr is about), and trusts every local and loopback connection,
    /// replication ones included, for the superuser `postgres`.
    pub fn start_with(configure: impl FnOnce(&mut PgConf)) -> PgCluster {
        PgCluster::start_major_with(DEFAULT_MAJOR, configure)
    }

    /// Starts a cluster of PostgreSQL `major` (14 to 18) with the harness's
    /// settings; see [`pg_bin_dir_for`] for where its binaries come from.
    pub fn start_major(major: u32) -> PgCluster {
        PgCluster::start_major_with(major, |_| {})
    }

    /// [`PgCluster::start_with`] for a cluster of PostgreSQL `major`.
    pub fn start_major_with(major: u32, configure: impl FnOnce(&mut PgConf)) -> PgCluster {
        let mut cluster = PgCluster::unstarted(major);

        let data = cluster.data_dir();
        // --no-sync skips only initdb's final flush, which guards against the
        // kernel crashing right after initdb; tests crash the server, never
        // the kernel, and the server itself keeps fsync on. It saves seconds
        // per cluster.
        run_checked(
            run_as_pg_user(&mut Command::new(cluster.bin("initdb")))
                .current_dir(cluster.dir())
                .arg("-D")
                .arg(&data)
                .args([
                    "--data-checksums",
                    "--no-sync",
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                ])
                .args(["-E", "UTF8", "--locale=C"]),
            "initdb",
        );

        let mut conf = PgConf::default();
        conf.line("")
            .line("# Added by pitr's test harness.")
            .set("listen_addresses", "127.0.0.1")
            .set("unix_socket_directories", &cluster.dir().to_string_lossy())
            .set("wal_level", "replica")
            .set("max_wal_senders", "10")
            .set("max_replication_slots", "10")
            .line("# Durability is under test: never trade it for speed here.")
            .set("fsync", "on")
            .set("synchronous_commit", "on")
            // pg_ctl -l owns the log: one file that log_tail reads.
            .set("logging_collector", "off");
        configure(&mut conf);
        cluster.append_conf(&conf.text);
        fs::write(
            data.join("pg_hba.conf"),
            "# Written by pitr's test harness: trust everything local.\n\
             local all         all                trust\n\
             host  all         all  127.0.0.1/32  trust\n\
             host  all         all  ::1/128       trust\n\
             local replication all                trust\n\
             host  replication all  127.0.0.1/32  trust\n\
             host  replication all  ::1/128       trust\n",
        )
        .expect("write pg_hba.conf");
        cluster.start_on_free_port();
        cluster
    }

    /// A streaming standby of `primary`: `pg_basebackup -R -X stream` into a
    /// temp dir of its own, `hot_standby = on`, its own port and socket, and
    /// started (`pg_ctl start -w` returns once it accepts read-only
    /// connections). Replication slots may be created on it (PostgreSQL 15).
    pub fn standby_of(primary: &PgCluster) -> PgCluster {
        let mut cluster = PgCluster::unstarted(primary.major);
        let data = cluster.data_dir();
        // --no-sync: as initdb's, only guards against a kernel crash.
        run_checked(
            run_as_pg_user(&mut Command::new(cluster.bin("pg_basebackup")))
                .current_dir(cluster.dir())
                .arg("-D")
                .arg(&data)
                .args(["-h", primary.host(), "-p", &primary.port.to_string()])
                .args(["-U", SUPERUSER, "-R", "-X", "stream", "-c", "fast"])
                .arg("--no-sync"),
            "pg_basebackup",
        );
        let mut conf = PgConf::default();
        conf.line("")
            .line("# Added by pitr's test harness for a standby.")
            .set("unix_socket_directories", &cluster.dir().to_string_lossy())
            .set("hot_standby", "on");
        cluster.append_conf(&conf.text);
        cluster.start_on_free_port();
        cluster
    }

    /// Promotes a standby (`pg_ctl promote -w`) and waits, bounded, until it
    /// leaves recovery (`pg_is_in_recovery()` is false): with hot standby,
    /// `pg_ctl` may return before that.
    pub fn promote(&mut self) {
        self.pg_ctl_checked(&["promote"], "pg_ctl promote");
        super::eventually_blocking(
            format!("the standby on port {} left recovery", self.port),
            std::time::Duration::from_secs(30),
            || match self.psql("SELECT pg_is_in_recovery()").as_str() {
                "f" => Ok(()),
                _ => Err(self.log_tail()),
            },
        );
    }

    /// Restarts the server cleanly (`pg_ctl restart -m fast`) on the same
    /// data directory and port.
    pub fn restart(&mut self) {
        self.pg_ctl_checked(&["-m", "fast", "restart"], "pg_ctl restart -m fast");
    }

    /// A cluster whose data directory the test fills itself (a restored
    /// base backup): [`PgCluster::data_dir`] does not exist yet. Start it
    /// with [`PgCluster::start_filled`].
    pub fn empty() -> PgCluster {
        PgCluster::unstarted(DEFAULT_MAJOR)
    }

    /// [`PgCluster::empty`] for a data directory of PostgreSQL `major`.
    pub fn empty_major(major: u32) -> PgCluster {
        PgCluster::unstarted(major)
    }

    /// Starts a cluster made with [`PgCluster::empty`] after its data
    /// directory was filled: hands it to the PostgreSQL user (mode 0700),
    /// points its socket and port at this cluster, appends `extra` to
    /// `postgresql.conf`, and starts it (`pg_ctl start -w`: returns once
    /// recovery let it accept connections).
    pub fn start_filled(&mut self, extra: &str) {
        let data = self.data_dir();
        if let Some((uid, gid)) = pg_user() {
            run_checked(
                Command::new("chown")
                    .arg("-R")
                    .arg(format!("{uid}:{gid}"))
                    .arg(&data),
                "chown the restored data directory",
            );
        }
        fs::set_permissions(&data, fs::Permissions::from_mode(0o700))
            .expect("chmod 0700 the restored data directory");
        let mut conf = PgConf::default();
        conf.line("")
            .line("# Added by pitr's test harness for a restored cluster.")
            .set("unix_socket_directories", &self.dir().to_string_lossy())
            .line(extra);
        self.append_conf(&conf.text);
        self.start_on_free_port();
    }

    /// A temp dir for a cluster of `major`, handed to the PostgreSQL user; no
    /// server yet.
    fn unstarted(major: u32) -> PgCluster {
        remember_panics();
        let bin = pg_bin_dir_for(major);
        let dir = tempfile::Builder::new()
            .prefix("pitr-pg-")
            .tempdir()
            .expect("create a temp dir for a PostgreSQL cluster");
        if let Some((uid, gid)) = pg_user() {
            check_traversable(dir.path());
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("hand the cluster's temp dir to the PostgreSQL user");
        }
        PgCluster {
            dir,
            port: 0,
            bin,
            major,
        }
    }

    /// Starts the server on a free port, trying fresh ports when another
    /// process takes one between the probe and the server's bind.
    fn start_on_free_port(&mut self) {
        let cluster = self;
        for attempt in 1..=PORT_ATTEMPTS {
            cluster.port = free_port();
            cluster.append_conf(&format!("port = {}\n", cluster.port));
            let log_start = fs::metadata(cluster.log_path()).map_or(0, |m| m.len());
            let out = cluster
                .pg_ctl()
                .arg("start")
                .output()
                .expect("run pg_ctl start");
            if out.status.success() {
                return;
            }
            let log = fs::read(cluster.log_path()).unwrap_or_default();
            let this_attempt =
                String::from_utf8_lossy(log.get(log_start as usize..).unwrap_or_default());
            let port_taken = this_attempt.contains("Address already in use");
            assert!(
                port_taken && attempt < PORT_ATTEMPTS,
                "pg_ctl start failed ({}) on port {}:\n{}{}\nserver log:\n{}",
                out.status,
                cluster.port,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                cluster.log_tail()
            );
        }
        unreachable!("the loop returns or panics on its last attempt")
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address the server listens on.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The temp dir holding the data directory, the log and the socket; it
    /// is removed on drop, so tests may put scratch files here too.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The cluster's data directory (`PGDATA`), owned by the PostgreSQL user.
    pub fn data_dir(&self) -> PathBuf {
        self.dir().join("data")
    }

    /// The server log `pg_ctl -l` writes.
    pub fn log_path(&self) -> PathBuf {
        self.dir().join("postgres.log")
    }

    /// The path of a PostgreSQL binary of the cluster's major, e.g.
    /// `bin("pg_waldump")`.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// The cluster's PostgreSQL major.
    pub fn major(&self) -> u32 {
        self.major
    }

    /// A libpq connection string for the superuser over TCP, e.g.
    /// `host=127.0.0.1 port=5433 user=postgres dbname=postgres`. Append
    /// `replication=true` for a physical replication connection.
    pub fn conninfo(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user={SUPERUSER} dbname={dbname}",
            self.host(),
            self.port
        )
    }

    /// Connects to database `postgres` and spawns the connection's task on
    /// the current tokio runtime.
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&self.conninfo("postgres"), tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "connect to the test cluster on port {}: {e}\nserver log:\n{}",
                        self.port,
                        self.log_tail()
                    )
                });
        // A connection error also fails the client's next call, where the test
        // sees it; nothing to report here.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    /// `tool` (a client binary of the cluster's major, e.g. `pgbench`) with
    /// `args`, connecting as the superuser to database `postgres`.
    pub fn client(&self, tool: &str, args: &[&str]) -> Command {
        let mut c = Command::new(self.bin(tool));
        c.args(["-h", self.host(), "-p", &self.port.to_string()])
            .args(["-U", SUPERUSER])
            .args(args)
            .arg("postgres");
        c
    }

    /// Runs `pgbench` with `args` (e.g. `["-i", "-s", "2", "-q"]`) on
    /// database `postgres`; fails the test unless it succeeds.
    pub fn pgbench(&self, args: &[&str]) {
        run_checked(
            &mut self.client("pgbench", args),
            &format!("pgbench {args:?}"),
        );
    }

    /// Runs `sql` with `psql` as the superuser on database `postgres`;
    /// returns its unaligned, tuples-only output without the final newline.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_at(&self.conninfo("postgres"), sql)
    }

    /// Runs `sql` with `psql` on `conninfo` (a replication connection, another
    /// database); panics with psql's stderr on any error.
    pub fn psql_at(&self, conninfo: &str, sql: &str) -> String {
        self.psql_run(conninfo, &[sql])
    }

    /// Runs each of `sqls` with one `psql`, each as its own request (and so
    /// its own transaction), and returns their output lines together.
    pub fn psql_each(&self, sqls: &[&str]) -> String {
        self.psql_run(&self.conninfo("postgres"), sqls)
    }

    fn psql_run(&self, conninfo: &str, sqls: &[&str]) -> String {
        let mut cmd = Command::new(self.bin("psql"));
        run_as_pg_user(&mut cmd)
            .current_dir(self.dir())
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-d", conninfo]);
        for sql in sqls {
            cmd.args(["-c", sql]);
        }
        let out = run_checked(&mut cmd, &format!("psql -c {sqls:?}"));
        let mut stdout = String::from_utf8(out.stdout).expect("psql prints UTF-8");
        if stdout.ends_with('\n') {
            stdout.pop();
        }
        stdout
    }

    /// The postmaster's pid, from `postmaster.pid`; `None` when the server is
    /// not running (the file is removed on a clean or immediate stop).
    pub fn server_pid(&self) -> Option<u32> {
        let text = fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Stops the server cleanly (`-m fast`: disconnect clients, checkpoint).
    pub fn stop(&mut self) {
        self.pg_ctl_checked(&["-m", "fast", "stop"], "pg_ctl stop -m fast");
    }

    /// Stops the server as a crash would (`-m immediate`: no checkpoint), so
    /// the next start runs crash recovery.
    pub fn crash(&mut self) {
        self.pg_ctl_checked(&["-m", "immediate", "stop"], "pg_ctl stop -m immediate");
    }

    /// Starts the server again on the same data directory and port, after
    /// [`PgCluster::stop`] or [`PgCluster::crash`].
    pub fn start_again(&mut self) {
        self.pg_ctl_checked(&["start"], "pg_ctl start");
    }

    /// The last lines of the server log, for failure messages.
    pub fn log_tail(&self) -> String {
        match fs::read(self.log_path()) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
            }
            Err(e) => format!("(no server log at {}: {e})", self.log_path().display()),
        }
    }

    /// `pg_ctl` on this cluster, waiting a bounded time, as the server's user.
    fn pg_ctl(&self) -> Command {
        let mut cmd = Command::new(self.bin("pg_ctl"));
        // The PyPI builds' loadable modules (libpqwalreceiver) look for
        // libpq in their build's prefix, which is not here, and so load the
        // system's older one: a standby of 17 then fails on the
        // `sslnegotiation` that pg_basebackup -R writes. Their own libpq
        // sits in ../lib.
        let lib = self.bin.join("../lib");
        if lib.join("libpq.so.5").is_file() {
            cmd.env("LD_LIBRARY_PATH", &lib);
        }
        run_as_pg_user(&mut cmd)
            .current_dir(self.dir())
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", PG_CTL_TIMEOUT_SECS, "-s"]);
        cmd
    }

    fn pg_ctl_checked(&self, args: &[&str], what: &str) {
        let out = self.pg_ctl().args(args).output().expect("run pg_ctl");
        assert!(
            out.status.success(),
            "{what} failed ({}) on port {}:\n{}{}\nserver log:\n{}",
            out.status,
            self.port,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
    }

    /// Appends to postgresql.conf; later lines override earlier ones.
    fn append_conf(&self, text: &str) {
        OpenOptions::new()
            .append(true)
            .open(self.data_dir().join("postgresql.conf"))
            .and_then(|mut file| file.write_all(text.as_bytes()))
            .expect("append to postgresql.conf");
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "server log of the test cluster on port {} ({}):\n{}",
                self.port,
                self.dir().display(),
                self.log_tail()
            );
            // Again after the log: a CI page that keeps only the end of the
            // output still shows why the test failed.
            if let Some(why) = last_panic() {
                eprintln!("(the test failed: {why})");
            }
        }
        // Immediate: nothing of a throw-away cluster needs a checkpoint.
        // Errors are ignored: the server may never have started or be gone.
        if self.data_dir().join("postmaster.pid").exists() {
            let _ = self.pg_ctl().args(["-m", "immediate", "stop"]).output();
        }
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a loopback port to find a free one")
        .port()
}

/// Panics unless every directory above `dir` lets other users through, since
/// the unprivileged server must reach its data directory.
fn check_traversable(dir: &Path) {
    for ancestor in dir.ancestors().skip(1) {
        let mode = fs::metadata(ancestor)
            .unwrap_or_else(|e| panic!("stat {}: {e}", ancestor.display()))
            .permissions()
            .mode();
        assert!(
            mode & 0o001 != 0,
            "{} (mode {mode:o}) keeps the unprivileged PostgreSQL user out of {}: set TMPDIR \
             to a directory everyone may traverse, such as /tmp",
            ancestor.display(),
            dir.display()
        );
    }
}

thread_local! {
    static LAST_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Keeps each thread's last panic message (then prints it as before), so
/// that a cluster dropped while the test unwinds can repeat it after its
/// server log.
fn remember_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(a panic without a message)".into());
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("{message}{at}")));
            previous(info);
        }));
    });
}

/// This thread's last panic message, if it panicked since the hook was set.
fn last_panic() -> Option<String> {
    LAST_PANIC.with(|p| p.borrow().clone())
}
