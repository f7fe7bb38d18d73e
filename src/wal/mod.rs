//! WAL: positions and segment names (`lsn`), and — with the WAL streaming
//! issue — the physical replication client, segment assembly and the record
//! decoder.

mod lsn;

pub use lsn::{Lsn, ParseLsnError, Segment, history_file_name};
