//! `pitr verify` at the command line: every object checked, or with
//! `--restore` test restores now, each report printed, exit 3 (a failure,
//! not "not possible") when any failed.

use pitr::config::Config;
use pitr::repo::Repository;
use pitr::verify::{Selection, VerifyError, VerifyReport};

use super::args::DatabaseArg;
use super::exit::Exit;
use super::{CatalogSync, open_repo};

/// Runs a test restore of every (or the named) database and prints the
/// reports.
pub(super) async fn verify_restore(
    config: &Config,
    database: DatabaseArg,
    snapshot: Option<String>,
) -> anyhow::Result<()> {
    // clap lets at most one of the three through.
    let selection = match (database.postgres, database.sqlite, snapshot) {
        (Some(p), _, _) => Selection::Postgres(p),
        (_, Some(s), _) => Selection::Sqlite(s),
        (_, _, Some(name)) => Selection::Snapshot(
            super::snapshot::source_entry(config, &name)?
                .name()
                .to_owned(),
        ),
        (None, None, None) => Selection::All,
    };
    if config.repository.identity_file.is_none() {
        return Err(Exit::Usage(VerifyError::NoIdentity.to_string()).into());
    }
    let repo = open_repo(config, CatalogSync::Latest).await?;
    let run = pitr::verify::run_now(config, &repo, &selection)
        .await
        .map_err(|e| match e {
            VerifyError::UnknownDatabase { .. } | VerifyError::NoIdentity => {
                anyhow::Error::new(Exit::Usage(e.to_string()))
            }
            e => anyhow::Error::new(e),
        })?;
    if run.reports.is_empty() {
        return Err(Exit::Usage(format!(
            "{} has no [[postgres]], [[sqlite]], [[command]] or [[infisical]] entry to test-restore",
            config.path.display()
        ))
        .into());
    }
    for r in &run.reports {
        print_report(r);
    }
    for (db, e) in &run.record_errors {
        eprintln!("warning: the report of {db:?} could not be recorded in the repository: {e}");
    }
    let failed: Vec<&VerifyReport> = run.reports.iter().filter(|r| !r.ok).collect();
    // Only missing server binaries: nothing is known to be wrong with the
    // backups, the installation or config must change (exit 2).
    if !failed.is_empty()
        && failed.iter().all(|r| {
            r.kind == pitr::verify::DatabaseKind::Postgres
                && run.missing_binaries.contains(&r.database)
        })
    {
        return Err(Exit::Usage(format!(
            "test restore could not run for {}: {}",
            failed
                .iter()
                .map(|r| format!("[[postgres]] {:?}", r.database))
                .collect::<Vec<_>>()
                .join(", "),
            failed
                .iter()
                .filter_map(|r| r.error.as_deref())
                .collect::<Vec<_>>()
                .join("; ")
        ))
        .into());
    }
    if !failed.is_empty() {
        let names: Vec<String> = failed
            .iter()
            .map(|r| format!("[[{}]] {:?}", r.kind.as_str(), r.database))
            .collect();
        anyhow::bail!(
            "test restore FAILED for {}: {}",
            names.join(", "),
            failed
                .iter()
                .filter_map(|r| r.error.as_deref())
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    if !run.record_errors.is_empty() {
        anyhow::bail!(
            "every test restore passed, but {} report(s) could not be recorded: check the \
             destinations with `pitr check`",
            run.record_errors.len()
        );
    }
    Ok(())
}

fn print_report(r: &VerifyReport) {
    println!(
        "Test restore of [[{}]] {:?}: {}",
        r.kind.as_str(),
        r.database,
        if r.ok { "PASSED" } else { "FAILED" }
    );
    println!("  started      {}", pitr::restore::pg_time(r.started));
    println!("  took         {:.1} s", r.duration_secs);
    println!("  target       {}", r.target.as_deref().unwrap_or("-"));
    println!("  from         {}", r.backup.as_deref().unwrap_or("-"));
    println!("  reached      {}", r.reached.as_deref().unwrap_or("-"));
    println!("  replayed     {} files", r.wal_files);
    for c in &r.checks {
        println!("  check        {c}");
    }
    if let Some(e) = &r.error {
        println!("  error        {e}");
    }
    println!("  recorded as  {}", r.item_name());
}

/// `pitr verify`: every object in every destination read back and checked.
pub(super) async fn verify(config: &Config) -> anyhow::Result<()> {
    let fanout = pitr::wiring::fanout(config);
    let opts = pitr::wiring::repo_options(config)?;
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
