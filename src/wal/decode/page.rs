//! WAL page headers (PostgreSQL 15, `access/xlog_internal.h`).
//!
//! Every 8 KiB page starts with a 24-byte header; the first page of a segment
//! has the 40-byte long header that also names the cluster (system id) and
//! repeats the segment and page sizes.

use super::error::DecodeErrorKind;
use crate::wal::Lsn;

/// `XLOG_BLCKSZ`: the WAL page size. Fixed at PostgreSQL's compile time; the
/// Debian and upstream builds use 8 KiB, and the long header lets us check.
pub const WAL_PAGE_SIZE: u64 = 8192;
/// `XLOG_PAGE_MAGIC` of PostgreSQL 15. Each major version bumps it whenever
/// the WAL format changes, so it doubles as a version check.
pub const PG15_PAGE_MAGIC: u16 = 0xD110;
/// `SizeOfXLogShortPHD`: MAXALIGN of the 20 bytes of fields.
pub const SHORT_HEADER: usize = 24;
/// `SizeOfXLogLongPHD`: the short header plus system id, segment and page size.
pub const LONG_HEADER: usize = 40;

/// `XLP_FIRST_IS_CONTRECORD`: the page starts with the rest of a record begun
/// on an earlier page; `xlp_rem_len` says how much of it is left.
pub const FIRST_IS_CONTRECORD: u16 = 0x0001;
/// `XLP_LONG_HEADER`: this page has the long header.
pub const LONG_HEADER_FLAG: u16 = 0x0002;
/// `XLP_FIRST_IS_OVERWRITE_CONTRECORD`: the server crashed while writing a
/// record that spans pages; after recovery it wrote new WAL here instead of
/// the missing continuation, and the half-written record is void.
pub const FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
/// `XLP_ALL_FLAGS`: any other bit means the header is not a PostgreSQL 15 one.
const ALL_FLAGS: u16 = 0x000F;

/// A page header, as read from the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageHeader {
    /// `xlp_info` flag bits.
    pub info: u16,
    /// `xlp_tli`: the timeline of the first record on the page.
    pub timeline: u32,
    /// `xlp_rem_len`: bytes of a record continued from the previous page.
    pub rem_len: u32,
    /// `xlp_sysid` of a long header.
    pub system_identifier: Option<u64>,
}

impl PageHeader {
    /// Whether the page starts with the continuation of a record.
    pub fn is_contrecord(&self) -> bool {
        self.info & FIRST_IS_CONTRECORD != 0
    }

    /// Whether the page replaces a lost continuation with new WAL.
    pub fn is_overwrite_contrecord(&self) -> bool {
        self.info & FIRST_IS_OVERWRITE_CONTRECORD != 0
    }
}

/// How long the header starting with `first` (at least [`SHORT_HEADER`]
/// bytes) is: the long-header flag decides, as in `XLogPageHeaderSize`.
pub fn header_len(first: &[u8]) -> usize {
    if le_u16(first, 2) & LONG_HEADER_FLAG != 0 {
        LONG_HEADER
    } else {
        SHORT_HEADER
    }
}

/// Checks the header `bytes` (exactly [`header_len`] long) of the page at
/// `page` in a WAL of `seg_size`-byte segments; the caller checks what
/// depends on decoding state (timeline order, continuation, system id).
///
/// Follows `XLogReaderValidatePageHeader`: magic, known flags, a long header
/// on a segment's first page with matching segment and page sizes, and the
/// page address equal to the page's own position (what catches a stale page
/// of a recycled segment file).
pub fn parse_header(bytes: &[u8], page: Lsn, seg_size: u64) -> Result<PageHeader, DecodeErrorKind> {
    let magic = le_u16(bytes, 0);
    if magic != PG15_PAGE_MAGIC {
        return Err(DecodeErrorKind::UnknownMagic {
            found: magic,
            expected: PG15_PAGE_MAGIC,
        });
    }
    let info = le_u16(bytes, 2);
    let bad = |detail: String| Err(DecodeErrorKind::PageHeader { detail });
    if info & !ALL_FLAGS != 0 {
        return bad(format!("unknown flag bits {info:04X} in xlp_info"));
    }
    let first_of_segment = page.segment_offset(seg_size) == 0;
    let system_identifier = if info & LONG_HEADER_FLAG != 0 {
        let header_seg_size = u64::from(le_u32(bytes, 32));
        let header_page_size = u64::from(le_u32(bytes, 36));
        if header_seg_size != seg_size {
            return bad(format!(
                "the long header says segments are {header_seg_size} bytes, but they are \
                 {seg_size} bytes here: WAL of another cluster"
            ));
        }
        if header_page_size != WAL_PAGE_SIZE {
            return bad(format!(
                "the long header says pages are {header_page_size} bytes; pitr reads \
                 {WAL_PAGE_SIZE}-byte WAL pages"
            ));
        }
        Some(le_u64(bytes, 24))
    } else if first_of_segment {
        return bad("the first page of a segment has no long header".to_owned());
    } else {
        None
    };
    let page_address = Lsn(le_u64(bytes, 8));
    if page_address != page {
        return Err(DecodeErrorKind::PageAddress {
            found: page_address,
        });
    }
    Ok(PageHeader {
        info,
        timeline: le_u32(bytes, 4),
        rem_len: le_u32(bytes, 16),
        system_identifier,
    })
}

/// Little-endian integers at fixed offsets of a buffer whose length the caller
/// checked; a short buffer reads as zeros rather than panicking.
pub fn le_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(array(bytes, at))
}

/// See [`le_u16`].
pub fn le_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(array(bytes, at))
}

/// See [`le_u16`].
pub fn le_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(array(bytes, at))
}

fn array<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0; N];
    if let Some(src) = bytes.get(at..at + N) {
        out.copy_from_slice(src);
    }
    out
}
