//! Packaging: `pitr export` for off-site copies, and the
//! deployment files under `deploy/` and the `Dockerfile`, checked against the
//! config the binary accepts.

mod deploy;
mod entrypoint;
mod export;
mod probe;
mod runbook;
mod w3;
