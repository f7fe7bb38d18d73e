//! Opening a physical replication connection: socket, optional TLS, startup
//! message with `replication=true`, and authentication (trust, cleartext
//! password, md5, SCRAM-SHA-256).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;

use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{
    ChannelBinding, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramSha256,
};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::conninfo::{ChannelBindingMode, ConnInfo, Host, SslMode};
use super::error::{ConnError, Context, classify};
use super::tls;
use super::wire::{Socket, Wire, cstr, i32_, parse_error};
use crate::pg::{WalFormat, major_of_version};

/// A physical replication connection (`replication=true`): only simple
/// queries of the replication protocol work on it. See the operations in
/// `ops` and streaming in `copy`.
pub struct ReplicationClient {
    pub(super) wire: Wire,
    user: String,
    backend_pid: i32,
    tls: bool,
    /// The WAL facts of the server's major, known at connect.
    format: &'static WalFormat,
}

impl std::fmt::Debug for ReplicationClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationClient")
            .field("target", &self.wire.target)
            .field("user", &self.user)
            .field("backend_pid", &self.backend_pid)
            .field("tls", &self.tls)
            .finish()
    }
}

impl ReplicationClient {
    /// Connects and authenticates, within `info.connect_timeout` if set.
    pub async fn connect(info: &ConnInfo) -> Result<ReplicationClient, ConnError> {
        let target = info.target();
        match info.connect_timeout {
            Some(limit) => tokio::time::timeout(limit, connect(info, &target))
                .await
                .map_err(|_| ConnError::Timeout {
                    target,
                    timeout: limit,
                })?,
            None => connect(info, &target).await,
        }
    }

    /// `host:port` or the socket path this client is connected to.
    pub fn target(&self) -> &str {
        &self.wire.target
    }

    /// The role this connection logged in as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The process id of the server's WAL sender for this connection (what
    /// `pg_stat_replication.pid` shows).
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The WAL format of the server's major (`server_version` at startup;
    /// [`ReplicationClient::connect`] refuses majors pitr does not decode).
    pub fn wal_format(&self) -> &'static WalFormat {
        self.format
    }

    /// The server's major version (14, 15, ...).
    pub fn server_major(&self) -> u32 {
        self.format.major
    }

    /// A parameter the server reported at startup or since
    /// (`server_version`, `integer_datetimes`, ...).
    pub fn server_param(&self, name: &str) -> Option<&str> {
        self.wire.params.get(name).map(String::as_str)
    }

    /// All parameters the server reported.
    pub fn server_params(&self) -> &HashMap<String, String> {
        &self.wire.params
    }

    /// Sends Terminate and closes the connection.
    pub async fn close(mut self) -> Result<(), ConnError> {
        frontend::terminate(&mut self.wire.out);
        self.wire.flush().await
    }
}

/// A socket to the server of `info`, TLS negotiated as its `sslmode` asks,
/// before any startup message: what a plain SQL client (the fleet
/// catalog's) speaks its own protocol over. Bounded by
/// `info.connect_timeout` when set.
pub async fn open_socket(info: &ConnInfo) -> Result<PgSocket, ConnError> {
    let target = info.target();
    let open = open(info, &target);
    let (sock, tls) = match info.connect_timeout {
        Some(limit) => {
            tokio::time::timeout(limit, open)
                .await
                .map_err(|_| ConnError::Timeout {
                    target,
                    timeout: limit,
                })??
        }
        None => open.await?,
    };
    Ok(PgSocket { sock, tls })
}

/// A connected socket, encrypted when [`PgSocket::is_tls`] says so.
pub struct PgSocket {
    sock: Socket,
    tls: bool,
}

impl PgSocket {
    /// Whether the connection is encrypted (a unix socket never is).
    pub fn is_tls(&self) -> bool {
        self.tls
    }
}

impl tokio::io::AsyncRead for PgSocket {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().sock).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for PgSocket {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().sock).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().sock).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().sock).poll_shutdown(cx)
    }
}

/// The socket and whether it is encrypted.
async fn open(info: &ConnInfo, target: &str) -> Result<(Socket, bool), ConnError> {
    let unreachable = |source: io::Error| ConnError::Unreachable {
        target: target.to_owned(),
        source,
    };
    Ok(match &info.host {
        Host::Unix(dir) => {
            // TLS is never used on a unix socket, as in libpq.
            let path = dir.join(format!(".s.PGSQL.{}", info.port));
            (
                Socket::Unix(UnixStream::connect(&path).await.map_err(unreachable)?),
                false,
            )
        }
        Host::Tcp(name) => {
            let tcp = connect_tcp(name, info.port).await.map_err(unreachable)?;
            // Replication sends small status messages that must not wait.
            tcp.set_nodelay(true).map_err(unreachable)?;
            negotiate_tls(tcp, info, name, target).await?
        }
    })
}

