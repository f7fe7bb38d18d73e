//! Replication commands that answer with rows: `IDENTIFY_SYSTEM`,
//! `READ_REPLICATION_SLOT`, `CREATE_REPLICATION_SLOT`,
//! `DROP_REPLICATION_SLOT`, `TIMELINE_HISTORY`, `SHOW`, and the generic
//! [`ReplicationClient::simple_query`] under them.

use std::sync::Arc;

use bytes::Bytes;
use postgres_protocol::message::frontend;

use super::client::ReplicationClient;
use super::error::{ConnError, Context, classify};
use super::wire::{Frame, parse_data_row, parse_error, parse_row_description};
use crate::pg::Lsn;

/// Bound on the rows one simple query may return, in bytes: replication
/// commands answer with a few short rows.
const MAX_RESULT: usize = 64 << 20;

/// One result row. Values are the server's text (or, for `TIMELINE_HISTORY`
/// content, raw bytes); NULL is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    columns: Arc<[String]>,
    values: Vec<Option<Bytes>>,
}

impl Row {
    pub(super) fn new(columns: Arc<[String]>, values: Vec<Option<Bytes>>) -> Row {
        Row { columns, values }
    }

    /// Column names, from the RowDescription.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The number of values.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the row has no values.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Value `i` as bytes; `None` for NULL or past the end.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        self.values.get(i)?.as_deref()
    }

    /// Value `i` as text; `None` for NULL, past the end, or not UTF-8.
    pub fn get_str(&self, i: usize) -> Option<&str> {
        std::str::from_utf8(self.get(i)?).ok()
    }

    /// The value of the column called `name` as text.
    pub fn get_by_name(&self, name: &str) -> Option<&str> {
        self.get_str(self.columns.iter().position(|c| c == name)?)
    }

    /// Value `i` as shared bytes.
    pub fn bytes(&self, i: usize) -> Option<Bytes> {
        self.values.get(i)?.clone()
    }
}

/// `IDENTIFY_SYSTEM`'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemInfo {
    /// The cluster's system identifier (`pg_control_system()`), in decimal.
    pub system_id: String,
    /// The server's current timeline.
    pub timeline: u32,
    /// The current WAL flush position.
    pub xlogpos: Lsn,
    /// The database of a logical connection; `None` on physical ones.
    pub dbname: Option<String>,
}

/// `READ_REPLICATION_SLOT`'s answer for an existing slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// `physical` or `logical`.
    pub slot_type: String,
    /// The oldest WAL the slot keeps; `None` before first use of a slot
    /// made without RESERVE_WAL.
    pub restart_lsn: Option<Lsn>,
    /// The timeline of `restart_lsn`.
    pub restart_tli: Option<u32>,
}

impl SlotInfo {
    /// A physical slot whose position cannot be read (PostgreSQL 14).
    fn unknown() -> SlotInfo {
        SlotInfo {
            slot_type: "physical".to_owned(),
            restart_lsn: None,
            restart_tli: None,
        }
    }
}

/// A timeline history file fetched with `TIMELINE_HISTORY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineHistory {
    /// `TTTTTTTT.history`.
    pub file_name: String,
    /// The file's bytes, exactly as on the server.
    pub content: Bytes,
}

