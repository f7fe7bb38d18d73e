//! `[health]`, `[[alert]]`, `[verify]`, `[retention]` and `[scrub]`: the sidecar's own
//! settings.

use std::time::Duration;

use super::*;
use crate::config::AlertKind;

#[test]
fn defaults_without_the_sections() {
    let c = load(&minimal(&recipient()), &[]).expect("loads");
    assert_eq!(c.health.wal_ack_max_age, Duration::from_secs(300));
    assert_eq!(c.health.destination_down_max, Duration::from_secs(600));
    assert_eq!(c.health.backup_max_age, None);
    assert_eq!(c.health.restore_token, None);
    assert!(c.alerts.is_empty());
    assert_eq!(c.verify.scratch_dir, PathBuf::from("/var/lib/pitr/verify"));
    assert_eq!(
        c.verify.schedule.as_ref().map(|s| s.as_str()),
        Some("0 4 * * *")
    );
    assert_eq!(c.verify.os_user, "postgres");
    assert_eq!(
        (
            c.retention.keep_last,
            c.retention.keep_daily,
            c.retention.keep_weekly,
            c.retention.keep_monthly
        ),
        (3, 7, 4, 6)
    );
    assert_eq!(c.retention.gc_grace, Duration::from_secs(86400));
}

#[test]
fn every_key_of_the_sidecar_sections() {
    let text = format!(
        r#"{}
[health]
listen = "127.0.0.1:9187"
wal_ack_max_age = "2m"
backup_max_age = "36h"
destination_down_max = 300
slot_retained_max = "1GiB"
verify_max_age = "2d"
restore_token = "0123456789abcdef0123"
tls_cert_file = "health.crt"
tls_key_file = "/etc/ssl/health.key"

[[alert]]
name = "slack"
kind = "slack"
url = "https://hooks.slack.com/services/T/B/secret"
renotify = "4h"

[[alert]]
name = "mail"
kind = "email"
smtp_url = "smtp://127.0.0.1:2525?tls=none"
from = "pitr@example.com"
to = ["a@example.com", "Ops <b@example.com>"]

[verify]
schedule = "off"
scratch_dir = "scratch"
os_user = "pg"

[retention]
keep_last = 1
keep_daily = 0
keep_weekly = 2
keep_monthly = 12
gc_grace = "1h"
schedule = "0 5 * * 0"
"#,
        minimal(&recipient())
    );
    let c = load(&text, &[]).expect("loads");
    assert_eq!(c.health.wal_ack_max_age, Duration::from_secs(120));
    assert_eq!(
        c.health.backup_max_age,
        Some(Duration::from_secs(36 * 3600))
    );
    assert_eq!(c.health.destination_down_max, Duration::from_secs(300));
    assert_eq!(c.health.slot_retained_max, 1 << 30);
    assert_eq!(
        c.health.restore_token.as_deref(),
        Some("0123456789abcdef0123")
    );
    let tls = c.health.tls.as_ref().expect("https");
    assert_eq!(tls.cert_file, PathBuf::from("/etc/pitr/health.crt"));
    assert_eq!(tls.key_file, PathBuf::from("/etc/ssl/health.key"));
    assert_eq!(c.alerts.len(), 2);
    assert_eq!(c.alerts[0].renotify, Some(Duration::from_secs(4 * 3600)));
    assert!(matches!(&c.alerts[1].kind, AlertKind::Email { to, .. } if to.len() == 2));
    assert_eq!(c.verify.schedule, None);
    assert_eq!(c.verify.scratch_dir, PathBuf::from("/etc/pitr/scratch"));
    assert_eq!(c.retention.keep_monthly, 12);
    assert_eq!(c.retention.gc_grace, Duration::from_secs(3600));
    // Secrets never reach the logs.
    let shown = format!("{c:?}");
    assert!(!shown.contains("B/secret"), "{shown}");
    assert!(!shown.contains("0123456789abcdef0123"), "{shown}");
}

#[test]
fn bad_webhook_url_is_named_without_echoing_it() {
    let text = format!(
        "{}\n[[alert]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"hooks.example.com/token-xyz\"\n",
        minimal(&recipient())
    );
    let msg = refused(&text, &["[[alert]] \"hook\"", "url", "not an http(s) URL"]);
    assert!(!msg.contains("token-xyz"), "{msg}");
}

