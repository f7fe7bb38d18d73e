//! The WAL record decoder: WAL bytes of PostgreSQL 14 to 18 in, CRC-checked
//! records out (invariant 2). What differs between majors is data, one
//! [`WalFormat`] per major (see `format`); a decoder reads one major's WAL,
//! given or learnt from the first page header.
//!
//! [`Decoder`] is a streaming state machine: feed it the WAL bytes of one
//! timeline in order, in pieces of any size, as they arrive from the server or
//! from the repository, and it returns each record once its last byte arrived
//! and its CRC-32C matched. Page headers are checked on the way (magic, page
//! address, continuation lengths); records span pages and segments; the
//! decoder holds only the record in progress, and only its first few KiB
//! (invariant 7).
//!
//! WAL ends in one of two ways inside a segment: a switch record, after which
//! the rest of the segment is zeros, or zeros where the next record would
//! start (a segment the server has not finished). Both are normal; anything
//! else that is not a valid record is a [`DecodeError`] naming the segment and
//! the position.

mod blocks;
mod error;
mod page;
mod partial;
mod record;
mod stream;

use crate::pg::{Lsn, Segment, WalFormat};
#[cfg(test)]
mod tests;

use std::fmt;

pub use error::{DecodeError, DecodeErrorKind};
pub use record::{Record, RecordKind};

use page::{LONG_HEADER, WAL_PAGE_SIZE};
use partial::Partial;

/// Records start on `MAXALIGN` boundaries: 8 bytes on every platform
/// PostgreSQL builds for today.
const MAXALIGN: u64 = 8;

/// Zeros to compare against: `==` on slices is a memcmp, fast even in debug
/// builds where the tests decode hundreds of MiB.
static ZEROS: [u8; WAL_PAGE_SIZE as usize] = [0; WAL_PAGE_SIZE as usize];

/// Whether `seg_size` is a WAL segment size PostgreSQL allows: a power of two
/// from 1 MiB to 1 GiB (`IsValidWalSegSize`).
pub fn valid_segment_size(seg_size: u64) -> bool {
    seg_size.is_power_of_two() && ((1 << 20)..=(1 << 30)).contains(&seg_size)
}

/// Decodes the WAL of one timeline from a starting position on; see the
/// module documentation.
///
/// Cloning copies the decoding state, record in progress included.
#[derive(Clone)]
pub struct Decoder {
    timeline: u32,
    seg_size: u64,
    /// The position of the next byte to be fed.
    pos: Lsn,
    state: State,
    /// The page header being read, when `header_len > 0`.
    header: [u8; LONG_HEADER],
    header_len: usize,
    /// Where the last record started: the next one's back link must say so.
    prev: Option<Lsn>,
    /// The end of the last record.
    last_end: Option<Lsn>,
    /// The highest timeline seen on a page: it never goes down.
    page_timeline: u32,
    /// The cluster the WAL belongs to, from the first long page header (or
    /// given by the caller).
    system_identifier: Option<u64>,
    /// A record that spanned pages and was abandoned because the next page
    /// carries `XLP_FIRST_IS_OVERWRITE_CONTRECORD`: the next record must be
    /// the `XLOG_OVERWRITE_CONTRECORD` naming it.
    overwritten: Option<Lsn>,
    /// Bytes at the start that continue a record begun before `start`: no
    /// decoder saw that record's beginning, so they were not checked.
    skipped: u64,
    /// The first error: a failed decoder stays failed.
    failed: Option<DecodeError>,
    /// The major whose WAL this is: given, or learnt from the first page
    /// header; a page of another major is an error.
    format: Option<&'static WalFormat>,
}

#[derive(Clone, Debug)]
enum State {
    /// At the page boundary decoding started from: the page header says
    /// whether the page begins with the tail of an earlier record.
    Start,
    /// Passing over the tail of a record begun before decoding started.
    SkipContinuation { remaining: u32 },
    /// Between records: the next one starts at the next 8-byte boundary.
    Between,
    /// Inside a record.
    InRecord(Partial),
    /// After a switch record: zeros up to the end of the segment.
    AfterSwitch,
    /// Zeros where a record or page should be: the WAL ends at `at`, and only
    /// zeros may follow.
    EndOfWal { at: Lsn },
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("timeline", &self.timeline)
            .field("position", &self.pos.to_string())
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Decoder {
    /// A decoder for WAL of `timeline` with `seg_size`-byte segments, whose
    /// first byte fed will be the one at `start`.
    ///
    /// `start` is either a page boundary (a segment's start, typically), where
    /// the tail of a record begun earlier is passed over unchecked and counted
    /// in [`Decoder::skipped_bytes`], as `pg_waldump` does; or the start of a
    /// record. Anything not 8-byte aligned fails on the first feed.
    ///
    /// # Panics
    ///
    /// If `seg_size` is not a valid segment size (see
    /// [`valid_segment_size`]): the caller checks it where it learns it.
    pub fn new(timeline: u32, seg_size: u64, start: Lsn) -> Decoder {
        assert!(
            valid_segment_size(seg_size),
            "{seg_size} is not a WAL segment size (a power of two from 1 MiB to 1 GiB)"
        );
        let state = if start.0 % WAL_PAGE_SIZE == 0 {
            State::Start
        } else {
            State::Between
        };
        let mut decoder = Decoder {
            timeline,
            seg_size,
            pos: start,
            state,
            header: [0; LONG_HEADER],
            header_len: 0,
            prev: None,
            last_end: None,
            page_timeline: 0,
            system_identifier: None,
            overwritten: None,
            skipped: 0,
            failed: None,
            format: None,
        };
        if start.0 % MAXALIGN != 0 {
            decoder.failed = Some(decoder.error(start, DecodeErrorKind::Misaligned));
        }
        decoder
    }

    /// Expects the WAL to belong to the cluster with this system identifier
    /// (`IDENTIFY_SYSTEM`, `pg_control`): a long page header naming another
    /// one is an error.
    pub fn with_system_identifier(mut self, system_identifier: u64) -> Decoder {
        self.system_identifier = Some(system_identifier);
        self
    }

    /// Expects the WAL of this major (the server's, or the one recorded with
    /// stored WAL): a page of another major is an error. Without it the
    /// first page header decides, and every later page must agree.
    pub fn with_format(mut self, format: &'static WalFormat) -> Decoder {
        self.format = Some(format);
        self
    }

    /// The major whose WAL this is, once given or learnt.
    pub fn format(&self) -> Option<&'static WalFormat> {
        self.format
    }

