//! A restore trusts no name it reads (invariant 8): listings forged through
//! the repository API, as a sidecar holding the repository key could write
//! them, restore nothing outside the target and fail naming the entry.

use std::path::{Path, PathBuf};

use pitr::basebackup::{
    self, BackupRecord, KIND_BACKUP, KIND_FILE, KIND_META, ListingEntry, TablespaceInfo,
    files_prefix, record_name,
};
use pitr::pg::Lsn;
use pitr::repo::{Chunking, Repository};

use crate::support::TestRepo;

const DB: &str = "main";

fn entry(archive: &str, path: &str, kind: &str, link: &str) -> ListingEntry {
    ListingEntry {
        archive: archive.to_owned(),
        path: path.to_owned(),
        kind: kind.to_owned(),
        mode: if kind == "dir" { 0o700 } else { 0o600 },
        mtime: 1_700_000_000,
        size: 5,
        link: link.to_owned(),
    }
}

/// Writes backup `id` whose listing is `listing` (each file holding
/// `"owned"`), with `tablespaces`, as a forged catalog commit would.
async fn forge(repo: &Repository, id: &str, listing: &[ListingEntry], tablespaces: &[u32]) {
    let prefix = files_prefix(DB, id);
    let mut w = repo.writer();
    let attrs = serde_json::json!({ "backup": id });
    for e in listing.iter().filter(|e| e.kind == "file") {
        let name = format!("{prefix}{}/{}", e.archive, e.path);
        w.put(
            &name,
            KIND_FILE,
            attrs.clone(),
            Chunking::Cdc,
            &b"owned"[..],
        )
        .await
        .expect("put a file");
    }
    let manifest = format!("{prefix}backup_manifest");
    w.put(
        &manifest,
        KIND_META,
        attrs.clone(),
        Chunking::Cdc,
        &b"{}"[..],
    )
    .await
    .expect("put the manifest");
    let listing_item = format!("{prefix}listing");
    let bytes = serde_json::to_vec(listing).expect("json");
    w.put(&listing_item, KIND_META, attrs, Chunking::Cdc, &bytes[..])
        .await
        .expect("put the listing");
    let now = jiff::Timestamp::now();
    let record = BackupRecord {
        id: id.to_owned(),
        label: "forged".into(),
        database: DB.into(),
        system_id: "1".into(),
        server_version: "15.0".into(),
        start_lsn: Lsn(0x0100_0028),
        start_timeline: 1,
        end_lsn: Lsn(0x0100_0100),
        end_timeline: 1,
        started: now,
        finished: now,
        tablespaces: tablespaces
            .iter()
            .map(|&oid| TablespaceInfo {
                oid,
                location: "/srv/ts".into(),
            })
            .collect(),
        files: listing.iter().filter(|e| e.kind == "file").count() as u64,
        bytes: 0,
        stored_bytes: 0,
        parent: None,
        listing: listing_item,
        manifest,
        restorable: false,
    };
    w.put(
        &record_name(DB, id),
        KIND_BACKUP,
        serde_json::to_value(&record).expect("json"),
        Chunking::Cdc,
        &b""[..],
    )
    .await
    .expect("put the record");
    w.commit().await.expect("commit");
}

/// Every path under `dir`, links not followed.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        out.push(p.clone());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(tree(&p));
        }
    }
    out
}

/// Restores forged backup `id` into `outer/target` (tablespaces into
/// `outer/ts`); returns the error, after checking that nothing but the
/// target and the tablespace directory appeared in `outer` and nothing at
/// all in `outer/elsewhere` (where the forged links point).
async fn restore_forged(repo: &Repository, outer: &Path, id: &str) -> String {
    std::fs::create_dir_all(outer.join("elsewhere")).expect("mkdir");
    let target = outer.join("target");
    let opts = basebackup::RestoreOptions {
        tablespace_dir: Some(outer.join("ts")),
        ..Default::default()
    };
    let err = basebackup::restore(repo, DB, id, &target, &opts)
        .await
        .expect_err("a forged listing is refused");
    let outside: Vec<PathBuf> = tree(outer)
        .into_iter()
        .filter(|p| !p.starts_with(&target) && !p.starts_with(outer.join("ts")))
        .filter(|p| p != &outer.join("elsewhere"))
        .collect();
    assert!(
        outside.is_empty(),
        "written outside the target: {outside:?}"
    );
    err.to_string()
}

