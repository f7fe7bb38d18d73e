//! The `pitr` command line: parses arguments, loads the config, runs one
//! command and maps its outcome to an exit code. Everything else lives in the
//! library.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use pitr::config::Config;
use pitr::repo::Repository;

mod cli;
use cli::restore::{list, make_plan, open_repo, parse_target, print_plan, restore};
use cli::{cids as cids_cmd, demo, export as export_cmd, restore as restore_cmd};
use cli::{sqlite as sqlite_cmd, verify as verify_cmd};

/// Keeps PostgreSQL and SQLite databases recoverable to any second.
#[derive(Parser, Debug)]
#[command(name = "pitr", version = export_cmd::VERSION, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as human-readable text or as JSON objects (one per line,
    /// for log collectors). The level comes from PITR_LOG (e.g. `info`,
    /// `pitr=debug`).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "PITR_LOG_FORMAT",
        default_value = "human"
    )]
    log_format: LogFormat,
}

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    /// Text for people.
    Human,
    /// One JSON object per line.
    Json,
}

/// The config file option every command but `keygen` takes.
#[derive(Args, Debug)]
struct ConfigArg {
    /// The config file (TOML). Every key can be overridden with
    /// PITR_<SECTION>_<KEY> environment variables.
    #[arg(short = 'c', long = "config", env = "PITR_CONFIG", value_name = "FILE")]
    config: PathBuf,
}

/// Which database a command is about.
#[derive(Args, Debug)]
#[group(multiple = false)]
struct DatabaseArg {
    /// A `[[postgres]]` entry by name.
    #[arg(long, value_name = "NAME")]
    postgres: Option<String>,
    /// A `[[sqlite]]` entry by name.
    #[arg(long, value_name = "NAME")]
    sqlite: Option<String>,
}

