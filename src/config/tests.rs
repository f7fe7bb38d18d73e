//! Unit tests of config loading. Each asserts on the message an operator
//! sees, not only on the error's existence.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::error::Ctx;
use super::raw::{self, KeyType, Section};
use super::{Config, ConfigError, DestinationKind};

const PATH: &str = "/etc/pitr/pitr.toml";

fn recipient() -> String {
    age::x25519::Identity::generate().to_public().to_string()
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn load(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, Path::new(PATH), &env(vars))
}

/// The error and its message; fails the test if loading succeeded.
fn fail(text: &str, vars: &[(&str, &str)]) -> (ConfigError, String) {
    match load(text, vars) {
        Ok(c) => panic!("expected an error, loaded {c:?}"),
        Err(e) => {
            let msg = e.to_string();
            (e, msg)
        }
    }
}

/// Asserts that `msg` contains every one of `parts`.
#[track_caller]
fn contains_all(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message lacks {p:?}:\n{msg}");
    }
}

/// The smallest valid config: recipients, state_dir, one destination.
fn minimal(r: &str) -> String {
    format!(
        r#"[repository]
recipients = ["{r}"]
state_dir = "/var/lib/pitr"

[[destination]]
name = "local"
kind = "fs"
path = "/var/lib/pitr/repo"
"#
    )
}

