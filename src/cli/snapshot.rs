//! Snapshot sources at the command line: `pitr backup --snapshot`, `pitr
//! plan --snapshot`, `pitr restore --snapshot` and the snapshot part of
//! `pitr list` (docs/SNAPSHOTS.md). Thin: the work is in `pitr::snapshot`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use pitr::config::Config;
use pitr::repo::Repository;
use pitr::snapshot::infisical::render::{self, Format};
use pitr::snapshot::{Point, Snapshot, SnapshotError, Source, SourceKind};

use super::args::TargetArg;
use super::exit::Exit;
use super::{CatalogSync, mib, open_repo};

/// The snapshot source (`[[command]]`, `[[infisical]]`) named `name`.
pub(super) fn source_entry(config: &Config, name: &str) -> anyhow::Result<Source> {
    pitr::snapshot::find(config, name).ok_or_else(|| {
        let names: Vec<Source> = pitr::snapshot::sources(config).collect();
        Exit::Usage(format!(
            "{}: no [[command]] or [[infisical]] entry is named {name:?} (configured: {})",
            config.path.display(),
            super::configured(names.iter().map(|s| s.name()))
        ))
        .into()
    })
}

/// Maps "no such snapshot" to exit 1.
fn classify(e: SnapshotError) -> anyhow::Error {
    if e.is_not_possible() {
        Exit::NotPossible(e.to_string()).into()
    } else {
        anyhow::Error::new(e)
    }
}

/// The point the flags name: `--at`, `--latest` or `--id`.
fn point(t: &TargetArg) -> anyhow::Result<Point> {
    if t.latest {
        return Ok(Point::Latest);
    }
    if let Some(id) = &t.id {
        return Ok(Point::Id(id.clone()));
    }
    match &t.at {
        Some(at) => pitr::restore::parse_time(at)
            .map(Point::At)
            .map_err(|e| Exit::Usage(e.to_string()).into()),
        None => Err(Exit::Usage(
            "--snapshot takes --at TIME, --latest or --id ID (not --lsn or --name)".to_owned(),
        )
        .into()),
    }
}

/// `pitr backup --snapshot NAME`: runs the source now and stores what it
/// gives; nothing is recorded when it fails.
pub(super) async fn backup(config: &Config, name: &str) -> anyhow::Result<()> {
    let source = source_entry(config, name)?;
    let repo = open_repo(config, CatalogSync::AsOpened).await?;
    let label = source.label();
    match &source {
        Source::Command(cmd) => eprintln!("Running {label} ({})...", cmd.run[0]),
        Source::Infisical(i) => eprintln!("Exporting {label} from {}...", i.site_url),
    }
    let info = pitr::snapshot::take(&repo, &source).await?;
    let s = &info.snapshot;
    println!(
        "Snapshot {} of {label}: {} in {:.1} s; {} of new data stored (the rest was already in \
         the repository).",
        s.id,
        mib(s.attrs.bytes),
        s.attrs.duration_secs,
        mib(info.stored_bytes)
    );
    Ok(())
}

/// Picks the snapshot `--snapshot NAME` and the target flags name, with
/// the repository opened for reading (`restoring`) or for a plan.
async fn picked(
    config: &Config,
    name: &str,
    target: &TargetArg,
    restoring: bool,
) -> anyhow::Result<(Repository, Snapshot)> {
    source_entry(config, name)?;
    let point = point(target)?;
    let repo = if restoring {
        super::restore::open_repo_for_restore(config).await?
    } else {
        open_repo(config, CatalogSync::Latest).await?
    };
    let snap = pitr::snapshot::pick(&repo.catalog(), name, &point).map_err(classify)?;
    Ok((repo, snap))
}

/// `pitr plan --snapshot NAME`: which snapshot a restore would write.
pub(super) async fn plan(
    config: &Config,
    name: &str,
    target: &TargetArg,
    json: bool,
) -> anyhow::Result<()> {
    let (_, snap) = picked(config, name, target, false).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&snap)?);
        return Ok(());
    }
    println!("Restore plan for {} {name:?}", snap.attrs.kind.section());
    print_snapshot(&snap);
    Ok(())
}

fn print_snapshot(s: &Snapshot) {
    println!(
        "  snapshot {}  taken {}  {}  in {:.1} s",
        s.id,
        pitr::restore::pg_time(s.attrs.time),
        mib(s.attrs.bytes),
        s.attrs.duration_secs
    );
}

/// How an `[[infisical]]` snapshot is written out (`--format`,
/// `--environment`); both `None` for a snapshot written as stored.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Form<'a> {
    /// `--format`.
    pub(super) format: Option<&'a str>,
    /// `--environment`.
    pub(super) environment: Option<&'a str>,
}

/// The largest Infisical snapshot `--format`/`--environment` reads into
/// memory (its export is bounded per environment the same way).
const MAX_RENDERED: u64 = 256 << 20;

