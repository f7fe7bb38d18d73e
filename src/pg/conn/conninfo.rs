//! Connection settings: libpq conninfo strings (`host=... port=...`) and
//! `postgres://` URLs, resolved with libpq's environment variables and
//! defaults into a [`ConnInfo`] that every later step can trust.
//!
//! Resolution order per setting, as libpq does it: the string, then the
//! environment (`PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`, `PGPASSWORD`,
//! `PGPASSFILE`, `PGSSLMODE`, `PGSSLROOTCERT`, `PGAPPNAME`,
//! `PGCONNECT_TIMEOUT`), then the default. A password not given either way is
//! looked up in the password file (`passfile`, `PGPASSFILE` or `~/.pgpass`;
//! see `pgpass.rs`). Parsing and resolution live in `resolve.rs`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// libpq's default port.
pub const DEFAULT_PORT: u16 = 5432;
/// The host used when neither the string nor `PGHOST` names one.
pub const DEFAULT_HOST: &str = "localhost";
/// The `application_name` pitr reports unless told otherwise.
pub const DEFAULT_APPLICATION_NAME: &str = "pitr";
/// Where Debian's libpq looks for the server socket; `.pgpass` calls it
/// `localhost`.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// Where the server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A host name or IP address, reached over TCP.
    Tcp(String),
    /// A directory holding the server's unix socket `.s.PGSQL.<port>` (a
    /// `host` starting with `/`).
    Unix(PathBuf),
}

impl Host {
    /// `host:port` or the socket path: what error messages name.
    pub fn describe(&self, port: u16) -> String {
        match self {
            Host::Tcp(name) if name.contains(':') => format!("[{name}]:{port}"),
            Host::Tcp(name) => format!("{name}:{port}"),
            Host::Unix(dir) => dir.join(format!(".s.PGSQL.{port}")).display().to_string(),
        }
    }
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// Plain first, TLS if the server insists (pitr: same as `prefer`).
    Allow,
    /// TLS when the server offers it, else plain (libpq's default).
    Prefer,
    /// TLS or fail; the certificate is not checked.
    Require,
    /// TLS with a certificate chained to a trusted root.
    VerifyCa,
    /// As `verify-ca`, and the certificate names the host.
    VerifyFull,
}

impl SslMode {
    pub(super) fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// libpq's `channel_binding`: whether SCRAM binds the exchange to the TLS
/// connection (`tls-server-end-point`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelBindingMode {
    /// Never bind.
    Disable,
    /// Bind when the connection is TLS and the server offers
    /// SCRAM-SHA-256-PLUS (libpq's default).
    Prefer,
    /// Bind, or fail: any authentication without channel binding (trust,
    /// md5, password, SCRAM without PLUS) is refused.
    Require,
}

impl ChannelBindingMode {
    pub(super) fn parse(s: &str) -> Option<ChannelBindingMode> {
        Some(match s {
            "disable" => ChannelBindingMode::Disable,
            "prefer" => ChannelBindingMode::Prefer,
            "require" => ChannelBindingMode::Require,
            _ => return None,
        })
    }
}

/// Where a password came from, so a rejected one can be traced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// `password=` or the URL's user info.
    ConnInfo,
    /// `PGPASSWORD`.
    Environment,
    /// A line of a password file.
    PassFile {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
}

impl fmt::Display for PasswordSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordSource::ConnInfo => f.write_str("the connection string"),
            PasswordSource::Environment => f.write_str("PGPASSWORD"),
            PasswordSource::PassFile { path, line } => {
                write!(f, "{} line {line}", path.display())
            }
        }
    }
}

/// A password: `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password {
    secret: String,
    source: PasswordSource,
}

impl Password {
    /// Wraps a secret.
    pub fn new(secret: String, source: PasswordSource) -> Password {
        Password { secret, source }
    }

    /// The secret itself, for authentication only.
    pub fn expose(&self) -> &str {
        &self.secret
    }

