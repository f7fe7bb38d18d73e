//! Unit tests of connection-string parsing, `.pgpass` matching and password
//! redaction. The protocol itself is tested against real servers in
//! `tests/it/wal_conn.rs`.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use super::*;

fn env(pairs: &[(&'static str, &'static str)]) -> BTreeMap<&'static str, &'static str> {
    pairs.iter().copied().collect()
}

fn parse(s: &str, e: &[(&'static str, &'static str)]) -> Result<ConnInfo, ConnInfoError> {
    ConnInfo::parse_with(s, &env(e))
}

#[test]
fn keywords_parse_with_libpq_quoting() {
    let c = parse(
        r"host = db.example  port=5433 user='rep user' dbname='it\'s' application_name=a\ b connect_timeout=1",
        &[],
    )
    .expect("parses");
    assert_eq!(c.host, Host::Tcp("db.example".into()));
    assert_eq!(c.port, 5433);
    assert_eq!(c.user, "rep user");
    assert_eq!(c.dbname, "it's");
    assert_eq!(c.application_name, "a b");
    // libpq raises connect_timeout below 2 s to 2 s.
    assert_eq!(c.connect_timeout, Some(Duration::from_secs(2)));
    assert_eq!(c.sslmode, SslMode::Prefer);
    assert_eq!(c.password, None);
}

#[test]
fn defaults_and_environment_follow_libpq() {
    let c = parse("", &[("USER", "alice")]).expect("parses");
    assert_eq!(c.host, Host::Tcp("localhost".into()));
    assert_eq!(c.port, 5432);
    assert_eq!(c.user, "alice");
    assert_eq!(c.dbname, "alice");
    assert_eq!(c.application_name, "pitr");
    assert_eq!(c.connect_timeout, None);

    let e = [
        ("USER", "alice"),
        ("PGHOST", "/run/pg"),
        ("PGPORT", "6000"),
        ("PGUSER", "bob"),
        ("PGDATABASE", "db"),
        ("PGPASSWORD", "s3cret"),
        ("PGSSLMODE", "require"),
        ("PGAPPNAME", "app"),
    ];
    let c = parse("", &e).expect("parses");
    assert_eq!(c.host, Host::Unix(PathBuf::from("/run/pg")));
    assert_eq!(c.target(), "/run/pg/.s.PGSQL.6000");
    assert_eq!(
        (c.port, c.user.as_str(), c.dbname.as_str()),
        (6000, "bob", "db")
    );
    assert_eq!(c.sslmode, SslMode::Require);
    assert_eq!(c.application_name, "app");
    let pw = c.password.expect("PGPASSWORD is used");
    assert_eq!(
        (pw.expose(), pw.source()),
        ("s3cret", &PasswordSource::Environment)
    );

    // The string beats the environment.
    let c = parse("host=h port=7 user=u password=p", &e).expect("parses");
    assert_eq!((c.host, c.port), (Host::Tcp("h".into()), 7));
    assert_eq!(
        c.password.expect("given").source(),
        &PasswordSource::ConnInfo
    );

    assert_eq!(parse("host=h", &[]), Err(ConnInfoError::NoUser));
}

#[test]
fn bad_strings_name_the_keyword() {
    let err = parse("host=h bogus=1", &[("USER", "u")]).expect_err("unknown");
    assert_eq!(err, ConnInfoError::UnknownKeyword("bogus".into()));
    assert!(err.to_string().contains("\"bogus\""), "{err}");
    let err = parse("host=h target_session_attrs=any", &[("USER", "u")]).expect_err("unsupported");
    assert!(err.to_string().contains("not supported by pitr"), "{err}");
    assert_eq!(
        parse("host", &[]),
        Err(ConnInfoError::MissingEquals("host".into()))
    );
    assert_eq!(
        parse("password='abc", &[]),
        Err(ConnInfoError::UnterminatedQuote("password".into()))
    );
    let err = parse("port=99999 user=u", &[]).expect_err("port");
    assert!(err.to_string().contains("port=\"99999\""), "{err}");
    let err = parse("sslmode=maybe user=u", &[]).expect_err("sslmode");
    assert!(err.to_string().contains("verify-full"), "{err}");
    assert!(matches!(
        parse("host=a,b user=u", &[]),
        Err(ConnInfoError::MultipleHosts(_))
    ));
    assert!(parse("replication=database user=u", &[]).is_err());
    assert!(parse("replication=true user=u", &[]).is_ok());
}

