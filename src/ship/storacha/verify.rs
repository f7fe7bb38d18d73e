//! Reading back what a gateway serves, trusting nothing but the CID pitr
//! recorded: every block of a CAR is hashed and checked against its CID,
//! then the UnixFS DAG is walked from the expected root (the CAR header and
//! block order are not trusted), so a tampered, truncated or swapped answer
//! is an error, never bytes.

use std::collections::HashMap;
use std::io::Cursor;

use cid::Cid;
use sha2::{Digest, Sha256};

use super::car::{DAG_PB, RAW, SHA2_256};

/// Deeper than any DAG pitr writes (directory → file root → leaves).
const MAX_DEPTH: usize = 8;

/// Why bytes from a gateway were refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The bytes are not a well-formed CAR or UnixFS node.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// What was being parsed.
        what: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// A block's bytes do not hash to its CID.
    #[error("block {cid} does not hash to its CID (tampered or corrupt)")]
    HashMismatch {
        /// The block's claimed CID.
        cid: Cid,
    },
    /// A block the DAG links to is not in the answer.
    #[error("block {0} is missing from the answer")]
    Missing(Cid),
    /// A CID with a hash or codec pitr never writes.
    #[error("block {cid}: unsupported {what}")]
    Unsupported {
        /// The CID.
        cid: Cid,
        /// What is unsupported.
        what: String,
    },
    /// The DAG is not the single-file directory pitr writes.
    #[error("{0}")]
    Shape(String),
}

impl VerifyError {
    /// Whether the answer looks cut short (a block or the CAR ends early,
    /// a linked block is absent) rather than wrong.
    pub fn is_truncation(&self) -> bool {
        match self {
            VerifyError::Missing(_) => true,
            VerifyError::Malformed { detail, .. } => {
                detail.contains("truncated")
                    || detail.contains("ends early")
                    || detail.contains("longer than the file")
            }
            _ => false,
        }
    }
}

fn malformed(what: &'static str, detail: impl Into<String>) -> VerifyError {
    VerifyError::Malformed {
        what,
        detail: detail.into(),
    }
}

/// Whether `bytes` hash to `cid` (SHA-256 only: all pitr and Storacha write).
pub fn check_block(cid: &Cid, bytes: &[u8]) -> Result<(), VerifyError> {
    let mh = cid.hash();
    if mh.code() != SHA2_256 {
        return Err(VerifyError::Unsupported {
            cid: *cid,
            what: format!("multihash 0x{:x}", mh.code()),
        });
    }
    if mh.digest() != Sha256::digest(bytes).as_slice() {
        return Err(VerifyError::HashMismatch { cid: *cid });
    }
    Ok(())
}

fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, VerifyError> {
    let mut n: u64 = 0;
    for shift in (0..64).step_by(7) {
        let Some(&b) = buf.get(*pos) else {
            return Err(malformed("varint", "ends early"));
        };
        *pos += 1;
        n |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(n);
        }
    }
    Err(malformed("varint", "longer than 64 bits"))
}

/// Every block of a CARv1, each checked against its CID.
pub fn blocks(car: &[u8]) -> Result<HashMap<Cid, &[u8]>, VerifyError> {
    let mut pos = 0;
    let header_len = read_varint(car, &mut pos)? as usize;
    pos = pos
        .checked_add(header_len)
        .filter(|&p| p <= car.len())
        .ok_or_else(|| malformed("CAR", "header longer than the file"))?;
    let mut out = HashMap::new();
    while pos < car.len() {
        let len = read_varint(car, &mut pos)? as usize;
        let end = pos
            .checked_add(len)
            .filter(|&e| e <= car.len())
            .ok_or_else(|| malformed("CAR", "block longer than the file (truncated?)"))?;
        let section = &car[pos..end];
        let mut cur = Cursor::new(section);
        let cid =
            Cid::read_bytes(&mut cur).map_err(|e| malformed("CAR block CID", e.to_string()))?;
        let data = &section[cur.position() as usize..];
        check_block(&cid, data)?;
        out.insert(cid, data);
        pos = end;
    }
    Ok(out)
}

/// A `dag-pb` link.
#[derive(Debug, Clone)]
pub struct Link {
    /// Target.
    pub cid: Cid,
    /// Entry name (empty in files).
    pub name: String,
    /// Cumulative size of the target DAG.
    pub tsize: u64,
}

/// A decoded `dag-pb` node with its UnixFS data.
#[derive(Debug, Default)]
pub struct PbNode {
    /// Links in order.
    pub links: Vec<Link>,
    /// UnixFS type (1 directory, 2 file).
    pub kind: u64,
    /// Inline file data.
    pub data: Vec<u8>,
    /// UnixFS file size.
    pub filesize: Option<u64>,
}

/// Protobuf fields of one message: (field number, wire value).
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn fields(buf: &[u8]) -> Result<Vec<(u64, Field<'_>)>, VerifyError> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < buf.len() {
        let tag = read_varint(buf, &mut pos)?;
        match tag & 7 {
            0 => out.push((tag >> 3, Field::Varint(read_varint(buf, &mut pos)?))),
            2 => {
                let len = read_varint(buf, &mut pos)? as usize;
                let end = pos
                    .checked_add(len)
                    .filter(|&e| e <= buf.len())
                    .ok_or_else(|| malformed("dag-pb node", "field past the end"))?;
                out.push((tag >> 3, Field::Bytes(&buf[pos..end])));
                pos = end;
            }
            t => return Err(malformed("dag-pb node", format!("wire type {t}"))),
        }
    }
    Ok(out)
}

