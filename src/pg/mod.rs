//! What pitr knows of PostgreSQL, shared by every part that talks to a
//! server or reads its files: the wire client ([`conn`]: replication and
//! plain SQL), LSNs and WAL file names, what each supported major's WAL
//! looks like ([`FORMATS`]), which directory holds a major's server
//! binaries, which OS user a server runs as when pitr runs
//! as root, and servers pitr starts itself on data it restored (isolated:
//! a private socket, no TCP, nothing that reaches production). Restore,
//! test restores and the demo all go through here, so a fix or a new place
//! to look applies to all of them.

mod backup;
mod bin;
pub mod conn;
mod format;
mod lsn;
mod server;
mod user;

pub use backup::{Checkpoint, ManifestChecksums};
pub use bin::{BinError, Looked, PgBin, data_dir_major, find, find_in, find_newest, major_of};
pub use conn::{ConnError, ConnInfo, ReplMessage, ReplicationClient, ReplicationStream};
pub use format::{FORMATS, WalFormat, major_of_version, supported_majors};
pub use lsn::{Lsn, ParseLsnError, Segment, history_file_name};
pub use server::{
    Postmaster, ServerStart, StartError, StopError, isolated_server_settings, start_isolated,
};
pub use user::{NoOsUser, server_owner};

/// A size setting as PostgreSQL's `SHOW` prints it (`16MB`, `1GB`, `8192`,
/// `64kB`) in bytes; `None` for `-1` (no limit) or anything else.
pub fn setting_bytes(text: &str) -> Option<u64> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let n: u64 = n.parse().ok()?;
    let factor: u64 = match unit {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(factor)
}

#[cfg(test)]
mod tests {
    #[test]
    fn size_settings_parse_in_postgres_units() {
        for (text, bytes) in [
            ("16MB", Some(16 << 20)),
            ("1GB", Some(1 << 30)),
            ("10GB", Some(10 << 30)),
            ("8192", Some(8192)),
            ("64kB", Some(64 << 10)),
            ("-1", None),
            ("MB", None),
            ("many", None),
            ("16 parsecs", None),
        ] {
            assert_eq!(super::setting_bytes(text), bytes, "{text:?}");
        }
    }
}
