//! The repository: pitr's on-store format (docs/FORMAT.md) and the streaming
//! API over it.
//!
//! Content is cut into chunks, each zstd-compressed then age-encrypted to the
//! recipients, grouped into packs, and recorded in catalog commits. Writing
//! needs only the recipients and the repository key; reading chunk data needs
//! the identity (invariant 5). Everything read back is authenticated and its
//! chunk id recomputed (invariant 3).

mod batch;
pub mod catalog;
mod chunking;
mod datakey;
mod export;
#[cfg(test)]
mod golden;
pub(crate) mod keys;
mod manifest;
pub(crate) mod pack;
mod reader;
mod repair;
mod scrub;
pub(crate) mod seal;
mod verify;
mod writer;
mod xchacha;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::repo::catalog::{Catalog, CatalogError};
use crate::ship::{Fanout, ShipError};

pub use batch::{BatchReport, BatchStage, STAGE_MAX_BYTES, Supersedes};
pub use chunking::Chunking;
pub use datakey::DataKey;
pub use export::ExportReport;
pub use keys::{ChunkId, RepositoryKey, age_decrypt, age_encrypt};
pub use manifest::{
    COMMIT_VERSION_GC, Commit, ContentIds, DESCRIPTOR_OBJECT, Descriptor, FORMAT_VERSION, Forget,
    GcRecord, ItemHasher, ItemRecord, Manifest, PackRecord, commit_object_name,
    parse_commit_object_name, recipients_fingerprint,
};
pub use pack::{PackBuilder, PackEntry, PackId, encode_index, read_index};
pub use reader::Reader;
pub use repair::{RepairReport, Repaired, Unrepaired};
pub use scrub::{ScrubOptions, ScrubReport};
pub use seal::SealKind;
pub use verify::{VerifyProblem, VerifyReport};
pub use writer::{ChunkPreparer, CommitInfo, PreparedChunk, Writer};

