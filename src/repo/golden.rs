//! Golden tests: the exact bytes of every deterministic part of format v1,
//! pinned in `tests/golden/`. A failure here means an encoding changed: that
//! is a format change, to be made on purpose (new version, docs/FORMAT.md),
//! never by accident. Regenerate with `PITR_UPDATE_GOLDEN=1 cargo test golden`
//! only when the change is intended.
//!
//! age output is randomised (ephemeral keys, nonces, grease), so wrapped data
//! keys and key objects are pinned by decoding checked-in objects instead; the
//! integration test `golden::a_version_1_store_still_reads` does the same for
//! a whole store.

use std::path::PathBuf;

use super::chunking::Chunking;
use super::datakey::DataKey;
use super::keys::{ChunkId, RepositoryKey};
use super::manifest::{Commit, Descriptor, ItemHasher, ItemRecord, Manifest, PackRecord};
use super::pack::{PackBuilder, PackEntry, PackId, encode_index, read_index};
use super::seal::{self, SealKind};

/// The fixed repository key of the golden files. Test-only, never a real key.
const K: [u8; 32] = [0x42; 32];
const NONCE: [u8; 24] = [0x07; 24];

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Compares `actual` with the golden file `name` (hex-encoded, 64 characters
/// a line, so a diff shows where bytes moved), or rewrites it when asked.
fn pin(name: &str, actual: &[u8]) {
    let path = golden_dir().join(name);
    let hex = hex::encode(actual);
    let text: String = hex
        .as_bytes()
        .chunks(64)
        .map(|l| format!("{}\n", String::from_utf8_lossy(l)))
        .collect();
    if std::env::var_os("PITR_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(golden_dir()).expect("create tests/golden");
        std::fs::write(&path, text).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "golden file {} is missing ({e}); create it with PITR_UPDATE_GOLDEN=1",
            path.display()
        )
    });
    assert!(
        expected == text,
        "the encoding pinned in {} changed. That is a repository format change: \
         bump the version and document it in docs/FORMAT.md, then regenerate with \
         PITR_UPDATE_GOLDEN=1.\n--- expected\n{expected}--- actual\n{text}",
        path.display()
    );
}

fn key() -> RepositoryKey {
    RepositoryKey::from_bytes(K)
}

fn entries() -> Vec<PackEntry> {
    let k = key();
    vec![
        PackEntry {
            chunk: k.chunk_id(b"first chunk"),
            offset: 26,
            length: 46,
            raw_length: 11,
        },
        PackEntry {
            chunk: k.chunk_id(b"second chunk"),
            offset: 72,
            length: 47,
            raw_length: 12,
        },
    ]
}

fn commit() -> Commit {
    let k = key();
    let data = b"golden item content\n";
    let mut h = ItemHasher::new(&k);
    h.update(&k.chunk_id(data), data.len() as u32);
    Commit {
        version: 1,
        seq: 7,
        writer: "0123456789abcdef".into(),
        time: "2026-11-24T06:00:00Z".parse().expect("a fixed time"),
        packs: vec![PackRecord {
            id: "ab".repeat(32),
            size: 1234,
            chunks: entries(),
        }],
        items: vec![ItemRecord {
            kind: "test".into(),
            time: "2026-11-24T06:00:01Z".parse().expect("a fixed time"),
            attrs: serde_json::json!({ "lsn": "0/3000060", "timeline": 1 }),
            manifest: Manifest {
                name: "pg/main/wal/000000010000000000000003".into(),
                size: data.len() as u64,
                chunker: Chunking::Fixed(131072),
                hash: h.finish(),
                chunks: vec![(k.chunk_id(data), data.len() as u32)],
            },
        }],
        forget: Vec::new(),
        gc: Default::default(),
        cids: Default::default(),
    }
}

#[test]
fn golden_key_derivations() {
    let k = key();
    let mut out = Vec::new();
    out.extend_from_slice(k.key_id().as_bytes());
    out.extend_from_slice(&k.chunk_id(b"").0);
    out.extend_from_slice(&k.chunk_id(b"pitr golden chunk\n").0);
    out.extend_from_slice(k.meta_key());
    let mut h = ItemHasher::new(&k);
    h.update(&k.chunk_id(b"pitr golden chunk\n"), 18);
    out.extend_from_slice(h.finish().as_bytes());
    out.extend_from_slice(k.to_text().as_bytes());
    pin("key-derivations.hex", &out);
}