/// What a restore aims at.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
struct TargetArg {
    /// A point in time: RFC 3339 (2026-11-23T03:00:00Z) or PostgreSQL's
    /// `2026-11-23 03:00:00+00`. A time without a zone is refused.
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
    /// The newest point the repository holds.
    #[arg(long)]
    latest: bool,
    /// A WAL position (PostgreSQL only), e.g. 0/3000060.
    #[arg(long, value_name = "LSN")]
    lsn: Option<String>,
    /// A restore point made with pg_create_restore_point (PostgreSQL only).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write a new age identity and print its recipient (public key).
    Keygen {
        /// Where to write the identity (mode 0600). Without it, the identity
        /// goes to standard output and the recipient to standard error.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Prepare every destination (idempotent).
    Init(ConfigArg),
    /// The sidecar: WAL streams, SQLite watchers, and base backups, test
    /// restores, retention and scrub on their schedules, with the health
    /// server (/health, /metrics) and alerts.
    Run(ConfigArg),
    /// Take one base backup now.
    Backup {
        #[command(flatten)]
        config: ConfigArg,
        /// The `[[postgres]]` entry (default: the only one).
        #[arg(long, value_name = "NAME")]
        postgres: Option<String>,
        /// How long to wait for the backup's WAL to be stored (by `pitr run`)
        /// before giving up on marking it restorable.
        #[arg(long, value_name = "SECONDS", default_value_t = 300)]
        wait_wal: u64,
        /// Let the server spread its checkpoint instead of taking it at once.
        #[arg(long)]
        spread_checkpoint: bool,
        /// Limit the server's sending rate, in kB/s (32 to 1048576); default:
        /// the entry's `max_rate`, else no limit.
        #[arg(long, value_name = "KB", value_parser = clap::value_parser!(u32).range(32..=1048576))]
        max_rate: Option<u32>,
    },
    /// Base backups, WAL ranges per timeline, SQLite points, the restore window.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show what a restore would fetch, without restoring.
    Plan {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        target: TargetArg,
        #[command(flatten)]
        database: DatabaseArg,
        /// Follow this timeline (default: the one current at the target).
        #[arg(long, value_name = "N")]
        timeline: Option<u32>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Restore a database to a point in time.
    Restore {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        target: TargetArg,
        #[command(flatten)]
        database: DatabaseArg,
        /// Where to restore: an empty directory (PostgreSQL) or a file path (SQLite).
        #[arg(long = "target", value_name = "PATH")]
        target_path: PathBuf,
        /// Follow this timeline (default: the one current at the target).
        #[arg(long, value_name = "N")]
        timeline: Option<u32>,
        /// Empty a non-empty target directory first.
        #[arg(long)]
        force: bool,
        /// Stop after staging the directory and writing the recovery
        /// settings; start PostgreSQL yourself (its restore_command is
        /// `pitr wal-fetch` with this config).
        #[arg(long)]
        no_recover: bool,
        /// The OS user PostgreSQL runs as when pitr runs as root.
        #[arg(long, value_name = "USER", default_value = "postgres")]
        os_user: String,
        /// The directory of PostgreSQL's server binaries (default: found
        /// from the backup's major version).
        #[arg(long, value_name = "DIR")]
        pg_bin: Option<PathBuf>,
        /// Where tablespaces go (`DIR/<oid>`), when the backup has any.
        #[arg(long, value_name = "DIR")]
        tablespace_dir: Option<PathBuf>,
        /// Files fetched at once.
        #[arg(long, value_name = "N", default_value_t = 4)]
        parallel: usize,
        /// Give up when recovery takes longer than this.
        #[arg(long, value_name = "SECONDS", default_value_t = 86400)]
        recovery_timeout: u64,
    },
    /// Internal: PostgreSQL's restore_command while `pitr restore` runs
    /// recovery; asks that process for one file over its socket.
    #[command(hide = true)]
    RestoreFetch {
        /// The socket of the running restore.
        socket: PathBuf,
        /// The file PostgreSQL asks for (%f).
        file: String,
        /// Where to write it (%p).
        path: PathBuf,
    },
    /// PostgreSQL's restore_command helper: fetch one WAL segment or history file.
    /// Exits 1 when the repository does not hold it.
    WalFetch {
        #[command(flatten)]
        config: ConfigArg,
        /// The `[[postgres]]` entry (default: the only one).
        #[arg(long, value_name = "NAME")]
        postgres: Option<String>,
        /// The file PostgreSQL asks for (%f).
        segment: String,
        /// Where to write it (%p).
        path: PathBuf,
        /// Internal: fill the prefetch spool with the segments after
        /// SEGMENT, then exit (PATH is ignored).
        #[arg(long, hide = true)]
        prefetch_only: bool,
    },
    /// Check every object in every destination; with --restore, a test restore.
    Verify {
        #[command(flatten)]
        config: ConfigArg,
        /// Also restore to a random time and check the result.
        #[arg(long)]
        restore: bool,
        /// With --restore: only this database (default: every one).
        #[command(flatten)]
        database: DatabaseArg,
    },
    /// Copy missing or damaged objects into each destination from one where
    /// they check out; then every destination holds every object.
    Repair(ConfigArg),
    /// Apply the [retention] policy and collect garbage: prints the plan,
    /// then applies it unless --dry-run.
    Retention {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        database: DatabaseArg,
        /// Print the plan only; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Check the config, then reach every destination, database and alert
    /// channel it names.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Only load and validate the config and the files it names (keys,
        /// identity); contact nothing. For checking a deployment's config
        /// before it runs, where its hosts do not resolve.
        #[arg(long)]
        offline: bool,
    },
    /// The local catalog.
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
    },
    /// Archive a throw-away local PostgreSQL cluster, then restore it to a time.
    Demo,
    /// Copy the newest restorable set (base backup and the WAL after it,
    /// SQLite's newest snapshot and the page sets after it) into a
    /// directory laid out as an `fs` destination; still encrypted, no
    /// identity needed.
    Export {
        #[command(flatten)]
        config: ConfigArg,
        /// The directory to write (created when missing; must be empty).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        #[command(flatten)]
        database: DatabaseArg,
        /// The destination to read from (default: the first configured).
        #[arg(long, value_name = "NAME")]
        from: Option<String>,
    },
    /// Internal: the container's health check. GETs URL and exits 0 on a
    /// 2xx answer, 1 otherwise (no curl needed in the image).
    #[command(hide = true)]
    Probe {
        /// The URL, e.g. http://127.0.0.1:9187/health.
        url: String,
        /// Give up after this long.
        #[arg(long, value_name = "SECONDS", default_value_t = 5)]
        timeout: u64,
    },
}

#[derive(Subcommand, Debug)]
enum CatalogCommand {
    /// Recreate the local catalog from the destinations alone.
    Rebuild {
        #[command(flatten)]
        config: ConfigArg,
        /// Read from this destination only (default: the first that answers).
        #[arg(long, value_name = "NAME")]
        from: Option<String>,
    },
    /// Print the content identifier (Storacha root CID) of every object in
    /// each content-addressed destination, with a gateway URL.
    Cids {
        #[command(flatten)]
        config: ConfigArg,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// How a command ended, beyond success: the exit code and the message.
#[derive(Debug, thiserror::Error)]
enum Exit {
    /// Bad usage or configuration (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The thing asked for is not possible (exit 1).
    #[error("{0}")]
    NotPossible(String),
    /// Stopped by a signal before finishing (exit 128 + the signal).
    #[error(
        "interrupted by {0}: stopped before finishing. Any PostgreSQL server pitr had started \
         was shut down and any partial restore removed; nothing is left running. Run the \
         command again to start over"
    )]
    Interrupted(&'static str),
}

/// Exit codes as DESIGN.md sets them.
const EXIT_NOT_POSSIBLE: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_FAILURE: u8 = 3;
/// `wal-fetch` failures other than "not stored": above 125, so that
/// PostgreSQL aborts recovery rather than taking the failure for the end of
/// the WAL and promoting with less data than the repository holds.
const EXIT_WAL_FETCH_FAILED: u8 = 255;

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    // PostgreSQL runs this once per WAL file while replay waits: no logging
    // set-up, no runtime threads, just the round trip.
    if let Command::RestoreFetch { socket, file, path } = &cli.command {
        return ExitCode::from(pitr::restore::fetch_client(socket, file, path));
    }
    // The sidecar reports what it does; one-shot commands stay quiet unless
    // something is wrong.
    let level = if matches!(cli.command, Command::Run(_)) {
        "info"
    } else {
        "warn"
    };
    init_logging(cli.log_format, level);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    // Commands that start a PostgreSQL server on restored data stop it and
    // remove what they wrote when interrupted; the others keep the default
    // (wal-fetch in particular: PostgreSQL reads a restore_command killed by
    // SIGTERM as a shutdown, an exit code above 125 as a failure).
    let interruptible = matches!(
        cli.command,
        Command::Restore { .. } | Command::Verify { .. } | Command::Demo
    );
    let outcome = runtime.block_on(async {
        if interruptible {
            until_interrupted(run(cli.command)).await
        } else {
            run(cli.command).await
        }
    });
    let code = match &outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(exit_code(err))
        }
    };
    // An interrupted command may have left a read blocked in the blocking
    // pool (a hung NFS mount, a destination that stopped answering): what
    // matters is done, and the exit must not wait for it.
    let interrupted = outcome.as_ref().is_err_and(|e| {
        e.chain()
            .any(|c| matches!(c.downcast_ref::<Exit>(), Some(Exit::Interrupted(_))))
    });
    if interrupted {
        runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    }
    code
}

