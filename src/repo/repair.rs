//! `pitr repair`: every object the repository needs — packs, commit
//! objects, key objects and the descriptor — is read from every destination
//! and checked; a destination where one is missing or damaged gets a copy
//! from a destination where it checks out. Nothing is copied unchecked: a
//! damaged copy is never spread.
//!
//! The per-object check and copy ([`Repository::repair_object`]) is shared
//! with the background scrub (`super::scrub`), which calls it only for the
//! objects its listing finds wrong and for its rotating content window.

use bytes::Bytes;

use super::catalog::CatalogError;
use super::manifest::{Commit, DESCRIPTOR_OBJECT, Descriptor};
use super::pack::PackId;
use super::verify::check_pack;
use super::{RepoError, Repository};
use crate::ship::{Destination, ShipError};

/// What is wrong with one destination's copy of an object (shown as-is in
/// the report's `was`).
#[derive(Debug, thiserror::Error)]
enum BadCopy {
    /// The catalog cannot say what the pack must hold.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The copy does not decode or authenticate.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// A well-formed descriptor, of another repository.
    #[error("a descriptor of another repository")]
    OtherRepository,
    /// A key object with no bytes.
    #[error("empty")]
    Empty,
}

/// One object fixed in one destination.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Repaired {
    /// The destination that received a good copy.
    pub destination: String,
    /// The object.
    pub object: String,
    /// What was wrong with it there.
    pub was: String,
    /// Where the good copy came from.
    pub from: String,
}

/// An object that could not be fixed in a destination.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Unrepaired {
    /// The destination.
    pub destination: String,
    /// The object.
    pub object: String,
    /// Why it is still wrong.
    pub why: String,
}

/// What `repair` checked and did.
#[derive(Debug, Default)]
pub struct RepairReport {
    /// Objects checked (each in every destination).
    pub objects: usize,
    /// Copies made.
    pub repaired: Vec<Repaired>,
    /// What is still wrong.
    pub unrepaired: Vec<Unrepaired>,
    /// Bytes read from destinations.
    pub bytes_read: u64,
}

/// One object the repository needs, as the catalog (and the key listing)
/// knows it.
#[derive(Debug, Clone)]
pub(super) struct Expected {
    /// The object's name.
    pub object: String,
    /// What it is, for checking a copy.
    pub kind: Kind,
    /// Its exact size, when the catalog records one (packs).
    pub size: Option<u64>,
}

/// What an object is, for checking a copy of it.
#[derive(Debug, Clone)]
pub(super) enum Kind {
    Pack { id: PackId, size: u64 },
    Commit,
    Key,
    Descriptor,
}

impl Repository {
    /// Checks every object in every destination and copies good versions
    /// over missing or damaged ones (see the module docs).
    pub async fn repair(&self) -> Result<RepairReport, RepoError> {
        let mut report = RepairReport::default();
        for e in self.expected_objects().await? {
            report.objects += 1;
            self.repair_object(&e.object, &e.kind, &mut report).await?;
        }
        Ok(report)
    }

    /// Every object the repository needs: the descriptor, the key objects
    /// any destination lists, every applied commit and every pack, in that
    /// order.
    pub(super) async fn expected_objects(&self) -> Result<Vec<Expected>, RepoError> {
        let mut objects = vec![Expected {
            object: DESCRIPTOR_OBJECT.to_owned(),
            kind: Kind::Descriptor,
            size: None,
        }];
        let mut keys = std::collections::BTreeSet::new();
        for d in self.fanout().destinations() {
            // A destination that cannot list is reported per object later.
            if let Ok(listed) = d.list("keys/").await {
                keys.extend(listed.into_iter().map(|m| m.key));
            }
        }
        objects.extend(keys.into_iter().map(|object| Expected {
            object,
            kind: Kind::Key,
            size: None,
        }));
        let mut commits: Vec<String> = self.catalog().applied_commits()?.into_iter().collect();
        commits.sort();
        objects.extend(commits.into_iter().map(|object| Expected {
            object,
            kind: Kind::Commit,
            size: None,
        }));
        for (id, size) in self.catalog().packs()? {
            objects.push(Expected {
                object: id.object_name(),
                kind: Kind::Pack { id, size },
                size: Some(size),
            });
        }
        Ok(objects)
    }

