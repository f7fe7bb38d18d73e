//! Streaming WAL: `START_REPLICATION` in CopyBoth mode
//! ([`ReplicationStream`]), to the end of a timeline or of the server.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use postgres_protocol::message::frontend;

use super::client::ReplicationClient;
use super::error::{ConnError, Context, classify};
use super::ops::check_slot_name;
use super::wire::{Frame, i64_, parse_error};
use crate::pg::Lsn;

/// Seconds from 1970-01-01 to 2000-01-01, PostgreSQL's epoch.
const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;

/// Now, in microseconds since 2000-01-01 UTC (PostgreSQL's `TimestampTz`).
pub fn pg_now_micros() -> i64 {
    let since_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let micros = since_unix.as_micros() as i64;
    micros - (PG_EPOCH_UNIX_SECS as i64) * 1_000_000
}

/// A message of the WAL stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplMessage {
    /// WAL bytes starting at `start`.
    XLogData {
        /// The position of `data[0]`.
        start: Lsn,
        /// The server's current end of WAL.
        end_of_wal: Lsn,
        /// When the server sent it (µs since 2000-01-01).
        send_time: i64,
        /// The WAL bytes (at most 128 KiB).
        data: Bytes,
    },
    /// The server's heartbeat.
    Keepalive {
        /// The server's current end of WAL.
        end_of_wal: Lsn,
        /// When the server sent it (µs since 2000-01-01).
        send_time: i64,
        /// The server wants a status update now, or it will disconnect us
        /// after `wal_sender_timeout`.
        reply_requested: bool,
    },
}

/// Where the next timeline starts, after the server ended a historic one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineEnd {
    /// The timeline that follows.
    pub next_tli: u32,
    /// Where it forks off the streamed one (the streamed timeline's WAL ends
    /// there).
    pub start: Lsn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Streaming,
    /// The server sent CopyDone and ours is queued: what is left is sending
    /// it and reading the result. A `next` cancelled here resumes here.
    Ending,
    /// The server finished the COPY; its result is read.
    Ended,
}

/// A running `START_REPLICATION`: read with [`ReplicationStream::next`],
/// report progress with [`ReplicationStream::send_status`].
#[derive(Debug)]
pub struct ReplicationStream {
    client: ReplicationClient,
    state: State,
    ended: Option<TimelineEnd>,
    /// The columns of the result after COPY, kept across a cancelled `next`.
    result_columns: Arc<[String]>,
}

impl ReplicationClient {
    /// `START_REPLICATION [SLOT slot] PHYSICAL start TIMELINE timeline`.
    ///
    /// `start` should be a segment boundary. Takes the client: get it back
    /// with [`ReplicationStream::into_client`] after the stream ended, or
    /// [`ReplicationStream::finish`] to end it early. On error the
    /// connection is dropped; reconnect.
    pub async fn start_replication(
        mut self,
        slot: Option<&str>,
        start: Lsn,
        timeline: u32,
    ) -> Result<ReplicationStream, ConnError> {
        let slot_clause = match slot {
            Some(s) => {
                check_slot_name(s)?;
                format!("SLOT {s} ")
            }
            None => String::new(),
        };
        let sql = format!("START_REPLICATION {slot_clause}PHYSICAL {start} TIMELINE {timeline}");
        self.send_query(&sql).await?;
        let frame = self.wire.read().await?;
        match frame.tag {
            b'W' => Ok(ReplicationStream {
                client: self,
                state: State::Streaming,
                ended: None,
                result_columns: Arc::from(Vec::new()),
            }),
            b'E' => Err(classify(
                &self.wire.target,
                Context::Command { slot },
                parse_error(&frame.body),
            )),
            // Start at the very end of a historic timeline: no COPY at all,
            // the next timeline's row comes at once.
            b'T' | b'D' | b'C' => {
                let mut stream = ReplicationStream {
                    client: self,
                    state: State::Ending,
                    ended: None,
                    result_columns: Arc::from(Vec::new()),
                };
                stream.read_result(Some(frame)).await?;
                Ok(stream)
            }
            _ => Err(self.wire.unexpected(&frame, "START_REPLICATION")),
        }
    }
}

impl ReplicationStream {
    /// The next WAL message; `Ok(None)` when the server ended the timeline
    /// (see [`ReplicationStream::ended`]). A server shutdown or a dropped
    /// connection is [`ConnError::ServerGone`].
    ///
    /// Cancel-safe: a message is either returned or stays buffered, and
    /// the end of a timeline, once seen, is finished by the next call, so
    /// `next` may race a timer in `tokio::select!`.
    pub async fn next(&mut self) -> Result<Option<ReplMessage>, ConnError> {
        match self.state {
            State::Ended => return Ok(None),
            State::Ending => {
                self.finish_ending().await?;
                return Ok(None);
            }
            State::Streaming => {}
        }
        let frame = self.client.wire.read().await?;
        match frame.tag {
            b'd' => self.parse_copy_data(frame.body).map(Some),
            b'c' => {
                // The server ended a historic timeline: confirm, then read
                // the next timeline's row. The state changes before any
                // await, so a cancelled call leaves nothing half done.
                frontend::copy_done(&mut self.client.wire.out);
                self.state = State::Ending;
                self.finish_ending().await?;
                Ok(None)
            }
            // A server shutting down ends COPY with CommandComplete alone.
            b'C' => Err(ConnError::ServerGone {
                target: self.client.wire.target.clone(),
                reason: "the server ended streaming without a next timeline".into(),
            }),
            b'E' => Err(classify(
                &self.client.wire.target,
                Context::Command { slot: None },
                parse_error(&frame.body),
            )),
            _ => Err(self.client.wire.unexpected(&frame, "streaming")),
        }
    }

