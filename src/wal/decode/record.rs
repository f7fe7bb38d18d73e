//! WAL records (PostgreSQL 15, `access/xlogrecord.h`): the 24-byte header,
//! the CRC, the block-reference headers that lead to the main data, and the
//! few record types pitr reads (transaction ends, restore points, switches).
//!
//! A record is checked as its bytes stream past: the CRC is computed
//! incrementally, and only the first [`PREFIX_CAP`] bytes (the header and the
//! block-reference headers) plus the first bytes of the main data are kept,
//! so a record of up to 1 GiB costs a few KiB (invariant 7).

use std::ops::Range;

use jiff::Timestamp;

use super::error::DecodeErrorKind;
use super::page::{le_u16, le_u32, le_u64};
use crate::wal::Lsn;

/// `SizeOfXLogRecord`: the fixed record header.
pub const RECORD_HEADER: usize = 24;
/// `offsetof(XLogRecord, xl_crc)`: the header bytes the CRC covers (after
/// the record's data, see [`Partial::finish`]).
const CRC_OFFSET: usize = 20;
/// The largest record PostgreSQL 15 will read (`MaxAllocSize`, just under
/// 1 GiB); a longer `xl_tot_len` is garbage.
const MAX_RECORD_LEN: u32 = 0x3FFF_FFFF;
/// How many leading bytes of a record are kept: enough for the header and the
/// block-reference headers of the 33 blocks a record may carry (27 bytes each
/// at most, plus origin, top-level xid and main-data headers: 928 bytes).
pub const PREFIX_CAP: usize = 2048;
/// How many leading bytes of the main data are kept: the largest thing read
/// there is `xl_restore_point` (8-byte time, 64-byte name).
const MAIN_DATA_CAP: u32 = 72;

/// Resource manager `RM_XLOG_ID`.
pub const RM_XLOG: u8 = 0;
/// Resource manager `RM_XACT_ID`.
pub const RM_XACT: u8 = 1;
/// The highest built-in resource manager id of PostgreSQL 15
/// (`RM_LOGICALMSG_ID`); 128..=255 are custom resource managers.
const RM_MAX_BUILTIN: u8 = 21;
const RM_MIN_CUSTOM: u8 = 128;

/// `XLR_INFO_MASK`: the low bits of `xl_info` belong to the WAL machinery,
/// the high bits to the resource manager.
const XLR_INFO_MASK: u8 = 0x0F;
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

/// Block-reference header ids (`XLR_BLOCK_ID_*`, `XLR_MAX_BLOCK_ID`).
const BLOCK_ID_DATA_SHORT: u8 = 255;
const BLOCK_ID_DATA_LONG: u8 = 254;
const BLOCK_ID_ORIGIN: u8 = 253;
const BLOCK_ID_TOPLEVEL_XID: u8 = 252;
const MAX_BLOCK_ID: u8 = 32;
/// `fork_flags` bits of a block reference.
const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
const BKPBLOCK_HAS_DATA: u8 = 0x20;
const BKPBLOCK_SAME_REL: u8 = 0x80;
/// `bimg_info` bits of a full-page image (PostgreSQL 15 values).
const BKPIMAGE_HAS_HOLE: u8 = 0x01;
const BKPIMAGE_COMPRESSED: u8 = 0x04 | 0x08 | 0x10;
/// `BLCKSZ`: the data page size full-page images are cut from.
const BLCKSZ: u16 = 8192;

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

/// A record whose bytes are still arriving.
#[derive(Debug, Clone)]
pub struct Partial {
    /// Where the record starts.
    pub start: Lsn,
    /// `xl_tot_len`, once its four bytes arrived (0 before).
    pub total_len: u32,
    /// How many of the record's bytes arrived.
    pub got: u32,
    /// The first `min(total_len, PREFIX_CAP)` bytes.
    prefix: Vec<u8>,
    /// CRC-32C of the bytes after the header, so far.
    crc: u32,
    /// Where the main data is, once the block headers were parsed, or why
    /// they do not parse; reported only after the CRC matched, because a
    /// damaged record should be named as such rather than as nonsense.
    layout: Option<Result<Range<u32>, String>>,
    /// The first bytes of the main data (up to [`MAIN_DATA_CAP`]).
    main: Vec<u8>,
}

impl Partial {
    /// A record starting at `start`, nothing of it read yet.
    pub fn new(start: Lsn) -> Partial {
        Partial {
            start,
            total_len: 0,
            got: 0,
            prefix: Vec::with_capacity(RECORD_HEADER),
            crc: 0,
            layout: None,
            main: Vec::new(),
        }
    }

