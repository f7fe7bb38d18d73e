//! `[fleet]`: publishing into the fleet catalog.

use std::time::Duration;

use super::*;
use crate::config::FleetKind;

#[test]
fn no_fleet_section_means_no_fleet() {
    let c = load(&minimal(&recipient()), &[]).expect("loads");
    assert_eq!(c.fleet, None);
}

#[test]
fn every_key_of_fleet_and_the_defaults() {
    let text = format!(
        "{}\n[fleet]\nurl = \"host=catalog user=pitr_api dbname=fleet sslmode=verify-full\"\n",
        minimal(&recipient())
    );
    let f = load(&text, &[]).expect("loads").fleet.expect("a fleet");
    assert_eq!(f.kind, FleetKind::Postgres);
    assert_eq!(f.publish_interval, Duration::from_secs(30));
    assert!(f.labels.is_empty());
    assert!(!f.instance.is_empty(), "the host name is the default");

    let text = format!(
        r#"{}
[fleet]
kind = "postgres"
url = "postgres://pitr_api@catalog/fleet"
password = "s3cret-password"
allow_insecure_password = true
instance = "cloud-api.prod"
labels = {{ service = "api", region = "eu" }}
publish_interval = "5s"
"#,
        minimal(&recipient())
    );
    let f = load(&text, &[]).expect("loads").fleet.expect("a fleet");
    assert_eq!(f.instance, "cloud-api.prod");
    assert_eq!(f.password.as_deref(), Some("s3cret-password"));
    assert!(f.allow_insecure_password);
    assert_eq!(f.labels.get("region").map(String::as_str), Some("eu"));
    assert_eq!(f.publish_interval, Duration::from_secs(5));
    assert!(!format!("{f:?}").contains("s3cret"), "Debug redacts");

    let f = load(&text, &[("PITR_FLEET_LABELS", "service=web, tier=gold")])
        .expect("loads")
        .fleet
        .expect("a fleet");
    assert_eq!(f.labels.len(), 2);
    assert_eq!(f.labels.get("tier").map(String::as_str), Some("gold"));
}

#[test]
fn bad_fleet_settings_name_the_key_and_the_fix() {
    let base = minimal(&recipient());
    for (section, parts) in [
        (
            "[fleet]\ninstance = \"x\"\n",
            &["[fleet] url", "PITR_FLEET_URL"][..],
        ),
        (
            "[fleet]\nurl = \"host=a\"\ninstance = \"a b\"\n",
            &["[fleet] instance", "letters, digits"],
        ),
        (
            "[fleet]\nurl = \"host=a\"\nlabels = { a = 1 }\n",
            &["[fleet] labels", "short string"],
        ),
        (
            "[fleet]\nurl = \"host=a\"\nkind = \"carrier-pigeon\"\n",
            &["[fleet] kind", "postgres"],
        ),
        (
            "[fleet]\nurl = \"host=a\"\npublish_interval = \"2d\"\n",
            &["[fleet] publish_interval", "out of range"],
        ),
        (
            "[fleet]\nurl = \"host=a\"\nurls = \"x\"\n",
            &["unknown key", "Did you mean `url`?"],
        ),
    ] {
        refused_with(&format!("{base}\n{section}"), parts);
    }
    let (_, msg) = fail(
        &format!("{base}\n[fleet]\nurl = \"host=a\"\n"),
        &[("PITR_FLEET_LABELS", "no-equals-sign")],
    );
    contains_all(&msg, &["PITR_FLEET_LABELS", "not NAME=VALUE"]);
}

