//! What can go wrong on a replication connection, each case with what to do.
//!
//! Server errors are classified by SQLSTATE (and, where PostgreSQL reuses a
//! code, by message) into the cases a caller acts on differently: retry
//! later ([`ConnError::is_transient`]) or stop and tell the operator.

use std::fmt;
use std::io;
use std::time::Duration;

use super::conninfo::{ConnInfoError, PasswordSource};

/// An `ErrorResponse` from the server.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerError {
    /// `ERROR`, `FATAL` or `PANIC`.
    pub severity: String,
    /// SQLSTATE, e.g. `28P01`.
    pub code: String,
    /// The primary message.
    pub message: String,
    /// `DETAIL`, if any.
    pub detail: Option<String>,
    /// `HINT`, if any.
    pub hint: Option<String>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} (SQLSTATE {})",
            self.severity, self.message, self.code
        )?;
        if let Some(d) = &self.detail {
            write!(f, "; detail: {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "; hint: {h}")?;
        }
        Ok(())
    }
}

/// A replication connection failed. Messages never contain a password.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The connection string is unusable.
    #[error(transparent)]
    ConnInfo(#[from] ConnInfoError),
    /// Nothing accepted the connection.
    #[error(
        "cannot connect to PostgreSQL at {target}: {source}; check that the server runs there \
         and that listen_addresses and port in postgresql.conf include it"
    )]
    Unreachable {
        /// `host:port` or socket path.
        target: String,
        /// The last connect error.
        source: io::Error,
    },
    /// `connect_timeout` passed before the connection was ready.
    #[error(
        "connecting to PostgreSQL at {target} took longer than connect_timeout ({}s): check \
         that the server runs there and that no firewall drops the connection",
        timeout.as_secs()
    )]
    Timeout {
        /// `host:port` or socket path.
        target: String,
        /// The limit.
        timeout: Duration,
    },
    /// The server runs a PostgreSQL major pitr does not support: refused
    /// at connect, and never retried (nothing changes by waiting).
    #[error(
        "PostgreSQL at {target} {}, a major pitr does not support: pitr streams WAL from and \
         backs up PostgreSQL {}. Point this [[postgres]] entry at a server of a supported \
         major (pg_upgrade moves a cluster to one), or back it up with its own tools",
        if version.is_empty() {
            "reported no server_version".to_owned()
        } else {
            format!("runs version {version}")
        },
        crate::pg::supported_majors()
    )]
    UnsupportedMajor {
        /// `host:port` or socket path.
        target: String,
        /// `server_version` as the server reported it (empty if it did not).
        version: String,
    },
    /// A read or write failed mid-conversation.
    #[error("connection to PostgreSQL at {target} failed: {source}")]
    Io {
        /// `host:port` or socket path.
        target: String,
        /// What the socket said.
        source: io::Error,
    },
    /// TLS could not be set up as `sslmode` asks.
    #[error("TLS with PostgreSQL at {target}: {reason}")]
    Tls {
        /// `host:port`.
        target: String,
        /// What failed and what to do.
        reason: String,
    },
    /// The server asked for a password and none was found.
    #[error(
        "PostgreSQL at {target} asks for a password for user {user:?} ({method}) and none is set: \
         add password=... to the connection string, set PGPASSWORD, or add a line \
         host:port:db:{user}:password to ~/.pgpass (mode 0600)"
    )]
    NoPassword {
        /// `host:port`.
        target: String,
        /// The role.
        user: String,
        /// The server's method: `md5`, `SCRAM-SHA-256`, `password`.
        method: &'static str,
    },
    /// The server's side of authentication cannot be trusted, or pitr
    /// refuses to expose the password: an impostor, or a setting to fix.
    #[error("authentication with PostgreSQL at {target} refused by pitr: {reason}")]
    Untrusted {
        /// `host:port` or socket path.
        target: String,
        /// What happened and what to do.
        reason: String,
    },
    /// The server rejected the password (28P01).
    #[error(
        "PostgreSQL at {target} rejected the password of user {user:?} (from {password_source}): \
         check the password, or that the role exists and may log in; server said: {server}"
    )]
    PasswordRejected {
        /// `host:port`.
        target: String,
        /// The role.
        user: String,
        /// Where the password came from.
        password_source: PasswordSource,
        /// The server's message.
        server: Box<ServerError>,
    },
    /// pg_hba.conf has no line allowing this replication connection (28000).
    #[error(
        "PostgreSQL at {target} refuses replication connections for user {user:?}: add a line \
         `host replication {user} <client address>/32 scram-sha-256` (or `local replication \
         {user} scram-sha-256` for a socket) to pg_hba.conf and reload \
         (SELECT pg_reload_conf()); server said: {server}"
    )]
    NoHbaEntry {
        /// `host:port`.
        target: String,
        /// The role.
        user: String,
        /// The server's message.
        server: Box<ServerError>,
    },
    /// The role lacks the REPLICATION attribute (42501).
    #[error(
        "user {user:?} may not open replication connections: run `ALTER ROLE {user} REPLICATION` \
         as a superuser; server said: {server}"
    )]
    NoReplicationPrivilege {
        /// The role.
        user: String,
        /// The server's message.
        server: Box<ServerError>,
    },
    /// Every WAL sender is busy, or `max_wal_senders` is 0 (53300).
    #[error(
        "PostgreSQL at {target} has no free WAL sender: raise max_wal_senders in \
         postgresql.conf (each pitr, pg_receivewal and standby uses one; 0 disables streaming, \
         and wal_level must then be replica rather than minimal) and restart the server; \
         server said: {server}"
    )]
    TooManyWalSenders {
        /// `host:port`.
        target: String,
        /// The server's message.
        server: Box<ServerError>,
    },
    /// `wal_level = minimal`: the server writes too little WAL to restore from.
    #[error(
        "PostgreSQL at {target} runs with wal_level = minimal, which cannot be streamed or \
         restored from: set wal_level = replica in postgresql.conf and restart the server"
    )]
    WalLevelMinimal {
        /// `host:port`.
        target: String,
    },
    /// The slot is streamed by another process (55006).
    #[error(
        "replication slot {slot:?} is in use by server process {}: another pitr or \
         pg_receivewal streams from it; stop that one, or give this pitr its own slot; \
         server said: {server}",
        pid.map_or_else(|| "(pid not reported)".to_owned(), |p| p.to_string())
    )]
    SlotInUse {
        /// The slot.
        slot: String,
        /// The walsender holding it, from the message.
        pid: Option<u32>,
        /// The server's message.
        server: Box<ServerError>,
    },
    /// The slot does not exist (42704).
    #[error(
        "replication slot {slot:?} does not exist: create it (CREATE_REPLICATION_SLOT {slot} \
         PHYSICAL (RESERVE_WAL)) or fix the slot name; server said: {server}"
    )]
    SlotMissing {
        /// The slot.
        slot: String,
        /// The server's message.
        server: Box<ServerError>,
    },
    /// The slot already exists (42710).
    #[error("replication slot {slot:?} already exists; server said: {server}")]
    SlotExists {
        /// The slot.
        slot: String,
        /// The server's message.
        server: Box<ServerError>,
    },
    /// A slot name PostgreSQL would refuse (and that pitr will not send).
    #[error(
        "{0:?} is not a valid replication slot name: use 1 to 63 lower-case letters, digits \
         and underscores"
    )]
    InvalidSlotName(String),
    /// The server ended the connection or the stream: it is shutting down,
    /// restarting, crashed, or an administrator terminated us.
    #[error(
        "PostgreSQL at {target} ended the replication connection ({reason}): the server is \
         shutting down, restarting or was told to end it; reconnect when it is back"
    )]
    ServerGone {
        /// `host:port`.
        target: String,
        /// What was seen: end of stream, CommandComplete, a FATAL message.
        reason: String,
    },
    /// Any other error the server reported.
    #[error("PostgreSQL at {target} reported {error}")]
    Server {
        /// `host:port`.
        target: String,
        /// What it said.
        error: Box<ServerError>,
    },
    /// The server sent something the protocol does not allow here.
    #[error("protocol error talking to PostgreSQL at {target}: {reason}")]
    Protocol {
        /// `host:port`.
        target: String,
        /// What was unexpected.
        reason: String,
    },
}

