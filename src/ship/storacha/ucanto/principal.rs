//! Principals as ucanto writes them: DIDs (`did:key:z…` for ed25519 keys,
//! `did:web:…` and other methods for services) and the agent's ed25519
//! signing key in the multibase form `storacha key create` prints
//! (`@ucanto/principal/ed25519`: varint 0x1300 + secret + varint 0xed +
//! public key, base64 with padding, `M…`).

use std::fmt;

use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};

use super::UcantoError;

/// Multicodec of an ed25519 public key.
const ED25519_PUB: u64 = 0xed;
/// Multicodec of an ed25519 private key.
const ED25519_PRIV: u64 = 0x1300;
/// Multicodec ucanto prefixes a non-`did:key` DID's bytes with.
const DID_CORE: u64 = 0x0d1d;
/// The varint signature code of EdDSA (`@ipld/dag-ucan/signature`).
const EDDSA: u64 = 0xd0ed;

/// Appends `n` as an unsigned LEB128 varint.
pub(crate) fn put_varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Reads an unsigned varint at `*pos`.
pub(crate) fn get_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut n: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        n |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

/// A decentralised identifier, e.g. `did:key:z6Mk…` or
/// `did:web:up.storacha.network`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Did(String);

impl fmt::Display for Did {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Did {
    /// Parses a DID string, checking a `did:key` decodes to a key.
    pub fn parse(s: &str) -> Result<Did, UcantoError> {
        let bad = |why: &str| UcantoError::Principal(format!("{s:?} is not a DID: {why}"));
        if let Some(key) = s.strip_prefix("did:key:") {
            let (base, bytes) =
                multibase::decode(key).map_err(|e| bad(&format!("bad multibase key ({e})")))?;
            if base != multibase::Base::Base58Btc {
                return Err(bad("a did:key is base58btc (z…)"));
            }
            let mut pos = 0;
            get_varint(&bytes, &mut pos).ok_or_else(|| bad("no key type"))?;
            Ok(Did(s.to_owned()))
        } else if s.len() > 4 && s.starts_with("did:") {
            Ok(Did(s.to_owned()))
        } else {
            Err(bad("a DID starts with did:"))
        }
    }

    /// The DID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The binary form a UCAN's `iss` / `aud` holds (`@ipld/dag-ucan/did`):
    /// a `did:key`'s multicodec key bytes, or varint 0x0d1d + the text
    /// after `did:` for other methods.
    pub fn to_bytes(&self) -> Vec<u8> {
        if let Some(key) = self.0.strip_prefix("did:key:") {
            // Checked by `parse`.
            if let Ok((_, bytes)) = multibase::decode(key) {
                return bytes;
            }
        }
        let mut out = Vec::new();
        put_varint(DID_CORE, &mut out);
        out.extend_from_slice(self.0.trim_start_matches("did:").as_bytes());
        out
    }

    /// Reads the binary form back.
    pub fn from_bytes(bytes: &[u8]) -> Result<Did, UcantoError> {
        let mut pos = 0;
        let code = get_varint(bytes, &mut pos)
            .ok_or_else(|| UcantoError::Principal("an empty principal".to_owned()))?;
        if code == DID_CORE {
            let rest = std::str::from_utf8(&bytes[pos..])
                .map_err(|_| UcantoError::Principal("a DID that is not UTF-8".to_owned()))?;
            return Ok(Did(format!("did:{rest}")));
        }
        Ok(Did(format!(
            "did:key:{}",
            multibase::encode(multibase::Base::Base58Btc, bytes)
        )))
    }

    /// The ed25519 public key of a `did:key:z6Mk…`.
    pub fn ed25519_key(&self) -> Option<VerifyingKey> {
        let bytes = self.to_bytes();
        let mut pos = 0;
        if get_varint(&bytes, &mut pos)? != ED25519_PUB || !self.0.starts_with("did:key:") {
            return None;
        }
        let key: [u8; 32] = bytes.get(pos..)?.try_into().ok()?;
        VerifyingKey::from_bytes(&key).ok()
    }

