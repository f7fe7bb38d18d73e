//! Base backups over the replication protocol. Arrives with the base-backup issue.
