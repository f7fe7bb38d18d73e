//! Reading the file: a valid config, defaults, unknown keys, wrong types, syntax.

use super::*;

#[test]
fn full_config_loads() {
    let (r1, r2) = (recipient(), recipient());
    let text = format!(
        r#"
[repository]
recipients = ["{r1}", "{r2}"]
identity_file = "/run/secrets/age"
key_file = "pitr.key"
state_dir = "/var/lib/pitr"
zstd_level = 7
pack_size = "32MiB"

[[destination]]
name = "local"
kind = "fs"
path = "/var/lib/pitr/repo"

[[destination]]
name = "nas-2"
kind = "fs"
path = "/mnt/nas"

[[postgres]]
name = "main"
conninfo = "host=127.0.0.1 port=5432 user=replicator dbname=postgres"
slot = "pitr_main"
base_backup = "0 3 * * *"

[[sqlite]]
name = "auth"
path = "/data/auth.db"

[health]
listen = "0.0.0.0:9187"
"#
    );
    let c = load(&text, &[]).expect("valid config");
    assert_eq!(c.path, PathBuf::from(PATH));
    assert_eq!(recipient_strings(&c), [r1, r2]);
    assert_eq!(
        c.repository.identity_file,
        Some(PathBuf::from("/run/secrets/age"))
    );
    // Relative to the config file's directory.
    assert_eq!(
        Some(c.repository.key_file.clone().expect("key_file")),
        PathBuf::from(PATH).parent().map(|d| d.join("pitr.key"))
    );
    assert_eq!(c.repository.state_dir, PathBuf::from("/var/lib/pitr"));
    assert_eq!(c.repository.zstd_level, 7);
    assert_eq!(c.repository.pack_size, 32 * 1024 * 1024);
    let dests: Vec<(&str, &DestinationKind)> = c
        .destinations
        .iter()
        .map(|d| (d.name.as_str(), &d.kind))
        .collect();
    assert_eq!(
        dests,
        [
            (
                "local",
                &DestinationKind::Fs {
                    path: "/var/lib/pitr/repo".into()
                }
            ),
            (
                "nas-2",
                &DestinationKind::Fs {
                    path: "/mnt/nas".into()
                }
            ),
        ]
    );
    assert_eq!(c.postgres.len(), 1);
    assert_eq!(c.postgres[0].name, "main");
    assert_eq!(
        c.postgres[0].conninfo,
        "host=127.0.0.1 port=5432 user=replicator dbname=postgres"
    );
    assert_eq!(c.postgres[0].slot, "pitr_main");
    assert_eq!(
        c.postgres[0].base_backup.as_ref().map(|b| b.as_str()),
        Some("0 3 * * *")
    );
    assert_eq!(c.sqlite.len(), 1);
    assert_eq!(c.sqlite[0].name, "auth");
    assert_eq!(c.sqlite[0].path, PathBuf::from("/data/auth.db"));
    let listen: SocketAddr = "0.0.0.0:9187".parse().expect("addr");
    assert_eq!(c.health.listen, Some(listen));
}

#[test]
fn defaults() {
    let c = load(&with_postgres(""), &[]).expect("valid config");
    assert_eq!(c.repository.zstd_level, 3);
    assert_eq!(c.repository.pack_size, 16 * 1024 * 1024);
    assert_eq!(c.repository.identity_file, None);
    assert_eq!(c.postgres[0].slot, "pitr");
    // The seed's 3 AM daily, a spread checkpoint, no WAL rule, no limit.
    assert_eq!(
        c.postgres[0].base_backup.as_ref().map(|b| b.as_str()),
        Some("0 3 * * *")
    );
    assert_eq!(c.postgres[0].base_backup_wal, None);
    assert_eq!(c.postgres[0].checkpoint, crate::pg::Checkpoint::Spread);
    assert_eq!(c.postgres[0].max_rate_kb, None);
    assert!(c.sqlite.is_empty());
    assert_eq!(c.health.listen, None);
}

