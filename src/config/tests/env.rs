//! `PITR_*` overrides: precedence, bad values, unknown variables.

use super::*;

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
    let recipients: Vec<String> = c
        .repository
        .recipients
        .iter()
        .map(|r| r.to_string())
        .collect();
    assert_eq!(recipients, [r2, r3]);
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

#[test]
fn bad_env_override_names_the_variable() {
    let r = recipient();
    let (e, msg) = fail(&minimal(&r), &[("PITR_REPOSITORY_ZSTD_LEVEL", "abc")]);
    assert!(matches!(&e, ConfigError::Env { var, .. } if var == "PITR_REPOSITORY_ZSTD_LEVEL"));
    contains_all(
        &msg,
        &[
            "PITR_REPOSITORY_ZSTD_LEVEL",
            "\"abc\" is not a whole number",
            "overrides `[repository] zstd_level` from /etc/pitr/pitr.toml",
        ],
    );

    // A value that parses but fails validation is still blamed on the variable.
    let (e, msg) = fail(&minimal(&r), &[("PITR_REPOSITORY_ZSTD_LEVEL", "42")]);
    assert!(matches!(&e, ConfigError::Env { var, .. } if var == "PITR_REPOSITORY_ZSTD_LEVEL"));
    contains_all(
        &msg,
        &[
            "42 is out of range",
            "overrides `[repository] zstd_level`",
            PATH,
        ],
    );

    let (e, msg) = fail(&minimal(&r), &[("PITR_REPOSITORY_RECIPIENTS", "age1bad")]);
    assert!(matches!(&e, ConfigError::Env { var, .. } if var == "PITR_REPOSITORY_RECIPIENTS"));
    contains_all(
        &msg,
        &[
            "recipients[0] \"age1bad\"",
            "overrides `[repository] recipients`",
        ],
    );
}

#[test]
fn unknown_pitr_variable_is_an_error() {
    let r = recipient();
    let (e, msg) = fail(&minimal(&r), &[("PITR_REPOSITORY_ZSTD_LEVLE", "3")]);
    assert!(matches!(&e, ConfigError::Env { var, .. } if var == "PITR_REPOSITORY_ZSTD_LEVLE"));
    contains_all(
        &msg,
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
