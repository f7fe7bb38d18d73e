//! Taking a base backup: `BASE_BACKUP` on a replication connection, its tar
//! stream parsed on the fly, each file streamed into its own item.
//!
//! The connection task parses; a store task owns the repository writer and
//! stores one file at a time, fed through a small bounded channel, so memory
//! stays a few CopyData messages plus the writer's packs whatever the size
//! of a file or of the database.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use jiff::Timestamp;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::pgmanifest::{self, Received};
use super::record::{BackupRecord, ListingEntry, TablespaceInfo};
use super::tar::{TarEvent, TarParser};
use super::{BackupError, KIND_BACKUP, KIND_FILE, KIND_META, files_prefix, record_name};
use crate::repo::{Chunking, RepoError, Repository, Writer};
use crate::wal::conn::CopyOutEvent;
use crate::wal::{ConnInfo, Lsn, ReplicationClient};

/// Commit the files stored so far after this many bytes, so a long backup
/// does not hold every manifest until its end.
const COMMIT_EVERY: u64 = 1 << 30;
/// CopyData messages queued towards the store task per file.
const FILE_QUEUE: usize = 16;

/// How the server's backup checkpoint is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoint {
    /// At once, at full I/O speed (`pitr backup`).
    Fast,
    /// Spread over `checkpoint_completion_target` (scheduled backups).
    Spread,
}

/// What to back up and how.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// The `[[postgres]]` entry's name.
    pub database: String,
    /// How to reach the server (a replication connection is opened).
    pub conninfo: ConnInfo,
    /// The label the server records in `backup_label`.
    pub label: String,
    /// The checkpoint mode.
    pub checkpoint: Checkpoint,
    /// The server's sending rate limit, kB/s (32 to 1048576), if any.
    pub max_rate_kb: Option<u32>,
}

/// How far a backup is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackupProgress {
    /// Bytes the server sent so far.
    pub done: u64,
    /// The server's estimate of the total, once known.
    pub total: Option<u64>,
    /// Files stored so far.
    pub files: u64,
}

/// One file on its way to the store task: the item, and its bytes through
/// a channel (an empty `Bytes` marks the end).
struct FileJob {
    name: String,
    attrs: serde_json::Value,
    chunking: Chunking,
    rx: mpsc::Receiver<Bytes>,
}

/// The file being received.
struct Current {
    path: String,
    tx: mpsc::Sender<Bytes>,
    sha: Sha256,
    size: u64,
}

type StoreTask = JoinHandle<Result<(Writer, u64), RepoError>>;

/// Takes one base backup of `opts.database` and records it (not yet
/// restorable: see [`super::wait_restorable`]). On any error nothing is
/// recorded as a backup (files committed on the way are unreferenced).
pub async fn take(
    repo: &Repository,
    opts: &BackupOptions,
    progress: &watch::Sender<BackupProgress>,
) -> Result<BackupRecord, BackupError> {
    let mut client = ReplicationClient::connect(&opts.conninfo).await?;
    let version = client
        .server_param("server_version")
        .unwrap_or("")
        .to_owned();
    let major: u32 = version
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 15 {
        return Err(BackupError::ServerTooOld { version });
    }
    let system = client.identify_system().await?;
    let id = new_id(repo, &opts.database).await?;
    let started = Timestamp::now();
    let sql = format!(
        "BASE_BACKUP (LABEL '{}', PROGRESS, CHECKPOINT '{}', WAIT false, MANIFEST 'yes', \
         MANIFEST_CHECKSUMS 'SHA256'{})",
        opts.label.replace('\'', "''"),
        match opts.checkpoint {
            Checkpoint::Fast => "fast",
            Checkpoint::Spread => "spread",
        },
        opts.max_rate_kb
            .map(|r| format!(", MAX_RATE {r}"))
            .unwrap_or_default()
    );
    let (jobs_tx, mut jobs_rx) = mpsc::channel::<FileJob>(1);
    let writer = repo.writer();
    let store: StoreTask = tokio::spawn(async move {
        let mut w = writer;
        let mut since = 0u64;
        let mut stored = 0u64;
        while let Some(job) = jobs_rx.recv().await {
            let reader = ChannelReader {
                rx: job.rx,
                cur: Bytes::new(),
                done: false,
            };
            let m = w
                .put(&job.name, KIND_FILE, job.attrs, job.chunking, reader)
                .await?;
            since += m.size;
            if since >= COMMIT_EVERY {
                stored += w.commit().await?.map_or(0, |c| c.pack_bytes);
                since = 0;
            }
        }
        stored += w.commit().await?.map_or(0, |c| c.pack_bytes);
        Ok((w, stored))
    });
    let mut run = Run {
        db: opts.database.clone(),
        id: id.clone(),
        jobs: Some(jobs_tx),
        current: None,
        received: BTreeMap::new(),
        listing: Vec::new(),
        files: 0,
        bytes: 0,
        progress,
    };
    let streamed = run.stream(&mut client, &sql).await;
    let streamed = match streamed {
        Ok(s) => s,
        Err(e) => {
            // The store task's own error explains a send that failed.
            drop(run.jobs.take());
            drop(run.current.take());
            // Without its senders the store task ends at once (a file cut
            // short is an input error, never stored as complete).
            let stored = tokio::time::timeout(std::time::Duration::from_secs(30), store).await;
            if matches!(&e, BackupError::Protocol(m) if m == STORE_GONE)
                && let Ok(Ok(Err(stored))) = stored
            {
                return Err(stored.into());
            }
            return Err(e);
        }
    };
    drop(run.jobs.take());
    let (mut w, stored_bytes) = join_store(store).await?;
    let _ = client.close().await;

    pgmanifest::check(&streamed.manifest, &run.received).map_err(|what| {
        BackupError::ManifestMismatch {
            id: id.clone(),
            what,
        }
    })?;
    let prefix = files_prefix(&opts.database, &id);
    let manifest_item = format!("{prefix}backup_manifest");
    let listing_item = format!("{prefix}listing");
    let attrs = serde_json::json!({ "backup": id });
    w.put(
        &manifest_item,
        KIND_META,
        attrs.clone(),
        Chunking::Cdc,
        &streamed.manifest[..],
    )
    .await?;
    let listing = serde_json::to_vec(&run.listing).expect("a listing serializes");
    w.put(&listing_item, KIND_META, attrs, Chunking::Cdc, &listing[..])
        .await?;
    let record = BackupRecord {
        id: id.clone(),
        label: opts.label.clone(),
        database: opts.database.clone(),
        system_id: system.system_id.to_string(),
        server_version: version,
        start_lsn: streamed.start.0,
        start_timeline: streamed.start.1,
        end_lsn: streamed.end.0,
        end_timeline: streamed.end.1,
        started,
        finished: Timestamp::now(),
        tablespaces: streamed.tablespaces,
        files: run.files,
        bytes: run.bytes,
        stored_bytes,
        listing: listing_item,
        manifest: manifest_item,
        restorable: false,
    };
    let attrs = serde_json::to_value(&record).expect("a record serializes");
    w.put(
        &record_name(&opts.database, &id),
        KIND_BACKUP,
        attrs,
        Chunking::Cdc,
        &b""[..],
    )
    .await?;
    w.commit().await?;
    Ok(record)
}