/// A forged backup: its id, listing and tablespaces, the entry the
/// restore must refuse, and words of why.
type Case<'a> = (&'a str, Vec<ListingEntry>, Vec<u32>, &'a str, &'a str);

#[tokio::test]
async fn forged_listings_restore_nothing_outside_the_target() {
    let t = TestRepo::new().await;
    let repo = t.open().await;
    let outer = t.dir.path().join("restores");
    let escape_abs = outer.join("escaped-absolute");
    // (backup id, listing, tablespaces, the entry refused, why)
    let cases: Vec<Case> = vec![
        (
            "20260101T000001Z",
            vec![
                entry("base", "PG_VERSION", "file", ""),
                entry("base", escape_abs.to_str().expect("utf-8"), "file", ""),
            ],
            vec![],
            escape_abs.to_str().expect("utf-8"),
            "is absolute",
        ),
        (
            "20260101T000002Z",
            vec![
                entry("base", "PG_VERSION", "file", ""),
                entry("base", "../escaped-dotdot", "file", ""),
            ],
            vec![],
            "base/../escaped-dotdot",
            "`..`",
        ),
        (
            "20260101T000003Z",
            vec![
                entry("base", "global", "dir", ""),
                entry("base", "global/./pg_control", "file", ""),
            ],
            vec![],
            "base/global/./pg_control",
            "not normalised",
        ),
        (
            // A link out, then a file written through it.
            "20260101T000004Z",
            vec![
                entry("base", "PG_VERSION", "file", ""),
                entry(
                    "base",
                    "evil",
                    "symlink",
                    outer.join("elsewhere").to_str().expect("utf-8"),
                ),
                entry("base", "evil/planted", "file", ""),
            ],
            vec![],
            "base/evil",
            "symbolic link",
        ),
        (
            // The tablespace link the backup may have, then a file of the
            // data directory's archive written through it.
            "20260101T000005Z",
            vec![
                entry("base", "PG_VERSION", "file", ""),
                entry("base", "pg_tblspc", "dir", ""),
                entry(
                    "base",
                    "pg_tblspc/16384",
                    "symlink",
                    outer.join("elsewhere").to_str().expect("utf-8"),
                ),
                entry("base", "pg_tblspc/16384/planted", "file", ""),
            ],
            vec![16384],
            "base/pg_tblspc/16384/planted",
            "beneath the link",
        ),
    ];
    for (id, listing, tablespaces, entry, why) in cases {
        forge(&repo, id, &listing, &tablespaces).await;
        let case_dir = outer.join(id);
        let err = restore_forged(&repo, &case_dir, id).await;
        assert!(
            err.contains(&format!("entry \"{entry}\""))
                || err.contains(&format!("entry \"base/{entry}\"")),
            "{id}: the error names the entry {entry:?}: {err}"
        );
        assert!(err.contains(why), "{id}: says why ({why}): {err}");
        assert!(
            !case_dir.join("target").join("PG_VERSION").exists(),
            "{id}: nothing is written before the listing is checked"
        );
    }
    assert!(!escape_abs.exists());

    // The same forger's honest listing restores, its tablespace linked to
    // where the caller said, not where the record says.
    let id = "20260101T000006Z";
    let listing = vec![
        entry("base", "PG_VERSION", "file", ""),
        entry("base", "global", "dir", ""),
        entry("base", "global/pg_control", "file", ""),
        entry("base", "pg_tblspc", "dir", ""),
        entry("base", "pg_tblspc/16384", "symlink", "/srv/ts"),
        entry("16384", "PG_15_202209061", "dir", ""),
        entry("16384", "PG_15_202209061/x", "file", ""),
    ];
    forge(&repo, id, &listing, &[16384]).await;
    let dir = outer.join(id);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let target = dir.join("target");
    let opts = basebackup::RestoreOptions {
        tablespace_dir: Some(dir.join("ts")),
        ..Default::default()
    };
    basebackup::restore(&repo, DB, id, &target, &opts)
        .await
        .expect("an honest listing restores");
    assert_eq!(
        std::fs::read(target.join("global/pg_control")).expect("read"),
        b"owned"
    );
    assert_eq!(
        std::fs::read_link(target.join("pg_tblspc/16384")).expect("a link"),
        dir.join("ts/16384")
    );
    assert_eq!(
        std::fs::read(dir.join("ts/16384/PG_15_202209061/x")).expect("read"),
        b"owned"
    );
}

