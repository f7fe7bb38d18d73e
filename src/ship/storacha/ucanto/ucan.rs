//! UCAN 0.9 as ucanto encodes it (`@ipld/dag-ucan`): a dag-cbor map of
//! `v`, `iss`, `aud` (DIDs in binary form), `att` (capabilities), `prf`
//! (links to proofs), `exp` (null when it never expires), optional `nnc`,
//! `nbf`, `fct`, and `s`, the signature. The signature is not over the
//! CBOR: it is over the JWT form, `base64url(header) "." base64url(payload)`
//! with both parts in dag-json (`formatSignPayload` in `formatter.js`).

use std::collections::BTreeMap;

use cid::Cid;
use ipld_core::ipld::Ipld;

use super::principal::{Did, Signer};
use super::{Block, UcantoError, field, text};

/// The UCAN version ucanto writes.
pub const VERSION: &str = "0.9.1";

/// One UCAN (a delegation or an invocation).
#[derive(Debug, Clone, PartialEq)]
pub struct Ucan {
    /// Who signed it.
    pub iss: Did,
    /// Who it is for.
    pub aud: Did,
    /// Capabilities: maps of `with`, `can` and optional `nb`.
    pub att: Vec<Ipld>,
    /// Proofs, by link.
    pub prf: Vec<Cid>,
    /// Expiry in Unix seconds; `None` never expires.
    pub exp: Option<i64>,
    /// Not valid before, Unix seconds.
    pub nbf: Option<i64>,
    /// A nonce that makes otherwise equal UCANs distinct.
    pub nnc: Option<String>,
    /// Facts.
    pub fct: Vec<Ipld>,
    /// `v`.
    pub version: String,
    /// `s`: varint algorithm, varint length, raw signature.
    pub signature: Vec<u8>,
}

/// What an invocation or delegation is made of before it is signed.
#[derive(Debug, Clone)]
pub struct Payload {
    /// The audience.
    pub aud: Did,
    /// The capabilities.
    pub att: Vec<Ipld>,
    /// Links to proofs.
    pub prf: Vec<Cid>,
    /// Expiry (Unix seconds), `None` for never.
    pub exp: Option<i64>,
    /// Nonce.
    pub nnc: Option<String>,
    /// Facts.
    pub fct: Vec<Ipld>,
}

/// A capability `{with, can, nb?}`.
pub fn capability(can: &str, with: &str, nb: Option<Ipld>) -> Ipld {
    let mut m = BTreeMap::new();
    m.insert("can".to_owned(), Ipld::String(can.to_owned()));
    m.insert("with".to_owned(), Ipld::String(with.to_owned()));
    if let Some(nb) = nb {
        m.insert("nb".to_owned(), nb);
    }
    Ipld::Map(m)
}

impl Ucan {
    /// Signs `p` as `issuer`.
    pub fn issue(issuer: &Signer, p: Payload) -> Ucan {
        let mut u = Ucan {
            iss: issuer.did().clone(),
            aud: p.aud,
            att: p.att,
            prf: p.prf,
            exp: p.exp,
            nbf: None,
            nnc: p.nnc,
            fct: p.fct,
            version: VERSION.to_owned(),
            signature: Vec::new(),
        };
        u.signature = issuer.sign(u.sign_payload().as_bytes());
        u
    }

    /// The signed block.
    pub fn block(&self) -> Block {
        Block::cbor(&self.to_ipld())
    }

    /// The dag-cbor data model (`codec/cbor.js` `encode`).
    pub fn to_ipld(&self) -> Ipld {
        let mut m = BTreeMap::new();
        if !self.fct.is_empty() {
            m.insert("fct".to_owned(), Ipld::List(self.fct.clone()));
        }
        if let Some(n) = &self.nnc {
            m.insert("nnc".to_owned(), Ipld::String(n.clone()));
        }
        if let Some(n) = self.nbf.filter(|&n| n != 0) {
            m.insert("nbf".to_owned(), Ipld::Integer(n.into()));
        }
        m.insert("iss".to_owned(), Ipld::Bytes(self.iss.to_bytes()));
        m.insert("aud".to_owned(), Ipld::Bytes(self.aud.to_bytes()));
        m.insert("att".to_owned(), Ipld::List(self.att.clone()));
        m.insert(
            "prf".to_owned(),
            Ipld::List(self.prf.iter().map(|c| Ipld::Link(*c)).collect()),
        );
        m.insert(
            "exp".to_owned(),
            self.exp.map_or(Ipld::Null, |e| Ipld::Integer(e.into())),
        );
        m.insert("v".to_owned(), Ipld::String(self.version.clone()));
        m.insert("s".to_owned(), Ipld::Bytes(self.signature.clone()));
        Ipld::Map(m)
    }

