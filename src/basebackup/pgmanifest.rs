//! The server's `backup_manifest` (JSON, version 1): what pitr checks the
//! received files against.

use std::collections::BTreeMap;

use serde::Deserialize;

/// What was received of one file: size and SHA-256 (lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Bytes.
    pub size: u64,
    /// SHA-256, lowercase hex.
    pub sha256: String,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    #[serde(rename = "PostgreSQL-Backup-Manifest-Version")]
    version: u32,
    #[serde(rename = "Files")]
    files: Vec<File>,
}

#[derive(Debug, Deserialize)]
struct File {
    #[serde(rename = "Path")]
    path: Option<String>,
    #[serde(rename = "Encoded-Path")]
    encoded_path: Option<String>,
    #[serde(rename = "Size")]
    size: u64,
    #[serde(rename = "Checksum-Algorithm")]
    algorithm: Option<String>,
    #[serde(rename = "Checksum")]
    checksum: Option<String>,
}

/// Compares `received` (paths relative to the data directory, tablespace
/// files under `pg_tblspc/<oid>/`) with the manifest; returns the
/// differences (at most a few named, then a count), empty when they agree.
pub fn check(manifest: &[u8], received: &BTreeMap<String, Received>) -> Result<(), String> {
    let m: Manifest =
        serde_json::from_slice(manifest).map_err(|e| format!("it does not parse: {e}"))?;
    if m.version != 1 && m.version != 2 {
        return Err(format!("manifest version {} is unknown", m.version));
    }
    let mut problems = Vec::new();
    let mut listed = std::collections::HashSet::new();
    for f in &m.files {
        let path = match (&f.path, &f.encoded_path) {
            (Some(p), _) => p.clone(),
            (None, Some(hexed)) => match hex::decode(hexed) {
                Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                Err(_) => {
                    problems.push(format!("bad Encoded-Path {hexed:?}"));
                    continue;
                }
            },
            (None, None) => {
                problems.push("a file without a path".to_owned());
                continue;
            }
        };
        match received.get(&path) {
            None => problems.push(format!("{path} is listed but did not arrive")),
            Some(r) if r.size != f.size => problems.push(format!(
                "{path}: {} bytes arrived, the manifest says {}",
                r.size, f.size
            )),
            Some(r) => {
                if f.algorithm.as_deref() == Some("SHA256")
                    && f.checksum.as_deref() != Some(r.sha256.as_str())
                {
                    problems.push(format!("{path}: SHA-256 differs"));
                }
            }
        }
        listed.insert(path);
    }
    for path in received.keys() {
        if !listed.contains(path) {
            problems.push(format!("{path} arrived but is not in the manifest"));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let n = problems.len();
    problems.truncate(5);
    if n > 5 {
        problems.push(format!("and {} more", n - 5));
    }
    Err(problems.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_and_differs() {
        let m = br#"{ "PostgreSQL-Backup-Manifest-Version": 1,
            "Files": [
              { "Path": "PG_VERSION", "Size": 3, "Last-Modified": "x",
                "Checksum-Algorithm": "SHA256", "Checksum": "aa" },
              { "Encoded-Path": "6f6b", "Size": 0 } ],
            "WAL-Ranges": [], "Manifest-Checksum": "00" }"#;
        let mut r = BTreeMap::new();
        r.insert(
            "PG_VERSION".to_owned(),
            Received {
                size: 3,
                sha256: "aa".into(),
            },
        );
        r.insert(
            "ok".to_owned(),
            Received {
                size: 0,
                sha256: "zz".into(),
            },
        );
        assert_eq!(check(m, &r), Ok(()));
        r.get_mut("PG_VERSION").expect("present").sha256 = "bb".into();
        r.insert(
            "extra".to_owned(),
            Received {
                size: 1,
                sha256: String::new(),
            },
        );
        let err = check(m, &r).expect_err("differs");
        assert!(err.contains("PG_VERSION: SHA-256 differs"), "{err}");
        assert!(err.contains("extra arrived"), "{err}");
    }
}
