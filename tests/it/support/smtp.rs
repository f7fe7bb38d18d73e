//! A real SMTP server on loopback: Python's `aiosmtpd` (from PyPI, which
//! `.ci/setup` installs) with its Mailbox handler, storing each mail it
//! accepts in a maildir the test reads.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running SMTP server (plain text, no TLS, no login), killed on drop.
pub struct SmtpServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl SmtpServer {
    /// Starts aiosmtpd on a free port of 127.0.0.1.
    pub fn start() -> SmtpServer {
        SmtpServer::launch(false)
    }

    /// Starts aiosmtpd offering STARTTLS with a fresh self-signed
    /// certificate (which no client trusts), not requiring it.
    pub fn start_with_self_signed_starttls() -> SmtpServer {
        SmtpServer::launch(true)
    }

    fn launch(starttls: bool) -> SmtpServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut tls_args = Vec::new();
        if starttls {
            let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            let out = Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                ])
                .args(["-subj", "/CN=127.0.0.1", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .output()
                .expect("run openssl");
            assert!(out.status.success(), "openssl: {out:?}");
            tls_args.extend([
                "--tlscert".into(),
                cert.into_os_string(),
                "--tlskey".into(),
                key.into_os_string(),
                "--no-requiretls".into(),
            ]);
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = std::fs::File::create(dir.path().join("log")).expect("log");
        let child = Command::new("python3")
            .args(["-m", "aiosmtpd", "-n"])
            .args(&tls_args)
            .arg("-l")
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(dir.path().join("maildir"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start python3 -m aiosmtpd (pip install aiosmtpd; .ci/setup installs it)");
        let server = SmtpServer { child, port, dir };
        super::eventually_blocking("aiosmtpd listens", Duration::from_secs(30), || {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(_) => Ok(()),
                Err(_) => {
                    Err(std::fs::read_to_string(server.dir.path().join("log")).unwrap_or_default())
                }
            }
        });
        server
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The raw text of every mail received so far (headers, blank line,
    /// body; aiosmtpd adds `X-MailFrom` and `X-RcptTo` with the envelope).
    pub fn messages(&self) -> Vec<String> {
        let new: PathBuf = self.dir.path().join("maildir").join("new");
        let Ok(entries) = std::fs::read_dir(&new) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .collect()
    }

    /// Waits (at most `timeout`) until at least `n` mails arrived.
    pub fn wait_messages(&self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.messages();
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
