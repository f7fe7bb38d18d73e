//! `pitr verify`: read every pack back from every destination and check it.
//!
//! Without an identity the check is structural (content hash against the
//! name, sealed index, catalog agreement); with one, every chunk is also
//! decrypted and its id recomputed.

use super::pack::{PackId, read_index};
use super::reader::open_blob;
use super::{RepoError, Repository};

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
                let result = tokio::task::spawn_blocking(move || -> Result<usize, RepoError> {
                    if (bytes.len() as u64) < size {
                        return Err(RepoError::Truncated {
                            object: object2,
                            what: format!("{} bytes, the catalog says {size}", bytes.len()),
                        });
                    }
                    if PackId::of(&bytes) != id {
                        return Err(RepoError::Swapped {
                            object: object2,
                            what: "its content hash does not match its name".into(),
                        });
                    }
                    let entries = read_index(&inner.key, &object2, &bytes)?;
                    let mut listed = entries.clone();
                    listed.sort_by_key(|e| e.offset);
                    if listed != expected {
                        return Err(RepoError::Malformed {
                            object: object2,
                            what: "its index differs from the catalog's record of it".into(),
                        });
                    }
                    if inner.opts.identities.is_empty() {
                        return Ok(0);
                    }
                    for e in &entries {
                        let start = e.offset as usize;
                        let blob = &bytes[start..start + e.length as usize];
                        open_blob(&inner, &object2, e, blob)?;
                    }
                    Ok(entries.len())
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
        for item in self.catalog().items("")? {
            for (chunk, _) in &item.manifest.chunks {
                if !self.catalog().has_chunk(chunk)? {
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
        Ok(report)
    }
}
