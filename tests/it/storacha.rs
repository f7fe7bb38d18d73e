//! The Storacha destination against Storacha's own service code on
//! loopback: `tests/storacha/harness.mjs` serves the published
//! `@storacha/upload-api` (its handlers, in-memory stores, test storage
//! nodes and indexing service) shaped as the live service, and a trustless
//! gateway that finds blocks only through registered sharded-DAG indexes.
//! Credentials are made as users hold them (`W3_PRINCIPAL`, `W3_PROOF`).
//! Storacha's JS client (`interop.mjs`) reads what pitr wrote and writes
//! what pitr reads. CAR bytes and CIDs are also compared with `ipfs-car`.

use std::time::Duration;

use bytes::Bytes;
use pitr::backoff::Backoff;
use pitr::ship::storacha::car::pack_named;
use pitr::ship::storacha::entry_name;
use pitr::ship::{Destination, PutOutcome, Retrying, StorachaDestination, StorachaOptions};
use serde_json::Value;

use crate::support::storacha::{
    CredentialOptions, GatewayFault, StorachaCredentials, StorachaHarness,
};

/// `ipfs-car pack FILE` (wrapping) and `ipfs-car hash`: (root, shard, CAR).
fn ipfs_car(dir: &std::path::Path, name: &str, data: &[u8]) -> (String, String, Vec<u8>) {
    let sub = dir.join(format!("in-{}", data.len()));
    std::fs::create_dir_all(&sub).expect("mkdir");
    let input = sub.join(name);
    std::fs::write(&input, data).expect("write input");
    let car_path = sub.join("out.car");
    let out = std::process::Command::new("ipfs-car")
        .arg("pack")
        .arg(&input)
        .arg("--output")
        .arg(&car_path)
        .output()
        .expect("run ipfs-car (npm install -g ipfs-car@3.1.0; .ci/setup does)");
    assert!(out.status.success(), "ipfs-car pack: {out:?}");
    let root = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let out = std::process::Command::new("ipfs-car")
        .arg("hash")
        .arg(&car_path)
        .output()
        .expect("run ipfs-car hash");
    assert!(out.status.success(), "ipfs-car hash: {out:?}");
    let shard = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (root, shard, std::fs::read(&car_path).expect("read CAR"))
}

#[test]
fn wrapped_cars_and_shard_cids_equal_ipfs_car() {
    let dir = tempfile::tempdir().expect("tempdir");
    let name = entry_name("packs/ab/abcdef0123");
    assert_eq!(name, "pitr%2Fpacks%2Fab%2Fabcdef0123");
    for size in [0usize, 1, 256 << 10, (1 << 20) + 1, 3 << 20] {
        let data = crate::support::data(size as u64 + 11, size, 0);
        let (root, shard, theirs) = ipfs_car(dir.path(), &name, &data);
        let ours = pack_named(&name, &data).expect("pack");
        assert_eq!(ours.root.to_string(), root, "{size} B: root CID");
        assert_eq!(ours.shard.to_string(), shard, "{size} B: shard CID");
        assert!(ours.bytes == theirs, "{size} B: CAR bytes differ");
    }
}

/// The destination's settings for `creds` on the harness.
fn config(h: &StorachaHarness, creds: &StorachaCredentials) -> StorachaOptions {
    StorachaOptions {
        space: creds.space.clone(),
        principal: creds.principal.clone(),
        proof: creds.proof.clone(),
        service: h.info.service_url.clone(),
        service_did: h.info.service_did.clone(),
        gateway: h.info.gateway_url.clone(),
        request_timeout: Duration::from_secs(60),
    }
}

/// The `[[destination]]` of `creds` on the harness, the key and the proof
/// in files under `dir` as deployments keep them (`principal_file`,
/// `proof_file`).
fn toml(
    h: &StorachaHarness,
    creds: &StorachaCredentials,
    name: &str,
    dir: &std::path::Path,
) -> String {
    let (principal, proof) = creds.write_files(dir);
    format!(
        "\n[[destination]]\nname = \"{name}\"\nkind = \"storacha\"\nspace = \"{}\"\nprincipal_file = \"{}\"\nproof_file = \"{}\"\nservice = \"{}\"\nservice_did = \"{}\"\ngateway = \"{}\"\n",
        creds.space,
        principal.display(),
        proof.display(),
        h.info.service_url,
        h.info.service_did,
        h.info.gateway_url
    )
}

