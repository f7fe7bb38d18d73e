//! Finding the server binaries of one PostgreSQL major. A data directory
//! starts only under its own major's `postgres`, and `pg_amcheck` /
//! `pg_checksums` judge it best in that major too, so every candidate
//! directory is checked by running its `postgres --version`, never trusted
//! by its name. The places, in order: the directories configured
//! (`[restore] bin_dirs`), Debian's `/usr/lib/postgresql/<major>/bin`, the
//! PGDG RPMs' `/usr/pgsql-<major>/bin`, `pg_config --bindir`, and every
//! `postgres` on `PATH` (through symlinks, to the directory holding its
//! tools).

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A directory holding a PostgreSQL major's server binaries, as its
/// `postgres --version` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBin {
    dir: PathBuf,
    major: u32,
    version: String,
}

impl PgBin {
    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The major version (`17`).
    pub fn major(&self) -> u32 {
        self.major
    }

    /// The version as `postgres --version` says it (`17.11`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The path of one of its programs (`postgres`, `pg_amcheck`, ...).
    pub fn tool(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Runs `<dir>/postgres --version`; `Err` says what the directory holds
    /// instead.
    fn probe(dir: &Path) -> Result<PgBin, String> {
        let exe = dir.join("postgres");
        if !exe.is_file() {
            return Err(if dir.is_dir() {
                "no postgres there".to_owned()
            } else {
                "does not exist".to_owned()
            });
        }
        let out = Command::new(&exe)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("postgres --version cannot run: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        // "postgres (PostgreSQL) 15.10 (Debian 15.10-0+deb12u1)"
        let version = text
            .split_once(") ")
            .map(|(_, v)| v.split_whitespace().next().unwrap_or(""))
            .unwrap_or("");
        match major_of(version) {
            Some(major) if out.status.success() => Ok(PgBin {
                dir: dir.to_owned(),
                major,
                version: version.to_owned(),
            }),
            _ => Err(format!(
                "postgres --version answered {:?} ({})",
                text, out.status
            )),
        }
    }

    /// The programs of `tools` missing from the directory.
    fn missing<'a>(&self, tools: &[&'a str]) -> Vec<&'a str> {
        tools
            .iter()
            .copied()
            .filter(|t| !self.tool(t).is_file())
            .collect()
    }
}

/// One place looked in, and what was there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Looked {
    /// Why it was looked in (`[restore] bin_dirs`, `pg_config --bindir`, ...).
    pub source: String,
    /// The directory.
    pub dir: PathBuf,
    /// What was found (`PostgreSQL 17.11`, `does not exist`, ...).
    pub found: String,
}

impl fmt::Display for Looked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.dir.display(),
            self.source,
            self.found
        )
    }
}

fn list(looked: &[Looked]) -> String {
    if looked.is_empty() {
        return "nowhere (no place applies)".to_owned();
    }
    looked
        .iter()
        .map(|l| format!("\n  - {l}"))
        .collect::<String>()
}

