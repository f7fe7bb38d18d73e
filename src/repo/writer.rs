//! Writing items: chunk → dedup → zstd → seal under the pack's data key →
//! pack → upload → commit.
//!
//! Memory is bounded by the pack being filled, one pack being uploaded, and a
//! few chunks in flight through compression, whatever the item's size.

use std::collections::HashSet;

use bytes::Bytes;
use futures::TryStreamExt;
use jiff::Timestamp;
use tokio::io::AsyncRead;
use tokio::task::JoinHandle;

use super::chunking::{self, Chunking};
use super::keys::ChunkId;
use super::manifest::{
    Commit, ContentIds, FORMAT_VERSION, ItemHasher, ItemRecord, Manifest, PackRecord,
};
use super::pack::{PackBuilder, PackId};
use super::{RepoError, Repository};

/// Bytes of chunks (at their largest) prepared per blocking task by
/// [`Writer::put`]: eight 128 KiB page chunks, one content-defined chunk
/// (whose maximum is 1 MiB), so memory stays as it was for those.
const BYTES_PER_TASK: usize = 1 << 20;

/// What a commit made durable.
#[derive(Debug, Clone)]
pub struct CommitInfo {
    /// The commit object's name.
    pub object: String,
    /// Items it recorded.
    pub items: usize,
    /// Packs it recorded.
    pub packs: usize,
    /// Bytes of packs uploaded for it.
    pub pack_bytes: u64,
}

/// An uploaded pack: its record, its object name and its content ids.
type Uploaded = (PackRecord, String, Vec<(String, String)>);

/// Writes items into the repository. Items become visible (in the store and
/// the catalog) only at [`Writer::commit`].
#[derive(Debug)]
pub struct Writer {
    repo: Repository,
    /// The pack being filled; created with its data key at its first chunk.
    pack: Option<PackBuilder>,
    /// Chunks in this writer's uncommitted packs (uploaded or open).
    pending: HashSet<ChunkId>,
    uploaded: Vec<PackRecord>,
    /// Content ids of the uploaded packs in content-addressed destinations.
    cids: ContentIds,
    items: Vec<ItemRecord>,
    upload: Option<JoinHandle<Result<Uploaded, RepoError>>>,
    /// Registered while this writer holds uncommitted items or packs: its
    /// deduplication decisions are not in any commit yet, so garbage
    /// collection in this process must not delete a pack marked after they
    /// were made.
    inflight: Option<super::InflightGuard>,
}

/// A chunk ready for [`Writer::put_prepared`]: its id and length, and its
/// compressed bytes when the catalog did not hold it when it was prepared.
#[derive(Debug, Clone)]
pub struct PreparedChunk {
    id: ChunkId,
    raw_len: u32,
    /// The compressed chunk, when it is not stored yet.
    compressed: Option<Vec<u8>>,
    /// When it was decided to reuse the stored chunk (no compressed bytes):
    /// the writer that stores it counts as in flight from then on, for
    /// garbage collection (`Repository::oldest_inflight`).
    decided: Option<Timestamp>,
}

impl PreparedChunk {
    /// The chunk's id.
    pub fn id(&self) -> ChunkId {
        self.id
    }

    /// Its plaintext length.
    pub fn raw_len(&self) -> u32 {
        self.raw_len
    }

    /// The same chunk as a reference to what is stored: once an item using
    /// it was committed, later items need only its id. Drops the compressed
    /// bytes.
    pub fn stored(&self) -> PreparedChunk {
        PreparedChunk {
            id: self.id,
            raw_len: self.raw_len,
            compressed: None,
            decided: Some(Timestamp::now()),
        }
    }
}

/// Prepares chunks on the calling thread, which may block (a catalog look-up
/// and zstd per chunk), with one compression context for all of them: for a
/// caller that already works off the async runtime and cuts its own chunks
/// (the WAL streamer), instead of a blocking task per chunk in
/// [`Writer::put`].
pub struct ChunkPreparer {
    inner: std::sync::Arc<super::Inner>,
    zstd: zstd::bulk::Compressor<'static>,
    /// Compression output, reused: a fresh buffer per chunk would be sized
    /// for the worst case and kept that large.
    scratch: Vec<u8>,
}

impl std::fmt::Debug for ChunkPreparer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkPreparer").finish_non_exhaustive()
    }
}

impl ChunkPreparer {
    pub(super) fn new(repo: &Repository) -> Result<ChunkPreparer, RepoError> {
        let zstd = zstd::bulk::Compressor::new(repo.inner.opts.zstd_level).map_err(zstd_err)?;
        Ok(ChunkPreparer {
            inner: repo.inner.clone(),
            zstd,
            scratch: Vec::new(),
        })
    }