    /// Decodes a UCAN block (dag-cbor; the JWT form ucanto also accepts is
    /// refused: Storacha's tools do not write it).
    pub fn decode(bytes: &[u8]) -> Result<Ucan, UcantoError> {
        let bad = |why: String| UcantoError::Malformed(format!("a UCAN block: {why}"));
        let v: Ipld = serde_ipld_dagcbor::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        let did = |k: &str| -> Result<Did, UcantoError> {
            match field(&v, k) {
                Some(Ipld::Bytes(b)) => Did::from_bytes(b),
                _ => Err(bad(format!("no {k}"))),
            }
        };
        let int = |k: &str| -> Result<Option<i64>, UcantoError> {
            match field(&v, k) {
                None | Some(Ipld::Null) => Ok(None),
                Some(Ipld::Integer(i)) => i64::try_from(*i)
                    .map(Some)
                    .map_err(|_| bad(format!("{k} out of range"))),
                Some(_) => Err(bad(format!("{k} is not an integer"))),
            }
        };
        let list = |k: &str| -> Result<Vec<Ipld>, UcantoError> {
            match field(&v, k) {
                None => Ok(Vec::new()),
                Some(Ipld::List(l)) => Ok(l.clone()),
                Some(_) => Err(bad(format!("{k} is not a list"))),
            }
        };
        let prf = list("prf")?
            .into_iter()
            .map(|l| match l {
                Ipld::Link(c) => Ok(c),
                _ => Err(bad("a proof that is not a link".to_owned())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let att = list("att")?;
        if att.is_empty() && field(&v, "att").is_none() {
            return Err(bad("no att".to_owned()));
        }
        Ok(Ucan {
            iss: did("iss")?,
            aud: did("aud")?,
            att,
            prf,
            exp: int("exp")?,
            nbf: int("nbf")?,
            nnc: field(&v, "nnc").and_then(text).map(str::to_owned),
            fct: list("fct")?,
            version: field(&v, "v")
                .and_then(text)
                .ok_or_else(|| bad("no v".to_owned()))?
                .to_owned(),
            signature: match field(&v, "s") {
                Some(Ipld::Bytes(b)) => b.clone(),
                _ => return Err(bad("no signature".to_owned())),
            },
        })
    }

    /// The text the signature covers: the JWT header and payload, each
    /// dag-json and base64url without padding, joined by a dot.
    pub fn sign_payload(&self) -> String {
        let b64 = |b: &[u8]| multibase::Base::Base64Url.encode(b);
        let header = format!(
            r#"{{"alg":"EdDSA","typ":"JWT","ucv":{}}}"#,
            json_str(&self.version)
        );
        let mut p = BTreeMap::new();
        p.insert("iss".to_owned(), Ipld::String(self.iss.to_string()));
        p.insert("aud".to_owned(), Ipld::String(self.aud.to_string()));
        p.insert("att".to_owned(), Ipld::List(self.att.clone()));
        p.insert(
            "exp".to_owned(),
            self.exp.map_or(Ipld::Null, |e| Ipld::Integer(e.into())),
        );
        p.insert(
            "prf".to_owned(),
            Ipld::List(
                self.prf
                    .iter()
                    .map(|c| Ipld::String(c.to_string()))
                    .collect(),
            ),
        );
        if !self.fct.is_empty() {
            p.insert("fct".to_owned(), Ipld::List(self.fct.clone()));
        }
        // The formatter leaves out a falsy nonce and nbf (`...(data.nnc && …)`).
        if let Some(n) = self.nnc.as_ref().filter(|n| !n.is_empty()) {
            p.insert("nnc".to_owned(), Ipld::String(n.clone()));
        }
        if let Some(n) = self.nbf.filter(|&n| n != 0) {
            p.insert("nbf".to_owned(), Ipld::Integer(n.into()));
        }
        let mut payload = String::new();
        dag_json(&Ipld::Map(p), &mut payload);
        format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()))
    }

    /// Whether the signature is the issuer's (`did:key` ed25519 issuers
    /// only; others cannot be checked offline).
    pub fn signature_valid(&self) -> bool {
        self.iss
            .verifies(self.sign_payload().as_bytes(), &self.signature)
    }

    /// The capabilities as (can, with) pairs.
    pub fn abilities(&self) -> impl Iterator<Item = (&str, &str)> {
        self.att.iter().filter_map(|c| {
            Some((
                field(c, "can").and_then(text)?,
                field(c, "with").and_then(text)?,
            ))
        })
    }
}

fn json_str(s: &str) -> String {
    // serde_json escapes as JSON.stringify does for the strings UCANs hold.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

/// dag-json as `@ipld/dag-json` writes it: map keys in byte order (a
/// `BTreeMap<String, _>` iterates in that order), bytes as
/// `{"/":{"bytes":"<base64, no padding>"}}`, links as `{"/":"<cid>"}`.
pub fn dag_json(v: &Ipld, out: &mut String) {
    match v {
        Ipld::Null => out.push_str("null"),
        Ipld::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Ipld::Integer(i) => out.push_str(&i.to_string()),
        Ipld::Float(f) => out.push_str(
            &serde_json::Number::from_f64(*f).map_or_else(|| "null".to_owned(), |n| n.to_string()),
        ),
        Ipld::String(s) => out.push_str(&json_str(s)),
        Ipld::Bytes(b) => {
            out.push_str(r#"{"/":{"bytes":""#);
            out.push_str(&multibase::Base::Base64.encode(b));
            out.push_str(r#""}}"#);
        }
        Ipld::List(l) => {
            out.push('[');
            for (i, x) in l.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                dag_json(x, out);
            }
            out.push(']');
        }
        Ipld::Map(m) => {
            out.push('{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&json_str(k));
                out.push(':');
                dag_json(x, out);
            }
            out.push('}');
        }
        Ipld::Link(c) => {
            out.push_str(r#"{"/":""#);
            out.push_str(&c.to_string());
            out.push_str(r#""}"#);
        }
    }
}