    /// Takes the record's next bytes from `data` (all on one page) and
    /// returns how many it took: at most the rest of the record, and before
    /// the length is known only up to the length field.
    ///
    /// `prev` is where the previous record started, when known: the header's
    /// back link must match it exactly (`ValidXLogRecordHeader`), which is what
    /// tells a stale record left in a recycled page from a real one.
    pub fn absorb(&mut self, data: &[u8], prev: Option<Lsn>) -> Result<usize, DecodeErrorKind> {
        if self.got < 4 {
            let take = data.len().min(4 - self.got as usize);
            self.prefix.extend_from_slice(&data[..take]);
            self.got += take as u32;
            if self.got == 4 {
                self.total_len = le_u32(&self.prefix, 0);
                self.check_length()?;
            }
            return Ok(take);
        }
        let from = self.got as usize;
        let take = data.len().min((self.total_len - self.got) as usize);
        let data = &data[..take];
        self.got += take as u32;
        let to = self.got as usize;

        let prefix_end = (self.total_len as usize).min(PREFIX_CAP);
        if from < prefix_end {
            let had_header = self.prefix.len() >= RECORD_HEADER;
            self.prefix
                .extend_from_slice(&data[..take.min(prefix_end - from)]);
            if !had_header && self.prefix.len() >= RECORD_HEADER {
                self.check_header(prev)?;
            }
            if self.prefix.len() == prefix_end {
                let layout = main_data_range(&self.prefix, self.total_len);
                if let Ok(range) = &layout {
                    capture_main(&mut self.main, range, 0, &self.prefix);
                }
                self.layout = Some(layout);
            }
        }
        if to > prefix_end {
            if let Some(Ok(range)) = &self.layout {
                let beyond = from.max(prefix_end);
                capture_main(&mut self.main, range, beyond, &data[beyond - from..]);
            }
        }
        let body_from = from.max(RECORD_HEADER);
        if to > body_from {
            self.crc = crc32c::crc32c_append(self.crc, &data[body_from - from..]);
        }
        Ok(take)
    }

    /// Whether every byte of the record arrived.
    pub fn is_complete(&self) -> bool {
        self.got >= 4 && self.got == self.total_len
    }

    /// Checks the CRC of the complete record and reads what pitr needs;
    /// `end` is where the next record may start.
    pub fn finish(self, end: Lsn) -> Result<Record, DecodeErrorKind> {
        // The CRC covers the data first, then the header up to the CRC field:
        // the header's back link is filled in last when the server inserts
        // the record (XLogRecordAssemble, XLogInsertRecord, ValidXLogRecord).
        let computed = crc32c::crc32c_append(self.crc, &self.prefix[..CRC_OFFSET]);
        let stored = le_u32(&self.prefix, CRC_OFFSET);
        if computed != stored {
            return Err(DecodeErrorKind::Crc { stored, computed });
        }
        let body = |detail: String| DecodeErrorKind::RecordBody { detail };
        match &self.layout {
            Some(Ok(_)) => {}
            Some(Err(detail)) => return Err(body(detail.clone())),
            None => return Err(body("the record ended before its headers".to_owned())),
        }
        let rmgr = self.prefix[17];
        let info = self.prefix[16];
        let kind = interpret(rmgr, info, &self.main).map_err(body)?;
        Ok(Record {
            lsn: self.start,
            end,
            total_len: self.total_len,
            xid: le_u32(&self.prefix, 4),
            prev: Lsn(le_u64(&self.prefix, 8)),
            rmgr,
            info,
            kind,
        })
    }

    /// Whether this is a switch record, from its header (valid once the whole
    /// header arrived).
    pub fn is_switch(&self) -> bool {
        self.prefix.len() >= RECORD_HEADER
            && self.prefix[17] == RM_XLOG
            && self.prefix[16] & !XLR_INFO_MASK == XLOG_SWITCH
    }

    fn check_length(&self) -> Result<(), DecodeErrorKind> {
        let detail = if self.total_len == 0 {
            // Zeros where a record would start: the end of the WAL written
            // so far, which the decoder handles; not an error here.
            return Ok(());
        } else if self.total_len < RECORD_HEADER as u32 {
            format!(
                "length {} is shorter than a record header ({RECORD_HEADER} bytes)",
                self.total_len
            )
        } else if self.total_len > MAX_RECORD_LEN {
            format!(
                "length {} is more than PostgreSQL writes ({MAX_RECORD_LEN})",
                self.total_len
            )
        } else {
            return Ok(());
        };
        Err(DecodeErrorKind::RecordHeader { detail })
    }

    fn check_header(&self, prev: Option<Lsn>) -> Result<(), DecodeErrorKind> {
        let rmgr = self.prefix[17];
        let back_link = Lsn(le_u64(&self.prefix, 8));
        let detail = if rmgr > RM_MAX_BUILTIN && rmgr < RM_MIN_CUSTOM {
            format!("resource manager id {rmgr} does not exist")
        } else if prev.is_some_and(|prev| back_link != prev) {
            format!(
                "back link {back_link} does not point at the previous record ({})",
                prev.unwrap_or_default()
            )
        } else if back_link >= self.start {
            format!("back link {back_link} does not point backwards")
        } else {
            return Ok(());
        };
        Err(DecodeErrorKind::RecordHeader { detail })
    }
}

