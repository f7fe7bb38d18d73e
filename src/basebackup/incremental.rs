//! Incremental base backups (PostgreSQL 17 and later): choosing the parent,
//! the parent's manifest for `UPLOAD_MANIFEST`, and the `INCREMENTAL.*`
//! file format that restores read back.
//!
//! Facts from PostgreSQL 17's `src/backend/backup/basebackup_incremental.c`,
//! `src/bin/pg_combinebackup/reconstruct.c` and `src/common/parse_manifest.c`:
//!
//! - the server needs `summarize_wal = on` and WAL summaries from the
//!   parent's start to the new backup's start; it answers SQLSTATE 55000
//!   when they are missing (then pitr takes a full backup);
//! - of the uploaded manifest the server reads only the version, the system
//!   identifier, each file's path (and size, unused) and the WAL ranges,
//!   and checks the manifest checksum (SHA-256 of everything up to the last
//!   line). The sidecar cannot read its own backups (invariant 5), so pitr
//!   rebuilds the parent's manifest from the catalog, which holds exactly
//!   that: every file's path and size, the start and end LSN, the timeline
//!   and the system identifier;
//! - an `INCREMENTAL.<name>` file is, in the server's byte order: magic
//!   `0xd3ae1f0d`, the number of blocks n, the truncation block length, n
//!   block numbers (relative to the segment, ascending), padding to a
//!   multiple of 8192 bytes when n > 0, then the n blocks.

use jiff::Timestamp;
use sha2::{Digest, Sha256};

use super::record::{BackupRecord, backups};
use super::{BackupError, KIND_FILE, files_prefix};
use crate::repo::Repository;

/// `INCREMENTAL_MAGIC` of `basebackup_incremental.h`.
pub const MAGIC: u32 = 0xd3ae_1f0d;
/// PostgreSQL's page size (`BLCKSZ`) as the builds pitr supports use it.
pub const BLOCK: u64 = 8192;
/// Blocks per relation segment (`RELSEG_SIZE`, 1 GiB of 8 KiB pages).
pub const RELSEG_BLOCKS: u32 = 131_072;
/// The prefix the server gives a file it sent incrementally.
pub const PREFIX: &str = "INCREMENTAL.";
/// The first major with incremental backups.
pub const FIRST_MAJOR: u32 = 17;

/// The header of an `INCREMENTAL.*` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The blocks the file holds, relative to the segment, ascending.
    pub blocks: Vec<u32>,
    /// The reconstructed file has at least this many blocks; blocks of
    /// older backups at or past it are not used (the relation was
    /// truncated).
    pub truncation_blocks: u32,
}

/// Why an `INCREMENTAL.*` header does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The file does not start with the magic number.
    #[error("bad magic number {0:#x} (an INCREMENTAL file starts with 0xd3ae1f0d)")]
    Magic(u32),
    /// A count is past what a relation segment can hold.
    #[error("{what} {value} exceeds the segment size of {RELSEG_BLOCKS} blocks")]
    TooLarge {
        /// Which count.
        what: &'static str,
        /// Its value.
        value: u32,
    },
    /// The block numbers are not strictly ascending or past the segment.
    #[error("block numbers out of order or past the segment at position {0}")]
    Order(usize),
    /// The file ends inside its header.
    #[error("the file ends inside its header")]
    Short,
}