#[test]
fn smtp_url_parameters_other_than_a_known_tls_mode_are_refused() {
    let base = minimal(&recipient());
    let email = |url: &str| {
        format!(
            "{base}\n[[alert]]\nname = \"m\"\nkind = \"email\"\nsmtp_url = \"{url}\"\nfrom = \"a@b.c\"\nto = [\"x@y.z\"]\n"
        )
    };
    for (url, says) in [
        ("smtp://h?tls=off", "tls=\"off\""),
        ("smtps://h?tls=none", "tls=\"none\""),
        ("smtp://h?starttls=yes", "starttls=\"yes\""),
    ] {
        refused(&email(url), &["smtp_url", says, "tls=opportunistic"]);
    }
}

#[test]
fn alert_keys_of_the_wrong_kind_and_missing_keys() {
    let base = minimal(&recipient());
    let cases: [(&str, &[&str]); 5] = [
        (
            "name = \"m\"\nkind = \"email\"\nurl = \"https://x\"\n",
            &["url is not a key of kind \"email\""],
        ),
        (
            "name = \"m\"\nkind = \"email\"\nsmtp_url = \"smtp://h\"\nfrom = \"a@b.c\"\n",
            &["at least one recipient", "to = ["],
        ),
        (
            "name = \"m\"\nkind = \"email\"\nsmtp_url = \"http://h\"\nfrom = \"a@b.c\"\nto = [\"x@y.z\"]\n",
            &["not an smtp:// or smtps:// URL"],
        ),
        (
            "name = \"m\"\nkind = \"email\"\nsmtp_url = \"smtp://h\"\nfrom = \"not an address\"\nto = [\"x@y.z\"]\n",
            &["from", "is not an email address"],
        ),
        (
            "name = \"p\"\nkind = \"pager\"\n",
            &["unknown kind \"pager\"", "slack, discord, webhook, email"],
        ),
    ];
    // `refused` shows the config of a case that fails.
    for (alert, parts) in cases {
        refused(&format!("{base}\n[[alert]]\n{alert}"), parts);
    }
}

#[test]
fn short_restore_token_and_bad_counts() {
    let base = minimal(&recipient());
    let msg = refused(
        &format!("{base}\n[health]\nrestore_token = \"short\"\n"),
        &["restore_token", "shorter than 16"],
    );
    assert!(!msg.contains("\"short\""), "{msg}");
    refused(
        &format!("{base}\n[retention]\nkeep_daily = -1\n"),
        &["[retention] keep_daily", "not a count"],
    );
    refused(
        &format!("{base}\n[verify]\nschedule = \"every day\"\n"),
        &["[verify] schedule", "not a cron schedule"],
    );
}

#[test]
fn environment_overrides_the_sidecar_sections() {
    let text = format!(
        "{}\n[[alert]]\nname = \"on-call\"\nkind = \"slack\"\nurl = \"https://a.example/x\"\n",
        minimal(&recipient())
    );
    let c = load(
        &text,
        &[
            ("PITR_ALERT_ON_CALL_URL", "https://b.example/y"),
            ("PITR_ALERT_ON_CALL_RENOTIFY", "2h"),
            ("PITR_HEALTH_WAL_ACK_MAX_AGE", "60"),
            ("PITR_RETENTION_KEEP_LAST", "9"),
            ("PITR_VERIFY_OS_USER", "pgu"),
        ],
    )
    .expect("loads");
    assert_eq!(
        c.alerts[0].kind,
        AlertKind::Slack {
            url: "https://b.example/y".to_owned()
        }
    );
    assert_eq!(c.alerts[0].renotify, Some(Duration::from_secs(7200)));
    assert_eq!(c.health.wal_ack_max_age, Duration::from_secs(60));
    assert_eq!(c.retention.keep_last, 9);
    assert_eq!(c.verify.os_user, "pgu");
}

