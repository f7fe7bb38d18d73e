//! `PITR_*` overrides: precedence, bad values, unknown variables.

use super::*;
use crate::config::env as overrides;
use crate::config::error::Origin;

#[test]
fn env_overrides_win() {
    let r = recipient();
    let (r2, r3) = (recipient(), recipient());
    let text = format!(
        "{}[[postgres]]\nname = \"main-db\"\nconninfo = \"host=file\"\n[[sqlite]]\nname = \"auth\"\npath = \"/file.db\"\n",
        minimal(&r)
    );
    let list = format!("{r2}, {r3}");
    let c = load(
        &text,
        &[
            ("PITR_REPOSITORY_STATE_DIR", "/env/state"),
            ("PITR_REPOSITORY_ZSTD_LEVEL", "9"),
            ("PITR_REPOSITORY_PACK_SIZE", "8MiB"),
            ("PITR_REPOSITORY_RECIPIENTS", &list),
            ("PITR_DESTINATION_LOCAL_PATH", "/env/repo"),
            ("PITR_POSTGRES_MAIN_DB_CONNINFO", "host=env"),
            ("PITR_POSTGRES_MAIN_DB_SLOT", "from_env"),
            ("PITR_SQLITE_AUTH_PATH", "/env.db"),
            ("PITR_HEALTH_LISTEN", "127.0.0.1:9000"),
        ],
    )
    .expect("valid config");
    assert_eq!(c.repository.state_dir, PathBuf::from("/env/state"));
    assert_eq!(c.repository.zstd_level, 9);
    assert_eq!(c.repository.pack_size, 8 * 1024 * 1024);
    assert_eq!(recipient_strings(&c), [r2, r3]);
    assert_eq!(
        c.destinations[0].kind,
        DestinationKind::Fs {
            path: "/env/repo".into()
        }
    );
    assert_eq!(c.postgres[0].conninfo, "host=env");
    assert_eq!(c.postgres[0].slot, "from_env");
    assert_eq!(c.sqlite[0].path, PathBuf::from("/env.db"));
    assert_eq!(
        c.health.listen,
        Some("127.0.0.1:9000".parse().expect("addr"))
    );
}

#[test]
fn env_can_supply_what_the_file_lacks() {
    let text = "[[destination]]\nname = \"local\"\nkind = \"fs\"\npath = \"/r\"\n";
    let r = recipient();
    let c = load(
        text,
        &[
            ("PITR_REPOSITORY_RECIPIENTS", &r),
            ("PITR_REPOSITORY_STATE_DIR", "/s"),
        ],
    )
    .expect("valid");
    assert_eq!(c.repository.recipients[0].to_string(), r);
}

/// Loads the minimal config (recipient `r`) with `var` set to `value`,
/// which must be an error blamed on `var` whose message contains every one
/// of `parts`.
#[track_caller]
fn env_refused(r: &str, var: &str, value: &str, parts: &[&str]) {
    let (e, msg) = fail(&minimal(r), &[(var, value)]);
    assert!(
        matches!(&e, ConfigError::Env { var: v, .. } if v == var),
        "{var}={value:?}: {e:?}"
    );
    contains_all(&msg, parts);
}

#[test]
fn bad_env_override_names_the_variable() {
    let r = recipient();
    let cases: [(&str, &str, &[&str]); 3] = [
        (
            "PITR_REPOSITORY_ZSTD_LEVEL",
            "abc",
            &[
                "PITR_REPOSITORY_ZSTD_LEVEL",
                "\"abc\" is not a whole number",
                "overrides `[repository] zstd_level` from /etc/pitr/pitr.toml",
            ],
        ),
        // A value that parses but fails validation is still blamed on the
        // variable.
        (
            "PITR_REPOSITORY_ZSTD_LEVEL",
            "42",
            &[
                "42 is out of range",
                "overrides `[repository] zstd_level`",
                PATH,
            ],
        ),
        (
            "PITR_REPOSITORY_RECIPIENTS",
            "age1bad",
            &[
                "recipients[0] \"age1bad\"",
                "overrides `[repository] recipients`",
            ],
        ),
    ];
    // A failing case shows its message, and every message names the variable.
    for (var, value, parts) in cases {
        env_refused(&r, var, value, parts);
    }
}

