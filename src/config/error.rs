//! What can go wrong while loading the configuration, and the helpers that
//! phrase it. Every message names the config file and the key, says what is
//! wrong and what to do, because an operator reads it at 3 AM with nothing
//! else to go on.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::raw::Section;

/// The configuration could not be loaded. Variants are separate where a
/// caller (the CLI, `pitr check`) may want to react differently; every one
/// displays as a complete, actionable message.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file itself could not be read.
    #[error(
        "cannot read config file {}: {source}. Check the path given with -c/--config (or PITR_CONFIG) and that pitr may read the file",
        path.display()
    )]
    Read {
        /// The config file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML. The message carries line and column.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The config file.
        path: PathBuf,
        /// What is wrong, where, and what to do.
        message: String,
    },
    /// A key is unknown, missing, of the wrong type, or has a value that is
    /// not allowed.
    #[error("{}: {key}: {message}", path.display())]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The key, as `[section] key` or `[[section]] "name" key`.
        key: String,
        /// What is wrong (with the line when known) and what to do.
        message: String,
    },
    /// A `PITR_*` environment variable matches no key, or its value is not
    /// valid for the key it overrides. The message names the config file.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable's name.
        var: String,
        /// What is wrong, which key it overrides, and what to do.
        message: String,
    },
    /// A secret file named by a `*_file` key could not be read.
    #[error(
        "{}: {key}: cannot read secret file {}: {source}. Check that the file exists and that pitr may read it",
        path.display(),
        file.display()
    )]
    SecretFile {
        /// The config file.
        path: PathBuf,
        /// The `*_file` key naming the secret file.
        key: String,
        /// The secret file.
        file: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Where a raw value came from, so an error about it can point there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Origin {
    /// A byte range of the config file.
    File(Range<usize>),
    /// An environment variable (its name).
    Env(String),
}

/// Which entry of an array section a key belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Entry {
    /// A plain section (`[repository]`), no entry.
    None,
    /// An entry with a usable name.
    Named(String),
    /// An entry without a name yet: its 0-based position.
    Index(usize),
}

/// A key as an operator writes it: `[repository] state_dir`,
/// `[[destination]] "local" path`, `[[postgres]] #2 conninfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KeyName {
    pub section: Section,
    pub entry: Entry,
    /// The key; empty to name the section or entry itself.
    pub key: String,
}

impl KeyName {
    /// A key of a plain section.
    pub fn plain(section: Section, key: &str) -> Self {
        KeyName {
            section,
            entry: Entry::None,
            key: key.to_owned(),
        }
    }

    /// A key of an array-section entry.
    pub fn entry(section: Section, entry: &Entry, key: &str) -> Self {
        KeyName {
            section,
            entry: entry.clone(),
            key: key.to_owned(),
        }
    }

    /// The same entry, another key.
    pub fn sibling(&self, key: &str) -> Self {
        KeyName {
            key: key.to_owned(),
            ..self.clone()
        }
    }
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.section.name();
        match &self.entry {
            Entry::None if self.section.is_array() => write!(f, "[[{name}]]")?,
            Entry::None => write!(f, "[{name}]")?,
            Entry::Named(n) => write!(f, "[[{name}]] {n:?}")?,
            Entry::Index(i) => write!(f, "[[{name}]] #{}", i + 1)?,
        }
        if !self.key.is_empty() {
            write!(f, " {}", self.key)?;
        }
        Ok(())
    }
}

/// What every error needs: the file's path (for messages), its text (to turn
/// byte offsets into lines) and its directory (to resolve relative paths).
#[derive(Debug, Clone, Copy)]
pub(super) struct Ctx<'a> {
    pub path: &'a Path,
    pub text: &'a str,
    pub base: &'a Path,
}

impl Ctx<'_> {
    /// "line L, column C" for a byte offset, both 1-based as editors count.
    pub fn position(&self, offset: usize) -> String {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        format!("line {line}, column {column}")
    }

    /// A value at `origin` is not acceptable. `what` says what is wrong,
    /// `fix` what to do. A value that came from the environment is blamed on
    /// the variable, since that is where the operator must fix it.
    pub fn invalid(&self, key: &KeyName, origin: &Origin, what: &str, fix: &str) -> ConfigError {
        match origin {
            Origin::File(span) => ConfigError::Invalid {
                path: self.path.to_path_buf(),
                key: key.to_string(),
                message: format!("{what} (at {}). {fix}", self.position(span.start)),
            },
            Origin::Env(var) => self.env(var, key, what, fix),
        }
    }

    /// A required key is absent from both the file and the environment.
    pub fn missing(&self, key: &KeyName, what: &str, fix: &str) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            message: format!("{what}. {fix}"),
        }
    }

    /// An environment variable's value is not acceptable for `key`.
    pub fn env(&self, var: &str, key: &KeyName, what: &str, fix: &str) -> ConfigError {
        ConfigError::Env {
            var: var.to_owned(),
            message: format!(
                "{what}; it overrides `{key}` from {}. {fix}. Or unset {var} to use the file's value",
                self.path.display()
            ),
        }
    }

    /// How to name `key` from `origin` in a message: with the variable when
    /// the value came from the environment.
    pub fn key_label(key: &KeyName, origin: &Origin) -> String {
        match origin {
            Origin::File(_) => key.to_string(),
            Origin::Env(var) => format!("{key} (set by {var})"),
        }
    }

    /// A path from the file or the environment, relative ones taken from the
    /// config file's directory so that the meaning of a config does not
    /// depend on where pitr was started.
    pub fn resolve(&self, value: &str) -> PathBuf {
        let p = Path::new(value);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }
}

/// The closest of `candidates` to `word`, if it is close enough to be a
/// likely typo; used for "did you mean" hints.
pub(super) fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (edit_distance(&word, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance over chars; inputs are short key names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}
