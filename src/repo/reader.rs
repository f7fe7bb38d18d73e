//! Reading items back: for each chunk, its pack's data key (unwrapped once
//! per pack and cached), then a ranged get of its blob → open → zstd → chunk
//! id check, in order, a few chunks ahead; the item's size and hash are
//! checked at the end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::OnceCell;

use super::datakey::DataKey;
use super::keys::ChunkId;
use super::manifest::{ItemHasher, Manifest};
use super::pack::{PREFIX_LEN, PackEntry, PackId, parse_prefix};
use super::verify::check_pack;
use super::{Inner, RepoError, Repository};
use crate::ship::Destination;

/// Reads items; holds the identity.
#[derive(Debug, Clone)]
pub struct Reader {
    repo: Repository,
    keys: Arc<KeyCache>,
}

const READ_AHEAD: usize = 4;
/// Data keys kept; a restore reads packs mostly in order, so a small cache
/// serves it, and memory stays bounded.
const KEY_CACHE: usize = 1024;

/// Unwrapped pack data keys; concurrent reads of one pack unwrap it once.
#[derive(Debug, Default)]
struct KeyCache {
    keys: Mutex<HashMap<PackId, Arc<OnceCell<Arc<DataKey>>>>>,
}

impl Reader {
    pub(super) fn new(repo: Repository) -> Self {
        Reader {
            repo,
            keys: Arc::default(),
        }
    }

    /// The item's plaintext as a stream of verified chunks. The stream ends
    /// with an error instead of its last chunk if the whole does not match the
    /// manifest.
    pub fn stream(
        &self,
        manifest: &Manifest,
    ) -> impl Stream<Item = Result<Bytes, RepoError>> + Send + 'static {
        let inner = self.repo.inner.clone();
        let keys = self.keys.clone();
        let manifest = Arc::new(manifest.clone());
        let m = manifest.clone();
        let chunks = futures::stream::iter(manifest.chunks.clone())
            .map(move |(id, raw_len)| {
                let (inner, keys, m) = (inner.clone(), keys.clone(), m.clone());
                async move {
                    let data = fetch_chunk(&inner, &keys, &m.name, id, raw_len).await?;
                    Ok::<_, RepoError>((id, data))
                }
            })
            .buffered(READ_AHEAD);
        let mut hasher = ItemHasher::new(self.repo.key());
        let mut size = 0u64;
        let mut left = manifest.chunks.len();
        chunks.and_then(move |(id, data)| {
            let len = u32::try_from(data.len()).expect("chunks are at most a few MiB");
            hasher.update(&id, len);
            size += data.len() as u64;
            left -= 1;
            let result = if left == 0 {
                check_whole(&manifest, size, &hasher.finish()).map(|()| data)
            } else {
                Ok(data)
            };
            async move { result }
        })
    }

    /// Writes the item's verified plaintext to `out`; returns its size. Checks
    /// an empty item too.
    pub async fn read_to<W: AsyncWrite + Unpin>(
        &self,
        manifest: &Manifest,
        out: &mut W,
    ) -> Result<u64, RepoError> {
        if manifest.chunks.is_empty() {
            check_whole(manifest, 0, &ItemHasher::new(self.repo.key()).finish())?;
            return Ok(0);
        }
        let mut s = std::pin::pin!(self.stream(manifest));
        let mut n = 0u64;
        let local = |source| RepoError::Local {
            path: "(output)".into(),
            source,
        };
        while let Some(b) = s.try_next().await? {
            out.write_all(&b).await.map_err(local)?;
            n += b.len() as u64;
        }
        out.flush().await.map_err(local)?;
        Ok(n)
    }
}

fn check_whole(m: &Manifest, size: u64, hash: &str) -> Result<(), RepoError> {
    if size != m.size {
        return Err(RepoError::ItemMismatch {
            item: m.name.clone(),
            what: format!("{size} bytes, manifest says {}", m.size),
        });
    }
    if hash != m.hash {
        return Err(RepoError::ItemMismatch {
            item: m.name.clone(),
            what: "the keyed hash differs".into(),
        });
    }
    Ok(())
}

