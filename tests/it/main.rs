//! The integration tests: one binary, one module per area.

mod harness;
mod pg_harness;
mod repo;