    /// Whether `bytes` is a good copy of `object`; `Err` says what is wrong.
    fn check_copy(&self, object: &str, kind: &Kind, bytes: &[u8]) -> Result<(), BadCopy> {
        match kind {
            Kind::Pack { id, size } => {
                let expected = self.catalog().pack_entries(id)?;
                let decrypt = !self.inner.opts.identities.is_empty();
                check_pack(&self.inner, object, *id, *size, &expected, bytes, decrypt)?;
                Ok(())
            }
            Kind::Commit => {
                Commit::decode(&self.inner.key, object, bytes)?;
                Ok(())
            }
            Kind::Descriptor => {
                if Descriptor::decode(bytes)? == self.inner.descriptor {
                    Ok(())
                } else {
                    Err(BadCopy::OtherRepository)
                }
            }
            Kind::Key => {
                if bytes.is_empty() {
                    Err(BadCopy::Empty)
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Reads `object` from every destination, checks each copy, and copies
    /// a good one over every missing or damaged copy (read back after
    /// writing). What it did goes to `report`.
    pub(super) async fn repair_object(
        &self,
        object: &str,
        kind: &Kind,
        report: &mut RepairReport,
    ) -> Result<(), RepoError> {
        let dests = self.fanout().destinations().to_vec();
        let mut good: Option<(Bytes, String)> = None;
        let mut bad: Vec<(usize, String, bool)> = Vec::new();
        for (i, d) in dests.iter().enumerate() {
            match d.get(object).await {
                Ok(bytes) => {
                    report.bytes_read += bytes.len() as u64;
                    match self.check_copy(object, kind, &bytes) {
                        Ok(()) => {
                            if good.is_none() {
                                good = Some((bytes, d.name().to_owned()));
                            }
                        }
                        Err(why) => bad.push((i, format!("damaged: {why}"), true)),
                    }
                }
                Err(ShipError::NotFound { .. }) => bad.push((i, "missing".into(), false)),
                Err(e) => report.unrepaired.push(Unrepaired {
                    destination: d.name().to_owned(),
                    object: object.to_owned(),
                    why: format!("cannot be read: {e}"),
                }),
            }
        }
        for (i, was, present) in bad {
            let d: &dyn Destination = dests[i].as_ref();
            let Some((bytes, from)) = &good else {
                report.unrepaired.push(Unrepaired {
                    destination: d.name().to_owned(),
                    object: object.to_owned(),
                    why: format!("{was}, and no destination holds a good copy"),
                });
                continue;
            };
            let fixed = async {
                if present {
                    d.delete(object).await?;
                }
                d.put_if_absent(object, bytes.clone()).await?;
                // Read back: a destination that accepts and loses writes is
                // not repaired.
                let back = d.get(object).await?;
                Ok::<bool, ShipError>(back == *bytes)
            }
            .await;
            match fixed {
                Ok(true) => {
                    tracing::info!(destination = d.name(), object, from, "repaired");
                    report.repaired.push(Repaired {
                        destination: d.name().to_owned(),
                        object: object.to_owned(),
                        was,
                        from: from.clone(),
                    });
                }
                Ok(false) => report.unrepaired.push(Unrepaired {
                    destination: d.name().to_owned(),
                    object: object.to_owned(),
                    why: format!("{was}; the copy written reads back different"),
                }),
                Err(e) => report.unrepaired.push(Unrepaired {
                    destination: d.name().to_owned(),
                    object: object.to_owned(),
                    why: format!("{was}; writing a good copy failed: {e}"),
                }),
            }
        }
        Ok(())
    }
}
