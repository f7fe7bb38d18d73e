//! The transition logic, pure: conditions in, notices out. Time is a
//! parameter so the tests can walk it forward.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

use super::message::{Event, Notice};
use crate::sidecar::health::Check;

/// What is remembered of one condition id between observations.
#[derive(Debug)]
struct Tracked {
    failing: bool,
    /// When the current failure began (meaningful while `failing`).
    since: Timestamp,
    /// The summary of the failure, kept for the recovery notice.
    failing_summary: String,
    /// Per channel, when this failure was last announced on it.
    last_sent: Vec<Timestamp>,
}

/// One notice and the channels (by index) it goes to.
#[derive(Debug)]
pub(crate) struct Decision {
    pub(crate) notice: Arc<Notice>,
    pub(crate) channels: Vec<usize>,
}

/// Remembers the state of every condition id and decides, per channel,
/// which notices an observation produces.
#[derive(Debug)]
pub(crate) struct Tracker {
    /// Per channel (by index), its re-notify interval.
    renotify: Vec<Option<Duration>>,
    tracked: HashMap<String, Tracked>,
}

impl Tracker {
    /// A tracker for channels with these re-notify intervals (by index).
    pub(crate) fn new(renotify: Vec<Option<Duration>>) -> Tracker {
        Tracker {
            renotify,
            tracked: HashMap::new(),
        }
    }

