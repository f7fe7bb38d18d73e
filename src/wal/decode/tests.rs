//! The decoder against hand-built WAL: a small writer lays records out the
//! way PostgreSQL 15 does (page headers, continuations, alignment, CRC), and
//! each test damages one thing. Real server WAL is the integration test's job
//! (`tests/it/wal_decode.rs`, against `pg_waldump`).

use jiff::Timestamp;

use super::*;
use crate::wal::{SegmentIndex, index_segment};

/// Small segments keep the buffers small; PostgreSQL allows 1 MiB.
const SEG: u64 = 1 << 20;
const PAGE: u64 = WAL_PAGE_SIZE;
const SYSID: u64 = 7_312_345_678_901_234_567;
/// Segment 3 on timeline 1: 000000010000000000000003, starting at 0/300000.
const SEG_NO: u64 = 3;
const NAME: &str = "000000010000000000000003";

/// Lays out WAL records as PostgreSQL 15's `CopyXLogRecordToWAL` does.
struct WalWriter {
    /// The LSN of `buf[0]`: a segment start.
    base: u64,
    buf: Vec<u8>,
    /// Where the next byte goes.
    pos: u64,
    /// Where the last record started (the next one's back link).
    prev: u64,
    /// Flags for the next page header (for overwrite-contrecord tests).
    next_page_flags: u16,
}

