//! Garbage collection of packs and commit objects: mark, wait, re-check,
//! delete.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

use super::{RetentionError, RetentionPlan};
use crate::repo::catalog::PackGcState;
use crate::repo::{ChunkId, Forget, GcRecord, Repository};

/// One pack in a garbage-collection plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackAction {
    /// The pack id.
    pub id: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was marked, if it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub marked: Option<Timestamp>,
    /// Why it waits (packs marked but not deleted yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// Whether no commit names it: a pack a writer uploaded and never
    /// committed (it crashed or failed), or one a destination still holds
    /// after it was deleted elsewhere.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub orphan: bool,
}

/// What garbage collection will do, given the items the plan forgets.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcPlan {
    /// Packs in the catalog (not deleted).
    pub packs: usize,
    /// Packs no live item references, to be marked now.
    pub mark: Vec<PackAction>,
    /// Marked packs referenced again, to be unmarked.
    pub unmark: Vec<PackAction>,
    /// Marked packs past the grace period and still unreferenced: deleted
    /// now (after a re-check against a fresh sync).
    pub delete: Vec<PackAction>,
    /// Marked packs that must wait (grace period, a writer in flight).
    pub waiting: Vec<PackAction>,
    /// Bytes the deletions free.
    pub bytes_freed: u64,
    /// Bytes marked now (freed by a run after the grace period).
    pub bytes_marked: u64,
    /// The time the marks are dated: once the destinations were listed,
    /// never before it. A writer whose uncommitted pack the listing saw
    /// began before then, so the in-flight rule keeps that pack while it
    /// runs; a mark dated when the plan began (before the listing) would
    /// predate a writer begun during the listing and leave its pack
    /// unprotected.
    #[serde(skip)]
    pub marked_at: Timestamp,
}

/// What garbage collection did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcOutcome {
    /// Packs marked.
    pub marked: usize,
    /// Packs unmarked (referenced again).
    pub unmarked: usize,
    /// Packs deleted from every destination.
    pub deleted: usize,
    /// Their bytes.
    pub bytes_freed: u64,
    /// Commit objects deleted (from at least one destination).
    pub commits_deleted: usize,
    /// Deletions that failed, with the destination and the error; retried
    /// by the next run.
    pub failures: Vec<String>,
}

/// The packs some live item needs: every pack a reader fetches a chunk of a
/// live item from. `forget` lists items to treat as gone already.
fn referenced_packs(
    repo: &Repository,
    forget: &[Forget],
) -> Result<HashSet<String>, RetentionError> {
    let gone: HashSet<(&str, &str)> = forget
        .iter()
        .flat_map(|f| f.names.iter().map(|n| (f.commit.as_str(), n.as_str())))
        .collect();
    let items = repo.catalog().items("")?;
    let mut live: HashSet<ChunkId> = HashSet::new();
    for item in &items {
        if gone.contains(&(item.commit.as_str(), item.name.as_str())) {
            continue;
        }
        live.extend(item.manifest.chunks.iter().map(|(c, _)| *c));
    }
    drop(items);
    let mut referenced = HashSet::new();
    for (chunk, pack) in repo.catalog().chunk_packs()? {
        if live.contains(&chunk) {
            referenced.insert(pack);
        }
    }
    Ok(referenced)
}

fn elapsed(now: Timestamp, since: Timestamp) -> Duration {
    now.duration_since(since)
        .try_into()
        .unwrap_or(Duration::ZERO)
}

/// Packs the destinations hold that the catalog does not know (no commit
/// names them), with their sizes. A destination that cannot list is
/// skipped with a warning: the others still count.
async fn unknown_packs(
    repo: &Repository,
    known: &HashSet<String>,
) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for dest in repo.fanout().destinations() {
        match dest.list("packs/").await {
            Ok(listed) => {
                for m in listed {
                    let id = m.key.rsplit('/').next().unwrap_or("");
                    if crate::repo::PackId::parse(id).is_some() && !known.contains(id) {
                        out.insert(id.to_owned(), m.size);
                    }
                }
            }
            Err(e) => tracing::warn!(destination = dest.name(), error = %e,
                "cannot list packs/ for garbage collection; packs no commit names are looked for in the other destinations only"),
        }
    }
    out
}

/// Plans garbage collection as it will be once `forget` is applied.
pub(super) async fn plan(
    repo: &Repository,
    forget: &[Forget],
    now: Timestamp,
    grace: Duration,
) -> Result<GcPlan, RetentionError> {
    let referenced = referenced_packs(repo, forget)?;
    let states: HashMap<String, PackGcState> = repo.catalog().pack_gc_states()?;
    let packs = repo.catalog().packs()?;
    let inflight = repo.oldest_inflight();
    let mut plan = GcPlan {
        packs: packs.len(),
        ..GcPlan::default()
    };
    let known: HashSet<String> = packs.iter().map(|(id, _)| id.to_string()).collect();
    let mut all: Vec<(String, u64, bool)> = packs
        .into_iter()
        .map(|(id, size)| (id.to_string(), size, false))
        .collect();
    all.extend(
        unknown_packs(repo, &known)
            .await
            .into_iter()
            .map(|(id, size)| (id, size, true)),
    );
    plan.marked_at = now.max(Timestamp::now());
    for (id, size, orphan) in all {
        let marked = match states.get(&id) {
            Some(PackGcState::Marked(t)) => Some(*t),
            // Deleted, yet a destination lists it (it failed to delete
            // there, or a spool uploaded it again): delete it again.
            Some(PackGcState::Deleted(t)) => Some(*t),
            None => None,
        };
        let action = PackAction {
            id: id.clone(),
            size,
            marked,
            waiting: None,
            orphan,
        };
        match (referenced.contains(&id), marked) {
            (true, Some(_)) => plan.unmark.push(action),
            (true, None) => {}
            (false, None) => {
                plan.bytes_marked += size;
                plan.mark.push(action);
            }
            (false, Some(t)) => {
                let waiting = if matches!(states.get(&id), Some(PackGcState::Deleted(_))) {
                    None
                } else if elapsed(now, t) < grace {
                    Some(format!(
                        "grace period: marked {t}, deletable after {}",
                        t.checked_add(grace).unwrap_or(t)
                    ))
                } else if inflight.is_some_and(|w| w <= t) {
                    Some(
                        "a writer in this process began before the mark and has not committed"
                            .into(),
                    )
                } else {
                    None
                };
                match waiting {
                    Some(w) => plan.waiting.push(PackAction {
                        waiting: Some(w),
                        ..action
                    }),
                    None => {
                        plan.bytes_freed += size;
                        plan.delete.push(action);
                    }
                }
            }
        }
    }
    Ok(plan)
}

