//! Sealed metadata: XChaCha20-Poly1305 under the metadata key, for objects the
//! writer must read back (pack indexes, catalog commits). See docs/FORMAT.md.

use super::RepoError;
use super::keys::RepositoryKey;
use super::xchacha::{NONCE_LEN, TAG_LEN, XChaCha};

const MAGIC: &[u8; 8] = b"PITRSEAL";
const VERSION: u8 = 1;
const PREFIX_LEN: usize = 10;

/// What a sealed blob holds; part of the authenticated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SealKind {
    /// The index at the end of a pack.
    PackIndex = 1,
    /// A catalog commit object.
    CatalogCommit = 2,
}

fn aad(kind: SealKind, name: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(PREFIX_LEN + name.len());
    v.extend_from_slice(MAGIC);
    v.push(VERSION);
    v.push(kind as u8);
    v.extend_from_slice(name.as_bytes());
    v
}

/// Seals `plain`; `bound_name` is authenticated but not stored.
pub fn seal(key: &RepositoryKey, kind: SealKind, bound_name: &str, plain: &[u8]) -> Vec<u8> {
    seal_with_nonce(key, kind, bound_name, plain, rand::random())
}

pub(crate) fn seal_with_nonce(
    key: &RepositoryKey,
    kind: SealKind,
    bound_name: &str,
    plain: &[u8],
    nonce: [u8; NONCE_LEN],
) -> Vec<u8> {
    let aad = aad(kind, bound_name);
    let mut out = Vec::with_capacity(PREFIX_LEN + NONCE_LEN + plain.len() + TAG_LEN);
    out.extend_from_slice(&aad[..PREFIX_LEN]);
    out.extend_from_slice(&nonce);
    XChaCha::new(key.meta_key()).seal_into(&nonce, &aad, plain, &mut out);
    out
}

/// Opens a sealed blob read from `object`.
pub fn open(
    key: &RepositoryKey,
    kind: SealKind,
    object: &str,
    bound_name: &str,
    sealed: &[u8],
) -> Result<Vec<u8>, RepoError> {
    if sealed.len() < PREFIX_LEN + NONCE_LEN + TAG_LEN {
        return Err(RepoError::Truncated {
            object: object.to_owned(),
            what: format!("its sealed metadata is only {} bytes", sealed.len()),
        });
    }
    if &sealed[..8] != MAGIC {
        return Err(RepoError::Tampered {
            object: object.to_owned(),
            what: "its sealed metadata has no PITRSEAL magic".into(),
        });
    }
    if sealed[8] != VERSION {
        return Err(RepoError::UnsupportedVersion {
            object: object.to_owned(),
            found: u32::from(sealed[8]),
            supported: u32::from(VERSION),
        });
    }
    if sealed[9] != kind as u8 {
        return Err(RepoError::Swapped {
            object: object.to_owned(),
            what: format!(
                "it holds sealed metadata of kind {}, expected {}",
                sealed[9], kind as u8
            ),
        });
    }
    let nonce: &[u8; NONCE_LEN] = sealed[PREFIX_LEN..PREFIX_LEN + NONCE_LEN]
        .try_into()
        .expect("a slice of NONCE_LEN");
    XChaCha::new(key.meta_key())
        .open(
            nonce,
            &aad(kind, bound_name),
            &sealed[PREFIX_LEN + NONCE_LEN..],
        )
        .map_err(|_| RepoError::MetadataAuth {
            object: object.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trip_and_binding() {
        let k = RepositoryKey::generate();
        let s = seal(&k, SealKind::CatalogCommit, "catalog/1", b"hello");
        assert_eq!(
            open(&k, SealKind::CatalogCommit, "o", "catalog/1", &s).expect("open"),
            b"hello"
        );
        let e = open(&k, SealKind::CatalogCommit, "o", "catalog/2", &s).expect_err("renamed");
        assert!(matches!(e, RepoError::MetadataAuth { .. }));
        let e = open(&k, SealKind::PackIndex, "o", "catalog/1", &s).expect_err("kind");
        assert!(matches!(e, RepoError::Swapped { .. }));
        let other = RepositoryKey::generate();
        let e = open(&other, SealKind::CatalogCommit, "o", "catalog/1", &s).expect_err("key");
        assert!(matches!(e, RepoError::MetadataAuth { .. }));
    }
}
