//! Storacha's RPC protocol, ucanto, as its JavaScript libraries speak it
//! (`@ucanto/core`, `@ucanto/transport`, `@ipld/dag-ucan`): invocations are
//! UCANs (`ucan`) signed by the agent's ed25519 key (`principal`) and
//! carrying the delegation that allows them (`proof`); a request is a CAR
//! whose root is the message `{"ucanto/message@7.0.0": {"execute": [...]}}`
//! and the answer a CAR whose message `report`s one receipt per invocation
//! (`{ocm: {ran, out: {ok}|{error}, fx: {fork, join}, meta, iss, prf},
//! sig}`). Test vectors in `tests/data/ucanto/` were made by those
//! libraries.

pub mod principal;
pub mod proof;
pub mod ucan;

use std::collections::{BTreeMap, HashMap};

use cid::Cid;
use ipld_core::ipld::Ipld;

pub use principal::{Did, Signer};
pub use proof::Proof;
pub use ucan::{Payload, Ucan, capability};

use super::car::{cid_of, write_car};

/// Multicodec of dag-cbor.
const DAG_CBOR: u64 = 0x71;
/// The message format this client writes and reads.
pub const MESSAGE: &str = "ucanto/message@7.0.0";

/// Every ability pitr invokes on a space, in the order the docs list them.
pub const ABILITIES: &[&str] = &[
    "space/blob/add",
    "space/blob/remove",
    "space/index/add",
    "upload/add",
    "upload/list",
    "upload/shard/list",
    "upload/remove",
];

/// The `--can` flags of `storacha delegation create` that grant
/// [`ABILITIES`].
pub fn delegation_flags() -> String {
    ABILITIES
        .iter()
        .map(|a| format!("--can {a}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Why a ucanto exchange could not be made or understood.
#[derive(Debug, thiserror::Error)]
pub enum UcantoError {
    /// The principal key or a DID is unusable.
    #[error("{0}")]
    Principal(String),
    /// The delegation proof is unusable for this agent and space.
    #[error("{0}")]
    Proof(String),
    /// Bytes that are not what the protocol says.
    #[error("malformed ucanto data: {0}")]
    Malformed(String),
}

/// A content-addressed block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Its CID.
    pub cid: Cid,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

impl Block {
    /// The dag-cbor block of `v` (SHA-256).
    pub fn cbor(v: &Ipld) -> Block {
        // Encoding an in-memory Ipld value fails only on floats dag-cbor
        // refuses (NaN, infinities), which pitr never builds.
        let bytes = serde_ipld_dagcbor::to_vec(v).unwrap_or_default();
        Block {
            cid: cid_of(DAG_CBOR, &bytes),
            bytes,
        }
    }
}

/// `v[key]` of a map.
pub fn field<'a>(v: &'a Ipld, key: &str) -> Option<&'a Ipld> {
    match v {
        Ipld::Map(m) => m.get(key),
        _ => None,
    }
}

/// The text of a string value.
pub fn text(v: &Ipld) -> Option<&str> {
    match v {
        Ipld::String(s) => Some(s),
        _ => None,
    }
}

/// The CID of a link value.
pub fn link(v: &Ipld) -> Option<Cid> {
    match v {
        Ipld::Link(c) => Some(*c),
        _ => None,
    }
}

/// The links of a list value (other items skipped); `None` when `v` is not
/// a list.
fn links(v: Option<&Ipld>) -> Option<Vec<Cid>> {
    match v {
        Some(Ipld::List(l)) => Some(l.iter().filter_map(link).collect()),
        _ => None,
    }
}

/// A map from `(key, value)` pairs.
pub fn map<const N: usize>(entries: [(&str, Ipld); N]) -> Ipld {
    Ipld::Map(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<BTreeMap<_, _>>(),
    )
}

/// Blocks by CID.
pub type Blocks = HashMap<Cid, Vec<u8>>;

/// The roots and (hash-checked) blocks of a CAR.
pub fn car_blocks(car: &[u8]) -> Result<(Vec<Cid>, Blocks), UcantoError> {
    let bad = |why: String| UcantoError::Malformed(format!("a CAR: {why}"));
    let mut pos = 0;
    let hlen = principal::get_varint(car, &mut pos).ok_or_else(|| bad("no header".into()))?;
    let header = pos
        .checked_add(hlen as usize)
        .and_then(|end| car.get(pos..end))
        .ok_or_else(|| bad("header longer than the file".into()))?;
    let h: Ipld = serde_ipld_dagcbor::from_slice(header).map_err(|e| bad(e.to_string()))?;
    let roots = links(field(&h, "roots")).ok_or_else(|| bad("no roots in the header".into()))?;
    let blocks = super::verify::blocks(car)
        .map_err(|e| bad(e.to_string()))?
        .into_iter()
        .map(|(c, b)| (c, b.to_vec()))
        .collect();
    Ok((roots, blocks))
}

/// A signed invocation with the blocks that travel with it.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The task's link: what its receipt's `ran` names.
    pub cid: Cid,
    /// The UCAN.
    pub ucan: Ucan,
    /// Proof blocks, attached blocks, then the invocation's own block.
    pub blocks: Vec<Block>,
}

