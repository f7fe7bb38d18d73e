//! Keeping the repository in shape: `pitr repair` (good copies over
//! missing or damaged objects) and `pitr retention` (the policy and garbage
//! collection).

use pitr::config::Config;

use super::args::DatabaseArg;
use super::exit::Exit;
use super::{CatalogSync, open_repo};

/// `pitr repair`: every object checked in every destination, good copies
/// written over missing or damaged ones.
pub(super) async fn repair(config: &Config) -> anyhow::Result<()> {
    let repo = open_repo(config, CatalogSync::AsOpened).await?;
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
            "{} objects could not be repaired (listed above); a destination that cannot be \
             read must be fixed first, an object no destination holds intact is lost there",
            report.unrepaired.len()
        );
    }
    Ok(())
}

/// `pitr retention`: the plan, then (unless `--dry-run`) its application.
pub(super) async fn retention(
    config: &Config,
    database: DatabaseArg,
    snapshot: Option<String>,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<()> {
    use pitr::retention::{RetentionError, RunOptions, Scope};
    // clap lets at most one of the three through.
    let scope = match (database.postgres, database.sqlite, snapshot) {
        (Some(p), _, _) => Scope::Postgres(p),
        (_, Some(s), _) => Scope::Sqlite(s),
        (_, _, Some(name)) => Scope::Snapshot(
            super::snapshot::source_entry(config, &name)?
                .name()
                .to_owned(),
        ),
        (None, None, None) => Scope::All,
    };
    let repo = open_repo(config, CatalogSync::AsOpened).await?;
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
