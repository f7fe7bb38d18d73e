//! Copying a self-contained subset of the repository into another
//! destination (`pitr export`): the packs that hold the chunks of a set of
//! items, the key objects, one catalog commit that records exactly those
//! items and packs, and the descriptor. The copy is a repository of its own
//! that `pitr list`, `pitr verify` and `pitr restore` open like any other;
//! it stays encrypted and is made without the identity.
//!
//! Why a fresh commit rather than the source's commits: commits record
//! whatever became durable together, so copying them would also record
//! older items whose packs are not in the copy; `pitr list` would then offer
//! restores the copy cannot serve and `pitr verify` would report missing
//! packs. The fresh commit is sealed with the repository key, which the
//! sidecar holds (invariant 5 is unchanged: the copy's data opens only with
//! the identity).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use jiff::Timestamp;

use super::manifest::{
    Commit, DESCRIPTOR_OBJECT, Descriptor, FORMAT_VERSION, ItemRecord, PackRecord,
};
use super::pack::PackId;
use super::verify::check_pack;
use super::{RepoError, Repository};
use crate::ship::Destination;

/// What [`Repository::export_items`] copied.
#[derive(Debug, Clone, Default)]
pub struct ExportReport {
    /// Item versions recorded in the copy's commit.
    pub items: usize,
    /// Packs copied.
    pub packs: usize,
    /// Bytes of packs copied.
    pub pack_bytes: u64,
    /// Key objects copied.
    pub keys: usize,
    /// The copy's catalog commit.
    pub commit: String,
}

impl Repository {
    /// Copies every version of the items named in `names` (with the packs
    /// holding their chunks, the key objects and the descriptor) from
    /// `from` into `to`, which should be empty. Every pack is checked
    /// against the catalog before it is copied (and decrypted when the
    /// repository was opened with an identity): a damaged object is an
    /// error naming it, never copied. The descriptor goes last, so an
    /// interrupted copy is no repository rather than an incomplete one.
    pub async fn export_items(
        &self,
        from: &dyn Destination,
        to: &dyn Destination,
        names: &BTreeSet<String>,
    ) -> Result<ExportReport, RepoError> {
        // The source must hold this repository: checked before anything
        // is written.
        let descriptor = from.get(DESCRIPTOR_OBJECT).await?;
        if Descriptor::decode(&descriptor)? != *self.descriptor() {
            return Err(RepoError::DescriptorsDiffer {
                a: from.name().to_owned(),
                a_id: Descriptor::decode(&descriptor)?.repository_id,
                b: "(the opened repository)".into(),
                b_id: self.descriptor().repository_id.clone(),
            });
        }
        // In catalog order, so that "the newest version of a name" stays
        // the newest in the copy.
        let rows: Vec<_> = self
            .catalog()
            .items("")?
            .into_iter()
            .filter(|r| names.contains(&r.name))
            .collect();
        let found: BTreeSet<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        if let Some(missing) = names.iter().find(|n| !found.contains(n.as_str())) {
            return Err(RepoError::Malformed {
                object: "(catalog)".into(),
                what: format!("item {missing} was to be exported but the catalog does not hold it"),
            });
        }
        let sizes: BTreeMap<String, u64> = self
            .catalog()
            .packs()?
            .into_iter()
            .map(|(id, size)| (id.to_string(), size))
            .collect();
        // By id text: a stable order, and PackId has none.
        let mut packs: BTreeMap<String, PackId> = BTreeMap::new();
        for row in &rows {
            for (chunk, _) in &row.manifest.chunks {
                let location = self.catalog().chunk_location(chunk)?;
                let Some(location) = location else {
                    return Err(RepoError::MissingChunk {
                        item: row.name.clone(),
                        chunk: *chunk,
                    });
                };
                packs.insert(location.pack.to_string(), location.pack);
            }
        }

        let mut report = ExportReport::default();
        let mut records = Vec::with_capacity(packs.len());
        for (hex, id) in packs {
            let object = id.object_name();
            let size = sizes
                .get(&hex)
                .copied()
                .ok_or_else(|| RepoError::Malformed {
                    object: object.clone(),
                    what: "a chunk location names this pack but the catalog lists no such pack"
                        .into(),
                })?;
            let entries = self.catalog().pack_entries(&id)?;
            let bytes = from.get(&object).await?;
            let inner = self.inner.clone();
            let (checked, expected) = (object.clone(), entries.clone());
            let bytes = tokio::task::spawn_blocking(move || {
                let decrypt = !inner.opts.identities.is_empty();
                check_pack(&inner, &checked, id, size, &expected, &bytes, decrypt).map(|_| bytes)
            })
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
            report.pack_bytes += bytes.len() as u64;
            to.put_if_absent(&object, bytes).await?;
            report.packs += 1;
            records.push(PackRecord {
                id: hex,
                size,
                chunks: entries,
            });
        }

        // The key objects: a restore from the copy recovers the repository
        // key from them with the identity.
        for meta in from.list("keys/").await? {
            let bytes = from.get(&meta.key).await?;
            if bytes.is_empty() {
                return Err(RepoError::Truncated {
                    object: meta.key,
                    what: "an empty key object".into(),
                });
            }
            to.put_if_absent(&meta.key, bytes).await?;
            report.keys += 1;
        }

        let commit = Commit {
            version: FORMAT_VERSION,
            seq: 1,
            writer: hex::encode(rand::random::<[u8; 8]>()),
            time: Timestamp::now(),
            packs: records,
            items: rows
                .into_iter()
                .map(|r| ItemRecord {
                    kind: r.kind,
                    time: r.time,
                    attrs: r.attrs,
                    manifest: r.manifest,
                })
                .collect(),
            // A fresh store: nothing to forget, no garbage to track.
            forget: Vec::new(),
            gc: super::manifest::GcRecord::default(),
            // Storacha CIDs are not carried over: the copy is an fs store.
            cids: Default::default(),
        };
        report.items = commit.items.len();
        report.commit = commit.object_name();
        to.put_if_absent(&report.commit, Bytes::from(commit.encode(self.key())))
            .await?;

        to.put_if_absent(DESCRIPTOR_OBJECT, descriptor).await?;
        Ok(report)
    }
}
