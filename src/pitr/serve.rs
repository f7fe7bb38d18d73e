//! Serving a plan's WAL to PostgreSQL during a recovery pitr runs itself.
//!
//! The recovering server runs as an unprivileged user that must not read the
//! config, the catalog or the identity. So `restore_command` is a small
//! client (`pitr restore-fetch SOCKET %f %p`) that asks this process, over a
//! Unix socket in a directory only that user (and root) can enter, for one
//! file; this process writes it, verified, into the data directory's
//! `pg_wal`, and fetches the next files of the plan ahead of use so replay is
//! not bound by round trips.
//!
//! Answers: `ok`, `absent` (not in the plan: PostgreSQL takes it as the end
//! of the WAL) and `error <why>`, which the client turns into exit status
//! 255 so that PostgreSQL aborts recovery instead of mistaking a failure for
//! the end of the WAL (it treats statuses above 125 as fatal).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::plan::Plan;
use crate::wal::WalStore;

type Fetch = Shared<BoxFuture<'static, Result<PathBuf, Arc<String>>>>;

/// Serves the files of one plan.
pub struct WalServer {
    store: WalStore,
    /// Plan files in replay order.
    files: Vec<String>,
    /// For each plan file that the plan holds as a partial segment, the
    /// bytes of it the plan covers: a newer version stored since the plan
    /// (`pitr run` goes on streaming) is cut back to them, so recovery
    /// replays exactly what was planned and checked, no further.
    plan_len: Vec<Option<u64>>,
    position: HashMap<String, usize>,
    spool: PathBuf,
    pg_wal: PathBuf,
    owner: Option<(u32, u32)>,
    ahead: usize,
    inflight: Mutex<HashMap<usize, Fetch>>,
    /// Files served, for the report and for progress.
    served: Mutex<Vec<String>>,
    /// What could not be served.
    errors: Mutex<Vec<String>>,
    progress: Option<tokio::sync::watch::Sender<super::restore::RestoreProgress>>,
}

