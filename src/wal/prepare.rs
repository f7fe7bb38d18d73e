//! Preparing streamed WAL for the repository, off the async runtime.
//!
//! One blocking task per streaming session takes the open segment's chunks
//! in order as the [`Assembler`](super::Assembler) completes them and, for
//! each, computes its chunk id, looks it up in the catalog, compresses it when
//! new, and decodes it (every record's CRC-32C, invariant 2; the segment
//! index). Every byte is thus processed once: a partial costs its tail chunk
//! and a manifest, the complete segment its last chunk and a manifest, where
//! storing the open segment's bytes again would hash, look up and decode the
//! whole segment once per partial.
//!
//! The task hands back [`Ready`] items, in WAL order: a complete segment when
//! its last chunk arrived, a partial when asked ([`Job::Cut`]). The streamer
//! commits them one at a time, in order, and acknowledges each one's end only
//! after its commit returned (invariant 1). An item refers to the chunks of
//! the items before it by id, so it must not be committed unless those were:
//! a failed commit ends the session, and with it this task.
//!
//! Memory (invariant 7): the jobs queued (bounded by the channel), the
//! compressed chunks of the open segment not yet handed back (about a tenth of
//! a segment), the decoder's record in progress and one zstd context.

use tokio::sync::mpsc;

use super::assemble::Piece;
use super::decode::{DecodeError, Decoder};
use super::index::{SegmentIndex, SegmentIndexer};
use super::store::WAL_CHUNK;
use super::stream::StreamError;
use crate::pg::{Lsn, Segment, WalFormat};
use crate::repo::{ChunkPreparer, PreparedChunk, Repository};

/// Chunks queued for the task at most: 2 MiB of WAL.
const JOBS_QUEUED: usize = 16;

/// Items prepared ahead of the one being committed.
const READY_QUEUED: usize = 2;

/// Work for the preparing task, in WAL order.
#[derive(Debug)]
pub(super) enum Job {
    /// The open segment's next whole chunk.
    Chunk(Piece),
    /// Hand back the open segment's bytes up to `end` as a partial: its
    /// whole chunks so far, then `tail` (the open chunk's bytes; `None` when
    /// `end` is a chunk boundary).
    Cut {
        /// Where the partial ends.
        end: Lsn,
        /// The bytes after the last whole chunk.
        tail: Option<Piece>,
    },
}

/// An item to store, with everything prepared.
#[derive(Debug)]
pub(super) struct Ready {
    /// The segment.
    pub segment: Segment,
    /// Whether this is a partial (else the complete segment).
    pub partial: bool,
    /// The position after its last byte.
    pub end: Lsn,
    /// Its chunks in order; those stored by earlier items carry only ids.
    pub chunks: Vec<PreparedChunk>,
    /// Its index; `None` for a partial that does not decode (best effort:
    /// the complete segment is checked strictly).
    pub index: Option<SegmentIndex>,
}

/// The streamer's end of the preparing task.
#[derive(Debug)]
pub(super) struct Preparer {
    /// Jobs in.
    pub jobs: mpsc::Sender<Job>,
    /// Items out; closed after an error or when `jobs` closed and all
    /// was handed back.
    pub ready: mpsc::Receiver<Result<Ready, StreamError>>,
    task: tokio::task::JoinHandle<()>,
}

impl Preparer {
    /// Starts the task for WAL from the start of `first` on, written by the
    /// major of `format` (the server's; a page of another major fails the
    /// segment, invariant 2). Without a carried decoder the first segment's
    /// head that finishes a record begun earlier is passed over unchecked, as
    /// before any session's first segment.
    pub fn start(
        repo: &Repository,
        seg_size: u64,
        first: Segment,
        format: &'static WalFormat,
    ) -> Result<Preparer, StreamError> {
        let chunker = repo.chunk_preparer()?;
        // A fresh decoder at the segment's start, carried in only to say
        // which major's WAL to expect.
        let decoder =
            Decoder::new(first.timeline, seg_size, first.start(seg_size)).with_format(format);
        let open = OpenSegment::new(first, seg_size, Some(decoder))?;
        let (jobs, jobs_rx) = mpsc::channel(JOBS_QUEUED);
        let (ready_tx, ready) = mpsc::channel(READY_QUEUED);
        let mut worker = Worker {
            chunker,
            seg_size,
            open,
        };
        let task = tokio::task::spawn_blocking(move || worker.run(jobs_rx, ready_tx));
        Ok(Preparer { jobs, ready, task })
    }

