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

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::Mode;
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::plan::Plan;
use crate::wal::WalStore;

/// `O_NOFOLLOW` for [`std::os::unix::fs::OpenOptionsExt::custom_flags`].
fn libc_o_nofollow() -> i32 {
    OFlag::O_NOFOLLOW.bits()
}

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
    /// `pg_wal`, held open: names are created relative to it, so a link
    /// put in place of the directory later is never followed.
    pg_wal_fd: std::os::fd::OwnedFd,
    owner: Option<(u32, u32)>,
    ahead: usize,
    inflight: Mutex<HashMap<usize, Fetch>>,
    /// Files served, for the report and for progress.
    served: Mutex<Vec<String>>,
    /// What could not be served.
    errors: Mutex<Vec<String>>,
    progress: Option<tokio::sync::watch::Sender<super::postgres::RestoreProgress>>,
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
        progress: Option<tokio::sync::watch::Sender<super::postgres::RestoreProgress>>,
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
        let pg_wal_fd = nix::fcntl::open(
            &pg_wal,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Arc::new(WalServer {
            store,
            files,
            plan_len,
            position,
            spool: spool.to_owned(),
            pg_wal,
            pg_wal_fd,
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
        let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !parent_ok || name.is_empty() {
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
                return self.serve_history(file, name, dest).await;
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
        let result = self.install(&spooled, name);
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

    async fn serve_history(&self, file: &str, name: &str, dest: &Path) -> String {
        // Fetched into pitr's own spool, never beside `dest`: pg_wal
        // belongs to the server's user.
        let spooled = self
            .spool
            .join(format!("{file}.{:016x}", rand::random::<u64>()));
        match self.store.fetch_to_spool(file, &spooled).await {
            Ok(None) => "absent".to_owned(),
            Ok(Some(_)) => {
                let result = self.install(&spooled, name);
                let _ = std::fs::remove_file(&spooled);
                match result {
                    Ok(()) => "ok".to_owned(),
                    Err(e) => format!("error writing {}: {e}", dest.display()),
                }
            }
            Err(e) => format!("error {file}: {e}"),
        }
    }

    /// Moves a spooled file to `name` in pg_wal, so that PostgreSQL never
    /// sees a file half written, following no link: the spooled file
    /// (in pitr's own directory) is opened without following links and
    /// given to the server's user by descriptor, then renamed into the held
    /// pg_wal directory (a rename replaces a link planted at `name`, it does
    /// not follow it). Across filesystems, a copy goes to a new name created
    /// with `O_CREAT | O_EXCL | O_NOFOLLOW` and is renamed the same way.
    fn install(&self, spooled: &Path, name: &str) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut src = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc_o_nofollow())
            .open(spooled)?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::fchown(&src, Some(uid), Some(gid))?;
        }
        match renameat(&self.pg_wal_fd, spooled, &self.pg_wal_fd, name) {
            Ok(()) => return Ok(()),
            Err(Errno::EXDEV) => {}
            Err(e) => return Err(e.into()),
        }
        let tmp = format!(".pitr-tmp-{name}-{:016x}", rand::random::<u64>());
        let out = openat(
            &self.pg_wal_fd,
            tmp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )?;
        let mut out = std::fs::File::from(out);
        let copied = (|| {
            if let Some((uid, gid)) = self.owner {
                std::os::unix::fs::fchown(&out, Some(uid), Some(gid))?;
            }
            std::io::copy(&mut src, &mut out)?;
            out.sync_all()?;
            renameat(&self.pg_wal_fd, tmp.as_str(), &self.pg_wal_fd, name)
                .map_err(std::io::Error::from)
        })();
        if copied.is_err() {
            let _ = unlinkat(&self.pg_wal_fd, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        }
        copied?;
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
    use super::*;

    /// A server for `files` (history files here: they need no real WAL)
    /// of a repository holding history files 2 and 3.
    async fn server(
        dir: &Path,
        spool: &Path,
        files: &[&str],
        owner: Option<(u32, u32)>,
    ) -> Arc<WalServer> {
        let repo = crate::repo::test_repository(dir).await;
        let store = WalStore::new(repo.clone(), "main");
        let mut w = repo.writer();
        for tli in [2, 3] {
            store
                .put_history(&mut w, tli, HISTORY)
                .await
                .expect("put a history file");
        }
        w.commit().await.expect("commit");
        let pg_wal = dir.join("data/pg_wal");
        std::fs::create_dir_all(&pg_wal).expect("mkdir");
        let files: Vec<String> = files.iter().map(|f| f.to_string()).collect();
        let pg_wal = pg_wal.canonicalize().expect("canonical");
        Arc::new(WalServer {
            store,
            plan_len: vec![None; files.len()],
            position: files
                .iter()
                .enumerate()
                .map(|(i, f)| (f.clone(), i))
                .collect(),
            files,
            spool: spool.to_owned(),
            pg_wal_fd: nix::fcntl::open(
                &pg_wal,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                Mode::empty(),
            )
            .expect("open pg_wal"),
            pg_wal,
            owner,
            ahead: 1,
            inflight: Mutex::new(HashMap::new()),
            served: Mutex::new(Vec::new()),
            errors: Mutex::new(Vec::new()),
            progress: None,
        })
    }

    const HISTORY: &[u8] = b"1\t0/3000000\tno recovery target specified\n";

    #[tokio::test]
    async fn links_planted_in_pg_wal_are_not_followed() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("temp dir");
        // The spool on another filesystem when /dev/shm is one, so that the
        // copy across filesystems runs too.
        let spool = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .expect("spool");
        let me = nix::unistd::geteuid();
        // As root, files go to another user, as in a root-run restore.
        let owner = me.is_root().then_some((65534, 65534));
        let server = server(dir.path(), spool.path(), &["00000002.history"], owner).await;
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").expect("write");
        let pg_wal = dir.path().join("data/pg_wal");
        // One request through the plan, one for a history file outside it;
        // links at the names and at the temp names pitr used to write.
        for (file, dest) in [
            ("00000002.history", "RECOVERYHISTORY"),
            ("00000003.history", "RECOVERYHISTORY2"),
        ] {
            for planted in [dest.to_owned(), format!("{dest}.pitr-tmp")] {
                std::os::unix::fs::symlink(&victim, pg_wal.join(planted)).expect("plant");
            }
            let answer = server.answer(file, &pg_wal.join(dest)).await;
            assert_eq!(answer, "ok", "{file}");
            let got = std::fs::symlink_metadata(pg_wal.join(dest)).expect("served");
            assert!(got.file_type().is_file(), "{dest} is a file, not the link");
            assert_eq!(std::fs::read(pg_wal.join(dest)).expect("read"), HISTORY);
            if let Some((uid, _)) = owner {
                assert_eq!(got.uid(), uid, "{dest} belongs to the server's user");
            }
            let v = std::fs::metadata(&victim).expect("victim");
            assert_eq!(std::fs::read(&victim).expect("read"), b"precious");
            assert_eq!(v.uid(), me.as_raw(), "the link's target was not chowned");
        }
    }

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
