//! `pitr demo`: the whole job on a throw-away cluster, for a first look. It
//! creates a local PostgreSQL cluster and a local repository in a temporary
//! directory, streams the WAL and takes a base backup with pitr, writes rows
//! a second apart, restores to a time between two of them (with the checked
//! recovery `pitr restore` always runs), starts the restored cluster and
//! shows it holds exactly the rows committed before that time. Everything is
//! removed at the end, also when a step fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use pitr::config::Config;
use pitr::repo::Repository;

use super::exit::Exit;

/// The programs the demo runs.
const TOOLS: &[&str] = &["initdb", "postgres", "pg_ctl", "psql"];

/// The newest PostgreSQL installed, wherever restores look for one.
fn pg_bin() -> anyhow::Result<pitr::pg::PgBin> {
    pitr::pg::find_newest(&[], TOOLS).map_err(|e| Exit::NotPossible(e.to_string()).into())
}

/// The unprivileged user PostgreSQL runs as when the demo runs as root.
fn os_user() -> anyhow::Result<Option<(u32, u32)>> {
    pitr::pg::server_owner(
        "postgres",
        "the demo always uses `postgres`, which installing PostgreSQL's packages creates",
    )
    .map_err(|e| Exit::NotPossible(e.to_string()).into())
}

/// A throw-away cluster, stopped on drop.
struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    user: Option<(u32, u32)>,
    running: bool,
}

impl Cluster {
    fn command(&self, tool: &str) -> Command {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new(self.bin.join(tool));
        if let Some((uid, gid)) = &self.user {
            c.uid(*uid).gid(*gid);
        }
        c
    }

    fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .command(tool)
            .args(args)
            .output()
            .with_context(|| format!("cannot run {tool}"))?;
        if !out.status.success() {
            bail!(
                "{tool} {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn start(&mut self) -> anyhow::Result<()> {
        let log = self.data.with_extension("log");
        let data = self.data.to_string_lossy().to_string();
        let opts = format!(
            "-c port={} -c listen_addresses=127.0.0.1 -c unix_socket_directories={}",
            self.port,
            self.data.parent().unwrap_or(Path::new("/tmp")).display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                &data,
                "-l",
                &log.to_string_lossy(),
                "-o",
                &opts,
                "-w",
                "start",
            ],
        )?;
        self.running = true;
        Ok(())
    }

