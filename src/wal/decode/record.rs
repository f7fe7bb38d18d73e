//! WAL records (`access/xlogrecord.h`, `access/xact.h`, the same in 14 to 18): the
//! decoded record pitr hands out, and the few record types it reads
//! (transaction ends, restore points, switches).

use jiff::Timestamp;

use super::le_u64;
use crate::pg::Lsn;

/// `SizeOfXLogRecord`: the fixed record header.
pub const RECORD_HEADER: usize = 24;
/// How many leading bytes of a record are kept: enough for the header and the
/// block-reference headers of the 33 blocks a record may carry (27 bytes each
/// at most, plus origin, top-level xid and main-data headers: 928 bytes).
pub const PREFIX_CAP: usize = 2048;
/// How many leading bytes of the main data are kept: the largest thing read
/// there is `xl_restore_point` (8-byte time, 64-byte name).
pub const MAIN_DATA_CAP: u32 = 72;

/// Resource manager `RM_XLOG_ID`.
pub const RM_XLOG: u8 = 0;
/// Resource manager `RM_XACT_ID`.
pub const RM_XACT: u8 = 1;
/// `XLR_INFO_MASK`: the low bits of `xl_info` belong to the WAL machinery,
/// the high bits to the resource manager.
pub const XLR_INFO_MASK: u8 = 0x0F;
/// `XLOG_SWITCH`: the rest of the segment is unused.
pub const XLOG_SWITCH: u8 = 0x40;
/// `XLOG_RESTORE_POINT`: `pg_create_restore_point()`.
const XLOG_RESTORE_POINT: u8 = 0x70;
/// `XLOG_OVERWRITE_CONTRECORD`: marks where a half-written record was dropped.
const XLOG_OVERWRITE_CONTRECORD: u8 = 0xD0;
/// `XLOG_XACT_OPMASK` and the transaction-end opcodes.
const XLOG_XACT_OPMASK: u8 = 0x70;
const XLOG_XACT_COMMIT: u8 = 0x00;
const XLOG_XACT_ABORT: u8 = 0x20;
const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
const XLOG_XACT_ABORT_PREPARED: u8 = 0x40;

/// PostgreSQL's epoch (2000-01-01 UTC) in Unix microseconds.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// One decoded, CRC-checked WAL record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Where the record starts (what `pg_waldump` prints as `lsn:`).
    pub lsn: Lsn,
    /// Where the next record may start: the record's end rounded up to 8
    /// bytes (PostgreSQL's `EndRecPtr`); for a switch record, the end of its
    /// segment.
    pub end: Lsn,
    /// `xl_tot_len`: header, block references and data, in bytes.
    pub total_len: u32,
    /// `xl_xid`: the transaction id, 0 when none.
    pub xid: u32,
    /// `xl_prev`: where the previous record starts.
    pub prev: Lsn,
    /// `xl_rmid`: the resource manager (0 XLOG, 1 Transaction, 10 Heap, ...).
    pub rmgr: u8,
    /// `xl_info`: flag bits; the high four belong to the resource manager.
    pub info: u8,
    /// What pitr reads out of the record.
    pub kind: RecordKind,
}

/// The record types pitr reads, with what it needs of each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordKind {
    /// A transaction committed (`XLOG_XACT_COMMIT`, `_COMMIT_PREPARED`).
    Commit {
        /// When, as the server stamped it (`xact_time`).
        time: Timestamp,
        /// Whether a prepared (two-phase) transaction committed.
        prepared: bool,
    },
    /// A transaction aborted (`XLOG_XACT_ABORT`, `_ABORT_PREPARED`).
    Abort {
        /// When, as the server stamped it (`xact_time`).
        time: Timestamp,
        /// Whether a prepared (two-phase) transaction aborted.
        prepared: bool,
    },
    /// `pg_create_restore_point(name)` (`XLOG_RESTORE_POINT`).
    RestorePoint {
        /// When it was created.
        time: Timestamp,
        /// Its name (what `recovery_target_name` matches).
        name: String,
    },
    /// `XLOG_SWITCH`: the segment ends here; the rest of it is zeros.
    Switch,
    /// `XLOG_OVERWRITE_CONTRECORD`: the server crashed while writing the
    /// record at `overwritten`, which spans pages, and wrote this instead of
    /// its continuation; that record never happened.
    OverwriteContrecord {
        /// Where the abandoned record started.
        overwritten: Lsn,
        /// When the server decided so.
        time: Timestamp,
    },
    /// Anything else; only its header was read.
    Other,
}

/// Reads the record types pitr cares about out of the first bytes of their
/// main data.
pub fn interpret(rmgr: u8, info: u8, main: &[u8]) -> Result<RecordKind, String> {
    let time_at = |at: usize, what: &str| -> Result<Timestamp, String> {
        let Some(bytes) = main.get(at..at + 8) else {
            return Err(format!(
                "{what} record with {} bytes of main data",
                main.len()
            ));
        };
        pg_timestamp(le_u64(bytes, 0) as i64).ok_or_else(|| format!("{what} time out of range"))
    };
    Ok(match rmgr {
        RM_XACT => match info & XLOG_XACT_OPMASK {
            op @ (XLOG_XACT_COMMIT | XLOG_XACT_COMMIT_PREPARED) => RecordKind::Commit {
                time: time_at(0, "commit")?,
                prepared: op == XLOG_XACT_COMMIT_PREPARED,
            },
            op @ (XLOG_XACT_ABORT | XLOG_XACT_ABORT_PREPARED) => RecordKind::Abort {
                time: time_at(0, "abort")?,
                prepared: op == XLOG_XACT_ABORT_PREPARED,
            },
            _ => RecordKind::Other,
        },
        RM_XLOG => match info & !XLR_INFO_MASK {
            XLOG_SWITCH => RecordKind::Switch,
            XLOG_RESTORE_POINT => {
                let time = time_at(0, "restore point")?;
                let name = main.get(8..MAIN_DATA_CAP as usize).ok_or_else(|| {
                    format!(
                        "restore point record with {} bytes of main data",
                        main.len()
                    )
                })?;
                // rp_name is a NUL-terminated C string in a 64-byte field,
                // in the server encoding.
                let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
                RecordKind::RestorePoint {
                    time,
                    name: String::from_utf8_lossy(&name[..len]).into_owned(),
                }
            }
            XLOG_OVERWRITE_CONTRECORD => RecordKind::OverwriteContrecord {
                overwritten: Lsn(le_u64(
                    main.get(..8)
                        .ok_or("overwrite-contrecord record without main data")?,
                    0,
                )),
                time: time_at(8, "overwrite-contrecord")?,
            },
            _ => RecordKind::Other,
        },
        _ => RecordKind::Other,
    })
}

/// A PostgreSQL `TimestampTz` (microseconds since 2000-01-01 UTC) as a
/// timestamp; `None` outside what jiff represents (years -9999..=9999).
pub fn pg_timestamp(micros: i64) -> Option<Timestamp> {
    let unix = micros.checked_add(PG_EPOCH_UNIX_MICROS)?;
    Timestamp::from_microsecond(unix).ok()
}
