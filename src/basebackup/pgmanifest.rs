//! The server's `backup_manifest` (JSON, version 1): what pitr checks the
//! received files against.

use std::collections::BTreeMap;

use serde::Deserialize;

/// What was received of one file: size and checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Bytes.
    pub size: u64,
    /// The manifest's name of the checksum algorithm (`CRC32C`, `SHA256`).
    pub algorithm: &'static str,
    /// The checksum, lowercase hex as the manifest writes it.
    pub checksum: String,
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
            Some(r) => match f.algorithm.as_deref() {
                None | Some("NONE") => {}
                Some(a) if a == r.algorithm => {
                    if f.checksum.as_deref() != Some(r.checksum.as_str()) {
                        problems.push(format!("{path}: {a} checksum differs"));
                    }
                }
                Some(a) => problems.push(format!(
                    "{path}: the manifest has a {a} checksum, pitr asked for {}",
                    r.algorithm
                )),
            },
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
                algorithm: "SHA256",
                checksum: "aa".into(),
            },
        );
        r.insert(
            "ok".to_owned(),
            Received {
                size: 0,
                algorithm: "SHA256",
                checksum: "zz".into(),
            },
        );
        assert_eq!(check(m, &r), Ok(()));
        r.get_mut("PG_VERSION").expect("present").checksum = "bb".into();
        r.insert(
            "extra".to_owned(),
            Received {
                size: 1,
                algorithm: "SHA256",
                checksum: String::new(),
            },
        );
        let err = check(m, &r).expect_err("differs");
        assert!(err.contains("PG_VERSION: SHA256 checksum differs"), "{err}");
        assert!(err.contains("extra arrived"), "{err}");
    }

    #[test]
    fn crc32c_as_postgresql_writes_it() {
        // PostgreSQL 17's manifest entry for a 3-byte PG_VERSION "17\n".
        let m = br#"{ "PostgreSQL-Backup-Manifest-Version": 1,
            "Files": [
              { "Path": "PG_VERSION", "Size": 3, "Last-Modified": "x",
                "Checksum-Algorithm": "CRC32C", "Checksum": "CHECKSUM" } ] }"#;
        let crc = crc32c::crc32c(b"17\n");
        let text = String::from_utf8_lossy(m).replace("CHECKSUM", &hex::encode(crc.to_le_bytes()));
        let mut r = BTreeMap::new();
        let received = Received {
            size: 3,
            algorithm: "CRC32C",
            checksum: hex::encode(crc.to_le_bytes()),
        };
        r.insert("PG_VERSION".to_owned(), received.clone());
        assert_eq!(check(text.as_bytes(), &r), Ok(()));
        r.insert(
            "PG_VERSION".to_owned(),
            Received {
                algorithm: "SHA256",
                ..received
            },
        );
        let err = check(text.as_bytes(), &r).expect_err("another algorithm");
        assert!(
            err.contains("CRC32C checksum, pitr asked for SHA256"),
            "{err}"
        );
    }
}