    fn sql(&self, sql: &str) -> anyhow::Result<String> {
        let port = self.port.to_string();
        self.run(
            "psql",
            &[
                "-X",
                "-qAt",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            let data = self.data.to_string_lossy().to_string();
            let _ = self
                .command("pg_ctl")
                .args(["-D", &data, "-m", "fast", "-w", "stop"])
                .output();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(l.local_addr()?.port())
}

fn chown(path: &Path, user: &Option<(u32, u32)>) -> anyhow::Result<()> {
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(path, Some(*uid), Some(*gid))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

/// Runs the demo.
pub(super) async fn run() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let bin = pg_bin()?;
    let user = os_user()?;
    let tmp = tempfile::Builder::new()
        .prefix("pitr-demo-")
        .tempdir()
        .context("create a temporary directory")?;
    let dir = tmp.path().to_owned();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let pgdir = dir.join("pg");
    std::fs::create_dir(&pgdir)?;
    chown(&pgdir, &user)?;
    println!(
        "pitr demo in {} (removed at the end), PostgreSQL {} from {}",
        dir.display(),
        bin.version(),
        bin.dir().display()
    );

    // 1. A source cluster.
    let mut source = Cluster {
        bin: bin.dir().to_owned(),
        data: pgdir.join("source"),
        port: free_port()?,
        user,
        running: false,
    };
    source.run(
        "initdb",
        &[
            "-D",
            &source.data.to_string_lossy(),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        ],
    )?;
    source.start()?;
    println!(
        "1. started a throw-away PostgreSQL cluster on 127.0.0.1:{}",
        source.port
    );

    // 2. A repository and a config, as a user would write them.
    let identity = age::x25519::Identity::generate();
    let identity_file = dir.join("identity.txt");
    std::fs::write(
        &identity_file,
        format!(
            "{}\n",
            age::secrecy::ExposeSecret::expose_secret(&identity.to_string())
        ),
    )?;
    std::fs::set_permissions(&identity_file, std::fs::Permissions::from_mode(0o600))?;
    let config_path = dir.join("pitr.toml");
    std::fs::write(
        &config_path,
        format!(
            r#"[repository]
recipients = ["{recipient}"]
identity_file = "{identity}"
state_dir = "{state}"

[[destination]]
name = "local"
kind = "fs"
path = "{repo}"

[[postgres]]
name = "demo"
conninfo = "host=127.0.0.1 port={port} user=postgres dbname=postgres"
slot = "pitr_demo"
base_backup = "off"

[verify]
schedule = "off"

[retention]
schedule = "off"
"#,
            recipient = identity.to_public(),
            identity = identity_file.display(),
            state = dir.join("state").display(),
            repo = dir.join("repo").display(),
            port = source.port,
        ),
    )?;
    let config = Config::load(&config_path)?;
    let fanout = pitr::wiring::fanout(&config);
    let opts = pitr::wiring::repo_options(&config)?;
    Repository::init(&fanout, &opts).await?;
    let repo = Repository::open(fanout, opts).await?;
    println!(
        "2. created an encrypted repository in {} (config: {})",
        dir.join("repo").display(),
        config_path.display()
    );

    // 3. Stream WAL, as `pitr run` does.
    let pg = &config.postgres[0];
    let conninfo = pitr::wiring::conninfo(pg)?;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let (progress_tx, progress_rx) = tokio::sync::watch::channel(pitr::wal::Progress::default());
    let streaming = tokio::spawn(pitr::wal::stream(
        repo.clone(),
        pitr::wal::StreamOptions::new(&pg.name, conninfo.clone(), &pg.slot),
        progress_tx,
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
    ));
    let result = demo_steps(&repo, &config, &source, &dir, progress_rx).await;
    let _ = stop_tx.send(true);
    let stopped = tokio::time::timeout(Duration::from_secs(30), streaming).await;
    drop(source);
    result?;
    if let Ok(Ok(Err(e))) = stopped {
        return Err(anyhow::Error::new(e).context("the demo's WAL stream failed"));
    }
    println!("Done; {} removed.", dir.display());
    Ok(())
}

async fn wait_stored(
    progress: &tokio::sync::watch::Receiver<pitr::wal::Progress>,
    source: &Cluster,
) -> anyhow::Result<()> {
    let lsn: pitr::pg::Lsn = source
        .sql("SELECT pg_current_wal_lsn()")?
        .parse()
        .context("pg_current_wal_lsn")?;
    for _ in 0..300 {
        if progress.borrow().flushed >= lsn {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the WAL up to {lsn} was not stored within 30 s")
}

async fn demo_steps(
    repo: &Repository,
    config: &Config,
    source: &Cluster,
    dir: &Path,
    progress: tokio::sync::watch::Receiver<pitr::wal::Progress>,
) -> anyhow::Result<()> {
    let db = &config.postgres[0].name;
    source.sql("CREATE TABLE demo (n int PRIMARY KEY, at timestamptz NOT NULL)")?;
    let options = pitr::basebackup::BackupOptions {
        database: db.clone(),
        conninfo: pitr::wiring::conninfo(&config.postgres[0])?,
        label: "pitr demo".to_owned(),
        checkpoint: pitr::pg::Checkpoint::Fast,
        max_rate_kb: None,
        incremental_max_chain: config.postgres[0].incremental_max_chain,
        manifest_checksums: Default::default(),
    };
    let (tx, _rx) = tokio::sync::watch::channel(pitr::basebackup::BackupProgress::default());
    let record = pitr::basebackup::take(repo, &options, &tx).await?;
    pitr::basebackup::wait_restorable(
        repo,
        db,
        &record.id,
        Duration::from_secs(60),
        Duration::from_millis(200),
    )
    .await?;
    println!(
        "3. streaming WAL; base backup {} taken and restorable ({} files)",
        record.id, record.files
    );

    // 4. Rows, a second apart, stamped by the server's clock.
    let mut stamps = Vec::new();
    for n in 1..=6 {
        let at = source.sql(&format!(
            "INSERT INTO demo VALUES ({n}, clock_timestamp()) RETURNING at"
        ))?;
        stamps.push(pitr::restore::parse_time(&at)?);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    wait_stored(&progress, source).await?;
    let before = stamps[2];
    let after = stamps[3];
    let target = before
        .checked_add(jiff::SignedDuration::from_nanos(
            after.duration_since(before).as_nanos() as i64 / 2,
        ))
        .context("target time")?;
    println!(
        "4. wrote rows 1..6; row 3 committed at {}, row 4 at {}",
        pitr::restore::pg_time(before),
        pitr::restore::pg_time(after)
    );

    // 5. Restore to the moment between rows 3 and 4.
    let t = pitr::restore::Target::Time(target);
    let plan = pitr::restore::plan(repo, db, &t, None).await?;
    let restored_dir = dir.join("pg").join("restored");
    let opts = pitr::restore::RestoreOptions {
        target_dir: restored_dir.clone(),
        force: false,
        recover: true,
        os_user: "postgres".to_owned(),
        pg_bin: Some(source.bin.clone()),
        bin_dirs: Vec::new(),
        config_path: config.path.clone(),
        parallel: 4,
        tablespace_dir: None,
        recovery_timeout: Duration::from_secs(300),
        log_dir: dir.join("state"),
        progress: None,
    };
    println!(
        "5. pitr restore --at '{}' --target {}",
        pitr::restore::pg_time(target),
        restored_dir.display()
    );
    let report = pitr::restore::restore(repo, &plan, &opts).await?;
    if let Some(r) = &report.reached {
        println!(
            "   recovery checked: stopped {}",
            r.stopped.as_deref().unwrap_or("at the end of the WAL")
        );
    }

    // 6. Start it, as a user would, and look.
    let mut restored = Cluster {
        bin: source.bin.clone(),
        data: restored_dir,
        port: free_port()?,
        user: source.user,
        running: false,
    };
    restored.start()?;
    let rows = restored.sql("SELECT string_agg(n::text, ',' ORDER BY n) FROM demo")?;
    println!("6. the restored cluster holds rows: {rows}");
    if rows != "1,2,3" {
        bail!("the restored cluster holds rows {rows}, expected exactly 1,2,3");
    }
    println!("   exactly the rows committed before the target: rows 1, 2 and 3.");
    Ok(())
}
