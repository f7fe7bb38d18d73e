//! PostgreSQL servers, apart from the wire protocol: which directory holds
//! a major's server binaries, which OS user a server runs as when pitr runs
//! as root, and servers pitr starts itself on data it restored (isolated:
//! a private socket, no TCP, nothing that reaches production). Restore,
//! test restores and the demo all go through here, so a fix or a new place
//! to look applies to all of them.

mod backup;
mod bin;
mod server;
mod user;

pub use backup::{Checkpoint, ManifestChecksums};
pub use bin::{BinError, Looked, PgBin, data_dir_major, find, find_in, find_newest, major_of};
pub use server::{
    Postmaster, ServerStart, StartError, StopError, isolated_server_settings, start_isolated,
};
pub use user::{NoOsUser, server_owner};
