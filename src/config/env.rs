//! Environment overrides: `PITR_<SECTION>_<KEY>` for plain sections and
//! `PITR_<SECTION>_<NAME>_<KEY>` for entries of array sections, where NAME is
//! the entry's name uppercased with `-` as `_`. An override replaces the
//! file's value; it can address only entries the file declares, because the
//! name is what identifies them.
//!
//! A `PITR_` variable that matches no key is an error: a misspelt override
//! silently ignored would leave the sidecar running with the value the
//! operator meant to replace.

use std::collections::{BTreeMap, HashMap};

use super::error::{ConfigError, Ctx, Entry, KeyName, Origin, closest};
use super::raw::{RawConfig, Section, Slot, Val};

/// Variables the CLI reads itself; they are not config keys.
const NOT_CONFIG: &[&str] = &["PITR_CONFIG", "PITR_LOG", "PITR_LOG_FORMAT"];
/// Prefix reserved for test harnesses.
const TEST_PREFIX: &str = "PITR_TEST_";
/// Prefix of every override.
const PREFIX: &str = "PITR_";

/// A key an override can set.
#[derive(Debug, Clone)]
struct Target {
    section: Section,
    /// Entry position for array sections.
    index: Option<usize>,
    key: KeyName,
}

/// Whether a variable is meant as a config override (all `PITR_*` but the
/// CLI's own and the test harness's).
pub(super) fn is_override(name: &str) -> bool {
    name.starts_with(PREFIX) && !name.starts_with(TEST_PREFIX) && !NOT_CONFIG.contains(&name)
}

/// How an entry name appears in a variable name.
pub(super) fn env_name(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

/// Applies every `PITR_*` variable in `env` to `raw`. Later duplicates of a
/// variable win, as in a process environment.
pub(super) fn apply(
    ctx: &Ctx<'_>,
    raw: &mut RawConfig,
    env: &[(String, String)],
) -> Result<(), ConfigError> {
    // Sorted, so that the first error reported does not depend on the order
    // the environment happens to list variables in.
    let vars: BTreeMap<&str, &str> = env
        .iter()
        .filter(|(k, _)| is_override(k))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if vars.is_empty() {
        return Ok(());
    }
    let targets = targets(raw);
    for (var, text) in vars {
        let target = match targets.get(var).map(Vec::as_slice) {
            Some([one]) => one,
            Some(many) => return Err(ambiguous(ctx, var, many)),
            None => return Err(unknown(ctx, raw, var, &targets)),
        };
        store(ctx, raw, var, text, target)?;
    }
    Ok(())
}

/// Every variable name that addresses a key of this file, with what it sets.
fn targets(raw: &RawConfig) -> HashMap<String, Vec<Target>> {
    let mut out: HashMap<String, Vec<Target>> = HashMap::new();
    for section in Section::ALL {
        let entries: Vec<(Option<usize>, Entry, String)> = if section.is_array() {
            entry_names(raw, section)
                .into_iter()
                .enumerate()
                .filter_map(|(i, name)| {
                    let name = name?;
                    let infix = format!("{}_", env_name(&name));
                    Some((Some(i), Entry::Named(name), infix))
                })
                .collect()
        } else {
            vec![(None, Entry::None, String::new())]
        };
        for (index, entry, infix) in entries {
            // An entry's name is how variables find it; it cannot be renamed
            // from the environment.
            for spec in section.keys().iter().filter(|k| k.name != "name") {
                let var = format!(
                    "{PREFIX}{}_{infix}{}",
                    section.name().to_ascii_uppercase(),
                    spec.name.to_ascii_uppercase()
                );
                out.entry(var).or_default().push(Target {
                    section,
                    index,
                    key: KeyName::entry(section, &entry, spec.name),
                });
            }
        }
    }
    out
}

/// The `name` of each entry of an array section, as written in the file.
fn entry_names(raw: &RawConfig, section: Section) -> Vec<Option<String>> {
    fn names<T>(v: &Option<Vec<T>>, f: impl Fn(&T) -> &Option<Val<String>>) -> Vec<Option<String>> {
        v.iter()
            .flatten()
            .map(|e| f(e).as_ref().map(|n| n.value.clone()))
            .collect()
    }
    match section {
        Section::Destination => names(&raw.destination, |e| &e.name),
        Section::Postgres => names(&raw.postgres, |e| &e.name),
        Section::Sqlite => names(&raw.sqlite, |e| &e.name),
        Section::Alert => names(&raw.alert, |e| &e.name),
        Section::Command => names(&raw.command, |e| &e.name),
        Section::Infisical => names(&raw.infisical, |e| &e.name),
        Section::Repository
        | Section::Health
        | Section::Verify
        | Section::Retention
        | Section::Scrub
        | Section::Restore => Vec::new(),
    }
}

/// Stores the override `text` in the key `target` names, parsed by the key's
/// type. An override of one half of a value/file pair (`conninfo` /
/// `conninfo_file`) drops the file's other half: the environment replaces
/// how the secret is given, it does not add a second way.
fn store(
    ctx: &Ctx<'_>,
    raw: &mut RawConfig,
    var: &str,
    text: &str,
    t: &Target,
) -> Result<(), ConfigError> {
    fn val<T>(value: T, var: &str) -> Val<T> {
        Val {
            value,
            origin: Origin::Env(var.to_owned()),
        }
    }
    // `targets` made a target only for an existing entry and a key of the
    // section's table, so both are found; failing that, the override would
    // be lost, and that must not pass silently.
    let lost = || {
        ctx.env(
            var,
            &t.key,
            "has no field to go into (a bug in pitr)",
            "Report it",
        )
    };
    let keys = raw.keys_mut(t.section, t.index).ok_or_else(lost)?;
    if let Some(other) = paired_key(t.section, &t.key.key)
        && let Some(slot) = keys.slot(other)
        && matches!(slot.origin(), Some(Origin::File(_)))
    {
        slot.clear();
    }
    match keys.slot(&t.key.key).ok_or_else(lost)? {
        Slot::Str(f) => *f = Some(val(text.to_owned(), var)),
        Slot::Int(f) => match text.trim().parse::<i64>() {
            Ok(n) => *f = Some(val(n, var)),
            Err(_) => {
                let example = t.section.key(&t.key.key).map_or("", |s| s.example);
                return Err(ctx.env(
                    var,
                    &t.key,
                    &format!("{text:?} is not a whole number"),
                    &format!("Set it to an integer (as in `{example}`)"),
                ));
            }
        },
        Slot::List(f) => {
            *f = Some(val(
                text.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| val(s.to_owned(), var))
                    .collect(),
                var,
            ))
        }
        // Left as text when it is not a number: validation says so, naming
        // the variable.
        Slot::Number(f) => {
            *f = Some(val(
                match (text.trim().parse::<i64>(), text.trim().parse::<f64>()) {
                    (Ok(n), _) => toml::Value::Integer(n),
                    (_, Ok(x)) => toml::Value::Float(x),
                    _ => toml::Value::String(text.to_owned()),
                },
                var,
            ))
        }
        Slot::Size(f) | Slot::Duration(f) => {
            *f = Some(val(
                match text.trim().parse::<i64>() {
                    Ok(n) => toml::Value::Integer(n),
                    Err(_) => toml::Value::String(text.to_owned()),
                },
                var,
            ))
        }
        // `A=1,B=2`: the same comma-separated form lists take; a value
        // with a comma goes into `env_file` instead.
        Slot::Table(f) => {
            let mut table = toml::Table::new();
            for pair in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let Some((k, v)) = pair.split_once('=') else {
                    return Err(ctx.env(
                        var,
                        &t.key,
                        &format!("{pair:?} is not NAME=VALUE"),
                        "Set it to comma-separated NAME=VALUE pairs (A=1,B=2); a value holding a comma cannot be given this way (write it in the file)",
                    ));
                };
                table.insert(k.trim().to_owned(), toml::Value::String(v.to_owned()));
            }
            *f = Some(val(table, var))
        }
    }
    Ok(())
}