/// Decodes a `dag-pb` node and its UnixFS data.
pub fn decode_pb(block: &[u8]) -> Result<PbNode, VerifyError> {
    let mut node = PbNode::default();
    for (num, f) in fields(block)? {
        match (num, f) {
            (2, Field::Bytes(l)) => {
                let mut cid = None;
                let mut name = String::new();
                let mut tsize = 0;
                for (n, lf) in fields(l)? {
                    match (n, lf) {
                        (1, Field::Bytes(h)) => {
                            cid = Some(
                                Cid::try_from(h)
                                    .map_err(|e| malformed("dag-pb link", e.to_string()))?,
                            )
                        }
                        (2, Field::Bytes(b)) => {
                            name = String::from_utf8(b.to_vec())
                                .map_err(|_| malformed("dag-pb link", "name is not UTF-8"))?
                        }
                        (3, Field::Varint(v)) => tsize = v,
                        _ => return Err(malformed("dag-pb link", format!("field {n}"))),
                    }
                }
                let cid = cid.ok_or_else(|| malformed("dag-pb link", "no hash"))?;
                node.links.push(Link { cid, name, tsize });
            }
            (1, Field::Bytes(d)) => {
                for (n, uf) in fields(d)? {
                    match (n, uf) {
                        (1, Field::Varint(v)) => node.kind = v,
                        (2, Field::Bytes(b)) => node.data = b.to_vec(),
                        (3, Field::Varint(v)) => node.filesize = Some(v),
                        // Block sizes, hash type, fanout, mode, mtime.
                        _ => {}
                    }
                }
            }
            _ => return Err(malformed("dag-pb node", format!("field {num}"))),
        }
    }
    Ok(node)
}

/// The bytes of the UnixFS file at `cid`, from `blocks`.
pub fn file_bytes(
    cid: &Cid,
    blocks: &HashMap<Cid, &[u8]>,
    out: &mut Vec<u8>,
    depth: usize,
) -> Result<(), VerifyError> {
    let block = blocks.get(cid).ok_or(VerifyError::Missing(*cid))?;
    match cid.codec() {
        RAW => {
            out.extend_from_slice(block);
            Ok(())
        }
        DAG_PB if depth < MAX_DEPTH => {
            let node = decode_pb(block)?;
            if node.kind != 2 {
                return Err(VerifyError::Shape(format!(
                    "block {cid} is UnixFS type {}, not a file",
                    node.kind
                )));
            }
            let start = out.len();
            out.extend_from_slice(&node.data);
            for l in &node.links {
                file_bytes(&l.cid, blocks, out, depth + 1)?;
            }
            if let Some(size) = node.filesize {
                let got = (out.len() - start) as u64;
                if got != size {
                    return Err(VerifyError::Shape(format!(
                        "file {cid} holds {got} bytes, its node says {size}"
                    )));
                }
            }
            Ok(())
        }
        DAG_PB => Err(VerifyError::Shape(format!(
            "file {cid} is nested deeper than {MAX_DEPTH} levels"
        ))),
        c => Err(VerifyError::Unsupported {
            cid: *cid,
            what: format!("codec 0x{c:x}"),
        }),
    }
}

/// The one entry of a pitr upload's root directory block: (name, file).
pub fn single_entry(root: &Cid, block: &[u8]) -> Result<Link, VerifyError> {
    if root.codec() != DAG_PB {
        return Err(VerifyError::Shape(format!(
            "root {root} is not a directory"
        )));
    }
    let node = decode_pb(block)?;
    if node.kind != 1 || node.links.len() != 1 {
        return Err(VerifyError::Shape(format!(
            "root {root} is not a directory of one entry"
        )));
    }
    Ok(node.links[0].clone())
}

/// The file a verified CAR holds under directory `root` (entry `name`).
pub fn extract(car: &[u8], root: &Cid, name: &str) -> Result<Vec<u8>, VerifyError> {
    let blocks = blocks(car)?;
    let dir = blocks.get(root).ok_or(VerifyError::Missing(*root))?;
    let entry = single_entry(root, dir)?;
    if entry.name != name {
        return Err(VerifyError::Shape(format!(
            "root {root} names {:?}, not {name:?}",
            entry.name
        )));
    }
    let mut out = Vec::new();
    file_bytes(&entry.cid, &blocks, &mut out, 0)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::car::pack_named;
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        for len in [0usize, 1, 1 << 20, (1 << 20) + 1, 3 << 20] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let car = pack_named("packs%2Fab", &data).unwrap();
            assert_eq!(extract(&car.bytes, &car.root, "packs%2Fab").unwrap(), data);
            assert!(extract(&car.bytes, &car.root, "other").is_err());
            if len > 0 {
                let mut bad = car.bytes.clone();
                let n = bad.len();
                bad[n - 40] ^= 1;
                assert!(extract(&bad, &car.root, "packs%2Fab").is_err());
                assert!(extract(&car.bytes[..n - 10], &car.root, "packs%2Fab").is_err());
            }
        }
    }
}
