//! Segment assembly: streamed WAL bytes (XLogData payloads) in, whole
//! segments out, byte-identical to the server's `pg_wal` files.
//!
//! The assembler only accepts bytes that continue exactly where the previous
//! ones ended (invariant 2: a gap is an error, never a skip). It holds one
//! segment buffer, reused, so memory stays at one segment whatever the
//! backlog (invariant 7).

use super::lsn::{Lsn, Segment};

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

/// A finished segment, ready to store.
#[derive(Debug)]
pub struct CompletedSegment {
    /// Which segment.
    pub segment: Segment,
    /// Its bytes: exactly one segment size.
    pub bytes: Vec<u8>,
}

/// Builds segments of one timeline from streamed bytes.
#[derive(Debug)]
pub struct Assembler {
    timeline: u32,
    seg_size: u64,
    segment: Segment,
    buf: Vec<u8>,
}

impl Assembler {
    /// An assembler expecting its first bytes at `start`, which may be in the
    /// middle of a segment only if `prefix` holds the segment's bytes before
    /// it (for resuming from a stored partial segment).
    pub fn new(timeline: u32, seg_size: u64, start: Lsn, prefix: Vec<u8>) -> Assembler {
        let segment = Segment::containing(timeline, start, seg_size);
        let mut buf = prefix;
        buf.reserve_exact(seg_size as usize - buf.len().min(seg_size as usize));
        debug_assert_eq!(buf.len() as u64, start.segment_offset(seg_size));
        Assembler {
            timeline,
            seg_size,
            segment,
            buf,
        }
    }

    /// Where the next byte must start.
    pub fn position(&self) -> Lsn {
        Lsn(self.segment.start(self.seg_size).0 + self.buf.len() as u64)
    }

    /// The timeline being assembled.
    pub fn timeline(&self) -> u32 {
        self.timeline
    }

    /// Appends bytes that start at `start`; returns the segments they
    /// completed, in order.
    pub fn push(&mut self, start: Lsn, mut data: &[u8]) -> Result<Vec<CompletedSegment>, GapError> {
        if start != self.position() {
            return Err(GapError {
                timeline: self.timeline,
                expected: self.position(),
                got: start,
            });
        }
        let mut done = Vec::new();
        while !data.is_empty() {
            let room = self.seg_size as usize - self.buf.len();
            let n = room.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() as u64 == self.seg_size {
                let next = Vec::with_capacity(self.seg_size as usize);
                done.push(CompletedSegment {
                    segment: self.segment,
                    bytes: std::mem::replace(&mut self.buf, next),
                });
                self.segment = self.segment.next();
            }
        }
        Ok(done)
    }

    /// The open segment and its bytes so far, when it holds any: what a
    /// partial upload stores.
    pub fn partial(&self) -> Option<(Segment, &[u8])> {
        (!self.buf.is_empty()).then_some((self.segment, &self.buf[..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 64 << 10;

    fn bytes(from: u64, n: usize) -> Vec<u8> {
        (from..from + n as u64)
            .map(|i| (i * 7 % 251) as u8)
            .collect()
    }

    #[test]
    fn segments_come_out_whole_and_in_order() {
        let mut a = Assembler::new(1, SEG, Lsn(SEG), Vec::new());
        let mut out = Vec::new();
        let mut pos = SEG;
        // Uneven pieces crossing segment boundaries, as XLogData arrives.
        for n in [1000usize, 70_000, 5, 60_000, 200_000] {
            out.extend(a.push(Lsn(pos), &bytes(pos, n)).expect("contiguous"));
            pos += n as u64;
        }
        assert_eq!(a.position(), Lsn(pos));
        let names: Vec<u64> = out.iter().map(|c| c.segment.no).collect();
        assert_eq!(names, vec![1, 2, 3, 4, 5]);
        for c in &out {
            assert_eq!(c.bytes, bytes(c.segment.no * SEG, SEG as usize));
        }
        let (seg, part) = a.partial().expect("a partial segment");
        assert_eq!(seg.no, 6);
        assert_eq!(part, &bytes(6 * SEG, (pos - 6 * SEG) as usize)[..]);
    }

    #[test]
    fn a_gap_or_overlap_is_an_error() {
        let mut a = Assembler::new(3, SEG, Lsn(0), Vec::new());
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
    fn resumes_from_a_stored_partial_prefix() {
        let prefix = bytes(SEG, 4096);
        let mut a = Assembler::new(1, SEG, Lsn(SEG + 4096), prefix);
        let rest = bytes(SEG + 4096, SEG as usize - 4096);
        let done = a.push(Lsn(SEG + 4096), &rest).expect("continues");
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].bytes, bytes(SEG, SEG as usize));
        assert!(a.partial().is_none());
    }
}
