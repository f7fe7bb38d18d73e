//! Manifests, catalog commits and the repository descriptor: the JSON parts of
//! the format. See docs/FORMAT.md.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::RepoError;
use super::chunking::Chunking;
use super::keys::{ChunkId, RepositoryKey};
use super::pack::PackEntry;
use super::seal::{self, SealKind};

/// A commit's plaintext may be this many times its compressed size ...
const COMMIT_MAX_RATIO: u64 = 64;
/// ... or this many bytes, whichever is more.
const COMMIT_MIN_CAP: u64 = 64 << 20;

/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The version of a catalog commit that forgets items, records garbage
/// collection or carries content identifiers: a version 1 reader refuses it
/// (`UnsupportedVersion`) instead of replaying it without its removals.
/// Commits without any of these stay version 1, byte for byte.
pub const COMMIT_VERSION_GC: u32 = 2;

/// Content identifiers of objects in content-addressed destinations
/// (Storacha root CIDs): destination name → object name → CID. Sorted maps,
/// so the encoding is deterministic.
pub type ContentIds = BTreeMap<String, BTreeMap<String, String>>;
const FORMAT_NAME: &str = "pitr-repository";

/// The chunks of one item, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The item's name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// How it was cut.
    pub chunker: Chunking,
    /// Keyed BLAKE3 of the whole plaintext, hex.
    pub hash: String,
    /// `(chunk id, plaintext length)` in order.
    pub chunks: Vec<(ChunkId, u32)>,
}

/// An item's end-to-end hash: keyed BLAKE3 (the item-hash subkey of `K`)
/// over its ordered chunk list, `chunk id (32) | plaintext length u32 LE` per
/// chunk. Every chunk id is a keyed hash of the chunk's plaintext, recomputed
/// on read, so this pins content, order and sizes without hashing the data a
/// second time.
#[derive(Debug, Clone)]
pub struct ItemHasher(blake3::Hasher);

impl ItemHasher {
    /// A hasher for an item of this repository.
    pub fn new(key: &RepositoryKey) -> Self {
        ItemHasher(key.item_hasher())
    }

    /// Adds the next chunk.
    pub fn update(&mut self, id: &ChunkId, raw_length: u32) {
        self.0.update(&id.0);
        self.0.update(&raw_length.to_le_bytes());
    }

    /// The hash, lowercase hex.
    pub fn finish(&self) -> String {
        self.0.finalize().to_hex().to_string()
    }
}

/// One item as recorded in a catalog commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemRecord {
    /// What the item is (`wal`, `base-file`, `sqlite-pages`, ...): later issues
    /// define their kinds; the repository does not interpret it.
    pub kind: String,
    /// When it was written.
    pub time: Timestamp,
    /// Kind-specific attributes (LSN ranges, timelines, ...).
    pub attrs: serde_json::Value,
    /// Its chunks.
    pub manifest: Manifest,
}

/// One pack as recorded in a catalog commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackRecord {
    /// The pack id, hex.
    pub id: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its index.
    pub chunks: Vec<PackEntry>,
}

/// What became durable together: one `catalog/<seq>-<writer>` object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Commit {
    /// Format version of this commit.
    pub version: u32,
    /// Sequence number.
    pub seq: u64,
    /// The writer that made it (16 hex).
    pub writer: String,
    /// When it was made.
    pub time: Timestamp,
    /// Packs it introduces.
    pub packs: Vec<PackRecord>,
    /// Items it introduces.
    pub items: Vec<ItemRecord>,
    /// Items it removes (version 2): named by the commit that introduced
    /// them, since one name can be stored many times (WAL partials).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forget: Vec<Forget>,
    /// Garbage collection it records (version 2).
    #[serde(default, skip_serializing_if = "GcRecord::is_empty")]
    pub gc: GcRecord,
    /// Content identifiers (version 2): of the packs it introduces, and of
    /// earlier objects whose identifiers no stored commit held yet (earlier
    /// commit objects, the descriptor, key objects). See docs/FORMAT.md.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cids: ContentIds,
}

/// Items of one earlier commit that a commit removes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forget {
    /// The commit object that introduced them.
    pub commit: String,
    /// Their names (every item of that name in that commit).
    pub names: Vec<String>,
}

/// Garbage collection of packs, as one commit records it (docs/FORMAT.md,
/// "Forgetting and garbage collection").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcRecord {
    /// Packs no live item references, marked at the commit's time: writers
    /// stop deduplicating against them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mark: Vec<String>,
    /// Marked packs referenced again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unmark: Vec<String>,
    /// Marked packs deleted from every destination.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delete: Vec<String>,
}

impl GcRecord {
    /// Whether it records nothing.
    pub fn is_empty(&self) -> bool {
        self.mark.is_empty() && self.unmark.is_empty() && self.delete.is_empty()
    }
}

impl Commit {
    /// Whether this commit removes anything (forgets items or records
    /// garbage collection), which makes it version 2.
    pub fn removes(&self) -> bool {
        !self.forget.is_empty() || !self.gc.is_empty()
    }

    /// The version a commit with this content carries: 1 unless it removes
    /// something or carries content identifiers.
    pub fn version_for(&self) -> u32 {
        if self.removes() || !self.cids.is_empty() {
            COMMIT_VERSION_GC
        } else {
            FORMAT_VERSION
        }
    }

    /// The object name of this commit.
    pub fn object_name(&self) -> String {
        commit_object_name(self.seq, &self.writer)
    }

    /// The plaintext encoding (before compression and sealing).
    pub fn encode_plain(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a commit always serializes")
    }