impl ConnError {
    /// Whether retrying later may succeed without anyone changing anything:
    /// the server was unreachable, restarting, busy, or the slot was held.
    /// Configuration and permission errors are not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            ConnError::Unreachable { .. }
            | ConnError::Timeout { .. }
            | ConnError::Io { .. }
            | ConnError::ServerGone { .. }
            | ConnError::SlotInUse { .. } => true,
            // Every WAL sender busy may pass; max_wal_senders = 0 needs a
            // restart with a new setting.
            ConnError::TooManyWalSenders { server, .. } => {
                !server.message.contains("(currently 0)")
            }
            // 57P03: the database system is starting up / shutting down;
            // 53300: too many clients.
            ConnError::Server { error, .. } => error.code == "57P03" || error.code == "53300",
            _ => false,
        }
    }

    /// The server's SQLSTATE, when the server reported the error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ConnError::PasswordRejected { server, .. }
            | ConnError::NoHbaEntry { server, .. }
            | ConnError::NoReplicationPrivilege { server, .. }
            | ConnError::TooManyWalSenders { server, .. }
            | ConnError::SlotInUse { server, .. }
            | ConnError::SlotMissing { server, .. }
            | ConnError::SlotExists { server, .. } => Some(&server.code),
            ConnError::Server { error, .. } => Some(&error.code),
            _ => None,
        }
    }
}

