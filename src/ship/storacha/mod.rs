//! Storacha (IPFS + Filecoin) as a destination (`kind = "storacha"`).
//!
//! Storacha stores content-addressed uploads, not named objects. pitr makes
//! every object self-describing: it is packed (`car`) as a UnixFS directory
//! with one entry whose name is `pitr/` + the object's key (`/` written
//! `%2F`), the
//! way `ipfs-car pack FILE` wraps a file. The upload's root CID therefore
//! names its key, and the key → CID map is rebuilt from Storacha alone:
//! `upload/list` gives every root, and each root's
//! directory block (a few hundred bytes, fetched from the gateway and
//! checked against the root CID) gives the key. So `pitr catalog rebuild
//! --from <this destination>` needs nothing but the space.
//!
//! Writes speak Storacha's own protocol, ucanto (`ucanto`, `service`):
//! the CAR is stored as a blob of the space (`space/blob/add`, the `PUT` to
//! the URL its allocation gives, the `http/put` receipt via `ucan/conclude`,
//! `blob/accept`), then its sharded-DAG index (`index`: a blob too, then
//! `space/index/add`) so gateways can find it, then `upload/add` of the
//! root with the CAR as its one shard — in that order, so a listed upload
//! always has its bytes. Reads go through an IPFS trustless gateway
//! (`{gateway}/ipfs/{root}?format=car`) and are verified block by block
//! against the root CID (`verify`); a ranged read fetches and verifies the
//! whole object and keeps the last few in a bounded cache (64 MiB).

pub mod car;
pub mod index;
pub mod service;
pub mod ucanto;
pub mod verify;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io;
use std::ops::Range;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use cid::Cid;

use self::service::{Service, ServiceError};
use super::{Destination, ObjectMeta, PutOutcome, ShipError, validate_key};

/// How to reach a Storacha space: what [`StorachaDestination`] needs.
#[derive(Clone, PartialEq, Eq)]
pub struct StorachaOptions {
    /// The space's DID (`did:key:z6Mk…`), the subject of every invocation.
    pub space: String,
    /// The agent's private key as `storacha key create` prints it (`M…`).
    /// `Debug` redacts it.
    pub principal: String,
    /// The delegation from the space to the agent, base64 or the CAR bytes
    /// of one. `Debug` redacts it.
    pub proof: String,
    /// The upload service's URL (`https://up.storacha.network`).
    pub service: String,
    /// The upload service's DID, the audience of every invocation
    /// (`did:web:up.storacha.network`).
    pub service_did: String,
    /// The IPFS trustless gateway reads go through (`https://storacha.link`).
    pub gateway: String,
    /// How long one request may take before it is retried.
    pub request_timeout: Duration,
}

impl std::fmt::Debug for StorachaOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorachaOptions")
            .field("space", &self.space)
            .field("principal", &"(redacted)")
            .field("proof", &"(redacted)")
            .field("service", &self.service)
            .field("service_did", &self.service_did)
            .field("gateway", &self.gateway)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// Whole objects kept for ranged reads.
const CACHE_BYTES: usize = 64 << 20;
/// `upload/list` page size.
const PAGE: u64 = 1000;
/// More pages than any space holds; a bound so a looping cursor ends.
const MAX_PAGES: usize = 100_000;
/// A read of a key not in the index lists the space again only when the
/// last listing is older than this.
const RELIST_AFTER: Duration = Duration::from_secs(30);

/// The upload behind one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorachaObject {
    /// The upload's root: the directory naming the key.
    pub root: Cid,
    /// The file (the directory's entry).
    pub file: Cid,
    /// The CAR shard holding it (`bag…`), when known.
    pub shard: Option<Cid>,
    /// The object's size in bytes.
    pub size: u64,
}

#[derive(Debug, Default)]
struct Index {
    by_key: BTreeMap<String, StorachaObject>,
    /// Roots already looked at (pitr's or not), so a listing fetches only
    /// new directory blocks.
    seen: HashSet<Cid>,
    listed_at: Option<Instant>,
}

