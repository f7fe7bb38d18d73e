//! The byte level: a socket (TCP, unix, or TLS over TCP), bounded framing of
//! backend messages (`Byte1 tag, Int32 length`, read by hand because
//! `postgres_protocol`'s `Message::parse` does not know CopyBothResponse), and
//! decoders for the few message bodies the client reads.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use super::error::{ConnError, ServerError};

/// The largest backend message accepted. XLogData carries at most 128 KiB,
/// BASE_BACKUP sends 32 KiB CopyData; anything near this is a broken or
/// hostile peer, and refusing it keeps memory bounded.
pub(super) const MAX_MESSAGE: usize = 16 << 20;
/// How much to ask the socket for at a time.
const READ_CHUNK: usize = 64 << 10;

/// A connected socket.
pub(super) enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One backend message: its tag and its body (without tag and length).
#[derive(Debug)]
pub(super) struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

/// A socket with a bounded read buffer and a write buffer.
pub(super) struct Wire {
    sock: Socket,
    rbuf: BytesMut,
    /// Messages to send; [`Wire::flush`] writes them.
    pub out: BytesMut,
    /// `host:port` or socket path, for messages.
    pub target: String,
    /// ParameterStatus values the server reported.
    pub params: HashMap<String, String>,
    /// Whether the last read from the socket filled all the room the
    /// buffer had: then the socket likely holds more.
    last_read_full: bool,
}

impl Wire {
    pub fn new(sock: Socket, target: String) -> Wire {
        Wire {
            sock,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            out: BytesMut::with_capacity(1024),
            target,
            params: HashMap::new(),
            last_read_full: false,
        }
    }

    /// Whether everything received was returned and the socket likely holds
    /// nothing more: no whole message is buffered, and the last read did not
    /// fill the buffer. The next read would wait for the server.
    pub fn drained(&self) -> bool {
        if self.last_read_full {
            return false;
        }
        if self.rbuf.len() < 5 {
            return true;
        }
        let len = u32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]);
        self.rbuf.len() <= len as usize
    }

    /// Writes every buffered message. Resumable: if cancelled, what was
    /// not yet written stays buffered (and nothing twice), so the next
    /// `flush` sends the rest.
    pub async fn flush(&mut self) -> Result<(), ConnError> {
        let result = async {
            self.sock.write_all_buf(&mut self.out).await?;
            self.sock.flush().await
        }
        .await;
        if result.is_err() {
            self.out.clear();
        }
        result.map_err(|e| match e.kind() {
            // The server went away between our reads (a restart, a crash):
            // the same as reading the end of the connection.
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => ConnError::ServerGone {
                target: self.target.clone(),
                reason: format!("writing to the connection failed: {e}"),
            },
            _ => self.io(e),
        })
    }

    /// The next message that is not a notice, parameter status or
    /// notification (those are logged or recorded). Cancel-safe: a message
    /// is either returned whole or stays buffered.
    pub async fn read(&mut self) -> Result<Frame, ConnError> {
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                b'N' => {
                    let notice = parse_error(&frame.body);
                    tracing::info!(target = %self.target, "server notice: {notice}");
                }
                b'S' => {
                    let mut b = frame.body;
                    if let (Some(k), Some(v)) = (cstr(&mut b), cstr(&mut b)) {
                        self.params.insert(k, v);
                    }
                }
                b'A' => {}
                _ => return Ok(frame),
            }
        }
    }

    async fn read_frame(&mut self) -> Result<Frame, ConnError> {
        loop {
            if self.rbuf.len() >= 5 {
                let tag = self.rbuf[0];
                let len =
                    u32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]])
                        as usize;
                if len < 4 {
                    return Err(
                        self.protocol(&format!("message {:?} with length {len}", tag as char))
                    );
                }
                if len > MAX_MESSAGE {
                    return Err(self.protocol(&format!(
                        "message {:?} of {len} bytes exceeds the {MAX_MESSAGE}-byte limit",
                        tag as char
                    )));
                }
                if self.rbuf.len() > len {
                    self.rbuf.advance(5);
                    let body = self.rbuf.split_to(len - 4).freeze();
                    return Ok(Frame { tag, body });
                }
                self.rbuf.reserve(len + 1 - self.rbuf.len());
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> Result<(), ConnError> {
        self.rbuf.reserve(READ_CHUNK);
        let room = self.rbuf.capacity() - self.rbuf.len();
        match self.sock.read_buf(&mut self.rbuf).await {
            Ok(0) => Err(ConnError::ServerGone {
                target: self.target.clone(),
                reason: "the server closed the connection".into(),
            }),
            Ok(n) => {
                self.last_read_full = n == room;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Err(ConnError::ServerGone {
                target: self.target.clone(),
                reason: format!("the connection was reset: {e}"),
            }),
            Err(e) => Err(self.io(e)),
        }
    }

    pub fn io(&self, source: io::Error) -> ConnError {
        ConnError::Io {
            target: self.target.clone(),
            source,
        }
    }

    pub fn protocol(&self, reason: &str) -> ConnError {
        ConnError::Protocol {
            target: self.target.clone(),
            reason: reason.to_owned(),
        }
    }

    /// The error for a message that should not come now.
    pub fn unexpected(&self, frame: &Frame, during: &str) -> ConnError {
        self.protocol(&format!(
            "unexpected message {:?} ({} bytes) during {during}",
            frame.tag as char,
            frame.body.len()
        ))
    }
}

