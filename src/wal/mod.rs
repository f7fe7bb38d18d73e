//! WAL: positions and segment names (`lsn`), the record decoder (`decode`)
//! and the per-segment index the restore planner reads (`index`); with the
//! WAL streaming issue, the physical replication client and segment assembly.

pub mod decode;
mod index;
mod lsn;

pub use decode::{DecodeError, DecodeErrorKind, Decoder, Record, RecordKind, valid_segment_size};
pub use index::{RestorePoint, SegmentIndex, SegmentIndexer, XactTimes, index_segment};
pub use lsn::{Lsn, ParseLsnError, Segment, history_file_name};
