//! Segment assembly: streamed WAL bytes (XLogData payloads) in, whole
//! segments out, byte-identical to the server's `pg_wal` files.
//!
//! The assembler only accepts bytes that continue exactly where the previous
//! ones ended (invariant 2: a gap is an error, never a skip), and hands them
//! on a chunk at a time, so it holds one chunk whatever the backlog
//! (invariant 7).

use crate::pg::{Lsn, Segment};

/// Streamed bytes did not continue where the previous ones ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "WAL gap on timeline {timeline}: expected data at {expected}, the server sent data at {got}. \
     pitr never skips WAL; restart streaming from the last stored position"
)]
pub struct GapError {
    /// The timeline being streamed.
    pub timeline: u32,
    /// Where the next byte was expected.
    pub expected: Lsn,
    /// Where the received bytes start.
    pub got: Lsn,
}

/// A piece of a segment, ready to store: one whole chunk, or (from
/// [`Assembler::tail`]) the open chunk's bytes so far.
#[derive(Debug)]
pub struct Piece {
    /// The segment it belongs to.
    pub segment: Segment,
    /// Where in the segment it starts: a multiple of the chunk size.
    pub offset: u64,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

impl Piece {
    /// The position after its last byte.
    pub fn end(&self, seg_size: u64) -> Lsn {
        Lsn(self.segment.start(seg_size).0 + self.offset + self.bytes.len() as u64)
    }

    /// Whether it ends its segment.
    pub fn ends_segment(&self, seg_size: u64) -> bool {
        self.offset + self.bytes.len() as u64 == seg_size
    }
}

/// Cuts the streamed bytes of one timeline into chunks of its segments.
///
/// Only the open chunk is held: a segment is never in memory whole. Chunks
/// at fixed offsets are what the repository stores a WAL item as
/// (`Chunking::Fixed`), so the complete segment is exactly the concatenation
/// of its chunks, byte-identical to the server's file, and the chunks of a
/// partial are the complete segment's chunks but the last.
#[derive(Debug)]
pub struct Assembler {
    timeline: u32,
    seg_size: u64,
    chunk_size: usize,
    segment: Segment,
    /// Where the open chunk starts in `segment`.
    offset: u64,
    buf: Vec<u8>,
}

impl Assembler {
    /// An assembler expecting its first bytes at `start`, the beginning of a
    /// segment, cutting `chunk_size`-byte chunks.
    ///
    /// # Panics
    ///
    /// If `chunk_size` does not divide `seg_size`, or `start` is not a
    /// segment's start: the caller chooses both.
    pub fn new(timeline: u32, seg_size: u64, chunk_size: usize, start: Lsn) -> Assembler {
        assert!(
            chunk_size > 0 && seg_size % chunk_size as u64 == 0,
            "chunks of {chunk_size} bytes do not tile segments of {seg_size}"
        );
        assert_eq!(
            start.segment_offset(seg_size),
            0,
            "{start} is no segment start"
        );
        Assembler {
            timeline,
            seg_size,
            chunk_size,
            segment: Segment::containing(timeline, start, seg_size),
            offset: 0,
            buf: Vec::with_capacity(chunk_size),
        }
    }

    /// Where the next byte must start.
    pub fn position(&self) -> Lsn {
        Lsn(self.segment.start(self.seg_size).0 + self.offset + self.buf.len() as u64)
    }

    /// The timeline being assembled.
    pub fn timeline(&self) -> u32 {
        self.timeline
    }

    /// Appends bytes that start at `start`; returns the chunks they
    /// completed, in order.
    pub fn push(&mut self, start: Lsn, mut data: &[u8]) -> Result<Vec<Piece>, GapError> {
        if start != self.position() {
            return Err(GapError {
                timeline: self.timeline,
                expected: self.position(),
                got: start,
            });
        }
        let mut done = Vec::new();
        while !data.is_empty() {
            let room = self.chunk_size - self.buf.len();
            let n = room.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == self.chunk_size {
                let bytes = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk_size));
                done.push(Piece {
                    segment: self.segment,
                    offset: self.offset,
                    bytes,
                });
                self.offset += self.chunk_size as u64;
                if self.offset == self.seg_size {
                    self.segment = self.segment.next();
                    self.offset = 0;
                }
            }
        }
        Ok(done)
    }

    /// A copy of the open chunk's bytes so far, when it holds any: the tail
    /// a partial upload stores after the segment's complete chunks.
    pub fn tail(&self) -> Option<Piece> {
        (!self.buf.is_empty()).then(|| Piece {
            segment: self.segment,
            offset: self.offset,
            bytes: self.buf.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 1 << 20;
    const CHUNK: usize = 128 << 10;

    fn bytes(from: u64, n: usize) -> Vec<u8> {
        (from..from + n as u64)
            .map(|i| (i * 7 % 251) as u8)
            .collect()
    }

    #[test]
    fn chunks_come_out_whole_and_in_order_and_tile_segments() {
        let mut a = Assembler::new(1, SEG, CHUNK, Lsn(SEG));
        let mut out = Vec::new();
        let mut pos = SEG;
        // Uneven pieces crossing chunk and segment boundaries, as XLogData
        // arrives.
        for n in [1000usize, 700_000, 5, 600_000, 1_200_000] {
            out.extend(a.push(Lsn(pos), &bytes(pos, n)).expect("contiguous"));
            pos += n as u64;
        }
        assert_eq!(a.position(), Lsn(pos));
        let mut at = SEG;
        for c in &out {
            assert_eq!(c.segment.start(SEG).0 + c.offset, at, "in order, no gap");
            assert_eq!(c.bytes, bytes(at, CHUNK));
            assert_eq!(c.ends_segment(SEG), (at + CHUNK as u64) % SEG == 0);
            at += CHUNK as u64;
            assert_eq!(c.end(SEG), Lsn(at));
        }
        // Two whole segments (1 and 2), and segment 3 so far.
        let segments: Vec<u64> = out.iter().map(|c| c.segment.no).collect();
        assert_eq!(segments.iter().filter(|&&s| s == 1).count(), 8);
        assert_eq!(segments.iter().filter(|&&s| s == 2).count(), 8);
        let tail = a.tail().expect("an open chunk");
        assert_eq!(tail.segment.no, 3);
        assert_eq!(tail.segment.start(SEG).0 + tail.offset, at);
        assert_eq!(tail.bytes, bytes(at, (pos - at) as usize));
        assert_eq!(tail.end(SEG), Lsn(pos));
    }

    #[test]
    fn a_gap_or_overlap_is_an_error() {
        let mut a = Assembler::new(3, SEG, CHUNK, Lsn(0));
        a.push(Lsn(0), &[1; 100]).expect("first");
        let e = a.push(Lsn(200), &[1; 10]).expect_err("gap");
        assert_eq!((e.expected, e.got, e.timeline), (Lsn(100), Lsn(200), 3));
        assert!(
            e.to_string().contains("0/64") && e.to_string().contains("0/C8"),
            "{e}"
        );
        a.push(Lsn(50), &[1; 10]).expect_err("overlap");
        assert_eq!(a.position(), Lsn(100), "a refused push changes nothing");
    }

    #[test]
    fn a_chunk_boundary_leaves_no_tail() {
        let mut a = Assembler::new(1, SEG, CHUNK, Lsn(0));
        let done = a.push(Lsn(0), &bytes(0, SEG as usize)).expect("continues");
        assert_eq!(done.len(), SEG as usize / CHUNK);
        assert!(done.last().expect("chunks").ends_segment(SEG));
        assert!(a.tail().is_none());
        assert_eq!(a.position(), Lsn(SEG));
    }
}
