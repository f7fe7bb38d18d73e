//! The decoder against hand-built WAL: a small writer lays records out the
//! way PostgreSQL does (page headers, continuations, alignment, CRC), with
//! PostgreSQL 15's magic unless told another; the tests decode it whole, in
//! pieces and across segments (`stream`), damage one thing at a time
//! (`damage`) or tell majors apart (`majors`). Real server WAL is the integration
//! test's job (`tests/it/wal_decode.rs`, against `pg_waldump`).

mod damage;
mod majors;
mod stream;

use jiff::Timestamp;

use super::*;

/// Small segments keep the buffers small; PostgreSQL allows 1 MiB.
pub(super) const SEG: u64 = 1 << 20;
pub(super) const PAGE: u64 = WAL_PAGE_SIZE;
pub(super) const SYSID: u64 = 7_312_345_678_901_234_567;
/// Segment 3 on timeline 1: 000000010000000000000003, starting at 0/300000.
pub(super) const SEG_NO: u64 = 3;
pub(super) const NAME: &str = "000000010000000000000003";

/// Lays out WAL records as PostgreSQL's `CopyXLogRecordToWAL` does.
pub(super) struct WalWriter {
    /// The LSN of `buf[0]`: a segment start.
    base: u64,
    buf: Vec<u8>,
    /// Where the next byte goes.
    pos: u64,
    /// Where the last record started (the next one's back link).
    prev: u64,
    /// Flags for the next page header (for overwrite-contrecord tests).
    next_page_flags: u16,
    /// `XLOG_PAGE_MAGIC` of the pages written from now on.
    magic: u16,
}

impl WalWriter {
    fn new(seg_no: u64) -> WalWriter {
        WalWriter {
            base: seg_no * SEG,
            buf: Vec::new(),
            pos: seg_no * SEG,
            prev: seg_no * SEG - 0x28,
            next_page_flags: 0,
            magic: 0xD110,
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
        h.extend_from_slice(&self.magic.to_le_bytes());
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
pub(super) fn main_data(data: &[u8]) -> Vec<u8> {
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
pub(super) fn block_record_body() -> Vec<u8> {
    let mut body = vec![0, 0x20];
    body.extend_from_slice(&4u16.to_le_bytes());
    body.extend_from_slice(&[0x7F, 6, 0, 0, 5, 0, 0, 0, 0, 64, 0, 0]);
    body.extend_from_slice(&9u32.to_le_bytes());
    body.extend_from_slice(&[255, 2]);
    body.extend_from_slice(&[1, 2, 3, 4]);
    body.extend_from_slice(&[5, 6]);
    body
}

pub(super) fn restore_point_body(micros: i64, name: &str) -> Vec<u8> {
    let mut data = micros.to_le_bytes().to_vec();
    let mut field = [0u8; 64];
    field[..name.len()].copy_from_slice(name.as_bytes());
    data.extend_from_slice(&field);
    main_data(&data)
}

pub(super) fn micros(ts: &str) -> i64 {
    let t: Timestamp = ts.parse().expect("timestamp");
    t.as_microsecond() - 946_684_800_000_000
}

pub(super) fn ts(s: &str) -> Timestamp {
    s.parse().expect("timestamp")
}

/// A segment with one of everything; returns the bytes (partial, zero
/// padded) and the record starts.
pub(super) fn sample() -> (WalWriter, Vec<Lsn>) {
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

pub(super) fn decode_all(
    bytes: &[u8],
    chunk: usize,
) -> Result<(Vec<Record>, Decoder), DecodeError> {
    let mut decoder = Decoder::new(1, SEG, Lsn(SEG_NO * SEG));
    let mut records = Vec::new();
    for piece in bytes.chunks(chunk) {
        records.extend(decoder.feed(piece)?);
    }
    Ok((records, decoder))
}
