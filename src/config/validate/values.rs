//! Value checks more than one section uses: sizes, durations, paths,
//! cron schedules, entry names, http(s) URLs and a server's TLS files.

use std::collections::HashMap;
use std::time::Duration;

use super::super::error::{ConfigError, Ctx, Entry, KeyName};
use super::super::raw::{Keys, Section, Slot, Val};
use crate::cron::CronSchedule;

pub(super) const MIB: u64 = 1024 * 1024;
pub(super) const GIB: u64 = 1024 * MIB;
/// `"16MiB"`, `"512 KiB"`, `"1G"`, `"1048576"`: binary units, since pack
/// sizes are about memory and files, not marketing.
pub(super) fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1024,
        "m" | "mib" => MIB,
        "g" | "gib" => 1024 * MIB,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// A size value's bytes: a whole number of bytes, or a string with a unit
/// (see [`parse_size`]); `None` for anything else.
pub(super) fn size_bytes(v: &toml::Value) -> Option<u64> {
    match v {
        toml::Value::Integer(n) => u64::try_from(*n).ok(),
        toml::Value::String(s) => parse_size(s),
        _ => None,
    }
}

/// A size value of at least `min` bytes (a whole number of MiB), or an
/// error with `fix`.
pub(super) fn size_at_least(
    ctx: &Ctx<'_>,
    key: &KeyName,
    v: &Val<toml::Value>,
    min: u64,
    fix: &str,
) -> Result<u64, ConfigError> {
    match size_bytes(&v.value) {
        Some(b) if b >= min => Ok(b),
        _ => Err(ctx.invalid(
            key,
            &v.origin,
            &format!("{} is not a size of at least {} MiB", v.value, min / MIB),
            fix,
        )),
    }
}