#[test]
fn scrub_defaults_keys_environment_and_errors() {
    let base = minimal(&recipient());
    let c = load(&base, &[]).expect("loads");
    // Daily, clear of 03:00, 04:00 and 04:30.
    assert_eq!(
        c.scrub.schedule.as_ref().map(|s| s.as_str()),
        Some("15 5 * * *")
    );
    assert_eq!(c.scrub.read_budget, 1 << 30);
    let c = load(
        &format!("{base}\n[scrub]\nschedule = \"off\"\nread_budget = \"64MiB\"\n"),
        &[],
    )
    .expect("loads");
    assert_eq!(c.scrub.schedule, None);
    assert_eq!(c.scrub.read_budget, 64 << 20);
    let c = load(&format!("{base}\n[scrub]\nread_budget = 0\n"), &[]).expect("loads");
    assert_eq!(c.scrub.read_budget, 0);
    let c = load(
        &base,
        &[
            ("PITR_SCRUB_SCHEDULE", "0 6 * * 0"),
            ("PITR_SCRUB_READ_BUDGET", "2GiB"),
        ],
    )
    .expect("loads");
    assert_eq!(
        c.scrub.schedule.as_ref().map(|s| s.as_str()),
        Some("0 6 * * 0")
    );
    assert_eq!(c.scrub.read_budget, 2 << 30);
    refused(
        &format!("{base}\n[scrub]\nschedule = \"nightly\"\n"),
        &["[scrub] schedule", "not a cron schedule"],
    );
    refused(
        &format!("{base}\n[scrub]\nread_budget = \"lots\"\n"),
        &[
            "[scrub] read_budget",
            "not a size",
            "read_budget = \"1GiB\"",
        ],
    );
    refused(&format!("{base}\n[scrub]\nbudget = 1\n"), &["read_budget"]);
}

#[test]
fn restore_root_defaults_beneath_the_state_directory_and_refuses_the_root() {
    let c = load(&minimal(&recipient()), &[]).expect("loads");
    assert_eq!(
        c.health.restore_root,
        PathBuf::from("/var/lib/pitr/restores")
    );
    let text = format!(
        "{}\n[health]\nrestore_root = \"/srv/restores\"\n",
        minimal(&recipient())
    );
    let c = load(&text, &[]).expect("loads");
    assert_eq!(c.health.restore_root, PathBuf::from("/srv/restores"));
    let c = load(
        &minimal(&recipient()),
        &[("PITR_HEALTH_RESTORE_ROOT", "/data/restores")],
    )
    .expect("loads");
    assert_eq!(c.health.restore_root, PathBuf::from("/data/restores"));
    refused(
        &format!(
            "{}\n[health]\nrestore_root = \"/\"\n",
            minimal(&recipient())
        ),
        &["restore_root", "file system's root"],
    );
}

#[test]
fn restore_bin_dirs_from_file_and_environment() {
    let base = minimal(&recipient());
    assert!(load(&base, &[]).expect("loads").restore.bin_dirs.is_empty());
    let c = load(
        &format!("{base}\n[restore]\nbin_dirs = [\"/opt/pg/17/bin\", \"pg16/bin\"]\n"),
        &[],
    )
    .expect("loads");
    // Relative paths are the config file's neighbours, like every path.
    assert_eq!(
        c.restore.bin_dirs,
        [
            PathBuf::from("/opt/pg/17/bin"),
            PathBuf::from("/etc/pitr/pg16/bin")
        ]
    );
    let c = load(
        &format!("{base}\n[restore]\nbin_dirs = [\"/opt/pg/17/bin\"]\n"),
        &[("PITR_RESTORE_BIN_DIRS", "/a/bin, /b/bin")],
    )
    .expect("loads");
    assert_eq!(
        c.restore.bin_dirs,
        [PathBuf::from("/a/bin"), PathBuf::from("/b/bin")]
    );
    refused(
        &format!("{base}\n[restore]\nbin_dirs = [\"\"]\n"),
        &["[restore] bin_dirs", "is empty"],
    );
}

#[test]
fn a_tls_file_without_its_other_half_is_refused() {
    let base = minimal(&recipient());
    for (keys, given, missing) in [
        (
            "tls_cert_file = \"/c\"",
            "[health] tls_cert_file",
            "tls_key_file",
        ),
        (
            "tls_key_file = \"/k\"",
            "[health] tls_key_file",
            "tls_cert_file",
        ),
    ] {
        refused_with(
            &format!("{base}\n[health]\n{keys}\n"),
            &[given, "is given alone", missing, "or neither"],
        );
    }
}