/// Retries quick enough for a test, bounded as in production.
fn retrying(d: StorachaDestination) -> Retrying<StorachaDestination> {
    Retrying::new(
        d,
        Backoff::forever(Duration::from_millis(20), Duration::from_millis(200)).times(3),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn objects_are_stored_listed_read_and_deleted_with_the_blob_protocol() {
    let h = StorachaHarness::start();
    let creds = h.credentials(&CredentialOptions::default());
    let d = StorachaDestination::new("storacha", &config(&h, &creds));
    d.prepare().await.expect("prepare: the credentials work");

    // Enough objects for several upload/list pages (the service answers
    // pages of 20), one of several 1 MiB leaves.
    let big = Bytes::from(crate::support::data(7, (3 << 20) + 17, 0));
    let mut keys = Vec::new();
    for i in 0..45u64 {
        let key = format!("packs/{:02x}/object-{i:03}", i % 7);
        let data = if i == 0 {
            big.clone()
        } else {
            Bytes::from(crate::support::data(i, 100 + i as usize, 0))
        };
        assert_eq!(
            d.put_if_absent(&key, data.clone()).await.expect("put"),
            PutOutcome::Created,
            "{key}"
        );
        keys.push((key, data));
    }
    // Idempotent: the same object again is not uploaded twice.
    assert_eq!(
        d.put_if_absent(&keys[1].0, keys[1].1.clone())
            .await
            .expect("put again"),
        PutOutcome::AlreadyExists
    );

    // A fresh destination (no index in memory) lists every page to the end
    // and reads every object back, verified, through the gateway.
    let fresh = StorachaDestination::new("storacha", &config(&h, &creds));
    let listed = fresh.list("packs/").await.expect("list");
    let mut want: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
    want.sort_unstable();
    assert_eq!(
        listed.iter().map(|m| m.key.as_str()).collect::<Vec<_>>(),
        want
    );
    for (key, data) in &keys {
        assert_eq!(&fresh.get(key).await.expect("get"), data, "{key}");
    }
    assert_eq!(
        fresh
            .get_range(&keys[0].0, (1 << 20) - 5..(1 << 20) + 5)
            .await
            .expect("range"),
        big.slice((1 << 20) - 5..(1 << 20) + 5)
    );
    let meta = fresh.head(&keys[0].0).await.expect("head").expect("exists");
    assert_eq!(meta.size, big.len() as u64);
    // The same object through a fresh destination: the service already
    // has it.
    assert_eq!(
        fresh
            .put_if_absent(&keys[2].0, keys[2].1.clone())
            .await
            .expect("put through another"),
        PutOutcome::AlreadyExists
    );

    // The JS client sees every upload (its own listing, shards from
    // upload/shard/list) and reads the big object's bytes identical.
    let (uploads, pages) = h.js_list(&creds, None);
    assert_eq!(uploads.len(), keys.len());
    assert!(pages >= 3, "{pages} pages");
    let root = fresh
        .stored_content_id(&keys[0].0)
        .await
        .expect("cid")
        .expect("a root");
    let theirs = uploads
        .iter()
        .find(|u| u.root == root)
        .expect("the JS client lists pitr's upload");
    let car = pack_named(&entry_name(&keys[0].0), &big).expect("pack");
    assert_eq!(theirs.shards, vec![car.shard.to_string()]);
    let fetched = h.js_fetch(&creds, &root, Some(&entry_name(&keys[0].0)));
    assert!(fetched.bytes == big, "the JS client read other bytes");

    // A delete removes the upload and its blob (the gateway cannot find
    // the bytes any more), through a destination that never saw the put.
    let gone = &keys[0].0;
    fresh.delete(gone).await.expect("delete");
    let after = StorachaDestination::new("storacha", &config(&h, &creds));
    assert!(after.head(gone).await.expect("head").is_none());
    assert_eq!(
        after.list("packs/").await.expect("list").len(),
        keys.len() - 1
    );
    let (uploads, _) = h.js_list(&creds, None);
    assert!(!uploads.iter().any(|u| u.root == root));
    assert_eq!(h.stats().invocations.get("space/blob/remove"), Some(&1));
    // Deleting again is not an error.
    after.delete(gone).await.expect("delete again");
    // The object can be stored again after its delete.
    assert_eq!(
        after
            .put_if_absent(gone, big.clone())
            .await
            .expect("put again"),
        PutOutcome::Created
    );
    assert_eq!(&after.get(gone).await.expect("get again"), &big);
    // While a blob the space still holds is not sent twice: a fresh
    // destination (no index) storing a stored object only registers it.
    let puts = h.stats().puts;
    let again = StorachaDestination::new("storacha", &config(&h, &creds));
    let _ = again
        .put_if_absent(&keys[3].0, keys[3].1.clone())
        .await
        .expect("put");
    assert_eq!(h.stats().puts, puts, "a stored blob was sent again");
}

#[tokio::test(flavor = "multi_thread")]
async fn pitr_reads_an_upload_the_js_client_made() {
    let h = StorachaHarness::start();
    let creds = h.credentials(&CredentialOptions::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let key = "test/made-by-js";
    let data = crate::support::data(5, (2 << 20) + 3, 0);
    let file = dir.path().join("bytes");
    std::fs::write(&file, &data).expect("write");
    // A directory with one file named as pitr names the key.
    let up = h.js_upload(&creds, &file, Some(&entry_name(key)));
    let d = StorachaDestination::new("storacha", &config(&h, &creds));
    assert_eq!(d.get(key).await.expect("get").as_ref(), data.as_slice());
    assert_eq!(
        d.stored_content_id(key).await.expect("cid").as_deref(),
        Some(up.root.as_str())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_proofs_are_permanent_errors_that_say_what_to_do() {
    let h = StorachaHarness::start();

    // A proof for another space than the configured one.
    let creds = h.credentials(&CredentialOptions {
        other_space: true,
        ..Default::default()
    });
    let d = retrying(StorachaDestination::new("storacha", &config(&h, &creds)));
    let e = d.prepare().await.expect_err("another space");
    assert!(!e.is_transient(), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("not for the space {}", creds.space)),
        "{msg}"
    );
    assert!(msg.contains(&creds.proof_space), "{msg}");
    assert!(msg.contains("storacha delegation create"), "{msg}");

    // An expired proof.
    let creds = h.credentials(&CredentialOptions {
        expired: true,
        ..Default::default()
    });
    let d = retrying(StorachaDestination::new("storacha", &config(&h, &creds)));
    let e = d
        .put_if_absent("test/x", Bytes::from_static(b"x"))
        .await
        .expect_err("expired");
    assert!(!e.is_transient(), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("expired"), "{msg}");
    assert!(msg.contains("storacha delegation create"), "{msg}");

    // A proof without upload/add: the service refuses it, and the error
    // names the ability and every one pitr needs.
    let can: Vec<String> = [
        "space/blob/*",
        "space/index/*",
        "upload/list",
        "upload/shard/list",
        "upload/remove",
    ]
    .map(String::from)
    .to_vec();
    let creds = h.credentials(&CredentialOptions {
        can: Some(can),
        ..Default::default()
    });
    let d = retrying(StorachaDestination::new("storacha", &config(&h, &creds)));
    d.prepare().await.expect("listing is allowed");
    let e = d
        .put_if_absent("test/y", Bytes::from_static(b"y"))
        .await
        .expect_err("no upload/add");
    assert!(!e.is_transient(), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("refused upload/add"), "{msg}");
    assert!(msg.contains("it lacks upload/add"), "{msg}");
    assert!(
        msg.contains("--can space/blob/add --can space/blob/remove --can space/index/add --can upload/add --can upload/list --can upload/shard/list --can upload/remove"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_failures_are_bounded_and_only_transient_ones_are_retried() {
    let h = StorachaHarness::start();
    let creds = h.credentials(&CredentialOptions::default());
    let d = retrying(StorachaDestination::new("storacha", &config(&h, &creds)));
    let data = Bytes::from(crate::support::data(9, (1 << 20) + 99, 0));
    d.put_if_absent("test/z", data.clone()).await.expect("put");
    let root = d
        .stored_content_id("test/z")
        .await
        .expect("cid")
        .expect("root");
    // A fresh destination each time: the first one caches what it read.
    let fresh = || retrying(StorachaDestination::new("storacha", &config(&h, &creds)));

    // 404 on every try: retried a bounded number of times (3 retries, 4
    // requests), then an error naming the CID.
    let r = fresh();
    r.head("test/z").await.expect("head").expect("listed");
    let before = h.stats().gateway_requests;
    h.gateway_faults(&[GatewayFault::Status(404); 4]);
    let e = r.get("test/z").await.expect_err("404");
    let msg = e.to_string();
    assert!(msg.contains(&format!("CID {root}")), "{msg}");
    assert!(msg.contains("404"), "{msg}");
    assert_eq!(h.stats().gateway_requests - before, 4);

    // A CAR cut short, or a dropped connection: transient, the next try
    // reads it whole.
    for fault in [GatewayFault::Truncate, GatewayFault::Abort] {
        let r = fresh();
        r.head("test/z").await.expect("head").expect("listed");
        h.gateway_faults(&[fault]);
        assert_eq!(r.get("test/z").await.expect("retried"), data, "{fault:?}");
    }

    // Bytes that hash wrong: refused at once, never retried.
    let r = fresh();
    r.head("test/z").await.expect("head").expect("listed");
    let before = h.stats().gateway_requests;
    h.gateway_faults(&[GatewayFault::Tamper]);
    let e = r.get("test/z").await.expect_err("tampered");
    assert!(!e.is_transient(), "{e}");
    assert!(e.to_string().contains("fails verification"), "{e}");
    assert_eq!(h.stats().gateway_requests - before, 1);
}

/// `pitr check` against the harness: the space, what the proof grants and
/// what it lacks.
#[test]
fn check_reports_the_space_and_the_proofs_abilities() {
    let h = StorachaHarness::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |creds: &StorachaCredentials| {
        let (head, _) = crate::support::repository_toml(dir.path(), "");
        let cfg = dir.path().join("pitr.toml");
        std::fs::write(
            &cfg,
            format!("{head}{}", toml(&h, creds, "storacha", dir.path())),
        )
        .expect("config");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pitr"))
            .args(["init", "-c"])
            .arg(&cfg)
            .output()
            .expect("pitr init");
        let init = crate::support::text(&out);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pitr"))
            .args(["check", "-c"])
            .arg(&cfg)
            .output()
            .expect("pitr check");
        (
            out.status.success(),
            format!("{init}\n{}", crate::support::text(&out)),
        )
    };
    let creds = h.credentials(&CredentialOptions::default());
    let (ok, said) = run(&creds);
    assert!(ok, "{said}");
    assert!(said.contains(&format!("space {}", creds.space)), "{said}");
    assert!(said.contains("nothing missing"), "{said}");
    assert!(said.contains("recipients match"), "{said}");

    let creds = h.credentials(&CredentialOptions {
        can: Some(vec!["upload/*".to_owned()]),
        ..Default::default()
    });
    let (ok, said) = run(&creds);
    assert!(!ok, "{said}");
    assert!(
        said.contains("MISSING space/blob/add, space/blob/remove, space/index/add"),
        "{said}"
    );
    assert!(
        said.contains("grants upload/add, upload/list, upload/shard/list, upload/remove"),
        "{said}"
    );
}

/// `(object, destination, cid)` of `pitr catalog cids --json`.
fn cid_triples(stdout: &[u8]) -> Vec<(String, String, String)> {
    let v: Value = serde_json::from_slice(stdout).expect("JSON");
    v.as_array()
        .expect("an array")
        .iter()
        .map(|r| {
            let f = |k: &str| r[k].as_str().expect(k).to_owned();
            (f("object"), f("destination"), f("cid"))
        })
        .collect()
}

/// A WAL stream and a base backup go to fs + Storacha (the harness); then
/// the local state and the fs destination are deleted, the catalog is
/// rebuilt from Storacha alone, and a restore reading only from Storacha
/// (through the gateway) is exact.
#[tokio::test(flavor = "multi_thread")]
async fn a_restore_from_storacha_alone_is_exact() {
    use crate::support::PgCluster;
    use crate::support::{between, write_row};
    let h = StorachaHarness::start();
    let creds = h.credentials(&CredentialOptions::default());
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (head, fs) = crate::support::repository_toml(
        dir.path(),
        "\n[verify]\nschedule = \"off\"\n\n[retention]\nschedule = \"off\"\n\n[scrub]\nschedule = \"off\"\n",
    );
    // Every write, as it happens: beside another destination a Storacha
    // one is batched by default (tests/it/batch.rs covers batching).
    let st = format!(
        "{}batch_interval = 0\n",
        toml(&h, &creds, "storacha", dir.path())
    );
    let pgs = format!(
        "\n[[postgres]]\nname = \"main\"\nconninfo = \"{}\"\nbase_backup = \"off\"\n",
        pg.conninfo("postgres")
    );
    let both = dir.path().join("both.toml");
    std::fs::write(&both, format!("{head}{fs}{st}{pgs}")).expect("config");
    let pitr = crate::support::pitr_with;
    let show = |o: &std::process::Output| crate::support::text(o);
    let out = pitr(&both, &["init"]);
    assert!(out.status.success(), "{}", show(&out));

    let config = pitr::config::Config::load(&both).expect("config");
    let repo = pitr::repo::Repository::open(
        pitr::wiring::fanout(&config),
        pitr::wiring::repo_options(&config).expect("options"),
    )
    .await
    .expect("open");
    pg.psql("CREATE TABLE oracle (id int PRIMARY KEY, at timestamptz NOT NULL)");
    let streamer = crate::support::Streamer::start(&repo, &pg, "pitr");
    streamer.caught_up(&pg).await;
    let out = pitr(&both, &["backup", "--wait-wal", "60"]);
    assert!(out.status.success(), "{}", show(&out));
    let mut rows = Vec::new();
    for id in 1..=6 {
        rows.push((id, write_row(&pg, id)));
        if id == 3 {
            pg.psql("SELECT pg_switch_wal()");
        }
    }
    streamer.caught_up(&pg).await;
    streamer.stop().await;
    drop(repo);
    let out = pitr(&both, &["catalog", "cids", "--json"]);
    assert!(out.status.success(), "{}", show(&out));
    let kept = cid_triples(&out.stdout);
    assert!(kept.len() > 3, "{kept:?}");
    // Every CID the catalog keeps is an upload the JS client lists.
    let (uploads, _) = h.js_list(&creds, None);
    for (object, _, cid) in kept.iter().filter(|(o, _, _)| !o.starts_with("catalog/")) {
        assert!(uploads.iter().any(|u| &u.root == cid), "{object} {cid}");
    }

    // Only Storacha is left.
    std::fs::remove_dir_all(dir.path().join("state")).expect("rm state");
    std::fs::remove_dir_all(dir.path().join("store")).expect("rm fs store");
    let only = dir.path().join("storacha.toml");
    std::fs::write(&only, format!("{head}{st}{pgs}")).expect("config");
    let out = pitr(&only, &["catalog", "rebuild", "--from", "storacha"]);
    assert!(out.status.success(), "{}", show(&out));
    std::fs::remove_dir_all(dir.path().join("state")).expect("rm state again");
    let t = between(rows[3].1, rows[4].1);
    let mut restored = PgCluster::empty();
    let data = restored.data_dir();
    let out = pitr(
        &only,
        &[
            "restore",
            "--at",
            &pitr::restore::pg_time(t),
            "--target",
            data.to_str().expect("utf-8"),
        ],
    );
    assert!(out.status.success(), "{}", show(&out));
    restored.start_filled("");
    assert_eq!(
        restored.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM oracle"),
        "1,2,3,4"
    );
}
