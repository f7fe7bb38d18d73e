//! Snapshot sources: things pitr stores whole, on a schedule, beside the
//! continuous backups (docs/ARCHITECTURE.md, "What flows where"). Each
//! source produces the bytes of one snapshot; the repository deduplicates
//! them, so a source whose output did not change stores nothing new.

pub mod infisical;