/// Why no binaries could be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BinError {
    /// No place holds the major asked for (with every tool needed).
    #[error(
        "PostgreSQL {major}'s server binaries ({tools}) are needed and none of the places looked \
         holds them:{places}\nInstall PostgreSQL {major} (Debian: postgresql-{major}; RHEL: \
         postgresql{major}-server) and name its bin directory in [restore] bin_dirs (or \
         PITR_RESTORE_BIN_DIRS)",
        tools = tools.join(", "),
        places = list(looked)
    )]
    Missing {
        /// The major needed.
        major: u32,
        /// The programs needed.
        tools: Vec<String>,
        /// Every place looked in.
        looked: Vec<Looked>,
    },
    /// No place holds any PostgreSQL at all.
    #[error(
        "PostgreSQL's server binaries ({tools}) are needed and none of the places looked holds \
         them:{places}\nInstall PostgreSQL (Debian: apt-get install postgresql) or name its bin \
         directory in [restore] bin_dirs (or PITR_RESTORE_BIN_DIRS)",
        tools = tools.join(", "),
        places = list(looked)
    )]
    NoneFound {
        /// The programs needed.
        tools: Vec<String>,
        /// Every place looked in.
        looked: Vec<Looked>,
    },
    /// A data directory's `PG_VERSION` cannot be read.
    #[error(
        "{}: {why}; a PostgreSQL data directory names its major there: restore into an empty \
         directory from a complete base backup",
        path.display()
    )]
    PgVersion {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

impl BinError {
    /// The major that was needed, if one was.
    pub fn major(&self) -> Option<u32> {
        match self {
            BinError::Missing { major, .. } => Some(*major),
            _ => None,
        }
    }
}

/// The major version a version string starts with (`15.10 (Debian ...)`,
/// `16beta1`, `17`): `None` when it does not start with a number.
pub fn major_of(version: &str) -> Option<u32> {
    let digits: String = version
        .trim()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// The major a data directory was made by, from its `PG_VERSION`.
pub fn data_dir_major(data: &Path) -> Result<u32, BinError> {
    let path = data.join("PG_VERSION");
    let text = std::fs::read_to_string(&path).map_err(|e| BinError::PgVersion {
        path: path.clone(),
        why: e.to_string(),
    })?;
    let t = text.trim();
    // Only the majors since 10 are one number; "9.6" is no major pitr serves.
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BinError::PgVersion {
            path,
            why: format!("holds {t:?}, not a major version number"),
        });
    }
    t.parse().map_err(|_| BinError::PgVersion {
        path,
        why: format!("holds {t:?}, not a major version number"),
    })
}

/// Where to look for `major` (every major when `None`): the configured
/// directories first, then the usual places, each once.
fn places(major: Option<u32>, configured: &[PathBuf]) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = configured
        .iter()
        .map(|d| ("[restore] bin_dirs".to_owned(), d.clone()))
        .collect();
    match major {
        Some(m) => {
            out.push((
                "Debian".to_owned(),
                format!("/usr/lib/postgresql/{m}/bin").into(),
            ));
            out.push(("PGDG RPM".to_owned(), format!("/usr/pgsql-{m}/bin").into()));
        }
        None => {
            // Newest first, so that the first complete one is the newest.
            let mut found: Vec<(u32, String, PathBuf)> = Vec::new();
            for (source, parent, prefix, suffix) in [
                ("Debian", "/usr/lib/postgresql", "", "bin"),
                ("PGDG RPM", "/usr", "pgsql-", "bin"),
            ] {
                for e in std::fs::read_dir(parent).into_iter().flatten().flatten() {
                    let name = e.file_name().to_string_lossy().to_string();
                    if let Some(m) = name.strip_prefix(prefix).and_then(|n| n.parse().ok()) {
                        found.push((m, source.to_owned(), e.path().join(suffix)));
                    }
                }
            }
            found.sort_by_key(|f| std::cmp::Reverse(f.0));
            out.extend(found.into_iter().map(|(_, s, d)| (s, d)));
        }
    }
    if let Ok(o) = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        && o.status.success()
    {
        let dir = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        if !dir.is_empty() {
            out.push(("pg_config --bindir".to_owned(), dir.into()));
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let exe = d.join("postgres");
            if exe.is_file() {
                // A symlink (/usr/local/bin/postgres) stands for the
                // directory its target's tools are in.
                let real = std::fs::canonicalize(&exe)
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf))
                    .unwrap_or(d);
                out.push(("postgres on PATH".to_owned(), real));
            }
        }
    }
    // Each directory once, with every reason it was looked in.
    let mut merged: Vec<(PathBuf, String, PathBuf)> = Vec::new();
    for (source, dir) in out {
        let key = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
        match merged.iter_mut().find(|(k, _, _)| *k == key) {
            Some((_, s, _)) if !s.split(", ").any(|x| x == source) => {
                s.push_str(", ");
                s.push_str(&source);
            }
            Some(_) => {}
            None => merged.push((key, source, dir)),
        }
    }
    merged.into_iter().map(|(_, s, d)| (s, d)).collect()
}

