//! Snapshot sources: things that are not a database pitr streams, stored
//! whole on a schedule and restored by time (docs/SNAPSHOTS.md): a
//! command's standard output (`[[command]]`, [`command`]: a `pg_dump`, a
//! `sqlite3 .dump`, an export over HTTP) and an Infisical project's
//! secrets (`[[infisical]]`, [`infisical`]).
//!
//! A snapshot is one repository item, kind [`KIND`], named
//! `snapshot/<source>/<id>` where the id is its start time
//! (`20261207T020000.123456Z`, so names sort by time). Its content is cut
//! into content-defined chunks, so an unchanged output stores no new chunk
//! and a changed one only what changed; its attributes
//! ([`SnapshotAttrs`]) hold the source's name and kind, the time, the size
//! and how long it took, never content. It is committed only once the
//! source said it succeeded; otherwise nothing is recorded.
//!
//! A new kind of source is one [`SourceKind`] variant, one [`Source`]
//! variant and one function that hands [`store`] (or [`store_when`]) a
//! reader of its output; everything that loops over sources goes through
//! [`sources`].

pub mod command;
pub mod infisical;
pub mod schedule;
mod source;

use std::future::Future;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::repo::catalog::{Catalog, CatalogError};
use crate::repo::{Chunking, Manifest, RepoError, Repository};

pub use command::CommandError;
pub use infisical::InfisicalError;
pub use source::{Source, find, sources, take};

/// The item kind of every snapshot.
pub const KIND: &str = "snapshot";

/// The item name prefix of every snapshot.
pub const ITEM_PREFIX: &str = "snapshot/";

/// What kind of source took a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A `[[command]]` entry: its standard output.
    Command,
    /// An `[[infisical]]` entry: the canonical JSON of its secrets.
    Infisical,
}

impl SourceKind {
    /// `command` or `infisical`, as attributes and `pitr list --json` spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Command => "command",
            SourceKind::Infisical => "infisical",
        }
    }

    /// The config section the source is declared in, for messages.
    pub fn section(self) -> &'static str {
        match self {
            SourceKind::Command => "[[command]]",
            SourceKind::Infisical => "[[infisical]]",
        }
    }
}

/// What the catalog records with a snapshot: about it, never its content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotAttrs {
    /// The source's configured name.
    pub source: String,
    /// The source's kind.
    pub kind: SourceKind,
    /// When taking it started: the time `--at` compares with.
    pub time: Timestamp,
    /// Bytes of content.
    pub bytes: u64,
    /// How long the source took, in seconds.
    pub duration_secs: f64,
}

/// A stored snapshot, as [`list`] and [`pick`] find it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    /// Its id (`--id`): the start time as in its item name.
    pub id: String,
    /// Its catalog item.
    pub item: String,
    /// Its attributes.
    #[serde(flatten)]
    pub attrs: SnapshotAttrs,
    /// Its chunks, for reading it back.
    #[serde(skip)]
    pub manifest: Manifest,
    /// The commit that recorded it.
    #[serde(skip)]
    pub commit: String,
}

/// What [`store`] recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SnapshotInfo {
    /// The snapshot as [`list`] will show it.
    #[serde(flatten)]
    pub snapshot: Snapshot,
    /// Bytes of new packs uploaded for it: 0 when nothing changed.
    pub stored_bytes: u64,
    /// New packs uploaded for it.
    pub packs: usize,
}

/// Which snapshot of a source a restore wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Point {
    /// The newest one started at or before this time.
    At(Timestamp),
    /// The newest one.
    Latest,
    /// The one of this id (or item name).
    Id(String),
}

impl std::fmt::Display for Point {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Point::At(t) => write!(f, "at or before {t}"),
            Point::Latest => f.write_str("the newest"),
            Point::Id(id) => write!(f, "id {id}"),
        }
    }
}

/// Why a snapshot could not be stored, found or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The repository or a destination failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The local catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A snapshot's attributes do not read.
    #[error(
        "catalog item {item} has unreadable snapshot attributes: {what}. It was written by \
         another pitr version or damaged; `pitr catalog rebuild` rereads the destinations"
    )]
    BadAttrs {
        /// The item.
        item: String,
        /// What is wrong.
        what: String,
    },
    /// No snapshot of the source matches.
    #[error("no snapshot of {source_name:?} {point}: {why}")]
    NotFound {
        /// The source's name.
        source_name: String,
        /// What was asked for.
        point: Point,
        /// What there is instead, and what to do.
        why: String,
    },
    /// The source failed: nothing was recorded.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The Infisical export failed: nothing was recorded.
    #[error(transparent)]
    Infisical(#[from] InfisicalError),
}

impl SnapshotError {
    /// Whether what was asked is not possible (exit 1): no snapshot
    /// matches.
    pub fn is_not_possible(&self) -> bool {
        matches!(self, SnapshotError::NotFound { .. })
    }
}

/// The item name prefix of source `source`'s snapshots.
pub fn prefix(source: &str) -> String {
    format!("{ITEM_PREFIX}{source}/")
}

/// A snapshot id for a start time: sorts as the times do.
fn id_of(time: Timestamp) -> String {
    time.strftime("%Y%m%dT%H%M%S%.6fZ").to_string()
}

