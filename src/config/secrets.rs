//! `*_file` keys: a secret (or a list too long for a variable) kept in its own
//! file, as Docker and Kubernetes mount them, so it never appears in the
//! config file or in the process environment.

use std::path::PathBuf;

use super::error::{ConfigError, Ctx, KeyName, Origin};
use super::raw::Val;

/// A value given either inline or through its `*_file` key.
#[derive(Debug)]
pub(super) struct Secret {
    pub value: String,
    /// The key that gave it (`conninfo` or `conninfo_file`), for messages.
    pub key: KeyName,
    pub origin: Origin,
    /// The file it was read from, when it came through `*_file`.
    pub file: Option<PathBuf>,
}

/// One item of a list given inline or through its `*_file` key.
#[derive(Debug)]
pub(super) struct Item {
    pub value: String,
    /// Where in the list it is, for messages: `recipients[1]` or
    /// `line 3 of /run/secrets/recipients`.
    pub place: String,
    pub origin: Origin,
}

/// A list and the key that gave it.
#[derive(Debug)]
pub(super) struct List {
    pub items: Vec<Item>,
    pub key: KeyName,
    pub origin: Origin,
}

/// Resolves `inline` / `file` (e.g. `conninfo` / `conninfo_file`) into one
/// value: the file's content without its trailing newline, which editors and
/// `echo` add but no secret means.
pub(super) fn text(
    ctx: &Ctx<'_>,
    key: &KeyName,
    inline: Option<Val<String>>,
    file: Option<Val<String>>,
) -> Result<Option<Secret>, ConfigError> {
    Ok(match given(ctx, key, inline, file)? {
        None => None,
        Some(Given::Inline(v)) => Some(Secret {
            value: v.value,
            key: key.clone(),
            origin: v.origin,
            file: None,
        }),
        Some(Given::File {
            key,
            origin,
            path,
            content,
        }) => Some(Secret {
            value: content.trim_end_matches(['\n', '\r']).to_owned(),
            key,
            origin,
            file: Some(path),
        }),
    })
}

/// Like [`text`], for a value that must be given and not blank: `missing`
/// (what is wrong, what to do) when neither key is set, `empty_fix` when
/// the value, or the file, is blank. The value is never echoed.
pub(super) fn required_text(
    ctx: &Ctx<'_>,
    key: &KeyName,
    inline: Option<Val<String>>,
    file: Option<Val<String>>,
    missing: (&str, &str),
    empty_fix: &str,
) -> Result<String, ConfigError> {
    match text(ctx, key, inline, file)? {
        None => Err(ctx.missing(key, missing.0, missing.1)),
        Some(s) if s.value.trim().is_empty() => {
            let what = match &s.file {
                Some(f) => format!("the secret file {} is empty", f.display()),
                None => "is empty".to_owned(),
            };
            Err(ctx.invalid(&s.key, &s.origin, &what, empty_fix))
        }
        Some(s) => Ok(s.value),
    }
}

/// Resolves a list given inline or as a file of one item per line, where
/// blank lines and `#` comments are skipped.
pub(super) fn list(
    ctx: &Ctx<'_>,
    key: &KeyName,
    inline: Option<Val<Vec<Val<String>>>>,
    file: Option<Val<String>>,
) -> Result<Option<List>, ConfigError> {
    Ok(match given(ctx, key, inline, file)? {
        None => None,
        Some(Given::Inline(v)) => Some(List {
            items: v
                .value
                .into_iter()
                .enumerate()
                .map(|(i, item)| Item {
                    value: item.value,
                    place: format!("{}[{i}]", key.key),
                    origin: item.origin,
                })
                .collect(),
            key: key.clone(),
            origin: v.origin,
        }),
        Some(Given::File {
            key,
            origin,
            path,
            content,
        }) => {
            let items = content
                .lines()
                .enumerate()
                .filter_map(|(i, line)| {
                    let value = line.split('#').next().unwrap_or_default().trim();
                    (!value.is_empty()).then(|| Item {
                        value: value.to_owned(),
                        place: format!("line {} of {}", i + 1, path.display()),
                        origin: origin.clone(),
                    })
                })
                .collect();
            Some(List { items, key, origin })
        }
    })
}

/// Which of a key and its `*_file` twin gave the value; for the file, the
/// `*_file` key, where it was set, and the file it named, read.
enum Given<T> {
    Inline(Val<T>),
    File {
        key: KeyName,
        origin: Origin,
        path: PathBuf,
        content: String,
    },
}