#[test]
fn unknown_pitr_variable_is_an_error() {
    let r = recipient();
    env_refused(
        &r,
        "PITR_REPOSITORY_ZSTD_LEVLE",
        "3",
        &[
            "PITR_REPOSITORY_ZSTD_LEVLE",
            "matches no key",
            PATH,
            "Did you mean PITR_REPOSITORY_ZSTD_LEVEL?",
        ],
    );

    let (_, msg) = fail(&minimal(&r), &[("PITR_DESTINATION_REMOTE_PATH", "/x")]);
    contains_all(
        &msg,
        &[
            "PITR_DESTINATION_REMOTE_PATH",
            "PITR_DESTINATION_<NAME>_<KEY>",
            "\"local\" → PITR_DESTINATION_LOCAL_<KEY>",
        ],
    );

    // Names are not overridable: they are how variables find entries.
    let (_, msg) = fail(&minimal(&r), &[("PITR_DESTINATION_LOCAL_NAME", "x")]);
    contains_all(&msg, &["PITR_DESTINATION_LOCAL_NAME", "matches no key"]);

    // The CLI's own variables and the test harness's are not config keys.
    load(
        &minimal(&r),
        &[
            ("PITR_CONFIG", "/x"),
            ("PITR_LOG", "debug"),
            ("PITR_LOG_FORMAT", "json"),
            ("PITR_TEST_PG_BIN", "/usr/lib"),
            ("OTHER", "1"),
        ],
    )
    .expect("non-config variables are ignored");
}

#[test]
fn ambiguous_env_names_are_refused() {
    let text = format!(
        "{}[[destination]]\nname = \"local-2\"\nkind = \"fs\"\npath = \"/a\"\n[[destination]]\nname = \"local_2\"\nkind = \"fs\"\npath = \"/b\"\n",
        minimal(&recipient())
    );
    load(&text, &[]).expect("distinct names are fine without overrides");
    let (_, msg) = fail(&text, &[("PITR_DESTINATION_LOCAL_2_PATH", "/c")]);
    contains_all(
        &msg,
        &[
            "PITR_DESTINATION_LOCAL_2_PATH",
            "more than one key",
            "\"local-2\"",
            "\"local_2\"",
        ],
    );
}

#[test]
fn env_value_replaces_the_files_secret_file() {
    let text = format!(
        "{}[[postgres]]\nname = \"main\"\nconninfo_file = \"/nonexistent\"\n",
        minimal(&recipient())
    );
    let c =
        load(&text, &[("PITR_POSTGRES_MAIN_CONNINFO", "host=env")]).expect("env replaces the file");
    assert_eq!(c.postgres[0].conninfo, "host=env");
}

/// An override's text and the raw value it must become, per key type.
fn override_for(ty: KeyType) -> (&'static str, toml::Value) {
    use toml::Value;
    match ty {
        KeyType::Str => ("from-env", Value::String("from-env".into())),
        KeyType::Int => ("42", Value::Integer(42)),
        KeyType::List => (
            "a, b",
            Value::Array(vec![Value::String("a".into()), Value::String("b".into())]),
        ),
        KeyType::Size => ("8MiB", Value::String("8MiB".into())),
        KeyType::Number => ("2.5", Value::Float(2.5)),
        KeyType::Duration => ("5m", Value::String("5m".into())),
        KeyType::Table => (
            "a=1, b = 2",
            Value::Table(toml::Table::from_iter([
                ("a".to_owned(), Value::String("1".into())),
                ("b".to_owned(), Value::String("2".into())),
            ])),
        ),
    }
}

/// A slot's value as TOML, and its origin (and, for a list, its items'
/// origins, which messages about one item point at).
fn slot_value(slot: raw::Slot<'_>) -> Option<(toml::Value, Vec<Origin>)> {
    use raw::Slot;
    Some(match slot {
        Slot::Str(v) => {
            let v = v.as_ref()?;
            (toml::Value::String(v.value.clone()), vec![v.origin.clone()])
        }
        Slot::Int(v) => {
            let v = v.as_ref()?;
            (toml::Value::Integer(v.value), vec![v.origin.clone()])
        }
        Slot::List(v) => {
            let v = v.as_ref()?;
            let items = v.value.iter().map(|i| toml::Value::String(i.value.clone()));
            let origins =
                std::iter::once(v.origin.clone()).chain(v.value.iter().map(|i| i.origin.clone()));
            (toml::Value::Array(items.collect()), origins.collect())
        }
        Slot::Size(v) | Slot::Number(v) | Slot::Duration(v) | Slot::Table(v) => {
            let v = v.as_ref()?;
            (v.value.clone(), vec![v.origin.clone()])
        }
    })
}

/// Parses `text` and applies `vars`, as loading does before validation.
fn raw_with_env(text: &str, vars: &[(&str, &str)]) -> Result<raw::RawConfig, ConfigError> {
    let ctx = Ctx {
        path: Path::new(PATH),
        text,
        base: Path::new("/etc/pitr"),
    };
    let mut raw = raw::parse(&ctx)?;
    overrides::apply(&ctx, &mut raw, &env(vars))?;
    Ok(raw)
}

