//! Objects as CAR files (CARv1), the way Storacha's tools pack a file: the
//! object is cut into 1 MiB raw leaves (CIDv1, `raw`, SHA-256); an object of
//! one leaf or less is that leaf alone, a larger one gets a UnixFS `File`
//! root (`dag-pb`) linking every leaf — a balanced layout of width 1024, so
//! one level up to 1 GiB. The header names the root. These are the defaults
//! of the `ipfs-car` npm package (`ipfs-car pack --no-wrap --output`), and
//! the test compares the bytes with it.

use cid::Cid;
use cid::multihash::Multihash;
use sha2::{Digest, Sha256};

/// Leaf size.
const CHUNK: usize = 1 << 20;
/// Children per node; deeper trees (objects over 1 GiB) are not made.
const WIDTH: usize = 1024;
/// Multicodec codes, for the whole of the Storacha destination.
pub(super) const RAW: u64 = 0x55;
pub(super) const DAG_PB: u64 = 0x70;
pub(super) const CAR: u64 = 0x0202;
pub(super) const SHA2_256: u64 = 0x12;

/// Why an object cannot be packed.
#[derive(Debug, thiserror::Error)]
pub enum CarError {
    /// Larger than one level of links holds.
    #[error("{0} bytes is more than a one-level UnixFS file holds (1 GiB)")]
    TooLarge(usize),
}

/// The SHA-256 multihash of `bytes`: the hash of every CID pitr writes.
pub(super) fn sha256(bytes: &[u8]) -> Multihash<64> {
    Multihash::<64>::wrap(SHA2_256, &Sha256::digest(bytes))
        .expect("a 32-byte digest fits a 64-byte multihash")
}

pub(super) fn cid_of(codec: u64, block: &[u8]) -> Cid {
    Cid::new_v1(codec, sha256(block))
}

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A protobuf length-delimited field.
fn field_bytes(field: u64, bytes: &[u8], out: &mut Vec<u8>) {
    varint(field << 3 | 2, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// A protobuf varint field.
fn field_varint(field: u64, n: u64, out: &mut Vec<u8>) {
    varint(field << 3, out);
    varint(n, out);
}

/// The `dag-pb` root of a multi-leaf file: links (hash, empty name, size),
/// then the UnixFS data (type File, file size, each leaf's size).
fn file_root(leaves: &[(Cid, usize)]) -> Vec<u8> {
    let mut node = Vec::new();
    for (cid, size) in leaves {
        let mut link = Vec::new();
        field_bytes(1, &cid.to_bytes(), &mut link);
        field_bytes(2, b"", &mut link);
        field_varint(3, *size as u64, &mut link);
        field_bytes(2, &link, &mut node);
    }
    let mut data = Vec::new();
    field_varint(1, 2, &mut data);
    field_varint(3, leaves.iter().map(|(_, s)| *s as u64).sum(), &mut data);
    for (_, size) in leaves {
        field_varint(4, *size as u64, &mut data);
    }
    field_bytes(1, &data, &mut node);
    node
}

/// The blocks of `data` as a UnixFS file: (CID, bytes) in the order
/// ipfs-car writes them (leaves, then the root), the root CID, and the
/// DAG's total size (the `Tsize` a parent link records).
type FileDag<'a> = (Vec<(Cid, std::borrow::Cow<'a, [u8]>)>, Cid, u64);

fn file_dag(data: &[u8]) -> Result<FileDag<'_>, CarError> {
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![data]
    } else {
        data.chunks(CHUNK).collect()
    };
    if chunks.len() > WIDTH {
        return Err(CarError::TooLarge(data.len()));
    }
    let mut blocks: Vec<(Cid, std::borrow::Cow<'_, [u8]>)> = chunks
        .iter()
        .map(|c| (cid_of(RAW, c), std::borrow::Cow::Borrowed(*c)))
        .collect();
    if blocks.len() == 1 {
        let root = blocks[0].0;
        return Ok((blocks, root, data.len() as u64));
    }
    let sizes: Vec<(Cid, usize)> = blocks.iter().map(|(c, b)| (*c, b.len())).collect();
    let node = file_root(&sizes);
    let root = cid_of(DAG_PB, &node);
    let tsize = (node.len() + data.len()) as u64;
    blocks.push((root, std::borrow::Cow::Owned(node)));
    Ok((blocks, root, tsize))
}