    /// Computes `data`'s chunk id and, unless the catalog holds it, its
    /// compressed form (the same bytes as [`Writer::put`] stores).
    pub fn prepare(&mut self, data: &[u8]) -> Result<PreparedChunk, RepoError> {
        let ChunkPreparer {
            inner,
            zstd,
            scratch,
        } = self;
        prepare(inner, data, |data| {
            scratch.clear();
            scratch.reserve(zstd::zstd_safe::compress_bound(data.len()));
            zstd.compress_to_buffer(data, scratch)?;
            Ok(scratch.to_vec())
        })
    }
}

fn zstd_err(e: std::io::Error) -> RepoError {
    RepoError::Local {
        path: "zstd".into(),
        source: e,
    }
}

/// A chunk's id, the catalog look-up, and `compress` when it is new.
fn prepare(
    inner: &super::Inner,
    data: &[u8],
    compress: impl FnOnce(&[u8]) -> std::io::Result<Vec<u8>>,
) -> Result<PreparedChunk, RepoError> {
    let id = inner.key.chunk_id(data);
    // A stale catalog may miss another host's marks: store anew instead.
    let known = inner.catalog_fresh()
        && inner
            .catalog
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .has_chunk(&id)?;
    let compressed = if known {
        None
    } else {
        Some(compress(data).map_err(zstd_err)?)
    };
    let raw_len = u32::try_from(data.len()).expect("chunks are at most a few MiB");
    Ok(PreparedChunk {
        id,
        raw_len,
        decided: compressed.is_none().then(Timestamp::now),
        compressed,
    })
}

impl Writer {
    pub(super) fn new(repo: Repository) -> Self {
        Writer {
            repo,
            pack: None,
            pending: HashSet::new(),
            uploaded: Vec::new(),
            cids: ContentIds::new(),
            items: Vec::new(),
            upload: None,
            inflight: None,
        }
    }

    /// Registers this writer's uncommitted work (from its first decision
    /// until its commit or abandon).
    fn begin(&mut self) {
        self.begin_at(Timestamp::now());
    }

    /// The same, for a decision made at `at` (chunks prepared earlier).
    fn begin_at(&mut self, at: Timestamp) {
        match &mut self.inflight {
            Some(g) => g.since(at),
            None => self.inflight = Some(self.repo.register_inflight(at)),
        }
    }

    /// Puts an item of attributes only, with no data (a record, a marker,
    /// a report): not yet committed.
    pub async fn put_record(
        &mut self,
        name: &str,
        kind: &str,
        attrs: serde_json::Value,
    ) -> Result<Manifest, RepoError> {
        self.put(name, kind, attrs, Chunking::Cdc, &b""[..]).await
    }

    /// Stores everything `reader` yields as item `name` and returns its
    /// manifest. Chunks already stored are not stored again.
    pub async fn put<R>(
        &mut self,
        name: &str,
        kind: &str,
        attrs: serde_json::Value,
        chunking: Chunking,
        reader: R,
    ) -> Result<Manifest, RepoError>
    where
        R: AsyncRead + Unpin + Send,
    {
        self.begin();
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get()) + 1;
        let inner = self.repo.inner.clone();
        let input_err = |source| RepoError::Input {
            item: name.to_owned(),
            source,
        };
        // Several chunks per blocking task: a task per 128 KiB chunk made
        // thread wake-ups a sixth of a base backup's CPU.
        let mut processed = chunking::chunks(chunking, reader)
            .map_err(input_err)
            .try_chunks((BYTES_PER_TASK / chunking.max_chunk() as usize).max(1))
            .map_err(|e| e.1)
            .map_ok(|batch| {
                let inner = inner.clone();
                async move {
                    let job = tokio::task::spawn_blocking(
                        move || -> Result<Vec<PreparedChunk>, RepoError> {
                            batch
                                .iter()
                                .map(|data| {
                                    prepare(&inner, data, |data| {
                                        compress(data, inner.opts.zstd_level)
                                    })
                                })
                                .collect()
                        },
                    );
                    match job.await {
                        Ok(r) => r,
                        Err(e) => std::panic::resume_unwind(e.into_panic()),
                    }
                }
            })
            .try_buffered(parallel);

