//! `pitr list`, `pitr plan` and `pitr restore` at the command line: opening
//! the repository for a restore, turning planner and restore errors into
//! exit codes, and printing tables people can read at 3 AM.

use std::fmt::Write as _;
use std::io::IsTerminal;

use pitr::config::Config;
use pitr::repo::Repository;
use pitr::restore::{Plan, PlanError, RestoreError, RestoreOptions, Target};
use pitr::verify::VerifyReport;

use super::args::TargetArg;
use super::exit::Exit;
use super::{CatalogSync, mib, open_repo};

/// Opens the repository for a restore: pins the repository key when the
/// config names it, and says which key the restore trusts and why, before
/// anything is written.
pub(super) async fn open_repo_for_restore(config: &Config) -> anyhow::Result<Repository> {
    let r = &config.repository;
    // Looked at before opening: opening writes a key fetched from the store
    // into state_dir.
    let local_key = r.state_dir.join("repository.key");
    let had_local_key = local_key.exists();
    let repo = open_repo(config, CatalogSync::Latest).await?;
    let id = repo.descriptor().key_id.clone();
    let why = match (&r.key_id, &r.key_file) {
        (Some(pin), _) if *pin != id => {
            return Err(Exit::Usage(format!(
                "the store's repository key is {id}, but [repository] key_id pins {pin}: \
                 refusing to restore. The destinations' descriptor and keys/ object may have \
                 been replaced by someone who can write to them and knows the recipients; \
                 check the destinations, or correct key_id if the repository was re-created \
                 on purpose"
            ))
            .into());
        }
        (Some(_), _) => "pinned by [repository] key_id".to_owned(),
        (None, Some(f)) => format!("from key_file {}", f.display()),
        (None, None) if had_local_key => format!(
            "from {}, kept since this host first opened the store",
            local_key.display()
        ),
        (None, None) => format!(
            "taken from the store's keys/{id} with the identity, NOT pinned: anyone who can \
             write to a destination and knows the recipients could have put another key there. \
             Pin it with key_id = \"{id}\" (or key_file) under [repository]"
        ),
    };
    eprintln!("Repository key {id}: trusted {why}.");
    Ok(repo)
}

/// The target the flags name.
pub(super) fn parse_target(t: &TargetArg) -> anyhow::Result<Target> {
    if t.latest {
        return Ok(Target::Latest);
    }
    Target::from_args(t.at.as_deref(), t.lsn.as_deref(), t.name.as_deref())
        .map_err(|e| Exit::Usage(e.to_string()).into())
}

/// Plans, mapping "cannot reach that target" to exit 1.
pub(super) async fn make_plan(
    repo: &Repository,
    database: &str,
    target: &Target,
    timeline: Option<u32>,
) -> anyhow::Result<Plan> {
    pitr::restore::plan(repo, database, target, timeline)
        .await
        .map_err(|e: PlanError| {
            if e.is_not_possible() {
                Exit::NotPossible(e.to_string()).into()
            } else {
                anyhow::Error::new(e)
            }
        })
}

fn lineage_text(plan: &Plan) -> String {
    let mut s = String::new();
    for (tl, end) in &plan.lineage {
        let _ = write!(s, "{tl} until {end}, then ");
    }
    let _ = write!(s, "{}", plan.timeline);
    s
}

/// `pitr plan` as a table.
pub(super) fn print_plan(plan: &Plan) {
    let partials = plan.segments.iter().filter(|s| s.partial).count();
    println!(
        "Restore plan for [[postgres]] {:?} to {}",
        plan.database,
        plan.target.describe()
    );
    println!("  timeline     {}", lineage_text(plan));
    println!(
        "  base backup  {}  WAL {} to {}  finished {}  {} files, {}",
        plan.backup.id,
        plan.backup.start_lsn,
        plan.backup.end_lsn,
        pitr::restore::pg_time(plan.backup.finished),
        plan.backup.files,
        mib(plan.backup.bytes)
    );
    let first = plan.segments.first().map_or("-", |s| s.file.as_str());
    let last = plan.segments.last().map_or("-", |s| s.file.as_str());
    println!(
        "  WAL          {} segments ({} partial) {} .. {}, {}; {} history file(s)",
        plan.segments.len(),
        partials,
        first,
        last,
        mib(plan.wal_bytes),
        plan.history.len()
    );
    println!(
        "  stops in     {} (stored up to {})",
        plan.stop.file, plan.stop.end
    );
    let window = match (plan.window.earliest, plan.window.latest) {
        (Some(e), Some(l)) => format!(
            "{} to {}",
            pitr::restore::pg_time(e),
            pitr::restore::pg_time(l)
        ),
        (Some(e), None) => format!("{} on", pitr::restore::pg_time(e)),
        _ => "-".to_owned(),
    };
    println!("  window       {window} on timeline {}", plan.timeline);
    println!(
        "  download     {} (base backup {} + WAL {}, less what is already deduplicated)",
        mib(plan.backup.bytes + plan.wal_bytes),
        mib(plan.backup.bytes),
        mib(plan.wal_bytes)
    );
}