/// Something went wrong reading or writing the repository. Variants a caller
/// must tell apart (corruption kinds, missing keys) are separate.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// Authentication failed: the bytes were altered.
    #[error(
        "object {object} was altered: {what}. Restore it from another destination (`pitr verify` lists every damaged object)"
    )]
    Tampered {
        /// The object.
        object: String,
        /// What failed.
        what: String,
    },
    /// The object is shorter than it must be.
    #[error("object {object} is truncated: {what}. Restore it from another destination")]
    Truncated {
        /// The object.
        object: String,
        /// What is missing.
        what: String,
    },
    /// The object authenticates but holds other content than its name says.
    #[error("object {object} holds the wrong content (swapped or replaced): {what}")]
    Swapped {
        /// The object.
        object: String,
        /// What differs.
        what: String,
    },
    /// The identity cannot decrypt this object.
    #[error(
        "object {object} cannot be decrypted with the configured identity: it was encrypted to other recipients. Set repository.identity_file to the identity matching this store's recipients"
    )]
    WrongIdentity {
        /// The object.
        object: String,
    },
    /// Sealed metadata did not authenticate.
    #[error(
        "object {object}: its sealed metadata does not authenticate: it was altered, or the repository key is not this store's"
    )]
    MetadataAuth {
        /// The object.
        object: String,
    },
    /// A content-addressed destination holds an object under another
    /// content id than the catalog recorded when it was written.
    #[error(
        "destination {dest}: object {object} has CID {stored} there, but the catalog recorded {catalog} when it was written. \
         The destination holds other bytes under that name (or two uploads of it): read the object from another destination, \
         check it with `pitr verify`, and remove the wrong upload from the space"
    )]
    ContentIdMismatch {
        /// The destination.
        dest: String,
        /// The object.
        object: String,
        /// The CID the catalog holds.
        catalog: String,
        /// The CID the destination reports.
        stored: String,
    },
    /// A format version this build does not know.
    #[error(
        "object {object} has format version {found}; this pitr reads version {supported}. Use a pitr release that supports version {found}"
    )]
    UnsupportedVersion {
        /// The object.
        object: String,
        /// Version found.
        found: u32,
        /// Version supported.
        supported: u32,
    },
    /// Not the structure the format prescribes.
    #[error("object {object} is malformed: {what}")]
    Malformed {
        /// The object.
        object: String,
        /// What is wrong.
        what: String,
    },
    /// No destination holds a repository.
    #[error(
        "destination {dest} holds no pitr repository (no `config` object). Run `pitr init -c <config>` first"
    )]
    NotInitialized {
        /// The destination.
        dest: String,
    },
    /// The store was made for other recipients.
    #[error(
        "destination {dest} holds a repository made for other age recipients (fingerprint {found}, configured {configured}). Writing would produce backups its owners cannot read: fix repository.recipients or point at the right destination"
    )]
    RecipientsMismatch {
        /// The destination.
        dest: String,
        /// The store's fingerprint.
        found: String,
        /// The configured recipients' fingerprint.
        configured: String,
    },
    /// Destinations hold different repositories.
    #[error(
        "destinations {a} and {b} hold different repositories (ids {a_id} and {b_id}); every destination of one config must hold the same one"
    )]
    DescriptorsDiffer {
        /// One destination.
        a: String,
        /// Its repository id.
        a_id: String,
        /// Another destination.
        b: String,
        /// Its repository id.
        b_id: String,
    },
    /// A key file does not parse.
    #[error("repository key file {path} is not 64 hex characters")]
    BadKeyFile {
        /// The file.
        path: PathBuf,
    },
    /// A key that belongs to another store.
    #[error(
        "repository key from {origin} (key id {found}) is not this store's (key id {expected}); use the key `pitr init` wrote for this store"
    )]
    KeyMismatch {
        /// Where the key came from.
        origin: String,
        /// Its id.
        found: String,
        /// The store's key id.
        expected: String,
    },
    /// The writer has no repository key.
    #[error(
        "no repository key: {state_dir}/repository.key is missing and repository.key_file is not set. Set repository.key_file to the key `pitr init` wrote, or run `pitr catalog rebuild` once with repository.identity_file set to recover it from the store"
    )]
    NoRepositoryKey {
        /// The state directory.
        state_dir: PathBuf,
    },
    /// Reading data needs the identity.
    #[error(
        "reading backups needs the age identity: set repository.identity_file (the sidecar itself holds only recipients)"
    )]
    NoIdentity,
    /// An item refers to a chunk the catalog does not know.
    #[error(
        "item {item}: chunk {chunk} is in no known pack; the catalog or the store lost it (run `pitr verify`)"
    )]
    MissingChunk {
        /// The item.
        item: String,
        /// The chunk.
        chunk: ChunkId,
    },
    /// The reassembled item does not match its manifest.
    #[error("item {item}: reassembled content does not match its manifest ({what})")]
    ItemMismatch {
        /// The item.
        item: String,
        /// What differs.
        what: String,
    },
    /// Reading the input of a write failed.
    #[error("reading the input of item {item}: {source}")]
    Input {
        /// The item.
        item: String,
        /// The error.
        source: std::io::Error,
    },
    /// A local file failed.
    #[error("{path}: {source}")]
    Local {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A destination failed.
    #[error(transparent)]
    Ship(#[from] ShipError),
    /// The local catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// What a repository needs: its keys, local state and format settings
/// (`crate::wiring` builds them from the config).
#[derive(Clone)]
pub struct RepoOptions {
    /// age recipients every chunk is encrypted to.
    pub recipients: Vec<age::x25519::Recipient>,
    /// Identities for reading (restore / verify); empty for the sidecar.
    pub identities: Vec<age::x25519::Identity>,
    /// Where the repository key is given explicitly.
    pub key_file: Option<PathBuf>,
    /// Local state: catalog and key.
    pub state_dir: PathBuf,
    /// zstd level for chunks.
    pub zstd_level: i32,
    /// Target pack size in bytes.
    pub pack_size: usize,
}

/// Why an identity file gave no identity that reads the repository. The
/// layer that knows where the file was configured (`crate::wiring`) names
/// that place around these messages.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The file could not be read.
    #[error("cannot read identity file {}: {source}", file.display())]
    Read {
        /// The identity file.
        file: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A line is not an age X25519 identity.
    #[error(
        "line {line} of {} is not an age X25519 identity (AGE-SECRET-KEY-1…). \
         Create one with `pitr keygen --output FILE`; plugin and passphrase \
         identities are not supported",
        file.display()
    )]
    NotAnIdentity {
        /// The identity file.
        file: PathBuf,
        /// The line, counted from 1.
        line: usize,
    },
    /// No identity in the file belongs to any of the recipients.
    #[error(
        "{} holds no identity for any of the configured recipients, so it cannot \
         read this repository. Point identity_file at the identity whose public key \
         (`age-keygen -y FILE`) is in [repository] recipients",
        file.display()
    )]
    NoneForRecipients {
        /// The identity file.
        file: PathBuf,
    },
}

