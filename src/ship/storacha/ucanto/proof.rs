//! The delegation an agent invokes with: `storacha delegation create …
//! --base64` writes it as a CID string (base64 multibase, `m…`) whose codec
//! is `car` (0x0202) and whose multihash is the identity hash of the CAR;
//! without `--base64` it writes the CAR itself. The CAR's root is the
//! archive variant `{"ucan@0.9.1": <delegation>}` (`Delegation.archive` in
//! `@ucanto/core`); its other blocks are the delegation and its proofs.

use std::collections::HashMap;

use cid::Cid;
use ipld_core::ipld::Ipld;

use super::super::car::CAR;
use super::principal::{Did, get_varint};
use super::ucan::Ucan;
use super::{Block, UcantoError, car_blocks, field, link};

/// The identity multihash.
const IDENTITY: u64 = 0x00;

/// A delegation with every block of its proof chain.
#[derive(Debug, Clone)]
pub struct Proof {
    /// The delegation's link (what an invocation's `prf` names).
    pub cid: Cid,
    /// The delegation itself.
    pub ucan: Ucan,
    /// Its proofs' blocks then its own, in the order ucanto exports them
    /// (`exportDAG`: each proof's sub-DAG depth first, then the root).
    pub blocks: Vec<Block>,
}

impl Proof {
    /// Reads a proof file: the `--base64` string or the CAR bytes.
    pub fn parse(bytes: &[u8]) -> Result<Proof, UcantoError> {
        let text = std::str::from_utf8(bytes).ok().map(str::trim);
        let car = match text {
            Some(t) if !t.is_empty() && t.is_ascii() => identity_car(t)?,
            _ => bytes.to_vec(),
        };
        Proof::from_archive(&car)
    }

    /// Reads a delegation archive (CAR).
    pub fn from_archive(car: &[u8]) -> Result<Proof, UcantoError> {
        let bad = |why: String| {
            UcantoError::Proof(format!(
                "the proof is not a delegation archive ({why}); give what `storacha delegation create <agent DID> --base64 …` writes"
            ))
        };
        let (roots, blocks) = car_blocks(car).map_err(|e| bad(e.to_string()))?;
        let root = roots.first().ok_or_else(|| bad("no root".to_owned()))?;
        let variant = blocks
            .get(root)
            .ok_or_else(|| bad("its root block is missing".to_owned()))?;
        let v: Ipld = serde_ipld_dagcbor::from_slice(variant).map_err(|e| bad(e.to_string()))?;
        let link = field(&v, "ucan@0.9.1")
            .and_then(link)
            .ok_or_else(|| bad("its root is not {\"ucan@0.9.1\": link}".to_owned()))?;
        let mut out = Vec::new();
        let ucan = export(&link, &blocks, &mut out, 0).map_err(|e| bad(e.to_string()))?;
        Ok(Proof {
            cid: link,
            ucan,
            blocks: out,
        })
    }

    /// Checks that the delegation is for `agent`, covers `space` and has
    /// not expired at `now` (Unix seconds).
    pub fn check(&self, agent: &Did, space: &Did, now: i64) -> Result<(), UcantoError> {
        if &self.ucan.aud != agent {
            return Err(UcantoError::Proof(format!(
                "the proof delegates to {}, but the principal key is {agent}; create the delegation for this key: `storacha delegation create {agent} {} --base64`",
                self.ucan.aud,
                super::delegation_flags()
            )));
        }
        if !self
            .ucan
            .abilities()
            .any(|(_, with)| with == space.as_str() || with == "ucan:*")
        {
            let spaces: Vec<&str> = self.ucan.abilities().map(|(_, w)| w).collect();
            return Err(UcantoError::Proof(format!(
                "the proof is for {}, not for the space {space}; set space to the proof's space, or run `storacha space use {space}` and create the delegation again: `storacha delegation create {agent} {} --base64`",
                dedup(&spaces),
                super::delegation_flags()
            )));
        }
        if let Some(exp) = self.ucan.exp.filter(|&e| e <= now) {
            return Err(UcantoError::Proof(format!(
                "the proof expired at {} (Unix {exp}); create a new one: `storacha delegation create {agent} {} --base64` (without --expiration it never expires)",
                jiff::Timestamp::from_second(exp)
                    .map_or_else(|_| exp.to_string(), |t| t.to_string()),
                super::delegation_flags()
            )));
        }
        Ok(())
    }

    /// Whether the delegation grants `ability` on `space` (`*` and `ns/*`
    /// match as ucanto matches them).
    pub fn grants(&self, ability: &str, space: &Did) -> bool {
        self.ucan.abilities().any(|(can, with)| {
            (with == space.as_str() || with == "ucan:*")
                && (can == ability
                    || can == "*"
                    || can.strip_suffix("/*").is_some_and(|ns| {
                        ability.starts_with(ns) && ability[ns.len()..].starts_with('/')
                    }))
        })
    }
}

fn dedup(v: &[&str]) -> String {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.dedup();
    v.join(", ")
}

/// The CAR inside a `--base64` identity CID.
fn identity_car(text: &str) -> Result<Vec<u8>, UcantoError> {
    let bad = |why: &str| {
        UcantoError::Proof(format!(
            "the proof text is not a base64 delegation ({why}); give what `storacha delegation create <agent DID> --base64 …` prints (m…)"
        ))
    };
    let (_, bytes) = multibase::decode(text).map_err(|e| bad(&e.to_string()))?;
    let mut pos = 0;
    if get_varint(&bytes, &mut pos) != Some(1) {
        return Err(bad("not a CIDv1"));
    }
    if get_varint(&bytes, &mut pos) != Some(CAR) {
        return Err(bad("its codec is not car"));
    }
    if get_varint(&bytes, &mut pos) != Some(IDENTITY) {
        return Err(bad("its hash is not the identity"));
    }
    let len = get_varint(&bytes, &mut pos).ok_or_else(|| bad("cut short"))? as usize;
    bytes
        .get(pos..)
        .filter(|b| b.len() == len)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| bad("its length does not match"))
}

/// Appends `link`'s proof sub-DAGs then its block to `out`, as ucanto's
/// `exportDAG` orders them; a proof absent from the archive is left out
/// (ucanto sends it by link alone).
fn export(
    link: &Cid,
    blocks: &HashMap<Cid, Vec<u8>>,
    out: &mut Vec<Block>,
    depth: usize,
) -> Result<Ucan, UcantoError> {
    if depth > 32 {
        return Err(UcantoError::Malformed(
            "a proof chain deeper than 32".to_owned(),
        ));
    }
    let bytes = blocks
        .get(link)
        .ok_or_else(|| UcantoError::Malformed(format!("block {link} is missing")))?;
    let ucan = Ucan::decode(bytes)?;
    for p in &ucan.prf {
        if blocks.contains_key(p) {
            export(p, blocks, out, depth + 1)?;
        }
    }
    if !out.iter().any(|b| &b.cid == link) {
        out.push(Block {
            cid: *link,
            bytes: bytes.clone(),
        });
    }
    Ok(ucan)
}
