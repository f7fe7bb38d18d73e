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
use super::manifest::{ContentIds, Forget, ItemRecord, PackRecord};
use super::pack::{PackBuilder, PackId};
use super::{RepoError, Repository, local};
use crate::repo::catalog::{Catalog, ItemHead};
use crate::ship::{Fanout, ShipError};

/// At most this many bytes are staged for one batched destination; past
/// it, new chunks are not staged and a batch copies their packs whole. A
/// batch that succeeds frees all but the newest window.
pub const STAGE_MAX_BYTES: u64 = 2 << 30;

/// A staging file begins with this, then the wrapped key's length (u32 LE)
/// and the wrapped key.
const STAGE_MAGIC: &[u8; 8] = b"PITRSTG1";
/// A wrapped key is an age file to the recipients: a few hundred bytes
/// each. A header claiming more is not one of ours.
const MAX_WRAPPED: u32 = 1 << 20;
/// Chunk id (32), raw length u32 LE, blob length u32 LE, MAC (32).
const RECORD_HEADER: usize = 72;
/// Chunks are at most a few MiB (FastCDC's maximum is 1 MiB, zstd's worst
/// case adds little): a record claiming more ends the readable part.
const MAX_BLOB: u32 = 64 << 20;
const STAGE_MAC_CONTEXT: &str = "pitr 2026-12 batch staging record MAC v1";

/// The staging area of one batched destination: windows of sealed chunk
/// blobs, each under its own key. Shared by every writer of the process.
///
/// A window is one file: `PITRSTG1`, the wrapped key, then records of a
/// chunk id, its lengths, a MAC under the repository key (so that a record
/// damaged on disk is never packed), and the sealed blob. Files survive a
/// restart: their blobs are copied into packs without opening them, so
/// the lost key does not matter for them.
#[derive(Debug)]
pub struct BatchStage {
    dest: String,
    dir: PathBuf,
    recipients: Vec<age::x25519::Recipient>,
    mac_key: [u8; 32],
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
    /// `None` for a window an earlier process left: closed for good.
    key: Option<DataKey>,
    wrapped: Arc<[u8]>,
    path: PathBuf,
    /// `None` once the window is closed (or its file failed).
    file: Option<std::fs::File>,
    len: u64,
    index: HashMap<ChunkId, Staged>,
}

/// Where a staged record is: `offset` is the record's, `length` its blob's.
#[derive(Debug, Clone, Copy)]
struct Staged {
    offset: u64,
    length: u32,
    raw_length: u32,
}

fn record_mac(key: &[u8; 32], id: &ChunkId, raw_length: u32, blob: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(&id.0);
    h.update(&raw_length.to_le_bytes());
    h.update(&(blob.len() as u64).to_le_bytes());
    h.update(blob);
    *h.finalize().as_bytes()
}

