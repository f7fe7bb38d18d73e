//! The fleet catalog (docs/FLEET.md): every sidecar publishes what its
//! local catalog knows (databases, base backups, restore windows,
//! destinations and CIDs, test restores, health checks) into one
//! PostgreSQL database, and `pitr fleet` reads it.
//!
//! - [`connect`]: a plain SQL connection to the fleet database, over the
//!   socket and TLS of `pg::conn`, with timeouts;
//! - [`schema`]: the versioned schema, its migrations and the check that
//!   it is current;
//! - [`rows`]: the published rows, built from what `pitr list` reports
//!   (`listing`), never derived a second way;
//! - [`publish`]: the sidecar job that sends what changed since its last
//!   successful publish, driven by the local catalog's commits;
//! - [`batch`]: what one publish sends, cut into batches, and how a batch
//!   is applied in one transaction (by the sidecar, or by the receiver);
//! - [`http`]: the `kind = "http"` transport's client, and [`receive`]:
//!   `pitr fleet receive`, its server;
//! - [`read`]: the queries behind `pitr fleet list / show /
//!   restore-command`.
//!
//! Everything read from the fleet database is treated as hostile: text is
//! bounded in length and nothing read from it names a path.

pub mod batch;
mod connect;
pub mod http;
pub mod publish;
pub mod read;
pub mod receive;
pub mod rows;
pub mod schema;

pub use connect::{STATEMENT_TIMEOUT, connect};

/// Why talking to the fleet database failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// `[fleet] url` does not parse.
    #[error("[fleet] url: {0}")]
    Url(#[from] crate::pg::conn::ConnInfoError),
    /// The connection could not be opened (socket, TLS).
    #[error("cannot reach the fleet database: {0}")]
    Connect(#[from] crate::pg::ConnError),
    /// A password would go over an unencrypted TCP connection.
    #[error(
        "the fleet database at {target} is reached without TLS and pitr would send it a password: use TLS (sslmode=verify-full with sslrootcert in [fleet] url), a unix socket, or set [fleet] allow_insecure_password = true to accept the risk"
    )]
    InsecurePassword {
        /// `host:port`.
        target: String,
    },
    /// The server refused or failed a statement, or the connection broke.
    #[error("fleet database: {what}: {}", server_says(.source))]
    Sql {
        /// What pitr was doing.
        what: String,
        /// The driver's error (with the server's SQLSTATE when it sent one).
        #[source]
        source: tokio_postgres::Error,
    },
    /// A statement or the connection took longer than its limit.
    #[error(
        "fleet database: {what} took longer than {} s; the database is slow or unreachable, and publishing is retried",
        .limit.as_secs()
    )]
    Timeout {
        /// What pitr was doing.
        what: String,
        /// The limit.
        limit: std::time::Duration,
    },
    /// The schema is older or newer than this pitr.
    #[error("the fleet database's schema is version {found}, this pitr needs {want}: {fix}")]
    SchemaVersion {
        /// The version found (0: none).
        found: i64,
        /// The version this pitr writes.
        want: i64,
        /// What to do.
        fix: &'static str,
    },
    /// Applying the migrations failed.
    #[error(
        "cannot migrate the fleet schema: {0}. A role with DDL rights must run `pitr fleet migrate -c CONFIG` (docs/FLEET.md)"
    )]
    Migrate(String),
    /// The local record of what was published cannot be read or written.
    #[error("the fleet publish state {path:?} in [repository] state_dir: {source}")]
    State {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The listing the rows are built from failed.
    #[error(transparent)]
    Listing(#[from] crate::listing::ListingError),
    /// The local catalog failed.
    #[error(transparent)]
    Repo(#[from] crate::repo::RepoError),
    /// The fleet database refuses this role the instance's rows.
    #[error(
        "the fleet database refuses role {role:?} the rows of instance {instance:?} ({}): the DBA maps it with INSERT INTO pitr_fleet.instance_roles (role, instance) VALUES ('{role}', '{instance}'), and grants it pitr_fleet_writer (docs/FLEET.md); or fix [fleet] instance",
        server_says(.source)
    )]
    NotMapped {
        /// The login role.
        role: String,
        /// `[fleet] instance`.
        instance: String,
        /// The server's refusal.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A database or time named on the command line is not there.
    #[error("{0}")]
    NotFound(String),
    /// A batch that is not well-formed (refused before any SQL).
    #[error(transparent)]
    Batch(#[from] batch::BatchError),
    /// The receiver (`kind = "http"`) could not be reached, failed, or
    /// refused a request; publishing is retried.
    #[error("fleet receiver at {url}: {message}")]
    Http {
        /// The request's URL.
        url: String,
        /// What happened (the receiver's message, bounded).
        message: String,
    },
    /// The receiver refused the token (401) or the fleet database refused
    /// the token's role the instance's rows (403).
    #[error("fleet receiver at {url} answered {status}: {message}. {fix}")]
    Refused {
        /// The request's URL.
        url: String,
        /// 401 or 403.
        status: u16,
        /// The receiver's message (bounded).
        message: String,
        /// What to do.
        fix: &'static str,
    },
    /// A command that reads or migrates the fleet database was given a
    /// config whose `[fleet]` names a receiver.
    #[error(
        "[fleet] kind = \"http\" names a receiver, not the fleet database: this command connects to the database itself. Give it a config whose [fleet] url is the database (kind = \"postgres\", docs/FLEET.md)"
    )]
    NotPostgres,
}

/// The driver's error with what the server said: its `Display` alone is
/// "db error", which would leave a log line or an alert without the reason.
fn server_says(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(hint) = db.hint() {
                s.push_str("; hint: ");
                s.push_str(hint);
            }
            s
        }
        None => e.to_string(),
    }
}

impl FleetError {
    /// The SQLSTATE the server sent, if any.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            FleetError::Sql { source, .. } | FleetError::NotMapped { source, .. } => {
                source.code().map(|c| c.code())
            }
            _ => None,
        }
    }

    /// What the server said, without the driver's wrapping: for the
    /// receiver's answers.
    pub fn server_message(&self) -> String {
        match self {
            FleetError::Sql { what, source } => match source.as_db_error() {
                Some(db) => format!("fleet database: {what}: {}", db.message()),
                None => self.to_string(),
            },
            other => other.to_string(),
        }
    }
}

/// Runs `fut` within `limit`, naming `what` in the errors.
pub(crate) async fn bounded<T>(
    what: &str,
    limit: std::time::Duration,
    fut: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, FleetError> {
    match tokio::time::timeout(limit, fut).await {
        Err(_) => Err(FleetError::Timeout {
            what: what.to_owned(),
            limit,
        }),
        Ok(Err(source)) => Err(FleetError::Sql {
            what: what.to_owned(),
            source,
        }),
        Ok(Ok(v)) => Ok(v),
    }
}
