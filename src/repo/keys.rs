//! Keys: the repository key `K`, what is derived from it, chunk ids, and the
//! `keys/<key_id>` object. See docs/FORMAT.md, "Keys and who holds them".

use std::fmt;
use std::io::{Read, Write};
use std::path::Path;
use std::str::FromStr;

use super::RepoError;

const CHUNK_ID_CONTEXT: &str = "pitr 2026-11 chunk id v1";
const META_CONTEXT: &str = "pitr 2026-11 metadata v1";
const KEY_ID_CONTEXT: &str = "pitr 2026-11 key id v1";
const ITEM_HASH_CONTEXT: &str = "pitr 2026-11 item hash v1";
const KEY_MAGIC: &[u8; 8] = b"PITRKEY\0";
const KEY_VERSION: u8 = 1;

/// The id of a chunk: a keyed BLAKE3 hash of its plaintext.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

/// `Display` as lowercase hex and `Debug` as `Name(hex)` for a 32-byte id.
macro_rules! hex_id_fmt {
    ($id:ident) => {
        impl std::fmt::Display for $id {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl std::fmt::Debug for $id {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({self})", stringify!($id))
            }
        }
    };
}
pub(crate) use hex_id_fmt;

hex_id_fmt!(ChunkId);

impl FromStr for ChunkId {
    type Err = hex::FromHexError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)?;
        Ok(ChunkId(out))
    }
}

impl serde::Serialize for ChunkId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for ChunkId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The repository key `K` (32 bytes): chunk ids and metadata sealing.
#[derive(Clone)]
pub struct RepositoryKey {
    bytes: [u8; 32],
    chunk_key: [u8; 32],
    meta_key: [u8; 32],
    item_key: [u8; 32],
}

impl fmt::Debug for RepositoryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepositoryKey({})", self.key_id())
    }
}

impl RepositoryKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self::from_bytes(rand::random())
    }

    /// The key with these bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        RepositoryKey {
            bytes,
            chunk_key: blake3::derive_key(CHUNK_ID_CONTEXT, &bytes),
            meta_key: blake3::derive_key(META_CONTEXT, &bytes),
            item_key: blake3::derive_key(ITEM_HASH_CONTEXT, &bytes),
        }
    }

    /// The public name of this key (32 hex characters); reveals nothing of it.
    pub fn key_id(&self) -> String {
        hex::encode(&blake3::derive_key(KEY_ID_CONTEXT, &self.bytes)[..16])
    }

    /// The id of a chunk with this plaintext.
    pub fn chunk_id(&self, plaintext: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.chunk_key, plaintext).as_bytes())
    }

    /// A hasher for an item's end-to-end hash (see `ItemHasher`).
    pub(crate) fn item_hasher(&self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(&self.item_key)
    }

    pub(crate) fn meta_key(&self) -> &[u8; 32] {
        &self.meta_key
    }

    /// The text form kept in `state_dir/repository.key` and `key_file`.
    pub fn to_text(&self) -> String {
        format!("{}\n", hex::encode(self.bytes))
    }

    /// Parses the text form; `origin` names the file in errors.
    pub fn from_text(text: &str, origin: &Path) -> Result<Self, RepoError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| RepoError::BadKeyFile {
            path: origin.to_owned(),
        })?;
        Ok(Self::from_bytes(bytes))
    }

    /// The plaintext of a `keys/<key_id>` object (before age encryption).
    pub fn encode_key_object(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(41);
        v.extend_from_slice(KEY_MAGIC);
        v.push(KEY_VERSION);
        v.extend_from_slice(&self.bytes);
        v
    }

    /// Parses the plaintext of a `keys/<key_id>` object.
    pub fn decode_key_object(object: &str, plain: &[u8]) -> Result<Self, RepoError> {
        let bytes = decode_wrapped_key(
            object,
            plain,
            KEY_MAGIC,
            KEY_VERSION,
            "a repository key object",
        )?;
        Ok(Self::from_bytes(bytes))
    }
}

