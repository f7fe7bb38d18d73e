//! `kind = "fs"`: a directory on a local or mounted filesystem.
//!
//! Writes are crash-safe: temp file → fsync → hard link to the final name (which
//! fails if the name exists, so an object is never overwritten) → fsync the
//! directory. A crash leaves at most a stray temp file under `.tmp/`, never a
//! partial object under its final name.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Destination, ObjectMeta, PutOutcome, ShipError, validate_key};

/// A destination in a local directory.
#[derive(Debug, Clone)]
pub struct FsDestination {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: String,
    root: PathBuf,
}

impl FsDestination {
    /// A destination named `name` rooted at `root`. Nothing is touched until the
    /// first request; [`Destination::prepare`] creates the directory.
    pub fn new(name: impl Into<String>, root: impl Into<PathBuf>) -> Self {
        FsDestination {
            inner: Arc::new(Inner {
                name: name.into(),
                root: root.into(),
            }),
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }
}

impl Inner {
    fn io_err(&self, op: &'static str, key: &str, e: io::Error) -> ShipError {
        let key = key.to_owned();
        let dest = self.name.clone();
        match e.kind() {
            io::ErrorKind::NotFound => ShipError::NotFound { dest, key },
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
                ShipError::NoSpace { dest, key }
            }
            kind => ShipError::Io {
                dest,
                op,
                key,
                transient: matches!(
                    kind,
                    io::ErrorKind::Interrupted
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::WouldBlock
                ),
                source: e,
            },
        }
    }

    fn path(&self, key: &str) -> Result<PathBuf, ShipError> {
        validate_key(&self.name, key)?;
        Ok(self.root.join(key))
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<PutOutcome, ShipError> {
        let path = self.path(key)?;
        if path.exists() {
            return Ok(PutOutcome::AlreadyExists);
        }
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        let tmp_dir = self.root.join(".tmp");
        let err = |e| self.io_err("put", key, e);
        create_dir_durable(&dir).map_err(err)?;
        create_dir_durable(&tmp_dir).map_err(err)?;
        let tmp = tmp_dir.join(format!("{:016x}", rand::random::<u64>()));
        let result = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            drop(f);
            match fs::hard_link(&tmp, &path) {
                Ok(()) => {
                    sync_dir(&dir)?;
                    Ok(PutOutcome::Created)
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(PutOutcome::AlreadyExists),
                Err(e) => Err(e),
            }
        })();
        // The temp name is private to this call; it goes whatever happened.
        let _ = fs::remove_file(&tmp);
        result.map_err(err)
    }

