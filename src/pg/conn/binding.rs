//! SCRAM channel binding `tls-server-end-point` (RFC 5929): the hash of
//! the server's certificate, with the hash function its signature uses
//! (MD5 and SHA-1 become SHA-256), which the server folds into its SCRAM
//! proof as well. A man in the middle with another certificate then fails
//! authentication even where the certificate itself is not checked.

use sha2::Digest;

/// The binding data of the certificate `der`; `None` when its signature
/// algorithm has no defined hash here (RSA-PSS, Ed25519), as PostgreSQL's
/// own server cannot bind with those either.
pub(super) fn tls_server_end_point(der: &[u8]) -> Option<Vec<u8>> {
    let oid = signature_algorithm(der)?;
    // Under 1.2.840.113549.1.1 (RSA) and 1.2.840.10045.4 (ECDSA).
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    let hash = match oid {
        [rest @ .., last] if rest == RSA => match last {
            0x04 | 0x05 | 0x0b => Hash::Sha256,
            0x0c => Hash::Sha384,
            0x0d => Hash::Sha512,
            _ => return None,
        },
        [rest @ .., 0x01] if rest == ECDSA => Hash::Sha256,
        [rest @ .., 0x03, n] if rest == ECDSA => match n {
            0x02 => Hash::Sha256,
            0x03 => Hash::Sha384,
            0x04 => Hash::Sha512,
            _ => return None,
        },
        _ => return None,
    };
    Some(match hash {
        Hash::Sha256 => sha2::Sha256::digest(der).to_vec(),
        Hash::Sha384 => sha2::Sha384::digest(der).to_vec(),
        Hash::Sha512 => sha2::Sha512::digest(der).to_vec(),
    })
}

enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

/// The OID bytes of `Certificate.signatureAlgorithm`: the certificate is a
/// SEQUENCE of the signed part, the algorithm (a SEQUENCE starting with
/// the OID) and the signature.
fn signature_algorithm(der: &[u8]) -> Option<&[u8]> {
    let (tag, cert, _) = tlv(der)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _, after_tbs) = tlv(cert)?;
    let (tag, alg, _) = tlv(after_tbs)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, oid, _) = tlv(alg)?;
    (tag == 0x06).then_some(oid)
}

/// One DER element: tag, content, and what follows it. Lengths in the
/// short form or up to four bytes of the long form; anything else (or a
/// length past the end) is `None`.
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &x| (acc << 8) | usize::from(x));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DER element with a short-form length.
    fn el(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut v = vec![tag, u8::try_from(content.len()).expect("short")];
        v.extend_from_slice(content);
        v
    }

    fn cert_with(oid: &[u8]) -> Vec<u8> {
        let tbs = el(0x30, &[0x02, 0x01, 0x01]);
        let alg = el(0x30, &el(0x06, oid));
        let sig = el(0x03, &[0x00, 0xaa]);
        el(0x30, &[tbs, alg, sig].concat())
    }

    #[test]
    fn the_hash_follows_the_signature_algorithm() {
        let ecdsa256 = cert_with(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]);
        assert_eq!(
            tls_server_end_point(&ecdsa256),
            Some(sha2::Sha256::digest(&ecdsa256).to_vec())
        );
        let rsa384 = cert_with(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c]);
        assert_eq!(tls_server_end_point(&rsa384).map(|h| h.len()), Some(48));
        // SHA-1 signatures bind with SHA-256.
        let rsa_sha1 = cert_with(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05]);
        assert_eq!(tls_server_end_point(&rsa_sha1).map(|h| h.len()), Some(32));
        // Ed25519 (1.3.101.112): no binding.
        assert_eq!(tls_server_end_point(&cert_with(&[0x2b, 0x65, 0x70])), None);
        // Garbage and truncation: no binding, no panic.
        assert_eq!(tls_server_end_point(&[0x30, 0x82, 0xff]), None);
        assert_eq!(tls_server_end_point(&ecdsa256[..ecdsa256.len() - 1]), None);
    }
}