    /// The next item, or `None` once the task ended after its last one.
    /// A panic in the task is resumed here.
    pub async fn next(&mut self) -> Option<Result<Ready, StreamError>> {
        match self.ready.recv().await {
            Some(item) => Some(item),
            None => {
                if let Err(e) = (&mut self.task).await
                    && e.is_panic()
                {
                    std::panic::resume_unwind(e.into_panic());
                }
                None
            }
        }
    }
}

struct Worker {
    chunker: ChunkPreparer,
    seg_size: u64,
    open: OpenSegment,
}

impl Worker {
    fn run(
        &mut self,
        mut jobs: mpsc::Receiver<Job>,
        ready: mpsc::Sender<Result<Ready, StreamError>>,
    ) {
        while let Some(job) = jobs.blocking_recv() {
            let out = match self.handle(job) {
                Ok(None) => continue,
                Ok(Some(item)) => Ok(item),
                Err(e) => Err(e),
            };
            let failed = out.is_err();
            // A closed receiver: the session ended; so does the task.
            if ready.blocking_send(out).is_err() || failed {
                return;
            }
        }
    }

    fn handle(&mut self, job: Job) -> Result<Option<Ready>, StreamError> {
        match job {
            Job::Chunk(piece) => {
                let covered = self.open.covered();
                if piece.segment != self.open.segment || piece.offset != covered {
                    return Err(self.out_of_order(&piece));
                }
                let prepared = self.chunker.prepare(&piece.bytes)?;
                self.open.feed(&piece.bytes);
                self.open.chunks.push(prepared);
                if !piece.ends_segment(self.seg_size) {
                    return Ok(None);
                }
                let next = self.open.segment.next();
                let placeholder = OpenSegment::new(next, self.seg_size, None)?;
                let mut done = std::mem::replace(&mut self.open, placeholder);
                let chunks = done.hand_out();
                let (index, decoder) = done.indexer?.finish();
                // The decoder goes on: the next segment's first record may
                // begin in this one.
                self.open = OpenSegment::new(next, self.seg_size, Some(decoder))?;
                Ok(Some(Ready {
                    segment: done.segment,
                    partial: false,
                    end: Lsn(done.segment.start(self.seg_size).0 + self.seg_size),
                    chunks,
                    index: Some(index),
                }))
            }
            Job::Cut { end, tail } => {
                let start = self.open.segment.start(self.seg_size).0;
                let covered = self.open.covered();
                let tail_len = tail.as_ref().map_or(0, |t| t.bytes.len() as u64);
                if let Some(t) = &tail
                    && (t.segment != self.open.segment || t.offset != covered)
                {
                    return Err(self.out_of_order(t));
                }
                if Lsn(start + covered + tail_len) != end {
                    return Err(StreamError::Gap(super::GapError {
                        timeline: self.open.segment.timeline,
                        expected: Lsn(start + covered + tail_len),
                        got: end,
                    }));
                }
                let mut chunks = self.open.hand_out();
                let index = match &tail {
                    Some(t) => {
                        chunks.push(self.chunker.prepare(&t.bytes)?);
                        self.open.index_with(&t.bytes)
                    }
                    None => self.open.index_with(&[]),
                };
                Ok(Some(Ready {
                    segment: self.open.segment,
                    partial: true,
                    end,
                    chunks,
                    index,
                }))
            }
        }
    }

    /// A piece that does not continue the open segment: the streamer's bug,
    /// reported as the gap it would make rather than stored.
    fn out_of_order(&self, piece: &Piece) -> StreamError {
        StreamError::Gap(super::GapError {
            timeline: self.open.segment.timeline,
            expected: Lsn(self.open.segment.start(self.seg_size).0 + self.open.covered()),
            got: Lsn(piece.segment.start(self.seg_size).0 + piece.offset),
        })
    }
}

/// The segment being prepared.
struct OpenSegment {
    segment: Segment,
    /// Its whole chunks so far, in order.
    chunks: Vec<PreparedChunk>,
    /// How many of `chunks` were handed back in an item already: those
    /// carry only their ids from then on.
    handed: usize,
    /// The decoder, fed every whole chunk; the first error it met, which
    /// fails the complete segment (invariant 2).
    indexer: Result<SegmentIndexer, DecodeError>,
}