/// Parses `magic (8) | version u8 | key (32)`, the plaintext of every
/// age-wrapped key (repository key objects, pack data keys).
pub(super) fn decode_wrapped_key(
    object: &str,
    plain: &[u8],
    magic: &[u8; 8],
    version: u8,
    what: &str,
) -> Result<[u8; 32], RepoError> {
    if plain.len() != 41 || &plain[..8] != magic {
        return Err(RepoError::Malformed {
            object: object.to_owned(),
            what: format!("it does not hold {what}"),
        });
    }
    if plain[8] != version {
        return Err(RepoError::UnsupportedVersion {
            object: object.to_owned(),
            found: u32::from(plain[8]),
            supported: u32::from(version),
        });
    }
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(&plain[9..]);
    Ok(bytes)
}

/// Encrypts `plain` with age to every recipient (binary age format).
pub fn age_encrypt(recipients: &[age::x25519::Recipient], plain: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(plain.len() + 200 * recipients.len() + 64);
    // Both calls only fail on an empty recipient list (config validation
    // guarantees one) or on a failing writer (a Vec never fails).
    let enc = age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
        .expect("configuration guarantees at least one x25519 recipient");
    let mut w = enc
        .wrap_output(&mut out)
        .expect("writing to a Vec cannot fail");
    w.write_all(plain).expect("writing to a Vec cannot fail");
    w.finish().expect("writing to a Vec cannot fail");
    out
}

/// Decrypts an age file; every failure becomes an error naming `object`.
pub fn age_decrypt(
    identities: &[age::x25519::Identity],
    object: &str,
    ciphertext: &[u8],
) -> Result<Vec<u8>, RepoError> {
    use age::DecryptError as E;
    let tampered = |what: String| RepoError::Tampered {
        object: object.to_owned(),
        what,
    };
    let dec = age::Decryptor::new_buffered(ciphertext).map_err(|e| match e {
        E::UnknownFormat | E::InvalidHeader => tampered("its age header is not valid".into()),
        E::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => RepoError::Truncated {
            object: object.to_owned(),
            what: "it ends inside its age header".into(),
        },
        other => tampered(format!("its age header cannot be read: {other}")),
    })?;
    let mut r = dec
        .decrypt(identities.iter().map(|i| i as &dyn age::Identity))
        .map_err(|e| match e {
            E::NoMatchingKeys => RepoError::WrongIdentity {
                object: object.to_owned(),
            },
            E::InvalidMac => tampered("its age header MAC does not match".into()),
            other => tampered(format!("age: {other}")),
        })?;
    let mut plain = Vec::new();
    r.read_to_end(&mut plain).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            RepoError::Truncated {
                object: object.to_owned(),
                what: "its age payload ends early".into(),
            }
        } else {
            tampered(format!("its age payload does not authenticate ({e})"))
        }
    })?;
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_text_and_object_round_trip() {
        let k = RepositoryKey::generate();
        let back = RepositoryKey::from_text(&k.to_text(), Path::new("x")).expect("parse");
        assert_eq!(back.key_id(), k.key_id());
        let obj = k.encode_key_object();
        let back = RepositoryKey::decode_key_object("keys/x", &obj).expect("decode");
        assert_eq!(back.chunk_id(b"a"), k.chunk_id(b"a"));
        assert!(RepositoryKey::from_text("zz", Path::new("/k")).is_err());
    }

    #[test]
    fn chunk_ids_are_keyed() {
        let a = RepositoryKey::generate();
        let b = RepositoryKey::generate();
        assert_ne!(a.chunk_id(b"page"), b.chunk_id(b"page"));
        assert_eq!(a.chunk_id(b"page"), a.chunk_id(b"page"));
        assert_ne!(a.chunk_id(b"page").0, *blake3::hash(b"page").as_bytes());
    }

    #[test]
    fn age_errors_are_distinct() {
        let id = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let ct = age_encrypt(&[id.to_public()], b"secret data");
        assert_eq!(
            age_decrypt(std::slice::from_ref(&id), "o", &ct).expect("decrypt"),
            b"secret data"
        );
        let wrong = age_decrypt(&[other], "o", &ct).expect_err("wrong identity");
        assert!(matches!(wrong, RepoError::WrongIdentity { .. }), "{wrong}");
        let mut flipped = ct.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 1;
        let e = age_decrypt(std::slice::from_ref(&id), "o", &flipped).expect_err("tampered");
        assert!(matches!(e, RepoError::Tampered { .. }), "{e}");
        let e = age_decrypt(&[id], "o", &ct[..ct.len() - 20]).expect_err("truncated");
        assert!(
            matches!(e, RepoError::Truncated { .. } | RepoError::Tampered { .. }),
            "{e}"
        );
    }
}
