//! Which backups a retention policy keeps, and why: pure, no I/O.
//!
//! Like restic's `forget --keep-*`: the newest N backups, and the newest
//! backup of each of the last N days / ISO weeks / months that have one
//! (UTC). Only restorable backups count; the newest restorable one is always
//! kept, and unrestorable backups newer than it (one may be being written)
//! are never touched.

use jiff::Timestamp;
use serde::Serialize;

use crate::config::RetentionConfig;

/// One backup as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupPoint {
    /// Its id.
    pub id: String,
    /// When it was taken (its start).
    pub time: Timestamp,
    /// Whether a restore can start from it (its WAL is stored).
    pub restorable: bool,
}

/// Why a backup is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "rule", content = "period")]
pub enum KeepReason {
    /// Among the newest `keep_last`.
    Last,
    /// The newest of this day (`2026-11-25`).
    Daily(String),
    /// The newest of this ISO week (`2026-W48`).
    Weekly(String),
    /// The newest of this month (`2026-11`).
    Monthly(String),
    /// The newest restorable backup: always kept.
    NewestRestorable,
    /// Not restorable (yet) and newer than the newest restorable backup: it
    /// may be being written, or wait for its WAL.
    InProgress,
    /// Dated after "now" (a clock that jumped): not judged.
    Future,
    /// An SQLite snapshot inside the kept window: later page sets build on
    /// it.
    Window,
    /// A kept incremental backup (this id) is built on it: restoring that
    /// one needs every backup of its chain.
    BuiltOn(String),
}

impl std::fmt::Display for KeepReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeepReason::Last => write!(f, "last"),
            KeepReason::Daily(p) => write!(f, "daily {p}"),
            KeepReason::Weekly(p) => write!(f, "weekly {p}"),
            KeepReason::Monthly(p) => write!(f, "monthly {p}"),
            KeepReason::NewestRestorable => write!(f, "newest restorable"),
            KeepReason::InProgress => write!(f, "in progress (not restorable yet)"),
            KeepReason::Future => write!(f, "dated in the future"),
            KeepReason::Window => write!(f, "inside the restore window"),
            KeepReason::BuiltOn(id) => write!(f, "kept backup {id} is incremental on it"),
        }
    }
}

/// Keeps every backup a kept one is incremental on: `parents` maps a
/// backup's id to its parent's. Retention never breaks a chain.
pub fn keep_chains(
    decisions: &mut [Decision],
    parents: &std::collections::HashMap<String, String>,
) {
    let kept: Vec<String> = decisions
        .iter()
        .filter(|d| d.keep())
        .map(|d| d.id.clone())
        .collect();
    for id in kept {
        let mut child = id;
        // Bounded: a chain is never longer than the backups there are.
        for _ in 0..decisions.len() {
            let Some(parent) = parents.get(&child) else {
                break;
            };
            let Some(d) = decisions.iter_mut().find(|d| &d.id == parent) else {
                break;
            };
            let reason = KeepReason::BuiltOn(child.clone());
            if !d.reasons.contains(&reason) {
                d.reasons.push(reason);
            }
            child = parent.clone();
        }
    }
}

/// The verdict on one backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The backup's id.
    pub id: String,
    /// When it was taken.
    pub time: Timestamp,
    /// Whether it is restorable.
    pub restorable: bool,
    /// Why it is kept; empty: forgotten.
    pub reasons: Vec<KeepReason>,
}

impl Decision {
    /// Whether the policy keeps it.
    pub fn keep(&self) -> bool {
        !self.reasons.is_empty()
    }
}

fn day(t: Timestamp) -> String {
    t.to_zoned(jiff::tz::TimeZone::UTC)
        .date()
        .strftime("%Y-%m-%d")
        .to_string()
}

fn iso_week(t: Timestamp) -> String {
    let w = t.to_zoned(jiff::tz::TimeZone::UTC).date().iso_week_date();
    // The ISO year, not the calendar year: they differ around New Year.
    format!("{:04}-W{:02}", w.year(), w.week())
}

fn month(t: Timestamp) -> String {
    t.to_zoned(jiff::tz::TimeZone::UTC)
        .date()
        .strftime("%Y-%m")
        .to_string()
}

/// A keep-per-period rule: how many periods, a backup's period, the reason.
type PeriodRule = (u32, fn(Timestamp) -> String, fn(String) -> KeepReason);

