//! Where the restore API may write (invariant 8): a target lies strictly
//! beneath `[health] restore_root`, reached through real directories only
//! (no symbolic link anywhere on the way), and never inside the state
//! directory. `force` empties only a directory an earlier API restore made
//! (it holds [`MARKER`]) and never one a server runs on (`postmaster.pid`).
//! Every check runs before anything is removed.

use std::path::{Component, Path, PathBuf};

/// The file an API restore leaves in the directory it restored into; only
/// such a directory may be emptied with `force`.
pub const MARKER: &str = ".pitr-restore";

/// Why the restore API refuses a target. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// Not a clean absolute path.
    #[error(
        "target_dir {0:?} is not a normalised absolute path (no \".\", \"..\" or empty parts): give the full path of a directory beneath [health] restore_root"
    )]
    NotNormal(PathBuf),
    /// Outside the root, or the root itself.
    #[error(
        "target_dir {target:?} does not lie beneath [health] restore_root ({root:?}): the restore API writes only there; give a directory beneath it, or restore elsewhere with `pitr restore` on the host"
    )]
    OutsideRoot {
        /// The target asked for.
        target: PathBuf,
        /// The configured root.
        root: PathBuf,
    },
    /// A symbolic link (or something else than a directory) on the way.
    #[error(
        "{0:?} is a symbolic link or not a directory: the restore API follows no link beneath [health] restore_root; give a path made of real directories"
    )]
    Link(PathBuf),
    /// The root does not exist or cannot be read.
    #[error(
        "[health] restore_root {root:?}: {source}; create it (pitr run creates it when it can)"
    )]
    Root {
        /// The configured root.
        root: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The target is or holds the state directory.
    #[error(
        "target_dir {0:?} overlaps the state directory: restore_root must not hold pitr's own files; give another directory"
    )]
    StateDir(PathBuf),
    /// Not empty, and no `force`.
    #[error(
        "target_dir {0:?} is not empty: give an empty or missing directory, or \"force\": true to replace an earlier API restore"
    )]
    NotEmpty(PathBuf),
    /// `force` on a directory no API restore made.
    #[error(
        "target_dir {0:?} was not made by a restore through this API (it has no .pitr-restore file): \"force\" empties only earlier API restores; empty it yourself if it really is to go"
    )]
    NotOurs(PathBuf),
    /// `force` on the data directory of a server that may be running.
    #[error(
        "target_dir {0:?} holds postmaster.pid: a PostgreSQL server may be running on it, and \"force\" never removes that; stop the server (and remove a stale postmaster.pid) first"
    )]
    Running(PathBuf),
    /// A restore job uses the directory now.
    #[error("target_dir {0:?} is being restored into by a running job: wait for it to end")]
    Busy(PathBuf),
    /// Reading the target failed.
    #[error("{path:?}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// A target that passed every check: where to restore, and whether its
/// content must be removed first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confined {
    /// The target, beneath the canonical root.
    pub dir: PathBuf,
    /// It exists and holds an earlier API restore, to be emptied.
    pub replace: bool,
}

/// Checks `target` against `root` (and `state_dir`), as the restore API
/// must before writing or removing anything.
pub fn check(
    root: &Path,
    state_dir: &Path,
    target: &Path,
    force: bool,
) -> Result<Confined, ConfineError> {
    if !target.is_absolute()
        || target
            .components()
            .any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
        || target.as_os_str().to_string_lossy().contains("//")
    {
        return Err(ConfineError::NotNormal(target.to_owned()));
    }
    let canon_root = root.canonicalize().map_err(|source| ConfineError::Root {
        root: root.to_owned(),
        source,
    })?;
    // Given beneath the root as configured or as it resolves.
    let rest = target
        .strip_prefix(root)
        .or_else(|_| target.strip_prefix(&canon_root))
        .ok()
        .filter(|r| r.components().next().is_some())
        .ok_or_else(|| ConfineError::OutsideRoot {
            target: target.to_owned(),
            root: root.to_owned(),
        })?;
    // Walk down from the root: every part that exists must be a real
    // directory, so nothing beneath the root leads out of it.
    let mut dir = canon_root.clone();
    let mut exists = true;
    for part in rest.components() {
        dir.push(part);
        if !exists {
            continue;
        }
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => return Err(ConfineError::Link(dir)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => exists = false,
            Err(source) => return Err(ConfineError::Io { path: dir, source }),
        }
    }
    let state = state_dir
        .canonicalize()
        .unwrap_or_else(|_| state_dir.to_owned());
    // The default root lies inside the state directory: only a target
    // that holds it, or lies in it outside the root, reaches pitr's files.
    if state.starts_with(&dir) || (dir.starts_with(&state) && !canon_root.starts_with(&state)) {
        return Err(ConfineError::StateDir(target.to_owned()));
    }
    if !exists {
        return Ok(Confined {
            dir,
            replace: false,
        });
    }
    let mut entries = std::fs::read_dir(&dir).map_err(|source| ConfineError::Io {
        path: dir.clone(),
        source,
    })?;
    if entries.next().is_none() {
        return Ok(Confined {
            dir,
            replace: false,
        });
    }
    if !force {
        return Err(ConfineError::NotEmpty(target.to_owned()));
    }
    // Checked even with the marker: a restored directory someone started
    // a server on is live data now.
    if std::fs::symlink_metadata(dir.join("postmaster.pid")).is_ok() {
        return Err(ConfineError::Running(target.to_owned()));
    }
    match std::fs::symlink_metadata(dir.join(MARKER)) {
        Ok(m) if m.file_type().is_file() => Ok(Confined { dir, replace: true }),
        _ => Err(ConfineError::NotOurs(target.to_owned())),
    }
}