#[test]
fn golden_key_object_plaintext() {
    let k = key();
    let plain = k.encode_key_object();
    pin("key-object-plaintext.hex", &plain);
    let back = RepositoryKey::decode_key_object("keys/x", &plain).expect("decodes");
    assert_eq!(back.key_id(), k.key_id());
}

#[test]
fn golden_descriptor() {
    let d = Descriptor {
        format: "pitr-repository".into(),
        version: 1,
        repository_id: "00112233445566778899aabbccddeeff".into(),
        created: "2026-11-24T06:00:00Z".parse().expect("a fixed time"),
        key_id: key().key_id(),
        recipients_fingerprint: "cd".repeat(32),
    };
    let bytes = d.encode();
    pin("descriptor.hex", &bytes);
    assert_eq!(Descriptor::decode(&bytes).expect("decodes"), d);
}

#[test]
fn golden_sealed_metadata() {
    let sealed = seal::seal_with_nonce(
        &key(),
        SealKind::CatalogCommit,
        "catalog/0000000000000007-0123456789abcdef",
        b"sealed golden plaintext",
        NONCE,
    );
    pin("sealed-commit-kind.hex", &sealed);
    let plain = seal::open(
        &key(),
        SealKind::CatalogCommit,
        "o",
        "catalog/0000000000000007-0123456789abcdef",
        &sealed,
    )
    .expect("opens");
    assert_eq!(plain, b"sealed golden plaintext");
}

#[test]
fn golden_pack() {
    let k = key();
    pin("pack-index-plaintext.hex", &encode_index(&entries()));
    // The wrapped data key is an age file (randomised): a stand-in of the
    // same role pins the layout around it; its decryption is pinned by the
    // golden store.
    let dk = DataKey::from_bytes(&[0x11; 32]);
    let mut b = PackBuilder::with_key(DataKey::from_bytes(&[0x11; 32]), b"wrapped-key!");
    for (plain, z) in [
        (&b"first chunk"[..], &b"zstd-a"[..]),
        (b"second chunk", b"zstd-bb"),
    ] {
        let id = k.chunk_id(plain);
        let blob = dk.seal_chunk_with_nonce(&id, z, NONCE);
        pin(&format!("chunk-blob-{}.hex", plain.len()), &blob);
        b.push_blob(id, &blob, plain.len() as u32);
    }
    let sealed = seal::seal_with_nonce(
        &k,
        SealKind::PackIndex,
        "",
        &encode_index(&entries()),
        NONCE,
    );
    let (bytes, got) = b.finish_with_sealed(sealed);
    assert_eq!(got, entries());
    pin("pack.hex", &bytes);
    pin("pack-id.hex", PackId::of(&bytes).object_name().as_bytes());
    assert_eq!(read_index(&k, "p", &bytes).expect("index"), entries());
    let e = entries()[1];
    let blob = &bytes[e.offset as usize..][..e.length as usize];
    assert_eq!(
        dk.open_chunk("p", e.offset, &e.chunk, blob).expect("open"),
        b"zstd-bb"
    );
}

#[test]
fn golden_commit() {
    let c = commit();
    let plain = c.encode_plain();
    pin("commit-plaintext.hex", &plain);
    pin("commit-object-name.hex", c.object_name().as_bytes());
    // The sealed object, from the pinned plaintext (zstd's output may vary
    // across zstd versions; the seal and the JSON may not).
    let z = zstd::bulk::compress(&plain, 3).expect("compress");
    let sealed =
        seal::seal_with_nonce(&key(), SealKind::CatalogCommit, &c.object_name(), &z, NONCE);
    let back = Commit::decode(&key(), &c.object_name(), &sealed).expect("decodes");
    assert_eq!(back, c);
}

#[test]
fn golden_chunk_id_is_keyed() {
    // The same plaintext under another key has another id: listing a store
    // does not let anyone confirm a guess about its content.
    let a = key().chunk_id(b"pitr golden chunk\n");
    let b = RepositoryKey::from_bytes([0x43; 32]).chunk_id(b"pitr golden chunk\n");
    let plain = ChunkId(*blake3::hash(b"pitr golden chunk\n").as_bytes());
    assert_ne!(a, b);
    assert_ne!(a, plain);
}

