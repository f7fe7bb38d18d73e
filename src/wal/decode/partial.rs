//! A record whose bytes are still arriving: checked as they stream past. The
//! CRC is computed incrementally, and only the first [`PREFIX_CAP`] bytes (the
//! header and the block-reference headers) plus the first bytes of the main
//! data are kept, so a record of up to 1 GiB costs a few KiB (invariant 7).

use std::ops::Range;

use super::blocks::main_data_range;
use super::error::DecodeErrorKind;
use super::record::{
    MAIN_DATA_CAP, PREFIX_CAP, RECORD_HEADER, RM_XLOG, Record, XLOG_SWITCH, XLR_INFO_MASK,
    interpret,
};
use super::{le_u32, le_u64};
use crate::pg::{Lsn, WalFormat};

/// `offsetof(XLogRecord, xl_crc)`: the header bytes the CRC covers (after
/// the record's data, see [`Partial::finish`]).
const CRC_OFFSET: usize = 20;
/// The largest record PostgreSQL 14 to 18 will read (`MaxAllocSize`, just
/// under 1 GiB); a longer `xl_tot_len` is garbage.
const MAX_RECORD_LEN: u32 = 0x3FFF_FFFF;

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
    /// `format` is the major whose WAL this is.
    pub fn absorb(
        &mut self,
        data: &[u8],
        prev: Option<Lsn>,
        format: &WalFormat,
    ) -> Result<usize, DecodeErrorKind> {
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
                self.check_header(prev, format)?;
            }
            if self.prefix.len() == prefix_end {
                let layout = main_data_range(&self.prefix, self.total_len, format);
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

    fn check_header(&self, prev: Option<Lsn>, format: &WalFormat) -> Result<(), DecodeErrorKind> {
        let rmgr = self.prefix[17];
        let back_link = Lsn(le_u64(&self.prefix, 8));
        let detail = if !format.valid_rmgr(rmgr) {
            format!("resource manager id {rmgr} does not exist in {format}")
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
