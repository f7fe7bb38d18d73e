//! The Storacha destination against local servers on 127.0.0.1 that
//! emulate the documented API (no network reaches Storacha from here):
//!
//! - a bridge that checks every request against the format of
//!   <https://docs.storacha.network/how-to/http-bridge/> and
//!   <https://github.com/storacha/specs/blob/main/w3-ucan-bridge.md>
//!   (POST, `X-Auth-Secret` / `Authorization` equal to the config's, a JSON
//!   body `{"tasks": [[ability, space, args]]}` with dag-json links) and
//!   answers with receipts shaped like the documented ones;
//! - a "presigned upload URL" that receives the CAR `PUT` and checks that
//!   its bytes hash to the shard CID and to `x-amz-checksum-sha256`;
//! - a trustless gateway (`/ipfs/{cid}?format=car|raw`), with a tampering
//!   mode.
//!
//! CIDs and CAR bytes are checked against `ipfs-car` (npm), run on the same
//! bytes.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes as Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use bytes::Bytes;
use cid::Cid;
use cid::multihash::Multihash;
use pitr::config::StorachaConfig;
use pitr::ship::storacha::car::pack_named;
use pitr::ship::storacha::entry_name;
use pitr::ship::{Destination, PutOutcome, RetryPolicy, Retrying, ShipError, StorachaDestination};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const SPACE: &str = "did:key:z6Mkm5qHN9g9NQSGbBfL7iGp9sexdssioT4CzyVap9ATqGqX";
const SECRET: &str = "uNGUyOTA2OTRlYjNlZDJjNjE3ZTRkNzBlYzJiN2RkYTM";
const AUTH: &str = "uOqJlcm9vdHOB2CpYJQABcRIggNKF1CtKV9n5k1T8575Uh8T5P";

/// What the next bridge request gets instead of a proper answer.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Status(u16),
    NotJson,
    ReceiptError,
}

/// One bridge task as received.
#[derive(Debug, Clone)]
struct Task {
    ability: String,
    args: Value,
}

#[derive(Debug, Default)]
struct Inner {
    base: String,
    /// Stored CARs by shard CID.
    cars: HashMap<Cid, Vec<u8>>,
    /// Allocations made by store/add: shard → size.
    allocated: HashMap<Cid, u64>,
    /// Registered uploads, in order: (root, shards).
    uploads: Vec<(Cid, Vec<Cid>)>,
    tasks: Vec<Task>,
    puts: Vec<Cid>,
    faults: VecDeque<Fault>,
    tamper: bool,
    /// Every way a request broke the documented format.
    problems: Vec<String>,
}

/// The emulated service, on its own runtime so that blocking test code
/// (running `pitr` as a child process) cannot starve it.
#[derive(Clone)]
struct FakeStoracha {
    inner: Arc<Mutex<Inner>>,
    addr: SocketAddr,
}