impl OpenSegment {
    fn new(
        segment: Segment,
        seg_size: u64,
        carry: Option<Decoder>,
    ) -> Result<OpenSegment, StreamError> {
        Ok(OpenSegment {
            segment,
            chunks: Vec::with_capacity((seg_size / WAL_CHUNK as u64) as usize),
            handed: 0,
            indexer: Ok(SegmentIndexer::new(segment, seg_size, carry)?),
        })
    }

    /// Bytes of the segment in whole chunks.
    fn covered(&self) -> u64 {
        (self.chunks.len() * WAL_CHUNK) as u64
    }

    fn feed(&mut self, bytes: &[u8]) {
        if let Ok(indexer) = &mut self.indexer
            && let Err(e) = indexer.feed(bytes)
        {
            self.indexer = Err(e);
        }
    }

    /// The whole chunks for an item: the new ones with their compressed
    /// bytes (moved out), the ones handed back before by id.
    fn hand_out(&mut self) -> Vec<PreparedChunk> {
        let handed = self.handed;
        self.handed = self.chunks.len();
        self.chunks
            .iter_mut()
            .enumerate()
            .map(|(i, c)| {
                if i < handed {
                    c.stored()
                } else {
                    std::mem::replace(c, c.stored())
                }
            })
            .collect()
    }

    /// The index of the whole chunks and then `tail`, leaving the decoder
    /// where it was (the tail's chunk will come again, whole).
    fn index_with(&self, tail: &[u8]) -> Option<SegmentIndex> {
        let indexer = self
            .indexer
            .as_ref()
            .inspect_err(|e| tracing::debug!(error = %e, "partial segment not indexed"))
            .ok()?;
        let mut indexer = indexer.clone();
        indexer
            .feed(tail)
            .inspect_err(|e| tracing::debug!(error = %e, "partial segment not indexed"))
            .ok()?;
        Some(indexer.finish().0)
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    const SEG: u64 = 1 << 20;

    async fn repo(dir: &std::path::Path) -> Repository {
        crate::repo::test_repository(dir).await
    }

    /// Segment 3 of a cluster whose pages carry `magic`: a long page
    /// header, then no WAL (zeros).
    fn segment_bytes(magic: u16) -> Vec<u8> {
        let mut bytes = vec![0; SEG as usize];
        let mut h = Vec::new();
        h.extend_from_slice(&magic.to_le_bytes());
        h.extend_from_slice(&0x0002u16.to_le_bytes());
        h.extend_from_slice(&1u32.to_le_bytes());
        h.extend_from_slice(&(3 * SEG).to_le_bytes());
        h.extend_from_slice(&[0; 8]);
        h.extend_from_slice(&42u64.to_le_bytes());
        h.extend_from_slice(&(SEG as u32).to_le_bytes());
        h.extend_from_slice(&8192u32.to_le_bytes());
        bytes[..h.len()].copy_from_slice(&h);
        bytes
    }

    /// What the preparer makes of a whole segment written with `magic`,
    /// streamed from a server of `major`.
    async fn prepare(major: u32, magic: u16) -> Result<Ready, StreamError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = repo(dir.path()).await;
        let first = Segment { timeline: 1, no: 3 };
        let format = WalFormat::of_major(major).expect("supported");
        let mut preparer = Preparer::start(&repo, SEG, first, format).expect("start");
        for (i, chunk) in segment_bytes(magic).chunks(WAL_CHUNK).enumerate() {
            let piece = Piece {
                segment: first,
                offset: (i * WAL_CHUNK) as u64,
                bytes: chunk.to_vec(),
            };
            preparer.jobs.send(Job::Chunk(piece)).await.expect("send");
        }
        preparer.next().await.expect("an item")
    }

    #[tokio::test]
    async fn a_segment_of_another_major_than_the_servers_fails() {
        let ready = prepare(14, 0xD10D)
            .await
            .expect("14's WAL from a 14 server");
        assert_eq!(ready.segment, Segment { timeline: 1, no: 3 });
        assert!(!ready.partial);
        let Err(StreamError::Decode(e)) = prepare(15, 0xD10D).await else {
            panic!("14's WAL from a 15 server was taken");
        };
        assert!(
            matches!(
                e.kind,
                crate::wal::DecodeErrorKind::MajorMismatch {
                    found_major: Some(14),
                    expected_major: 15,
                    ..
                }
            ),
            "{e}"
        );
    }
}
