//! Packs: many chunk blobs in one immutable object, with a sealed index at the
//! end. See docs/FORMAT.md, "packs".

use serde::{Deserialize, Serialize};

use super::RepoError;
use super::datakey::DataKey;
use super::keys::{ChunkId, RepositoryKey};
use super::seal::{self, SealKind};

const MAGIC: &[u8; 8] = b"PITRPACK";
const END_MAGIC: &[u8; 8] = b"PITRPEND";
const VERSION: u16 = 1;
/// Bytes before the wrapped data key: magic, version, key length.
pub const PREFIX_LEN: u64 = 14;
/// Bytes after the sealed index.
pub const TRAILER_LEN: u64 = 12;
const ENTRY_LEN: usize = 48;

/// Where one chunk's blob sits in a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackEntry {
    /// The chunk.
    pub chunk: ChunkId,
    /// Offset of its blob from the start of the pack.
    pub offset: u64,
    /// Length of its blob.
    pub length: u32,
    /// Length of its plaintext.
    pub raw_length: u32,
}

/// A pack's id: BLAKE3 of the whole object.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PackId(pub [u8; 32]);

impl PackId {
    /// The id of these pack bytes.
    pub fn of(bytes: &[u8]) -> Self {
        PackId(*blake3::hash(bytes).as_bytes())
    }

    /// The object name, `packs/<pp>/<id>`.
    pub fn object_name(&self) -> String {
        let hex = self.to_string();
        format!("packs/{}/{}", &hex[..2], hex)
    }

    /// Parses the hex form.
    pub fn parse(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(PackId(out))
    }
}

super::keys::hex_id_fmt!(PackId);

/// Accumulates blobs for one pack, sealing them under its data key.
#[derive(Debug)]
pub struct PackBuilder {
    buf: Vec<u8>,
    entries: Vec<PackEntry>,
    /// `None` for a pack of blobs sealed elsewhere ([`Self::for_sealed`]).
    key: Option<DataKey>,
}

impl PackBuilder {
    /// An empty pack with a fresh data key wrapped to `recipients`.
    pub fn new(recipients: &[age::x25519::Recipient]) -> Self {
        let (key, wrapped) = DataKey::generate(recipients);
        Self::with_key(key, &wrapped)
    }

    pub(crate) fn with_key(key: DataKey, wrapped: &[u8]) -> Self {
        Self::header(Some(key), wrapped)
    }

    fn header(key: Option<DataKey>, wrapped: &[u8]) -> Self {
        let mut buf = Vec::new();
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&VERSION.to_le_bytes());
        let len = u32::try_from(wrapped.len()).expect("a wrapped key is a few hundred bytes");
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(wrapped);
        PackBuilder {
            buf,
            entries: Vec::new(),
            key,
        }
    }

    /// A pack of blobs already sealed under the data key `wrapped` wraps
    /// (a batched destination's staged chunks): it takes
    /// [`Self::push_blob`] only.
    pub(crate) fn for_sealed(wrapped: &[u8]) -> Self {
        Self::header(None, wrapped)
    }

    /// Seals one compressed chunk and appends its blob.
    pub fn push(&mut self, chunk: ChunkId, compressed: &[u8], raw_length: u32) {
        let blob = self
            .key
            .as_ref()
            .expect("a pack of blobs sealed elsewhere takes push_blob only")
            .seal_chunk(&chunk, compressed);
        self.push_blob(chunk, &blob, raw_length);
    }

    pub(crate) fn push_blob(&mut self, chunk: ChunkId, blob: &[u8], raw_length: u32) {
        let offset = self.buf.len() as u64;
        self.buf.extend_from_slice(blob);
        self.entries.push(PackEntry {
            chunk,
            offset,
            length: u32::try_from(blob.len()).expect("chunk blobs are at most a few MiB"),
            raw_length,
        });
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether no chunk was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends the sealed index and trailer; returns the pack's bytes and entries.
    pub fn finish(self, key: &RepositoryKey) -> (Vec<u8>, Vec<PackEntry>) {
        let sealed = seal::seal(key, SealKind::PackIndex, "", &encode_index(&self.entries));
        self.finish_with_sealed(sealed)
    }

    pub(crate) fn finish_with_sealed(mut self, sealed: Vec<u8>) -> (Vec<u8>, Vec<PackEntry>) {
        self.buf.extend_from_slice(&sealed);
        let len = u32::try_from(sealed.len()).expect("a pack index is far below 4 GiB");
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(END_MAGIC);
        (self.buf, self.entries)
    }
}

/// The plaintext of a pack index.
pub fn encode_index(entries: &[PackEntry]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + entries.len() * ENTRY_LEN);
    let n = u32::try_from(entries.len()).expect("a pack holds far fewer than 4G chunks");
    v.extend_from_slice(&n.to_le_bytes());
    for e in entries {
        v.extend_from_slice(&e.chunk.0);
        v.extend_from_slice(&e.offset.to_le_bytes());
        v.extend_from_slice(&e.length.to_le_bytes());
        v.extend_from_slice(&e.raw_length.to_le_bytes());
    }
    v
}