impl ReplicationClient {
    /// Runs one simple query and returns its rows (of the last result set,
    /// if the command returns several). An ErrorResponse becomes
    /// [`ConnError::Server`] or a more specific case.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Row>, ConnError> {
        self.query_about(sql, None).await
    }

    /// [`ReplicationClient::simple_query`], classifying errors about `slot`.
    pub(super) async fn query_about(
        &mut self,
        sql: &str,
        slot: Option<&str>,
    ) -> Result<Vec<Row>, ConnError> {
        self.send_query(sql).await?;
        let mut columns: Arc<[String]> = Arc::from(Vec::new());
        let mut rows = Vec::new();
        let mut size = 0usize;
        let mut error = None;
        loop {
            let frame = self.wire.read().await?;
            match frame.tag {
                b'T' => {
                    columns = self.row_description(&frame)?;
                    rows.clear();
                }
                b'D' => {
                    size += frame.body.len();
                    if size > MAX_RESULT {
                        error.get_or_insert_with(|| {
                            self.wire.protocol(&format!(
                                "{sql:?} returned more than {MAX_RESULT} bytes of rows"
                            ))
                        });
                        continue;
                    }
                    rows.push(self.data_row(&columns, &frame)?);
                }
                b'C' | b'I' | b'n' => {}
                b'E' => {
                    let server = parse_error(&frame.body);
                    let err = classify(&self.wire.target, Context::Command { slot }, server);
                    if matches!(err, ConnError::ServerGone { .. }) {
                        return Err(err);
                    }
                    error.get_or_insert(err);
                }
                b'H' | b'W' | b'G' => {
                    // End the COPY from our side and skip its data, so the
                    // connection stays usable.
                    match frame.tag {
                        b'G' => frontend::copy_fail("pitr sends no COPY data", &mut self.wire.out)
                            .map_err(|e| self.wire.io(e))?,
                        b'W' => frontend::copy_done(&mut self.wire.out),
                        _ => {}
                    }
                    self.wire.flush().await?;
                    error.get_or_insert_with(|| {
                        self.wire.protocol(&format!(
                            "{sql:?} started a COPY: use simple_query_copy_out or \
                             start_replication for it"
                        ))
                    });
                }
                b'd' | b'c' if error.is_some() => {}
                b'Z' => break,
                _ => return Err(self.wire.unexpected(&frame, "a simple query")),
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    pub(super) async fn send_query(&mut self, sql: &str) -> Result<(), ConnError> {
        frontend::query(sql, &mut self.wire.out).map_err(|e| self.wire.io(e))?;
        self.wire.flush().await
    }

    pub(super) fn row_description(&self, frame: &Frame) -> Result<Arc<[String]>, ConnError> {
        parse_row_description(&frame.body)
            .map(Arc::from)
            .ok_or_else(|| self.wire.protocol("malformed RowDescription"))
    }

    pub(super) fn data_row(
        &self,
        columns: &Arc<[String]>,
        frame: &Frame,
    ) -> Result<Row, ConnError> {
        let values =
            parse_data_row(&frame.body).ok_or_else(|| self.wire.protocol("malformed DataRow"))?;
        Ok(Row::new(columns.clone(), values))
    }

    /// `IDENTIFY_SYSTEM`: system id, timeline, current flush position.
    pub async fn identify_system(&mut self) -> Result<SystemInfo, ConnError> {
        let row = self.one_row("IDENTIFY_SYSTEM", None).await?;
        Ok(SystemInfo {
            system_id: self.text(&row, 0, "systemid")?.to_owned(),
            timeline: self.number(&row, 1, "timeline")?,
            xlogpos: self.lsn(&row, 2, "xlogpos")?,
            dbname: row.get_str(3).map(str::to_owned),
        })
    }

    /// `READ_REPLICATION_SLOT name` (PostgreSQL 15+): `None` if no such slot.
    /// PostgreSQL 14 has no such command: [`ConnError::Protocol`] saying so
    /// (see [`ReplicationClient::physical_slot`]).
    pub async fn read_replication_slot(
        &mut self,
        name: &str,
    ) -> Result<Option<SlotInfo>, ConnError> {
        check_slot_name(name)?;
        if self.server_major() < 15 {
            return Err(self.wire.protocol(&format!(
                "PostgreSQL {} has no READ_REPLICATION_SLOT (it came with 15): query \
                 pg_replication_slots instead",
                self.server_major()
            )));
        }
        let row = self
            .one_row(&format!("READ_REPLICATION_SLOT {name}"), Some(name))
            .await?;
        let Some(slot_type) = row.get_str(0) else {
            return Ok(None);
        };
        Ok(Some(SlotInfo {
            slot_type: slot_type.to_owned(),
            restart_lsn: match row.get(1) {
                None => None,
                Some(_) => Some(self.lsn(&row, 1, "restart_lsn")?),
            },
            restart_tli: match row.get(2) {
                None => None,
                Some(_) => Some(self.number(&row, 2, "restart_tli")?),
            },
        }))
    }

    /// `CREATE_REPLICATION_SLOT name PHYSICAL [(RESERVE_WAL)]`, then the
    /// slot as `READ_REPLICATION_SLOT` shows it: with RESERVE_WAL its
    /// `restart_lsn` is where WAL is kept from; without, `None` until first
    /// used. (The command's own `consistent_point` is always 0/0 for
    /// physical slots.)
    ///
    /// PostgreSQL 14 takes the older unparenthesised `RESERVE_WAL` and cannot
    /// show the slot: there the result's `restart_lsn` is `None`.
    pub async fn create_physical_slot(
        &mut self,
        name: &str,
        reserve_wal: bool,
    ) -> Result<SlotInfo, ConnError> {
        check_slot_name(name)?;
        let legacy = self.server_major() < 15;
        let options = match (reserve_wal, legacy) {
            (false, _) => "",
            (true, false) => " (RESERVE_WAL)",
            (true, true) => " RESERVE_WAL",
        };
        self.one_row(
            &format!("CREATE_REPLICATION_SLOT {name} PHYSICAL{options}"),
            Some(name),
        )
        .await?;
        if legacy {
            return Ok(SlotInfo::unknown());
        }
        self.read_replication_slot(name).await?.ok_or_else(|| {
            self.wire.protocol(&format!(
                "slot {name:?} vanished right after it was created"
            ))
        })
    }

    /// The physical slot `name`, created (reserving WAL) if missing. On
    /// PostgreSQL 14, which cannot show a slot over replication, an existing
    /// slot is found by failing to create it, and its `restart_lsn` is `None`.
    pub async fn physical_slot(&mut self, name: &str) -> Result<SlotInfo, ConnError> {
        if self.server_major() >= 15 {
            return match self.read_replication_slot(name).await? {
                Some(slot) => Ok(slot),
                None => self.create_physical_slot(name, true).await,
            };
        }
        match self.create_physical_slot(name, true).await {
            Err(ConnError::SlotExists { .. }) => Ok(SlotInfo::unknown()),
            other => other,
        }
    }

    /// `DROP_REPLICATION_SLOT name [WAIT]`; with `wait`, waits until no
    /// one uses the slot instead of failing with [`ConnError::SlotInUse`].
    pub async fn drop_slot(&mut self, name: &str, wait: bool) -> Result<(), ConnError> {
        check_slot_name(name)?;
        let wait = if wait { " WAIT" } else { "" };
        self.query_about(&format!("DROP_REPLICATION_SLOT {name}{wait}"), Some(name))
            .await
            .map(drop)
    }

    /// `TIMELINE_HISTORY tli`: the history file of a timeline (2 and up).
    pub async fn timeline_history(&mut self, timeline: u32) -> Result<TimelineHistory, ConnError> {
        let row = self
            .one_row(&format!("TIMELINE_HISTORY {timeline}"), None)
            .await?;
        Ok(TimelineHistory {
            file_name: self.text(&row, 0, "filename")?.to_owned(),
            content: row
                .bytes(1)
                .ok_or_else(|| self.wire.protocol("TIMELINE_HISTORY without content"))?,
        })
    }

    /// `SHOW setting`: a server setting as text (`wal_level`,
    /// `wal_segment_size`, `max_wal_senders`, ...).
    pub async fn show(&mut self, setting: &str) -> Result<String, ConnError> {
        if setting.is_empty()
            || !setting
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
        {
            return Err(self
                .wire
                .protocol(&format!("{setting:?} is not a setting name")));
        }
        let row = self.one_row(&format!("SHOW {setting}"), None).await?;
        Ok(self.text(&row, 0, setting)?.to_owned())
    }

    /// The WAL segment size in bytes (`SHOW wal_segment_size`, e.g. `16MB`).
    pub async fn wal_segment_size(&mut self) -> Result<u64, ConnError> {
        let text = self.show("wal_segment_size").await?;
        crate::pg::setting_bytes(&text).ok_or_else(|| {
            self.wire
                .protocol(&format!("wal_segment_size {text:?} is not a size"))
        })
    }

    /// Fails with [`ConnError::WalLevelMinimal`] when the server's WAL cannot
    /// be restored from; returns the `wal_level` otherwise.
    pub async fn check_wal_level(&mut self) -> Result<String, ConnError> {
        let level = self.show("wal_level").await?;
        if level == "minimal" {
            return Err(ConnError::WalLevelMinimal {
                target: self.wire.target.clone(),
            });
        }
        Ok(level)
    }

    async fn one_row(&mut self, sql: &str, slot: Option<&str>) -> Result<Row, ConnError> {
        let mut rows = self.query_about(sql, slot).await?;
        if rows.len() != 1 {
            return Err(self
                .wire
                .protocol(&format!("{sql} returned {} rows, expected one", rows.len())));
        }
        Ok(rows.remove(0))
    }

    fn text<'r>(&self, row: &'r Row, i: usize, what: &str) -> Result<&'r str, ConnError> {
        row.get_str(i)
            .ok_or_else(|| self.wire.protocol(&format!("{what} missing or not text")))
    }

    fn number<T: std::str::FromStr>(
        &self,
        row: &Row,
        i: usize,
        what: &str,
    ) -> Result<T, ConnError> {
        let t = self.text(row, i, what)?;
        t.parse()
            .map_err(|_| self.wire.protocol(&format!("{what} {t:?} is not a number")))
    }

    fn lsn(&self, row: &Row, i: usize, what: &str) -> Result<Lsn, ConnError> {
        let t = self.text(row, i, what)?;
        t.parse()
            .map_err(|_| self.wire.protocol(&format!("{what} {t:?} is not an LSN")))
    }
}

/// Refuses names PostgreSQL refuses, which also keeps them safe to put in
/// a command unquoted.
pub(super) fn check_slot_name(name: &str) -> Result<(), ConnError> {
    let ok = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ConnError::InvalidSlotName(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_are_checked() {
        assert!(check_slot_name("pitr_main_1").is_ok());
        for bad in ["", "Pitr", "a-b", "x; DROP", &"a".repeat(64)] {
            assert!(check_slot_name(bad).is_err(), "{bad}");
        }
    }
}
