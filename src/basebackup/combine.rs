//! Restoring an incremental backup: the combined data directory written
//! straight from the repository, as `pg_combinebackup` would write it from
//! the chain's directories (`src/bin/pg_combinebackup/reconstruct.c`), but
//! without a copy of every backup on disk.
//!
//! The newest backup's listing decides which files exist (a file removed
//! between backups is not restored). Its ordinary files are written as
//! they are; its `backup_label` loses the `INCREMENTAL FROM` lines; each
//! `INCREMENTAL.<name>` becomes `<name>`: block by block, from the newest
//! backup that holds the block, walking back through the chain to the
//! first backup holding the whole file. Blocks of older backups at or past
//! the newest truncation length are left out (the relation was truncated);
//! blocks no backup holds are zeros (extended, never WAL-logged).
//!
//! Every source is read as one stream, forward only: the blocks a file
//! takes from one source come in ascending order, so memory is a few
//! chunks per source and a block map (at most 3 MiB for a 1 GiB segment),
//! whatever the size of the database. Each source is read to its end, so
//! the repository reader checks its item hash too.

use std::collections::HashMap;
use std::pin::Pin;

use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::incremental::{BLOCK, Header, PREFIX, chain, combined_label, split_incremental};
use super::record::{BackupRecord, ListingEntry, backups};
use super::{BackupError, files_prefix};
use crate::repo::{Manifest, Reader, RepoError, Repository};

/// What one restored file is written from.
#[derive(Debug, Clone)]
pub(super) enum Source {
    /// An item, as it is.
    Item(Manifest),
    /// An incremental backup's `backup_label`, without its `INCREMENTAL
    /// FROM` lines.
    Label(Manifest),
    /// A relation file rebuilt from the newest backup's `INCREMENTAL.*`
    /// file and, newest first, what the older backups hold of it.
    Rebuild {
        /// The newest backup's `INCREMENTAL.*` item.
        newest: Manifest,
        /// Each older backup's copy, newest first, up to a whole file.
        older: Vec<Older>,
    },
}

/// An older backup's copy of a file being rebuilt.
#[derive(Debug, Clone)]
pub(super) enum Older {
    /// The whole file: the last source.
    Full(Manifest),
    /// Another `INCREMENTAL.*` file.
    Incremental(Manifest),
}

/// The chain of an incremental backup, with each backup's items.
pub(super) struct Chain {
    /// Oldest (the full backup) first; the last is the one restored.
    backups: Vec<(BackupRecord, HashMap<String, Manifest>)>,
    db: String,
}

impl Chain {
    /// The chain of `record`, or `None` for a full backup.
    pub(super) fn load(
        repo: &Repository,
        db: &str,
        record: &BackupRecord,
    ) -> Result<Option<Chain>, BackupError> {
        if record.parent.is_none() {
            return Ok(None);
        }
        let all: Vec<BackupRecord> = backups(repo, db)?.into_iter().map(|b| b.record).collect();
        let records = chain(&all, record).map_err(|what| BackupError::BadRecord {
            item: super::record_name(db, &record.id),
            what: format!("{what}: the chain it is restored from is broken"),
        })?;
        let mut backups = Vec::with_capacity(records.len());
        for r in records {
            let items = repo
                .catalog()
                .items(&files_prefix(db, &r.id))?
                .into_iter()
                .map(|i| (i.name, i.manifest))
                .collect();
            backups.push((r, items));
        }
        Ok(Some(Chain {
            backups,
            db: db.to_owned(),
        }))
    }

    /// The ids of the chain, oldest first.
    pub(super) fn ids(&self) -> Vec<&str> {
        self.backups.iter().map(|(r, _)| r.id.as_str()).collect()
    }

    /// Where a file of the newest backup's listing goes (its path in the
    /// archive) and what it is written from.
    pub(super) fn source(&self, e: &ListingEntry) -> Result<(String, Source), BackupError> {
        let Some(((newest, items), older)) = self.backups.split_last() else {
            return Err(self.broken("the chain is empty"));
        };
        let name = |r: &BackupRecord, path: &str| {
            format!("{}{}/{path}", files_prefix(&self.db, &r.id), e.archive)
        };
        let own = items
            .get(&name(newest, &e.path))
            .cloned()
            .ok_or_else(|| self.broken(&format!("{} is listed but not stored", e.path)))?;
        if e.archive == "base" && e.path == "backup_label" {
            return Ok((e.path.clone(), Source::Label(own)));
        }
        let Some((dir, bare)) = split_incremental(&e.archive, &e.path) else {
            return Ok((e.path.clone(), Source::Item(own)));
        };
        let whole = format!("{dir}/{bare}");
        let partial = format!("{dir}/{PREFIX}{bare}");
        let mut sources = Vec::new();
        for (i, (r, items)) in older.iter().enumerate().rev() {
            if let Some(m) = items.get(&name(r, &whole)) {
                sources.push(Older::Full(m.clone()));
                return Ok((
                    whole,
                    Source::Rebuild {
                        newest: own,
                        older: sources,
                    },
                ));
            }
            match items.get(&name(r, &partial)) {
                Some(m) if i > 0 => sources.push(Older::Incremental(m.clone())),
                _ => {
                    return Err(self.broken(&format!(
                        "{} in {} needs {whole} from backup {}, which holds neither it nor \
                         {partial}",
                        e.path, newest.id, r.id
                    )));
                }
            }
        }
        Err(self.broken(&format!(
            "{} in {} has no whole copy in the chain",
            e.path, newest.id
        )))
    }

    fn broken(&self, what: &str) -> BackupError {
        let id = self.backups.last().map_or("", |(r, _)| r.id.as_str());
        BackupError::BadRecord {
            item: super::record_name(&self.db, id),
            what: format!(
                "{what} (chain {}); restore an older backup, or from a destination holding \
                 the whole chain",
                self.ids().join(" <- ")
            ),
        }
    }
}

