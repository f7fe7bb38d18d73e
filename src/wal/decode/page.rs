//! WAL page headers (`access/xlog_internal.h`, the same in 14 to 18 but for
//! the magic, see [`crate::pg::FORMATS`]).
//!
//! Every 8 KiB page starts with a 24-byte header; the first page of a segment
//! has the 40-byte long header that also names the cluster (system id) and
//! repeats the segment and page sizes.

use super::error::{DecodeError, DecodeErrorKind};
use super::{Decoder, State, ZEROS, le_u16, le_u32, le_u64};
use crate::pg::{Lsn, WalFormat};

/// `XLOG_BLCKSZ`: the WAL page size. Fixed at PostgreSQL's compile time; the
/// Debian and upstream builds use 8 KiB, and the long header lets us check.
pub const WAL_PAGE_SIZE: u64 = 8192;
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
/// `XLP_ALL_FLAGS`: any other bit means the header is not a PostgreSQL one.
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
/// `page` in a WAL of `seg_size`-byte segments, written by the major of
/// `format` when given (else by any supported one); the caller checks what
/// depends on decoding state (timeline order, continuation, system id).
///
/// Follows `XLogReaderValidatePageHeader`: magic, known flags, a long header
/// on a segment's first page with matching segment and page sizes, and the
/// page address equal to the page's own position (what catches a stale page
/// of a recycled segment file). Returns the header and the format its magic
/// names.
pub fn parse_header(
    bytes: &[u8],
    page: Lsn,
    seg_size: u64,
    format: Option<&'static WalFormat>,
) -> Result<(PageHeader, &'static WalFormat), DecodeErrorKind> {
    let format = check_magic(le_u16(bytes, 0), format)?;
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
    let header = PageHeader {
        info,
        timeline: le_u32(bytes, 4),
        rem_len: le_u32(bytes, 16),
        system_identifier,
    };
    Ok((header, format))
}

/// The format a page with `magic` is in: `expected`'s if given (another
/// major's magic is an error, invariant 2), else any supported major's.
fn check_magic(
    magic: u16,
    expected: Option<&'static WalFormat>,
) -> Result<&'static WalFormat, DecodeErrorKind> {
    let found = WalFormat::of_magic(magic);
    match (expected, found) {
        (Some(expected), Some(found)) if std::ptr::eq(expected, found) => Ok(found),
        (None, Some(found)) => Ok(found),
        (Some(expected), found) => Err(DecodeErrorKind::MajorMismatch {
            found: magic,
            found_major: found.map(|f| f.major),
            expected_major: expected.major,
            expected: expected.page_magic,
        }),
        (None, None) => Err(DecodeErrorKind::UnknownMagic { found: magic }),
    }
}

impl Decoder {
    /// Reads page-header bytes; once the header is whole, checks it and moves
    /// the state on.
    pub(super) fn page_header(&mut self, bytes: &[u8]) -> Result<usize, DecodeError> {
        let want = if self.header_len < SHORT_HEADER {
            SHORT_HEADER
        } else {
            header_len(&self.header)
        };
        let n = bytes.len().min(want - self.header_len);
        self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
        self.header_len += n;
        if self.header_len < want {
            return Ok(n);
        }
        let page = Lsn(self.pos.0 + n as u64 - self.header_len as u64);
        if self.header_len == SHORT_HEADER {
            if self.header[..SHORT_HEADER] == ZEROS[..SHORT_HEADER] {
                // A page never written: the WAL ends before it.
                let at = match &self.state {
                    State::InRecord(partial) => partial.start,
                    _ => page,
                };
                self.header_len = 0;
                self.state = State::EndOfWal { at };
                return Ok(n);
            }
            // Named before anything else: another version's header may
            // differ in every other field.
            let format = check_magic(le_u16(&self.header, 0), self.format)
                .map_err(|kind| self.error(page, kind))?;
            self.format = Some(format);
            if header_len(&self.header) > SHORT_HEADER {
                return Ok(n);
            }
        }
        let len = self.header_len;
        self.header_len = 0;
        let (header, format) = parse_header(&self.header[..len], page, self.seg_size, self.format)
            .map_err(|kind| self.error(page, kind))?;
        self.format = Some(format);
        self.check_page(page, &header)?;
        Ok(n)
    }

    /// The checks of a page header that depend on what came before, and the
    /// state change the page's continuation flags call for.
    fn check_page(&mut self, page: Lsn, header: &PageHeader) -> Result<(), DecodeError> {
        let bad = |detail: String| DecodeErrorKind::PageHeader { detail };
        if header.timeline > self.timeline {
            return Err(self.error(
                page,
                bad(format!(
                    "page of timeline {} in WAL of timeline {}",
                    header.timeline, self.timeline
                )),
            ));
        }
        if header.timeline < self.page_timeline {
            return Err(self.error(
                page,
                bad(format!(
                    "timeline {} after a page of timeline {}: timelines never go back",
                    header.timeline, self.page_timeline
                )),
            ));
        }
        self.page_timeline = header.timeline;
        if let Some(found) = header.system_identifier {
            match self.system_identifier {
                Some(expected) if expected != found => {
                    return Err(self.error(
                        page,
                        bad(format!(
                            "system identifier {found} is not {expected}: WAL of another cluster"
                        )),
                    ));
                }
                _ => self.system_identifier = Some(found),
            }
        }
        let continuation = |detail: String| DecodeErrorKind::Continuation { detail };
        match &self.state {
            State::Start if header.is_contrecord() && header.rem_len == 0 => {
                let detail = "the page continues a record with 0 bytes left".to_owned();
                return Err(self.error(page, continuation(detail)));
            }
            State::Start => {
                if header.is_contrecord() && !header.is_overwrite_contrecord() {
                    self.state = State::SkipContinuation {
                        remaining: header.rem_len,
                    };
                } else {
                    self.state = State::Between;
                }
            }
            State::Between => {
                if header.is_contrecord() {
                    let detail = format!(
                        "the page continues a record ({} bytes left), but the previous record \
                         ended before the page",
                        header.rem_len
                    );
                    return Err(self.error(page, continuation(detail)));
                }
            }
            State::SkipContinuation { .. } | State::InRecord(_)
                if header.is_overwrite_contrecord() =>
            {
                // The record being continued was never finished: the server
                // crashed, recovered, and wrote new WAL here instead.
                if let State::InRecord(partial) = &self.state {
                    self.overwritten = Some(partial.start);
                }
                self.state = State::Between;
            }
            State::SkipContinuation { remaining } => {
                let remaining = *remaining;
                if !header.is_contrecord() || header.rem_len != remaining {
                    let detail = format!(
                        "{remaining} bytes of a record are still to come, but the page {}",
                        describe_continuation(header)
                    );
                    return Err(self.error(page, continuation(detail)));
                }
            }
            State::InRecord(partial) => {
                let left = partial.total_len.saturating_sub(partial.got);
                if partial.got < 4 || !header.is_contrecord() || header.rem_len != left {
                    let detail = format!(
                        "the record is {} bytes long and {} arrived, but the page {}",
                        partial.total_len,
                        partial.got,
                        describe_continuation(header)
                    );
                    return Err(self.error(partial.start, continuation(detail)));
                }
            }
            State::AfterSwitch | State::EndOfWal { .. } => {}
        }
        Ok(())
    }
}

/// What a page header says about continuing a record, for error messages.
fn describe_continuation(header: &PageHeader) -> String {
    if header.is_contrecord() {
        format!("says {} bytes are left", header.rem_len)
    } else {
        "does not continue a record".to_owned()
    }
}