impl Invocation {
    /// Signs `payload` as `issuer`, with `proofs` (whose links must be in
    /// `payload.prf`) and `attached` blocks (linked from its `nb` or facts).
    pub fn new(issuer: &Signer, payload: Payload, proofs: &[&Proof], attached: Vec<Block>) -> Self {
        let ucan = Ucan::issue(issuer, payload);
        let root = ucan.block();
        let mut blocks: Vec<Block> = Vec::new();
        for b in proofs
            .iter()
            .flat_map(|p| p.blocks.iter())
            .chain(attached.iter())
        {
            if !blocks.iter().any(|x| x.cid == b.cid) {
                blocks.push(b.clone());
            }
        }
        let cid = root.cid;
        blocks.push(root);
        Invocation { cid, ucan, blocks }
    }
}

/// The request CAR of a message executing `invocations`, and its root.
pub fn request(invocations: &[&Invocation]) -> (Cid, Vec<u8>) {
    let root = Block::cbor(&map([(
        MESSAGE,
        map([(
            "execute",
            Ipld::List(invocations.iter().map(|i| Ipld::Link(i.cid)).collect()),
        )]),
    )]));
    let mut blocks: Vec<(Cid, &[u8])> = Vec::new();
    for b in invocations.iter().flat_map(|i| i.blocks.iter()) {
        if !blocks.iter().any(|(c, _)| *c == b.cid) {
            blocks.push((b.cid, &b.bytes));
        }
    }
    blocks.push((root.cid, &root.bytes));
    (root.cid, write_car(&root.cid, &blocks))
}

/// A receipt: what running a task gave.
#[derive(Debug, Clone)]
pub struct Receipt {
    /// The receipt's own link.
    pub cid: Cid,
    /// The task it is for.
    pub ran: Cid,
    /// `out.ok` or `out.error`.
    pub out: Result<Ipld, Ipld>,
    /// Effects: tasks forked.
    pub fork: Vec<Cid>,
    /// Effect: the task that continues this one.
    pub join: Option<Cid>,
    /// Who issued it, when it says.
    pub iss: Option<String>,
}