/// Decides, for each backup, whether `policy` keeps it at `now`. The result
/// is in the input's order.
///
/// Ties (equal times) are broken by id, so the result does not depend on
/// the input's order.
pub fn decide(backups: &[BackupPoint], policy: &RetentionConfig, now: Timestamp) -> Vec<Decision> {
    let mut out: Vec<Decision> = backups
        .iter()
        .map(|b| Decision {
            id: b.id.clone(),
            time: b.time,
            restorable: b.restorable,
            reasons: Vec::new(),
        })
        .collect();
    // Newest first.
    let mut order: Vec<usize> = (0..backups.len()).collect();
    order.sort_by(|&a, &b| {
        (backups[b].time, &backups[b].id).cmp(&(backups[a].time, &backups[a].id))
    });
    let newest_restorable = order.iter().copied().find(|&i| backups[i].restorable);
    let Some(newest) = newest_restorable else {
        // Nothing restorable: nothing to restore from if any were dropped.
        for d in &mut out {
            d.reasons.push(KeepReason::InProgress);
        }
        return out;
    };
    for &i in &order {
        if backups[i].time > now {
            out[i].reasons.push(KeepReason::Future);
        } else if i == newest {
            break;
        } else if !backups[i].restorable {
            out[i].reasons.push(KeepReason::InProgress);
        }
    }
    out[newest].reasons.push(KeepReason::NewestRestorable);

    let candidates: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&i| backups[i].restorable && backups[i].time <= now)
        .collect();
    for &i in candidates.iter().take(policy.keep_last as usize) {
        out[i].reasons.push(KeepReason::Last);
    }
    let rules: [PeriodRule; 3] = [
        (policy.keep_daily, day, KeepReason::Daily),
        (policy.keep_weekly, iso_week, KeepReason::Weekly),
        (policy.keep_monthly, month, KeepReason::Monthly),
    ];
    for (n, period, reason) in rules {
        let mut seen: Option<String> = None;
        let mut kept = 0u32;
        for &i in &candidates {
            if kept >= n {
                break;
            }
            let p = period(backups[i].time);
            if seen.as_ref() != Some(&p) {
                // The first (newest) backup of a period not seen yet.
                seen = Some(p.clone());
                kept += 1;
                out[i].reasons.push(reason(p));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn policy(last: u32, daily: u32, weekly: u32, monthly: u32) -> RetentionConfig {
        RetentionConfig {
            keep_last: last,
            keep_daily: daily,
            keep_weekly: weekly,
            keep_monthly: monthly,
            gc_grace: Duration::from_secs(86400),
            schedule: None,
        }
    }

    fn b(time: &str) -> BackupPoint {
        BackupPoint {
            id: time.to_owned(),
            time: time.parse().expect("time"),
            restorable: true,
        }
    }

    fn kept(decisions: &[Decision]) -> Vec<(&str, Vec<String>)> {
        decisions
            .iter()
            .filter(|d| d.keep())
            .map(|d| {
                (
                    d.id.as_str(),
                    d.reasons.iter().map(|r| r.to_string()).collect(),
                )
            })
            .collect()
    }

    /// A hand-made history over four months; every verdict spelled out.
    fn history() -> Vec<BackupPoint> {
        [
            "2026-08-03T03:00:00Z", // Mon, W32
            "2026-08-20T03:00:00Z", // Thu, W34
            "2026-08-31T03:00:00Z", // Mon, W36
            "2026-09-15T03:00:00Z", // Tue, W38
            "2026-09-30T03:00:00Z", // Wed, W40
            "2026-10-05T03:00:00Z", // Mon, W41
            "2026-10-28T03:00:00Z", // Wed, W44
            "2026-11-02T03:00:00Z", // Mon, W45
            "2026-11-08T03:00:00Z", // Sun, W45
            "2026-11-09T03:00:00Z", // Mon, W46
            "2026-11-10T03:00:00Z", // Tue, W46
            "2026-11-10T15:00:00Z", // Tue, W46 (same day, later)
            "2026-11-11T03:00:00Z", // Wed, W46
        ]
        .iter()
        .map(|t| b(t))
        .collect()
    }

    #[test]
    fn a_history_over_months_keeps_exactly_the_expected_set() {
        let now: Timestamp = "2026-11-11T12:00:00Z".parse().unwrap();
        // Shuffled input: the result must not depend on order.
        let mut h = history();
        h.reverse();
        h.swap(0, 5);
        let d = decide(&h, &policy(2, 3, 3, 3), now);
        let mut k = kept(&d);
        k.sort();
        let e = |id: &'static str, r: &[&str]| (id, r.iter().map(|s| s.to_string()).collect());
        let mut expected: Vec<(&str, Vec<String>)> = vec![
            e(
                "2026-11-11T03:00:00Z",
                &[
                    "newest restorable",
                    "last",
                    "daily 2026-11-11",
                    "weekly 2026-W46",
                    "monthly 2026-11",
                ],
            ),
            e("2026-11-10T15:00:00Z", &["last", "daily 2026-11-10"]),
            e("2026-11-09T03:00:00Z", &["daily 2026-11-09"]),
            e("2026-11-08T03:00:00Z", &["weekly 2026-W45"]),
            e(
                "2026-10-28T03:00:00Z",
                &["weekly 2026-W44", "monthly 2026-10"],
            ),
            e("2026-09-30T03:00:00Z", &["monthly 2026-09"]),
        ];
        expected.sort();
        assert_eq!(k, expected);
        assert_eq!(d.iter().filter(|d| !d.keep()).count(), 7);
    }

    #[test]
    fn keep_last_zero_still_keeps_the_newest_restorable() {
        let now: Timestamp = "2026-12-01T00:00:00Z".parse().unwrap();
        let d = decide(&history(), &policy(0, 0, 0, 0), now);
        assert_eq!(
            kept(&d),
            vec![("2026-11-11T03:00:00Z", vec!["newest restorable".to_owned()])]
        );
    }

    #[test]
    fn unrestorable_backups_newer_than_the_newest_restorable_are_kept() {
        let now: Timestamp = "2026-11-12T12:00:00Z".parse().unwrap();
        let mut h = history();
        // The two newest are not restorable: one failed waiting for WAL,
        // one is being written.
        let mut failed = b("2026-11-11T18:00:00Z");
        failed.restorable = false;
        let mut running = b("2026-11-12T03:00:00Z");
        running.restorable = false;
        // And an old one that never became restorable.
        let mut old = b("2026-11-01T03:00:00Z");
        old.restorable = false;
        h.extend([failed, running, old]);
        let d = decide(&h, &policy(1, 0, 0, 0), now);
        assert_eq!(
            kept(&d),
            vec![
                (
                    "2026-11-11T03:00:00Z",
                    vec!["newest restorable".to_owned(), "last".to_owned()]
                ),
                (
                    "2026-11-11T18:00:00Z",
                    vec!["in progress (not restorable yet)".to_owned()]
                ),
                (
                    "2026-11-12T03:00:00Z",
                    vec!["in progress (not restorable yet)".to_owned()]
                ),
            ]
        );
        // Unrestorable backups never fill a keep-last slot.
        let d = decide(&h, &policy(2, 0, 0, 0), now);
        assert!(d.iter().any(|x| x.id == "2026-11-10T15:00:00Z" && x.keep()));
        assert!(
            d.iter()
                .any(|x| x.id == "2026-11-01T03:00:00Z" && !x.keep())
        );
    }

    #[test]
    fn ties_within_a_day_keep_the_newest_and_equal_times_break_by_id() {
        let now: Timestamp = "2026-11-12T00:00:00Z".parse().unwrap();
        let mut a = b("2026-11-11T03:00:00Z");
        a.id = "a".into();
        let mut z = b("2026-11-11T03:00:00Z");
        z.id = "z".into();
        let early = b("2026-11-11T01:00:00Z");
        for input in [
            vec![a.clone(), z.clone(), early.clone()],
            vec![early.clone(), z.clone(), a.clone()],
        ] {
            let d = decide(&input, &policy(0, 1, 0, 0), now);
            let mut k: Vec<&str> = d
                .iter()
                .filter(|d| d.keep())
                .map(|d| d.id.as_str())
                .collect();
            k.sort();
            assert_eq!(k, vec!["z"]);
        }
    }

    #[test]
    fn nothing_restorable_forgets_nothing() {
        let now: Timestamp = "2026-12-01T00:00:00Z".parse().unwrap();
        let h: Vec<BackupPoint> = history()
            .into_iter()
            .map(|mut x| {
                x.restorable = false;
                x
            })
            .collect();
        let d = decide(&h, &policy(0, 0, 0, 0), now);
        assert!(d.iter().all(|d| d.keep()));
    }

    #[test]
    fn iso_weeks_cross_the_new_year() {
        assert_eq!(
            iso_week("2026-12-31T12:00:00Z".parse().unwrap()),
            "2026-W53"
        );
        assert_eq!(
            iso_week("2027-01-03T12:00:00Z".parse().unwrap()),
            "2026-W53"
        );
        assert_eq!(
            iso_week("2027-01-04T12:00:00Z".parse().unwrap()),
            "2027-W01"
        );
    }

    #[test]
    fn a_kept_incremental_keeps_its_chain() {
        // full a, incrementals b on a and c on b; d full; keep_last = 1
        // keeps only... the newest restorable (c when d is not restorable).
        let mut h: Vec<BackupPoint> = [
            "2026-11-01T03:00:00Z",
            "2026-11-02T03:00:00Z",
            "2026-11-03T03:00:00Z",
            "2026-11-04T03:00:00Z",
        ]
        .iter()
        .map(|t| b(t))
        .collect();
        h[3].restorable = false;
        let mut d = decide(
            &h,
            &policy(1, 0, 0, 0),
            "2026-11-05T00:00:00Z".parse().expect("t"),
        );
        let kept = |d: &[Decision]| d.iter().filter(|d| d.keep()).count();
        assert_eq!(kept(&d), 2, "{d:?}");
        let parents: std::collections::HashMap<String, String> = [
            (h[1].id.clone(), h[0].id.clone()),
            (h[2].id.clone(), h[1].id.clone()),
        ]
        .into_iter()
        .collect();
        keep_chains(&mut d, &parents);
        assert_eq!(kept(&d), 4, "{d:?}");
        assert_eq!(d[0].reasons, vec![KeepReason::BuiltOn(h[1].id.clone())]);
        assert_eq!(d[1].reasons, vec![KeepReason::BuiltOn(h[2].id.clone())]);
    }
}
