//! WAL in the repository: how segments, partial segments and timeline
//! history files are named, stored and found again.
//!
//! Items are named `pg/<database>/wal/<file>`, where `<file>` is the name the
//! server uses in `pg_wal` (`000000010000000000000003`, `00000002.history`),
//! and `<segment>.partial` for the open segment's bytes so far. Segments are
//! cut into fixed 128 KiB chunks: a partial stored twice a second and the
//! complete segment that supersedes it share every chunk but the last, so
//! each upload adds only what is new.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::index::SegmentIndex;
use crate::pg::{Lsn, Segment, history_file_name};
use crate::repo::catalog::ItemRow;
use crate::repo::{Chunking, Manifest, PreparedChunk, RepoError, Repository, Writer};

/// The size of WAL chunks: 16 pages, so a partial and its successor share
/// all but their last chunk. The streamer cuts chunks itself at these
/// offsets ([`WalStore::put_prepared`]).
pub(super) const WAL_CHUNK: usize = 128 << 10;

/// How WAL items are chunked.
const WAL_CHUNKING: Chunking = Chunking::Fixed(WAL_CHUNK as u32);

/// Item kinds written here.
pub const KIND_SEGMENT: &str = "wal";
/// A partial segment.
pub const KIND_PARTIAL: &str = "wal-partial";
/// A timeline history file.
pub const KIND_HISTORY: &str = "wal-history";

/// The item that makes a WAL item unneeded once stored: a partial segment's
/// whole segment. A batched destination never receives a superseded
/// partial (`repo::batch`).
pub fn superseded_by(kind: &str, name: &str) -> Option<String> {
    (kind == KIND_PARTIAL)
        .then(|| name.strip_suffix(".partial").map(str::to_owned))
        .flatten()
}

/// What the catalog records with each WAL item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalAttrs {
    /// The timeline.
    pub timeline: u32,
    /// The first position the item holds (a segment's start).
    pub start: String,
    /// The position after the last byte it holds.
    pub end: String,
    /// The server's WAL segment size.
    pub segment_size: u64,
    /// What the segment's records say (commit times, restore points, LSN
    /// range): what the restore planner reads. Absent when it could not be
    /// decoded (a partial cut inside its first record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<SegmentIndex>,
}

/// A WAL file found in the catalog.
#[derive(Debug, Clone)]
pub struct StoredWal {
    /// The catalog row (manifest, time, attrs).
    pub item: ItemRow,
    /// Whether it is a partial segment (to be zero-padded when served).
    pub partial: bool,
    /// Its attributes, for segments; `None` for history files.
    pub attrs: Option<WalAttrs>,
}