/// The `i`th little-endian 32-bit word of a header.
fn word(bytes: &[u8], i: usize) -> Result<u32, HeaderError> {
    bytes
        .get(i * 4..i * 4 + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(HeaderError::Short)
}

impl Header {
    /// Bytes of the fixed part: magic, block count, truncation length.
    pub const FIXED: usize = 12;

    /// The block count from the fixed part (checked against the segment
    /// size), so a reader knows how much more header to read.
    pub fn block_count(fixed: &[u8]) -> Result<u32, HeaderError> {
        let word = |i| word(fixed, i);
        let magic = word(0)?;
        if magic != MAGIC {
            return Err(HeaderError::Magic(magic));
        }
        let n = word(1)?;
        if n > RELSEG_BLOCKS {
            return Err(HeaderError::TooLarge {
                what: "block count",
                value: n,
            });
        }
        Ok(n)
    }

    /// Parses the whole header: [`Header::FIXED`] bytes, then 4 per block.
    /// Little-endian: the byte order of the x86-64 and arm64 servers whose
    /// binaries pitr restores with.
    pub fn parse(bytes: &[u8]) -> Result<Header, HeaderError> {
        let n = Header::block_count(bytes)? as usize;
        let word = |i| word(bytes, i);
        let truncation_blocks = word(2)?;
        if truncation_blocks > RELSEG_BLOCKS {
            return Err(HeaderError::TooLarge {
                what: "truncation block length",
                value: truncation_blocks,
            });
        }
        let mut blocks = Vec::with_capacity(n);
        for i in 0..n {
            let b = word(3 + i)?;
            if b >= RELSEG_BLOCKS || blocks.last().is_some_and(|&last| b <= last) {
                return Err(HeaderError::Order(i));
            }
            blocks.push(b);
        }
        Ok(Header {
            blocks,
            truncation_blocks,
        })
    }

    /// Bytes before the first block: the header rounded up to whole pages
    /// when the file holds any block.
    pub fn data_offset(&self) -> u64 {
        let raw = (Header::FIXED + 4 * self.blocks.len()) as u64;
        if self.blocks.is_empty() {
            raw
        } else {
            raw.div_ceil(BLOCK) * BLOCK
        }
    }

    /// The length, in blocks, of the file reconstructed from this one: the
    /// truncation length, or further to hold every block it carries.
    pub fn reconstructed_blocks(&self) -> u32 {
        self.blocks.last().map_or(self.truncation_blocks, |&b| {
            self.truncation_blocks.max(b + 1)
        })
    }
}

/// When `path` (in `archive`) is a file the server sent incrementally, its
/// directory and the name of the file it stands for: only under `base/`,
/// `global` and tablespaces (`pg_combinebackup` treats an `INCREMENTAL.*`
/// name anywhere else as an ordinary file).
pub fn split_incremental<'a>(archive: &str, path: &'a str) -> Option<(&'a str, &'a str)> {
    let (dir, name) = path.rsplit_once('/')?;
    let bare = name.strip_prefix(PREFIX)?;
    let in_relation_dir = archive != "base"
        || dir.starts_with("base/")
        || dir == "global"
        || dir.starts_with("pg_tblspc/");
    (in_relation_dir && !bare.is_empty()).then_some((dir, bare))
}

/// The incremental backups a backup sits on: `chain` from the full backup
/// to `newest`, oldest first. Fails naming the first ancestor the catalog
/// lacks.
pub fn chain(all: &[BackupRecord], newest: &BackupRecord) -> Result<Vec<BackupRecord>, String> {
    let mut out = vec![newest.clone()];
    while let Some(parent) = out.last().and_then(|b| b.parent.clone()) {
        if out.len() > all.len() {
            return Err(format!("backup {} has a cycle of parents", newest.id));
        }
        let Some(p) = all.iter().find(|b| b.id == parent) else {
            return Err(format!(
                "backup {} is incremental on {parent}, which is not in the catalog",
                out.last().map_or("", |b| b.id.as_str())
            ));
        };
        out.push(p.clone());
    }
    out.reverse();
    Ok(out)
}

/// The ids of the chain backup `id` of `db` restores from, the full
/// backup first and `id` last (just `id` for a full backup).
pub fn chain_ids(repo: &Repository, db: &str, id: &str) -> Result<Vec<String>, BackupError> {
    let all: Vec<BackupRecord> = backups(repo, db)?.into_iter().map(|b| b.record).collect();
    let newest = all
        .iter()
        .find(|b| b.id == id)
        .ok_or_else(|| BackupError::NotFound {
            db: db.to_owned(),
            id: id.to_owned(),
        })?;
    chain(&all, newest)
        .map(|c| c.into_iter().map(|b| b.id).collect())
        .map_err(|what| BackupError::BadRecord {
            item: super::record_name(db, id),
            what,
        })
}

