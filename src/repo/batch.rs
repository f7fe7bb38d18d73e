//! Batched destinations (`batch_interval`; docs/DESTINATIONS.md, "Batched
//! destinations"): a destination that takes no write as it happens but
//! receives, at an interval, what the other destinations already hold,
//! consolidated into few packs and one commit.
//!
//! A batched destination holds a repository of its own commits under the
//! same descriptor, key and recipients, with its own catalog in the state
//! directory, so that restoring from it alone needs nothing else. Its live
//! items follow the main repository's: each name's newest version, except
//! items another one supersedes (a WAL partial once its segment is stored),
//! which it never receives, or forgets at its next batch.
//!
//! The sidecar holds no identity (invariant 5 in docs/FORMAT.md's key
//! section), so it cannot open stored chunks to pack them anew. So each new
//! chunk a writer of this process stores is also sealed under a staging key
//! (one per window, wrapped to the recipients like any pack's key) and
//! appended to a staging file in the state directory; a batch copies those
//! sealed blobs into its packs. A chunk that was never staged (stored by
//! another process, before this one started, or past the staging cap) comes
//! with the whole pack that holds it, copied unchanged.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use jiff::Timestamp;

use super::datakey::DataKey;
use super::keys::ChunkId;
use super::manifest::{Commit, ContentIds, FORMAT_VERSION, Forget, ItemRecord, PackRecord};
use super::pack::{PackBuilder, PackId};
use super::{RepoError, Repository, local};
use crate::catalog::{Catalog, ItemHead};
use crate::ship::{Fanout, ShipError};

/// At most this many bytes are staged for one batched destination; past
/// it, new chunks are not staged and a batch copies their packs whole. A
/// batch that succeeds frees all but the newest window.
pub const STAGE_MAX_BYTES: u64 = 2 << 30;

/// The staging area of one batched destination: windows of sealed chunk
/// blobs, each under its own key. Shared by every writer of the process.
#[derive(Debug)]
pub struct BatchStage {
    dest: String,
    dir: PathBuf,
    recipients: Vec<age::x25519::Recipient>,
    state: Mutex<StageState>,
}

#[derive(Debug, Default)]
struct StageState {
    /// Oldest first; only the last may be open.
    windows: Vec<Window>,
    next: u64,
    bytes: u64,
    warned: bool,
}

#[derive(Debug)]
struct Window {
    n: u64,
    key: DataKey,
    wrapped: Arc<[u8]>,
    path: PathBuf,
    /// `None` once the window is closed (or its file failed).
    file: Option<std::fs::File>,
    len: u64,
    index: HashMap<ChunkId, Staged>,
}

#[derive(Debug, Clone, Copy)]
struct Staged {
    offset: u64,
    length: u32,
    raw_length: u32,
}

