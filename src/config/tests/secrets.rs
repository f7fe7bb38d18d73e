//! `*_file` secrets, relative paths, and redaction.

use super::*;

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
    refused_at(
        &text,
        "[[postgres]] \"main\" conninfo_file",
        &[
            PATH,
            "both `conninfo` and `conninfo_file` are set",
            "Keep only one",
        ],
    );

    let r = recipient();
    let text = minimal(&r).replace("state_dir", "recipients_file = \"/r\"\nstate_dir");
    refused(
        &text,
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
fn debug_redacts_passwords() {
    let text = format!(
        "{}[[postgres]]\nname = \"a\"\nconninfo = \"host=x password='p w\\\\'d' user=u\"\n[[postgres]]\nname = \"b\"\nconninfo = \"postgresql://u:hunter2@h/db?sslmode=require&password=hunter3\"\n[[postgres]]\nname = \"c\"\nconninfo = \"postgresql://u:hun/ter4@h/db\"\n",
        minimal(&recipient())
    );
    let c = load(&text, &[]).expect("valid");
    let dbg = format!("{c:?}");
    for secret in ["p w", "hunter2", "hunter3", "hun/", "ter4"] {
        assert!(!dbg.contains(secret), "Debug leaks {secret:?}: {dbg}");
    }
    contains_all(
        &dbg,
        &[
            "host=x password=*** user=u",
            "postgresql://u:***@h/db?sslmode=require&password=***",
            "postgresql://u:***@h/db\"",
        ],
    );
}
