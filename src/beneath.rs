//! Creating files beneath a directory without following links
//! (invariant 8).
//!
//! A restore runs as root and writes names that come from the repository,
//! into directories that the database's OS user may own: every name is
//! checked ([`check_relative`]), then created with `openat`-style calls from
//! a directory descriptor, each component opened with `O_NOFOLLOW`, each new
//! file with `O_CREAT | O_EXCL | O_NOFOLLOW`, and ownership changed on open
//! descriptors (`fchown`) or without following (`AT_SYMLINK_NOFOLLOW`) only.
//! A link planted anywhere on the way makes the call fail instead of being
//! followed.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, fchmod, mkdirat};
use nix::unistd::{Gid, Uid, fchown, fchownat};

/// Why `path`, a name read from a listing, may not be joined onto a target:
/// absolute, empty, with a `..`, `.` or empty component, a NUL, or a
/// trailing `/` (a listing names each entry one way only). `None` when it is
/// a plain relative path.
pub fn check_relative(path: &str) -> Option<&'static str> {
    if path.is_empty() {
        return Some("is empty");
    }
    if path.starts_with('/') {
        return Some("is absolute");
    }
    if path.contains('\0') {
        return Some("holds a NUL byte");
    }
    for part in path.split('/') {
        match part {
            ".." => return Some("climbs out with `..`"),
            "." | "" => return Some("is not normalised (`.` or an empty component)"),
            _ => {}
        }
    }
    None
}

fn cstr(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"))
}

/// Flags for a directory walked through: never a link.
fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// A directory that names are created beneath.
#[derive(Debug)]
pub struct Beneath {
    root: OwnedFd,
    path: PathBuf,
}

impl Beneath {
    /// Opens `root` (which the operator named, so a link there is taken as
    /// given; nothing below it is followed).
    pub fn open(root: &Path) -> io::Result<Beneath> {
        let fd = nix::fcntl::open(
            root,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Beneath {
            root: fd,
            path: root.to_owned(),
        })
    }

