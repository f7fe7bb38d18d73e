//! The integration tests: one binary, one module per area, sharing
//! `support` (throw-away PostgreSQL clusters and friends, a test
//! repository, the `pitr` binary, and `eventually` to wait for a
//! condition).

mod alert;
mod basebackup;
mod batch;
mod car;
mod cli;
mod disk_full;
mod fleet;
mod fleet_http;
mod golden;
mod incremental;
mod infisical;
mod infisical_source;
mod layers;
mod pack;
mod pg_harness;
mod pitr_restore;
mod read_order;
mod repo;
mod restore_trust;
mod retention;
mod s3;
mod schedule;
mod scrub;
mod sidecar;
mod snapshot;
mod spool_full;
mod sqlite;
mod state_dir;
mod storacha;
mod storacha_harness;
mod support;
mod verify;
mod versions;
mod wal_conn;
mod wal_decode;
mod wal_failover;
mod wal_fetch;
mod wal_kill;
mod wal_stream;
