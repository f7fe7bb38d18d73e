//! From text to [`ConnInfo`]: the keyword parser (libpq's
//! `conninfo_parse`), the keyword whitelist, and resolution against the
//! environment, the defaults and the password file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::conninfo::{
    ChannelBindingMode, ConnInfo, ConnInfoError, DEFAULT_APPLICATION_NAME, DEFAULT_HOST,
    DEFAULT_PORT, Host, Password, PasswordSource, SslMode,
};
use super::pgpass;

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
    "channel_binding",
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

    let sslmode = mode(
        "sslmode",
        get("sslmode", "PGSSLMODE"),
        SslMode::Prefer,
        SslMode::parse,
        "disable, allow, prefer, require, verify-ca or verify-full",
    )?;
    let sslrootcert = get("sslrootcert", "PGSSLROOTCERT").map(PathBuf::from);
    let channel_binding = mode(
        "channel_binding",
        get("channel_binding", "PGCHANNELBINDING"),
        ChannelBindingMode::Prefer,
        ChannelBindingMode::parse,
        "disable, prefer or require",
    )?;

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
        channel_binding,
        allow_insecure_password: false,
    })
}

/// A mode keyword's `value` read by `parse` (`sslmode`, `channel_binding`),
/// `default` when it is not set; `expected` lists the accepted values.
fn mode<T>(
    keyword: &str,
    value: Option<String>,
    default: T,
    parse: fn(&str) -> Option<T>,
    expected: &'static str,
) -> Result<T, ConnInfoError> {
    match value {
        None => Ok(default),
        Some(m) => parse(&m).ok_or(ConnInfoError::InvalidValue {
            keyword: keyword.into(),
            value: m,
            expected,
        }),
    }
}