    /// The root as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory holding `rel`'s last component, reached without
    /// following any link, and that component.
    fn parent<'a>(&self, rel: &'a str) -> io::Result<(OwnedFd, &'a str)> {
        if let Some(why) = check_relative(rel) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{rel:?} {why}"),
            ));
        }
        let (dirs, last) = match rel.rsplit_once('/') {
            Some((d, l)) => (Some(d), l),
            None => (None, rel),
        };
        let mut fd = self.root.try_clone()?;
        for part in dirs.into_iter().flat_map(|d| d.split('/')) {
            fd = openat(&fd, cstr(part)?.as_c_str(), dir_flags(), Mode::empty())
                .map_err(|e| beneath_error(e, rel))?;
        }
        Ok((fd, last))
    }

    /// Creates directory `rel` (an existing directory, not a link, is
    /// fine) with exactly `mode`.
    pub fn mkdir(&self, rel: &str, mode: u32) -> io::Result<()> {
        let (parent, last) = self.parent(rel)?;
        let name = cstr(last)?;
        match mkdirat(&parent, name.as_c_str(), Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(e.into()),
        }
        let dir = openat(&parent, name.as_c_str(), dir_flags(), Mode::empty())
            .map_err(|e| beneath_error(e, rel))?;
        fchmod(&dir, Mode::from_bits_truncate(mode))?;
        Ok(())
    }

    /// Creates the new file `rel` (refusing an existing name, link or not)
    /// with exactly `mode`, open for writing.
    pub fn create_file(&self, rel: &str, mode: u32) -> io::Result<File> {
        let (parent, last) = self.parent(rel)?;
        let fd = openat(
            &parent,
            cstr(last)?.as_c_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| beneath_error(e, rel))?;
        // The umask does not decide what the backup recorded.
        fchmod(&fd, Mode::from_bits_truncate(mode))?;
        Ok(File::from(fd))
    }

    /// Creates the link `rel` pointing at `to`.
    pub fn symlink(&self, rel: &str, to: &Path) -> io::Result<()> {
        let (parent, last) = self.parent(rel)?;
        nix::unistd::symlinkat(to, &parent, cstr(last)?.as_c_str())?;
        Ok(())
    }

    /// The bytes of file `rel`, `None` when it does not exist; a link there
    /// is an error, not followed.
    pub fn read(&self, rel: &str) -> io::Result<Option<Vec<u8>>> {
        use std::io::Read;
        let (parent, last) = self.parent(rel)?;
        let fd = match openat(
            &parent,
            cstr(last)?.as_c_str(),
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(beneath_error(e, rel)),
        };
        let mut f = File::from(fd);
        if !f.metadata()?.is_file() {
            return Err(io::Error::other(format!("{rel:?} is not a regular file")));
        }
        let mut out = Vec::new();
        f.read_to_end(&mut out)?;
        Ok(Some(out))
    }

    /// Puts `bytes` at `rel` whole: written to a new name beside it
    /// (`O_EXCL | O_NOFOLLOW`), given to `owner` by descriptor, fsynced and
    /// renamed over `rel` (which replaces a link there, never follows it).
    pub fn replace_file(
        &self,
        rel: &str,
        bytes: &[u8],
        mode: u32,
        owner: Option<(u32, u32)>,
    ) -> io::Result<()> {
        use std::io::Write;
        let (parent, last) = self.parent(rel)?;
        let tmp = format!(".{last}.pitr-tmp-{:016x}", rand::random::<u64>());
        let fd = openat(
            &parent,
            cstr(&tmp)?.as_c_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| beneath_error(e, rel))?;
        let mut f = File::from(fd);
        let written = (|| {
            fchmod(&f, Mode::from_bits_truncate(mode))?;
            if let Some((uid, gid)) = owner {
                fchown(&f, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
            }
            f.write_all(bytes)?;
            f.sync_all()?;
            nix::fcntl::renameat(&parent, tmp.as_str(), &parent, last)?;
            Ok::<(), io::Error>(())
        })();
        if written.is_err() {
            let _ = nix::unistd::unlinkat(
                &parent,
                tmp.as_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
        written
    }

    /// Whether `rel` exists (a link counts; it is not followed).
    pub fn exists(&self, rel: &str) -> io::Result<bool> {
        let (parent, last) = self.parent(rel)?;
        match nix::sys::stat::fstatat(
            &parent,
            cstr(last)?.as_c_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(_) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// An error on the way to `rel`: a link where a directory was expected says
/// so.
fn beneath_error(e: Errno, rel: &str) -> io::Error {
    match e {
        Errno::ELOOP | Errno::ENOTDIR => io::Error::other(format!(
            "{rel:?} lies beneath or at a symbolic link or a non-directory, which a restore \
             does not follow"
        )),
        Errno::EEXIST => io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{rel:?} exists already (a file, directory or link put there before)"),
        ),
        e => e.into(),
    }
}

/// Gives `root` and everything beneath it to `uid:gid`, following no link:
/// directories are walked by descriptor, each entry changed with
/// `AT_SYMLINK_NOFOLLOW` (a link itself changes, not what it points at), and
/// each directory after its contents, so the new owner gets no say in a
/// directory while pitr still works in it.
pub fn chown_tree(root: &Path, uid: u32, gid: u32) -> io::Result<()> {
    // The root is named by the operator, as in [`Beneath::open`].
    let fd = nix::fcntl::open(
        root,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("{}: {e}", root.display()),
        )
    })?;
    chown_dir(fd, root, Uid::from_raw(uid), Gid::from_raw(gid))
}

fn chown_dir(fd: OwnedFd, path: &Path, uid: Uid, gid: Gid) -> io::Result<()> {
    let names: Vec<CString> = {
        let mut dir = nix::dir::Dir::from_fd(fd.try_clone()?)?;
        dir.iter()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_owned())
            .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
            .collect()
    };
    for name in names {
        match openat(&fd, name.as_c_str(), dir_flags(), Mode::empty()) {
            Ok(sub) => {
                let sub_path = path.join(name.to_string_lossy().as_ref());
                chown_dir(sub, &sub_path, uid, gid)?;
            }
            // Not a directory (a file, or a link, which is not followed).
            Err(Errno::ENOTDIR | Errno::ELOOP) => {
                fchownat(
                    &fd,
                    name.as_c_str(),
                    Some(uid),
                    Some(gid),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|e| {
                    io::Error::new(
                        io::Error::from(e).kind(),
                        format!(
                            "{}: {e}",
                            path.join(name.to_string_lossy().as_ref()).display()
                        ),
                    )
                })?;
            }
            Err(e) => {
                return Err(io::Error::new(
                    io::Error::from(e).kind(),
                    format!(
                        "{}: {e}",
                        path.join(name.to_string_lossy().as_ref()).display()
                    ),
                ));
            }
        }
    }
    fchown(fd.as_fd(), Some(uid), Some(gid)).map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("{}: {e}", path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_paths_are_plain_relative_paths() {
        assert_eq!(check_relative("base/1/1259"), None);
        assert_eq!(check_relative("PG_VERSION"), None);
        assert!(check_relative("/etc/passwd").is_some());
        assert!(check_relative("../x").is_some());
        assert!(check_relative("base/../../x").is_some());
        assert!(check_relative("base//1").is_some());
        assert!(check_relative("base/./1").is_some());
        assert!(check_relative("base/").is_some());
        assert!(check_relative("").is_some());
    }

    #[test]
    fn nothing_is_created_through_a_link() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir(&root).expect("mkdir");
        std::os::unix::fs::symlink(outside.path(), root.join("link")).expect("symlink");
        std::os::unix::fs::symlink(outside.path().join("f"), root.join("dangling"))
            .expect("symlink");
        let b = Beneath::open(&root).expect("open");
        let err = b.create_file("link/f", 0o600).expect_err("through a link");
        assert!(err.to_string().contains("\"link/f\""), "{err}");
        b.mkdir("link/d", 0o700).expect_err("through a link");
        b.create_file("dangling", 0o600).expect_err("at a link");
        b.mkdir("link", 0o700).expect_err("a link is no directory");
        assert_eq!(std::fs::read_dir(outside.path()).expect("ls").count(), 0);

        b.mkdir("d", 0o750).expect("mkdir");
        b.mkdir("d", 0o750).expect("again");
        b.create_file("d/f", 0o640).expect("file");
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode(&root.join("d")), 0o750);
        assert_eq!(mode(&root.join("d/f")), 0o640);
        b.create_file("d/f", 0o640).expect_err("exists");
        assert!(b.exists("dangling").expect("stat"));
        // A file replaced whole over a planted link: the link goes, its
        // target stays as it was; reading through a link is refused.
        std::fs::write(outside.path().join("victim"), b"precious").expect("write");
        std::os::unix::fs::symlink(outside.path().join("victim"), root.join("conf"))
            .expect("symlink");
        b.read("conf").expect_err("a link is not read");
        b.replace_file("conf", b"new", 0o600, None)
            .expect("replace");
        assert_eq!(b.read("conf").expect("read"), Some(b"new".to_vec()));
        assert!(
            !std::fs::symlink_metadata(root.join("conf"))
                .expect("stat")
                .is_symlink()
        );
        assert_eq!(
            std::fs::read(outside.path().join("victim")).expect("read"),
            b"precious"
        );
        assert_eq!(b.read("absent").expect("read"), None);
        assert!(!b.exists("nope").expect("stat"));
    }
}
