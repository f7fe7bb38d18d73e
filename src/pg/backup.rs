//! Options of the server's `BASE_BACKUP` command that the config names:
//! here, below both the config and the base-backup source, so that neither
//! imports the other for them.

/// How the server's backup checkpoint is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoint {
    /// At once, at full I/O speed (`pitr backup`).
    Fast,
    /// Spread over `checkpoint_completion_target` (scheduled backups).
    Spread,
}

/// Which checksum the server's `backup_manifest` carries for each file
/// (`MANIFEST_CHECKSUMS`). pitr's integrity does not rest on it (every chunk
/// is keyed BLAKE3 and authenticated); it checks that what arrived is what
/// the server listed, and `pg_verifybackup` uses it after a restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ManifestChecksums {
    /// `CRC32C`, PostgreSQL's own default: cheap for the server and for pitr.
    #[default]
    Crc32c,
    /// `SHA256`: the server hashes every byte (seconds of CPU per GB).
    Sha256,
}

impl ManifestChecksums {
    /// The name in `MANIFEST_CHECKSUMS` and in the manifest's
    /// `Checksum-Algorithm`.
    pub fn as_manifest(self) -> &'static str {
        match self {
            ManifestChecksums::Crc32c => "CRC32C",
            ManifestChecksums::Sha256 => "SHA256",
        }
    }
}
