//! WAL: positions and segment names (`lsn`), the physical replication
//! client (`conn`), and — with the WAL streaming issue — segment assembly
//! and the record decoder.

pub mod conn;
mod lsn;

pub use conn::{ConnError, ConnInfo, ReplMessage, ReplicationClient, ReplicationStream};
pub use lsn::{Lsn, ParseLsnError, Segment, history_file_name};