/// The data key of `pack`: two small ranged gets (prefix, wrapped key) and
/// one age decryption the first time, the cache afterwards.
async fn pack_key(
    inner: &Arc<Inner>,
    keys: &KeyCache,
    pack: PackId,
    object: &str,
    dest: &dyn Destination,
) -> Result<Arc<DataKey>, RepoError> {
    let cell = {
        let mut map = keys.keys.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= KEY_CACHE && !map.contains_key(&pack) {
            map.clear();
        }
        map.entry(pack).or_default().clone()
    };
    cell.get_or_try_init(|| async {
        let prefix = dest.get_range(object, 0..PREFIX_LEN).await?;
        let range = parse_prefix(object, &prefix)?;
        let wrapped = dest.get_range(object, range).await?;
        let inner = inner.clone();
        let object = object.to_owned();
        tokio::task::spawn_blocking(move || {
            DataKey::unwrap(&inner.opts.identities, &object, &wrapped).map(Arc::new)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    })
    .await
    .cloned()
}

async fn fetch_chunk(
    inner: &Arc<Inner>,
    keys: &KeyCache,
    item: &str,
    id: ChunkId,
    raw_len: u32,
) -> Result<Bytes, RepoError> {
    let loc = inner
        .catalog
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .chunk_location(&id)?
        .ok_or_else(|| RepoError::MissingChunk {
            item: item.to_owned(),
            chunk: id,
        })?;
    let object = loc.pack.object_name();
    let e = loc.entry;
    // Each destination in turn, fastest healthy first: a copy that is
    // missing, unreadable or fails authentication is skipped (and said so),
    // and the next one serves.
    let mut first_err: Option<RepoError> = None;
    let mut skipped: Vec<(String, String)> = Vec::new();
    let mut data = None;
    for dest in read_order(inner, &object) {
        let opened = async {
            let key = pack_key(inner, keys, loc.pack, &object, dest.as_ref()).await?;
            let blob = dest
                .get_range(&object, e.offset..e.offset + u64::from(e.length))
                .await?;
            let inner = inner.clone();
            let object = object.clone();
            tokio::task::spawn_blocking(move || open_blob(&inner, &object, &key, &e, &blob))
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
        };
        match opened.await {
            Ok(d) => {
                for (from, why) in skipped {
                    tracing::warn!(
                        object,
                        skipped = from,
                        why,
                        served_by = dest.name(),
                        "read another destination's copy instead of a bad or missing one"
                    );
                    note_skip(inner, &from, &object, why, dest.name());
                }
                data = Some(d);
                break;
            }
            Err(err) => {
                tracing::warn!(object, destination = dest.name(), error = %err,
                    "skipping this destination's copy");
                skipped.push((dest.name().to_owned(), err.to_string()));
                first_err.get_or_insert(err);
            }
        }
    }
    let data = match (data, first_err) {
        (Some(data), _) => data,
        (None, Some(err @ (RepoError::Tampered { .. } | RepoError::Truncated { .. }))) => {
            return Err(diagnose(inner, &object, loc.pack, err).await);
        }
        (None, Some(err)) => return Err(err),
        (None, None) => {
            return Err(RepoError::MissingChunk {
                item: item.to_owned(),
                chunk: id,
            });
        }
    };
    if data.len() != raw_len as usize {
        return Err(RepoError::ItemMismatch {
            item: item.to_owned(),
            what: format!(
                "chunk {id} has {} bytes, manifest says {raw_len}",
                data.len()
            ),
        });
    }
    Ok(Bytes::from(data))
}

/// The destinations to read `object` from: the fan-out's read order, with
/// those whose copy of it was already skipped moved last, so a missing or
/// damaged pack costs one failed request, not one per chunk.
fn read_order(inner: &Inner, object: &str) -> Vec<std::sync::Arc<dyn Destination>> {
    let mut order = inner.fanout.read_order();
    let skipped = inner.skipped.lock().unwrap_or_else(|p| p.into_inner());
    if skipped.iter().any(|s| s.object == object) {
        order.sort_by_key(|d| {
            skipped
                .iter()
                .any(|s| s.object == object && s.destination == d.name())
        });
    }
    order
}

/// Records a skipped copy once per destination and object (a pack holds
/// many chunks; its summary line should not repeat for each).
fn note_skip(inner: &Inner, destination: &str, object: &str, why: String, served_by: &str) {
    let mut list = inner.skipped.lock().unwrap_or_else(|p| p.into_inner());
    if list.len() >= super::SKIPPED_KEPT
        || list
            .iter()
            .any(|s| s.destination == destination && s.object == object)
    {
        return;
    }
    list.push(super::SkippedRead {
        destination: destination.to_owned(),
        object: object.to_owned(),
        why,
        served_by: served_by.to_owned(),
    });
}

/// A ranged read sees only one blob; when it fails, the whole pack tells
/// whether the object was altered, cut short, or is another pack put in its
/// place. Returns the more precise error, or `original` when the pack gives no
/// better answer (this is the error path: reading the pack whole is fine).
async fn diagnose(
    inner: &Arc<Inner>,
    object: &str,
    pack: PackId,
    original: RepoError,
) -> RepoError {
    let known = || -> Result<(u64, Vec<PackEntry>), RepoError> {
        let catalog = inner.catalog.lock().unwrap_or_else(|p| p.into_inner());
        let size = catalog
            .packs()?
            .into_iter()
            .find(|(id, _)| *id == pack)
            .map(|(_, size)| size);
        Ok((size.unwrap_or(0), catalog.pack_entries(&pack)?))
    };
    let Ok((size, expected)) = known() else {
        return original;
    };
    let Ok(bytes) = inner.fanout.get(object).await else {
        return original;
    };
    let inner = inner.clone();
    let object = object.to_owned();
    let found = tokio::task::spawn_blocking(move || {
        check_pack(&inner, &object, pack, size, &expected, &bytes, false)
    })
    .await;
    match found {
        Ok(Err(e @ (RepoError::Swapped { .. } | RepoError::Truncated { .. }))) => e,
        _ => original,
    }
}

/// Opens, decompresses and verifies one chunk blob read from `object`.
pub(super) fn open_blob(
    inner: &Inner,
    object: &str,
    key: &DataKey,
    e: &PackEntry,
    blob: &[u8],
) -> Result<Vec<u8>, RepoError> {
    if blob.len() < e.length as usize {
        return Err(RepoError::Truncated {
            object: object.to_owned(),
            what: format!(
                "chunk {} should span bytes {}..{} but the object ends after {} of them",
                e.chunk,
                e.offset,
                e.offset + u64::from(e.length),
                blob.len()
            ),
        });
    }
    let z = key.open_chunk(object, e.offset, &e.chunk, blob)?;
    let data = decompress_bounded(object, e, &z)?;
    // Invariant 3: the id is recomputed from what was decrypted.
    let actual = inner.key.chunk_id(&data);
    if actual != e.chunk {
        return Err(RepoError::Swapped {
            object: object.to_owned(),
            what: format!(
                "the blob at offset {} holds chunk {actual}, expected {}",
                e.offset, e.chunk
            ),
        });
    }
    Ok(data)
}

/// The largest chunk any chunker writes (`fixed:<n>` allows up to 4 MiB):
/// a recorded raw length above it is refused before anything is allocated.
pub(super) const MAX_CHUNK_LEN: u32 = 4 * 1024 * 1024;

/// Decompresses a chunk into at most its recorded raw length: a blob that
/// expands further (a zstd bomb in a replaced pack) is an error naming the
/// object as soon as one byte too many comes out, with memory bounded by the
/// recorded length (invariant 7).
pub(super) fn decompress_bounded(
    object: &str,
    e: &PackEntry,
    z: &[u8],
) -> Result<Vec<u8>, RepoError> {
    use std::io::Read;
    let malformed = |what: String| RepoError::Malformed {
        object: object.to_owned(),
        what,
    };
    if e.raw_length > MAX_CHUNK_LEN {
        return Err(malformed(format!(
            "chunk {} is recorded as {} bytes, more than any chunk pitr writes ({MAX_CHUNK_LEN})",
            e.chunk, e.raw_length
        )));
    }
    let decoder = zstd::stream::read::Decoder::with_buffer(z)
        .map_err(|err| malformed(format!("chunk {} is not valid zstd: {err}", e.chunk)))?;
    let mut data = Vec::with_capacity(e.raw_length as usize);
    decoder
        .take(u64::from(e.raw_length) + 1)
        .read_to_end(&mut data)
        .map_err(|err| malformed(format!("chunk {} is not valid zstd: {err}", e.chunk)))?;
    if data.len() > e.raw_length as usize {
        return Err(malformed(format!(
            "chunk {} decompresses to more than its recorded {} bytes; decompression was \
             stopped there (a replaced pack or a decompression bomb). Restore from another \
             destination's copy, or run `pitr verify` to find what else is damaged",
            e.chunk, e.raw_length
        )));
    }
    Ok(data)
}