/// Parses an identity file as `age-keygen` and `pitr keygen` write it: one
/// `AGE-SECRET-KEY-1…` per line, `#` comments. Refuses a file that holds no
/// identity for any of `recipients`: a restore with it could only fail
/// later, object by object.
pub fn read_identities(
    file: &Path,
    recipients: &[age::x25519::Recipient],
) -> Result<Vec<age::x25519::Identity>, IdentityError> {
    let text = std::fs::read_to_string(file).map_err(|source| IdentityError::Read {
        file: file.to_owned(),
        source,
    })?;
    let mut identities = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let identity =
            line.parse::<age::x25519::Identity>()
                .map_err(|_| IdentityError::NotAnIdentity {
                    file: file.to_owned(),
                    line: n + 1,
                })?;
        identities.push(identity);
    }
    let configured: Vec<String> = recipients.iter().map(|r| r.to_string()).collect();
    if !identities
        .iter()
        .any(|i| configured.contains(&i.to_public().to_string()))
    {
        return Err(IdentityError::NoneForRecipients {
            file: file.to_owned(),
        });
    }
    Ok(identities)
}

impl std::fmt::Debug for RepoOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoOptions")
            .field(
                "recipients",
                &self
                    .recipients
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>(),
            )
            .field(
                "identities",
                &format_args!("[{} redacted]", self.identities.len()),
            )
            .field("key_file", &self.key_file)
            .field("state_dir", &self.state_dir)
            .field("zstd_level", &self.zstd_level)
            .field("pack_size", &self.pack_size)
            .finish()
    }
}

/// An opened repository over a set of destinations.
#[derive(Debug, Clone)]
pub struct Repository {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    fanout: Fanout,
    key: RepositoryKey,
    opts: RepoOptions,
    descriptor: Descriptor,
    catalog: Mutex<Catalog>,
    writer_id: String,
    /// Held from choosing a commit's sequence number until the catalog
    /// recorded it: writers of one repository share `writer_id`, so two
    /// commits choosing the same number would share an object name, and
    /// put-if-absent would keep only the first.
    commit_lock: tokio::sync::Mutex<()>,
    /// Writers holding uncommitted work, by registration number: when each
    /// began. See [`Repository::oldest_inflight`].
    inflight: Mutex<std::collections::BTreeMap<u64, jiff::Timestamp>>,
    inflight_next: std::sync::atomic::AtomicU64,
    /// Copies reads passed over (see [`Repository::skipped_reads`]).
    skipped: Mutex<Vec<SkippedRead>>,
    /// How fresh the catalog must be for writers to deduplicate against it
    /// (see [`Repository::refresh_catalog_every`]).
    freshness: Mutex<Freshness>,
    /// The staging areas of batched destinations (`repo::batch`): every
    /// new chunk a writer stores is staged in each.
    batch_stages: std::sync::RwLock<Vec<Arc<BatchStage>>>,
}