/// Stores everything `reader` yields as a snapshot of `source` and commits
/// it: for a source whose output is complete once it ends (an export held
/// in memory, a file). See [`store_when`] for one that reports success
/// only after its output ended.
pub async fn store<R>(
    repo: &Repository,
    source: &str,
    kind: SourceKind,
    reader: R,
) -> Result<SnapshotInfo, SnapshotError>
where
    R: AsyncRead + Unpin + Send,
{
    store_when(repo, source, kind, reader, async { Ok(()) }).await
}

/// Streams `reader` into the repository as a snapshot of `source`, then
/// awaits `done`, the source's verdict (a command's exit status), and
/// commits only when both succeeded; otherwise abandons it: nothing is
/// recorded, and the chunks uploaded meanwhile are garbage for the next
/// retention run. Memory stays bounded whatever the size (invariant 7,
/// docs/ARCHITECTURE.md): the reader is consumed chunk by chunk.
pub async fn store_when<R, F>(
    repo: &Repository,
    source: &str,
    kind: SourceKind,
    reader: R,
    done: F,
) -> Result<SnapshotInfo, SnapshotError>
where
    R: AsyncRead + Unpin + Send,
    F: Future<Output = Result<(), SnapshotError>>,
{
    let time = Timestamp::now();
    let clock = std::time::Instant::now();
    let id = id_of(time);
    let item = format!("{}{id}", prefix(source));
    let mut attrs = SnapshotAttrs {
        source: source.to_owned(),
        kind,
        time,
        bytes: 0,
        duration_secs: 0.0,
    };
    let mut writer = repo.writer();
    let json = |a: &SnapshotAttrs| {
        serde_json::to_value(a).map_err(|e| SnapshotError::BadAttrs {
            item: item.clone(),
            what: e.to_string(),
        })
    };
    let put = writer
        .put(&item, KIND, json(&attrs)?, Chunking::Cdc, reader)
        .await;
    // The verdict is awaited even when storing failed: a command must be
    // reaped, and its failure says more than a broken pipe.
    let verdict = done.await;
    let manifest = match (put, verdict) {
        (Ok(m), Ok(())) => m,
        (_, Err(e)) => {
            writer.abandon().await;
            return Err(e);
        }
        (Err(e), Ok(())) => {
            writer.abandon().await;
            return Err(e.into());
        }
    };
    attrs.bytes = manifest.size;
    attrs.duration_secs = clock.elapsed().as_secs_f64();
    writer.set_attrs(&item, json(&attrs)?);
    let info = writer.commit().await?;
    let (commit, stored_bytes, packs) = match info {
        Some(c) => (c.object, c.pack_bytes, c.packs),
        None => (String::new(), 0, 0),
    };
    Ok(SnapshotInfo {
        snapshot: Snapshot {
            id,
            item,
            attrs,
            manifest,
            commit,
        },
        stored_bytes,
        packs,
    })
}

/// Every snapshot of `source`, oldest first.
pub fn list(catalog: &Catalog, source: &str) -> Result<Vec<Snapshot>, SnapshotError> {
    let prefix = prefix(source);
    let mut out = Vec::new();
    for row in catalog.items(&prefix)? {
        if row.kind != KIND {
            continue;
        }
        let attrs: SnapshotAttrs =
            serde_json::from_value(row.attrs).map_err(|e| SnapshotError::BadAttrs {
                item: row.name.clone(),
                what: e.to_string(),
            })?;
        out.push(Snapshot {
            id: row
                .name
                .strip_prefix(&prefix)
                .unwrap_or(&row.name)
                .to_owned(),
            item: row.name,
            attrs,
            manifest: row.manifest,
            commit: row.commit,
        });
    }
    out.sort_by(|a, b| a.attrs.time.cmp(&b.attrs.time).then(a.id.cmp(&b.id)));
    Ok(out)
}

/// The snapshot of `source` that `point` names: for `At`, the newest one
/// started at or before that time (what a restore "to T" means for a
/// thing stored whole).
pub fn pick(catalog: &Catalog, source: &str, point: &Point) -> Result<Snapshot, SnapshotError> {
    let all = list(catalog, source)?;
    let not_found = |why: String| SnapshotError::NotFound {
        source_name: source.to_owned(),
        point: point.clone(),
        why,
    };
    if all.is_empty() {
        return Err(not_found(
            "the repository holds none. `pitr backup --snapshot NAME` takes one now; `pitr run` \
             takes them on the source's schedule"
                .to_owned(),
        ));
    }
    let range = || match (all.first(), all.last()) {
        (Some(first), Some(last)) => format!(
            "the repository holds {} from {} to {}",
            all.len(),
            first.attrs.time,
            last.attrs.time
        ),
        _ => String::new(),
    };
    let found = match point {
        Point::Latest => all.last(),
        Point::At(t) => all.iter().rev().find(|s| s.attrs.time <= *t),
        Point::Id(id) => all.iter().find(|s| &s.id == id || &s.item == id),
    };
    found.cloned().ok_or_else(|| {
        not_found(format!(
            "{}; `pitr list` shows them. Ask for a later time or another id",
            range()
        ))
    })
}

/// Writes `snapshot`'s content to `out`, every chunk decrypted and checked
/// and the whole compared with its manifest (invariant 3,
/// docs/ARCHITECTURE.md); returns its size. Needs the identity.
pub async fn read_to<W>(
    repo: &Repository,
    snapshot: &Snapshot,
    out: &mut W,
) -> Result<u64, SnapshotError>
where
    W: AsyncWrite + Unpin,
{
    Ok(repo.reader()?.read_to(&snapshot.manifest, out).await?)
}