/// Bounded memory (invariant 7) under glibc, without paying for it in page
/// faults. glibc's default lets the mmap threshold climb to 32 MiB once a
/// large buffer is freed, after which pack buffers (16 MiB) come from
/// per-thread arenas that keep freed memory resident, and it allows 8 arenas
/// per core for the blocking threads that compress chunks (peak RSS 118 MB
/// on a 1 GiB SQLite snapshot, BENCHMARKS.md `sqlite`). So the threshold is
/// fixed, two arenas at most, but just above a page-sized chunk (128 KiB of
/// data plus glibc's header): at exactly 128 KiB every chunk was a fresh
/// mmap, zero-filled on first touch and unmapped with a TLB shootdown when
/// dropped, which cost a base backup of 2.2 GB 4.3 s of kernel time out of
/// 8 (BENCHMARKS.md `basebackup`). The trim threshold keeps an arena from
/// giving its top back, and faulting it in again, after every pack.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; this runs first in
    // main, before any other thread exists.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 132 * 1024);
        nix::libc::mallopt(nix::libc::M_TRIM_THRESHOLD, 2 * 1024 * 1024);
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 2);
    }
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PITR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let json = format == LogFormat::Json;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Runs `work` until SIGINT or SIGTERM, then drops it: the drop stops the
/// servers it started and removes what it half-wrote (their drop guards)
/// before pitr says so and exits.
async fn until_interrupted(work: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return work.await;
    };
    let signal = tokio::select! {
        r = work => return r,
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    Err(Exit::Interrupted(signal).into())
}

/// Config errors and usage errors are exit 2 wherever in the chain they sit.
fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.is::<pitr::config::ConfigError>() {
            return EXIT_USAGE;
        }
        if let Some(exit) = cause.downcast_ref::<Exit>() {
            return match exit {
                Exit::Usage(_) => EXIT_USAGE,
                Exit::NotPossible(_) => EXIT_NOT_POSSIBLE,
                Exit::Interrupted("SIGINT") => 128 + 2,
                Exit::Interrupted(_) => 128 + 15,
            };
        }
    }
    EXIT_FAILURE
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Keygen { output } => keygen(output.as_deref()),
        Command::Init(c) => init(&load(&c)?).await,
        Command::Catalog {
            command: CatalogCommand::Rebuild { config, from },
        } => catalog_rebuild(&load(&config)?, from.as_deref()).await,
        Command::Catalog {
            command: CatalogCommand::Cids { config, json },
        } => cids_cmd::catalog_cids(&load(&config)?, json).await,
        Command::Verify {
            config,
            restore,
            database,
        } => {
            let config = load(&config)?;
            if restore {
                return verify_cmd::verify_restore(
                    &config,
                    database.postgres.as_deref(),
                    database.sqlite.as_deref(),
                )
                .await;
            }
            if database.postgres.is_some() || database.sqlite.is_some() {
                return Err(Exit::Usage(
                    "--postgres / --sqlite select a database for `pitr verify --restore`; \
                     `pitr verify` alone checks every object of the repository"
                        .to_owned(),
                )
                .into());
            }
            verify(&config).await
        }
        Command::Check { config, offline } => check(&load(&config)?, offline).await,
        Command::Repair(c) => repair(&load(&c)?).await,
        Command::Retention {
            config,
            database,
            dry_run,
            json,
        } => retention(&load(&config)?, database, dry_run, json).await,
        Command::Run(c) => run_sidecar(&load(&c)?).await,
        Command::Backup {
            config,
            postgres,
            wait_wal,
            spread_checkpoint,
            max_rate,
        } => {
            let config = load(&config)?;
            let checkpoint = if spread_checkpoint {
                pitr::pg::Checkpoint::Spread
            } else {
                pitr::pg::Checkpoint::Fast
            };
            backup(
                &config,
                postgres.as_deref(),
                checkpoint,
                max_rate,
                std::time::Duration::from_secs(wait_wal),
            )
            .await
        }
        Command::List { config, json } => list(&load(&config)?, json).await,
        Command::Plan {
            config,
            target,
            database,
            timeline,
            json,
        } => {
            let config = load(&config)?;
            if let Some(name) = &database.sqlite {
                let entry = sqlite_cmd::sqlite_entry(&config, name)?;
                let target = parse_target(&target)?;
                let repo = open_repo(&config).await?;
                let plan = sqlite_cmd::make_plan(&repo, &entry.name, &target)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&plan)?);
                } else {
                    sqlite_cmd::print_plan(&plan);
                }
                return Ok(());
            }
            let target = parse_target(&target)?;
            let db = postgres_entry(&config, database.postgres.as_deref())?;
            let repo = open_repo(&config).await?;
            let plan = make_plan(&repo, &db.name, &target, timeline).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                print_plan(&plan);
            }
            Ok(())
        }
        Command::Restore {
            config: config_arg,
            target,
            database,
            target_path,
            timeline,
            force,
            no_recover,
            os_user,
            pg_bin,
            tablespace_dir,
            parallel,
            recovery_timeout,
        } => {
            let config = load(&config_arg)?;
            if let Some(name) = &database.sqlite {
                let entry = sqlite_cmd::sqlite_entry(&config, name)?;
                let target = parse_target(&target)?;
                let repo = restore_cmd::open_repo_for_restore(&config).await?;
                let plan = sqlite_cmd::make_plan(&repo, &entry.name, &target)?;
                return sqlite_cmd::restore(&repo, &plan, &target_path, force).await;
            }
            let target = parse_target(&target)?;
            let db = postgres_entry(&config, database.postgres.as_deref())?;
            let repo = restore_cmd::open_repo_for_restore(&config).await?;
            let plan = make_plan(&repo, &db.name, &target, timeline).await?;
            let opts = pitr::restore::RestoreOptions {
                target_dir: target_path,
                force,
                recover: !no_recover,
                os_user,
                pg_bin,
                bin_dirs: config.restore.bin_dirs.clone(),
                config_path: config_arg.config.clone(),
                parallel,
                tablespace_dir,
                recovery_timeout: std::time::Duration::from_secs(recovery_timeout),
                log_dir: config.repository.state_dir.join("restore-logs"),
                progress: None,
            };
            restore(&repo, &plan, &opts).await
        }
        Command::RestoreFetch { socket, file, path } => {
            // Answered in main before the runtime starts; kept for the match.
            let code = pitr::restore::fetch_client(&socket, &file, &path);
            std::process::exit(code.into());
        }
        Command::WalFetch {
            config,
            postgres,
            segment,
            path,
            prefetch_only,
        } => {
            // PostgreSQL takes exit 1 (and 2..=125) as "no such file" and
            // ends recovery there; a failure must abort recovery instead,
            // which it does for statuses above 125.
            let loaded = match load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    std::process::exit(EXIT_WAL_FETCH_FAILED.into());
                }
            };
            if prefetch_only {
                return prefetch_fill(&loaded, postgres.as_deref(), &segment).await;
            }
            let fetched = wal_fetch(
                &loaded,
                &config.config,
                postgres.as_deref(),
                &segment,
                &path,
            )
            .await;
            if let Err(e) = &fetched
                && exit_code(e) != EXIT_NOT_POSSIBLE
            {
                eprintln!("error: {e:#}");
                std::process::exit(EXIT_WAL_FETCH_FAILED.into());
            }
            fetched
        }
        Command::Demo => demo::run().await,
        Command::Export {
            config,
            to,
            database,
            from,
        } => {
            let config = load(&config)?;
            export_cmd::export(&config, &to, &database, from.as_deref()).await
        }
        Command::Probe { url, timeout } => {
            let code = export_cmd::probe(&url, std::time::Duration::from_secs(timeout)).await;
            std::process::exit(code.into());
        }
    }
}

