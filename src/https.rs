//! Serving https: pitr's two HTTP servers (`/health` with the restore API,
//! and `pitr fleet receive`) speak TLS when given a certificate and key
//! (rustls, TLS 1.2 and 1.3, HTTP/1.1), else plain HTTP.
//!
//! A client is hostile until its handshake is done: each handshake runs in
//! its own task, at most [`MAX_HANDSHAKES`] at once and each within
//! [`HANDSHAKE_TIMEOUT`], so a client that stalls its handshake holds up
//! nobody else, and memory stays bounded however many connect.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::TlsFiles;

/// Handshakes under way at once; past it, new connections wait in the
/// kernel's backlog.
pub const MAX_HANDSHAKES: usize = 64;
/// How long a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which of the two files a [`TlsError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    /// The certificate chain.
    Cert,
    /// The private key.
    Key,
}

impl TlsFile {
    /// The config key naming it, after `prefix` (`tls_cert_file` for
    /// `[health]`, `receive_tls_cert_file` for `[fleet]`).
    pub fn key(self, prefix: &str) -> String {
        match self {
            TlsFile::Cert => format!("{prefix}tls_cert_file"),
            TlsFile::Key => format!("{prefix}tls_key_file"),
        }
    }
}

/// Why the certificate or key cannot be served; the message says what to
/// do.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TlsError {
    /// The file at fault.
    pub file: TlsFile,
    /// Its path.
    pub path: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// The acceptor for `files`: the chain (PEM, leaf first) and the private
/// key (PEM), read now; a key readable by every user is logged as a
/// warning.
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let fail = |file, path: &Path, message: String| TlsError {
        file,
        path: path.display().to_string(),
        message,
    };
    let (cert_file, key_file) = (&files.cert_file, &files.key_file);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| {
            fail(
                TlsFile::Cert,
                cert_file,
                format!("cannot read a PEM certificate chain: {e}"),
            )
        })?;
    if certs.is_empty() {
        return Err(fail(
            TlsFile::Cert,
            cert_file,
            "holds no certificate: give the server's certificate in PEM, then its intermediates"
                .to_owned(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        fail(
            TlsFile::Key,
            key_file,
            format!("cannot read a PEM private key: {e}"),
        )
    })?;
    if let Ok(meta) = std::fs::metadata(key_file)
        && std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o004 != 0
    {
        tracing::warn!(
            file = %key_file.display(),
            "the TLS private key is readable by every user: chmod o-r it"
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(TlsFile::Cert, cert_file, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            fail(
                TlsFile::Cert,
                cert_file,
                format!(
                    "does not go with the key {}: {e}; give the certificate issued for that key",
                    key_file.display()
                ),
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` on `listener` until `shutdown`: over TLS with `tls`, plain
/// HTTP without.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(acceptor) => {
            let listener = TlsListener {
                tcp: listener,
                acceptor,
                pending: JoinSet::new(),
            };
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// A TCP listener whose connections are handed on once their TLS
/// handshake is done (see the module's text).
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    pending: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept(), if self.pending.len() < MAX_HANDSHAKES => {
                    match accepted {
                        Ok((sock, addr)) => {
                            let acceptor = self.acceptor.clone();
                            self.pending.spawn(handshake(acceptor, sock, addr));
                        }
                        Err(e) => {
                            // Out of file descriptors and the like: pause
                            // rather than spin.
                            tracing::warn!(error = %e, "cannot accept a connection");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                Some(done) = self.pending.join_next(), if !self.pending.is_empty() => {
                    if let Ok(Some(conn)) = done {
                        return conn;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// One client's handshake, bounded by [`HANDSHAKE_TIMEOUT`]; `None` when
/// it failed (logged at debug: a port scan is no event).
async fn handshake(
    acceptor: TlsAcceptor,
    sock: TcpStream,
    addr: SocketAddr,
) -> Option<(TlsStream<TcpStream>, SocketAddr)> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
        Ok(Ok(stream)) => Some((stream, addr)),
        Ok(Err(e)) => {
            tracing::debug!(peer = %addr, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(peer = %addr, "TLS handshake timed out");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_files_are_named_with_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let files = |cert: &Path, key: &Path| TlsFiles {
            cert_file: cert.to_owned(),
            key_file: key.to_owned(),
        };
        let missing = dir.path().join("missing.pem");
        for (files, file, parts) in [
            (
                files(&missing, &empty),
                TlsFile::Cert,
                &["missing.pem", "PEM certificate chain"][..],
            ),
            (
                files(&empty, &empty),
                TlsFile::Cert,
                &["empty.pem", "holds no certificate"],
            ),
        ] {
            let e = acceptor(&files).err().expect("refused");
            assert_eq!(e.file, file);
            for part in parts {
                assert!(e.to_string().contains(part), "{part}: {e}");
            }
        }
        assert_eq!(TlsFile::Key.key("receive_"), "receive_tls_key_file");
        assert_eq!(TlsFile::Cert.key(""), "tls_cert_file");
    }
}
