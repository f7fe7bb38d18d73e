//! Bytes compared with what the JavaScript libraries (`@ucanto/core` 10,
//! `@ucanto/transport` 9, `@ucanto/principal`) wrote for the same inputs:
//! `tests/data/ucanto/vectors.mjs` made `vectors.json`. Ed25519 signatures
//! are deterministic, so equal bytes mean equal signing payloads.

use super::*;
use sha2::{Digest, Sha256};

fn vectors() -> serde_json::Value {
    let text = include_str!("../../../../tests/data/ucanto/vectors.json");
    serde_json::from_str(text).expect("vectors.json is JSON")
}

fn v(key: &str) -> String {
    vectors()[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in vectors.json"))
        .to_owned()
}

fn unhex(key: &str) -> Vec<u8> {
    hex::decode(v(key)).expect("hex")
}

fn agent() -> Signer {
    Signer::from_secret([1; 32])
}

fn space() -> Signer {
    Signer::from_secret([2; 32])
}

fn service() -> Did {
    Did::parse("did:web:up.storacha.network").expect("did")
}

#[test]
fn keys_and_dids_match_ucanto() {
    assert_eq!(agent().format(), v("agent_key"));
    assert_eq!(agent().did().as_str(), v("agent_did"));
    assert_eq!(space().did().as_str(), v("space_did"));
    let parsed = Signer::parse(&v("agent_key")).expect("parse");
    assert_eq!(parsed.did(), agent().did());
    // The form an `http/put` task's facts carry the derived key in.
    let from_facts = Signer::decode(&unhex("space_archive_keys")).expect("decode");
    assert_eq!(from_facts.did(), space().did());
    let svc = service();
    assert_eq!(Did::from_bytes(&svc.to_bytes()).expect("bytes"), svc);
    assert!(Signer::parse("MgCYnotakey").is_err());
    assert!(Did::parse("web:x").is_err());
}

#[test]
fn proofs_parse_from_base64_and_car_and_are_checked() {
    let b64 = Proof::parse(v("proof_b64").as_bytes()).expect("base64 proof");
    let car = Proof::parse(&unhex("proof_car")).expect("CAR proof");
    assert_eq!(b64.cid.to_string(), v("proof_cid"));
    assert_eq!(car.cid, b64.cid);
    assert!(b64.ucan.signature_valid(), "the space's signature verifies");
    assert_eq!(b64.ucan.exp, None, "no --expiration: never expires");
    let (agent, space) = (agent(), space());
    b64.check(agent.did(), space.did(), 2_000_000_000)
        .expect("good proof");
    for a in ABILITIES {
        assert!(b64.grants(a, space.did()), "{a}");
    }
    assert!(!b64.grants("space/blob/list", space.did()));
    // `space/blob/*` covers the blob abilities and nothing else.
    let partial = Proof::parse(v("partial_b64").as_bytes()).expect("partial");
    let granted: Vec<&str> = ABILITIES
        .iter()
        .copied()
        .filter(|a| partial.grants(a, space.did()))
        .collect();
    assert_eq!(
        granted,
        ["space/blob/add", "space/blob/remove", "upload/list"]
    );
    let other = Signer::from_secret([3; 32]);
    let e = b64
        .check(agent.did(), other.did(), 0)
        .expect_err("other space");
    assert!(e.to_string().contains("not for the space"), "{e}");
    let e = b64
        .check(other.did(), space.did(), 0)
        .expect_err("other agent");
    assert!(e.to_string().contains("delegates to"), "{e}");
    let expiring = Proof::parse(&unhex("expiring_car")).expect("expiring");
    assert_eq!(expiring.ucan.exp, Some(1000));
    let e = expiring
        .check(agent.did(), space.did(), 1001)
        .expect_err("expired");
    assert!(e.to_string().contains("expired"), "{e}");
    assert!(e.to_string().contains("storacha delegation create"), "{e}");
    assert!(Proof::parse(b"mAYIEAnotaproof").is_err());
}

fn blob_add() -> (Invocation, Proof) {
    let proof = Proof::parse(v("proof_b64").as_bytes()).expect("proof");
    let digest = cid::multihash::Multihash::<64>::wrap(0x12, &Sha256::digest(b"hello"))
        .expect("digest")
        .to_bytes();
    let nb = map([(
        "blob",
        map([("digest", Ipld::Bytes(digest)), ("size", Ipld::Integer(5))]),
    )]);
    let inv = Invocation::new(
        &agent(),
        Payload {
            aud: service(),
            att: vec![capability(
                "space/blob/add",
                space().did().as_str(),
                Some(nb),
            )],
            prf: vec![proof.cid],
            exp: Some(2_000_000_000),
            nnc: Some("abc".to_owned()),
            fct: Vec::new(),
        },
        &[&proof],
        Vec::new(),
    );
    (inv, proof)
}

#[test]
fn invocations_and_requests_are_the_bytes_ucanto_writes() {
    let (inv, _) = blob_add();
    assert_eq!(
        hex::encode(&inv.blocks.last().expect("root").bytes),
        v("invocation_block")
    );
    assert_eq!(inv.cid.to_string(), v("invocation_cid"));
    let decoded = Ucan::decode(&unhex("invocation_block")).expect("decode");
    assert_eq!(decoded, inv.ucan);
    assert!(decoded.signature_valid());
    let (root, car) = request(&[&inv]);
    assert_eq!(root.to_string(), v("request_root"));
    assert_eq!(hex::encode(car), v("request_car"));
}

#[test]
fn receipts_and_their_effects_are_read() {
    let r = Response::decode(&unhex("response_car")).expect("response");
    let inv: Cid = v("invocation_cid").parse().expect("cid");
    let rc = r.receipts.get(&inv).expect("a receipt for the invocation");
    assert_eq!(rc.cid.to_string(), v("receipt_cid"));
    assert!(rc.out.is_ok());
    assert_eq!(rc.fork.len(), 1);
    assert_eq!(rc.fork[0].to_string(), v("fork_cid"));
    let fork = r.task(&rc.fork[0]).expect("the fork task came along");
    assert_eq!(
        fork.abilities().next(),
        Some(("http/put", v("space_did").as_str()))
    );
    let e = Response::decode(&unhex("error_response_car")).expect("error response");
    let err = e
        .receipts
        .get(&inv)
        .expect("receipt")
        .out
        .clone()
        .expect_err("error");
    assert_eq!(field(&err, "name").and_then(text), Some("Unauthorized"));
    // A CAR cut short is refused.
    let car = unhex("response_car");
    assert!(Response::decode(&car[..car.len() - 3]).is_err());
}

#[test]
fn issued_receipts_are_the_bytes_ucanto_writes() {
    let ran: Cid = v("fork_cid").parse().expect("cid");
    let b = Receipt::issue(&space(), ran, Ipld::Map(Default::default()));
    assert_eq!(hex::encode(&b.bytes), v("put_receipt_block"));
    assert_eq!(b.cid.to_string(), v("put_receipt_cid"));
}