    /// Compares `conditions` with the previous observation at time `now` and
    /// returns the notices to send and to which channels. Transitions are
    /// returned even without channels, so the caller can log them.
    ///
    /// Newly failing (including first seen failing): an alert on every
    /// channel. Cleared: a recovery notice on every channel. Still failing: a
    /// reminder on each channel whose re-notify interval has passed since
    /// it last heard of this failure. First seen OK: nothing. An id absent
    /// from `conditions` is forgotten. An id listed twice is failing when
    /// any of its entries is (the first failing entry's summary is used),
    /// so a duplicate never fakes a transition.
    pub(crate) fn observe(&mut self, now: Timestamp, conditions: &[Check]) -> Vec<Decision> {
        let mut merged: Vec<&Check> = Vec::with_capacity(conditions.len());
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(conditions.len());
        for c in conditions {
            match index.get(c.id.as_str()) {
                Some(&i) => {
                    if c.failing && !merged[i].failing {
                        merged[i] = c;
                    }
                }
                None => {
                    index.insert(c.id.as_str(), merged.len());
                    merged.push(c);
                }
            }
        }
        self.tracked.retain(|id, _| index.contains_key(id.as_str()));

        let all: Vec<usize> = (0..self.renotify.len()).collect();
        let channels = all.len();
        let mut out = Vec::new();
        for c in merged {
            let notice = |event, since, summary: &str, was: Option<&str>| {
                Arc::new(Notice {
                    event,
                    id: c.id.clone(),
                    database: c.database.clone(),
                    destination: c.destination.clone(),
                    summary: summary.to_owned(),
                    was: was.map(str::to_owned),
                    since,
                    time: now,
                })
            };
            match self.tracked.get_mut(&c.id) {
                None => {
                    if c.failing {
                        out.push(Decision {
                            notice: notice(Event::Failing, now, &c.summary, None),
                            channels: all.clone(),
                        });
                    }
                    self.tracked.insert(
                        c.id.clone(),
                        Tracked {
                            failing: c.failing,
                            since: now,
                            failing_summary: if c.failing {
                                c.summary.clone()
                            } else {
                                String::new()
                            },
                            last_sent: vec![now; channels],
                        },
                    );
                }
                Some(t) => match (t.failing, c.failing) {
                    (false, false) => {}
                    (false, true) => {
                        out.push(Decision {
                            notice: notice(Event::Failing, now, &c.summary, None),
                            channels: all.clone(),
                        });
                        t.failing = true;
                        t.since = now;
                        t.failing_summary = c.summary.clone();
                        t.last_sent = vec![now; channels];
                    }
                    (true, false) => {
                        out.push(Decision {
                            notice: notice(
                                Event::Recovered,
                                t.since,
                                &c.summary,
                                Some(&t.failing_summary),
                            ),
                            channels: all.clone(),
                        });
                        t.failing = false;
                    }
                    (true, true) => {
                        t.failing_summary = c.summary.clone();
                        let mut due_on = Vec::new();
                        for (ch, every) in self.renotify.iter().enumerate() {
                            let Some(every) = every else { continue };
                            let due = t.last_sent[ch]
                                .checked_add(*every)
                                .map(|due| now >= due)
                                .unwrap_or(false);
                            if due {
                                due_on.push(ch);
                                t.last_sent[ch] = now;
                            }
                        }
                        if !due_on.is_empty() {
                            out.push(Decision {
                                notice: notice(Event::Reminder, t.since, &c.summary, None),
                                channels: due_on,
                            });
                        }
                    }
                },
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(id: &str, failing: bool, summary: &str) -> Check {
        Check {
            id: id.to_owned(),
            database: Some("main".to_owned()),
            destination: None,
            failing,
            summary: summary.to_owned(),
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    /// (channel, event, id) of each notice, for compact assertions.
    fn events(v: &[Decision]) -> Vec<(usize, Event, String)> {
        v.iter()
            .flat_map(|d| {
                d.channels
                    .iter()
                    .map(|ch| (*ch, d.notice.event, d.notice.id.clone()))
            })
            .collect()
    }

    #[test]
    fn first_seen_ok_sends_nothing_and_first_seen_failing_alerts_every_channel() {
        let mut t = Tracker::new(vec![None, None]);
        assert!(t.observe(at(0), &[cond("a", false, "ok")]).is_empty());
        let out = t.observe(at(0), &[cond("a", false, "ok"), cond("b", true, "down")]);
        assert_eq!(
            events(&out),
            vec![
                (0, Event::Failing, "b".into()),
                (1, Event::Failing, "b".into())
            ]
        );
        assert_eq!(out[0].notice.summary, "down");
        assert_eq!(out[0].notice.since, at(0));
        assert_eq!(out[0].notice.database.as_deref(), Some("main"));
    }

    #[test]
    fn one_alert_per_transition_none_while_it_persists_one_recovery() {
        let mut t = Tracker::new(vec![None]);
        assert!(t.observe(at(0), &[cond("a", false, "ok")]).is_empty());
        let out = t.observe(at(10), &[cond("a", true, "stream down")]);
        assert_eq!(events(&out), vec![(0, Event::Failing, "a".into())]);
        for s in 11..100 {
            assert!(
                t.observe(at(s), &[cond("a", true, "stream down")])
                    .is_empty()
            );
        }
        let out = t.observe(at(100), &[cond("a", false, "streaming again")]);
        assert_eq!(events(&out), vec![(0, Event::Recovered, "a".into())]);
        let n = &out[0].notice;
        assert_eq!(n.since, at(10), "since: when the failure began");
        assert_eq!(n.time, at(100));
        assert_eq!(n.summary, "streaming again");
        assert_eq!(n.was.as_deref(), Some("stream down"));
        assert!(t.observe(at(101), &[cond("a", false, "ok")]).is_empty());
        // A new failure is a new alert with a new `since`.
        let out = t.observe(at(200), &[cond("a", true, "down again")]);
        assert_eq!(events(&out), vec![(0, Event::Failing, "a".into())]);
        assert_eq!(out[0].notice.since, at(200));
    }

    #[test]
    fn reminders_follow_each_channels_interval() {
        let mut t = Tracker::new(vec![Some(Duration::from_secs(60)), None]);
        let out = t.observe(at(0), &[cond("a", true, "down")]);
        assert_eq!(events(&out).len(), 2);
        assert!(t.observe(at(59), &[cond("a", true, "down")]).is_empty());
        let out = t.observe(at(60), &[cond("a", true, "still down")]);
        assert_eq!(events(&out), vec![(0, Event::Reminder, "a".into())]);
        assert_eq!(out[0].notice.since, at(0));
        assert_eq!(out[0].notice.summary, "still down");
        assert!(t.observe(at(100), &[cond("a", true, "down")]).is_empty());
        let out = t.observe(at(130), &[cond("a", true, "down")]);
        assert_eq!(events(&out), vec![(0, Event::Reminder, "a".into())]);
        // Recovery goes to both, with the latest failing summary.
        let out = t.observe(at(140), &[cond("a", false, "ok")]);
        assert_eq!(
            events(&out),
            vec![
                (0, Event::Recovered, "a".into()),
                (1, Event::Recovered, "a".into())
            ]
        );
        assert_eq!(out[0].notice.was.as_deref(), Some("down"));
        // No reminders once recovered.
        assert!(t.observe(at(1000), &[cond("a", false, "ok")]).is_empty());
    }

    #[test]
    fn a_disappearing_id_is_forgotten() {
        let mut t = Tracker::new(vec![None]);
        t.observe(at(0), &[cond("a", true, "down")]);
        assert!(
            t.observe(at(1), &[]).is_empty(),
            "no recovery for a gone id"
        );
        // Seen again failing: it is new, so it alerts again.
        let out = t.observe(at(2), &[cond("a", true, "down")]);
        assert_eq!(events(&out), vec![(0, Event::Failing, "a".into())]);
        // Seen again OK after being forgotten: nothing.
        t.observe(at(3), &[]);
        assert!(t.observe(at(4), &[cond("a", false, "ok")]).is_empty());
    }

    #[test]
    fn duplicate_ids_do_not_fake_transitions() {
        let mut t = Tracker::new(vec![None]);
        let both = [cond("a", false, "ok"), cond("a", true, "down")];
        let out = t.observe(at(0), &both);
        assert_eq!(events(&out), vec![(0, Event::Failing, "a".into())]);
        assert_eq!(out[0].notice.summary, "down");
        assert!(t.observe(at(1), &both).is_empty());
        assert!(t.observe(at(2), &both).is_empty());
    }

    #[test]
    fn independent_ids() {
        let mut t = Tracker::new(vec![None]);
        t.observe(at(0), &[cond("a", false, ""), cond("b", false, "")]);
        let out = t.observe(at(1), &[cond("a", true, "x"), cond("b", false, "")]);
        assert_eq!(events(&out), vec![(0, Event::Failing, "a".into())]);
        let out = t.observe(at(2), &[cond("a", true, "x"), cond("b", true, "y")]);
        assert_eq!(events(&out), vec![(0, Event::Failing, "b".into())]);
        let out = t.observe(at(3), &[cond("a", false, ""), cond("b", true, "y")]);
        assert_eq!(events(&out), vec![(0, Event::Recovered, "a".into())]);
    }

    #[test]
    fn without_channels_transitions_are_still_reported() {
        let mut t = Tracker::new(vec![]);
        let out = t.observe(at(0), &[cond("a", true, "down")]);
        assert_eq!(out.len(), 1);
        assert!(out[0].channels.is_empty());
        assert!(t.observe(at(1), &[cond("a", true, "down")]).is_empty());
        let out = t.observe(at(2), &[cond("a", false, "ok")]);
        assert_eq!(out[0].notice.event, Event::Recovered);
    }
}
