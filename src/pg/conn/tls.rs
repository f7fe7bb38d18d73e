//! TLS after an accepted SSLRequest, with libpq's `sslmode` semantics:
//!
//! - `allow` / `prefer` / `require`: encrypted, the certificate is not
//!   checked — except that `require` behaves as `verify-ca` when a root
//!   certificate file is given or `~/.postgresql/root.crt` exists (libpq's
//!   rule);
//! - `verify-ca`: the chain must lead to a trusted root;
//! - `verify-full`: and the certificate must name the host.
//!
//! Trusted roots: `sslrootcert` (a PEM file, or `system` for the operating
//! system's store), else `~/.postgresql/root.crt`; without either, the
//! verifying modes fail as libpq does. SCRAM channel binding uses the
//! certificate this handshake yields (see `binding.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::conninfo::{ConnInfo, SslMode};
use super::error::ConnError;

/// Runs the TLS handshake on `tcp` for `host`.
pub(super) async fn handshake(
    tcp: TcpStream,
    info: &ConnInfo,
    host: &str,
    target: &str,
) -> Result<TlsStream<TcpStream>, ConnError> {
    let fail = |reason: String| ConnError::Tls {
        target: target.to_owned(),
        reason,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let root_file = root_file(info);
    let verify = match info.sslmode {
        SslMode::VerifyFull => Verify::Full,
        SslMode::VerifyCa => Verify::Chain,
        SslMode::Require if root_file.is_some() => Verify::Chain,
        _ => Verify::Nothing,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        Verify::Nothing => Arc::new(Lenient {
            provider: provider.clone(),
            chain: None,
        }),
        Verify::Chain | Verify::Full => {
            let roots = load_roots(info, root_file.as_deref()).map_err(fail)?;
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| fail(format!("cannot use the trusted roots: {e}")))?;
            if verify == Verify::Full {
                webpki
            } else {
                Arc::new(Lenient {
                    provider: provider.clone(),
                    chain: Some(webpki),
                })
            }
        }
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(format!("TLS setup: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| fail(format!("{host:?} is not a valid TLS server name")))?;
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| {
            let mut reason = format!("handshake failed: {e}");
            if verify != Verify::Nothing {
                reason.push_str(&format!(
                    " (sslmode={}: the server's certificate must chain to a root in {}{}",
                    info.sslmode.as_str(),
                    root_file.as_deref().map_or_else(
                        || "the system store".to_owned(),
                        |p| p.display().to_string()
                    ),
                    if verify == Verify::Full {
                        format!(" and name {host:?})")
                    } else {
                        ")".to_owned()
                    }
                ));
            }
            fail(reason)
        })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verify {
    Nothing,
    Chain,
    Full,
}

/// The root certificate file in force: `sslrootcert` unless `system`, else
/// `~/.postgresql/root.crt` if it exists.
fn root_file(info: &ConnInfo) -> Option<PathBuf> {
    match &info.sslrootcert {
        Some(p) if p == Path::new("system") => None,
        Some(p) => Some(p.clone()),
        None => std::env::var_os("HOME")
            .map(|home| PathBuf::from(home).join(".postgresql/root.crt"))
            .filter(|p| p.is_file()),
    }
}

fn load_roots(info: &ConnInfo, file: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match file {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|iter| iter.collect::<Result<_, _>>())
                .map_err(|e| {
                    format!("cannot read root certificates from {}: {e}", path.display())
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "{} holds no usable certificate: give a PEM file of the CA that signed the \
                     server's certificate",
                    path.display()
                ));
            }
        }
        None if info.sslrootcert.as_deref() == Some(Path::new("system")) => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err("the system certificate store holds no certificate".to_owned());
            }
        }
        None => {
            return Err(format!(
                "sslmode={} needs trusted roots: set sslrootcert to the CA's PEM file (or to \
                 `system` for the system store), or put it in ~/.postgresql/root.crt",
                info.sslmode.as_str()
            ));
        }
    }
    Ok(roots)
}

/// The modes that accept more than webpki would: `require` accepts any
/// certificate, `verify-ca` a verified chain that names another host. Both
/// still check the handshake signatures, so the session key belongs to the
/// certificate.
#[derive(Debug)]
struct Lenient {
    provider: Arc<CryptoProvider>,
    /// `verify-ca`: the chain must verify; `None` (`require`): anything goes.
    chain: Option<Arc<WebPkiServerVerifier>>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    // The chain's verifier was built with the same provider, so its
    // signature checks are these.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