/// Appends to `main` the bytes of `bytes` (the record's bytes from offset
/// `from` on) that fall in the first [`MAIN_DATA_CAP`] bytes of the main data
/// at `range`. Bytes arrive in order, so what `main` holds says where to go on.
fn capture_main(main: &mut Vec<u8>, range: &Range<u32>, from: usize, bytes: &[u8]) {
    let want_end = (range.start + (range.end - range.start).min(MAIN_DATA_CAP)) as usize;
    let lo = from.max(range.start as usize + main.len());
    let hi = (from + bytes.len()).min(want_end);
    if lo < hi {
        main.extend_from_slice(&bytes[lo - from..hi - from]);
    }
}

/// Walks the block-reference headers of a record (as `DecodeXLogRecord`
/// does) to find where its main data is: the main data comes last, after
/// every block's image and data, so it is the record's final
/// `main_data_len` bytes once the lengths add up.
fn main_data_range(prefix: &[u8], total_len: u32) -> Result<Range<u32>, String> {
    let mut cursor = Cursor {
        bytes: prefix,
        at: RECORD_HEADER,
        total_len,
    };
    let mut data_total: u64 = 0;
    let mut main_len: u32 = 0;
    let mut last_block: Option<u8> = None;
    let mut have_rel = false;
    loop {
        let remaining = u64::from(total_len) - cursor.at as u64;
        if remaining <= data_total {
            break;
        }
        let id = cursor.take(1)?[0];
        match id {
            BLOCK_ID_DATA_SHORT => {
                main_len = u32::from(cursor.take(1)?[0]);
                data_total += u64::from(main_len);
                break;
            }
            BLOCK_ID_DATA_LONG => {
                main_len = le_u32(cursor.take(4)?, 0);
                data_total += u64::from(main_len);
                break;
            }
            BLOCK_ID_ORIGIN => {
                cursor.take(2)?;
            }
            BLOCK_ID_TOPLEVEL_XID => {
                cursor.take(4)?;
            }
            0..=MAX_BLOCK_ID => {
                if last_block.is_some_and(|last| id <= last) {
                    return Err(format!("block id {id} out of order"));
                }
                last_block = Some(id);
                let head = cursor.take(3)?;
                let fork_flags = head[0];
                let data_len = le_u16(head, 1);
                if (fork_flags & BKPBLOCK_HAS_DATA != 0) != (data_len != 0) {
                    return Err(format!(
                        "block {id}: the has-data flag disagrees with data length {data_len}"
                    ));
                }
                data_total += u64::from(data_len);
                if fork_flags & BKPBLOCK_HAS_IMAGE != 0 {
                    let image = cursor.take(5)?;
                    let image_len = le_u16(image, 0);
                    let hole_offset = le_u16(image, 2);
                    let image_info = image[4];
                    let compressed = image_info & BKPIMAGE_COMPRESSED != 0;
                    let has_hole = image_info & BKPIMAGE_HAS_HOLE != 0;
                    let hole_len = if compressed && has_hole {
                        le_u16(cursor.take(2)?, 0)
                    } else if compressed {
                        0
                    } else {
                        BLCKSZ.saturating_sub(image_len)
                    };
                    let consistent = if has_hole {
                        hole_offset != 0 && hole_len != 0 && image_len != BLCKSZ
                    } else {
                        hole_offset == 0 && hole_len == 0
                    } && !(compressed && image_len == BLCKSZ);
                    if !consistent {
                        return Err(format!(
                            "block {id}: inconsistent page image (length {image_len}, hole at \
                             {hole_offset} of {hole_len}, flags {image_info:02X})"
                        ));
                    }
                    data_total += u64::from(image_len);
                }
                if fork_flags & BKPBLOCK_SAME_REL == 0 {
                    cursor.take(12)?;
                    have_rel = true;
                } else if !have_rel {
                    return Err(format!(
                        "block {id} refers to a previous relation, but none came before"
                    ));
                }
                cursor.take(4)?;
            }
            other => return Err(format!("invalid block id {other}")),
        }
    }
    let remaining = u64::from(total_len) - cursor.at as u64;
    if remaining != data_total {
        return Err(format!(
            "the block headers announce {data_total} bytes of data, but {remaining} remain"
        ));
    }
    Ok(total_len - main_len..total_len)
}

/// Reads the block-reference headers field by field.
struct Cursor<'a> {
    /// The record's first bytes.
    bytes: &'a [u8],
    /// The next field's offset in the record.
    at: usize,
    total_len: u32,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let field = self.bytes.get(self.at..self.at + n).ok_or_else(|| {
            if self.at + n > self.total_len as usize {
                "the block headers run past the end of the record".to_owned()
            } else {
                format!("the block headers run past {PREFIX_CAP} bytes")
            }
        })?;
        self.at += n;
        Ok(field)
    }
}

/// Reads the record types pitr cares about out of the first bytes of their
/// main data.
fn interpret(rmgr: u8, info: u8, main: &[u8]) -> Result<RecordKind, String> {
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
