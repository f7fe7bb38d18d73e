//! `pitr verify`: read every pack back from every destination and check it.
//!
//! Without an identity the check is structural (content hash against the
//! name, sealed index, catalog agreement); with one, every chunk is also
//! decrypted and its id recomputed.

use super::datakey::DataKey;
use super::pack::{PackEntry, PackId, read_index, wrapped_key};
use super::reader::open_blob;
use super::{Inner, RepoError, Repository};

/// One damaged or missing object.
#[derive(Debug)]
pub struct VerifyProblem {
    /// The destination it was read from.
    pub destination: String,
    /// The object.
    pub object: String,
    /// What is wrong.
    pub error: RepoError,
}

/// What `verify` checked and found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Pack objects read (per destination).
    pub packs_checked: usize,
    /// Chunks decrypted and re-hashed.
    pub chunks_checked: usize,
    /// Bytes read.
    pub bytes_read: u64,
    /// Everything found wrong.
    pub problems: Vec<VerifyProblem>,
}

impl Repository {
    /// Checks every pack in every destination (see the module docs).
    pub async fn verify(&self) -> Result<VerifyReport, RepoError> {
        let mut report = VerifyReport::default();
        let packs = self.catalog().packs()?;
        let inner = self.inner.clone();
        for dest in self.fanout().destinations() {
            for (id, size) in &packs {
                let object = id.object_name();
                let problem = |error| VerifyProblem {
                    destination: dest.name().to_owned(),
                    object: object.clone(),
                    error,
                };
                let bytes = match dest.get(&object).await {
                    Ok(b) => b,
                    Err(e) => {
                        report.problems.push(problem(e.into()));
                        continue;
                    }
                };
                report.packs_checked += 1;
                report.bytes_read += bytes.len() as u64;
                let expected = self.catalog().pack_entries(id)?;
                let inner = inner.clone();
                let (object2, size) = (object.clone(), *size);
                let id = *id;
                let result = tokio::task::spawn_blocking(move || {
                    let decrypt = !inner.opts.identities.is_empty();
                    check_pack(&inner, &object2, id, size, &expected, &bytes, decrypt)
                })
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
                match result {
                    Ok(n) => report.chunks_checked += n,
                    Err(e) => report.problems.push(problem(e)),
                }
            }
        }
        // Every item's chunks must be in some pack the catalog knows.
        // Bound first: a guard held across the loop would deadlock on the
        // `has_chunk` lookups below (std mutexes are not reentrant).
        let items = self.catalog().items("")?;
        for item in items {
            for (chunk, _) in &item.manifest.chunks {
                if !self.catalog().holds_chunk(chunk)? {
                    report.problems.push(VerifyProblem {
                        destination: "(catalog)".into(),
                        object: item.commit.clone(),
                        error: RepoError::MissingChunk {
                            item: item.name.clone(),
                            chunk: *chunk,
                        },
                    });
                }
            }
        }
        report.problems.extend(self.check_content_ids().await?);
        Ok(report)
    }

    /// Compares every content id the catalog holds with the one its
    /// destination reports for the object (Storacha: the root its upload
    /// listing resolves to the key). A difference is a problem naming the
    /// object and both ids; an object the destination does not report is
    /// left to the other checks (packs are read above; a commit may have
    /// been deleted as empty).
    pub async fn check_content_ids(&self) -> Result<Vec<VerifyProblem>, RepoError> {
        let rows = self.catalog().content_ids()?;
        let mut problems = Vec::new();
        for dest in self.fanout().destinations() {
            for row in rows.iter().filter(|r| r.destination == dest.name()) {
                let problem = |error| VerifyProblem {
                    destination: dest.name().to_owned(),
                    object: row.object.clone(),
                    error,
                };
                match dest.stored_content_id(&row.object).await {
                    Ok(Some(stored)) if stored != row.cid => {
                        problems.push(problem(RepoError::ContentIdMismatch {
                            dest: dest.name().to_owned(),
                            object: row.object.clone(),
                            catalog: row.cid.clone(),
                            stored,
                        }))
                    }
                    Ok(_) => {}
                    Err(e) => problems.push(problem(e.into())),
                }
            }
        }
        Ok(problems)
    }
}

/// Checks one whole pack against what the catalog recorded for it and
/// returns how many chunks were decrypted. The order of the checks is what
/// makes the error precise: a short object is `Truncated`; an object whose
/// sealed index opens under our key but lists other chunks is another of our
/// packs put in its place (`Swapped`); a blob that does not decrypt, or bytes
/// that differ from the name's hash while everything else checks out, are
/// `Tampered`.
pub(super) fn check_pack(
    inner: &Inner,
    object: &str,
    id: PackId,
    size: u64,
    expected: &[PackEntry],
    bytes: &[u8],
    decrypt: bool,
) -> Result<usize, RepoError> {
    let truncated = || RepoError::Truncated {
        object: object.to_owned(),
        what: format!("{} bytes, the catalog says {size}", bytes.len()),
    };
    // The index first: an index that opens under our key but lists other
    // chunks identifies a swap even when the sizes differ too.
    let mut entries = match read_index(&inner.key, object, bytes) {
        Ok(entries) => entries,
        Err(_) if (bytes.len() as u64) < size => return Err(truncated()),
        Err(e) => return Err(e),
    };
    entries.sort_by_key(|e| e.offset);
    if entries != expected {
        return Err(RepoError::Swapped {
            object: object.to_owned(),
            what: "it is a valid pack of this repository, but its index lists other \
                   chunks than the catalog records for this name"
                .into(),
        });
    }
    if (bytes.len() as u64) < size {
        return Err(truncated());
    }
    // The name is the pack's hash: checked before anything is decrypted or
    // decompressed, so bytes that are not the pack written are never
    // decompressed (a replaced pack may hold a decompression bomb).
    let intact = PackId::of(bytes) == id;
    let mut opened = 0;
    if decrypt {
        let key = DataKey::unwrap(&inner.opts.identities, object, wrapped_key(object, bytes)?)?;
        for e in &entries {
            let start = e.offset as usize;
            let blob = &bytes[start..start + e.length as usize];
            if intact {
                open_blob(inner, object, &key, e, blob)?;
            } else {
                // Authenticated only, to name the damaged chunk.
                key.open_chunk(object, e.offset, &e.chunk, blob)?;
            }
            opened += 1;
        }
    }
    if !intact {
        return Err(RepoError::Tampered {
            object: object.to_owned(),
            what: if decrypt {
                "its bytes differ from its name's hash outside every chunk blob".into()
            } else {
                "its bytes differ from its name's hash (verify with identity_file \
                 set to find the damaged chunk)"
                    .into()
            },
        });
    }
    Ok(opened)
}