impl BatchStage {
    /// The staging area of batched destination `dest` under `state_dir`,
    /// with what an earlier process staged there (records that do not
    /// parse end a file's readable part; a file that does not parse at
    /// all is removed).
    pub fn new(
        dest: &str,
        state_dir: &Path,
        recipients: &[age::x25519::Recipient],
        key: &super::RepositoryKey,
    ) -> Result<BatchStage, RepoError> {
        let dir = stage_dir(state_dir, dest);
        crate::crashsafe::create_private_dir_all(&dir).map_err(local(&dir))?;
        let mut st = StageState::default();
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(local(&dir))? {
            let path = entry.map_err(local(&dir))?.path();
            let n = path
                .file_name()
                .and_then(|f| f.to_str())
                .and_then(|f| f.strip_suffix(".stage"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(n) = n {
                found.push((n, path));
            }
        }
        found.sort();
        for (n, path) in found {
            match recover(&path) {
                Ok(Some((wrapped, index, len))) => {
                    st.bytes += len;
                    st.next = n + 1;
                    st.windows.push(Window {
                        n,
                        key: None,
                        wrapped,
                        path,
                        file: None,
                        len,
                        index,
                    });
                }
                Ok(None) => {
                    tracing::warn!(file = %path.display(), "removing a staging file that is not one");
                    std::fs::remove_file(&path).map_err(local(&path))?;
                }
                Err(e) => return Err(RepoError::Local { path, source: e }),
            }
        }
        Ok(BatchStage {
            dest: dest.to_owned(),
            dir,
            recipients: recipients.to_vec(),
            mac_key: blake3::derive_key(STAGE_MAC_CONTEXT, key.meta_key()),
            state: Mutex::new(st),
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
        let need = (RECORD_HEADER + compressed.len() + super::datakey::BLOB_OVERHEAD) as u64;
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
            let (key, wrapped) = DataKey::generate(&self.recipients);
            let mut header = Vec::with_capacity(12 + wrapped.len());
            header.extend_from_slice(STAGE_MAGIC);
            header.extend_from_slice(&(wrapped.len() as u32).to_le_bytes());
            header.extend_from_slice(&wrapped);
            let file = std::fs::OpenOptions::new()
                .create_new(true)
                .append(true)
                .mode(0o600)
                .open(&path)
                .and_then(|mut f| f.write_all(&header).map(|()| f));
            match file {
                Ok(file) => {
                    st.bytes += header.len() as u64;
                    st.windows.push(Window {
                        n,
                        key: Some(key),
                        wrapped: wrapped.into(),
                        path,
                        file: Some(file),
                        len: header.len() as u64,
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
        let Some(key) = &w.key else { return };
        let blob = key.seal_chunk(id, compressed);
        let length = u32::try_from(blob.len()).expect("chunk blobs are at most a few MiB");
        let mut record = Vec::with_capacity(RECORD_HEADER + blob.len());
        record.extend_from_slice(&id.0);
        record.extend_from_slice(&raw_length.to_le_bytes());
        record.extend_from_slice(&length.to_le_bytes());
        record.extend_from_slice(&record_mac(&self.mac_key, id, raw_length, &blob));
        record.extend_from_slice(&blob);
        let Some(file) = &mut w.file else {
            return;
        };
        if let Err(e) = file.write_all(&record) {
            tracing::warn!(destination = %self.dest, file = %w.path.display(), error = %e,
                "cannot append to the staging file of this batched destination; its next batch copies whole packs");
            // Whatever part was written is past every indexed record.
            w.file = None;
            return;
        }
        w.index.insert(
            *id,
            Staged {
                offset: w.len,
                length,
                raw_length,
            },
        );
        w.len += record.len() as u64;
        st.bytes += record.len() as u64;
    }

    /// Closes the open window; chunks staged from now on go to a new one.
    /// Returns the number of the newest window, open or not.
    fn close_open(&self) -> Option<u64> {
        let mut st = self.state();
        let w = st.windows.last_mut()?;
        w.file = None;
        Some(w.n)
    }

    fn lookup(&self, id: &ChunkId) -> Option<(u64, Staged)> {
        self.state()
            .windows
            .iter()
            .rev()
            .find_map(|w| w.index.get(id).map(|s| (w.n, *s)))
    }

    fn window(&self, n: u64) -> Option<(Arc<[u8]>, PathBuf)> {
        self.state()
            .windows
            .iter()
            .find(|w| w.n == n)
            .map(|w| (w.wrapped.clone(), w.path.clone()))
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

/// Reads a staging file an earlier process left: its wrapped key, the
/// index of its whole records, and its readable length. `None` when its
/// header is not a staging file's. Records are not authenticated here
/// (that happens when they are packed); a length past the end or past
/// [`MAX_BLOB`] ends the readable part.
#[allow(clippy::type_complexity)]
fn recover(path: &Path) -> std::io::Result<Option<(Arc<[u8]>, HashMap<ChunkId, Staged>, u64)>> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let mut r = std::io::BufReader::new(file);
    let mut head = [0u8; 12];
    if r.read_exact(&mut head).is_err() || &head[..8] != STAGE_MAGIC {
        return Ok(None);
    }
    let wrapped_len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    if wrapped_len > MAX_WRAPPED || 12 + u64::from(wrapped_len) > size {
        return Ok(None);
    }
    let mut wrapped = vec![0u8; wrapped_len as usize];
    r.read_exact(&mut wrapped)?;
    let mut offset = 12 + u64::from(wrapped_len);
    let mut index = HashMap::new();
    let mut rec = [0u8; RECORD_HEADER];
    while offset + RECORD_HEADER as u64 <= size {
        r.read_exact(&mut rec)?;
        let mut id = [0u8; 32];
        id.copy_from_slice(&rec[..32]);
        let raw_length = u32::from_le_bytes([rec[32], rec[33], rec[34], rec[35]]);
        let length = u32::from_le_bytes([rec[36], rec[37], rec[38], rec[39]]);
        let end = offset + RECORD_HEADER as u64 + u64::from(length);
        if length > MAX_BLOB || end > size {
            break;
        }
        r.seek_relative(i64::from(length))?;
        index.insert(
            ChunkId(id),
            Staged {
                offset,
                length,
                raw_length,
            },
        );
        offset = end;
    }
    Ok(Some((wrapped.into(), index, offset)))
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
        let repo =
            Repository::assemble(fanout, self.inner.key.clone(), opts, ours.clone(), catalog);
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
        let mut unstaged: Vec<(String, ChunkId)> = Vec::new();
        {
            let theirs = batched.catalog();
            let mut seen = HashSet::new();
            for item in &items {
                for (id, _) in &item.manifest.chunks {
                    if !seen.insert(*id) || theirs.has_chunk(id)? {
                        continue;
                    }
                    match stage.and_then(|st| st.lookup(id)) {
                        Some((n, s)) => by_window.entry(n).or_default().push((*id, s)),
                        None => unstaged.push((item.manifest.name.clone(), *id)),
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
                if let Some(object) = PackId::parse(&record.id).map(|p| p.object_name()) {
                    for (dest, cid) in found {
                        cids.entry(dest).or_default().insert(object.clone(), cid);
                    }
                }
                packs.push(record);
            };
        let pack_size = self.inner.opts.pack_size;
        for (n, chunks) in by_window {
            let window = stage.and_then(|st| st.window(n).map(|w| (st, w)));
            let Some((st, (wrapped, path))) = window else {
                // Only a batch drops windows, and one runs at a time.
                unstaged.extend(chunks.iter().map(|(id, _)| (String::new(), *id)));
                continue;
            };
            let mut rest = chunks.as_slice();
            while !rest.is_empty() {
                let (built, taken, damaged) = {
                    let (wrapped, file, part) = (wrapped.clone(), path.clone(), rest.to_vec());
                    let (meta, mac) = (self.inner.key.clone(), st.mac_key);
                    tokio::task::spawn_blocking(move || {
                        build_pack(&wrapped, &file, &part, pack_size, &meta, &mac)
                    })
                    .await
                    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
                    .map_err(local(&path))?
                };
                rest = &rest[taken..];
                if !damaged.is_empty() {
                    tracing::warn!(destination = %st.dest, file = %path.display(), records = damaged.len(),
                        "staged records that do not authenticate (damaged on disk): copying the packs that hold those chunks instead");
                    unstaged.extend(damaged.into_iter().map(|id| (String::new(), id)));
                }
                let Some((bytes, entries)) = built else {
                    continue;
                };
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
        // The rest come with the packs that hold them, copied unchanged.
        let mut whole: Vec<PackId> = Vec::new();
        {
            let ours = self.catalog();
            let mut copied = HashSet::new();
            for (item, id) in unstaged {
                let Some(loc) = ours.chunk_location(&id)? else {
                    return Err(RepoError::MissingChunk { item, chunk: id });
                };
                if copied.insert(loc.pack) {
                    whole.push(loc.pack);
                }
            }
        }
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
        let forget = forget
            .into_iter()
            .map(|(commit, names)| Forget { commit, names })
            .collect();
        let object = batched
            .store_commit(
                packs,
                items,
                forget,
                Default::default(),
                cids,
                Timestamp::now(),
            )
            .await?;
        report.objects += 1;
        report.commit = Some(object);
        finish_stage(stage, cut);
        Ok(report)
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

/// One pack from staged records of one window, at most `pack_size` bytes
/// (or one blob): its bytes and entries (`None` when every record taken
/// was damaged), how many records it took, and the chunks whose records
/// do not authenticate.
#[allow(clippy::type_complexity)]
fn build_pack(
    wrapped: &[u8],
    path: &Path,
    chunks: &[(ChunkId, Staged)],
    pack_size: usize,
    meta: &super::RepositoryKey,
    mac_key: &[u8; 32],
) -> std::io::Result<(
    Option<(Vec<u8>, Vec<super::PackEntry>)>,
    usize,
    Vec<ChunkId>,
)> {
    let file = std::fs::File::open(path)?;
    let mut pack = PackBuilder::for_sealed(wrapped);
    let mut taken = 0;
    let mut damaged = Vec::new();
    let mut record = Vec::new();
    for (id, s) in chunks {
        if !pack.is_empty() && pack.len() + s.length as usize > pack_size {
            break;
        }
        taken += 1;
        record.resize(RECORD_HEADER + s.length as usize, 0);
        file.read_exact_at(&mut record, s.offset)?;
        let (head, blob) = record.split_at(RECORD_HEADER);
        let intact = head[..32] == id.0
            && head[32..36] == s.raw_length.to_le_bytes()
            && head[36..40] == s.length.to_le_bytes()
            && head[40..72] == record_mac(mac_key, id, s.raw_length, blob);
        if intact {
            pack.push_blob(*id, blob, s.raw_length);
        } else {
            damaged.push(*id);
        }
    }
    if pack.is_empty() {
        return Ok((None, taken, damaged));
    }
    Ok((Some(pack.finish(meta)), taken, damaged))
}
