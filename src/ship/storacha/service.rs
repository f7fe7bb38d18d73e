//! The upload service (`up.storacha.network`, or Storacha's
//! `@storacha/upload-api` anywhere) spoken to with ucanto: one invocation
//! per `POST` of a CAR, answered by a CAR of receipts. The flows follow the
//! JavaScript client (`@storacha/upload-client`: `blob/add.js`,
//! `index/add.js`, `upload/*.js`, `receipts.js`).

use std::time::Duration;

use cid::Cid;
use ipld_core::ipld::Ipld;

use super::car::shard_cid;
use super::ucanto::{
    self, Block, Did, Invocation, Payload, Proof, Receipt, Response, Signer, UcantoError,
    capability, field, link, map, text,
};

/// How long an invocation stays valid: long enough for a slow request and
/// some clock skew, short enough that a leaked request is soon useless.
const LIFETIME_SECS: i64 = 600;
/// Tries of the receipt endpoint while waiting for `blob/accept`.
const ACCEPT_POLLS: u32 = 20;

/// Why a call to the service failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No answer (connection, timeout).
    #[error("no answer from the Storacha service {url}: {source}")]
    Transport {
        /// The URL.
        url: String,
        /// The client's error.
        source: reqwest::Error,
    },
    /// A non-2xx answer.
    #[error("the Storacha service {url} answered HTTP {status}: {body}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
        /// The answer, shortened.
        body: String,
    },
    /// A redirect: not followed, since the request carries a delegation.
    #[error(
        "{url} redirected to {location}; pitr does not follow redirects with credentials: set service (or the URL the receipt gave) to the final address"
    )]
    Redirect {
        /// The URL.
        url: String,
        /// Where it pointed.
        location: String,
    },
    /// The answer is not what the protocol says.
    #[error("the Storacha service's answer to {ability} is malformed: {source}")]
    Protocol {
        /// The ability invoked.
        ability: String,
        /// What is wrong.
        source: UcantoError,
    },
    /// The service ran the task and refused it.
    #[error("Storacha refused {ability} on {space}: {name}: {message}{hint}")]
    Refused {
        /// The ability invoked.
        ability: String,
        /// The space.
        space: String,
        /// The error's name.
        name: String,
        /// The error's message.
        message: String,
        /// What to do, when it is the proof's fault.
        hint: String,
    },
    /// A step the service should have taken did not show (yet).
    #[error("{0}")]
    Pending(String),
    /// The blob's upload URL refused the bytes.
    #[error("the upload URL answered HTTP {status} to the PUT of blob {blob}: {body}")]
    Put {
        /// The blob's CID.
        blob: Cid,
        /// The status.
        status: u16,
        /// The answer, shortened.
        body: String,
    },
}

impl ServiceError {
    /// Whether the same call may succeed later.
    pub fn is_transient(&self) -> bool {
        match self {
            ServiceError::Transport { .. } | ServiceError::Pending(_) => true,
            ServiceError::Status { status, .. } | ServiceError::Put { status, .. } => {
                *status >= 500 || *status == 429 || *status == 408
            }
            ServiceError::Redirect { .. }
            | ServiceError::Protocol { .. }
            | ServiceError::Refused { .. } => false,
        }
    }

    /// Whether the service said the thing is not there (a delete of
    /// something already gone).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ServiceError::Refused { name, .. } if name.contains("NotFound"))
    }
}

