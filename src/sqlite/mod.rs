//! The SQLite page-diff watcher (docs/SQLITE.md); restoring a capture is
//! `restore::sqlite`.
//!
//! - `wal`: reading the WAL file (salts, checksum chain) from outside SQLite;
//! - `capture`: one consistent capture in a short read transaction;
//! - `pageset`: the stored layout of a capture, page hashes, the checksum;
//! - `store`: item names and attributes in the repository;
//! - `watch`: the loop (file events + poll) that captures and stores.

mod capture;
pub mod pageset;
pub mod store;
pub mod wal;
mod watch;

pub use capture::{CaptureError, Capturer, Mode, Spooled, Stats};
pub use watch::{Step, StepError, WatchError, WatchOptions, Watcher, watch};