/// A Storacha space reached through its upload service and an IPFS gateway.
#[derive(Debug)]
pub struct StorachaDestination {
    name: String,
    /// The agent, or why its credentials are unusable (reported by every
    /// call, so a bad proof is an error at the first use, not a panic).
    service: Result<Service, String>,
    gateway: String,
    http: reqwest::Client,
    timeout: Duration,
    index: Mutex<Index>,
    /// One listing at a time.
    listing: tokio::sync::Mutex<()>,
    cache: Mutex<VecDeque<(String, Bytes)>>,
}

/// The directory entry name of `key`: the path `pitr/<key>` with every `/`
/// written `%2F` (a UnixFS name holds no `/`). The `pitr/` part tells
/// pitr's uploads from others in the same space.
pub fn entry_name(key: &str) -> String {
    format!("pitr/{key}").replace('/', "%2F")
}

/// The key an entry name stands for, when it is one pitr wrote.
fn key_of(name: &str) -> Option<String> {
    let key = name.strip_prefix("pitr%2F")?.replace("%2F", "/");
    validate_key("", &key).ok().map(|_| key)
}

impl StorachaDestination {
    /// A destination named `name` with the given settings.
    pub fn new(name: &str, c: &StorachaOptions) -> StorachaDestination {
        let http = reqwest::Client::new();
        StorachaDestination {
            name: name.to_owned(),
            service: Service::new(
                &c.service,
                &c.service_did,
                &c.principal,
                &c.proof,
                &c.space,
                c.request_timeout,
            )
            .map_err(|e| {
                format!(
                    "the principal or proof is unusable for space {}: {e}",
                    c.space
                )
            }),
            gateway: c.gateway.clone(),
            http,
            timeout: c.request_timeout,
            index: Mutex::new(Index::default()),
            listing: tokio::sync::Mutex::new(()),
            cache: Mutex::new(VecDeque::new()),
        }
    }

    fn err(&self, op: &'static str, key: &str, msg: String, transient: bool) -> ShipError {
        ShipError::Io {
            dest: self.name.clone(),
            op,
            key: key.to_owned(),
            source: io::Error::other(msg),
            transient,
        }
    }

    fn svc_err(&self, op: &'static str, key: &str, e: ServiceError) -> ShipError {
        let transient = e.is_transient();
        self.err(op, key, e.to_string(), transient)
    }

    /// The agent, or a permanent error saying why the credentials fail.
    fn svc(&self, op: &'static str, key: &str) -> Result<&Service, ShipError> {
        self.service
            .as_ref()
            .map_err(|e| self.err(op, key, e.clone(), false))
    }

    fn lookup(&self, key: &str) -> Option<StorachaObject> {
        self.index
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_key
            .get(key)
            .cloned()
    }

    /// The upload behind `key`, listing the space first when it was never
    /// listed, or (with `relist`) when the key is unknown and the last
    /// listing is stale.
    pub async fn object(
        &self,
        key: &str,
        relist: bool,
    ) -> Result<Option<StorachaObject>, ShipError> {
        let listed_at = self
            .index
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .listed_at;
        if listed_at.is_some() {
            if let Some(o) = self.lookup(key) {
                return Ok(Some(o));
            }
            if !relist || listed_at.is_some_and(|t| t.elapsed() < RELIST_AFTER) {
                return Ok(None);
            }
        }
        self.relist(key).await?;
        Ok(self.lookup(key))
    }

    /// A GET to the gateway, returning the body of a 2xx answer.
    async fn gateway_get(
        &self,
        key: &str,
        cid: &Cid,
        format: &str,
        accept: &str,
    ) -> Result<Bytes, ShipError> {
        let url = format!("{}/ipfs/{cid}?format={format}", self.gateway);
        let resp = self
            .http
            .get(&url)
            .timeout(self.timeout)
            .header("Accept", accept)
            .send()
            .await
            .map_err(|e| {
                self.err(
                    "get",
                    key,
                    format!("no answer from the gateway {url}: {e}"),
                    true,
                )
            })?;
        let status = resp.status();
        if !status.is_success() {
            // A gateway may not have found fresh content yet: worth retrying
            // on 404 and 5xx alike.
            let transient =
                status.is_server_error() || status.as_u16() == 404 || status.as_u16() == 429;
            return Err(self.err(
                "get",
                key,
                format!(
                    "the gateway answered HTTP {} for CID {cid} ({url}){}",
                    status.as_u16(),
                    if status.as_u16() == 404 {
                        "; it has not found the content (yet): is the upload's index registered?"
                    } else {
                        ""
                    }
                ),
                transient,
            ));
        }
        resp.bytes()
            .await
            .map_err(|e| self.err("get", key, format!("reading {url}: {e}"), true))
    }

