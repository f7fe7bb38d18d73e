//! The server's side of the protocol for the unit tests' loopback servers:
//! framing, reading the startup, and a trust login's answer.

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// A backend message as the server frames it: tag, length, body.
pub(super) fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Reads (and drops) the client's startup message.
pub(super) async fn read_startup(sock: &mut TcpStream) {
    let len = sock.read_u32().await.expect("startup length") as usize;
    let mut startup = vec![0; len - 4];
    sock.read_exact(&mut startup).await.expect("startup");
}

/// A trust login's answer, as a server of `version` sends it (`None`: no
/// server_version at all): AuthenticationOk, ParameterStatus,
/// BackendKeyData, ReadyForQuery.
pub(super) fn trust_login(version: Option<&str>) -> Vec<u8> {
    let mut out = message(b'R', &0u32.to_be_bytes());
    if let Some(v) = version {
        out.extend(message(b'S', format!("server_version\0{v}\0").as_bytes()));
    }
    out.extend(message(b'K', &[0, 0, 0, 7, 0, 0, 0, 9]));
    out.extend(message(b'Z', b"I"));
    out
}
