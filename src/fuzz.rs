//! Fuzz targets: one function per parser of bytes that pitr did not write
//! itself and may have been replaced, cut or forged (a destination, a server
//! on the network, a config file). Each takes arbitrary bytes and must
//! return — with an error for garbage — never panic, never allocate without
//! bound, never hang. `tests/fuzz.rs` drives them (briefly in `cargo test`,
//! for millions of inputs per FUZZING.md); they live in the library so that
//! they reach the parsers' own entry points, not copies of them.
//!
//! Where the bytes are authenticated (sealed catalog commits and pack
//! indexes, age-wrapped keys), random bytes stop at the authentication; so
//! the target also seals the input with the fixed test key and hands the
//! sealed object to the same reader, which then parses fuzzed plaintext.
//! Where a format has framing random bytes seldom get through (WAL page
//! headers), the target writes valid framing around the fuzzed content.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use bytes::Bytes;

use crate::basebackup::tar::TarParser;
use crate::pg::{FORMATS, Lsn};
use crate::repo::seal::{self, SealKind};
use crate::repo::{Commit, Descriptor, RepositoryKey};
use crate::sqlite::pageset::PageSetHeader;
use crate::sqlite::wal::{WalCursor, WalHeader};
use crate::wal::Lineage;
use crate::wal::decode::Decoder;

/// The fixed repository key the golden files are made with (test only).
pub const KEY: [u8; 32] = [0x42; 32];

/// The names of the targets, for the driver.
pub const TARGETS: &[&str] = &[
    "pack",
    "manifest",
    "catalog_commit",
    "key_object",
    "wal",
    "tar",
    "sqlite_wal",
    "page_set",
    "replication",
    "config",
];

/// Runs target `name` on `data`; `false` when there is no such target.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "pack" => pack(data),
        "manifest" => manifest(data),
        "catalog_commit" => catalog_commit(data),
        "key_object" => key_object(data),
        "wal" => wal(data),
        "tar" => tar(data),
        "sqlite_wal" => sqlite_wal(data),
        "page_set" => page_set(data),
        "replication" => replication(data),
        "config" => config(data),
        _ => return false,
    }
    true
}

/// A pack as read back: its prefix, its wrapped data key, its index (as
/// stored, and with the input sealed as the index plaintext inside the
/// golden pack's frame).
pub fn pack(data: &[u8]) {
    let key = RepositoryKey::from_bytes(KEY);
    let _ = crate::repo::pack::parse_prefix("packs/fuzz", data);
    let _ = crate::repo::pack::wrapped_key("packs/fuzz", data);
    let _ = crate::repo::read_index(&key, "packs/fuzz", data);
    let _ = crate::repo::pack::decode_index("packs/fuzz", data);
    // The input as the index plaintext of a pack whose frame is valid:
    // prefix (no wrapped key), sealed index, trailer (index length, end
    // magic), as PackBuilder writes them.
    let sealed = seal::seal(&key, SealKind::PackIndex, "", data);
    if let Some(prefix) = data.get(..crate::repo::pack::PREFIX_LEN as usize) {
        let mut pack = prefix.to_vec();
        pack.extend_from_slice(&sealed);
        pack.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        pack.extend_from_slice(b"PITRPEND");
        let _ = crate::repo::read_index(&key, "packs/fuzz", &pack);
    }
}

/// The repository descriptor and commit object names.
pub fn manifest(data: &[u8]) {
    let _ = Descriptor::decode(data);
    if let Ok(name) = std::str::from_utf8(data) {
        let _ = crate::repo::parse_commit_object_name(name);
    }
}

/// A catalog commit object: as stored, and sealed around the input as the
/// compressed plaintext and as the plaintext before compression.
pub fn catalog_commit(data: &[u8]) {
    let key = RepositoryKey::from_bytes(KEY);
    let name = "catalog/00000000000000000001-fuzz";
    let _ = Commit::decode(&key, name, data);
    let _ = Commit::decode(
        &key,
        name,
        &seal::seal(&key, SealKind::CatalogCommit, name, data),
    );
    if let Ok(z) = zstd::bulk::compress(data, 1) {
        let _ = Commit::decode(
            &key,
            name,
            &seal::seal(&key, SealKind::CatalogCommit, name, &z),
        );
    }
}

