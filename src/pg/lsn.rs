//! WAL positions and segment names: the vocabulary the replication client,
//! the decoder, the catalog and `wal-fetch` share.

use std::fmt;
use std::str::FromStr;

/// A WAL position (log sequence number): a byte offset in the WAL stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

/// `X/X` text that is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a WAL position: expected two hex numbers separated by a slash, like 0/3000060"
)]
pub struct ParseLsnError(String);

impl Lsn {
    /// The start of the segment holding this position.
    pub fn segment_start(self, seg_size: u64) -> Lsn {
        Lsn(self.0 - self.0 % seg_size)
    }

    /// The segment number (`XLogSegNo`) holding this position.
    pub fn segment_no(self, seg_size: u64) -> u64 {
        self.0 / seg_size
    }

    /// The offset of this position inside its segment.
    pub fn segment_offset(self, seg_size: u64) -> u64 {
        self.0 % seg_size
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // PostgreSQL's spelling: upper-case hex, no leading zeros.
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_owned());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let part = |p: &str| {
            if p.is_empty() || p.len() > 8 {
                return Err(err());
            }
            u32::from_str_radix(p, 16).map_err(|_| err())
        };
        Ok(Lsn((u64::from(part(hi)?) << 32) | u64::from(part(lo)?)))
    }
}

// Serialized in PostgreSQL's spelling (`"0/3000060"`), so catalog attributes
// and JSON output read like `pg_waldump` and `pg_current_wal_lsn()`.
impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A WAL segment: timeline and segment number, named as in `pg_wal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Segment {
    /// The timeline.
    pub timeline: u32,
    /// `XLogSegNo`: the segment's start LSN divided by the segment size.
    pub no: u64,
}

impl Segment {
    /// The segment holding `lsn` on `timeline`.
    pub fn containing(timeline: u32, lsn: Lsn, seg_size: u64) -> Segment {
        Segment {
            timeline,
            no: lsn.segment_no(seg_size),
        }
    }

    /// The first position of the segment.
    pub fn start(self, seg_size: u64) -> Lsn {
        Lsn(self.no * seg_size)
    }

    /// The file name, `TTTTTTTTXXXXXXXXYYYYYYYY`.
    pub fn file_name(self, seg_size: u64) -> String {
        let per_xlogid = 0x1_0000_0000 / seg_size;
        format!(
            "{:08X}{:08X}{:08X}",
            self.timeline,
            self.no / per_xlogid,
            self.no % per_xlogid
        )
    }

    /// Parses a segment file name (24 upper-case hex digits).
    pub fn parse(name: &str, seg_size: u64) -> Option<Segment> {
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let timeline = u32::from_str_radix(&name[..8], 16).ok()?;
        let log = u64::from_str_radix(&name[8..16], 16).ok()?;
        let seg = u64::from_str_radix(&name[16..], 16).ok()?;
        let per_xlogid = 0x1_0000_0000 / seg_size;
        if timeline == 0 || seg >= per_xlogid {
            return None;
        }
        Some(Segment {
            timeline,
            no: log * per_xlogid + seg,
        })
    }

    /// The next segment on the same timeline.
    pub fn next(self) -> Segment {
        Segment {
            timeline: self.timeline,
            no: self.no + 1,
        }
    }
}

/// The name of a timeline history file, `TTTTTTTT.history`.
pub fn history_file_name(timeline: u32) -> String {
    format!("{timeline:08X}.history")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    #[test]
    fn lsn_text_round_trips_in_postgres_spelling() {
        let l: Lsn = "16/B374D848".parse().expect("parses");
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!(Lsn(0x300_0060).to_string(), "0/3000060");
        for bad in ["", "0", "0/", "/1", "x/1", "1/123456789", "0/3000060/1"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad}");
        }
    }

    #[test]
    fn lsn_serializes_in_postgres_spelling() {
        let json = serde_json::to_string(&Lsn(0x16_B374_D848)).expect("serialize");
        assert_eq!(json, "\"16/B374D848\"");
        let back: Lsn = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, Lsn(0x16_B374_D848));
        assert!(serde_json::from_str::<Lsn>("\"16\"").is_err());
    }

    #[test]
    fn segment_names_match_postgres() {
        // pg_walfile_name('0/3000060') on timeline 1 = 000000010000000000000003.
        let s = Segment::containing(1, "0/3000060".parse().expect("lsn"), SEG);
        assert_eq!(s.file_name(SEG), "000000010000000000000003");
        // Crossing a 4 GiB boundary: 1/0 is segment 256 with 16 MiB segments.
        let s = Segment::containing(2, "1/0".parse().expect("lsn"), SEG);
        assert_eq!(s.file_name(SEG), "000000020000000100000000");
        assert_eq!(Segment::parse("000000020000000100000000", SEG), Some(s));
        assert_eq!(s.start(SEG), Lsn(1 << 32));
        assert_eq!(Segment::parse("0000000200000001000001000", SEG), None);
        assert_eq!(Segment::parse("000000020000000100000100", SEG), None);
        assert_eq!(history_file_name(2), "00000002.history");
    }
}
