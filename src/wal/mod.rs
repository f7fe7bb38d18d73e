//! The physical replication client and WAL segment assembly. Arrives with the WAL streaming issue.