/// When the catalog was last read from the destinations, and how old that
/// may be before writers stop trusting it for deduplication.
#[derive(Debug, Default)]
struct Freshness {
    every: Option<std::time::Duration>,
    last: Option<std::time::Instant>,
}

impl Inner {
    /// Stages a new chunk for every batched destination (best effort).
    fn stage_for_batches(&self, id: &ChunkId, compressed: &[u8], raw_length: u32) {
        for stage in self
            .batch_stages
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            stage.stage(id, compressed, raw_length);
        }
    }

    /// Whether writers may deduplicate against the local catalog: it was
    /// read from the destinations recently enough that a pack another host
    /// marked for deletion shows as marked (always, unless
    /// [`Repository::refresh_catalog_every`] was called).
    pub(crate) fn catalog_fresh(&self) -> bool {
        let f = self.freshness.lock().unwrap_or_else(|p| p.into_inner());
        match (f.every, f.last) {
            (None, _) => true,
            (Some(every), Some(last)) => last.elapsed() < every,
            (Some(_), None) => false,
        }
    }
}

/// A destination's copy of an object that a read passed over, reading
/// another destination's instead.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SkippedRead {
    /// The destination whose copy was skipped.
    pub destination: String,
    /// The object.
    pub object: String,
    /// Why: missing, unreadable, or what failed verification.
    pub why: String,
    /// The destination that served the read instead.
    pub served_by: String,
}

/// How many skipped reads are kept for the summary; past it they are only
/// logged (memory stays bounded on a destination missing everything).
const SKIPPED_KEPT: usize = 1000;

/// A writer's registration as holding uncommitted work; dropping it ends
/// the registration.
#[derive(Debug)]
pub(crate) struct InflightGuard {
    inner: Arc<Inner>,
    id: u64,
}