    /// Sends our CopyDone (queued) and reads the result after COPY.
    async fn finish_ending(&mut self) -> Result<(), ConnError> {
        self.client.wire.flush().await?;
        self.read_result(None).await
    }

    /// Whether the next message would have to wait for the server: nothing
    /// received is left unreturned (see `Wire::drained`). A caller that
    /// naps before reading on lets the server's messages gather meanwhile.
    pub fn drained(&self) -> bool {
        self.client.wire.drained()
    }

    /// After `next` returned `Ok(None)`: where the next timeline starts, if
    /// the server said so.
    pub fn ended(&self) -> Option<TimelineEnd> {
        self.ended
    }

    /// Whether WAL may still come and status updates may be sent: false
    /// once the server has ended the COPY, even if `next` has not yet
    /// returned `Ok(None)`.
    pub fn is_streaming(&self) -> bool {
        self.state == State::Streaming
    }

    /// Sends a standby status update: `write` received, `flush` durably
    /// stored (the slot advances to it: report only what is safe), `apply`
    /// (for pitr, the same as flush). `reply_requested` asks the server for
    /// a keepalive back.
    pub async fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        reply_requested: bool,
    ) -> Result<(), ConnError> {
        if self.state != State::Streaming {
            return Err(self
                .client
                .wire
                .protocol("status update after the stream ended"));
        }
        let mut msg = BytesMut::with_capacity(34);
        msg.put_u8(b'r');
        msg.put_u64(write.0);
        msg.put_u64(flush.0);
        msg.put_u64(apply.0);
        msg.put_i64(pg_now_micros());
        msg.put_u8(u8::from(reply_requested));
        let data = frontend::CopyData::new(msg.freeze()).map_err(|e| self.client.wire.io(e))?;
        data.write(&mut self.client.wire.out);
        self.client.wire.flush().await
    }

    /// Ends streaming from our side (CopyDone), skips the WAL still in
    /// flight, and returns the client ready for the next command.
    pub async fn finish(mut self) -> Result<ReplicationClient, ConnError> {
        if self.state == State::Streaming {
            frontend::copy_done(&mut self.client.wire.out);
            self.client.wire.flush().await?;
            loop {
                let frame = self.client.wire.read().await?;
                match frame.tag {
                    b'd' => continue,
                    b'c' => break,
                    b'E' => {
                        return Err(classify(
                            &self.client.wire.target,
                            Context::Command { slot: None },
                            parse_error(&frame.body),
                        ));
                    }
                    _ => return Err(self.client.wire.unexpected(&frame, "ending a COPY")),
                }
            }
            self.read_result(None).await?;
        } else if self.state == State::Ending {
            self.finish_ending().await?;
        }
        Ok(self.client)
    }

    /// The client back, once `next` returned `Ok(None)`.
    pub fn into_client(self) -> Result<ReplicationClient, ConnError> {
        match self.state {
            State::Ended => Ok(self.client),
            State::Streaming | State::Ending => Err(self
                .client
                .wire
                .protocol("the stream has not ended: use finish() to end it")),
        }
    }

    /// The client, for reading server parameters while streaming.
    pub fn client(&self) -> &ReplicationClient {
        &self.client
    }

    fn parse_copy_data(&self, b: Bytes) -> Result<ReplMessage, ConnError> {
        decode_copy_data(b).map_err(|what| self.client.wire.protocol(&what))
    }

    /// Reads the result after COPY (the next timeline's row, if any) up to
    /// ReadyForQuery; `first` is a message already read. Resumable: the
    /// columns live in `self`, and every frame read is handled before the
    /// next await.
    async fn read_result(&mut self, mut first: Option<Frame>) -> Result<(), ConnError> {
        loop {
            let frame = match first.take() {
                Some(f) => f,
                None => self.client.wire.read().await?,
            };
            match frame.tag {
                b'T' => self.result_columns = self.client.row_description(&frame)?,
                b'D' => {
                    let row = self.client.data_row(&self.result_columns, &frame)?;
                    let next_tli = row.get_str(0).and_then(|t| t.parse().ok());
                    let start = row.get_str(1).and_then(|t| t.parse().ok());
                    match (next_tli, start) {
                        (Some(next_tli), Some(start)) => {
                            self.ended = Some(TimelineEnd { next_tli, start });
                        }
                        _ => {
                            return Err(self
                                .client
                                .wire
                                .protocol(&format!("timeline end row {row:?} is not (tli, lsn)")));
                        }
                    }
                }
                b'C' => {}
                b'E' => {
                    return Err(classify(
                        &self.client.wire.target,
                        Context::Command { slot: None },
                        parse_error(&frame.body),
                    ));
                }
                b'Z' => {
                    self.state = State::Ended;
                    return Ok(());
                }
                _ => return Err(self.client.wire.unexpected(&frame, "the end of streaming")),
            }
        }
    }
}

