//! WAL, streamed from a server over `crate::pg`'s replication client:
//! segment assembly from streamed bytes (`assemble`), the record decoder
//! (`decode`, on each major's format from `crate::pg::FORMATS`), the
//! per-segment index the restore planner reads (`index`), timeline lineage
//! and where to resume (`history`), WAL as repository items (`store`), and
//! the streamer that ties them together (`stream`).

mod assemble;
pub mod decode;
mod history;
mod index;
mod prefetch;
mod prepare;
mod store;
mod stream;

pub use assemble::{Assembler, GapError, Piece};
pub use decode::{DecodeError, DecodeErrorKind, Decoder, Record, RecordKind, valid_segment_size};
pub use history::{HistoryError, Lineage, LineageEntry, Resume};
pub use index::{RestorePoint, SegmentIndex, SegmentIndexer, XactTimes, index_segment};
pub use prefetch::Prefetch;
pub use store::{
    KIND_HISTORY, KIND_PARTIAL, KIND_SEGMENT, StoredWal, WalAttrs, WalStore, WalStoreError,
    superseded_by,
};
pub use stream::{Ended, Link, Progress, StreamError, StreamOptions, stream, stream_once};
