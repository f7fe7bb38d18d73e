//! The SQLite page-diff watcher and SQLite restore. Arrives with the SQLite issue.
