//! The replication connection client (`pitr::pg::conn`) against real
//! clusters: commands, streaming, authentication, TLS, and the connection
//! errors that must tell the operator what to do.
//!
//! Every network wait is bounded by [`within`], so a broken client fails a
//! test instead of hanging CI.

mod auth;
mod commands;
mod stream;
mod tls;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use pitr::pg::conn::{ConnError, ConnInfo, ReplicationClient};

use crate::support::{PgCluster, eventually};

/// The longest any single network step may take in these tests.
const STEP: Duration = Duration::from_secs(30);

/// Awaits `fut` for at most [`STEP`].
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what} took longer than {STEP:?}"),
    }
}

/// Parses `conninfo` with an empty environment, so the machine's `PG*`
/// variables and `~/.pgpass` cannot change what a test means.
fn info(conninfo: &str) -> ConnInfo {
    let env: BTreeMap<&str, &str> = BTreeMap::new();
    ConnInfo::parse_with(conninfo, &env).unwrap_or_else(|e| panic!("{conninfo}: {e}"))
}

/// The superuser's replication conninfo for `pg`, plus `extra` keywords.
fn conninfo(pg: &PgCluster, extra: &str) -> ConnInfo {
    info(&format!(
        "{} sslmode=disable {extra}",
        pg.conninfo("postgres")
    ))
}

async fn connect(info: &ConnInfo) -> ReplicationClient {
    within("connect", ReplicationClient::connect(info))
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", info.target()))
}

async fn connect_err(info: &ConnInfo) -> ConnError {
    match within("connect", ReplicationClient::connect(info)).await {
        Ok(c) => panic!("connecting as {} to {} succeeded", info.user, c.target()),
        Err(e) => e,
    }
}

#[tokio::test]
async fn unreachable_server_is_named_with_what_to_check() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("probe a free port")
        .port();
    let err = connect_err(&info(&format!(
        "host=127.0.0.1 port={port} user=u sslmode=disable"
    )))
    .await;
    assert!(matches!(err, ConnError::Unreachable { .. }), "{err:?}");
    assert!(err.is_transient());
    let text = err.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(text.contains("listen_addresses"), "{text}");

    let err = connect_err(&info("host=/nonexistent/dir port=5999 user=u")).await;
    assert!(
        err.to_string().contains("/nonexistent/dir/.s.PGSQL.5999"),
        "{err}"
    );
}

#[tokio::test]
async fn silent_server_hits_connect_timeout() {
    // Accepted by the kernel's backlog, never answered.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let started = Instant::now();
    let err = connect_err(&info(&format!(
        "host=127.0.0.1 port={port} user=u connect_timeout=2"
    )))
    .await;
    assert!(matches!(err, ConnError::Timeout { .. }), "{err:?}");
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(err.to_string().contains("connect_timeout (2s)"), "{err}");
    drop(listener);
}

#[tokio::test]
async fn no_wal_senders_says_to_raise_max_wal_senders() {
    // wal_level=minimal forces max_wal_senders=0: both show as this error.
    let pg = PgCluster::start_with(|c| {
        c.set("wal_level", "minimal").set("max_wal_senders", "0");
    });
    let err = connect_err(&conninfo(&pg, "")).await;
    assert!(
        matches!(err, ConnError::TooManyWalSenders { .. }),
        "{err:?}"
    );
    assert_eq!(err.sqlstate(), Some("53300"));
    assert!(
        !err.is_transient(),
        "only a restart with a new setting helps"
    );
    let text = err.to_string();
    assert!(text.contains("raise max_wal_senders"), "{text}");
    assert!(text.contains("(currently 0)"), "{text}");
    assert!(text.contains("wal_level must then be replica"), "{text}");
}
