//! The Storacha harness (`tests/storacha/`, `support::storacha`) works end
//! to end with Storacha's own JS client before pitr's destination is tested
//! against it: the client uploads with the W3_PRINCIPAL / W3_PROOF the
//! harness made, lists to the end, and reads the bytes back through the
//! harness's gateway; what the live service refuses, it refuses.

use std::path::Path;

use crate::support::storacha::{CredentialOptions, GatewayFault, StorachaHarness};
use crate::support::text;

/// `len` pseudo-random bytes (a fixed xorshift: no two files alike, no
/// dedup between them).
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn write(dir: &Path, name: &str, data: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, data).expect("write");
    path
}

#[test]
fn the_js_client_uploads_lists_to_the_end_fetches_identical_bytes_and_removes() {
    let h = StorachaHarness::start();
    let creds = h.credentials(&CredentialOptions::default());
    let dir = tempfile::tempdir().expect("temp dir");

    // Over 1 MiB: several leaves under a file node, inside a one-entry
    // directory named as pitr names its objects.
    let big = bytes(3 * 1024 * 1024 + 1, 1);
    let name = "pitr%2Fpacks%2Fab%2Fabcd";
    let up_big = h.js_upload(&creds, &write(dir.path(), "big", &big), Some(name));
    let small = bytes(1000, 2);
    let up_small = h.js_upload(&creds, &write(dir.path(), "small", &small), None);
    let third = bytes(5000, 3);
    let up_third = h.js_upload(&creds, &write(dir.path(), "third", &third), None);
    for up in [&up_big, &up_small, &up_third] {
        assert_eq!(up.shards.len(), 1, "one shard each: {up:?}");
    }
    // Each upload: the shard and its index went through space/blob/add and
    // a PUT; the index was registered; the upload added.
    let stats = h.stats();
    assert_eq!(
        stats.invocations.get("space/blob/add"),
        Some(&6),
        "{stats:?}"
    );
    assert_eq!(
        stats.invocations.get("space/index/add"),
        Some(&3),
        "{stats:?}"
    );
    assert_eq!(stats.invocations.get("upload/add"), Some(&3), "{stats:?}");
    assert_eq!(stats.puts, 6, "{stats:?}");

    // Pages of two: 2 + 1, and the short page still carries a cursor, so
    // the end is a third, empty page (as the live table answers).
    let (listed, pages) = h.js_list(&creds, Some(2));
    assert_eq!(pages, 3, "{listed:?}");
    let mut roots: Vec<_> = listed.iter().map(|u| u.root.clone()).collect();
    roots.sort();
    let mut want: Vec<_> = [&up_big, &up_small, &up_third]
        .iter()
        .map(|u| u.root.clone())
        .collect();
    want.sort();
    assert_eq!(roots, want);
    for up in [&up_big, &up_small, &up_third] {
        let item = listed.iter().find(|u| u.root == up.root).expect("listed");
        assert_eq!(item.shards, up.shards, "upload/shard/list of {}", up.root);
    }

    // Back through the gateway, every block checked against its CID.
    let got = h.js_fetch(&creds, &up_big.root, Some(name));
    assert!(
        got.bytes == big,
        "the big file differs ({} bytes)",
        got.bytes.len()
    );
    assert!(
        got.blocks >= 5,
        "directory, file node, 4 leaves: {}",
        got.blocks
    );
    let got = h.js_fetch(&creds, &up_small.root, None);
    assert!(got.bytes == small, "the small file differs");
    // A one-block file is a raw block: ?format=raw gives the bytes as they are.
    let (status, body) = h.gateway_get(&format!("{}?format=raw", up_small.root));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(body == small, "the raw block differs");

    // Removing (with its shards) takes the upload out of the listing.
    h.js_remove(&creds, &up_third.root);
    let (listed, _) = h.js_list(&creds, None);
    assert!(
        listed.iter().all(|u| u.root != up_third.root),
        "{} still listed: {listed:?}",
        up_third.root
    );
    assert_eq!(listed.len(), 2, "{listed:?}");
}

#[test]
fn unindexed_bytes_are_not_served_credentials_are_the_clis_bad_proofs_are_refused() {
    let h = StorachaHarness::start();
    let creds = h.credentials(&CredentialOptions::default());
    let dir = tempfile::tempdir().expect("temp dir");

    // Stored with space/blob/add alone: in the space, but no index names
    // it, so the gateway cannot find it (as freeway cannot).
    let data = bytes(4096, 4);
    let cid = h.js_blob(&creds, &write(dir.path(), "blob", &data));
    let (status, body) = h.gateway_get(&format!("{cid}?format=raw"));
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    // The same bytes uploaded (blob + index + upload) are served.
    let up = h.js_upload(&creds, &write(dir.path(), "same", &data), None);
    assert_eq!(up.root, cid, "a one-block file's root is its raw block");
    let (status, body) = h.gateway_get(&format!("{cid}?format=raw"));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(body == data);
    // Injected gateway faults apply to the next requests, in order.
    h.gateway_faults(&[GatewayFault::Status(503), GatewayFault::Tamper]);
    let (status, _) = h.gateway_get(&format!("{cid}?format=raw"));
    assert_eq!(status, 503);
    let (status, body) = h.gateway_get(&format!("{cid}?format=raw"));
    assert_eq!(status, 200);
    assert!(body.len() == data.len() && body != data, "not tampered");
    let (_, body) = h.gateway_get(&format!("{cid}?format=raw"));
    assert!(body == data, "a fault outlived its request");

    // An expired proof, and one without upload/list, are refused. (The JS
    // client drops an expired proof before sending, so the service sees no
    // proof; one that is sent is refused as "has expired".)
    let expired = h.credentials(&CredentialOptions {
        expired: true,
        ..Default::default()
    });
    assert!(expired.expiration.is_some());
    let out = h.interop_output(&expired, &["list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "listed with an expired proof");
    assert!(
        err.contains("Unauthorized") && err.contains("upload/list"),
        "{err}"
    );

    let no_list = h.credentials(&CredentialOptions {
        can: Some(vec!["upload/add".into(), "space/blob/add".into()]),
        ..Default::default()
    });
    let out = h.interop_output(&no_list, &["list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "listed without upload/list");
    assert!(
        err.contains("Unauthorized") && err.contains("upload/list"),
        "{err}"
    );

    // The credentials are in the storacha CLI's own formats: it takes the
    // key as its principal and imports the proof as the space.
    let home = tempfile::tempdir().expect("temp dir");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("storacha")
            .args(args)
            .env("HOME", home.path())
            .env("STORACHA_STORE_NAME", "harness")
            .env("STORACHA_PRINCIPAL", &creds.principal)
            .output()
            .expect("the storacha CLI (.ci/setup installs it)");
        assert!(out.status.success(), "storacha {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(cli(&["whoami"]), creds.principal_did);
    assert_eq!(cli(&["space", "add", &creds.proof]), creds.space);

    // A proof for another space: the JS client uses the proof's space, so
    // only the spaces differ (pitr, configured with `space`, must refuse).
    let other = h.credentials(&CredentialOptions {
        other_space: true,
        ..Default::default()
    });
    assert_ne!(other.space, other.proof_space);
}
