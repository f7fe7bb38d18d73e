//! The background scrub: what `pitr repair` does, in two bounded passes
//! cheap enough to run every night (the shape of restic's
//! `check --read-data-subset` and pgBackRest's `verify`).
//!
//! 1. **Listing.** Every destination is listed and each object the
//!    repository needs is looked for by name, and for packs by the exact
//!    size the catalog records. Only the objects found missing or of the
//!    wrong size somewhere are read, and repaired from a copy that checks
//!    out ([`Repository::repair_object`]: nothing is copied unchecked).
//! 2. **Content.** Objects are read in full and checked from every
//!    destination in name order, starting after the last object the
//!    previous run checked (a cursor in `state_dir`), until `read_budget`
//!    bytes of objects are taken; at the end of the list the window wraps
//!    to the start. Over successive runs every object is read, without
//!    downloading the whole repository each time.
//!
//! An object still in the spool (written to a quorum, on its way to the
//! rest) is not counted missing: the fan-out's queue delivers it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde::Serialize;

use super::manifest::DESCRIPTOR_OBJECT;
use super::repair::{Expected, RepairReport};
use super::{Repaired, Unrepaired};
use super::{RepoError, Repository};

/// The file in `state_dir` where the content pass remembers where it
/// stopped.
const CURSOR_FILE: &str = "scrub-cursor";
/// The prefixes under which the repository's objects live (besides the
/// descriptor, which is looked up by name).
const PREFIXES: &[&str] = &["keys/", "catalog/", "packs/"];

/// How a scrub run is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrubOptions {
    /// Bytes of objects read in full and checked (from every destination)
    /// in the content pass; 0 skips it.
    pub read_budget: u64,
}

/// What one scrub run checked and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScrubReport {
    /// Objects the repository needs.
    pub objects: usize,
    /// Destinations that could be listed.
    pub destinations_listed: Vec<String>,
    /// (destination, object, what the listing showed) for every object the
    /// listing found missing or of the wrong size.
    pub listing_problems: Vec<(String, String, String)>,
    /// Objects read in full and checked in the content pass.
    pub content_checked: usize,
    /// Whether the content window reached the end of the object list and
    /// started over (every object has been read since the cursor began).
    pub wrapped: bool,
    /// Bytes read from destinations.
    pub bytes_read: u64,
    /// Copies made.
    pub repaired: Vec<Repaired>,
    /// What is still wrong, per destination and object.
    pub unrepaired: Vec<Unrepaired>,
}

impl Repository {
    /// One scrub run (see the module docs). Fails only when the catalog
    /// cannot be read; a destination that cannot be listed or read shows in
    /// `unrepaired`, naming it.
    pub async fn scrub(&self, opts: ScrubOptions) -> Result<ScrubReport, RepoError> {
        let expected = self.expected_objects().await?;
        let mut report = ScrubReport {
            objects: expected.len(),
            ..Default::default()
        };
        let mut fix = RepairReport::default();

        // Pass 1: names and sizes.
        let mut flagged: BTreeMap<String, &Expected> = BTreeMap::new();
        let mut listed_sizes: HashMap<String, u64> = HashMap::new();
        for d in self.fanout().destinations() {
            let mut present: HashMap<String, u64> = HashMap::new();
            let mut failed = None;
            for prefix in PREFIXES {
                match d.list(prefix).await {
                    Ok(list) => present.extend(list.into_iter().map(|m| (m.key, m.size))),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if failed.is_none() {
                match d.head(DESCRIPTOR_OBJECT).await {
                    Ok(Some(m)) => {
                        present.insert(m.key, m.size);
                    }
                    Ok(None) => {}
                    Err(e) => failed = Some(e),
                }
            }
            if let Some(e) = failed {
                tracing::warn!(destination = d.name(), error = %e, "scrub: cannot list the destination");
                fix.unrepaired.push(Unrepaired {
                    destination: d.name().to_owned(),
                    object: "(listing)".to_owned(),
                    why: format!("cannot be listed, so it was not scrubbed: {e}"),
                });
                continue;
            }
            report.destinations_listed.push(d.name().to_owned());
            for e in &expected {
                let problem = match (present.get(&e.object), e.size) {
                    (None, _) => "missing".to_owned(),
                    (Some(&got), Some(want)) if got != want => {
                        format!("{got} bytes, the catalog says {want}")
                    }
                    (Some(&got), _) => {
                        listed_sizes.entry(e.object.clone()).or_insert(got);
                        continue;
                    }
                };
                if self.fanout().is_spooled(&e.object) {
                    continue;
                }
                report
                    .listing_problems
                    .push((d.name().to_owned(), e.object.clone(), problem));
                flagged.insert(e.object.clone(), e);
            }
        }
        for e in flagged.values() {
            self.repair_object(&e.object, &e.kind, &mut fix).await?;
        }

        // Pass 2: a window of whole objects, after the cursor.
        if opts.read_budget > 0 && !expected.is_empty() {
            let mut order: Vec<&Expected> = expected.iter().collect();
            order.sort_by(|a, b| a.object.cmp(&b.object));
            let cursor = self.read_cursor();
            let mut start = cursor
                .as_deref()
                .map_or(0, |c| order.partition_point(|e| e.object.as_str() <= c));
            if start == order.len() {
                start = 0;
                report.wrapped = true;
            }
            let mut taken = 0u64;
            let mut last = None;
            for step in 0..order.len() {
                let i = (start + step) % order.len();
                if step > 0 && i == 0 {
                    report.wrapped = true;
                }
                let e = order[i];
                let size = e
                    .size
                    .or_else(|| listed_sizes.get(&e.object).copied())
                    .unwrap_or(0);
                // At least one object per run, however large.
                if step > 0 && taken + size > opts.read_budget {
                    break;
                }
                taken += size;
                last = Some(e.object.clone());
                if !flagged.contains_key(&e.object) && !self.fanout().is_spooled(&e.object) {
                    self.repair_object(&e.object, &e.kind, &mut fix).await?;
                    report.content_checked += 1;
                }
            }
            if let Some(last) = last {
                self.write_cursor(&last);
            }
        }
        report.bytes_read = fix.bytes_read;
        report.repaired = fix.repaired;
        report.unrepaired = fix.unrepaired;
        Ok(report)
    }

    fn cursor_path(&self) -> PathBuf {
        self.inner.opts.state_dir.join(CURSOR_FILE)
    }

    /// The last object the previous content pass checked; none when there
    /// was none or the file cannot be read (the window then starts at the
    /// beginning, which only repeats work).
    fn read_cursor(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.cursor_path()).ok()?;
        let c = text.trim();
        (!c.is_empty()).then(|| c.to_owned())
    }

    fn write_cursor(&self, object: &str) {
        let path = self.cursor_path();
        if let Err(e) = crate::crashsafe::write_file(&path, object.as_bytes(), 0o600) {
            tracing::warn!(path = %path.display(), error = %e,
                "scrub: cannot save where the content check stopped; the next run starts over");
        }
    }
}