impl InflightGuard {
    /// Moves the registration back to `at` if that is earlier.
    pub(crate) fn since(&mut self, at: jiff::Timestamp) {
        let mut map = self
            .inner
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(t) = map.get_mut(&self.id)
            && at < *t
        {
            *t = at;
        }
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.inner
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// What `pitr init` found and did.
#[derive(Debug)]
pub struct InitReport {
    /// The repository's descriptor.
    pub descriptor: Descriptor,
    /// Whether a new repository was created.
    pub created: bool,
    /// Destinations that received the descriptor and key object now.
    pub seeded: Vec<String>,
    /// Where the repository key is kept locally.
    pub key_path: PathBuf,
}

const KEY_FILE_NAME: &str = "repository.key";
const CATALOG_FILE_NAME: &str = "catalog.db";

fn local(path: &Path) -> impl FnOnce(std::io::Error) -> RepoError + '_ {
    move |source| RepoError::Local {
        path: path.to_owned(),
        source,
    }
}

fn key_object_name(key_id: &str) -> String {
    format!("keys/{key_id}")
}

impl Repository {
    /// Prepares every destination and makes sure each holds the same
    /// repository, creating it when none exists. Idempotent.
    pub async fn init(fanout: &Fanout, opts: &RepoOptions) -> Result<InitReport, RepoError> {
        crate::crashsafe::create_private_dir_all(&opts.state_dir)
            .map_err(local(&opts.state_dir))?;
        let mut found: Vec<(String, Option<(Descriptor, bytes::Bytes)>)> = Vec::new();
        for d in fanout.destinations() {
            d.prepare().await?;
            let got = match d.get(DESCRIPTOR_OBJECT).await {
                Ok(b) => Some((Descriptor::decode(&b)?, b)),
                Err(ShipError::NotFound { .. }) => None,
                Err(e) => return Err(e.into()),
            };
            found.push((d.name().to_owned(), got));
        }
        let existing = found
            .iter()
            .find_map(|(n, d)| d.as_ref().map(|d| (n.clone(), d.clone())));
        let configured = recipients_fingerprint(&opts.recipients);
        let key_path = opts.state_dir.join(KEY_FILE_NAME);
        let (descriptor, descriptor_bytes, created) = match existing {
            Some((name, (descriptor, bytes))) => {
                for (other, d) in &found {
                    if let Some((d, _)) = d
                        && d.repository_id != descriptor.repository_id
                    {
                        return Err(RepoError::DescriptorsDiffer {
                            a: name,
                            a_id: descriptor.repository_id,
                            b: other.clone(),
                            b_id: d.repository_id.clone(),
                        });
                    }
                }
                check_recipients(&name, &descriptor, &configured)?;
                (descriptor, bytes, false)
            }
            None => {
                let key = match &opts.key_file {
                    Some(p) => read_key_file(p)?,
                    None => RepositoryKey::generate(),
                };
                crate::crashsafe::write_file(&key_path, key.to_text().as_bytes(), 0o600)
                    .map_err(local(&key_path))?;
                let d = Descriptor::new(&key, &opts.recipients);
                let key_obj = age_encrypt(&opts.recipients, &key.encode_key_object());
                // The key object first: a descriptor never names a missing key.
                fanout
                    .put_if_absent(&key_object_name(&d.key_id), key_obj.into())
                    .await?;
                let bytes = bytes::Bytes::from(d.encode());
                (d, bytes, true)
            }
        };
        let key = load_key(fanout, opts, &descriptor).await?;
        let key_name = key_object_name(&descriptor.key_id);
        let key_obj = fanout.get(&key_name).await?;
        let mut seeded = Vec::new();
        for (d, (name, had)) in fanout.destinations().iter().zip(&found) {
            if had.is_none() {
                d.put_if_absent(&key_name, key_obj.clone()).await?;
                d.put_if_absent(DESCRIPTOR_OBJECT, descriptor_bytes.clone())
                    .await?;
                seeded.push(name.clone());
            }
        }
        if !key_path.exists() {
            crate::crashsafe::write_file(&key_path, key.to_text().as_bytes(), 0o600)
                .map_err(local(&key_path))?;
        }
        Ok(InitReport {
            descriptor,
            created,
            seeded,
            key_path,
        })
    }

    /// Opens the repository: checks the store's descriptor against the
    /// configuration, loads the repository key, and brings the local catalog
    /// A repository handle over an opened catalog, with a writer id of its
    /// own and nothing in flight: the one place the handle is built.
    fn assemble(
        fanout: Fanout,
        key: RepositoryKey,
        opts: RepoOptions,
        descriptor: Descriptor,
        catalog: Catalog,
    ) -> Repository {
        Repository {
            inner: Arc::new(Inner {
                fanout,
                key,
                opts,
                descriptor,
                catalog: Mutex::new(catalog),
                writer_id: hex::encode(rand::random::<[u8; 8]>()),
                commit_lock: tokio::sync::Mutex::new(()),
                inflight: Mutex::new(Default::default()),
                inflight_next: std::sync::atomic::AtomicU64::new(0),
                skipped: Mutex::new(Vec::new()),
                freshness: Mutex::default(),
                batch_stages: Default::default(),
            }),
        }
    }

    /// up to date with the store (rebuilding it when the state is empty).
    pub async fn open(fanout: Fanout, opts: RepoOptions) -> Result<Repository, RepoError> {
        let first = fanout
            .destinations()
            .first()
            .map(|d| d.name().to_owned())
            .unwrap_or_default();
        let bytes = match fanout.get(DESCRIPTOR_OBJECT).await {
            Ok(b) => b,
            Err(ShipError::NotFound { .. }) => {
                return Err(RepoError::NotInitialized { dest: first });
            }
            Err(e) => return Err(e.into()),
        };
        let descriptor = Descriptor::decode(&bytes)?;
        check_recipients(
            &first,
            &descriptor,
            &recipients_fingerprint(&opts.recipients),
        )?;
        crate::crashsafe::create_private_dir_all(&opts.state_dir)
            .map_err(local(&opts.state_dir))?;
        let key = load_key(&fanout, &opts, &descriptor).await?;
        let catalog_path = opts.state_dir.join(CATALOG_FILE_NAME);
        let catalog = Catalog::open(&catalog_path)?;
        let repo = Repository::assemble(fanout, key, opts, descriptor, catalog);
        repo.sync_catalog().await?;
        repo.note_metadata_cids(&bytes).await?;
        Ok(repo)
    }

