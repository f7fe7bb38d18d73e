//! Commands that take a CopyIn from the client (`UPLOAD_MANIFEST`, which
//! PostgreSQL 17 added for incremental base backups).

use bytes::Bytes;
use postgres_protocol::message::frontend;

use super::client::ReplicationClient;
use super::error::{ConnError, Context, classify};
use super::wire::parse_error;

/// Bytes per CopyData message sent: what `pg_basebackup` sends too.
const COPY_CHUNK: usize = 64 << 10;

impl ReplicationClient {
    /// Sends `sql`, which must answer with a CopyInResponse, then `data`
    /// through CopyData messages and CopyDone, and waits for the server's
    /// verdict (CommandComplete, then ReadyForQuery). A server error (e.g.
    /// a manifest it refuses) comes back as the classified [`ConnError`],
    /// with the connection still usable.
    pub async fn simple_query_copy_in(&mut self, sql: &str, data: &[u8]) -> Result<(), ConnError> {
        self.send_query(sql).await?;
        let mut error = None;
        let mut sent = false;
        loop {
            let frame = self.wire.read().await?;
            match frame.tag {
                b'G' if !sent => {
                    for part in data.chunks(COPY_CHUNK) {
                        let msg = frontend::CopyData::new(Bytes::copy_from_slice(part))
                            .map_err(|e| self.wire.io(e))?;
                        msg.write(&mut self.wire.out);
                        // Flush as we go: the whole manifest is never
                        // buffered twice.
                        self.wire.flush().await?;
                    }
                    frontend::copy_done(&mut self.wire.out);
                    self.wire.flush().await?;
                    sent = true;
                }
                b'C' | b'I' | b'N' | b'n' => {}
                b'E' => {
                    let err = classify(
                        &self.wire.target,
                        Context::Command { slot: None },
                        parse_error(&frame.body),
                    );
                    if matches!(err, ConnError::ServerGone { .. }) {
                        return Err(err);
                    }
                    error.get_or_insert(err);
                }
                b'Z' => break,
                _ => return Err(self.wire.unexpected(&frame, "a CopyIn command")),
            }
        }
        match error {
            Some(e) => Err(e),
            None if !sent => Err(self.wire.protocol(&format!(
                "{sql:?} did not ask for COPY data (no CopyInResponse)"
            ))),
            None => Ok(()),
        }
    }
}