/// Writes `source` to `out`; returns the bytes written. A repository error
/// is returned as it is (the caller names the file for local ones).
pub(super) async fn write<W: AsyncWrite + Unpin>(
    reader: &Reader,
    source: &Source,
    out: &mut W,
) -> Result<u64, RepoError> {
    match source {
        Source::Item(m) => reader.read_to(m, out).await,
        Source::Label(m) => {
            let mut label = Vec::new();
            reader.read_to(m, &mut label).await?;
            let label = combined_label(&label);
            out.write_all(&label).await.map_err(local)?;
            Ok(label.len() as u64)
        }
        Source::Rebuild { newest, older } => rebuild(reader, newest, older, out).await,
    }
}

fn local(source: std::io::Error) -> RepoError {
    RepoError::Local {
        path: "(output)".into(),
        source,
    }
}

/// One source item, read forward only.
struct Cursor {
    name: String,
    stream: Pin<Box<dyn Stream<Item = Result<Bytes, RepoError>> + Send>>,
    /// Bytes read and not consumed, starting at `at`.
    buf: Bytes,
    at: u64,
}

impl Cursor {
    fn new(reader: &Reader, m: &Manifest) -> Cursor {
        Cursor {
            name: m.name.clone(),
            stream: Box::pin(reader.stream(m)),
            buf: Bytes::new(),
            at: 0,
        }
    }

    fn bad(&self, what: String) -> RepoError {
        RepoError::ItemMismatch {
            item: self.name.clone(),
            what,
        }
    }

    /// Copies `out.len()` bytes from offset `off` (not before what was
    /// read) into `out`.
    async fn read_at(&mut self, off: u64, out: &mut [u8]) -> Result<(), RepoError> {
        if off < self.at {
            return Err(self.bad(format!(
                "an incremental file asks for offset {off} after {}: its block numbers are \
                 not ascending",
                self.at
            )));
        }
        let mut filled = 0;
        let mut skip = off - self.at;
        while filled < out.len() {
            if self.buf.is_empty() {
                match self.stream.try_next().await? {
                    Some(b) => self.buf = b,
                    None => {
                        return Err(self.bad(format!(
                            "ends at {} bytes, a block at {off} is needed",
                            self.at
                        )));
                    }
                }
            }
            let drop = (skip.min(self.buf.len() as u64)) as usize;
            let _ = self.buf.split_to(drop);
            self.at += drop as u64;
            skip -= drop as u64;
            if skip > 0 {
                continue;
            }
            let n = (out.len() - filled).min(self.buf.len());
            out[filled..filled + n].copy_from_slice(&self.buf.split_to(n));
            self.at += n as u64;
            filled += n;
        }
        Ok(())
    }

    /// The next `n` bytes.
    async fn read(&mut self, n: usize) -> Result<Vec<u8>, RepoError> {
        let mut out = vec![0; n];
        let at = self.at;
        self.read_at(at, &mut out).await?;
        Ok(out)
    }

    /// The `INCREMENTAL.*` header at the start.
    async fn header(&mut self) -> Result<Header, RepoError> {
        let fixed = self.read(Header::FIXED).await?;
        let n = Header::block_count(&fixed).map_err(|e| self.bad(e.to_string()))?;
        let mut all = fixed;
        all.extend(self.read(4 * n as usize).await?);
        Header::parse(&all).map_err(|e| self.bad(e.to_string()))
    }

    /// Reads the rest, so the reader checks the whole item.
    async fn drain(&mut self) -> Result<(), RepoError> {
        while self.stream.try_next().await?.is_some() {}
        Ok(())
    }
}

/// Rebuilds one relation file (see the module doc).
async fn rebuild<W: AsyncWrite + Unpin>(
    reader: &Reader,
    newest: &Manifest,
    older: &[Older],
    out: &mut W,
) -> Result<u64, RepoError> {
    let mut sources = vec![Cursor::new(reader, newest)];
    let head = sources[0].header().await?;
    let truncation = head.truncation_blocks as usize;
    let length = head.reconstructed_blocks() as usize;
    // Per block: (source, byte offset in it); None: zeros.
    let mut map: Vec<Option<(usize, u64)>> = vec![None; length];
    let base = head.data_offset();
    for (i, &b) in head.blocks.iter().enumerate() {
        map[b as usize] = Some((0, base + i as u64 * BLOCK));
    }
    for o in older {
        let k = sources.len();
        match o {
            Older::Full(m) => {
                let blocks = (m.size / BLOCK) as usize;
                for (b, slot) in map.iter_mut().enumerate().take(truncation.min(blocks)) {
                    slot.get_or_insert((k, b as u64 * BLOCK));
                }
                sources.push(Cursor::new(reader, m));
                break;
            }
            Older::Incremental(m) => {
                let mut c = Cursor::new(reader, m);
                let h = c.header().await?;
                let base = h.data_offset();
                for (i, &b) in h.blocks.iter().enumerate() {
                    if (b as usize) < truncation {
                        map[b as usize].get_or_insert((k, base + i as u64 * BLOCK));
                    }
                }
                sources.push(c);
            }
        }
    }
    let mut block = vec![0u8; BLOCK as usize];
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, out);
    for slot in &map {
        match slot {
            None => block.fill(0),
            Some((k, off)) => sources[*k].read_at(*off, &mut block).await?,
        }
        out.write_all(&block).await.map_err(local)?;
    }
    out.flush().await.map_err(local)?;
    for s in &mut sources {
        s.drain().await?;
    }
    Ok(length as u64 * BLOCK)
}
