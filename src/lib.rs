//! pitr keeps PostgreSQL and SQLite databases recoverable to any second of
//! their history. docs/ARCHITECTURE.md has the layers and the invariants:
//! data flows from the sources (`wal`, `basebackup`, `sqlite`, the
//! snapshot sources in `snapshot`) through the repository format (`repo`,
//! its catalog inside) to the destinations (`ship`); `restore` plans and
//! runs restores; `sidecar` runs it all; `wiring` builds the options of
//! `repo`, `ship` and the snapshot sources from the `config`.

pub mod backoff;
pub mod basebackup;
pub mod beneath;
pub mod config;
pub mod crashsafe;
pub mod cron;
pub mod fleet;
#[doc(hidden)]
pub mod fuzz;
pub mod https;
pub mod listing;
pub mod pg;
pub mod repo;
pub mod restore;
pub mod retention;
pub mod ship;
pub mod sidecar;
pub mod snapshot;
pub mod sqlite;
pub mod verify;
pub mod wal;
pub mod wiring;