/// What was being done when the server reported an error, for classifying it.
pub(super) enum Context<'a> {
    /// Startup and authentication.
    Startup {
        user: &'a str,
        password: Option<&'a PasswordSource>,
    },
    /// A command, perhaps about a slot.
    Command { slot: Option<&'a str> },
}

/// Turns a server error into the specific case.
pub(super) fn classify(target: &str, ctx: Context<'_>, server: ServerError) -> ConnError {
    let target = target.to_owned();
    let server = Box::new(server);
    let code = server.code.as_str();
    match (code, &ctx) {
        // 57P01 admin shutdown / terminate, 57P02 crash shutdown.
        ("57P01" | "57P02", _) => ConnError::ServerGone {
            target,
            reason: server.to_string(),
        },
        (
            "28P01",
            Context::Startup {
                user,
                password: Some(source),
            },
        ) => ConnError::PasswordRejected {
            target,
            user: (*user).to_owned(),
            password_source: (*source).clone(),
            server,
        },
        ("28000", Context::Startup { user, .. }) if server.message.contains("pg_hba.conf") => {
            ConnError::NoHbaEntry {
                target,
                user: (*user).to_owned(),
                server,
            }
        }
        ("42501", Context::Startup { user, .. }) => ConnError::NoReplicationPrivilege {
            user: (*user).to_owned(),
            server,
        },
        ("53300", _) if server.message.contains("max_wal_senders") => {
            ConnError::TooManyWalSenders { target, server }
        }
        ("55006", Context::Command { slot: Some(slot) }) => ConnError::SlotInUse {
            slot: (*slot).to_owned(),
            pid: pid_in(&server.message),
            server,
        },
        ("42704", Context::Command { slot: Some(slot) }) => ConnError::SlotMissing {
            slot: (*slot).to_owned(),
            server,
        },
        ("42710", Context::Command { slot: Some(slot) }) => ConnError::SlotExists {
            slot: (*slot).to_owned(),
            server,
        },
        _ => ConnError::Server {
            target,
            error: server,
        },
    }
}

/// The number after "PID" in `replication slot "x" is active for PID 1234`.
fn pid_in(message: &str) -> Option<u32> {
    let after = &message[message.find("PID ")? + 4..];
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_in_use_names_the_pid() {
        let server = ServerError {
            severity: "ERROR".into(),
            code: "55006".into(),
            message: "replication slot \"pitr\" is active for PID 4242".into(),
            ..ServerError::default()
        };
        let err = classify("h:1", Context::Command { slot: Some("pitr") }, server);
        assert!(
            matches!(
                err,
                ConnError::SlotInUse {
                    pid: Some(4242),
                    ..
                }
            ),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains("server process 4242"), "{text}");
        assert!(text.contains("pg_receivewal"), "{text}");
    }
}
