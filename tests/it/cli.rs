//! The `pitr` binary as a user runs it: exit codes, messages, keygen, init,
//! catalog rebuild, verify, and every later-issue command saying so.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Output;

/// Runs `pitr` with `args`, a clean `PITR_*` environment plus `env`.
fn pitr(args: &[&str], env: &[(&str, &str)]) -> Output {
    crate::support::pitr_command(args)
        .envs(env.iter().copied())
        .output()
        .expect("run pitr")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A directory with an identity, a config using it and an fs destination.
struct Setup {
    dir: tempfile::TempDir,
    recipient: String,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let identity = dir.path().join("identity.txt");
        let out = pitr(
            &["keygen", "--output", identity.to_str().expect("utf-8")],
            &[],
        );
        assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
        let recipient = text(&out).0.trim().to_owned();
        let s = Setup { dir, recipient };
        s.write_config("");
        s
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config(&self) -> String {
        self.path("pitr.toml").display().to_string()
    }

    /// The config with `extra` appended to `[repository]`.
    fn write_config(&self, extra: &str) {
        let text = format!(
            r#"[repository]
recipients = ["{}"]
identity_file = "identity.txt"
state_dir = "state"
{extra}

[[destination]]
name = "local"
kind = "fs"
path = "store"
"#,
            self.recipient
        );
        std::fs::write(self.path("pitr.toml"), text).expect("write config");
    }
}

#[test]
fn help_lists_every_command_of_the_design() {
    let out = pitr(&["--help"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out).0;
    for c in [
        "keygen",
        "init",
        "run",
        "backup",
        "list",
        "plan",
        "restore",
        "wal-fetch",
        "verify",
        "check",
        "catalog",
    ] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(c)),
            "`{c}` missing from --help:\n{help}"
        );
    }
}

#[test]
fn keygen_writes_a_private_identity_and_prints_its_recipient() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("id");
    let out = pitr(&["keygen", "--output", file.to_str().expect("utf-8")], &[]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let recipient = text(&out).0.trim().to_owned();
    assert!(recipient.starts_with("age1"), "{recipient}");
    let mode = std::fs::metadata(&file).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "identity file mode {mode:o}");
    // The age-keygen layout, so `age -d -i` reads it; the recipient matches.
    let content = std::fs::read_to_string(&file).expect("read");
    let secret = content
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-1"))
        .expect("an identity line");
    let identity: age::x25519::Identity = secret.parse().expect("parses");
    assert_eq!(identity.to_public().to_string(), recipient);
    assert!(content.contains(&format!("# public key: {recipient}")));

    // Never overwrites: a lost identity means unreadable backups.
    let again = pitr(&["keygen", "--output", file.to_str().expect("utf-8")], &[]);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        text(&again).1.contains("already exists"),
        "{:?}",
        text(&again)
    );
    assert_eq!(std::fs::read_to_string(&file).expect("read"), content);
}

#[test]
fn keygen_without_output_prints_the_identity() {
    let out = pitr(&["keygen"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let (stdout, stderr) = text(&out);
    assert!(stdout.contains("AGE-SECRET-KEY-1"));
    assert!(stderr.contains("Public key: age1"), "{stderr}");
}

#[test]
fn config_errors_exit_2_naming_key_and_file() {
    let s = Setup::new();
    let config = s.config();

    // Unknown key.
    s.write_config("compresion = 3");
    let out = pitr(&["check", "-c", &config], &[]);
    let err = text(&out).1;
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("compresion") && err.contains("pitr.toml"),
        "{err}"
    );

    // Missing recipients.
    std::fs::write(
        s.path("pitr.toml"),
        "[repository]\nstate_dir = \"state\"\n[[destination]]\nname = \"l\"\nkind = \"fs\"\npath = \"store\"\n",
    )
    .expect("write");
    let out = pitr(&["init", "-c", &config], &[]);
    let err = text(&out).1;
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("recipients") && err.contains("pitr.toml"),
        "{err}"
    );
    assert!(err.contains("pitr keygen"), "says how to get one: {err}");

    // Bad environment override.
    s.write_config("");
    let out = pitr(
        &["check", "-c", &config],
        &[("PITR_REPOSITORY_ZSTD_LEVEL", "fast")],
    );
    let err = text(&out).1;
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("PITR_REPOSITORY_ZSTD_LEVEL") && err.contains("zstd_level"),
        "{err}"
    );

    // A misspelt override is not silently ignored.
    let out = pitr(
        &["check", "-c", &config],
        &[("PITR_REPOSITORY_STATEDIR", "/x")],
    );
    let err = text(&out).1;
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("PITR_REPOSITORY_STATEDIR"), "{err}");

    // Unreadable *_file secret.
    s.write_config("");
    let text_with_secret = std::fs::read_to_string(s.path("pitr.toml"))
        .expect("read")
        .replace(
            &format!("recipients = [\"{}\"]", s.recipient),
            "recipients_file = \"missing-recipients\"",
        );
    std::fs::write(s.path("pitr.toml"), text_with_secret).expect("write");
    let out = pitr(&["check", "-c", &config], &[]);
    let err = text(&out).1;
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("missing-recipients") && err.contains("recipients_file"),
        "{err}"
    );

    // The config file itself missing.
    let out = pitr(&["check", "-c", "/nonexistent/pitr.toml"], &[]);
    let err = text(&out).1;
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("/nonexistent/pitr.toml"), "{err}");
}