/// Parses one CopyData body of START_REPLICATION (`w` XLogData, `k`
/// keepalive), or says what is wrong with it. Bytes from the server: never
/// trusted, never a panic.
pub(crate) fn decode_copy_data(mut b: Bytes) -> Result<ReplMessage, String> {
    let bad = |what: &str| format!("malformed {what} message");
    match b.first() {
        Some(b'w') => {
            let _ = b.split_to(1);
            let (Some(start), Some(end), Some(time)) = (i64_(&mut b), i64_(&mut b), i64_(&mut b))
            else {
                return Err(bad("XLogData"));
            };
            Ok(ReplMessage::XLogData {
                start: Lsn(start as u64),
                end_of_wal: Lsn(end as u64),
                send_time: time,
                data: b,
            })
        }
        Some(b'k') => {
            let _ = b.split_to(1);
            let (Some(end), Some(time)) = (i64_(&mut b), i64_(&mut b)) else {
                return Err(bad("keepalive"));
            };
            let Some(&reply) = b.first() else {
                return Err(bad("keepalive"));
            };
            Ok(ReplMessage::Keepalive {
                end_of_wal: Lsn(end as u64),
                send_time: time,
                reply_requested: reply != 0,
            })
        }
        Some(&other) => Err(format!("unknown streaming message {:?}", other as char)),
        None => Err(bad("empty CopyData")),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::{BufMut, BytesMut};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::pg::conn::ConnInfo;
    use crate::pg::conn::fake::{message, read_startup, trust_login};

    /// Reads one tagged message and returns its tag.
    async fn read_tagged(sock: &mut TcpStream) -> u8 {
        let tag = sock.read_u8().await.expect("tag");
        let len = sock.read_u32().await.expect("length") as usize;
        let mut body = vec![0; len - 4];
        sock.read_exact(&mut body).await.expect("body");
        tag
    }

    /// The end of a historic timeline as the server sends it, with a pause
    /// between its CopyDone and the next timeline's row.
    async fn scripted_server(listener: TcpListener) {
        let (mut sock, _) = listener.accept().await.expect("accept");
        read_startup(&mut sock).await;
        sock.write_all(&trust_login(Some("15.10")))
            .await
            .expect("write");
        assert_eq!(read_tagged(&mut sock).await, b'Q');
        let mut out = message(b'W', &[0, 0, 0]);
        out.extend(message(b'c', &[]));
        sock.write_all(&out).await.expect("write");
        assert_eq!(read_tagged(&mut sock).await, b'c', "the client's CopyDone");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut t = BytesMut::new();
        t.put_u16(2);
        for name in ["next_tli", "next_tli_startpos"] {
            t.put_slice(name.as_bytes());
            t.put_u8(0);
            t.put_slice(&[0; 18]);
        }
        let mut d = BytesMut::new();
        d.put_u16(2);
        for value in ["2", "0/3000060"] {
            d.put_u32(value.len() as u32);
            d.put_slice(value.as_bytes());
        }
        let mut out = message(b'T', &t);
        out.extend(message(b'D', &d));
        out.extend(message(b'C', b"START_STREAMING\0"));
        out.extend(message(b'Z', b"I"));
        sock.write_all(&out).await.expect("write");
        // Hold the connection until the client is done.
        let _ = sock.read_u8().await;
    }

    #[tokio::test]
    async fn a_timeline_end_survives_a_cancelled_next() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(scripted_server(listener));
        let env = std::collections::BTreeMap::<&str, &str>::new();
        let info = ConnInfo::parse_with(
            &format!("host=127.0.0.1 port={port} user=u sslmode=disable"),
            &env,
        )
        .expect("conninfo");
        let client = ReplicationClient::connect(&info).await.expect("connect");
        let mut stream = client
            .start_replication(None, Lsn(0x200_0000), 1)
            .await
            .expect("CopyBoth");
        // A timer wins the race while `next` waits for the row after
        // CopyDone, as the streamer's partial and status timers do.
        tokio::select! {
            msg = stream.next() => panic!("the row came early: {msg:?}"),
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        assert!(!stream.is_streaming());
        let err = stream
            .send_status(Lsn(1), Lsn(1), Lsn(1), false)
            .await
            .expect_err("no status after the server ended COPY");
        assert!(err.to_string().contains("after the stream ended"), "{err}");
        // The next call finishes the end of the timeline.
        let next = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("in time")
            .expect("no error");
        assert_eq!(next, None);
        assert_eq!(
            stream.ended(),
            Some(TimelineEnd {
                next_tli: 2,
                start: Lsn(0x300_0060)
            })
        );
        drop(stream.into_client().expect("the client is back"));
        server.await.expect("the server script ran");
    }
}