#[test]
fn the_http_transport_takes_a_receiver_url_and_a_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken-secret\n").expect("write the token");
    let text = format!(
        "{}\n[fleet]\nkind = \"http\"\nurl = \"https://receiver.internal/fleet/\"\ntoken_file = \"{}\"\ninstance = \"api\"\n",
        minimal(&recipient()),
        token.display()
    );
    let f = load(&text, &[]).expect("loads").fleet.expect("a fleet");
    assert_eq!(f.kind, FleetKind::Http);
    assert_eq!(f.url, "https://receiver.internal/fleet");
    assert_eq!(f.token.as_deref(), Some("t0ken-secret"));
    assert!(!format!("{f:?}").contains("t0ken"), "Debug redacts");
    assert_eq!(f.receive.listen.to_string(), "127.0.0.1:9188");
    assert_eq!(f.receive.tokens_file, None);

    // Plain http: to loopback, or anywhere when allowed.
    for url in [
        "http://127.0.0.1:9188",
        "http://[::1]:9188",
        "http://localhost",
    ] {
        let f = load(&text.replace("https://receiver.internal/fleet/", url), &[])
            .expect("loopback over http");
        assert_eq!(f.fleet.expect("a fleet").url, url);
    }
    let insecure = text.replace("https://", "http://");
    refused_with(
        &insecure,
        &["[fleet] url", "plain http", "allow_insecure_http"],
    );
    load(&format!("{insecure}allow_insecure_http = true\n"), &[]).expect("allowed");

    // The receiver's keys, read by `pitr fleet receive`.
    let f = load(
        &text,
        &[
            ("PITR_FLEET_RECEIVE_LISTEN", "0.0.0.0:9999"),
            ("PITR_FLEET_RECEIVE_TOKENS_FILE", "/etc/pitr/tokens"),
        ],
    )
    .expect("loads")
    .fleet
    .expect("a fleet");
    assert_eq!(f.receive.listen.to_string(), "0.0.0.0:9999");
    assert_eq!(
        f.receive.tokens_file.as_deref(),
        Some(std::path::Path::new("/etc/pitr/tokens"))
    );
    assert_eq!(
        f.receive.tls, None,
        "plain http unless both TLS files are set"
    );
    assert_eq!(f.ca_file, None);
    let f = load(
        &format!("{text}ca_file = \"/etc/pitr/ca.pem\"\n"),
        &[
            ("PITR_FLEET_RECEIVE_TLS_CERT_FILE", "/etc/pitr/r.crt"),
            ("PITR_FLEET_RECEIVE_TLS_KEY_FILE", "/etc/pitr/r.key"),
        ],
    )
    .expect("loads")
    .fleet
    .expect("a fleet");
    let tls = f.receive.tls.expect("both TLS files");
    assert_eq!(tls.cert_file, std::path::Path::new("/etc/pitr/r.crt"));
    assert_eq!(tls.key_file, std::path::Path::new("/etc/pitr/r.key"));
    assert_eq!(
        f.ca_file.as_deref(),
        Some(std::path::Path::new("/etc/pitr/ca.pem"))
    );
}

#[test]
fn each_transport_refuses_the_others_keys() {
    let base = minimal(&recipient());
    for (section, parts) in [
        (
            "[fleet]\nkind = \"http\"\nurl = \"https://r\"\n",
            &[
                "[fleet] token",
                "kind = \"http\" sends a bearer token",
                "token_file",
            ][..],
        ),
        (
            "[fleet]\nkind = \"http\"\nurl = \"https://r\"\ntoken = \"t\"\npassword = \"p\"\n",
            &["[fleet] password", "does not apply to kind = \"http\""],
        ),
        (
            "[fleet]\nurl = \"host=a\"\ntoken = \"t\"\n",
            &["[fleet] token", "does not apply to kind = \"postgres\""],
        ),
        (
            "[fleet]\nkind = \"http\"\nurl = \"host=a user=b\"\ntoken = \"t\"\n",
            &["[fleet] url", "not an http(s) URL of a receiver"],
        ),
        (
            "[fleet]\nkind = \"http\"\nurl = \"https://user:pw@r\"\ntoken = \"t\"\n",
            &["[fleet] url", "without credentials"],
        ),
        (
            "[fleet]\nurl = \"host=a\"\nreceive_listen = \"receiver:80\"\n",
            &["[fleet] receive_listen", "IP and port"],
        ),
        (
            "[fleet]\nurl = \"host=a\"\nca_file = \"/etc/ca.pem\"\n",
            &[
                "[fleet] ca_file",
                "does not apply to kind = \"postgres\"",
                "sslrootcert",
            ],
        ),
        (
            "[fleet]\nurl = \"host=a\"\nreceive_tls_cert_file = \"/etc/r.crt\"\n",
            &[
                "[fleet] receive_tls_cert_file",
                "is given alone",
                "receive_tls_key_file",
            ],
        ),
        (
            "[fleet]\nurl = \"host=a\"\nreceive_tls_key_file = \"/etc/r.key\"\n",
            &["[fleet] receive_tls_key_file", "is given alone"],
        ),
    ] {
        refused_with(&format!("{base}\n{section}"), parts);
    }
}
