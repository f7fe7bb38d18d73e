//! Pack data keys. Each pack's chunk blobs are sealed with
//! XChaCha20-Poly1305 under a random 32-byte key, and that key is stored in
//! the pack's header as an age file to the recipients. So chunk data stays
//! readable only with the identity (invariant 5): the writer drops the key
//! when the pack is sealed. One X25519 exchange per pack instead of one per
//! chunk is what makes pitr faster than `zstd | age` (see BENCHMARKS.md).

use super::RepoError;
use super::keys::{ChunkId, age_decrypt, age_encrypt, decode_wrapped_key};
use super::xchacha::{NONCE_LEN, TAG_LEN, XChaCha};

const MAGIC: &[u8; 8] = b"PITRDKEY";
const VERSION: u8 = 1;

/// The smallest possible chunk blob: a nonce and a tag around nothing.
pub const BLOB_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// One pack's data key.
pub struct DataKey {
    cipher: XChaCha,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(redacted)")
    }
}

impl DataKey {
    /// A fresh random key and its wrapped form for the pack header.
    pub fn generate(recipients: &[age::x25519::Recipient]) -> (DataKey, Vec<u8>) {
        let bytes: [u8; 32] = rand::random();
        (Self::from_bytes(&bytes), Self::wrap(&bytes, recipients))
    }

    pub(crate) fn from_bytes(bytes: &[u8; 32]) -> DataKey {
        DataKey {
            cipher: XChaCha::new(bytes),
        }
    }

    fn wrap(bytes: &[u8; 32], recipients: &[age::x25519::Recipient]) -> Vec<u8> {
        let mut plain = Vec::with_capacity(41);
        plain.extend_from_slice(MAGIC);
        plain.push(VERSION);
        plain.extend_from_slice(bytes);
        age_encrypt(recipients, &plain)
    }

    /// Unwraps the key stored in pack `object`'s header.
    pub fn unwrap(
        identities: &[age::x25519::Identity],
        object: &str,
        wrapped: &[u8],
    ) -> Result<DataKey, RepoError> {
        let plain = age_decrypt(identities, object, wrapped)?;
        let bytes = decode_wrapped_key(object, &plain, MAGIC, VERSION, "a pack data key")?;
        Ok(Self::from_bytes(&bytes))
    }

    /// Seals one compressed chunk; its id is authenticated with it, so a blob
    /// moved to another chunk's place does not open.
    pub fn seal_chunk(&self, id: &ChunkId, compressed: &[u8]) -> Vec<u8> {
        self.seal_chunk_with_nonce(id, compressed, rand::random())
    }

    pub(crate) fn seal_chunk_with_nonce(
        &self,
        id: &ChunkId,
        compressed: &[u8],
        nonce: [u8; NONCE_LEN],
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(BLOB_OVERHEAD + compressed.len());
        out.extend_from_slice(&nonce);
        self.cipher.seal_into(&nonce, &id.0, compressed, &mut out);
        out
    }

    /// Opens the blob of chunk `id` read from pack `object` at `offset`.
    pub fn open_chunk(
        &self,
        object: &str,
        offset: u64,
        id: &ChunkId,
        blob: &[u8],
    ) -> Result<Vec<u8>, RepoError> {
        if blob.len() < BLOB_OVERHEAD {
            return Err(RepoError::Truncated {
                object: object.to_owned(),
                what: format!(
                    "the blob of chunk {id} at offset {offset} is only {} bytes",
                    blob.len()
                ),
            });
        }
        let (nonce, ct) = blob.split_at(NONCE_LEN);
        let nonce: &[u8; NONCE_LEN] = nonce.try_into().expect("split at NONCE_LEN");
        self.cipher
            .open(nonce, &id.0, ct)
            .map_err(|_| RepoError::Tampered {
                object: object.to_owned(),
                what: format!(
                    "the blob of chunk {id} at offset {offset} does not authenticate \
                     (altered, or another chunk's blob in its place)"
                ),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_for_the_identity_only_and_binds_the_chunk_id() {
        let id = age::x25519::Identity::generate();
        let (key, wrapped) = DataKey::generate(&[id.to_public()]);
        let a = ChunkId([1; 32]);
        let blob = key.seal_chunk(&a, b"compressed bytes");
        let back = DataKey::unwrap(std::slice::from_ref(&id), "p", &wrapped).expect("unwrap");
        assert_eq!(
            back.open_chunk("p", 14, &a, &blob).expect("open"),
            b"compressed bytes"
        );
        let e = back
            .open_chunk("p", 14, &ChunkId([2; 32]), &blob)
            .expect_err("other id");
        assert!(matches!(e, RepoError::Tampered { .. }), "{e}");
        let other = age::x25519::Identity::generate();
        let e = DataKey::unwrap(&[other], "p", &wrapped).expect_err("wrong identity");
        assert!(matches!(e, RepoError::WrongIdentity { .. }), "{e}");
        let e = back
            .open_chunk("p", 14, &a, &blob[..10])
            .expect_err("short");
        assert!(matches!(e, RepoError::Truncated { .. }), "{e}");
    }
}
