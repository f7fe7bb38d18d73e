//! SQLite captures in the repository: item names, attributes, and finding
//! them again.
//!
//! Each capture is one item `sqlite/<name>/<seq>` (seq zero-padded to 12
//! digits, so names sort in capture order) holding a page set
//! (`pageset.rs`); its kind says whether it is a full snapshot
//! (`sqlite-snapshot`) or the pages changed since capture `base`
//! (`sqlite-pages`).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::repo::Repository;
use crate::repo::catalog::ItemRow;

/// Kind of an item holding every page.
pub const KIND_SNAPSHOT: &str = "sqlite-snapshot";
/// Kind of an item holding the pages changed since its base.
pub const KIND_PAGES: &str = "sqlite-pages";

/// What the catalog records with each capture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureAttrs {
    /// The capture's number, increasing by one per capture of this database.
    pub seq: u64,
    /// The capture this one applies on top of; `None` for a snapshot.
    pub base: Option<u64>,
    /// The time the read transaction's snapshot was taken: the database as
    /// stored holds every transaction committed before it, none after.
    pub at: Timestamp,
    /// Bytes per page.
    pub page_size: u32,
    /// The database's size in pages.
    pub db_pages: u32,
    /// Pages the item holds.
    pub pages: u32,
    /// XOR of every page's hash (`pageset::page_hash`) over the whole
    /// database after this capture, 16 hex digits.
    pub checksum: String,
    /// `wal` or `rollback`: the journal mode the capture saw.
    pub mode: String,
    /// Why it was taken: `start`, `schedule`, `changes`, or a continuity
    /// break (`rescan: …`).
    pub reason: String,
}

/// A capture found in the catalog.
#[derive(Debug, Clone)]
pub struct StoredCapture {
    /// The catalog row.
    pub item: ItemRow,
    /// Its attributes.
    pub attrs: CaptureAttrs,
    /// Whether it is a snapshot.
    pub snapshot: bool,
}

/// A catalog failure or unreadable attributes.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] crate::repo::catalog::CatalogError),
    /// Attributes this build cannot read.
    #[error("catalog item {item} has unreadable SQLite capture attributes: {what}")]
    BadAttrs {
        /// The item.
        item: String,
        /// What is wrong.
        what: String,
    },
}

/// The item name prefix of database `name`.
pub fn prefix(name: &str) -> String {
    format!("sqlite/{name}/")
}

/// The item name of capture `seq` of database `name`.
pub fn item_name(name: &str, seq: u64) -> String {
    format!("sqlite/{name}/{seq:012}")
}

/// Every capture of database `name`, in capture order.
pub fn captures(repo: &Repository, name: &str) -> Result<Vec<StoredCapture>, StoreError> {
    let items = repo.catalog().items(&prefix(name))?;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let snapshot = match item.kind.as_str() {
            KIND_SNAPSHOT => true,
            KIND_PAGES => false,
            _ => continue,
        };
        let attrs: CaptureAttrs =
            serde_json::from_value(item.attrs.clone()).map_err(|e| StoreError::BadAttrs {
                item: item.name.clone(),
                what: e.to_string(),
            })?;
        out.push(StoredCapture {
            item,
            attrs,
            snapshot,
        });
    }
    out.sort_by_key(|c| c.attrs.seq);
    Ok(out)
}

/// The next free capture number of database `name`.
pub fn next_seq(repo: &Repository, name: &str) -> Result<u64, StoreError> {
    Ok(captures(repo, name)?.last().map_or(1, |c| c.attrs.seq + 1))
}