/// Errors of the WAL store beyond the repository's own.
#[derive(Debug, thiserror::Error)]
pub enum WalStoreError {
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] crate::repo::catalog::CatalogError),
    /// A catalog item's attributes are not what this build wrote.
    #[error("catalog item {item} has unreadable WAL attributes: {what}")]
    BadAttrs {
        /// The item.
        item: String,
        /// What is wrong.
        what: String,
    },
    /// Writing the fetched file failed.
    #[error("cannot write {path}: {source}")]
    Output {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// WAL of one `[[postgres]]` entry in a repository.
#[derive(Debug, Clone)]
pub struct WalStore {
    repo: Repository,
    database: String,
}

impl WalStore {
    /// The WAL of `database` (its `[[postgres]]` name) in `repo`.
    pub fn new(repo: Repository, database: &str) -> WalStore {
        WalStore {
            repo,
            database: database.to_owned(),
        }
    }

    /// The item name of a `pg_wal` file name.
    pub fn item_name(&self, file: &str) -> String {
        format!("pg/{}/wal/{file}", self.database)
    }

    fn attrs(
        segment: Segment,
        end: Lsn,
        seg_size: u64,
        index: Option<SegmentIndex>,
    ) -> serde_json::Value {
        let attrs = WalAttrs {
            timeline: segment.timeline,
            start: segment.start(seg_size).to_string(),
            end: end.to_string(),
            segment_size: seg_size,
            index,
        };
        serde_json::to_value(attrs).expect("WAL attributes always serialize")
    }

    /// Puts a complete segment, or with `partial` the open segment's bytes
    /// so far (not yet committed: the caller commits, and only a commit
    /// makes it safe to acknowledge).
    pub async fn put_bytes(
        &self,
        w: &mut Writer,
        segment: Segment,
        seg_size: u64,
        partial: bool,
        bytes: &[u8],
        index: Option<SegmentIndex>,
    ) -> Result<Manifest, RepoError> {
        let end = Lsn(segment.start(seg_size).0 + bytes.len() as u64);
        let (name, kind) = self.name_and_kind(segment, seg_size, partial);
        let attrs = Self::attrs(segment, end, seg_size, index);
        w.put(&name, kind, attrs, WAL_CHUNKING, bytes).await
    }

    /// The item name and kind of a segment, or of its partial.
    fn name_and_kind(
        &self,
        segment: Segment,
        seg_size: u64,
        partial: bool,
    ) -> (String, &'static str) {
        let file = segment.file_name(seg_size);
        if partial {
            (self.item_name(&format!("{file}.partial")), KIND_PARTIAL)
        } else {
            (self.item_name(&file), KIND_SEGMENT)
        }
    }

    /// Puts a complete segment, or with `partial` the open segment's bytes
    /// up to `end`, from chunks the caller cut at multiples of
    /// `WAL_CHUNK` and prepared ([`crate::repo::ChunkPreparer`]): the same
    /// item [`WalStore::put_bytes`] stores from the bytes. Not yet committed, as those.
    #[allow(clippy::too_many_arguments)]
    pub async fn put_prepared(
        &self,
        w: &mut Writer,
        segment: Segment,
        seg_size: u64,
        end: Lsn,
        partial: bool,
        chunks: Vec<PreparedChunk>,
        index: Option<SegmentIndex>,
    ) -> Result<Manifest, RepoError> {
        let (name, kind) = self.name_and_kind(segment, seg_size, partial);
        let len: u64 = chunks.iter().map(|c| u64::from(c.raw_len())).sum();
        if Lsn(segment.start(seg_size).0 + len) != end || (!partial && len != seg_size) {
            return Err(RepoError::Malformed {
                object: name,
                what: format!("its chunks hold {len} bytes, not up to {end}"),
            });
        }
        let attrs = Self::attrs(segment, end, seg_size, index);
        w.put_prepared(&name, kind, attrs, WAL_CHUNKING, chunks)
            .await
    }

    /// Puts a timeline history file.
    pub async fn put_history(
        &self,
        w: &mut Writer,
        timeline: u32,
        content: &[u8],
    ) -> Result<Manifest, RepoError> {
        let name = self.item_name(&history_file_name(timeline));
        // The lineage goes into the attributes too, so that planning a
        // restore needs the catalog only, not the identity. A file that does
        // not parse is still stored: it is the server's, byte for byte.
        let parents: Option<Vec<(u32, Lsn)>> = super::history::Lineage::parse(timeline, content)
            .ok()
            .map(|l| {
                l.entries()
                    .iter()
                    .filter_map(|e| e.end.map(|end| (e.timeline, end)))
                    .collect()
            });
        let attrs = serde_json::json!({ "timeline": timeline, "parents": parents });
        w.put(&name, KIND_HISTORY, attrs, Chunking::Cdc, content)
            .await
    }

    /// The stored item for a file PostgreSQL asks for: the complete segment,
    /// else the newest partial of it, else nothing.
    pub fn find(&self, file: &str) -> Result<Option<StoredWal>, WalStoreError> {
        let catalog = self.repo.catalog();
        if let Some(item) = catalog.latest_item(&self.item_name(file))? {
            let attrs = match item.kind.as_str() {
                KIND_SEGMENT => Some(parse_attrs(&item)?),
                _ => None,
            };
            return Ok(Some(StoredWal {
                item,
                partial: false,
                attrs,
            }));
        }
        let partial = catalog.latest_item(&self.item_name(&format!("{file}.partial")))?;
        match partial {
            Some(item) => {
                let attrs = Some(parse_attrs(&item)?);
                Ok(Some(StoredWal {
                    item,
                    partial: true,
                    attrs,
                }))
            }
            None => Ok(None),
        }
    }

    /// The highest position stored on `timeline`, by complete segments and
    /// partials, with the time it was stored; `None` when nothing is.
    pub fn stored_end(&self, timeline: u32) -> Result<Option<(Lsn, Timestamp)>, WalStoreError> {
        let prefix = self.item_name(&format!("{timeline:08X}"));
        let mut best: Option<(Lsn, Timestamp)> = None;
        for item in self.repo.catalog().items(&prefix)? {
            if item.kind != KIND_SEGMENT && item.kind != KIND_PARTIAL {
                continue;
            }
            let attrs = parse_attrs(&item)?;
            let end = parse_lsn(&item, &attrs.end)?;
            if best.is_none_or(|(b, _)| end > b) {
                best = Some((end, item.time));
            }
        }
        Ok(best)
    }

    /// The timelines with stored segments or partials, ascending.
    pub fn timelines(&self) -> Result<Vec<u32>, WalStoreError> {
        let mut out = Vec::new();
        for item in self.repo.catalog().items(&self.item_name(""))? {
            if item.kind == KIND_SEGMENT || item.kind == KIND_PARTIAL {
                out.push(parse_attrs(&item)?.timeline);
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// The WAL stored on `timeline` as contiguous `[start, end)` ranges,
    /// ascending: for each segment the furthest end stored (a complete
    /// segment supersedes its partials), merged where one ends exactly where
    /// the next starts. One range per timeline is the healthy state; more
    /// are gaps (invariant 2). The first segment of a child timeline starts
    /// before its switch point: its head is the parent's WAL.
    pub fn ranges(&self, timeline: u32) -> Result<Vec<(Lsn, Lsn)>, WalStoreError> {
        let mut ends: std::collections::BTreeMap<Lsn, Lsn> = Default::default();
        for item in self
            .repo
            .catalog()
            .items(&self.item_name(&format!("{timeline:08X}")))?
        {
            if item.kind != KIND_SEGMENT && item.kind != KIND_PARTIAL {
                continue;
            }
            let attrs = parse_attrs(&item)?;
            if attrs.timeline != timeline {
                continue;
            }
            let start = parse_lsn(&item, &attrs.start)?;
            let end = parse_lsn(&item, &attrs.end)?;
            let e = ends.entry(start).or_insert(end);
            *e = (*e).max(end);
        }
        let mut out: Vec<(Lsn, Lsn)> = Vec::new();
        for (start, end) in ends {
            match out.last_mut() {
                Some(last) if last.1 == start => last.1 = end,
                _ => out.push((start, end)),
            }
        }
        Ok(out)
    }

    /// Writes the file PostgreSQL asked for to `path`, verified, atomically:
    /// a partial segment is padded with zeros to the segment size, which
    /// recovery reads as the end of WAL. Returns what was served, or `None`
    /// when the repository does not hold the file.
    pub async fn fetch_to(
        &self,
        file: &str,
        path: &std::path::Path,
    ) -> Result<Option<StoredWal>, WalStoreError> {
        self.fetch_into(file, path, true).await
    }

    /// [`WalStore::fetch_to`] without the file's and the directory's fsync:
    /// for a private spool whose files the caller moves into place, and which
    /// a crash throws away whole (a restore that dies is started again).
    pub async fn fetch_to_spool(
        &self,
        file: &str,
        path: &std::path::Path,
    ) -> Result<Option<StoredWal>, WalStoreError> {
        self.fetch_into(file, path, false).await
    }

    async fn fetch_into(
        &self,
        file: &str,
        path: &std::path::Path,
        durable: bool,
    ) -> Result<Option<StoredWal>, WalStoreError> {
        let Some(found) = self.find(file)? else {
            return Ok(None);
        };
        let out_err = |source| WalStoreError::Output {
            path: path.to_owned(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => std::path::PathBuf::from("."),
        };
        // PostgreSQL may read the file the moment it appears: write beside
        // it and rename, never into place.
        let tmp = tempfile::Builder::new()
            .prefix(".pitr-wal-fetch")
            .tempfile_in(&dir)
            .map_err(out_err)?;
        let std_file = tmp.as_file().try_clone().map_err(out_err)?;
        let mut out = tokio::fs::File::from_std(std_file);
        let reader = self.repo.reader()?;
        let n = reader.read_to(&found.item.manifest, &mut out).await?;
        if found.partial
            && let Some(attrs) = &found.attrs
            && n < attrs.segment_size
        {
            // A sparse tail would also read as zeros; writing them keeps the
            // file whole on filesystems that do not support holes.
            let zeros = vec![0u8; 1 << 20];
            let mut left = attrs.segment_size - n;
            while left > 0 {
                let k = left.min(zeros.len() as u64) as usize;
                out.write_all(&zeros[..k]).await.map_err(out_err)?;
                left -= k as u64;
            }
        }
        out.flush().await.map_err(out_err)?;
        if durable {
            out.sync_all().await.map_err(out_err)?;
        }
        tmp.persist(path).map_err(|e| out_err(e.error))?;
        if durable {
            std::fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(out_err)?;
        }
        Ok(Some(found))
    }
}

fn parse_attrs(item: &ItemRow) -> Result<WalAttrs, WalStoreError> {
    serde_json::from_value(item.attrs.clone()).map_err(|e| WalStoreError::BadAttrs {
        item: item.name.clone(),
        what: e.to_string(),
    })
}

fn parse_lsn(item: &ItemRow, text: &str) -> Result<Lsn, WalStoreError> {
    text.parse()
        .map_err(|e: crate::pg::ParseLsnError| WalStoreError::BadAttrs {
            item: item.name.clone(),
            what: e.to_string(),
        })
}