fn sha256_cid(codec: u64, bytes: &[u8]) -> Cid {
    let mh = Multihash::<64>::wrap(0x12, &Sha256::digest(bytes)).expect("digest");
    Cid::new_v1(codec, mh)
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The blocks of a CAR, unverified (the emulated gateway only serves them).
fn car_blocks(car: &[u8]) -> Vec<(Cid, Vec<u8>)> {
    fn varint(b: &[u8], pos: &mut usize) -> usize {
        let mut n = 0usize;
        let mut shift = 0;
        loop {
            let x = b[*pos];
            *pos += 1;
            n |= ((x & 0x7f) as usize) << shift;
            if x & 0x80 == 0 {
                return n;
            }
            shift += 7;
        }
    }
    let mut pos = 0;
    let h = varint(car, &mut pos);
    pos += h;
    let mut out = Vec::new();
    while pos < car.len() {
        let len = varint(car, &mut pos);
        let section = &car[pos..pos + len];
        let mut cur = std::io::Cursor::new(section);
        let cid = Cid::read_bytes(&mut cur).expect("cid");
        out.push((cid, section[cur.position() as usize..].to_vec()));
        pos += len;
    }
    out
}

fn receipt(out: Value) -> Response {
    let body = json!([{
        "p": {
            "fx": { "fork": [] },
            "iss": "did:web:storacha.network",
            "meta": {},
            "out": out,
            "prf": [],
            "ran": { "/": "bafyreib732osv25yuv4zs7fhr6ijywa4itb62g6o7chej2jh6ierf6o6jy" }
        },
        "s": { "/": { "bytes": "7aEDQH53KYLjnCneSTc9nslSC1AjFCU1dtGOgwwaCopfxS1Stur" } }
    }]);
    (
        StatusCode::OK,
        [("content-type", "application/vnd.ipld.dag-json")],
        body.to_string(),
    )
        .into_response()
}

fn link_of(v: &Value) -> Option<Cid> {
    let obj = v.as_object()?;
    if obj.len() != 1 {
        return None;
    }
    obj.get("/")?.as_str()?.parse().ok()
}

async fn bridge(State(s): State<Arc<Mutex<Inner>>>, headers: HeaderMap, body: Body) -> Response {
    let mut st = s.lock().unwrap();
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    // As the real bridge: missing headers are 401s.
    if h("authorization").is_none() {
        return (
            StatusCode::UNAUTHORIZED,
            "request missing Authorization header",
        )
            .into_response();
    }
    if h("x-auth-secret").is_none() {
        return (
            StatusCode::UNAUTHORIZED,
            "request missing X-Auth-Secret header",
        )
            .into_response();
    }
    if h("authorization").as_deref() != Some(AUTH) || h("x-auth-secret").as_deref() != Some(SECRET)
    {
        return (
            StatusCode::UNAUTHORIZED,
            "could not extract delegation from authorization header value",
        )
            .into_response();
    }
    if h("content-type").as_deref() != Some("application/json") {
        st.problems
            .push(format!("content-type {:?}", h("content-type")));
    }
    if let Some(f) = st.faults.pop_front() {
        return match f {
            Fault::Status(code) => (
                StatusCode::from_u16(code).unwrap(),
                "the service is having a moment",
            )
                .into_response(),
            Fault::NotJson => (StatusCode::OK, "<html>captive portal</html>").into_response(),
            Fault::ReceiptError => receipt(json!({
                "error": { "name": "InsufficientStorage", "message": "space has no storage provider" }
            })),
        };
    }
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            st.problems.push(format!("body is not JSON: {e}"));
            return (StatusCode::BAD_REQUEST, "bad body").into_response();
        }
    };
    let tasks = v
        .as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.get("tasks"))
        .and_then(Value::as_array);
    let Some(tasks) = tasks else {
        st.problems
            .push(format!("body is not {{\"tasks\": [...]}}: {v}"));
        return (StatusCode::BAD_REQUEST, "maybeTasks is not an array").into_response();
    };
    if tasks.len() != 1 {
        st.problems
            .push(format!("{} tasks in one request", tasks.len()));
    }
    let task = &tasks[0];
    let parts = task.as_array().filter(|a| a.len() == 3);
    let Some(parts) = parts else {
        st.problems
            .push(format!("task is not [ability, space, args]: {task}"));
        return (StatusCode::BAD_REQUEST, "InvalidTask").into_response();
    };
    let ability = parts[0].as_str().unwrap_or_default().to_owned();
    if parts[1].as_str() != Some(SPACE) {
        st.problems
            .push(format!("task subject {} is not the space", parts[1]));
    }
    let args = parts[2].clone();
    if !args.is_object() {
        st.problems.push(format!("args of {ability} are not a map"));
    }
    st.tasks.push(Task {
        ability: ability.clone(),
        args: args.clone(),
    });
    let base = st.base.clone();
    match ability.as_str() {
        "store/add" => {
            let keys: Vec<&String> = args
                .as_object()
                .map(|o| o.keys().collect())
                .unwrap_or_default();
            if keys != ["link", "size"] {
                st.problems.push(format!("store/add args {args}"));
            }
            let (Some(link), Some(size)) = (
                args.get("link").and_then(link_of),
                args.get("size").and_then(Value::as_u64),
            ) else {
                st.problems.push(format!("store/add args {args}"));
                return receipt(
                    json!({"error": {"name": "InvalidArgs", "message": "bad link/size"}}),
                );
            };
            if link.codec() != 0x0202 || link.hash().code() != 0x12 {
                st.problems
                    .push(format!("store/add link {link} is not a sha2-256 CAR CID"));
            }
            if st.cars.contains_key(&link) {
                return receipt(json!({"ok": {
                    "status": "done", "allocated": 0, "link": {"/": link.to_string()}, "with": SPACE
                }}));
            }
            st.allocated.insert(link, size);
            let url = format!(
                "{base}/carpark/{link}/{link}.car?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=86400&X-Amz-Signature=00&X-Amz-SignedHeaders=content-length%3Bhost%3Bx-amz-checksum-sha256&x-id=PutObject"
            );
            let digest = link.hash().digest().to_vec();
            receipt(json!({"ok": {
                "status": "upload",
                "allocated": size,
                "headers": {
                    "content-length": size.to_string(),
                    "x-amz-checksum-sha256": base64(&digest)
                },
                "link": {"/": link.to_string()},
                "url": url,
                "with": SPACE
            }}))
        }
        "upload/add" => {
            let root = args.get("root").and_then(link_of);
            let shards: Option<Vec<Cid>> = args
                .get("shards")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(link_of).collect());
            let (Some(root), Some(shards)) = (root, shards) else {
                st.problems.push(format!("upload/add args {args}"));
                return receipt(
                    json!({"error": {"name": "InvalidArgs", "message": "bad root/shards"}}),
                );
            };
            for sh in &shards {
                if !st.cars.contains_key(sh) {
                    st.problems
                        .push(format!("upload/add of {root} before shard {sh} was stored"));
                }
            }
            if !st.uploads.iter().any(|(r, _)| *r == root) {
                st.uploads.push((root, shards.clone()));
            }
            let shards: Vec<Value> = shards.iter().map(|c| json!({"/": c.to_string()})).collect();
            receipt(json!({"ok": {"root": {"/": root.to_string()}, "shards": shards}}))
        }
        "upload/list" => {
            let size = args.get("size").and_then(Value::as_u64).unwrap_or(1000) as usize;
            let start: usize = args
                .get("cursor")
                .and_then(Value::as_str)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let page: Vec<Value> = st
                .uploads
                .iter()
                .skip(start)
                .take(size)
                .map(|(r, sh)| {
                    let sh: Vec<Value> = sh.iter().map(|c| json!({"/": c.to_string()})).collect();
                    json!({
                        "root": {"/": r.to_string()},
                        "shards": sh,
                        "insertedAt": "2024-02-09T00:53:54.545Z",
                        "updatedAt": "2024-02-09T00:53:54.545Z"
                    })
                })
                .collect();
            let n = page.len();
            receipt(json!({"ok": {
                "size": n,
                "results": page,
                "cursor": (start + n).to_string()
            }}))
        }
        "upload/remove" => {
            let Some(root) = args.get("root").and_then(link_of) else {
                st.problems.push(format!("upload/remove args {args}"));
                return receipt(json!({"error": {"name": "InvalidArgs", "message": "bad root"}}));
            };
            let before = st.uploads.len();
            st.uploads.retain(|(r, _)| *r != root);
            if st.uploads.len() == before {
                return receipt(
                    json!({"error": {"name": "UploadNotFound", "message": format!("{root} not found")}}),
                );
            }
            receipt(json!({"ok": {"root": {"/": root.to_string()}}}))
        }
        "store/remove" => {
            let Some(link) = args.get("link").and_then(link_of) else {
                st.problems.push(format!("store/remove args {args}"));
                return receipt(json!({"error": {"name": "InvalidArgs", "message": "bad link"}}));
            };
            match st.cars.remove(&link) {
                Some(c) => receipt(json!({"ok": {"size": c.len()}})),
                None => receipt(
                    json!({"error": {"name": "StoreItemNotFound", "message": format!("{link} not found")}}),
                ),
            }
        }
        other => {
            st.problems.push(format!("unexpected ability {other}"));
            receipt(json!({"error": {"name": "UnknownAbility", "message": other}}))
        }
    }
}