    /// Records the content ids of the descriptor and the key object in
    /// content-addressed destinations when the catalog lacks them (once per
    /// repository: the next commit carries them). Reads the key object only
    /// then.
    async fn note_metadata_cids(&self, descriptor: &[u8]) -> Result<(), RepoError> {
        let fanout = &self.inner.fanout;
        if !fanout.has_content_ids() {
            return Ok(());
        }
        let key_name = key_object_name(&self.inner.descriptor.key_id);
        for object in [DESCRIPTOR_OBJECT, key_name.as_str()] {
            let missing = {
                let cat = self.catalog();
                let mut missing = false;
                for d in fanout.destinations() {
                    if d.content_id(object, &[]).is_some() && !cat.has_cid(d.name(), object)? {
                        missing = true;
                    }
                }
                missing
            };
            if !missing {
                continue;
            }
            let bytes = if object == DESCRIPTOR_OBJECT {
                bytes::Bytes::copy_from_slice(descriptor)
            } else {
                match fanout.get(object).await {
                    Ok(b) => b,
                    Err(e) => {
                        // Only the id is missing: the next open tries again.
                        tracing::warn!(object, error = %e,
                            "cannot read the key object to record its content id; trying again at the next start");
                        continue;
                    }
                }
            };
            self.catalog()
                .note_cids(object, &fanout.content_ids(object, &bytes))?;
        }
        Ok(())
    }

