//! TLS per sslmode against a cluster serving a certificate signed by a
//! throw-away CA (made with the openssl CLI, `support::tls`).

use std::fs;
use std::path::Path;
use std::time::Duration;

use pitr::pg::conn::ConnError;

use super::{connect, connect_err, eventually, info, within};
use crate::support::PgCluster;
use crate::support::tls::{make_ca, make_server_cert};

#[tokio::test]
async fn sslmodes_encrypt_and_verify_as_libpq_does() {
    let pg = PgCluster::start();
    let data = pg.data_dir();
    make_ca(&data, "ca");
    make_ca(&data, "other_ca");
    make_server_cert(&data);
    pg.psql("ALTER SYSTEM SET ssl = on");
    pg.psql("CREATE ROLE tlsuser LOGIN REPLICATION PASSWORD 'tls-secret'");
    // SCRAM over TLS: the server offers SCRAM-SHA-256-PLUS too.
    let hba = fs::read_to_string(data.join("pg_hba.conf")).expect("read pg_hba.conf");
    fs::write(
        data.join("pg_hba.conf"),
        format!("hostssl replication tlsuser 127.0.0.1/32 scram-sha-256\n{hba}"),
    )
    .expect("write pg_hba.conf");
    pg.psql("SELECT pg_reload_conf()");

    let base = format!("port={} user=postgres", pg.port());
    let require = info(&format!("host=127.0.0.1 {base} sslmode=require"));
    let client = eventually(
        "ssl = on took effect",
        Duration::from_secs(10),
        async || {
            within("connect", pitr::pg::ReplicationClient::connect(&require))
                .await
                .map_err(|e| e.to_string())
        },
    )
    .await;
    assert!(client.is_tls());
    let sql = pg.connect().await;
    let ssl: bool = sql
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = $1",
            &[&client.backend_pid()],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0);
    assert!(ssl, "the server sees our connection encrypted");

    // prefer: encrypted when offered.
    let prefer = connect(&info(&format!("host=127.0.0.1 {base} sslmode=prefer"))).await;
    assert!(prefer.is_tls());

    let ca = data.join("ca.crt");
    let other_ca = data.join("other_ca.crt");
    let with_root = |host: &str, mode: &str, root: &Path| {
        info(&format!(
            "host={host} {base} sslmode={mode} sslrootcert={}",
            root.display()
        ))
    };
    // verify-full: right CA and name.
    let mut full = connect(&with_root("localhost", "verify-full", &ca)).await;
    assert!(full.is_tls());
    assert_eq!(full.identify_system().await.expect("identify").timeline, 1);
    // verify-full: the certificate does not name 127.0.0.1.
    let err = connect_err(&with_root("127.0.0.1", "verify-full", &ca)).await;
    assert!(matches!(err, ConnError::Tls { .. }), "{err:?}");
    assert!(err.to_string().contains("name \"127.0.0.1\""), "{err}");
    // verify-ca: the chain is enough.
    assert!(
        connect(&with_root("127.0.0.1", "verify-ca", &ca))
            .await
            .is_tls()
    );
    // A CA that did not sign it fails both, and require too once a root is given.
    for mode in ["verify-full", "verify-ca", "require"] {
        let err = connect_err(&with_root("localhost", mode, &other_ca)).await;
        assert!(matches!(err, ConnError::Tls { .. }), "{mode}: {err:?}");
        assert!(err.to_string().contains("other_ca.crt"), "{err}");
    }
    // Verifying without any root is refused up front, as libpq does.
    let err = connect_err(&info(&format!("host=localhost {base} sslmode=verify-full"))).await;
    assert!(err.to_string().contains("sslrootcert"), "{err}");

    // SCRAM over TLS without channel binding.
    let mut scram = connect(&info(&format!(
        "host=127.0.0.1 port={} user=tlsuser password=tls-secret sslmode=require channel_binding=disable",
        pg.port()
    )))
    .await;
    assert!(scram.is_tls());
    assert_eq!(scram.identify_system().await.expect("identify").timeline, 1);

    // SCRAM bound to the TLS connection (tls-server-end-point): the server
    // checks the binding data against its own certificate.
    let mut bound = connect(&info(&format!(
        "host=localhost port={} user=tlsuser password=tls-secret sslmode=verify-full sslrootcert={} channel_binding=require",
        pg.port(),
        ca.display()
    )))
    .await;
    assert_eq!(bound.identify_system().await.expect("identify").timeline, 1);
    // require refuses what cannot bind: trust (postgres over TLS here) and
    // any password method without TLS.
    let err = connect_err(&info(&format!(
        "host=127.0.0.1 {base} sslmode=require channel_binding=require"
    )))
    .await;
    assert!(matches!(err, ConnError::Untrusted { .. }), "{err:?}");
    assert!(err.to_string().contains("channel_binding"), "{err}");
}
