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
use super::raw::{KeyType, RawConfig, Section, Val};

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
    ty: KeyType,
}

/// A parsed override value.
enum Value {
    Str(Val<String>),
    Int(Val<i64>),
    List(Val<Vec<Val<String>>>),
    Size(Val<toml::Value>),
    Number(Val<toml::Value>),
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
        let value = parse_value(ctx, var, text, target)?;
        set(raw, target, value);
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
                    ty: spec.ty,
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
        Section::Repository
        | Section::Health
        | Section::Verify
        | Section::Retention
        | Section::Scrub
        | Section::Restore => Vec::new(),
    }
}

fn parse_value(ctx: &Ctx<'_>, var: &str, text: &str, t: &Target) -> Result<Value, ConfigError> {
    let origin = Origin::Env(var.to_owned());
    let val = |value| Val {
        value,
        origin: origin.clone(),
    };
    Ok(match t.ty {
        KeyType::Str => Value::Str(val(text.to_owned())),
        KeyType::Int => match text.trim().parse::<i64>() {
            Ok(n) => Value::Int(Val {
                value: n,
                origin: origin.clone(),
            }),
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
        KeyType::List => Value::List(Val {
            value: text
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| val(s.to_owned()))
                .collect(),
            origin: origin.clone(),
        }),
        KeyType::Number => Value::Number(Val {
            // Left as text when it is not a number: validation says so,
            // naming the variable.
            value: match (text.trim().parse::<i64>(), text.trim().parse::<f64>()) {
                (Ok(n), _) => toml::Value::Integer(n),
                (_, Ok(x)) => toml::Value::Float(x),
                _ => toml::Value::String(text.to_owned()),
            },
            origin: origin.clone(),
        }),
        KeyType::Size | KeyType::Duration => Value::Size(Val {
            value: match text.trim().parse::<i64>() {
                Ok(n) => toml::Value::Integer(n),
                Err(_) => toml::Value::String(text.to_owned()),
            },
            origin: origin.clone(),
        }),
    })
}

