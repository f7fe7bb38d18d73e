//! Crash-safe local files: temp file → fsync → rename → fsync the directory,
//! so a crash leaves either the old file or the new one, never a torn one.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Creates `dir` and its missing parents with mode 0700: pitr's local
/// state (catalog, spools of plaintext pages and WAL, logs) is for no other
/// user to read. Directories that exist keep their mode.
pub fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Creates (or truncates) `path` for writing; a new file gets mode 0600.
pub fn create_private_file(path: &Path) -> io::Result<fs::File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// Writes `bytes` to `path` atomically and durably, creating it with `mode`.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    write_via_temp(path, bytes, mode, |tmp| fs::rename(tmp, path))
}

/// Like [`write_file`], but fails with `AlreadyExists` instead of replacing
/// an existing file: for secrets such as identities, where overwriting would
/// make everything encrypted to the old one unreadable.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    // A hard link, unlike rename, refuses an existing target atomically.
    write_via_temp(path, bytes, mode, |tmp| fs::hard_link(tmp, path))
}

/// Writes and fsyncs a temp file beside `path`, lets `publish` put it in
/// place, fsyncs the directory; the temp file never outlives the call.
fn write_via_temp(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    publish: impl FnOnce(&Path) -> io::Result<()>,
) -> io::Result<()> {
    let (dir, tmp) = temp_beside(path)?;
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        publish(&tmp)?;
        fs::File::open(&dir)?.sync_all()
    })();
    // After a rename it is gone already; after a link or a failure it must go.
    let _ = fs::remove_file(&tmp);
    result
}

fn temp_beside(path: &Path) -> io::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp{:08x}",
        name.to_string_lossy(),
        rand::random::<u32>()
    ));
    Ok((dir.to_owned(), tmp))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn writes_atomically_with_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("secret");
        write_file(&p, b"one", 0o600).expect("write");
        write_file(&p, b"two", 0o600).expect("overwrite");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        assert_eq!(
            fs::metadata(&p).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_dir(dir.path()).expect("dir").count(),
            1,
            "no temp files left"
        );
    }
}