#[test]
fn urls_parse_and_percent_decode() {
    let c = parse(
        "postgresql://rep%40x:p%3Ass@db.example:6432/my%20db?sslmode=verify-full&application_name=a",
        &[],
    )
    .expect("parses");
    assert_eq!(c.host, Host::Tcp("db.example".into()));
    assert_eq!(c.port, 6432);
    assert_eq!(c.user, "rep@x");
    assert_eq!(c.dbname, "my db");
    assert_eq!(c.password.as_ref().map(Password::expose), Some("p:ss"));
    assert_eq!(c.sslmode, SslMode::VerifyFull);
    assert_eq!(c.application_name, "a");

    let c = parse("postgres://u@[::1]:5433", &[]).expect("ipv6");
    assert_eq!(c.host, Host::Tcp("::1".into()));
    assert_eq!(c.target(), "[::1]:5433");

    let c = parse(
        "postgresql://%2Fvar%2Frun%2Fpostgresql/db?user=u&ssl=true",
        &[],
    )
    .expect("unix");
    assert_eq!(c.host, Host::Unix(PathBuf::from("/var/run/postgresql")));
    assert_eq!(c.sslmode, SslMode::Require);

    let c = parse("postgresql:///db?host=/tmp&port=5555", &[("USER", "me")]).expect("query host");
    assert_eq!(c.target(), "/tmp/.s.PGSQL.5555");
    assert_eq!(c.dbname, "db");

    let err = parse("postgresql://u:topsecret@h/db?bogus=1", &[]).expect_err("unknown");
    assert_eq!(err, ConnInfoError::UnknownKeyword("bogus".into()));
    let err = parse("postgresql://u:topsecret@[::1/db", &[]).expect_err("bad ipv6");
    assert!(!err.to_string().contains("topsecret"), "{err}");
    // A raw '/' in the password is still the password, and an error
    // about another part shows none of it.
    let c = parse("postgresql://u:top/secret@h:6432/db", &[]).expect("a '/' in the password");
    assert_eq!(
        c.password.as_ref().map(Password::expose),
        Some("top/secret")
    );
    assert_eq!((c.host.clone(), c.port), (Host::Tcp("h".into()), 6432));
    assert_eq!(c.dbname, "db");
    let err = parse("postgresql://u:top/secret@h:notaport/db", &[]).expect_err("bad port");
    assert!(!err.to_string().contains("secret"), "{err}");
    assert!(!err.to_string().contains("top/"), "{err}");
    let err = parse("postgresql://u:top%ZZsecret@h/db", &[]).expect_err("bad escape");
    assert!(err.to_string().contains("password"), "{err}");
    assert!(!err.to_string().contains("secret"), "{err}");
}

#[test]
fn passwords_never_show() {
    let c = parse("host=h user=u password='hunter2 x'", &[]).expect("parses");
    for text in [format!("{c:?}"), c.to_string()] {
        assert!(!text.contains("hunter2"), "{text}");
    }
    assert!(format!("{c:?}").contains("***"));
    assert_eq!(
        c.to_string(),
        "host=h port=5432 user=u dbname=u sslmode=prefer application_name=pitr"
    );
    let err = ConnError::PasswordRejected {
        target: c.target(),
        user: c.user.clone(),
        password_source: PasswordSource::ConnInfo,
        server: Box::default(),
    };
    assert!(!err.to_string().contains("hunter2"));
    assert!(
        err.to_string().contains("from the connection string"),
        "{err}"
    );
}

/// A password file with `mode`, and the environment pointing at it.
fn passfile(text: &str, mode: u32) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pgpass");
    fs::write(&path, text).expect("write pgpass");
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
    let path = path.to_string_lossy().into_owned();
    (dir, path)
}

#[test]
fn pgpass_lines_match_as_libpq_matches() {
    let text = "# comment\n\
                other:5432:*:rep:wrong-host\n\
                db.example:5433:*:rep:wrong-port\n\
                db.example:*:*:rep:pa\\:ss\\\\word\n\
                *:*:*:*:catch-all\n\
                localhost:5432:*:sock:via-socket\n\
                /tmp/pg:5432:*:sock:socket-dir\n";
    let (_dir, path) = passfile(text, 0o600);
    let with = |conninfo: &str| {
        let s = format!("{conninfo} passfile={path}");
        ConnInfo::parse_with(&s, &env(&[]))
            .expect("parses")
            .password
    };
    let pw = with("host=db.example port=5432 user=rep").expect("matches line 4");
    assert_eq!(pw.expose(), "pa:ss\\word");
    assert_eq!(
        pw.source(),
        &PasswordSource::PassFile {
            path: PathBuf::from(&path),
            line: 4
        }
    );
    assert_eq!(
        with("host=elsewhere user=x").map(|p| p.expose().to_owned()),
        Some("catch-all".into())
    );
    // A unix socket matches as localhost only in the default directory;
    // line 5's wildcard catches it first, so check the order holds.
    assert_eq!(
        with("host=/var/run/postgresql user=sock").map(|p| p.expose().to_owned()),
        Some("catch-all".into())
    );
    assert_eq!(
        pgpass::find(text, ["localhost", "5432", "db", "sock"]).map(|p| p.1),
        Some(5)
    );
    assert_eq!(
        pgpass::find(
            "/tmp/pg:5432:*:sock:socket-dir\n",
            ["/tmp/pg", "5432", "x", "sock"]
        )
        .map(|p| p.0),
        Some("socket-dir".into())
    );
    assert_eq!(pgpass::find("h:1:d:u:\n", ["h", "1", "d", "u"]), None);

    // The password in the string or PGPASSWORD wins over the file.
    let s = format!("host=db.example user=rep passfile={path}");
    let c = ConnInfo::parse_with(&s, &env(&[("PGPASSWORD", "envpw")])).expect("parses");
    assert_eq!(
        c.password.map(|p| p.expose().to_owned()),
        Some("envpw".into())
    );

    // PGPASSFILE and ~/.pgpass are found too.
    let c = ConnInfo::parse_with("host=h user=u", &env(&[("PGPASSFILE", leak(&path))]))
        .expect("parses");
    assert_eq!(
        c.password.map(|p| p.expose().to_owned()),
        Some("catch-all".into())
    );
    let home = _dir.path().to_string_lossy().into_owned();
    fs::copy(&path, _dir.path().join(".pgpass")).expect("copy");
    fs::set_permissions(
        _dir.path().join(".pgpass"),
        fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    let c = ConnInfo::parse_with("host=h user=u", &env(&[("HOME", leak(&home))])).expect("parses");
    assert_eq!(
        c.password.map(|p| p.expose().to_owned()),
        Some("catch-all".into())
    );
}

#[test]
fn pgpass_readable_by_others_is_ignored() {
    let (_dir, path) = passfile("*:*:*:*:secret\n", 0o644);
    let s = format!("host=h user=u passfile={path}");
    let c = ConnInfo::parse_with(&s, &env(&[])).expect("parses");
    assert_eq!(c.password, None);
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}
