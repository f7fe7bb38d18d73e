//! Timeline history: which timelines lead to the server's current one and
//! where each ended, read from the `TTTTTTTT.history` file, and where the
//! streamer resumes given what the repository already holds.
//!
//! A history file has one line per ancestor, oldest first:
//! `parent_tli <TAB> switch_lsn <TAB> reason`. The parent's WAL is valid up to
//! (not including) `switch_lsn`; the child's starts there. The segment
//! holding the switch point exists on both timelines: the child's copy holds
//! the parent's bytes up to the switch point, then its own.

use crate::pg::Lsn;

/// A history file that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("timeline history of timeline {timeline} is malformed at line {line}: {what}")]
pub struct HistoryError {
    /// The timeline whose history file it is.
    pub timeline: u32,
    /// The 1-based line.
    pub line: usize,
    /// What is wrong.
    pub what: String,
}

/// One timeline of a server's lineage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineageEntry {
    /// The timeline.
    pub timeline: u32,
    /// Where its WAL ends (the next timeline's switch point); `None` for
    /// the current timeline.
    pub end: Option<Lsn>,
}

/// The timelines leading to a server's current one, oldest first, the
/// current one last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    entries: Vec<LineageEntry>,
}

impl Lineage {
    /// The lineage of timeline 1, which has no history file.
    pub fn first() -> Lineage {
        Lineage {
            entries: vec![LineageEntry {
                timeline: 1,
                end: None,
            }],
        }
    }

    /// Parses the history file of `timeline` (as `TIMELINE_HISTORY` returns
    /// it). Blank lines and `#` comments are skipped, as PostgreSQL does.
    pub fn parse(timeline: u32, content: &[u8]) -> Result<Lineage, HistoryError> {
        let text = String::from_utf8_lossy(content);
        let mut entries: Vec<LineageEntry> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let err = |what: &str| HistoryError {
                timeline,
                line: i + 1,
                what: what.to_owned(),
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let tli: u32 = fields
                .next()
                .and_then(|f| f.parse().ok())
                .ok_or_else(|| err("expected a timeline number"))?;
            let end: Lsn = fields
                .next()
                .and_then(|f| f.parse().ok())
                .ok_or_else(|| err("expected a switch point like 0/3000060"))?;
            if let Some(prev) = entries.last()
                && (prev.timeline >= tli || prev.end.is_some_and(|e| e > end))
            {
                return Err(err("timelines and switch points must ascend"));
            }
            if tli >= timeline {
                return Err(err("an ancestor must be older than the timeline"));
            }
            entries.push(LineageEntry {
                timeline: tli,
                end: Some(end),
            });
        }
        entries.push(LineageEntry {
            timeline,
            end: None,
        });
        Ok(Lineage { entries })
    }

    /// The lineage of `timeline` from its ancestors and their switch points
    /// (oldest first), as recorded in the catalog; checked as a history
    /// file is.
    pub fn from_parents(timeline: u32, parents: &[(u32, Lsn)]) -> Result<Lineage, HistoryError> {
        let text: String = parents
            .iter()
            .map(|(tli, end)| format!("{tli}\t{end}\n"))
            .collect();
        Lineage::parse(timeline, text.as_bytes())
    }

    /// Where `timeline` begins: its parent's switch point (`Lsn(0)` for the
    /// oldest timeline of the lineage); `None` when it is not in the lineage.
    pub fn begin(&self, timeline: u32) -> Option<Lsn> {
        let i = self.entries.iter().position(|e| e.timeline == timeline)?;
        Some(match i {
            0 => Lsn(0),
            _ => self.entries[i - 1].end.unwrap_or(Lsn(0)),
        })
    }

    /// The timelines, oldest first.
    pub fn entries(&self) -> &[LineageEntry] {
        &self.entries
    }

    /// The current (last) timeline.
    pub fn current(&self) -> u32 {
        self.entries.last().map_or(1, |e| e.timeline)
    }

    /// The timeline that holds `lsn`: a switch point belongs to the child,
    /// as in PostgreSQL's `tliOfPointInHistory`.
    pub fn timeline_of(&self, lsn: Lsn) -> u32 {
        self.entries
            .iter()
            .find(|e| e.end.is_none_or(|end| lsn < end))
            .map_or(self.current(), |e| e.timeline)
    }

