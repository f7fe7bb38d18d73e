//! Commands that answer with a CopyOut between result sets
//! ([`CopyOutStream`], for `BASE_BACKUP`).

use std::sync::Arc;

use bytes::Bytes;

use super::client::ReplicationClient;
use super::error::{ConnError, Context, classify};
use super::ops::Row;
use super::wire::{cstr, parse_error};

/// What a command with a CopyOut produces, in the server's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyOutEvent {
    /// A result set begins: its column names.
    RowDescription(Vec<String>),
    /// A row of the current result set.
    Row(Row),
    /// CopyOutResponse: the CopyData that follows is the copy's.
    CopyStart,
    /// One CopyData payload.
    CopyData(Bytes),
    /// CopyDone: the copy ended.
    CopyDone,
    /// CommandComplete, with its tag.
    CommandComplete(String),
}

/// A command whose answer mixes result sets and a CopyOut (`BASE_BACKUP`):
/// read [`CopyOutEvent`]s until `Ok(None)` (ReadyForQuery).
///
/// Dropping it before the end leaves the connection mid-command: drop the
/// client too and reconnect.
#[derive(Debug)]
pub struct CopyOutStream<'a> {
    client: &'a mut ReplicationClient,
    columns: Arc<[String]>,
    done: bool,
}

impl ReplicationClient {
    /// Sends `sql` (a simple query whose answer contains a CopyOut) and
    /// returns the events of its answer.
    pub async fn simple_query_copy_out(
        &mut self,
        sql: &str,
    ) -> Result<CopyOutStream<'_>, ConnError> {
        self.send_query(sql).await?;
        Ok(CopyOutStream {
            client: self,
            columns: Arc::from(Vec::new()),
            done: false,
        })
    }
}

impl CopyOutStream<'_> {
    /// The next event; `Ok(None)` once the server is ready for the next
    /// command. A server error ends the stream with the error (after the
    /// server's ReadyForQuery was read, so the client stays usable).
    /// Cancel-safe.
    pub async fn next(&mut self) -> Result<Option<CopyOutEvent>, ConnError> {
        if self.done {
            return Ok(None);
        }
        let frame = self.client.wire.read().await?;
        let event = match frame.tag {
            b'T' => {
                self.columns = self.client.row_description(&frame)?;
                CopyOutEvent::RowDescription(self.columns.to_vec())
            }
            b'D' => CopyOutEvent::Row(self.client.data_row(&self.columns, &frame)?),
            b'H' => CopyOutEvent::CopyStart,
            b'd' => CopyOutEvent::CopyData(frame.body),
            b'c' => CopyOutEvent::CopyDone,
            b'C' => {
                let mut b = frame.body;
                CopyOutEvent::CommandComplete(cstr(&mut b).unwrap_or_default())
            }
            b'Z' => {
                self.done = true;
                return Ok(None);
            }
            b'E' => {
                let err = classify(
                    &self.client.wire.target,
                    Context::Command { slot: None },
                    parse_error(&frame.body),
                );
                // Skip to ReadyForQuery so the client can go on.
                if !matches!(err, ConnError::ServerGone { .. }) {
                    loop {
                        let f = self.client.wire.read().await?;
                        if f.tag == b'Z' {
                            break;
                        }
                    }
                }
                self.done = true;
                return Err(err);
            }
            _ => return Err(self.client.wire.unexpected(&frame, "a CopyOut command")),
        };
        Ok(Some(event))
    }
}
