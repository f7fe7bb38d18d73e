//! The SQLite side of the command line: `pitr plan --sqlite`, `pitr restore
//! --sqlite`, the SQLite part of `pitr list`, and starting the watchers of
//! `pitr run`.

use std::path::Path;

use pitr::config::{Config, SqliteConfig};
use pitr::repo::Repository;
use pitr::restore::Target;
use pitr::restore::sqlite::{SqlitePlan, SqliteRestoreError};

use super::exit::Exit;
use super::mib;

/// The `[[sqlite]]` entry named `name`.
pub(super) fn sqlite_entry<'a>(config: &'a Config, name: &str) -> anyhow::Result<&'a SqliteConfig> {
    config
        .sqlite
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| {
            Exit::Usage(format!(
                "{}: no [[sqlite]] entry is named {name:?} (configured: {})",
                config.path.display(),
                super::configured(config.sqlite.iter().map(|s| s.name.as_str()))
            ))
            .into()
        })
}

fn classify(e: SqliteRestoreError) -> anyhow::Error {
    if e.is_not_possible() {
        Exit::NotPossible(e.to_string()).into()
    } else if e.is_usage() {
        Exit::Usage(e.to_string()).into()
    } else {
        anyhow::Error::new(e)
    }
}

/// Plans, mapping errors to exit codes.
pub(super) fn make_plan(
    repo: &Repository,
    name: &str,
    target: &Target,
) -> anyhow::Result<SqlitePlan> {
    pitr::restore::sqlite::plan(repo, name, target).map_err(classify)
}

/// `pitr plan --sqlite` as a table.
pub(super) fn print_plan(plan: &SqlitePlan) {
    let snaps = plan.captures.iter().filter(|c| c.snapshot).count();
    println!(
        "Restore plan for [[sqlite]] {:?} to {}",
        plan.database,
        plan.target.describe()
    );
    if let Some(first) = plan.captures.first() {
        println!(
            "  snapshot     {}  taken {}  {} pages",
            first.item, first.at, first.pages
        );
    }
    let pages: u64 = plan
        .captures
        .iter()
        .skip(snaps)
        .map(|c| u64::from(c.pages))
        .sum();
    println!(
        "  page sets    {} ({} pages) up to {}",
        plan.captures.len() - snaps,
        pages,
        plan.at
    );
    println!(
        "  result       {} pages of {} bytes ({}), checksum {}",
        plan.db_pages,
        plan.page_size,
        mib(u64::from(plan.db_pages) * u64::from(plan.page_size)),
        plan.checksum
    );
    println!("  window       {}", window_text(&plan.window));
    println!("  download     {}", mib(plan.bytes()));
}

fn window_text(w: &pitr::restore::sqlite::SqliteWindow) -> String {
    match (w.earliest, w.latest) {
        (Some(e), Some(l)) => format!("{e} to {l}"),
        (None, Some(l)) => format!("none (no snapshot; last capture {l})"),
        _ => "none (nothing stored yet)".to_owned(),
    }
}

/// `pitr restore --sqlite`.
pub(super) async fn restore(
    repo: &Repository,
    plan: &SqlitePlan,
    target: &Path,
    force: bool,
) -> anyhow::Result<()> {
    eprintln!(
        "Restoring [[sqlite]] {:?} to {} into {}: {} captures ({})...",
        plan.database,
        plan.target.describe(),
        target.display(),
        plan.captures.len(),
        mib(plan.bytes())
    );
    let result = pitr::restore::sqlite::restore(repo, plan, target, force).await;
    let skipped = super::restore::skipped_text(repo);
    if result.is_err() {
        eprint!("{skipped}");
    }
    let report = result.map_err(classify)?;
    println!(
        "Restored [[sqlite]] {:?} as of {} into {}: {} captures, {} pages written, {}; \
         checksum {} and PRAGMA integrity_check ok.",
        plan.database,
        plan.at,
        report.target.display(),
        report.captures,
        report.pages_written,
        mib(report.bytes),
        report.checksum
    );
    print!("{skipped}");
    Ok(())
}

/// The SQLite part of `pitr list`, as text.
pub(super) fn print_list(sqlite: &[pitr::listing::SqliteListing]) {
    for s in sqlite {
        println!("[[sqlite]] {:?} ({})", s.name, s.path.display());
        println!(
            "  captures: {} ({} snapshots, {} page sets)",
            s.captures,
            s.snapshots.len(),
            s.captures - s.snapshots.len()
        );
        for c in &s.snapshots {
            println!(
                "    snapshot {}  {}  {} pages of {} bytes  ({})",
                c.item, c.at, c.db_pages, c.page_size, c.reason
            );
        }
        if let Some(last) = &s.last {
            println!("    last capture {}  {}", last.item, last.at);
        }
        println!("  restore window: {}", window_text(&s.window));
        println!(
            "  last test restore: {}",
            super::restore::test_restore_text(s.last_test_restore.as_ref())
        );
    }
}
