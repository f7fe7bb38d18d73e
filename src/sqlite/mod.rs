//! The SQLite page-diff watcher and SQLite restore (docs/SQLITE.md).
//!
//! - `wal`: reading the WAL file (salts, checksum chain) from outside SQLite;
//! - `capture`: one consistent capture in a short read transaction;
//! - `pageset`: the stored layout of a capture, page hashes, the checksum;
//! - `store`: item names and attributes in the repository;
//! - `watch`: the loop (file events + poll) that captures and stores;
//! - `restore`: planning and executing `pitr restore --sqlite`.

mod capture;
pub mod pageset;
mod restore;
pub mod store;
pub mod wal;
mod watch;

pub use capture::{CaptureError, Capturer, Mode, Spooled, Stats};
pub use restore::{
    PlannedCapture, SqlitePlan, SqliteRestoreError, SqliteRestoreReport, SqliteWindow,
    file_checksum, integrity_check, plan, restore, window,
};
pub use watch::{Step, StepError, WatchError, WatchOptions, Watcher, watch};
