//! `postgresql://[user[:password]@][host][:port][/dbname][?k=v&...]` URLs,
//! as libpq's `conninfo_uri_parse` reads them, turned into keyword pairs.
//!
//! Every part is percent-decoded; a host in `[...]` is an IPv6 address; a
//! percent-encoded host starting with `/` (`%2Ftmp`) is a socket directory.
//! Errors never repeat the URL: it may hold a password.

use super::conninfo::ConnInfoError;

/// The keyword pairs a URL stands for.
pub(super) fn parse(url: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
    let rest = url
        .strip_prefix("postgresql://")
        .or_else(|| url.strip_prefix("postgres://"))
        .ok_or_else(|| bad("it must start with postgresql:// or postgres://"))?;
    let mut out = Vec::new();

    let (main, query) = match rest.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (rest, None),
    };
    // The last '@' before the query ends the user info, even past a '/':
    // libpq wants '@' and '/' in a password %-encoded, but taking the rest
    // of a password for the host, port or database name would print it in
    // an error.
    let (authority, path) = {
        let from = main.rfind('@').unwrap_or(0);
        match main[from..].find('/') {
            Some(i) => (&main[..from + i], Some(&main[from + i + 1..])),
            None => (main, None),
        }
    };
    let hostport = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                out.push(("user".to_owned(), decode(user, "the user name")?));
            }
            if let Some(p) = password {
                out.push(("password".to_owned(), decode(p, "the password")?));
            }
            hostport
        }
        None => authority,
    };

    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("an IPv6 host opened with [ is not closed with ]"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| bad("unexpected text after the IPv6 host's ]"))?,
            ),
        };
        (addr.to_owned(), port)
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (decode(h, "the host")?, Some(p)),
            None => (decode(hostport, "the host")?, None),
        }
    };
    if host.contains(',') || port.is_some_and(|p| p.contains(',')) {
        return Err(ConnInfoError::MultipleHosts(host));
    }
    if !host.is_empty() {
        out.push(("host".to_owned(), host));
    }
    if let Some(p) = port.filter(|p| !p.is_empty()) {
        out.push(("port".to_owned(), decode(p, "the port")?));
    }
    if let Some(db) = path.filter(|p| !p.is_empty()) {
        out.push(("dbname".to_owned(), decode(db, "the database name")?));
    }

    for param in query.into_iter().flat_map(|q| q.split('&')) {
        if param.is_empty() {
            continue;
        }
        let (k, v) = param
            .split_once('=')
            .ok_or_else(|| bad("a query parameter has no \"=\""))?;
        let k = decode(k, "a query parameter name")?;
        let v = decode(v, "a query parameter value")?;
        // libpq's JDBC compatibility: ssl=true means sslmode=require.
        if k == "ssl" {
            if v != "true" {
                return Err(bad("the ssl parameter only accepts true"));
            }
            out.push(("sslmode".to_owned(), "require".to_owned()));
        } else {
            out.push((k, v));
        }
    }
    Ok(out)
}

fn bad(why: &str) -> ConnInfoError {
    ConnInfoError::InvalidUrl(why.to_owned())
}

/// Decodes `%XX` escapes; `what` names the part for the error message.
fn decode(s: &str, what: &str) -> Result<String, ConnInfoError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad(&format!("invalid percent-encoding in {what}")))?;
            if hex == 0 {
                return Err(bad(&format!("forbidden %00 in {what}")));
            }
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad(&format!("{what} is not UTF-8 once decoded")))
}