        let mut hasher = ItemHasher::new(self.repo.key());
        let mut size = 0u64;
        let mut chunks = Vec::new();
        while let Some(batch) = processed.try_next().await? {
            for p in batch {
                hasher.update(&p.id, p.raw_len);
                size += u64::from(p.raw_len);
                chunks.push((p.id, p.raw_len));
                self.add_chunk(p).await?;
            }
        }
        self.record(name, kind, attrs, chunking, size, hasher, chunks)
    }

    /// Stores chunks prepared elsewhere (see [`ChunkPreparer`]) as item
    /// `name`, in order, and returns its manifest. A chunk without
    /// compressed bytes must be stored already (committed, or in this
    /// writer's uncommitted packs): a manifest never names a chunk that is
    /// not, so this refuses one instead.
    pub async fn put_prepared(
        &mut self,
        name: &str,
        kind: &str,
        attrs: serde_json::Value,
        chunking: Chunking,
        prepared: Vec<PreparedChunk>,
    ) -> Result<Manifest, RepoError> {
        // From the earliest reuse decision among the prepared chunks: the
        // preparer decided before this call.
        let earliest = prepared.iter().filter_map(|p| p.decided).min();
        self.begin_at(earliest.map_or_else(Timestamp::now, |e| e.min(Timestamp::now())));
        let mut hasher = ItemHasher::new(self.repo.key());
        let mut size = 0u64;
        let mut chunks = Vec::with_capacity(prepared.len());
        let last = prepared.len().saturating_sub(1);
        for (i, p) in prepared.into_iter().enumerate() {
            let fits = match chunking {
                Chunking::Fixed(n) => p.raw_len == n || (i == last && p.raw_len <= n),
                Chunking::Cdc => p.raw_len <= chunking.max_chunk(),
            };
            // `holds_chunk`, not `has_chunk`: a chunk prepared as stored may
            // have been marked since; it is still there, and this writer's
            // registration keeps garbage collection from deleting it.
            let stored = p.compressed.is_some()
                || self.pending.contains(&p.id)
                || self.repo.catalog().holds_chunk(&p.id)?;
            if !fits || !stored {
                return Err(RepoError::Malformed {
                    object: name.to_owned(),
                    what: format!(
                        "chunk {i} ({} bytes) {}",
                        p.raw_len,
                        if fits {
                            "is not stored and came without its data"
                        } else {
                            "does not fit the item's chunking"
                        }
                    ),
                });
            }
            hasher.update(&p.id, p.raw_len);
            size += u64::from(p.raw_len);
            chunks.push((p.id, p.raw_len));
            self.add_chunk(p).await?;
        }
        self.record(name, kind, attrs, chunking, size, hasher, chunks)
    }

    /// Replaces the attributes of the uncommitted item `name` put last:
    /// for what is known only once its data was read (a snapshot's size,
    /// how long its source took). Returns whether there was such an item.
    pub fn set_attrs(&mut self, name: &str, attrs: serde_json::Value) -> bool {
        match self
            .items
            .iter_mut()
            .rev()
            .find(|i| i.manifest.name == name)
        {
            Some(item) => {
                item.attrs = attrs;
                true
            }
            None => false,
        }
    }

    /// Adds a new chunk's blob to the open pack (once per writer).
    async fn add_chunk(&mut self, p: PreparedChunk) -> Result<(), RepoError> {
        if let Some(compressed) = p.compressed
            && self.pending.insert(p.id)
        {
            let inner = &self.repo.inner;
            let pack = self
                .pack
                .get_or_insert_with(|| PackBuilder::new(&inner.opts.recipients));
            pack.push(p.id, &compressed, p.raw_len);
            inner.stage_for_batches(&p.id, &compressed, p.raw_len);
            if pack.len() >= inner.opts.pack_size {
                self.flush_pack().await?;
            }
        }
        Ok(())
    }

    /// Records an item whose chunks were added; it is committed with them.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        name: &str,
        kind: &str,
        attrs: serde_json::Value,
        chunking: Chunking,
        size: u64,
        hasher: ItemHasher,
        chunks: Vec<(ChunkId, u32)>,
    ) -> Result<Manifest, RepoError> {
        let manifest = Manifest {
            name: name.to_owned(),
            size,
            chunker: chunking,
            hash: hasher.finish(),
            chunks,
        };
        self.items.push(ItemRecord {
            kind: kind.to_owned(),
            time: Timestamp::now(),
            attrs,
            manifest: manifest.clone(),
        });
        Ok(manifest)
    }

    /// Seals the open pack and starts uploading it, after the previous upload
    /// finished (one upload in flight bounds memory to two packs).
    async fn flush_pack(&mut self) -> Result<(), RepoError> {
        self.finish_upload().await?;
        let Some(pack) = self.pack.take() else {
            return Ok(());
        };
        let inner = self.repo.inner.clone();
        self.upload = Some(tokio::spawn(async move {
            let inner2 = inner.clone();
            let (bytes, entries, id, cids) = tokio::task::spawn_blocking(move || {
                let (bytes, entries) = pack.finish(&inner2.key);
                let id = PackId::of(&bytes);
                // Hashes the pack only when a destination is content-addressed.
                let cids = inner2.fanout.content_ids(&id.object_name(), &bytes);
                (bytes, entries, id, cids)
            })
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            let size = bytes.len() as u64;
            inner
                .fanout
                .put_if_absent(&id.object_name(), Bytes::from(bytes))
                .await?;
            Ok((
                PackRecord {
                    id: id.to_string(),
                    size,
                    chunks: entries,
                },
                id.object_name(),
                cids,
            ))
        }));
        Ok(())
    }

    async fn finish_upload(&mut self) -> Result<(), RepoError> {
        if let Some(handle) = self.upload.take() {
            let (record, object, cids) = handle
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
            for (dest, cid) in cids {
                self.cids
                    .entry(dest)
                    .or_default()
                    .insert(object.clone(), cid);
            }
            self.uploaded.push(record);
        }
        Ok(())
    }

    /// Makes every item put since the last commit durable: uploads the open
    /// pack, then stores the commit object in every destination, then records
    /// it in the local catalog. Returns `None` when there was nothing to commit.
    ///
    /// On error nothing is recorded; the items must be put again.
    pub async fn commit(&mut self) -> Result<Option<CommitInfo>, RepoError> {
        let result = self.try_commit().await;
        if result.is_err() {
            self.abandon().await;
        }
        result
    }

    async fn try_commit(&mut self) -> Result<Option<CommitInfo>, RepoError> {
        self.flush_pack().await?;
        self.finish_upload().await?;
        if self.items.is_empty() && self.uploaded.is_empty() {
            return Ok(None);
        }
        let packs = std::mem::take(&mut self.uploaded);
        let items = std::mem::take(&mut self.items);
        let info = (items.len(), packs.len(), packs.iter().map(|p| p.size).sum());
        let object = self
            .repo
            .store_commit(
                packs,
                items,
                Vec::new(),
                Default::default(),
                std::mem::take(&mut self.cids),
                Timestamp::now(),
            )
            .await?;
        self.pending.clear();
        self.inflight = None;
        Ok(Some(CommitInfo {
            object,
            items: info.0,
            packs: info.1,
            pack_bytes: info.2,
        }))
    }

    /// Drops everything uncommitted (uploaded packs stay as unreferenced
    /// garbage for a later prune).
    pub async fn abandon(&mut self) {
        if let Some(h) = self.upload.take() {
            let _ = h.await;
        }
        self.pack = None;
        self.pending.clear();
        self.uploaded.clear();
        self.cids.clear();
        self.items.clear();
        self.inflight = None;
    }
}