    /// Whether `sig` (a ucanto signature: varint code, varint length, raw)
    /// is this `did:key`'s EdDSA signature of `payload`.
    pub fn verifies(&self, payload: &[u8], sig: &[u8]) -> bool {
        let Some(key) = self.ed25519_key() else {
            return false;
        };
        let mut pos = 0;
        if get_varint(sig, &mut pos) != Some(EDDSA) || get_varint(sig, &mut pos) != Some(64) {
            return false;
        }
        let Ok(raw) = <[u8; 64]>::try_from(&sig[pos..]) else {
            return false;
        };
        key.verify(payload, &ed25519_dalek::Signature::from_bytes(&raw))
            .is_ok()
    }
}

/// An ed25519 key that signs UCANs and receipts.
#[derive(Clone)]
pub struct Signer {
    key: SigningKey,
    did: Did,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret never reaches logs.
        f.debug_struct("Signer")
            .field("did", &self.did)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// The signer of a 32-byte ed25519 secret.
    pub fn from_secret(secret: [u8; 32]) -> Signer {
        let key = SigningKey::from_bytes(&secret);
        let mut pub_bytes = Vec::with_capacity(34);
        put_varint(ED25519_PUB, &mut pub_bytes);
        pub_bytes.extend_from_slice(key.verifying_key().as_bytes());
        let did = Did(format!(
            "did:key:{}",
            multibase::encode(multibase::Base::Base58Btc, &pub_bytes)
        ));
        Signer { key, did }
    }

    /// Parses the private key as `storacha key create` prints it (`M…`,
    /// what users keep in `W3_PRINCIPAL`).
    pub fn parse(text: &str) -> Result<Signer, UcantoError> {
        let text = text.trim();
        let (_, bytes) = multibase::decode(text).map_err(|e| {
            UcantoError::Principal(format!(
                "the principal key is not multibase ({e}); give the private key `storacha key create` prints (M…)"
            ))
        })?;
        Signer::decode(&bytes)
    }

    /// Decodes the binary key (varint 0x1300, secret, varint 0xed, public
    /// key), as it also arrives in an `http/put` task's facts.
    pub fn decode(bytes: &[u8]) -> Result<Signer, UcantoError> {
        let bad = |why: &str| {
            UcantoError::Principal(format!(
                "the principal key is not an ed25519 private key ({why}); give the private key `storacha key create` prints (M…)"
            ))
        };
        let mut pos = 0;
        if get_varint(bytes, &mut pos) != Some(ED25519_PRIV) {
            return Err(bad("wrong key type"));
        }
        let secret: [u8; 32] = bytes
            .get(pos..pos + 32)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| bad("too short"))?;
        pos += 32;
        if get_varint(bytes, &mut pos) != Some(ED25519_PUB) {
            return Err(bad("no public key after the secret"));
        }
        let signer = Signer::from_secret(secret);
        if bytes.get(pos..) != Some(signer.key.verifying_key().as_bytes().as_slice()) {
            return Err(bad("its public key does not belong to its secret"));
        }
        Ok(signer)
    }

    /// The multibase form [`Self::parse`] reads.
    pub fn format(&self) -> String {
        let mut bytes = Vec::with_capacity(68);
        put_varint(ED25519_PRIV, &mut bytes);
        bytes.extend_from_slice(self.key.as_bytes());
        put_varint(ED25519_PUB, &mut bytes);
        bytes.extend_from_slice(self.key.verifying_key().as_bytes());
        multibase::encode(multibase::Base::Base64Pad, bytes)
    }

    /// The key's `did:key`.
    pub fn did(&self) -> &Did {
        &self.did
    }

    /// A ucanto signature of `payload`: varint EdDSA code, varint length,
    /// the 64 raw bytes.
    pub fn sign(&self, payload: &[u8]) -> Vec<u8> {
        let raw = self.key.sign(payload).to_bytes();
        let mut out = Vec::with_capacity(68);
        put_varint(EDDSA, &mut out);
        put_varint(raw.len() as u64, &mut out);
        out.extend_from_slice(&raw);
        out
    }
}
