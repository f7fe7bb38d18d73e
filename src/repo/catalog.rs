//! The local catalog: an SQLite index of what the destinations hold.
//!
//! It is a cache, never the source of truth (invariant 4): every change comes
//! from a [`Commit`] that was first stored in the destinations, and replaying
//! those commits rebuilds it exactly.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use super::{ChunkId, Commit, ContentIds, Manifest, PackEntry, PackId};

/// A catalog failure.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// SQLite failed.
    #[error(
        "local catalog {path}: {source}; it can be rebuilt from the destinations with `pitr catalog rebuild`"
    )]
    Sqlite {
        /// The catalog file.
        path: PathBuf,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// The catalog file cannot be created or opened.
    #[error(
        "local catalog {path}: cannot create or open it: {source}; check that state_dir exists \
         and is writable by the user pitr runs as"
    )]
    Create {
        /// The catalog file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A stored row does not parse (the catalog file was damaged).
    #[error("local catalog {path}: {what}; rebuild it with `pitr catalog rebuild`")]
    Corrupt {
        /// The catalog file.
        path: PathBuf,
        /// What does not parse.
        what: String,
    },
}

/// One stored item.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemRow {
    /// The item's name.
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// When it was written.
    pub time: jiff::Timestamp,
    /// Kind-specific attributes.
    pub attrs: serde_json::Value,
    /// Its chunks.
    pub manifest: Manifest,
    /// The commit object that introduced it.
    pub commit: String,
}

/// An item as [`Catalog::item_heads`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemHead {
    /// The item's name.
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// Its manifest's end-to-end hash (hex).
    pub hash: String,
    /// The commit object that introduced it.
    pub commit: String,
}

/// Where a chunk is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLocation {
    /// The pack holding it.
    pub pack: PackId,
    /// Its place in the pack.
    pub entry: PackEntry,
}