    /// One verified block from the gateway.
    async fn block(&self, key: &str, cid: &Cid) -> Result<Bytes, ShipError> {
        let bytes = self
            .gateway_get(key, cid, "raw", "application/vnd.ipld.raw")
            .await?;
        verify::check_block(cid, &bytes).map_err(|e| {
            self.err(
                "get",
                key,
                format!(
                    "the gateway {} served a bad block for {cid}: {e}",
                    self.gateway
                ),
                false,
            )
        })?;
        Ok(bytes)
    }

    /// Lists the space through `upload/list` and resolves the roots not
    /// seen before into keys.
    async fn relist(&self, what: &str) -> Result<(), ShipError> {
        let _one = self.listing.lock().await;
        let svc = self.svc("list", what)?;
        let mut uploads: Vec<(Cid, Option<Cid>)> = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        // Every page up to the one without a cursor: a short page may
        // still carry one.
        loop {
            pages += 1;
            if pages > MAX_PAGES {
                return Err(self.err(
                    "list",
                    what,
                    format!("upload/list gave more than {MAX_PAGES} pages; is the service's cursor looping?"),
                    false,
                ));
            }
            let page = svc
                .upload_list(cursor.as_deref(), PAGE)
                .await
                .map_err(|e| self.svc_err("list", what, e))?;
            // upload/list no longer names shards: upload/shard/list does,
            // when a delete needs them.
            uploads.extend(page.results.into_iter().map(|root| (root, None)));
            match page.cursor {
                None => break,
                Some(next) if cursor.as_deref() == Some(next.as_str()) => {
                    return Err(self.err(
                        "list",
                        what,
                        format!("upload/list answered the cursor {next:?} twice; the listing would not end"),
                        false,
                    ));
                }
                Some(next) => cursor = Some(next),
            }
        }
        for (root, shard) in uploads {
            let seen = self
                .index
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .seen
                .contains(&root);
            if seen {
                continue;
            }
            let found = self.resolve(what, &root, shard).await?;
            let mut idx = self.index.lock().unwrap_or_else(|p| p.into_inner());
            idx.seen.insert(root);
            if let Some((key, obj)) = found {
                match idx.by_key.get(&key) {
                    Some(other) if other.root != obj.root => tracing::warn!(
                        dest = %self.name,
                        "object {key} has two uploads, {} and {}; reading the first",
                        other.root,
                        obj.root
                    ),
                    Some(_) => {}
                    None => {
                        idx.by_key.insert(key, obj);
                    }
                }
            }
        }
        self.index
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .listed_at = Some(Instant::now());
        Ok(())
    }

    /// The key and object an upload root stands for; `None` for uploads
    /// that are not pitr's (other tools may share the space).
    async fn resolve(
        &self,
        what: &str,
        root: &Cid,
        shard: Option<Cid>,
    ) -> Result<Option<(String, StorachaObject)>, ShipError> {
        if root.codec() != car::DAG_PB {
            return Ok(None);
        }
        let dir = self.block(what, root).await?;
        let Ok(entry) = verify::single_entry(root, &dir) else {
            return Ok(None);
        };
        let Some(key) = key_of(&entry.name) else {
            return Ok(None);
        };
        let size = if entry.cid.codec() == car::RAW {
            entry.tsize
        } else {
            let file = self.block(what, &entry.cid).await?;
            match verify::decode_pb(&file).ok().and_then(|n| n.filesize) {
                Some(s) => s,
                None => return Ok(None),
            }
        };
        Ok(Some((
            key,
            StorachaObject {
                root: *root,
                file: entry.cid,
                shard,
                size,
            },
        )))
    }