/// `pitr list`: base backups, WAL ranges per timeline, restore windows.
/// The JSON is [`pitr::listing::Listing`], what `GET /backups` serves too.
pub(super) async fn list(config: &Config, json: bool) -> anyhow::Result<()> {
    let repo = open_repo(config, CatalogSync::Latest).await?;
    let listing = pitr::listing::listing(&repo, config).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&listing)?);
        return Ok(());
    }
    for pg in &listing.postgres {
        println!("[[postgres]] {:?}", pg.name);
        println!("  base backups:");
        if pg.backups.is_empty() {
            println!("    none");
        }
        for b in &pg.backups {
            let r = &b.record;
            println!(
                "    {}  timeline {}  WAL {} to {}  finished {}  {} ({} stored)  {}{}",
                r.id,
                r.end_timeline,
                r.start_lsn,
                r.end_lsn,
                pitr::restore::pg_time(r.finished),
                mib(r.bytes),
                mib(r.stored_bytes),
                if b.restorable {
                    "restorable"
                } else {
                    "NOT restorable (its WAL is not stored)"
                },
                r.parent
                    .as_ref()
                    .map(|p| format!("  incremental on {p}"))
                    .unwrap_or_default()
            );
        }
        println!("  WAL:");
        for tl in &pg.wal {
            let ranges: Vec<String> = tl
                .ranges
                .iter()
                .map(|(s, e)| format!("{s} to {e}"))
                .collect();
            let gaps = if ranges.len() > 1 {
                "  (GAPS between ranges)"
            } else {
                ""
            };
            println!("    timeline {}: {}{gaps}", tl.timeline, ranges.join(", "));
        }
        println!("  restore window:");
        for w in &pg.windows {
            let text = match (w.earliest, w.latest) {
                (Some(e), Some(l)) => {
                    format!(
                        "{} to {}",
                        pitr::restore::pg_time(e),
                        pitr::restore::pg_time(l)
                    )
                }
                (Some(e), None) => format!(
                    "{} on (no transaction after it stored yet)",
                    pitr::restore::pg_time(e)
                ),
                _ => "none (no restorable base backup on this timeline)".to_owned(),
            };
            println!(
                "    timeline {}: {text}; --latest reaches {}",
                w.timeline,
                w.end.map_or("-".to_owned(), |e| e.to_string())
            );
        }
        println!(
            "  last test restore: {}",
            test_restore_text(pg.last_test_restore.as_ref())
        );
    }
    super::sqlite::print_list(&listing.sqlite);
    super::snapshot::print_list(&listing.snapshots);
    Ok(())
}

/// `pitr list`'s words on a database's newest test restore: when, the
/// verdict, from what, to where; or how to get one. A backup nobody
/// restored is a hope, not a backup: the line says so.
pub(super) fn test_restore_text(report: Option<&VerifyReport>) -> String {
    let Some(r) = report else {
        return "none recorded: nothing proves these backups restore yet (`pitr verify \
                --restore` runs one; `[verify] schedule` runs them in `pitr run`)"
            .to_owned();
    };
    let mut s = format!(
        "{} {} ({:.1} s",
        if r.ok { "passed" } else { "FAILED" },
        pitr::restore::pg_time(r.started),
        r.duration_secs
    );
    if let Some(b) = &r.backup {
        let _ = write!(s, ", from {b}");
    }
    if let Some(t) = &r.target {
        let _ = write!(s, ", to {t}");
    }
    s.push(')');
    if let Some(e) = r.error.as_deref().filter(|_| !r.ok) {
        let _ = write!(s, ": {}", e.lines().next().unwrap_or(e));
    }
    s
}

