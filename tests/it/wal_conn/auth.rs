//! Authentication methods and the refusals an operator must be able to fix
//! from the message alone.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use pitr::pg::conn::{ConnError, PasswordSource};

use super::{connect, connect_err, eventually, info, within};
use crate::support::PgCluster;

const HBA: &str = "\
local all         all                      trust
local replication all                      trust
host  all         postgres  127.0.0.1/32   trust
host  replication postgres  127.0.0.1/32   trust
host  replication md5user   127.0.0.1/32   md5
host  replication scramuser 127.0.0.1/32   scram-sha-256
host  replication pwuser    127.0.0.1/32   password
host  replication norepl    127.0.0.1/32   scram-sha-256
host  all         nohba     127.0.0.1/32   scram-sha-256
";

#[tokio::test]
async fn password_methods_work_and_refusals_say_what_to_do() {
    let pg = PgCluster::start();
    pg.psql(
        "SET password_encryption = 'md5';
         CREATE ROLE md5user LOGIN REPLICATION PASSWORD 'md5-secret';
         SET password_encryption = 'scram-sha-256';
         CREATE ROLE scramuser LOGIN REPLICATION PASSWORD 'scram secret';
         CREATE ROLE pwuser LOGIN REPLICATION PASSWORD 'clear-secret';
         CREATE ROLE norepl LOGIN PASSWORD 'norepl-secret';
         CREATE ROLE nohba LOGIN REPLICATION PASSWORD 'nohba-secret';",
    );
    assert_eq!(
        pg.psql("SELECT rolpassword LIKE 'md5%' FROM pg_authid WHERE rolname = 'md5user'"),
        "t"
    );
    // Rewrite pg_hba.conf in place (the file keeps its owner) and reload.
    fs::write(pg.data_dir().join("pg_hba.conf"), HBA).expect("write pg_hba.conf");
    pg.psql("SELECT pg_reload_conf()");
    let base = format!("host={} port={} sslmode=disable", pg.host(), pg.port());
    // md5 and cleartext over TCP without TLS need the explicit leave.
    let as_user = |user: &str, password: &str| {
        let pw = if password.is_empty() {
            String::new()
        } else {
            format!(" password='{password}'")
        };
        let mut i = info(&format!("{base} user={user}{pw}"));
        i.allow_insecure_password = user != "scramuser";
        i
    };

    // Until the reload lands, nohba is still trusted.
    let err = eventually(
        "pg_hba.conf reloaded",
        Duration::from_secs(10),
        async || {
            let nohba = as_user("nohba", "nohba-secret");
            match within("connect", pitr::pg::ReplicationClient::connect(&nohba)).await {
                Ok(_) => Err("nohba still connects"),
                Err(e) => Ok(e),
            }
        },
    )
    .await;
    assert!(matches!(err, ConnError::NoHbaEntry { .. }), "{err:?}");
    assert_eq!(err.sqlstate(), Some("28000"));
    let text = err.to_string();
    assert!(text.contains("host replication nohba"), "{text}");
    assert!(text.contains("pg_hba.conf"), "{text}");
    assert!(!text.contains("nohba-secret"), "{text}");

    // md5, SCRAM-SHA-256 and cleartext password all log in.
    for (user, password) in [
        ("md5user", "md5-secret"),
        ("scramuser", "scram secret"),
        ("pwuser", "clear-secret"),
    ] {
        let mut client = connect(&as_user(user, password)).await;
        assert_eq!(client.user(), user);
        let system = client.identify_system().await.expect("identify");
        assert_eq!(system.timeline, 1, "{user}");
    }

    // Without the leave, md5 and cleartext are refused before the password
    // leaves pitr (SCRAM needs none: it never sends the password).
    for (user, password) in [("md5user", "md5-secret"), ("pwuser", "clear-secret")] {
        let mut strict = as_user(user, password);
        strict.allow_insecure_password = false;
        let err = connect_err(&strict).await;
        assert!(
            matches!(err, ConnError::Untrusted { .. }),
            "{user}: {err:?}"
        );
        let text = err.to_string();
        assert!(text.contains("allow_insecure_password"), "{text}");
        assert!(!text.contains(password), "{text}");
    }

    // Wrong passwords are rejected by name, never echoed.
    for user in ["md5user", "scramuser", "pwuser"] {
        let err = connect_err(&as_user(user, "wrong-pw")).await;
        assert!(
            matches!(err, ConnError::PasswordRejected { .. }),
            "{user}: {err:?}"
        );
        assert_eq!(err.sqlstate(), Some("28P01"));
        let text = err.to_string();
        assert!(
            text.contains(&format!(
                "password authentication failed for user \"{user}\""
            )),
            "{text}"
        );
        assert!(text.contains("from the connection string"), "{text}");
        assert!(!text.contains("wrong-pw"), "{text}");
    }

    // No password at all.
    let err = connect_err(&as_user("scramuser", "")).await;
    assert!(matches!(err, ConnError::NoPassword { .. }), "{err:?}");
    assert!(err.to_string().contains("SCRAM-SHA-256"), "{err}");
    assert!(err.to_string().contains("~/.pgpass"), "{err}");

    // From a password file.
    let passfile = pg.dir().join("pgpass");
    fs::write(
        &passfile,
        format!("# test\n127.0.0.1:{}:*:scramuser:scram secret\n", pg.port()),
    )
    .expect("write pgpass");
    fs::set_permissions(&passfile, fs::Permissions::from_mode(0o600)).expect("chmod");
    let from_file = info(&format!(
        "{base} user=scramuser passfile={}",
        passfile.display()
    ));
    assert_eq!(
        from_file.password.as_ref().map(|p| p.source().clone()),
        Some(PasswordSource::PassFile {
            path: passfile.clone(),
            line: 2
        })
    );
    connect(&from_file).await.close().await.expect("close");

    // A role without REPLICATION.
    let err = connect_err(&as_user("norepl", "norepl-secret")).await;
    assert!(
        matches!(err, ConnError::NoReplicationPrivilege { .. }),
        "{err:?}"
    );
    assert_eq!(err.sqlstate(), Some("42501"));
    let text = err.to_string();
    assert!(text.contains("ALTER ROLE norepl REPLICATION"), "{text}");
    assert!(!err.is_transient());
}
