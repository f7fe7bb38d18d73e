//! Every clap definition of the command line. Their doc comments are the
//! `--help` text, and flag names, defaults and wording are interface: the
//! runbook, the deploy files and operators' scripts use them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Keeps PostgreSQL and SQLite databases recoverable to any second.
/// `pitr --version`: the crate version and the git commit it was built
/// from (`build.rs`; `unknown` when built outside a git checkout without
/// `GIT_COMMIT` set). Not named PITR_*: cargo
/// passes it to test processes, and the config refuses unknown PITR_ variables.
pub(crate) const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BUILD_GIT_COMMIT"),
    ")"
);

#[derive(Parser, Debug)]
#[command(name = "pitr", version = VERSION, about, long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
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
    pub(crate) log_format: LogFormat,
}

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LogFormat {
    /// Text for people.
    Human,
    /// One JSON object per line.
    Json,
}

/// The config file option every command but `keygen` takes.
#[derive(Args, Debug)]
pub(crate) struct ConfigArg {
    /// The config file (TOML). Every key can be overridden with
    /// PITR_<SECTION>_<KEY> environment variables.
    #[arg(short = 'c', long = "config", env = "PITR_CONFIG", value_name = "FILE")]
    pub(crate) config: PathBuf,
}

/// Which database a command is about.
#[derive(Args, Debug)]
#[group(multiple = false)]
pub(crate) struct DatabaseArg {
    /// A `[[postgres]]` entry by name.
    #[arg(long, value_name = "NAME")]
    pub(crate) postgres: Option<String>,
    /// A `[[sqlite]]` entry by name.
    #[arg(long, value_name = "NAME")]
    pub(crate) sqlite: Option<String>,
}

/// What a restore aims at.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub(crate) struct TargetArg {
    /// A point in time: RFC 3339 (2026-11-23T03:00:00Z) or PostgreSQL's
    /// `2026-11-23 03:00:00+00`. A time without a zone is refused.
    #[arg(long, value_name = "TIME")]
    pub(crate) at: Option<String>,
    /// The newest point the repository holds.
    #[arg(long)]
    pub(crate) latest: bool,
    /// A WAL position (PostgreSQL only), e.g. 0/3000060.
    #[arg(long, value_name = "LSN")]
    pub(crate) lsn: Option<String>,
    /// A restore point made with pg_create_restore_point (PostgreSQL only).
    #[arg(long, value_name = "NAME")]
    pub(crate) name: Option<String>,
    /// A snapshot by its id, as `pitr list` shows it (--snapshot only).
    #[arg(long, value_name = "ID", requires = "snapshot")]
    pub(crate) id: Option<String>,
}

/// Which database a plan or restore is about, and the point it aims at.
#[derive(Args, Debug)]
pub(crate) struct PointArg {
    #[command(flatten)]
    pub(crate) config: ConfigArg,
    #[command(flatten)]
    pub(crate) target: TargetArg,
    #[command(flatten)]
    pub(crate) database: DatabaseArg,
    /// A snapshot source (`[[command]]`, `[[infisical]]`) by name: the
    /// newest snapshot taken at or before --at (or --latest, or --id).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["postgres", "sqlite", "lsn", "name", "timeline"])]
    pub(crate) snapshot: Option<String>,
    /// Follow this timeline (default: the one current at the target).
    #[arg(long, value_name = "N")]
    pub(crate) timeline: Option<u32>,
}

/// The commands (`pitr <COMMAND>`).
#[derive(Subcommand, Debug)]
pub(crate) enum Command {
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
        /// Take a snapshot of this source (`[[command]]`, `[[infisical]]`)
        /// now instead of a base backup.
        #[arg(long, value_name = "NAME", conflicts_with = "postgres")]
        snapshot: Option<String>,
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
    /// Base backups, WAL ranges per timeline, SQLite points, snapshots, the
    /// restore window.
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
        point: PointArg,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Restore a database to a point in time, or write a snapshot out.
    Restore {
        #[command(flatten)]
        point: PointArg,
        /// Where to restore: an empty directory (PostgreSQL) or a file path
        /// (SQLite). Required but for --snapshot.
        #[arg(long = "target", value_name = "PATH", conflicts_with = "snapshot")]
        target_path: Option<PathBuf>,
        /// With --snapshot: the file to write (mode 0600; refused if it
        /// exists unless --force). Without it, standard output.
        #[arg(long, value_name = "FILE", requires = "snapshot")]
        output: Option<PathBuf>,
        /// With an `[[infisical]]` --snapshot: json (as stored, every
        /// field), dotenv or yaml (one environment's keys and values).
        #[arg(long, value_name = "FORMAT", requires = "snapshot",
              value_parser = clap::builder::PossibleValuesParser::new(
                  pitr::snapshot::infisical::render::Format::NAMES))]
        format: Option<String>,
        /// With an `[[infisical]]` --snapshot: only this environment.
        #[arg(long, value_name = "ENV", requires = "snapshot")]
        environment: Option<String>,
        /// Empty a non-empty target directory first; with --snapshot,
        /// replace an existing --output file.
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
        /// With --restore: only this snapshot source (`[[command]]`,
        /// `[[infisical]]`) by name.
        #[arg(long, value_name = "NAME", conflicts_with_all = ["postgres", "sqlite"])]
        snapshot: Option<String>,
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
        /// Only this snapshot source (`[[command]]`, `[[infisical]]`) by
        /// name.
        #[arg(long, value_name = "NAME", conflicts_with_all = ["postgres", "sqlite"])]
        snapshot: Option<String>,
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
    /// The fleet catalog (docs/FLEET.md): what every sidecar publishes.
    /// Needs only `[fleet] url` and read rights.
    Fleet {
        #[command(subcommand)]
        command: FleetCommand,
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
        /// A snapshot source (`[[command]]`, `[[infisical]]`) by name: its
        /// newest snapshot.
        #[arg(long, value_name = "NAME", conflicts_with_all = ["postgres", "sqlite"])]
        snapshot: Option<String>,
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

/// The commands of `pitr catalog`.
#[derive(Subcommand, Debug)]
pub(crate) enum CatalogCommand {
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

/// The commands of `pitr fleet`.
#[derive(Subcommand, Debug)]
pub(crate) enum FleetCommand {
    /// Create or upgrade the `pitr_fleet` schema (needs DDL rights, and
    /// CREATEROLE the first time).
    Migrate(ConfigArg),
    /// Serve the HTTP transport: apply the batches `kind = "http"`
    /// sidecars POST, each as the database role its token maps to
    /// (`[fleet] receive_listen`, `receive_tokens_file`).
    Receive(ConfigArg),
    /// Every database of the fleet: instance, kind, newest restorable
    /// point, restore windows, last test restore, failing checks.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Only instances with this label (repeatable: all must match).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Only databases with no restorable point newer than this (24h, 90m, 7d).
        #[arg(long, value_name = "DURATION")]
        stale: Option<String>,
        /// Only databases whose last test restore failed or whose instance
        /// has a failing health check.
        #[arg(long)]
        failing: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// One database: its backups, windows, destinations and CIDs.
    Show {
        #[command(flatten)]
        config: ConfigArg,
        /// NAME, or INSTANCE/NAME when several instances have one of that name.
        database: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print the `pitr restore` invocation (and the config it needs) that
    /// restores DATABASE to TIME from its instance's repository.
    RestoreCommand {
        #[command(flatten)]
        config: ConfigArg,
        /// NAME, or INSTANCE/NAME.
        database: String,
        /// The time: RFC 3339 or PostgreSQL's form, with a zone.
        #[arg(long, value_name = "TIME")]
        at: String,
    },
}