/// Picks `inline` or `file` (both is an error) and reads the file.
fn given<T>(
    ctx: &Ctx<'_>,
    key: &KeyName,
    inline: Option<Val<T>>,
    file: Option<Val<String>>,
) -> Result<Option<Given<T>>, ConfigError> {
    let file_key = key.sibling(&format!("{}_file", key.key));
    match (inline, file) {
        (None, None) => Ok(None),
        (Some(v), None) => Ok(Some(Given::Inline(v))),
        (Some(_), Some(f)) => Err(both(ctx, key, &file_key, &f.origin)),
        (None, Some(f)) => {
            let path = read_path(ctx, &file_key, &f)?;
            let content = read(ctx, &file_key, &f, &path)?;
            Ok(Some(Given::File {
                key: file_key,
                origin: f.origin,
                path,
                content,
            }))
        }
    }
}

/// The secret file's path, relative ones taken from the config's directory.
fn read_path(ctx: &Ctx<'_>, file_key: &KeyName, f: &Val<String>) -> Result<PathBuf, ConfigError> {
    if f.value.trim().is_empty() {
        return Err(ctx.invalid(
            file_key,
            &f.origin,
            "is empty",
            "Give the path of the file holding the value",
        ));
    }
    Ok(ctx.resolve(&f.value))
}

fn read(
    ctx: &Ctx<'_>,
    file_key: &KeyName,
    f: &Val<String>,
    path: &std::path::Path,
) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
        path: ctx.path.to_path_buf(),
        key: Ctx::key_label(file_key, &f.origin),
        file: path.to_path_buf(),
        source,
    })
}

/// Both ways of giving the value are present; which one is meant is a guess
/// pitr will not make.
fn both(ctx: &Ctx<'_>, key: &KeyName, file_key: &KeyName, origin: &Origin) -> ConfigError {
    ctx.invalid(
        file_key,
        origin,
        &format!(
            "both `{}` and `{}` are set, so it is unclear which one is meant",
            key.key, file_key.key
        ),
        &format!(
            "Keep only one: `{}` inline or `{}` naming a file that holds it",
            key.key, file_key.key
        ),
    )
}

/// A command's environment given inline (`env = { A = "1" }`) or through
/// `env_file`, a file of `NAME=VALUE` lines as Docker's `--env-file` reads
/// them (blank lines and `#` comments skipped, `export ` and one pair of
/// surrounding quotes allowed), so that passwords stay out of the config.
/// Values are never quoted back in messages: they may be secrets.
pub(super) fn env_table(
    ctx: &Ctx<'_>,
    key: &KeyName,
    inline: Option<Val<toml::Table>>,
    file: Option<Val<String>>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    match given(ctx, key, inline, file)? {
        None => {}
        Some(Given::Inline(v)) => {
            for (name, value) in v.value {
                let toml::Value::String(value) = value else {
                    return Err(ctx.invalid(
                        key,
                        &v.origin,
                        &format!("the value of {name:?} is not a string"),
                        "Quote every value, e.g. env = { PGPORT = \"5432\" }",
                    ));
                };
                env_name(ctx, key, &v.origin, &name)?;
                out.push((name, value));
            }
        }
        Some(Given::File {
            key,
            origin,
            path,
            content,
        }) => {
            for (i, line) in content.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let line = line.strip_prefix("export ").unwrap_or(line);
                let Some((name, value)) = line.split_once('=') else {
                    return Err(ctx.invalid(
                        &key,
                        &origin,
                        &format!("line {} of {} is not NAME=VALUE", i + 1, path.display()),
                        "Write one NAME=VALUE per line (blank lines and # comments are skipped)",
                    ));
                };
                let value = value.trim();
                let unquoted = ['"', '\'']
                    .iter()
                    .find_map(|q| value.strip_prefix(*q)?.strip_suffix(*q))
                    .unwrap_or(value);
                env_name(ctx, &key, &origin, name.trim())?;
                out.push((name.trim().to_owned(), unquoted.to_owned()));
            }
        }
    }
    Ok(out)
}

/// A variable name a process environment can hold.
fn env_name(ctx: &Ctx<'_>, key: &KeyName, origin: &Origin, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.contains(['=', '\0']) {
        return Err(ctx.invalid(
            key,
            origin,
            &format!("{name:?} is not a variable name"),
            "Name each variable without `=` or NUL, e.g. PGPASSWORD",
        ));
    }
    Ok(())
}
