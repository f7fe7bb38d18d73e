//! The per-segment index: what the restore planner needs to know about a WAL
//! segment without reading it again (transaction end times, restore points,
//! positions), built by decoding — and so CRC-checking — every record.
//!
//! A record belongs to the segment holding its last byte: that is where it
//! becomes complete and checked, and the segment a restore must reach to
//! replay it. A record that starts in one segment and ends in the next is
//! carried over by passing the previous segment's [`Decoder`] on.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::decode::{DecodeError, DecodeErrorKind, Decoder, Record, RecordKind};
use crate::pg::{Lsn, Segment};

/// What one WAL segment holds, for planning restores. Stored by the catalog
/// as item attributes; times serialize as RFC 3339, positions as `X/X`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SegmentIndex {
    /// How many records end in this segment.
    pub records: u64,
    /// Where the first of them starts (possibly in the previous segment).
    pub first_record: Option<Lsn>,
    /// Where the last of them starts.
    pub last_record: Option<Lsn>,
    /// Where the last of them ends (where the next record may start).
    pub last_record_end: Option<Lsn>,
    /// Commits (`COMMIT` and `COMMIT PREPARED`) among them.
    pub commits: Option<XactTimes>,
    /// Aborts (`ABORT` and `ABORT PREPARED`) among them; recovery to a time
    /// stops at these too.
    pub aborts: Option<XactTimes>,
    /// Restore points created by `pg_create_restore_point`, in WAL order.
    pub restore_points: Vec<RestorePoint>,
    /// Whether the last record is a switch (`pg_switch_wal`,
    /// `archive_timeout`): the rest of the segment is zeros.
    pub ends_with_switch: bool,
    /// For a segment the server had not finished (zeros where the next record
    /// would start, or fewer bytes than a segment): where its WAL ends, i.e.
    /// the start of the first missing or incomplete record. `None` for a
    /// complete segment.
    pub end_of_wal: Option<Lsn>,
    /// Where the record that continues into the next segment starts, if one
    /// does.
    pub continued_record: Option<Lsn>,
    /// Bytes at the segment's start that finish a record begun in the
    /// previous segment and were not checked, because that segment's decoder
    /// was not passed on (0 when it was, or when no record crossed over).
    pub skipped_continuation: u64,
    /// The cluster that wrote the segment, from its long page header.
    pub system_identifier: Option<u64>,
}

/// Transaction end times of one kind (commits, or aborts) in a segment.
///
/// Both WAL order and extremes are kept: a transaction's time is taken just
/// before its record is inserted, so concurrent transactions reach the WAL
/// slightly out of time order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct XactTimes {
    /// How many.
    pub count: u64,
    /// The time of the first in WAL order.
    pub first: Timestamp,
    /// The time of the last in WAL order.
    pub last: Timestamp,
    /// The earliest time.
    pub earliest: Timestamp,
    /// The latest time.
    pub latest: Timestamp,
}

impl XactTimes {
    fn new(time: Timestamp) -> XactTimes {
        XactTimes {
            count: 1,
            first: time,
            last: time,
            earliest: time,
            latest: time,
        }
    }

    fn add(times: &mut Option<XactTimes>, time: Timestamp) {
        match times {
            None => *times = Some(XactTimes::new(time)),
            Some(times) => {
                times.count += 1;
                times.last = time;
                times.earliest = times.earliest.min(time);
                times.latest = times.latest.max(time);
            }
        }
    }
}

/// A named restore point (`recovery_target_name`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePoint {
    /// The name given to `pg_create_restore_point`.
    pub name: String,
    /// When it was created.
    pub time: Timestamp,
    /// Where its record starts.
    pub lsn: Lsn,
}