/// A key object (`keys/<id>`): its plaintext, and the age envelope around it.
pub fn key_object(data: &[u8]) {
    let _ = RepositoryKey::decode_key_object("keys/fuzz", data);
    let identity = fuzz_identity();
    let _ = crate::repo::age_decrypt(std::slice::from_ref(identity), "keys/fuzz", data);
}

fn fuzz_identity() -> &'static age::x25519::Identity {
    static ID: std::sync::OnceLock<age::x25519::Identity> = std::sync::OnceLock::new();
    ID.get_or_init(age::x25519::Identity::generate)
}

/// WAL of every supported major. The first byte picks the major and
/// whether the page headers are kept as given or written valid (magic,
/// timeline, page address, long header on the segment's first page) around
/// the fuzzed page contents; the second splits the feed in two.
pub fn wal(data: &[u8]) {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let Some((&split, rest)) = rest.split_first() else {
        return;
    };
    let format = &FORMATS[usize::from(choice) % FORMATS.len()];
    let bytes = if choice & 0x80 != 0 {
        rest.to_vec()
    } else {
        frame_wal(format.page_magic, rest)
    };
    let mut decoder = Decoder::new(1, WAL_SEG, Lsn(WAL_SEG)).with_format(format);
    let cut = usize::from(split) * bytes.len() / 256;
    if decoder.feed(&bytes[..cut]).is_ok() {
        let _ = decoder.feed(&bytes[cut..]);
    }
    let _ = decoder.end_of_wal();
    let _ = decoder.complete_up_to();
}

const WAL_PAGE: usize = 8192;
const WAL_SEG: u64 = 16 << 20;

/// Pages from the start of segment 1 on timeline 1 with valid headers for
/// `magic`, each holding the next `WAL_PAGE - 40` bytes of `bodies`: the
/// first 5 give the header's flags and remaining length (the fuzzer's), the
/// rest the page's contents.
fn frame_wal(magic: u16, bodies: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bodies.len() + bodies.len() / 4);
    for (i, body) in bodies.chunks(WAL_PAGE - 40).enumerate() {
        let page = out.len();
        let addr = WAL_SEG + (i * WAL_PAGE) as u64;
        let info = body.first().map_or(0, |b| u16::from(*b & 0x0D)) | u16::from(i == 0) << 1;
        let rem = body
            .get(1..5)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        out.extend_from_slice(&magic.to_le_bytes());
        out.extend_from_slice(&info.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&addr.to_le_bytes());
        out.extend_from_slice(&rem.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        if i == 0 {
            out.extend_from_slice(&0x7000_0000_0000_0001u64.to_le_bytes());
            out.extend_from_slice(&(WAL_SEG as u32).to_le_bytes());
            out.extend_from_slice(&(WAL_PAGE as u32).to_le_bytes());
        }
        out.extend_from_slice(body.get(5..).unwrap_or(&[]));
        // A full page, but for the last one.
        if out.len() - page < WAL_PAGE && bodies.len() > (i + 1) * (WAL_PAGE - 40) {
            out.resize(page + WAL_PAGE, 0);
        }
    }
    out
}

/// The tar stream of BASE_BACKUP, fed in two pieces split where the first
/// byte says, then finished.
pub fn tar(data: &[u8]) {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let cut = usize::from(split) * rest.len() / 256;
    let mut parser = TarParser::new();
    let mut events = Vec::new();
    if parser
        .feed(Bytes::copy_from_slice(&rest[..cut]), &mut events)
        .is_ok()
        && parser
            .feed(Bytes::copy_from_slice(&rest[cut..]), &mut events)
            .is_ok()
    {
        let _ = parser.finish();
    }
}