fn shorten(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// The SHA-256 multihash of `bytes`, as ucanto's `digest` fields hold it.
pub fn multihash(bytes: &[u8]) -> Vec<u8> {
    super::car::sha256(bytes).to_bytes()
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The items.
    pub results: Vec<T>,
    /// Where the next page starts; `None` at the end.
    pub cursor: Option<String>,
}

/// An agent acting on one space.
#[derive(Debug, Clone)]
pub struct Service {
    http: reqwest::Client,
    url: String,
    audience: Did,
    signer: Signer,
    proof: Proof,
    space: Did,
    timeout: Duration,
}

impl Service {
    /// An agent `signer` holding `proof` for `space`, talking to the
    /// service at `url` whose DID is `audience`. Checks the proof against
    /// the agent and the space (and the clock) first.
    pub fn new(
        url: &str,
        audience: &str,
        principal: &str,
        proof: &str,
        space: &str,
        timeout: Duration,
    ) -> Result<Service, UcantoError> {
        let signer = Signer::parse(principal)?;
        let proof = Proof::parse(proof.as_bytes())?;
        let space = Did::parse(space)?;
        proof.check(signer.did(), &space, jiff::Timestamp::now().as_second())?;
        let http = reqwest::Client::builder()
            // A redirect would carry the delegation (and the bytes) to
            // wherever it points.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| UcantoError::Principal(format!("no HTTP client: {e}")))?;
        Ok(Service {
            http,
            url: url.trim_end_matches('/').to_owned(),
            audience: Did::parse(audience)?,
            signer,
            proof,
            space,
            timeout,
        })
    }

    /// The space.
    pub fn space(&self) -> &Did {
        &self.space
    }

    /// The agent's DID.
    pub fn agent(&self) -> &Did {
        self.signer.did()
    }

    /// The delegation the agent invokes with.
    pub fn proof(&self) -> &Proof {
        &self.proof
    }

    /// The abilities pitr needs that the proof does not grant.
    pub fn missing_abilities(&self) -> Vec<&'static str> {
        ucanto::ABILITIES
            .iter()
            .copied()
            .filter(|a| !self.proof.grants(a, &self.space))
            .collect()
    }

    fn nonce() -> String {
        hex::encode(rand::random::<[u8; 8]>())
    }

    fn protocol(ability: &str, source: UcantoError) -> ServiceError {
        ServiceError::Protocol {
            ability: ability.to_owned(),
            source,
        }
    }

    /// Posts `inv` and returns the answer.
    async fn send(&self, ability: &str, inv: &Invocation) -> Result<Response, ServiceError> {
        let (_, body) = ucanto::request(&[inv]);
        let resp = self
            .http
            .post(&self.url)
            .timeout(self.timeout)
            .header("content-type", "application/vnd.ipld.car")
            .header("accept", "application/vnd.ipld.car")
            .body(body)
            .send()
            .await
            .map_err(transport(&self.url))?;
        let body = self.body(&self.url, resp).await?;
        Response::decode(&body).map_err(|e| Self::protocol(ability, e))
    }

    /// The body of a 2xx answer to a request to `url`.
    async fn body(&self, url: &str, resp: reqwest::Response) -> Result<Vec<u8>, ServiceError> {
        let status = resp.status();
        if status.is_redirection() {
            return Err(redirected(url, &resp));
        }
        let bytes = resp.bytes().await.map_err(transport(url))?;
        if !status.is_success() {
            return Err(ServiceError::Status {
                url: url.to_owned(),
                status: status.as_u16(),
                body: shorten(&String::from_utf8_lossy(&bytes)),
            });
        }
        Ok(bytes.to_vec())
    }

    fn refused(&self, ability: &str, err: &Ipld) -> ServiceError {
        let name = field(err, "name")
            .and_then(text)
            .unwrap_or("Error")
            .to_owned();
        let message = field(err, "message")
            .and_then(text)
            .unwrap_or("(no message)")
            .to_owned();
        let authz = name.contains("Unauthorized")
            || name.contains("Expired")
            || name.contains("Revoked")
            || name.contains("InvalidClaim")
            || message.contains("not authorized")
            || message.contains("expired")
            || message.contains("revoked");
        let hint = if authz {
            let missing = self.missing_abilities();
            format!(
                ". The proof must delegate {ability} on {} to {} and be unexpired and unrevoked{}; create a new one with `storacha delegation create {} {} --base64` (pitr needs {}) and set proof_file to what it prints",
                self.space,
                self.signer.did(),
                if missing.is_empty() {
                    String::new()
                } else {
                    format!(" (it lacks {})", missing.join(", "))
                },
                self.signer.did(),
                ucanto::delegation_flags(),
                ucanto::ABILITIES.join(", ")
            )
        } else {
            String::new()
        };
        ServiceError::Refused {
            ability: ability.to_owned(),
            space: self.space.to_string(),
            name,
            message,
            hint,
        }
    }

    /// Invokes `ability` on the space with `nb`; returns `out.ok` and the
    /// whole answer (for the effects).
    pub async fn invoke(
        &self,
        ability: &str,
        nb: Ipld,
    ) -> Result<(Ipld, Receipt, Response), ServiceError> {
        let inv = Invocation::new(
            &self.signer,
            Payload {
                aud: self.audience.clone(),
                att: vec![capability(ability, self.space.as_str(), Some(nb))],
                prf: vec![self.proof.cid],
                exp: Some(jiff::Timestamp::now().as_second() + LIFETIME_SECS),
                nnc: Some(Self::nonce()),
                fct: Vec::new(),
            },
            &[&self.proof],
            Vec::new(),
        );
        let resp = self.send(ability, &inv).await?;
        let receipt = resp.receipts.get(&inv.cid).cloned().ok_or_else(|| {
            Self::protocol(
                ability,
                UcantoError::Malformed(format!("no receipt for task {}", inv.cid)),
            )
        })?;
        match &receipt.out {
            Ok(ok) => Ok((ok.clone(), receipt.clone(), resp)),
            Err(e) => Err(self.refused(ability, e)),
        }
    }

    /// Sends `receipt` to the service with `ucan/conclude`
    /// (`createConcludeInvocation` in the JS client): the agent's own
    /// capability, never expiring, the receipt's blocks attached and listed
    /// in a fact.
    async fn conclude(&self, receipt: Block) -> Result<Response, ServiceError> {
        let ability = "ucan/conclude";
        let inv = Invocation::new(
            &self.signer,
            Payload {
                aud: self.audience.clone(),
                att: vec![capability(
                    ability,
                    self.signer.did().as_str(),
                    Some(map([("receipt", Ipld::Link(receipt.cid))])),
                )],
                prf: Vec::new(),
                exp: None,
                nnc: None,
                fct: vec![map([("0", Ipld::Link(receipt.cid))])],
            },
            &[],
            vec![receipt],
        );
        let resp = self.send(ability, &inv).await?;
        match resp.receipts.get(&inv.cid).map(|r| &r.out) {
            Some(Ok(_)) => Ok(resp),
            Some(Err(e)) => Err(self.refused(ability, e)),
            None => Err(Self::protocol(
                ability,
                UcantoError::Malformed(format!("no receipt for task {}", inv.cid)),
            )),
        }
    }

    /// The receipt of `task` from the service's receipt endpoint
    /// (`{service}/receipt/{task}`), `None` while it has none. The endpoint
    /// redirects to the stored agent message; that GET carries no
    /// credentials, so (unlike invocations) its redirects are followed, a
    /// few hops at most.
    async fn receipt(&self, task: &Cid) -> Result<Option<Receipt>, ServiceError> {
        let mut url = format!("{}/receipt/{task}", self.url);
        for _ in 0..4 {
            let resp = self
                .http
                .get(&url)
                .timeout(self.timeout)
                .send()
                .await
                .map_err(transport(&url))?;
            if resp.status().as_u16() == 404 {
                return Ok(None);
            }
            if resp.status().is_redirection() {
                let next = resp
                    .headers()
                    .get("location")
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| resp.url().join(l).ok());
                match next {
                    Some(n) => {
                        url = n.to_string();
                        continue;
                    }
                    None => {
                        return Err(ServiceError::Status {
                            url,
                            status: resp.status().as_u16(),
                            body: "a redirect without a usable location".to_owned(),
                        });
                    }
                }
            }
            let body = self.body(&url, resp).await?;
            let (_, blocks) =
                ucanto::car_blocks(&body).map_err(|e| Self::protocol("receipt", e))?;
            return Ok(find_receipt(&blocks, task));
        }
        Err(ServiceError::Status {
            url,
            status: 310,
            body: "too many redirects".to_owned(),
        })
    }

    /// Stores `bytes` as a blob of the space (`space/blob/add` → allocate
    /// → PUT → `http/put` receipt via `ucan/conclude` → `blob/accept`).
    /// A blob the space already holds is not sent again: the service
    /// answers with the put already concluded.
    pub async fn blob_add(&self, bytes: &[u8]) -> Result<(), ServiceError> {
        let ability = "space/blob/add";
        let digest = multihash(bytes);
        let nb = map([(
            "blob",
            map([
                ("digest", Ipld::Bytes(digest)),
                ("size", Ipld::Integer(bytes.len() as i128)),
            ]),
        )]);
        let (_, receipt, resp) = self.invoke(ability, nb).await?;
        let malformed = |why: String| Self::protocol(ability, UcantoError::Malformed(why));
        let mut allocate = None;
        let mut put = None;
        let mut accept = None;
        let mut concluded = Vec::new();
        for cid in &receipt.fork {
            let Some(task) = resp.task(cid) else { continue };
            let Some((can, _)) = task.abilities().next() else {
                continue;
            };
            match can {
                "blob/allocate" => allocate = Some(*cid),
                "web3.storage/blob/allocate" if allocate.is_none() => allocate = Some(*cid),
                "http/put" => put = Some((*cid, task.clone())),
                "blob/accept" => accept = Some(*cid),
                "web3.storage/blob/accept" if accept.is_none() => accept = Some(*cid),
                "ucan/conclude" => {
                    let link = task
                        .att
                        .first()
                        .and_then(|c| field(c, "nb"))
                        .and_then(|nb| field(nb, "receipt"));
                    if let Some(Ipld::Link(r)) = link {
                        if let Some(r) = resp.receipt_at(r) {
                            concluded.push(r);
                        }
                    }
                }
                _ => {}
            }
        }
        let (Some(allocate), Some((put_cid, put_task)), Some(accept)) = (allocate, put, accept)
        else {
            return Err(malformed(format!(
                "receipt {} lacks the blob/allocate, http/put or blob/accept effect",
                receipt.cid
            )));
        };
        let of = |task: Cid| concluded.iter().find(|r| r.ran == task);
        let alloc = of(allocate)
            .ok_or_else(|| malformed(format!("no blob/allocate receipt for task {allocate}")))?;
        let alloc_ok = match &alloc.out {
            Ok(ok) => ok.clone(),
            Err(e) => return Err(self.refused("blob/allocate", e)),
        };
        let put_done = of(put_cid).is_some_and(|r| r.out.is_ok());
        if !put_done {
            if let Some(address) = field(&alloc_ok, "address") {
                self.put(bytes, address).await?;
            }
            // The fact is `{keys: <signer archive>}`, the archive
            // `{id: did, keys: {did: key bytes}}` (`ed25519.from`).
            let archive = put_task.fct.first().and_then(|f| field(f, "keys"));
            let key = archive.and_then(|a| {
                let id = field(a, "id").and_then(text)?;
                field(a, "keys").and_then(|k| field(k, id))
            });
            let Some(Ipld::Bytes(key)) = key else {
                return Err(malformed(format!(
                    "http/put task {put_cid} carries no key in its facts"
                )));
            };
            let derived = Signer::decode(key).map_err(|e| Self::protocol(ability, e))?;
            let put_receipt = Receipt::issue(&derived, put_cid, Ipld::Map(Default::default()));
            let answer = self.conclude(put_receipt).await?;
            if let Some(r) = find_receipt(&answer.blocks, &accept) {
                return self.accepted(r);
            }
        } else if let Some(r) = of(accept) {
            return self.accepted(r.clone());
        }
        for n in 0..ACCEPT_POLLS {
            if let Some(r) = self.receipt(&accept).await? {
                return self.accepted(r);
            }
            tokio::time::sleep(Duration::from_millis(100 << n.min(4))).await;
        }
        Err(ServiceError::Pending(format!(
            "the Storacha service has no blob/accept receipt for task {accept} (blob {}) after {ACCEPT_POLLS} tries of {}/receipt/",
            shard_cid(bytes),
            self.url
        )))
    }

    fn accepted(&self, r: Receipt) -> Result<(), ServiceError> {
        match &r.out {
            Ok(_) => Ok(()),
            Err(e) => Err(self.refused("blob/accept", e)),
        }
    }

    /// The `PUT` of a blob's bytes to the allocated URL with exactly the
    /// headers the allocation gave.
    async fn put(&self, bytes: &[u8], address: &Ipld) -> Result<(), ServiceError> {
        let blob = shard_cid(bytes);
        let malformed = |why: &str| {
            Self::protocol(
                "blob/allocate",
                UcantoError::Malformed(format!("its address {why}")),
            )
        };
        let url = field(address, "url")
            .and_then(text)
            .ok_or_else(|| malformed("has no url"))?;
        let mut req = self
            .http
            .put(url)
            .timeout(self.timeout)
            .body(bytes.to_vec());
        if let Some(Ipld::Map(h)) = field(address, "headers") {
            for (name, v) in h {
                let v = text(v).ok_or_else(|| malformed("has a header that is not text"))?;
                if name.eq_ignore_ascii_case("content-length") {
                    // reqwest sets it from the body; another figure means
                    // the allocation is for other bytes.
                    if v != bytes.len().to_string() {
                        return Err(malformed(&format!(
                            "says content-length {v} for a blob of {} bytes",
                            bytes.len()
                        )));
                    }
                    continue;
                }
                req = req.header(name.as_str(), v);
            }
        }
        let resp = req.send().await.map_err(transport(url))?;
        let status = resp.status();
        if status.is_redirection() {
            return Err(redirected(url, &resp));
        }
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(ServiceError::Put {
                blob,
                status: status.as_u16(),
                body: shorten(&body),
            });
        }
        Ok(())
    }

    /// Registers the sharded-DAG index `index` (a CAR already stored with
    /// [`Self::blob_add`]) so gateways can find `root`'s blocks.
    pub async fn index_add(&self, index: &Cid) -> Result<(), ServiceError> {
        self.invoke("space/index/add", map([("index", Ipld::Link(*index))]))
            .await
            .map(|_| ())
    }

    /// Registers an upload: `root` stored in `shards`.
    pub async fn upload_add(&self, root: &Cid, shards: &[Cid]) -> Result<(), ServiceError> {
        self.invoke(
            "upload/add",
            map([
                ("root", Ipld::Link(*root)),
                (
                    "shards",
                    Ipld::List(shards.iter().map(|s| Ipld::Link(*s)).collect()),
                ),
            ]),
        )
        .await
        .map(|_| ())
    }

    /// One page of the space's uploads: their roots.
    pub async fn upload_list(
        &self,
        cursor: Option<&str>,
        size: u64,
    ) -> Result<Page<Cid>, ServiceError> {
        let mut nb = map([("size", Ipld::Integer(size.into()))]);
        if let (Some(c), Ipld::Map(m)) = (cursor, &mut nb) {
            m.insert("cursor".to_owned(), Ipld::String(c.to_owned()));
        }
        let (ok, _, _) = self.invoke("upload/list", nb).await?;
        page(&ok, "upload/list", |r| field(r, "root").and_then(link))
    }

    /// One page of the shards of the upload `root`.
    pub async fn upload_shard_list(
        &self,
        root: &Cid,
        cursor: Option<&str>,
    ) -> Result<Page<Cid>, ServiceError> {
        let mut nb = map([("root", Ipld::Link(*root))]);
        if let (Some(c), Ipld::Map(m)) = (cursor, &mut nb) {
            m.insert("cursor".to_owned(), Ipld::String(c.to_owned()));
        }
        let (ok, _, _) = self.invoke("upload/shard/list", nb).await?;
        page(&ok, "upload/shard/list", link)
    }

    /// Removes the upload `root` (not its blobs).
    pub async fn upload_remove(&self, root: &Cid) -> Result<(), ServiceError> {
        self.invoke("upload/remove", map([("root", Ipld::Link(*root))]))
            .await
            .map(|_| ())
    }

    /// Removes the blob whose link is `blob` from the space.
    pub async fn blob_remove(&self, blob: &Cid) -> Result<(), ServiceError> {
        self.invoke(
            "space/blob/remove",
            map([("digest", Ipld::Bytes(blob.hash().to_bytes()))]),
        )
        .await
        .map(|_| ())
    }
}