    /// Decodes `bytes`, the WAL that follows what was fed before, and returns
    /// the records completed by them.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Record>, DecodeError> {
        let mut records = Vec::new();
        self.feed_with(bytes, |record| records.push(record))?;
        Ok(records)
    }

    /// Like [`Decoder::feed`], handing each record to `emit` as it completes
    /// instead of collecting them: a whole segment's records never need to be
    /// in memory at once.
    pub fn feed_with(
        &mut self,
        bytes: &[u8],
        mut emit: impl FnMut(Record),
    ) -> Result<(), DecodeError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            match self.step(rest, &mut emit) {
                Ok(taken) => {
                    rest = &rest[taken..];
                    self.pos = Lsn(self.pos.0 + taken as u64);
                }
                Err(error) => {
                    self.failed = Some(error.clone());
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    /// The position of the next byte to feed.
    pub fn position(&self) -> Lsn {
        self.pos
    }

    /// The timeline the decoder reads.
    pub fn timeline(&self) -> u32 {
        self.timeline
    }

    /// Where the WAL ended, if zeros were found where a record or a page
    /// should be: the start of the record that is missing (or was cut off).
    pub fn end_of_wal(&self) -> Option<Lsn> {
        match self.state {
            State::EndOfWal { at } => Some(at),
            _ => None,
        }
    }

    /// How far the WAL fed so far is complete: where the record in progress
    /// started, or where the next one will, or [`Decoder::end_of_wal`].
    pub fn complete_up_to(&self) -> Lsn {
        match &self.state {
            State::EndOfWal { at } => *at,
            State::InRecord(partial) => partial.start,
            State::AfterSwitch => next_segment(self.pos, self.seg_size),
            State::Start | State::SkipContinuation { .. } => self.pos,
            State::Between if self.header_len > 0 => Lsn(self.pos.0 - self.header_len as u64),
            State::Between => Lsn(self.pos.0.next_multiple_of(MAXALIGN)),
        }
    }

    /// Where the record in progress started, when one is.
    pub fn pending_record(&self) -> Option<Lsn> {
        match &self.state {
            State::InRecord(partial) => Some(partial.start),
            _ => None,
        }
    }

    /// The end of the last record decoded.
    pub fn last_record_end(&self) -> Option<Lsn> {
        self.last_end
    }

    /// The system identifier of the cluster that wrote the WAL, once a long
    /// page header was read (or as given).
    pub fn system_identifier(&self) -> Option<u64> {
        self.system_identifier
    }

    /// How many bytes at the start belonged to a record begun before the
    /// starting position, and were passed over without a check.
    pub fn skipped_bytes(&self) -> u64 {
        self.skipped
    }

    /// Continues decoding in `segment` (whose first byte is the next to be
    /// fed), which may be on a later timeline: the first segment of a new
    /// timeline starts with its parent's WAL.
    pub(crate) fn enter_segment(&mut self, segment: Segment) -> Result<(), DecodeError> {
        let start = segment.start(self.seg_size);
        if self.pos != start {
            return Err(self.error(start, DecodeErrorKind::Gap { expected: self.pos }));
        }
        if segment.timeline < self.timeline {
            return Err(self.error(
                start,
                DecodeErrorKind::PageHeader {
                    detail: format!(
                        "timeline {} follows WAL of the later timeline {}",
                        segment.timeline, self.timeline
                    ),
                },
            ));
        }
        self.timeline = segment.timeline;
        Ok(())
    }

    /// An error at `lsn`, naming the segment holding it.
    fn error(&self, lsn: Lsn, kind: DecodeErrorKind) -> DecodeError {
        DecodeError {
            segment: Segment::containing(self.timeline, lsn, self.seg_size)
                .file_name(self.seg_size),
            lsn,
            kind,
        }
    }
}

/// The start of the segment after the one holding `lsn`.
fn next_segment(lsn: Lsn, seg_size: u64) -> Lsn {
    Lsn(lsn.segment_start(seg_size).0 + seg_size)
}

/// Little-endian integers at fixed offsets of a buffer whose length the caller
/// checked; a short buffer reads as zeros rather than panicking.
pub(super) fn le_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(array(bytes, at))
}

/// See [`le_u16`].
pub(super) fn le_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(array(bytes, at))
}

/// See [`le_u16`].
pub(super) fn le_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(array(bytes, at))
}

fn array<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0; N];
    if let Some(src) = bytes.get(at..at + N) {
        out.copy_from_slice(src);
    }
    out
}