    /// The object bytes: sealed zstd of the JSON.
    pub fn encode(&self, key: &RepositoryKey) -> Vec<u8> {
        let z = zstd::bulk::compress(&self.encode_plain(), 3)
            .expect("zstd compression of an in-memory buffer cannot fail");
        seal::seal(key, SealKind::CatalogCommit, &self.object_name(), &z)
    }

    /// Opens and parses a commit object.
    pub fn decode(key: &RepositoryKey, object: &str, bytes: &[u8]) -> Result<Commit, RepoError> {
        let z = seal::open(key, SealKind::CatalogCommit, object, object, bytes)?;
        let malformed = |what: String| RepoError::Malformed {
            object: object.to_owned(),
            what,
        };
        // Bounded: a commit is JSON of hex ids, which zstd shrinks a few
        // times at most; far more is a decompression bomb, not a commit.
        let cap = (z.len() as u64)
            .saturating_mul(COMMIT_MAX_RATIO)
            .max(COMMIT_MIN_CAP);
        let mut plain = Vec::new();
        {
            use std::io::Read;
            zstd::stream::read::Decoder::with_buffer(&z[..])
                .and_then(|d| d.take(cap + 1).read_to_end(&mut plain))
                .map_err(|e| malformed(format!("its commit is not valid zstd: {e}")))?;
        }
        if plain.len() as u64 > cap {
            return Err(malformed(format!(
                "its commit decompresses to more than {cap} bytes ({COMMIT_MAX_RATIO} times \
                 its compressed size): a decompression bomb, not a commit pitr wrote; \
                 decompression was stopped there"
            )));
        }
        let version: VersionOnly = serde_json::from_slice(&plain)
            .map_err(|e| malformed(format!("its commit is not valid JSON: {e}")))?;
        if version.version != FORMAT_VERSION && version.version != COMMIT_VERSION_GC {
            return Err(RepoError::UnsupportedVersion {
                object: object.to_owned(),
                found: version.version,
                supported: COMMIT_VERSION_GC,
            });
        }
        let commit: Commit = serde_json::from_slice(&plain)
            .map_err(|e| malformed(format!("its commit does not parse: {e}")))?;
        if commit.version != commit.version_for() {
            return Err(malformed(format!(
                "its commit has version {} but {} removals or content ids (version 2 exactly when it forgets items, records garbage collection or carries content ids)",
                commit.version,
                if commit.version_for() == COMMIT_VERSION_GC {
                    "holds"
                } else {
                    "holds no"
                }
            )));
        }
        if commit.object_name() != object {
            return Err(RepoError::Swapped {
                object: object.to_owned(),
                what: format!("it holds commit {}", commit.object_name()),
            });
        }
        Ok(commit)
    }
}

#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

/// `catalog/<seq as 16 hex>-<writer>`.
pub fn commit_object_name(seq: u64, writer: &str) -> String {
    format!("catalog/{seq:016x}-{writer}")
}

/// Parses a commit object name into `(seq, writer)`.
pub fn parse_commit_object_name(name: &str) -> Option<(u64, String)> {
    let rest = name.strip_prefix("catalog/")?;
    let (seq, writer) = rest.split_once('-')?;
    if seq.len() != 16 || writer.len() != 16 || !writer.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((u64::from_str_radix(seq, 16).ok()?, writer.to_owned()))
}

/// The `config` object: what a writer checks before writing anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Descriptor {
    /// Always `pitr-repository`.
    pub format: String,
    /// Format version.
    pub version: u32,
    /// Random id of this repository, hex.
    pub repository_id: String,
    /// When `pitr init` created it.
    pub created: Timestamp,
    /// The repository key's id.
    pub key_id: String,
    /// BLAKE3 of the sorted recipients, hex.
    pub recipients_fingerprint: String,
}

/// The name of the descriptor object.
pub const DESCRIPTOR_OBJECT: &str = "config";

impl Descriptor {
    /// A descriptor for a new repository.
    pub fn new(key: &RepositoryKey, recipients: &[age::x25519::Recipient]) -> Self {
        Descriptor {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            repository_id: hex::encode(rand::random::<[u8; 16]>()),
            created: Timestamp::now(),
            key_id: key.key_id(),
            recipients_fingerprint: recipients_fingerprint(recipients),
        }
    }

    /// The object bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a descriptor always serializes");
        v.push(b'\n');
        v
    }

    /// Parses the object, refusing other formats and versions.
    pub fn decode(bytes: &[u8]) -> Result<Self, RepoError> {
        let malformed = |what: String| RepoError::Malformed {
            object: DESCRIPTOR_OBJECT.into(),
            what,
        };
        let v: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| malformed(format!("not JSON ({e}); is this a pitr repository?")))?;
        if v.get("format").and_then(|f| f.as_str()) != Some(FORMAT_NAME) {
            return Err(malformed("not a pitr repository descriptor".into()));
        }
        let version = v.get("version").and_then(|f| f.as_u64()).unwrap_or(0);
        if version != u64::from(FORMAT_VERSION) {
            return Err(RepoError::UnsupportedVersion {
                object: DESCRIPTOR_OBJECT.into(),
                found: u32::try_from(version).unwrap_or(u32::MAX),
                supported: FORMAT_VERSION,
            });
        }
        serde_json::from_value(v).map_err(|e| malformed(e.to_string()))
    }
}

/// BLAKE3 of the sorted recipient strings joined by `\n`, hex.
pub fn recipients_fingerprint(recipients: &[age::x25519::Recipient]) -> String {
    let mut names: Vec<String> = recipients.iter().map(|r| r.to_string()).collect();
    names.sort();
    names.dedup();
    blake3::hash(names.join("\n").as_bytes())
        .to_hex()
        .to_string()
}
