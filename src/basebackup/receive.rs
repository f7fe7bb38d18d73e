//! Receiving a base backup: the events of `BASE_BACKUP`'s answer, its tar
//! streams parsed on the fly, each file handed to the store task as a job
//! whose bytes follow through a bounded channel.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::{mpsc, watch};

use super::BackupError;
use super::files_prefix;
use super::pgmanifest::Received;
use super::record::{ListingEntry, TablespaceInfo};
use super::take::BackupProgress;
use super::tar::{TarEvent, TarParser};
use crate::pg::{Lsn, ManifestChecksums, ReplicationClient, conn::CopyOutEvent};
use crate::repo::Chunking;

/// CopyData messages queued towards the store task per file.
const FILE_QUEUE: usize = 16;

/// One file on its way to the store task: the item, and its bytes through
/// a channel (an empty `Bytes` marks the end).
pub(super) struct FileJob {
    pub(super) name: String,
    pub(super) attrs: serde_json::Value,
    pub(super) chunking: Chunking,
    pub(super) rx: mpsc::Receiver<Bytes>,
}

/// The file being received.
pub(super) struct Current {
    path: String,
    tx: mpsc::Sender<Bytes>,
    sum: Sum,
    size: u64,
}

/// The checksum of a file being received, in the algorithm the server's
/// manifest uses (only that one is computed: SHA-256 costs ~10x CRC-32C).
enum Sum {
    Crc32c(u32),
    Sha256(Box<Sha256>),
}

impl Sum {
    fn new(algorithm: ManifestChecksums) -> Sum {
        match algorithm {
            ManifestChecksums::Crc32c => Sum::Crc32c(0),
            ManifestChecksums::Sha256 => Sum::Sha256(Box::default()),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Sum::Crc32c(crc) => *crc = crc32c::crc32c_append(*crc, bytes),
            Sum::Sha256(sha) => sha.update(bytes),
        }
    }

    /// As the manifest writes it: lowercase hex of the digest bytes; a
    /// CRC-32C as its four bytes in memory order (little-endian on every
    /// platform pitr runs on), as PostgreSQL's `pg_checksum_final` does.
    fn finish(self) -> String {
        match self {
            Sum::Crc32c(crc) => hex::encode(crc.to_le_bytes()),
            Sum::Sha256(sha) => hex::encode(sha.finalize()),
        }
    }
}

/// What the command's answer held besides the files.
pub(super) struct Streamed {
    pub(super) start: (Lsn, u32),
    pub(super) end: (Lsn, u32),
    pub(super) tablespaces: Vec<TablespaceInfo>,
    pub(super) manifest: Vec<u8>,
}

/// The receiving side of one backup: what arrived so far.
pub(super) struct Run<'a> {
    pub(super) db: String,
    pub(super) id: String,
    pub(super) jobs: Option<mpsc::Sender<FileJob>>,
    pub(super) current: Option<Current>,
    pub(super) received: BTreeMap<String, Received>,
    pub(super) listing: Vec<ListingEntry>,
    pub(super) files: u64,
    pub(super) bytes: u64,
    pub(super) progress: &'a watch::Sender<BackupProgress>,
    /// The checksum algorithm the command asked the manifest for.
    pub(super) checksums: ManifestChecksums,
}

/// The store task went away: its error explains why.
fn store_gone() -> BackupError {
    BackupError::Protocol(STORE_GONE.into())
}

/// The message of the error a failed send to the store task gives.
pub(super) const STORE_GONE: &str = "the store task stopped";