    /// Where it came from.
    pub fn source(&self) -> &PasswordSource {
        &self.source
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Password(***, from {})", self.source)
    }
}

/// A connection string that cannot be used. Never contains a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnInfoError {
    /// A keyword libpq does not know either.
    #[error(
        "unknown connection keyword {0:?}: pitr accepts host, port, user, dbname, password, \
         passfile, sslmode, sslrootcert, channel_binding, application_name, \
         fallback_application_name, connect_timeout and replication"
    )]
    UnknownKeyword(String),
    /// A libpq keyword pitr does not implement.
    #[error(
        "connection keyword {0:?} is not supported by pitr: remove it from the connection string"
    )]
    UnsupportedKeyword(String),
    /// `keyword` without `=value`.
    #[error("missing \"=\" after {0:?} in the connection string")]
    MissingEquals(String),
    /// A `'` without its closing partner.
    #[error("unterminated quoted value of {0:?} in the connection string: close it with '")]
    UnterminatedQuote(String),
    /// A value of the wrong shape (never reported for passwords).
    #[error("{keyword}={value:?} is not valid: expected {expected}")]
    InvalidValue {
        /// The keyword.
        keyword: String,
        /// What was given.
        value: String,
        /// What would be accepted.
        expected: &'static str,
    },
    /// A `postgres://` URL that does not parse; the URL is not repeated, as
    /// it may hold a password.
    #[error("invalid postgres:// URL: {0}")]
    InvalidUrl(String),
    /// `host=a,b`: libpq's multi-host lists.
    #[error("several hosts ({0:?}) are not supported: give pitr one host")]
    MultipleHosts(String),
    /// Neither the string nor the environment names a user.
    #[error("no user given: add user=NAME to the connection string or set PGUSER")]
    NoUser,
}

/// Resolved connection settings: every field holds its final value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// The server.
    pub host: Host,
    /// Its port (also names the unix socket).
    pub port: u16,
    /// The role to log in as.
    pub user: String,
    /// The database; a physical replication connection ignores it, but
    /// sends it as libpq does.
    pub dbname: String,
    /// The password, if any was found.
    pub password: Option<Password>,
    /// TLS policy.
    pub sslmode: SslMode,
    /// PEM file of trusted roots for `verify-ca` / `verify-full`; `None`:
    /// `~/.postgresql/root.crt` if it exists, else the system's roots.
    pub sslrootcert: Option<PathBuf>,
    /// Reported to the server (`pg_stat_replication.application_name`).
    pub application_name: String,
    /// Bounds connecting, TLS and authentication together; `None`: forever.
    pub connect_timeout: Option<Duration>,
    /// SCRAM channel binding (`channel_binding`, `PGCHANNELBINDING`).
    pub channel_binding: ChannelBindingMode,
    /// Send a cleartext or md5 password over an unencrypted TCP connection
    /// when the server asks for one (`[[postgres]] allow_insecure_password`;
    /// not a libpq keyword). Off: such a request fails the connection
    /// without the password leaving pitr.
    pub allow_insecure_password: bool,
}

impl ConnInfo {
    /// `host:port` or the socket path, for messages.
    pub fn target(&self) -> String {
        self.host.describe(self.port)
    }
}

/// Quotes a conninfo value when it needs it.
fn quote(v: &str) -> String {
    if !v.is_empty()
        && !v
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\')
    {
        return v.to_owned();
    }
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A conninfo string without the password, for logs.
impl fmt::Display for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match &self.host {
            Host::Tcp(h) => h.clone(),
            Host::Unix(d) => d.display().to_string(),
        };
        write!(
            f,
            "host={} port={} user={} dbname={} sslmode={} application_name={}",
            quote(&host),
            self.port,
            quote(&self.user),
            quote(&self.dbname),
            self.sslmode.as_str(),
            quote(&self.application_name)
        )?;
        if let Some(t) = self.connect_timeout {
            write!(f, " connect_timeout={}", t.as_secs())?;
        }
        Ok(())
    }
}