async fn connect(info: &ConnInfo, target: &str) -> Result<ReplicationClient, ConnError> {
    let (sock, tls) = open(info, target).await?;
    // Taken before the socket moves into the wire: what SCRAM binds to.
    let end_point = match &sock {
        Socket::Tls(stream) => stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|cert| super::binding::tls_server_end_point(cert)),
        _ => None,
    };
    let mut wire = Wire::new(sock, target.to_owned());

    let params = [
        ("user", info.user.as_str()),
        ("database", info.dbname.as_str()),
        ("replication", "true"),
        ("application_name", info.application_name.as_str()),
    ];
    frontend::startup_message(params, &mut wire.out).map_err(|e| wire.io(e))?;
    wire.flush().await?;
    // A unix socket never leaves the host; TCP needs TLS to hide a password.
    let private = tls || matches!(info.host, Host::Unix(_));
    authenticate(&mut wire, info, private, tls, end_point).await?;

    let mut backend_pid = 0;
    loop {
        let frame = wire.read().await?;
        match frame.tag {
            b'K' => {
                let mut b = frame.body;
                backend_pid = i32_(&mut b).unwrap_or(0);
            }
            b'Z' => break,
            b'E' => return Err(startup_error(&wire, info, &frame.body)),
            _ => return Err(wire.unexpected(&frame, "startup")),
        }
    }
    // Refused here, before any command: every later step (the WAL decoder,
    // the base-backup syntax) depends on the major.
    let version = wire
        .params
        .get("server_version")
        .cloned()
        .unwrap_or_default();
    let Some(format) = major_of_version(&version).and_then(WalFormat::of_major) else {
        return Err(ConnError::UnsupportedMajor {
            target: wire.target.clone(),
            version,
        });
    };
    tracing::debug!(target = %wire.target, backend_pid, tls, major = format.major,
        "replication connection ready");
    Ok(ReplicationClient {
        wire,
        user: info.user.clone(),
        backend_pid,
        tls,
        format,
    })
}

/// Tries each address the name resolves to; returns the last error.
async fn connect_tcp(name: &str, port: u16) -> io::Result<TcpStream> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name, port)).await?.collect();
    let mut last = io::Error::new(
        io::ErrorKind::NotFound,
        format!("{name} resolves to no address"),
    );
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// SSLRequest and the handshake, as `sslmode` asks.
async fn negotiate_tls(
    mut tcp: TcpStream,
    info: &ConnInfo,
    host: &str,
    target: &str,
) -> Result<(Socket, bool), ConnError> {
    if info.sslmode == SslMode::Disable {
        return Ok((Socket::Tcp(tcp), false));
    }
    // Read exactly one byte: anything the server (or a man in the middle)
    // sends after it must go through TLS, never a plaintext buffer.
    let mut request = bytes::BytesMut::with_capacity(8);
    frontend::ssl_request(&mut request);
    let io = |source: io::Error| ConnError::Io {
        target: target.to_owned(),
        source,
    };
    tcp.write_all(&request).await.map_err(io)?;
    let answer = tcp.read_u8().await.map_err(io)?;
    match answer {
        b'S' => {
            let stream = tls::handshake(tcp, info, host, target).await?;
            Ok((Socket::Tls(Box::new(stream)), true))
        }
        b'N' if matches!(info.sslmode, SslMode::Allow | SslMode::Prefer) => {
            Ok((Socket::Tcp(tcp), false))
        }
        b'N' => Err(ConnError::Tls {
            target: target.to_owned(),
            reason: format!(
                "the server does not accept TLS connections, but sslmode={} requires TLS: set \
                 ssl = on (with ssl_cert_file and ssl_key_file) in postgresql.conf, or use \
                 sslmode=prefer",
                info.sslmode.as_str()
            ),
        }),
        other => Err(ConnError::Protocol {
            target: target.to_owned(),
            reason: format!(
                "answer {:?} to SSLRequest, expected 'S' or 'N'",
                other as char
            ),
        }),
    }
}

/// Where a SASL exchange stands: AuthenticationOk counts only after the
/// server proved (server-final, verified) that it knows the password.
enum Sasl {
    NotStarted,
    Started(ScramSha256),
    Verified,
}