/// Every key of the key table (but entry names, which are how variables
/// find entries) can be set from the environment: `PITR_<SECTION>_<KEY>`,
/// or `PITR_<SECTION>_<NAME>_<KEY>` on the second of two declared entries.
/// The override replaces the file's value, leaves the other entry alone,
/// and drops the file's other half of a value/file pair (`conninfo` /
/// `conninfo_file`). The keys come from the table, so a key added there is
/// covered here without a change, and fails here if the environment cannot
/// set it.
///
/// Checks the raw layer (the values validation receives), not `Config`:
/// which `Config` field a key ends up in depends on other keys (an s3 key is
/// an error on an fs destination), so no generic check of the final config
/// is practical. `env_overrides_win` checks final values for common keys.
#[test]
fn every_key_can_be_set_from_the_environment() {
    let mut checked = 0;
    for section in Section::ALL {
        let upper = section.name().to_ascii_uppercase();
        for spec in section.keys().iter().filter(|k| k.name != "name") {
            let file_value = match spec.ty {
                KeyType::Str => "\"from-file\"",
                KeyType::Int | KeyType::Size | KeyType::Number | KeyType::Duration => "1",
                KeyType::List => "[\"from-file\"]",
                KeyType::Table => "{ from = \"file\" }",
            };
            let pair = overrides::paired_key(section, spec.name);
            let mut keys = format!("{} = {file_value}\n", spec.name);
            if let Some(other) = pair {
                let ty = section.key(other).map(|s| s.ty);
                let other_value = if ty == Some(KeyType::List) {
                    "[\"from-file\"]"
                } else {
                    "\"from-file\""
                };
                keys.push_str(&format!("{other} = {other_value}\n"));
            }
            let (text, var, index) = if section.is_array() {
                let header = section.header();
                (
                    format!(
                        "{header}\nname = \"first\"\n{keys}{header}\nname = \"the-entry\"\n{keys}"
                    ),
                    format!("PITR_{upper}_THE_ENTRY_{}", spec.name.to_ascii_uppercase()),
                    Some(1),
                )
            } else {
                (
                    format!("{}\n{keys}", section.header()),
                    format!("PITR_{upper}_{}", spec.name.to_ascii_uppercase()),
                    None,
                )
            };
            let (env_text, expected) = override_for(spec.ty);
            let mut raw = match raw_with_env(&text, &[(&var, env_text)]) {
                Ok(raw) => raw,
                Err(e) => panic!("{var} for {} {}: {e}", section.header(), spec.name),
            };

            let mut read = |index: Option<usize>, key: &str| {
                raw.keys_mut(section, index)
                    .and_then(|k| k.slot(key))
                    .and_then(slot_value)
            };
            let Some((value, origins)) = read(index, spec.name) else {
                panic!("{var} left {} {} unset", section.header(), spec.name);
            };
            assert_eq!(value, expected, "{var}: value");
            for origin in origins {
                assert_eq!(origin, Origin::Env(var.clone()), "{var}: origin");
            }
            if let Some(other) = pair {
                assert!(
                    read(index, other).is_none(),
                    "{var} kept the file's {other}"
                );
            }
            if section.is_array() {
                let Some((_, origins)) = read(Some(0), spec.name) else {
                    panic!("{var} unset the other entry's {}", spec.name);
                };
                assert!(
                    matches!(origins.first(), Some(Origin::File(_))),
                    "{var} changed the other entry"
                );
            }
            checked += 1;
        }
    }
    // The walk itself must not come up empty.
    assert!(checked > 50, "only {checked} keys checked");
}

/// A misspelt override of any key of the table is an error that names the
/// variable and suggests the intended one.
#[test]
fn misspelt_override_of_any_key_is_an_error() {
    for section in Section::ALL {
        let upper = section.name().to_ascii_uppercase();
        let (text, infix) = if section.is_array() {
            (
                format!("{}\nname = \"the-entry\"\n", section.header()),
                "THE_ENTRY_",
            )
        } else {
            (String::new(), "")
        };
        for spec in section.keys().iter().filter(|k| k.name != "name") {
            let var = format!("PITR_{upper}_{infix}{}", spec.name.to_ascii_uppercase());
            let typo = format!("{var}X");
            match raw_with_env(&text, &[(&typo, "1")]) {
                Ok(_) => panic!("{typo} was accepted"),
                Err(e) => {
                    assert!(matches!(&e, ConfigError::Env { var, .. } if *var == typo));
                    contains_all(
                        &e.to_string(),
                        &["matches no key", &format!("Did you mean {var}?")],
                    );
                }
            }
        }
    }
}