/// A zstd stream of exactly `len` bytes that expands to `blocks` × 128 KiB
/// of zeros: one frame of RLE blocks (four bytes each), padded with a
/// skippable frame.
fn zstd_bomb(blocks: u32, len: usize) -> Vec<u8> {
    let mut z = Vec::new();
    z.extend_from_slice(&0xFD2F_B528u32.to_le_bytes());
    // Frame header descriptor: no content size, no checksum, no
    // dictionary; window descriptor: 2^(10 + 7) = 128 KiB.
    z.push(0x00);
    z.push(7 << 3);
    for i in 0..blocks {
        let last = u32::from(i + 1 == blocks);
        // Block_Size (regenerated size for RLE) | Block_Type 1 (RLE) | Last_Block.
        let header = (128 * 1024u32) << 3 | (1 << 1) | last;
        z.extend_from_slice(&header.to_le_bytes()[..3]);
        z.push(0);
    }
    assert!(z.len() + 8 <= len, "the bomb fits in the blob it replaces");
    let pad = len - z.len() - 8;
    z.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
    z.extend_from_slice(&u32::try_from(pad).expect("small").to_le_bytes());
    z.resize(len, 0);
    z
}

/// This process's peak resident set size, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status");
    kib * 1024
}

#[tokio::test]
async fn a_pack_replaced_by_a_zstd_bomb_fails_in_bounded_memory() {
    use pitr::repo::read_index;
    let t = TestRepo::new().await;
    let repo = t.open().await;
    // 1 MiB that does not compress: one chunk, one pack.
    let mut data = vec![0u8; 1 << 20];
    blake3::Hasher::new().finalize_xof().fill(&mut data);
    let mut w = repo.writer();
    let manifest = w
        .put(
            "test/bomb",
            "test",
            serde_json::json!({}),
            Chunking::Fixed(1 << 20),
            &data[..],
        )
        .await
        .expect("put");
    w.commit().await.expect("commit");
    assert_eq!(manifest.chunks.len(), 1);
    let pack = crate::support::first_pack(&t.store());
    let object = pack
        .strip_prefix(t.store())
        .expect("in the store")
        .to_str()
        .expect("utf-8")
        .to_owned();
    let bytes = std::fs::read(&pack).expect("read the pack");
    let entries = read_index(repo.key(), &object, &bytes).expect("index");
    let e = entries
        .iter()
        .find(|e| e.chunk == manifest.chunks[0].0)
        .expect("the chunk's entry");

    // Its one blob replaced by a bomb of 16 GiB that authenticates: sealed
    // under the pack's data key (taken here with the identity; a forger
    // wraps a data key of its own to the recipients, which are public),
    // with the chunk id as associated data.
    let key_len = u32::from_le_bytes(bytes[10..14].try_into().expect("4 bytes")) as usize;
    let data_key =
        pitr::repo::DataKey::unwrap(&t.opts.identities, &object, &bytes[14..14 + key_len])
            .expect("the data key");
    let bomb = zstd_bomb(128 * 1024, e.length as usize - 40);
    let sealed = data_key.seal_chunk(&e.chunk, &bomb);
    assert_eq!(sealed.len(), e.length as usize, "the same size as the blob");
    let start = e.offset as usize;
    let mut forged = bytes.clone();
    forged[start..start + sealed.len()].copy_from_slice(&sealed);
    std::fs::write(&pack, forged).expect("replace the pack");

    let repo = t.open().await;
    let reader = repo.reader().expect("reader");
    let mut out = Vec::new();
    let err = reader
        .read_to(&manifest, &mut out)
        .await
        .expect_err("a bomb is refused")
        .to_string();
    assert!(err.contains(&object), "names the object: {err}");
    assert!(
        err.contains("decompresses to more than its recorded 1048576 bytes"),
        "says what is wrong: {err}"
    );
    assert!(out.is_empty(), "nothing of the bomb is handed on");
    let peak = peak_rss();
    assert!(
        peak < 1 << 30,
        "peak RSS {peak} bytes: decompression was not bounded by the recorded length"
    );
}