fn load(c: &ConfigArg) -> anyhow::Result<Config> {
    Ok(Config::load(&c.config)?)
}

fn keygen(output: Option<&Path>) -> anyhow::Result<()> {
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public();
    let created = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ");
    // The same layout as age-keygen, so either tool reads the other's file.
    let text = format!(
        "# created: {created}\n# public key: {recipient}\n{}\n",
        age::secrecy::ExposeSecret::expose_secret(&identity.to_string())
    );
    match output {
        Some(path) => {
            pitr::crashsafe::write_new(path, text.as_bytes(), 0o600).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    anyhow::Error::new(Exit::Usage(format!(
                        "{} already exists; pitr keygen never overwrites an identity \
                         (backups encrypted to it would become unreadable). Choose another \
                         --output or move the old file away first",
                        path.display()
                    )))
                } else {
                    anyhow::Error::new(e)
                        .context(format!("cannot write the identity to {}", path.display()))
                }
            })?;
            println!("{recipient}");
            eprintln!(
                "Wrote the identity to {} (mode 0600). Put the recipient above into \
                 [repository] recipients; keep the identity away from the sidecar: \
                 only restore and verify need it.",
                path.display()
            );
        }
        None => {
            std::io::stdout()
                .write_all(text.as_bytes())
                .context("cannot write the identity to standard output")?;
            eprintln!("Public key: {recipient}");
        }
    }
    Ok(())
}

async fn init(config: &Config) -> anyhow::Result<()> {
    let fanout = pitr::ship::from_config(config);
    let opts = pitr::repo::RepoOptions::from_config(config)?;
    let report = Repository::init(&fanout, &opts).await?;
    let id = &report.descriptor.repository_id;
    if report.created {
        println!("Created repository {id} on {}.", report.seeded.join(", "));
    } else if report.seeded.is_empty() {
        println!("Repository {id} is already initialised on every destination.");
    } else {
        println!(
            "Repository {id} existed; prepared the new destinations: {}.",
            report.seeded.join(", ")
        );
    }
    let batched = pitr::ship::batched_from_config(config);
    if !batched.is_empty() {
        let repo = Repository::open(fanout, opts).await?;
        for b in batched {
            repo.open_batched(b.fanout).await?;
            println!(
                "Batched destination {} holds repository {id}; `pitr run` sends it a batch every {}.",
                b.name,
                humantime_secs(b.every)
            );
        }
    }
    println!(
        "The repository key is in {}. Keep a copy as a secret beside the config \
         ([repository] key_file) so a sidecar that loses its disk keeps deduplicating.",
        report.key_path.display()
    );
    Ok(())
}

/// `90s` as `1m30s`: intervals as a config would give them.
fn humantime_secs(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}

