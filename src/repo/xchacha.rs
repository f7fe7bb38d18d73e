//! XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha-03, what docs/FORMAT.md
//! names) as its definition builds it: HChaCha20 derives a subkey from the
//! key and the nonce's first 16 bytes, and the IETF ChaCha20-Poly1305 of
//! RFC 8439 seals under that subkey with the nonce's last 8 bytes. `ring`
//! does the sealing: its ChaCha20-Poly1305 is compiled and tuned in its own
//! crate, while the RustCrypto type is generic and compiled, at the level
//! of this crate, in every build of it (ten times slower in a debug build,
//! which the tests run). The bytes are the same as RustCrypto's
//! `XChaCha20Poly1305`: a test below compares the two.

use chacha20::cipher::consts::U10;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

/// The nonce's length.
pub const NONCE_LEN: usize = 24;
/// The tag's length, after the ciphertext.
pub const TAG_LEN: usize = 16;

/// A key for XChaCha20-Poly1305.
pub struct XChaCha {
    key: chacha20::Key,
}

/// The authentication failed: wrong key, altered bytes or other associated
/// data.
#[derive(Debug)]
pub struct Unauthentic;

impl XChaCha {
    /// The cipher under `key`.
    pub fn new(key: &[u8; 32]) -> XChaCha {
        XChaCha { key: (*key).into() }
    }

    /// The subkey and the IETF nonce for `nonce`.
    fn ietf(&self, nonce: &[u8; NONCE_LEN]) -> (LessSafeKey, Nonce) {
        let (head, tail) = nonce.split_at(16);
        let subkey = chacha20::hchacha::<U10>(&self.key, head.into());
        let key = UnboundKey::new(&CHACHA20_POLY1305, &subkey)
            .expect("ChaCha20-Poly1305 takes a 32-byte key");
        let mut ietf = [0u8; 12];
        ietf[4..].copy_from_slice(tail);
        (LessSafeKey::new(key), Nonce::assume_unique_for_key(ietf))
    }

    /// Seals `plain` with `aad` authenticated beside it: the ciphertext and
    /// then the tag, appended to `out`.
    pub fn seal_into(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], plain: &[u8], out: &mut Vec<u8>) {
        let (key, nonce) = self.ietf(nonce);
        let start = out.len();
        out.reserve(plain.len() + TAG_LEN);
        out.extend_from_slice(plain);
        let tag = key
            .seal_in_place_separate_tag(nonce, Aad::from(aad), &mut out[start..])
            .expect("ChaCha20-Poly1305 seals any in-memory buffer");
        out.extend_from_slice(tag.as_ref());
    }

    /// Opens what [`Self::seal_into`] made (ciphertext and tag) under the
    /// same nonce and associated data.
    pub fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, Unauthentic> {
        let (key, nonce) = self.ietf(nonce);
        let mut buf = sealed.to_vec();
        let plain_len = key
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .map_err(|_| Unauthentic)?
            .len();
        buf.truncate(plain_len);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    use chacha20poly1305::{XChaCha20Poly1305, XNonce};

    /// The same bytes as RustCrypto's XChaCha20Poly1305, both ways, for
    /// lengths around the 64-byte block and the 16-byte Poly1305 block.
    #[test]
    fn equals_rustcrypto_xchacha20poly1305() {
        for len in [0usize, 1, 15, 16, 17, 63, 64, 65, 255, 256, 1000, 70_000] {
            let key: [u8; 32] = rand::random();
            let nonce: [u8; NONCE_LEN] = rand::random();
            let aad: Vec<u8> = (0..(len % 37) as u8).collect();
            let plain: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
            let theirs = XChaCha20Poly1305::new(&key.into())
                .encrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: &plain,
                        aad: &aad,
                    },
                )
                .expect("encrypt");
            let mut ours = Vec::new();
            XChaCha::new(&key).seal_into(&nonce, &aad, &plain, &mut ours);
            assert_eq!(ours, theirs, "sealed, {len} bytes");
            assert_eq!(
                XChaCha::new(&key)
                    .open(&nonce, &aad, &theirs)
                    .expect("ours opens theirs"),
                plain
            );
        }
    }

    /// The test vector of draft-irtf-cfrg-xchacha-03, appendix A.3.1.
    #[test]
    fn the_draft_test_vector() {
        let hex = |s: &str| -> Vec<u8> {
            let s: String = s.split_whitespace().collect();
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
                .collect()
        };
        let plain = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let aad = hex("50515253c0c1c2c3c4c5c6c7");
        let key: [u8; 32] = hex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
            .try_into()
            .expect("32");
        let nonce: [u8; 24] = hex("404142434445464748494a4b4c4d4e4f5051525354555657")
            .try_into()
            .expect("24");
        let want = hex(
            "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb
             731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452
             2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9
             21f9664c97637da9768812f615c68b13b52e
             c0875924c1c7987947deafd8780acf49",
        );
        let mut got = Vec::new();
        XChaCha::new(&key).seal_into(&nonce, &aad, plain, &mut got);
        assert_eq!(got, want);
        let mut bad = got.clone();
        bad[3] ^= 1;
        assert!(XChaCha::new(&key).open(&nonce, &aad, &bad).is_err());
        assert!(XChaCha::new(&key).open(&nonce, b"other", &got).is_err());
    }
}
