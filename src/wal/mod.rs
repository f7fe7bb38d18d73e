//! WAL: positions and segment names (`lsn`), segment assembly from streamed
//! bytes (`assemble`), and — as the WAL streaming issue lands — the physical
//! replication client and the record decoder.

mod assemble;
mod lsn;
mod store;

pub use assemble::{Assembler, CompletedSegment, GapError};
pub use lsn::{Lsn, ParseLsnError, Segment, history_file_name};
pub use store::{StoredWal, WalAttrs, WalStore, WalStoreError};