/// Checks one place for `major` (any when `None`) with `tools`.
fn check(
    source: String,
    dir: PathBuf,
    major: Option<u32>,
    tools: &[&str],
    looked: &mut Vec<Looked>,
) -> Option<PgBin> {
    let found = match PgBin::probe(&dir) {
        Err(why) => why,
        Ok(bin) if major.is_some_and(|m| m != bin.major) => {
            format!("PostgreSQL {}", bin.version)
        }
        Ok(bin) => {
            let missing = bin.missing(tools);
            if missing.is_empty() {
                return Some(bin);
            }
            format!("PostgreSQL {}, without {}", bin.version, missing.join(", "))
        }
    };
    looked.push(Looked { source, dir, found });
    None
}

fn owned(tools: &[&str]) -> Vec<String> {
    tools.iter().map(|t| (*t).to_owned()).collect()
}

/// The binaries of `major` holding `tools` (`postgres` is always checked):
/// the configured directories first, then the usual places. The error
/// names the major and every place looked in, with what was there.
pub fn find(major: u32, configured: &[PathBuf], tools: &[&str]) -> Result<PgBin, BinError> {
    let mut looked = Vec::new();
    for (source, dir) in places(Some(major), configured) {
        if let Some(bin) = check(source, dir, Some(major), tools, &mut looked) {
            return Ok(bin);
        }
    }
    Err(BinError::Missing {
        major,
        tools: owned(tools),
        looked,
    })
}

/// The binaries of `major` in `dir` only (a directory named on the command
/// line); `source` says where it was named.
pub fn find_in(dir: &Path, source: &str, major: u32, tools: &[&str]) -> Result<PgBin, BinError> {
    let mut looked = Vec::new();
    check(
        source.to_owned(),
        dir.to_owned(),
        Some(major),
        tools,
        &mut looked,
    )
    .ok_or(BinError::Missing {
        major,
        tools: owned(tools),
        looked,
    })
}

/// The newest major holding `tools` (for a server of no particular major:
/// the demo's).
pub fn find_newest(configured: &[PathBuf], tools: &[&str]) -> Result<PgBin, BinError> {
    let mut looked = Vec::new();
    let mut best: Option<PgBin> = None;
    for (source, dir) in places(None, configured) {
        if let Some(bin) = check(source, dir, None, tools, &mut looked)
            && best.as_ref().is_none_or(|b| bin.major > b.major)
        {
            best = Some(bin);
        }
    }
    best.ok_or(BinError::NoneFound {
        tools: owned(tools),
        looked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majors_of_version_strings() {
        assert_eq!(major_of("15.10 (Debian 15.10-0+deb12u1)"), Some(15));
        assert_eq!(major_of("16beta1"), Some(16));
        assert_eq!(major_of("17"), Some(17));
        assert_eq!(major_of("x"), None);
    }

    #[test]
    fn pg_version_is_read_strictly() {
        let d = tempfile::tempdir().expect("tempdir");
        let e = data_dir_major(d.path()).expect_err("no file");
        assert!(e.to_string().contains("PG_VERSION"), "{e}");
        std::fs::write(d.path().join("PG_VERSION"), "17\n").expect("write");
        assert_eq!(data_dir_major(d.path()).expect("a major"), 17);
        std::fs::write(d.path().join("PG_VERSION"), "9.6\n").expect("write");
        let e = data_dir_major(d.path()).expect_err("not a major");
        assert!(e.to_string().contains("\"9.6\""), "{e}");
    }

    #[test]
    fn a_directory_without_postgres_is_named_with_what_is_there() {
        let d = tempfile::tempdir().expect("tempdir");
        let e = find_in(d.path(), "--pg-bin", 99, &["postgres"]).expect_err("empty");
        let msg = e.to_string();
        assert_eq!(e.major(), Some(99));
        assert!(msg.contains("PostgreSQL 99's server binaries"), "{msg}");
        assert!(msg.contains("no postgres there"), "{msg}");
        assert!(msg.contains("(--pg-bin)"), "{msg}");
    }
}