/// An SQLite WAL file: its header, and its frames as the watcher follows
/// them (the file is rewritten in place, as a writer would).
pub fn sqlite_wal(data: &[u8]) {
    let _ = WalHeader::parse(data);
    thread_local! {
        static FILE: std::cell::RefCell<Option<std::fs::File>> = const { std::cell::RefCell::new(None) };
    }
    FILE.with(|f| {
        let mut f = f.borrow_mut();
        if f.is_none() {
            *f = tempfile::tempfile().ok();
        }
        let Some(file) = f.as_mut() else {
            return;
        };
        if file.set_len(0).is_err()
            || file.seek(SeekFrom::Start(0)).is_err()
            || file.write_all(data).is_err()
        {
            return;
        }
        let mut cursor = WalCursor::new();
        // Each call moves on or reports nothing new; a handful is all any
        // file of this size can need.
        for _ in 0..4 {
            if cursor.advance(Some(file)).is_err() {
                break;
            }
        }
        let _ = cursor.position();
    });
}

/// A page set object's header.
pub fn page_set(data: &[u8]) {
    if PageSetHeader::len_from_prefix(data).is_ok() {
        let _ = PageSetHeader::decode(data);
    }
    let _ = PageSetHeader::decode(data);
}

/// Messages from a replication server: CopyData of START_REPLICATION
/// (XLogData, keepalive), ErrorResponse, RowDescription and DataRow bodies,
/// and a timeline history file (TIMELINE_HISTORY).
pub fn replication(data: &[u8]) {
    let b = Bytes::copy_from_slice(data);
    let _ = crate::pg::conn::copy::decode_copy_data(b.clone());
    let _ = crate::pg::conn::wire::parse_error(&b);
    let _ = crate::pg::conn::wire::parse_row_description(&b);
    let _ = crate::pg::conn::wire::parse_data_row(&b);
    if let Some((&tl, rest)) = data.split_first() {
        let _ = Lineage::parse(u32::from(tl).max(1), rest);
    }
}

/// A config file, alone and with an environment override.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("/nonexistent/pitr-fuzz/pitr.toml");
    let _ = crate::config::Config::from_toml_str(&text, path, &[]);
    let env = [(
        "PITR_REPOSITORY_STATE_DIR".to_owned(),
        "/nonexistent/pitr-fuzz/state".to_owned(),
    )];
    let _ = crate::config::Config::from_toml_str(&text, path, &env);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::decode::DecodeErrorKind;

    /// The WAL target's framing gets fuzzed bytes past the page header of
    /// every major, to the record decoder: a record header with a wrong
    /// CRC fails as a record, not as a page.
    #[test]
    fn framed_wal_reaches_the_record_decoder_of_every_major() {
        for format in &FORMATS {
            let mut body = vec![0u8; 5];
            // XLogRecord: xl_tot_len 64, xid, prev, info, rmid, pad, crc.
            body.extend_from_slice(&64u32.to_le_bytes());
            body.extend_from_slice(&[0; 4]);
            body.extend_from_slice(&[0; 8]);
            body.extend_from_slice(&[0, 0, 0, 0]);
            body.extend_from_slice(&0xdead_beefu32.to_le_bytes());
            body.extend_from_slice(&[0xAB; 40]);
            let bytes = frame_wal(format.page_magic, &body);
            let err = Decoder::new(1, WAL_SEG, Lsn(WAL_SEG))
                .with_format(format)
                .feed(&bytes)
                .expect_err("a forged record");
            assert!(
                !matches!(
                    err.kind,
                    DecodeErrorKind::UnknownMagic { .. }
                        | DecodeErrorKind::MajorMismatch { .. }
                        | DecodeErrorKind::PageHeader { .. }
                        | DecodeErrorKind::PageAddress { .. }
                ),
                "PostgreSQL {}: {err}",
                format.major
            );
        }
    }
}