impl SegmentIndex {
    /// Accounts for one record that ends in the segment.
    pub fn add(&mut self, record: &Record) {
        self.records += 1;
        self.first_record.get_or_insert(record.lsn);
        self.last_record = Some(record.lsn);
        self.last_record_end = Some(record.end);
        self.ends_with_switch = matches!(record.kind, RecordKind::Switch);
        match &record.kind {
            RecordKind::Commit { time, .. } => XactTimes::add(&mut self.commits, *time),
            RecordKind::Abort { time, .. } => XactTimes::add(&mut self.aborts, *time),
            RecordKind::RestorePoint { time, name } => self.restore_points.push(RestorePoint {
                name: name.clone(),
                time: *time,
                lsn: record.lsn,
            }),
            RecordKind::Switch | RecordKind::OverwriteContrecord { .. } | RecordKind::Other => {}
        }
    }
}

/// Builds the [`SegmentIndex`] of one segment from its bytes, fed in order as
/// they arrive (from the replication stream or the repository). A clone
/// indexes on independently (an open segment's partial index).
#[derive(Debug, Clone)]
pub struct SegmentIndexer {
    segment: Segment,
    seg_size: u64,
    decoder: Decoder,
    fed: u64,
    /// What the carried decoder had skipped before this segment.
    skipped_before: u64,
    index: SegmentIndex,
}

impl SegmentIndexer {
    /// Starts indexing `segment`. `carry` is the decoder returned for the
    /// previous segment, so a record spanning the boundary is decoded whole;
    /// without it, the tail of such a record is passed over and counted in
    /// [`SegmentIndex::skipped_continuation`]. A carry that does not end where
    /// `segment` starts is a gap. The first segment of a new timeline holds
    /// its parent's WAL up to the fork, so it continues the decoder of the
    /// parent's previous segment, not of the parent's (partial) copy of it.
    ///
    /// # Panics
    ///
    /// If `seg_size` is not a valid segment size, as [`Decoder::new`].
    pub fn new(
        segment: Segment,
        seg_size: u64,
        carry: Option<Decoder>,
    ) -> Result<SegmentIndexer, DecodeError> {
        let decoder = match carry {
            Some(mut decoder) => {
                decoder.enter_segment(segment)?;
                decoder
            }
            None => Decoder::new(segment.timeline, seg_size, segment.start(seg_size)),
        };
        Ok(SegmentIndexer {
            segment,
            seg_size,
            skipped_before: decoder.skipped_bytes(),
            decoder,
            fed: 0,
            index: SegmentIndex::default(),
        })
    }

    /// Decodes the segment's next bytes.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), DecodeError> {
        let len = self.fed + bytes.len() as u64;
        if len > self.seg_size {
            return Err(DecodeError {
                segment: self.segment.file_name(self.seg_size),
                lsn: self.segment.start(self.seg_size),
                kind: DecodeErrorKind::SegmentOverflow {
                    len,
                    seg_size: self.seg_size,
                },
            });
        }
        let index = &mut self.index;
        self.decoder.feed_with(bytes, |record| index.add(&record))?;
        self.fed = len;
        Ok(())
    }

    /// The index of what was fed, and the decoder to pass on to the next
    /// segment.
    pub fn finish(self) -> (SegmentIndex, Decoder) {
        let mut index = self.index;
        let decoder = self.decoder;
        let complete = self.fed == self.seg_size && decoder.end_of_wal().is_none();
        index.end_of_wal = (!complete).then(|| decoder.complete_up_to());
        index.continued_record = if complete {
            decoder.pending_record()
        } else {
            None
        };
        index.skipped_continuation = decoder.skipped_bytes() - self.skipped_before;
        index.system_identifier = decoder.system_identifier();
        (index, decoder)
    }
}

/// Indexes one whole (or partial) segment at once; see [`SegmentIndexer`].
/// Returns the index and the decoder to pass on to the next segment.
pub fn index_segment(
    bytes: &[u8],
    segment: Segment,
    seg_size: u64,
    carry: Option<Decoder>,
) -> Result<(SegmentIndex, Decoder), DecodeError> {
    let mut indexer = SegmentIndexer::new(segment, seg_size, carry)?;
    indexer.feed(bytes)?;
    Ok(indexer.finish())
}
