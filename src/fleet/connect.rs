//! A plain SQL connection to the fleet database: `pg::conn` opens the
//! socket and negotiates TLS exactly as for `[[postgres]]` (the same
//! `sslmode`, `sslrootcert`, `~/.pgpass`, `PG*` variables), and
//! `tokio-postgres` speaks the extended protocol over it, so every value
//! travels as a bound parameter.

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use super::{FleetError, bounded};
use crate::config::FleetConfig;
use crate::pg::ConnInfo;
use crate::pg::conn::{Host, open_socket};

/// How long connecting (socket, TLS, authentication) may take when the URL
/// sets no `connect_timeout`: a fleet database that does not answer must
/// not hold a publish for long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one statement may run, on the server (`statement_timeout`)
/// and on the client's clock.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Connects to the fleet database of `cfg` as its role; the connection's
/// I/O runs on a task of its own until the client is dropped.
pub async fn connect(cfg: &FleetConfig) -> Result<Client, FleetError> {
    if cfg.kind != crate::config::FleetKind::Postgres {
        return Err(FleetError::NotPostgres);
    }
    let mut info = ConnInfo::parse(&cfg.url)?;
    if info.password.is_none()
        && let Some(p) = &cfg.password
    {
        info.password = Some(crate::pg::conn::Password::new(
            p.clone(),
            crate::pg::conn::PasswordSource::ConnInfo,
        ));
    }
    info.allow_insecure_password = cfg.allow_insecure_password;
    let limit = *info.connect_timeout.get_or_insert(CONNECT_TIMEOUT);
    let socket = open_socket(&info).await?;
    // tokio-postgres answers whatever method the server asks for; over
    // plain TCP a cleartext or md5 answer would expose the password, so
    // without TLS a password is not offered unless allowed.
    let private = socket.is_tls() || matches!(info.host, Host::Unix(_));
    if info.password.is_some() && !private && !info.allow_insecure_password {
        return Err(FleetError::InsecurePassword {
            target: info.target(),
        });
    }
    let mut pg = tokio_postgres::Config::new();
    pg.user(&info.user)
        .dbname(&info.dbname)
        .application_name("pitr fleet")
        // TLS is already negotiated on the socket.
        .ssl_mode(tokio_postgres::config::SslMode::Disable)
        .options(format!(
            "-c statement_timeout={}",
            STATEMENT_TIMEOUT.as_millis()
        ));
    if let Some(p) = &info.password {
        pg.password(p.expose());
    }
    let (client, connection) = bounded("connecting", limit, pg.connect_raw(socket, NoTls)).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "fleet database connection ended");
        }
    });
    Ok(client)
}
