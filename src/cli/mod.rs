//! The command line's commands, one module per command group.

pub(crate) mod cids;
pub(crate) mod demo;
pub(crate) mod export;
pub(crate) mod restore;
pub(crate) mod sqlite;
pub(crate) mod verify;