    fn read_range(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes, ShipError> {
        let path = self.path(key)?;
        let err = |e| self.io_err("get", key, e);
        let mut f = File::open(&path).map_err(err)?;
        let mut buf = Vec::new();
        match range {
            None => {
                f.read_to_end(&mut buf).map_err(err)?;
            }
            Some(r) => {
                f.seek(SeekFrom::Start(r.start)).map_err(err)?;
                let len = r.end.saturating_sub(r.start);
                f.take(len).read_to_end(&mut buf).map_err(err)?;
            }
        }
        Ok(Bytes::from(buf))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ShipError> {
        let mut out = Vec::new();
        // Walk only the directory the prefix points into.
        let (dir_part, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let start = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.root.join(dir_part)
        };
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.io_err("list", prefix, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| self.io_err("list", prefix, e))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if name.starts_with('.') {
                    continue;
                }
                let ft = entry
                    .file_type()
                    .map_err(|e| self.io_err("list", prefix, e))?;
                let path = entry.path();
                if ft.is_dir() {
                    stack.push(path);
                } else if ft.is_file() {
                    let Ok(rel) = path.strip_prefix(&self.root) else {
                        continue;
                    };
                    let Some(key) = rel.to_str() else { continue };
                    if key.starts_with(prefix) {
                        let size = entry
                            .metadata()
                            .map_err(|e| self.io_err("list", prefix, e))?
                            .len();
                        out.push(ObjectMeta {
                            key: key.to_owned(),
                            size,
                        });
                    }
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

/// Creates `dir` and its missing parents, fsyncing each new directory's
/// parent: the object fsynced inside it must not be lost by a crash that
/// loses the entry leading to its directory.
fn create_dir_durable(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at.filter(|d| !d.as_os_str().is_empty() && !d.is_dir()) {
        missing.push(d);
        at = d.parent();
    }
    for d in missing.into_iter().rev() {
        match fs::create_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => continue,
            Err(e) => return Err(e),
        }
        if let Some(parent) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ShipError> + Send + 'static,
) -> Result<T, ShipError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

#[async_trait]
impl Destination for FsDestination {
    fn name(&self) -> &str {
        &self.inner.name
    }

    /// Creates the root directory (and its temp area) if missing.
    async fn prepare(&self) -> Result<(), ShipError> {
        let inner = self.inner.clone();
        blocking(move || {
            let tmp = inner.root.join(".tmp");
            create_dir_durable(&tmp).map_err(|e| inner.io_err("prepare", "", e))?;
            sync_dir(&inner.root).map_err(|e| inner.io_err("prepare", "", e))
        })
        .await
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome, ShipError> {
        let inner = self.inner.clone();
        let key = key.to_owned();
        blocking(move || inner.put(&key, &data)).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, ShipError> {
        let inner = self.inner.clone();
        let key = key.to_owned();
        blocking(move || inner.read_range(&key, None)).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, ShipError> {
        let inner = self.inner.clone();
        let key = key.to_owned();
        blocking(move || inner.read_range(&key, Some(range))).await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, ShipError> {
        let inner = self.inner.clone();
        let key = key.to_owned();
        blocking(move || {
            let path = inner.path(&key)?;
            match fs::metadata(&path) {
                Ok(m) if m.is_file() => Ok(Some(ObjectMeta { key, size: m.len() })),
                Ok(_) => Ok(None),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(inner.io_err("head", &key, e)),
            }
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ShipError> {
        let inner = self.inner.clone();
        let prefix = prefix.to_owned();
        blocking(move || inner.list(&prefix)).await
    }

    async fn delete(&self, key: &str) -> Result<(), ShipError> {
        let inner = self.inner.clone();
        let key = key.to_owned();
        blocking(move || {
            let path = inner.path(&key)?;
            match fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(inner.io_err("delete", &key, e)),
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_list_delete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = FsDestination::new("local", dir.path());
        d.prepare().await.expect("prepare");
        let put = d.put_if_absent("a/b/c", Bytes::from_static(b"hello")).await;
        assert_eq!(put.expect("put"), PutOutcome::Created);
        let again = d.put_if_absent("a/b/c", Bytes::from_static(b"other")).await;
        assert_eq!(again.expect("put"), PutOutcome::AlreadyExists);
        assert_eq!(&d.get("a/b/c").await.expect("get")[..], b"hello");
        assert_eq!(&d.get_range("a/b/c", 1..3).await.expect("range")[..], b"el");
        assert_eq!(
            &d.get_range("a/b/c", 3..10).await.expect("range")[..],
            b"lo"
        );
        d.put_if_absent("a/x", Bytes::new()).await.expect("put");
        d.put_if_absent("b", Bytes::new()).await.expect("put");
        let keys: Vec<_> = d
            .list("a/")
            .await
            .expect("list")
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(keys, ["a/b/c", "a/x"]);
        assert_eq!(d.list("").await.expect("list").len(), 3);
        assert_eq!(
            d.head("a/b/c").await.expect("head").map(|m| m.size),
            Some(5)
        );
        assert!(matches!(
            d.get("nope").await,
            Err(ShipError::NotFound { .. })
        ));
        d.delete("a/b/c").await.expect("delete");
        d.delete("a/b/c").await.expect("delete twice");
        assert_eq!(d.head("a/b/c").await.expect("head"), None);
        // No temp files are left behind.
        let tmp: Vec<_> = fs::read_dir(dir.path().join(".tmp"))
            .expect("tmp")
            .collect();
        assert!(tmp.is_empty(), "{tmp:?}");
    }
}
