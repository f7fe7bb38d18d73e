//! The commands behind `main`. [`args`] declares the command line (clap),
//! [`run`] sends a parsed command to the module that carries it out, and
//! [`exit`] maps how it ended to an exit code. One module per command group:
//!
//! - `setup`: `keygen`, `init`, `catalog rebuild`
//! - `check`: `check`, online and `--offline`
//! - `backup`: `backup`
//! - `sidecar`: `run`
//! - `wal_fetch`: `wal-fetch` and its prefetcher
//! - `restore`: `list`, `plan` and `restore`
//! - `sqlite`: the SQLite side of `list`, `plan` and `restore`
//! - `snapshot`: snapshot sources in `backup`, `list`, `plan` and `restore`
//! - `verify`: `verify`, with and without `--restore`
//! - `maintenance`: `repair`, `retention`
//! - `cids`: `catalog cids`
//! - `fleet`: `fleet migrate`, `list`, `show`, `restore-command`, `receive`
//! - `export`: `export` and `probe`
//! - `demo`: `demo`
//!
//! Helpers more than one command uses (the config, opening the repository,
//! the `[[postgres]]` entry, sizes and intervals as text) are here.

pub(crate) mod args;
mod backup;
mod check;
mod cids;
mod demo;
pub(crate) mod exit;
mod export;
mod fleet;
mod maintenance;
mod restore;
mod setup;
mod sidecar;
mod snapshot;
mod sqlite;
mod verify;
mod wal_fetch;

use pitr::config::Config;
use pitr::repo::Repository;

use args::{CatalogCommand, Command, ConfigArg, PointArg};
use exit::{EXIT_NOT_POSSIBLE, EXIT_WAL_FETCH_FAILED, Exit, exit_code};

/// Runs one parsed command to its end.
pub(crate) async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Keygen { output } => setup::keygen(output.as_deref()),
        Command::Init(c) => setup::init(&load(&c)?).await,
        Command::Catalog {
            command: CatalogCommand::Rebuild { config, from },
        } => setup::catalog_rebuild(&load(&config)?, from.as_deref()).await,
        Command::Catalog {
            command: CatalogCommand::Cids { config, json },
        } => cids::catalog_cids(&load(&config)?, json).await,
        Command::Verify {
            config,
            restore,
            database,
            snapshot,
        } => {
            let config = load(&config)?;
            if restore {
                return verify::verify_restore(&config, database, snapshot).await;
            }
            if database.postgres.is_some() || database.sqlite.is_some() || snapshot.is_some() {
                return Err(Exit::Usage(
                    "--postgres / --sqlite / --snapshot select what `pitr verify --restore` \
                     restores; `pitr verify` alone checks every object of the repository"
                        .to_owned(),
                )
                .into());
            }
            verify::verify(&config).await
        }
        Command::Check { config, offline } => check::check(&load(&config)?, offline).await,
        Command::Repair(c) => maintenance::repair(&load(&c)?).await,
        Command::Retention {
            config,
            database,
            snapshot,
            dry_run,
            json,
        } => maintenance::retention(&load(&config)?, database, snapshot, dry_run, json).await,
        Command::Run(c) => sidecar::run_sidecar(&load(&c)?).await,
        Command::Backup {
            config,
            postgres,
            snapshot,
            wait_wal,
            spread_checkpoint,
            max_rate,
        } => {
            let config = load(&config)?;
            if let Some(name) = snapshot {
                return snapshot::backup(&config, &name).await;
            }
            let checkpoint = if spread_checkpoint {
                pitr::pg::Checkpoint::Spread
            } else {
                pitr::pg::Checkpoint::Fast
            };
            backup::backup(
                &config,
                postgres.as_deref(),
                checkpoint,
                max_rate,
                std::time::Duration::from_secs(wait_wal),
            )
            .await
        }
        Command::List { config, json } => restore::list(&load(&config)?, json).await,
        Command::Plan { point, json } => {
            if let Some(name) = &point.snapshot {
                return snapshot::plan(&load(&point.config)?, name, &point.target, json).await;
            }
            let (_, _, planned) = plan_point(&point, false).await?;
            match (planned, json) {
                (Planned::Sqlite(p), true) => println!("{}", serde_json::to_string_pretty(&p)?),
                (Planned::Postgres(p), true) => println!("{}", serde_json::to_string_pretty(&p)?),
                (Planned::Sqlite(p), false) => sqlite::print_plan(&p),
                (Planned::Postgres(p), false) => restore::print_plan(&p),
            }
            Ok(())
        }
        Command::Restore {
            point,
            target_path,
            output,
            format,
            environment,
            force,
            no_recover,
            os_user,
            pg_bin,
            tablespace_dir,
            parallel,
            recovery_timeout,
        } => {
            if let Some(name) = &point.snapshot {
                let config = load(&point.config)?;
                let form = snapshot::Form {
                    format: format.as_deref(),
                    environment: environment.as_deref(),
                };
                return snapshot::restore(
                    &config,
                    name,
                    &point.target,
                    output.as_deref(),
                    force,
                    form,
                )
                .await;
            }
            let Some(target_path) = target_path else {
                return Err(Exit::Usage(
                    "--target PATH is required: an empty directory (PostgreSQL) or a file path \
                     (SQLite)"
                        .to_owned(),
                )
                .into());
            };
            let (config, repo, planned) = plan_point(&point, true).await?;
            let plan = match planned {
                Planned::Sqlite(plan) => {
                    return sqlite::restore(&repo, &plan, &target_path, force).await;
                }
                Planned::Postgres(plan) => plan,
            };
            let opts = pitr::restore::RestoreOptions {
                target_dir: target_path,
                force,
                recover: !no_recover,
                os_user,
                pg_bin,
                bin_dirs: config.restore.bin_dirs.clone(),
                config_path: point.config.config.clone(),
                parallel,
                tablespace_dir,
                recovery_timeout: std::time::Duration::from_secs(recovery_timeout),
                log_dir: config.repository.state_dir.join("restore-logs"),
                progress: None,
            };
            restore::restore(&repo, &plan, &opts).await
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
                    eprintln!("error: {}", pitr::sidecar::with_causes(e.as_ref()));
                    std::process::exit(EXIT_WAL_FETCH_FAILED.into());
                }
            };
            if prefetch_only {
                return wal_fetch::prefetch_fill(&loaded, postgres.as_deref(), &segment).await;
            }
            let fetched = wal_fetch::wal_fetch(
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
                eprintln!("error: {}", pitr::sidecar::with_causes(e.as_ref()));
                std::process::exit(EXIT_WAL_FETCH_FAILED.into());
            }
            fetched
        }
        Command::Fleet { command } => fleet::run(command).await,
        Command::Demo => demo::run().await,
        Command::Export {
            config,
            to,
            database,
            snapshot,
            from,
        } => {
            let config = load(&config)?;
            export::export(
                &config,
                &to,
                &database,
                snapshot.as_deref(),
                from.as_deref(),
            )
            .await
        }
        Command::Probe { url, timeout } => {
            let code = export::probe(&url, std::time::Duration::from_secs(timeout)).await;
            std::process::exit(code.into());
        }
    }
}