/// A version 2 commit: one that forgets items and records garbage
/// collection. Pinned like version 1; a commit whose version does not match
/// its content, or a version this build does not know, is refused.
#[test]
fn golden_commit_v2() {
    use super::manifest::{Forget, GcRecord};
    let mut c = commit();
    c.seq = 8;
    c.packs.clear();
    c.items.clear();
    c.forget = vec![Forget {
        commit: "catalog/0000000000000007-0123456789abcdef".into(),
        names: vec!["pg/main/wal/000000010000000000000003".into()],
    }];
    c.gc = GcRecord {
        mark: vec!["cd".repeat(32)],
        unmark: vec![],
        delete: vec!["ab".repeat(32)],
    };
    c.version = c.version_for();
    assert_eq!(c.version, 2);
    let plain = c.encode_plain();
    pin("commit-v2-plaintext.hex", &plain);
    assert_eq!(decode_as(&c, c.version).expect("decodes"), c);

    // Removals under version 1: a writer bug, refused rather than replayed.
    let err = decode_as(&c, 1).unwrap_err();
    assert!(matches!(err, super::RepoError::Malformed { .. }), "{err}");
    // A version from the future: named, with the version this build reads.
    let err = decode_as(&c, 3).unwrap_err();
    assert!(
        matches!(
            err,
            super::RepoError::UnsupportedVersion {
                found: 3,
                supported: 2,
                ..
            }
        ),
        "{err}"
    );
}

/// `c` sealed as a commit object claiming `version`, then decoded.
fn decode_as(c: &Commit, version: u32) -> Result<Commit, super::RepoError> {
    let mut c = c.clone();
    c.version = version;
    let z = zstd::bulk::compress(&c.encode_plain(), 3).expect("compress");
    let sealed =
        seal::seal_with_nonce(&key(), SealKind::CatalogCommit, &c.object_name(), &z, NONCE);
    Commit::decode(&key(), &c.object_name(), &sealed)
}

/// A version 2 commit carrying content ids (Storacha root CIDs) of its pack
/// and of earlier objects. Pinned; a commit without them stays the version 1
/// encoding (`golden_commit`), and content ids under version 1 are refused.
#[test]
fn golden_commit_with_cids() {
    let mut c = commit();
    let pack = format!("packs/ab/{}", "ab".repeat(32));
    let dir = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi";
    let other = "bafybeihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";
    c.cids.entry("storacha".into()).or_default().extend([
        (pack.clone(), dir.to_owned()),
        (
            "catalog/0000000000000006-0123456789abcdef".into(),
            other.to_owned(),
        ),
        ("config".into(), other.to_owned()),
    ]);
    c.cids
        .entry("ipfs-b".into())
        .or_default()
        .insert(pack, dir.to_owned());
    assert_eq!(c.version_for(), 2);
    c.version = c.version_for();
    let plain = c.encode_plain();
    pin("commit-v2-cids-plaintext.hex", &plain);
    // Sorted by destination, then object: the encoding is deterministic.
    let text = String::from_utf8(plain).expect("utf-8");
    assert!(
        text.ends_with(&format!(
            r#""cids":{{"ipfs-b":{{"packs/ab/{ab}":"{dir}"}},"storacha":{{"catalog/0000000000000006-0123456789abcdef":"{other}","config":"{other}","packs/ab/{ab}":"{dir}"}}}}}}"#,
            ab = "ab".repeat(32)
        )),
        "{text}"
    );
    assert_eq!(decode_as(&c, c.version).expect("decodes"), c);

    // Content ids under version 1: refused, not half-read.
    let err = decode_as(&c, 1).unwrap_err();
    assert!(matches!(err, super::RepoError::Malformed { .. }), "{err}");
    assert!(err.to_string().contains("content ids"), "{err}");

    // Without them, the version 1 bytes exactly.
    let mut none = c.clone();
    none.cids.clear();
    none.version = none.version_for();
    assert_eq!(none.version, 1);
    assert_eq!(none.encode_plain(), commit().encode_plain());
}
