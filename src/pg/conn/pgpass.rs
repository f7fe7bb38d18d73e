//! Password files (`~/.pgpass`, `PGPASSFILE`, `passfile=`) with libpq's rules:
//! lines `host:port:database:user:password`, `*` matches any value, `\:` and
//! `\\` are escapes, `#` starts a comment line, the first matching line wins,
//! and a file that group or others may read is ignored with a warning.
//!
//! A unix-socket host matches as `localhost` when it is the default socket
//! directory, else as its path.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::conninfo::{DEFAULT_HOST, DEFAULT_SOCKET_DIR, Host, Password, PasswordSource};

/// libpq reads no further into a line than this.
const MAX_LINE: usize = 64 * 1024;

/// The password for this host, port, database and user in `file`, if the
/// file exists, is private and has a matching line.
pub(super) fn lookup(
    file: &Path,
    host: &Host,
    port: u16,
    dbname: &str,
    user: &str,
) -> Option<Password> {
    let meta = fs::metadata(file).ok()?;
    if !meta.is_file() {
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            file = %file.display(),
            "password file has group or world access and is ignored: \
             chmod 0600 it (libpq's rule)"
        );
        return None;
    }
    let text = match fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "cannot read the password file");
            return None;
        }
    };
    let host = match host {
        Host::Tcp(h) => h.clone(),
        Host::Unix(dir) if dir == Path::new(DEFAULT_SOCKET_DIR) => DEFAULT_HOST.to_owned(),
        Host::Unix(dir) => dir.display().to_string(),
    };
    let port = port.to_string();
    find(&text, [&host, &port, dbname, user]).map(|(secret, line)| {
        Password::new(
            secret,
            PasswordSource::PassFile {
                path: file.to_path_buf(),
                line,
            },
        )
    })
}

/// The password and 1-based line number of the first line of `text` whose
/// four fields match `wanted`.
pub(super) fn find(text: &str, wanted: [&str; 4]) -> Option<(String, usize)> {
    for (i, line) in text.lines().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() || line.starts_with('#') || line.len() > MAX_LINE {
            continue;
        }
        let mut rest = line;
        let mut ok = true;
        for want in wanted {
            match match_field(rest, want) {
                Some(after) => rest = after,
                None => {
                    ok = false;
                    break;
                }
            }
        }
        if !ok {
            continue;
        }
        // The password runs to the next unescaped ':' or the end.
        let mut secret = String::new();
        let mut chars = rest.chars();
        while let Some(c) = chars.next() {
            match c {
                ':' => break,
                '\\' => match chars.next() {
                    Some(e) => secret.push(e),
                    None => secret.push('\\'),
                },
                c => secret.push(c),
            }
        }
        if secret.is_empty() {
            return None;
        }
        return Some((secret, i + 1));
    }
    None
}

/// Matches one `field:` at the start of `line` against `want`; returns what
/// follows the colon.
fn match_field<'a>(line: &'a str, want: &str) -> Option<&'a str> {
    if let Some(after) = line.strip_prefix("*:") {
        return Some(after);
    }
    let mut value = String::new();
    let mut chars = line.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            ':' => return (value == want).then(|| &line[i + 1..]),
            '\\' => value.push(chars.next()?.1),
            c => value.push(c),
        }
    }
    None
}