async fn upload_put(
    State(s): State<Arc<Mutex<Inner>>>,
    Path((shard, _file)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut st = s.lock().unwrap();
    let Ok(shard) = shard.parse::<Cid>() else {
        return (StatusCode::BAD_REQUEST, "bad key").into_response();
    };
    let Some(&size) = st.allocated.get(&shard) else {
        st.problems
            .push(format!("PUT of {shard} without an allocation"));
        return (StatusCode::FORBIDDEN, "no allocation").into_response();
    };
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if h("content-length") != Some(size.to_string()) || body.len() as u64 != size {
        st.problems.push(format!(
            "PUT of {shard}: length {:?}, allocated {size}",
            h("content-length")
        ));
        return (StatusCode::BAD_REQUEST, "length").into_response();
    }
    let digest = Sha256::digest(&body);
    if h("x-amz-checksum-sha256") != Some(base64(&digest)) {
        st.problems.push(format!(
            "PUT of {shard}: checksum header {:?}",
            h("x-amz-checksum-sha256")
        ));
        return (StatusCode::BAD_REQUEST, "BadDigest").into_response();
    }
    if sha256_cid(0x0202, &body) != shard {
        st.problems
            .push(format!("PUT of {shard}: the bytes hash to another CID"));
        return (StatusCode::BAD_REQUEST, "BadDigest").into_response();
    }
    st.cars.insert(shard, body.to_vec());
    st.puts.push(shard);
    StatusCode::OK.into_response()
}

async fn gateway(
    State(s): State<Arc<Mutex<Inner>>>,
    Path(cid): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let st = s.lock().unwrap();
    let Ok(cid) = cid.parse::<Cid>() else {
        return (StatusCode::BAD_REQUEST, "invalid CID").into_response();
    };
    let accept = headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match q.get("format").map(String::as_str) {
        Some("car") => {
            if accept != "application/vnd.ipld.car" {
                return (StatusCode::BAD_REQUEST, "accept").into_response();
            }
            let Some((_, shards)) = st.uploads.iter().find(|(r, _)| *r == cid) else {
                return (StatusCode::NOT_FOUND, "not found").into_response();
            };
            let Some(car) = shards.first().and_then(|s| st.cars.get(s)) else {
                return (StatusCode::NOT_FOUND, "not found").into_response();
            };
            let mut car = car.clone();
            if st.tamper {
                let n = car.len();
                car[n / 2] ^= 0x20;
            }
            (
                StatusCode::OK,
                [("content-type", "application/vnd.ipld.car")],
                car,
            )
                .into_response()
        }
        Some("raw") => {
            if accept != "application/vnd.ipld.raw" {
                return (StatusCode::BAD_REQUEST, "accept").into_response();
            }
            for car in st.cars.values() {
                if let Some((_, b)) = car_blocks(car).into_iter().find(|(c, _)| *c == cid) {
                    return (StatusCode::OK, b).into_response();
                }
            }
            (StatusCode::NOT_FOUND, "not found").into_response()
        }
        _ => (StatusCode::BAD_REQUEST, "format").into_response(),
    }
}

impl FakeStoracha {
    fn start() -> FakeStoracha {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let (tx, rx) = std::sync::mpsc::channel();
        let state = inner.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                tx.send(listener.local_addr().expect("addr")).expect("send");
                let app = Router::new()
                    .route("/bridge", post(bridge))
                    .route("/carpark/{shard}/{file}", put(upload_put))
                    .route("/ipfs/{cid}", get(gateway))
                    .layer(axum::extract::DefaultBodyLimit::max(256 << 20))
                    .with_state(state);
                axum::serve(listener, app).await.expect("serve");
            });
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server started");
        inner.lock().unwrap().base = format!("http://{addr}");
        FakeStoracha { inner, addr }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn config(&self) -> StorachaConfig {
        StorachaConfig {
            space: SPACE.into(),
            auth_secret: SECRET.into(),
            authorization: AUTH.into(),
            bridge: format!("{}/bridge", self.url()),
            gateway: self.url(),
            request_timeout: Duration::from_secs(10),
        }
    }

    fn toml(&self, name: &str) -> String {
        format!(
            "\n[[destination]]\nname = \"{name}\"\nkind = \"storacha\"\nspace = \"{SPACE}\"\nauth_secret = \"{SECRET}\"\nauthorization = \"{AUTH}\"\nbridge = \"{}/bridge\"\ngateway = \"{}\"\nrequest_timeout = 20\n",
            self.url(),
            self.url()
        )
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap())
    }

    fn abilities(&self) -> Vec<String> {
        self.with(|s| s.tasks.iter().map(|t| t.ability.clone()).collect())
    }

    fn assert_no_problems(&self) {
        let p = self.with(|s| s.problems.clone());
        assert!(p.is_empty(), "requests broke the documented format: {p:#?}");
    }
}

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
        let data = crate::repo::data(size as u64 + 11, size, 0);
        let (root, shard, theirs) = ipfs_car(dir.path(), &name, &data);
        let ours = pack_named(&name, &data).expect("pack");
        assert_eq!(ours.root.to_string(), root, "{size} B: root CID");
        assert_eq!(ours.shard.to_string(), shard, "{size} B: shard CID");
        assert!(ours.bytes == theirs, "{size} B: CAR bytes differ");
    }
}