    /// Uploads a packed object: the CAR as a blob, its index as a blob
    /// registered with `space/index/add`, then `upload/add`.
    async fn upload(&self, key: &str, car: &car::NamedCar) -> Result<(), ShipError> {
        let svc = self.svc("put", key)?;
        svc.blob_add(&car.bytes)
            .await
            .map_err(|e| self.svc_err("put", key, e))?;
        let (index, index_bytes) = index::sharded_dag_index(&car.root, &car.bytes)
            .map_err(|e| self.err("put", key, e.to_string(), false))?;
        svc.blob_add(&index_bytes)
            .await
            .map_err(|e| self.svc_err("put", key, e))?;
        svc.index_add(&index)
            .await
            .map_err(|e| self.svc_err("put", key, e))?;
        svc.upload_add(&car.root, &[car.shard])
            .await
            .map_err(|e| self.svc_err("put", key, e))?;
        Ok(())
    }

    /// Every shard of the upload `root`, from `upload/shard/list`.
    async fn shards(&self, key: &str, root: &Cid) -> Result<Vec<Cid>, ShipError> {
        let svc = self.svc("delete", key)?;
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = svc
                .upload_shard_list(root, cursor.as_deref())
                .await
                .map_err(|e| self.svc_err("delete", key, e))?;
            out.extend(page.results);
            match page.cursor {
                Some(next) if cursor.as_deref() != Some(next.as_str()) => cursor = Some(next),
                _ => break,
            }
        }
        Ok(out)
    }

    /// What `pitr check` says of the credentials: the space, the agent,
    /// the abilities the proof grants and those pitr needs but lacks.
    pub fn credentials_report(&self) -> Result<String, String> {
        let svc = self.service.as_ref().map_err(Clone::clone)?;
        let granted: Vec<&str> = ucanto::ABILITIES
            .iter()
            .copied()
            .filter(|a| svc.proof().grants(a, svc.space()))
            .collect();
        let missing = svc.missing_abilities();
        let exp = svc.proof().ucan.exp.map_or_else(
            || "never expires".to_owned(),
            |e| {
                jiff::Timestamp::from_second(e).map_or_else(
                    |_| format!("expires at Unix {e}"),
                    |t| format!("expires {t}"),
                )
            },
        );
        let head = format!(
            "space {}, agent {}, proof {exp}, grants {}",
            svc.space(),
            svc.agent(),
            if granted.is_empty() {
                "none of pitr's abilities".to_owned()
            } else {
                granted.join(", ")
            }
        );
        if missing.is_empty() {
            Ok(format!("{head}; nothing missing"))
        } else {
            Err(format!(
                "{head}; MISSING {}: create the delegation again with `storacha delegation create {} {} --base64`",
                missing.join(", "),
                svc.agent(),
                ucanto::delegation_flags()
            ))
        }
    }

    fn cached(&self, key: &str) -> Option<Bytes> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.iter().find(|(k, _)| k == key).map(|(_, b)| b.clone())
    }

    fn remember(&self, key: &str, data: &Bytes) {
        if data.len() > CACHE_BYTES {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|(k, _)| k != key);
        cache.push_front((key.to_owned(), data.clone()));
        while cache.iter().map(|(_, b)| b.len()).sum::<usize>() > CACHE_BYTES {
            cache.pop_back();
        }
    }
}

#[async_trait]
impl Destination for StorachaDestination {
    fn name(&self) -> &str {
        &self.name
    }

