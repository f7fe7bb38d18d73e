//! An experiment, not a contender: a loopback TCP proxy between the server and
//! the pitr child that forwards the server's bytes in batches (whatever
//! arrives within `delay` of a batch's first byte, up to 256 KiB), and the
//! child's bytes at once. It shows what pitr would save by coalescing its
//! reads of small XLogData messages itself (`PITR_BENCH_COALESCE_MS`).

use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Largest batch forwarded at once.
const BATCH: usize = 256 << 10;

/// A running proxy; aborted on drop.
pub struct Proxy {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Listens on a free loopback port and forwards every connection to
/// `127.0.0.1:upstream`.
pub async fn start(upstream: u16, delay: Duration) -> anyhow::Result<Proxy> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("bind the proxy")?;
    let port = listener.local_addr().context("the proxy's port")?.port();
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((client, _)) = listener.accept().await {
            connections.spawn(async move {
                if let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await {
                    let _ = forward(client, server, delay).await;
                }
            });
        }
    });
    Ok(Proxy { port, task })
}

async fn forward(client: TcpStream, server: TcpStream, delay: Duration) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        let _ = server_write.shutdown().await;
    });
    let mut buf = vec![0u8; BATCH];
    loop {
        let n = server_read.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let mut len = n;
        let deadline = tokio::time::Instant::now() + delay;
        while len < buf.len() {
            match tokio::time::timeout_at(deadline, server_read.read(&mut buf[len..])).await {
                Ok(Ok(0)) | Err(_) => break,
                Ok(Ok(m)) => len += m,
                Ok(Err(e)) => return Err(e),
            }
        }
        client_write.write_all(&buf[..len]).await?;
    }
    upstream.abort();
    Ok(())
}
