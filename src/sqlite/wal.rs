//! Reading an SQLite WAL file from outside SQLite: the header, frames, the
//! salts and the checksum chain that say which frames count, and a cursor
//! that remembers how far the watcher has read so that each poll reads only
//! the frames appended since.
//!
//! Format (sqlite.org/fileformat2.html, "WAL file format"): a 32-byte header
//! (magic, version, page size, checkpoint sequence, salt-1, salt-2, checksum)
//! and frames of a 24-byte header (page number, database size in pages on a
//! commit frame else 0, the two salts, the cumulative checksum) plus one page.
//! A frame counts only when its salts match the header's and the checksum
//! chain holds up to it; only frames up to the last valid commit frame are
//! committed.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// The WAL header's magic, low bit clear: checksums in little-endian words.
const MAGIC_LE: u32 = 0x377f_0682;
/// The WAL header's magic, low bit set: checksums in big-endian words.
const MAGIC_BE: u32 = 0x377f_0683;
/// The only WAL format version SQLite writes.
const VERSION: u32 = 3_007_000;
const HEADER: u64 = 32;
const FRAME_HEADER: u64 = 24;
/// Frames read per system call.
const BATCH: usize = 32;

/// A parsed, checksum-verified WAL header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalHeader {
    big_endian: bool,
    /// The database page size.
    pub page_size: u32,
    /// Incremented each time the WAL restarts.
    pub checkpoint_seq: u32,
    /// Salt-1 (incremented on restart) and salt-2 (random on restart).
    pub salts: (u32, u32),
    checksum: (u32, u32),
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// SQLite's WAL checksum over `data` (a multiple of 8 bytes), continuing
/// from `s`.
fn checksum(big_endian: bool, mut s: (u32, u32), data: &[u8]) -> (u32, u32) {
    for w in data.chunks_exact(8) {
        let (a, b) = if big_endian {
            (be32(w, 0), be32(w, 4))
        } else {
            (
                u32::from_le_bytes([w[0], w[1], w[2], w[3]]),
                u32::from_le_bytes([w[4], w[5], w[6], w[7]]),
            )
        };
        s.0 = s.0.wrapping_add(a).wrapping_add(s.1);
        s.1 = s.1.wrapping_add(b).wrapping_add(s.0);
    }
    s
}

impl WalHeader {
    /// Parses and checks a header; `None` when it is not a valid WAL header
    /// (an empty or truncated file, or one being rewritten).
    pub fn parse(b: &[u8]) -> Option<WalHeader> {
        if b.len() < HEADER as usize {
            return None;
        }
        let big_endian = match be32(b, 0) {
            MAGIC_LE => false,
            MAGIC_BE => true,
            _ => return None,
        };
        if be32(b, 4) != VERSION {
            return None;
        }
        let page_size = be32(b, 8);
        let page_size = if page_size == 1 { 65536 } else { page_size };
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return None;
        }
        let stored = (be32(b, 24), be32(b, 28));
        if checksum(big_endian, (0, 0), &b[..24]) != stored {
            return None;
        }
        Some(WalHeader {
            big_endian,
            page_size,
            checkpoint_seq: be32(b, 12),
            salts: (be32(b, 16), be32(b, 20)),
            checksum: stored,
        })
    }

    fn frame_size(&self) -> u64 {
        FRAME_HEADER + u64::from(self.page_size)
    }

    /// The file offset of frame `n` (1-based).
    fn frame_offset(&self, n: u32) -> u64 {
        HEADER + u64::from(n - 1) * self.frame_size()
    }
}

/// A frame position that orders frames across WAL generations: the
/// generation the cursor counted (one per restart it saw) and the frame's
/// 1-based index in it.
pub type FrameId = u64;

fn frame_id(generation: u32, index: u32) -> FrameId {
    (u64::from(generation) << 32) | u64::from(index)
}