pub(crate) fn decode_index(object: &str, plain: &[u8]) -> Result<Vec<PackEntry>, RepoError> {
    let malformed = |what: &str| RepoError::Malformed {
        object: object.to_owned(),
        what: what.to_owned(),
    };
    let n = plain
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(|| malformed("pack index has no count"))?;
    if plain.len() != 4 + n * ENTRY_LEN {
        return Err(malformed("pack index length does not match its count"));
    }
    Ok(plain[4..]
        .chunks_exact(ENTRY_LEN)
        .map(|e| {
            let mut id = [0u8; 32];
            id.copy_from_slice(&e[..32]);
            PackEntry {
                chunk: ChunkId(id),
                offset: u64::from_le_bytes(e[32..40].try_into().expect("8 bytes")),
                length: u32::from_le_bytes(e[40..44].try_into().expect("4 bytes")),
                raw_length: u32::from_le_bytes(e[44..48].try_into().expect("4 bytes")),
            }
        })
        .collect())
}

/// Where a pack's wrapped data key lies, from the pack's first
/// [`PREFIX_LEN`] bytes: checks magic and version.
pub fn parse_prefix(object: &str, prefix: &[u8]) -> Result<std::ops::Range<u64>, RepoError> {
    if prefix.len() < PREFIX_LEN as usize {
        return Err(RepoError::Truncated {
            object: object.to_owned(),
            what: "it ends inside the pack header".into(),
        });
    }
    if &prefix[..8] != MAGIC {
        return Err(RepoError::Tampered {
            object: object.to_owned(),
            what: "no PITRPACK magic".into(),
        });
    }
    let version = u16::from_le_bytes([prefix[8], prefix[9]]);
    if version != VERSION {
        return Err(RepoError::UnsupportedVersion {
            object: object.to_owned(),
            found: u32::from(version),
            supported: u32::from(VERSION),
        });
    }
    let len = u32::from_le_bytes([prefix[10], prefix[11], prefix[12], prefix[13]]);
    Ok(PREFIX_LEN..PREFIX_LEN + u64::from(len))
}

/// The wrapped data key of a whole pack.
pub fn wrapped_key<'a>(object: &str, pack: &'a [u8]) -> Result<&'a [u8], RepoError> {
    let range = parse_prefix(object, pack)?;
    pack.get(range.start as usize..range.end as usize)
        .ok_or_else(|| RepoError::Truncated {
            object: object.to_owned(),
            what: "it ends inside its wrapped data key".into(),
        })
}

/// Reads the index of a whole pack, checking magic, version, bounds and that
/// every entry lies inside the blob area.
pub fn read_index(
    key: &RepositoryKey,
    object: &str,
    pack: &[u8],
) -> Result<Vec<PackEntry>, RepoError> {
    let len = pack.len() as u64;
    if len < PREFIX_LEN + TRAILER_LEN || &pack[pack.len() - 8..] != END_MAGIC {
        return Err(RepoError::Truncated {
            object: object.to_owned(),
            what: "the pack trailer is missing".into(),
        });
    }
    let blobs_start = parse_prefix(object, pack)?.end;
    let t = pack.len() - TRAILER_LEN as usize;
    let index_len = u32::from_le_bytes(pack[t..t + 4].try_into().expect("4 bytes")) as u64;
    let index_start = (t as u64)
        .checked_sub(index_len)
        .filter(|s| *s >= blobs_start)
        .ok_or_else(|| RepoError::Tampered {
            object: object.to_owned(),
            what: "its index length points outside the pack".into(),
        })?;
    let sealed = &pack[index_start as usize..t];
    let plain = seal::open(key, SealKind::PackIndex, object, "", sealed)?;
    let entries = decode_index(object, &plain)?;
    for e in &entries {
        if e.offset < blobs_start || e.offset + u64::from(e.length) > index_start {
            return Err(RepoError::Malformed {
                object: object.to_owned(),
                what: format!("chunk {} lies outside the blob area", e.chunk),
            });
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trip() {
        let k = RepositoryKey::generate();
        let id = age::x25519::Identity::generate();
        let mut b = PackBuilder::new(&[id.to_public()]);
        b.push(k.chunk_id(b"a"), b"zstd-a", 1);
        b.push(k.chunk_id(b"bb"), b"zstd-bb", 2);
        let (bytes, entries) = b.finish(&k);
        let got = read_index(&k, "p", &bytes).expect("index");
        assert_eq!(got, entries);
        let dk = DataKey::unwrap(
            std::slice::from_ref(&id),
            "p",
            wrapped_key("p", &bytes).expect("key"),
        )
        .expect("unwrap");
        let e = got[1];
        let blob = &bytes[e.offset as usize..][..e.length as usize];
        assert_eq!(
            dk.open_chunk("p", e.offset, &e.chunk, blob).expect("open"),
            b"zstd-bb"
        );
        let e = read_index(&k, "p", &bytes[..bytes.len() - 1]).expect_err("truncated");
        assert!(matches!(e, RepoError::Truncated { .. }), "{e}");
    }
}
