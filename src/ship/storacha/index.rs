//! The sharded-DAG index that lets Storacha's gateways find an upload's
//! blocks (`@storacha/blob-index`, `sharded-dag-index.js`): a CAR whose
//! root is `{"index/sharded/dag@0.1": {content: root, shards: [link]}}`
//! and whose one other block is `[shard multihash, [[block multihash,
//! [offset, length]], …]]` — every block's data within the shard CAR, and
//! the shard itself at `[0, its length]`, sorted by digest.

use cid::Cid;
use ipld_core::ipld::Ipld;

use super::car::{shard_cid, write_car};
use super::service::multihash;
use super::ucanto::{Block, map, principal::get_varint};

/// The index format's name.
const VERSION: &str = "index/sharded/dag@0.1";

/// Why a CAR cannot be indexed.
#[derive(Debug, thiserror::Error)]
#[error("cannot index the CAR: {0}")]
pub struct IndexError(String);

/// The index CAR of the upload `root` stored as the one shard `car`, and
/// the index's link (codec `car`) for `space/index/add`.
pub fn sharded_dag_index(root: &Cid, car: &[u8]) -> Result<(Cid, Vec<u8>), IndexError> {
    let bad = |why: &str| IndexError(why.to_owned());
    let mut slices: Vec<(Vec<u8>, u64, u64)> = Vec::new();
    let mut pos = 0;
    let hlen = get_varint(car, &mut pos).ok_or_else(|| bad("no header"))? as usize;
    pos = pos
        .checked_add(hlen)
        .filter(|&p| p <= car.len())
        .ok_or_else(|| bad("header longer than the CAR"))?;
    while pos < car.len() {
        let len = get_varint(car, &mut pos).ok_or_else(|| bad("a bad section length"))? as usize;
        let end = pos
            .checked_add(len)
            .filter(|&e| e <= car.len())
            .ok_or_else(|| bad("a section past the end"))?;
        let mut cur = std::io::Cursor::new(&car[pos..end]);
        let cid = Cid::read_bytes(&mut cur).map_err(|e| IndexError(e.to_string()))?;
        let data = pos + cur.position() as usize;
        slices.push((cid.hash().to_bytes(), data as u64, (end - data) as u64));
        pos = end;
    }
    let shard = multihash(car);
    slices.push((shard.clone(), 0, car.len() as u64));
    // By digest, as the JS archive sorts them; all SHA-256, so the
    // multihash prefix is common and the order is the digest's.
    slices.sort_by(|a, b| a.0.cmp(&b.0));
    slices.dedup_by(|a, b| a.0 == b.0);
    let list = slices
        .into_iter()
        .map(|(mh, off, len)| {
            Ipld::List(vec![
                Ipld::Bytes(mh),
                Ipld::List(vec![Ipld::Integer(off.into()), Ipld::Integer(len.into())]),
            ])
        })
        .collect();
    let shard_block = Block::cbor(&Ipld::List(vec![Ipld::Bytes(shard), Ipld::List(list)]));
    let root_block = Block::cbor(&map([(
        VERSION,
        map([
            ("content", Ipld::Link(*root)),
            ("shards", Ipld::List(vec![Ipld::Link(shard_block.cid)])),
        ]),
    )]));
    let bytes = write_car(
        &root_block.cid,
        &[
            (root_block.cid, &root_block.bytes),
            (shard_block.cid, &shard_block.bytes),
        ],
    );
    Ok((shard_cid(&bytes), bytes))
}

#[cfg(test)]
mod tests {
    use super::super::car::pack_named;
    use super::super::verify;
    use super::*;

    #[test]
    fn slices_point_at_each_block() {
        let data: Vec<u8> = (0..(3 << 20) + 5).map(|i| (i % 251) as u8).collect();
        let car = pack_named("pitr%2Fx", &data).expect("pack");
        let (link, bytes) = sharded_dag_index(&car.root, &car.bytes).expect("index");
        assert_eq!(link, shard_cid(&bytes));
        let blocks = verify::blocks(&bytes).expect("a valid CAR");
        assert_eq!(blocks.len(), 2);
        let shard = blocks
            .iter()
            .find(|(c, _)| **c != super::super::ucanto::car_blocks(&bytes).expect("car").0[0])
            .expect("the shard block");
        let v: Ipld = serde_ipld_dagcbor::from_slice(shard.1).expect("cbor");
        let Ipld::List(top) = v else { panic!("a list") };
        let Ipld::List(slices) = &top[1] else {
            panic!("slices")
        };
        // Four leaves (3 MiB + 5 B), the file root, the directory and the
        // shard itself.
        assert_eq!(slices.len(), 7);
        let in_car = verify::blocks(&car.bytes).expect("pack CAR");
        for s in slices {
            let Ipld::List(s) = s else { panic!("slice") };
            let (Ipld::Bytes(mh), Ipld::List(pos)) = (&s[0], &s[1]) else {
                panic!("slice")
            };
            let (Ipld::Integer(off), Ipld::Integer(len)) = (&pos[0], &pos[1]) else {
                panic!("pos")
            };
            let range = &car.bytes[*off as usize..(*off + *len) as usize];
            if *mh == multihash(&car.bytes) {
                assert_eq!(range, car.bytes.as_slice());
            } else {
                let block = in_car
                    .iter()
                    .find(|(c, _)| c.hash().to_bytes() == *mh)
                    .expect("a block of the CAR");
                assert_eq!(range, *block.1);
            }
        }
    }
}
