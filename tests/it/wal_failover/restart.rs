//! Server restart mid-stream: pitr reconnects with backoff and continues.