/// `pitr restore --snapshot NAME`: writes the snapshot, every chunk
/// checked, to `--output` (created with mode 0600, never over an existing
/// file without `--force`) or to standard output; an `[[infisical]]` one
/// in the `--format` asked for.
pub(super) async fn restore(
    config: &Config,
    name: &str,
    target: &TargetArg,
    output: Option<&Path>,
    force: bool,
    form: Form<'_>,
) -> anyhow::Result<()> {
    if let Some(out) = output
        && !force
        && out.symlink_metadata().is_ok()
    {
        return Err(Exit::Usage(format!(
            "--output {} exists: refusing to overwrite it. Give another path, or --force to \
             replace it",
            out.display()
        ))
        .into());
    }
    if output.is_none() && std::io::stdout().is_terminal() {
        return Err(Exit::Usage(
            "standard output is a terminal: give --output FILE, or redirect standard output \
             to a file or a pipe"
                .to_owned(),
        )
        .into());
    }
    let source = source_entry(config, name)?;
    let format = match (form.format, form.environment) {
        (None, None) => None,
        (f, _) if source.kind() != SourceKind::Infisical => {
            return Err(Exit::Usage(format!(
                "--{} applies to [[infisical]] snapshots; {} is written as stored",
                if f.is_some() { "format" } else { "environment" },
                source.label()
            ))
            .into());
        }
        (f, _) => Some(f.unwrap_or("json").parse::<Format>().map_err(Exit::Usage)?),
    };
    let (repo, snap) = picked(config, name, target, true).await?;
    let label = source.label();
    eprintln!(
        "Restoring snapshot {} of {label} (taken {}, {})...",
        snap.id,
        pitr::restore::pg_time(snap.attrs.time),
        mib(snap.attrs.bytes)
    );
    let content = match format {
        None => Content::AsStored(&snap),
        Some(format) => Content::Rendered(rendered(&repo, &snap, format, form.environment).await?),
    };
    let n = match output {
        None => content.write(&repo, &mut tokio::io::stdout()).await?,
        Some(path) => write_file(&repo, &content, path, force).await?,
    };
    eprintln!(
        "Restored snapshot {} of {label}: {n} bytes{}, every chunk checked.",
        snap.id,
        output.map_or(String::new(), |p| format!(" into {}", p.display()))
    );
    eprint!("{}", super::restore::skipped_text(&repo));
    Ok(())
}

/// What a snapshot restore writes.
enum Content<'a> {
    /// The snapshot as stored, streamed from the repository.
    AsStored(&'a Snapshot),
    /// An Infisical snapshot in another form, in memory.
    Rendered(Vec<u8>),
}

impl Content<'_> {
    /// Writes it to `out`; the bytes written.
    async fn write<W>(&self, repo: &Repository, out: &mut W) -> anyhow::Result<u64>
    where
        W: tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::AsyncWriteExt;
        match self {
            Content::AsStored(snap) => Ok(pitr::snapshot::read_to(repo, snap, out).await?),
            Content::Rendered(bytes) => {
                out.write_all(bytes).await?;
                out.flush().await?;
                Ok(bytes.len() as u64)
            }
        }
    }
}

/// An Infisical snapshot read (every chunk checked) and written as
/// `format`, one environment of it with `environment`.
async fn rendered(
    repo: &Repository,
    snap: &Snapshot,
    format: Format,
    environment: Option<&str>,
) -> anyhow::Result<Vec<u8>> {
    if snap.attrs.bytes > MAX_RENDERED {
        anyhow::bail!(
            "snapshot {} is {}, more than an Infisical export can be ({}): it is not one; \
             restore it without --format and --environment",
            snap.id,
            mib(snap.attrs.bytes),
            mib(MAX_RENDERED)
        );
    }
    let mut stored = Vec::new();
    pitr::snapshot::read_to(repo, snap, &mut stored).await?;
    render::render(&stored, format, environment).map_err(|e| Exit::Usage(e.to_string()).into())
}

/// Writes `content` beside `path` in a new private file, then puts it in
/// place: with a hard link, which fails if `path` exists (someone made
/// it meanwhile), or with `force` a rename over it. A failed or partial
/// restore leaves nothing at `path`.
async fn write_file(
    repo: &Repository,
    content: &Content<'_>,
    path: &Path,
    force: bool,
) -> anyhow::Result<u64> {
    let partial = partial_path(path);
    // New, never opened through a link someone left there; 0600: a dump
    // is as sensitive as the database.
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", partial.display()))?
    };
    let mut out = tokio::fs::File::from_std(file);
    let written = async {
        let n = content.write(repo, &mut out).await?;
        out.sync_all().await?;
        anyhow::Ok(n)
    }
    .await;
    let placed = written.and_then(|n| {
        if force {
            std::fs::rename(&partial, path)?;
        } else {
            std::fs::hard_link(&partial, path).map_err(|e| {
                anyhow::Error::from(Exit::Usage(format!(
                    "--output {}: {e}; refusing to overwrite it (--force replaces it)",
                    path.display()
                )))
            })?;
        }
        Ok(n)
    });
    let _ = std::fs::remove_file(&partial);
    placed
}

/// `FILE.pitr-partial-<pid>` beside `path`.
fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".pitr-partial-{}", std::process::id()));
    path.with_file_name(name)
}

/// The snapshot part of `pitr list`, as text.
pub(super) fn print_list(sources: &[pitr::listing::SnapshotListing]) {
    for src in sources {
        println!(
            "{} {:?}: {} snapshots",
            src.kind.section(),
            src.name,
            src.snapshots.len()
        );
        for s in &src.snapshots {
            print_snapshot(s);
        }
        println!(
            "  last test restore: {}",
            super::restore::test_restore_text(src.last_test_restore.as_ref())
        );
    }
}