/// Every key the specs list is accepted by the raw structs, so the two lists
/// cannot drift apart.
#[test]
fn every_key_is_known() {
    for section in Section::ALL {
        for spec in section.keys() {
            let value = match spec.ty {
                KeyType::Str => "\"x\"",
                KeyType::Int | KeyType::Size | KeyType::Number | KeyType::Duration => "1",
                KeyType::List => "[\"x\"]",
                KeyType::Table => "{ x = \"x\" }",
            };
            let text = format!("{}\n{} = {value}\n", section.header(), spec.name);
            let ctx = Ctx {
                path: Path::new(PATH),
                text: &text,
                base: Path::new("/etc/pitr"),
            };
            if let Err(e) = raw::parse(&ctx) {
                panic!("{} {} rejected: {e}", section.header(), spec.name);
            }
        }
    }
}

#[test]
fn unknown_key_in_each_section() {
    let base = minimal(&recipient());
    let append = |extra: &str| format!("{base}{extra}\nbogus = 1\n");
    let cases = [
        (
            base.replace("[repository]\n", "[repository]\nbogus = 1\n"),
            "[repository] bogus",
            "recipients, recipients_file, identity_file, key_file, state_dir, zstd_level, pack_size",
        ),
        (
            base.replace("name = \"local\"\n", "name = \"local\"\nbogus = 1\n"),
            "[[destination]] \"local\" bogus",
            "name, kind, path",
        ),
        (
            append("[[postgres]]\nname = \"main\""),
            "[[postgres]] \"main\" bogus",
            "name, conninfo, conninfo_file, slot, base_backup, base_backup_wal_gb, checkpoint, max_rate",
        ),
        (
            append("[[sqlite]]\nname = \"auth\""),
            "[[sqlite]] \"auth\" bogus",
            "name, path",
        ),
        (append("[health]"), "[health] bogus", "listen"),
    ];
    for (text, key, valid) in cases {
        let line = text.lines().position(|l| l == "bogus = 1").expect("line") + 1;
        refused_at(
            &text,
            key,
            &[
                PATH,
                key,
                "unknown key",
                valid,
                &format!("line {line}, column 1"),
            ],
        );
    }
}

#[test]
fn unknown_key_suggests_the_closest() {
    let text = minimal(&recipient()).replace("state_dir", "state_dri");
    refused(
        &text,
        &[PATH, "[repository] state_dri", "Did you mean `state_dir`?"],
    );
}

#[test]
fn unknown_section() {
    let text = format!(
        "{}\n[helth]\nlisten = \"0.0.0.0:1\"\n",
        minimal(&recipient())
    );
    refused(
        &text,
        &[
            PATH,
            "helth",
            "unknown section",
            "[health]",
            "Did you mean `health`?",
        ],
    );
}

#[test]
fn wrong_type_names_key_line_and_example() {
    let text = minimal(&recipient()).replace(
        "state_dir = \"/var/lib/pitr\"",
        "state_dir = \"/s\"\nzstd_level = \"high\"",
    );
    refused_at(
        &text,
        "[repository] zstd_level",
        &[
            PATH,
            "[repository] zstd_level",
            "wrong type",
            "line 4",
            "zstd_level = 3",
        ],
    );
}

#[test]
fn single_table_instead_of_array_is_explained() {
    let text = minimal(&recipient()).replace("[[destination]]", "[destination]");
    refused(
        &text,
        &[
            PATH,
            "[[destination]]",
            "Write each entry as its own [[destination]] table",
        ],
    );
}

#[test]
fn parse_error_has_line_and_column() {
    let text = "[repository]\nstate_dir = \"/s\"\nzstd_level = = 3\n";
    let (e, msg) = fail(text, &[]);
    assert!(matches!(e, ConfigError::Parse { .. }));
    contains_all(&msg, &[PATH, "not valid TOML", "line 3, column"]);
    refused("[repository\n", &[PATH, "line 1, column"]);
}

#[test]
fn missing_file_is_a_read_error() {
    let err = Config::load_with_env(Path::new("/nonexistent/pitr.toml"), &[]).expect_err("no file");
    assert!(matches!(err, ConfigError::Read { .. }));
    contains_all(
        &err.to_string(),
        &["/nonexistent/pitr.toml", "No such file", "-c/--config"],
    );
}
