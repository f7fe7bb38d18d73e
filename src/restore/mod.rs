//! Point-in-time restore, of PostgreSQL and of SQLite: the target
//! (`target`); for PostgreSQL the planner that turns a target into a base
//! backup and a WAL chain from the catalog alone (`plan`) and the execution
//! that stages a data directory, runs PostgreSQL's recovery on it and checks
//! where it stopped (`postgres`), serving it WAL over a private socket
//! (`serve`); for SQLite its plan and execution (`sqlite`); `export` copies
//! the newest restorable set out of the repository.

mod export;
mod plan;
mod postgres;
mod serve;
pub mod sqlite;
mod target;

pub use export::{ExportError, Selection, export, restorable_set};
pub use plan::{Plan, PlanError, PlannedBackup, Stop, WalFile, Window, plan, windows};
pub use postgres::{
    Reached, RestoreError, RestoreOptions, RestoreProgress, RestoreReport, restore,
};
pub use serve::fetch_client;
pub use target::{Target, TargetError, parse_time, pg_time};
