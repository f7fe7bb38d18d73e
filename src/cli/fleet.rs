//! `pitr fleet migrate`, `list`, `show` and `restore-command`: the fleet
//! catalog (docs/FLEET.md), read with nothing but `[fleet] url` and read
//! rights; `pitr fleet receive`, the HTTP transport's server.

use std::collections::BTreeMap;

use pitr::config::FleetConfig;
use pitr::fleet::read::{self, Filter, FleetDatabase};
use pitr::fleet::{FleetError, schema};

use super::args::{ConfigArg, FleetCommand};
use super::exit::Exit;

/// Runs one `pitr fleet` command.
pub(super) async fn run(command: FleetCommand) -> anyhow::Result<()> {
    match command {
        FleetCommand::Migrate(c) => {
            let mut client = connect(&c).await?;
            let before = schema::version(&client).await?;
            let after = schema::migrate(&mut client).await?;
            println!("fleet schema: version {before} → {after}");
            Ok(())
        }
        FleetCommand::Receive(c) => {
            let fleet = FleetConfig::load(&c.config)?;
            let scheme = if fleet.receive.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let (addr, served) =
                pitr::fleet::receive::serve(fleet, super::sidecar::stop_signal()?).await?;
            tracing::info!(%addr, scheme, "the fleet receiver listens");
            eprintln!("pitr fleet receive: listening on {scheme}://{addr}");
            served.await?;
            Ok(())
        }
        FleetCommand::List {
            config,
            labels,
            stale,
            failing,
            json,
        } => {
            let filter = Filter {
                labels: parse_labels(&labels)?,
                stale: stale.as_deref().map(parse_stale).transpose()?,
                failing,
            };
            let client = connect(&config).await?;
            let dbs = read::list(&client, &filter).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&dbs)?);
            } else {
                print_list(&dbs);
            }
            Ok(())
        }
        FleetCommand::Show {
            config,
            database,
            json,
        } => {
            let client = connect(&config).await?;
            let detail = read::show(&client, &database).await.map_err(not_found)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&detail)?);
                return Ok(());
            }
            print_list(std::slice::from_ref(&detail.database));
            println!("  backups:");
            for b in &detail.backups {
                println!(
                    "    {}  finished {}  {}{}",
                    b.id,
                    shown(b.finished),
                    if b.restorable {
                        "restorable"
                    } else {
                        "NOT restorable"
                    },
                    b.incremental_parent
                        .as_ref()
                        .map(|p| format!("  incremental on {p}"))
                        .unwrap_or_default()
                );
            }
            println!("  destinations:");
            for d in &detail.destinations {
                println!("    {} ({}): {} CIDs", d.name, d.kind, d.cid_count);
                for (object, cid) in &d.cids {
                    println!("      {object}  {cid}");
                }
            }
            Ok(())
        }
        FleetCommand::RestoreCommand {
            config,
            database,
            at,
        } => {
            let at =
                pitr::restore::parse_time(&at).map_err(|e| Exit::Usage(format!("--at: {e}")))?;
            let client = connect(&config).await?;
            let detail = read::show(&client, &database).await.map_err(not_found)?;
            let db = &detail.database;
            let covered = db.windows.iter().any(
                |w| matches!((w.earliest, w.latest), (Some(e), Some(l)) if e <= at && at <= l),
            );
            if !covered {
                return Err(Exit::NotPossible(format!(
                    "{}/{} has no restore window that covers {}; its windows: {}",
                    db.instance,
                    db.name,
                    pitr::restore::pg_time(at),
                    windows_text(db)
                ))
                .into());
            }
            print!("{}", restore_command(&detail, at));
            Ok(())
        }
    }
}

async fn connect(c: &ConfigArg) -> anyhow::Result<tokio_postgres::Client> {
    let fleet = FleetConfig::load(&c.config)?;
    Ok(pitr::fleet::connect(&fleet).await?)
}

/// A database that is not there is exit 1 ("not possible").
fn not_found(e: FleetError) -> anyhow::Error {
    match e {
        FleetError::NotFound(m) => Exit::NotPossible(m).into(),
        other => other.into(),
    }
}

fn parse_labels(labels: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    labels
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(Exit::Usage(format!(
                "--label {l:?} is not KEY=VALUE; write e.g. --label service=api"
            ))
            .into()),
        })
        .collect()
}

fn parse_stale(s: &str) -> anyhow::Result<std::time::Duration> {
    pitr::config::parse_duration(s).ok_or_else(|| {
        Exit::Usage(format!(
            "--stale {s:?} is not a duration; write e.g. --stale 24h, 90m or 7d"
        ))
        .into()
    })
}

fn shown(t: Option<jiff::Timestamp>) -> String {
    t.map_or_else(|| "-".to_owned(), pitr::restore::pg_time)
}

fn windows_text(db: &FleetDatabase) -> String {
    if db.windows.is_empty() {
        return "none".to_owned();
    }
    let w: Vec<String> = db
        .windows
        .iter()
        .map(|w| {
            format!(
                "timeline {}: {} to {}",
                w.timeline,
                shown(w.earliest),
                shown(w.latest)
            )
        })
        .collect();
    w.join("; ")
}

fn print_list(dbs: &[FleetDatabase]) {
    for d in dbs {
        let test = match &d.last_test_restore {
            None => "no test restore".to_owned(),
            Some(t) if t.ok => format!("test restore ok {}", shown(t.started)),
            Some(t) => format!("test restore FAILED {}", shown(t.started)),
        };
        let health = if d.failing_checks.is_empty() {
            "healthy".to_owned()
        } else {
            format!("failing: {}", d.failing_checks.join(", "))
        };
        println!(
            "{}/{} ({})  newest {}  {}  {}  {}",
            d.instance,
            d.name,
            d.kind,
            shown(d.newest_restorable),
            windows_text(d),
            test,
            health
        );
    }
}

/// The config skeleton and the `pitr restore` line for `detail` at `at`.
/// Names come from the fleet database: quoted for TOML and the shell, and
/// no path is taken from it (the fleet holds neither locations nor
/// secrets): the operator fills those in from the instance's own config.
fn restore_command(detail: &read::FleetDetail, at: jiff::Timestamp) -> String {
    let db = &detail.database;
    let toml_str = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let mut out = format!(
        "# pitr.toml: the repository of fleet instance {}. Copy [repository] recipients\n\
         # and each [[destination]]'s settings from that sidecar's config, and give the\n\
         # identity that can read its backups.\n\
         [repository]\n\
         recipients = [\"<the instance's age recipients>\"]\n\
         identity_file = \"<the age identity>\"\n\
         state_dir = \"<an empty directory for the local catalog>\"\n",
        toml_str(&db.instance)
    );
    for d in &detail.destinations {
        out.push_str(&format!(
            "\n[[destination]]\nname = {}\nkind = {}\n# …the settings of this destination in the instance's config\n",
            toml_str(&d.name),
            toml_str(&d.kind)
        ));
    }
    let flag = if db.kind == "sqlite" {
        "--sqlite"
    } else {
        "--postgres"
    };
    out.push_str(&format!(
        "\n# then, with TARGET a new directory (PostgreSQL) or file (SQLite):\n\
         pitr restore -c pitr.toml {flag} {} --at {} --target TARGET\n",
        shell_quote(&db.name),
        shell_quote(&at.to_string()),
    ));
    out
}

/// Single quotes for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}