impl Run<'_> {
    /// Sends `sql` and receives its whole answer. From PostgreSQL 15 on the
    /// archives and the manifest come in one COPY, each CopyData tagged
    /// (`n` new archive, `d` data, `p` progress, `m` manifest); before
    /// (`legacy`), each archive is a COPY of its own, untagged, in the order
    /// of the tablespace rows, and the manifest is one more COPY after them.
    pub(super) async fn stream(
        &mut self,
        client: &mut ReplicationClient,
        sql: &str,
        legacy: bool,
    ) -> Result<Streamed, BackupError> {
        let mut events = client.simple_query_copy_out(sql).await?;
        let (mut result_sets, mut copy_done) = (0, false);
        let (mut start, mut end) = (None, None);
        let mut tablespaces = Vec::new();
        // The archive of each tablespace row, in order (legacy framing).
        let mut archives: Vec<String> = Vec::new();
        let mut copies = 0usize;
        let mut legacy_done = 0u64;
        let mut total_kb = 0u64;
        let mut archive: Option<(String, TarParser)> = None;
        let mut manifest: Option<Vec<u8>> = None;
        let bad = |what: String| BackupError::Protocol(what);
        while let Some(event) = events.next().await? {
            match event {
                CopyOutEvent::RowDescription(_) => result_sets += 1,
                CopyOutEvent::Row(row) if copy_done => end = Some(lsn_tli(&row)?),
                CopyOutEvent::Row(row) if result_sets == 1 => start = Some(lsn_tli(&row)?),
                CopyOutEvent::Row(row) => {
                    total_kb += row.get_str(2).and_then(|s| s.parse().ok()).unwrap_or(0);
                    match row.get_str(0) {
                        Some(oid) => {
                            let oid = oid
                                .parse::<u32>()
                                .map_err(|_| bad(format!("tablespace oid {oid:?}")))?;
                            let location = row.get_str(1).unwrap_or_default().to_owned();
                            archives.push(oid.to_string());
                            tablespaces.push(TablespaceInfo { oid, location });
                        }
                        None => archives.push("base".to_owned()),
                    }
                }
                CopyOutEvent::CopyStart => {
                    if copies == 0 {
                        self.progress
                            .send_modify(|p| p.total = Some(total_kb * 1024));
                    }
                    if legacy {
                        match archives.get(copies) {
                            Some(label) => archive = Some((label.clone(), TarParser::new())),
                            None if copies == archives.len() => manifest = Some(Vec::new()),
                            None => return Err(bad("more COPYs than archives".into())),
                        }
                    }
                    copies += 1;
                }
                CopyOutEvent::CopyDone => {
                    copy_done = true;
                    finish_archive(archive.take())?;
                }
                CopyOutEvent::CommandComplete(_) => {}
                CopyOutEvent::CopyData(data) if legacy => {
                    // No progress messages before 15: count what arrived.
                    legacy_done += data.len() as u64;
                    self.bytes_in(&mut archive, &mut manifest, data).await?;
                    self.progress.send_modify(|p| p.done = legacy_done);
                }
                CopyOutEvent::CopyData(mut data) => {
                    if data.is_empty() {
                        return Err(bad("an empty CopyData".into()));
                    }
                    let tag = data.get_u8();
                    match tag {
                        b'n' => {
                            finish_archive(archive.take())?;
                            let name = cstr(&mut data).ok_or_else(|| bad("archive name".into()))?;
                            let label = match name.strip_suffix(".tar") {
                                Some("base") => "base".to_owned(),
                                Some(oid) if oid.parse::<u32>().is_ok() => oid.to_owned(),
                                _ => return Err(bad(format!("unexpected archive {name:?}"))),
                            };
                            archive = Some((label, TarParser::new()));
                        }
                        b'd' => self.bytes_in(&mut archive, &mut manifest, data).await?,
                        b'p' if data.len() >= 8 => {
                            let done = data.get_i64().max(0) as u64;
                            self.progress.send_modify(|p| p.done = done);
                        }
                        b'm' => {
                            finish_archive(archive.take())?;
                            manifest = Some(Vec::new());
                        }
                        other => {
                            return Err(bad(format!("CopyData of type {:?}", other as char)));
                        }
                    }
                }
            }
        }
        Ok(Streamed {
            start: start.ok_or_else(|| bad("no start position".into()))?,
            end: end.ok_or_else(|| bad("no end position".into()))?,
            tablespaces,
            manifest: manifest.ok_or_else(|| bad("no backup_manifest".into()))?,
        })
    }

    /// Archive or manifest bytes: to the manifest once it started, else
    /// through the current archive's tar parser.
    async fn bytes_in(
        &mut self,
        archive: &mut Option<(String, TarParser)>,
        manifest: &mut Option<Vec<u8>>,
        data: Bytes,
    ) -> Result<(), BackupError> {
        match (manifest, archive) {
            (Some(m), _) => m.extend_from_slice(&data),
            (None, Some((label, parser))) => {
                let mut out = Vec::new();
                parser
                    .feed(data, &mut out)
                    .map_err(|source| BackupError::Tar {
                        archive: label.clone(),
                        source,
                    })?;
                let label = label.clone();
                for e in out {
                    self.on_tar(&label, e).await?;
                }
            }
            (None, None) => return Err(BackupError::Protocol("data before an archive".into())),
        }
        Ok(())
    }

    async fn on_tar(&mut self, archive: &str, event: TarEvent) -> Result<(), BackupError> {
        let entry = |e: &super::tar::Entry, kind: &str| ListingEntry {
            archive: archive.to_owned(),
            path: e.path.clone(),
            kind: kind.to_owned(),
            mode: e.mode,
            mtime: e.mtime,
            size: e.size,
            link: e.link.clone(),
        };
        match event {
            TarEvent::File(e) => {
                self.listing.push(entry(&e, "file"));
                let (tx, rx) = mpsc::channel(FILE_QUEUE);
                let job = FileJob {
                    name: format!("{}{archive}/{}", files_prefix(&self.db, &self.id), e.path),
                    attrs: serde_json::json!({
                        "backup": self.id, "archive": archive, "path": e.path,
                        "mode": e.mode, "mtime": e.mtime, "size": e.size,
                    }),
                    chunking: if is_relation(archive, &e.path) {
                        Chunking::PAGES
                    } else {
                        Chunking::Cdc
                    },
                    rx,
                };
                let jobs = self.jobs.as_ref().ok_or_else(store_gone)?;
                jobs.send(job).await.map_err(|_| store_gone())?;
                let path = if archive == "base" {
                    e.path
                } else {
                    format!("pg_tblspc/{archive}/{}", e.path)
                };
                self.current = Some(Current {
                    path,
                    tx,
                    sum: Sum::new(self.checksums),
                    size: 0,
                });
            }
            TarEvent::Data(d) => {
                let c = self.current.as_mut().ok_or_else(store_gone)?;
                c.sum.update(&d);
                c.size += d.len() as u64;
                c.tx.send(d).await.map_err(|_| store_gone())?;
            }
            TarEvent::FileEnd => {
                let c = self.current.take().ok_or_else(store_gone)?;
                c.tx.send(Bytes::new()).await.map_err(|_| store_gone())?;
                self.files += 1;
                self.bytes += c.size;
                let checksum = c.sum.finish();
                self.received.insert(
                    c.path,
                    Received {
                        size: c.size,
                        algorithm: self.checksums.as_manifest(),
                        checksum,
                    },
                );
                let files = self.files;
                self.progress.send_modify(|p| p.files = files);
            }
            TarEvent::Dir(e) => self.listing.push(entry(&e, "dir")),
            TarEvent::Symlink(e) => self.listing.push(entry(&e, "symlink")),
        }
        Ok(())
    }
}