/// A value as messages quote it: a string in quotes, anything else as TOML.
pub(super) fn shown(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// An integer value that fits `T` and lies in `range`, or an error that it
/// is out of range, with `fix`.
pub(super) fn int_in<T>(
    ctx: &Ctx<'_>,
    key: &KeyName,
    v: &Val<i64>,
    range: std::ops::RangeInclusive<T>,
    fix: &str,
) -> Result<T, ConfigError>
where
    T: TryFrom<i64> + PartialOrd,
{
    match T::try_from(v.value) {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(ctx.invalid(key, &v.origin, &format!("{} is out of range", v.value), fix)),
    }
}

/// The first of `keys` (name, whether it is set) that is set: a key that
/// does not belong where it was written.
pub(super) fn first_set<const N: usize>(keys: [(&'static str, bool); N]) -> Option<&'static str> {
    keys.into_iter().find(|(_, set)| *set).map(|(k, _)| k)
}

/// A path value: non-empty, relative ones resolved against the config file's
/// directory.
pub(super) fn path(
    ctx: &Ctx<'_>,
    key: &KeyName,
    v: &Val<String>,
) -> Result<std::path::PathBuf, ConfigError> {
    if v.value.trim().is_empty() {
        let example = key.section.key(&key.key).map_or("", |s| s.example);
        return Err(ctx.invalid(
            key,
            &v.origin,
            "is empty",
            &format!("Give a path, e.g. {example}"),
        ));
    }
    Ok(ctx.resolve(&v.value))
}

/// Validates the entries of a list section (`[[postgres]]`, `[[sqlite]]`,
/// ...) in order: each one's name is checked first ([`entry_name`]), then
/// `one` builds the entry from it, with `key` naming the entry's keys in
/// errors. The first error ends the validation.
pub(super) fn each_entry<R: Keys, T>(
    ctx: &Ctx<'_>,
    section: Section,
    raw: Vec<R>,
    mut one: impl FnMut(&dyn Fn(&str) -> KeyName, String, R) -> Result<T, ConfigError>,
) -> Result<Vec<T>, ConfigError> {
    let mut seen = HashMap::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, mut r) in raw.into_iter().enumerate() {
        let name = match r.slot("name") {
            Some(Slot::Str(v)) => v.take(),
            _ => None,
        };
        let (entry, name) = entry_name(ctx, section, i, name, &mut seen)?;
        out.push(one(&|k| KeyName::entry(section, &entry, k), name, r)?);
    }
    Ok(out)
}

/// Checks entry `index`'s name: present, well-formed, and not taken by an
/// earlier entry of the section (`seen`). Names end up in variable names,
/// object names and messages, hence the small alphabet.
fn entry_name(
    ctx: &Ctx<'_>,
    section: Section,
    index: usize,
    name: Option<Val<String>>,
    seen: &mut HashMap<String, usize>,
) -> Result<(Entry, String), ConfigError> {
    let at_index = KeyName::entry(section, &Entry::Index(index), "name");
    let example = section.key("name").map_or("", |s| s.example);
    let Some(name) = name else {
        return Err(ctx.missing(
            &at_index,
            &format!("this {} entry has no name", section.header()),
            &format!("Add a unique name, e.g. {example}"),
        ));
    };
    let well_formed = !name.value.is_empty()
        && name
            .value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !well_formed {
        return Err(ctx.invalid(
            &at_index,
            &name.origin,
            &format!("{:?} is not a valid name", name.value),
            "Use only lowercase letters a-z, digits, `_` and `-`",
        ));
    }
    let entry = Entry::Named(name.value.clone());
    if let Some(first) = seen.insert(name.value.clone(), index) {
        return Err(ctx.invalid(
            &KeyName::entry(section, &entry, "name"),
            &name.origin,
            &format!(
                "the name {:?} is already used by {} #{}",
                name.value,
                section.header(),
                first + 1
            ),
            &format!("Give each {} entry a unique name", section.header()),
        ));
    }
    Ok((entry, name.value))
}

/// Parses a cron schedule (`"off"` for none), so that a bad one stops the
/// sidecar at load rather than at 3 AM.
pub(super) fn cron(
    ctx: &Ctx<'_>,
    key: &KeyName,
    v: Val<String>,
) -> Result<Option<CronSchedule>, ConfigError> {
    if v.value.trim() == "off" {
        return Ok(None);
    }
    CronSchedule::parse(&v.value).map(Some).map_err(|e| {
        ctx.invalid(
            key,
            &v.origin,
            &format!("{:?} is not a cron schedule ({e})", v.value),
            "Give five fields (minute hour day-of-month month day-of-week, UTC), e.g. \"0 3 * * *\" for 03:00 daily, or six with seconds first; \"off\" takes no scheduled backups",
        )
    })
}

/// A `true`/`false` key (or that text from the environment); `None` unset
/// means false.
pub(super) fn boolean(
    ctx: &Ctx<'_>,
    key: &KeyName,
    v: Option<Val<toml::Value>>,
    fix: &str,
) -> Result<bool, ConfigError> {
    let Some(v) = v else { return Ok(false) };
    match &v.value {
        toml::Value::Boolean(b) => Ok(*b),
        toml::Value::String(t) if t.trim() == "true" => Ok(true),
        toml::Value::String(t) if t.trim() == "false" => Ok(false),
        other => Err(ctx.invalid(
            key,
            &v.origin,
            &format!("{other} is not true or false"),
            fix,
        )),
    }
}

/// A duration value: whole seconds as an integer, or a string with a unit
/// (`ms`, `s`, `m`, `h`, `d`), within `range`.
pub(super) fn duration(
    ctx: &Ctx<'_>,
    key: &KeyName,
    v: &Val<toml::Value>,
    range: std::ops::RangeInclusive<Duration>,
    example: &str,
) -> Result<Duration, ConfigError> {
    let show = |d: &Duration| humantime(*d);
    let fix = format!(
        "Give a duration from {} to {}, as seconds (1) or with a unit (\"{example}\", \"500ms\", \"2m\", \"24h\")",
        show(range.start()),
        show(range.end())
    );
    let parsed = match &v.value {
        toml::Value::Integer(n) => u64::try_from(*n).ok().map(Duration::from_secs),
        toml::Value::String(s) => parse_duration(s),
        _ => None,
    };
    let shown = shown(&v.value);
    match parsed {
        None => Err(ctx.invalid(key, &v.origin, &format!("{shown} is not a duration"), &fix)),
        Some(d) if !range.contains(&d) => {
            Err(ctx.invalid(key, &v.origin, &format!("{shown} is out of range"), &fix))
        }
        Some(d) => Ok(d),
    }
}

/// `"500ms"`, `"1s"`, `"2m"`, `"24h"`, `"7d"`, `"30"` (seconds): the
/// durations of the config, which command-line flags take in the same form.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    let n: u64 = number.parse().ok()?;
    let ms: u64 = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(ms).map(Duration::from_millis)
}

pub(super) fn humantime(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 86_400_000 == 0 {
        format!("{} d", ms / 86_400_000)
    } else if ms % 3_600_000 == 0 {
        format!("{} h", ms / 3_600_000)
    } else if ms % 1000 == 0 {
        format!("{} s", ms / 1000)
    } else {
        format!("{ms} ms")
    }
}

/// An http(s) URL without a trailing slash, or a config error naming `k`.
pub(super) fn http_url(
    ctx: &Ctx<'_>,
    key: &KeyName,
    v: Option<Val<String>>,
    default: &str,
    example: &str,
) -> Result<String, ConfigError> {
    let Some(v) = v else {
        return Ok(default.to_owned());
    };
    let ok = (v.value.starts_with("http://") || v.value.starts_with("https://"))
        && v.value.len() > "https://".len()
        && !v.value.contains(char::is_whitespace);
    if !ok {
        return Err(ctx.invalid(
            key,
            &v.origin,
            &format!("{:?} is not an http(s) URL", v.value),
            example,
        ));
    }
    Ok(v.value.trim_end_matches('/').to_owned())
}

/// A server's `{prefix}tls_cert_file` and `{prefix}tls_key_file` in
/// `section`: both (it serves https) or neither (plain http).
pub(super) fn tls_files(
    ctx: &Ctx<'_>,
    section: Section,
    prefix: &str,
    cert: Option<Val<String>>,
    key: Option<Val<String>>,
) -> Result<Option<super::super::TlsFiles>, ConfigError> {
    let (cert_key, key_key) = (
        format!("{prefix}tls_cert_file"),
        format!("{prefix}tls_key_file"),
    );
    let name = |k: &str| KeyName::plain(section, k);
    let alone = |given: &str, v: &Val<String>| {
        ctx.invalid(
            &name(given),
            &v.origin,
            &format!("is given alone: the server needs {cert_key} and {key_key} to serve https"),
            &format!(
                "Set both: {cert_key} = \"/etc/pitr/server.crt\" (the chain, PEM, leaf first) and {key_key} = \"/etc/pitr/server.key\" (PEM); or neither, for plain http (behind a TLS proxy, or on a trusted network)"
            ),
        )
    };
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(c), Some(k)) => Ok(Some(super::super::TlsFiles {
            cert_file: path(ctx, &name(&cert_key), &c)?,
            key_file: path(ctx, &name(&key_key), &k)?,
        })),
        (Some(v), None) => Err(alone(&cert_key, &v)),
        (None, Some(v)) => Err(alone(&key_key, &v)),
    }
}
