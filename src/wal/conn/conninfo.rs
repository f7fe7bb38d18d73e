//! Connection settings: libpq conninfo strings (`host=... port=...`) and
//! `postgres://` URLs, resolved with libpq's environment variables and
//! defaults into a [`ConnInfo`] that every later step can trust.
//!
//! Resolution order per setting, as libpq does it: the string, then the
//! environment (`PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`, `PGPASSWORD`,
//! `PGPASSFILE`, `PGSSLMODE`, `PGSSLROOTCERT`, `PGAPPNAME`,
//! `PGCONNECT_TIMEOUT`), then the default. A password not given either way is
//! looked up in the password file (`passfile`, `PGPASSFILE` or `~/.pgpass`;
//! see [`super::pgpass`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::pgpass;

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
    fn parse(s: &str) -> Option<SslMode> {
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
         passfile, sslmode, sslrootcert, application_name, fallback_application_name, \
         connect_timeout and replication"
    )]
    UnknownKeyword(String),
    /// A libpq keyword pitr does not implement.
    #[error("connection keyword {0:?} is not supported by pitr: remove it from the connection string")]
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
}

/// Where parsing looks up environment variables: the process environment,
/// or a map in tests.
pub trait Environment {
    /// The value of `name`, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Environment for BTreeMap<&str, &str> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).map(|v| (*v).to_owned())
    }
}

/// libpq keywords pitr refuses rather than silently ignores.
const UNSUPPORTED: &[&str] = &[
    "hostaddr",
    "options",
    "client_encoding",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "sslcompression",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "sslcertmode",
    "sslnegotiation",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "requirepeer",
    "require_auth",
    "channel_binding",
    "gssencmode",
    "gssdelegation",
    "krbsrvname",
    "gsslib",
    "service",
    "target_session_attrs",
    "load_balance_hosts",
];

/// The keywords pitr understands.
const SUPPORTED: &[&str] = &[
    "host",
    "port",
    "user",
    "dbname",
    "password",
    "passfile",
    "sslmode",
    "sslrootcert",
    "application_name",
    "fallback_application_name",
    "connect_timeout",
    "replication",
];

impl ConnInfo {
    /// Parses a conninfo string or URL and resolves it against the process
    /// environment and `~/.pgpass`.
    pub fn parse(s: &str) -> Result<ConnInfo, ConnInfoError> {
        ConnInfo::parse_with(s, &ProcessEnv)
    }

    /// [`ConnInfo::parse`] with an explicit environment.
    pub fn parse_with(s: &str, env: &dyn Environment) -> Result<ConnInfo, ConnInfoError> {
        let trimmed = s.trim_start();
        let pairs = if trimmed.starts_with("postgresql://") || trimmed.starts_with("postgres://") {
            super::url::parse(trimmed)?
        } else {
            parse_keywords(s)?
        };
        let mut given: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in pairs {
            check_keyword(&k)?;
            given.insert(k, v);
        }
        resolve(&given, env)
    }
}

fn check_keyword(k: &str) -> Result<(), ConnInfoError> {
    if SUPPORTED.contains(&k) {
        Ok(())
    } else if UNSUPPORTED.contains(&k) {
        Err(ConnInfoError::UnsupportedKeyword(k.to_owned()))
    } else {
        Err(ConnInfoError::UnknownKeyword(k.to_owned()))
    }
}

/// Splits `k=v k='quoted \' value'` into pairs, as libpq's `conninfo_parse`.
pub(super) fn parse_keywords(s: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(ConnInfoError::MissingEquals(key));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(ConnInfoError::UnterminatedQuote(key)),
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(ConnInfoError::UnterminatedQuote(key)),
                    },
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(escaped) = chars.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

