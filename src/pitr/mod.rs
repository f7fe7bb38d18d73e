//! Restore planning and execution, `wal-fetch`. Arrives with the PITR issue.
