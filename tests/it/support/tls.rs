//! Throw-away certificates for TLS tests, made with the openssl CLI (an
//! independent implementation: nothing of pitr's TLS code makes them).

use std::fs;
use std::path::Path;
use std::process::Command;

use super::run_as_pg_user;

/// Runs openssl in `dir` as the server's user, so the key it writes is the
/// server's to read.
fn openssl(dir: &Path, args: &[&str]) {
    let out = run_as_pg_user(&mut Command::new("openssl"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl (Debian: apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA `{name}.crt` / `{name}.key` in `dir`.
pub fn make_ca(dir: &Path, name: &str) {
    let (key, crt) = (format!("{name}.key"), format!("{name}.crt"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &crt,
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
        ],
    );
}

/// `server.crt` / `server.key` in `dir`, for DNS name `localhost` only,
/// signed by the CA `ca` (`ca.crt` / `ca.key` in `dir`).
pub fn make_server_cert(dir: &Path) {
    fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write ext file");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
}