/// Applies the environment and the defaults.
fn resolve(
    given: &BTreeMap<String, String>,
    env: &dyn Environment,
) -> Result<ConnInfo, ConnInfoError> {
    // An empty value counts as not given, as in libpq.
    let get = |key: &str, var: &str| -> Option<String> {
        given
            .get(key)
            .cloned()
            .filter(|v| !v.is_empty())
            .or_else(|| env.var(var).filter(|v| !v.is_empty()))
    };

    let host_text = get("host", "PGHOST").unwrap_or_else(|| DEFAULT_HOST.to_owned());
    if host_text.contains(',') {
        return Err(ConnInfoError::MultipleHosts(host_text));
    }
    let host = if host_text.starts_with('/') {
        Host::Unix(PathBuf::from(&host_text))
    } else {
        Host::Tcp(host_text)
    };

    let port = match get("port", "PGPORT") {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => {
                return Err(ConnInfoError::InvalidValue {
                    keyword: "port".into(),
                    value: p,
                    expected: "a port number from 1 to 65535",
                });
            }
        },
    };

    let user = get("user", "PGUSER")
        .or_else(|| env.var("USER").filter(|v| !v.is_empty()))
        .or_else(|| env.var("LOGNAME").filter(|v| !v.is_empty()))
        .ok_or(ConnInfoError::NoUser)?;
    let dbname = get("dbname", "PGDATABASE").unwrap_or_else(|| user.clone());

    let sslmode = match get("sslmode", "PGSSLMODE") {
        None => SslMode::Prefer,
        Some(m) => SslMode::parse(&m).ok_or(ConnInfoError::InvalidValue {
            keyword: "sslmode".into(),
            value: m,
            expected: "disable, allow, prefer, require, verify-ca or verify-full",
        })?,
    };
    let sslrootcert = get("sslrootcert", "PGSSLROOTCERT").map(PathBuf::from);

    let application_name = get("application_name", "PGAPPNAME")
        .or_else(|| given.get("fallback_application_name").cloned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_APPLICATION_NAME.to_owned());

    let connect_timeout = match get("connect_timeout", "PGCONNECT_TIMEOUT") {
        None => None,
        Some(t) => match t.trim().parse::<i64>() {
            // libpq: zero or less waits forever; below two seconds is two.
            Ok(secs) if secs <= 0 => None,
            Ok(secs) => Some(Duration::from_secs(secs.max(2) as u64)),
            Err(_) => {
                return Err(ConnInfoError::InvalidValue {
                    keyword: "connect_timeout".into(),
                    value: t,
                    expected: "whole seconds",
                });
            }
        },
    };

    if let Some(r) = given.get("replication") {
        // pitr always opens a physical replication connection.
        if !matches!(r.as_str(), "true" | "on" | "yes" | "1") {
            return Err(ConnInfoError::InvalidValue {
                keyword: "replication".into(),
                value: r.clone(),
                expected: "true (pitr always opens a physical replication connection)",
            });
        }
    }

    let password = match given.get("password").filter(|p| !p.is_empty()) {
        Some(p) => Some(Password::new(p.clone(), PasswordSource::ConnInfo)),
        None => match env.var("PGPASSWORD").filter(|p| !p.is_empty()) {
            Some(p) => Some(Password::new(p, PasswordSource::Environment)),
            None => {
                let file = given
                    .get("passfile")
                    .cloned()
                    .filter(|f| !f.is_empty())
                    .or_else(|| env.var("PGPASSFILE").filter(|f| !f.is_empty()))
                    .map(PathBuf::from)
                    .or_else(|| {
                        env.var("HOME")
                            .filter(|h| !h.is_empty())
                            .map(|home| PathBuf::from(home).join(".pgpass"))
                    });
                match file {
                    Some(file) => pgpass::lookup(&file, &host, port, &dbname, &user),
                    None => None,
                }
            }
        },
    };

    Ok(ConnInfo {
        host,
        port,
        user,
        dbname,
        password,
        sslmode,
        sslrootcert,
        application_name,
        connect_timeout,
    })
}

impl ConnInfo {
    /// `host:port` or the socket path, for messages.
    pub fn target(&self) -> String {
        self.host.describe(self.port)
    }
}

/// Quotes a conninfo value when it needs it.
fn quote(v: &str) -> String {
    if !v.is_empty() && !v.chars().any(|c| c.is_whitespace() || c == '\'' || c == '\\') {
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
