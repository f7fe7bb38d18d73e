//! Servers that are not what they claim, on a loopback listener: each
//! answers the startup message with a scripted authentication exchange
//! and records every byte pitr sent.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::fake::{message, read_startup};
use super::{ConnError, ConnInfo, ReplicationClient};

/// An authentication request `R` with `code` and `rest`.
fn auth(code: i32, rest: &[u8]) -> Vec<u8> {
    message(b'R', &[&code.to_be_bytes()[..], rest].concat())
}

/// Accepts one connection, reads the startup message, sends `script`
/// (waiting for one client message after each step but the last), then
/// returns everything the client sent until it closed.
async fn impostor(script: Vec<Vec<u8>>) -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.expect("accept");
        let mut seen = Vec::new();
        read_startup(&mut sock).await;
        let steps = script.len();
        for (i, step) in script.into_iter().enumerate() {
            sock.write_all(&step).await.expect("write");
            if i + 1 < steps {
                let mut head = [0u8; 5];
                if sock.read_exact(&mut head).await.is_err() {
                    return seen;
                }
                let n = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
                let mut body = vec![0; usize::try_from(n - 4).expect("length")];
                sock.read_exact(&mut body).await.expect("message");
                seen.extend_from_slice(&head);
                seen.extend_from_slice(&body);
            }
        }
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut rest)).await;
        seen.extend_from_slice(&rest);
        seen
    });
    (port, task)
}

fn info(port: u16, extra: &str) -> ConnInfo {
    let env: std::collections::BTreeMap<&str, &str> = Default::default();
    ConnInfo::parse_with(
        &format!(
            "host=127.0.0.1 port={port} user=rep password=the-secret-pw sslmode=disable connect_timeout=10 {extra}"
        ),
        &env,
    )
    .expect("conninfo")
}

/// Connects with `info`, which must fail as untrusted (`expect` says why
/// it must fail), with a message that mentions `says`.
async fn refused_as_untrusted(info: &ConnInfo, expect: &str, says: &str) {
    let err = ReplicationClient::connect(info).await.expect_err(expect);
    assert!(matches!(err, ConnError::Untrusted { .. }), "{err:?}");
    assert!(err.to_string().contains(says), "{err}");
}

const READY: &[u8] = b"Z\0\0\0\x05I";
/// `ParameterStatus` naming a supported major: a login that counts must
/// also pass the check of the server's major.
const SERVER_VERSION: &[u8] = b"S\0\0\0\x18server_version\x0015.4\0";

#[tokio::test]
async fn an_impostor_that_skips_scram_with_authentication_ok_is_refused() {
    let sasl = b"SCRAM-SHA-256\0\0".to_vec();
    let ok = [auth(0, &[]), READY.to_vec()].concat();
    let (port, server) = impostor(vec![auth(10, &sasl), ok]).await;
    refused_as_untrusted(
        &info(port, ""),
        "an unfinished SCRAM exchange must not log in",
        "SCRAM",
    )
    .await;
    let seen = server.await.expect("server");
    assert!(
        !seen.windows(13).any(|w| w == b"the-secret-pw"),
        "SCRAM never sends the password"
    );
}

#[tokio::test]
async fn channel_binding_require_refuses_an_unencrypted_scram_exchange() {
    let sasl = b"SCRAM-SHA-256\0SCRAM-SHA-256-PLUS\0\0".to_vec();
    let (port, server) = impostor(vec![auth(10, &sasl), auth(0, &[])]).await;
    refused_as_untrusted(
        &info(port, "channel_binding=require"),
        "nothing to bind to without TLS",
        "not encrypted",
    )
    .await;
    let _ = server.await;
}

#[tokio::test]
async fn an_impostor_whose_server_final_is_forged_is_refused() {
    let sasl = b"SCRAM-SHA-256\0\0".to_vec();
    // A server-first with a nonce that does not extend the client's fails
    // the exchange at once; the point is that no path ends in success.
    let (port, server) = impostor(vec![
        auth(10, &sasl),
        auth(11, b"r=forged,s=c2FsdA==,i=4096"),
    ])
    .await;
    let err = ReplicationClient::connect(&info(port, ""))
        .await
        .expect_err("a forged exchange must not log in");
    assert!(
        !matches!(err, ConnError::Unreachable { .. }),
        "refused for the exchange, not the network: {err:?}"
    );
    let _ = server.await;
}

#[tokio::test]
async fn cleartext_and_md5_are_refused_without_tls_unless_allowed() {
    for (code, rest) in [(3, Vec::new()), (5, b"salt".to_vec())] {
        let (port, server) = impostor(vec![auth(code, &rest), auth(0, &[])]).await;
        refused_as_untrusted(
            &info(port, ""),
            "no password over plain TCP",
            "allow_insecure_password",
        )
        .await;
        let seen = server.await.expect("server");
        assert!(
            !seen.contains(&b'p'),
            "code {code}: a password message was sent: {seen:?}"
        );
    }
    // With the leave, the cleartext password goes (and the login counts).
    let (port, server) = impostor(vec![
        auth(3, &[]),
        [auth(0, &[]), SERVER_VERSION.to_vec(), READY.to_vec()].concat(),
    ])
    .await;
    let mut allowed = info(port, "");
    allowed.allow_insecure_password = true;
    let client = ReplicationClient::connect(&allowed).await.expect("allowed");
    drop(client);
    let seen = server.await.expect("server");
    assert!(seen.windows(13).any(|w| w == b"the-secret-pw"));
}
