//! What can be wrong with WAL bytes, always said with the segment and the
//! position (invariant 2: a problem is an error, never a skip).

use crate::pg::Lsn;

/// WAL that does not decode: where, and what was wrong.
///
/// `lsn` is the start of the record for record problems, the start of the page
/// for page-header problems, and the first offending byte otherwise. After an
/// error the [`Decoder`](super::Decoder) stays failed: every later call
/// returns the same error, so no caller can step over a hole by retrying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("WAL segment {segment} at {lsn}: {kind}")]
pub struct DecodeError {
    /// The file name of the segment holding `lsn`, on the decoder's timeline.
    pub segment: String,
    /// Where the problem is.
    pub lsn: Lsn,
    /// What the problem is.
    pub kind: DecodeErrorKind,
}

/// The hint most decode errors end with: the bytes are damaged, and a good copy
/// may exist elsewhere.
const CORRUPT: &str = "the segment is damaged; fetch it again from another destination \
                       (or from the server's pg_wal) and check it with pg_waldump";

/// The kinds of [`DecodeError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeErrorKind {
    /// The page magic is no supported major's: an unsupported major wrote
    /// it, or the bytes are not WAL at all.
    #[error(
        "page magic {found:04X} is not that of any PostgreSQL major pitr decodes ({}): this \
         WAL was written by an unsupported PostgreSQL major version or is not WAL at all",
        crate::pg::supported_majors()
    )]
    UnknownMagic {
        /// The magic on the page.
        found: u16,
    },
    /// The page magic is another major's than the server's (or the first
    /// page's): WAL of two majors never mixes in one stream.
    #[error(
        "page magic {found:04X} ({}) is not PostgreSQL {expected_major}'s {expected:04X}: this \
         WAL was not written by the PostgreSQL {expected_major} server it is decoded for (a \
         server upgraded in place, or WAL of another cluster); a new major needs a new \
         [[postgres]] name or repository and a new base backup",
        match found_major { Some(m) => format!("PostgreSQL {m}'s"), None => "no supported major's".to_owned() }
    )]
    MajorMismatch {
        /// The magic on the page.
        found: u16,
        /// The major that magic is from, if a supported one.
        found_major: Option<u32>,
        /// The major expected.
        expected_major: u32,
        /// Its magic.
        expected: u16,
    },
    /// A page header field is impossible (flags, sizes, timeline, system id).
    #[error("bad page header: {detail}; {CORRUPT}")]
    PageHeader {
        /// Which field, and why.
        detail: String,
    },
    /// The page claims to live at another position: a stale, recycled or
    /// misplaced page.
    #[error(
        "the page header says the page belongs at {found}: a stale (recycled) or misplaced page; \
         {CORRUPT}"
    )]
    PageAddress {
        /// The `xlp_pageaddr` on the page.
        found: Lsn,
    },
    /// A record that continues on the next page is not continued there as the
    /// page header must say (`XLP_FIRST_IS_CONTRECORD`, `xlp_rem_len`).
    #[error("broken record continuation: {detail}; {CORRUPT}")]
    Continuation {
        /// What did not match.
        detail: String,
    },
    /// A record header points nowhere sensible (length, resource manager,
    /// back link).
    #[error("invalid record header: {detail}; {CORRUPT}")]
    RecordHeader {
        /// Which field, and why.
        detail: String,
    },
    /// The record's CRC-32C does not match its bytes.
    #[error(
        "CRC-32C mismatch in the record (stored {stored:08X}, computed {computed:08X}); {CORRUPT}"
    )]
    Crc {
        /// `xl_crc` as stored in the record header.
        stored: u32,
        /// What the record's bytes hash to.
        computed: u32,
    },
    /// The CRC matched but the record's block headers or main data do not
    /// parse: a writer bug or a version mismatch rather than bit rot.
    #[error("record with a valid CRC but invalid contents: {detail}")]
    RecordBody {
        /// What did not parse.
        detail: String,
    },
    /// Bytes after the end of valid WAL, or after a segment switch, are not
    /// zero: WAL cannot resume there.
    #[error("non-zero bytes after {after} at {end}; {CORRUPT}")]
    NotZero {
        /// What ended the WAL: "the end of WAL" or "the switch record".
        after: &'static str,
        /// Where the WAL ended.
        end: Lsn,
    },
    /// The bytes do not continue where the previous ones ended.
    #[error(
        "WAL is not contiguous: the previous bytes end at {expected}; a segment is missing or \
         out of order"
    )]
    Gap {
        /// Where the previous bytes ended.
        expected: Lsn,
    },
    /// More bytes than one segment holds were given for one segment.
    #[error("{len} bytes given for one segment of {seg_size} bytes")]
    SegmentOverflow {
        /// How many bytes were given.
        len: u64,
        /// The segment size.
        seg_size: u64,
    },
    /// Decoding was asked to start somewhere a record cannot start.
    #[error("cannot start decoding here: records start on 8-byte boundaries")]
    Misaligned,
}
