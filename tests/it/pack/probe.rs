//! `pitr probe URL`, the image's health check, against a real HTTP server
//! on loopback: exit 0 on 2xx, 1 on anything else, on a refused connection
//! and on a server that does not answer within the timeout.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

/// Serves one connection with `status` (or never answers, for `None`) on a
/// thread; returns the URL.
fn serve_once(status: Option<&'static str>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let Ok((mut conn, _)) = listener.accept() else {
            return;
        };
        let mut buf = [0u8; 1024];
        let _ = conn.read(&mut buf);
        match status {
            Some(status) => {
                let body = "{\"status\":\"x\"}";
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
            // Holds the connection past the probe's timeout.
            None => std::thread::sleep(Duration::from_secs(4)),
        }
    });
    format!("http://{addr}/health")
}

fn probe(url: &str, extra: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pitr"))
        .arg("probe")
        .arg(url)
        .args(extra)
        .output()
        .expect("run pitr probe");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn probe_exits_0_on_2xx_and_1_otherwise() {
    assert_eq!(probe(&serve_once(Some("200 OK")), &[]).0, Some(0));
    let (code, err) = probe(&serve_once(Some("503 Service Unavailable")), &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("503"), "{err}");
    // Nothing listens there any more.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let (code, err) = probe(&format!("http://{closed}/health"), &[]);
    assert_eq!(code, Some(1), "{err}");
    let (code, err) = probe(&serve_once(None), &["--timeout", "1"]);
    assert_eq!(code, Some(1), "{err}");
}