    async fn prepare(&self) -> Result<(), ShipError> {
        // Checks the credentials and the space: a listing is the cheapest
        // call that needs both.
        self.relist("(space)").await
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome, ShipError> {
        validate_key(&self.name, key)?;
        if self.object(key, false).await?.is_some() {
            return Ok(PutOutcome::AlreadyExists);
        }
        let car = car::pack_named(&entry_name(key), &data)
            .map_err(|e| self.err("put", key, e.to_string(), false))?;
        self.upload(key, &car).await?;
        let mut idx = self.index.lock().unwrap_or_else(|p| p.into_inner());
        idx.seen.insert(car.root);
        idx.by_key.insert(
            key.to_owned(),
            StorachaObject {
                root: car.root,
                file: car.file,
                shard: Some(car.shard),
                size: data.len() as u64,
            },
        );
        Ok(PutOutcome::Created)
    }

    async fn get(&self, key: &str) -> Result<Bytes, ShipError> {
        validate_key(&self.name, key)?;
        if let Some(b) = self.cached(key) {
            return Ok(b);
        }
        let Some(obj) = self.object(key, true).await? else {
            return Err(ShipError::NotFound {
                dest: self.name.clone(),
                key: key.to_owned(),
            });
        };
        let car = self
            .gateway_get(key, &obj.root, "car", "application/vnd.ipld.car")
            .await?;
        let data = verify::extract(&car, &obj.root, &entry_name(key)).map_err(|e| {
            // A CAR cut short (a dropped connection, a gateway still
            // assembling it) may come whole next time; bytes that hash
            // wrong will not.
            let transient = e.is_truncation();
            self.err(
                "get",
                key,
                format!(
                    "object {key} (CID {}) from the gateway {} fails verification: {e}",
                    obj.root, self.gateway
                ),
                transient,
            )
        })?;
        if data.len() as u64 != obj.size {
            return Err(self.err(
                "get",
                key,
                format!(
                    "object {key} (CID {}) holds {} bytes, the listing said {}",
                    obj.root,
                    data.len(),
                    obj.size
                ),
                false,
            ));
        }
        let data = Bytes::from(data);
        self.remember(key, &data);
        Ok(data)
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, ShipError> {
        let all = self.get(key).await?;
        let len = all.len() as u64;
        let start = range.start.min(len) as usize;
        let end = range.end.clamp(range.start, len) as usize;
        Ok(all.slice(start..end.max(start)))
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, ShipError> {
        validate_key(&self.name, key)?;
        Ok(self.object(key, true).await?.map(|o| ObjectMeta {
            key: key.to_owned(),
            size: o.size,
        }))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ShipError> {
        self.relist(prefix).await?;
        let idx = self.index.lock().unwrap_or_else(|p| p.into_inner());
        Ok(idx
            .by_key
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, o)| ObjectMeta {
                key: k.clone(),
                size: o.size,
            })
            .collect())
    }

    /// The upload's root CID: the directory `pitr/<key>` → the object, as
    /// `put_if_absent` packs it (a pure function of key and bytes).
    fn content_id(&self, key: &str, data: &[u8]) -> Option<String> {
        // An object too large to pack is refused by `put_if_absent` itself.
        car::root_named(&entry_name(key), data)
            .ok()
            .map(|c| c.to_string())
    }

    /// The root the space's upload listing resolves to `key`.
    async fn stored_content_id(&self, key: &str) -> Result<Option<String>, ShipError> {
        validate_key(&self.name, key)?;
        Ok(self.object(key, true).await?.map(|o| o.root.to_string()))
    }

    async fn delete(&self, key: &str) -> Result<(), ShipError> {
        validate_key(&self.name, key)?;
        let Some(obj) = self.object(key, true).await? else {
            return Ok(());
        };
        let svc = self.svc("delete", key)?;
        // The shards first (once the upload is gone, upload/shard/list
        // cannot name them), and their bytes before the upload: a delete
        // that fails halfway leaves the upload listed, so the next delete
        // finds its shards again (removing a blob twice is not an error)
        // instead of leaving bytes no listing names.
        let shards = match obj.shard {
            Some(s) => vec![s],
            None => self.shards(key, &obj.root).await?,
        };
        for shard in &shards {
            svc.blob_remove(shard).await.map_err(|e| {
                let transient = e.is_transient();
                let msg = format!(
                    "shard {shard} of {key} (upload {}) was not removed: {e}; the upload stays listed, and the next delete of {key} tries again",
                    obj.root
                );
                self.err("delete", key, msg, transient)
            })?;
        }
        match svc.upload_remove(&obj.root).await {
            Err(e) if !e.is_not_found() => return Err(self.svc_err("delete", key, e)),
            _ => {}
        }
        {
            let mut idx = self.index.lock().unwrap_or_else(|p| p.into_inner());
            idx.by_key.remove(key);
        }
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(k, _)| k != key);
        Ok(())
    }
}
