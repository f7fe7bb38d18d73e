//! Validation of values: required keys, recipients, names, kinds, ranges.

use super::*;

#[test]
fn missing_recipients() {
    let text = "[repository]\nstate_dir = \"/s\"\n[[destination]]\nname = \"l\"\nkind = \"fs\"\npath = \"/r\"\n";
    refused_at(
        text,
        "[repository] recipients",
        &[
            PATH,
            "[repository] recipients",
            "recipients = [\"age1…\"]",
            "pitr keygen",
        ],
    );

    refused(
        &minimal("x").replace("[\"x\"]", "[]"),
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
    refused_at(
        &text,
        "[repository] recipients",
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
    let msg = refused(
        &minimal(&secret),
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
    refused_at(
        &text,
        "[repository] state_dir",
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
    refused_at(
        &text,
        "[[destination]]",
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
        refused_at(
            &format!("{}{extra}", minimal(&r)),
            key,
            &[PATH, key, "is already used by", first, "unique name"],
        );
    }
}

#[test]
fn bad_names_and_missing_names() {
    let r = recipient();
    refused(
        &minimal(&r).replace("name = \"local\"", "name = \"Local Disk\""),
        &[
            PATH,
            "[[destination]] #1 name",
            "\"Local Disk\" is not a valid name",
            "lowercase",
        ],
    );
    refused(
        &minimal(&r).replace("name = \"local\"\n", ""),
        &[PATH, "[[destination]] #1 name", "has no name"],
    );
}

#[test]
fn unknown_kind_lists_supported_kinds() {
    refused_at(
        &minimal(&recipient()).replace("kind = \"fs\"", "kind = \"s4\""),
        "[[destination]] \"local\" kind",
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
    refused(
        &minimal(&recipient()).replace("path = \"/var/lib/pitr/repo\"\n", ""),
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
    refused(
        &with("zstd_level = 20"),
        &[
            PATH,
            "[repository] zstd_level",
            "20 is out of range",
            "1 (fastest) to 19",
        ],
    );
    refused(
        &with("pack_size = 1000"),
        &[
            PATH,
            "[repository] pack_size",
            "1000 (1000 bytes) is out of range",
            "1 MiB to 512 MiB",
        ],
    );
    refused(
        &with("pack_size = \"16MB\""),
        &[PATH, "\"16MB\" is not a size"],
    );
    let c = load(&with("pack_size = 1048576"), &[]).expect("1 MiB is valid");
    assert_eq!(c.repository.pack_size, 1024 * 1024);
    let c = load(&with("pack_size = \"512 MiB\""), &[]).expect("512 MiB is valid");
    assert_eq!(c.repository.pack_size, 512 * 1024 * 1024);
    refused(
        &format!("{}[health]\nlisten = \"localhost:9187\"\n", minimal(&r)),
        &[
            PATH,
            "[health] listen",
            "\"localhost:9187\" is not an IP address and port",
        ],
    );
    refused(
        &with_postgres("slot = \"Bad-Slot\""),
        &[
            PATH,
            "[[postgres]] \"main\" slot",
            "not a valid replication slot name",
        ],
    );
    refused(
        &with_postgres("base_backup = \"daily\""),
        &[
            PATH,
            "[[postgres]] \"main\" base_backup",
            "is not a cron schedule",
            "0 3 * * *",
        ],
    );
    // Five fields, but not a time: the cron parser judges.
    refused(
        &with_postgres("base_backup = \"61 3 * * *\""),
        &[
            PATH,
            "[[postgres]] \"main\" base_backup",
            "\"61 3 * * *\" is not a cron schedule",
        ],
    );
    refused(
        &with_postgres("base_backup = \"0 0 30 2 *\""),
        &[PATH, "base_backup", "no time in the future"],
    );
    refused(
        &with_postgres("base_backup_wal_gb = 0"),
        &[
            PATH,
            "[[postgres]] \"main\" base_backup_wal_gb",
            "not a positive number of GiB",
        ],
    );
    refused(
        &with_postgres("base_backup_wal_gb = \"16GB\""),
        &[PATH, "base_backup_wal_gb"],
    );
    refused(
        &with_postgres("checkpoint = \"slow\""),
        &[
            PATH,
            "[[postgres]] \"main\" checkpoint",
            "\"slow\" is not a checkpoint mode",
            "spread",
        ],
    );
    refused(
        &with_postgres("max_rate = 10"),
        &[PATH, "[[postgres]] \"main\" max_rate", "32 to 1048576"],
    );
}

#[test]
fn base_backup_schedule_keys() {
    let c = load(
        &with_postgres("base_backup = \"*/5  * * * * *\"\nbase_backup_wal_gb = 0.5\ncheckpoint = \"fast\"\nmax_rate = 1024"),
        &[],
    )
    .expect("valid");
    let p = &c.postgres[0];
    assert_eq!(
        p.base_backup.as_ref().map(|b| b.as_str()),
        Some("*/5 * * * * *")
    );
    assert_eq!(p.base_backup_wal, Some(512 << 20));
    assert_eq!(p.checkpoint, crate::pg::Checkpoint::Fast);
    assert_eq!(p.max_rate_kb, Some(1024));

    let c = load(
        &with_postgres("base_backup = \"off\"\nbase_backup_wal_gb = 16"),
        &[],
    )
    .expect("valid");
    assert_eq!(c.postgres[0].base_backup, None);
    assert_eq!(c.postgres[0].base_backup_wal, Some(16 << 30));

    let c = load(
        &with_postgres(""),
        &[
            ("PITR_POSTGRES_MAIN_BASE_BACKUP", "30 1 * * 0"),
            ("PITR_POSTGRES_MAIN_BASE_BACKUP_WAL_GB", "0.25"),
            ("PITR_POSTGRES_MAIN_CHECKPOINT", "fast"),
            ("PITR_POSTGRES_MAIN_MAX_RATE", "2048"),
        ],
    )
    .expect("valid");
    let p = &c.postgres[0];
    assert_eq!(
        p.base_backup.as_ref().map(|b| b.as_str()),
        Some("30 1 * * 0")
    );
    assert_eq!(p.base_backup_wal, Some(256 << 20));
    assert_eq!(p.checkpoint, crate::pg::Checkpoint::Fast);
    assert_eq!(p.max_rate_kb, Some(2048));

    let (_, msg) = fail(
        &with_postgres(""),
        &[("PITR_POSTGRES_MAIN_BASE_BACKUP_WAL_GB", "lots")],
    );
    contains_all(
        &msg,
        &[
            "PITR_POSTGRES_MAIN_BASE_BACKUP_WAL_GB",
            "base_backup_wal_gb",
        ],
    );
}

fn with_s3(extra: &str) -> String {
    format!(
        "{}\n[[destination]]\nname = \"s3-eu\"\nkind = \"s3\"\n{extra}",
        minimal(&recipient())
    )
}

/// The second destination's s3 settings; fails the test if it has another
/// kind.
#[track_caller]
fn s3_of(c: &Config) -> &crate::config::S3Config {
    let d = &c.destinations[1];
    let DestinationKind::S3(s3) = &d.kind else {
        panic!("an s3 destination: {d:?}")
    };
    s3
}

/// A secret file holding `content`, in a directory that lives as long as
/// the returned guard.
fn secret_file(content: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, content).expect("write");
    (dir, secret)
}

#[test]
fn s3_destination_with_every_key() {
    let (_dir, secret) = secret_file("s3cr3t\n");
    let text = with_s3(&format!(
        "bucket = \"backups\"\nprefix = \"pitr/\"\nregion = \"eu-central-1\"\n\
         endpoint = \"http://127.0.0.1:9000\"\naccess_key_id = \"AKIAX\"\n\
         secret_access_key_file = \"{}\"\nrequest_timeout = 30\n",
        secret.display()
    ));
    let config = load(&text, &[]).expect("valid");
    let d = &config.destinations[1];
    assert_eq!(d.name, "s3-eu");
    let s3 = s3_of(&config);
    assert_eq!(s3.bucket, "backups");
    assert_eq!(s3.prefix, "pitr/");
    assert_eq!(s3.region, "eu-central-1");
    assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
    assert_eq!(s3.access_key_id.as_deref(), Some("AKIAX"));
    assert_eq!(s3.secret_access_key.as_deref(), Some("s3cr3t"));
    assert_eq!(s3.request_timeout, std::time::Duration::from_secs(30));
    // The secret never shows in Debug output (logs, panics).
    assert!(!format!("{d:?}").contains("s3cr3t"), "{d:?}");
    // Region defaults; secrets may come from the environment instead.
    let config = load(&with_s3("bucket = \"b\"\n"), &[]).expect("valid");
    let s3 = s3_of(&config);
    assert_eq!(s3.region, "us-east-1");
    assert_eq!(s3.secret_access_key, None);
    // Every key can be overridden from the environment.
    let config = load(
        &with_s3("bucket = \"b\"\n"),
        &[
            ("PITR_DESTINATION_S3_EU_BUCKET", "other"),
            ("PITR_DESTINATION_S3_EU_SECRET_ACCESS_KEY", "fromenv"),
        ],
    )
    .expect("valid");
    let s3 = s3_of(&config);
    assert_eq!(s3.bucket, "other");
    assert_eq!(s3.secret_access_key.as_deref(), Some("fromenv"));
}

#[test]
fn s3_destination_mistakes_name_the_key() {
    let cases: [(&str, &[&str]); 5] = [
        ("", &[PATH, "bucket", "needs a bucket"]),
        (
            "bucket = \"b\"\nendpoint = \"127.0.0.1:9000\"\n",
            &[PATH, "endpoint", "not an http(s) URL"],
        ),
        (
            "bucket = \"b\"\nrequest_timeout = 0\n",
            &[PATH, "request_timeout", "between 1 and 3600"],
        ),
        (
            "bucket = \"b\"\npath = \"/x\"\n",
            &[PATH, "path", "not a key of a destination of kind \"s3\""],
        ),
        (
            "bucket = \"b\"\nsecret_access_key = \"x\"\nsecret_access_key_file = \"/y\"\n",
            &[PATH, "secret_access_key"],
        ),
    ];
    // `refused` shows the config of a case that fails.
    for (extra, parts) in cases {
        refused(&with_s3(extra), parts);
    }
    let text = minimal(&recipient()).replace("kind = \"fs\"", "kind = \"fs\"\nbucket = \"b\"");
    refused(&text, &[PATH, "bucket", "kind \"s3\", not of kind \"fs\""]);
}

fn with_storacha(extra: &str) -> String {
    format!(
        "{}\n[[destination]]\nname = \"ipfs\"\nkind = \"storacha\"\n{extra}",
        minimal(&recipient())
    )
}

/// The second destination's Storacha settings; fails the test if it has
/// another kind.
#[track_caller]
fn storacha_of(c: &Config) -> &crate::config::StorachaConfig {
    let d = &c.destinations[1];
    let DestinationKind::Storacha(s) = &d.kind else {
        panic!("a storacha destination: {d:?}")
    };
    s
}

#[test]
fn storacha_destination_with_every_key() {
    let (_dir, secret) = secret_file("MgSECRETVALUE\n");
    let text = with_storacha(&format!(
        "space = \"did:key:z6MkSpace\"\nprincipal_file = \"{}\"\n\
         proof = \"mAUTHVALUE\"\nservice = \"http://127.0.0.1:1/\"\n\
         service_did = \"did:web:test\"\n\
         gateway = \"http://127.0.0.1:2\"\nrequest_timeout = 30\n",
        secret.display()
    ));
    let config = load(&text, &[]).expect("valid");
    let d = &config.destinations[1];
    let s = storacha_of(&config);
    assert_eq!(s.space, "did:key:z6MkSpace");
    assert_eq!(s.principal, "MgSECRETVALUE");
    assert_eq!(s.proof, "mAUTHVALUE");
    assert_eq!(s.service, "http://127.0.0.1:1");
    assert_eq!(s.service_did, "did:web:test");
    assert_eq!(s.gateway, "http://127.0.0.1:2");
    assert_eq!(s.request_timeout, std::time::Duration::from_secs(30));
    let shown = format!("{d:?}");
    assert!(
        !shown.contains("SECRETVALUE") && !shown.contains("AUTHVALUE"),
        "{shown}"
    );
    // Defaults, and the environment.
    let config = load(
        &with_storacha("space = \"did:key:z6MkSpace\"\nprincipal = \"a\"\n"),
        &[("PITR_DESTINATION_IPFS_PROOF", "fromenv")],
    )
    .expect("valid");
    let s = storacha_of(&config);
    assert_eq!(s.service, "https://up.storacha.network");
    assert_eq!(s.service_did, "did:web:up.storacha.network");
    assert_eq!(s.gateway, "https://storacha.link");
    assert_eq!(s.proof, "fromenv");
}

#[test]
fn storacha_destination_mistakes_name_the_key() {
    let cases: [(&str, &[&str]); 6] = [
        (
            "principal = \"a\"\nproof = \"b\"\n",
            &[PATH, "space", "needs the space's DID"],
        ),
        ("space = \"z6Mk\"\n", &[PATH, "space", "is not a DID"]),
        (
            "space = \"did:key:z\"\nprincipal = \"a\"\n",
            &[PATH, "proof", "storacha delegation create"],
        ),
        (
            "space = \"did:key:z\"\nproof = \"b\"\nprincipal = \"a b\"\n",
            &[PATH, "principal", "contains spaces"],
        ),
        (
            "space = \"did:key:z\"\nprincipal = \"a\"\nproof = \"b\"\ngateway = \"w3s.link\"\n",
            &[PATH, "gateway", "not an http(s) URL"],
        ),
        (
            "space = \"did:key:z\"\nprincipal = \"a\"\nproof = \"b\"\nbucket = \"x\"\n",
            &[
                PATH,
                "bucket",
                "not a key of a destination of kind \"storacha\"",
            ],
        ),
    ];
    // `refused` shows the config of a case that fails.
    for (extra, parts) in cases {
        refused(&with_storacha(extra), parts);
    }
    refused(
        &with_s3("bucket = \"b\"\nspace = \"did:key:z\"\n"),
        &[PATH, "space", "kind \"storacha\", not of kind \"s3\""],
    );
    let text =
        minimal(&recipient()).replace("kind = \"fs\"", "kind = \"fs\"\ngateway = \"https://x\"");
    refused(
        &text,
        &[PATH, "gateway", "kind \"storacha\", not of kind \"fs\""],
    );
}

#[test]
fn manifest_checksums_default_to_crc32c_and_take_sha256() {
    use crate::pg::ManifestChecksums;
    let c = load(&with_postgres(""), &[]).expect("valid");
    assert_eq!(c.postgres[0].manifest_checksums, ManifestChecksums::Crc32c);
    let c = load(&with_postgres("manifest_checksums = \"SHA256\""), &[]).expect("valid");
    assert_eq!(c.postgres[0].manifest_checksums, ManifestChecksums::Sha256);
    let c = load(
        &with_postgres("manifest_checksums = \"sha256\""),
        &[("PITR_POSTGRES_MAIN_MANIFEST_CHECKSUMS", "crc32c")],
    )
    .expect("valid");
    assert_eq!(c.postgres[0].manifest_checksums, ManifestChecksums::Crc32c);
    refused(
        &with_postgres("manifest_checksums = \"md5\""),
        &[
            PATH,
            "[[postgres]] \"main\" manifest_checksums",
            "\"md5\"",
            "crc32c",
            "sha256",
        ],
    );
}

#[test]
fn allow_insecure_password_is_off_unless_said() {
    let c = load(&with_postgres(""), &[]).expect("valid");
    assert!(!c.postgres[0].allow_insecure_password);
    let c = load(&with_postgres("allow_insecure_password = true"), &[]).expect("valid");
    assert!(c.postgres[0].allow_insecure_password);
    let c = load(
        &with_postgres(""),
        &[("PITR_POSTGRES_MAIN_ALLOW_INSECURE_PASSWORD", "true")],
    )
    .expect("valid");
    assert!(c.postgres[0].allow_insecure_password);
    refused(
        &with_postgres("allow_insecure_password = \"yes\""),
        &["allow_insecure_password", "not true or false"],
    );
}

#[test]
fn incremental_max_chain_key() {
    let c = load(&with_postgres(""), &[]).expect("valid");
    assert_eq!(c.postgres[0].incremental_max_chain, 7);
    let c = load(&with_postgres("incremental_max_chain = 0"), &[]).expect("valid");
    assert_eq!(c.postgres[0].incremental_max_chain, 0);
    let c = load(
        &with_postgres("incremental_max_chain = 3"),
        &[("PITR_POSTGRES_MAIN_INCREMENTAL_MAX_CHAIN", "12")],
    )
    .expect("valid");
    assert_eq!(c.postgres[0].incremental_max_chain, 12);
    refused(
        &with_postgres("incremental_max_chain = -1"),
        &[
            PATH,
            "[[postgres]] \"main\" incremental_max_chain",
            "from 0",
        ],
    );
}

#[test]
fn batch_interval_defaults_checks_and_refusals() {
    use std::time::Duration;
    let storacha = "space = \"did:key:z6MkSpace\"\nprincipal = \"a\"\nproof = \"b\"\n";
    // Storacha beside a destination taking every write: batched, 5 minutes.
    let config = load(&with_storacha(storacha), &[]).expect("valid");
    assert_eq!(config.destinations[0].batch_interval, None);
    assert_eq!(
        config.destinations[1].batch_interval,
        Some(Duration::from_secs(300))
    );
    // `0` opts out; an explicit interval is kept; the environment sets it.
    let config = load(
        &with_storacha(&format!("{storacha}batch_interval = 0\n")),
        &[],
    )
    .expect("valid");
    assert_eq!(config.destinations[1].batch_interval, None);
    let config = load(
        &with_storacha(storacha),
        &[("PITR_DESTINATION_IPFS_BATCH_INTERVAL", "90s")],
    )
    .expect("valid");
    assert_eq!(
        config.destinations[1].batch_interval,
        Some(Duration::from_secs(90))
    );
    // A lone Storacha destination takes every write itself.
    let lone = format!(
        "[repository]\nrecipients = [\"{}\"]\nstate_dir = \"/var/lib/pitr\"\n\
         [[destination]]\nname = \"ipfs\"\nkind = \"storacha\"\n{storacha}",
        recipient()
    );
    let config = load(&lone, &[]).expect("valid");
    assert_eq!(config.destinations[0].batch_interval, None);
    // Every destination batched: refused, naming the fix.
    let all =
        minimal(&recipient()).replace("kind = \"fs\"", "kind = \"fs\"\nbatch_interval = \"5m\"");
    refused(
        &all,
        &[
            PATH,
            "batch_interval",
            "every destination is batched",
            "Leave at least one destination without batch_interval",
        ],
    );
    // Too short, or not a duration.
    let short =
        minimal(&recipient()).replace("kind = \"fs\"", "kind = \"fs\"\nbatch_interval = \"500ms\"");
    refused(&short, &[PATH, "batch_interval", "less than a second"]);
    // The quorum counts only the destinations that take every write.
    let text = format!(
        "{}\n[[destination]]\nname = \"s3\"\nkind = \"fs\"\npath = \"/b\"\nbatch_interval = \"5m\"\n",
        minimal(&recipient()).replace("state_dir", "quorum = 2\nstate_dir")
    );
    refused(
        &text,
        &[
            PATH,
            "quorum",
            "1 destinations that take every write",
            "do not count toward the quorum",
        ],
    );
}