/// Every file and directory under `dir` whose mode lets anyone but the
/// owner in: `(path, mode)`.
fn open_to_others(dir: &Path) -> Vec<(PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    for p in tree(dir) {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o7777;
        if !meta.file_type().is_symlink() && mode & 0o077 != 0 {
            out.push((p, mode));
        }
    }
    out
}

#[test]
fn state_files_are_private_after_a_run() {
    use crate::sqlite::{heavy, sqlite_config, sqlite3};
    use crate::support::Sidecar;
    use std::os::unix::fs::PermissionsExt;
    let _heavy = heavy();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let repo = rt.block_on(TestRepo::new());
    let db = repo.dir.path().join("app.db");
    sqlite3(
        &db,
        "PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES ('secret row');",
    );
    let cfg = sqlite_config(&repo, "app", &db);
    let state = repo.dir.path().join("state");
    // As a fresh host would start: no state yet, a umask that lets others
    // read what is not made private on purpose.
    std::fs::remove_dir_all(&state).expect("fresh state");
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let sidecar = Sidecar::start(&cfg);
    nix::sys::stat::umask(old);
    sidecar.wait_captures(1, std::time::Duration::from_secs(60));
    let files = tree(&state);
    let leaks = open_to_others(&state);
    sidecar.stop();
    assert!(
        files.iter().any(|p| p.ends_with("catalog.db")),
        "the catalog is there: {files:?}"
    );
    assert!(
        files
            .iter()
            .any(|p| p.starts_with(state.join("sqlite-spool"))),
        "the SQLite spool is there: {files:?}"
    );
    let leaks: Vec<String> = leaks
        .iter()
        .map(|(p, m)| format!("{} {m:o}", p.display()))
        .collect();
    assert!(leaks.is_empty(), "open to other users: {leaks:?}");
    let mode = std::fs::metadata(&state)
        .expect("state")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700, "state_dir");
}

#[test]
fn a_restore_pins_the_repository_key_and_says_which_it_trusts() {
    use crate::sqlite::add_sqlite;
    use crate::support::pitr;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let t = rt.block_on(TestRepo::new());
    let id = rt.block_on(t.open()).descriptor().key_id.clone();
    let cfg = t.write_config(&[]);
    add_sqlite(&cfg, "app", &t.dir.path().join("app.db"), "");
    let text = std::fs::read_to_string(&cfg).expect("config");
    let out = t.dir.path().join("out.db");
    let restore = |key_line: &str| {
        std::fs::write(
            &cfg,
            text.replacen("[repository]\n", &format!("[repository]\n{key_line}"), 1),
        )
        .expect("config");
        let o = pitr(&[
            "restore",
            "-c",
            cfg.to_str().expect("utf-8"),
            "--sqlite",
            "app",
            "--latest",
            "--target",
            out.to_str().expect("utf-8"),
        ]);
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };

    // Pinned to another key: refused before anything else.
    let other = "0123456789abcdef0123456789abcdef";
    let (code, err) = restore(&format!("key_id = \"{other}\"\n"));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!("pins {other}")) && err.contains(&id),
        "{err}"
    );
    assert!(!out.exists());

    // Pinned to its own key: trusted, and it says why.
    let (_, err) = restore(&format!("key_id = \"{id}\"\n"));
    assert!(
        err.contains(&format!(
            "Repository key {id}: trusted pinned by [repository] key_id"
        )),
        "{err}"
    );

    // A fresh host without a pin: the key comes from the store, and the
    // output says it is not pinned and how to pin it.
    std::fs::remove_dir_all(t.dir.path().join("state")).expect("fresh host");
    let (_, err) = restore("");
    assert!(err.contains("NOT pinned"), "{err}");
    assert!(err.contains(&format!("key_id = \"{id}\"")), "{err}");

    // The next restore on that host trusts the key it kept.
    let (_, err) = restore("");
    assert!(
        err.contains("kept since this host first opened the store"),
        "{err}"
    );
}
