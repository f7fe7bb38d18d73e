//! The page set: how one capture of an SQLite database is laid out inside a
//! repository item, and the page hashes and whole-database checksum that
//! tie captures together.
//!
//! ```text
//! header   "PITRPGS1" | page_size u32 | db_pages u32 | count u32 | flags u32
//!          | count × page number u32 (none for a snapshot: it holds 1..=db_pages)
//!          | zeros up to a multiple of 64 KiB
//! pages    count pages (db_pages for a snapshot), ascending page number
//! ```
//!
//! All integers big-endian. The header is padded to 64 KiB (the largest
//! SQLite page) so pages sit at the same offsets in every snapshot of a
//! database: with fixed 256 KiB chunks, unchanged runs of pages deduplicate
//! across snapshots. The padding compresses to nothing.

use crate::repo::Chunking;

/// The magic at the start of every page set.
pub const MAGIC: &[u8; 8] = b"PITRPGS1";
/// The header is padded to a multiple of this.
pub const HEADER_ALIGN: u64 = 64 * 1024;
/// How page sets are cut into chunks.
pub const CHUNKING: Chunking = Chunking::Fixed(256 * 1024);
/// Flag: the set holds every page (a snapshot).
pub const FLAG_SNAPSHOT: u32 = 1;
const FIXED: usize = 24;

/// The hash of one page, bound to its number so that a page moved to
/// another place counts as changed. 64 bits, like LTX's page CRCs: the
/// checksum is their XOR.
pub fn page_hash(pgno: u32, data: &[u8]) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&pgno.to_le_bytes());
    h.update(data);
    let out = h.finalize();
    let b = out.as_bytes();
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// The whole-database checksum as text: 16 hex digits.
pub fn checksum_text(c: u64) -> String {
    format!("{c:016x}")
}

/// A page set's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageSetHeader {
    /// Bytes per page.
    pub page_size: u32,
    /// The database's size in pages at the capture.
    pub db_pages: u32,
    /// Whether it holds every page.
    pub snapshot: bool,
    /// The page numbers held, ascending; empty for a snapshot.
    pub pages: Vec<u32>,
}

/// Why a page set does not parse.
#[derive(Debug, thiserror::Error)]
#[error("not a valid page set: {0}")]
pub struct PageSetError(pub String);

impl PageSetHeader {
    /// How many pages follow the header.
    pub fn count(&self) -> u32 {
        if self.snapshot {
            self.db_pages
        } else {
            self.pages.len() as u32
        }
    }

    /// The header's length, padding included.
    pub fn encoded_len(&self) -> u64 {
        let raw = (FIXED + 4 * self.pages.len()) as u64;
        raw.div_ceil(HEADER_ALIGN) * HEADER_ALIGN
    }

    /// The header as bytes, padding included.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len() as usize);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.page_size.to_be_bytes());
        out.extend_from_slice(&self.db_pages.to_be_bytes());
        out.extend_from_slice(&self.count().to_be_bytes());
        let flags = if self.snapshot { FLAG_SNAPSHOT } else { 0 };
        out.extend_from_slice(&flags.to_be_bytes());
        for p in &self.pages {
            out.extend_from_slice(&p.to_be_bytes());
        }
        out.resize(self.encoded_len() as usize, 0);
        out
    }

    /// The length of the whole header given its first 24 bytes, or an error
    /// if they are not a page set's.
    pub fn len_from_prefix(prefix: &[u8]) -> Result<u64, PageSetError> {
        let (_page_size, db_pages, count, flags) = fixed(prefix)?;
        // Ascending numbers within the database: no more of them than it
        // has pages. Checked here, before a reader sizes a buffer by it.
        if flags & FLAG_SNAPSHOT == 0 && count > db_pages {
            return Err(PageSetError(format!(
                "{count} pages listed in a database of {db_pages}"
            )));
        }
        let listed = if flags & FLAG_SNAPSHOT != 0 { 0 } else { count };
        Ok((FIXED as u64 + 4 * u64::from(listed)).div_ceil(HEADER_ALIGN) * HEADER_ALIGN)
    }

    /// Parses a whole header (as long as [`Self::len_from_prefix`] says).
    pub fn decode(b: &[u8]) -> Result<PageSetHeader, PageSetError> {
        let (page_size, db_pages, count, flags) = fixed(b)?;
        let snapshot = flags & FLAG_SNAPSHOT != 0;
        let mut pages = Vec::new();
        if !snapshot {
            let need = FIXED + 4 * count as usize;
            if b.len() < need {
                return Err(PageSetError("page list cut short".into()));
            }
            pages = b[FIXED..need]
                .chunks_exact(4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if pages.windows(2).any(|w| w[0] >= w[1]) {
                return Err(PageSetError("page numbers not ascending".into()));
            }
            if pages.first() == Some(&0) || pages.last().is_some_and(|&p| p > db_pages) {
                return Err(PageSetError("a page number outside the database".into()));
            }
        } else if count != db_pages {
            return Err(PageSetError(
                "snapshot page count differs from its size".into(),
            ));
        }
        Ok(PageSetHeader {
            page_size,
            db_pages,
            snapshot,
            pages,
        })
    }
}

fn fixed(b: &[u8]) -> Result<(u32, u32, u32, u32), PageSetError> {
    if b.len() < FIXED || &b[..8] != MAGIC {
        return Err(PageSetError("bad magic".into()));
    }
    let r = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let page_size = r(8);
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(PageSetError(format!("page size {page_size}")));
    }
    Ok((page_size, r(12), r(16), r(20)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_aligns() {
        let h = PageSetHeader {
            page_size: 4096,
            db_pages: 100,
            snapshot: false,
            pages: vec![1, 5, 99],
        };
        let b = h.encode();
        assert_eq!(b.len() as u64, HEADER_ALIGN);
        assert_eq!(
            PageSetHeader::len_from_prefix(&b[..24]).unwrap(),
            HEADER_ALIGN
        );
        assert_eq!(PageSetHeader::decode(&b).unwrap(), h);
        let big = PageSetHeader {
            pages: (1..=20_000).collect(),
            db_pages: 20_000,
            ..h
        };
        assert_eq!(big.encode().len() as u64, 2 * HEADER_ALIGN);
        assert!(PageSetHeader::decode(b"PITRPGS0").is_err());
    }

    #[test]
    fn page_hash_binds_the_page_number() {
        let page = [7u8; 512];
        assert_ne!(page_hash(1, &page), page_hash(2, &page));
    }
}