#[test]
fn an_identity_file_for_other_recipients_is_a_config_error() {
    let s = Setup::new();
    let other = s.path("other.txt");
    let out = pitr(&["keygen", "--output", other.to_str().expect("utf-8")], &[]);
    assert_eq!(out.status.code(), Some(0));
    let out = pitr(
        &["verify", "-c", &s.config()],
        &[(
            "PITR_REPOSITORY_IDENTITY_FILE",
            other.to_str().expect("utf-8"),
        )],
    );
    let err = text(&out).1;
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("identity_file") && err.contains("other.txt"),
        "{err}"
    );
}

#[test]
fn init_is_idempotent_and_rebuild_restores_the_catalog() {
    let s = Setup::new();
    let config = s.config();
    let out = pitr(&["init", "-c", &config], &[]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert!(
        text(&out).0.contains("Created repository"),
        "{:?}",
        text(&out)
    );
    assert!(s.path("store/config").is_file());
    let key = std::fs::read(s.path("state/repository.key")).expect("key written");

    let out = pitr(&["init", "-c", &config], &[]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert!(
        text(&out).0.contains("already initialised"),
        "{:?}",
        text(&out)
    );
    assert_eq!(
        std::fs::read(s.path("state/repository.key")).expect("key"),
        key
    );

    let out = pitr(&["check", "-c", &config], &[]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert!(
        text(&out).0.contains("recipients match"),
        "{:?}",
        text(&out)
    );

    // The sidecar's disk is lost: rebuild from the destination with the identity.
    std::fs::remove_dir_all(s.path("state")).expect("rm state");
    let out = pitr(&["catalog", "rebuild", "-c", &config], &[]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert!(
        text(&out).0.contains("Rebuilt the catalog"),
        "{:?}",
        text(&out)
    );
    assert_eq!(
        std::fs::read(s.path("state/repository.key")).expect("key back"),
        key
    );

    let out = pitr(&["verify", "-c", &config], &[]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert!(
        text(&out).0.contains("No problems found"),
        "{:?}",
        text(&out)
    );

    // An fs destination has no content identifiers: said so, not an error.
    let out = pitr(&["catalog", "cids", "-c", &config], &[]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert!(
        text(&out).0.contains("No content identifiers"),
        "{:?}",
        text(&out)
    );
    let out = pitr(&["catalog", "cids", "--json", "-c", &config], &[]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert_eq!(text(&out).0.trim(), "[]");
}

#[test]
fn init_against_a_store_of_other_recipients_fails_clearly() {
    let s = Setup::new();
    let out = pitr(&["init", "-c", &s.config()], &[]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let other = Setup::new();
    let store = s.path("store");
    let out = pitr(
        &["init", "-c", &other.config()],
        &[(
            "PITR_DESTINATION_LOCAL_PATH",
            store.to_str().expect("utf-8"),
        )],
    );
    let err = text(&out).1;
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("recipients"), "{err}");
}

/// The CLI prints an error's causes once each: a message that already
/// quotes its cause (`{path}: {source}`) is not followed by it again.
#[test]
fn an_error_names_its_cause_once() {
    let s = Setup::new();
    // The state directory's place is taken by a file.
    std::fs::write(s.path("state"), "").expect("write");
    let out = pitr(&["init", "-c", &s.config()], &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    // The OS's own words ("File exists (os error 17)"), once.
    assert_eq!(stderr.matches("(os error ").count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("state"),
        "{stderr}"
    );
}

#[test]
fn check_on_an_uninitialised_destination_says_to_run_init() {
    let s = Setup::new();
    let out = pitr(&["check", "-c", &s.config()], &[]);
    let (stdout, stderr) = text(&out);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stdout.contains("pitr init") || stderr.contains("pitr init"),
        "{stdout}{stderr}"
    );
}

#[test]
fn verify_restore_is_no_longer_a_stub_and_needs_an_initialised_repository() {
    // `pitr verify --restore` was once a stub; tests/it/verify.rs covers
    // the test restores themselves.
    let s = Setup::new();
    let out = pitr(&["verify", "-c", &s.config(), "--restore"], &[]);
    let (stdout, stderr) = text(&out);
    assert_ne!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(!stderr.contains("not implemented"), "{stderr}");
    assert!(stderr.contains("pitr init"), "{stdout}{stderr}");
}

#[test]
fn wal_fetch_and_run_without_a_postgres_entry_fail_clearly() {
    let s = Setup::new();
    let out = pitr(
        &[
            "wal-fetch",
            "-c",
            &s.config(),
            "000000010000000000000001",
            "/tmp/x",
        ],
        &[],
    );
    let err = text(&out).1;
    // As PostgreSQL's restore_command, any failure but "not stored" must
    // abort recovery: exit 255, not 2 (which it would take for "no file").
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(err.contains("no [[postgres]] entry"), "{err}");
    let out = pitr(&["run", "-c", &s.config()], &[]);
    let err = text(&out).1;
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no [[postgres]], [[sqlite]] or [[command]] entry"),
        "{err}"
    );
}

#[test]
fn bad_usage_exits_2() {
    for args in [
        &["frobnicate"][..],
        &["restore", "-c", "x.toml"][..],
        &["init"][..],
    ] {
        let out = pitr(args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {:?}", text(&out));
    }
}

#[test]
fn check_reports_the_server_and_fails_when_it_is_down() {
    let mut pg = crate::support::PgCluster::start();
    let s = Setup::new();
    let text_with_pg = format!(
        "{}\n[[postgres]]\nname = \"main\"\nconninfo = \"{}\"\n",
        std::fs::read_to_string(s.path("pitr.toml")).expect("read"),
        pg.conninfo("postgres")
    );
    std::fs::write(s.path("pitr.toml"), text_with_pg).expect("write");
    assert_eq!(
        pitr(&["init", "-c", &s.config()], &[]).status.code(),
        Some(0)
    );
    let out = pitr(&["check", "-c", &s.config()], &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("postgres main: system")
            && stdout.contains("PostgreSQL 15, wal_level=replica"),
        "{stdout}"
    );
    assert!(stdout.contains("does not exist yet"), "{stdout}");

    pg.stop();
    let out = pitr(&["check", "-c", &s.config()], &[]);
    let (stdout, stderr) = text(&out);
    assert_ne!(out.status.code(), Some(0), "{stdout}");
    let port = pg.port().to_string();
    assert!(
        stdout.contains("postgres main: FAILED") && stdout.contains(&port),
        "names the server: {stdout}{stderr}"
    );
}

#[test]
fn plan_and_restore_without_a_postgres_entry_are_usage_errors() {
    let s = Setup::new();
    let c = s.config();
    for args in [
        &["plan", "-c", &c, "--latest"][..],
        &[
            "restore",
            "-c",
            &c,
            "--latest",
            "--target",
            "/tmp/pitr-never",
        ][..],
    ] {
        let out = pitr(args, &[]);
        let err = text(&out).1;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("no [[postgres]] entry"), "{args:?}: {err}");
    }
    assert!(!std::path::Path::new("/tmp/pitr-never").exists());
}

/// The README's first command: a throw-away cluster archived, restored to a
/// time between two writes, holding exactly the rows before it; nothing
/// left behind.
#[test]
fn demo_restores_a_throwaway_cluster_to_a_time_and_cleans_up() {
    let out = pitr(&["demo"], &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("the restored cluster holds rows: 1,2,3"),
        "{stdout}"
    );
    assert!(
        stdout.contains("recovery checked: stopped before commit"),
        "{stdout}"
    );
    let dir = stdout
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("pitr demo in "))
        .and_then(|l| l.split_whitespace().next())
        .expect("the demo names its directory");
    assert!(!std::path::Path::new(dir).exists(), "{dir} removed");
}