/// A CARv1 with `root` in its header and `blocks` in order.
pub(super) fn write_car(root: &Cid, blocks: &[(Cid, &[u8])]) -> Vec<u8> {
    let payload: usize = blocks.iter().map(|(_, b)| b.len() + 48).sum();
    let mut out = Vec::with_capacity(payload + 64);
    // Header: dag-cbor {"roots": [CID], "version": 1}, keys in dag-cbor
    // order; a CID is tag 42 over its bytes behind a 0x00 prefix.
    let cid_bytes = root.to_bytes();
    let mut header = vec![0xa2, 0x65];
    header.extend_from_slice(b"roots");
    header.extend_from_slice(&[0x81, 0xd8, 0x2a, 0x58, (cid_bytes.len() + 1) as u8, 0x00]);
    header.extend_from_slice(&cid_bytes);
    header.push(0x67);
    header.extend_from_slice(b"version");
    header.push(0x01);
    varint(header.len() as u64, &mut out);
    out.extend_from_slice(&header);
    for (cid, bytes) in blocks {
        let c = cid.to_bytes();
        varint((c.len() + bytes.len()) as u64, &mut out);
        out.extend_from_slice(&c);
        out.extend_from_slice(bytes);
    }
    out
}

/// The CAR file of `data` and its root CID.
pub fn pack(data: &[u8]) -> Result<(Cid, Vec<u8>), CarError> {
    let (blocks, root, _) = file_dag(data)?;
    let refs: Vec<(Cid, &[u8])> = blocks.iter().map(|(c, b)| (*c, b.as_ref())).collect();
    Ok((root, write_car(&root, &refs)))
}

/// An object packed for Storacha: the file wrapped in a UnixFS directory
/// with one entry, so the upload names its key.
#[derive(Debug, Clone)]
pub struct NamedCar {
    /// The directory's CID: the upload's root.
    pub root: Cid,
    /// The file's CID (the directory's only entry).
    pub file: Cid,
    /// The CAR's own CID (codec `car`, SHA-256 of the CAR bytes): the shard.
    pub shard: Cid,
    /// The CAR bytes.
    pub bytes: Vec<u8>,
}

/// The CAR of `data` as a file named `name` inside a directory, the way
/// `ipfs-car pack FILE` (wrapping, its default) writes it: the file's
/// blocks, then the directory node (a `dag-pb` node with one link
/// `name → file` and UnixFS data `{Type: Directory}`).
pub fn pack_named(name: &str, data: &[u8]) -> Result<NamedCar, CarError> {
    let (mut blocks, file, tsize) = file_dag(data)?;
    let dir = dir_node(name, &file, tsize);
    let root = cid_of(DAG_PB, &dir);
    blocks.push((root, std::borrow::Cow::Owned(dir)));
    let refs: Vec<(Cid, &[u8])> = blocks.iter().map(|(c, b)| (*c, b.as_ref())).collect();
    let bytes = write_car(&root, &refs);
    let shard = shard_cid(&bytes);
    Ok(NamedCar {
        root,
        file,
        shard,
        bytes,
    })
}

/// The root CID [`pack_named`] gives `data` named `name`, without writing
/// the CAR: the same hashes, no copy of the bytes.
pub fn root_named(name: &str, data: &[u8]) -> Result<Cid, CarError> {
    let (_, file, tsize) = file_dag(data)?;
    Ok(cid_of(DAG_PB, &dir_node(name, &file, tsize)))
}

/// The `dag-pb` directory node with one link `name → file`.
fn dir_node(name: &str, file: &Cid, tsize: u64) -> Vec<u8> {
    let mut link = Vec::new();
    field_bytes(1, &file.to_bytes(), &mut link);
    field_bytes(2, name.as_bytes(), &mut link);
    field_varint(3, tsize, &mut link);
    let mut dir = Vec::new();
    field_bytes(2, &link, &mut dir);
    let mut unixfs = Vec::new();
    field_varint(1, 1, &mut unixfs);
    field_bytes(1, &unixfs, &mut dir);
    dir
}

/// The CID Storacha names a CAR by (`bag…`): codec `car` (0x0202) over
/// the SHA-256 of the CAR's bytes, as `ipfs-car hash` prints it.
pub fn shard_cid(car: &[u8]) -> Cid {
    cid_of(CAR, car)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_named_is_the_root_pack_named_writes() {
        for size in [0usize, 1, CHUNK, CHUNK + 1, 3 * CHUNK] {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 + 3) as u8).collect();
            let name = "pitr%2Fpacks%2Fab%2Fabc";
            assert_eq!(
                root_named(name, &data).expect("root"),
                pack_named(name, &data).expect("pack").root,
                "{size} B"
            );
        }
    }
}