/// Answers the server's authentication requests until AuthenticationOk.
/// `private`: the connection is encrypted or a unix socket, so a password
/// may be sent as the server asks. `end_point`: the TLS certificate's
/// binding data, when there is TLS and the certificate allows binding.
async fn authenticate(
    wire: &mut Wire,
    info: &ConnInfo,
    private: bool,
    tls: bool,
    end_point: Option<Vec<u8>>,
) -> Result<(), ConnError> {
    let mut sasl = Sasl::NotStarted;
    let mut bound = false;
    let target = wire.target.clone();
    let untrusted = |reason: String| ConnError::Untrusted {
        target: target.clone(),
        reason,
    };
    // Checked before the password is looked at: refused, it never leaves.
    let exposed = |method: &str| {
        if private || info.allow_insecure_password {
            return Ok(());
        }
        Err(untrusted(format!(
            "the server asks for the {method} password over an unencrypted connection, where \
             anyone on the path (or a server impersonating this one) could take it; use TLS \
             (sslmode=verify-full with sslrootcert), switch the role to scram-sha-256 in \
             pg_hba.conf, or set allow_insecure_password = true in the [[postgres]] entry to \
             accept the risk"
        )))
    };
    let password = |method: &'static str| {
        info.password
            .as_ref()
            .map(|p| p.expose().as_bytes())
            .ok_or_else(|| ConnError::NoPassword {
                target: target.clone(),
                user: info.user.clone(),
                method,
            })
    };
    loop {
        let frame = wire.read().await?;
        match frame.tag {
            b'R' => {}
            b'E' => return Err(startup_error(wire, info, &frame.body)),
            // NegotiateProtocolVersion: we ask for 3.0 and no _pq_ options.
            b'v' => continue,
            _ => return Err(wire.unexpected(&frame, "authentication")),
        }
        let mut body = frame.body;
        let Some(code) = i32_(&mut body) else {
            return Err(wire.protocol("authentication request without a code"));
        };
        match code {
            0 => {
                if let Sasl::Started(_) = sasl {
                    return Err(untrusted(
                        "the server reported success before completing the SCRAM exchange \
                         (no verified server signature), so it never proved it knows the \
                         password: it may not be the server it claims to be. Check host and \
                         port, and use sslmode=verify-full"
                            .to_owned(),
                    ));
                }
                if info.channel_binding == ChannelBindingMode::Require && !bound {
                    return Err(untrusted(
                        "channel_binding=require, but the server authenticated the connection \
                         without SCRAM channel binding (trust, md5, password, or SCRAM without \
                         -PLUS): use scram-sha-256 in a hostssl line of pg_hba.conf, or lower \
                         channel_binding to prefer"
                            .to_owned(),
                    ));
                }
                return Ok(());
            }
            3 => {
                exposed("cleartext")?;
                let pw = password("password")?;
                frontend::password_message(pw, &mut wire.out).map_err(|e| wire.io(e))?;
            }
            5 => {
                exposed("md5-hashed")?;
                let pw = password("md5")?;
                if body.len() < 4 {
                    return Err(wire.protocol("md5 request without a salt"));
                }
                let salt = [body[0], body[1], body[2], body[3]];
                let hash = md5_hash(info.user.as_bytes(), pw, salt);
                frontend::password_message(hash.as_bytes(), &mut wire.out)
                    .map_err(|e| wire.io(e))?;
            }
            10 => {
                let mut mechanisms = Vec::new();
                while let Some(m) = cstr(&mut body).filter(|m| !m.is_empty()) {
                    mechanisms.push(m);
                }
                if !mechanisms.iter().any(|m| m == SCRAM_SHA_256) {
                    return Err(wire.protocol(&format!(
                        "the server offers SASL mechanisms {mechanisms:?}, pitr speaks {SCRAM_SHA_256}"
                    )));
                }
                let plus = mechanisms.iter().any(|m| m == SCRAM_SHA_256_PLUS);
                let (mechanism, binding) = match (info.channel_binding, &end_point) {
                    (ChannelBindingMode::Disable, _) => {
                        (SCRAM_SHA_256, ChannelBinding::unsupported())
                    }
                    (_, Some(data)) if plus => {
                        bound = true;
                        (
                            SCRAM_SHA_256_PLUS,
                            ChannelBinding::tls_server_end_point(data.clone()),
                        )
                    }
                    (ChannelBindingMode::Require, _) => {
                        return Err(untrusted(format!(
                            "channel_binding=require, but {}: use TLS (sslmode=verify-full) to a \
                             server that offers SCRAM-SHA-256-PLUS (PostgreSQL 11+ with ssl = on), \
                             or lower channel_binding to prefer",
                            if !tls {
                                "the connection is not encrypted"
                            } else if end_point.is_none() {
                                "the server's certificate uses a signature algorithm without a \
                                 tls-server-end-point hash"
                            } else {
                                "the server does not offer SCRAM-SHA-256-PLUS"
                            }
                        )));
                    }
                    // Could bind, the server does not offer it: "y" lets a
                    // server that does support it detect a downgrade.
                    (_, Some(_)) => (SCRAM_SHA_256, ChannelBinding::unrequested()),
                    (_, None) => (SCRAM_SHA_256, ChannelBinding::unsupported()),
                };
                let pw = password(mechanism)?;
                let s = ScramSha256::new(pw, binding);
                frontend::sasl_initial_response(mechanism, s.message(), &mut wire.out)
                    .map_err(|e| wire.io(e))?;
                sasl = Sasl::Started(s);
            }
            11 => {
                let Sasl::Started(s) = &mut sasl else {
                    return Err(wire.protocol("SASL continue outside a SASL exchange"));
                };
                s.update(&body)
                    .map_err(|e| wire.protocol(&format!("SCRAM exchange failed: {e}")))?;
                frontend::sasl_response(s.message(), &mut wire.out).map_err(|e| wire.io(e))?;
            }
            12 => {
                let Sasl::Started(s) = &mut sasl else {
                    return Err(wire.protocol("SASL final outside a SASL exchange"));
                };
                s.finish(&body).map_err(|e| {
                    untrusted(format!(
                        "the server's SCRAM signature does not verify ({e}): it may not be the \
                         server it claims to be"
                    ))
                })?;
                sasl = Sasl::Verified;
                continue;
            }
            other => {
                let method = match other {
                    2 => "Kerberos V5",
                    7 | 8 => "GSSAPI",
                    9 => "SSPI",
                    _ => "an unknown method",
                };
                return Err(wire.protocol(&format!(
                    "the server asks for {method} authentication (code {other}), which pitr does \
                     not support: use scram-sha-256 or md5 in pg_hba.conf"
                )));
            }
        }
        wire.flush().await?;
    }
}

