//! pitr keeps PostgreSQL and SQLite databases recoverable to any second of
//! their history. See `docs/` and the design card for the architecture: data
//! flows from the sources (`wal`, `basebackup`, `sqlite`) through the
//! repository format (`repo`) to the destinations (`ship`); `catalog` indexes
//! what is stored; `pitr` plans and runs restores.

pub mod alert;
pub mod basebackup;
pub mod beneath;
pub mod catalog;
pub mod config;
pub mod crashsafe;
#[doc(hidden)]
pub mod fuzz;
pub mod health;
pub mod listing;
pub mod pg;
pub mod pitr;
pub mod repo;
pub mod retention;
pub mod ship;
pub mod sidecar;
pub mod sqlite;
pub mod verify;
pub mod wal;