/// What one [`WalCursor::advance`] found.
#[derive(Debug, Default)]
pub struct Advance {
    /// `(frame, page number)` of every newly committed frame.
    pub frames: Vec<(FrameId, u32)>,
    /// Why frames may have been missed (the WAL restarted or was truncated
    /// before the cursor read them); `None` when nothing was.
    pub lost: Option<String>,
    /// Bytes read from the WAL file.
    pub bytes_read: u64,
    /// The cursor had no WAL before and this one already holds committed
    /// frames: whether they are all new since the last capture is for the
    /// caller to judge (a checkpoint would have changed the database file).
    pub first_look: bool,
}

/// The generation the cursor follows and how far it has read it.
#[derive(Debug, Clone, Copy)]
struct Position {
    header: WalHeader,
    generation: u32,
    /// Frames up to this index (1-based; 0 for none) are committed and read.
    committed: u32,
    /// The checksum chain after frame `committed`.
    chain: (u32, u32),
}

/// How far the watcher has read the WAL. Not a lock and no shared state
/// with SQLite: it only reads the file.
#[derive(Debug, Default)]
pub struct WalCursor {
    pos: Option<Position>,
    generations: u32,
}

/// Frames read by [`scan`]: committed ones, and how far valid frames go.
struct Scanned {
    frames: Vec<(u32, u32)>,
    committed: u32,
    chain: (u32, u32),
    /// Every valid frame, committed or not: how far a writer has written.
    valid: u32,
    bytes_read: u64,
}

/// Reads frames `from..` of the generation `h`, starting the checksum chain
/// at `chain`, until the first frame that does not belong (other salts, a
/// broken chain, end of file) or the end of the file as it was `len` bytes
/// long: a writer appending faster than this reads would otherwise keep it
/// reading (and a capture's read transaction open) for as long as it
/// writes. Frames past `len` are for the next look.
fn scan(file: &File, h: &WalHeader, from: u32, chain: (u32, u32), len: u64) -> io::Result<Scanned> {
    let mut out = Scanned {
        frames: Vec::new(),
        committed: from - 1,
        chain,
        valid: from - 1,
        bytes_read: 0,
    };
    let mut tentative: Vec<(u32, u32)> = Vec::new();
    let mut s = chain;
    let fs = h.frame_size() as usize;
    // Frames are read BATCH at a time: one system call per batch, not per
    // frame, when a busy writer appended thousands since the last look.
    let mut buf = vec![0u8; fs * BATCH];
    let mut n = from;
    'read: loop {
        let offset = h.frame_offset(n);
        let want = len.saturating_sub(offset).min(buf.len() as u64) as usize;
        let got = read_some(file, &mut buf[..want], offset)?;
        let frames = got / fs;
        if frames == 0 {
            break;
        }
        out.bytes_read += (frames * fs) as u64;
        for frame in buf[..frames * fs].chunks_exact(fs) {
            if (be32(frame, 8), be32(frame, 12)) != h.salts {
                break 'read;
            }
            let next = checksum(h.big_endian, s, &frame[..8]);
            let next = checksum(h.big_endian, next, &frame[FRAME_HEADER as usize..]);
            if next != (be32(frame, 16), be32(frame, 20)) {
                break 'read;
            }
            s = next;
            out.valid = n;
            tentative.push((n, be32(frame, 0)));
            if be32(frame, 4) != 0 {
                // A commit frame: everything up to here is committed.
                out.frames.append(&mut tentative);
                out.committed = n;
                out.chain = s;
            }
            n = match n.checked_add(1) {
                Some(n) => n,
                None => break 'read,
            };
        }
        if frames < BATCH {
            break;
        }
    }
    Ok(out)
}

/// Whether the file still has header `h` (no further restart happened
/// while the cursor read).
fn same_header(file: &File, h: &WalHeader) -> io::Result<bool> {
    let mut head = [0u8; HEADER as usize];
    Ok(read_full(file, &mut head, 0)? && WalHeader::parse(&head).as_ref() == Some(h))
}