/// `pitr restore`: executes the plan, reports what was reached.
pub(super) async fn restore(
    repo: &Repository,
    plan: &Plan,
    opts: &RestoreOptions,
) -> anyhow::Result<()> {
    eprintln!(
        "Restoring [[postgres]] {:?} to {} into {}: base backup {} ({} files, {}), then {} WAL \
         segments ({}) on timeline {}...",
        plan.database,
        plan.target.describe(),
        opts.target_dir.display(),
        plan.backup.id,
        plan.backup.files,
        mib(plan.backup.bytes),
        plan.segments.len(),
        mib(plan.wal_bytes),
        lineage_text(plan)
    );
    // Where tablespaces go, before anything is written: the only links a
    // restore makes, to where the operator said.
    let record = pitr::basebackup::backups(repo, &plan.database)
        .ok()
        .and_then(|all| all.into_iter().find(|b| b.record.id == plan.backup.id));
    for t in record.iter().flat_map(|b| &b.record.tablespaces) {
        match &opts.tablespace_dir {
            Some(dir) => eprintln!(
                "  tablespace {} (on the server at {}) goes to {}, linked from pg_tblspc/{}",
                t.oid,
                t.location,
                dir.join(t.oid.to_string()).display(),
                t.oid
            ),
            None => eprintln!(
                "  tablespace {} (on the server at {}) needs --tablespace-dir",
                t.oid, t.location
            ),
        }
    }
    // A bar (bytes, rate, ETA, then WAL files) only for a person watching.
    let mut opts = opts.clone();
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(plan.backup.bytes);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg} {bytes}/{total_bytes} {bar:30} {binary_bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message("base backup");
        bar
    });
    let reporter = bar.clone().map(|bar| {
        let (tx, mut rx) = tokio::sync::watch::channel(pitr::restore::RestoreProgress::default());
        opts.progress = Some(tx);
        let wal_total = (plan.history.len() + plan.segments.len()) as u64;
        tokio::spawn(async move {
            let mut recovering = false;
            while rx.changed().await.is_ok() {
                let p = rx.borrow_and_update().clone();
                if p.recovering && !recovering {
                    recovering = true;
                    bar.reset();
                    bar.set_length(wal_total);
                    bar.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{spinner} recovery: WAL file {pos}/{len} {bar:30} ETA {eta}",
                        )
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                    );
                }
                if recovering {
                    bar.set_position(p.wal_files as u64);
                } else {
                    bar.set_position(p.backup_bytes);
                }
            }
        })
    });
    let opts = &opts;
    let result = pitr::restore::restore(repo, plan, opts).await;
    if let Some(r) = reporter {
        r.abort();
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let skipped = skipped_text(repo);
    if result.is_err() && !skipped.is_empty() {
        eprint!("{skipped}");
    }
    let report = result.map_err(|e| match e {
        // A missing major's binaries is an installation or config matter.
        RestoreError::TargetNotEmpty(_)
        | RestoreError::NoOsUser(_)
        | RestoreError::NoPostgres(_) => Exit::Usage(e.to_string()).into(),
        e => anyhow::Error::new(e),
    })?;
    match &report.reached {
        None => {
            println!(
                "Staged {} ({} files, {}) with recovery settings for {}; recovery was NOT run \
                 (--no-recover). Start PostgreSQL on it as its owner; its restore_command runs \
                 `pitr wal-fetch` with {}, which needs the identity.",
                report.target_dir.display(),
                report.files,
                mib(report.bytes),
                plan.target.describe(),
                opts.config_path.display()
            );
        }
        Some(r) => {
            let last = r
                .last_transaction
                .map_or("none replayed".to_owned(), pitr::restore::pg_time);
            println!(
                "Restored [[postgres]] {:?} to {} in {}: recovery checked.",
                plan.database,
                plan.target.describe(),
                report.target_dir.display()
            );
            if let Some(p) = &report.postgres {
                println!("  recovery ran on            {p}");
            }
            println!("  last transaction replayed  {last}");
            if let Some(s) = &r.stopped {
                println!("  recovery stopped           {s}");
            }
            if let Some(l) = r.redo_done {
                println!("  redo ended at              {l}");
            }
            if let Some(t) = r.new_timeline {
                println!("  new timeline               {t}");
            }
            println!(
                "  WAL files replayed         {} (plan: {})",
                r.wal_files,
                plan.history.len() + plan.segments.len()
            );
            println!(
                "The directory is shut down cleanly and starts without pitr: pg_ctl -D {} start",
                report.target_dir.display()
            );
        }
    }
    print!("{skipped}");
    Ok(())
}

/// The copies this process's reads skipped, one line each, naming the
/// destination, the object, why, and which destination served instead;
/// empty when none was skipped. `pitr repair` fixes them.
pub(super) fn skipped_text(repo: &Repository) -> String {
    let skipped = repo.skipped_reads();
    if skipped.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "Skipped {} bad or missing cop{} (read from another destination instead; `pitr repair` fixes them):\n",
        skipped.len(),
        if skipped.len() == 1 { "y" } else { "ies" }
    );
    for s in skipped {
        out.push_str(&format!(
            "  {} in {}: {} (served by {})\n",
            s.object, s.destination, s.why, s.served_by
        ));
    }
    out
}
