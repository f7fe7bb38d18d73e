//! A push parser for the tar stream `BASE_BACKUP` sends: POSIX ustar
//! headers (512 bytes: name, octal mode, size, mtime, checksum, type,
//! link name, `ustar` prefix), with GNU long names (`L`, `K`) and pax
//! headers (`x`) understood in case a server sends them.
//!
//! Bytes are fed as they arrive; file contents come out as slices of the
//! input (no copy, nothing buffered but one header), so memory does not
//! depend on file sizes. The server omits the two zero blocks that end a tar
//! file; an end at a header boundary is the end of the archive.

use bytes::{Buf, Bytes};

const BLOCK: usize = 512;
/// Longest GNU long-name or pax header body accepted.
const MAX_META: u64 = 64 << 10;

/// What the archive holds, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TarEvent {
    /// A regular file begins; its `size` bytes follow as [`TarEvent::Data`].
    File(Entry),
    /// The next bytes of the current file.
    Data(Bytes),
    /// The current file is complete.
    FileEnd,
    /// A directory.
    Dir(Entry),
    /// A symbolic link to `Entry::link`.
    Symlink(Entry),
}

/// One archive member's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its path inside the archive, without a trailing slash.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Size in bytes (files).
    pub size: u64,
    /// Link target (symlinks).
    pub link: String,
}

/// A tar stream that is not what the server sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed tar stream at byte {offset}: {what}")]
pub struct TarError {
    /// Offset in the archive.
    pub offset: u64,
    /// What is wrong.
    pub what: String,
}

#[derive(Debug)]
enum State {
    Header,
    /// Bytes left of a file's content, then its padding.
    File(u64, u64),
    /// Bytes left of a GNU long name / link or pax header body.
    Meta(u8, u64),
    /// Padding to the next block.
    Pad(u64),
    /// After a zero block.
    End,
}

/// The parser; see the module documentation.
#[derive(Debug)]
pub struct TarParser {
    state: State,
    header: Vec<u8>,
    meta: Vec<u8>,
    long_name: Option<String>,
    long_link: Option<String>,
    pax_size: Option<u64>,
    offset: u64,
}

impl Default for TarParser {
    fn default() -> Self {
        TarParser {
            state: State::Header,
            header: Vec::with_capacity(BLOCK),
            meta: Vec::new(),
            long_name: None,
            long_link: None,
            pax_size: None,
            offset: 0,
        }
    }
}

/// The state after a member's content: its padding, or the next header.
fn after(pad: u64) -> State {
    if pad == 0 {
        State::Header
    } else {
        State::Pad(pad)
    }
}