impl WalWriter {
    fn new(seg_no: u64) -> WalWriter {
        WalWriter {
            base: seg_no * SEG,
            buf: Vec::new(),
            pos: seg_no * SEG,
            prev: seg_no * SEG - 0x28,
            next_page_flags: 0,
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        let at = (self.pos - self.base) as usize;
        if self.buf.len() < at + bytes.len() {
            self.buf.resize(at + bytes.len(), 0);
        }
        self.buf[at..at + bytes.len()].copy_from_slice(bytes);
        self.pos += bytes.len() as u64;
    }

    fn page_header(&mut self, rem_len: u32) {
        let long = self.pos % SEG == 0;
        let mut info = self.next_page_flags;
        self.next_page_flags = 0;
        if rem_len > 0 {
            info |= 0x0001;
        }
        if long {
            info |= 0x0002;
        }
        let mut h = Vec::new();
        h.extend_from_slice(&0xD110u16.to_le_bytes());
        h.extend_from_slice(&info.to_le_bytes());
        h.extend_from_slice(&1u32.to_le_bytes());
        h.extend_from_slice(&self.pos.to_le_bytes());
        h.extend_from_slice(&rem_len.to_le_bytes());
        h.extend_from_slice(&[0; 4]);
        if long {
            h.extend_from_slice(&SYSID.to_le_bytes());
            h.extend_from_slice(&(SEG as u32).to_le_bytes());
            h.extend_from_slice(&(PAGE as u32).to_le_bytes());
        }
        self.write(&h);
    }

    /// The bytes of a record with this body (everything after the header).
    fn assemble(&self, rmid: u8, info: u8, xid: u32, body: &[u8]) -> Vec<u8> {
        let mut rec = Vec::new();
        rec.extend_from_slice(&(24 + body.len() as u32).to_le_bytes());
        rec.extend_from_slice(&xid.to_le_bytes());
        rec.extend_from_slice(&self.prev.to_le_bytes());
        rec.extend_from_slice(&[info, rmid, 0, 0]);
        let crc = crc32c::crc32c_append(crc32c::crc32c(body), &rec[..20]);
        rec.extend_from_slice(&crc.to_le_bytes());
        rec.extend_from_slice(body);
        rec
    }

    /// Writes a record; returns where it starts.
    fn record(&mut self, rmid: u8, info: u8, xid: u32, body: &[u8]) -> Lsn {
        let rec = self.assemble(rmid, info, xid, body);
        let start = self.put(&rec, rec.len());
        self.prev = start.0;
        start
    }

    /// Writes the first `len` bytes of `rec`, continuing it over pages;
    /// returns where it starts.
    fn put(&mut self, rec: &[u8], len: usize) -> Lsn {
        if self.pos % PAGE == 0 {
            self.page_header(0);
        }
        let start = self.pos;
        let mut done = 0;
        while done < len {
            if self.pos % PAGE == 0 {
                self.page_header((rec.len() - done) as u32);
            }
            let room = (PAGE - self.pos % PAGE) as usize;
            let n = room.min(len - done);
            self.write(&rec[done..done + n]);
            done += n;
        }
        self.pos = self.pos.next_multiple_of(8);
        Lsn(start)
    }

    fn commit(&mut self, xid: u32, micros: i64) -> Lsn {
        self.record(1, 0x00, xid, &main_data(&micros.to_le_bytes()))
    }

    fn switch(&mut self) -> Lsn {
        let at = self.record(0, 0x40, 0, &[]);
        self.pos = (self.pos - 1).next_multiple_of(SEG);
        self.buf.resize((self.pos - self.base) as usize, 0);
        at
    }

    /// The bytes written, zero-padded to `len`.
    fn padded(&self, len: u64) -> Vec<u8> {
        let mut out = self.buf.clone();
        out.resize(len as usize, 0);
        out
    }
}

/// A record body holding only main data.
fn main_data(data: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    match u8::try_from(data.len()) {
        Ok(len) => body.extend_from_slice(&[255, len]),
        Err(_) => {
            body.push(254);
            body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        }
    }
    body.extend_from_slice(data);
    body
}

/// A heap-like record body: one block reference with 4 bytes of block data,
/// then 2 bytes of main data.
fn block_record_body() -> Vec<u8> {
    let mut body = vec![0, 0x20];
    body.extend_from_slice(&4u16.to_le_bytes());
    body.extend_from_slice(&[0x7F, 6, 0, 0, 5, 0, 0, 0, 0, 64, 0, 0]);
    body.extend_from_slice(&9u32.to_le_bytes());
    body.extend_from_slice(&[255, 2]);
    body.extend_from_slice(&[1, 2, 3, 4]);
    body.extend_from_slice(&[5, 6]);
    body
}

fn restore_point_body(micros: i64, name: &str) -> Vec<u8> {
    let mut data = micros.to_le_bytes().to_vec();
    let mut field = [0u8; 64];
    field[..name.len()].copy_from_slice(name.as_bytes());
    data.extend_from_slice(&field);
    main_data(&data)
}

fn micros(ts: &str) -> i64 {
    let t: Timestamp = ts.parse().expect("timestamp");
    t.as_microsecond() - 946_684_800_000_000
}

fn ts(s: &str) -> Timestamp {
    s.parse().expect("timestamp")
}

/// A segment with one of everything; returns the bytes (partial, zero
/// padded) and the record starts.
fn sample() -> (WalWriter, Vec<Lsn>) {
    let mut w = WalWriter::new(SEG_NO);
    let mut lsns = vec![
        w.commit(700, micros("2026-11-24T10:00:00.123456Z")),
        w.record(10, 0x00, 701, &block_record_body()),
        // Spans three pages.
        w.record(21, 0x00, 0, &main_data(&[0xAB; 20_000])),
        w.record(
            0,
            0x70,
            0,
            &restore_point_body(micros("2026-11-24T10:00:01Z"), "golden"),
        ),
        w.record(
            1,
            0x20,
            702,
            &main_data(&micros("2026-11-24T10:00:02Z").to_le_bytes()),
        ),
    ];
    lsns.push(w.commit(703, micros("2026-11-24T10:00:03.000001Z")));
    (w, lsns)
}

fn decode_all(bytes: &[u8], chunk: usize) -> Result<(Vec<Record>, Decoder), DecodeError> {
    let mut decoder = Decoder::new(1, SEG, Lsn(SEG_NO * SEG));
    let mut records = Vec::new();
    for piece in bytes.chunks(chunk) {
        records.extend(decoder.feed(piece)?);
    }
    Ok((records, decoder))
}

#[test]
fn decodes_what_was_written_in_any_chunking() {
    let (w, lsns) = sample();
    let bytes = w.padded(4 * PAGE);
    let (records, decoder) = decode_all(&bytes, bytes.len()).expect("decodes");
    assert_eq!(records.iter().map(|r| r.lsn).collect::<Vec<_>>(), lsns);
    assert_eq!(
        records[0].lsn,
        Lsn(SEG_NO * SEG + 40),
        "after the long header"
    );
    assert_eq!(
        records[0].kind,
        RecordKind::Commit {
            time: ts("2026-11-24T10:00:00.123456Z"),
            prepared: false
        }
    );
    assert_eq!(records[0].xid, 700);
    assert_eq!(records[1].kind, RecordKind::Other);
    assert_eq!((records[1].rmgr, records[1].prev), (10, records[0].lsn));
    assert_eq!(records[2].total_len, 24 + 5 + 20_000);
    assert_eq!(
        records[3].kind,
        RecordKind::RestorePoint {
            time: ts("2026-11-24T10:00:01Z"),
            name: "golden".to_owned()
        }
    );
    assert_eq!(
        records[4].kind,
        RecordKind::Abort {
            time: ts("2026-11-24T10:00:02Z"),
            prepared: false
        }
    );
    for pair in records.windows(2) {
        let next_start = if pair[0].end.0 % PAGE == 0 {
            pair[0].end.0 + 24
        } else {
            pair[0].end.0
        };
        assert_eq!(next_start, pair[1].lsn.0, "end of {:?}", pair[0]);
    }
    assert_eq!(decoder.end_of_wal(), Some(Lsn(w.pos)));
    assert_eq!(decoder.system_identifier(), Some(SYSID));

    for chunk in [1, 3, 7, 24, 41, 1000, 8192, 8193] {
        let (again, _) = decode_all(&bytes, chunk).expect("decodes in pieces");
        assert_eq!(again, records, "in pieces of {chunk} bytes");
    }
}

#[test]
fn a_flipped_byte_is_a_crc_error_naming_the_record() {
    let (w, lsns) = sample();
    let mut bytes = w.padded(4 * PAGE);
    // A byte of the block-reference record's data, past its header.
    let at = (lsns[1].0 - w.base) as usize + 24 + 20;
    bytes[at] ^= 0x01;
    let err = decode_all(&bytes, 100).expect_err("corrupt");
    assert_eq!(err.lsn, lsns[1]);
    assert!(matches!(err.kind, DecodeErrorKind::Crc { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(NAME) && text.contains(&lsns[1].to_string()),
        "{text}"
    );

    // In the spanning record's last page, too.
    let mut bytes = w.padded(4 * PAGE);
    let at = (lsns[3].0 - w.base) as usize - 16;
    bytes[at] ^= 0x80;
    let err = decode_all(&bytes, 5000).expect_err("corrupt");
    assert_eq!((err.lsn, &err.segment), (lsns[2], &NAME.to_owned()));
    assert!(matches!(err.kind, DecodeErrorKind::Crc { .. }), "{err}");
}

#[test]
fn a_failed_decoder_stays_failed() {
    let (w, lsns) = sample();
    let mut bytes = w.padded(4 * PAGE);
    bytes[(lsns[0].0 - w.base) as usize + 26] ^= 0x04;
    let mut decoder = Decoder::new(1, SEG, Lsn(SEG_NO * SEG));
    let first = decoder.feed(&bytes).expect_err("corrupt");
    let again = decoder.feed(&[0; 16]).expect_err("still failed");
    assert_eq!(first, again);
}

#[test]
fn another_versions_magic_is_named() {
    let (w, _) = sample();
    let mut bytes = w.padded(4 * PAGE);
    bytes[..2].copy_from_slice(&0xD10Du16.to_le_bytes());
    let err = decode_all(&bytes, 4096).expect_err("PostgreSQL 14 magic");
    assert_eq!(
        err.kind,
        DecodeErrorKind::UnknownMagic {
            found: 0xD10D,
            expected: 0xD110
        }
    );
    assert_eq!(err.lsn, Lsn(SEG_NO * SEG));
    let text = err.to_string();
    assert!(
        text.contains(NAME) && text.contains("D10D") && text.contains("PostgreSQL 15"),
        "{text}"
    );
}

#[test]
fn a_page_from_elsewhere_is_named() {
    let (w, _) = sample();
    let mut bytes = w.padded(4 * PAGE);
    // The second page, holding the middle of the spanning record, claims the
    // address it had in a recycled segment.
    let stale = (SEG_NO - 2) * SEG + PAGE;
    bytes[PAGE as usize + 8..PAGE as usize + 16].copy_from_slice(&stale.to_le_bytes());
    let err = decode_all(&bytes, 3000).expect_err("stale page");
    assert_eq!(err.kind, DecodeErrorKind::PageAddress { found: Lsn(stale) });
    assert_eq!(err.lsn, Lsn(SEG_NO * SEG + PAGE));
}

#[test]
fn a_broken_continuation_is_an_error() {
    let (w, lsns) = sample();
    let page2 = PAGE as usize;
    let mut bytes = w.padded(4 * PAGE);
    bytes[page2 + 16] ^= 0x01; // xlp_rem_len
    let err = decode_all(&bytes, 8192).expect_err("wrong remaining length");
    assert!(
        matches!(err.kind, DecodeErrorKind::Continuation { .. }),
        "{err}"
    );
    assert_eq!(err.lsn, lsns[2]);

    let mut bytes = w.padded(4 * PAGE);
    bytes[page2 + 2] &= !0x01; // XLP_FIRST_IS_CONTRECORD
    let err = decode_all(&bytes, 8192).expect_err("no continuation flag");
    assert!(
        matches!(err.kind, DecodeErrorKind::Continuation { .. }),
        "{err}"
    );

    // A page claiming to continue a record when none is open.
    let mut w = WalWriter::new(SEG_NO);
    w.record(21, 0, 0, &main_data(&vec![1; PAGE as usize - 40 - 24 - 5]));
    assert_eq!(w.pos % PAGE, 0, "the record fills the first page");
    w.commit(5, 0);
    let mut bytes = w.padded(2 * PAGE);
    bytes[page2 + 2] |= 0x01;
    bytes[page2 + 16] = 8;
    let err = decode_all(&bytes, 8192).expect_err("continuation out of nowhere");
    assert!(
        matches!(err.kind, DecodeErrorKind::Continuation { .. }),
        "{err}"
    );
}

#[test]
fn zeros_where_a_record_would_start_end_the_wal() {
    let (w, lsns) = sample();
    // Zeros after the last record, and whole zero pages after that.
    let (records, decoder) = decode_all(&w.padded(6 * PAGE), 777).expect("decodes");
    assert_eq!(records.len(), lsns.len());
    assert_eq!(decoder.end_of_wal(), Some(Lsn(w.pos)));

    // The spanning record cut off mid-way (the server flushed part of it):
    // the WAL ends where it starts.
    let cut = (lsns[2].0 - w.base + 9000) as usize;
    let mut bytes = w.padded(4 * PAGE);
    bytes[cut..].fill(0);
    let (records, decoder) = decode_all(&bytes, 4096).expect("decodes");
    assert_eq!(records.len(), 2);
    assert_eq!(decoder.end_of_wal(), Some(lsns[2]));
    assert_eq!(decoder.complete_up_to(), lsns[2]);

    // Not yet arrived is not the end: nothing is decided.
    let (_, decoder) = decode_all(&w.buf[..cut], 4096).expect("decodes");
    assert_eq!(decoder.end_of_wal(), None);
    assert_eq!(decoder.pending_record(), Some(lsns[2]));
}

#[test]
fn anything_but_zeros_after_the_end_is_an_error() {
    let (w, _) = sample();
    let mut bytes = w.padded(4 * PAGE);
    let late = (3 * PAGE + 100) as usize;
    bytes[late] = 1;
    let err = decode_all(&bytes, 1000).expect_err("data after the end");
    assert_eq!(err.lsn, Lsn(w.base + late as u64));
    assert_eq!(
        err.kind,
        DecodeErrorKind::NotZero {
            after: "the end of WAL",
            end: Lsn(w.pos)
        }
    );

    // Garbage where the next record would start is not an end.
    let mut bytes = w.padded(4 * PAGE);
    let next = (w.pos - w.base) as usize;
    bytes[next..next + 8].copy_from_slice(&[0xFF; 8]);
    let err = decode_all(&bytes, 1000).expect_err("garbage record");
    assert!(
        matches!(err.kind, DecodeErrorKind::RecordHeader { .. }),
        "{err}"
    );
    assert_eq!(err.lsn, Lsn(w.pos));
}

#[test]
fn a_record_header_pointing_nowhere_is_an_error() {
    let (w, lsns) = sample();
    let mut bytes = w.padded(4 * PAGE);
    let at = (lsns[1].0 - w.base) as usize;
    bytes[at + 8] ^= 0x08; // the back link
    let err = decode_all(&bytes, 1000).expect_err("bad back link");
    assert!(
        matches!(err.kind, DecodeErrorKind::RecordHeader { .. }),
        "{err}"
    );
    assert_eq!(err.lsn, lsns[1]);

    let mut bytes = w.padded(4 * PAGE);
    bytes[at + 17] = 60; // no such resource manager
    let err = decode_all(&bytes, 1000).expect_err("bad rmgr");
    assert!(
        matches!(err.kind, DecodeErrorKind::RecordHeader { .. }),
        "{err}"
    );

    let mut bytes = w.padded(4 * PAGE);
    bytes[at..at + 4].copy_from_slice(&12u32.to_le_bytes());
    let err = decode_all(&bytes, 1000).expect_err("too short");
    assert!(
        matches!(err.kind, DecodeErrorKind::RecordHeader { .. }),
        "{err}"
    );
}

#[test]
fn a_switch_fills_the_segment_and_decoding_goes_on_in_the_next() {
    let mut w = WalWriter::new(SEG_NO);
    w.commit(1, 0);
    let switch = w.switch();
    let after = w.commit(2, 1);
    assert_eq!(after, Lsn((SEG_NO + 1) * SEG + 40));
    let bytes = w.padded(SEG + PAGE);
    let (records, _) = decode_all(&bytes, 65536).expect("decodes");
    assert_eq!(records.len(), 3);
    assert_eq!(records[1].lsn, switch);
    assert_eq!(records[1].kind, RecordKind::Switch);
    assert_eq!(records[1].end, Lsn((SEG_NO + 1) * SEG));
    assert_eq!(records[2].prev, switch);

    let mut bytes = bytes;
    bytes[(SEG / 2) as usize] = 7;
    let err = decode_all(&bytes, 65536).expect_err("garbage after the switch");
    assert_eq!(
        err.kind,
        DecodeErrorKind::NotZero {
            after: "the switch record",
            end: switch
        }
    );
}

/// Fills segment 3 until a record spans into segment 4, then commits.
fn spanning_segments() -> (WalWriter, Lsn, Lsn) {
    let mut w = WalWriter::new(SEG_NO);
    while w.pos < (SEG_NO + 1) * SEG - 20_000 {
        w.record(21, 0, 0, &main_data(&[3; 7000]));
    }
    let spanning = w.record(21, 0, 0, &main_data(&[4; 30_000]));
    let commit = w.commit(9, micros("2026-11-24T11:00:00Z"));
    (w, spanning, commit)
}

#[test]
fn records_continue_across_segments() {
    let (w, spanning, commit) = spanning_segments();
    let bytes = w.padded(2 * SEG);
    let (first, second) = bytes.split_at(SEG as usize);
    let seg3 = Segment {
        timeline: 1,
        no: SEG_NO,
    };

    let (index3, carry) = index_segment(first, seg3, SEG, None).expect("segment 3");
    assert_eq!(index3.end_of_wal, None);
    assert_eq!(index3.continued_record, Some(spanning));
    assert_eq!(index3.skipped_continuation, 0);
    let (index4, _) = index_segment(second, seg3.next(), SEG, Some(carry)).expect("segment 4");
    assert_eq!(index4.records, 2, "{index4:?}");
    assert_eq!(index4.first_record, Some(spanning));
    assert_eq!(index4.last_record, Some(commit));
    assert_eq!(index4.end_of_wal, Some(Lsn(w.pos)));
    assert_eq!(index4.skipped_continuation, 0);
    let commits = index4.commits.expect("a commit");
    assert_eq!(
        (commits.count, commits.first),
        (1, ts("2026-11-24T11:00:00Z"))
    );

    // Without the carry, the spanning record's tail is passed over, and says so.
    let (alone, _) = index_segment(second, seg3.next(), SEG, None).expect("segment 4 alone");
    assert_eq!(alone.records, 1);
    assert_eq!(alone.first_record, Some(commit));
    assert!(alone.skipped_continuation > 0);

    // A carry that does not end where the segment starts is a gap.
    let (_, carry) = index_segment(&first[..1000], seg3, SEG, None).expect("partial");
    let err = index_segment(second, seg3.next(), SEG, Some(carry)).expect_err("gap");
    assert_eq!(
        err.kind,
        DecodeErrorKind::Gap {
            expected: Lsn(SEG_NO * SEG + 1000)
        }
    );
    // A decoder fed both segments in one go sees the same records.
    let (records, _) = decode_all(&bytes, 100_000).expect("decodes");
    assert_eq!(records.len() as u64, index3.records + index4.records);
}

#[test]
fn an_abandoned_record_is_replaced_by_an_overwrite_contrecord() {
    let mut w = WalWriter::new(SEG_NO);
    let before = w.commit(1, 0);
    // A record spanning pages, of which the server wrote only the first page
    // before crashing; after recovery it wrote an overwrite record instead.
    let rec = w.assemble(21, 0, 0, &main_data(&[5; 10_000]));
    let room = (PAGE - w.pos % PAGE) as usize;
    let abandoned = w.put(&rec, room);
    w.prev = before.0;
    w.next_page_flags = 0x0008;
    let mut data = abandoned.0.to_le_bytes().to_vec();
    data.extend_from_slice(&micros("2026-11-24T12:00:00Z").to_le_bytes());
    let overwrite = w.record(0, 0xD0, 0, &main_data(&data));
    w.commit(2, 1);
    let (records, _) = decode_all(&w.padded(3 * PAGE), 500).expect("decodes");
    let lsns: Vec<Lsn> = records.iter().map(|r| r.lsn).collect();
    assert_eq!(lsns[..2], [before, overwrite]);
    assert_eq!(
        records[1].kind,
        RecordKind::OverwriteContrecord {
            overwritten: abandoned,
            time: ts("2026-11-24T12:00:00Z")
        }
    );

    // The overwrite record must name the abandoned one.
    let mut bytes = w.padded(3 * PAGE);
    let at = (overwrite.0 - w.base) as usize + 24 + 2;
    bytes[at] ^= 0x10;
    // Re-seal the CRC so only the name is wrong.
    let tot = 24 + 2 + 16;
    let body_crc = crc32c::crc32c(&bytes[at - 2..at - 2 + tot - 24]);
    let crc = crc32c::crc32c_append(body_crc, &bytes[at - 26..at - 6]);
    bytes[at - 6..at - 2].copy_from_slice(&crc.to_le_bytes());
    let err = decode_all(&bytes, 500).expect_err("names another record");
    assert!(
        matches!(err.kind, DecodeErrorKind::Continuation { .. }),
        "{err}"
    );
    assert_eq!(err.lsn, overwrite);
}

#[test]
fn starting_at_a_record_or_misaligned() {
    let (w, lsns) = sample();
    let bytes = w.padded(4 * PAGE);
    let mut decoder = Decoder::new(1, SEG, lsns[3]);
    let records = decoder
        .feed(&bytes[(lsns[3].0 - w.base) as usize..])
        .expect("decodes from a record");
    assert_eq!(records.len(), 3);

    let mut decoder = Decoder::new(1, SEG, Lsn(lsns[3].0 + 4));
    let err = decoder.feed(&[0; 8]).expect_err("misaligned");
    assert_eq!(err.kind, DecodeErrorKind::Misaligned);
}

#[test]
fn a_long_header_must_match_the_segment_size() {
    let (w, _) = sample();
    let bytes = w.padded(2 * PAGE);
    let mut decoder = Decoder::new(1, 2 * SEG, Lsn(SEG_NO * SEG));
    let err = decoder.feed(&bytes).expect_err("segment size");
    assert!(
        matches!(err.kind, DecodeErrorKind::PageHeader { .. }),
        "{err}"
    );

    let mut decoder = Decoder::new(1, SEG, Lsn(SEG_NO * SEG)).with_system_identifier(42);
    let err = decoder.feed(&bytes).expect_err("another cluster");
    assert!(err.to_string().contains("another cluster"), "{err}");
}

#[test]
fn the_index_serializes_for_the_catalog() {
    let (w, lsns) = sample();
    let seg = Segment {
        timeline: 1,
        no: SEG_NO,
    };
    let (index, _) = index_segment(&w.padded(SEG), seg, SEG, None).expect("index");
    assert_eq!(index.records, 6);
    assert_eq!(index.first_record, Some(lsns[0]));
    assert_eq!(index.end_of_wal, Some(Lsn(w.pos)));
    assert_eq!(index.restore_points[0].name, "golden");
    assert_eq!(index.restore_points[0].lsn, lsns[3]);
    let commits = index.commits.expect("commits");
    assert_eq!(commits.count, 2);
    assert_eq!(commits.first, ts("2026-11-24T10:00:00.123456Z"));
    assert_eq!(commits.last, ts("2026-11-24T10:00:03.000001Z"));
    assert_eq!(
        index.aborts.map(|a| a.latest),
        Some(ts("2026-11-24T10:00:02Z"))
    );
    assert!(!index.ends_with_switch);

    let json = serde_json::to_string(&index).expect("serialize");
    assert!(json.contains("\"first_record\":\"0/300028\""), "{json}");
    assert!(json.contains("2026-11-24T10:00:00.123456Z"), "{json}");
    let back: SegmentIndex = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, index);

    let err = index_segment(&w.padded(SEG + 1), seg, SEG, None).expect_err("too long");
    assert!(matches!(err.kind, DecodeErrorKind::SegmentOverflow { .. }));
}

#[test]
fn postgres_timestamps_count_from_2000() {
    assert_eq!(record::pg_timestamp(0), Some(ts("2000-01-01T00:00:00Z")));
    assert_eq!(
        record::pg_timestamp(-1),
        Some(ts("1999-12-31T23:59:59.999999Z"))
    );
    assert_eq!(record::pg_timestamp(i64::MAX), None);
}