/// A new backup id: the UTC time, unique among this database's backups.
async fn new_id(repo: &Repository, db: &str) -> Result<String, BackupError> {
    loop {
        let id = Timestamp::now().strftime("%Y%m%dT%H%M%SZ").to_string();
        if repo.catalog().latest_item(&record_name(db, &id))?.is_none()
            && repo.catalog().items(&files_prefix(db, &id))?.is_empty()
        {
            return Ok(id);
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

async fn join_store(store: StoreTask) -> Result<(Writer, u64), BackupError> {
    match store.await {
        Ok(r) => Ok(r?),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(BackupError::Protocol(format!("the store task ended: {e}"))),
    }
}

/// What the command's answer held besides the files.
struct Streamed {
    start: (Lsn, u32),
    end: (Lsn, u32),
    tablespaces: Vec<TablespaceInfo>,
    manifest: Vec<u8>,
}

struct Run<'a> {
    db: String,
    id: String,
    jobs: Option<mpsc::Sender<FileJob>>,
    current: Option<Current>,
    received: BTreeMap<String, Received>,
    listing: Vec<ListingEntry>,
    files: u64,
    bytes: u64,
    progress: &'a watch::Sender<BackupProgress>,
}

/// The store task went away: its error explains why.
fn store_gone() -> BackupError {
    BackupError::Protocol(STORE_GONE.into())
}

const STORE_GONE: &str = "the store task stopped";

impl Run<'_> {
    async fn stream(
        &mut self,
        client: &mut ReplicationClient,
        sql: &str,
    ) -> Result<Streamed, BackupError> {
        let mut events = client.simple_query_copy_out(sql).await?;
        let (mut result_sets, mut copy_done) = (0, false);
        let (mut start, mut end) = (None, None);
        let mut tablespaces = Vec::new();
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
                    if let Some(oid) = row.get_str(0) {
                        let oid = oid
                            .parse()
                            .map_err(|_| bad(format!("tablespace oid {oid:?}")))?;
                        let location = row.get_str(1).unwrap_or_default().to_owned();
                        tablespaces.push(TablespaceInfo { oid, location });
                    }
                }
                CopyOutEvent::CopyStart => {
                    self.progress
                        .send_modify(|p| p.total = Some(total_kb * 1024));
                }
                CopyOutEvent::CopyDone => {
                    copy_done = true;
                    finish_archive(archive.take())?;
                }
                CopyOutEvent::CommandComplete(_) => {}
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
                        b'd' => match (&mut manifest, &mut archive) {
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
                            (None, None) => return Err(bad("data before an archive".into())),
                        },
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
                    sha: Sha256::new(),
                    size: 0,
                });
            }
            TarEvent::Data(d) => {
                let c = self.current.as_mut().ok_or_else(store_gone)?;
                c.sha.update(&d);
                c.size += d.len() as u64;
                c.tx.send(d).await.map_err(|_| store_gone())?;
            }
            TarEvent::FileEnd => {
                let c = self.current.take().ok_or_else(store_gone)?;
                c.tx.send(Bytes::new()).await.map_err(|_| store_gone())?;
                self.files += 1;
                self.bytes += c.size;
                let sha256 = hex::encode(c.sha.finalize());
                self.received.insert(
                    c.path,
                    Received {
                        size: c.size,
                        sha256,
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

fn lsn_tli(row: &crate::wal::conn::Row) -> Result<(Lsn, u32), BackupError> {
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
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    cur: Bytes,
    done: bool,
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