/// The server's major from `server_version` (`17.11`, `18.1 (Debian …)`).
pub fn major_of(server_version: &str) -> u32 {
    server_version
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

/// What a new backup of `db` is built on, or why it is a full one.
pub enum Basis {
    /// Incremental on this backup; `depth` incrementals in the chain once
    /// the new one is taken.
    On {
        /// The parent.
        parent: Box<BackupRecord>,
        /// Incremental backups in the chain, the new one included.
        depth: u32,
    },
    /// A full backup, and why.
    Full(String),
}

/// Chooses the parent of a new backup: the newest backup of the same
/// system and major whose chain is whole, unless the chain already holds
/// `max_chain` incrementals.
pub fn choose(
    repo: &Repository,
    db: &str,
    system_id: &str,
    major: u32,
    max_chain: u32,
) -> Result<Basis, BackupError> {
    if major < FIRST_MAJOR {
        return Ok(Basis::Full(format!(
            "PostgreSQL {major} has no incremental backups (17 and later have)"
        )));
    }
    if max_chain == 0 {
        return Ok(Basis::Full(
            "incremental_max_chain = 0 takes only full backups".into(),
        ));
    }
    let all: Vec<BackupRecord> = backups(repo, db)?.into_iter().map(|b| b.record).collect();
    let Some(newest) = all
        .iter()
        .filter(|b| b.system_id == system_id)
        .max_by_key(|b| b.started)
    else {
        return Ok(Basis::Full(
            "the repository holds no earlier backup of this server to build on".into(),
        ));
    };
    if major_of(&newest.server_version) != major {
        return Ok(Basis::Full(format!(
            "the newest backup, {}, is of PostgreSQL {}, the server now runs {major}",
            newest.id,
            major_of(&newest.server_version)
        )));
    }
    if newest.start_timeline != newest.end_timeline {
        return Ok(Basis::Full(format!(
            "the newest backup, {}, spans a timeline switch",
            newest.id
        )));
    }
    let chain = match chain(&all, newest) {
        Ok(c) => c,
        Err(why) => return Ok(Basis::Full(why)),
    };
    let depth = chain.len() as u32;
    if depth > max_chain {
        return Ok(Basis::Full(format!(
            "the chain of {} already holds {} incremental backups (incremental_max_chain = {max_chain})",
            newest.id,
            depth - 1
        )));
    }
    Ok(Basis::On {
        parent: Box::new(newest.clone()),
        depth,
    })
}

/// The parent's `backup_manifest` as the server needs it for
/// `UPLOAD_MANIFEST`, rebuilt from the catalog (see the module doc):
/// version 2, the system identifier, every file's path, size and time, the
/// WAL range, and the manifest checksum.
pub fn parent_manifest(
    repo: &Repository,
    db: &str,
    parent: &BackupRecord,
) -> Result<Vec<u8>, BackupError> {
    let items = repo.catalog().items(&files_prefix(db, &parent.id))?;
    let mut text = format!(
        "{{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": {},\n\"Files\": [",
        parent.system_id
    );
    let mut first = true;
    for item in items.iter().filter(|i| i.kind == KIND_FILE) {
        let bad = |what: &str| BackupError::BadRecord {
            item: item.name.clone(),
            what: what.to_owned(),
        };
        let attr = |k: &str| item.attrs.get(k).ok_or_else(|| bad(&format!("no {k}")));
        let archive = attr("archive")?.as_str().ok_or_else(|| bad("archive"))?;
        let path = attr("path")?.as_str().ok_or_else(|| bad("path"))?;
        let size = attr("size")?.as_u64().ok_or_else(|| bad("size"))?;
        let mtime = attr("mtime")?.as_i64().unwrap_or(0);
        let path = if archive == "base" {
            path.to_owned()
        } else {
            format!("pg_tblspc/{archive}/{path}")
        };
        let modified = Timestamp::from_second(mtime)
            .unwrap_or(Timestamp::UNIX_EPOCH)
            .strftime("%Y-%m-%d %H:%M:%S GMT");
        text.push_str(if first { "\n" } else { ",\n" });
        first = false;
        text.push_str(&format!(
            "{{ \"Path\": {}, \"Size\": {size}, \"Last-Modified\": \"{modified}\" }}",
            serde_json::Value::String(path)
        ));
    }
    text.push_str(&format!(
        "\n],\n\"WAL-Ranges\": [\n{{ \"Timeline\": {}, \"Start-LSN\": \"{}\", \"End-LSN\": \"{}\" }}\n],\n",
        parent.start_timeline, parent.start_lsn, parent.end_lsn
    ));
    let checksum = hex::encode(Sha256::digest(text.as_bytes()));
    text.push_str(&format!("\"Manifest-Checksum\": \"{checksum}\"}}\n"));
    Ok(text.into_bytes())
}

/// How to turn WAL summaries on, for the log and `pitr check`.
pub const SUMMARIES_HINT: &str = "turn WAL summaries on so that later base backups read only the blocks that changed: \
     ALTER SYSTEM SET summarize_wal = on; SELECT pg_reload_conf(); (no restart needed; the next \
     backup after a full one is then incremental)";

/// What `pitr check` says of incremental backups for a server: whether
/// they are on, and when they could be but `summarize_wal` is off, how to
/// turn it on.
pub async fn describe(
    client: &mut crate::pg::ReplicationClient,
    max_chain: u32,
) -> Result<String, crate::pg::ConnError> {
    let major = client.server_major();
    if major < FIRST_MAJOR {
        return Ok(format!(
            "base backups are full (PostgreSQL {major} has no incremental ones)"
        ));
    }
    if max_chain == 0 {
        return Ok("base backups are full (incremental_max_chain = 0)".into());
    }
    Ok(match client.show("summarize_wal").await?.as_str() {
        "on" => format!(
            "base backups are incremental (summarize_wal = on; a full one after {max_chain})"
        ),
        other => format!("base backups are FULL: summarize_wal = {other}; {SUMMARIES_HINT}"),
    })
}

/// Before `BASE_BACKUP`: decides whether this backup is incremental and, if
/// so, uploads the parent's manifest on `client` (`UPLOAD_MANIFEST`).
/// Returns the parent, or `None` for a full backup after logging why.
pub async fn prepare(
    repo: &Repository,
    db: &str,
    client: &mut crate::pg::ReplicationClient,
    major: u32,
    system_id: &str,
    max_chain: u32,
) -> Result<Option<BackupRecord>, BackupError> {
    if major >= FIRST_MAJOR && max_chain > 0 {
        let summaries = client.show("summarize_wal").await?;
        if summaries != "on" {
            tracing::warn!(
                database = %db,
                "summarize_wal is {summaries} on the server, so this base backup is a full one: {SUMMARIES_HINT}"
            );
            return Ok(None);
        }
    }
    let (parent, depth) = match choose(repo, db, system_id, major, max_chain)? {
        Basis::On { parent, depth } => (*parent, depth),
        Basis::Full(why) => {
            if major >= FIRST_MAJOR && max_chain > 0 {
                tracing::info!(database = %db, "this base backup is a full one: {why}");
            }
            return Ok(None);
        }
    };
    let manifest = parent_manifest(repo, db, &parent)?;
    match client
        .simple_query_copy_in("UPLOAD_MANIFEST", &manifest)
        .await
    {
        Ok(()) => {}
        Err(e) if e.sqlstate().is_some() && !e.is_transient() => {
            tracing::warn!(
                database = %db, parent = %parent.id, error = %e,
                "the server refused the manifest of the parent backup; this base backup is a full one"
            );
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(
        database = %db, parent = %parent.id, depth,
        "this base backup is incremental on {}", parent.id
    );
    Ok(Some(parent))
}

/// Whether `e`, from an incremental `BASE_BACKUP`, means the server cannot
/// take it incrementally (SQLSTATE 55000: WAL summaries missing for the
/// parent's range, a parent from another history): a full backup can.
pub fn refused(e: &crate::pg::ConnError) -> bool {
    e.sqlstate() == Some("55000")
}

/// Removes the lines that make a `backup_label` an incremental one
/// (`INCREMENTAL FROM LSN`, `INCREMENTAL FROM TLI`): PostgreSQL refuses to
/// start from such a label, and `pg_combinebackup` drops them too.
pub fn combined_label(label: &[u8]) -> Vec<u8> {
    label
        .split_inclusive(|&b| b == b'\n')
        .filter(|line| {
            !line.starts_with(b"INCREMENTAL FROM LSN: ")
                && !line.starts_with(b"INCREMENTAL FROM TLI: ")
        })
        .flatten()
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(n: u32, trunc: u32, blocks: &[u32]) -> Vec<u8> {
        let mut b = Vec::new();
        for w in [MAGIC, n, trunc].iter().chain(blocks) {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b
    }

    #[test]
    fn headers_parse_and_are_checked() {
        let h = Header::parse(&header(2, 10, &[3, 12])).expect("parses");
        assert_eq!(h.blocks, vec![3, 12]);
        assert_eq!(h.truncation_blocks, 10);
        assert_eq!(h.data_offset(), 8192);
        assert_eq!(h.reconstructed_blocks(), 13);
        let empty = Header::parse(&header(0, 7, &[])).expect("parses");
        assert_eq!(empty.data_offset(), 12);
        assert_eq!(empty.reconstructed_blocks(), 7);
        // 2046 blocks fill a page with the fixed part exactly.
        let many: Vec<u32> = (0..2045).collect();
        let h = Header::parse(&header(2045, 0, &many)).expect("parses");
        assert_eq!(h.data_offset(), 8192);
        let many: Vec<u32> = (0..2046).collect();
        let h = Header::parse(&header(2046, 0, &many)).expect("parses");
        assert_eq!(h.data_offset(), 16384);

        let mut bad = header(1, 1, &[0]);
        bad[0] ^= 1;
        assert!(matches!(Header::parse(&bad), Err(HeaderError::Magic(_))));
        assert_eq!(
            Header::parse(&header(2, 10, &[5, 5])),
            Err(HeaderError::Order(1))
        );
        assert_eq!(
            Header::parse(&header(1, 10, &[RELSEG_BLOCKS])),
            Err(HeaderError::Order(0))
        );
        assert!(matches!(
            Header::parse(&header(RELSEG_BLOCKS + 1, 0, &[])),
            Err(HeaderError::TooLarge { .. })
        ));
        assert_eq!(Header::parse(&header(3, 1, &[1])), Err(HeaderError::Short));
    }

    #[test]
    fn incremental_names() {
        assert_eq!(
            split_incremental("base", "base/5/INCREMENTAL.16384.1"),
            Some(("base/5", "16384.1"))
        );
        assert_eq!(
            split_incremental("base", "global/INCREMENTAL.1262"),
            Some(("global", "1262"))
        );
        assert_eq!(
            split_incremental("16390", "PG_17_1/5/INCREMENTAL.16391"),
            Some(("PG_17_1/5", "16391"))
        );
        assert_eq!(split_incremental("base", "INCREMENTAL.conf"), None);
        assert_eq!(split_incremental("base", "pg_xact/INCREMENTAL.0000"), None);
        assert_eq!(split_incremental("base", "base/5/16384"), None);
    }

    #[test]
    fn labels_lose_their_incremental_lines() {
        let label = b"START WAL LOCATION: 0/6000028 (file 000000010000000000000006)\n\
CHECKPOINT LOCATION: 0/6000080\nINCREMENTAL FROM LSN: 0/4000028\n\
INCREMENTAL FROM TLI: 1\nSTART TIMELINE: 1\n";
        assert_eq!(
            combined_label(label),
            b"START WAL LOCATION: 0/6000028 (file 000000010000000000000006)\n\
CHECKPOINT LOCATION: 0/6000080\nSTART TIMELINE: 1\n"
                .to_vec()
        );
    }

    #[test]
    fn majors() {
        assert_eq!(major_of("17.11"), 17);
        assert_eq!(major_of("18.1 (Debian 18.1-1)"), 18);
        assert_eq!(major_of(""), 0);
    }
}