/// Marks `dir` as made by the API restore `job`, so a later `force` may
/// replace it.
pub fn mark(dir: &Path, job: &str) -> std::io::Result<()> {
    std::fs::write(
        dir.join(MARKER),
        format!(
            "Restored by pitr's restore API (job {job}). A later API restore with \"force\" may replace this directory; delete this file to prevent that.\n"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        state: PathBuf,
        outside: PathBuf,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("restores");
        let state = tmp.path().join("state");
        let outside = tmp.path().join("outside");
        for d in [&root, &state, &outside] {
            std::fs::create_dir(d).expect("mkdir");
        }
        std::fs::write(outside.join("precious"), "x").expect("write");
        Fixture {
            _tmp: tmp,
            root,
            state,
            outside,
        }
    }

    #[test]
    fn targets_outside_the_root_or_unclean_are_refused() {
        let f = fixture();
        let check = |t: &Path, force| check(&f.root, &f.state, t, force);
        assert!(matches!(
            check(&f.outside, true),
            Err(ConfineError::OutsideRoot { .. })
        ));
        assert!(matches!(
            check(&f.root, true),
            Err(ConfineError::OutsideRoot { .. })
        ));
        assert!(matches!(
            check(&f.root.join("a/../../outside"), true),
            Err(ConfineError::NotNormal(_))
        ));
        assert!(matches!(
            check(Path::new("relative/x"), false),
            Err(ConfineError::NotNormal(_))
        ));
        assert!(matches!(
            check(&f.state.join("x"), false),
            Err(ConfineError::OutsideRoot { .. })
        ));
        // A link beneath the root that leads out of it.
        std::os::unix::fs::symlink(&f.outside, f.root.join("link")).expect("symlink");
        assert!(matches!(
            check(&f.root.join("link"), true),
            Err(ConfineError::Link(_))
        ));
        assert!(matches!(
            check(&f.root.join("link/new"), false),
            Err(ConfineError::Link(_))
        ));
        assert!(f.outside.join("precious").exists());
        let ok = check(&f.root.join("new/main"), false).expect("a new directory");
        assert!(!ok.replace);
    }

    #[test]
    fn force_replaces_only_marked_directories_without_a_server() {
        let f = fixture();
        let target = f.root.join("main");
        std::fs::create_dir(&target).expect("mkdir");
        std::fs::write(target.join("PG_VERSION"), "15\n").expect("write");
        assert!(matches!(
            check(&f.root, &f.state, &target, false),
            Err(ConfineError::NotEmpty(_))
        ));
        assert!(matches!(
            check(&f.root, &f.state, &target, true),
            Err(ConfineError::NotOurs(_))
        ));
        mark(&target, "job").expect("mark");
        let ok = check(&f.root, &f.state, &target, true).expect("marked");
        assert!(ok.replace);
        std::fs::write(target.join("postmaster.pid"), "1\n").expect("write");
        assert!(matches!(
            check(&f.root, &f.state, &target, true),
            Err(ConfineError::Running(_))
        ));
        assert!(target.join("PG_VERSION").exists());
    }

    #[test]
    fn the_default_root_inside_the_state_directory_works() {
        let f = fixture();
        let root = f.state.join("restores");
        std::fs::create_dir(&root).expect("mkdir");
        check(&root, &f.state, &root.join("main"), false).expect("beneath the default root");
    }

    #[test]
    fn a_root_that_holds_the_state_directory_does_not_expose_it() {
        let f = fixture();
        let state = f.root.join("state");
        std::fs::create_dir(&state).expect("mkdir");
        assert!(matches!(
            check(&f.root, &state, &state, true),
            Err(ConfineError::StateDir(_))
        ));
        assert!(matches!(
            check(&f.root, &state, &state.join("spool"), false),
            Err(ConfineError::StateDir(_))
        ));
    }
}