/// Stores `value` in the field `target` names. An override of one half of a
/// value/file pair (`conninfo` / `conninfo_file`) drops the file's other half:
/// the environment replaces how the secret is given, it does not add a
/// second way.
fn set(raw: &mut RawConfig, target: &Target, value: Value) {
    let from_file = |v: &Option<Val<String>>| {
        matches!(
            v,
            Some(Val {
                origin: Origin::File(_),
                ..
            })
        )
    };
    let key = target.key.key.as_str();
    match (target.section, value) {
        (Section::Repository, value) => {
            let r = raw.repository.get_or_insert_with(Default::default);
            match (key, value) {
                ("recipients", Value::List(v)) => {
                    if from_file(&r.recipients_file) {
                        r.recipients_file = None;
                    }
                    r.recipients = Some(v);
                }
                ("recipients_file", Value::Str(v)) => {
                    if matches!(
                        r.recipients,
                        Some(Val {
                            origin: Origin::File(_),
                            ..
                        })
                    ) {
                        r.recipients = None;
                    }
                    r.recipients_file = Some(v);
                }
                ("identity_file", Value::Str(v)) => r.identity_file = Some(v),
                ("key_file", Value::Str(v)) => r.key_file = Some(v),
                ("key_id", Value::Str(v)) => r.key_id = Some(v),
                ("state_dir", Value::Str(v)) => r.state_dir = Some(v),
                ("zstd_level", Value::Int(v)) => r.zstd_level = Some(v),
                ("pack_size", Value::Size(v)) => r.pack_size = Some(v),
                ("quorum", Value::Int(v)) => r.quorum = Some(v),
                ("spool_dir", Value::Str(v)) => r.spool_dir = Some(v),
                ("spool_max_bytes", Value::Size(v)) => r.spool_max_bytes = Some(v),
                _ => {}
            }
        }
        (Section::Health, Value::Str(v)) => {
            let h = raw.health.get_or_insert_with(Default::default);
            match key {
                "listen" => h.listen = Some(v),
                "restore_root" => h.restore_root = Some(v),
                "restore_token" => {
                    if from_file(&h.restore_token_file) {
                        h.restore_token_file = None;
                    }
                    h.restore_token = Some(v);
                }
                "restore_token_file" => {
                    if from_file(&h.restore_token) {
                        h.restore_token = None;
                    }
                    h.restore_token_file = Some(v);
                }
                _ => {}
            }
        }
        (Section::Health, Value::Size(v)) => {
            let h = raw.health.get_or_insert_with(Default::default);
            match key {
                "wal_ack_max_age" => h.wal_ack_max_age = Some(v),
                "stream_down_max" => h.stream_down_max = Some(v),
                "backup_max_age" => h.backup_max_age = Some(v),
                "destination_down_max" => h.destination_down_max = Some(v),
                "slot_retained_max" => h.slot_retained_max = Some(v),
                "verify_max_age" => h.verify_max_age = Some(v),
                _ => {}
            }
        }
        (Section::Alert, Value::Str(v)) => {
            if let Some(a) = nth(&mut raw.alert, target.index) {
                match key {
                    "kind" => a.kind = Some(v),
                    "url" => {
                        if from_file(&a.url_file) {
                            a.url_file = None;
                        }
                        a.url = Some(v);
                    }
                    "url_file" => {
                        if from_file(&a.url) {
                            a.url = None;
                        }
                        a.url_file = Some(v);
                    }
                    "smtp_url" => {
                        if from_file(&a.smtp_url_file) {
                            a.smtp_url_file = None;
                        }
                        a.smtp_url = Some(v);
                    }
                    "smtp_url_file" => {
                        if from_file(&a.smtp_url) {
                            a.smtp_url = None;
                        }
                        a.smtp_url_file = Some(v);
                    }
                    "from" => a.from = Some(v),
                    _ => {}
                }
            }
        }
        (Section::Alert, Value::List(v)) if key == "to" => {
            if let Some(a) = nth(&mut raw.alert, target.index) {
                a.to = Some(v);
            }
        }
        (Section::Alert, Value::Size(v)) if key == "renotify" => {
            if let Some(a) = nth(&mut raw.alert, target.index) {
                a.renotify = Some(v);
            }
        }
        (Section::Verify, Value::Str(v)) => {
            let r = raw.verify.get_or_insert_with(Default::default);
            match key {
                "schedule" => r.schedule = Some(v),
                "scratch_dir" => r.scratch_dir = Some(v),
                "os_user" => r.os_user = Some(v),
                _ => {}
            }
        }
        (Section::Retention, Value::Int(v)) => {
            let r = raw.retention.get_or_insert_with(Default::default);
            match key {
                "keep_last" => r.keep_last = Some(v),
                "keep_daily" => r.keep_daily = Some(v),
                "keep_weekly" => r.keep_weekly = Some(v),
                "keep_monthly" => r.keep_monthly = Some(v),
                _ => {}
            }
        }
        (Section::Retention, Value::Size(v)) if key == "gc_grace" => {
            raw.retention.get_or_insert_with(Default::default).gc_grace = Some(v);
        }
        (Section::Retention, Value::Str(v)) if key == "schedule" => {
            raw.retention.get_or_insert_with(Default::default).schedule = Some(v);
        }
        (Section::Restore, Value::List(v)) if key == "bin_dirs" => {
            raw.restore.get_or_insert_with(Default::default).bin_dirs = Some(v);
        }
        (Section::Scrub, Value::Str(v)) if key == "schedule" => {
            raw.scrub.get_or_insert_with(Default::default).schedule = Some(v);
        }
        (Section::Scrub, Value::Size(v)) if key == "read_budget" => {
            raw.scrub.get_or_insert_with(Default::default).read_budget = Some(v);
        }
        (Section::Destination, Value::Str(v)) => {
            if let Some(d) = nth(&mut raw.destination, target.index) {
                match key {
                    "kind" => d.kind = Some(v),
                    "path" => d.path = Some(v),
                    "bucket" => d.bucket = Some(v),
                    "prefix" => d.prefix = Some(v),
                    "region" => d.region = Some(v),
                    "endpoint" => d.endpoint = Some(v),
                    "access_key_id" => d.access_key_id = Some(v),
                    "secret_access_key" => {
                        if from_file(&d.secret_access_key_file) {
                            d.secret_access_key_file = None;
                        }
                        d.secret_access_key = Some(v);
                    }
                    "secret_access_key_file" => {
                        if from_file(&d.secret_access_key) {
                            d.secret_access_key = None;
                        }
                        d.secret_access_key_file = Some(v);
                    }
                    "space" => d.space = Some(v),
                    "service" => d.service = Some(v),
                    "service_did" => d.service_did = Some(v),
                    "gateway" => d.gateway = Some(v),
                    "principal" => {
                        if from_file(&d.principal_file) {
                            d.principal_file = None;
                        }
                        d.principal = Some(v);
                    }
                    "principal_file" => {
                        if from_file(&d.principal) {
                            d.principal = None;
                        }
                        d.principal_file = Some(v);
                    }
                    "proof" => {
                        if from_file(&d.proof_file) {
                            d.proof_file = None;
                        }
                        d.proof = Some(v);
                    }
                    "proof_file" => {
                        if from_file(&d.proof) {
                            d.proof = None;
                        }
                        d.proof_file = Some(v);
                    }
                    _ => {}
                }
            }
        }
        (Section::Destination, Value::Size(v)) if key == "batch_interval" => {
            if let Some(d) = nth(&mut raw.destination, target.index) {
                d.batch_interval = Some(v);
            }
        }
        (Section::Destination, Value::Int(v)) if key == "request_timeout" => {
            if let Some(d) = nth(&mut raw.destination, target.index) {
                d.request_timeout = Some(v);
            }
        }
        (Section::Postgres, Value::Number(v)) if key == "base_backup_wal_gb" => {
            if let Some(p) = nth(&mut raw.postgres, target.index) {
                p.base_backup_wal_gb = Some(v);
            }
        }
        (Section::Postgres, Value::Number(v)) if key == "allow_insecure_password" => {
            if let Some(p) = nth(&mut raw.postgres, target.index) {
                p.allow_insecure_password = Some(v);
            }
        }
        (Section::Postgres, Value::Int(v)) if key == "max_rate" => {
            if let Some(p) = nth(&mut raw.postgres, target.index) {
                p.max_rate = Some(v);
            }
        }
        (Section::Postgres, Value::Int(v)) if key == "incremental_max_chain" => {
            if let Some(p) = nth(&mut raw.postgres, target.index) {
                p.incremental_max_chain = Some(v);
            }
        }
        (Section::Postgres, Value::Str(v)) => {
            if let Some(p) = nth(&mut raw.postgres, target.index) {
                match key {
                    "conninfo" => {
                        if from_file(&p.conninfo_file) {
                            p.conninfo_file = None;
                        }
                        p.conninfo = Some(v);
                    }
                    "conninfo_file" => {
                        if from_file(&p.conninfo) {
                            p.conninfo = None;
                        }
                        p.conninfo_file = Some(v);
                    }
                    "slot" => p.slot = Some(v),
                    "base_backup" => p.base_backup = Some(v),
                    "checkpoint" => p.checkpoint = Some(v),
                    "manifest_checksums" => p.manifest_checksums = Some(v),
                    _ => {}
                }
            }
        }
        (Section::Sqlite, Value::Str(v)) if key == "path" => {
            if let Some(s) = nth(&mut raw.sqlite, target.index) {
                s.path = Some(v);
            }
        }
        (Section::Sqlite, Value::Size(v)) => {
            if let Some(s) = nth(&mut raw.sqlite, target.index) {
                match key {
                    "interval" => s.interval = Some(v),
                    "snapshot_interval" => s.snapshot_interval = Some(v),
                    _ => {}
                }
            }
        }
        // `targets` builds only the combinations handled above.
        _ => {}
    }
}

fn nth<T>(entries: &mut Option<Vec<T>>, index: Option<usize>) -> Option<&mut T> {
    entries.as_mut()?.get_mut(index?)
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