/// Classifies an ErrorResponse received before the connection was ready.
fn startup_error(wire: &Wire, info: &ConnInfo, body: &bytes::Bytes) -> ConnError {
    let server = parse_error(body);
    classify(
        &wire.target,
        Context::Startup {
            user: &info.user,
            password: info.password.as_ref().map(|p| p.source()),
        },
        server,
    )
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::super::fake::{read_startup, trust_login};
    use super::*;

    /// A loopback server that accepts one startup and answers it as a
    /// PostgreSQL server of `version` would (trust authentication); `None`
    /// reports no version at all.
    async fn fake_server(version: Option<&'static str>) -> (u16, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.expect("accept");
            read_startup(&mut sock).await;
            sock.write_all(&trust_login(version)).await.expect("write");
            // Hold the connection until the client closes it.
            let mut rest = Vec::new();
            let _ = sock.read_to_end(&mut rest).await;
        });
        (port, task)
    }

    async fn connect_to(version: Option<&'static str>) -> Result<ReplicationClient, ConnError> {
        let (port, server) = fake_server(version).await;
        let env = std::collections::BTreeMap::<&str, &str>::new();
        let info = ConnInfo::parse_with(
            &format!("host=127.0.0.1 port={port} user=u sslmode=disable connect_timeout=10"),
            &env,
        )
        .expect("conninfo");
        let client = ReplicationClient::connect(&info).await;
        server.abort();
        client
    }

    #[tokio::test]
    async fn majors_outside_14_to_18_are_refused_at_connect() {
        for version in [
            Some("13.16 (Debian 13.16-0+deb11u1)"),
            Some("19beta1"),
            Some("9.6.24"),
            None,
        ] {
            let err = connect_to(version).await.expect_err("refused");
            assert!(
                matches!(&err, ConnError::UnsupportedMajor { version: v, .. }
                    if v == version.unwrap_or_default()),
                "{version:?}: {err:?}"
            );
            assert!(!err.is_transient(), "{err}");
            let text = err.to_string();
            let said = match version {
                Some(v) => format!("runs version {v}"),
                None => "reported no server_version".to_owned(),
            };
            assert!(
                text.contains(&said) && text.contains("14, 15, 16, 17 and 18"),
                "{text}"
            );
        }
    }

    #[tokio::test]
    async fn supported_majors_connect_and_say_which() {
        for (version, major) in [
            ("14.23", 14),
            ("15.10 (Debian 15.10-0+deb12u1)", 15),
            ("18.6", 18),
        ] {
            let client = connect_to(Some(version)).await.expect("connects");
            assert_eq!(client.server_major(), major);
            assert_eq!(client.wal_format().major, major);
        }
    }
}
