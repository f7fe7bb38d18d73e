//! The physical replication connection: what `pg_receivewal` speaks, on
//! `postgres-protocol` over tokio (mainline `tokio-postgres` cannot open
//! replication connections).
//!
//! - [`ConnInfo`]: libpq conninfo strings and `postgres://` URLs, with the
//!   `PG*` environment variables and `~/.pgpass`;
//! - [`ReplicationClient::connect`]: TCP or unix socket, TLS per `sslmode`,
//!   startup with `replication=true`, trust / password / md5 /
//!   SCRAM-SHA-256 authentication;
//! - replication commands: [`ReplicationClient::identify_system`],
//!   [`ReplicationClient::read_replication_slot`],
//!   [`ReplicationClient::create_physical_slot`], ..., and
//!   [`ReplicationClient::simple_query`] under them;
//! - streaming: [`ReplicationClient::start_replication`] →
//!   [`ReplicationStream`]; [`ReplicationClient::simple_query_copy_out`] →
//!   [`CopyOutStream`] for `BASE_BACKUP`;
//!   [`ReplicationClient::simple_query_copy_in`] for `UPLOAD_MANIFEST`.
//!
//! Every failure is a [`ConnError`] that says what to do; passwords never
//! appear in `Debug`, `Display` or errors.

#![warn(missing_docs)]

mod binding;
mod client;
mod conninfo;
pub(crate) mod copy;
mod copy_in;
mod copy_out;
mod error;
#[cfg(test)]
mod fake;
mod ops;
mod pgpass;
mod resolve;
mod tls;
mod url;
pub(crate) mod wire;

#[cfg(test)]
mod impostor;
#[cfg(test)]
mod tests;

pub use client::{PgSocket, ReplicationClient, open_socket};
pub use conninfo::{
    ChannelBindingMode, ConnInfo, ConnInfoError, DEFAULT_APPLICATION_NAME, DEFAULT_HOST,
    DEFAULT_PORT, DEFAULT_SOCKET_DIR, Host, Password, PasswordSource, SslMode,
};
pub use copy::{ReplMessage, ReplicationStream, TimelineEnd, pg_now_micros};
pub use copy_out::{CopyOutEvent, CopyOutStream};
pub use error::{ConnError, ServerError};
pub use ops::{Row, SlotInfo, SystemInfo, TimelineHistory};
pub use resolve::{Environment, ProcessEnv};
