//! What the integration tests share: throw-away servers (PostgreSQL, S3,
//! Storacha, SMTP, webhooks, Infisical's API) and the helpers that drive
//! them, a throw-away repository ([`TestRepo`]), the `pitr` binary ([`pitr`], [`Sidecar`]),
//! WAL streamed in the background ([`Streamer`]), and the one way to wait
//! for a condition ([`eventually`]).
//!
//! Every test starts its own servers (docs/ARCHITECTURE.md, Testing): real binaries on
//! loopback, in a temp dir that disappears with the value that owns it.

// The harness serves tests that are still being written; a helper that no test
// calls yet is not an error.
#![allow(dead_code)]

pub mod infisical;
pub mod pg;
pub mod poll;
pub mod repo;
pub mod s3;
pub mod sidecar;
pub mod smtp;
pub mod storacha;
pub mod stream;
pub mod tls;
pub mod webhook;

pub use infisical::InfisicalServer;
pub use pg::{PgCluster, run_as_pg_user};
pub use poll::{eventually, eventually_blocking, with_log};
pub use repo::{TestRepo, data, first_pack, test_options};
pub use s3::S3Server;
pub use sidecar::{Sidecar, backup_id, pitr, pitr_command, pitr_with};
pub use smtp::SmtpServer;
pub use stream::{Streamer, between, committed_stamps, write_row};
pub use webhook::WebhookReceiver;

/// A finished command's exit status, stdout and stderr, for assertion
/// messages.
pub fn text(o: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A new age identity, written to `dir/identity.txt` as a config's
/// `identity_file` reads it; returns it and the file's path.
pub fn new_identity(dir: &std::path::Path) -> (age::x25519::Identity, std::path::PathBuf) {
    let identity = age::x25519::Identity::generate();
    let path = dir.join("identity.txt");
    std::fs::write(
        &path,
        format!(
            "{}\n",
            age::secrecy::ExposeSecret::expose_secret(&identity.to_string())
        ),
    )
    .expect("write the identity");
    (identity, path)
}

/// Config parts for a repository in `dir`: the `[repository]` section with
/// a new identity (in `dir/identity.txt`), state in `dir/state` and `extra`
/// keys (each ending in a newline); and an fs destination `local` at
/// `dir/store`, apart so that a test can leave it out of a later config.
pub fn repository_toml(dir: &std::path::Path, extra: &str) -> (String, String) {
    let (identity, identity_file) = new_identity(dir);
    let head = format!(
        "[repository]\nrecipients = [\"{}\"]\nidentity_file = \"{}\"\nstate_dir = \"{}\"\n{extra}",
        identity.to_public(),
        identity_file.display(),
        dir.join("state").display(),
    );
    let fs = format!(
        "\n[[destination]]\nname = \"local\"\nkind = \"fs\"\npath = \"{}\"\n",
        dir.join("store").display()
    );
    (head, fs)
}

/// The LSN in the first column of `sql`'s only row (`None` for no row or
/// NULL): how the WAL tests read `pg_stat_replication`, slots and positions.
pub async fn query_lsn(db: &tokio_postgres::Client, sql: &str) -> Option<pitr::pg::Lsn> {
    let row = db.query_opt(sql, &[]).await.expect("query")?;
    let text: Option<String> = row.get(0);
    text.map(|t| t.parse().expect("an LSN"))
}

/// Serves `app` on a free port of 127.0.0.1, on the current tokio runtime,
/// until the returned sender is dropped.
pub async fn serve(app: axum::Router) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
            .expect("serve");
    });
    (addr, stop)
}
