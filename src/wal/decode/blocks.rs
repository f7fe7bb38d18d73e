//! Block-reference headers (`XLogRecordBlockHeader` and friends): between a
//! record's header and its data, they say how much data each referenced
//! page carries, and so where the main data starts (`DecodeXLogRecord`).

use std::ops::Range;

use super::record::{PREFIX_CAP, RECORD_HEADER};
use super::{le_u16, le_u32};
use crate::pg::WalFormat;

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
/// `bimg_info` bit of a full-page image with a hole (the compressed bits
/// differ between majors: [`WalFormat::image_compressed`]).
const BKPIMAGE_HAS_HOLE: u8 = 0x01;
/// `BLCKSZ`: the data page size full-page images are cut from.
const BLCKSZ: u16 = 8192;

/// Walks the block-reference headers of a record (as `DecodeXLogRecord`
/// does) to find where its main data is: the main data comes last, after
/// every block's image and data, so it is the record's final
/// `main_data_len` bytes once the lengths add up. `format` is the major
/// whose WAL this is.
pub fn main_data_range(
    prefix: &[u8],
    total_len: u32,
    format: &WalFormat,
) -> Result<Range<u32>, String> {
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
                    let compressed = image_info & format.image_compressed != 0;
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