fn finish_archive(archive: Option<(String, TarParser)>) -> Result<(), BackupError> {
    if let Some((label, parser)) = archive {
        parser.finish().map_err(|source| BackupError::Tar {
            archive: label,
            source,
        })?;
    }
    Ok(())
}

fn lsn_tli(row: &crate::pg::conn::Row) -> Result<(Lsn, u32), BackupError> {
    let lsn = row.get_str(0).and_then(|s| s.parse().ok());
    let tli = row.get_str(1).and_then(|s| s.parse().ok());
    match (lsn, tli) {
        (Some(l), Some(t)) => Ok((l, t)),
        _ => Err(BackupError::Protocol(format!(
            "a position row that is not (LSN, timeline): {row:?}"
        ))),
    }
}

fn cstr(b: &mut Bytes) -> Option<String> {
    let end = b.iter().position(|&c| c == 0)?;
    let s = String::from_utf8_lossy(&b[..end]).into_owned();
    b.advance(end + 1);
    Some(s)
}

/// Whether a file is a relation segment (`base/<db>/<relfilenode>[_fsm|_vm|
/// _init][.N]`, `global/...`, a tablespace's `<version>/<db>/...`): arrays
/// of 8 KiB pages, cut in page-aligned fixed chunks.
pub(super) fn is_relation(archive: &str, path: &str) -> bool {
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let parts: Vec<&str> = path.split('/').collect();
    let (dirs, file) = match parts.split_last() {
        Some((f, d)) => (d, *f),
        None => return false,
    };
    let dir_ok = match (archive, dirs) {
        ("base", ["base", db]) => numeric(db),
        ("base", ["global"]) => true,
        ("base", _) => false,
        (_, [_version, db]) => numeric(db),
        _ => false,
    };
    let (stem, seg) = match file.split_once('.') {
        Some((s, n)) => (s, Some(n)),
        None => (file, None),
    };
    let stem = ["_fsm", "_vm", "_init"]
        .iter()
        .find_map(|f| stem.strip_suffix(f))
        .unwrap_or(stem);
    dir_ok && numeric(stem) && seg.is_none_or(numeric)
}

/// The bytes of one file as an `AsyncRead` over the channel the connection
/// task feeds; a channel closed before the end marker is an error, so a cut
/// stream never stores as a complete file.
pub(super) struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    cur: Bytes,
    done: bool,
}

impl ChannelReader {
    /// A reader of the bytes sent through `rx`.
    pub(super) fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        ChannelReader {
            rx,
            cur: Bytes::new(),
            done: false,
        }
    }
}

impl AsyncRead for ChannelReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            if !self.cur.is_empty() {
                let n = self.cur.len().min(buf.remaining());
                buf.put_slice(&self.cur[..n]);
                self.cur.advance(n);
                return Poll::Ready(Ok(()));
            }
            if self.done {
                return Poll::Ready(Ok(()));
            }
            match ready!(self.rx.poll_recv(cx)) {
                Some(b) if b.is_empty() => self.done = true,
                Some(b) => self.cur = b,
                None => {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the base backup stream ended inside this file",
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_relation;

    #[test]
    fn relation_files() {
        for p in [
            "base/1/1259",
            "base/5/16384_fsm",
            "base/5/16384.1",
            "global/1262_vm",
        ] {
            assert!(is_relation("base", p), "{p}");
        }
        for p in [
            "PG_VERSION",
            "base/1/PG_VERSION",
            "global/pg_control",
            "pg_xact/0000",
        ] {
            assert!(!is_relation("base", p), "{p}");
        }
        assert!(is_relation("16385", "PG_15_202209061/5/16386.2"));
        assert!(!is_relation("16385", "PG_15_202209061/5/pg_internal.init"));
    }
}
