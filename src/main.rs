//! pitr: keeps PostgreSQL and SQLite databases recoverable to any second.
fn main() {}