fn pad_of(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

impl TarParser {
    /// A parser at the start of an archive.
    pub fn new() -> Self {
        Self::default()
    }

    fn err(&self, what: impl Into<String>) -> TarError {
        TarError {
            offset: self.offset,
            what: what.into(),
        }
    }

    /// Consumes `data`, appending what it completes to `out`.
    pub fn feed(&mut self, mut data: Bytes, out: &mut Vec<TarEvent>) -> Result<(), TarError> {
        while !data.is_empty() {
            match self.state {
                State::End => {
                    // Trailing zero blocks (or padding a writer added).
                    if data.iter().any(|&b| b != 0) {
                        return Err(self.err("data after the end-of-archive block"));
                    }
                    self.offset += data.len() as u64;
                    return Ok(());
                }
                State::Header => {
                    let take = (BLOCK - self.header.len()).min(data.len());
                    self.header.extend_from_slice(&data.split_to(take));
                    self.offset += take as u64;
                    if self.header.len() == BLOCK {
                        let header = std::mem::take(&mut self.header);
                        self.header.reserve(BLOCK);
                        self.on_header(&header, out)?;
                    }
                }
                State::File(left, pad) => {
                    let take = left.min(data.len() as u64) as usize;
                    out.push(TarEvent::Data(data.split_to(take)));
                    self.offset += take as u64;
                    let left = left - take as u64;
                    if left == 0 {
                        out.push(TarEvent::FileEnd);
                        self.state = after(pad);
                    } else {
                        self.state = State::File(left, pad);
                    }
                }
                State::Meta(kind, left) => {
                    let take = left.min(data.len() as u64) as usize;
                    self.meta.extend_from_slice(&data.split_to(take));
                    self.offset += take as u64;
                    let left = left - take as u64;
                    self.state = State::Meta(kind, left);
                    if left == 0 {
                        self.on_meta(kind)?;
                    }
                }
                State::Pad(left) => {
                    let take = left.min(data.len() as u64) as usize;
                    data.advance(take);
                    self.offset += take as u64;
                    let left = left - take as u64;
                    self.state = after(left);
                }
            }
        }
        Ok(())
    }

    /// Checks that the archive ended at a member boundary.
    pub fn finish(&self) -> Result<(), TarError> {
        match self.state {
            State::End => Ok(()),
            State::Header if self.header.is_empty() => Ok(()),
            _ => Err(self.err("the archive ends inside a member")),
        }
    }

    fn on_meta(&mut self, kind: u8) -> Result<(), TarError> {
        let body = std::mem::take(&mut self.meta);
        let size = body.len() as u64;
        match kind {
            b'L' => self.long_name = Some(cstr(&body)),
            b'K' => self.long_link = Some(cstr(&body)),
            b'x' => self.on_pax(&body)?,
            _ => {} // global pax headers: nothing pitr needs
        }
        self.state = after(pad_of(size));
        Ok(())
    }

    /// `"<len> <key>=<value>\n"` records.
    fn on_pax(&mut self, mut body: &[u8]) -> Result<(), TarError> {
        while !body.is_empty() {
            let sp = body
                .iter()
                .position(|&b| b == b' ')
                .ok_or_else(|| self.err("pax record without a length"))?;
            let len: usize = std::str::from_utf8(&body[..sp])
                .ok()
                .and_then(|s| s.parse().ok())
                .filter(|&l| l > sp + 1 && l <= body.len())
                .ok_or_else(|| self.err("bad pax record length"))?;
            let record = &body[sp + 1..len - 1];
            if let Some(eq) = record.iter().position(|&b| b == b'=') {
                let value = String::from_utf8_lossy(&record[eq + 1..]).into_owned();
                match &record[..eq] {
                    b"path" => self.long_name = Some(value),
                    b"linkpath" => self.long_link = Some(value),
                    b"size" => {
                        self.pax_size = Some(value.parse().map_err(|_| self.err("bad pax size"))?);
                    }
                    _ => {}
                }
            }
            body = &body[len..];
        }
        Ok(())
    }

    fn on_header(&mut self, h: &[u8], out: &mut Vec<TarEvent>) -> Result<(), TarError> {
        if h.iter().all(|&b| b == 0) {
            self.state = State::End;
            return Ok(());
        }
        let stored = number(&h[148..156]).ok_or_else(|| self.err("bad header checksum field"))?;
        let sum: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(b)
                }
            })
            .sum();
        if sum != stored {
            return Err(self.err(format!(
                "header checksum {stored} does not match its bytes ({sum})"
            )));
        }
        let offset = self.offset;
        let num = |range: std::ops::Range<usize>, what: &str| {
            number(&h[range]).ok_or_else(|| TarError {
                offset,
                what: format!("bad {what} field"),
            })
        };
        let mode = num(100..108, "mode")? as u32;
        let mtime = num(136..148, "mtime")? as i64;
        let size = match self.pax_size.take() {
            Some(s) => s,
            None => num(124..136, "size")?,
        };
        let kind = h[156];
        let mut path = cstr(&h[..100]);
        if &h[257..262] == b"ustar" {
            let prefix = cstr(&h[345..500]);
            if !prefix.is_empty() {
                path = format!("{prefix}/{path}");
            }
        }
        if let Some(long) = self.long_name.take() {
            path = long;
        }
        let link = self.long_link.take().unwrap_or_else(|| cstr(&h[157..257]));
        let path = path.trim_end_matches('/').to_owned();
        let entry = || Entry {
            path: path.clone(),
            mode: mode & 0o7777,
            mtime,
            size,
            link: link.clone(),
        };
        if matches!(kind, b'L' | b'K' | b'x' | b'g') {
            if size > MAX_META {
                return Err(self.err(format!("a {size}-byte extended header")));
            }
            self.state = State::Meta(kind, size);
            if size == 0 {
                self.on_meta(kind)?;
            }
            return Ok(());
        }
        if path.is_empty() || path.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(self.err(format!("unsafe member path {path:?}")));
        }
        match kind {
            b'0' | 0 | b'7' => {
                out.push(TarEvent::File(entry()));
                if size == 0 {
                    out.push(TarEvent::FileEnd);
                } else {
                    self.state = State::File(size, pad_of(size));
                }
            }
            b'5' => out.push(TarEvent::Dir(entry())),
            b'2' => out.push(TarEvent::Symlink(entry())),
            other => {
                return Err(self.err(format!(
                    "member {path:?} has type {:?}, which a base backup does not hold",
                    other as char
                )));
            }
        }
        Ok(())
    }
}