impl WalServer {
    /// A server for `plan`'s files, spooling up to `ahead` files in `spool`
    /// (a private directory), writing into `data_dir/pg_wal` only, owned by
    /// `owner` when set, counting files served into `progress`.
    pub fn new(
        store: WalStore,
        plan: &Plan,
        spool: &Path,
        data_dir: &Path,
        owner: Option<(u32, u32)>,
        ahead: usize,
        progress: Option<tokio::sync::watch::Sender<super::restore::RestoreProgress>>,
    ) -> std::io::Result<Arc<WalServer>> {
        let files: Vec<String> = plan.files().map(|f| f.file.clone()).collect();
        let plan_len = plan
            .files()
            .map(|f| f.partial.then(|| f.end.0.saturating_sub(f.start.0)))
            .collect();
        let position = files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.clone(), i))
            .collect();
        let pg_wal = data_dir.join("pg_wal").canonicalize()?;
        Ok(Arc::new(WalServer {
            store,
            files,
            plan_len,
            position,
            spool: spool.to_owned(),
            pg_wal,
            owner,
            ahead: ahead.max(1),
            inflight: Mutex::new(HashMap::new()),
            served: Mutex::new(Vec::new()),
            errors: Mutex::new(Vec::new()),
            progress,
        }))
    }

    /// The files served so far, in order.
    pub fn served(&self) -> Vec<String> {
        self.served.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The first file that could not be served, and why.
    pub fn first_error(&self) -> Option<String> {
        self.errors.lock().ok().and_then(|e| e.first().cloned())
    }

    /// Accepts requests on `listener` until the task is dropped.
    pub async fn run(self: Arc<Self>, listener: UnixListener) {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.handle(conn).await {
                    tracing::warn!("restore-fetch connection: {e}");
                }
            });
        }
    }

    async fn handle(&self, conn: UnixStream) -> std::io::Result<()> {
        let (read, mut write) = conn.into_split();
        let mut line = String::new();
        BufReader::new(read).read_line(&mut line).await?;
        let answer = match line.trim_end().split_once('\t') {
            Some((file, dest)) => self.answer(file, Path::new(dest)).await,
            None => "error malformed request".to_owned(),
        };
        if let Some(e) = answer.strip_prefix("error ")
            && let Ok(mut errors) = self.errors.lock()
        {
            errors.push(e.to_owned());
        }
        write.write_all(answer.as_bytes()).await?;
        write.write_all(b"\n").await
    }

    async fn answer(&self, file: &str, dest: &Path) -> String {
        // Only ever write into this data directory's pg_wal.
        let parent_ok = dest
            .parent()
            .and_then(|p| p.canonicalize().ok())
            .is_some_and(|p| p == self.pg_wal);
        if !parent_ok || dest.file_name().is_none() {
            return format!(
                "error refusing to write {} (outside {})",
                dest.display(),
                self.pg_wal.display()
            );
        }
        let Some(&i) = self.position.get(file) else {
            // At promotion PostgreSQL probes for history files above its
            // timeline to pick an unused number: every stored one must be
            // found, or the restored cluster would reuse a timeline the
            // repository already holds and its WAL would collide.
            if is_history(file) {
                return self.serve_history(file, dest).await;
            }
            tracing::debug!("restore-fetch {file}: not in the plan");
            return "absent".to_owned();
        };
        // Read ahead: the fetches run as tasks of their own, awaited or not.
        for j in i..(i + self.ahead).min(self.files.len()) {
            drop(self.start(j));
        }
        let fetch = self.start(i);
        let spooled = match fetch.await {
            Ok(p) => p,
            Err(e) => {
                self.forget(i);
                return format!("error {}", e.replace('\n', " "));
            }
        };
        let result = self.install(&spooled, dest);
        // Drop what is behind: replay does not go back.
        self.forget(i);
        if let Ok(mut inflight) = self.inflight.lock() {
            inflight.retain(|&j, _| j > i);
        }
        for j in 0..i {
            let _ = std::fs::remove_file(self.spool.join(&self.files[j]));
        }
        match result {
            Ok(()) => {
                if let Ok(mut s) = self.served.lock() {
                    s.push(file.to_owned());
                    if let Some(p) = &self.progress {
                        p.send_modify(|p| p.wal_files = s.len());
                    }
                }
                tracing::info!("served {file} to recovery");
                "ok".to_owned()
            }
            Err(e) => format!("error writing {}: {e}", dest.display()),
        }
    }

    async fn serve_history(&self, file: &str, dest: &Path) -> String {
        let tmp = dest.with_extension("pitr-tmp");
        match self.store.fetch_to(file, &tmp).await {
            Ok(None) => "absent".to_owned(),
            Ok(Some(_)) => {
                let owned = match self.owner {
                    Some((uid, gid)) => std::os::unix::fs::chown(&tmp, Some(uid), Some(gid)),
                    None => Ok(()),
                };
                match owned.and_then(|()| std::fs::rename(&tmp, dest)) {
                    Ok(()) => "ok".to_owned(),
                    Err(e) => format!("error writing {}: {e}", dest.display()),
                }
            }
            Err(e) => format!("error {file}: {e}"),
        }
    }

    /// Moves a spooled file to `dest`: a rename when the spool is on the
    /// same filesystem (it is created beside the data directory for that),
    /// else a copy beside `dest` and a rename, so that PostgreSQL never sees
    /// a file half written.
    fn install(&self, spooled: &Path, dest: &Path) -> std::io::Result<()> {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(spooled, Some(uid), Some(gid))?;
        }
        match std::fs::rename(spooled, dest) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {}
            Err(e) => return Err(e),
        }
        let tmp = dest.with_extension("pitr-tmp");
        std::fs::copy(spooled, &tmp)?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(&tmp, Some(uid), Some(gid))?;
        }
        std::fs::rename(&tmp, dest)?;
        let _ = std::fs::remove_file(spooled);
        Ok(())
    }

    fn forget(&self, i: usize) {
        if let Ok(mut inflight) = self.inflight.lock() {
            inflight.remove(&i);
        }
    }

    /// The fetch of plan file `i` into the spool, started if not yet.
    fn start(&self, i: usize) -> Fetch {
        let mut inflight = match self.inflight.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        inflight
            .entry(i)
            .or_insert_with(|| {
                let store = self.store.clone();
                let file = self.files[i].clone();
                let path = self.spool.join(&file);
                let keep = self.plan_len[i];
                let task = tokio::spawn(async move {
                    match store.fetch_to_spool(&file, &path).await {
                        Ok(Some(_)) => match keep.map(|n| cut_to(&path, n)) {
                            Some(Err(e)) => Err(Arc::new(format!("{file}: {e}"))),
                            _ => Ok(path),
                        },
                        Ok(None) => Err(Arc::new(format!(
                            "{file} is in the plan but no longer in the catalog"
                        ))),
                        Err(e) => Err(Arc::new(format!("{file}: {e}"))),
                    }
                });
                async move {
                    task.await
                        .unwrap_or_else(|e| Err(Arc::new(format!("fetch task failed: {e}"))))
                }
                .boxed()
                .shared()
            })
            .clone()
    }
}