impl BatchStage {
    /// The staging area of batched destination `dest` under `state_dir`.
    /// Files an earlier process left are removed: their keys went with it.
    pub fn new(
        dest: &str,
        state_dir: &Path,
        recipients: &[age::x25519::Recipient],
    ) -> Result<BatchStage, RepoError> {
        let dir = stage_dir(state_dir, dest);
        crate::crashsafe::create_private_dir_all(&dir).map_err(local(&dir))?;
        for entry in std::fs::read_dir(&dir).map_err(local(&dir))? {
            let path = entry.map_err(local(&dir))?.path();
            if path.extension().is_some_and(|e| e == "stage") {
                std::fs::remove_file(&path).map_err(local(&path))?;
            }
        }
        Ok(BatchStage {
            dest: dest.to_owned(),
            dir,
            recipients: recipients.to_vec(),
            state: Mutex::default(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, StageState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Seals a new chunk under the open window's key and appends it. Best
    /// effort: a chunk not staged is copied with its whole pack later, so a
    /// failure here is logged and never fails the write.
    pub(crate) fn stage(&self, id: &ChunkId, compressed: &[u8], raw_length: u32) {
        let mut st = self.state();
        let st = &mut *st;
        let need = compressed.len() as u64 + super::datakey::BLOB_OVERHEAD as u64;
        if st.bytes + need > STAGE_MAX_BYTES {
            if !st.warned {
                st.warned = true;
                tracing::warn!(destination = %self.dest, cap = STAGE_MAX_BYTES,
                    "the staging area of this batched destination is full (its batches fail, or come too seldom): \
                     new chunks reach it by copying whole packs until a batch succeeds");
            }
            return;
        }
        if st.windows.last().is_none_or(|w| w.file.is_none()) {
            let n = st.next;
            st.next += 1;
            let path = self.dir.join(format!("{n}.stage"));
            let file = std::fs::OpenOptions::new()
                .create_new(true)
                .append(true)
                .mode(0o600)
                .open(&path);
            match file {
                Ok(file) => {
                    let (key, wrapped) = DataKey::generate(&self.recipients);
                    st.windows.push(Window {
                        n,
                        key,
                        wrapped: wrapped.into(),
                        path,
                        file: Some(file),
                        len: 0,
                        index: HashMap::new(),
                    });
                }
                Err(e) => {
                    tracing::warn!(destination = %self.dest, file = %path.display(), error = %e,
                        "cannot create a staging file for this batched destination; its next batch copies whole packs");
                    return;
                }
            }
        }
        let Some(w) = st.windows.last_mut() else {
            return;
        };
        if w.index.contains_key(id) {
            return;
        }
        let blob = w.key.seal_chunk(id, compressed);
        let Some(file) = &mut w.file else {
            return;
        };
        if let Err(e) = file.write_all(&blob) {
            tracing::warn!(destination = %self.dest, file = %w.path.display(), error = %e,
                "cannot append to the staging file of this batched destination; its next batch copies whole packs");
            // Whatever part was written is past every indexed blob.
            w.file = None;
            return;
        }
        let length = u32::try_from(blob.len()).expect("chunk blobs are at most a few MiB");
        w.index.insert(
            *id,
            Staged {
                offset: w.len,
                length,
                raw_length,
            },
        );
        w.len += u64::from(length);
        st.bytes += u64::from(length);
    }

    /// Closes the open window; chunks staged from now on go to a new one.
    /// Returns the number of the window closed, if one was open.
    fn close_open(&self) -> Option<u64> {
        let mut st = self.state();
        let w = st.windows.last_mut()?;
        w.file.take().map(|_| w.n)
    }

    fn lookup(&self, id: &ChunkId) -> Option<(u64, Staged)> {
        self.state()
            .windows
            .iter()
            .rev()
            .find_map(|w| w.index.get(id).map(|s| (w.n, *s)))
    }

    fn window(&self, n: u64) -> Option<(DataKey, Arc<[u8]>, PathBuf)> {
        self.state()
            .windows
            .iter()
            .find(|w| w.n == n)
            .map(|w| (w.key.clone(), w.wrapped.clone(), w.path.clone()))
    }

    /// Drops the windows older than `n` (a batch made their content
    /// durable, or copied it otherwise).
    fn drop_before(&self, n: u64) {
        let mut st = self.state();
        let (old, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut st.windows)
            .into_iter()
            .partition(|w| w.n < n);
        st.windows = kept;
        for w in old {
            st.bytes -= w.len;
            if let Err(e) = std::fs::remove_file(&w.path) {
                tracing::warn!(file = %w.path.display(), error = %e, "cannot remove a spent staging file");
            }
        }
        st.warned = false;
    }

    /// Bytes staged now.
    pub fn staged_bytes(&self) -> u64 {
        self.state().bytes
    }
}

fn stage_dir(state_dir: &Path, dest: &str) -> PathBuf {
    // Destination names are `[a-z0-9_-]+` (config validation).
    state_dir.join("batch").join(dest)
}

/// What one batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BatchReport {
    /// The commit object it stored; `None` when there was nothing to send.
    pub commit: Option<String>,
    /// Items it added.
    pub items: usize,
    /// Items it forgot (superseded or forgotten in the main repository).
    pub forgotten: usize,
    /// Packs it built from staged chunks.
    pub packs_built: usize,
    /// Packs it copied whole from the other destinations.
    pub packs_copied: usize,
    /// Bytes of packs it stored.
    pub pack_bytes: u64,
    /// Objects it stored (packs and the commit).
    pub objects: usize,
}

/// Decides which items a batched destination never needs: given an item's
/// kind and name, the name of the item that supersedes it once present
/// (the WAL module's rule: a partial by its segment).
pub type Supersedes<'a> = &'a (dyn Fn(&str, &str) -> Option<String> + Sync);

impl Repository {
    /// Opens the repository a batched destination holds: the same
    /// descriptor and key as this one (written there first when the
    /// destination has none), its own catalog under the state directory.
    pub async fn open_batched(&self, fanout: Fanout) -> Result<Repository, RepoError> {
        let Some(dest) = fanout.destinations().first().cloned() else {
            return Err(RepoError::Malformed {
                object: "batched destination".into(),
                what: "no destination".into(),
            });
        };
        dest.prepare().await?;
        let ours = &self.inner.descriptor;
        match dest.get(super::DESCRIPTOR_OBJECT).await {
            Ok(bytes) => {
                let theirs = super::Descriptor::decode(&bytes)?;
                if theirs.repository_id != ours.repository_id {
                    return Err(RepoError::DescriptorsDiffer {
                        a: self
                            .inner
                            .fanout
                            .destinations()
                            .first()
                            .map(|d| d.name().to_owned())
                            .unwrap_or_default(),
                        a_id: ours.repository_id.clone(),
                        b: dest.name().to_owned(),
                        b_id: theirs.repository_id,
                    });
                }
            }
            Err(ShipError::NotFound { .. }) => {
                // The key object first: a descriptor is what makes a store a
                // repository, and it must never name a key that is absent.
                let key_name = super::key_object_name(&ours.key_id);
                let key_obj = self.inner.fanout.get(&key_name).await?;
                dest.put_if_absent(&key_name, key_obj).await?;
                let descriptor = self.inner.fanout.get(super::DESCRIPTOR_OBJECT).await?;
                dest.put_if_absent(super::DESCRIPTOR_OBJECT, descriptor)
                    .await?;
            }
            Err(e) => return Err(e.into()),
        }
        let dir = stage_dir(&self.inner.opts.state_dir, dest.name());
        crate::crashsafe::create_private_dir_all(&dir).map_err(local(&dir))?;
        let catalog = Catalog::open(&dir.join(super::CATALOG_FILE_NAME))?;
        let mut opts = self.inner.opts.clone();
        opts.state_dir = dir;
        let repo = Repository {
            inner: Arc::new(super::Inner {
                fanout,
                key: self.inner.key.clone(),
                opts,
                descriptor: ours.clone(),
                catalog: Mutex::new(catalog),
                writer_id: hex::encode(rand::random::<[u8; 8]>()),
                commit_lock: tokio::sync::Mutex::new(()),
                inflight: Mutex::new(Default::default()),
                inflight_next: std::sync::atomic::AtomicU64::new(0),
                skipped: Mutex::new(Vec::new()),
                freshness: Mutex::default(),
                batch_stages: Default::default(),
            }),
        };
        repo.sync_catalog().await?;
        Ok(repo)
    }

    /// Stages new chunks for `stage`'s batched destination from now on.
    pub fn attach_batch_stage(&self, stage: Arc<BatchStage>) {
        self.inner
            .batch_stages
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(stage);
    }

    /// Sends one batch to `batched` (opened with [`Self::open_batched`]):
    /// the items this repository holds that it lacks, their chunks in new
    /// packs (from `stage`) or in copies of this repository's packs, and
    /// forgets for what it holds that this repository no longer does, in
    /// one commit. Sends nothing when they agree.
    pub async fn send_batch(
        &self,
        batched: &Repository,
        stage: Option<&BatchStage>,
        supersedes: Supersedes<'_>,
    ) -> Result<BatchReport, RepoError> {
        let cut = stage.and_then(BatchStage::close_open);
        let heads = self.catalog().item_heads()?;
        let target = live_heads(&heads, supersedes);
        let held = batched.catalog().item_heads()?;
        let mut newest_held: HashMap<&str, &ItemHead> = HashMap::new();
        for h in &held {
            newest_held.insert(&h.name, h);
        }
        let mut forget: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut forgotten = 0;
        for h in &held {
            let newest = newest_held
                .get(h.name.as_str())
                .is_some_and(|n| std::ptr::eq(*n, h));
            let wanted = target
                .get(h.name.as_str())
                .is_some_and(|(_, t)| t.hash == h.hash);
            if !(newest && wanted) {
                forgotten += 1;
                forget
                    .entry(h.commit.clone())
                    .or_default()
                    .push(h.name.clone());
            }
        }
        let mut items = Vec::new();
        {
            let cat = self.catalog();
            // In the main repository's order: a restore that reads the
            // batched commit sees the items as they were written.
            let mut adds: Vec<(usize, &ItemHead)> = target
                .values()
                .filter(|(_, t)| {
                    newest_held
                        .get(t.name.as_str())
                        .is_none_or(|h| h.hash != t.hash)
                })
                .copied()
                .collect();
            adds.sort_by_key(|(i, _)| *i);
            for (_, h) in adds {
                let Some(row) = cat.item_in_commit(&h.name, &h.commit)? else {
                    continue;
                };
                items.push(ItemRecord {
                    kind: row.kind,
                    time: row.time,
                    attrs: row.attrs,
                    manifest: row.manifest,
                });
            }
        }
        if items.is_empty() && forget.is_empty() {
            finish_stage(stage, cut);
            return Ok(BatchReport::default());
        }

        // Where each chunk the batched destination lacks comes from.
        let mut by_window: BTreeMap<u64, Vec<(ChunkId, Staged)>> = BTreeMap::new();
        let mut whole: Vec<PackId> = Vec::new();
        {
            let ours = self.catalog();
            let theirs = batched.catalog();
            let mut seen = HashSet::new();
            let mut copied = HashSet::new();
            for item in &items {
                for (id, _) in &item.manifest.chunks {
                    if !seen.insert(*id) || theirs.has_chunk(id)? {
                        continue;
                    }
                    if let Some((n, s)) = stage.and_then(|st| st.lookup(id)) {
                        by_window.entry(n).or_default().push((*id, s));
                        continue;
                    }
                    let Some(loc) = ours.chunk_location(id)? else {
                        return Err(RepoError::MissingChunk {
                            item: item.manifest.name.clone(),
                            chunk: *id,
                        });
                    };
                    if copied.insert(loc.pack) {
                        whole.push(loc.pack);
                    }
                }
            }
        }

        let mut report = BatchReport {
            items: items.len(),
            forgotten,
            ..Default::default()
        };
        let mut packs = Vec::new();
        let mut cids = ContentIds::new();
        let mut note =
            |report: &mut BatchReport, record: PackRecord, found: Vec<(String, String)>| {
                report.pack_bytes += record.size;
                report.objects += 1;
                let object = PackId::parse(&record.id).map(|p| p.object_name());
                if let Some(object) = object {
                    for (dest, cid) in found {
                        cids.entry(dest).or_default().insert(object.clone(), cid);
                    }
                }
                packs.push(record);
            };
        for pack in whole {
            let object = pack.object_name();
            let bytes = self.inner.fanout.get(&object).await?;
            if PackId::of(&bytes) != pack {
                return Err(RepoError::Swapped {
                    object,
                    what: "its bytes do not hash to its name".into(),
                });
            }
            let entries = self.catalog().pack_entries(&pack)?;
            let found = batched.inner.fanout.content_ids(&object, &bytes);
            let size = bytes.len() as u64;
            batched.inner.fanout.put_if_absent(&object, bytes).await?;
            report.packs_copied += 1;
            note(
                &mut report,
                PackRecord {
                    id: pack.to_string(),
                    size,
                    chunks: entries,
                },
                found,
            );
        }
        let pack_size = self.inner.opts.pack_size;
        for (n, chunks) in by_window {
            let Some(stage) = stage else { continue };
            let Some((key, wrapped, path)) = stage.window(n) else {
                // Dropped meanwhile: not possible while this batch runs,
                // as only a batch drops windows.
                continue;
            };
            let mut rest = chunks.as_slice();
            while !rest.is_empty() {
                let (bytes, entries, taken) = {
                    let (key, wrapped, file, rest) =
                        (key.clone(), wrapped.clone(), path.clone(), rest.to_vec());
                    let meta = self.inner.key.clone();
                    tokio::task::spawn_blocking(move || {
                        build_pack(key, &wrapped, &file, &rest, pack_size, &meta)
                    })
                    .await
                    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
                    .map_err(local(&path))?
                };
                rest = &rest[taken..];
                let id = PackId::of(&bytes);
                let object = id.object_name();
                let found = batched.inner.fanout.content_ids(&object, &bytes);
                let size = bytes.len() as u64;
                batched
                    .inner
                    .fanout
                    .put_if_absent(&object, Bytes::from(bytes))
                    .await?;
                report.packs_built += 1;
                note(
                    &mut report,
                    PackRecord {
                        id: id.to_string(),
                        size,
                        chunks: entries,
                    },
                    found,
                );
            }
        }
        let forget = forget
            .into_iter()
            .map(|(commit, names)| Forget { commit, names })
            .collect();
        let object = batched.store_commit(packs, items, forget, cids).await?;
        report.objects += 1;
        report.commit = Some(object);
        finish_stage(stage, cut);
        Ok(report)
    }

    /// Stores one commit of packs already uploaded, items and forgets, and
    /// records it in the local catalog.
    async fn store_commit(
        &self,
        packs: Vec<PackRecord>,
        items: Vec<ItemRecord>,
        forget: Vec<Forget>,
        mut cids: ContentIds,
    ) -> Result<String, RepoError> {
        let inner = &self.inner;
        let _serial = inner.commit_lock.lock().await;
        let seq = self.catalog().next_seq()?;
        for (dest, objects) in self.catalog().uncarried_cids()? {
            cids.entry(dest).or_default().extend(objects);
        }
        let mut commit = Commit {
            version: FORMAT_VERSION,
            seq,
            writer: inner.writer_id.clone(),
            time: Timestamp::now(),
            packs,
            items,
            forget,
            gc: Default::default(),
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
        self.catalog().note_cids(&object, &own)?;
        Ok(object)
    }
}

/// After a batch: the windows before the one it closed are spent (what
/// they held is in the batched destination now, or was not needed).
fn finish_stage(stage: Option<&BatchStage>, cut: Option<u64>) {
    if let (Some(stage), Some(cut)) = (stage, cut) {
        stage.drop_before(cut);
    }
}

/// The newest item of each name with its place in `heads`, without those
/// another present item supersedes.
fn live_heads<'a>(
    heads: &'a [ItemHead],
    supersedes: Supersedes<'_>,
) -> HashMap<&'a str, (usize, &'a ItemHead)> {
    let mut newest: HashMap<&str, (usize, &ItemHead)> = HashMap::new();
    for (i, h) in heads.iter().enumerate() {
        newest.insert(&h.name, (i, h));
    }
    let superseded: Vec<&str> = newest
        .values()
        .filter(|(_, h)| {
            supersedes(&h.kind, &h.name).is_some_and(|by| newest.contains_key(by.as_str()))
        })
        .map(|(_, h)| h.name.as_str())
        .collect();
    for name in superseded {
        newest.remove(name);
    }
    newest
}

/// One pack from staged blobs of one window, at most `pack_size` bytes
/// (or one blob): its bytes, entries and how many chunks it took.
fn build_pack(
    key: DataKey,
    wrapped: &[u8],
    path: &Path,
    chunks: &[(ChunkId, Staged)],
    pack_size: usize,
    meta: &super::RepositoryKey,
) -> std::io::Result<(Vec<u8>, Vec<super::PackEntry>, usize)> {
    let file = std::fs::File::open(path)?;
    let mut pack = PackBuilder::with_key(key, wrapped);
    let mut taken = 0;
    let mut blob = Vec::new();
    for (id, s) in chunks {
        if taken > 0 && pack.len() + s.length as usize > pack_size {
            break;
        }
        blob.resize(s.length as usize, 0);
        file.read_exact_at(&mut blob, s.offset)?;
        pack.push_blob(*id, &blob, s.raw_length);
        taken += 1;
    }
    let (bytes, entries) = pack.finish(meta);
    Ok((bytes, entries, taken))
}