/// Applies the plan's forgets and garbage collection (see the module docs).
pub(super) async fn apply(
    repo: &Repository,
    plan: &RetentionPlan,
) -> Result<(Option<String>, GcOutcome), RetentionError> {
    let mut outcome = GcOutcome::default();
    let first = GcRecord {
        mark: plan.gc.mark.iter().map(|p| p.id.clone()).collect(),
        unmark: plan.gc.unmark.iter().map(|p| p.id.clone()).collect(),
        delete: Vec::new(),
    };
    outcome.marked = first.mark.len();
    outcome.unmarked = first.unmark.len();
    let forget_commit = repo
        .commit_removals(plan.forget.clone(), first, plan.gc.marked_at.max(plan.now))
        .await?;

    if !plan.gc.delete.is_empty() {
        // Re-check against what the destinations hold now: a writer that
        // decided to reuse a chunk before the mark may have committed since.
        repo.sync_catalog().await?;
        let referenced = referenced_packs(repo, &[])?;
        let inflight = repo.oldest_inflight();
        let mut second = GcRecord::default();
        for p in &plan.gc.delete {
            let marked = p.marked.unwrap_or(plan.now);
            if referenced.contains(&p.id) {
                second.unmark.push(p.id.clone());
                continue;
            }
            if inflight.is_some_and(|w| w <= marked) {
                // A writer began meanwhile from before the mark: next run.
                continue;
            }
            let object = crate::repo::PackId::parse(&p.id)
                .map(|id| id.object_name())
                .ok_or_else(|| RetentionError::BadItem {
                    item: p.id.clone(),
                    what: "not a pack id".into(),
                })?;
            let mut ok = true;
            for dest in repo.fanout().destinations() {
                if let Err(e) = dest.delete(&object).await {
                    ok = false;
                    tracing::warn!(destination = dest.name(), object, error = %e,
                        "deleting an unreferenced pack failed; the next retention run retries");
                    outcome
                        .failures
                        .push(format!("{}: deleting {object}: {e}", dest.name()));
                }
            }
            if ok {
                second.delete.push(p.id.clone());
                outcome.bytes_freed += p.size;
            }
        }
        outcome.deleted = second.delete.len();
        outcome.unmarked += second.unmark.len();
        repo.commit_removals(Vec::new(), second, plan.now).await?;
    }

    // Commit objects left with nothing: deleted where a destination still
    // lists them (a destination that fails is retried next run).
    let empty: HashSet<String> = repo.catalog().empty_commits()?.into_iter().collect();
    if !empty.is_empty() {
        let mut deleted = HashSet::new();
        for dest in repo.fanout().destinations() {
            let listed = match dest.list("catalog/").await {
                Ok(l) => l,
                Err(e) => {
                    outcome
                        .failures
                        .push(format!("{}: listing catalog/: {e}", dest.name()));
                    continue;
                }
            };
            for m in listed.into_iter().filter(|m| empty.contains(&m.key)) {
                match dest.delete(&m.key).await {
                    Ok(()) => {
                        deleted.insert(m.key);
                    }
                    Err(e) => {
                        tracing::warn!(destination = dest.name(), object = m.key, error = %e,
                            "deleting an empty catalog commit failed; the next retention run retries");
                        outcome
                            .failures
                            .push(format!("{}: deleting {}: {e}", dest.name(), m.key));
                    }
                }
            }
        }
        outcome.commits_deleted = deleted.len();
    }
    Ok((forget_commit, outcome))
}

impl GcPlan {
    /// The garbage-collection part of a plan, as text.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "[packs] {} in the catalog", self.packs);
        let orphan = |p: &PackAction| if p.orphan { ", no commit names it" } else { "" };
        for p in &self.mark {
            let _ = writeln!(s, "  mark    {} ({} bytes{})", p.id, p.size, orphan(p));
        }
        for p in &self.unmark {
            let _ = writeln!(s, "  unmark  {} (referenced again)", p.id);
        }
        for p in &self.delete {
            let _ = writeln!(s, "  delete  {} ({} bytes{})", p.id, p.size, orphan(p));
        }
        for p in &self.waiting {
            let _ = writeln!(
                s,
                "  wait    {} ({})",
                p.id,
                p.waiting.as_deref().unwrap_or("")
            );
        }
        let _ = writeln!(
            s,
            "  bytes freed now: {}; marked now (freed after the grace period): {}",
            self.bytes_freed, self.bytes_marked
        );
        s
    }
}