    /// Where the first byte not yet stored is: the newest timeline of the
    /// lineage with stored WAL, and the end of what it holds; when that
    /// timeline's stored WAL reaches its switch point, the next timeline at
    /// the switch point instead (and so on). `stored_end(tli)` says where
    /// stored WAL of a timeline ends. `None` when nothing of the lineage is
    /// stored.
    pub fn resume_point(&self, mut stored_end: impl FnMut(u32) -> Option<Lsn>) -> Option<Resume> {
        let mut i = self
            .entries
            .iter()
            .rposition(|e| stored_end(e.timeline).is_some())?;
        let mut pos = stored_end(self.entries[i].timeline)?;
        // A timeline stored to (or past, by a torn last record) its end goes
        // on at the switch point on the next one.
        while let Some(end) = self.entries[i].end
            && pos >= end
        {
            i += 1;
            pos = end;
        }
        Some(Resume {
            timeline: self.entries[i].timeline,
            stored_end: pos,
        })
    }
}

/// Where streaming resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// The timeline to stream (may be historic: the server then streams it
    /// up to its switch point and names the next).
    pub timeline: u32,
    /// Everything before this position, on this timeline's lineage, is
    /// stored.
    pub stored_end: Lsn,
}

#[cfg(test)]
mod tests {
    use super::*;

    const HISTORY_3: &str = "1\t0/3000060\tno recovery target specified\n\
                             \n\
                             # a comment\n\
                             2\t0/5000000\tbefore 2026-01-01\n";

    fn lineage() -> Lineage {
        Lineage::parse(3, HISTORY_3.as_bytes()).expect("parses")
    }

    #[test]
    fn parses_ancestors_and_adds_the_current_timeline() {
        let l = lineage();
        let got: Vec<(u32, Option<Lsn>)> =
            l.entries().iter().map(|e| (e.timeline, e.end)).collect();
        assert_eq!(
            got,
            vec![
                (1, Some(Lsn(0x300_0060))),
                (2, Some(Lsn(0x500_0000))),
                (3, None)
            ]
        );
        assert_eq!(l.current(), 3);
        assert_eq!(l.timeline_of(Lsn(0x300_005F)), 1);
        assert_eq!(
            l.timeline_of(Lsn(0x300_0060)),
            2,
            "a switch point is the child's"
        );
        assert_eq!(l.timeline_of(Lsn(0x900_0000)), 3);
        assert_eq!(Lineage::first().timeline_of(Lsn(5)), 1);
    }

    #[test]
    fn malformed_history_is_an_error_naming_the_line() {
        let e = Lineage::parse(2, b"1\tnot-an-lsn\tx\n").expect_err("bad lsn");
        assert_eq!((e.timeline, e.line), (2, 1));
        assert!(e.to_string().contains("switch point"), "{e}");
        Lineage::parse(2, b"2\t0/1000000\tx\n").expect_err("not an ancestor");
        Lineage::parse(3, b"2\t0/2000000\tx\n1\t0/1000000\tx\n").expect_err("descends");
    }

    #[test]
    fn resumes_on_the_newest_stored_timeline_or_past_its_end() {
        let l = lineage();
        fn stored(map: &[(u32, u64)]) -> impl FnMut(u32) -> Option<Lsn> + '_ {
            move |tli| map.iter().find(|(t, _)| *t == tli).map(|(_, e)| Lsn(*e))
        }
        assert_eq!(l.resume_point(stored(&[])), None);
        // Timeline 1 not yet stored to its end: finish it first.
        assert_eq!(
            l.resume_point(stored(&[(1, 0x200_0000)])),
            Some(Resume {
                timeline: 1,
                stored_end: Lsn(0x200_0000)
            })
        );
        // Timeline 1 stored to its end (or past it): timeline 2 at the switch.
        for end in [0x300_0060, 0x300_2000] {
            assert_eq!(
                l.resume_point(stored(&[(1, end)])),
                Some(Resume {
                    timeline: 2,
                    stored_end: Lsn(0x300_0060)
                })
            );
        }
        // Both ancestors done: the current timeline at the last switch.
        assert_eq!(
            l.resume_point(stored(&[(1, 0x300_0060), (2, 0x500_0000)])),
            Some(Resume {
                timeline: 3,
                stored_end: Lsn(0x500_0000)
            })
        );
        // The newest stored timeline counts, whatever older ones hold.
        assert_eq!(
            l.resume_point(stored(&[(1, 0x100_0000), (3, 0x700_0000)])),
            Some(Resume {
                timeline: 3,
                stored_end: Lsn(0x700_0000)
            })
        );
    }
}
