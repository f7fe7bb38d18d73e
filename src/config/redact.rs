//! Hiding passwords in connection strings, so a logged `Debug` of the config
//! does not leak them.

/// `conninfo` with every password replaced by `***`: the `password=` keyword
/// (quoted or not) and the password of a URI's user info or query.
pub(super) fn conninfo(s: &str) -> String {
    if s.contains("://") {
        uri(s)
    } else {
        keywords(s)
    }
}

/// Keyword form: `host=x password='a b' user=y`.
fn keywords(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("password") {
        let (before, after) = rest.split_at(i + "password".len());
        out.push_str(before);
        let value = after.trim_start();
        let Some(value) = value.strip_prefix('=') else {
            rest = after;
            continue;
        };
        out.push_str("=***");
        let value = value.trim_start();
        rest = if let Some(quoted) = value.strip_prefix('\'') {
            // Up to the closing quote; `\'` and `\\` are escapes.
            let mut end = quoted.len();
            let mut escaped = false;
            for (j, c) in quoted.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '\'' => {
                        end = j + 1;
                        break;
                    }
                    _ => {}
                }
            }
            quoted.get(end..).unwrap_or_default()
        } else {
            let end = value.find(char::is_whitespace).unwrap_or(value.len());
            value.get(end..).unwrap_or_default()
        };
    }
    out.push_str(rest);
    out
}

/// URI form: `postgresql://user:secret@host/db?password=secret`.
fn uri(s: &str) -> String {
    let Some(scheme_end) = s.find("://").map(|i| i + 3) else {
        return s.to_owned();
    };
    let (scheme, rest) = s.split_at(scheme_end);
    // The user info ends at the last '@' before the query, even past a
    // '/': a password may hold a raw '/', and stopping there would print
    // the rest of it.
    let authority_end = match rest.find('?').map_or(rest, |q| &rest[..q]).rfind('@') {
        Some(at) => rest[at..].find(['/', '?']).map_or(rest.len(), |i| at + i),
        None => rest.find(['/', '?']).unwrap_or(rest.len()),
    };
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***{host}"),
                None => authority.to_owned(),
            }
        }
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some(("password", _)) => "password=***".to_owned(),
                    _ => p.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}{authority}{tail}")
}