#[test]
fn full_config_loads() {
    let (r1, r2) = (recipient(), recipient());
    let text = format!(
        r#"
[repository]
recipients = ["{r1}", "{r2}"]
identity_file = "/run/secrets/age"
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
    let recipients: Vec<String> = c
        .repository
        .recipients
        .iter()
        .map(|r| r.to_string())
        .collect();
    assert_eq!(recipients, [r1, r2]);
    assert_eq!(
        c.repository.identity_file,
        Some(PathBuf::from("/run/secrets/age"))
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
    assert_eq!(c.postgres[0].base_backup.as_deref(), Some("0 3 * * *"));
    assert_eq!(c.sqlite.len(), 1);
    assert_eq!(c.sqlite[0].name, "auth");
    assert_eq!(c.sqlite[0].path, PathBuf::from("/data/auth.db"));
    let listen: SocketAddr = "0.0.0.0:9187".parse().expect("addr");
    assert_eq!(c.health.listen, Some(listen));
}

#[test]
fn defaults() {
    let text = format!(
        "{}\n[[postgres]]\nname = \"main\"\nconninfo = \"host=db\"\n",
        minimal(&recipient())
    );
    let c = load(&text, &[]).expect("valid config");
    assert_eq!(c.repository.zstd_level, 3);
    assert_eq!(c.repository.pack_size, 16 * 1024 * 1024);
    assert_eq!(c.repository.identity_file, None);
    assert_eq!(c.postgres[0].slot, "pitr");
    assert_eq!(c.postgres[0].base_backup, None);
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
                KeyType::Int | KeyType::Size => "1",
                KeyType::List => "[\"x\"]",
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
            "recipients, recipients_file, identity_file, state_dir, zstd_level, pack_size",
        ),
        (
            base.replace("name = \"local\"\n", "name = \"local\"\nbogus = 1\n"),
            "[[destination]] \"local\" bogus",
            "name, kind, path",
        ),
        (
            append("[[postgres]]\nname = \"main\""),
            "[[postgres]] \"main\" bogus",
            "name, conninfo, conninfo_file, slot, base_backup",
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
        let (e, msg) = fail(&text, &[]);
        assert!(
            matches!(&e, ConfigError::Invalid { key: k, .. } if k == key),
            "{e:?}"
        );
        contains_all(
            &msg,
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
    let (_, msg) = fail(&text, &[]);
    contains_all(
        &msg,
        &[PATH, "[repository] state_dri", "Did you mean `state_dir`?"],
    );
}

#[test]
fn unknown_section() {
    let text = format!(
        "{}\n[helth]\nlisten = \"0.0.0.0:1\"\n",
        minimal(&recipient())
    );
    let (_, msg) = fail(&text, &[]);
    contains_all(
        &msg,
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
    let (e, msg) = fail(&text, &[]);
    assert!(matches!(e, ConfigError::Invalid { .. }));
    contains_all(
        &msg,
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
    let (_, msg) = fail(&text, &[]);
    contains_all(
        &msg,
        &[
            PATH,
            "[[destination]]",
            "Write each entry as its own [[destination]] table",
        ],
    );
}

#[test]
fn missing_recipients() {
    let text = "[repository]\nstate_dir = \"/s\"\n[[destination]]\nname = \"l\"\nkind = \"fs\"\npath = \"/r\"\n";
    let (e, msg) = fail(text, &[]);
    assert!(matches!(&e, ConfigError::Invalid { key, .. } if key == "[repository] recipients"));
    contains_all(
        &msg,
        &[
            PATH,
            "[repository] recipients",
            "recipients = [\"age1…\"]",
            "pitr keygen",
        ],
    );

    let (_, msg) = fail(&minimal("x").replace("[\"x\"]", "[]"), &[]);
    contains_all(
        &msg,
        &[
            PATH,
            "[repository] recipients",
            "holds no recipient",
            "line 2",
        ],
    );
}

#[test]
fn invalid_recipient_names_index_and_value() {
    let good = recipient();
    let text = minimal(&good).replace(
        &format!("[\"{good}\"]"),
        &format!("[\"{good}\", \"age1nope\"]"),
    );
    let (e, msg) = fail(&text, &[]);
    assert!(matches!(e, ConfigError::Invalid { .. }));
    contains_all(
        &msg,
        &[
            PATH,
            "[repository] recipients",
            "recipients[1]",
            "\"age1nope\"",
            "line 2",
            "pitr keygen",
        ],
    );
}

#[test]
fn secret_key_as_recipient_is_refused_without_echoing_it() {
    let secret =
        age::secrecy::ExposeSecret::expose_secret(&age::x25519::Identity::generate().to_string())
            .to_owned();
    let (_, msg) = fail(&minimal(&secret), &[]);
    contains_all(
        &msg,
        &[PATH, "recipients[0]", "is an age identity (a secret key)"],
    );
    assert!(
        !msg.contains(&secret),
        "message leaks the secret key: {msg}"
    );
}

#[test]
fn missing_state_dir() {
    let text = minimal(&recipient()).replace("state_dir = \"/var/lib/pitr\"\n", "");
    let (e, msg) = fail(&text, &[]);
    assert!(matches!(&e, ConfigError::Invalid { key, .. } if key == "[repository] state_dir"));
    contains_all(
        &msg,
        &[
            PATH,
            "[repository] state_dir",
            "state_dir is required",
            "state_dir = \"/var/lib/pitr\"",
        ],
    );
}

#[test]
fn no_destination() {
    let text = format!(
        "[repository]\nrecipients = [\"{}\"]\nstate_dir = \"/s\"\n",
        recipient()
    );
    let (e, msg) = fail(&text, &[]);
    assert!(matches!(&e, ConfigError::Invalid { key, .. } if key == "[[destination]]"));
    contains_all(
        &msg,
        &[PATH, "no destination is configured", "kind = \"fs\""],
    );
}

#[test]
fn duplicate_names() {
    let r = recipient();
    let cases = [
        (
            "[[destination]]\nname = \"local\"\nkind = \"fs\"\npath = \"/x\"\n",
            "[[destination]] \"local\" name",
            "[[destination]] #1",
        ),
        (
            "[[postgres]]\nname = \"main\"\nconninfo = \"host=a\"\n[[postgres]]\nname = \"main\"\nconninfo = \"host=b\"\n",
            "[[postgres]] \"main\" name",
            "[[postgres]] #1",
        ),
        (
            "[[sqlite]]\nname = \"auth\"\npath = \"/a\"\n[[sqlite]]\nname = \"auth\"\npath = \"/b\"\n",
            "[[sqlite]] \"auth\" name",
            "[[sqlite]] #1",
        ),
    ];
    for (extra, key, first) in cases {
        let (e, msg) = fail(&format!("{}{extra}", minimal(&r)), &[]);
        assert!(
            matches!(&e, ConfigError::Invalid { key: k, .. } if k == key),
            "{e:?}"
        );
        contains_all(
            &msg,
            &[PATH, key, "is already used by", first, "unique name"],
        );
    }
}

#[test]
fn bad_names_and_missing_names() {
    let r = recipient();
    let (_, msg) = fail(
        &minimal(&r).replace("name = \"local\"", "name = \"Local Disk\""),
        &[],
    );
    contains_all(
        &msg,
        &[
            PATH,
            "[[destination]] #1 name",
            "\"Local Disk\" is not a valid name",
            "lowercase",
        ],
    );
    let (_, msg) = fail(&minimal(&r).replace("name = \"local\"\n", ""), &[]);
    contains_all(&msg, &[PATH, "[[destination]] #1 name", "has no name"]);
}

#[test]
fn unknown_kind_lists_supported_kinds() {
    let (e, msg) = fail(
        &minimal(&recipient()).replace("kind = \"fs\"", "kind = \"s4\""),
        &[],
    );
    assert!(
        matches!(&e, ConfigError::Invalid { key, .. } if key == "[[destination]] \"local\" kind")
    );
    contains_all(
        &msg,
        &[
            PATH,
            "unknown kind \"s4\"",
            "supported kinds: fs",
            "line 7, column 8",
        ],
    );
}

#[test]
fn fs_destination_needs_path() {
    let (_, msg) = fail(
        &minimal(&recipient()).replace("path = \"/var/lib/pitr/repo\"\n", ""),
        &[],
    );
    contains_all(
        &msg,
        &[PATH, "[[destination]] \"local\" path", "needs a path"],
    );
}

#[test]
fn range_checks() {
    let r = recipient();
    let with = |line: &str| {
        minimal(&r).replace(
            "state_dir = \"/var/lib/pitr\"",
            &format!("state_dir = \"/s\"\n{line}"),
        )
    };
    let (_, msg) = fail(&with("zstd_level = 20"), &[]);
    contains_all(
        &msg,
        &[
            PATH,
            "[repository] zstd_level",
            "20 is out of range",
            "1 (fastest) to 19",
        ],
    );
    let (_, msg) = fail(&with("pack_size = 1000"), &[]);
    contains_all(
        &msg,
        &[
            PATH,
            "[repository] pack_size",
            "1000 (1000 bytes) is out of range",
            "1 MiB to 512 MiB",
        ],
    );
    let (_, msg) = fail(&with("pack_size = \"16MB\""), &[]);
    contains_all(&msg, &[PATH, "\"16MB\" is not a size"]);
    let c = load(&with("pack_size = 1048576"), &[]).expect("1 MiB is valid");
    assert_eq!(c.repository.pack_size, 1024 * 1024);
    let c = load(&with("pack_size = \"512 MiB\""), &[]).expect("512 MiB is valid");
    assert_eq!(c.repository.pack_size, 512 * 1024 * 1024);
    let (_, msg) = fail(
        &format!("{}[health]\nlisten = \"localhost:9187\"\n", minimal(&r)),
        &[],
    );
    contains_all(
        &msg,
        &[
            PATH,
            "[health] listen",
            "\"localhost:9187\" is not an IP address and port",
        ],
    );
    let pg = |extra: &str| {
        format!(
            "{}[[postgres]]\nname = \"main\"\nconninfo = \"host=a\"\n{extra}\n",
            minimal(&r)
        )
    };
    let (_, msg) = fail(&pg("slot = \"Bad-Slot\""), &[]);
    contains_all(
        &msg,
        &[
            PATH,
            "[[postgres]] \"main\" slot",
            "not a valid replication slot name",
        ],
    );
    let (_, msg) = fail(&pg("base_backup = \"daily\""), &[]);
    contains_all(
        &msg,
        &[
            PATH,
            "[[postgres]] \"main\" base_backup",
            "is not a cron schedule",
            "0 3 * * *",
        ],
    );
}

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
fn unreadable_secret_file_names_file_and_key() {
    let text = format!(
        "{}[[postgres]]\nname = \"main\"\nconninfo_file = \"secrets/missing\"\n",
        minimal(&recipient())
    );
    let (e, msg) = fail(&text, &[]);
    match &e {
        ConfigError::SecretFile {
            path,
            key,
            file,
            source,
        } => {
            assert_eq!(path, Path::new(PATH));
            assert_eq!(key, "[[postgres]] \"main\" conninfo_file");
            assert_eq!(file, Path::new("/etc/pitr/secrets/missing"));
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected SecretFile, got {other:?}"),
    }
    contains_all(
        &msg,
        &[
            PATH,
            "[[postgres]] \"main\" conninfo_file",
            "/etc/pitr/secrets/missing",
            "No such file",
        ],
    );

    let (_, msg) = fail(
        &minimal(&recipient()),
        &[("PITR_REPOSITORY_RECIPIENTS_FILE", "/nonexistent/recipients")],
    );
    contains_all(
        &msg,
        &[
            PATH,
            "[repository] recipients_file (set by PITR_REPOSITORY_RECIPIENTS_FILE)",
            "/nonexistent/recipients",
        ],
    );
}

#[test]
fn both_value_and_file_is_an_error() {
    let text = format!(
        "{}[[postgres]]\nname = \"main\"\nconninfo = \"host=a\"\nconninfo_file = \"/run/secrets/pg\"\n",
        minimal(&recipient())
    );
    let (e, msg) = fail(&text, &[]);
    assert!(
        matches!(&e, ConfigError::Invalid { key, .. } if key == "[[postgres]] \"main\" conninfo_file")
    );
    contains_all(
        &msg,
        &[
            PATH,
            "both `conninfo` and `conninfo_file` are set",
            "Keep only one",
        ],
    );

    let r = recipient();
    let text = minimal(&r).replace("state_dir", "recipients_file = \"/r\"\nstate_dir");
    let (_, msg) = fail(&text, &[]);
    contains_all(
        &msg,
        &[
            PATH,
            "[repository] recipients_file",
            "both `recipients` and `recipients_file`",
        ],
    );
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = recipient();
    std::fs::create_dir(dir.path().join("secrets")).expect("mkdir");
    std::fs::write(dir.path().join("secrets/pg"), "host=db password=s3cret\n").expect("write");
    std::fs::write(
        dir.path().join("secrets/recipients"),
        format!("# team keys\n\n{r}  # alice\n"),
    )
    .expect("write");
    let text = r#"
[repository]
recipients_file = "secrets/recipients"
identity_file = "keys/age"
state_dir = "state"

[[destination]]
name = "local"
kind = "fs"
path = "../repo"

[[postgres]]
name = "main"
conninfo_file = "secrets/pg"

[[sqlite]]
name = "auth"
path = "data/auth.db"
"#;
    let cfg = dir.path().join("pitr.toml");
    std::fs::write(&cfg, text).expect("write");
    let c =
        Config::load_with_env(&cfg, &env(&[("PITR_SQLITE_AUTH_PATH", "env.db")])).expect("valid");
    let d = dir.path();
    assert_eq!(c.path, cfg);
    assert_eq!(c.repository.recipients.len(), 1);
    assert_eq!(c.repository.recipients[0].to_string(), r);
    assert_eq!(c.repository.identity_file, Some(d.join("keys/age")));
    assert_eq!(c.repository.state_dir, d.join("state"));
    assert_eq!(
        c.destinations[0].kind,
        DestinationKind::Fs {
            path: d.join("../repo")
        }
    );
    // The trailing newline of the secret file is not part of the secret.
    assert_eq!(c.postgres[0].conninfo, "host=db password=s3cret");
    // Paths from the environment resolve the same way.
    assert_eq!(c.sqlite[0].path, d.join("env.db"));
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

#[test]
fn empty_secret_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("pg"), "\n").expect("write");
    let text = format!(
        "{}[[postgres]]\nname = \"main\"\nconninfo_file = \"pg\"\n",
        minimal(&recipient())
    );
    let cfg = dir.path().join("pitr.toml");
    let err = Config::from_toml_str(&text, &cfg, &[]).expect_err("empty secret");
    contains_all(
        &err.to_string(),
        &[
            "[[postgres]] \"main\" conninfo_file",
            "is empty",
            &cfg.display().to_string(),
        ],
    );
}

#[test]
fn parse_error_has_line_and_column() {
    let text = "[repository]\nstate_dir = \"/s\"\nzstd_level = = 3\n";
    let (e, msg) = fail(text, &[]);
    assert!(matches!(e, ConfigError::Parse { .. }));
    contains_all(&msg, &[PATH, "not valid TOML", "line 3, column"]);
    let (_, msg) = fail("[repository\n", &[]);
    contains_all(&msg, &[PATH, "line 1, column"]);
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

#[test]
fn debug_redacts_passwords() {
    let text = format!(
        "{}[[postgres]]\nname = \"a\"\nconninfo = \"host=x password='p w\\\\'d' user=u\"\n[[postgres]]\nname = \"b\"\nconninfo = \"postgresql://u:hunter2@h/db?sslmode=require&password=hunter3\"\n",
        minimal(&recipient())
    );
    let c = load(&text, &[]).expect("valid");
    let dbg = format!("{c:?}");
    for secret in ["p w", "hunter2", "hunter3"] {
        assert!(!dbg.contains(secret), "Debug leaks {secret:?}: {dbg}");
    }
    contains_all(
        &dbg,
        &[
            "host=x password=*** user=u",
            "postgresql://u:***@h/db?sslmode=require&password=***",
        ],
    );
}