/// A NUL-terminated string from the front of `b`.
pub(super) fn cstr(b: &mut Bytes) -> Option<String> {
    let end = b.iter().position(|&c| c == 0)?;
    let s = String::from_utf8_lossy(&b[..end]).into_owned();
    b.advance(end + 1);
    Some(s)
}

/// Big-endian integers from the front of `b`.
pub(super) fn i16_(b: &mut Bytes) -> Option<i16> {
    (b.len() >= 2).then(|| b.get_i16())
}

pub(super) fn i32_(b: &mut Bytes) -> Option<i32> {
    (b.len() >= 4).then(|| b.get_i32())
}

pub(super) fn i64_(b: &mut Bytes) -> Option<i64> {
    (b.len() >= 8).then(|| b.get_i64())
}

/// The fields of an ErrorResponse or NoticeResponse body.
pub(crate) fn parse_error(body: &Bytes) -> ServerError {
    let mut b = body.clone();
    let mut e = ServerError::default();
    while let Some(kind) = (!b.is_empty()).then(|| b.get_u8()) {
        if kind == 0 {
            break;
        }
        let Some(value) = cstr(&mut b) else { break };
        match kind {
            b'V' => e.severity = value,
            b'S' if e.severity.is_empty() => e.severity = value,
            b'C' => e.code = value,
            b'M' => e.message = value,
            b'D' => e.detail = Some(value),
            b'H' => e.hint = Some(value),
            _ => {}
        }
    }
    e
}

/// Column names of a RowDescription.
pub(crate) fn parse_row_description(body: &Bytes) -> Option<Vec<String>> {
    let mut b = body.clone();
    let n = i16_(&mut b)?;
    let mut names = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        names.push(cstr(&mut b)?);
        // table oid, column number, type oid, size, typmod, format
        if b.len() < 18 {
            return None;
        }
        b.advance(18);
    }
    Some(names)
}

/// The values of a DataRow; NULL is `None`. The values share the body's
/// memory.
pub(crate) fn parse_data_row(body: &Bytes) -> Option<Vec<Option<Bytes>>> {
    let mut b = body.clone();
    let n = i16_(&mut b)?;
    let mut values = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let len = i32_(&mut b)?;
        if len < 0 {
            values.push(None);
        } else {
            let len = len as usize;
            if b.len() < len {
                return None;
            }
            values.push(Some(b.split_to(len)));
        }
    }
    Some(values)
}
