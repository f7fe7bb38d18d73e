//! `[[command]]`: defaults, `env` / `env_file`, and what is refused.

use super::*;

fn with_command(keys: &str) -> String {
    format!(
        "{}\n[[command]]\nname = \"dump\"\n{keys}",
        minimal(&recipient())
    )
}

#[test]
fn defaults_and_a_redacted_environment() {
    let c = load(
        &with_command("run = [\"pg_dump\", \"-Fc\"]\nenv = { PGPASSWORD = \"s3cret\" }\n"),
        &[],
    )
    .expect("loads");
    let cmd = &c.commands[0];
    assert_eq!(cmd.run, ["pg_dump", "-Fc"]);
    assert_eq!(
        cmd.schedule.as_ref().map(|s| s.as_str()),
        Some("30 2 * * *")
    );
    assert_eq!(cmd.timeout, std::time::Duration::from_secs(3600));
    assert_eq!(
        (cmd.user.as_deref(), cmd.verify.as_ref(), cmd.max_age),
        (None, None, None)
    );
    assert_eq!(cmd.env, [("PGPASSWORD".to_owned(), "s3cret".to_owned())]);
    let shown = format!("{c:?}");
    assert!(
        !shown.contains("s3cret") && shown.contains("PGPASSWORD"),
        "{shown}"
    );
}

#[test]
fn env_file_is_read_as_name_value_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("dump.env");
    std::fs::write(
        &file,
        "# the dump's login\nexport PGUSER=app\n\nPGPASSWORD=\"with = sign\"\n",
    )
    .expect("write");
    let text = with_command(&format!(
        "run = [\"pg_dump\"]\nenv_file = \"{}\"\n",
        file.display()
    ));
    let c = load(&text, &[]).expect("loads");
    assert_eq!(
        c.commands[0].env,
        [
            ("PGUSER".to_owned(), "app".to_owned()),
            ("PGPASSWORD".to_owned(), "with = sign".to_owned())
        ]
    );
    std::fs::write(&file, "NOT A PAIR\n").expect("write");
    refused_with(&text, &["env_file", "line 1", "NAME=VALUE"]);
}

#[test]
fn the_environment_sets_the_table_and_lists() {
    let c = load(
        &with_command("run = [\"true\"]\n"),
        &[
            ("PITR_COMMAND_DUMP_ENV", "A=1,B=2"),
            ("PITR_COMMAND_DUMP_RUN", "pg_dump,-Fc"),
        ],
    )
    .expect("loads");
    assert_eq!(c.commands[0].run, ["pg_dump", "-Fc"]);
    assert_eq!(c.commands[0].env.len(), 2);
}

#[test]
fn bad_entries_are_refused_naming_the_key() {
    for (keys, parts) in [
        ("", &["[[command]] \"dump\" run", "nothing to run"][..]),
        ("run = []\n", &["run", "no program"]),
        (
            "run = [\"x\"]\nverify = [\"pg_restore\", \"--list\"]\n",
            &["verify", "{file}"],
        ),
        (
            "run = [\"x\"]\ntimeout = \"0s\"\n",
            &["timeout", "out of range"],
        ),
        ("run = [\"x\"]\nenv = { A = 1 }\n", &["env", "not a string"]),
        (
            "run = [\"x\"]\nenv = { A = \"1\" }\nenv_file = \"/x\"\n",
            &["both"],
        ),
        ("run = [\"x\"]\nshell = true\n", &["unknown key", "shell"]),
        ("run = [\"x\"]\nuser = \" \"\n", &["user", "is empty"]),
    ] {
        refused_with(&with_command(keys), parts);
    }
}