/// The local catalog.
#[derive(Debug)]
pub struct Catalog {
    conn: Connection,
    path: PathBuf,
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS commits (
    object TEXT PRIMARY KEY, seq INTEGER NOT NULL, writer TEXT NOT NULL, time TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS packs (
    id TEXT PRIMARY KEY, size INTEGER NOT NULL, commit_object TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    id BLOB PRIMARY KEY, pack TEXT NOT NULL, offset INTEGER NOT NULL,
    length INTEGER NOT NULL, raw_length INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL, time TEXT NOT NULL,
    size INTEGER NOT NULL, attrs TEXT NOT NULL, manifest TEXT NOT NULL, commit_object TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS items_name ON items(name);
CREATE TABLE IF NOT EXISTS forgotten (
    commit_object TEXT NOT NULL, name TEXT NOT NULL,
    PRIMARY KEY (commit_object, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gc_packs (
    pack TEXT PRIMARY KEY, state TEXT NOT NULL, time TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS removal_commits (object TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cids (
    dest TEXT NOT NULL, object TEXT NOT NULL, cid TEXT NOT NULL, commit_object TEXT,
    PRIMARY KEY (dest, object)) WITHOUT ROWID;
";

/// One object's content identifier in a content-addressed destination
/// (a Storacha root CID).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CidRow {
    /// The object's name (`packs/…`, `catalog/…`, `config`, `keys/…`).
    pub object: String,
    /// The destination's configured name.
    pub destination: String,
    /// The content identifier (CIDv1, base32).
    pub cid: String,
    /// The stored commit that carries it; `None` while only this catalog
    /// knows it (the newest commit object's own CID, until the next commit
    /// carries it).
    pub commit: Option<String>,
}

/// A pack's garbage-collection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackGcState {
    /// Marked as unreferenced at this time: writers no longer deduplicate
    /// against it; deleted once the grace period passed and it is still
    /// unreferenced.
    Marked(jiff::Timestamp),
    /// Deleted from the destinations at this time (a tombstone: a commit
    /// that introduced it and is applied late does not bring it back).
    Deleted(jiff::Timestamp),
}

impl Catalog {
    /// Opens (creating if needed) the catalog at `path`.
    pub fn open(path: &Path) -> Result<Catalog, CatalogError> {
        // Created 0600 before SQLite opens it: SQLite gives its -wal and
        // -shm files the database file's mode.
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(|source| CatalogError::Create {
                    path: path.to_owned(),
                    source,
                })?;
        }
        let conn = Connection::open(path).map_err(|source| CatalogError::Sqlite {
            path: path.to_owned(),
            source,
        })?;
        // Several pitr processes share one state_dir (the sidecar, a
        // wal-fetch and its prefetcher): wait for each other's writes.
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(|source| CatalogError::Sqlite {
                path: path.to_owned(),
                source,
            })?;
        let cat = Catalog {
            conn,
            path: path.to_owned(),
        };
        cat.conn.execute_batch(SCHEMA).map_err(|e| cat.err(e))?;
        Ok(cat)
    }

    /// The catalog file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, source: rusqlite::Error) -> CatalogError {
        CatalogError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn corrupt(&self, what: String) -> CatalogError {
        CatalogError::Corrupt {
            path: self.path.clone(),
            what,
        }
    }

    /// Names of every commit object applied so far.
    pub fn applied_commits(&self) -> Result<std::collections::HashSet<String>, CatalogError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT object FROM commits")
            .map_err(|e| self.err(e))?;
        let rows = st.query_map([], |r| r.get(0)).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The sequence number for the next commit.
    pub fn next_seq(&self) -> Result<u64, CatalogError> {
        let max: Option<i64> = self
            .conn
            .query_row("SELECT max(seq) FROM commits", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        Ok(max.map_or(1, |m| m as u64 + 1))
    }

    /// Records a commit that is stored in the destinations. Idempotent.
    pub fn apply(&mut self, object: &str, commit: &Commit) -> Result<(), CatalogError> {
        let path = self.path.clone();
        let err = |source| CatalogError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        let inserted = tx
            .execute(
                "INSERT OR IGNORE INTO commits (object, seq, writer, time) VALUES (?1, ?2, ?3, ?4)",
                params![
                    object,
                    commit.seq as i64,
                    commit.writer,
                    commit.time.to_string()
                ],
            )
            .map_err(err)?;
        if inserted == 0 {
            return Ok(());
        }
        {
            let mut pack_st = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO packs (id, size, commit_object) VALUES (?1, ?2, ?3)",
                )
                .map_err(err)?;
            let mut chunk_st = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO chunks (id, pack, offset, length, raw_length) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(err)?;
            let mut deleted_st = tx
                .prepare_cached("SELECT 1 FROM gc_packs WHERE pack = ?1 AND state = 'deleted'")
                .map_err(err)?;
            // A chunk already recorded in a marked pack moves to the new
            // copy: a writer stored it again because it must not reuse the
            // marked one.
            let mut move_st = tx
                .prepare_cached(
                    "UPDATE chunks SET pack = ?2, offset = ?3, length = ?4, raw_length = ?5
                     WHERE id = ?1 AND pack IN (SELECT pack FROM gc_packs)",
                )
                .map_err(err)?;
            for p in &commit.packs {
                if deleted_st.exists([&p.id]).map_err(err)? {
                    continue;
                }
                pack_st
                    .execute(params![p.id, p.size as i64, object])
                    .map_err(err)?;
                for c in &p.chunks {
                    let row = params![
                        &c.chunk.0[..],
                        p.id,
                        c.offset as i64,
                        c.length,
                        c.raw_length
                    ];
                    if chunk_st.execute(row).map_err(err)? == 0 {
                        move_st.execute(row).map_err(err)?;
                    }
                }
            }
            let mut item_st = tx
                .prepare_cached(
                    "INSERT INTO items (name, kind, time, size, attrs, manifest, commit_object)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(err)?;
            let mut forgotten_st = tx
                .prepare_cached("SELECT 1 FROM forgotten WHERE commit_object = ?1 AND name = ?2")
                .map_err(err)?;
            for it in &commit.items {
                if forgotten_st
                    .exists(params![object, it.manifest.name])
                    .map_err(err)?
                {
                    continue;
                }
                let manifest =
                    serde_json::to_string(&it.manifest).expect("a manifest always serializes");
                item_st
                    .execute(params![
                        it.manifest.name,
                        it.kind,
                        it.time.to_string(),
                        it.manifest.size as i64,
                        it.attrs.to_string(),
                        manifest,
                        object
                    ])
                    .map_err(err)?;
            }
            apply_cids(&tx, object, commit).map_err(err)?;
            apply_removals(&tx, object, commit).map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Records content identifiers known locally only (computed from bytes
    /// just stored) that no stored commit carries yet; the next commit
    /// carries them ([`Self::uncarried_cids`]). Keeps a known row as it is.
    pub fn note_cids(&self, object: &str, cids: &[(String, String)]) -> Result<(), CatalogError> {
        let mut st = self
            .conn
            .prepare_cached(
                "INSERT OR IGNORE INTO cids (dest, object, cid, commit_object) VALUES (?1, ?2, ?3, NULL)",
            )
            .map_err(|e| self.err(e))?;
        for (dest, cid) in cids {
            st.execute(params![dest, object, cid])
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Whether the catalog knows `object`'s content identifier in `dest`.
    pub fn has_cid(&self, dest: &str, object: &str) -> Result<bool, CatalogError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT 1 FROM cids WHERE dest = ?1 AND object = ?2")
            .map_err(|e| self.err(e))?;
        st.exists(params![dest, object]).map_err(|e| self.err(e))
    }

    /// Content identifiers no stored commit carries yet: what the next
    /// commit must carry so a rebuild finds them.
    pub fn uncarried_cids(&self) -> Result<ContentIds, CatalogError> {
        let mut out = ContentIds::new();
        for r in self.cid_rows("WHERE commit_object IS NULL")? {
            out.entry(r.destination)
                .or_default()
                .insert(r.object, r.cid);
        }
        Ok(out)
    }

    /// Every known content identifier, by object then destination.
    pub fn content_ids(&self) -> Result<Vec<CidRow>, CatalogError> {
        self.cid_rows("")
    }

    fn cid_rows(&self, filter: &str) -> Result<Vec<CidRow>, CatalogError> {
        let mut st = self
            .conn
            .prepare_cached(&format!(
                "SELECT object, dest, cid, commit_object FROM cids {filter} ORDER BY object, dest"
            ))
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| {
                Ok(CidRow {
                    object: r.get(0)?,
                    destination: r.get(1)?,
                    cid: r.get(2)?,
                    commit: r.get(3)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Whether a chunk is stored in a pack a writer may reuse: packs marked
    /// for garbage collection do not count, so a writer stores such a chunk
    /// again instead of making a marked pack live behind the collector's
    /// back.
    pub fn has_chunk(&self, id: &ChunkId) -> Result<bool, CatalogError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT 1 FROM chunks WHERE id = ?1
                 AND NOT EXISTS (SELECT 1 FROM gc_packs g WHERE g.pack = chunks.pack)",
            )
            .map_err(|e| self.err(e))?;
        st.exists([&id.0[..]]).map_err(|e| self.err(e))
    }

    /// Whether a chunk is stored at all, marked packs included (reading and
    /// verification: a marked pack is still there until it is deleted).
    pub fn holds_chunk(&self, id: &ChunkId) -> Result<bool, CatalogError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT 1 FROM chunks WHERE id = ?1")
            .map_err(|e| self.err(e))?;
        st.exists([&id.0[..]]).map_err(|e| self.err(e))
    }

    /// The garbage-collection state of every pack that has one.
    pub fn pack_gc_states(
        &self,
    ) -> Result<std::collections::HashMap<String, PackGcState>, CatalogError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT pack, state, time FROM gc_packs")
            .map_err(|e| self.err(e))?;
        let rows: Vec<(String, String, String)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(|e| self.err(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))?;
        rows.into_iter()
            .map(|(pack, state, time)| {
                let t: jiff::Timestamp = time
                    .parse()
                    .map_err(|e| self.corrupt(format!("pack {pack}: gc time: {e}")))?;
                let s = match state.as_str() {
                    "marked" => PackGcState::Marked(t),
                    "deleted" => PackGcState::Deleted(t),
                    other => return Err(self.corrupt(format!("pack {pack}: gc state {other:?}"))),
                };
                Ok((pack, s))
            })
            .collect()
    }

    /// Every `(chunk id, pack)` row: which pack a reader fetches each chunk
    /// from.
    pub fn chunk_packs(&self) -> Result<Vec<(ChunkId, String)>, CatalogError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT id, pack FROM chunks")
            .map_err(|e| self.err(e))?;
        let rows: Vec<(Vec<u8>, String)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.err(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))?;
        rows.into_iter()
            .map(|(id, pack)| {
                let id: [u8; 32] = id
                    .try_into()
                    .map_err(|_| self.corrupt("bad chunk id".into()))?;
                Ok((ChunkId(id), pack))
            })
            .collect()
    }

    /// Commit objects that may be deleted from the destinations: every
    /// item they introduced is forgotten, every pack deleted, they remove
    /// nothing themselves (a commit that forgets or records garbage
    /// collection is kept, so a rebuild replays the removals), and they
    /// carry no content identifier of an object that stays (an earlier
    /// commit that is kept, the descriptor, a key object): a rebuild
    /// finds those identifiers only in the commits that carry them.
    pub fn empty_commits(&self) -> Result<Vec<String>, CatalogError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT object FROM commits c
                 WHERE NOT EXISTS (SELECT 1 FROM items i WHERE i.commit_object = c.object)
                 AND NOT EXISTS (SELECT 1 FROM packs p WHERE p.commit_object = c.object)
                 AND NOT EXISTS (SELECT 1 FROM removal_commits r WHERE r.object = c.object)
                 ORDER BY object",
            )
            .map_err(|e| self.err(e))?;
        let rows = st.query_map([], |r| r.get(0)).map_err(|e| self.err(e))?;
        let mut empty: std::collections::BTreeSet<String> =
            rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?;
        let carried: Vec<(String, String)> = {
            let mut st = self
                .conn
                .prepare_cached(
                    "SELECT DISTINCT commit_object, object FROM cids WHERE commit_object IS NOT NULL",
                )
                .map_err(|e| self.err(e))?;
            let rows = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(|e| self.err(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?
        };
        // Until nothing changes: keeping a commit keeps the ones carrying
        // its identifier.
        loop {
            let keep: Vec<String> = carried
                .iter()
                .filter(|(by, object)| empty.contains(by) && !empty.contains(object))
                .map(|(by, _)| by.clone())
                .collect();
            if keep.is_empty() {
                break;
            }
            for k in keep {
                empty.remove(&k);
            }
        }
        Ok(empty.into_iter().collect())
    }

    /// Where a chunk is stored.
    pub fn chunk_location(&self, id: &ChunkId) -> Result<Option<ChunkLocation>, CatalogError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT pack, offset, length, raw_length FROM chunks WHERE id = ?1")
            .map_err(|e| self.err(e))?;
        let row: Option<(String, i64, u32, u32)> = st
            .query_row([&id.0[..]], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()
            .map_err(|e| self.err(e))?;
        let Some((pack, offset, length, raw_length)) = row else {
            return Ok(None);
        };
        let pack =
            PackId::parse(&pack).ok_or_else(|| self.corrupt(format!("bad pack id {pack:?}")))?;
        Ok(Some(ChunkLocation {
            pack,
            entry: PackEntry {
                chunk: *id,
                offset: offset as u64,
                length,
                raw_length,
            },
        }))
    }

    /// Every pack: `(id, size)`.
    pub fn packs(&self) -> Result<Vec<(PackId, u64)>, CatalogError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT id, size FROM packs ORDER BY id")
            .map_err(|e| self.err(e))?;
        let rows: Vec<(String, i64)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.err(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))?;
        rows.into_iter()
            .map(|(id, size)| {
                PackId::parse(&id)
                    .map(|p| (p, size as u64))
                    .ok_or_else(|| self.corrupt(format!("bad pack id {id:?}")))
            })
            .collect()
    }

    /// The entries of one pack, by offset.
    pub fn pack_entries(&self, pack: &PackId) -> Result<Vec<PackEntry>, CatalogError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT id, offset, length, raw_length FROM chunks WHERE pack = ?1 ORDER BY offset",
            )
            .map_err(|e| self.err(e))?;
        let rows: Vec<(Vec<u8>, i64, u32, u32)> = st
            .query_map([pack.to_string()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .map_err(|e| self.err(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))?;
        rows.into_iter()
            .map(|(id, offset, length, raw_length)| {
                let id: [u8; 32] = id
                    .try_into()
                    .map_err(|_| self.corrupt("bad chunk id".into()))?;
                Ok(PackEntry {
                    chunk: ChunkId(id),
                    offset: offset as u64,
                    length,
                    raw_length,
                })
            })
            .collect()
    }

    /// Items whose name starts with `prefix`, oldest first.
    pub fn items(&self, prefix: &str) -> Result<Vec<ItemRow>, CatalogError> {
        // A range on the name index, not a scan of every row: a SQLite
        // database captured every second adds 86 400 items a day.
        let end = prefix_end(prefix);
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT name, kind, time, attrs, manifest, commit_object FROM items
                 WHERE name >= ?1 AND (?2 IS NULL OR name < ?2) ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let rows: Vec<(String, String, String, String, String, String)> = st
            .query_map(rusqlite::params![prefix, end], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .map_err(|e| self.err(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))?;
        rows.into_iter()
            .map(|(name, kind, time, attrs, manifest, commit)| {
                Ok(ItemRow {
                    time: time
                        .parse()
                        .map_err(|e| self.corrupt(format!("item {name}: time: {e}")))?,
                    attrs: serde_json::from_str(&attrs)
                        .map_err(|e| self.corrupt(format!("item {name}: attrs: {e}")))?,
                    manifest: serde_json::from_str(&manifest)
                        .map_err(|e| self.corrupt(format!("item {name}: manifest: {e}")))?,
                    name,
                    kind,
                    commit,
                })
            })
            .collect()
    }

    /// Every item's name, kind, end-to-end hash and commit, oldest first:
    /// what comparing two catalogs needs, without parsing a manifest.
    pub fn item_heads(&self) -> Result<Vec<ItemHead>, CatalogError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT name, kind, json_extract(manifest, '$.hash'), commit_object
                 FROM items ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| {
                Ok(ItemHead {
                    name: r.get(0)?,
                    kind: r.get(1)?,
                    hash: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                    commit: r.get(3)?,
                })
            })
            .map_err(|e| self.err(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// The item of this name that this commit introduced.
    pub fn item_in_commit(
        &self,
        name: &str,
        commit: &str,
    ) -> Result<Option<ItemRow>, CatalogError> {
        Ok(self
            .items(name)?
            .into_iter()
            .rev()
            .find(|i| i.name == name && i.commit == commit))
    }

    /// The newest item of this exact name.
    pub fn latest_item(&self, name: &str) -> Result<Option<ItemRow>, CatalogError> {
        Ok(self.items(name)?.into_iter().rev().find(|i| i.name == name))
    }

    /// A canonical text dump of everything the catalog knows, independent of
    /// insertion order: two catalogs that know the same are dumped equal.
    pub fn dump(&self) -> Result<String, CatalogError> {
        let queries = [
            "SELECT 'commit', object, seq, writer, time FROM commits ORDER BY object",
            "SELECT 'pack', id, size, commit_object FROM packs ORDER BY id",
            "SELECT 'chunk', hex(id), pack, offset, length, raw_length FROM chunks ORDER BY id",
            "SELECT 'item', commit_object, name, kind, time, size, attrs, manifest FROM items
             ORDER BY commit_object, id",
            "SELECT 'forgotten', commit_object, name FROM forgotten ORDER BY commit_object, name",
            "SELECT 'gc', pack, state, time FROM gc_packs ORDER BY pack",
            // Carried by a stored commit: what a rebuild recovers.
            "SELECT 'cid', dest, object, cid FROM cids WHERE commit_object IS NOT NULL
             ORDER BY dest, object",
        ];
        let mut out = String::new();
        for q in queries {
            let mut st = self.conn.prepare(q).map_err(|e| self.err(e))?;
            let n = st.column_count();
            let mut rows = st.query([]).map_err(|e| self.err(e))?;
            while let Some(row) = rows.next().map_err(|e| self.err(e))? {
                let cols: Vec<String> = (0..n)
                    .map(|i| match row.get_ref(i) {
                        // Text as a quoted string so a dump reads (and diffs) as text.
                        Ok(rusqlite::types::ValueRef::Text(t)) => {
                            format!("{:?}", String::from_utf8_lossy(t))
                        }
                        Ok(v) => format!("{v:?}"),
                        Err(e) => format!("<{e}>"),
                    })
                    .collect();
                out.push_str(&cols.join("\t"));
                out.push('\n');
            }
        }
        Ok(out)
    }
}

/// Records the content identifiers a commit carries, inside the
/// transaction that records it. A row known locally only becomes carried by
/// this commit; the first identifier recorded for an object stays (objects
/// are immutable, so two different ones mean a writer bug, logged).
fn apply_cids(
    tx: &rusqlite::Transaction<'_>,
    object: &str,
    commit: &Commit,
) -> Result<(), rusqlite::Error> {
    if commit.cids.is_empty() {
        return Ok(());
    }
    let mut get = tx.prepare_cached("SELECT cid FROM cids WHERE dest = ?1 AND object = ?2")?;
    let mut put = tx.prepare_cached(
        "INSERT INTO cids (dest, object, cid, commit_object) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (dest, object) DO UPDATE
         SET commit_object = coalesce(cids.commit_object, excluded.commit_object)
         WHERE cids.cid = excluded.cid",
    )?;
    let mut dead =
        tx.prepare_cached("SELECT 1 FROM gc_packs WHERE pack = ?1 AND state = 'deleted'")?;
    for (dest, objects) in &commit.cids {
        for (name, cid) in objects {
            // A pack deleted by a commit applied earlier stays deleted.
            if let Some(pack) = name.rsplit('/').next().and_then(PackId::parse)
                && name.starts_with("packs/")
                && dead.exists([pack.to_string()])?
            {
                continue;
            }
            let known: Option<String> = get
                .query_row(params![dest, name], |r| r.get(0))
                .optional()?;
            if let Some(k) = known.filter(|k| k != cid) {
                tracing::warn!(destination = %dest, object = %name, catalog = %k, commit = %object,
                    "commit {object} carries CID {cid} for {name} in {dest}, the catalog holds {k}; keeping {k} (`pitr verify` compares with the destination)");
                continue;
            }
            put.execute(params![dest, name, cid, object])?;
        }
    }
    Ok(())
}

/// Applies a commit's forgets and garbage-collection records inside the
/// transaction that records it.
fn apply_removals(
    tx: &rusqlite::Transaction<'_>,
    object: &str,
    commit: &Commit,
) -> Result<(), rusqlite::Error> {
    if !commit.removes() {
        return Ok(());
    }
    tx.execute(
        "INSERT OR IGNORE INTO removal_commits (object) VALUES (?1)",
        [object],
    )?;
    let time = commit.time.to_string();
    {
        let mut tomb = tx.prepare_cached(
            "INSERT OR IGNORE INTO forgotten (commit_object, name) VALUES (?1, ?2)",
        )?;
        let mut del =
            tx.prepare_cached("DELETE FROM items WHERE name = ?2 AND commit_object = ?1")?;
        for f in &commit.forget {
            for name in &f.names {
                tomb.execute(params![f.commit, name])?;
                del.execute(params![f.commit, name])?;
            }
        }
        let mut mark = tx.prepare_cached(
            "INSERT INTO gc_packs (pack, state, time) VALUES (?1, 'marked', ?2)
             ON CONFLICT (pack) DO NOTHING",
        )?;
        for p in &commit.gc.mark {
            mark.execute(params![p, time])?;
        }
        let mut unmark =
            tx.prepare_cached("DELETE FROM gc_packs WHERE pack = ?1 AND state = 'marked'")?;
        for p in &commit.gc.unmark {
            unmark.execute([p])?;
        }
        let mut delete = tx.prepare_cached(
            "INSERT INTO gc_packs (pack, state, time) VALUES (?1, 'deleted', ?2)
             ON CONFLICT (pack) DO UPDATE SET state = 'deleted', time = excluded.time",
        )?;
        let mut drop_pack = tx.prepare_cached("DELETE FROM packs WHERE id = ?1")?;
        let mut drop_cids = tx.prepare_cached("DELETE FROM cids WHERE object = ?1")?;
        for p in &commit.gc.delete {
            delete.execute(params![p, time])?;
            drop_pack.execute([p])?;
            if let Some(id) = PackId::parse(p) {
                drop_cids.execute([id.object_name()])?;
            }
        }
    }
    if !commit.gc.delete.is_empty() {
        // One scan for all of them (the chunks table has no index by pack,
        // which would slow every insert for a daily collection).
        tx.execute(
            "DELETE FROM chunks WHERE pack IN (SELECT pack FROM gc_packs WHERE state = 'deleted')",
            [],
        )?;
    }
    Ok(())
}

/// The smallest string greater than every string that starts with
/// `prefix` (`None`: no bound, as for the empty prefix). SQLite's BINARY
/// collation compares UTF-8 bytes, which orders like code points, so the
/// strings starting with `prefix` are exactly `prefix <= s < prefix_end`.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(c) = chars.pop() {
        if let Some(next) = (u32::from(c) + 1..=u32::from(char::MAX)).find_map(char::from_u32) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::{GcRecord, PackRecord};

    fn commit(seq: u64, pack: Option<&str>, cids: &[(&str, &str, &str)]) -> Commit {
        let mut c = Commit {
            version: 1,
            seq,
            writer: "0123456789abcdef".into(),
            time: "2026-11-24T06:00:00Z".parse().expect("time"),
            packs: pack
                .map(|p| PackRecord {
                    id: p.to_owned(),
                    size: 10,
                    chunks: vec![],
                })
                .into_iter()
                .collect(),
            items: vec![],
            forget: vec![],
            gc: GcRecord::default(),
            cids: ContentIds::new(),
        };
        for (dest, object, cid) in cids {
            c.cids
                .entry((*dest).to_owned())
                .or_default()
                .insert((*object).to_owned(), (*cid).to_owned());
        }
        c.version = c.version_for();
        c
    }

    fn pack_object(id: &str) -> String {
        PackId::parse(id).expect("id").object_name()
    }

    #[test]
    fn content_ids_are_carried_by_commits_and_replayed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cat = Catalog::open(&dir.path().join("c.db")).expect("open");
        let p1 = "11".repeat(32);
        let c1 = commit(1, Some(&p1), &[("st", &pack_object(&p1), "bafy-p1")]);
        cat.apply(&c1.object_name(), &c1).expect("apply");
        // The commit object's own id is known locally only, until the next
        // commit carries it.
        cat.note_cids(&c1.object_name(), &[("st".into(), "bafy-c1".into())])
            .expect("note");
        cat.note_cids("config", &[("st".into(), "bafy-config".into())])
            .expect("note");
        let pending = cat.uncarried_cids().expect("uncarried");
        assert_eq!(
            pending["st"].keys().cloned().collect::<Vec<_>>(),
            [c1.object_name(), "config".to_owned()]
        );
        let mut c2 = commit(2, None, &[]);
        c2.cids = pending;
        c2.version = c2.version_for();
        cat.apply(&c2.object_name(), &c2).expect("apply");
        assert!(cat.uncarried_cids().expect("uncarried").is_empty());
        let rows = cat.content_ids().expect("rows");
        assert_eq!(rows.len(), 3);
        assert!(rows.iter().all(|r| r.commit.is_some()), "{rows:?}");
        assert!(cat.has_cid("st", "config").expect("has"));
        assert!(!cat.has_cid("other", "config").expect("has"));

        // A rebuild (replay into an empty catalog) knows the same.
        let mut again = Catalog::open(&dir.path().join("d.db")).expect("open");
        again.apply(&c2.object_name(), &c2).expect("apply");
        again.apply(&c1.object_name(), &c1).expect("apply");
        assert_eq!(again.dump().expect("dump"), cat.dump().expect("dump"));
        assert_eq!(again.content_ids().expect("rows"), rows);

        // A conflicting id for a known object keeps the first.
        let c3 = commit(3, None, &[("st", "config", "bafy-other")]);
        cat.apply(&c3.object_name(), &c3).expect("apply");
        let config: Vec<_> = cat
            .content_ids()
            .expect("rows")
            .into_iter()
            .filter(|r| r.object == "config")
            .collect();
        assert_eq!(config[0].cid, "bafy-config");
    }

    #[test]
    fn deleted_packs_lose_their_ids_and_commits_carrying_live_ids_stay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cat = Catalog::open(&dir.path().join("c.db")).expect("open");
        let (p1, p2) = ("11".repeat(32), "22".repeat(32));
        let c1 = commit(
            1,
            Some(&p1),
            &[
                ("st", &pack_object(&p1), "bafy-p1"),
                ("st", "config", "bafy-cfg"),
            ],
        );
        let c2 = commit(2, Some(&p2), &[("st", &pack_object(&p2), "bafy-p2")]);
        // c3 carries c2's id; it introduces nothing else.
        let c3 = commit(3, None, &[("st", &c2.object_name(), "bafy-c2")]);
        for c in [&c1, &c2, &c3] {
            cat.apply(&c.object_name(), c).expect("apply");
        }
        // Every pack deleted: c1, c2 and c3 hold nothing live of their own.
        let mut gc = commit(4, None, &[]);
        gc.gc.delete = vec![p1.clone(), p2.clone()];
        gc.version = gc.version_for();
        cat.apply(&gc.object_name(), &gc).expect("apply");
        let objects: Vec<String> = cat
            .content_ids()
            .expect("rows")
            .into_iter()
            .map(|r| r.object)
            .collect();
        assert_eq!(objects, [c2.object_name(), "config".to_owned()]);
        // c1 carries the descriptor's id: kept. c2 goes, so c3 (carrying
        // only c2's id) may go too.
        assert_eq!(
            cat.empty_commits().expect("empty"),
            [c2.object_name(), c3.object_name()]
        );
        // A commit introducing a deleted pack, applied late, does not bring
        // its id back.
        let mut late = Catalog::open(&dir.path().join("late.db")).expect("open");
        late.apply(&gc.object_name(), &gc).expect("apply");
        late.apply(&c1.object_name(), &c1).expect("apply");
        assert_eq!(
            late.content_ids()
                .expect("rows")
                .into_iter()
                .map(|r| r.object)
                .collect::<Vec<_>>(),
            ["config"]
        );
    }

    #[test]
    fn prefix_end_bounds_exactly_the_strings_with_the_prefix() {
        assert_eq!(prefix_end(""), None);
        assert_eq!(prefix_end("c/").as_deref(), Some("c0"));
        assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_end("\u{D7FF}").as_deref(), Some("\u{E000}"));
        assert_eq!(prefix_end("\u{10FFFF}"), None);
        let names = [
            "",
            "c",
            "c/",
            "c/x",
            "c0",
            "c/\u{10FFFF}",
            "b~",
            "sqlite/auth/1",
            "sqlite/auth",
            "sqlite/authz/1",
            "\u{10FFFF}",
        ];
        for prefix in ["", "c/", "sqlite/auth/", "sqlite/auth", "\u{10FFFF}"] {
            let end = prefix_end(prefix);
            for name in names {
                // SQLite's BINARY collation: byte order.
                let in_range = name.as_bytes() >= prefix.as_bytes()
                    && end.as_ref().is_none_or(|e| name.as_bytes() < e.as_bytes());
                assert_eq!(in_range, name.starts_with(prefix), "{prefix:?} {name:?}");
            }
        }
    }
}
