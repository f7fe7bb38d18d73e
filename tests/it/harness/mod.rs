//! What the integration tests share: throw-away servers and the helpers that
//! drive them.
//!
//! Every test starts its own servers (DESIGN.md, Testing): real binaries on
//! loopback, in a temp dir that disappears with the value that owns it.

// The harness serves tests that are still being written; a helper that no test
// calls yet is not an error.
#![allow(dead_code)]

pub mod pg;

pub use pg::{PgCluster, run_as_pg_user};