    /// Checks that one destination holds this repository: its descriptor
    /// exists, has a version this build reads, and was made for the
    /// configured recipients. Reads one small object; writes nothing.
    pub async fn check_destination(
        dest: &dyn crate::ship::Destination,
        opts: &RepoOptions,
    ) -> Result<Descriptor, RepoError> {
        let bytes = match dest.get(DESCRIPTOR_OBJECT).await {
            Ok(b) => b,
            Err(ShipError::NotFound { .. }) => {
                return Err(RepoError::NotInitialized {
                    dest: dest.name().to_owned(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let descriptor = Descriptor::decode(&bytes)?;
        check_recipients(
            dest.name(),
            &descriptor,
            &recipients_fingerprint(&opts.recipients),
        )?;
        Ok(descriptor)
    }

    /// Deletes the local catalog and rebuilds it from the destinations alone.
    pub async fn rebuild_catalog(
        fanout: Fanout,
        opts: RepoOptions,
    ) -> Result<Repository, RepoError> {
        let path = opts.state_dir.join(CATALOG_FILE_NAME);
        for suffix in ["", "-wal", "-shm"] {
            let p = PathBuf::from(format!("{}{suffix}", path.display()));
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(RepoError::Local { path: p, source: e }),
            }
        }
        Self::open(fanout, opts).await
    }

    /// Applies every commit in the store that the local catalog lacks, in
    /// order. Returns how many were applied.
    pub async fn sync_catalog(&self) -> Result<usize, RepoError> {
        // Taken before listing: whatever was committed before this moment
        // is seen by this sync.
        let started = std::time::Instant::now();
        let applied = self.sync_catalog_once().await?;
        let mut f = self
            .inner
            .freshness
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        f.last = Some(f.last.map_or(started, |l| l.max(started)));
        Ok(applied)
    }

    /// Writers of this repository deduplicate against the local catalog
    /// only while it was read from the destinations less than `every` ago;
    /// past that, they store every chunk anew until the next sync.
    /// Garbage collection run elsewhere (another host, another state
    /// directory) marks packs in commits this process only sees by syncing:
    /// with `every` at most half of `gc_grace`, a writer never reuses a
    /// chunk of a pack marked longer ago than `every`, so no pack it
    /// reuses is deleted before its commit shows it needed, provided a
    /// writer commits within `gc_grace / 2` of deciding to reuse a chunk.
    /// [`Repository::keep_catalog_fresh`] keeps it fresh.
    pub fn refresh_catalog_every(&self, every: std::time::Duration) {
        self.inner
            .freshness
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .every = Some(every);
    }

    /// Syncs the catalog every half of [`Self::refresh_catalog_every`]'s
    /// period (every 5 minutes when unset) until `stop` resolves. A failed
    /// sync is logged and tried again; meanwhile writers stop deduplicating
    /// once the catalog is older than the period.
    pub async fn keep_catalog_fresh(&self, stop: impl std::future::Future<Output = ()>) {
        let every = self
            .inner
            .freshness
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .every
            .unwrap_or(std::time::Duration::from_secs(600));
        tokio::pin!(stop);
        loop {
            if let Err(e) = self.sync_catalog().await {
                tracing::warn!(error = %e, "cannot re-read the catalog from the destinations; writers store chunks anew until it succeeds");
            }
            tokio::select! {
                () = tokio::time::sleep(every / 2) => {}
                () = &mut stop => return,
            }
        }
    }

    async fn sync_catalog_once(&self) -> Result<usize, RepoError> {
        let listed = self.inner.fanout.list("catalog/").await?;
        let applied = self.catalog().applied_commits()?;
        let mut todo: Vec<(u64, String, String)> = listed
            .into_iter()
            .filter(|m| !applied.contains(&m.key))
            .filter_map(|m| {
                let parsed = manifest::parse_commit_object_name(&m.key);
                if parsed.is_none() {
                    tracing::warn!(
                        object = m.key,
                        "ignoring an object under catalog/ that is not a commit"
                    );
                }
                parsed.map(|(seq, w)| (seq, w, m.key))
            })
            .collect();
        todo.sort();
        for (_, _, object) in &todo {
            let bytes = self.inner.fanout.get(object).await?;
            let commit = Commit::decode(&self.inner.key, object, &bytes)?;
            self.catalog().apply(object, &commit)?;
        }
        Ok(todo.len())
    }

    /// The local catalog (held briefly: it is shared with writers).
    pub fn catalog(&self) -> MutexGuard<'_, Catalog> {
        self.inner.catalog.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the oldest writer of this process that holds uncommitted work
    /// began it; `None` when none does. Garbage collection keeps every pack
    /// marked after that time: such a writer may have decided to reuse a
    /// chunk of it before the mark, and its commit is not visible yet.
    pub fn oldest_inflight(&self) -> Option<jiff::Timestamp> {
        self.inner
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .min()
            .copied()
    }

    pub(crate) fn register_inflight(&self, at: jiff::Timestamp) -> InflightGuard {
        let id = self
            .inner
            .inflight_next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, at);
        InflightGuard {
            inner: self.inner.clone(),
            id,
        }
    }

    /// The store's descriptor.
    pub fn descriptor(&self) -> &Descriptor {
        &self.inner.descriptor
    }

    /// The repository key.
    pub fn key(&self) -> &RepositoryKey {
        &self.inner.key
    }

    /// Every copy a read of this repository skipped (missing, unreadable
    /// or failing verification) and where the read was served instead, one
    /// entry per destination and object, for a restore's summary. Bounded:
    /// past the first thousand, skips are only logged.
    pub fn skipped_reads(&self) -> Vec<SkippedRead> {
        self.inner
            .skipped
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// The destinations.
    pub fn fanout(&self) -> &Fanout {
        &self.inner.fanout
    }

    /// A writer; several may run at once (each makes its own commits).
    pub fn writer(&self) -> Writer {
        Writer::new(self.clone())
    }

    /// A [`ChunkPreparer`] for [`Writer::put_prepared`]; it blocks, so use
    /// it off the async runtime.
    pub fn chunk_preparer(&self) -> Result<ChunkPreparer, RepoError> {
        ChunkPreparer::new(self)
    }

    /// A reader; fails without an identity.
    pub fn reader(&self) -> Result<Reader, RepoError> {
        if self.inner.opts.identities.is_empty() {
            return Err(RepoError::NoIdentity);
        }
        Ok(Reader::new(self.clone()))
    }
}

fn check_recipients(dest: &str, d: &Descriptor, configured: &str) -> Result<(), RepoError> {
    if d.recipients_fingerprint != configured {
        return Err(RepoError::RecipientsMismatch {
            dest: dest.to_owned(),
            found: d.recipients_fingerprint.clone(),
            configured: configured.to_owned(),
        });
    }
    Ok(())
}

impl RepoOptions {
    /// Reads `key_file` when it is set and checks it holds a key, without
    /// opening any store (`pitr check --offline`).
    pub fn check_key_file(&self) -> Result<(), RepoError> {
        match &self.key_file {
            Some(p) => read_key_file(p).map(drop),
            None => Ok(()),
        }
    }
}

fn read_key_file(path: &Path) -> Result<RepositoryKey, RepoError> {
    let text = std::fs::read_to_string(path).map_err(local(path))?;
    RepositoryKey::from_text(&text, path)
}

/// Finds the repository key: `key_file`, then `state_dir`, then the store
/// with the identity (saving it to `state_dir`); checks it is this store's.
async fn load_key(
    fanout: &Fanout,
    opts: &RepoOptions,
    d: &Descriptor,
) -> Result<RepositoryKey, RepoError> {
    let state_key = opts.state_dir.join(KEY_FILE_NAME);
    let check = |key: RepositoryKey, origin: String| {
        if key.key_id() == d.key_id {
            Ok(key)
        } else {
            Err(RepoError::KeyMismatch {
                origin,
                found: key.key_id(),
                expected: d.key_id.clone(),
            })
        }
    };
    if let Some(p) = &opts.key_file {
        return check(read_key_file(p)?, p.display().to_string());
    }
    if state_key.exists() {
        return check(read_key_file(&state_key)?, state_key.display().to_string());
    }
    if opts.identities.is_empty() {
        return Err(RepoError::NoRepositoryKey {
            state_dir: opts.state_dir.clone(),
        });
    }
    let name = key_object_name(&d.key_id);
    let obj = fanout.get(&name).await?;
    let plain = age_decrypt(&opts.identities, &name, &obj)?;
    let key = check(RepositoryKey::decode_key_object(&name, &plain)?, name)?;
    crate::crashsafe::write_file(&state_key, key.to_text().as_bytes(), 0o600)
        .map_err(local(&state_key))?;
    Ok(key)
}

/// A fresh repository on one local directory store beneath `dir` (store
/// `dir/store`, state `dir/state`), with a new identity: the fixture of
/// unit tests that need a real repository.
#[cfg(test)]
pub(crate) async fn test_repository(dir: &std::path::Path) -> Repository {
    let identity = age::x25519::Identity::generate();
    let opts = RepoOptions {
        recipients: vec![identity.to_public()],
        identities: vec![identity],
        key_file: None,
        state_dir: dir.join("state"),
        zstd_level: 1,
        pack_size: 1 << 20,
    };
    let fanout = || {
        Fanout::new(vec![
            Arc::new(crate::ship::FsDestination::new("local", dir.join("store")))
                as Arc<dyn crate::ship::Destination>,
        ])
    };
    Repository::init(&fanout(), &opts).await.expect("init");
    Repository::open(fanout(), opts).await.expect("open")
}