async fn catalog_rebuild(config: &Config, from: Option<&str>) -> anyhow::Result<()> {
    let mut fanout = pitr::ship::from_config(config);
    if let Some(name) = from {
        let Some(d) = fanout
            .destinations()
            .iter()
            .find(|d| d.name() == name)
            .cloned()
        else {
            if config
                .destinations
                .iter()
                .any(|d| d.name == name && d.is_batched())
            {
                return Err(Exit::Usage(format!(
                    "--from {name:?}: that destination is batched: it holds a repository of its own commits. \
                     To read it alone, write a config that names only it (without batch_interval) and use that"
                ))
                .into());
            }
            return Err(Exit::Usage(format!(
                "--from {name:?}: {} has no such [[destination]] (configured: {})",
                config.path.display(),
                config
                    .destinations
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .into());
        };
        fanout = pitr::ship::Fanout::new(vec![d]);
    }
    let opts = pitr::repo::RepoOptions::from_config(config)?;
    let repo = Repository::rebuild_catalog(fanout, opts).await?;
    {
        let catalog = repo.catalog();
        println!(
            "Rebuilt the catalog in {}: {} commits, {} packs, {} items.",
            config.repository.state_dir.display(),
            catalog.applied_commits()?.len(),
            catalog.packs()?.len(),
            catalog.items("")?.len()
        );
    }
    // What the catalog now holds against what content-addressed
    // destinations report (only those read from are asked).
    let problems = repo.check_content_ids().await?;
    if problems.is_empty() {
        return Ok(());
    }
    for p in &problems {
        println!("PROBLEM {} {}: {}", p.destination, p.object, p.error);
    }
    anyhow::bail!(
        "the catalog was rebuilt, but {} objects have another content id in their destination than the catalog recorded",
        problems.len()
    )
}

async fn verify(config: &Config) -> anyhow::Result<()> {
    let fanout = pitr::ship::from_config(config);
    let opts = pitr::repo::RepoOptions::from_config(config)?;
    let structural = opts.identities.is_empty();
    let repo = Repository::open(fanout, opts).await?;
    let report = repo.verify().await?;
    println!(
        "Checked {} pack objects ({} bytes), {} chunks decrypted and re-hashed.",
        report.packs_checked, report.bytes_read, report.chunks_checked
    );
    if structural {
        println!(
            "No identity_file is set: packs were checked against their names and sealed \
             indexes, but chunks were not decrypted. Set [repository] identity_file for a \
             full check."
        );
    }
    if report.problems.is_empty() {
        println!("No problems found.");
        return Ok(());
    }
    for p in &report.problems {
        println!("PROBLEM {} {}: {}", p.destination, p.object, p.error);
    }
    anyhow::bail!(
        "{} damaged or missing objects; restore them from a healthy destination",
        report.problems.len()
    )
}

/// `pitr retention`: the plan, then (unless `--dry-run`) its application.
async fn retention(
    config: &Config,
    database: DatabaseArg,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<()> {
    use pitr::retention::{RetentionError, RunOptions, Scope};
    let scope = match (database.postgres, database.sqlite) {
        (Some(p), None) => Scope::Postgres(p),
        (None, Some(s)) => Scope::Sqlite(s),
        (None, None) => Scope::All,
        (Some(_), Some(_)) => {
            return Err(Exit::Usage("give --postgres or --sqlite, not both".into()).into());
        }
    };
    let fanout = pitr::ship::from_config(config);
    let opts = pitr::repo::RepoOptions::from_config(config)?;
    let repo = Repository::open(fanout, opts).await?;
    let run = RunOptions {
        scope,
        ..RunOptions::from_config(config)
    };
    let plan = match pitr::retention::plan(&repo, config, &run).await {
        Err(e @ RetentionError::UnknownDatabase { .. }) => {
            return Err(Exit::Usage(e.to_string()).into());
        }
        r => r?,
    };
    if !json {
        print!("{}", plan.render());
    }
    let report = if dry_run {
        if !json {
            println!("Dry run: nothing was changed.");
        }
        None
    } else {
        let report = pitr::retention::apply(&repo, &plan).await?;
        if !json {
            println!(
                "Forgot {} backups ({} items); marked {} packs, unmarked {}, deleted {} ({} bytes freed); deleted {} empty catalog commits.",
                report.backups_forgotten,
                report.items_forgotten,
                report.gc.marked,
                report.gc.unmarked,
                report.gc.deleted,
                report.gc.bytes_freed,
                report.gc.commits_deleted
            );
            for f in &report.gc.failures {
                println!("FAILED {f}");
            }
        }
        Some(report)
    };
    if json {
        let v = serde_json::json!({ "plan": plan, "report": report });
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    if let Some(r) = &report
        && !r.gc.failures.is_empty()
    {
        anyhow::bail!(
            "{} deletions failed on a destination; they are retried by the next run (fix the destination, then run `pitr retention` again)",
            r.gc.failures.len()
        );
    }
    Ok(())
}

/// `pitr repair`: every object checked in every destination, good copies
/// written over missing or damaged ones.
async fn repair(config: &Config) -> anyhow::Result<()> {
    let fanout = pitr::ship::from_config(config);
    let opts = pitr::repo::RepoOptions::from_config(config)?;
    let repo = Repository::open(fanout, opts).await?;
    let report = repo.repair().await?;
    for r in &report.repaired {
        println!(
            "REPAIRED {} {}: was {}; copied from {}",
            r.destination, r.object, r.was, r.from
        );
    }
    for u in &report.unrepaired {
        println!("NOT REPAIRED {} {}: {}", u.destination, u.object, u.why);
    }
    println!(
        "Checked {} objects in {} destinations: {} repaired, {} still wrong.",
        report.objects,
        config.destinations.len(),
        report.repaired.len(),
        report.unrepaired.len()
    );
    if !report.unrepaired.is_empty() {
        anyhow::bail!(
            "{} objects could not be repaired (listed above); a destination that cannot be              read must be fixed first, an object no destination holds intact is lost there",
            report.unrepaired.len()
        );
    }
    Ok(())
}

async fn check(config: &Config, offline: bool) -> anyhow::Result<()> {
    println!("config {}: valid", config.path.display());
    let opts = pitr::repo::RepoOptions::from_config(config)?;
    if offline {
        opts.check_key_file()?;
        return check_offline(config);
    }
    // One retry: a check should answer quickly; a store that fails twice in
    // a row is worth reporting.
    let fanout = pitr::ship::from_config_with_retry(
        config,
        pitr::ship::RetryPolicy {
            max_retries: 1,
            ..Default::default()
        },
    );
    let mut failed = 0;
    failed += check_storacha_credentials(config);
    let quorum = fanout.status().quorum;
    for d in fanout.destinations() {
        match Repository::check_destination(d.as_ref(), &opts).await {
            Ok(descriptor) => println!(
                "destination {}: repository {}, format version {}, recipients match; takes every write \
                 (a write counts once {quorum} of the {} such destinations hold it)",
                d.name(),
                descriptor.repository_id,
                descriptor.version,
                fanout.destinations().len()
            ),
            Err(e) => {
                failed += 1;
                println!("destination {}: FAILED: {e}", d.name());
            }
        }
    }
    for b in pitr::ship::batched_from_config(config) {
        let every = humantime_secs(b.every);
        let Some(d) = b.fanout.destinations().first() else {
            continue;
        };
        let what = format!(
            "batched every {every}: not counted toward the acknowledgement quorum; \
             restores from it alone are exact up to its last batch"
        );
        match Repository::check_destination(d.as_ref(), &opts).await {
            Ok(descriptor) => println!(
                "destination {}: {what}; repository {}, format version {}, recipients match",
                b.name, descriptor.repository_id, descriptor.version
            ),
            Err(pitr::repo::RepoError::NotInitialized { .. }) => println!(
                "destination {}: {what}; it holds no repository yet (`pitr init` or the first batch of `pitr run` writes it)",
                b.name
            ),
            Err(e) => {
                failed += 1;
                println!("destination {}: {what}; FAILED: {e}", b.name);
            }
        }
    }
    for pg in &config.postgres {
        match check_postgres(pg).await {
            Ok((report, major)) => {
                println!("postgres {}: {report}", pg.name);
                failed += check_restore_binaries(config, &pg.name, major);
            }
            Err(e) => {
                failed += 1;
                println!("postgres {}: FAILED: {e:#}", pg.name);
            }
        }
    }
    for alert in &config.alerts {
        match pitr::alert::check_channel(alert).await {
            Ok(report) => println!("alert {} ({}): {report}", alert.name, alert.kind.name()),
            Err(e) => {
                failed += 1;
                println!("alert {}: FAILED: {e}", alert.name);
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} checks failed (see above)");
    }
    Ok(())
}

/// Each Storacha destination's space, the abilities its proof grants and
/// those it lacks (read from the proof itself, no network); the number of
/// destinations whose credentials fail.
fn check_storacha_credentials(config: &Config) -> usize {
    let mut failed = 0;
    for d in &config.destinations {
        if let pitr::config::DestinationKind::Storacha(c) = &d.kind {
            match pitr::ship::StorachaDestination::new(&d.name, c).credentials_report() {
                Ok(r) => println!("destination {}: {r}", d.name),
                Err(e) => {
                    failed += 1;
                    println!("destination {}: FAILED: {e}", d.name);
                }
            }
        }
    }
    failed
}

/// `pitr check --offline`: what can be checked without a network. The
/// config has loaded (keys and identity read); the settings the clients
/// would refuse only when used are tried here.
fn check_offline(config: &Config) -> anyhow::Result<()> {
    let mut failed = check_storacha_credentials(config);
    for d in &config.destinations {
        let verdict = match &d.kind {
            pitr::config::DestinationKind::S3(s3) => pitr::ship::S3Destination::validate(s3),
            _ => Ok(()),
        };
        match verdict {
            Ok(()) => match d.batch_interval {
                Some(every) => println!(
                    "destination {}: settings valid (not contacted); batched every {}: not counted toward the acknowledgement quorum",
                    d.name,
                    humantime_secs(every)
                ),
                None => println!("destination {}: settings valid (not contacted)", d.name),
            },
            Err(e) => {
                failed += 1;
                println!("destination {}: FAILED: {e}", d.name);
            }
        }
    }
    for pg in &config.postgres {
        match pitr::wal::ConnInfo::of_entry(pg) {
            Ok(_) => println!("postgres {}: conninfo valid (not contacted)", pg.name),
            Err(e) => {
                failed += 1;
                println!("postgres {}: FAILED: {e}", pg.name);
            }
        }
    }
    for s in &config.sqlite {
        println!("sqlite {}: {} (not opened)", s.name, s.path.display());
    }
    for alert in &config.alerts {
        println!(
            "alert {} ({}): settings valid (not contacted)",
            alert.name,
            alert.kind.name()
        );
    }
    if failed > 0 {
        anyhow::bail!("{failed} checks failed (see above)");
    }
    Ok(())
}

/// Connects the way the streamer does and reads what streaming needs: the
/// system, `wal_level`, `max_wal_senders`, the slot.
/// Whether this host can restore (and test-restore) a backup of `major`:
/// the binaries `pitr restore` and the test restores would use, or where
/// they were looked for. Missing ones fail the check only when test
/// restores are scheduled here (they would fail); otherwise a restore may
/// well run on another host, and this is a warning. Returns the failures.
fn check_restore_binaries(config: &Config, name: &str, major: u32) -> usize {
    let tools = pitr::verify::TEST_RESTORE_TOOLS;
    match pitr::pg::find(major, &config.restore.bin_dirs, tools) {
        Ok(bin) => {
            println!(
                "postgres {name}: restores and test restores use PostgreSQL {} in {}",
                bin.version(),
                bin.dir().display()
            );
            0
        }
        Err(e) if config.verify.schedule.is_some() => {
            println!(
                "postgres {name}: FAILED: test restores are scheduled ([verify] schedule) but cannot run on this host: {e}"
            );
            1
        }
        Err(e) => {
            println!(
                "postgres {name}: WARNING: a restore of it cannot run on this host: {e} \
                 (restore on a host that has them, or name their directory in [restore] bin_dirs)"
            );
            0
        }
    }
}

async fn check_postgres(pg: &pitr::config::PostgresConfig) -> anyhow::Result<(String, u32)> {
    let info = pitr::wal::ConnInfo::of_entry(pg)?;
    let mut client = pitr::wal::ReplicationClient::connect(&info).await?;
    let system = client.identify_system().await?;
    let wal_level = client.check_wal_level().await?;
    let senders = client.show("max_wal_senders").await?;
    let incremental =
        pitr::basebackup::incremental::describe(&mut client, pg.incremental_max_chain).await?;
    let major = client.server_major();
    let slot = if major < 15 {
        format!(
            "slot {:?} not shown (PostgreSQL {major} has no READ_REPLICATION_SLOT; see \
             pg_replication_slots)",
            pg.slot
        )
    } else {
        match client.read_replication_slot(&pg.slot).await? {
            Some(s) => match s.restart_lsn {
                Some(lsn) => format!("slot {:?} holds WAL from {lsn}", pg.slot),
                None => format!("slot {:?} exists but holds no WAL yet", pg.slot),
            },
            None => format!(
                "slot {:?} does not exist yet (pitr run creates it)",
                pg.slot
            ),
        }
    };
    let _ = client.close().await;
    Ok((
        format!(
            "system {} on timeline {} at {}, PostgreSQL {major}, wal_level={wal_level}, \
         max_wal_senders={senders}, {slot}; {incremental}",
            system.system_id, system.timeline, system.xlogpos
        ),
        major,
    ))
}

/// The `[[postgres]]` entry a command is about: the named one, or the only one.
fn postgres_entry<'a>(
    config: &'a Config,
    name: Option<&str>,
) -> anyhow::Result<&'a pitr::config::PostgresConfig> {
    let names = || {
        config
            .postgres
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match name {
        Some(n) => config.postgres.iter().find(|p| p.name == n).ok_or_else(|| {
            Exit::Usage(format!(
                "{}: no [[postgres]] entry is named {n:?} (configured: {})",
                config.path.display(),
                names()
            ))
            .into()
        }),
        None => match config.postgres.as_slice() {
            [only] => Ok(only),
            [] => Err(Exit::Usage(format!(
                "{} has no [[postgres]] entry",
                config.path.display()
            ))
            .into()),
            _ => Err(Exit::Usage(format!(
                "{} has several [[postgres]] entries ({}): say which with --postgres NAME",
                config.path.display(),
                names()
            ))
            .into()),
        },
    }
}

/// `pitr backup`: one base backup now, then waits (bounded) until its WAL
/// is stored and marks it restorable. WAL is streamed by `pitr run`, which
/// holds the replication slot; this command does not stream itself.
async fn backup(
    config: &Config,
    postgres: Option<&str>,
    checkpoint: pitr::pg::Checkpoint,
    max_rate_kb: Option<u32>,
    wait_wal: std::time::Duration,
) -> anyhow::Result<()> {
    use std::io::IsTerminal;

    let db = postgres_entry(config, postgres)?;
    let conninfo = pitr::wal::ConnInfo::of_entry(db).map_err(|e| {
        Exit::Usage(format!(
            "{}: [[postgres]] {:?} conninfo: {e}",
            config.path.display(),
            db.name
        ))
    })?;
    let fanout = pitr::ship::from_config(config);
    let opts = pitr::repo::RepoOptions::from_config(config)?;
    let repo = Repository::open(fanout, opts).await?;
    // A long backup must see marks of a retention run elsewhere, as the
    // sidecar's writers do (docs/RETENTION.md).
    repo.refresh_catalog_every(config.retention.gc_grace / 2);
    let refresh = {
        let repo = repo.clone();
        tokio::spawn(async move { repo.keep_catalog_fresh(std::future::pending()).await })
    };
    let options = pitr::basebackup::BackupOptions {
        database: db.name.clone(),
        conninfo,
        label: format!("pitr backup of {}", db.name),
        checkpoint,
        // The flag wins over the entry's `max_rate`.
        max_rate_kb: max_rate_kb.or(db.max_rate_kb),
        incremental_max_chain: db.incremental_max_chain,
        manifest_checksums: db.manifest_checksums,
    };
    let (tx, mut rx) = tokio::sync::watch::channel(pitr::basebackup::BackupProgress::default());
    // A bar (bytes, rate, ETA) only for a person watching a terminal.
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {bytes}/{total_bytes} {bar:30} {binary_bytes_per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let reporter = {
        let bar = bar.clone();
        tokio::spawn(async move {
            let Some(bar) = bar else { return };
            while rx.changed().await.is_ok() {
                let p = rx.borrow_and_update().clone();
                if let Some(total) = p.total {
                    bar.set_length(total.max(p.done));
                }
                bar.set_position(p.done);
                bar.set_message(format!("{} files", p.files));
            }
        })
    };
    let taken = pitr::basebackup::take(&repo, &options, &tx).await;
    refresh.abort();
    drop(tx);
    let _ = reporter.await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let record = taken?;
    println!(
        "Base backup {} of [[postgres]] {:?}: {} files, {} from server version {}, WAL {} to {} \
         on timeline {}; {} of new data stored (the rest was already in the repository).",
        record.id,
        db.name,
        record.files,
        mib(record.bytes),
        record.server_version,
        record.start_lsn,
        record.end_lsn,
        record.end_timeline,
        mib(record.stored_bytes)
    );
    if let Some(parent) = &record.parent {
        println!("It is incremental on {parent}: a restore combines it with that backup's chain.");
    }
    println!(
        "Waiting up to {} s for the WAL up to {} to be stored by `pitr run`...",
        wait_wal.as_secs(),
        record.end_lsn
    );
    pitr::basebackup::wait_restorable(
        &repo,
        &db.name,
        &record.id,
        wait_wal,
        std::time::Duration::from_secs(1),
    )
    .await?;
    println!(
        "Base backup {} is restorable: the WAL from {} to {} is stored.",
        record.id, record.start_lsn, record.end_lsn
    );
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// PostgreSQL's `restore_command`: exit 0 with the file in place, exit 1
/// when the repository does not hold it (recovery then knows the WAL ends
/// there), anything else when something is wrong.
async fn wal_fetch(
    config: &Config,
    config_path: &Path,
    postgres: Option<&str>,
    file: &str,
    path: &Path,
) -> anyhow::Result<()> {
    let db = postgres_entry(config, postgres)?;
    let wal_name = file.len() == 24 && file.bytes().all(|b| b.is_ascii_hexdigit());
    let history = file.len() == 16
        && file.ends_with(".history")
        && file[..8].bytes().all(|b| b.is_ascii_hexdigit());
    if !wal_name && !history {
        // Backup history files and anything else: pitr stores none.
        return Err(Exit::NotPossible(format!(
            "{file} is not a WAL segment or timeline history file; pitr stores none such"
        ))
        .into());
    }
    let prefetch = pitr::wal::Prefetch::new(&config.repository.state_dir, &db.name);
    if wal_name
        && prefetch
            .take(file, path)
            .with_context(|| format!("cannot move the prefetched {file} to {}", path.display()))?
    {
        spawn_prefetcher(config_path, &db.name, file);
        return Ok(());
    }
    let fanout = pitr::ship::from_config(config);
    let opts = pitr::repo::RepoOptions::from_config(config)?;
    let repo = Repository::open(fanout, opts).await?;
    let store = pitr::wal::WalStore::new(repo, &db.name);
    match store.fetch_to(file, path).await? {
        Some(found) if found.partial => {
            let end = found.attrs.map(|a| a.end).unwrap_or_default();
            eprintln!(
                "pitr wal-fetch: served {file} from a partial segment ending at {end} \
                 (the rest reads as end of WAL)"
            );
            Ok(())
        }
        Some(_) => {
            if wal_name {
                spawn_prefetcher(config_path, &db.name, file);
            }
            Ok(())
        }
        None => Err(Exit::NotPossible(format!(
            "{file} is not in the repository of [[postgres]] {:?}",
            db.name
        ))
        .into()),
    }
}

/// How many segments a prefetcher fetches ahead of replay.
const PREFETCH_SEGMENTS: usize = 4;

/// Starts a detached `pitr wal-fetch --prefetch-only` for the segments after
/// `file`. PostgreSQL waits only for this process, not for the prefetcher; a
/// prefetcher that cannot start costs speed, never correctness.
fn spawn_prefetcher(config_path: &Path, database: &str, file: &str) {
    use std::os::unix::process::CommandExt;

    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let spawned = std::process::Command::new(exe)
        .arg("wal-fetch")
        .arg("-c")
        .arg(config_path)
        .args(["--postgres", database, "--prefetch-only", file, "-"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        // Its own process group: a signal to the restore_command's group
        // does not reach it, and it outlives this process.
        .process_group(0)
        .spawn();
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the WAL prefetcher");
    }
}

async fn prefetch_fill(config: &Config, postgres: Option<&str>, file: &str) -> anyhow::Result<()> {
    let db = postgres_entry(config, postgres)?;
    let fanout = pitr::ship::from_config(config);
    let opts = pitr::repo::RepoOptions::from_config(config)?;
    let repo = Repository::open(fanout, opts).await?;
    let store = pitr::wal::WalStore::new(repo, &db.name);
    pitr::wal::Prefetch::new(&config.repository.state_dir, &db.name)
        .fill(&store, file, PREFETCH_SEGMENTS)
        .await?;
    Ok(())
}

/// How `pitr run` takes the scheduled backups of `pg`.
/// `pitr run`: the sidecar (see `pitr::sidecar`) until SIGTERM or SIGINT,
/// which stop it cleanly within a bounded time and exit 0.
async fn run_sidecar(config: &Config) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    };
    pitr::sidecar::run(config.clone(), None, shutdown)
        .await
        .map_err(|e| {
            if e.is_usage() {
                Exit::Usage(e.to_string()).into()
            } else {
                anyhow::Error::new(e)
            }
        })
}