/// A page `{results, cursor?}` with each result read by `item`.
fn page(
    ok: &Ipld,
    ability: &str,
    item: impl Fn(&Ipld) -> Option<Cid>,
) -> Result<Page<Cid>, ServiceError> {
    let malformed = |why: String| ServiceError::Protocol {
        ability: ability.to_owned(),
        source: UcantoError::Malformed(why),
    };
    let Some(Ipld::List(results)) = field(ok, "results") else {
        return Err(malformed("no results list".to_owned()));
    };
    let results = results
        .iter()
        .map(|r| item(r).ok_or_else(|| malformed(format!("a result without a link: {r:?}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let cursor = field(ok, "cursor").and_then(text).map(str::to_owned);
    Ok(Page { results, cursor })
}

/// A receipt for `task` among `blocks`: reported directly or attached to
/// a `ucan/conclude` (the receipt endpoint answers either way).
fn find_receipt(blocks: &std::collections::HashMap<Cid, Vec<u8>>, task: &Cid) -> Option<Receipt> {
    blocks
        .iter()
        .filter(|(c, _)| c.codec() == 0x71)
        .filter_map(|(c, b)| Receipt::decode(*c, b).ok())
        .find(|r| &r.ran == task)
}

/// A redirect is an error, never followed: the request may carry
/// credentials that must not reach another host (invariant 3,
/// docs/ARCHITECTURE.md: nothing from outside is trusted).
fn redirected(url: &str, resp: &reqwest::Response) -> ServiceError {
    ServiceError::Redirect {
        url: url.to_owned(),
        location: resp
            .headers()
            .get("location")
            .and_then(|l| l.to_str().ok())
            .unwrap_or("(no location)")
            .to_owned(),
    }
}

/// The error of a request to `url` that got no answer.
fn transport(url: &str) -> impl FnOnce(reqwest::Error) -> ServiceError + '_ {
    move |source| ServiceError::Transport {
        url: url.to_owned(),
        source,
    }
}
