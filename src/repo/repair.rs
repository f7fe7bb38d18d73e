//! `pitr repair`: every object the repository needs — packs, commit
//! objects, key objects and the descriptor — is read from every destination
//! and checked; a destination where one is missing or damaged gets a copy
//! from a destination where it checks out. Nothing is copied unchecked: a
//! damaged copy is never spread.

use bytes::Bytes;

use super::manifest::{Commit, DESCRIPTOR_OBJECT, Descriptor};
use super::pack::PackId;
use super::verify::check_pack;
use super::{RepoError, Repository};
use crate::ship::{Destination, ShipError};

/// One object fixed in one destination.
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone)]
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
}

/// What an object is, for checking a copy of it.
enum Kind {
    Pack { id: PackId, size: u64 },
    Commit,
    Key,
    Descriptor,
}

impl Repository {
    /// Checks every object in every destination and copies good versions
    /// over missing or damaged ones (see the module docs).
    pub async fn repair(&self) -> Result<RepairReport, RepoError> {
        let mut objects: Vec<(String, Kind)> =
            vec![(DESCRIPTOR_OBJECT.to_owned(), Kind::Descriptor)];
        let mut keys = std::collections::BTreeSet::new();
        for d in self.fanout().destinations() {
            // A destination that cannot list is reported per object below.
            if let Ok(listed) = d.list("keys/").await {
                keys.extend(listed.into_iter().map(|m| m.key));
            }
        }
        objects.extend(keys.into_iter().map(|k| (k, Kind::Key)));
        let mut commits: Vec<String> = self.catalog().applied_commits()?.into_iter().collect();
        commits.sort();
        objects.extend(commits.into_iter().map(|c| (c, Kind::Commit)));
        for (id, size) in self.catalog().packs()? {
            objects.push((id.object_name(), Kind::Pack { id, size }));
        }
        let mut report = RepairReport::default();
        for (object, kind) in &objects {
            report.objects += 1;
            self.repair_one(object, kind, &mut report).await?;
        }
        Ok(report)
    }

    /// Whether `bytes` is a good copy of `object`; `Err` says what is wrong.
    fn check_copy(&self, object: &str, kind: &Kind, bytes: &[u8]) -> Result<(), String> {
        match kind {
            Kind::Pack { id, size } => {
                let expected = self.catalog().pack_entries(id).map_err(|e| e.to_string())?;
                let decrypt = !self.inner.opts.identities.is_empty();
                check_pack(&self.inner, object, *id, *size, &expected, bytes, decrypt)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Kind::Commit => Commit::decode(&self.inner.key, object, bytes)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Kind::Descriptor => {
                let d = Descriptor::decode(bytes).map_err(|e| e.to_string())?;
                if d == self.inner.descriptor {
                    Ok(())
                } else {
                    Err("a descriptor of another repository".into())
                }
            }
            Kind::Key => {
                if bytes.is_empty() {
                    Err("empty".into())
                } else {
                    Ok(())
                }
            }
        }
    }

    async fn repair_one(
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
                Ok(bytes) => match self.check_copy(object, kind, &bytes) {
                    Ok(()) => {
                        if good.is_none() {
                            good = Some((bytes, d.name().to_owned()));
                        }
                    }
                    Err(why) => bad.push((i, format!("damaged: {why}"), true)),
                },
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