impl Receipt {
    /// Decodes a receipt block.
    pub fn decode(cid: Cid, bytes: &[u8]) -> Result<Receipt, UcantoError> {
        let bad = |why: &str| UcantoError::Malformed(format!("receipt {cid}: {why}"));
        let v: Ipld = serde_ipld_dagcbor::from_slice(bytes).map_err(|e| bad(&e.to_string()))?;
        let ocm = field(&v, "ocm").ok_or_else(|| bad("no ocm"))?;
        let ran = field(ocm, "ran")
            .and_then(link)
            .ok_or_else(|| bad("no ran link"))?;
        let out = field(ocm, "out").ok_or_else(|| bad("no out"))?;
        let out = match (field(out, "ok"), field(out, "error")) {
            (Some(ok), _) => Ok(ok.clone()),
            (None, Some(e)) => Err(e.clone()),
            (None, None) => return Err(bad("out has neither ok nor error")),
        };
        let fx = field(ocm, "fx");
        Ok(Receipt {
            cid,
            ran,
            out,
            fork: links(fx.and_then(|f| field(f, "fork"))).unwrap_or_default(),
            join: fx.and_then(|f| field(f, "join")).and_then(link),
            iss: field(ocm, "iss").and_then(text).map(str::to_owned),
        })
    }

    /// Issues a receipt for `ran` with result `ok`, no effects
    /// (`Receipt.issue` in `@ucanto/core`); the signature covers the
    /// dag-cbor of `ocm`.
    pub fn issue(issuer: &Signer, ran: Cid, ok: Ipld) -> Block {
        let ocm = map([
            ("ran", Ipld::Link(ran)),
            ("out", map([("ok", ok)])),
            ("fx", map([("fork", Ipld::List(Vec::new()))])),
            ("meta", Ipld::Map(BTreeMap::new())),
            ("iss", Ipld::String(issuer.did().to_string())),
            ("prf", Ipld::List(Vec::new())),
        ]);
        let sig = issuer.sign(&serde_ipld_dagcbor::to_vec(&ocm).unwrap_or_default());
        Block::cbor(&map([("ocm", ocm), ("sig", Ipld::Bytes(sig))]))
    }
}

/// An answer: the receipts it reports and every block it carries (fork
/// tasks, receipts attached to `ucan/conclude` tasks).
#[derive(Debug, Clone)]
pub struct Response {
    /// Receipts by the task they ran.
    pub receipts: HashMap<Cid, Receipt>,
    /// Every block of the CAR.
    pub blocks: HashMap<Cid, Vec<u8>>,
}

impl Response {
    /// Decodes a response CAR.
    pub fn decode(car: &[u8]) -> Result<Response, UcantoError> {
        let (roots, blocks) = car_blocks(car)?;
        let root = roots
            .first()
            .ok_or_else(|| UcantoError::Malformed("an answer CAR without a root".to_owned()))?;
        let bytes = blocks
            .get(root)
            .ok_or_else(|| UcantoError::Malformed("an answer without its root block".to_owned()))?;
        let v: Ipld = serde_ipld_dagcbor::from_slice(bytes)
            .map_err(|e| UcantoError::Malformed(format!("the answer's root: {e}")))?;
        let msg = field(&v, MESSAGE).ok_or_else(|| {
            UcantoError::Malformed(format!("the answer is not a {MESSAGE} message"))
        })?;
        let mut receipts = HashMap::new();
        if let Some(Ipld::Map(report)) = field(msg, "report") {
            for link in report.values() {
                let Ipld::Link(c) = link else {
                    return Err(UcantoError::Malformed(
                        "a report entry is not a link".to_owned(),
                    ));
                };
                let b = blocks.get(c).ok_or_else(|| {
                    UcantoError::Malformed(format!("receipt {c} is not in the answer"))
                })?;
                let r = Receipt::decode(*c, b)?;
                receipts.insert(r.ran, r);
            }
        }
        Ok(Response { receipts, blocks })
    }

    /// The invocation a fork or join link names, when its block came along.
    pub fn task(&self, cid: &Cid) -> Option<Ucan> {
        Ucan::decode(self.blocks.get(cid)?).ok()
    }

    /// The receipt at `cid`, when its block came along.
    pub fn receipt_at(&self, cid: &Cid) -> Option<Receipt> {
        Receipt::decode(*cid, self.blocks.get(cid)?).ok()
    }
}

#[cfg(test)]
mod tests;