/// Whether `file` is a timeline history file name (`00000002.history`).
fn is_history(file: &str) -> bool {
    file.len() == 16
        && file.ends_with(".history")
        && file[..8].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Zeroes `path` from byte `keep` to its end, keeping its length: a partial
/// segment as the plan saw it, which recovery reads as the end of the WAL.
fn cut_to(path: &Path, keep: u64) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    let len = f.metadata()?.len();
    if keep < len {
        f.set_len(keep)?;
        f.set_len(len)?;
    }
    Ok(())
}

/// The `restore_command` side: asks the server on `socket` for `file`,
/// written to `dest`. Returns the exit status for PostgreSQL: 0 served,
/// 1 not in the plan, 255 anything else (PostgreSQL aborts recovery).
pub fn fetch_client(socket: &Path, file: &str, dest: &Path) -> u8 {
    use std::io::{BufRead, Write};
    let dest = if dest.is_absolute() {
        dest.to_owned()
    } else {
        match std::env::current_dir() {
            Ok(d) => d.join(dest),
            Err(e) => {
                eprintln!("pitr restore-fetch: cannot resolve {}: {e}", dest.display());
                return 255;
            }
        }
    };
    let answer = (|| -> std::io::Result<String> {
        let mut conn = std::os::unix::net::UnixStream::connect(socket)?;
        writeln!(conn, "{file}\t{}", dest.display())?;
        let mut line = String::new();
        std::io::BufReader::new(conn).read_line(&mut line)?;
        Ok(line.trim_end().to_owned())
    })();
    match answer.as_deref() {
        Ok("ok") => 0,
        Ok("absent") => 1,
        Ok(other) => {
            eprintln!(
                "pitr restore-fetch {file}: {}",
                other.strip_prefix("error ").unwrap_or(other)
            );
            255
        }
        Err(e) => {
            eprintln!(
                "pitr restore-fetch {file}: the restore that serves WAL ({}) is gone: {e}",
                socket.display()
            );
            255
        }
    }
}

#[cfg(test)]
mod tests {
    use super::cut_to;

    #[test]
    fn a_newer_partial_is_cut_back_to_what_the_plan_covers() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("000000010000000000000004");
        std::fs::write(&path, vec![7u8; 8192]).expect("write");
        cut_to(&path, 100).expect("cut");
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(bytes.len(), 8192);
        assert!(bytes[..100].iter().all(|&b| b == 7));
        assert!(bytes[100..].iter().all(|&b| b == 0));
        // Nothing past the file's end is added.
        cut_to(&path, 10_000).expect("cut");
        assert_eq!(std::fs::read(&path).expect("read").len(), 8192);
    }
}