thread_local! {
    /// One zstd context per blocking-pool thread, with its level: a fresh
    /// context per chunk allocated and zeroed its tables every time, 6 % of
    /// a base backup's CPU (perf, bench/basebackup).
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

/// `zstd::bulk::compress`, reusing this thread's context.
fn compress(data: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.as_ref().is_none_or(|(l, _)| *l != level) {
            *cell = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        match cell.as_mut() {
            Some((_, c)) => c.compress(data),
            None => zstd::bulk::compress(data, level),
        }
    })
}

impl Repository {
    /// Stores a commit that only removes: forgets items and records garbage
    /// collection (version 2, docs/FORMAT.md), dated `time`. Returns its
    /// object name, or `None` when there is nothing to record.
    pub async fn commit_removals(
        &self,
        forget: Vec<super::Forget>,
        gc: super::GcRecord,
        time: Timestamp,
    ) -> Result<Option<String>, RepoError> {
        if forget.is_empty() && gc.is_empty() {
            return Ok(None);
        }
        let object = self
            .store_commit(Vec::new(), Vec::new(), forget, gc, ContentIds::new(), time)
            .await?;
        Ok(Some(object))
    }

    /// Stores one commit (packs already uploaded, items, forgets, garbage
    /// collection, content ids of the objects it introduces) in every
    /// destination, then records it in the local catalog. The one place a
    /// commit is made: writers, removals and batches.
    pub(super) async fn store_commit(
        &self,
        packs: Vec<PackRecord>,
        items: Vec<ItemRecord>,
        forget: Vec<super::Forget>,
        gc: super::GcRecord,
        new_cids: ContentIds,
        time: Timestamp,
    ) -> Result<String, RepoError> {
        let inner = &self.inner;
        let _serial = inner.commit_lock.lock().await;
        let seq = self.catalog().next_seq()?;
        let mut cids = self.catalog().uncarried_cids()?;
        for (dest, objects) in new_cids {
            cids.entry(dest).or_default().extend(objects);
        }
        let mut commit = Commit {
            version: FORMAT_VERSION,
            seq,
            writer: inner.writer_id.clone(),
            time,
            packs,
            items,
            forget,
            gc,
            cids,
        };
        commit.version = commit.version_for();
        let object = commit.object_name();
        let bytes = commit.encode(&inner.key);
        let own = inner.fanout.content_ids(&object, &bytes);
        inner
            .fanout
            .put_if_absent(&object, Bytes::from(bytes))
            .await?;
        self.catalog().apply(&object, &commit)?;
        // A commit cannot hold its own id: the next one carries it.
        self.catalog().note_cids(&object, &own)?;
        Ok(object)
    }
}
