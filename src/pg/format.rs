//! What differs between PostgreSQL majors in the WAL pitr decodes, as data:
//! one [`WalFormat`] per major in [`FORMATS`]. Supporting another major is
//! one more entry, its facts read from that major's headers.
//!
//! Everything not listed here is the same in 14 to 18 (checked in each
//! major's `access/xlog_internal.h`, `xlogrecord.h`, `xact.h`, `rmgr.h`,
//! `rmgrlist.h` and `catalog/pg_control.h`): the page header layout and its
//! flags (`XLP_ALL_FLAGS` 0x000F, the overwrite-contrecord flag included, as
//! back-patched to 14), the 24-byte record header, the block-reference ids,
//! the `XLOG_*` info values pitr reads (switch 0x40, restore point 0x70,
//! end of recovery 0x90, overwrite contrecord 0xD0), the transaction-end
//! opcodes, and the leading timestamp of `xl_xact_commit`, `xl_xact_abort`,
//! `xl_restore_point` and `xl_overwrite_contrecord`. (In 17 the checkpoint
//! record's `CheckPoint` and `xl_end_of_recovery` gained a `wal_level`
//! field, and `XLOG_CHECKPOINT_REDO` 0xE0 appeared; pitr reads none of them:
//! a checkpoint or an end of recovery is an [`Other`](super::RecordKind)
//! record to it. A field pitr starts reading goes here, per major.)

use std::fmt;

/// The WAL facts of one PostgreSQL major.
#[derive(Debug, PartialEq, Eq)]
pub struct WalFormat {
    /// The major version (14, 15, ...).
    pub major: u32,
    /// `XLOG_PAGE_MAGIC`: every page header starts with it; each major that
    /// changes the WAL format bumps it, so it names the major that wrote a
    /// page.
    pub page_magic: u16,
    /// `RM_MAX_BUILTIN_ID` (`RM_MAX_ID` before 15): the highest built-in
    /// resource manager id.
    pub max_builtin_rmgr: u8,
    /// Whether resource manager ids 128..=255 are custom ones (15 and later,
    /// `RM_MIN_CUSTOM_ID`); before, an id above the built-in ones is invalid.
    pub custom_rmgrs: bool,
    /// The `bimg_info` bits of a full-page image that say it is compressed:
    /// `BKPIMAGE_IS_COMPRESSED` (0x02) in 14; `BKPIMAGE_COMPRESS_PGLZ`,
    /// `_LZ4` and `_ZSTD` (0x04, 0x08, 0x10) from 15 on, where 0x02 became
    /// `BKPIMAGE_APPLY`.
    pub image_compressed: u8,
}

/// The majors pitr decodes, oldest first.
pub static FORMATS: [WalFormat; 5] = [
    WalFormat {
        major: 14,
        page_magic: 0xD10D,
        max_builtin_rmgr: 21,
        custom_rmgrs: false,
        image_compressed: 0x02,
    },
    WalFormat {
        major: 15,
        page_magic: 0xD110,
        max_builtin_rmgr: 21,
        custom_rmgrs: true,
        image_compressed: 0x04 | 0x08 | 0x10,
    },
    WalFormat {
        major: 16,
        page_magic: 0xD113,
        max_builtin_rmgr: 21,
        custom_rmgrs: true,
        image_compressed: 0x04 | 0x08 | 0x10,
    },
    WalFormat {
        major: 17,
        page_magic: 0xD116,
        max_builtin_rmgr: 21,
        custom_rmgrs: true,
        image_compressed: 0x04 | 0x08 | 0x10,
    },
    WalFormat {
        major: 18,
        page_magic: 0xD118,
        max_builtin_rmgr: 21,
        custom_rmgrs: true,
        image_compressed: 0x04 | 0x08 | 0x10,
    },
];

/// `RM_MIN_CUSTOM_ID`: the first custom resource manager id (15 and later).
const RM_MIN_CUSTOM: u8 = 128;

impl WalFormat {
    /// The format of PostgreSQL `major`, if pitr decodes it.
    pub fn of_major(major: u32) -> Option<&'static WalFormat> {
        FORMATS.iter().find(|f| f.major == major)
    }

    /// The format whose pages start with `magic`, if any supported major's.
    pub fn of_magic(magic: u16) -> Option<&'static WalFormat> {
        FORMATS.iter().find(|f| f.page_magic == magic)
    }

    /// The newest supported format: the rules used for records met before
    /// any page header told the major (a decoder started mid-page without
    /// one).
    pub fn newest() -> &'static WalFormat {
        &FORMATS[FORMATS.len() - 1]
    }

    /// Whether `rmgr` is a resource manager id this major can write.
    pub fn valid_rmgr(&self, rmgr: u8) -> bool {
        rmgr <= self.max_builtin_rmgr || (self.custom_rmgrs && rmgr >= RM_MIN_CUSTOM)
    }
}

impl fmt::Display for WalFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgreSQL {}", self.major)
    }
}

/// The supported majors for messages: "14, 15, 16, 17 and 18".
pub fn supported_majors() -> String {
    let majors: Vec<String> = FORMATS.iter().map(|f| f.major.to_string()).collect();
    match majors.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => majors.concat(),
    }
}

/// The major version in a `server_version` as servers report it
/// (`15.10 (Debian 15.10-0+deb12u1)`, `16beta1`, `9.6.24`: 9 for the
/// latter, which is never a supported one); `None` if it starts with no
/// number.
pub fn major_of_version(server_version: &str) -> Option<u32> {
    server_version
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|m| m.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_entry_per_major_in_order_with_distinct_magics() {
        for pair in FORMATS.windows(2) {
            assert_eq!(pair[1].major, pair[0].major + 1);
            assert!(pair[1].page_magic > pair[0].page_magic);
        }
        assert_eq!(supported_majors(), "14, 15, 16, 17 and 18");
        assert_eq!(WalFormat::of_magic(0xD116).map(|f| f.major), Some(17));
        assert_eq!(WalFormat::of_major(13), None);
    }

    #[test]
    fn majors_of_server_versions() {
        assert_eq!(major_of_version("15.10 (Debian 15.10-0+deb12u1)"), Some(15));
        assert_eq!(major_of_version("16beta1"), Some(16));
        assert_eq!(major_of_version("18.6"), Some(18));
        assert_eq!(major_of_version("9.6.24"), Some(9));
        assert_eq!(major_of_version("devel"), None);
    }

    #[test]
    fn custom_resource_managers_from_15_on() {
        let (pg14, pg15) = (&FORMATS[0], &FORMATS[1]);
        assert!(pg14.valid_rmgr(21) && !pg14.valid_rmgr(22) && !pg14.valid_rmgr(130));
        assert!(pg15.valid_rmgr(21) && !pg15.valid_rmgr(22) && pg15.valid_rmgr(130));
    }
}
