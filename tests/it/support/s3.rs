//! A real S3-compatible server on loopback for the tests: moto's server
//! (`moto_server`, from PyPI's `moto[server]`, which `.ci/setup` installs),
//! started on a free port in its own process, with a bucket made for the
//! test. It can be paused (`SIGSTOP`) to play a hung store.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running S3-compatible server, killed on drop.
pub struct S3Server {
    child: Child,
    port: u16,
    _log: tempfile::NamedTempFile,
}

impl S3Server {
    /// Starts the server and creates `bucket`.
    pub fn start(bucket: &str) -> S3Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = tempfile::NamedTempFile::new().expect("log file");
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.reopen().expect("log"))
            .stderr(log.reopen().expect("log"))
            .spawn()
            .expect("start moto_server (pip install 'moto[server]'; .ci/setup installs it)");
        let server = S3Server {
            child,
            port,
            _log: log,
        };
        super::eventually_blocking("moto_server listens", Duration::from_secs(60), || {
            TcpStream::connect(("127.0.0.1", port)).map(drop)
        });
        // moto takes unsigned requests: make the bucket with plain HTTP.
        let out = Command::new("curl")
            .args(["-sf", "-X", "PUT"])
            .arg(format!("{}/{bucket}", server.endpoint()))
            .output()
            .expect("curl");
        assert!(out.status.success(), "create bucket {bucket}: {out:?}");
        server
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A `[[destination]]` of kind s3 for this server.
    pub fn destination_toml(&self, name: &str, bucket: &str, prefix: &str) -> String {
        format!(
            "\n[[destination]]\nname = \"{name}\"\nkind = \"s3\"\nbucket = \"{bucket}\"\n\
             prefix = \"{prefix}\"\nregion = \"us-east-1\"\nendpoint = \"{}\"\n\
             access_key_id = \"testing\"\nsecret_access_key = \"testing\"\nrequest_timeout = 10\n",
            self.endpoint()
        )
    }

    /// Stops the server's process (`SIGSTOP`): connections hang.
    pub fn pause(&self) {
        signal(self.child.id(), "-STOP");
    }

    /// Lets it go on (`SIGCONT`).
    pub fn resume(&self) {
        signal(self.child.id(), "-CONT");
    }
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {sig} {pid}");
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