/// A NUL-terminated field.
fn cstr(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// An octal number field, or base-256 when its high bit is set (GNU, and
/// PostgreSQL for sizes of 8 GiB and more).
fn number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, kind: u8, size: u64, link: &str) -> Vec<u8> {
        let mut h = vec![0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000600\0");
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        h[136..148].copy_from_slice(b"14712345670\0");
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    fn member(out: &mut Vec<u8>, name: &str, kind: u8, body: &[u8], link: &str) {
        out.extend(header(name, kind, body.len() as u64, link));
        out.extend_from_slice(body);
        out.resize(out.len() + pad_of(body.len() as u64) as usize, 0);
    }

    fn archive() -> Vec<u8> {
        let mut a = Vec::new();
        member(&mut a, "base", b'5', b"", "");
        member(&mut a, "base/1/1259", b'0', &vec![7u8; 8192 * 3 + 5], "");
        member(&mut a, "PG_VERSION", b'0', b"15\n", "");
        member(&mut a, "empty", b'0', b"", "");
        let long = "d/".repeat(80) + "file";
        member(&mut a, "././@LongLink", b'L', long.as_bytes(), "");
        member(&mut a, "ignored", b'0', b"x", "");
        member(&mut a, "pg_tblspc/16385", b'2', b"", "/srv/ts");
        a
    }

    fn parse(chunks: &[&[u8]]) -> Vec<TarEvent> {
        let mut p = TarParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(Bytes::copy_from_slice(c), &mut out).expect("parses");
        }
        p.finish().expect("ends at a boundary");
        // Merge data for comparison.
        let mut merged: Vec<TarEvent> = Vec::new();
        for e in out {
            match (merged.last_mut(), e) {
                (Some(TarEvent::Data(prev)), TarEvent::Data(d)) => {
                    let mut v = prev.to_vec();
                    v.extend_from_slice(&d);
                    *prev = Bytes::from(v);
                }
                (_, e) => merged.push(e),
            }
        }
        merged
    }

    #[test]
    fn members_come_out_whatever_the_split() {
        let a = archive();
        let whole = parse(&[&a]);
        let names: Vec<String> = whole
            .iter()
            .filter_map(|e| match e {
                TarEvent::File(e) | TarEvent::Dir(e) | TarEvent::Symlink(e) => Some(e.path.clone()),
                _ => None,
            })
            .collect();
        let long = "d/".repeat(80) + "file";
        assert_eq!(
            names,
            [
                "base",
                "base/1/1259",
                "PG_VERSION",
                "empty",
                &long,
                "pg_tblspc/16385"
            ]
        );
        assert!(whole.contains(&TarEvent::Data(Bytes::from_static(b"15\n"))));
        match whole.last() {
            Some(TarEvent::Symlink(e)) => assert_eq!(e.link, "/srv/ts"),
            other => panic!("{other:?}"),
        }
        for split in [1usize, 7, 511, 512, 513, 4096] {
            let chunks: Vec<&[u8]> = a.chunks(split).collect();
            assert_eq!(parse(&chunks), whole, "split {split}");
        }
        // With the terminating zero blocks too.
        let mut z = a.clone();
        z.extend(vec![0u8; 1024]);
        assert_eq!(parse(&[&z]), whole);
    }

    #[test]
    fn damage_is_an_error() {
        let mut a = archive();
        a[600] ^= 1; // inside the second header
        let mut p = TarParser::new();
        assert!(p.feed(Bytes::from(a.clone()), &mut Vec::new()).is_err());
        let a = archive();
        let mut p = TarParser::new();
        p.feed(Bytes::copy_from_slice(&a[..2000]), &mut Vec::new())
            .expect("a prefix parses");
        assert!(p.finish().is_err(), "cut inside a member");
        let mut p = TarParser::new();
        let bad = header("../etc/passwd", b'0', 0, "");
        assert!(p.feed(Bytes::from(bad), &mut Vec::new()).is_err());
    }
}
