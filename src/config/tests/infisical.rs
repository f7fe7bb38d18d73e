//! `[[infisical]]`: defaults, required keys, the secret's value/file pair,
//! and the messages of what is refused.

use std::time::Duration;

use super::{contains_all, load, minimal, recipient, refused, refused_at};

/// The minimal config with an `[[infisical]]` entry "secrets" whose
/// further keys are `extra`.
fn with_infisical(extra: &str) -> String {
    format!(
        "{}[[infisical]]\nname = \"secrets\"\nproject_id = \"p-1\"\nenvironments = [\"prod\", \"dev\"]\nclient_id = \"cid\"\n{extra}\n",
        minimal(&recipient())
    )
}

#[test]
fn defaults_and_a_secret_from_its_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("secret");
    std::fs::write(&file, "s3cr3t\n").expect("write");
    let text = with_infisical(&format!(
        "client_secret_file = {:?}",
        file.display().to_string()
    ));
    let c = load(&text, &[]).expect("loads");
    let i = &c.infisical[0];
    assert_eq!(i.name, "secrets");
    assert_eq!(i.site_url, "https://app.infisical.com");
    assert_eq!(i.environments, ["prod", "dev"]);
    assert_eq!(i.secret_path, "/");
    assert_eq!(
        i.client_secret, "s3cr3t",
        "the trailing newline is not the secret's"
    );
    assert_eq!(i.schedule.as_ref().map(|s| s.as_str()), Some("0 * * * *"));
    assert_eq!(i.timeout, Duration::from_secs(300));
    assert_eq!(i.max_age, None);
    assert!(!format!("{c:?}").contains("s3cr3t"), "Debug redacts it");
}

#[test]
fn every_key_set() {
    let text = with_infisical(
        r#"site_url = "https://eu.infisical.com/"
secret_path = "/backend/"
client_secret = "inline"
schedule = "*/15 * * * *"
timeout = "30s"
max_age = "2h""#,
    );
    let c = load(&text, &[]).expect("loads");
    let i = &c.infisical[0];
    assert_eq!(i.site_url, "https://eu.infisical.com");
    assert_eq!(i.secret_path, "/backend");
    assert_eq!(i.client_secret, "inline");
    assert_eq!(i.timeout, Duration::from_secs(30));
    assert_eq!(i.max_age, Some(Duration::from_secs(7200)));
}

#[test]
fn the_environment_overrides_an_entry() {
    let text = with_infisical("client_secret = \"from-file\"");
    let c = load(
        &text,
        &[
            ("PITR_INFISICAL_SECRETS_CLIENT_SECRET", "from-env"),
            ("PITR_INFISICAL_SECRETS_ENVIRONMENTS", "staging,prod"),
            ("PITR_INFISICAL_SECRETS_SCHEDULE", "off"),
        ],
    )
    .expect("loads");
    let i = &c.infisical[0];
    assert_eq!(i.client_secret, "from-env");
    assert_eq!(i.environments, ["staging", "prod"]);
    assert_eq!(i.schedule, None);
}

#[test]
fn what_is_refused_says_why_and_what_to_do() {
    let m = minimal(&recipient());
    refused_at(
        &format!(
            "{m}[[infisical]]\nname = \"s\"\nenvironments = [\"dev\"]\nclient_id = \"c\"\nclient_secret = \"x\"\n"
        ),
        "[[infisical]] \"s\" project_id",
        &["project_id", "is not set", "project's settings"],
    );
    refused(
        &with_infisical(""),
        &[
            "client_secret_file",
            "no client secret",
            "PITR_INFISICAL_SECRETS_CLIENT_SECRET_FILE",
        ],
    );
    refused(
        &with_infisical("client_secret = \"x\"\nclient_secret_file = \"/f\""),
        &["both `client_secret` and `client_secret_file`"],
    );
    refused(
        &with_infisical("client_secret = \"x\"\nsite_url = \"app.infisical.com\""),
        &["site_url", "not an http(s) URL", "https://eu.infisical.com"],
    );
    refused(
        &with_infisical("client_secret = \"x\"\nsecret_path = \"backend\""),
        &["secret_path", "not a folder path", "starting with `/`"],
    );
    refused(
        &with_infisical("client_secret = \"x\"\nschedule = \"hourly\""),
        &["schedule", "not a cron schedule"],
    );
    refused(
        &with_infisical("client_secret = \"x\"\ntimeout = \"2d\""),
        &["timeout", "out of range"],
    );
    refused(
        &with_infisical("client_secret = \"x\"\ntoken = \"y\""),
        &[
            "unknown key",
            "Valid keys in [[infisical]]",
            "client_secret_file",
        ],
    );
    let dup = format!(
        "{m}[[infisical]]\nname = \"s\"\nproject_id = \"p\"\nenvironments = [\"dev\", \"dev\"]\nclient_id = \"c\"\nclient_secret = \"x\"\n"
    );
    let msg = refused(&dup, &["environments", "listed twice"]);
    contains_all(&msg, &["List each environment once"]);
    refused(
        &format!(
            "{m}[[infisical]]\nname = \"s\"\nproject_id = \"p\"\nenvironments = []\nclient_id = \"c\"\nclient_secret = \"x\"\n"
        ),
        &["environments", "is empty", "slugs"],
    );
}

#[test]
fn an_empty_secret_file_is_refused_without_echoing_anything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("secret");
    std::fs::write(&file, "\n").expect("write");
    refused(
        &with_infisical(&format!(
            "client_secret_file = {:?}",
            file.display().to_string()
        )),
        &["client_secret_file", "is empty"],
    );
}

#[test]
fn a_name_used_by_a_command_is_refused() {
    let text = format!(
        "{}client_secret = \"s\"\n[[command]]\nname = \"secrets\"\nrun = [\"true\"]\n",
        with_infisical("")
    );
    refused_at(
        &text,
        "[[infisical]] \"secrets\" name",
        &["already used by a [[command]]", "unique name"],
    );
}