/// The other half of a value/file pair: `x` and `x_file` when the section
/// has both, the naming `secrets` resolves pairs by.
pub(super) fn paired_key(section: Section, key: &str) -> Option<&'static str> {
    let other = match key.strip_suffix("_file") {
        Some(inline) => inline.to_owned(),
        None => format!("{key}_file"),
    };
    section.key(&other).map(|spec| spec.name)
}

fn ambiguous(ctx: &Ctx<'_>, var: &str, many: &[Target]) -> ConfigError {
    let keys: Vec<String> = many.iter().map(|t| format!("`{}`", t.key)).collect();
    ConfigError::Env {
        var: var.to_owned(),
        message: format!(
            "matches more than one key of {}: {}, because their names differ only in `-` versus `_`. Rename one of the entries",
            ctx.path.display(),
            keys.join(" and ")
        ),
    }
}

fn unknown(
    ctx: &Ctx<'_>,
    raw: &RawConfig,
    var: &str,
    targets: &HashMap<String, Vec<Target>>,
) -> ConfigError {
    let hint = closest(var, targets.keys().map(String::as_str))
        .map(|s| format!(" Did you mean {s}?"))
        .unwrap_or_default();
    let mut lines = Vec::new();
    for section in Section::ALL {
        let upper = section.name().to_ascii_uppercase();
        if section.is_array() {
            let names: Vec<String> = entry_names(raw, section)
                .into_iter()
                .flatten()
                .map(|n| format!("{n:?} → PITR_{upper}_{}_<KEY>", env_name(&n)))
                .collect();
            if var.starts_with(&format!("{PREFIX}{upper}_")) {
                let have = if names.is_empty() {
                    format!("the file has no {} entries", section.header())
                } else {
                    format!(
                        "the file's {} entries: {}",
                        section.header(),
                        names.join(", ")
                    )
                };
                lines.push(format!(
                    "{} entries are addressed as PITR_{upper}_<NAME>_<KEY>, NAME being the entry's name uppercased with `-` as `_` ({have}); KEY is one of {}",
                    section.header(),
                    override_keys(section)
                ));
            }
        } else if var.starts_with(&format!("{PREFIX}{upper}_")) {
            lines.push(format!(
                "Keys of {} are: {}",
                section.header(),
                override_keys(section)
            ));
        }
    }
    if lines.is_empty() {
        let sections: Vec<String> = Section::ALL
            .iter()
            .map(|s| s.name().to_ascii_uppercase())
            .collect();
        lines.push(format!(
            "Variables are named PITR_<SECTION>_<KEY> with SECTION one of {}",
            sections.join(", ")
        ));
    }
    ConfigError::Env {
        var: var.to_owned(),
        message: format!(
            "matches no key of {} (a typo would otherwise be silently ignored).{hint} {}. Fix the name or unset it ({} and {TEST_PREFIX}* are not config keys and are ignored)",
            ctx.path.display(),
            lines.join("; "),
            NOT_CONFIG.join(", ")
        ),
    }
}

/// The keys of `section` a variable can set, uppercased as in the variable.
fn override_keys(section: Section) -> String {
    let keys: Vec<String> = section
        .keys()
        .iter()
        .filter(|k| k.name != "name")
        .map(|k| k.name.to_ascii_uppercase())
        .collect();
    keys.join(", ")
}