/// The config a command names, loaded and validated.
fn load(c: &ConfigArg) -> anyhow::Result<Config> {
    Ok(Config::load(&c.config)?)
}

/// Whether [`open_repo`] also applies the commits the store holds that the
/// local catalog lacks ([`Repository::sync_catalog`]), or leaves the catalog
/// as opening the repository left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CatalogSync {
    /// Every writer's latest commits applied: what reads (list, plan,
    /// restore, export, catalog cids, test restores) do.
    Latest,
    /// As [`Repository::open`] leaves it.
    AsOpened,
}

/// Opens the repository the config describes. The commands that need the
/// fan-out or the options themselves (`init`, `catalog rebuild`, `check`,
/// `verify`, `demo`) open it their own way.
async fn open_repo(config: &Config, sync: CatalogSync) -> anyhow::Result<Repository> {
    let fanout = pitr::wiring::fanout(config);
    let opts = pitr::wiring::repo_options(config)?;
    let repo = Repository::open(fanout, opts).await?;
    if sync == CatalogSync::Latest {
        repo.sync_catalog().await?;
    }
    Ok(repo)
}

/// A restore plan of either kind of database.
enum Planned {
    /// Of a `[[sqlite]]` entry.
    Sqlite(pitr::restore::sqlite::SqlitePlan),
    /// Of a `[[postgres]]` entry.
    Postgres(pitr::restore::Plan),
}

/// What `pitr plan` and `pitr restore` share: the config loaded, the
/// database and the target checked (usage errors, before any destination
/// is asked), the repository opened (as a restore opens it, with
/// `restoring`) and the plan made.
async fn plan_point(
    point: &PointArg,
    restoring: bool,
) -> anyhow::Result<(Config, Repository, Planned)> {
    let config = load(&point.config)?;
    // The entry's name: `Ok` for SQLite, `Err` for PostgreSQL.
    let sqlite_or_postgres = match &point.database.sqlite {
        Some(name) => Ok(sqlite::sqlite_entry(&config, name)?.name.clone()),
        None => Err(postgres_entry(&config, point.database.postgres.as_deref())?
            .name
            .clone()),
    };
    let target = restore::parse_target(&point.target)?;
    let repo = if restoring {
        restore::open_repo_for_restore(&config).await?
    } else {
        open_repo(&config, CatalogSync::Latest).await?
    };
    let planned = match sqlite_or_postgres {
        Ok(name) => Planned::Sqlite(sqlite::make_plan(&repo, &name, &target)?),
        Err(name) => {
            Planned::Postgres(restore::make_plan(&repo, &name, &target, point.timeline).await?)
        }
    };
    Ok((config, repo, planned))
}

/// Entry names for "(configured: …)" in an error: `a, b`, or `none`.
fn configured<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// The `[[postgres]]` entry a command is about: the named one, or the only one.
fn postgres_entry<'a>(
    config: &'a Config,
    name: Option<&str>,
) -> anyhow::Result<&'a pitr::config::PostgresConfig> {
    let names = || configured(config.postgres.iter().map(|p| p.name.as_str()));
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

/// A size in MiB, one decimal.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
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