/// Reads as much of `buf` as the file has at `offset`; the count.
fn read_some(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Reads exactly `buf.len()` bytes at `offset`; `false` at end of file.
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<bool> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => return Ok(false),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

impl WalCursor {
    /// A cursor that has read nothing: its first advance reports every
    /// committed frame, with `first_look` set.
    pub fn new() -> WalCursor {
        WalCursor::default()
    }

    /// The last committed frame read so far; `None` before any WAL.
    pub fn position(&self) -> Option<FrameId> {
        self.pos.map(|p| frame_id(p.generation, p.committed))
    }

    /// The page size the WAL header gives, if there is a valid header.
    pub fn page_size(&self) -> Option<u32> {
        self.pos.map(|p| p.header.page_size)
    }

    /// Reads what was committed to the WAL since the last call.
    ///
    /// When the WAL restarted since (new salts), frames the old generation
    /// got after the cursor are still read if they are provably intact: the
    /// checkpoint sequence moved by exactly one, the file was not cut below
    /// the cursor's position (a TRUNCATE checkpoint), the new generation has
    /// not reached that position (so it cannot have overwritten them), and
    /// no further restart happened while reading. Otherwise `lost` says so.
    pub fn advance(&mut self, wal: Option<&File>) -> io::Result<Advance> {
        let mut adv = Advance::default();
        let mut head = [0u8; HEADER as usize];
        let header = match wal {
            Some(f) if read_full(f, &mut head, 0)? => {
                adv.bytes_read += HEADER;
                WalHeader::parse(&head)
            }
            _ => None,
        };
        let (Some(file), Some(header)) = (wal, header) else {
            // No WAL, an empty one (after a TRUNCATE checkpoint or before the
            // first write) or a header being rewritten.
            if let Some(p) = self.pos.take() {
                self.generations += 1;
                if p.committed > 0 {
                    adv.lost = Some("the WAL was truncated or removed".into());
                }
            }
            return Ok(adv);
        };
        match self.pos {
            Some(p) if p.header == header => {
                let len = file.metadata()?.len();
                let s = scan(file, &header, p.committed + 1, p.chain, len)?;
                adv.bytes_read += s.bytes_read;
                adv.frames = s
                    .frames
                    .iter()
                    .map(|&(n, pg)| (frame_id(p.generation, n), pg))
                    .collect();
                self.pos = Some(Position {
                    committed: s.committed,
                    chain: s.chain,
                    ..p
                });
            }
            old => {
                // A new generation (or the first look). The file's length
                // before reading the old tail tells a RESTART (the file
                // keeps its length, old frames past the new ones intact)
                // from a TRUNCATE (cut to zero, then rewritten: the old
                // tail is gone even where the new frames have not reached).
                let len_before = file.metadata()?.len();
                let mut old_tail = None;
                if let Some(p) = old {
                    let one_restart = header.checkpoint_seq
                        == p.header.checkpoint_seq.wrapping_add(1)
                        && header.salts.0 == p.header.salts.0.wrapping_add(1)
                        && header.page_size == p.header.page_size;
                    if one_restart {
                        let tail = scan(file, &p.header, p.committed + 1, p.chain, len_before)?;
                        adv.bytes_read += tail.bytes_read;
                        old_tail = Some((p, tail));
                    }
                }
                self.generations += 1;
                let generation = self.generations;
                let new = scan(file, &header, 1, header.checksum, len_before)?;
                adv.bytes_read += new.bytes_read;
                match (old, old_tail) {
                    (None, _) => adv.first_look = new.committed > 0,
                    (Some(_), Some((p, tail)))
                        if new.valid < p.committed
                            && len_before >= p.header.frame_offset(p.committed + 1)
                            && same_header(file, &header)? =>
                    {
                        // The new generation wrote frames 1..=valid (and at
                        // most one more in flight): all below the old tail.
                        adv.frames.extend(
                            tail.frames
                                .iter()
                                .map(|&(n, pg)| (frame_id(p.generation, n), pg)),
                        );
                    }
                    (Some(_), _) => {
                        adv.lost = Some(
                            "the WAL restarted (a checkpoint) before the watcher read its last \
                             frames"
                                .into(),
                        );
                    }
                }
                adv.frames.extend(
                    new.frames
                        .iter()
                        .map(|&(n, pg)| (frame_id(generation, n), pg)),
                );
                self.pos = Some(Position {
                    header,
                    generation,
                    committed: new.committed,
                    chain: new.chain,
                });
            }
        }
        Ok(adv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WAL written by SQLite itself: the cursor finds exactly the frames
    /// SQLite reports, follows appends incrementally, and after a RESTART
    /// checkpoint (new salts) reports frames lost only when it had not read
    /// them.
    #[test]
    fn follows_a_wal_sqlite_wrote() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("t.db");
        let wal_path = dir.path().join("t.db-wal");
        let c = rusqlite::Connection::open(&db).expect("open");
        c.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
             CREATE TABLE t (x BLOB); INSERT INTO t VALUES (randomblob(10000));",
        )
        .expect("setup");
        let frames_in_wal = |c: &rusqlite::Connection| -> u32 {
            // (busy, log frames, checkpointed) of a no-op PASSIVE checkpoint
            // on a connection that disabled autocheckpoint: log is the count.
            c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
                .expect("checkpoint")
        };
        let mut cur = WalCursor::new();
        let wal = File::open(&wal_path).expect("wal");
        let a = cur.advance(Some(&wal)).expect("advance");
        assert!(a.first_look && a.lost.is_none());
        let n = a.frames.len() as u32;
        assert!(n > 0);
        // Appends are read incrementally.
        c.execute_batch("INSERT INTO t VALUES (randomblob(5000));")
            .expect("insert");
        let b = cur.advance(Some(&wal)).expect("advance");
        assert!(!b.frames.is_empty() && b.lost.is_none() && !b.first_look);
        assert!(b.bytes_read < 5 * 4120 + 64, "read {} bytes", b.bytes_read);
        let total = n + b.frames.len() as u32;
        assert_eq!(total, frames_in_wal(&c));
        // A RESTART checkpoint after the cursor read everything: the next
        // write starts a new generation over the old frames' start; nothing
        // was lost.
        let _: (i64, i64, i64) = c
            .query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .expect("restart");
        c.execute_batch("INSERT INTO t VALUES (1);")
            .expect("insert");
        let d = cur.advance(Some(&wal)).expect("advance");
        assert!(d.lost.is_none(), "{:?}", d.lost);
        assert!(!d.frames.is_empty());
        // Writes the cursor does not see before a TRUNCATE checkpoint are
        // reported lost.
        c.execute_batch(
            "INSERT INTO t VALUES (2); PRAGMA wal_checkpoint(TRUNCATE); INSERT INTO t VALUES (3);",
        )
        .expect("truncate");
        let e = cur.advance(Some(&wal)).expect("advance");
        assert!(e.lost.is_some(), "a truncated WAL must be reported");
    }

    #[test]
    fn a_header_with_a_bad_checksum_is_not_a_header() {
        let mut h = [0u8; 32];
        h[..4].copy_from_slice(&MAGIC_BE.to_be_bytes());
        h[4..8].copy_from_slice(&VERSION.to_be_bytes());
        h[8..12].copy_from_slice(&4096u32.to_be_bytes());
        let s = checksum(true, (0, 0), &h[..24]);
        h[24..28].copy_from_slice(&s.0.to_be_bytes());
        h[28..32].copy_from_slice(&s.1.to_be_bytes());
        assert!(WalHeader::parse(&h).is_some());
        h[17] ^= 1;
        assert!(WalHeader::parse(&h).is_none());
    }
}