fn dest(server: &FakeStoracha) -> StorachaDestination {
    StorachaDestination::new("storacha", &server.config())
}

#[tokio::test(flavor = "multi_thread")]
async fn storacha_destination_keeps_the_destination_contract() {
    let server = FakeStoracha::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dest(&server);
    d.prepare().await.expect("prepare lists the space");
    assert_eq!(server.abilities(), ["upload/list"]);

    let big = Bytes::from(crate::repo::data(5, (1 << 20) + 1, 0));
    assert_eq!(
        d.put_if_absent("packs/ab/abc", big.clone())
            .await
            .expect("put"),
        PutOutcome::Created
    );
    // The requests, against what ipfs-car computes independently.
    let (root, shard, car) = ipfs_car(dir.path(), &entry_name("packs/ab/abc"), &big);
    let tasks = server.with(|s| s.tasks.clone());
    assert_eq!(
        server.abilities(),
        ["upload/list", "store/add", "upload/add"]
    );
    assert_eq!(
        tasks[1].args,
        json!({"link": {"/": shard}, "size": car.len()})
    );
    assert_eq!(
        tasks[2].args,
        json!({"root": {"/": root}, "shards": [{"/": shard}]})
    );
    assert_eq!(server.with(|s| s.puts.len()), 1);
    assert!(server.with(|s| s.cars.values().any(|c| *c == car)));

    assert_eq!(
        d.put_if_absent("packs/ab/abc", big.clone())
            .await
            .expect("again"),
        PutOutcome::AlreadyExists
    );
    for (k, v) in [
        ("catalog/0001-a", "a"),
        ("catalog/0002-b", "bb"),
        ("catalog-not", "c"),
        ("config", ""),
    ] {
        d.put_if_absent(k, Bytes::from(v)).await.expect("put small");
    }
    assert_eq!(d.get("packs/ab/abc").await.expect("get"), big);
    assert_eq!(
        d.get_range("packs/ab/abc", 10..20).await.expect("range"),
        big.slice(10..20)
    );
    assert_eq!(
        d.get_range("packs/ab/abc", (1 << 20)..(2 << 20))
            .await
            .expect("range past end"),
        big.slice(1 << 20..)
    );
    assert_eq!(d.get("config").await.expect("empty"), Bytes::new());
    assert_eq!(
        d.head("catalog/0002-b")
            .await
            .expect("head")
            .map(|m| m.size),
        Some(2)
    );
    assert!(d.head("nope").await.expect("head missing").is_none());
    assert!(matches!(
        d.get("nope").await,
        Err(ShipError::NotFound { .. })
    ));
    let keys = |v: Vec<pitr::ship::ObjectMeta>| v.into_iter().map(|m| m.key).collect::<Vec<_>>();
    assert_eq!(
        keys(d.list("catalog/").await.expect("list")),
        ["catalog/0001-a", "catalog/0002-b"]
    );
    assert_eq!(
        keys(d.list("catalog").await.expect("list")),
        ["catalog-not", "catalog/0001-a", "catalog/0002-b"]
    );

    // Losing the sidecar's state loses nothing: a fresh destination finds
    // every key from the space alone (upload/list + the directory blocks),
    // ignoring uploads that are not pitr's.
    let foreign = pack_named("holiday.jpg", b"not ours").expect("pack");
    server.with(|s| {
        s.cars.insert(foreign.shard, foreign.bytes.clone());
        s.uploads.push((foreign.root, vec![foreign.shard]));
    });
    let fresh = dest(&server);
    let all = fresh.list("").await.expect("list all");
    assert_eq!(
        keys(all.clone()),
        [
            "catalog-not",
            "catalog/0001-a",
            "catalog/0002-b",
            "config",
            "packs/ab/abc"
        ]
    );
    assert_eq!(all[4].size, big.len() as u64);
    assert_eq!(fresh.get("packs/ab/abc").await.expect("fresh get"), big);
    let obj = fresh
        .object("packs/ab/abc", false)
        .await
        .expect("object")
        .expect("known");
    assert_eq!(obj.root.to_string(), root);
    assert_eq!(obj.shard.map(|s| s.to_string()), Some(shard.clone()));

    // Delete: upload/remove, then store/remove of its shard.
    fresh.delete("catalog-not").await.expect("delete");
    let tasks = server.with(|s| s.tasks.clone());
    let n = tasks.len();
    assert_eq!(tasks[n - 2].ability, "upload/remove");
    assert_eq!(tasks[n - 1].ability, "store/remove");
    fresh.delete("catalog-not").await.expect("delete missing");
    assert!(fresh.head("catalog-not").await.expect("head").is_none());
    assert!(
        dest(&server)
            .head("catalog-not")
            .await
            .expect("head")
            .is_none()
    );
    server.assert_no_problems();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_car_already_stored_is_not_uploaded_again() {
    let server = FakeStoracha::start();
    dest(&server)
        .put_if_absent(
            "wal/000000010000000000000001",
            Bytes::from_static(b"segment"),
        )
        .await
        .expect("put");
    // The upload disappears, the CAR stays: store/add answers "done", no PUT,
    // and the upload is registered again.
    server.with(|s| {
        s.uploads.clear();
        s.tasks.clear();
    });
    let d = dest(&server);
    assert_eq!(
        d.put_if_absent(
            "wal/000000010000000000000001",
            Bytes::from_static(b"segment")
        )
        .await
        .expect("put again"),
        PutOutcome::Created
    );
    assert_eq!(
        server.abilities(),
        ["upload/list", "store/add", "upload/add"]
    );
    assert_eq!(server.with(|s| s.puts.len()), 1, "no second PUT");
    assert_eq!(
        dest(&server)
            .get("wal/000000010000000000000001")
            .await
            .expect("get"),
        Bytes::from_static(b"segment")
    );
    server.assert_no_problems();
}

#[tokio::test(flavor = "multi_thread")]
async fn bridge_failures_are_clear_and_only_transient_ones_are_retried() {
    let server = FakeStoracha::start();
    // Wrong tokens: 401, not retried, and the message says what to do.
    let mut bad = server.config();
    bad.authorization = "uWRONG".into();
    let err = StorachaDestination::new("storacha", &bad)
        .put_if_absent("config", Bytes::from_static(b"x"))
        .await
        .expect_err("401");
    assert!(!err.is_transient(), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("refused the tokens") && msg.contains("HTTP 401"),
        "{msg}"
    );
    assert!(msg.contains("bridge generate-tokens"), "{msg}");
    assert!(msg.contains("storacha"), "{msg}");

    // 5xx: transient; behind the retry layer the write goes through.
    let d = Retrying::new(
        dest(&server),
        RetryPolicy {
            max_retries: 5,
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        },
    );
    d.prepare().await.expect("prepare");
    server.with(|s| s.faults.extend([Fault::Status(503), Fault::Status(502)]));
    assert_eq!(
        d.put_if_absent("config", Bytes::from_static(b"x"))
            .await
            .expect("retried"),
        PutOutcome::Created
    );
    let adds = server
        .abilities()
        .iter()
        .filter(|a| *a == "store/add")
        .count();
    assert_eq!(
        adds, 1,
        "the faults were answered before parsing, so one store/add was seen"
    );
    assert_eq!(
        d.get("config").await.expect("get"),
        Bytes::from_static(b"x")
    );

    // A 200 that is not a receipt: a clear, permanent error.
    let plain = dest(&server);
    plain.prepare().await.expect("prepare");
    server.with(|s| s.faults.push_back(Fault::NotJson));
    let err = plain
        .put_if_absent("other", Bytes::from_static(b"y"))
        .await
        .expect_err("malformed");
    assert!(!err.is_transient(), "{err}");
    assert!(
        err.to_string().contains("malformed answer from the bridge"),
        "{err}"
    );
    assert!(err.to_string().contains("other"), "{err}");

    // The service's own error, in the receipt.
    server.with(|s| s.faults.push_back(Fault::ReceiptError));
    let err = plain
        .put_if_absent("other", Bytes::from_static(b"y"))
        .await
        .expect_err("refused");
    assert!(!err.is_transient(), "{err}");
    assert!(
        err.to_string()
            .contains("Storacha refused store/add: InsufficientStorage"),
        "{err}"
    );
    server.assert_no_problems();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_gateway_answer_is_refused() {
    let server = FakeStoracha::start();
    let d = dest(&server);
    let data = Bytes::from(crate::repo::data(9, 300_000, 0));
    d.put_if_absent("packs/cd/cdef", data.clone())
        .await
        .expect("put");
    let root = d
        .object("packs/cd/cdef", false)
        .await
        .expect("obj")
        .expect("known")
        .root;
    server.with(|s| s.tamper = true);
    let fresh = dest(&server);
    fresh
        .prepare()
        .await
        .expect("listing needs only the untouched root block");
    let err = fresh.get("packs/cd/cdef").await.expect_err("tampered");
    let msg = err.to_string();
    assert!(!err.is_transient(), "{msg}");
    assert!(msg.contains("packs/cd/cdef"), "{msg}");
    assert!(msg.contains(&root.to_string()), "{msg}");
    assert!(msg.contains("fails verification"), "{msg}");
    let err = fresh
        .get_range("packs/cd/cdef", 0..10)
        .await
        .expect_err("tampered range");
    assert!(err.to_string().contains("fails verification"), "{err}");
    server.with(|s| s.tamper = false);
    assert_eq!(fresh.get("packs/cd/cdef").await.expect("good again"), data);
}

/// A WAL stream and a base backup go to fs + Storacha (the emulated
/// service); then the local state and the fs destination are deleted, the
/// catalog is rebuilt from Storacha alone, and a restore reading only from
/// Storacha (through the gateway) is exact.
#[tokio::test(flavor = "multi_thread")]
async fn a_restore_from_storacha_alone_is_exact() {
    use crate::harness::PgCluster;
    use crate::pitr_restore::{between, write_row};
    let server = FakeStoracha::start();
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (head, fs) = crate::harness::repository_toml(
        dir.path(),
        "\n[verify]\nschedule = \"off\"\n\n[retention]\nschedule = \"off\"\n\n[scrub]\nschedule = \"off\"\n",
    );
    let st = server.toml("storacha");
    let pgs = format!(
        "\n[[postgres]]\nname = \"main\"\nconninfo = \"{}\"\nbase_backup = \"off\"\n",
        pg.conninfo("postgres")
    );
    let both = dir.path().join("both.toml");
    std::fs::write(&both, format!("{head}{fs}{st}{pgs}")).expect("config");
    let pitr = |config: &std::path::Path, args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pitr"))
            .args(args)
            .arg("-c")
            .arg(config)
            .env_remove("PITR_CONFIG")
            .output()
            .expect("run pitr")
    };
    let show = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let out = pitr(&both, &["init"]);
    assert!(out.status.success(), "{}", show(&out));

    let config = pitr::config::Config::load(&both).expect("config");
    let repo = pitr::repo::Repository::open(
        pitr::ship::from_config(&config),
        pitr::repo::RepoOptions::from_config(&config).expect("options"),
    )
    .await
    .expect("open");
    pg.psql("CREATE TABLE oracle (id int PRIMARY KEY, at timestamptz NOT NULL)");
    let streamer = crate::pitr_restore::Streamer::start(&repo, &pg, "pitr");
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
    server.assert_no_problems();
    assert!(server.with(|s| s.uploads.len()) > 3);
    let kept = check_cids_then_rebuild_from_fs(&server, dir.path(), &both, &pitr, &show);

    // Only Storacha is left.
    std::fs::remove_dir_all(dir.path().join("state")).expect("rm state");
    std::fs::remove_dir_all(dir.path().join("store")).expect("rm fs store");
    let only = dir.path().join("storacha.toml");
    std::fs::write(&only, format!("{head}{st}{pgs}")).expect("config");
    let out = pitr(&only, &["catalog", "rebuild", "--from", "storacha"]);
    assert!(out.status.success(), "{}", show(&out));
    // The rebuild compared every CID with upload/list (a mismatch fails it)
    // and the CIDs survived once more.
    let out = pitr(&only, &["catalog", "cids", "--json"]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(cid_triples(&out.stdout), kept);
    std::fs::remove_dir_all(dir.path().join("state")).expect("rm state again");
    let t = between(rows[3].1, rows[4].1);
    let mut restored = PgCluster::empty();
    let data = restored.data_dir();
    let out = pitr(
        &only,
        &[
            "restore",
            "--at",
            &pitr::pitr::pg_time(t),
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
    server.assert_no_problems();
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

/// After a WAL stream and a base backup into fs + Storacha: every object's
/// root CID is in the catalog and is what Storacha received (and what
/// `ipfs-car` computes); `pitr catalog cids` prints them; after losing the
/// local state, `pitr catalog rebuild --from local` (the fs destination)
/// brings them back. Returns the CIDs listed after the rebuild.
fn check_cids_then_rebuild_from_fs(
    server: &FakeStoracha,
    dir: &std::path::Path,
    config: &std::path::Path,
    pitr: &dyn Fn(&std::path::Path, &[&str]) -> std::process::Output,
    show: &dyn Fn(&std::process::Output) -> String,
) -> Vec<(String, String, String)> {
    let catalog =
        pitr::catalog::Catalog::open(&dir.join("state/catalog.db")).expect("open catalog");
    let rows = catalog.content_ids().expect("cids");
    let packs = catalog.packs().expect("packs");
    drop(catalog);
    assert!(!packs.is_empty());
    let roots: Vec<String> =
        server.with(|s| s.uploads.iter().map(|(r, _)| r.to_string()).collect());
    let cid_of = |object: &str| {
        rows.iter()
            .find(|r| r.object == object && r.destination == "storacha")
            .map(|r| r.cid.clone())
    };
    // Every row is a root Storacha registered, and only Storacha has rows.
    for r in &rows {
        assert_eq!(r.destination, "storacha", "{r:?}");
        assert!(roots.contains(&r.cid), "{r:?} was never uploaded");
    }
    // Every pack, every commit object, the descriptor and the key object.
    let store = dir.join("store");
    let mut objects = vec!["config".to_owned()];
    for sub in ["keys", "catalog"] {
        for e in std::fs::read_dir(store.join(sub)).expect("ls") {
            let name = e.expect("entry").file_name();
            objects.push(format!("{sub}/{}", name.to_string_lossy()));
        }
    }
    for (id, _) in &packs {
        objects.push(id.object_name());
    }
    objects.sort();
    let newest = objects
        .iter()
        .filter(|o| o.starts_with("catalog/"))
        .max()
        .cloned()
        .expect("a commit");
    for o in &objects {
        let cid = cid_of(o).unwrap_or_else(|| panic!("no CID for {o} in {rows:#?}"));
        let bytes = std::fs::read(store.join(o)).expect("read object");
        let ours = pack_named(&entry_name(o), &bytes).expect("pack").root;
        assert_eq!(cid, ours.to_string(), "{o}");
    }
    // One pack against ipfs-car, independently.
    let first = packs[0].0.object_name();
    let bytes = std::fs::read(store.join(&first)).expect("read pack");
    let (root, _, _) = ipfs_car(&dir.join("ipfs-car"), &entry_name(&first), &bytes);
    assert_eq!(cid_of(&first), Some(root));
    // Only commit objects' own CIDs wait for a later commit to carry them,
    // and the newest commit's always does.
    for r in rows.iter().filter(|r| r.commit.is_none()) {
        assert!(r.object.starts_with("catalog/"), "{r:?}");
    }
    assert!(
        rows.iter()
            .any(|r| r.object == newest && r.commit.is_none()),
        "{newest}"
    );

    // What an operator sees.
    let out = pitr(config, &["catalog", "cids", "--json"]);
    assert!(out.status.success(), "{}", show(&out));
    let listed = cid_triples(&out.stdout);
    let expected: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (r.object.clone(), r.destination.clone(), r.cid.clone()))
        .collect();
    assert_eq!(listed, expected);
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let url = v[0]["gateway_url"].as_str().expect("url");
    assert_eq!(
        url,
        format!(
            "{}/ipfs/{}/{}",
            server.url(),
            listed[0].2,
            entry_name(&listed[0].0).replace('%', "%25")
        )
    );
    let out = pitr(config, &["catalog", "cids"]);
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let pack_line = format!("{first}\tstoracha\t{}\t", cid_of(&first).expect("cid"));
    assert!(text.lines().any(|l| l.starts_with(&pack_line)), "{text}");

    // The sidecar's disk is lost; the fs destination alone gives the CIDs
    // back (all but the newest commit's own, which no commit carries yet).
    std::fs::remove_dir_all(dir.join("state")).expect("rm state");
    let out = pitr(config, &["catalog", "rebuild", "--from", "local"]);
    assert!(out.status.success(), "{}", show(&out));
    let out = pitr(config, &["catalog", "cids", "--json"]);
    assert!(out.status.success(), "{}", show(&out));
    let rebuilt = cid_triples(&out.stdout);
    let carried: Vec<(String, String, String)> = rows
        .iter()
        .filter(|r| r.commit.is_some())
        .map(|r| (r.object.clone(), r.destination.clone(), r.cid.clone()))
        .collect();
    for c in &carried {
        assert!(rebuilt.contains(c), "{c:?} lost by the rebuild");
    }
    for r in &rebuilt {
        assert!(expected.contains(r), "{r:?} is new after the rebuild");
    }
    server.assert_no_problems();
    rebuilt
}

/// The catalog's CID is checked against what Storacha's `upload/list`
/// resolves the key to: an upload replaced by other bytes under the same
/// name is a `pitr verify` problem naming the key and both CIDs.
#[tokio::test(flavor = "multi_thread")]
async fn verify_finds_a_cid_that_differs_from_upload_list() {
    use pitr::repo::{Chunking, RepoError, RepoOptions, Repository};
    use pitr::ship::{Fanout, FsDestination};
    let server = FakeStoracha::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let fanout = || {
        Fanout::new(vec![
            std::sync::Arc::new(FsDestination::new("local", dir.path().join("store")))
                as std::sync::Arc<dyn Destination>,
            std::sync::Arc::new(dest(&server)),
        ])
    };
    let opts = RepoOptions {
        recipients: vec![age::x25519::Identity::generate().to_public()],
        identities: vec![],
        key_file: None,
        state_dir: dir.path().join("state"),
        zstd_level: 3,
        pack_size: 1 << 20,
    };
    Repository::init(&fanout(), &opts).await.expect("init");
    let repo = Repository::open(fanout(), opts.clone())
        .await
        .expect("open");
    let mut w = repo.writer();
    w.put(
        "test/a",
        "test",
        json!({}),
        Chunking::Cdc,
        &crate::repo::data(3, 300_000, 0)[..],
    )
    .await
    .expect("put");
    w.commit().await.expect("commit").expect("committed");
    let report = repo.verify().await.expect("verify");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let pack = repo.catalog().packs().expect("packs")[0].0.object_name();
    let recorded = repo
        .catalog()
        .content_ids()
        .expect("cids")
        .into_iter()
        .find(|r| r.object == pack)
        .expect("the pack's CID")
        .cid;
    drop(repo);

    // The space now holds other bytes under the pack's name.
    let other = pack_named(&entry_name(&pack), b"not the pack").expect("pack");
    server.with(|s| {
        let i = s
            .uploads
            .iter()
            .position(|(r, _)| r.to_string() == recorded)
            .expect("the pack's upload");
        s.cars.insert(other.shard, other.bytes.clone());
        s.uploads[i] = (other.root, vec![other.shard]);
    });
    let repo = Repository::open(fanout(), opts).await.expect("open again");
    let report = repo.verify().await.expect("verify");
    let mismatch: Vec<_> = report
        .problems
        .iter()
        .filter(|p| matches!(p.error, RepoError::ContentIdMismatch { .. }))
        .collect();
    assert_eq!(mismatch.len(), 1, "{:?}", report.problems);
    let msg = mismatch[0].error.to_string();
    assert!(msg.contains(&pack), "{msg}");
    assert!(msg.contains(&recorded), "{msg}");
    assert!(msg.contains(&other.root.to_string()), "{msg}");
    assert_eq!(mismatch[0].destination, "storacha");
    server.assert_no_problems();
}
